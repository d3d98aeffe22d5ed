"""Loading a model from wherever it comes: a Hub repo id, a diffusers folder (the google repos'
flat layout or ``save_pretrained``'s), one of our run directories (kwargs.json and the latest
checkpoint) or a TF1 checkpoint prefix of the authors' release, to (U-Net, diffusion).

`load_pretrained` gives (UNet, diffusers scheduler config) for the pipelines; `load_for_sampling`
gives a script model for the scripts' ``sample`` and ``evaluation``. The pipelines and the
command bodies (`runners`) both sit on this module; it imports neither.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from . import (checkpoints, diffusers_format as fmt, integrity, model_checks as checks, recipes,
               sampling, script_models)
from .diffusion_base import get_beta_schedule
from .diffusion_utils_2 import GaussianDiffusion2
from .errors import DamagedCheckpointError, FlagError, ModelFileError
from .models.unet import MODEL_CONFIGS, UNet, tf1_name
from .tpu_utils import tpu_utils

MODEL_INDEX = 'model_index.json'


def _hub_cache_dir():
  """The Hugging Face cache folder, honouring HF_HUB_CACHE / HF_HOME as set now."""
  from huggingface_hub import constants
  if os.environ.get('HF_HUB_CACHE'):
    return os.environ['HF_HUB_CACHE']
  if os.environ.get('HF_HOME'):
    return os.path.join(os.environ['HF_HOME'], 'hub')
  return constants.HF_HUB_CACHE


def _hub_offline():
  from huggingface_hub import constants
  return constants.HF_HUB_OFFLINE or os.environ.get('HF_HUB_OFFLINE', '').upper() in ('1', 'ON', 'YES', 'TRUE')


# The files of a repository a pipeline reads (both layouts), configs first: they are checked
# before any weights are downloaded.
HUB_CONFIGS = (MODEL_INDEX, 'unet/config.json', 'scheduler/scheduler_config.json', 'config.json',
               'scheduler_config.json')


def _torch_importable():
  try:
    import torch  # noqa: F401  (.bin weights are readable only with torch)
  except ImportError:
    return False
  return True


def hub_weight_files(repo_files):
  """The weight files of a repository listing the pipeline reads: per layout (``unet/`` or the
  root) the safetensors file, or the ``.bin`` only when there is none and torch imports."""
  out = []
  layout = 'unet/' if 'unet/config.json' in repo_files else ''
  st, binary = layout + fmt.WEIGHTS_SAFETENSORS, layout + fmt.WEIGHTS_BIN
  if st in repo_files:
    out.append(st)
  elif binary in repo_files and _torch_importable():
    out.append(binary)
  return out


def _hub_snapshot(repo_id, revision, files):
  import huggingface_hub
  return huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=_hub_cache_dir(),
                                           allow_patterns=list(files),
                                           local_files_only=_hub_offline())


def _hub_listing(repo_id, revision):
  """The repository's files, or (offline) every file the pipeline might read."""
  if _hub_offline():
    candidates = [f'{d}{w}' for d in ('unet/', '') for w in (fmt.WEIGHTS_SAFETENSORS, fmt.WEIGHTS_BIN)]
    return list(HUB_CONFIGS) + candidates
  import huggingface_hub
  return huggingface_hub.HfApi().list_repo_files(repo_id, revision=revision)


def download(repo_id, *, revision=None):
  """A local snapshot of Hub repo ``repo_id`` in the HF cache, holding only the files the
  pipeline reads: its configs first, which are checked (`check_diffusers_configs`: a Stable
  Diffusion repository is refused after a few KB), then its weight file.

  Offline (HF_HUB_OFFLINE=1) only the cache is consulted, so a missing model fails at once.
  """
  from huggingface_hub import errors
  cache = _hub_cache_dir()
  try:
    listing = _hub_listing(repo_id, revision)
    folder = _hub_snapshot(repo_id, revision, [f for f in HUB_CONFIGS if f in listing])
    if _is_diffusers_folder(folder):
      check_diffusers_configs(folder)
      weights = hub_weight_files([f for f in listing if os.path.exists(os.path.join(folder, f))]
                                 if _hub_offline() else listing)
      if weights:
        folder = _hub_snapshot(repo_id, revision, weights)
    return folder
  except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as e:
    raise FileNotFoundError(
        f'Cannot get Hub model {repo_id!r}{f" (revision {revision})" if revision else ""}: it is '
        f'not in the Hugging Face cache {cache} and cannot be downloaded here '
        f'({"HF_HUB_OFFLINE is set" if _hub_offline() else type(e).__name__}). On a machine with '
        f'internet run `huggingface-cli download {repo_id}` (HF_HOME selects the cache) and copy '
        f'the cache folder here, or pass a local folder.') from e
  except errors.RepositoryNotFoundError as e:
    raise FileNotFoundError(f'{repo_id!r} is neither a local path nor a Hub repository') from e


def _is_diffusers_folder(path):
  return any(os.path.exists(os.path.join(path, f))
             for f in (MODEL_INDEX, 'config.json', os.path.join('unet', 'config.json')))


def _diffusers_parts(folder):
  """(unet folder, scheduler config path) of a save_pretrained or flat (google) folder."""
  if os.path.exists(os.path.join(folder, 'unet', 'config.json')):
    return os.path.join(folder, 'unet'), os.path.join(folder, 'scheduler', 'scheduler_config.json')
  return folder, os.path.join(folder, 'scheduler_config.json')


@dataclasses.dataclass
class CheckedFolder:
  """What `check_diffusers_folder` read of a diffusers folder (nothing built)."""
  unet_dir: str
  kwargs: dict          # UNet's arguments
  entries: list         # `diffusers_format.tensor_map` of the listed (not built) U-Net
  weights: str          # the weight file
  dtypes: tuple         # of its tensors (from the safetensors header; () for a .bin)
  scheduler_path: str
  scheduler_config: dict

  @property
  def parameters(self):
    return checks.parameter_count(var.shape.as_list() for _, var, _ in self.entries)


def read_scheduler_config(path):
  """A scheduler config file, checked as our samplers read it (class, options, ranges)."""
  config = fmt.read_json(path)
  checks.in_file(path, sampling.settings_from_scheduler_config, config)
  return config


def check_diffusers_configs(folder, *, name='model'):
  """(unet dir, UNet arguments, scheduler config path, its config) of a diffusers folder, read
  from its JSON files alone, each checked: what a Hub download fetches before the weights."""
  unet_dir, sched_path = _diffusers_parts(folder)
  index = os.path.join(folder, MODEL_INDEX)
  if os.path.exists(index):
    unet_class = fmt.read_json(index).get('unet', [None, 'UNet2DModel'])
    if not isinstance(unet_class, list) or unet_class[-1:] != ['UNet2DModel']:
      raise fmt.DiffusersFormatError(f'{index}: unet {unet_class!r} is not supported: only '
                                     f'UNet2DModel (pixel-space DDPM U-Nets) maps onto our UNet')
  config_path = os.path.join(unet_dir, 'config.json')
  kwargs = checks.in_file(config_path, fmt.unet_kwargs_from_config, fmt.read_json(config_path),
                          name=name)
  if not os.path.exists(sched_path):
    raise FileNotFoundError(f'{folder} has a UNet but no scheduler config (expected {sched_path})')
  return unet_dir, kwargs, sched_path, read_scheduler_config(sched_path)


def check_diffusers_folder(folder, *, name='model'):
  """A `CheckedFolder`: the configs checked, the weights' header compared with the network the
  config implies (parameter count, names, shapes, dtypes), links reported; nothing built and no
  tensor read. ModelFileError naming the file for anything that cannot load."""
  unet_dir, kwargs, sched_path, sched = check_diffusers_configs(folder, name=name)
  config_path = os.path.join(unet_dir, 'config.json')
  weights = fmt.weights_file(unet_dir)
  header = fmt.read_safetensors_header(weights) if weights.endswith('.safetensors') else None
  limit = len(header) if header is not None else checks.MAX_TENSORS
  net, _ = checks.listed_unet(kwargs, limit=limit, source=config_path)
  entries = fmt.tensor_map(net)
  if header is not None:
    checks.check_header(weights, header, entries, config_path)
  else:
    checks.check_bin_size(weights, checks.parameter_count(v.shape.as_list() for _, v, _ in entries),
                          config_path)
  files = [os.path.join(folder, MODEL_INDEX), config_path, weights, sched_path]
  checks.warn_links(folder, files, _hub_cache_or_none())
  dtypes = tuple(sorted({dtype for dtype, _ in header.values()})) if header is not None else ()
  return CheckedFolder(unet_dir, kwargs, entries, weights, dtypes, sched_path, sched)


def _hub_cache_or_none():
  try:
    return _hub_cache_dir()
  except ImportError:
    return None


def load_diffusers_folder(folder, *, name='model'):
  """(UNet with the folder's weights, scheduler config dict) of a diffusers folder, built only
  after `check_diffusers_folder` and the weights' values (finite) are checked."""
  checked = check_diffusers_folder(folder, name=name)
  tensors = fmt.read_weights(checked.unet_dir)
  problems = fmt.weight_problems(checked.entries, fmt.modernise_keys(
      {k: np.shape(v) for k, v in tensors.items()}))
  if problems:  # a .bin: its names and shapes are known only now
    raise fmt.DiffusersFormatError(f'{checked.weights} does not hold the network its config '
                                   f'describes: ' + '; '.join(problems))
  checks.check_finite(tensors.items(), checked.weights)
  net = UNet(**checked.kwargs)
  fmt.load_state_dict(net, tensors, source=f'The weights in {checked.unet_dir}')
  return net, checked.scheduler_config


# The diffusion of the authors' released models, by resolution (the scripts' defaults):
# CIFAR-10 is the v2 eps / fixedlarge model, the 256x256 ones v1 (posterior variance).
def released_diffusion(resolution):
  betas = get_beta_schedule('linear', beta_start=0.0001, beta_end=0.02, num_diffusion_timesteps=1000)
  var = 'fixedlarge' if resolution == 32 else 'fixedsmall'
  return GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type=var, loss_type='mse')


def unet_kwargs_from_tf1_shapes(shapes, *, scope='model', resolution=None):
  """`UNet` arguments read off a TF1 checkpoint's variable shapes ({name: shape}).

  A configuration with attention at one level is the original's ``attn_resolutions=(16,)``,
  which fixes the resolution (16 * 2**level); the named configurations (``unet2d16b2``,
  ``unet2d16b2c112244``) then come out exactly. Otherwise ``resolution`` must be given.
  """
  def shape(name):
    if f'{scope}/{name}' not in shapes:
      raise fmt.DiffusersFormatError(f'no {scope}/{name} in the checkpoint: not a DDPM U-Net')
    return list(shapes[f'{scope}/{name}'])

  if f'{scope}/conv_in/W' not in shapes:
    raise fmt.DiffusersFormatError(f'no {scope}/conv_in/W in the checkpoint: not a DDPM U-Net')
  _, _, in_ch, ch = shape('conv_in/W')
  levels = 0
  while f'{scope}/down_{levels}/block_0/conv1/W' in shapes:
    levels += 1
  nrb = 0
  while f'{scope}/down_0/block_{nrb}/conv1/W' in shapes:
    nrb += 1
  level_chs = [shape(f'down_{i}/block_0/conv1/W')[-1] for i in range(levels)]
  down = tuple(f'{scope}/down_{i}/attn_0/q/W' in shapes for i in range(levels))
  up = tuple(f'{scope}/up_{i}/attn_0/q/W' in shapes for i in range(levels))
  kwargs = dict(ch=ch, out_ch=shape('conv_out/W')[-1], num_res_blocks=nrb, in_ch=in_ch, name=scope,
                resamp_with_conv=levels < 2 or f'{scope}/down_0/downsample/conv/W' in shapes)
  multiples = all(c % ch == 0 for c in level_chs)
  if multiples and down == up and sum(down) == 1 and resolution in (None, 16 * 2 ** down.index(True)):
    kwargs.update(ch_mult=tuple(c // ch for c in level_chs), attn_resolutions=(16,),
                  resolution=16 * 2 ** down.index(True))
    return kwargs
  if resolution is None:
    raise fmt.DiffusersFormatError('the checkpoint\'s U-Net is not an original configuration '
                                   '(attention at 16x16 only): pass resolution=')
  kwargs.update(block_out_channels=tuple(level_chs), attn_resolutions=(), attn_levels=(down, up),
                resolution=resolution)
  return kwargs


def model_config_name(kwargs):
  """The name in `MODEL_CONFIGS` whose settings ``kwargs`` has, or None."""
  for name, cfg in MODEL_CONFIGS.items():
    if all(kwargs.get(k, UNet.__init__.__kwdefaults__.get(k)) == (tuple(v) if isinstance(v, list) else v)
           for k, v in cfg.items()):
      return name
  return None


def _restore(net, prefix, ema):
  """Restores a checked checkpoint; a tensor unreadable now (a CRC error) is a
  DamagedCheckpointError, and NaN or infinite weights a ModelFileError."""
  try:
    step = checkpoints.restore_tf1_checkpoint(net, prefix, ema=ema)
  except tf.errors.OpError as e:
    raise DamagedCheckpointError(f'{prefix}: the checkpoint is damaged: '
                                 f'{checks._first_line(e.message)}') from None
  checks.check_variables_finite(net, prefix)
  return step


def load_tf1_checkpoint(prefix, *, ema=True, resolution=None):
  """(UNet, scheduler config) of a TF1 checkpoint of the authors' layout: its index read and
  compared with the network its shapes imply before that network is built."""
  prefix = checkpoints.resolve_checkpoint(prefix)
  shapes = checks.checkpoint_shapes(prefix)
  kwargs = checks.in_file(prefix, unet_kwargs_from_tf1_shapes, shapes, resolution=resolution)
  checks.check_checkpoint(prefix, shapes, lambda: UNet(**kwargs), ema=ema)
  net = UNet(**kwargs)
  _restore(net, prefix, ema)
  return net, fmt.scheduler_config(released_diffusion(net.resolution))


def read_run_kwargs(run_dir, defaults=None):
  """A run's kwargs.json over ``defaults`` (a script's train defaults; and over
  `tpu_utils.RECORDED_BEFORE_OPTION_EXISTED` for options it predates). A directory without
  kwargs.json (e.g. an unpacked release folder such as ``diffusion_cifar10_model/``) gets the
  defaults, which are the released models' settings; with no defaults that is an error."""
  path = os.path.join(run_dir, 'kwargs.json')
  if tf.io.gfile.exists(path):
    recorded = tpu_utils.with_older_defaults(tpu_utils.load_train_kwargs(run_dir), defaults or {})
    return dict(defaults or {}, **recorded)
  if defaults is None:
    raise FileNotFoundError(f'{path} not found: --model_dir must be a training run directory '
                            f'(holding kwargs.json and the model.ckpt-* files)')
  print(f'No kwargs.json in {run_dir}: using the script\'s default settings (those of the '
        f'released models).', flush=True)
  return dict(defaults)


def run_recipe(run_dir, recipe=None):
  """The `recipes.Recipe` of a run: ``recipe`` (the script's) with the run's kwargs.json set, or
  without one the recipe that kwargs.json's flags belong to."""
  path = os.path.join(run_dir, 'kwargs.json')
  if recipe is None:
    return checks.in_file(path, lambda: recipes.recipe_of_run(read_run_kwargs(run_dir)))
  return checks.in_file(path, lambda: recipe.with_flags(
      read_run_kwargs(run_dir, recipe.defaults('train')), 'train'))


def image_shape(recipe):
  """(H, W, C) of a recipe's training images (known without the data on disk)."""
  from .tpu_utils import datasets  # noqa: deferred: TFDS import is slow
  return datasets.get_dataset(recipe.data.dataset, **recipe.dataset_options()).image_shape


def _recipe_source(prefix):
  """The file a checkpoint's model settings come from: the kwargs.json beside it, if any."""
  path = os.path.join(os.path.dirname(prefix), 'kwargs.json')
  return path if os.path.exists(path) else 'the script\'s settings'


def build_checked(recipe, prefix, *, ema=True):
  """(the recipe's script model with checkpoint ``prefix`` restored, the step): the
  checkpoint's index compared with the model's variables (listed, not built) first."""
  shape = image_shape(recipe)
  shapes = checks.checkpoint_shapes(prefix)
  checks.check_checkpoint(prefix, shapes, lambda: script_models.build(recipe, shape), ema=ema,
                          source=_recipe_source(prefix))
  model = script_models.build(recipe, shape)
  return model, _restore(model.net, prefix, ema)


def load_run_dir(run_dir, *, ema=True):
  """(UNet, scheduler config) of one of our training runs: kwargs.json + latest checkpoint."""
  recipe = run_recipe(run_dir)
  if recipe.model.block_size != 1:
    raise fmt.DiffusersFormatError(f'{run_dir} was trained with block_size={recipe.model.block_size} '
                                   f'(space-to-depth), which a pipeline cannot express')
  model, _ = build_checked(recipe, checkpoints.resolve_checkpoint(run_dir), ema=ema)
  return model.net, fmt.scheduler_config(model.diffusion)


def resolve_source(name_or_path, *, subfolder=None, revision=None):
  """(kind, local path) of anything `Pipeline.from_pretrained` accepts: kind is 'diffusers'
  (a folder or Hub snapshot, downloaded first), 'run' (kwargs.json) or 'tf1' (a checkpoint
  prefix, or a folder of checkpoints such as an unpacked release)."""
  path = str(name_or_path)
  if not os.path.exists(path) and not os.path.exists(path + '.index'):
    if path.count('/') != 1 or path.startswith(('.', '/')):
      raise FileNotFoundError(f'{path!r} is not a local folder, a checkpoint prefix or a Hub id '
                              f'(owner/name)')
    path = download(path, revision=revision)
  if subfolder:
    path = os.path.join(path, subfolder)
  if not os.path.isdir(path):
    return 'tf1', path
  if _is_diffusers_folder(path):
    return 'diffusers', path
  if os.path.exists(os.path.join(path, 'kwargs.json')):
    return 'run', path
  if tf.train.latest_checkpoint(path):  # an unpacked release folder
    return 'tf1', path
  raise FileNotFoundError(f'{path} holds no model: expected a diffusers folder (config.json or '
                          f'model_index.json), a run directory (kwargs.json) or TF1 checkpoints')


def load_pretrained(name_or_path, *, subfolder=None, revision=None, ema=True, resolution=None,
                    dtype=None):
  """(UNet, scheduler config dict) from any source `Pipeline.from_pretrained` accepts. Every
  source is checked before its network is built; what cannot load raises an
  `errors.ModelFileError` (a ValueError) naming the file.

  ``dtype`` (None: the model's own, float32 unless a run trained in mixed precision): the
  U-Net's compute dtype, see `with_dtype`.
  """
  kind, path = resolve_source(name_or_path, subfolder=subfolder, revision=revision)
  if kind == 'diffusers':
    net, config = load_diffusers_folder(path)
  elif kind == 'run':
    net, config = load_run_dir(path, ema=ema)
  else:
    net, config = load_tf1_checkpoint(path, ema=ema, resolution=resolution)
  return with_dtype(net, dtype), config


def with_dtype(net, dtype):
  """``net`` computing in ``dtype``: 'bfloat16', 'float16', 'float32' (or 'none', the
  scripts' word for it), a tf or NumPy dtype; None leaves it as it is. The weights stay
  float32 (each layer casts them) and the output is float32."""
  if dtype is None:
    return net
  return net.set_compute_dtype('float32' if dtype == 'none' else dtype)


# ----------------------------------------------------------------------------- inspect

def _scheduler_summary(config):
  cfg = fmt.scheduler_config_with_defaults(config, config.get('_class_name', 'DDPMScheduler'))
  schedule = ('trained_betas' if cfg.get('trained_betas') is not None else
              f'{cfg["beta_schedule"]} {cfg["beta_start"]}..{cfg["beta_end"]}')
  variance = f', variance_type {cfg["variance_type"]}' if 'variance_type' in cfg else ''
  return (f'{config.get("_class_name", "DDPMScheduler")}: {cfg["num_train_timesteps"]} steps, '
          f'{schedule}, prediction_type {cfg["prediction_type"]}{variance}')


def _describe_folder(path):
  checked = check_diffusers_folder(path)
  index = os.path.join(path, MODEL_INDEX)
  pipeline = fmt.read_json(index).get('_class_name') if os.path.exists(index) else None
  return dict(kind='diffusers folder', source=path,
              model=f'UNet2DModel{f" in a {pipeline}" if pipeline else ""}',
              config={k: v for k, v in checked.kwargs.items() if k != 'name'},
              parameters=checked.parameters, files={checked.weights: os.path.getsize(checked.weights)},
              dtypes=checked.dtypes, scheduler=_scheduler_summary(checked.scheduler_config))


def describe_checkpoint(prefix, build, *, ema=True, config=None, kind='TF1 checkpoint',
                        source=None):
  """What `inspect_model` says of checkpoint ``prefix`` holding the network ``build()`` makes
  (a U-Net, or a script model with ``.net`` and ``.diffusion``), listed, not built."""
  shapes = checks.checkpoint_shapes(prefix)
  built, created = checks.check_checkpoint(prefix, shapes, build, ema=ema, source=source)
  net = getattr(built, 'net', built)
  diffusion = getattr(built, 'diffusion', None) or released_diffusion(net.resolution)
  dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
  names = [checkpoints.ema_name(tf1_name(v)) if ema else tf1_name(v) for v in created]
  data = tf.io.gfile.glob(prefix + '.data-*')
  return dict(kind=kind, source=prefix, model=f'UNet ({"EMA" if ema else "raw"} weights)',
              config=config or {}, parameters=checks.parameter_count(v.shape.as_list() for v in created),
              files={f: tf.io.gfile.stat(f).length for f in data},
              dtypes=tuple(sorted({dtypes[n].name for n in names})),
              scheduler=_scheduler_summary(fmt.scheduler_config(diffusion)))


def _describe_run(run_dir, prefix, recipe, ema):
  shape = image_shape(recipe)
  config = dict(model_name=recipe.model.model_name, image_shape=shape,
                block_size=recipe.model.block_size, recipe=recipe.name)
  return describe_checkpoint(prefix, lambda: script_models.build(recipe, shape), ema=ema,
                             config=config, kind=f'run directory {run_dir}',
                             source=_recipe_source(prefix))


def inspect_model(name_or_path, *, subfolder=None, revision=None, ema=True, resolution=None):
  """What `load_pretrained` would load, described without building it or reading its weights:
  a dict with kind, source, model, config, parameters, files ({path: bytes}), dtypes and
  scheduler (`format_report` prints it). A source that cannot load raises the same
  `errors.ModelFileError` as loading it would."""
  kind, path = resolve_source(name_or_path, subfolder=subfolder, revision=revision)
  if kind == 'diffusers':
    return _describe_folder(path)
  if kind == 'run':
    return _describe_run(path, checkpoints.resolve_checkpoint(path), run_recipe(path), ema)
  prefix = checkpoints.resolve_checkpoint(path)
  kwargs = checks.in_file(prefix, unet_kwargs_from_tf1_shapes, checks.checkpoint_shapes(prefix),
                          resolution=resolution)
  return describe_checkpoint(prefix, lambda: UNet(**kwargs), ema=ema,
                             config={k: v for k, v in kwargs.items() if k != 'name'})


def format_report(report):
  """``inspect_model``'s dict as the lines the ``inspect`` command prints."""
  total = sum(report['files'].values())
  lines = [f'{report["kind"]}: {report["source"]}', f'model: {report["model"]}',
           'config: ' + ', '.join(f'{k}={v}' for k, v in report['config'].items()),
           f'parameters: {report["parameters"]:,}',
           f'bytes: {total:,} in ' + ', '.join(os.path.basename(f) for f in report['files']),
           f'dtypes: {", ".join(report["dtypes"]) or "(known once read: a .bin)"}',
           f'scheduler: {report["scheduler"]}']
  return '\n'.join(lines)


def inspect_for_script(recipe, *, model_dir=None, ckpt=None, pretrained=None, ema=True):
  """`inspect_model`'s report of the model the scripts' ``sample`` would load from the same
  flags (a run directory, a checkpoint prefix with the script's recipe, or a pretrained model)."""
  if pretrained:
    return inspect_model(pretrained, ema=ema)
  prefix = checkpoints.resolve_checkpoint(model_dir or ckpt)
  run_dir = model_dir or os.path.dirname(prefix)
  return _describe_run(run_dir, prefix, run_recipe(run_dir, recipe), ema)


class PretrainedModel:
  """A loaded model as the scripts' sampling and evaluation see a script model
  (``.net``, ``.diffusion``, ``.denoise``, ``.image_shape``)."""

  block_size = 1

  def __init__(self, unet, scheduler_config):
    self.net = unet
    self.diffusion, self.scheduler_config = fmt.diffusion_from_scheduler_config(
        scheduler_config, 'DDPMScheduler')
    self.image_shape = (unet.resolution, unet.resolution, unet.in_ch)

  def denoise(self, x, t):
    return self.net(x, t, training=False)


def pretrained_model(name_or_path, **kwargs):
  """`PretrainedModel` of anything `load_pretrained` accepts (same keyword arguments)."""
  return PretrainedModel(*load_pretrained(name_or_path, **kwargs))


# ----------------------------------------------------------------------------- for the scripts

def load_for_sampling(recipe, *, model_dir=None, ckpt=None, pretrained=None, ema=True,
                      mixed_precision=None):
  """(script model, its recipe or None, checkpoint prefix or source, step) from exactly one of a
  run directory, a checkpoint prefix or a pretrained model (a Hub id or a diffusers folder).
  ``mixed_precision`` (--mixed_precision; None: the run's own) sets the network's compute
  dtype whatever the source.

  A run directory brings its kwargs.json; a bare checkpoint (e.g. the authors'
  ``diffusion_cifar10_model/model.ckpt-790000``) uses a kwargs.json beside it if present, else
  the script's ``recipe``, which is the released models' settings.
  """
  if sum(map(bool, (model_dir, ckpt, pretrained))) != 1:
    raise ValueError('pass exactly one of --model_dir (a training run), --ckpt (a checkpoint '
                     'prefix) or --pretrained (a Hub id or diffusers folder)')
  if mixed_precision == 'auto':  # a training default: a run samples as it was trained
    mixed_precision = None
  if pretrained:
    return pretrained_model(pretrained, ema=ema, dtype=mixed_precision), None, pretrained, None
  prefix = integrity.checkpoint_to_read(model_dir or ckpt, '--model_dir' if model_dir else '--ckpt')
  recipe = run_recipe(model_dir or os.path.dirname(prefix), recipe)
  if mixed_precision is not None:
    recipe = recipe.with_flags({'mixed_precision': mixed_precision})
  model, step = build_checked(recipe, prefix, ema=ema)
  return model, recipe, prefix, step
