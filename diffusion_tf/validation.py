"""The rules every script flag must meet, checked before a command writes anything.

`check_command(fn, arguments)` looks up each of the command's parameters (from its signature)
in `RULES` by name, so a flag means the same thing in every script and command. The allowed
names come from the code that implements them (`BETA_SCHEDULES`, `MODEL_CONFIGS`,
`sampling.SAMPLERS`, ...), never from a copy here. Rules that involve several flags (the
resolution the model can take, the flags a data set needs) are in `CROSS_RULES`.
"""

import importlib
import inspect
import numbers

from .errors import FlagError


def _flag(name):
  return f'--{name}'


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


# ----------------------------------------------------------------------------- rule makers
# A rule is ``rule(name, value, arguments) -> None`` and raises FlagError naming the flag.

def integer(minimum=None, *, optional=False):
  def rule(name, value, arguments):
    if value is None and optional:
      return
    what = 'an integer' + (f' >= {minimum}' if minimum is not None else '')
    if optional:
      what += ' (or None)'
    if not _is_int(value) or (minimum is not None and value < minimum):
      raise FlagError(f'{_flag(name)} must be {what}; got {value!r}')
  return rule


def number(*, above=None, at_least=None, below=None, at_most=None, optional=False):
  bounds = [(b, sym, ok) for b, sym, ok in (
      (above, '>', lambda v, b: v > b), (at_least, '>=', lambda v, b: v >= b),
      (below, '<', lambda v, b: v < b), (at_most, '<=', lambda v, b: v <= b)) if b is not None]
  what = 'a number' + (' ' + ' and '.join(f'{sym} {b}' for b, sym, _ in bounds) if bounds else '')
  if optional:
    what += ' (or None)'

  def rule(name, value, arguments):
    if value is None and optional:
      return
    if not _is_number(value) or not all(ok(value, b) for b, _, ok in bounds):
      raise FlagError(f'{_flag(name)} must be {what}; got {value!r}')
  return rule


def one_of(allowed_fn):
  """``allowed_fn()`` gives the allowed values (called late: it may import the module that
  defines them)."""
  def rule(name, value, arguments):
    allowed = tuple(allowed_fn())
    if value not in allowed:
      shown = ', '.join('None' if a is None else str(a) for a in allowed)
      raise FlagError(f'{_flag(name)} must be one of {shown}; got {value!r}')
  return rule


def boolean(name, value, arguments):
  if not isinstance(value, bool) and value not in (0, 1):
    raise FlagError(f'{_flag(name)} must be True or False (or 1 / 0); got {value!r}')


def path(name, value, arguments):
  """A file or directory path (not checked for existence here: the commands say what is
  missing where they look for it)."""
  if value is not None and (not isinstance(value, str) or not value):
    raise FlagError(f'{_flag(name)} must be a path; got {value!r}')


def text(name, value, arguments):
  if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)) or value == '':
    raise FlagError(f'{_flag(name)} must be a non-empty name; got {value!r}')


def text_or_none(name, value, arguments):
  if value is not None:
    text(name, value, arguments)


# ----------------------------------------------------------------------------- allowed sets

def defined_in(module, *names):
  """The allowed values: the collections ``names`` of ``diffusion_tf.<module>`` joined (sorted
  when a name is a dict). Read late, so that checking a flag imports only what it needs."""
  def allowed():
    found = importlib.import_module(f'.{module}', __package__)
    values = ()
    for name in names:
      value = getattr(found, name)
      values += tuple(sorted(value) if isinstance(value, dict) else value)
    return values
  return allowed


def _loss_type(name, value, arguments):
  """v2 diffusion has its loss types, v1 only 'noisepred' (the recipe's diffusion version)."""
  if arguments.recipe.diffusion.version == 2:
    from .diffusion_utils_2 import LOSS_TYPES
  else:
    from .diffusion_utils import LOSS_TYPES
  one_of(lambda: LOSS_TYPES)(name, value, arguments)


# ----------------------------------------------------------------------------- the rules

RULES = {
    # names and paths
    'exp_name': text, 'tpu_name': path, 'bucket_name_prefix': path, 'region': path,
    'log_dir': path, 'tfds_data_dir': path, 'tfr_file': path, 'folder': path,
    'warm_start_model_dir': path, 'model_dir': path, 'ckpt': path, 'out': path,
    'load_ckpt': path, 'samples_dir': path, 'inception_graph': path, 'stats_cache_dir': path,
    'pretrained': path, 'ref_stats': path, 'export_npz': path, 'export_png_dir': path,
    'source': path, 'out_dir': path, 'hf_dataset': path, 'hf_cache_dir': path,
    'hf_config': text_or_none, 'hf_split': text_or_none, 'image_column': text_or_none,
    'hf_streaming': boolean, 'pipeline': one_of(defined_in('pipelines', 'PIPELINES')),
    # the model and the diffusion
    'model_name': one_of(defined_in('models.unet', 'MODEL_CONFIGS')), 'dataset': one_of(defined_in('tpu_utils.datasets', 'DATASETS')),
    'resolution': integer(1, optional=True), 'channels': integer(1), 'block_size': integer(1),
    'num_diffusion_timesteps': integer(1),
    'beta_start': number(above=0, at_most=1), 'beta_end': number(above=0, at_most=1),
    'beta_schedule': one_of(defined_in('diffusion_base', 'BETA_SCHEDULES')), 'model_mean_type': one_of(defined_in('diffusion_utils_2', 'MODEL_MEAN_TYPES')),
    'model_var_type': one_of(defined_in('diffusion_utils_2', 'MODEL_VAR_TYPES')), 'loss_type': _loss_type,
    'dropout': number(at_least=0, below=1), 'randflip': boolean,
    'mixed_precision': one_of(defined_in('script_models', 'MIXED_PRECISION')),
    # training
    'optimizer': one_of(defined_in('tpu_utils.tpu_utils', 'OPTIMIZERS')), 'total_bs': integer(1), 'grad_clip': number(above=0),
    'lr': number(above=0), 'warmup': integer(0), 'lr_schedule': one_of(defined_in('utils', 'LR_SCHEDULES')),
    'ema_decay': number(at_least=0, below=1), 'max_steps': integer(1, optional=True),
    'keep_checkpoint_max': integer(1), 'save_every_steps': integer(1, optional=True),
    'save_checkpoints_secs': number(at_least=0), 'clip_mode': one_of(defined_in('tpu_utils.tpu_utils', 'CLIP_MODES')),
    'allow_kwargs_mismatch': boolean, 'seed': integer(0, optional=True),
    'num_sample_images': integer(0), 'sample_steps': integer(1), 'shuffle_buffer': integer(1, optional=True),
    # sampling and evaluation
    'num_samples': integer(1), 'batch_size': integer(1), 'sampler': one_of(defined_in('sampling', 'SAMPLERS')),
    'steps': integer(1, optional=True), 'eta': number(at_least=0), 'spacing': one_of(defined_in('sampling', 'SPACINGS', 'DIFFUSERS_SPACINGS')),
    'ema': boolean, 'overwrite': boolean, 'once': boolean, 'dump_samples_only': boolean,
    'num_inception_samples': integer(2), 'mode': one_of(defined_in('tpu_utils.simple_eval_worker', 'MODES')),
    'max_batches': integer(1, optional=True), 'features': one_of(defined_in('runners', 'FEATURES')),
    'format': one_of(defined_in('export', 'FORMATS')), 'quantize': one_of(defined_in('export', 'QUANTIZATIONS')),
    'order': integer(1, optional=True),  # which orders a sampler takes: _order_and_spacing_fit_the_sampler
    # editing (the model's number of steps bounds --t: checked by the command)
    'images': path, 'masks': path, 'invert_mask': boolean, 'resize': boolean,
    'method': one_of(defined_in('editing', 'METHODS')), 'jump_length': integer(1),
    'jump_n_sample': integer(1), 'strength': number(at_least=0, at_most=1), 't': integer(0),
    'num': integer(2), 'mix': one_of(defined_in('editing', 'MIXES')),
}


# ----------------------------------------------------------------------------- several flags

def _beta_range(a):
  if {'beta_start', 'beta_end'} <= set(a) and a['beta_start'] > a['beta_end']:
    raise FlagError(f'--beta_start ({a["beta_start"]}) must not exceed --beta_end ({a["beta_end"]})')


def _resolution_fits_the_model(a):
  """The U-Net halves the resolution len(ch_mult) - 1 times, after the space-to-depth of
  --block_size: the resolution must be divisible by both."""
  if a.get('resolution') is None or 'model_name' not in a:
    return
  from .models.unet import MODEL_CONFIGS
  factor = 2 ** (len(MODEL_CONFIGS[a['model_name']]['ch_mult']) - 1) * a.get('block_size', 1)
  if a['resolution'] % factor:
    raise FlagError(
        f'--resolution {a["resolution"]} does not fit --model_name {a["model_name"]}'
        + (f' with --block_size {a["block_size"]}' if a.get('block_size', 1) != 1 else '')
        + f': it must be a multiple of {factor}')


def _dataset_needs(a):
  dataset = a.get('dataset')
  if dataset is not None:
    from .tpu_utils.datasets import DATASETS
    takes = inspect.signature(DATASETS[dataset]).parameters
    from .recipes.recipe import HF_DATA_FLAGS
    for flag in ('resolution', 'folder') + HF_DATA_FLAGS:
      if a.get(flag) not in (None, False) and flag not in takes:
        raise FlagError(f'--{flag} does not apply to --dataset {dataset} (its images have a '
                        f'fixed source and size); leave it out')
  if dataset == 'digits':
    from .tpu_utils.datasets import DIGITS_CHANNELS, DIGITS_MIN_RESOLUTION
    if a.get('resolution') is not None and a['resolution'] < DIGITS_MIN_RESOLUTION:
      raise FlagError(f'--resolution must be at least {DIGITS_MIN_RESOLUTION} for --dataset '
                      f'digits (8x8 images); got {a["resolution"]}')
    if 'channels' in a and a['channels'] not in DIGITS_CHANNELS:
      raise FlagError(f'--channels must be one of {", ".join(map(str, DIGITS_CHANNELS))} for '
                      f'--dataset digits; got {a["channels"]!r}')
  elif dataset == 'folder':
    missing = [f'--{k}' for k in ('folder', 'resolution') if a.get(k) is None]
    if missing:
      raise FlagError(f'--dataset folder needs {" and ".join(missing)} (a directory of images '
                      f'and the square size to train at)')
  elif dataset == 'hf' and a.get('hf_dataset') is None:
    raise FlagError('--dataset hf needs --hf_dataset (a Hub data set id, or a local folder the '
                    '`datasets` library reads)')
  elif dataset == 'lsun' and 'tfr_file' in a and a['tfr_file'] is None:
    raise FlagError('--dataset lsun needs --tfr_file (a StyleGAN2 dataset_tool .tfrecords file)')


def _one_source(a):
  if {'model_dir', 'ckpt'} <= set(a):
    sources = ('model_dir', 'ckpt', 'pretrained') if 'pretrained' in a else ('model_dir', 'ckpt')
    if sum(bool(a[k]) for k in sources) != 1:
      raise FlagError('pass exactly one of --model_dir (a training run), --ckpt (a checkpoint '
                      'prefix or directory)'
                      + (' or --pretrained (a Hub id or diffusers folder)' if 'pretrained' in a else ''))


def _order_and_spacing_fit_the_sampler(a):
  if 'sampler' not in a:
    return
  from .sampling import check_order, check_spacing
  try:
    if 'order' in a:
      check_order(a['sampler'], a['order'])
    if 'spacing' in a:
      check_spacing(a['sampler'], a['spacing'])
  except ValueError as e:
    raise FlagError(str(e)) from None


def _linear_schedule_needs_max_steps(a):
  from .utils import DECAYING_LR_SCHEDULES
  if a.get('lr_schedule') in DECAYING_LR_SCHEDULES and 'max_steps' in a and a['max_steps'] is None:
    raise FlagError(f"--lr_schedule {a['lr_schedule']} decays the rate to 0 at --max_steps: set "
                    "--max_steps (or pass --lr_schedule constant)")


CROSS_RULES = (_beta_range, _resolution_fits_the_model, _dataset_needs, _one_source,
               _order_and_spacing_fit_the_sampler,
               _linear_schedule_needs_max_steps)


def unchecked_flags(fn):
  """The parameters of ``fn`` that no rule covers (a new flag needs a rule in `RULES`)."""
  return [n for n in inspect.signature(fn).parameters if n not in RULES]


class Arguments(dict):
  """A command's {flag: value} and the recipe of its script (None for other commands)."""

  def __init__(self, values, recipe=None):
    super().__init__(values)
    self.recipe = recipe


def check_command(arguments, recipe=None):
  """Raises FlagError for the first flag of ``arguments`` ({parameter: value}, all of a
  command's parameters, defaults included) that breaks its rule. Parameters without a rule are
  not checked (`unchecked_flags` lists them; the tests require there are none)."""
  arguments = Arguments(arguments, recipe)
  for name, value in arguments.items():
    if name in RULES:
      RULES[name](name, value, arguments)
  for rule in CROSS_RULES:
    rule(arguments)


def check_call(fn, args, kwargs):
  """`check_command` on a call ``fn(*args, **kwargs)`` (defaults filled in)."""
  bound = inspect.signature(fn).bind(*args, **kwargs)
  bound.apply_defaults()
  check_command(dict(bound.arguments), getattr(fn, '_recipe', None))
