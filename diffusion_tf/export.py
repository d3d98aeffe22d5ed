"""Deployment artifacts: a model and a sampler as files that run without ``diffusion_tf``.

* ``saved_model``: one `tf.Module` whose variables are the U-Net's weights, shared by three
  signatures: ``serving_default(seed int64 [N]) -> {"images": uint8 [N, H, W, C]}`` (the whole
  sampler in the graph), ``from_noise(x_T float32 [N, H, W, C], seed int64 [N])`` (the same from a
  given x_T) and ``denoise(x float32 [N, H, W, C], t float32 [N]) -> {"eps"}`` (the network
  alone). The recipe and sampler are the asset ``assets/diffusion_tf_export.json``.
* ``tflite``: ``denoiser.tflite`` (inputs ``x``, ``t``; output ``eps``; fp32, or ``quantize``
  'fp16' / 'dynamic') and ``sampler.tflite``, the whole sampler with its loop inside (a WHILE
  op: builtin) for a fixed batch, taking x_T and, for a stochastic sampler, every step's noise
  as inputs (LiteRT's builtin random op has its seed fixed at conversion, so noise is an input).
* ``onnx``: ``denoiser.onnx`` and ``sampler.onnx`` (the loop as an ONNX Loop) through tf2onnx
  (the optional extra ``pip install -e '.[export]'``).

Randomness: every image draws its noise from its own seed alone (`seeded_noise`: stateless
normal noise keyed on (seed, step)), so image i is a function of seed i in any batch. Each
image is sampled at batch 1 inside the graph (a `tf.map_fn` over the batch): that is what lets
the graph take any N while the sampling loops trace with a static batch.

The artifacts are traced with TensorFlow's stock ops (`nn.fused_kernels` off): our custom CPU
kernels could not be loaded by a TensorFlow without this package. The numbers are the same to
float32 rounding. `check_request` refuses what cannot be written before anything is.
"""

import dataclasses
import json
import os
import shutil
import tempfile

import tensorflow as tf

from . import nn
from .diffusion_base import current_step
from .errors import FlagError, UserError

FORMATS = ('saved_model', 'tflite', 'onnx')
QUANTIZATIONS = ('none', 'fp16', 'dynamic')
CONFIG_ASSET = 'diffusion_tf_export.json'
ONNX_OPSET = 17
TFLITE_BATCH = 1  # sampler.tflite's batch (LiteRT runs fixed shapes; resize_tensor_input changes it)


class ExportError(UserError, ValueError):
  """A model or sampler part that the requested format cannot hold."""


def check_request(format, quantize, out, overwrite):
  """Refuses an unknown format or quantization, a quantization the format cannot hold and an
  existing output (without ``overwrite``), before anything is loaded or written."""
  if format not in FORMATS:
    raise FlagError(f'--format must be one of {", ".join(FORMATS)}; got {format!r}')
  if quantize not in QUANTIZATIONS:
    raise FlagError(f'--quantize must be one of {", ".join(QUANTIZATIONS)}; got {quantize!r}')
  if quantize != 'none' and format != 'tflite':
    raise FlagError(f'--quantize {quantize} applies to --format tflite; a {format} export keeps '
                    f'the float32 weights (pass --quantize none)')
  if not out:
    raise FlagError('--out must name the folder to write')
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f'{out} exists; pass another --out or --overwrite')


# ----------------------------------------------------------------------------- the graph pieces

def seeded_noise(seed):
  """A sampler ``noise_fn`` drawing stateless normal noise from ``seed`` (an int64 scalar)
  and the `timestep_loop` step being traced: (seed, 0) for x_T, (seed, i + 1) at step i."""
  seed = tf.cast(seed, tf.int64)

  def noise_fn(shape, dtype=tf.float32):
    step = current_step()
    key = tf.constant(0, tf.int64) if step is None else tf.cast(step, tf.int64) + 1
    return tf.random.stateless_normal(shape, seed=tf.stack([seed, key]), dtype=dtype)
  return noise_fn


def replayed_noise(noise):
  """A ``noise_fn`` returning ``noise[i]`` at loop step i (``noise``: [steps, B, H, W, C])."""
  def noise_fn(shape, dtype=tf.float32):
    step = current_step()
    if step is None:
      raise ValueError('replayed noise is for the loop steps; pass x_T')
    return tf.cast(tf.reshape(tf.gather(noise, step), shape), dtype)
  return noise_fn


def to_uint8(x):
  """[-1, 1] floats -> uint8, clipped and truncated as `utils.to_uint8`."""
  return tf.cast(tf.clip_by_value((x + 1.) * 127.5, 0., 255.), tf.uint8)


def output_name(diffusion):
  """What the network predicts ('eps' for the released models; 'xstart' / 'xprev' else)."""
  return getattr(diffusion, 'model_mean_type', 'eps')


class Exported(tf.Module):
  """The U-Net (tracked: its variables are saved once) and the sampler as `tf.function`s
  with fixed signatures; ``model``: a script model or `loading.PretrainedModel`
  (``.net``, ``.diffusion``, ``.denoise``, ``.image_shape``)."""

  def __init__(self, model, settings, config_path=None):
    super().__init__()
    self.net = model.net
    self._model, self._settings = model, settings
    self.image_shape = tuple(int(d) for d in model.image_shape)
    images = tf.TensorSpec([None, *self.image_shape], tf.float32)
    seeds = tf.TensorSpec([None], tf.int64)
    self.serving_default = tf.function(self._serving, input_signature=[
        tf.TensorSpec([None], tf.int64, name='seed')])
    self.from_noise = tf.function(self._from_noise, input_signature=[
        tf.TensorSpec(images.shape, tf.float32, name='x_T'), tf.TensorSpec(seeds.shape, tf.int64, name='seed')])
    self.denoise = tf.function(self._denoise, input_signature=[
        tf.TensorSpec(images.shape, tf.float32, name='x'), tf.TensorSpec([None], tf.float32, name='t')])
    if config_path:
      self.config = tf.saved_model.Asset(config_path)

  def sample_one(self, x_T, seed, noise_fn=None):
    """One image's sampler run at batch 1: x_T [1, H, W, C] or None (drawn from the seed)."""
    return self._settings.loop(self._model.diffusion, self._model.denoise,
                               shape=(1, *self.image_shape), x_T=x_T,
                               noise_fn=noise_fn or seeded_noise(seed))

  def _images(self, seeds, x_T=None):
    spec = tf.TensorSpec(self.image_shape, tf.float32)
    if x_T is None:
      one = lambda s: self.sample_one(None, s)[0]
      x0 = tf.map_fn(one, seeds, fn_output_signature=spec, parallel_iterations=1)
    else:
      one = lambda a: self.sample_one(a[0][None], a[1])[0]
      x0 = tf.map_fn(one, (x_T, seeds), fn_output_signature=spec, parallel_iterations=1)
    return {'images': to_uint8(x0)}

  def _serving(self, seed):
    return self._images(seed)

  def _from_noise(self, x_T, seed):
    tf.debugging.assert_equal(tf.shape(x_T)[0], tf.shape(seed)[0],
                              message='from_noise: one seed per image of x_T')
    return self._images(seed, x_T)

  def _denoise(self, x, t):
    out = self._model.denoise(x, t)
    C = self.image_shape[-1]
    result = {output_name(self._model.diffusion): out[..., :C]}
    if out.shape[-1] != C:  # a learned variance's interpolation values
      result['variance_values'] = out[..., C:]
    return result

  def sampler_with_noise_inputs(self, batch):
    """(the sampler as a function of (x_T, noise) at a fixed ``batch``, or of x_T alone for a
    deterministic sampler; its input specs): for formats without stateless random ops."""
    n = self._settings.num_evaluations
    x_spec = tf.TensorSpec([batch, *self.image_shape], tf.float32, name='x_T')
    noise_spec = tf.TensorSpec([n, batch, *self.image_shape], tf.float32, name='noise')
    drawn = []

    def probe(shape, dtype=tf.float32):
      drawn.append(shape)
      return tf.zeros(shape, dtype)
    tf.function(lambda x: self._settings.loop(
        self._model.diffusion, self._model.denoise, shape=x.shape, x_T=x,
        noise_fn=probe)).get_concrete_function(x_spec)
    loop = lambda x, noise_fn: {'x_0': self._settings.loop(
        self._model.diffusion, self._model.denoise, shape=tuple(x.shape), x_T=x, noise_fn=noise_fn)}
    if drawn:
      return (lambda x_T, noise: loop(x_T, replayed_noise(noise))), [x_spec, noise_spec]
    return (lambda x_T: loop(x_T, None)), [x_spec]


@dataclasses.dataclass
class Description:
  """What the JSON asset says about an export (also written beside the LiteRT / ONNX files)."""
  source: str
  image_shape: tuple
  settings: object
  recipe: object = None  # a `recipes.Recipe` (a run's) or None (a pretrained model)

  def as_json(self, diffusion, **extra):
    s = self.settings
    return dict(
        source=self.source, image_shape=list(self.image_shape), sampler=s.describe(),
        sampler_settings=dataclasses.asdict(s),
        timesteps=[int(t) for t in s.timesteps], num_evaluations=s.num_evaluations,
        network_output=output_name(diffusion), images='uint8, (x + 1) * 127.5 clipped, truncated',
        noise='stateless normal keyed on (seed, 0) for x_T and (seed, step + 1) per loop step',
        recipe=_recipe_json(self.recipe), **extra)


def _recipe_json(recipe):
  if recipe is None:
    return None
  return {f.name: dataclasses.asdict(getattr(recipe, f.name)) if dataclasses.is_dataclass(
      getattr(recipe, f.name)) else getattr(recipe, f.name)
          for f in dataclasses.fields(recipe) if f.name not in ('commands', 'docs')}


# ----------------------------------------------------------------------------- checks

def op_types(concrete):
  """The op types of a concrete function's graph and the functions it calls."""
  graph = concrete.graph.as_graph_def()
  functions = {f.signature.name for f in graph.library.function}
  types = {n.op for n in graph.node}
  for f in graph.library.function:
    types |= {n.op for n in f.node_def}
  return types - functions


def check_stock_ops(concretes):
  """Refuses a graph with an op stock TensorFlow does not have (our custom kernels)."""
  stock = set(dir(tf.raw_ops))
  for name, concrete in concretes.items():
    custom = sorted(op_types(concrete) - stock)
    if custom:
      raise ExportError(f'the {name} graph holds ops stock TensorFlow cannot load: '
                        f'{", ".join(custom)}')


def _traced(concretes_fn):
  """``concretes_fn()`` traced with the stock ops and float timesteps allowed."""
  with nn.fused_kernels(False), nn.winograd(False), nn.float_timesteps(True):
    return concretes_fn()


# ----------------------------------------------------------------------------- writers

def _write_json(path, obj):
  with open(path, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
    f.write('\n')


def write_saved_model(model, description, folder):
  """The SavedModel of ``model`` with ``description.settings`` into ``folder`` (new)."""
  with tempfile.TemporaryDirectory() as tmp:
    config = os.path.join(tmp, CONFIG_ASSET)
    _write_json(config, description.as_json(model.diffusion, format='saved_model', signatures={
        'serving_default': 'seed int64 [N] -> images uint8 [N, H, W, C]',
        'from_noise': 'x_T float32 [N, H, W, C], seed int64 [N] -> images',
        'denoise': f'x float32 [N, H, W, C], t float32 [N] -> {output_name(model.diffusion)}'}))
    module = Exported(model, description.settings, config)

    def trace():
      c = {name: getattr(module, name).get_concrete_function()
           for name in ('serving_default', 'from_noise', 'denoise')}
      check_stock_ops(c)
      # No gradient functions: the artifact samples, and the GroupNorm's hand-written gradient
      # would double the graph.
      tf.saved_model.save(module, folder, signatures=c, options=tf.saved_model.SaveOptions(
          experimental_custom_gradients=False))
    _traced(trace)
  return folder


def _tflite_bytes(name, concrete, weights, quantize):
  # Through a SavedModel: the LiteRT file then keeps the signature (inputs and outputs by name).
  with tempfile.TemporaryDirectory() as tmp:
    tf.saved_model.save(weights, tmp, signatures={'serving_default': concrete},
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=['serving_default'])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return _convert(converter, name, quantize)


def _convert(converter, name, quantize):
  if quantize != 'none':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == 'fp16':
    converter.target_spec.supported_types = [tf.float16]
  try:
    return converter.convert()
  except Exception as e:  # the converter names the ops it could not lower
    raise ExportError(f'LiteRT cannot convert the {name} graph with builtin ops: '
                      f'{str(e).strip().splitlines()[-1]}') from e


def _signature_function(fn, specs):
  return tf.function(fn, input_signature=specs).get_concrete_function()


def write_tflite(model, description, folder, quantize='none'):
  """``denoiser.tflite`` (quantized as asked) and ``sampler.tflite`` (float32, loop inside)."""
  module = Exported(model, description.settings)
  os.makedirs(folder)
  C = module.image_shape[-1]

  def trace():
    denoiser = _signature_function(lambda x, t: module._denoise(x, t), [
        tf.TensorSpec([None, *module.image_shape], tf.float32, name='x'),
        tf.TensorSpec([None], tf.float32, name='t')])
    fn, specs = module.sampler_with_noise_inputs(TFLITE_BATCH)
    sampler = _signature_function(fn, specs)
    check_stock_ops({'denoiser': denoiser, 'sampler': sampler})
    return denoiser, sampler, specs
  denoiser, sampler, sampler_specs = _traced(trace)
  weights = tf.Module()
  weights.net = model.net  # only the variables: the Exported's own functions are not wanted here
  files = _traced(lambda: {
      'denoiser.tflite': _tflite_bytes('denoiser', denoiser, weights, quantize),
      'sampler.tflite': _tflite_bytes('sampler', sampler, weights, 'none')})
  for name, data in files.items():
    with open(os.path.join(folder, name), 'wb') as f:
      f.write(data)
  _write_json(os.path.join(folder, CONFIG_ASSET), description.as_json(
      model.diffusion, format='tflite', quantize=quantize, sampler_batch=TFLITE_BATCH,
      sampler_inputs=[s.name for s in sampler_specs], channels=C))
  return folder


def write_onnx(model, description, folder):
  """``denoiser.onnx`` and ``sampler.onnx`` (the loop as an ONNX Loop) through tf2onnx."""
  try:
    import tf2onnx
  except ImportError as e:
    raise ExportError("--format onnx needs tf2onnx: pip install -e '.[export]'") from e
  module = Exported(model, description.settings)
  os.makedirs(folder)
  den_specs = [tf.TensorSpec([None, *module.image_shape], tf.float32, name='x'),
               tf.TensorSpec([None], tf.float32, name='t')]
  sampler_fn, sampler_specs = _traced(lambda: module.sampler_with_noise_inputs(TFLITE_BATCH))
  for name, fn, specs in (('denoiser', lambda x, t: module._denoise(x, t), den_specs),
                          ('sampler', sampler_fn, sampler_specs)):
    def convert():
      f = tf.function(fn, input_signature=specs)
      check_stock_ops({name: f.get_concrete_function()})
      proto, _ = tf2onnx.convert.from_function(f, input_signature=specs, opset=ONNX_OPSET)
      _write_onnx(proto, specs, os.path.join(folder, f'{name}.onnx'))
    try:
      _traced(convert)
    except ExportError:
      raise
    except Exception as e:
      raise ExportError(f'tf2onnx {tf2onnx.__version__} cannot convert the {name} graph on '
                        f'TensorFlow {tf.__version__}: {str(e).strip().splitlines()[-1]}') from e
  _write_json(os.path.join(folder, CONFIG_ASSET), description.as_json(
      model.diffusion, format='onnx', opset=ONNX_OPSET, sampler_batch=TFLITE_BATCH,
      sampler_inputs=[s.name for s in sampler_specs]))
  return folder


def _write_onnx(proto, specs, path):
  """Writes ``proto`` with its inputs named as ``specs`` (TensorFlow lower-cases argument
  names in the graph: x_T would be x_t)."""
  renames = {s.name.lower(): s.name for s in specs if s.name.lower() != s.name}
  for value in proto.graph.input:
    value.name = renames.get(value.name, value.name)
  for node in proto.graph.node:
    node.input[:] = [renames.get(i, i) for i in node.input]
  with open(path, 'wb') as f:
    f.write(proto.SerializeToString())


WRITERS = {'saved_model': write_saved_model, 'tflite': write_tflite, 'onnx': write_onnx}


def export(model, settings, out, *, format='saved_model', quantize='none', overwrite=False,
           source='', recipe=None):
  """Writes ``model`` with the sampler ``settings`` (a `sampling.SamplerSettings`) as ``format``
  to the folder ``out``; returns (out, its size in bytes). Built in a temporary folder beside
  ``out`` and moved there at the end, so a failure leaves nothing behind and an existing
  ``out`` is replaced only with ``overwrite`` and only by a complete export."""
  check_request(format, quantize, out, overwrite)
  if model.diffusion.num_timesteps != settings.num_timesteps:
    raise ExportError(f'sampler settings for {settings.num_timesteps} steps, the model has '
                      f'{model.diffusion.num_timesteps}')
  description = Description(source=str(source), image_shape=tuple(model.image_shape),
                            settings=settings, recipe=recipe)
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.export-', dir=parent)
  try:
    staged = os.path.join(tmp, 'out')
    kwargs = {'quantize': quantize} if format == 'tflite' else {}
    WRITERS[format](model, description, staged, **kwargs)
    if os.path.exists(out):
      shutil.rmtree(out) if os.path.isdir(out) else os.remove(out)
    os.replace(staged, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out, folder_size(out)


def folder_size(folder):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


def human_size(n):
  for unit in ('B', 'KB', 'MB', 'GB'):
    if n < 1024 or unit == 'GB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1024.

