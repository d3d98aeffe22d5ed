"""diffusers-style pipelines over our objects: a `UNet`, a diffusion and a sampler.

    from diffusion_tf.pipelines import DDPMPipeline
    pipe = DDPMPipeline.from_pretrained('google/ddpm-cifar10-32')   # or a local folder
    pipe(batch_size=1, seed=0).images[0].save('ddpm_generated_image.png')

`Pipeline.from_pretrained` loads a Hub repo id, a diffusers folder (the flat layout of the
google repos or the ``save_pretrained`` one), one of our run directories (kwargs.json and the
latest checkpoint) or a TF1 checkpoint prefix of the authors' release (through `loading`);
`save_pretrained` writes what diffusers writes. Any pipeline class loads any of them: the noise schedule is the
model's, the sampler the class's.
"""

import collections
import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from . import diffusers_format as fmt, editing, interop, nn, sampling, utils
from .checkpoints import save_tf1_checkpoint  # noqa: F401  (public here before)
from .loading import (MODEL_INDEX, PretrainedModel, download, inspect_model,  # noqa: F401
                      load_diffusers_folder, load_pretrained, load_run_dir, load_tf1_checkpoint,
                      model_config_name, pretrained_model, released_diffusion,
                      unet_kwargs_from_tf1_shapes)

OUTPUT_TYPES = ('pil', 'np')


# ----------------------------------------------------------------------------- pipelines

class ImagePipelineOutput:
  """``.images``: a list of PIL images, or float32 [N, H, W, C] in [0, 1] for 'np'."""

  def __init__(self, images):
    self.images = images


class _Progress:
  """A tqdm bar ticked from inside the compiled loop (one tick per network evaluation)."""

  def __init__(self):
    self.bar = None

  def tick(self):
    if self.bar is not None:
      self.bar.update(1)

  def wrap(self, denoise_fn):
    def denoise(x, t):
      out = denoise_fn(x, t)
      with tf.control_dependencies([out]):
        done = tf.py_function(self.tick, [], [])  # an Operation (no outputs)
      with tf.control_dependencies([done]):
        return tf.identity(out)
    return denoise


# The noise schedule's fields of a scheduler config: a pipeline keeps its model's when the
# sampler is swapped by name.
SCHEDULE_KEYS = ('num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule', 'trained_betas',
                 'prediction_type', 'variance_type')


class Scheduler:
  """The sampler a pipeline runs, as diffusers' scheduler objects present it: ``.config`` is the
  diffusers scheduler config (with ``_class_name``), ``.settings`` the `sampling.SamplerSettings`
  (no steps: they are a call argument), ``.diffusion`` the noise schedule.

  ``Scheduler.from_config(pipe.scheduler.config, 'DPMSolverMultistepScheduler')`` is diffusers'
  ``DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)``: the fields that class
  reads from the config, its defaults for the rest.
  """

  def __init__(self, settings, diffusion, options):
    self.settings, self.diffusion, self._options = settings, diffusion, dict(options)

  @classmethod
  def from_config(cls, config, class_name=None):
    """From a scheduler config dict or an object with a ``.config`` mapping (a diffusers
    scheduler: its class name then comes from the object), read as ``class_name``."""
    if not isinstance(config, dict) and hasattr(config, 'config'):
      class_name = class_name or config.config.get('_class_name') or type(config).__name__
      config = dict(config.config)
    settings, diffusion, cfg = sampling.settings_from_scheduler_config(config, class_name)
    return cls(settings, diffusion, cfg)

  @property
  def class_name(self):
    return self.settings.entry.scheduler_class

  @property
  def config(self):
    """The diffusers scheduler config (what ``save_pretrained`` writes)."""
    others = {k: v for k, v in self._options.items() if k not in SCHEDULE_KEYS}
    return self.settings.scheduler_config(self.diffusion, **others)

  def __repr__(self):
    return f'Scheduler({self.class_name}, {self.settings.name})'


class Pipeline:
  """A `UNet` + a `Scheduler` (a sampler of `sampling.REGISTRY` on the model's noise schedule).

  ``scheduler_config`` is the config as read by this class's diffusers scheduler (defaults
  filled in). ``pipe.scheduler = ...`` (or ``from_pretrained(..., scheduler=...)``) swaps the
  sampler: a registry name ('ddpm', 'ddim', 'pndm', 'dpmsolver++', 'unipc': that sampler with
  its diffusers scheduler's default options, i.e. the scripts' ``--sampler NAME``, on the
  model's noise schedule), a diffusers scheduler config dict or an object with a ``.config``
  (as diffusers' ``from_config``: the fields the named class reads, its defaults for the
  rest). Without ``num_inference_steps`` a pipeline runs its class's default steps with its own
  sampler and the sampler's default (`sampling.DEFAULT_STEPS`, else the class's) with another.

  The pipeline owns its compiled loops (one per batch shape and sampler settings, traced at the
  first call with the U-Net's weights as constants, `nn.constant_weights`: change the weights
  and you need a new pipeline) and one `tf.random.Generator`, reset from ``seed`` at each call:
  the seed is an input of the loop, so a new seed runs without tracing again. ``seed=s`` draws
  the latents, then the step noise, exactly as `sampling.generate_samples` draws batch i from
  ``batch_seed(seed, i)``: a pipeline called with ``seed=sampling.batch_seed(seed, i)`` gives
  that batch (same sampler and batch size).
  """
  scheduler_class = 'DDPMScheduler'
  pipeline_class = 'DDPMPipeline'
  default_steps = 1000
  _MAX_LOOPS = 8

  def __init__(self, unet, scheduler_config, *, scheduler=None):
    self.unet = unet
    self._raw_scheduler_config = dict(scheduler_config)
    self.scheduler = Scheduler.from_config(scheduler_config, self.scheduler_class)
    if scheduler is not None:
      self.scheduler = scheduler
    self._loops = collections.OrderedDict()
    self._gens = {}  # RNG algorithm -> the pipeline's generator
    self._progress = _Progress()

  @classmethod
  def from_pretrained(cls, name_or_path, *, subfolder=None, revision=None, ema=True,
                      resolution=None, scheduler=None, dtype=None):
    """Loads a Hub repo id, a diffusers folder, a run directory or a TF1 checkpoint prefix
    (``ema``: its EMA weights; ``resolution``: for a checkpoint whose U-Net is not an
    original configuration). ``scheduler``: another sampler, as for ``pipe.scheduler``.
    Damaged or inconsistent files raise `errors.ModelFileError` (a ValueError) naming the
    file, before the network is built; `inspect_model` describes a model without loading it.

    ``dtype`` (diffusers' ``torch_dtype``): 'bfloat16' (fast on CPUs with AMX or
    AVX512_BF16), 'float16', 'float32' or a tf / NumPy dtype; None: the model's own (float32,
    or the precision a run of ours trained in). Only the U-Net runs in it (its weights stay
    float32, each layer casts them; its output is float32); the sampler's arithmetic stays
    float32, on tables computed in float64, so a bf16 pipeline's images differ from float32's
    by the network's rounding alone."""
    unet, scheduler_config = load_pretrained(name_or_path, subfolder=subfolder, revision=revision,
                                             ema=ema, resolution=resolution, dtype=dtype)
    return cls(unet, scheduler_config, scheduler=scheduler)

  @property
  def scheduler(self):
    return self._scheduler

  @scheduler.setter
  def scheduler(self, value):
    if isinstance(value, str):  # a registry name on the model's noise schedule
      entry = sampling.get_entry(value)
      value = {k: self._raw_scheduler_config[k] for k in SCHEDULE_KEYS if k in self._raw_scheduler_config}
      value = Scheduler.from_config(dict(value, **dict(entry.selects)), entry.scheduler_class)
    elif not isinstance(value, Scheduler):
      value = Scheduler.from_config(value)
    self._scheduler = value

  @property
  def diffusion(self):
    return self._scheduler.diffusion

  @property
  def scheduler_config(self):
    return self._scheduler._options

  def save_pretrained(self, out_dir, *, overwrite=False):
    """Writes the diffusers layout: model_index.json, unet/config.json,
    unet/diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json (the scheduler
    in use). An existing model there is an error unless ``overwrite``."""
    files = [os.path.join(out_dir, f) for f in (
        MODEL_INDEX, 'unet/config.json', f'unet/{fmt.WEIGHTS_SAFETENSORS}',
        'scheduler/scheduler_config.json')]
    existing = [f for f in files if os.path.exists(f)]
    if existing and not overwrite:
      raise FileExistsError(f'{out_dir} already holds a model ({", ".join(existing)}); pass '
                            f'overwrite=True (--overwrite) or another folder')
    unet_config = fmt.unet_config(self.unet)  # refuses what diffusers cannot express, first
    sched = self._saved_scheduler_config()
    index = {'_class_name': self.pipeline_class, '_diffusers_version': fmt.DIFFUSERS_VERSION,
             'scheduler': ['diffusers', sched['_class_name']], 'unet': ['diffusers', 'UNet2DModel']}
    fmt.write_weights(os.path.join(out_dir, 'unet'), fmt.state_dict(self.unet), overwrite=True)
    for path, obj in zip((files[0], files[1], files[3]), (index, unet_config, sched)):
      utils.atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode())
    return out_dir

  def _saved_scheduler_config(self):
    return self.scheduler.config

  # -- sampling

  @property
  def dtype(self):
    """The U-Net's compute dtype (tf.float32 unless mixed precision was asked for)."""
    return self.unet.compute_dtype or tf.float32

  @property
  def image_shape(self):
    return (self.unet.resolution, self.unet.resolution, self.unet.in_ch)

  def _denoise(self, x, t):
    return self.unet(x, t, training=False)

  def _settings(self, num_inference_steps, options):
    """The scheduler's settings with the call's steps and options (DDIM's ``eta``)."""
    settings = self.scheduler.settings
    eta = options.pop('eta', None)
    if options:
      raise TypeError(f'{type(self).__name__} takes no options {sorted(options)}')
    if eta is not None and settings.entry.uses_eta:
      settings = dataclasses.replace(settings, eta=float(eta))
    elif eta:
      raise ValueError(f'eta applies to DDIM, not to the {settings.name} scheduler')
    steps = num_inference_steps
    if steps is None:
      own = self.scheduler.class_name == self.scheduler_class
      steps = self.default_steps if own else sampling.DEFAULT_STEPS.get(settings.name, self.default_steps)
    return settings.with_steps(int(steps or 0) or settings.num_timesteps)  # 0, None: all T

  def _noise_source(self, seed, generator):
    """(the object drawing the noise, its part of the loop key). A `tf.random.Generator`'s
    state is copied into the pipeline's own generator (and back after the call); any other
    object with ``.normal(shape, dtype)`` is used as it is (one compiled loop per object)."""
    if generator is not None and not isinstance(generator, tf.random.Generator):
      return generator, id(generator)
    alg = generator.algorithm if generator is not None else tf.random.Algorithm.PHILOX.value
    gen = self._gens.get(alg)
    if gen is None:
      gen = self._gens[alg] = tf.random.Generator.from_seed(0, alg=alg)
    if generator is not None:
      gen.reset(generator.state)
    elif seed is not None:
      gen.reset_from_seed(int(seed))  # the stream of tf.random.Generator.from_seed(seed)
    else:
      gen.reset(tf.random.Generator.from_non_deterministic_state(alg=alg).state)
    return gen, ('generator', alg)

  def _compiled(self, key, make, specs):
    """``make(denoise)`` traced for ``specs`` with the weights as constants, kept under ``key``
    and the U-Net's compute dtype (both read when traced); the oldest dropped past
    ``_MAX_LOOPS``. ``denoise`` ticks the progress bar."""
    key = (key, self.unet.compute_dtype)
    loop = self._loops.get(key)
    if loop is None:
      with nn.constant_weights():  # traced now, so the weights are read now
        loop = tf.function(make(self._progress.wrap(self._denoise))).get_concrete_function(*specs)
      self._loops[key] = loop
      while len(self._loops) > self._MAX_LOOPS:
        self._loops.popitem(last=False)
    return loop

  def _run(self, loop, inputs, *, total, progress, noise, generator, output_type):
    """``loop(*inputs)`` with a progress bar of ``total`` network evaluations; the caller's
    generator left as if it had drawn the noise; returns `_output`."""
    if progress:
      from tqdm.auto import tqdm
      self._progress.bar = tqdm(total=total, desc=type(self).__name__)
    try:
      x = loop(*inputs).numpy()
    finally:
      if self._progress.bar is not None:
        self._progress.bar.close()
      self._progress.bar = None
    if isinstance(generator, tf.random.Generator):
      generator.reset(noise.state)
    return _output(x, output_type)

  def _loop(self, shape, settings, noise, noise_key):
    """The compiled loop x_T [shape] -> x_0 for these settings and noise source."""
    diffusion, noise_fn = self.diffusion, lambda shape, dtype: noise.normal(shape, dtype=dtype)
    return self._compiled((shape, settings, noise_key), lambda denoise: lambda x: settings.loop(
        diffusion, denoise, shape=shape, x_T=x, noise_fn=noise_fn), [tf.TensorSpec(shape, tf.float32)])

  def __call__(self, batch_size=1, num_inference_steps=None, *, seed=None, generator=None,
               latents=None, output_type='pil', progress=True, **options):
    """Samples ``batch_size`` images. ``latents``: x_T [N, H, W, C] (default: drawn from
    ``generator``, a `tf.random.Generator`, or from ``seed``)."""
    if output_type not in OUTPUT_TYPES:
      raise ValueError(f'output_type must be one of {OUTPUT_TYPES}, got {output_type!r}')
    settings = self._settings(num_inference_steps, options)
    shape = (int(batch_size), *self.image_shape)
    noise, noise_key = self._noise_source(seed, generator)
    if latents is None:
      latents = noise.normal(shape, dtype=tf.float32)
    latents = tf.convert_to_tensor(latents, tf.float32)
    if tuple(latents.shape) != shape:
      raise ValueError(f'latents must have shape {shape} (batch_size, H, W, C), got {tuple(latents.shape)}')
    return self._run(self._loop(shape, settings, noise, noise_key), [latents],
                     total=settings.num_evaluations, progress=progress, noise=noise,
                     generator=generator, output_type=output_type)

  def num_evaluations(self, steps):
    """Network evaluations of a call with ``num_inference_steps=steps``."""
    return self.scheduler.settings.with_steps(steps).num_evaluations

  def export(self, out, *, format='saved_model', scheduler=None, num_inference_steps=None,
             quantize='none', overwrite=False, **options):
    """Writes the U-Net and the sampler (this pipeline's scheduler, or ``scheduler`` as for
    ``pipe.scheduler``; ``num_inference_steps`` and ``eta`` as for a call) as a SavedModel,
    LiteRT or ONNX folder ``out`` that runs without diffusion_tf (see `export`, and
    docs/deployment.md). Returns ``out``."""
    from . import export as exporting
    exporting.check_request(format, quantize, out, overwrite)
    pipe = self if scheduler is None else type(self)(self.unet, self._raw_scheduler_config,
                                                     scheduler=scheduler)
    settings = pipe._settings(num_inference_steps, dict(options))
    model = _PipelineModel(pipe.unet, pipe.diffusion, pipe.image_shape, pipe._denoise)
    return exporting.export(model, settings, out, format=format, quantize=quantize,
                            overwrite=overwrite, source=pipe.pipeline_class)[0]

  # -- editing (`editing`): the pipeline's model and noise source, its own compiled loops

  def _edit(self, key, edit, tensors, *, seed, generator, total, output_type, progress):
    """Runs ``edit(denoise, noise_fn, *tensors)`` compiled (kept under ``key`` and the noise
    source), with a progress bar of ``total`` network evaluations; returns `_output`."""
    if output_type not in OUTPUT_TYPES:
      raise ValueError(f'output_type must be one of {OUTPUT_TYPES}, got {output_type!r}')
    noise, noise_key = self._noise_source(seed, generator)
    tensors = [tf.convert_to_tensor(t, tf.float32) for t in tensors]
    noise_fn = lambda shape, dtype=tf.float32: noise.normal(shape, dtype=dtype)
    loop = self._compiled((key, tuple(tuple(t.shape) for t in tensors), noise_key),
                          lambda denoise: lambda *ts: edit(denoise, noise_fn, *ts),
                          [tf.TensorSpec(t.shape, tf.float32) for t in tensors])
    return self._run(loop, tensors, total=total, progress=progress, noise=noise,
                     generator=generator, output_type=output_type)

  def img2img(self, image, strength=0.8, num_inference_steps=None, *, seed=None, generator=None,
              output_type='pil', progress=True, **options):
    """SDEdit (`editing.img2img`) of ``image`` (PIL image(s), uint8 or [-1, 1] float
    [N, H, W, C]) with this pipeline's sampler: ``strength`` 0 returns it, 1 starts from
    q(x_T | x_0)."""
    settings = self._settings(num_inference_steps, options)
    k = editing.strength_steps(settings, strength)
    settings.check_start(k or None)
    x0 = _image_array(image, self.image_shape)
    return self._edit(('img2img', settings, float(strength)), lambda denoise, noise_fn, x: editing.img2img(
        settings, self.diffusion, denoise, x0=x, strength=strength, noise_fn=noise_fn), [x0],
        seed=seed, generator=generator, total=k, output_type=output_type, progress=progress)

  def interpolate(self, image1, image2, t=500, num=8, mix='slerp', *, seed=None, generator=None,
                  output_type='pil', progress=True):
    """``num`` images between two images (`editing.interpolate`: diffused to step ``t`` with
    one noise, mixed at lambda = 0 .. 1, decoded by the ancestral sampler)."""
    editing.check_timestep(t, self.diffusion.num_timesteps)
    x1, x2 = (_image_array(i, self.image_shape)[:1] for i in (image1, image2))
    lam = np.linspace(0., 1., int(num))
    return self._edit(('interpolate', int(t), int(num), mix), lambda denoise, noise_fn, a, b: editing.interpolate(
        self.diffusion, denoise, x1=a, x2=b, lam=lam, t=int(t), mix=mix, noise_fn=noise_fn), [x1, x2],
        seed=seed, generator=generator, total=int(t) + 1, output_type=output_type, progress=progress)


@dataclasses.dataclass
class _PipelineModel:
  """A pipeline's parts as `export` takes a model."""
  net: object
  diffusion: object
  image_shape: tuple
  denoise: object



def _image_array(image, shape, *, mask=False):
  """[N, H, W, C] float32 from PIL image(s) or an array (uint8, or floats: images in [-1, 1],
  masks in [0, 1]); masks as diffusers reads them: grey, >= 0.5 keeps."""
  images = image if isinstance(image, (list, tuple)) else [image]
  if hasattr(images[0], 'convert'):  # PIL
    arr = np.stack([np.asarray(i.convert('L' if mask or shape[-1] == 1 else 'RGB')) for i in images])
    arr = arr[..., None] if arr.ndim == 3 else arr
  else:
    arr = np.asarray(image)
    arr = arr[None] if arr.ndim == 3 else arr
  if mask:
    if arr.dtype == np.uint8:
      return interop.binary_masks(arr).astype(np.float32)
    return (arr.mean(axis=-1, keepdims=True) >= 0.5).astype(np.float32)
  if arr.dtype == np.uint8:
    arr = interop.fit_images(arr, shape, flag='image').astype(np.float32) / 127.5 - 1.
  if tuple(arr.shape[1:]) != tuple(shape):
    raise ValueError(f'images must be [N, {", ".join(map(str, shape))}], got {arr.shape}')
  return arr.astype(np.float32)


def _output(x, output_type):
  """Images in [0, 1] from samples x [N, H, W, C] in [-1, 1]: float32 or PIL."""
  images = np.clip(x / 2 + 0.5, 0., 1.).astype(np.float32)
  if output_type == 'np':
    return ImagePipelineOutput(images)
  from PIL import Image
  pixels = (images * 255).round().astype(np.uint8)
  return ImagePipelineOutput([Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels])


class DDPMPipeline(Pipeline):
  """Ancestral sampling (all the model's steps by default, 1000 for the Hub models; fewer
  steps respace the process over the timesteps diffusers' DDPMScheduler places, from the
  scheduler config, so the same latents and step noise give its images)."""
  default_steps = None


class DDIMPipeline(Pipeline):
  """DDIM (50 steps, ``eta=0.`` by default) as diffusers' DDIMPipeline + DDIMScheduler."""
  scheduler_class = 'DDIMScheduler'
  pipeline_class = 'DDIMPipeline'
  default_steps = 50

  def __call__(self, batch_size=1, num_inference_steps=None, *, eta=0., **kwargs):
    return super().__call__(batch_size, num_inference_steps, eta=float(eta), **kwargs)


class PNDMPipeline(Pipeline):
  """PNDM (50 steps by default: 59 network evaluations, 51 with ``skip_prk_steps`` in the
  scheduler config) as diffusers' PNDMPipeline + PNDMScheduler."""
  scheduler_class = 'PNDMScheduler'
  pipeline_class = 'PNDMPipeline'
  default_steps = 50


class RePaintPipeline(Pipeline):
  """RePaint inpainting as diffusers' RePaintPipeline + RePaintScheduler (`editing.repaint_loop`):
  ``pipe(image, mask_image, num_inference_steps=250, eta=0., jump_length=10, jump_n_sample=10,
  seed= / generator=, output_type=)``; the mask's white (1) keeps, black (0) is filled. The
  noise schedule is the model's; ``save_pretrained`` writes it as a RePaintScheduler config,
  which diffusers' RePaintPipeline needs (and which we read back as the DDPM noise schedule)."""
  pipeline_class = 'RePaintPipeline'
  default_steps = 250

  def _saved_scheduler_config(self):
    """diffusers' RePaintPipeline takes a RePaintScheduler (its call fails with any other)."""
    return fmt.repaint_scheduler_config(self.diffusion)

  def __call__(self, image, mask_image, num_inference_steps=250, eta=0., jump_length=10,
               jump_n_sample=10, *, seed=None, generator=None, output_type='pil', progress=True):
    x0 = _image_array(image, self.image_shape)
    mask = _image_array(mask_image, self.image_shape[:2] + (1,), mask=True)
    kw = dict(steps=int(num_inference_steps), jump_length=int(jump_length),
              jump_n_sample=int(jump_n_sample), eta=float(eta))
    editing.repaint_plan(self.diffusion, **kw)  # refuses bad values before tracing
    d = self.diffusion
    return self._edit(('repaint', tuple(sorted(kw.items()))), lambda denoise, noise_fn, x, m: editing.repaint_loop(
        d, denoise, x0=x, mask=m, noise_fn=noise_fn, **kw), [x0, mask], seed=seed,
        generator=generator, total=editing.repaint_evaluations(d.num_timesteps, kw['steps'],
                                                               kw['jump_length'], kw['jump_n_sample']),
        output_type=output_type, progress=progress)


PIPELINES = {'ddpm': DDPMPipeline, 'ddim': DDIMPipeline, 'pndm': PNDMPipeline}
