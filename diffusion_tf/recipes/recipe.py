"""The recipe's sections and the `Recipe` itself (see the package's docstring)."""


import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Optional

REQUIRED = inspect.Parameter.empty
HF_DATA_FLAGS = ('hf_dataset', 'hf_config', 'hf_split', 'image_column', 'hf_streaming',
                 'hf_cache_dir')  # the flags of --dataset hf (`tpu_utils.datasets.HubDataset`)  # a flag without a default (e.g. evaluation's model_dir)


@dataclass(frozen=True)
class Data:
  """The training images: a `tpu_utils.datasets.DATASETS` name and where its files are."""
  dataset: str
  randflip: int = 1
  tfds_data_dir: Optional[str] = None
  tfr_file: Optional[str] = None
  folder: Optional[str] = None      # --dataset folder: a directory of images
  resolution: Optional[int] = None  # the square size to train at (folder, digits)
  channels: Optional[int] = None    # digits: 1 (grey) or 3
  shuffle_buffer: Optional[int] = None
  hf_dataset: Optional[str] = None  # --dataset hf: a Hub id or a local `datasets` folder
  hf_config: Optional[str] = None
  hf_split: Optional[str] = None    # (None: 'train')
  image_column: Optional[str] = None  # (None: 'image')
  hf_streaming: bool = False
  hf_cache_dir: Optional[str] = None


@dataclass(frozen=True)
class Model:
  """The U-Net: a `models.unet.MODEL_CONFIGS` name, dropout, the v1 space-to-depth block size
  and the compute precision."""
  model_name: str
  dropout: float = 0.
  block_size: int = 1
  mixed_precision: Optional[str] = None


@dataclass(frozen=True)
class Diffusion:
  """The noise schedule and parameterisation. ``version`` 2 is `GaussianDiffusion2` (CIFAR-10:
  mean / variance / loss types), 1 is `GaussianDiffusion` (CelebA-HQ, LSUN: noise prediction,
  posterior variance)."""
  version: int
  num_diffusion_timesteps: int = 1000
  beta_start: float = 0.0001
  beta_end: float = 0.02
  beta_schedule: str = 'linear'
  model_mean_type: str = 'eps'
  model_var_type: str = 'fixedlarge'
  loss_type: str = 'mse'


@dataclass(frozen=True)
class Train:
  """The optimisation, the devices and the run directory (``<log_dir>/9999-99-99/<experiment
  name>``, on ``gs://<bucket_name_prefix>-<region>/`` with a bucket)."""
  optimizer: str = 'adam'
  total_bs: int = 128
  grad_clip: float = 1.
  lr: float = 2e-4
  warmup: int = 5000
  lr_schedule: str = 'constant'
  ema_decay: float = 0.9999
  exp_name: str = 'EXP'
  log_dir: str = 'logs'
  tpu_name: Optional[str] = None
  bucket_name_prefix: Optional[str] = None
  region: Optional[str] = None
  keep_checkpoint_max: int = 2
  max_steps: Optional[int] = None
  save_every_steps: Optional[int] = None
  save_checkpoints_secs: float = 1600
  clip_mode: str = 'global'
  allow_kwargs_mismatch: bool = False
  seed: Optional[int] = None
  warm_start_model_dir: Optional[str] = None
  iterations_per_loop: int = 1000   # steps per compiled call at most
  num_sample_images: int = 0        # a grid of EMA samples at the end of training
  sample_steps: int = 100           # ... drawn with the ancestral sampler on this many steps


@dataclass(frozen=True)
class Evaluation:
  """FID / Inception Score and bits/dim: batch size, sample count, the real images compared
  with (their path flags may default differently from training's, as in the original)."""
  total_bs: int = 256
  num_inception_samples: int = 50000
  tfds_data_dir: Optional[str] = None
  tfr_file: Optional[str] = None
  limit_dataset_size: int = 0       # real images for the reference statistics (0: all)
  features: str = 'inception'       # or 'digits' (the digits feature network)


@dataclass(frozen=True)
class Sampling:
  """The ``sample`` command's defaults (and the sampler flags of ``evaluation``)."""
  num_samples: int = 64
  batch_size: int = 64
  sampler: str = 'ddpm'
  steps: Optional[int] = None
  eta: float = 0.
  spacing: str = 'uniform'
  order: Optional[int] = None
  seed: int = 0
  ema: bool = True
  recognise: Optional[str] = None   # 'digits': say how many samples a digit classifier reads


@dataclass(frozen=True)
class Editing:
  """The ``inpaint``, ``img2img`` and ``interpolate`` commands' own defaults (their sampler,
  seed and batch flags are `Sampling`'s; ``inpaint`` runs RePaint's 250 steps by default)."""
  images: Optional[str] = None
  masks: Optional[str] = None
  invert_mask: bool = False
  method: str = 'repaint'
  steps: Optional[int] = 250
  jump_length: int = 10
  jump_n_sample: int = 10
  strength: float = 0.5
  t: int = 500
  num: int = 8
  mix: str = 'slerp'
  resize: bool = False


# Defaults of flags that are the same in every script (not settings of a recipe).
COMMON_DEFAULTS = {
    'tpu_name': None, 'bucket_name_prefix': None, 'region': None,
    'model_dir': None, 'ckpt': None, 'pretrained': None, 'load_ckpt': None, 'out': None,
    'overwrite': False, 'mixed_precision': None, 'export_npz': None, 'export_png_dir': None,
    'once': False, 'dump_samples_only': False, 'samples_dir': None, 'inception_graph': None,
    'stats_cache_dir': None, 'ref_stats': None, 'mode': 'bpd_eval', 'max_batches': None,
    'format': 'saved_model', 'quantize': 'none',
}

# Flags that have no default: the run an evaluation reads.
REQUIRED_FLAGS = {'evaluation': ('model_dir',), 'simple_eval': ('model_dir',)}

# Where each command's flags take their defaults, first match first.
SECTIONS_OF_COMMAND = {
    'train': ('data', 'model', 'diffusion', 'train'),
    'sample': ('sampling',),
    'inspect': ('sampling',),
    'export': ('sampling',),
    'evaluation': ('evaluation', 'sampling'),
    'simple_eval': ('evaluation',),
    'inpaint': ('editing', 'sampling'),
    'img2img': ('sampling', 'editing'),
    'interpolate': ('editing', 'sampling'),
}


@dataclass(frozen=True)
class Recipe:
  """One data set's configuration. ``commands``: {command: its flags in order, positional
  ones before ``|``, keyword-only ones after}; ``docs``: {command: its help text}."""
  name: str
  data: Data
  model: Model
  diffusion: Diffusion
  train: Train = Train()
  evaluation: Evaluation = Evaluation()
  sampling: Sampling = Sampling()
  editing: Editing = Editing()
  commands: dict = field(default_factory=dict, compare=False)
  docs: dict = field(default_factory=dict, compare=False)

  # -- flags

  def flags(self, command):
    """(positional flag names, keyword-only flag names) of ``command``."""
    positional, _, keyword = self.commands[command].partition('|')
    return tuple(positional.split()), tuple(keyword.split())

  def default(self, command, flag):
    """The default of ``flag`` in ``command`` (`REQUIRED` for none)."""
    if flag in REQUIRED_FLAGS.get(command, ()):
      return REQUIRED
    for section in SECTIONS_OF_COMMAND[command]:
      values = getattr(self, section)
      if flag in _field_names(values):
        return getattr(values, flag)
    if flag in COMMON_DEFAULTS:
      return COMMON_DEFAULTS[flag]
    raise KeyError(f'recipe {self.name}: no default for --{flag} of {command}')

  def defaults(self, command):
    """{flag: default} of ``command``, in flag order (required flags left out)."""
    names = sum(self.flags(command), ())
    out = {n: self.default(command, n) for n in names}
    return {n: v for n, v in out.items() if v is not REQUIRED}

  def with_flags(self, values, command='train'):
    """A copy with ``values`` ({flag: value}) set in the sections ``command`` reads; flags
    that are no recipe setting (paths of the run, ``tpu_name``, ...) are ignored. The values
    are kept as given (``--lr 1`` stays the int 1, as in experiment names so far)."""
    changes = {}
    for flag, value in values.items():
      for section in SECTIONS_OF_COMMAND[command]:
        if flag in _field_names(getattr(self, section)):
          changes.setdefault(section, {})[flag] = value
          break
    return dataclasses.replace(self, **{
        s: dataclasses.replace(getattr(self, s), **c) for s, c in changes.items()})

  # -- what the settings name

  def experiment_name(self):
    """The original's run-directory name template (v2: CIFAR-10's, v1: CelebA-HQ / LSUN's)."""
    d, m, t, data = self.diffusion, self.model, self.train, self.data
    name = (f'{t.exp_name}_{data.dataset}_{m.model_name}_{t.optimizer}_bs{t.total_bs}_lr{t.lr}'
            f'w{t.warmup}_beta{d.beta_start}-{d.beta_end}-{d.beta_schedule}_'
            f't{d.num_diffusion_timesteps}_')
    if d.version == 2:
      name += (f'{d.model_mean_type}-{d.model_var_type}-{d.loss_type}_dropout{m.dropout}_'
               f'randflip{data.randflip}')
      # The v2 template has no block size (CIFAR-10 never used one); the digits script does.
      return name + (f'_blk{m.block_size}' if m.block_size != 1 else '')
    return f'{name}{d.loss_type}_dropout{m.dropout}_randflip{data.randflip}_blk{m.block_size}'

  def dataset_options(self):
    """Keyword arguments of `tpu_utils.datasets.get_dataset` for the training images."""
    d = self.data
    names = ('resolution', 'folder', 'shuffle_buffer', 'channels')
    if d.dataset == 'hf':
      names += HF_DATA_FLAGS
    extra = {k: getattr(d, k) for k in names if getattr(d, k) is not None}
    return dict(tfds_data_dir=d.tfds_data_dir, tfr_file=d.tfr_file, **extra)


def _field_names(obj):
  return {f.name for f in dataclasses.fields(obj)}
