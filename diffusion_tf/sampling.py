"""Samplers beyond the original's 1000-step ancestral sampler, and batched sample generation.

* ``ddpm``: the original ancestral sampler of the diffusion object (v2: the model's
  variance type, fixedlarge for CIFAR-10; v1: the posterior variance).
* ``ddpm`` with ``steps < T``: strided ancestral sampling on a respaced process whose
  betas are ``1 - ac[tau_i] / ac[tau_{i-1}]`` over the kept timesteps ``tau``.
* ``ddim``: Song et al. 2021; ``eta=0`` is deterministic given x_T, ``eta=1`` with all
  steps is the ancestral sampler with the posterior variance.
* ``pndm``, ``dpmsolver++`` (``--order`` 1-3), ``unipc`` (``--order`` 1-3): diffusers'
  schedulers of those names, in `solvers` (re-exported here).
* ``sde-dpmsolver++`` and ``sasolver`` (stochastic), ``dpmsolver++_singlestep``, ``deis``:
  DPMSolverMultistepScheduler with algorithm_type 'sde-dpmsolver++', SASolverScheduler,
  DPMSolverSinglestepScheduler and DEISMultistepScheduler, in `solvers`.
* ``euler``, ``euler_ancestral``, ``heun``, ``lms`` (``--order`` 1-4), ``kdpm2``,
  ``kdpm2_ancestral``: diffusers' sigma-family schedulers, in `sigma_samplers`.

Network evaluations per sample for ``--steps N``: pndm: N + 9 (N + 1 with ``skip_prk_steps``);
heun, kdpm2, kdpm2_ancestral: 2N - 1; every other: N.

Each sampler is one `SamplerEntry` of `REGISTRY` (the only place that knows sampler names);
`SamplerSettings` is a sampler with its options resolved (from the scripts' flags or a diffusers
scheduler config) and runs its loop. Eager calls of the loops compile per call; `Sampler` and
the pipelines keep their compiled loops.
"""

import contextlib
import dataclasses
import functools
import inspect
import math
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from . import diffusers_format as fmt, nn, sigma_samplers, utils
from .diffusion_utils import GaussianDiffusion
from .diffusion_utils_2 import GaussianDiffusion2
from .errors import FlagError
from .solvers import (DIFFUSERS_SPACINGS, SOLVER_ORDERS, diffusers_timesteps,  # noqa: F401
                      dpm_solver_sample_loop, dynamic_threshold, model_eps_and_x0,
                      pndm_sample_loop, unipc_sample_loop)
from .solvers import (SA_ORDERS, deis_sample_loop, dpm_solver_singlestep_sample_loop,  # noqa: F401
                      sa_solver_sample_loop)
from .diffusion_base import timestep_loop

SPACINGS = ('uniform', 'quad')


def timestep_sequence(num_timesteps, steps, spacing='uniform'):
  """Increasing int64 timesteps ``tau`` [steps] starting at 0, for strided samplers.

  'uniform' takes every ``T // steps``-th step (as the DDIM paper); 'quad' spaces them
  quadratically, ``int(linspace(0, sqrt(0.8 T), steps) ** 2)`` (the DDIM paper's CIFAR-10
  choice) made strictly increasing. ``steps == T`` (or None) gives every step.
  """
  T = num_timesteps
  if steps is None or steps == T:
    return np.arange(T)
  if not 1 <= steps <= T:
    raise FlagError(f'--steps must be between 1 and the {T} diffusion steps, got {steps}')
  if spacing == 'uniform':
    seq = np.arange(0, T, T // steps)[:steps]
  elif spacing == 'quad':
    seq = (np.linspace(0, np.sqrt(T * 0.8), steps) ** 2).astype(np.int64)
    # The paper's formula repeats small steps (0, 0, 1, 3, ...); bump repeats up by one so
    # that exactly `steps` distinct timesteps run.
    for i in range(1, steps):
      seq[i] = max(seq[i], seq[i - 1] + 1)
  else:
    raise ValueError(f'spacing={spacing!r}; expected one of {SPACINGS}')
  if len(np.unique(seq)) != steps or seq[-1] >= T:
    raise ValueError(f'{spacing} spacing cannot place {steps} distinct steps in {T}; use fewer '
                     f'steps or uniform spacing')
  return seq.astype(np.int64)


# ----------------------------------------------------------------------------- respacing

def respace(diffusion, timesteps):
  """A diffusion object over the kept ``timesteps`` only, and a wrapper mapping its
  indices back to the original timesteps for the network.

  Returns (respaced_diffusion, wrap) where ``wrap(denoise_fn)`` gives the denoiser to
  use with the respaced object.
  """
  timesteps = np.asarray(timesteps, np.int64)
  ac = diffusion.alphas_cumprod[timesteps]
  new_betas = 1. - ac / np.append(1., ac[:-1])
  if isinstance(diffusion, GaussianDiffusion2):
    new = GaussianDiffusion2(betas=new_betas, model_mean_type=diffusion.model_mean_type,
                             model_var_type=diffusion.model_var_type, loss_type=diffusion.loss_type)
  elif isinstance(diffusion, GaussianDiffusion):
    new = GaussianDiffusion(betas=new_betas, loss_type=diffusion.loss_type)
  else:
    raise TypeError(f'cannot respace {type(diffusion).__name__}')

  def wrap(denoise_fn):
    return _MappedDenoiser(denoise_fn, timesteps)

  return new, wrap


class _MappedDenoiser:
  """``denoise_fn(x, timesteps[t])``: the respaced index ``t`` [B] as the original timestep.

  The table is kept in NumPy and made a constant where the call is traced, so a respacing
  done inside a compiled function works (no eager value is read there)."""

  def __init__(self, denoise_fn, timesteps):
    self.denoise_fn, self.timesteps = denoise_fn, np.asarray(timesteps, np.int64)

  def __call__(self, x, t):
    return self.denoise_fn(x, tf.gather(tf.constant(self.timesteps, tf.int32), t))


# ----------------------------------------------------------------------------- DDIM

def _pred_xstart(diffusion, denoise_fn, x, t, clip_denoised):
  if isinstance(diffusion, GaussianDiffusion2):
    return diffusion.p_mean_variance(denoise_fn, x=x, t=t, clip_denoised=clip_denoised,
                                     return_pred_xstart=True)[3]
  x0 = diffusion.predict_start_from_noise(x, t=t, noise=denoise_fn(x, t))
  return tf.clip_by_value(x0, -1., 1.) if clip_denoised else x0


def ddim_sample_loop(diffusion, denoise_fn, *, shape, timesteps=None, eta=0.,
                     noise_fn=tf.random.normal, clip_denoised=True, x_T=None, step_hook=None):
  """DDIM sampling over increasing ``timesteps`` (default: all T). Returns [B, H, W, C].

  With a clipped x0 prediction the noise estimate is recomputed from it, so that
  eta=1 over all steps reproduces posterior-variance ancestral sampling exactly.
  """
  timesteps = np.arange(diffusion.num_timesteps) if timesteps is None else np.asarray(timesteps)
  ac = diffusion.alphas_cumprod[timesteps]
  return _ddim_run(diffusion, denoise_fn, shape=shape, timesteps=timesteps, ac=ac,
                   ac_prev=np.append(1., ac[:-1]), eta=eta, noise_fn=noise_fn,
                   clip_denoised=clip_denoised, recompute_eps=True, x_T=x_T, step_hook=step_hook)


def diffusers_ddim_sample_loop(diffusion, denoise_fn, *, shape, steps, spacing='leading',
                               steps_offset=0, set_alpha_to_one=True, clip_sample=True, eta=0.,
                               use_clipped_model_output=False, x_T=None, noise_fn=tf.random.normal,
                               start=None, step_hook=None):
  """DDIM as diffusers' ``DDIMScheduler`` + ``DDIMPipeline`` (defaults are theirs):
  timesteps `diffusers_timesteps` (decreasing), each step going to ``t - T // steps`` (below 0:
  alpha_cumprod 1 with ``set_alpha_to_one``, else alpha_cumprod[0]); x0 clipped to [-1, 1] with
  ``clip_sample`` and the raw eps kept unless ``use_clipped_model_output``. ``steps`` network
  evaluations; deterministic given ``x_T`` when ``eta == 0``. ``start=k``: the last k steps
  only. Returns [B, H, W, C].
  """
  T = diffusion.num_timesteps
  dec = diffusers_timesteps(T, steps, spacing, steps_offset, scheduler='ddim')
  prev = dec - T // int(steps)
  final = 1. if set_alpha_to_one else diffusion.alphas_cumprod[0]
  ac_prev = np.where(prev >= 0, diffusion.alphas_cumprod[np.maximum(prev, 0)], final)
  inc = slice(None, None, -1)  # the loop runs over increasing timesteps, from the end
  cut = slice(None, start)
  return _ddim_run(diffusion, denoise_fn, shape=shape, timesteps=dec[inc][cut],
                   ac=diffusion.alphas_cumprod[dec][inc][cut], ac_prev=ac_prev[inc][cut], eta=eta,
                   noise_fn=noise_fn, clip_denoised=clip_sample,
                   recompute_eps=use_clipped_model_output, x_T=x_T, step_hook=step_hook)


def _ddim_run(diffusion, denoise_fn, *, shape, timesteps, ac, ac_prev, eta, noise_fn, clip_denoised,
              recompute_eps, x_T, step_hook=None):
  shape = tuple(shape)
  if x_T is None:
    x_T = noise_fn(shape=shape, dtype=tf.float32)
  floats = lambda a: tuple(float(v) for v in a)
  return diffusion._run_compiled(
      _ddim_impl, (diffusion, denoise_fn, shape, tuple(int(s) for s in timesteps), floats(ac),
                   floats(ac_prev), float(eta), noise_fn, clip_denoised, recompute_eps, step_hook),
      (tf.convert_to_tensor(x_T, tf.float32),))


def _ddim_impl(diffusion, denoise_fn, shape, timesteps, ac, ac_prev, eta, noise_fn, clip_denoised,
               recompute_eps, step_hook, x_T):
  seq = np.asarray(timesteps, np.int64)
  ac, ac_prev = np.asarray(ac), np.asarray(ac_prev)
  sigma = eta * np.sqrt((1. - ac_prev) / (1. - ac) * (1. - ac / ac_prev))
  consts = {k: tf.constant(v, tf.float32) for k, v in dict(
      ac=ac, ac_prev=ac_prev, sigma=sigma, sqrt_ac=np.sqrt(ac), sqrt_1m_ac=np.sqrt(1. - ac),
      sqrt_ac_prev=np.sqrt(ac_prev),
      dir_coef=np.sqrt(np.maximum(1. - ac_prev - sigma ** 2, 0.))).items()}
  seq_t = tf.constant(seq, tf.int32)
  B = shape[0]

  def body(i, x):
    g = lambda name: tf.gather(consts[name], i)
    t = tf.fill([B], tf.gather(seq_t, i))
    if recompute_eps:
      x0 = _pred_xstart(diffusion, denoise_fn, x, t, clip_denoised)
      eps = (x - g('sqrt_ac') * x0) / g('sqrt_1m_ac')
    else:
      eps, x0 = model_eps_and_x0(diffusion, denoise_fn, x, t)
      x0 = tf.clip_by_value(x0, -1., 1.) if clip_denoised else x0
    x_prev = g('sqrt_ac_prev') * x0 + g('dir_coef') * eps
    if eta > 0:
      x_prev += g('sigma') * noise_fn(shape=shape, dtype=x.dtype)
    return (x_prev if step_hook is None else step_hook(i, x_prev),)

  x, = timestep_loop(len(seq), body, (x_T,))
  return x


# ----------------------------------------------------------------------------- the registry

def _optional_int(name, value, T, low=1):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= T:
    raise FlagError(f'--{name} must be an integer between {low} and the {T} diffusion steps, '
                    f'got {value!r}')
  return int(value)


@dataclasses.dataclass(frozen=True)
class SamplerEntry:
  """Everything the code knows about one ``--sampler`` (one entry of `REGISTRY`).

  ``loop(settings, diffusion, denoise_fn, shape=, x_T=, noise_fn=)`` runs the sampler (the
  functions of this module and `solvers`; compiled by whoever calls it, see `Sampler`);
  ``timesteps(settings)`` gives the timesteps the network is evaluated at, in the loop's
  order; ``config_fields`` maps settings fields to the diffusers scheduler config keys they
  are read from and written to; ``required`` lists config values we must refuse otherwise.
  ``default_steps`` None means all T; ``diffusers_spacing`` is what the scripts' 'uniform'
  means for a sampler that only places its steps as diffusers does (None: it takes
  `SPACINGS`, ours).
  """
  name: str
  scheduler_class: str
  loop: Callable
  timesteps: Callable
  default_steps: Optional[int] = None
  orders: tuple = ()
  default_order: Optional[int] = None
  diffusers_spacing: Optional[str] = None
  uses_eta: bool = False
  config_fields: tuple = ()
  options: tuple = ()  # further loop keyword arguments read from a config (same key)
  required: tuple = ()
  replaced: tuple = ()  # (key, values, value): what the diffusers class reads those values as
  selects: tuple = ()  # (key, value): the config values that pick this entry among its class's
  thresholds: bool = False  # its loop takes diffusers' dynamic thresholding (`THRESHOLDING`)

  @property
  def spacings(self):
    """The scripts' ``--spacing`` values (a diffusers scheduler config takes `DIFFUSERS_SPACINGS`)."""
    return ('uniform',) + DIFFUSERS_SPACINGS if self.diffusers_spacing else SPACINGS

  def config_defaults(self):
    return fmt.SCHEDULER_DEFAULTS[self.scheduler_class]


# diffusers' dynamic thresholding (Imagen's) of the x0 prediction: config keys read, when
# ``thresholding`` is on, by the entries with ``thresholds``.
THRESHOLDING = ('thresholding', 'dynamic_thresholding_ratio', 'sample_max_value')

_NO_HOOK = ('cannot run a per-step replacement (it keeps a history of earlier outputs, which '
            'would mix replaced and unreplaced samples)')


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """A sampler with all its options resolved against a diffusion of ``num_timesteps`` steps.

  ``steps`` None means all T (ddpm, ddim). ``spacing`` in `SPACINGS` is our placement (the
  scripts' ddpm/ddim), one of `DIFFUSERS_SPACINGS` is diffusers' (with ``steps_offset``); for
  ddim that also selects diffusers' update (`diffusers_ddim_sample_loop`). ``options`` holds
  further loop keyword arguments as sorted (key, value) pairs; ``requested`` the steps, order and
  eta as the caller passed them (the output tag names them so: ``--eta 1`` is ``_eta1``). Hashable: a compiled loop's key.

  Make one with `resolve` (the scripts' flags, validated as they are) or
  `settings_from_scheduler_config` (a diffusers scheduler config).

  What later samplers need of this shape: starting at (t, x_t) and a per-step hook (done:
  `loop`'s ``start`` and ``step_hook``, taken by the loops that name them), stochastic samplers
  whose noise replays (done: every loop draws all its noise from ``noise_fn``, which the callers
  back with one `tf.random.Generator` reset from a seed) and float timesteps (done for the sigma
  family: their plans hold the network's fractional timesteps; the loops gather their tables by
  index, not by timestep).
  """
  name: str
  num_timesteps: int
  steps: Optional[int] = None
  eta: float = 0.
  spacing: str = 'uniform'
  order: Optional[int] = None
  skip_prk_steps: bool = False
  steps_offset: int = 0
  set_alpha_to_one: bool = False
  clip_sample: bool = True
  options: tuple = ()
  requested: tuple = (None, None, 0.)

  @classmethod
  def resolve(cls, name, num_timesteps, *, steps=None, eta=0., spacing='uniform', order=None,
              skip_prk_steps=False):
    """Settings of the scripts' ``--sampler name --steps ... `` flags; a FlagError naming the
    flag for a bad value, before any work."""
    entry = get_entry(name)
    T = int(num_timesteps)
    if entry.default_steps is None:  # all T when not given (or given as T)
      resolved = None if steps in (None, T) else _optional_int('steps', steps, T)
    else:
      resolved = entry.default_steps if steps is None else _optional_int('steps', steps, T)
    s = cls(name, T, steps=resolved, eta=float(eta), spacing=check_spacing(name, spacing),
            order=check_order(name, order), skip_prk_steps=bool(skip_prk_steps),
            set_alpha_to_one=bool(entry.config_defaults().get('set_alpha_to_one', False)),
            clip_sample=bool(entry.config_defaults().get('clip_sample', True)),
            requested=(steps, order, eta))
    s.timesteps  # validates the placement before any work
    return s

  @property
  def entry(self):
    return REGISTRY[self.name]

  def with_steps(self, steps):
    """The same sampler with ``steps`` inference steps (validated; T means all for ddpm/ddim)."""
    T = self.num_timesteps
    steps = _optional_int('steps', steps, T)
    if self.entry.default_steps is None and steps == T:
      steps = None
    out = dataclasses.replace(self, steps=steps, requested=(steps, *self.requested[1:]))
    out.timesteps  # noqa: B018 (validates)
    return out

  @property
  def timesteps(self):
    """int64 timesteps the network is evaluated at (ddpm, ddim: increasing; the others in
    evaluation order)."""
    return self.entry.timesteps(self)

  @property
  def num_evaluations(self):
    """Network evaluations per sample."""
    return len(self.timesteps)

  def loop(self, diffusion, denoise_fn, *, shape, x_T=None, noise_fn=tf.random.normal, start=None,
           step_hook=None):
    """Samples float32 [B, H, W, C] (``shape``) from ``x_T`` (default: drawn from ``noise_fn``
    first), all later noise from ``noise_fn``. Compiled per call when called eagerly.

    ``start=k`` runs only the last k of the sampler's steps (the k lowest timesteps), from
    ``x_T`` taken as the sample at `start_timestep` (k): image-to-image starts there. A
    multistep solver then starts afresh (its first steps of lower order), as a diffusers
    scheduler given a begin index. ``step_hook(i, x) -> x`` is called inside the loop after
    each step, with ``i`` the int32 loop index counting down to 0 (the last step) and x at the
    noise level `levels_after_steps` ()[i]: inpainting by replacement uses it."""
    if diffusion.num_timesteps != self.num_timesteps:
      raise ValueError(f'settings for {self.num_timesteps} steps, diffusion of {diffusion.num_timesteps}')
    extra = {}
    if self.check_start(start):
      extra['start'] = int(start)
    if step_hook is not None:
      self._check_takes('step_hook', _NO_HOOK)
      extra['step_hook'] = step_hook
    return self.entry.loop(self, diffusion, denoise_fn, shape=tuple(shape), x_T=x_T,
                           noise_fn=noise_fn, **extra)

  def check_start(self, start):
    """True for a part-way ``start`` (fewer than all steps); a FlagError for one this sampler
    cannot make, before any work."""
    if start is None or self._check_start(start) == self.num_steps:
      return False
    self._check_takes('start', 'cannot start part-way (its first steps are a warm-up)')
    return True

  def _check_takes(self, keyword, why):
    if keyword not in inspect.signature(self.entry.loop).parameters:
      raise FlagError(f'--sampler {self.name} {why}; use {" or ".join(self.takers(keyword))}')

  @staticmethod
  def takers(keyword):
    """The samplers whose loop takes ``keyword`` ('start', 'step_hook')."""
    return [n for n, e in REGISTRY.items() if keyword in inspect.signature(e.loop).parameters]

  def _check_start(self, start):
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 1 <= start <= self.num_steps:
      raise ValueError(f'start must be between 1 and the {self.num_steps} steps, got {start!r}')
    return int(start)

  @property
  def num_steps(self):
    """The sampler's steps (distinct timesteps it evaluates the network at)."""
    return len(np.unique(self.timesteps))

  def start_timestep(self, start):
    """The timestep of the first step a loop with ``start=start`` runs (its input's noise level)."""
    return int(np.sort(np.unique(self.timesteps))[self._check_start(start) - 1])

  def levels_after_steps(self, diffusion):
    """float64 alpha_cumprod of the sample after each step, by loop index (index 0, the last
    step: 1, the clean image), for the samplers that take a ``step_hook`` on our (or every)
    step placement."""
    self._check_takes('step_hook', _NO_HOOK)
    if self.spacing not in SPACINGS and self.steps is not None:
      raise FlagError(f'a per-step replacement takes --spacing {" or ".join(SPACINGS)}, not {self.spacing}')
    return np.append(1., diffusion.alphas_cumprod[self.timesteps[:-1]])

  def describe(self):
    """One line for the logs: ``ddim with 50 of 1000 steps (uniform spacing), eta=0.0``."""
    T = self.num_timesteps
    s = f'{self.name} with {self.steps or T} of {T} steps'
    if self.entry.diffusers_spacing:
      return (s + f' ({self.spacing} spacing' + (f', order {self.order}' if self.order else '')
              + f', {self.num_evaluations} network evaluations)')
    if self.steps:
      s += f' ({self.spacing} spacing)'
    return s + (f', eta={self.eta}' if self.entry.uses_eta else '')

  def output_tag(self):
    """The ``sample`` command's output name part: ``ddim50_eta0.0``, ``dpmsolver++20_order3``
    (the steps as given or the default, the order only when given)."""
    steps, order, eta = self.requested
    tag = f'{self.name}{steps or self.entry.default_steps or self.num_timesteps}'
    return tag + (f'_order{order}' if order is not None else '') + (
        f'_eta{eta}' if self.entry.uses_eta else '')

  def eval_dir_name(self):
    """The evaluation's results folder: 'eval' for the full ddpm, else e.g. ``eval_ddim50_eta0.0``,
    ``eval_dpmsolver++20_linspace_order2``, ``eval_ddpm100_quad``."""
    if self.name == 'ddpm' and self.steps is None:
      return 'eval'
    name = f'eval_{self.name}{self.steps or self.num_timesteps}'
    if self.steps is not None and self.spacing != 'uniform':
      name += f'_{self.spacing}'
    name += f'_order{self.order}' if self.order is not None else ''
    return name + (f'_eta{self.eta}' if self.entry.uses_eta else '')

  def scheduler_config(self, diffusion, **others):
    """The diffusers scheduler config (with ``_class_name``) of this sampler on ``diffusion``;
    ``others``: values of the config's other fields (else the class's defaults)."""
    entry = self.entry
    if self.spacing not in DIFFUSERS_SPACINGS:
      raise ValueError(f'{self.spacing} spacing has no diffusers scheduler counterpart')
    fields = dict(others)
    fields.update({key: getattr(self, field) for field, key in entry.config_fields})
    fields.update(self.options, timestep_spacing=self.spacing, steps_offset=self.steps_offset)
    fields.update(entry.selects)
    return fmt.scheduler_config(diffusion, entry.scheduler_class, **fields)


def get_entry(name):
  """The `REGISTRY` entry of ``name``; a FlagError naming ``--sampler`` for an unknown one."""
  if name not in REGISTRY:
    raise FlagError(f'--sampler must be one of {SAMPLERS}, got {name!r}')
  return REGISTRY[name]


def entry_for_scheduler_class(class_name, config=None):
  """The `REGISTRY` entry whose diffusers scheduler is ``class_name``; of several (one class,
  e.g. DPMSolverMultistepScheduler's ODE and SDE algorithms), the one whose ``selects`` the
  ``config`` (with the class's defaults) has, else the one without ``selects``."""
  entries = [e for e in REGISTRY.values() if e.scheduler_class == class_name]
  for entry in sorted(entries, key=lambda e: not e.selects):
    if all((config or {}).get(key) == value for key, value in entry.selects):
      return entry
  raise fmt.DiffusersFormatError(
      f'scheduler {class_name!r} is not supported (supported: '
      f'{", ".join(e.scheduler_class for e in REGISTRY.values())})')


def settings_from_scheduler_config(config, class_name=None):
  """(settings without steps, the diffusion) of a diffusers scheduler config, read as
  ``class_name`` (default: its ``_class_name``) reads it, as diffusers' ``from_config``: the
  class's fields from the config, its defaults for the rest. Refuses what we do not compute."""
  class_name = class_name or config.get('_class_name', 'DDPMScheduler')
  class_name = fmt.READ_AS.get(class_name, class_name)
  entry_for_scheduler_class(class_name)  # an unsupported class named before the config is read
  thresholds = all(e.thresholds for e in REGISTRY.values() if e.scheduler_class == class_name)
  diffusion, cfg = fmt.diffusion_from_scheduler_config(config, class_name, thresholding=thresholds)
  entry = entry_for_scheduler_class(class_name, cfg)
  for key, values, value in entry.replaced:  # e.g. another solver's solver_type
    cfg[key] = value if cfg.get(key) in values else cfg.get(key)
  for key, accepted in entry.required:
    if cfg.get(key) not in accepted:
      raise fmt.DiffusersFormatError(f'scheduler option {key}={cfg.get(key)!r} is not supported '
                                     f'({class_name}: {" or ".join(map(repr, accepted))})')
  if cfg['timestep_spacing'] not in DIFFUSERS_SPACINGS:
    raise fmt.DiffusersFormatError(f'scheduler option timestep_spacing={cfg["timestep_spacing"]!r} '
                                   f'is not supported ({DIFFUSERS_SPACINGS})')
  fields = {field: cfg[key] for field, key in entry.config_fields}
  if 'order' in fields:
    fields['order'] = check_order(entry.name, fields['order'])
  options = entry.options + (THRESHOLDING if cfg.get('thresholding') else ())
  settings = SamplerSettings(
      entry.name, diffusion.num_timesteps, spacing=cfg['timestep_spacing'],
      steps_offset=int(cfg['steps_offset']),
      options=tuple(sorted((k, cfg[k]) for k in options)), **fields)
  return settings, diffusion, cfg


# The loops: each runs one sampler of this module or `solvers` with the settings' options.

def _ddpm_timesteps(s):
  if s.spacing in SPACINGS:
    return timestep_sequence(s.num_timesteps, s.steps, s.spacing)
  if s.steps is None:
    return np.arange(s.num_timesteps)
  return diffusers_timesteps(s.num_timesteps, s.steps, s.spacing, s.steps_offset,
                             scheduler='ddpm')[::-1]


def _ddpm_loop(s, diffusion, denoise_fn, *, shape, x_T, noise_fn, start=None, step_hook=None):
  """Ancestral sampling, strided (respaced betas over ``s.timesteps``) for fewer steps.

  The scripts' strided sampler (spacing in `SPACINGS`) ends on the respaced process's step 0
  without noise. With diffusers' placement, as DDPMScheduler, the last step adds noise when
  its timestep is not 0 ('trailing' spacing, ``steps_offset``): variance ``1 - ac[t]`` for
  fixed_large, the posterior's (0, held at 1e-20) for fixed_small. For 'leading' spacing
  without offset (google/ddpm-cifar10-32) the two are the same sampler."""
  kw = dict(shape=shape, noise_fn=noise_fn, x_T=x_T, clip_denoised=s.clip_sample)
  if step_hook is not None:
    kw['step_hook'] = step_hook
  if s.steps is None and start is None:
    return diffusion.p_sample_loop(denoise_fn, **kw)
  new, wrap = respace(diffusion, s.timesteps[:start])  # the first `start` betas are the same
  if s.spacing in DIFFUSERS_SPACINGS and s.timesteps[0] > 0:
    large = getattr(diffusion, 'model_var_type', None) == 'fixedlarge'
    kw['final_log_variance'] = float(np.log(new.betas[0] if large else 1e-20))
  return new.p_sample_loop(wrap(denoise_fn), **kw)


def _ddim_loop(s, diffusion, denoise_fn, *, shape, x_T, noise_fn, start=None, step_hook=None):
  if s.spacing in SPACINGS:  # the scripts' DDIM
    return ddim_sample_loop(diffusion, denoise_fn, shape=shape, timesteps=s.timesteps[:start],
                            eta=s.eta, noise_fn=noise_fn, clip_denoised=s.clip_sample, x_T=x_T,
                            step_hook=step_hook)
  return diffusers_ddim_sample_loop(
      diffusion, denoise_fn, shape=shape, steps=s.steps or s.num_timesteps, spacing=s.spacing,
      steps_offset=s.steps_offset, set_alpha_to_one=s.set_alpha_to_one, clip_sample=s.clip_sample,
      eta=s.eta, x_T=x_T, noise_fn=noise_fn, start=start, step_hook=step_hook)


def _pndm_loop(s, diffusion, denoise_fn, *, shape, x_T, noise_fn):
  return pndm_sample_loop(diffusion, denoise_fn, shape=shape, steps=s.steps,
                          skip_prk_steps=s.skip_prk_steps, spacing=s.spacing,
                          steps_offset=s.steps_offset, set_alpha_to_one=s.set_alpha_to_one,
                          x_T=x_T, noise_fn=noise_fn)


def _multistep_loop(solver, **fixed):
  """The registry's loop for a plan-driven solver; it takes ``start`` (image-to-image) when the
  solver can begin part-way (its plan takes ``first``)."""
  def run(s, diffusion, denoise_fn, shape, x_T, noise_fn, **extra):
    return solver(diffusion, denoise_fn, shape=shape, steps=s.steps, order=s.order,
                  spacing=s.spacing, steps_offset=s.steps_offset, x_T=x_T, noise_fn=noise_fn,
                  **dict(s.options), **fixed, **extra)

  if 'first' not in inspect.signature(solver).parameters:
    def loop(s, diffusion, denoise_fn, *, shape, x_T, noise_fn):
      return run(s, diffusion, denoise_fn, shape, x_T, noise_fn)
    return loop

  def loop_from(s, diffusion, denoise_fn, *, shape, x_T, noise_fn, start=None):
    return run(s, diffusion, denoise_fn, shape, x_T, noise_fn,
               first=0 if start is None else s.steps - start)
  return loop_from


def _sa_solver_loop(s, diffusion, denoise_fn, *, shape, x_T, noise_fn):
  """SA-Solver: ``--order`` is its predictor order (diffusers' ``predictor_order``)."""
  return sa_solver_sample_loop(diffusion, denoise_fn, shape=shape, steps=s.steps,
                               predictor_order=s.order, spacing=s.spacing,
                               steps_offset=s.steps_offset, x_T=x_T, noise_fn=noise_fn,
                               **dict(s.options))


def _singlestep_loop(s, diffusion, denoise_fn, *, shape, x_T, noise_fn):
  return dpm_solver_singlestep_sample_loop(diffusion, denoise_fn, shape=shape, steps=s.steps,
                                           order=s.order, x_T=x_T, noise_fn=noise_fn,
                                           **dict(s.options))


def _linspace_only_timesteps(s):
  """DPMSolverSinglestepScheduler places its steps 'linspace' only."""
  if s.spacing != 'linspace':
    raise FlagError(f'--spacing for --sampler {s.name} must be linspace (or uniform), got {s.spacing!r}')
  return diffusers_timesteps(s.num_timesteps, s.steps, 'linspace', scheduler='dpmsolver++')


def _diffusers_timesteps(scheduler):
  def timesteps(s):
    return diffusers_timesteps(s.num_timesteps, s.steps, s.spacing, s.steps_offset,
                               scheduler=scheduler, skip_prk_steps=s.skip_prk_steps)
  return timesteps


def _sigma_plan(plan_fn, s, alphas_cumprod):
  """The `sigma_samplers` plan of settings ``s`` on a noise schedule."""
  kw = dict(s.options)
  if s.entry.orders:  # LMS: its order is a step argument, not a config field
    kw['order'] = s.order or s.entry.default_order
  return plan_fn(alphas_cumprod, steps=s.steps, spacing=s.spacing, steps_offset=s.steps_offset, **kw)


def _sigma_loop(plan_fn):
  def loop(s, diffusion, denoise_fn, *, shape, x_T, noise_fn):
    clip = 'clip_sample' in dict(s.entry.config_fields) and s.clip_sample  # Heun's option
    return sigma_samplers.sigma_sample_loop(
        diffusion, denoise_fn, _sigma_plan(plan_fn, s, diffusion.alphas_cumprod), shape=shape,
        clip_sample=clip, x_T=x_T, noise_fn=noise_fn)
  return loop


def _sigma_timesteps(evaluations_per_step):
  """The scheduler's placed timesteps in evaluation order (a two-evaluation step's second
  evaluation listed under the step's end, the last step one evaluation). The network's exact
  timesteps (KDPM2's midpoints, Karras sigmas') depend on the noise schedule: the plan's ``t``."""
  def timesteps(s):
    ts = sigma_samplers.sigma_timesteps(s.num_timesteps, s.steps, s.spacing, s.steps_offset)
    return ts if evaluations_per_step == 1 else np.concatenate([ts[:1], np.repeat(ts[1:], 2)])
  return timesteps


def _sigma_entry(name, scheduler_class, plan_fn, evaluations_per_step, *, karras=True, **kw):
  """A sigma-family `SamplerEntry` (diffusers' 'linspace' default, 50 steps)."""
  unsupported = (('use_exponential_sigmas', (False,)), ('use_beta_sigmas', (False,))) if karras else ()
  return SamplerEntry(name, scheduler_class, _sigma_loop(plan_fn), _sigma_timesteps(evaluations_per_step),
                      default_steps=50, diffusers_spacing='linspace',
                      options=('use_karras_sigmas',) if karras else (),
                      required=unsupported + kw.pop('required', ()), **kw)


_EULER_ONLY = (('interpolation_type', ('linear',)), ('sigma_min', (None,)), ('sigma_max', (None,)),
               ('timestep_type', ('discrete',)), ('final_sigmas_type', ('zero',)))
_ZERO_FINAL = (('final_sigmas_type', ('zero',)), ('use_karras_sigmas', (False,)))
REGISTRY = {e.name: e for e in (
    SamplerEntry('ddpm', 'DDPMScheduler', _ddpm_loop, _ddpm_timesteps,
                 config_fields=(('clip_sample', 'clip_sample'),)),
    SamplerEntry('ddim', 'DDIMScheduler', _ddim_loop, _ddpm_timesteps, uses_eta=True,
                 config_fields=(('clip_sample', 'clip_sample'), ('set_alpha_to_one', 'set_alpha_to_one'))),
    SamplerEntry('pndm', 'PNDMScheduler', _pndm_loop, _diffusers_timesteps('pndm'), default_steps=50,
                 diffusers_spacing='leading',
                 config_fields=(('skip_prk_steps', 'skip_prk_steps'),
                                ('set_alpha_to_one', 'set_alpha_to_one'))),
    SamplerEntry('dpmsolver++', 'DPMSolverMultistepScheduler', _multistep_loop(dpm_solver_sample_loop),
                 _diffusers_timesteps('dpmsolver++'), default_steps=20, orders=SOLVER_ORDERS,
                 default_order=2, diffusers_spacing='linspace', config_fields=(('order', 'solver_order'),),
                 thresholds=True, options=('lower_order_final', 'solver_type', 'use_lu_lambdas'),
                 required=(('algorithm_type', ('dpmsolver++',)), ('euler_at_final', (False,)))
                 + _ZERO_FINAL, replaced=(('solver_type', ('logrho', 'bh1', 'bh2'), 'midpoint'),)),
    SamplerEntry('unipc', 'UniPCMultistepScheduler', _multistep_loop(unipc_sample_loop),
                 _diffusers_timesteps('unipc'), default_steps=20, orders=SOLVER_ORDERS,
                 default_order=2, diffusers_spacing='linspace', config_fields=(('order', 'solver_order'),),
                 thresholds=True, options=('lower_order_final',),
                 required=(('solver_type', ('bh2',)), ('predict_x0', (True,)),
                           ('disable_corrector', ([],))) + _ZERO_FINAL,
                 replaced=(('solver_type', ('midpoint', 'heun', 'logrho'), 'bh2'),)),
    SamplerEntry('sde-dpmsolver++', 'DPMSolverMultistepScheduler',
                 _multistep_loop(dpm_solver_sample_loop, algorithm_type='sde-dpmsolver++'),
                 _diffusers_timesteps('dpmsolver++'), default_steps=20, orders=SOLVER_ORDERS,
                 default_order=2, diffusers_spacing='linspace', config_fields=(('order', 'solver_order'),),
                 thresholds=True, options=('lower_order_final', 'solver_type', 'use_lu_lambdas'),
                 required=(('euler_at_final', (False,)),) + _ZERO_FINAL,
                 replaced=(('solver_type', ('logrho', 'bh1', 'bh2'), 'midpoint'),),
                 selects=(('algorithm_type', 'sde-dpmsolver++'),)),
    SamplerEntry('sasolver', 'SASolverScheduler', _sa_solver_loop, _diffusers_timesteps('dpmsolver++'),
                 default_steps=20, orders=SA_ORDERS, default_order=2, diffusers_spacing='linspace',
                 config_fields=(('order', 'predictor_order'),),
                 thresholds=True, options=('corrector_order', 'lower_order_final'),
                 required=(('algorithm_type', ('data_prediction',)), ('tau_func', (None,)),
                           ('use_karras_sigmas', (False,)))),
    SamplerEntry('dpmsolver++_singlestep', 'DPMSolverSinglestepScheduler', _singlestep_loop,
                 _linspace_only_timesteps, default_steps=20, orders=SOLVER_ORDERS, default_order=2,
                 diffusers_spacing='linspace', config_fields=(('order', 'solver_order'),),
                 thresholds=True, options=('solver_type',), required=(('algorithm_type', ('dpmsolver++',)),) + _ZERO_FINAL,
                 replaced=(('solver_type', ('logrho', 'bh1', 'bh2'), 'midpoint'),
                           ('timestep_spacing', ('leading', 'trailing'), 'linspace'))),
    SamplerEntry('deis', 'DEISMultistepScheduler', _multistep_loop(deis_sample_loop),
                 _diffusers_timesteps('dpmsolver++'), default_steps=20, orders=SOLVER_ORDERS,
                 default_order=2, diffusers_spacing='linspace', config_fields=(('order', 'solver_order'),),
                 thresholds=True, options=('lower_order_final',),
                 required=(('algorithm_type', ('deis',)), ('solver_type', ('logrho',)),
                           ('use_karras_sigmas', (False,))),
                 replaced=(('algorithm_type', ('dpmsolver', 'dpmsolver++'), 'deis'),
                           ('solver_type', ('midpoint', 'heun', 'bh1', 'bh2'), 'logrho'))),
    _sigma_entry('euler', 'EulerDiscreteScheduler', sigma_samplers.euler_plan, 1,
                 required=_EULER_ONLY),
    _sigma_entry('euler_ancestral', 'EulerAncestralDiscreteScheduler',
                 sigma_samplers.euler_ancestral_plan, 1, karras=False),
    _sigma_entry('heun', 'HeunDiscreteScheduler', sigma_samplers.heun_plan, 2,
                 config_fields=(('clip_sample', 'clip_sample'),)),
    _sigma_entry('lms', 'LMSDiscreteScheduler', sigma_samplers.lms_plan, 1,
                 orders=sigma_samplers.LMS_ORDERS, default_order=4),
    _sigma_entry('kdpm2', 'KDPM2DiscreteScheduler', sigma_samplers.kdpm2_plan, 2),
    _sigma_entry('kdpm2_ancestral', 'KDPM2AncestralDiscreteScheduler',
                 sigma_samplers.kdpm2_ancestral_plan, 2),
)}
SAMPLERS = tuple(REGISTRY)
DEFAULT_STEPS = {n: e.default_steps for n, e in REGISTRY.items() if e.default_steps}


def check_spacing(sampler, spacing):
  """The step placement ``sampler`` uses for ``--spacing spacing``; an error for one it cannot
  take. The diffusers samplers read 'uniform' (the flag's default) as their scheduler's own
  default placement."""
  entry = get_entry(sampler)
  if spacing not in entry.spacings:
    also = f' (or uniform: {entry.diffusers_spacing})' if entry.diffusers_spacing else ''
    choices = DIFFUSERS_SPACINGS if entry.diffusers_spacing else SPACINGS
    raise FlagError(f'--spacing for --sampler {sampler} must be one of {choices}{also}, got {spacing!r}')
  return entry.diffusers_spacing if spacing == 'uniform' and entry.diffusers_spacing else spacing


def check_order(sampler, order):
  """The solver order of ``sampler`` (its default for None); an error for a bad one."""
  entry = get_entry(sampler)
  if not entry.orders:
    if order is not None:
      takers = [n for n, e in REGISTRY.items() if e.orders]
      raise FlagError(f'--order applies to --sampler {" or ".join(takers)}, not {sampler}')
    return None
  if order is None:
    return entry.default_order
  if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order not in entry.orders:
    raise FlagError(f'--order for --sampler {sampler} must be one of {entry.orders}, got {order!r}')
  return int(order)


# ----------------------------------------------------------------------------- batched generation

def batch_seed(seed, index):
  """The noise seed of batch (or shard) ``index`` of a run seeded with ``seed``."""
  return (int(seed) * 100003 + int(index)) % (2 ** 63 - 1)


class Sampler:
  """Draws batches (float32 [B, H, W, C] in [-1, 1], not clipped) from a script model
  (``.diffusion``, ``.denoise``, ``.image_shape``) with one of the samplers (``.settings``,
  a `SamplerSettings`).

  The noise comes from the Sampler's one `tf.random.Generator`, reset to each batch's seed (an
  input of the compiled loop, not part of it: resetting the global seed would not reseed a
  compiled loop). Created under a strategy's scope, the generator gives every replica its own
  stream. The Sampler owns its compiled loops, one per batch size, traced at the first batch
  of that size; dropping the Sampler frees them.

  ``constant_weights=True`` compiles the loop with the network's weights as graph constants
  (`nn.constant_weights`: oneDNN then reorders each filter once instead of at every step)
  taken at the first batch of each size: for a Sampler whose weights do not change while
  it is used (`generate_samples` makes one per call), not for one that outlives a
  checkpoint restore.

  ``order`` (dpmsolver++, unipc: 1-3, default 2; lms: 1-4, default 4) and ``skip_prk_steps``
  (pndm) as in `solvers` / `sigma_samplers`; for those samplers ``steps`` defaults to
  `DEFAULT_STEPS` and ``spacing`` 'uniform' means the diffusers scheduler's default placement. ``num_evaluations`` is the number of
  network calls per sample.
  """

  def __init__(self, model, *, sampler='ddpm', steps=None, eta=0., spacing='uniform', order=None,
               skip_prk_steps=False, strategy=None, constant_weights=False):
    self.model, self.diffusion = model, model.diffusion
    self.settings = SamplerSettings.resolve(sampler, self.diffusion.num_timesteps, steps=steps,
                                            eta=eta, spacing=spacing, order=order,
                                            skip_prk_steps=skip_prk_steps)
    s = self.settings
    self.sampler, self.steps, self.eta, self.spacing = s.name, s.steps, s.eta, s.spacing
    self.order, self.skip_prk_steps, self.timesteps = s.order, s.skip_prk_steps, s.timesteps
    self.strategy = strategy or tf.distribute.get_strategy()
    with self.strategy.scope():
      self._gen = tf.random.Generator.from_seed(0)
    self.constant_weights = constant_weights
    self._compiled = {}  # batch size -> compiled loop (a ConcreteFunction)

  @property
  def num_evaluations(self):
    """Network evaluations per sample."""
    return self.settings.num_evaluations

  def describe(self):
    return self.settings.describe()

  def noise(self, shape, dtype=tf.float32):
    return self._gen.normal(shape, dtype=dtype)

  def sample(self, batch_size):
    """One batch as a tensor, with the generator's current noise stream."""
    if not tf.executing_eagerly():  # inside a caller's graph (SampleBatcher): inlined
      return self._sample_loop(batch_size)
    fn = self._compiled.get(batch_size)
    if fn is None:
      # With constant weights the trace reads the weights now.
      with nn.constant_weights() if self.constant_weights else contextlib.nullcontext():
        fn = tf.function(functools.partial(self._sample_loop, batch_size)).get_concrete_function()
      self._compiled[batch_size] = fn
    return fn()

  def _sample_loop(self, batch_size):
    return self.settings.loop(self.diffusion, self.model.denoise,
                              shape=(batch_size, *self.model.image_shape), noise_fn=self.noise)

  def __call__(self, batch_size, seed):
    """One batch drawn with noise seed ``seed``: float32 numpy [batch_size, H, W, C]."""
    self._gen.reset_from_seed(int(seed))
    return self.sample(batch_size).numpy()


def generate_samples(model, num_samples, batch_size, *, sampler='ddpm', steps=None, eta=0.,
                     spacing='uniform', order=None, seed=0, log_fn=utils.log):
  """``num_samples`` samples in batches: float32 [N, H, W, C] in [-1, 1], with progress.

  Batch i uses noise seed ``batch_seed(seed, i)``: its generator is reset to that seed and
  draws x_T first, then the step noise. A pipeline called with ``seed=batch_seed(seed, i)``
  (and the same batch size and sampler) draws its latents the same way, so it gives batch i.
  """
  # One Sampler per call, so the weights cannot change under its constant-weight loop.
  draw = Sampler(model, sampler=sampler, steps=steps, eta=eta, spacing=spacing, order=order,
                 constant_weights=True)
  out, t0 = [], time.time()
  num_batches = math.ceil(num_samples / batch_size)
  for i in range(num_batches):
    out.append(draw(min(batch_size, num_samples - i * batch_size), batch_seed(seed, i)))
    if log_fn:
      done = (i + 1) / num_batches
      elapsed = time.time() - t0
      log_fn(f'sampled batch {i + 1}/{num_batches} ({min((i + 1) * batch_size, num_samples)} '
             f'images, {draw.describe()}) {elapsed:.0f}s elapsed, ETA {elapsed / done * (1 - done):.0f}s')
  return np.concatenate(out)
