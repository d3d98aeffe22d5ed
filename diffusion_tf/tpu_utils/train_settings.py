"""What a training run trains with: the hyper-parameters `tpu_utils.run_training` passes to its
pieces (the run directory, the compiled step, the loop) as one value instead of 18 arguments."""

import dataclasses

from .. import utils

CLIP_MODES = ('global', 'per_replica')
LOSS_SCALES = (None, 'dynamic')
UNBOUNDED_STEPS = int(1e10)  # max_steps when none is given: the original trained until stopped


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """The training hyper-parameters, with `run_training`'s defaults; checked on construction
  (plain Python, no TF op: a bad value fails before any strategy or directory is set up).

  ``clip_mode='global'`` clips the all-reduced gradient at ``grad_clip``; ``'per_replica'``
  clips each replica's share first, as the original on TPU. ``loss_scale='dynamic'`` is the
  float16 loss scaling of `DynamicLossScale`. ``lr_schedule='linear'`` (`utils.get_lr`) needs
  a bounded ``max_steps``.
  """
  optimizer: str
  lr: float
  warmup: int
  grad_clip: float
  total_bs: int
  ema_decay: float = 0.9999
  ema_warmup: tuple = None  # (inv_gamma, power): diffusers' EMA warm-up up to ema_decay
  optimizer_options: tuple = ()  # ((name, value), ...): e.g. Adam's weight_decay, beta1
  grad_accumulation: int = 1  # micro-batches per update (total_bs is the update's batch)
  max_steps: int = UNBOUNDED_STEPS
  lr_schedule: str = 'constant'
  clip_mode: str = 'global'
  loss_scale: str = None
  seed: int = None
  keep_checkpoint_max: int = 2
  save_checkpoints_secs: float = 1600
  save_every_steps: int = None
  iterations_per_loop: int = 1000
  summary_every: int = 100
  max_seconds_per_loop: float = 30.
  allow_kwargs_mismatch: bool = False

  def __post_init__(self):
    if self.clip_mode not in CLIP_MODES:
      raise ValueError(f'clip_mode={self.clip_mode!r}; expected one of {CLIP_MODES}')
    if self.loss_scale not in LOSS_SCALES:
      raise ValueError(f"loss_scale={self.loss_scale!r}; expected None or 'dynamic'")
    utils.check_lr_schedule(self.lr_schedule, self.total_steps)
    if self.grad_accumulation < 1 or self.total_bs % self.grad_accumulation:
      raise ValueError(f'grad_accumulation={self.grad_accumulation!r} must be >= 1 and divide '
                       f'total_bs={self.total_bs}')
    if self.ema_warmup is not None and not (len(self.ema_warmup) == 2 and self.ema_warmup[0] > 0
                                            and self.ema_warmup[1] > 0):
      raise ValueError(f'ema_warmup={self.ema_warmup!r}; expected (inv_gamma > 0, power > 0)')

  @property
  def total_steps(self):
    """``max_steps``, or None for a run without an end (the learning-rate schedule's horizon)."""
    return None if self.max_steps >= UNBOUNDED_STEPS else self.max_steps

