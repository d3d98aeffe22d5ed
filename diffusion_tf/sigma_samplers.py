"""diffusers' sigma-family ("Karras-style") schedulers: Euler (`EulerDiscreteScheduler`), Euler
ancestral (`EulerAncestralDiscreteScheduler`), Heun (`HeunDiscreteScheduler`), LMS
(`LMSDiscreteScheduler`), KDPM2 (`KDPM2DiscreteScheduler`) and KDPM2 ancestral
(`KDPM2AncestralDiscreteScheduler`).

They all work in the variance-exploding parameterisation of the same process: ``x_ve = x_t /
sqrt(alpha_cumprod_t)`` at noise level ``sigma_t = sqrt((1 - alpha_cumprod_t) / alpha_cumprod_t)``.
One shared machinery (`sigma_schedule`) places the steps as diffusers does: the scheduler's
timesteps (``linspace`` spacing gives FRACTIONAL timesteps, evaluated by the network as floats),
their sigmas interpolated linearly in t, optionally replaced by Karras et al.'s schedule
(``use_karras_sigmas``, timesteps then found by interpolating log sigma), and a final sigma 0.
The sample starts as x_T times diffusers' ``init_noise_sigma``; the network sees
``x / sqrt(sigma^2 + 1)`` (the VP sample) and its eps (or x0) gives ``x0 = x - sigma * eps`` and
the ODE derivative ``d = (x - x0) / sigma``. Each scheduler is then a small step rule, written
as a float64 plan (one row per network evaluation, as in `solvers`) and run by one compiled
`timestep_loop`:

  x_next = (saved if use_saved else x) + w . (d, d_prev1, d_prev2, d_prev3) + up * noise

Network evaluations for ``steps`` N: euler, euler_ancestral, lms: N; heun, kdpm2,
kdpm2_ancestral: 2N - 1 (two per step except the last, a plain Euler step to sigma 0).
Stochastic ones draw their noise from ``noise_fn`` exactly when diffusers draws it (Euler: only
at steps with churn; Euler ancestral: every step; KDPM2 ancestral: every second evaluation),
so a recorded stream replays.
"""

import numpy as np
import tensorflow as tf

from .diffusion_base import timestep_loop
from .errors import FlagError
from .solvers import (DIFFUSERS_SPACINGS, _check_diffusion, _initial_noise, _model_output,
                      _predicts_x0, _run_plan)

LMS_ORDERS = (1, 2, 3, 4)


# ----------------------------------------------------------------------------- shared sigmas

def vp_sigmas(alphas_cumprod):
  """float64 VE noise levels ``sqrt((1 - ac) / ac)`` of the training timesteps."""
  ac = np.asarray(alphas_cumprod, np.float64)
  return np.sqrt((1. - ac) / ac)


def sigma_to_t(sigmas, alphas_cumprod):
  """Fractional timesteps of noise levels ``sigmas``: log sigma interpolated linearly between the
  training timesteps (clamped to [0, T - 1])."""
  log_table = np.log(vp_sigmas(alphas_cumprod))
  return np.interp(np.log(np.maximum(sigmas, 1e-10)), log_table, np.arange(len(log_table)))


def karras_sigmas(sigma_max, sigma_min, n, rho=7.):
  """Karras et al. (2022)'s n noise levels from sigma_max to sigma_min, even in sigma^(1/rho)."""
  ramp = np.linspace(0, 1, n)
  hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
  return (hi + ramp * (lo - hi)) ** rho


def sigma_timesteps(T, N, spacing, steps_offset):
  """The scheduler's N decreasing timesteps (float32 values, as diffusers computes them)."""
  if spacing not in DIFFUSERS_SPACINGS:
    raise ValueError(f'spacing={spacing!r}; expected one of {DIFFUSERS_SPACINGS}')
  if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or not 1 <= N <= T:
    raise FlagError(f'--steps must be between 1 and the {T} diffusion steps, got {N!r}')
  if spacing == 'linspace':
    ts = np.linspace(0, T - 1, N, dtype=np.float32)[::-1]
  elif spacing == 'leading':
    ts = (np.arange(0, N) * (T // N)).round()[::-1].astype(np.float32) + steps_offset
  else:
    ts = np.arange(T, 0, -T / N).round().astype(np.float32) - 1
  if ts.max() > T - 1 or ts.min() < 0:
    raise ValueError(f'{spacing} spacing with steps_offset {steps_offset} places timesteps '
                     f'outside [0, {T - 1}] for {N} steps')
  return ts.astype(np.float64)


def sigma_schedule(alphas_cumprod, steps, spacing='linspace', steps_offset=0,
                   use_karras_sigmas=False, round_karras_timesteps=False):
  """(timesteps [N], sigmas [N + 1] ending at 0), float64 holding diffusers' float32 values.

  Sigmas are the training sigmas interpolated linearly at the (maybe fractional) timesteps;
  ``use_karras_sigmas`` replaces them by `karras_sigmas` between the first and last of those,
  with timesteps from `sigma_to_t` (rounded for KDPM2: ``round_karras_timesteps``)."""
  table = vp_sigmas(alphas_cumprod)
  ts = sigma_timesteps(len(table), steps, spacing, steps_offset)
  sig = np.interp(ts, np.arange(len(table)), table)
  if use_karras_sigmas:
    sig = karras_sigmas(sig[0], sig[-1], len(sig))
    ts = sigma_to_t(sig, alphas_cumprod)
    ts = ts.round() if round_karras_timesteps else ts
  f32 = lambda a: a.astype(np.float32).astype(np.float64)
  return f32(ts), f32(np.append(sig, 0.))


def init_noise_sigma(sigmas, spacing):
  """diffusers' ``init_noise_sigma``: the largest sigma ('leading': ``sqrt(sigma^2 + 1)``)."""
  top = float(np.max(sigmas))
  return top if spacing in ('linspace', 'trailing') else float(np.sqrt(top ** 2 + 1.))


class _Rows:
  """Builds a plan row by row (each row one network evaluation)."""

  def __init__(self):
    self.rows = []

  def add(self, t, sigma, w, *, sig_x0=None, churn=0., up=0., draw=False, save=False,
          use_saved=False):
    w4 = np.zeros(4)
    w4[:len(w)] = w
    self.rows.append(dict(t=float(t), c_in=1. / np.sqrt(sigma ** 2 + 1.),
                          sig=float(sigma if sig_x0 is None else sig_x0), churn=float(churn),
                          up=float(up), draw=float(draw), save=float(save),
                          use_saved=float(use_saved), w=w4))

  def plan(self, spacing, sigmas):
    plan = {k: np.array([r[k] for r in self.rows]) for k in self.rows[0]}
    plan['init'] = np.array([init_noise_sigma(sigmas, spacing)])
    return plan


# ----------------------------------------------------------------------------- the step rules

def euler_plan(alphas_cumprod, *, steps, spacing='linspace', steps_offset=0, use_karras_sigmas=False,
               s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1.):
  """EulerDiscreteScheduler: one Euler step per evaluation. With ``s_churn`` > 0, at steps whose
  sigma is in [s_tmin, s_tmax], noise raises sigma to ``sigma_hat = sigma (1 + gamma)``,
  ``gamma = min(s_churn / N, sqrt(2) - 1)``, after the network ran at sigma (diffusers' order)."""
  ts, sig = sigma_schedule(alphas_cumprod, steps, spacing, steps_offset, use_karras_sigmas)
  rows, N = _Rows(), len(ts)
  for k in range(N):
    gamma = min(s_churn / N, 2 ** .5 - 1) if s_tmin <= sig[k] <= s_tmax else 0.
    hat = sig[k] * (gamma + 1)
    churn = s_noise * np.sqrt(hat ** 2 - sig[k] ** 2) if gamma > 0 else 0.
    rows.add(ts[k], sig[k], [sig[k + 1] - hat], sig_x0=hat, churn=churn, draw=gamma > 0)
  return rows.plan(spacing, sig)


def _ancestral_split(sigma_from, sigma_to):
  """(sigma_up, sigma_down) of an ancestral step: deterministic to sigma_down, noise sigma_up."""
  up = np.sqrt(sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2)
  return up, np.sqrt(sigma_to ** 2 - up ** 2)


def euler_ancestral_plan(alphas_cumprod, *, steps, spacing='linspace', steps_offset=0):
  """EulerAncestralDiscreteScheduler: an Euler step to sigma_down, then fresh noise of std
  sigma_up (drawn at every step, the last one's times 0)."""
  ts, sig = sigma_schedule(alphas_cumprod, steps, spacing, steps_offset)
  rows = _Rows()
  for k in range(len(ts)):
    up, down = _ancestral_split(sig[k], sig[k + 1])
    rows.add(ts[k], sig[k], [down - sig[k]], up=up, draw=True)
  return rows.plan(spacing, sig)


def heun_plan(alphas_cumprod, *, steps, spacing='linspace', steps_offset=0, use_karras_sigmas=False):
  """HeunDiscreteScheduler: an Euler step to the next sigma, evaluated there, and the step
  redone from the saved sample with the mean of the two derivatives; the last step (to 0) is
  Euler only. ``2 steps - 1`` evaluations."""
  ts, sig = sigma_schedule(alphas_cumprod, steps, spacing, steps_offset, use_karras_sigmas)
  rows, N = _Rows(), len(ts)
  for k in range(N - 1):
    dt = sig[k + 1] - sig[k]
    rows.add(ts[k], sig[k], [dt], save=True)
    rows.add(ts[k + 1], sig[k + 1], [dt / 2, dt / 2], use_saved=True)
  rows.add(ts[-1], sig[-2], [-sig[-2]])
  return rows.plan(spacing, sig)


def _lagrange_integral(nodes, j, a, b):
  """Integral over [a, b] of the Lagrange basis polynomial of ``nodes[j]``."""
  poly = np.poly1d([1.])
  for m, node in enumerate(nodes):
    if m != j:
      poly *= np.poly1d([1., -node]) / (nodes[j] - node)
  integral = poly.integ()
  return integral(b) - integral(a)


def lms_plan(alphas_cumprod, *, steps, order=4, spacing='linspace', steps_offset=0,
             use_karras_sigmas=False):
  """LMSDiscreteScheduler with ``order`` (its step argument, 4 by default): the derivative
  extrapolated through the last ``min(k + 1, order)`` ones, integrated exactly over the step."""
  if order not in LMS_ORDERS:
    raise FlagError(f'--order for --sampler lms must be one of {LMS_ORDERS}, got {order!r}')
  ts, sig = sigma_schedule(alphas_cumprod, steps, spacing, steps_offset, use_karras_sigmas)
  rows = _Rows()
  for k in range(len(ts)):
    nodes = sig[k - np.arange(min(k + 1, order))]  # the newest derivative's sigma first
    rows.add(ts[k], sig[k], [_lagrange_integral(nodes, j, sig[k], sig[k + 1])
                             for j in range(len(nodes))])
  return rows.plan(spacing, sig)


def _geometric_mean(a, b):
  """sqrt(a b) as diffusers computes it (exp of the mean of the logs, in float32)."""
  with np.errstate(divide='ignore'):
    return float(np.exp((np.log(np.float32(a)) + np.log(np.float32(b))) / np.float32(2)))


def kdpm2_plan(alphas_cumprod, *, steps, spacing='linspace', steps_offset=0, use_karras_sigmas=False):
  """KDPM2DiscreteScheduler (DPM-Solver-2): an Euler step to the geometric mean of this sigma
  and the next, evaluated there, and the full step from the saved sample with that derivative
  (a midpoint step in log sigma); the last step (to 0) is Euler only. ``2 steps - 1``
  evaluations."""
  ts, sig = sigma_schedule(alphas_cumprod, steps, spacing, steps_offset, use_karras_sigmas,
                           round_karras_timesteps=True)
  rows, N = _Rows(), len(ts)
  for k in range(N - 1):
    mid = _geometric_mean(sig[k], sig[k + 1])
    t_mid = np.float32(sigma_to_t(np.array([mid]), alphas_cumprod)[0])
    rows.add(ts[k], sig[k], [mid - sig[k]], save=True)
    rows.add(t_mid, mid, [sig[k + 1] - sig[k]], use_saved=True)
  rows.add(ts[-1], sig[-2], [-sig[-2]])
  return rows.plan(spacing, sig)


def kdpm2_ancestral_plan(alphas_cumprod, *, steps, spacing='linspace', steps_offset=0,
                         use_karras_sigmas=False):
  """KDPM2AncestralDiscreteScheduler: KDPM2's midpoint step aimed at sigma_down (the ancestral
  split of the step) with fresh noise of std sigma_up after each second evaluation; the last
  step (to 0) is Euler only, without noise. ``2 steps - 1`` evaluations."""
  ts, sig = sigma_schedule(alphas_cumprod, steps, spacing, steps_offset, use_karras_sigmas,
                           round_karras_timesteps=True)
  rows, N = _Rows(), len(ts)
  for k in range(N - 1):
    up, down = (np.float64(np.float32(v)) for v in _ancestral_split(sig[k], sig[k + 1]))
    mid = _geometric_mean(sig[k], down)
    t_mid = np.float32(sigma_to_t(np.array([mid]), alphas_cumprod)[0])
    rows.add(ts[k], sig[k], [mid - sig[k]], save=True)
    rows.add(t_mid, mid, [down - sig[k]], use_saved=True, up=up, draw=True)
  rows.add(ts[-1], sig[-2], [-sig[-2]])
  return rows.plan(spacing, sig)


# ----------------------------------------------------------------------------- the loop

def evaluation_timesteps(plan):
  """The timesteps the network is evaluated at, in order (float64; fractional for linspace)."""
  return plan['t']


def sigma_sample_loop(diffusion, denoise_fn, plan, *, shape, clip_sample=False, x_T=None,
                      noise_fn=tf.random.normal):
  """Runs a plan of this module: x_T (float32 [B, H, W, C], default drawn from ``noise_fn``)
  scaled by the plan's ``init_noise_sigma``, one network call per row (at int32 timesteps when
  all are whole numbers, float32 ones otherwise), step noise from ``noise_fn`` where the plan
  draws it. ``clip_sample`` clips each x0 prediction to [-1, 1] (HeunDiscreteScheduler's
  option). Returns the sample at sigma 0, [B, H, W, C]."""
  _check_diffusion(diffusion)
  plan = dict(plan)
  init = float(plan.pop('init')[0])
  fractional = bool(np.any(plan['t'] != np.round(plan['t'])))
  options = (('clip', bool(clip_sample)), ('fractional', fractional), ('init', init),
             ('noise_fn', noise_fn))
  return _run_plan(diffusion, _sigma_impl, denoise_fn, shape, plan, options,
                   _initial_noise(shape, x_T, noise_fn))


def _sigma_impl(diffusion, denoise_fn, shape, frozen, options, x_T):
  opts = dict(options)
  noise_fn = opts['noise_fn']
  tb = {k: tf.constant(np.asarray(v), tf.float32) for k, v in frozen}
  if not opts['fractional']:
    tb['t'] = tf.cast(tf.round(tb['t']), tf.int32)
  table = dict(frozen)
  noisy = any(table['draw'])
  n, B = len(table['t']), shape[0]
  zeros = tf.zeros_like(x_T)

  def noise(i, scale):
    draw = lambda: scale * noise_fn(shape=shape, dtype=tf.float32)
    return tf.cond(tf.gather(tb['draw'], i) > 0, draw, lambda: zeros)

  def body(i, x, saved, h1, h2, h3):
    k = n - 1 - i
    g = lambda name: tf.gather(tb[name], k)
    out = _model_output(diffusion, denoise_fn, x * g('c_in'), tf.fill([B], g('t')))
    if noisy and any(table['churn']):  # Euler's churn: after the network ran, before x0
      x = x + noise(k, g('churn'))
    x0 = out if _predicts_x0(diffusion) else x - g('sig') * out
    if opts['clip']:
      x0 = tf.clip_by_value(x0, -1., 1.)
    d = (x - x0) / g('sig')
    w = g('w')
    base = tf.where(g('use_saved') > 0, saved, x)
    saved = tf.where(g('save') > 0, x, saved)
    x = base + w[0] * d + w[1] * h1 + w[2] * h2 + w[3] * h3
    if noisy and any(table['up']):
      x = x + noise(k, g('up'))
    return x, saved, d, h1, h2

  x = x_T * opts['init']
  return timestep_loop(n, body, (x, x, zeros, zeros, zeros))[0]
