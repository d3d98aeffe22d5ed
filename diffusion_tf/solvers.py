"""Few-step samplers with Hugging Face diffusers' scheduler semantics: its timestep placement,
PNDM (`PNDMScheduler`), DPM-Solver++ multistep for the ODE and the SDE
(`DPMSolverMultistepScheduler`, algorithm_type 'dpmsolver++' / 'sde-dpmsolver++'), UniPC
multistep (`UniPCMultistepScheduler`), SA-Solver (`SASolverScheduler`), DPM-Solver++ singlestep
(`DPMSolverSinglestepScheduler`) and DEIS (`DEISMultistepScheduler`).

Each sampler is planned in float64 NumPy first: every step of these solvers is a linear
combination of the current sample, a few earlier samples and a few earlier network outputs with
coefficients that depend only on the timesteps. The plan (one row of coefficients per network
evaluation) is then run as one compiled `timestep_loop`, one network call per iteration, like
the DDPM and DDIM loops. Timestep indices are 0-based, as in diffusers.

Network evaluations (each loop iteration calls the network once, on the whole batch):
  * ``pndm_sample_loop``: ``steps + 9`` (Runge-Kutta warm-up, diffusers' default) or, with
    ``skip_prk_steps=True``, ``steps + 1``.
  * every other loop: ``steps`` (UniPC's and SA-Solver's correctors reuse the next step's
    evaluation). The stochastic ones draw one noise tensor per step from ``noise_fn``.
"""

import math

import numpy as np
import tensorflow as tf

from .diffusion_base import timestep_loop
from .diffusion_utils import GaussianDiffusion
from .diffusion_utils_2 import GaussianDiffusion2
from .errors import FlagError

DIFFUSERS_SPACINGS = ('leading', 'linspace', 'trailing')
DIFFUSERS_SCHEDULERS = ('ddim', 'ddpm', 'pndm', 'dpmsolver++', 'unipc')
SOLVER_ORDERS = (1, 2, 3)
DPM_ALGORITHMS = ('dpmsolver++', 'sde-dpmsolver++')  # ODE, SDE (Lu et al. 2022, section 5)


# ----------------------------------------------------------------------------- timesteps

def diffusers_timesteps(num_train_timesteps, num_inference_steps, spacing='leading', steps_offset=0,
                        *, scheduler='ddim', skip_prk_steps=False):
  """int64 timesteps equal to diffusers' ``scheduler.timesteps`` after
  ``set_timesteps(num_inference_steps)``, for a scheduler config with ``timestep_spacing=spacing``
  and ``steps_offset``: the network is evaluated at these, in this order.

  * ``scheduler='ddim'`` or ``'ddpm'``: ``num_inference_steps`` decreasing steps ('linspace'
    includes 0; 'leading' is ``k * (T // N) + steps_offset``; 'trailing' ends at ``T/N - 1``).
  * ``'dpmsolver++'`` / ``'unipc'``: ``num_inference_steps`` decreasing steps placed on N + 1
    points with the last (0) dropped, as those schedulers do (the final step goes to sigma 0).
  * ``'pndm'``: the PNDM evaluation order, N + 9 entries: the Runge-Kutta pattern over the
    four largest of the DDIM-placed steps (``[t4, t3+h, t3+h, t3, t3, t2+h, t2+h, t2, t2, t1+h,
    t1+h, t1]`` with ``h = T // N // 2``) then the remaining steps decreasing; with
    ``skip_prk_steps`` N + 1 entries, the second largest step repeated (``[tN, tN-1, tN-1, ...]``).
  """
  T, N = int(num_train_timesteps), int(num_inference_steps)
  if scheduler not in DIFFUSERS_SCHEDULERS:
    raise ValueError(f'scheduler={scheduler!r}; expected one of {DIFFUSERS_SCHEDULERS}')
  if spacing not in DIFFUSERS_SPACINGS:
    raise ValueError(f'spacing={spacing!r}; expected one of {DIFFUSERS_SPACINGS}')
  if not 1 <= N <= T:
    raise FlagError(f'--steps must be between 1 and the {T} diffusion steps, got {N}')
  placement, pattern = _PLACEMENTS[scheduler]
  distinct = np.asarray(placement(T, N, spacing, steps_offset)).astype(np.int64)
  ts = distinct if pattern is None else pattern(distinct, T, N, skip_prk_steps)
  if len(np.unique(distinct)) != len(distinct) or distinct.min() < 0 or distinct.max() >= T:
    raise ValueError(f'{spacing} spacing cannot place {N} distinct steps in {T} for {scheduler}; '
                     f'use fewer steps')
  return ts


def _solver_placement(T, N, spacing, steps_offset):
  """Decreasing DPMSolverMultistep / UniPC timesteps: N + 1 points with the last (0) dropped."""
  if spacing == 'linspace':
    return np.linspace(0, T - 1, N + 1).round()[::-1][:-1]
  if spacing == 'leading':
    return (np.arange(0, N + 1) * (T // (N + 1))).round()[::-1][:-1] + steps_offset
  return np.arange(T, 0, -T / N).round() - 1


def _ddim_placement(T, N, spacing, steps_offset):
  """Decreasing DDIM/DDPM/PNDM timesteps (diffusers' DDIMScheduler.set_timesteps)."""
  if spacing == 'linspace':
    return np.linspace(0, T - 1, N).round()[::-1].astype(np.int64)
  if spacing == 'leading':
    return (np.arange(0, N) * (T // N)).round()[::-1].astype(np.int64) + steps_offset
  return np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1


def _pndm_pattern(base, T, N, skip_prk_steps):
  inc = base[::-1]  # PNDMScheduler._timesteps, increasing
  if skip_prk_steps:
    if N < 2:
      raise ValueError(f'pndm without Runge-Kutta steps needs --steps >= 2, got {N}')
    return np.concatenate([inc[:-1], inc[-2:-1], inc[-1:]])[::-1]
  if N < 4:
    raise ValueError(f'pndm with its Runge-Kutta warm-up needs --steps >= 4, got {N}')
  prk = inc[-4:].repeat(2) + np.tile(np.array([0, T // N // 2]), 4)
  prk = prk[:-1].repeat(2)[1:-1][::-1]
  return np.concatenate([prk, inc[:-3][::-1]])


# How each of diffusers' schedulers places its steps: (the distinct steps, the evaluation order
# over them or None when it is the steps themselves).
_PLACEMENTS = {'ddim': (_ddim_placement, None), 'ddpm': (_ddim_placement, None),
               'pndm': (_ddim_placement, _pndm_pattern),
               'dpmsolver++': (_solver_placement, None), 'unipc': (_solver_placement, None)}


# ----------------------------------------------------------------------------- model outputs

def _check_diffusion(diffusion):
  if not isinstance(diffusion, (GaussianDiffusion, GaussianDiffusion2)):
    raise TypeError(f'expected a GaussianDiffusion or GaussianDiffusion2, got {type(diffusion).__name__}')
  if getattr(diffusion, 'model_mean_type', 'eps') not in ('eps', 'xstart'):
    raise ValueError(f'model_mean_type={diffusion.model_mean_type!r}: these samplers need a model '
                     f"that predicts the noise ('eps') or the clean image ('xstart')")


def _model_output(diffusion, denoise_fn, x, t):
  """The network's eps or x0 prediction (a learned variance's channels dropped)."""
  out = denoise_fn(x, t)
  if getattr(diffusion, 'model_var_type', None) == 'learned':
    out = out[..., :x.shape[-1]]
  return out


def model_eps_and_x0(diffusion, denoise_fn, x, t):
  """(eps, x0) predicted at int [B] timesteps ``t``, unclipped."""
  out = _model_output(diffusion, denoise_fn, x, t)
  ex = lambda a: diffusion._extract(a, t, x.shape, x.dtype)
  if getattr(diffusion, 'model_mean_type', 'eps') == 'xstart':
    return (x - ex(diffusion.sqrt_alphas_cumprod) * out) / ex(diffusion.sqrt_one_minus_alphas_cumprod), out
  return out, ex(diffusion.sqrt_recip_alphas_cumprod) * x - ex(diffusion.sqrt_recipm1_alphas_cumprod) * out


def dynamic_threshold(x0, ratio=0.995, max_value=1.):
  """Imagen's dynamic thresholding (diffusers' ``_threshold_sample``): per sample, s = the
  ``ratio`` quantile of |x0| (linear interpolation) clamped to [1, max_value]; x0 is clipped to
  [-s, s] and divided by s. ``max_value=1`` is clipping to [-1, 1]."""
  B = x0.shape[0]
  flat = tf.reshape(x0, [B, -1])
  n = flat.shape[1]
  pos = ratio * (n - 1)
  lo, frac = int(math.floor(pos)), pos - math.floor(pos)
  srt = tf.sort(tf.abs(flat), axis=1)
  s = srt[:, lo] + frac * (srt[:, min(lo + 1, n - 1)] - srt[:, lo])
  s = tf.clip_by_value(s, 1., float(max_value))[:, None]
  return tf.reshape(tf.clip_by_value(flat, -s, s) / s, x0.shape)


def _initial_noise(shape, x_T, noise_fn):
  if x_T is None:
    return noise_fn(shape=tuple(shape), dtype=tf.float32)
  x_T = tf.convert_to_tensor(x_T, tf.float32)
  if tuple(x_T.shape) != tuple(shape):
    raise ValueError(f'x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}')
  return x_T


def _run_plan(diffusion, impl, denoise_fn, shape, plan, options, x_T):
  """Runs a plan (dict of float64 / int arrays, one row per evaluation) compiled."""
  frozen = tuple((k, tuple(map(tuple, v)) if np.ndim(v) == 2 else tuple(v.tolist()))
                 for k, v in sorted(plan.items()))
  return diffusion._run_compiled(impl, (diffusion, denoise_fn, tuple(shape), frozen, options), (x_T,))


def _tables(frozen):
  out = {}
  for k, v in frozen:
    dtype = tf.int32 if k == 't' else tf.float32
    out[k] = tf.constant(np.asarray(v), dtype)
  return out


# ----------------------------------------------------------------------------- PNDM

def pndm_sample_loop(diffusion, denoise_fn, *, shape, steps, skip_prk_steps=False, spacing='leading',
                     steps_offset=0, set_alpha_to_one=False, x_T=None, noise_fn=tf.random.normal):
  """PNDM (Liu et al. 2022) as diffusers' ``PNDMScheduler`` with the given config (defaults
  are diffusers': ``skip_prk_steps=False``, ``set_alpha_to_one=False``, 'leading', offset 0).

  ``steps`` inference steps cost ``steps + 9`` network evaluations (three 4-evaluation
  Runge-Kutta steps, then linear multistep), or ``steps + 1`` with ``skip_prk_steps`` (PLMS
  only, the second step a Heun step). Deterministic given ``x_T`` (float32 [B, H, W, C],
  default ``noise_fn``). Returns [B, H, W, C], not clipped.
  """
  _check_diffusion(diffusion)
  plan = pndm_plan(diffusion.alphas_cumprod, steps=steps, skip_prk_steps=skip_prk_steps,
                   spacing=spacing, steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one)
  return _run_plan(diffusion, _pndm_impl, denoise_fn, shape, plan, (),
                   _initial_noise(shape, x_T, noise_fn))


def pndm_plan(alphas_cumprod, *, steps, skip_prk_steps, spacing, steps_offset, set_alpha_to_one):
  """Per-evaluation coefficients replaying PNDMScheduler's state machine on scalars.

  Row k: the network gives eps at (x, t[k]); the history e1..e4 (newest first) takes eps if
  push[k]; cur takes x if set_cur[k]; the update direction is
  ``w[k] . (eps, acc, e1, e2, e3, e4)``; acc becomes ``keep[k] * acc + new[k] * eps``; and
  ``x <- a[k] * (cur if use_cur[k] else x) - b[k] * direction``.
  """
  ac = np.asarray(alphas_cumprod, np.float64)
  T, N = len(ac), int(steps)
  ts = diffusers_timesteps(T, N, spacing, steps_offset, scheduler='pndm', skip_prk_steps=skip_prk_steps)
  n_prk = 0 if skip_prk_steps else 12
  r = T // N
  final = 1. if set_alpha_to_one else ac[0]
  rows, n_ets = [], 0
  for c, t in enumerate(ts):
    t = int(t)
    row = dict(t=t, push=0., set_cur=0., use_cur=0., keep=1., new=0., w=np.zeros(6))
    if c < n_prk:
      prev = t - (0 if c % 2 else r // 2)
      t_from = int(ts[c // 4 * 4])
      row['use_cur'] = 1.
      if c % 4 == 0:
        row.update(push=1., set_cur=1., keep=0., new=1 / 6)
        row['w'][0] = 1.
      elif c % 4 in (1, 2):
        row['new'] = 1 / 3
        row['w'][0] = 1.
      else:
        row.update(keep=0., new=0.)
        row['w'][:2] = (1 / 6, 1.)
      n_ets += c % 4 == 0
    else:
      t_from, prev = t, t - r
      if c != 1:
        row['push'] = 1.
        n_ets = min(n_ets + 1, 4)
      else:
        t_from, prev = t + r, t
      w = row['w']
      if n_ets == 1 and c == 0:
        row['set_cur'], w[0] = 1., 1.
      elif n_ets == 1 and c == 1:
        row['use_cur'] = 1.
        w[0], w[2] = .5, .5
      elif n_ets == 2:
        w[2:4] = (1.5, -.5)
      elif n_ets == 3:
        w[2:5] = np.array([23., -16., 5.]) / 12
      else:
        w[2:6] = np.array([55., -59., 37., -9.]) / 24
    a_t = ac[t_from]
    a_prev = ac[prev] if prev >= 0 else final
    row['a'] = (a_prev / a_t) ** .5
    row['b'] = (a_prev - a_t) / (a_t * (1. - a_prev) ** .5 + (a_t * (1. - a_t) * a_prev) ** .5)
    rows.append(row)
  plan = {k: np.array([row[k] for row in rows]) for k in rows[0]}
  return plan


def _pndm_impl(diffusion, denoise_fn, shape, frozen, options, x_T):
  del options
  tb = _tables(frozen)
  n, B = int(tb['t'].shape[0]), shape[0]
  zeros = tf.zeros_like(x_T)

  def body(i, x, cur, acc, e1, e2, e3, e4):
    k = n - 1 - i
    g = lambda name: tf.gather(tb[name], k)
    t = tf.fill([B], g('t'))
    eps, _ = model_eps_and_x0(diffusion, denoise_fn, x, t) if _predicts_x0(diffusion) else (
        _model_output(diffusion, denoise_fn, x, t), None)
    push = g('push') > 0
    e1, e2, e3, e4 = [tf.where(push, new, old) for new, old in zip((eps, e1, e2, e3), (e1, e2, e3, e4))]
    cur = tf.where(g('set_cur') > 0, x, cur)
    w = g('w')
    direction = w[0] * eps + w[1] * acc + w[2] * e1 + w[3] * e2 + w[4] * e3 + w[5] * e4
    acc = g('keep') * acc + g('new') * eps
    base = tf.where(g('use_cur') > 0, cur, x)
    return g('a') * base - g('b') * direction, cur, acc, e1, e2, e3, e4

  return timestep_loop(n, body, (x_T, x_T, zeros, zeros, zeros, zeros, zeros))[0]


def _predicts_x0(diffusion):
  return getattr(diffusion, 'model_mean_type', 'eps') == 'xstart'


# ----------------------------------------------------------------------------- DPM-Solver++ / UniPC

def _solver_sigmas(alphas_cumprod, steps, spacing, steps_offset, scheduler, use_lu_lambdas=False,
                   final_sigma='zero'):
  """(timesteps [N], VE sigmas [N + 1]) as DPMSolverMultistep / UniPC place them, ending at 0
  (``final_sigma='zero'``) or at the sigma of the first training step ('sigma_min': DEIS,
  SA-Solver; their samples keep that little noise)."""
  ac = np.asarray(alphas_cumprod, np.float64)
  T = len(ac)
  sigmas = np.sqrt((1. - ac) / ac)
  if use_lu_lambdas:  # uniform steps in log-SNR between the table's ends
    N = int(steps)
    if not 1 <= N < T:
      raise FlagError(f'--steps must be between 1 and {T - 1}, got {N}')
    log_sigmas = np.log(sigmas)
    lambdas = np.linspace(log_sigmas[-1], log_sigmas[0], N)
    s = np.exp(lambdas)
    ts = np.interp(np.log(s), log_sigmas, np.arange(T)).round().astype(np.int64)
  else:
    ts = diffusers_timesteps(T, steps, spacing, steps_offset, scheduler=scheduler)
    s = sigmas[ts]
  last = 0. if final_sigma == 'zero' else sigmas[0]
  return ts, np.append(s, last).astype(np.float32).astype(np.float64)


def _alpha_sigma_lambda(sig):
  alpha = 1. / np.sqrt(sig ** 2 + 1.)
  sigma = sig * alpha
  with np.errstate(divide='ignore'):
    return alpha, sigma, np.log(alpha) - np.log(sigma)


def dpm_solver_plan(alphas_cumprod, *, steps, order=2, spacing='linspace', steps_offset=0,
                    solver_type='midpoint', lower_order_final=True, use_lu_lambdas=False,
                    algorithm_type='dpmsolver++', first=0):
  """Per-evaluation coefficients of DPMSolverMultistepScheduler (``algorithm_type``
  'dpmsolver++' or 'sde-dpmsolver++', final_sigmas_type='zero'): row k maps (x, x0 history h1
  (newest, this step's), h2, h3) to the next sample: ``x <- px[k] * x + ph[k] . (h1, h2, h3)``,
  plus ``pn[k] * z`` with fresh standard normal noise z for the SDE variant. ``first``: the
  rows from that step on, the solver starting there with no history (`_from_step`)."""
  if order not in SOLVER_ORDERS:
    raise FlagError(f'--order must be one of {SOLVER_ORDERS} for {algorithm_type}, got {order!r}')
  if solver_type not in ('midpoint', 'heun'):
    raise ValueError(f"solver_type={solver_type!r}; expected 'midpoint' or 'heun'")
  if algorithm_type not in DPM_ALGORITHMS:
    raise ValueError(f'algorithm_type={algorithm_type!r}; expected one of {DPM_ALGORITHMS}')
  sde = algorithm_type == DPM_ALGORITHMS[1]
  ts, sig = _solver_sigmas(alphas_cumprod, steps, spacing, steps_offset, 'dpmsolver++', use_lu_lambdas)
  alpha, sigma, lam = _alpha_sigma_lambda(sig)
  N = len(ts)
  px, ph, pn = np.zeros(N), np.zeros((N, 3)), np.zeros(N)
  for k in range(first, N):
    lower_nums = min(k - first, order)
    final = k == N - 1  # final_sigmas_type 'zero': always first order into sigma 0
    second = k == N - 2 and lower_order_final and N < 15
    with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
      h = lam[k + 1] - lam[k]
      px[k] = sigma[k + 1] / sigma[k] * (np.exp(-h) if sde else 1.)
      pn[k] = sigma[k + 1] * np.sqrt(-np.expm1(-2. * h)) if sde else 0.
      w = _dpm_weights(alpha[k + 1], h, sde, solver_type)
    if order == 1 or lower_nums < 1 or final:
      ph[k, 0] = w[0]
      continue
    r0 = (lam[k] - lam[k - 1]) / h
    D1 = np.array([1., -1., 0.]) / r0
    if order == 2 or lower_nums < 2 or second:
      ph[k] = w[0] * np.array([1., 0., 0.]) + w[1] * D1
      continue
    r1 = (lam[k - 1] - lam[k - 2]) / h
    D1_0, D1_1 = D1, np.array([0., 1., -1.]) / r1
    D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
    D2 = (D1_0 - D1_1) / (r0 + r1)
    ph[k] = w[0] * np.array([1., 0., 0.]) + w[2] * D1 + w[3] * D2
  no_corrector = np.zeros((N, 4))
  plan = dict(t=ts, alpha=alpha[:N], sigma=sigma[:N], px=px, ph=ph, cx=np.ones(N), cl=np.zeros(N),
              cm=no_corrector)
  if sde:
    plan['pn'] = pn
  return _from_step(plan, first)


def _from_step(plan, first):
  """A plan's rows from step ``first`` on (image-to-image starts a solver part-way, as
  diffusers' img2img pipelines do: the solver's order warms up again from there)."""
  if not 0 <= first < len(plan['t']):
    raise ValueError(f'first={first}: a plan of {len(plan["t"])} steps')
  return {k: v[first:] for k, v in plan.items()}


def _dpm_weights(alpha_t, h, sde, solver_type):
  """DPM-Solver++'s weights on D0 = m0, on D1 in the second-order step (midpoint or heun), on
  D1 and D2 in the third-order step; for the SDE variant as diffusers writes them."""
  if sde:  # the exponential integrator over 2h, the noise taking the rest of the variance
    e = np.expm1(-2. * h)
    heun = alpha_t * (e / (2. * h) + 1.)
    return (-alpha_t * e, -.5 * alpha_t * e if solver_type == 'midpoint' else heun, heun,
            alpha_t * ((-e - 2. * h) / (2. * h) ** 2 - .5))
  e = np.expm1(-h)
  heun = alpha_t * (e / h + 1.)
  return (-alpha_t * e, -.5 * alpha_t * e if solver_type == 'midpoint' else heun, heun,
          -alpha_t * ((e + h) / h ** 2 - .5))


def _unipc_coefficients(lam, k_from, k_to, order, hist_index, for_corrector):
  """UniPC bh2 (predict_x0) weights. Returns (coef on x_s0, coef on m0, coefs on earlier
  outputs [order - 1], coef on the new output or 0) for a step from sigma k_from to k_to."""
  with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
    h = lam[k_to] - lam[k_from]
    rks = [(lam[hist_index(i)] - lam[k_from]) / h for i in range(1, order)] + [1.]
    hh = -h
    h_phi_1 = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.
    B_h = np.expm1(hh)
    R, b, fact = [], [], 1
    for i in range(1, order + 1):
      R.append(np.power(rks, i - 1))
      b.append(h_phi_k * fact / B_h)
      fact *= i + 1
      h_phi_k = h_phi_k / hh - 1. / fact
  R, b = np.array(R), np.array(b)
  if for_corrector:
    rhos = np.array([.5]) if order == 1 else np.linalg.solve(R, b)
    rho_hist, rho_new = rhos[:-1], rhos[-1]
  else:
    rho_hist = np.array([.5]) if order == 2 else (np.linalg.solve(R[:-1, :-1], b[:-1]) if order > 2
                                                   else np.zeros(0))
    rho_new = 0.
  # x_t = sigma ratio * x - alpha_t * h_phi_1 * m0 - alpha_t * B_h * (sum rho_i (m_i - m0) / r_i
  #       + rho_new * (m_new - m0))
  hist = -B_h * rho_hist / np.array(rks[:-1]) if order > 1 else np.zeros(0)
  m0 = -h_phi_1 - hist.sum() + B_h * rho_new
  return m0, hist, -B_h * rho_new


def unipc_plan(alphas_cumprod, *, steps, order=2, spacing='linspace', steps_offset=0,
               lower_order_final=True, first=0):
  """Per-evaluation coefficients of UniPCMultistepScheduler (bh2, predict_x0, corrector on
  every step, final_sigmas_type='zero'). Row k, after the network gives m = x0 at (x, t[k]):
  corrector ``x <- cx[k] * x + cl[k] * x_last + cm[k] . (m, h1, h2, h3)`` (history before m
  is pushed), then m is pushed, ``x_last <- x`` and the predictor
  ``x <- px[k] * x + ph[k] . (h1, h2, h3)``. ``first`` as in `dpm_solver_plan`."""
  if order not in SOLVER_ORDERS:
    raise FlagError(f'--order must be one of {SOLVER_ORDERS} for unipc, got {order!r}')
  ts, sig = _solver_sigmas(alphas_cumprod, steps, spacing, steps_offset, 'unipc')
  alpha, sigma, lam = _alpha_sigma_lambda(sig)
  N = len(ts)
  px, ph = np.zeros(N), np.zeros((N, 3))
  cx, cl, cm = np.ones(N), np.zeros(N), np.zeros((N, 4))
  prev_order = None
  for k in range(first, N):
    if k > first:  # corrector from sigma[k-1] to sigma[k], with the order of the last predictor
      m0, hist, new = _unipc_coefficients(lam, k - 1, k, prev_order, lambda i: k - 1 - i, True)
      cx[k], cl[k] = 0., sigma[k] / sigma[k - 1]
      cm[k, 0] = alpha[k] * new
      cm[k, 1] = alpha[k] * m0
      cm[k, 2:2 + len(hist)] = alpha[k] * hist
    this_order = min(order, N - k) if lower_order_final else order
    this_order = min(this_order, min(k - first, order) + 1)
    m0, hist, _ = _unipc_coefficients(lam, k, k + 1, this_order, lambda i: k - i, False)
    px[k] = sigma[k + 1] / sigma[k]
    ph[k, 0] = alpha[k + 1] * m0
    ph[k, 1:1 + len(hist)] = alpha[k + 1] * hist
    prev_order = this_order
  return _from_step(dict(t=ts, alpha=alpha[:N], sigma=sigma[:N], px=px, ph=ph, cx=cx, cl=cl, cm=cm),
                    first)


def _multistep_impl(diffusion, denoise_fn, shape, frozen, options, x_T):
  """Runs a multistep plan. Row k, after the network's x0 prediction m at (x, t[k]) (its eps
  when the plan's ``history`` option is 'eps'): corrector ``x <- cx * x + cl * x_last + cm .
  (m, h1, h2, ...) + cn * z_last``, m pushed onto the history h1, h2, ... (newest first),
  ``x_last <- x`` (only where ``anchor`` is 1 if the plan has it), predictor ``x <- px * x +
  pl * x_last + ph . (h1, h2, ...) + pn * z`` with z drawn from ``noise_fn`` (a plan without
  ``pn`` draws none); z becomes z_last. Absent columns are 0."""
  opts = dict(options)
  threshold, noise_fn = opts['threshold'], opts.get('noise_fn')
  tb = _tables(frozen)
  n, B = int(tb['t'].shape[0]), shape[0]
  depth = max(int(tb['ph'].shape[1]), int(tb['cm'].shape[1]) - 1)
  stochastic = 'pn' in tb
  zeros = tf.zeros_like(x_T)

  def body(i, x, x_last, z_last, *hist):
    k = n - 1 - i
    g = lambda name: tf.gather(tb[name], k)
    out = _model_output(diffusion, denoise_fn, x, tf.fill([B], g('t')))
    m = out if _predicts_x0(diffusion) else (x - g('sigma') * out) / g('alpha')
    if threshold is not None:
      m = dynamic_threshold(m, *threshold)
    if opts.get('history') == 'eps':
      m = (x - g('alpha') * m) / g('sigma')
    x = g('cx') * x + g('cl') * x_last + _dot(g('cm'), (m,) + hist)
    if 'cn' in tb:
      x += g('cn') * z_last
    hist = ((m,) + hist)[:depth]
    x_last = tf.where(g('anchor') > 0, x, x_last) if 'anchor' in tb else x
    x_next = g('px') * x + _dot(g('ph'), hist)
    if 'pl' in tb:
      x_next += g('pl') * x_last
    if stochastic:
      z_last = noise_fn(shape=shape, dtype=x.dtype)
      x_next += g('pn') * z_last
    return (x_next, x_last, z_last) + hist

  return timestep_loop(n, body, (x_T, x_T, zeros) + (zeros,) * depth)[0]


def _dot(weights, tensors):
  """sum_j weights[j] * tensors[j] over the weights' length."""
  return tf.add_n([weights[j] * tensors[j] for j in range(int(weights.shape[0]))])


def _threshold_option(thresholding, dynamic_thresholding_ratio, sample_max_value):
  if not thresholding:
    return None
  if not 0. < dynamic_thresholding_ratio <= 1. or sample_max_value < 1.:
    raise ValueError('dynamic thresholding needs 0 < dynamic_thresholding_ratio <= 1 and '
                     f'sample_max_value >= 1, got {dynamic_thresholding_ratio}, {sample_max_value}')
  return float(dynamic_thresholding_ratio), float(sample_max_value)


def dpm_solver_sample_loop(diffusion, denoise_fn, *, shape, steps, order=2, spacing='linspace',
                           steps_offset=0, solver_type='midpoint', lower_order_final=True,
                           use_lu_lambdas=False, thresholding=False, dynamic_thresholding_ratio=0.995,
                           sample_max_value=1., algorithm_type='dpmsolver++', x_T=None,
                           noise_fn=tf.random.normal, first=0):
  """DPM-Solver++ multistep (Lu et al. 2022) as diffusers' ``DPMSolverMultistepScheduler`` with
  ``final_sigmas_type='zero'`` and the given options (defaults are diffusers').
  ``algorithm_type='dpmsolver++'`` solves the probability-flow ODE (``order`` 1 is DDIM, eta 0,
  in the x0 parameterization; deterministic given ``x_T``); 'sde-dpmsolver++' the reverse SDE,
  drawing one noise tensor per step from ``noise_fn`` after ``x_T`` (as diffusers draws one per
  ``step``). ``steps`` network evaluations. ``thresholding`` applies `dynamic_threshold` to each
  x0 prediction (``sample_max_value=1``: clipping to [-1, 1]). Returns [B, H, W, C], the last
  x0 prediction (not clipped unless thresholded). ``first``: start at that step (`_from_step`).
  """
  _check_diffusion(diffusion)
  plan = dpm_solver_plan(diffusion.alphas_cumprod, steps=steps, order=order, spacing=spacing,
                         steps_offset=steps_offset, solver_type=solver_type,
                         lower_order_final=lower_order_final, use_lu_lambdas=use_lu_lambdas,
                         algorithm_type=algorithm_type, first=first)
  return _run_multistep(diffusion, denoise_fn, shape, plan, x_T, noise_fn,
                        threshold=_threshold_option(thresholding, dynamic_thresholding_ratio,
                                                    sample_max_value))


def _run_multistep(diffusion, denoise_fn, shape, plan, x_T, noise_fn, *, threshold, history='x0'):
  x_T = _initial_noise(shape, x_T, noise_fn)  # drawn before any step noise
  options = (('threshold', threshold), ('history', history),
             ('noise_fn', noise_fn if 'pn' in plan else None))
  return _run_plan(diffusion, _multistep_impl, denoise_fn, shape, plan, options, x_T)


def unipc_sample_loop(diffusion, denoise_fn, *, shape, steps, order=2, spacing='linspace',
                      steps_offset=0, lower_order_final=True, thresholding=False,
                      dynamic_thresholding_ratio=0.995, sample_max_value=1., x_T=None,
                      noise_fn=tf.random.normal, first=0):
  """UniPC multistep (Zhao et al. 2023) as diffusers' ``UniPCMultistepScheduler`` (bh2,
  predict_x0, corrector on at every step, final_sigmas_type='zero'; defaults are diffusers').
  ``steps`` network evaluations: the corrector of step k reuses step k + 1's evaluation.
  Deterministic given ``x_T``. Returns [B, H, W, C] (not clipped unless thresholded).
  """
  _check_diffusion(diffusion)
  plan = unipc_plan(diffusion.alphas_cumprod, steps=steps, order=order, spacing=spacing,
                    steps_offset=steps_offset, lower_order_final=lower_order_final, first=first)
  return _run_multistep(diffusion, denoise_fn, shape, plan, x_T, noise_fn,
                        threshold=_threshold_option(thresholding, dynamic_thresholding_ratio,
                                                    sample_max_value))


# ----------------------------------------------------------------------------- DPM-Solver singlestep / DEIS

def singlestep_orders(steps, order):
  """The order of each step of DPMSolverSinglestepScheduler (lower_order_final, as its
  final_sigmas_type 'zero' forces): cycles 1, 2, ..., order, each cycle one step of that order
  from the sample at the cycle's start; the last step first order."""
  N, cycle = int(steps), list(range(1, order + 1))
  full, rest = divmod(N, order)
  if order > 1 and rest == 0:  # the last cycle ends one step early, on a first-order step
    full, rest = full - 1, order - 1
  orders = cycle * full + cycle[:rest] + [1] * (N - order * full - rest)
  orders[-1] = 1
  return orders


def dpm_solver_singlestep_plan(alphas_cumprod, *, steps, order=2, solver_type='midpoint'):
  """Per-evaluation coefficients of DPMSolverSinglestepScheduler (dpmsolver++, final sigma 0,
  its only timestep placement: 'linspace'). A step of order o goes from the sample held at
  the o-th last evaluation (the anchor, taken where o is 1) using the last o x0 predictions:
  ``x <- pl[k] * anchor + ph[k] . (h1, h2, h3)``; ``anchor[k]`` 1 takes x as the anchor."""
  if order not in SOLVER_ORDERS:
    raise FlagError(f'--order must be one of {SOLVER_ORDERS} for the singlestep solver, got {order!r}')
  if solver_type not in ('midpoint', 'heun'):
    raise ValueError(f"solver_type={solver_type!r}; expected 'midpoint' or 'heun'")
  ts, sig = _solver_sigmas(alphas_cumprod, steps, 'linspace', 0, 'dpmsolver++')
  alpha, sigma, lam = _alpha_sigma_lambda(sig)
  N = len(ts)
  pl, ph, anchor = np.zeros(N), np.zeros((N, 3)), np.zeros(N)
  for k, o in enumerate(singlestep_orders(N, order)):
    a = k - o + 1  # the anchor's index
    anchor[k] = float(o == 1)
    with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
      h = lam[k + 1] - lam[a]
      pl[k] = sigma[k + 1] / sigma[a]
      w = _dpm_weights(alpha[k + 1], h, False, solver_type)
    if o == 1:
      ph[k, 0] = w[0]
    elif o == 2:  # D0 = m1, D1 = (m0 - m1) / r0
      D1 = np.array([1., -1., 0.]) / ((lam[k] - lam[a]) / h)
      ph[k] = w[0] * np.array([0., 1., 0.]) + w[1] * D1
    else:
      r0, r1 = (lam[k] - lam[a]) / h, (lam[k - 1] - lam[a]) / h
      D1_0, D1_1 = np.array([0., 1., -1.]) / r1, np.array([1., 0., -1.]) / r0
      ph[k] = w[0] * np.array([0., 0., 1.])
      if solver_type == 'midpoint':
        ph[k] += w[2] * D1_1
      else:
        ph[k] += w[2] * (r0 * D1_0 - r1 * D1_1) / (r0 - r1) + w[3] * 2. * (D1_1 - D1_0) / (r0 - r1)
  return dict(t=ts, alpha=alpha[:N], sigma=sigma[:N], px=np.zeros(N), pl=pl, ph=ph, anchor=anchor,
              cx=np.ones(N), cl=np.zeros(N), cm=np.zeros((N, 4)))


def _deis_rho_weights(rho_t, rho_s):
  """DEIS (log-rho, Zhang & Chen 2023) weights on the eps history at the rho points ``rho_s``
  (newest first) for a step from rho_s[0] to rho_t: the integral over rho of each Lagrange
  basis polynomial in log rho (closed forms for 2 and 3 points)."""
  L = np.log(np.asarray(rho_s, np.float64))
  n = len(L)
  out = np.zeros(n)
  for i in range(n):
    others = np.delete(L, i)
    denom = np.prod(L[i] - others)

    def primitive(r):  # int r' * prod_j (log r' - L_j) dlog r' = int prod_j (log r - L_j) dr
      lr = np.log(r)
      if n == 2:
        return r * (lr - others[0] - 1.)
      c, d = others
      return r * (lr ** 2 - (c + d + 2.) * lr + c * d + c + d + 2.)

    out[i] = (primitive(rho_t) - primitive(rho_s[0])) / denom
  return out


def deis_plan(alphas_cumprod, *, steps, order=2, spacing='linspace', steps_offset=0,
              lower_order_final=True, first=0):
  """Per-evaluation coefficients of DEISMultistepScheduler (log-rho, its final sigma the
  first training step's): over the eps history e1 (newest) .. e3,
  ``x <- px[k] * x + ph[k] . (e1, e2, e3)``. ``first`` as in `dpm_solver_plan`."""
  if order not in SOLVER_ORDERS:
    raise FlagError(f'--order must be one of {SOLVER_ORDERS} for deis, got {order!r}')
  ts, sig = _solver_sigmas(alphas_cumprod, steps, spacing, steps_offset, 'dpmsolver++',
                           final_sigma='sigma_min')
  alpha, sigma, lam = _alpha_sigma_lambda(sig)
  rho = sigma / alpha
  N = len(ts)
  px, ph = np.zeros(N), np.zeros((N, 3))
  for k in range(first, N):
    o = min(order, k - first + 1)
    if lower_order_final and N < 15:
      o = min(o, N - k)
    px[k] = alpha[k + 1] / alpha[k]
    if o == 1:
      ph[k, 0] = -sigma[k + 1] * np.expm1(lam[k + 1] - lam[k])
    else:
      ph[k, :o] = alpha[k + 1] * _deis_rho_weights(rho[k + 1], rho[k - np.arange(o)])
  return _from_step(dict(t=ts, alpha=alpha[:N], sigma=sigma[:N], px=px, ph=ph, cx=np.ones(N),
                         cl=np.zeros(N), cm=np.zeros((N, 4))), first)


def dpm_solver_singlestep_sample_loop(diffusion, denoise_fn, *, shape, steps, order=2,
                                      solver_type='midpoint', thresholding=False,
                                      dynamic_thresholding_ratio=0.995, sample_max_value=1.,
                                      x_T=None, noise_fn=tf.random.normal):
  """DPM-Solver++ singlestep (Lu et al. 2022) as diffusers' ``DPMSolverSinglestepScheduler``
  (dpmsolver++, final_sigmas_type 'zero'; its timesteps are always 'linspace'-placed).
  ``steps`` network evaluations; deterministic given ``x_T``. Returns [B, H, W, C], the last
  x0 prediction."""
  _check_diffusion(diffusion)
  plan = dpm_solver_singlestep_plan(diffusion.alphas_cumprod, steps=steps, order=order,
                                    solver_type=solver_type)
  return _run_multistep(diffusion, denoise_fn, shape, plan, x_T, noise_fn,
                        threshold=_threshold_option(thresholding, dynamic_thresholding_ratio,
                                                    sample_max_value))


def deis_sample_loop(diffusion, denoise_fn, *, shape, steps, order=2, spacing='linspace',
                     steps_offset=0, lower_order_final=True, thresholding=False,
                     dynamic_thresholding_ratio=0.995, sample_max_value=1., x_T=None,
                     noise_fn=tf.random.normal, first=0):
  """DEIS multistep (Zhang & Chen 2023) as diffusers' ``DEISMultistepScheduler`` (log-rho;
  defaults are diffusers'). ``steps`` network evaluations; deterministic given ``x_T``. Returns
  [B, H, W, C] at the first training step's noise level (as diffusers: not the x0 prediction).
  ``first``: start at that step (`_from_step`)."""
  _check_diffusion(diffusion)
  plan = deis_plan(diffusion.alphas_cumprod, steps=steps, order=order, spacing=spacing,
                   steps_offset=steps_offset, lower_order_final=lower_order_final, first=first)
  return _run_multistep(diffusion, denoise_fn, shape, plan, x_T, noise_fn, history='eps',
                        threshold=_threshold_option(thresholding, dynamic_thresholding_ratio,
                                                    sample_max_value))


# ----------------------------------------------------------------------------- SA-Solver

SA_ORDERS = (1, 2, 3, 4)


def sa_solver_default_tau(t):
  """SASolverScheduler's default stochasticity: tau 1 for timesteps 200-800, else 0 (ODE)."""
  return 1. if 200 <= t <= 800 else 0.


def _exp_poly_integral(n, a, b, c):
  """int_a^b exp(c x) x^n dx in closed form (a primitive exp(c x) sum_j (-1)^j n!/(n-j)!
  x^(n-j) / c^(j+1))."""
  def primitive(x):
    return np.exp(c * x) * sum((-1) ** j * math.factorial(n) / math.factorial(n - j) * x ** (n - j)
                               / c ** (j + 1) for j in range(n + 1))
  return primitive(b) - primitive(a)


def _sa_weights(lam, k_from, k_to, nodes, tau, sigma_to, corrector):
  """SA-Solver's data-prediction weights on the x0 predictions at lambda indices ``nodes``
  (newest first) for a step from k_from to k_to: each Lagrange basis polynomial (in lambda)
  integrated against exp((1 + tau^2) lambda), plus diffusers' order-2 adjustment (as UniPC's)."""
  c = 1. + tau ** 2
  lt, ls, h = lam[k_to], lam[k_from], lam[k_to] - lam[k_from]
  pts = lam[np.asarray(nodes)]
  w = np.zeros(len(pts))
  for i in range(len(pts)):
    others = np.delete(pts, i)
    poly = np.atleast_1d(np.poly(others)) / np.prod(pts[i] - others)  # highest power first
    w[i] = sum(p * _exp_poly_integral(len(pts) - 1 - j, ls, lt, c) for j, p in enumerate(poly))
  if len(pts) == 2:
    inner = h * c - 1. + np.exp(-c * h)
    extra = np.exp(c * lt) * ((h / 2. - inner / (c ** 2 * h)) if corrector
                              else (h ** 2 / 2. - inner / c ** 2) / (ls - lam[k_from - 1]))
    w += np.array([extra, -extra])
  return c * sigma_to * np.exp(-tau ** 2 * lt) * w


def sa_solver_plan(alphas_cumprod, *, steps, predictor_order=2, corrector_order=2,
                   spacing='linspace', steps_offset=0, lower_order_final=True,
                   tau_func=sa_solver_default_tau):
  """Per-evaluation coefficients of SASolverScheduler (data prediction; Xue et al. 2023),
  final sigma the first training step's. Row k, with m the x0 prediction at (x, t[k]):
  corrector (SA-Corrector, from the sample before the last predictor, with that predictor's
  noise) ``x <- cl * x_last + cm . (m, h1, h2, h3) + cn * z_last``, then the predictor
  (SA-Predictor) ``x <- px * x + ph . (h1, ...) + pn * z``, z fresh noise."""
  for name, value in (('predictor_order', predictor_order), ('corrector_order', corrector_order)):
    if value not in SA_ORDERS:
      raise FlagError(f'--order / {name} must be one of {SA_ORDERS} for sasolver, got {value!r}')
  ts, sig = _solver_sigmas(alphas_cumprod, steps, spacing, steps_offset, 'dpmsolver++',
                           final_sigma='sigma_min')
  alpha, sigma, lam = _alpha_sigma_lambda(sig)
  N, depth = len(ts), max(predictor_order, corrector_order - 1)
  taus = np.array([float(tau_func(int(t))) for t in ts])
  rows = dict(px=np.zeros(N), ph=np.zeros((N, depth)), pn=np.zeros(N), cx=np.ones(N),
              cl=np.zeros(N), cm=np.zeros((N, depth + 1)), cn=np.zeros(N))
  c_order = None
  for k in range(N):
    tau, warm = taus[k], min(k, depth)
    if k > 0:  # the corrector of step k - 1's predictor, with its tau and stored order
      tau_c = taus[k - 1]
      h = lam[k] - lam[k - 1]
      rows['cx'][k], rows['cl'][k] = 0., np.exp(-tau_c ** 2 * h) * sigma[k] / sigma[k - 1]
      rows['cm'][k, :c_order] = _sa_weights(lam, k - 1, k, k - np.arange(c_order), tau_c, sigma[k], True)
      rows['cn'][k] = sigma[k] * np.sqrt(-np.expm1(-2. * tau_c ** 2 * h))
    p_order = min(predictor_order, N - k) if lower_order_final else predictor_order
    c_order = min(corrector_order, N - k + 1) if lower_order_final else corrector_order
    p_order, c_order = min(p_order, warm + 1), min(c_order, warm + 2)
    h = lam[k + 1] - lam[k]
    rows['px'][k] = np.exp(-tau ** 2 * h) * sigma[k + 1] / sigma[k]
    rows['ph'][k, :p_order] = _sa_weights(lam, k, k + 1, k - np.arange(p_order), tau, sigma[k + 1], False)
    rows['pn'][k] = sigma[k + 1] * np.sqrt(-np.expm1(-2. * tau ** 2 * h))
  return dict(t=ts, alpha=alpha[:N], sigma=sigma[:N], **rows)


def sa_solver_sample_loop(diffusion, denoise_fn, *, shape, steps, predictor_order=2,
                          corrector_order=2, spacing='linspace', steps_offset=0,
                          lower_order_final=True, thresholding=False,
                          dynamic_thresholding_ratio=0.995, sample_max_value=1., x_T=None,
                          noise_fn=tf.random.normal):
  """SA-Solver (stochastic Adams predictor-corrector) as diffusers' ``SASolverScheduler`` with
  its default tau (`sa_solver_default_tau`) and the given options (defaults are diffusers').
  ``steps`` network evaluations (the corrector reuses the next step's); one noise tensor drawn
  from ``noise_fn`` per step after ``x_T``. Returns [B, H, W, C] at the first training step's
  noise level, as diffusers."""
  _check_diffusion(diffusion)
  plan = sa_solver_plan(diffusion.alphas_cumprod, steps=steps, predictor_order=predictor_order,
                        corrector_order=corrector_order, spacing=spacing, steps_offset=steps_offset,
                        lower_order_final=lower_order_final)
  return _run_multistep(diffusion, denoise_fn, shape, plan, x_T, noise_fn,
                        threshold=_threshold_option(thresholding, dynamic_thresholding_ratio,
                                                    sample_max_value))
