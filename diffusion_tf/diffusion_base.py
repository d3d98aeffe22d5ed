"""What the original's two diffusion modules share (§4): beta schedules, the Gaussian KL,
the float64 tables of q, the forward process and the compiled sampling-loop driver.

Timestep indices are 0-based: index ``t`` is the paper's step ``t + 1``.
"""

import functools
import threading

import numpy as np
import tensorflow as tf

from . import inputs

BETA_SCHEDULES = ('quad', 'linear', 'warmup10', 'warmup50', 'const', 'jsd')


def _warmup_beta(beta_start, beta_end, num_diffusion_timesteps, warmup_frac):
  betas = beta_end * np.ones(num_diffusion_timesteps, dtype=np.float64)
  warmup_time = int(num_diffusion_timesteps * warmup_frac)
  betas[:warmup_time] = np.linspace(beta_start, beta_end, warmup_time, dtype=np.float64)
  return betas


def get_beta_schedule(beta_schedule, *, beta_start, beta_end, num_diffusion_timesteps):
  """float64 [T] betas of the named schedule (one of `BETA_SCHEDULES`)."""
  T = num_diffusion_timesteps
  if beta_schedule == 'quad':
    betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=np.float64) ** 2
  elif beta_schedule == 'linear':
    betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
  elif beta_schedule == 'warmup10':
    betas = _warmup_beta(beta_start, beta_end, T, 0.1)
  elif beta_schedule == 'warmup50':
    betas = _warmup_beta(beta_start, beta_end, T, 0.5)
  elif beta_schedule == 'const':
    betas = beta_end * np.ones(T, dtype=np.float64)
  elif beta_schedule == 'jsd':  # 1/T, 1/(T-1), ..., 1: the last beta is 1 (alphas_cumprod[-1] = 0)
    betas = 1. / np.linspace(T, 1, T, dtype=np.float64)
  else:
    raise NotImplementedError(beta_schedule)
  assert betas.shape == (T,)
  return betas


def normal_kl(mean1, logvar1, mean2, logvar2):
  """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats; broadcasts."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + tf.exp(logvar1 - logvar2)
                + tf.math.squared_difference(mean1, mean2) * tf.exp(-logvar2))


def noise_like(shape, noise_fn=tf.random.normal, repeat=False, dtype=tf.float32):
  """``noise_fn(shape=shape)``, or (``repeat``) one draw shared by the whole batch."""
  if repeat:
    noise = noise_fn(shape=(1, *shape[1:]), dtype=dtype)
    return tf.repeat(noise, shape[0], axis=0)
  return noise_fn(shape=shape, dtype=dtype)


class DiffusionTables:
  """The float64 NumPy tables of the forward process q, computed once (§4.3).

  Subclasses set ``posterior_log_variance_clipped`` (v1 and v2 differ at t=0).
  """

  def __init__(self, betas):
    betas = np.asarray(betas, dtype=np.float64)
    assert betas.ndim == 1, 'betas must be 1-D'
    assert (betas > 0).all() and (betas <= 1).all(), 'betas must be in (0, 1]'
    self.betas = betas
    self.num_timesteps = int(betas.shape[0])

    alphas = 1. - betas
    self.alphas_cumprod = np.cumprod(alphas, axis=0)
    self.alphas_cumprod_prev = np.append(1., self.alphas_cumprod[:-1])
    assert self.alphas_cumprod_prev.shape == (self.num_timesteps,)

    # q(x_t | x_0)
    with np.errstate(divide='ignore'):  # the 'jsd' schedule reaches alphas_cumprod = 0
      self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
      self.sqrt_one_minus_alphas_cumprod = np.sqrt(1. - self.alphas_cumprod)
      self.log_one_minus_alphas_cumprod = np.log(1. - self.alphas_cumprod)
      self.sqrt_recip_alphas_cumprod = np.sqrt(1. / self.alphas_cumprod)
      self.sqrt_recipm1_alphas_cumprod = np.sqrt(1. / self.alphas_cumprod - 1)

    # q(x_{t-1} | x_t, x_0); equal to 1 / (1 / (1 - ac_prev) + alpha_t / beta_t)
    self.posterior_variance = betas * (1. - self.alphas_cumprod_prev) / (1. - self.alphas_cumprod)
    self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1. - self.alphas_cumprod)
    self.posterior_mean_coef2 = ((1. - self.alphas_cumprod_prev) * np.sqrt(alphas)
                                 / (1. - self.alphas_cumprod))

  @staticmethod
  def _extract(a, t, x_shape, dtype=tf.float32):
    """``a[t]`` for int [B] ``t``, cast to ``dtype`` and shaped [B, 1, 1, ...] like x."""
    bs, = t.shape
    assert x_shape[0] == bs or x_shape[0] is None or bs is None
    out = tf.gather(tf.constant(np.asarray(a), dtype=dtype), t)
    return tf.reshape(out, [-1] + [1] * (len(x_shape) - 1))

  # --------------------------------------------------------------------------- inputs
  # The public methods take NumPy arrays and Python numbers as well as tensors (see
  # `diffusion_tf.inputs`): tensors pass through untouched, so inside the compiled loops these
  # checks run once at trace time and add no ops.

  def _images(self, x, method, what='x', rank=None):
    """``x`` as a float [B, ...] tensor (NumPy / Python values become float32)."""
    expected = '[B, H, W, C] (float)' if rank == 4 else '[B, ...] (float)'
    return inputs.float_images(x, owner=f'{type(self).__name__}.{method}', expected=expected,
                               what=what, rank=rank)

  def _like(self, y, x, method, what):
    """``y`` (noise, x_t, eps) as a float tensor of ``x``'s shape."""
    return inputs.like_images(y, x, owner=f'{type(self).__name__}.{method}', what=what)

  def _timesteps(self, t, x, method):
    """``t`` as an int [B] tensor of indices in [0, T) for ``x`` [B, ...]; a scalar is repeated."""
    return inputs.timesteps(t, x, owner=f'{type(self).__name__}.{method}',
                            num_timesteps=self.num_timesteps)

  def _sample_shape(self, shape, method):
    return inputs.sample_shape(shape, owner=f'{type(self).__name__}.{method}')

  # --------------------------------------------------------------------------- forward process

  def q_mean_variance(self, x_start, t):
    """Mean [B,H,W,C], variance and log-variance [B,1,1,1] of q(x_t | x_0)."""
    x_start = self._images(x_start, 'q_mean_variance', 'x_start')
    t = self._timesteps(t, x_start, 'q_mean_variance')
    mean = self._extract(self.sqrt_alphas_cumprod, t, x_start.shape, x_start.dtype) * x_start
    variance = self._extract(1. - self.alphas_cumprod, t, x_start.shape, x_start.dtype)
    log_variance = self._extract(self.log_one_minus_alphas_cumprod, t, x_start.shape, x_start.dtype)
    return mean, variance, log_variance

  def q_sample(self, x_start, t, noise=None):
    """Diffuse the data: a sample of q(x_t | x_0), same shape as ``x_start``."""
    x_start = self._images(x_start, 'q_sample', 'x_start')
    t = self._timesteps(t, x_start, 'q_sample')
    if noise is None:
      noise = tf.random.normal(shape=tf.shape(x_start), dtype=x_start.dtype)
    noise = self._like(noise, x_start, 'q_sample', 'noise')
    return (self._extract(self.sqrt_alphas_cumprod, t, x_start.shape, x_start.dtype) * x_start
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape, x_start.dtype)
            * noise)

  def q_posterior_mean_variance(self, x_start, x_t, t):
    """Mean, variance, clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    x_t = self._images(x_t, 'q_posterior_mean_variance', 'x_t')
    x_start = self._like(x_start, x_t, 'q_posterior_mean_variance', 'x_start')
    t = self._timesteps(t, x_t, 'q_posterior_mean_variance')
    ex = functools.partial(self._extract, t=t, x_shape=x_t.shape, dtype=x_t.dtype)
    posterior_mean = ex(self.posterior_mean_coef1) * x_start + ex(self.posterior_mean_coef2) * x_t
    return posterior_mean, ex(self.posterior_variance), ex(self.posterior_log_variance_clipped)

  def _predict_xstart_from_eps(self, x_t, t, eps, method='_predict_xstart_from_eps'):
    """x_0 predicted from the noise ``eps`` in x_t [B, ...] at timesteps ``t``."""
    x_t = self._images(x_t, method, 'x_t')
    eps = self._like(eps, x_t, method, 'noise')
    t = self._timesteps(t, x_t, method)
    return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape, x_t.dtype) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape, x_t.dtype) * eps)

  # --------------------------------------------------------------------------- loop driver

  @staticmethod
  def _start(shape, noise_fn, x_T=()):
    """A loop's x_T: the given one (``x_T``: () or a 1-tuple, as the loops pass tensor
    arguments) checked against ``shape``, else drawn from ``noise_fn`` first."""
    x_T = x_T[0] if x_T else noise_fn(shape=shape, dtype=tf.float32)
    if tuple(x_T.shape) != tuple(shape):
      raise ValueError(f'x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}')
    return x_T

  def _run_compiled(self, impl, static_args, tensor_args):
    """Runs ``impl(*static_args, *tensor_args)`` as one compiled graph.

    Inside a graph (a caller's `tf.function`) it is inlined. Called eagerly, the compiled loop
    is kept by the owner of the network function among ``static_args`` (the object of a bound
    method such as ``model.denoise``, or the function itself), so a second identical call does
    not trace again, and the loop lives exactly as long as the network it captured: nothing
    module-level keeps a model alive. Callers that sample repeatedly with new noise own their
    loops (`sampling.Sampler`, the pipelines). Either way the T steps run inside a
    `tf.while_loop`, never as T Python-dispatched steps.
    """
    if not tf.executing_eagerly():
      return impl(*static_args, *tensor_args)
    cache = _loop_cache(static_args)
    key = (self, impl.__name__) + tuple(static_args)
    try:
      fn = cache.get(key) if cache is not None else None
    except TypeError:  # an unhashable static argument: compile for this call
      cache = fn = None
    if fn is None:
      fn = tf.function(functools.partial(impl, *static_args))
      if cache is not None:
        cache[key] = fn
    return fn(*tensor_args)


class _LoopCache:
  """Compiled loops kept on the owner of a network function (a plain object: `tf.Module`
  attribute walks treat it as a leaf)."""

  def __init__(self):
    self.loops = {}


def _loop_cache(static_args):
  """The loops dict kept by the owner of the first function among ``static_args`` (None for
  an owner that cannot hold one)."""
  fn = next((a for a in static_args if callable(a) and not isinstance(a, DiffusionTables)), None)
  owner = getattr(fn, '__self__', fn)
  holder = getattr(owner, '__dict__', {}).get('_diffusion_tf_loops') if owner is not None else None
  if holder is None:
    try:
      holder = owner.__dict__['_diffusion_tf_loops'] = _LoopCache()
    except (AttributeError, TypeError):
      return None
  return holder.loops


_LOOP = threading.local()


def current_step():
  """The index ``i`` (int32 scalar tensor) of the `timestep_loop` whose body is being traced
  now, or None outside one: a noise function can key per-step noise on it (the exported
  samplers draw stateless noise from (seed, step))."""
  return getattr(_LOOP, 'step', None)


def _traced_body(body, i, loop_vars):
  previous, _LOOP.step = current_step(), i
  try:
    return tuple(body(i, *loop_vars))
  finally:
    _LOOP.step = previous


def with_step_hook(body, step_hook):
  """A one-sample loop ``body(i, x) -> (x,)`` followed by ``step_hook(i, x) -> x`` (see
  `sampling.SamplerSettings.loop`); ``body`` itself for None."""
  if step_hook is None:
    return body
  return lambda i, x: (step_hook(i, body(i, x)[0]),)


def timestep_loop(num_steps, body, loop_vars):
  """``for i in reversed(range(num_steps)): loop_vars = body(i, *loop_vars)`` as a while loop.

  ``i`` is an int32 scalar tensor counting down to 0 (`current_step` while ``body`` is
  traced). Outputs carry no gradient.
  """
  i0 = tf.constant(num_steps - 1, dtype=tf.int32)
  # parallel_iterations=1: iterations that do not depend on each other (calc_bpd_loop) would
  # otherwise run the same oneDNN fused Conv2D+BiasAdd+Add kernel concurrently, which races
  # and segfaults in TF 2.21 on CPU (reproduced in tests/test_diffusion.py); on 2 cores the
  # ops' own intra-op threads already use the machine.
  out = tf.while_loop(
      cond=lambda i, *_: tf.greater_equal(i, 0),
      parallel_iterations=1,
      body=lambda i, *vs: (i - 1,) + _traced_body(body, i, vs),
      loop_vars=(i0,) + tuple(loop_vars))
  return tuple(tf.stop_gradient(v) if isinstance(v, tf.Tensor) else v for v in out[1:])
