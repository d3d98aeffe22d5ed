"""Samplers beyond the original's 1000-step ancestral sampler, and batched sample generation.

* ``ddpm``: the original ancestral sampler of the diffusion object (v2: the model's
  variance type, fixedlarge for CIFAR-10; v1: the posterior variance).
* ``ddpm`` with ``steps < T``: strided ancestral sampling on a respaced process whose
  betas are ``1 - ac[tau_i] / ac[tau_{i-1}]`` over the kept timesteps ``tau``.
* ``ddim``: Song et al. 2021; ``eta=0`` is deterministic given x_T, ``eta=1`` with all
  steps is the ancestral sampler with the posterior variance.
* ``pndm``, ``dpmsolver++`` (``--order`` 1-3), ``unipc`` (``--order`` 1-3): diffusers'
  schedulers of those names, in `solvers` (re-exported here).

Network evaluations per sample for ``--steps N``: ddpm, ddim, dpmsolver++, unipc: N;
pndm: N + 9 (N + 1 with ``skip_prk_steps``).
"""

import math
import time

import numpy as np
import tensorflow as tf

from . import nn, utils
from .diffusion_base import timestep_loop
from .diffusion_utils import GaussianDiffusion
from .diffusion_utils_2 import GaussianDiffusion2
from .errors import FlagError
from .solvers import (DIFFUSERS_SPACINGS, SOLVER_ORDERS, diffusers_timesteps,  # noqa: F401
                      dpm_solver_sample_loop, dynamic_threshold, model_eps_and_x0,
                      pndm_sample_loop, unipc_sample_loop)

SAMPLERS = ('ddpm', 'ddim', 'pndm', 'dpmsolver++', 'unipc')
SPACINGS = ('uniform', 'quad')
# Samplers taking --order, with their default; the others refuse an --order.
DEFAULT_ORDERS = {'dpmsolver++': 2, 'unipc': 2}
# The diffusers samplers place their steps as diffusers does; 'uniform' (our default) stands
# for the diffusers scheduler's own default spacing.
DIFFUSERS_DEFAULT_SPACING = {'pndm': 'leading', 'dpmsolver++': 'linspace', 'unipc': 'linspace'}


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
  table = tf.constant(timesteps, tf.int32)

  def wrap(denoise_fn):
    return _MappedDenoiser(denoise_fn, table)

  return new, wrap


class _MappedDenoiser:
  """``denoise_fn(x, table[t])``; hashable by its parts so compiled loops are reused."""

  def __init__(self, denoise_fn, table):
    self.denoise_fn, self.table = denoise_fn, table
    self._key = (denoise_fn, tuple(table.numpy().tolist()))

  def __call__(self, x, t):
    return self.denoise_fn(x, tf.gather(self.table, t))

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, _MappedDenoiser) and self._key == other._key


# ----------------------------------------------------------------------------- DDIM

def _pred_xstart(diffusion, denoise_fn, x, t, clip_denoised):
  if isinstance(diffusion, GaussianDiffusion2):
    return diffusion.p_mean_variance(denoise_fn, x=x, t=t, clip_denoised=clip_denoised,
                                     return_pred_xstart=True)[3]
  x0 = diffusion.predict_start_from_noise(x, t=t, noise=denoise_fn(x, t))
  return tf.clip_by_value(x0, -1., 1.) if clip_denoised else x0


def ddim_sample_loop(diffusion, denoise_fn, *, shape, timesteps=None, eta=0.,
                     noise_fn=tf.random.normal, clip_denoised=True, x_T=None):
  """DDIM sampling over increasing ``timesteps`` (default: all T). Returns [B, H, W, C].

  With a clipped x0 prediction the noise estimate is recomputed from it, so that
  eta=1 over all steps reproduces posterior-variance ancestral sampling exactly.
  """
  timesteps = np.arange(diffusion.num_timesteps) if timesteps is None else np.asarray(timesteps)
  ac = diffusion.alphas_cumprod[timesteps]
  return _ddim_run(diffusion, denoise_fn, shape=shape, timesteps=timesteps, ac=ac,
                   ac_prev=np.append(1., ac[:-1]), eta=eta, noise_fn=noise_fn,
                   clip_denoised=clip_denoised, recompute_eps=True, x_T=x_T)


def diffusers_ddim_sample_loop(diffusion, denoise_fn, *, shape, steps, spacing='leading',
                               steps_offset=0, set_alpha_to_one=True, clip_sample=True, eta=0.,
                               use_clipped_model_output=False, x_T=None, noise_fn=tf.random.normal):
  """DDIM as diffusers' ``DDIMScheduler`` + ``DDIMPipeline`` (defaults are theirs):
  timesteps `diffusers_timesteps` (decreasing), each step going to ``t - T // steps`` (below 0:
  alpha_cumprod 1 with ``set_alpha_to_one``, else alpha_cumprod[0]); x0 clipped to [-1, 1] with
  ``clip_sample`` and the raw eps kept unless ``use_clipped_model_output``. ``steps`` network
  evaluations; deterministic given ``x_T`` when ``eta == 0``. Returns [B, H, W, C].
  """
  T = diffusion.num_timesteps
  dec = diffusers_timesteps(T, steps, spacing, steps_offset, scheduler='ddim')
  prev = dec - T // int(steps)
  final = 1. if set_alpha_to_one else diffusion.alphas_cumprod[0]
  ac_prev = np.where(prev >= 0, diffusion.alphas_cumprod[np.maximum(prev, 0)], final)
  inc = slice(None, None, -1)  # the loop runs over increasing timesteps, from the end
  return _ddim_run(diffusion, denoise_fn, shape=shape, timesteps=dec[inc],
                   ac=diffusion.alphas_cumprod[dec][inc], ac_prev=ac_prev[inc], eta=eta,
                   noise_fn=noise_fn, clip_denoised=clip_sample,
                   recompute_eps=use_clipped_model_output, x_T=x_T)


def _ddim_run(diffusion, denoise_fn, *, shape, timesteps, ac, ac_prev, eta, noise_fn, clip_denoised,
              recompute_eps, x_T):
  shape = tuple(shape)
  if x_T is None:
    x_T = noise_fn(shape=shape, dtype=tf.float32)
  floats = lambda a: tuple(float(v) for v in a)
  return diffusion._run_compiled(
      _ddim_impl, (diffusion, denoise_fn, shape, tuple(int(s) for s in timesteps), floats(ac),
                   floats(ac_prev), float(eta), noise_fn, clip_denoised, recompute_eps),
      (tf.convert_to_tensor(x_T, tf.float32),))


def _ddim_impl(diffusion, denoise_fn, shape, timesteps, ac, ac_prev, eta, noise_fn, clip_denoised,
               recompute_eps, x_T):
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
    return (x_prev,)

  x, = timestep_loop(len(seq), body, (x_T,))
  return x


# ----------------------------------------------------------------------------- batched generation

def batch_seed(seed, index):
  """The noise seed of batch (or shard) ``index`` of a run seeded with ``seed``."""
  return (int(seed) * 100003 + int(index)) % (2 ** 63 - 1)


DEFAULT_STEPS = {'pndm': 50, 'dpmsolver++': 20, 'unipc': 20}


def check_spacing(sampler, spacing):
  """The step placement ``sampler`` uses for ``--spacing spacing``; an error for one it cannot
  take. The diffusers samplers read 'uniform' (the flag's default) as their scheduler's own
  default placement."""
  if sampler in DIFFUSERS_DEFAULT_SPACING:
    if spacing == 'uniform':
      return DIFFUSERS_DEFAULT_SPACING[sampler]
    if spacing not in DIFFUSERS_SPACINGS:
      raise FlagError(f'--spacing for --sampler {sampler} must be one of {DIFFUSERS_SPACINGS} '
                       f'(or uniform: {DIFFUSERS_DEFAULT_SPACING[sampler]}), got {spacing!r}')
  elif spacing not in SPACINGS:
    raise FlagError(f'--spacing for --sampler {sampler} must be one of {SPACINGS}, got {spacing!r}')
  return spacing


def check_order(sampler, order):
  """The solver order of ``sampler`` (its default for None); an error for a bad one."""
  if sampler not in DEFAULT_ORDERS:
    if order is not None:
      raise FlagError(f'--order applies to --sampler {" or ".join(DEFAULT_ORDERS)}, not {sampler}')
    return None
  if order is None:
    return DEFAULT_ORDERS[sampler]
  if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order not in SOLVER_ORDERS:
    raise FlagError(f'--order for --sampler {sampler} must be one of {SOLVER_ORDERS}, got {order!r}')
  return int(order)


def _check_steps(steps, T):
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
    raise FlagError(f'--steps must be an integer between 1 and the {T} diffusion steps, got {steps!r}')
  return int(steps)


class Sampler:
  """Draws batches (float32 [B, H, W, C] in [-1, 1], not clipped) from a script model
  (``.diffusion``, ``.denoise``, ``.image_shape``) with one of the samplers.

  The noise comes from a `tf.random.Generator` reset to each batch's seed: resetting the
  global seed would not reseed an already-compiled sampling loop. Created under a
  strategy's scope, the generator gives every replica its own stream.

  ``constant_weights=True`` compiles the loop with the network's weights as graph constants
  (`nn.constant_weights`: oneDNN then reorders each filter once instead of at every step)
  taken at the first batch of each size: for a Sampler whose weights do not change while
  it is used (`generate_samples` makes one per call), not for one that outlives a
  checkpoint restore.

  ``order`` (dpmsolver++, unipc: 1-3, default 2) and ``skip_prk_steps`` (pndm) as in
  `solvers`; for those samplers ``steps`` defaults to `DEFAULT_STEPS` and ``spacing`` 'uniform'
  means the diffusers scheduler's default placement. ``num_evaluations`` is the number of
  network calls per sample.
  """

  def __init__(self, model, *, sampler='ddpm', steps=None, eta=0., spacing='uniform', order=None,
               skip_prk_steps=False, strategy=None, constant_weights=False):
    if sampler not in SAMPLERS:
      raise FlagError(f'--sampler must be one of {SAMPLERS}, got {sampler!r}')
    self.model, self.sampler, self.eta, self.spacing = model, sampler, float(eta), spacing
    self.diffusion = model.diffusion
    T = self.diffusion.num_timesteps
    self.order, self.skip_prk_steps = check_order(sampler, order), bool(skip_prk_steps)
    self.spacing = check_spacing(sampler, spacing)
    if sampler in DIFFUSERS_DEFAULT_SPACING:
      self.steps = DEFAULT_STEPS[sampler] if steps is None else _check_steps(steps, T)
    else:
      self.steps = None if steps in (None, T) else _check_steps(steps, T)
    self.timesteps = self._evaluation_timesteps()  # validates before any work
    self.strategy = strategy or tf.distribute.get_strategy()
    with self.strategy.scope():
      self._gen = tf.random.Generator.from_seed(0)
    self._respaced = None
    if sampler == 'ddpm' and self.steps is not None:
      self._respaced = respace(self.diffusion, self.timesteps)
    self.constant_weights = constant_weights
    self._frozen = {}  # batch size -> loop compiled with constant weights

  def _evaluation_timesteps(self):
    T = self.diffusion.num_timesteps
    if self.sampler in ('ddpm', 'ddim'):
      return timestep_sequence(T, self.steps, self.spacing)
    if self.sampler == 'pndm':
      return diffusers_timesteps(T, self.steps, self.spacing, scheduler='pndm',
                                 skip_prk_steps=self.skip_prk_steps)
    return diffusers_timesteps(T, self.steps, self.spacing, scheduler=self.sampler)

  @property
  def num_evaluations(self):
    """Network evaluations per sample."""
    return len(self.timesteps)

  def describe(self):
    T = self.diffusion.num_timesteps
    s = f'{self.sampler} with {self.steps or T} of {T} steps'
    if self.sampler in DIFFUSERS_DEFAULT_SPACING:
      return (s + f' ({self.spacing} spacing' + (f', order {self.order}' if self.order else '')
              + f', {self.num_evaluations} network evaluations)')
    if self.steps:
      s += f' ({self.spacing} spacing)'
    return s + (f', eta={self.eta}' if self.sampler == 'ddim' else '')

  def noise(self, shape, dtype=tf.float32):
    return self._gen.normal(shape, dtype=dtype)

  def sample(self, batch_size):
    """One batch as a tensor, with the generator's current noise stream."""
    if not self.constant_weights or not tf.executing_eagerly():
      return self._sample_loop(batch_size)
    fn = self._frozen.get(batch_size)
    if fn is None:
      with nn.constant_weights():  # traced now, so the weights are read now
        fn = tf.function(lambda: self._sample_loop(batch_size)).get_concrete_function()
      self._frozen[batch_size] = fn
    return fn()

  def _sample_loop(self, batch_size):
    shape = (batch_size, *self.model.image_shape)
    if self.sampler == 'pndm':
      return pndm_sample_loop(self.diffusion, self.model.denoise, shape=shape, steps=self.steps,
                              skip_prk_steps=self.skip_prk_steps, spacing=self.spacing,
                              noise_fn=self.noise)
    if self.sampler in DEFAULT_ORDERS:
      loop = dpm_solver_sample_loop if self.sampler == 'dpmsolver++' else unipc_sample_loop
      return loop(self.diffusion, self.model.denoise, shape=shape, steps=self.steps,
                  order=self.order, spacing=self.spacing, noise_fn=self.noise)
    if self.sampler == 'ddim':
      return ddim_sample_loop(self.diffusion, self.model.denoise, shape=shape,
                              timesteps=self.timesteps, eta=self.eta, noise_fn=self.noise)
    if self._respaced is None:
      return self.diffusion.p_sample_loop(self.model.denoise, shape=shape, noise_fn=self.noise)
    new, wrap = self._respaced
    return new.p_sample_loop(wrap(self.model.denoise), shape=shape, noise_fn=self.noise)

  def __call__(self, batch_size, seed):
    """One batch drawn with noise seed ``seed``: float32 numpy [batch_size, H, W, C]."""
    self._gen.reset_from_seed(int(seed))
    return self.sample(batch_size).numpy()


def generate_samples(model, num_samples, batch_size, *, sampler='ddpm', steps=None, eta=0.,
                     spacing='uniform', order=None, seed=0, log_fn=utils.log):
  """``num_samples`` samples in batches: float32 [N, H, W, C] in [-1, 1], with progress.
  Batch i uses noise seed ``batch_seed(seed, i)``, so a seed fixes the samples."""
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
