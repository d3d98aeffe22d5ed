"""Loading a model from wherever it comes: a Hub repo id, a diffusers folder (the google repos'
flat layout or ``save_pretrained``'s), one of our run directories (kwargs.json and the latest
checkpoint) or a TF1 checkpoint prefix of the authors' release, to (U-Net, diffusion).

`load_pretrained` gives (UNet, diffusers scheduler config) for the pipelines; `load_for_sampling`
gives a script model for the scripts' ``sample`` and ``evaluation``. The pipelines and the
command bodies (`runners`) both sit on this module; it imports neither.
"""

import os

import tensorflow as tf

from . import checkpoints, diffusers_format as fmt, integrity, recipes, script_models
from .diffusion_base import get_beta_schedule
from .diffusion_utils_2 import GaussianDiffusion2
from .models.unet import MODEL_CONFIGS, UNet
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


def download(repo_id, *, revision=None):
  """A local snapshot of Hub repo ``repo_id`` (configs and safetensors weights) in the HF cache.

  Offline (HF_HUB_OFFLINE=1) only the cache is consulted, so a missing model fails at once.
  """
  import huggingface_hub
  from huggingface_hub import errors
  cache = _hub_cache_dir()
  patterns = ['*.json', '*.safetensors']
  try:
    import torch  # noqa: F401  (.bin weights are readable only with torch)
    patterns.append('*.bin')
  except ImportError:
    pass
  try:
    return huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                             allow_patterns=patterns,
                                             local_files_only=_hub_offline())
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


def load_diffusers_folder(folder, *, name='model'):
  """(UNet with the folder's weights, scheduler config dict) of a diffusers folder."""
  unet_dir, sched_path = _diffusers_parts(folder)
  config = fmt.read_json(os.path.join(unet_dir, 'config.json'))
  try:
    net = UNet(**fmt.unet_kwargs_from_config(config, name=name))
  except fmt.DiffusersFormatError as e:
    raise fmt.DiffusersFormatError(f'{unet_dir}/config.json: {e}') from None
  fmt.load_state_dict(net, fmt.read_weights(unet_dir), source=f'The weights in {unet_dir}')
  if not os.path.exists(sched_path):
    raise FileNotFoundError(f'{folder} has a UNet but no scheduler config (expected {sched_path})')
  return net, fmt.read_json(sched_path)


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


def load_tf1_checkpoint(prefix, *, ema=True, resolution=None):
  """(UNet, scheduler config) of a TF1 checkpoint of the authors' layout."""
  prefix = checkpoints.resolve_checkpoint(prefix)
  shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  net = UNet(**unet_kwargs_from_tf1_shapes(shapes, resolution=resolution))
  checkpoints.restore_tf1_checkpoint(net, prefix, ema=ema)
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
  if recipe is None:
    return recipes.recipe_of_run(read_run_kwargs(run_dir))
  return recipe.with_flags(read_run_kwargs(run_dir, recipe.defaults('train')), 'train')


def image_shape(recipe):
  """(H, W, C) of a recipe's training images (known without the data on disk)."""
  from .tpu_utils import datasets  # noqa: deferred: TFDS import is slow
  return datasets.get_dataset(recipe.data.dataset, **recipe.dataset_options()).image_shape


def load_run_dir(run_dir, *, ema=True):
  """(UNet, scheduler config) of one of our training runs: kwargs.json + latest checkpoint."""
  recipe = run_recipe(run_dir)
  model = script_models.build(recipe, image_shape(recipe))
  if model.block_size != 1:
    raise fmt.DiffusersFormatError(f'{run_dir} was trained with block_size={model.block_size} '
                                   f'(space-to-depth), which a pipeline cannot express')
  checkpoints.restore_tf1_checkpoint(model.net, checkpoints.resolve_checkpoint(run_dir), ema=ema)
  return model.net, fmt.scheduler_config(model.diffusion)


def load_pretrained(name_or_path, *, subfolder=None, revision=None, ema=True, resolution=None,
                    dtype=None):
  """(UNet, scheduler config dict) from any source `Pipeline.from_pretrained` accepts.

  ``dtype`` (None: the model's own, float32 unless a run trained in mixed precision): the
  U-Net's compute dtype, see `with_dtype`.
  """
  net, scheduler_config = _load_pretrained(name_or_path, subfolder=subfolder, revision=revision,
                                           ema=ema, resolution=resolution)
  return with_dtype(net, dtype), scheduler_config


def with_dtype(net, dtype):
  """``net`` computing in ``dtype``: 'bfloat16', 'float16', 'float32' (or 'none', the
  scripts' word for it), a tf or NumPy dtype; None leaves it as it is. The weights stay
  float32 (each layer casts them) and the output is float32."""
  if dtype is None:
    return net
  return net.set_compute_dtype('float32' if dtype == 'none' else dtype)


def _load_pretrained(name_or_path, *, subfolder, revision, ema, resolution):
  path = str(name_or_path)
  if not os.path.exists(path) and not os.path.exists(path + '.index'):
    if path.count('/') != 1 or path.startswith(('.', '/')):
      raise FileNotFoundError(f'{path!r} is not a local folder, a checkpoint prefix or a Hub id '
                              f'(owner/name)')
    path = download(path, revision=revision)
  if subfolder:
    path = os.path.join(path, subfolder)
  if os.path.isdir(path):
    if _is_diffusers_folder(path):
      return load_diffusers_folder(path)
    if os.path.exists(os.path.join(path, 'kwargs.json')):
      return load_run_dir(path, ema=ema)
    if tf.train.latest_checkpoint(path):  # an unpacked release folder
      return load_tf1_checkpoint(path, ema=ema, resolution=resolution)
    raise FileNotFoundError(f'{path} holds no model: expected a diffusers folder (config.json or '
                            f'model_index.json), a run directory (kwargs.json) or TF1 checkpoints')
  return load_tf1_checkpoint(path, ema=ema, resolution=resolution)


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
  model = script_models.build(recipe, image_shape(recipe))
  step = checkpoints.restore_tf1_checkpoint(model.net, prefix, ema=ema)
  return model, recipe, prefix, step
