"""Editing images with an unconditional model: inpainting, image-to-image and interpolation.

* `repaint_loop`: RePaint (Lugmayr et al. 2022) as diffusers' ``RePaintScheduler`` driven by its
  ``RePaintPipeline``: `repaint_timesteps` walks down ``steps`` DDIM-placed timesteps ('leading',
  ``T // steps`` apart) and, every ``jump_length`` steps, ``jump_n_sample - 1`` times back up
  ``jump_length`` steps (each "undo" adds the noise of ``T // steps`` forward steps, with the
  betas of the steps above the one just taken, as diffusers does). Each step is a DDIM step of
  the unknown region (``eta``: the share of the posterior's standard deviation added, as DDIM's
  eta; 0, diffusers' default, is deterministic there; the model's own variance, e.g. the
  ``fixedlarge`` of the CIFAR-10 and digits models, is not used) while the known region is
  q(x_prev | x_0) drawn with the same noise. 250 steps with jumps of 10 x 10 cost 2,410 network
  evaluations per image.
* `replace_loop`: the cheap variant: any sampler of the registry that takes a per-step hook
  (ddpm, ddim), with the known region replaced by q(x_t | x_0) after every step: ``steps``
  evaluations. Multistep solvers are refused: their history of earlier outputs would mix
  replaced and unreplaced samples.
* `img2img` (SDEdit, Meng et al. 2022): the input noised to ``strength`` of the sampler's steps
  with q(x_t | x_0), then any registry sampler from there, as diffusers' img2img pipelines.
* `interpolate` (the DDPM paper's Figure 8; the original's ``GaussianDiffusion.interpolate``):
  two images diffused to step t with the same noise, mixed (slerp or lerp) at each ``lam``,
  decoded with the ancestral sampler, one noise draw shared by the row.

Masks are diffusers': 1 keeps the pixel, 0 fills it. The known pixels of every result equal the
input's (`compose` pastes them back in uint8, where float rounding could move them by one).
`EditRunner` runs a compiled edit over the images in seeded batches.
"""

import math

import numpy as np
import tensorflow as tf

from . import sampling
from .diffusion_base import timestep_loop
from .errors import FlagError
from .solvers import model_eps_and_x0

METHODS = ('repaint', 'replace')
MIXES = ('slerp', 'lerp')


# ----------------------------------------------------------------------------- RePaint

def repaint_timesteps(num_timesteps, steps, jump_length=10, jump_n_sample=10):
  """int64 timesteps of diffusers' ``RePaintScheduler.set_timesteps``, in the order they run: a
  step down where a timestep is lower than the one before, an undo (forward noise) otherwise."""
  T = int(num_timesteps)
  N = min(T, int(steps))
  jumps = {j: jump_n_sample - 1 for j in range(0, N - jump_length, jump_length)}
  out, t = [], N
  while t >= 1:
    t -= 1
    out.append(t)
    if jumps.get(t, 0) > 0:
      jumps[t] -= 1
      for _ in range(jump_length):
        t += 1
        out.append(t)
  return np.asarray(out, np.int64) * (T // N)


def repaint_plan(diffusion, *, steps, jump_length=10, jump_n_sample=10, eta=0.):
  """float64 rows, one per schedule entry: ``step`` (1: a step down, 0: an undo), ``t``, the
  step's coefficients (``ac_prev``, ``std``, ``direction``) and an undo's betas [n]."""
  for name, value in (('steps', steps), ('jump_length', jump_length), ('jump_n_sample', jump_n_sample)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise FlagError(f'--{name} must be an integer >= 1, got {value!r}')
  T = diffusion.num_timesteps
  if steps > T:
    raise FlagError(f'--steps must be between 1 and the {T} diffusion steps, got {steps}')
  ts = repaint_timesteps(T, steps, jump_length, jump_n_sample)
  n = T // min(T, steps)
  ac = diffusion.alphas_cumprod
  rows = dict(step=[], t=ts, ac_prev=[], std=[], direction=[], undo_betas=[])
  t_last = ts[0] + 1
  for t in ts:
    down = t < t_last
    a = ac[t]
    a_prev = ac[t - n] if t - n >= 0 else 1.
    var = (1. - a_prev) / (1. - a) * (1. - a / a_prev)
    std = eta * math.sqrt(var)
    rows['step'].append(float(down))
    rows['ac_prev'].append(a_prev)
    rows['std'].append(std)
    rows['direction'].append(math.sqrt(max(1. - a_prev - std ** 2, 0.)))
    rows['undo_betas'].append(np.zeros(n) if down else diffusion.betas[t_last:t_last + n])
    t_last = t
  return {k: np.asarray(v) for k, v in rows.items()}


def repaint_loop(diffusion, denoise_fn, *, x0, mask, steps=250, jump_length=10, jump_n_sample=10,
                 eta=0., noise_fn=tf.random.normal, x_T=None, clip_sample=True):
  """RePaint of ``x0`` [B, H, W, C] in [-1, 1] where ``mask`` ([B or 1, H, W, 1 or C], 1 keep,
  0 fill) is 0. Noise draws in diffusers' order: x_T (unless given), then one per step and
  ``T // steps`` per undo. Returns [B, H, W, C]; its known pixels are ``x0``'s."""
  plan = repaint_plan(diffusion, steps=steps, jump_length=jump_length, jump_n_sample=jump_n_sample,
                      eta=eta)
  x0 = tf.convert_to_tensor(x0, tf.float32)
  mask = tf.cast(tf.convert_to_tensor(mask), tf.float32)
  if x_T is None:
    x_T = noise_fn(shape=x0.shape, dtype=tf.float32)
  tb = {k: tf.constant(v, tf.int32 if k == 't' else tf.float32) for k, v in plan.items()}
  K, n, B = len(plan['t']), plan['undo_betas'].shape[1], x0.shape[0]

  def body(i, x):
    k = K - 1 - i
    g = lambda name: tf.gather(tb[name], k)

    def step():
      eps, pred = model_eps_and_x0(diffusion, denoise_fn, x, tf.fill([B], g('t')))
      pred = tf.clip_by_value(pred, -1., 1.) if clip_sample else pred
      noise = noise_fn(shape=x.shape, dtype=x.dtype)
      a_prev = g('ac_prev')
      unknown = tf.sqrt(a_prev) * pred + g('direction') * eps + g('std') * noise
      known = tf.sqrt(a_prev) * x0 + tf.sqrt(1. - a_prev) * noise
      return mask * known + (1. - mask) * unknown

    def undo():
      betas, y = g('undo_betas'), x
      for j in range(n):
        y = tf.sqrt(1. - betas[j]) * y + tf.sqrt(betas[j]) * noise_fn(shape=x.shape, dtype=x.dtype)
      return y

    return (tf.cond(g('step') > 0, step, undo),)

  return timestep_loop(K, body, (tf.convert_to_tensor(x_T, tf.float32),))[0]


def repaint_evaluations(num_timesteps, steps, jump_length=10, jump_n_sample=10):
  """Network evaluations per image of `repaint_loop`."""
  ts = repaint_timesteps(num_timesteps, steps, jump_length, jump_n_sample)
  return int(np.sum(ts < np.append(ts[0] + 1, ts[:-1])))


# ----------------------------------------------------------------------------- replacement

def replace_loop(settings, diffusion, denoise_fn, *, x0, mask, noise_fn=tf.random.normal):
  """Inpainting by replacement on the trajectory of ``settings`` (a `sampling.SamplerSettings`
  whose loop takes a step hook): after every step the known region is q(x_t | x_0) at the
  sample's noise level (the clean ``x0`` after the last). Returns [B, H, W, C]."""
  levels = settings.levels_after_steps(diffusion)
  x0 = tf.convert_to_tensor(x0, tf.float32)
  mask = tf.cast(tf.convert_to_tensor(mask), tf.float32)

  def hook(i, x):
    a = tf.gather(tf.constant(levels, tf.float32), i)
    known = tf.sqrt(a) * x0 + tf.sqrt(1. - a) * noise_fn(shape=x.shape, dtype=x.dtype)
    return mask * known + (1. - mask) * x

  return settings.loop(diffusion, denoise_fn, shape=x0.shape, noise_fn=noise_fn, step_hook=hook)


# ----------------------------------------------------------------------------- image-to-image

def check_strength(strength):
  if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
    raise FlagError(f'--strength must be a number in [0, 1], got {strength!r}')
  return float(strength)


def strength_steps(settings, strength):
  """The sampler steps an image-to-image edit of ``strength`` runs (as diffusers' img2img
  pipelines: ``int(steps * strength)``; 0 returns the input)."""
  N = settings.num_steps
  return min(int(N * check_strength(strength)), N)


def img2img(settings, diffusion, denoise_fn, *, x0, strength, noise_fn=tf.random.normal):
  """SDEdit: ``x0`` noised with q(x_t | x_0) to the timestep where the last
  `strength_steps` steps of ``settings`` begin (noise drawn first), then those steps."""
  x0 = tf.convert_to_tensor(x0, tf.float32)
  k = strength_steps(settings, strength)
  if k == 0:
    return x0
  x_t = diffusion.q_sample(x0, settings.start_timestep(k),
                           noise=noise_fn(shape=x0.shape, dtype=tf.float32))
  return settings.loop(diffusion, denoise_fn, shape=x0.shape, x_T=x_t, noise_fn=noise_fn, start=k)


# ----------------------------------------------------------------------------- interpolation

def mix_latents(a, b, lam, mix='slerp'):
  """``a``, ``b`` [1, ...] mixed at each ``lam`` [N]: [N, ...]. 'slerp' along the great circle
  between them (lerp where they are parallel), 'lerp' linearly as the original."""
  lam = tf.reshape(tf.cast(lam, a.dtype), [-1] + [1] * (len(a.shape) - 1))
  if mix == 'lerp':
    return (1. - lam) * a + lam * b
  if mix != 'slerp':
    raise FlagError(f'--mix must be one of {MIXES}, got {mix!r}')
  cos = tf.reduce_sum(a * b) / (tf.norm(a) * tf.norm(b))
  theta = tf.acos(tf.clip_by_value(cos, -1., 1.))
  small = theta < 1e-4
  sin = tf.where(small, 1., tf.sin(theta))
  ca = tf.where(small, 1. - lam, tf.sin((1. - lam) * theta) / sin)
  cb = tf.where(small, lam, tf.sin(lam * theta) / sin)
  return ca * a + cb * b


def check_timestep(t, num_timesteps):
  """``num_timesteps`` when ``t`` is a timestep of it; a FlagError naming ``--t`` otherwise."""
  if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < num_timesteps:
    raise FlagError(f'--t must be an integer in [0, {num_timesteps}), got {t!r}')
  return num_timesteps


def interpolate(diffusion, denoise_fn, *, x1, x2, lam, t, mix='slerp', noise_fn=tf.random.normal,
                latent_noise=None):
  """Images between ``x1`` and ``x2`` ([1, H, W, C] each) at each ``lam`` [N]: both diffused to
  timestep ``t`` with one noise draw (``latent_noise``: (z1, z2) instead, the original's
  independent draws), mixed, and decoded by the ancestral sampler from ``t``, every image of
  the row with the same step noise. ``lam`` 0 and 1 give the two inputs' reconstructions."""
  T = check_timestep(t, diffusion.num_timesteps)
  x1, x2 = (tf.convert_to_tensor(x, tf.float32) for x in (x1, x2))
  if latent_noise is None:
    z = noise_fn(shape=x1.shape, dtype=tf.float32)
    latent_noise = (z, z)
  a, b = (diffusion.q_sample(x, int(t), noise=z) for x, z in zip((x1, x2), latent_noise))
  mixed = mix_latents(a, b, lam, mix)

  def shared(shape, dtype=tf.float32):  # one draw for the whole row
    return tf.repeat(noise_fn(shape=(1, *shape[1:]), dtype=dtype), shape[0], axis=0)

  settings = sampling.SamplerSettings.resolve('ddpm', T)
  return settings.loop(diffusion, denoise_fn, shape=mixed.shape, x_T=mixed, noise_fn=shared,
                       start=int(t) + 1)


# ----------------------------------------------------------------------------- running

def compose(result, images, masks):
  """uint8 results with the known pixels (``masks`` 1) taken from ``images`` exactly."""
  keep = np.broadcast_to(masks.astype(bool), images.shape)
  return np.where(keep, images, result)


class EditRunner:
  """Runs ``edit(noise_fn, *batch_tensors) -> float [B, H, W, C]`` compiled (once per batch
  shape), batch i with noise from a `tf.random.Generator` reset to
  ``sampling.batch_seed(seed, i)``, with a progress bar."""

  def __init__(self, edit):
    self._gen = tf.random.Generator.from_seed(0)
    noise_fn = lambda shape, dtype=tf.float32: self._gen.normal(shape, dtype=dtype)
    self._fn = tf.function(lambda *arrays: edit(noise_fn, *arrays))

  def __call__(self, arrays, batch_size, seed, *, desc='edit', progress=True):
    """``arrays``: float32 arrays with the images along axis 0. Returns float32 [N, ...]."""
    from tqdm.auto import tqdm
    N = len(arrays[0])
    out = []
    for i in tqdm(range(math.ceil(N / batch_size)), desc=desc, unit='batch', disable=not progress):
      self._gen.reset_from_seed(sampling.batch_seed(seed, i))
      part = [tf.constant(a[i * batch_size:(i + 1) * batch_size], tf.float32) for a in arrays]
      out.append(self._fn(*part).numpy())
    return np.concatenate(out)
