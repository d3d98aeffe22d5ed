"""Tests for the diffusion math: diffusion_base, diffusion_utils (v1), diffusion_utils_2 (v2).

Expected values are the spec's reference numbers (original §4.2, §16) or an independent
NumPy float64 re-implementation of §4-§6 written below (`Ref`). The TF code runs in
float32, so comparisons use float32-level tolerances justified where they are set.
"""

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import diffusion_base, diffusion_utils, diffusion_utils_2, utils
from diffusion_tf.diffusion_utils import GaussianDiffusion
from diffusion_tf.diffusion_utils_2 import GaussianDiffusion2

LN2 = np.log(2.)
MEAN_TYPES = ('xprev', 'xstart', 'eps')
VAR_TYPES = ('learned', 'fixedsmall', 'fixedlarge')
LOSS_TYPES = ('kl', 'mse')

# float32 vs float64: the formulas chain a few multiplications and one log/exp, plus CDF
# differences in the decoder NLL (|relative error| of a CDF difference ~ 1e-7 / delta) and,
# for 'xprev', x0 = (xprev - coef2 x_t) / coef1 with 1/coef1 up to ~10 here. Observed worst
# case: ~1.6e-5 relative / 6e-7 absolute; float32 eps is 1.2e-7.
RTOL, ATOL = 3e-5, 3e-6


def linear_betas(T, start=1e-4, end=0.02):
  return np.linspace(start, end, T, dtype=np.float64)


# ============================================================================ NumPy reference

def np_normal_kl(m1, lv1, m2, lv2):
  return 0.5 * (-1. + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))


def np_approx_cdf(x):
  return 0.5 * (1. + np.tanh(np.sqrt(2. / np.pi) * (x + 0.044715 * x ** 3)))


def np_discretized_ll(x, means, log_scales):
  c = x - means
  inv = np.exp(-log_scales)
  cdf_plus = np_approx_cdf(inv * (c + 1. / 255.))
  cdf_min = np_approx_cdf(inv * (c - 1. / 255.))
  return np.where(x < -0.999, np.log(np.maximum(cdf_plus, 1e-12)),
                  np.where(x > 0.999, np.log(np.maximum(1. - cdf_min, 1e-12)),
                           np.log(np.maximum(cdf_plus - cdf_min, 1e-12))))


def meanflat(x):
  return x.reshape(x.shape[0], -1).mean(1)


class Ref:
  """§4.3-§6 in NumPy float64. ``version`` 1 or 2 selects the log-variance clipping."""

  def __init__(self, betas, *, version=2, mean_type='eps', var_type='fixedlarge', loss_type='mse'):
    b = np.asarray(betas, np.float64)
    self.T = len(b)
    self.betas, self.alphas = b, 1. - b
    self.ac = np.cumprod(1. - b)
    self.acp = np.concatenate([[1.], self.ac[:-1]])
    self.pv = b * (1. - self.acp) / (1. - self.ac)
    self.c1 = b * np.sqrt(self.acp) / (1. - self.ac)
    self.c2 = (1. - self.acp) * np.sqrt(1. - b) / (1. - self.ac)
    if version == 1:
      self.plv = np.log(np.maximum(self.pv, 1e-20))
    else:
      self.plv = np.log(np.concatenate([[self.pv[1]], self.pv[1:]]))
    self.mean_type, self.var_type, self.loss_type = mean_type, var_type, loss_type

  @staticmethod
  def e(a, t):
    return np.asarray(a)[np.asarray(t)][:, None, None, None]

  def q_sample(self, x0, t, noise):
    return np.sqrt(self.e(self.ac, t)) * x0 + np.sqrt(1. - self.e(self.ac, t)) * noise

  def q_posterior(self, x0, xt, t):
    return (self.e(self.c1, t) * x0 + self.e(self.c2, t) * xt, self.e(self.pv, t), self.e(self.plv, t))

  def xstart_from_eps(self, xt, t, eps):
    return np.sqrt(1. / self.e(self.ac, t)) * xt - np.sqrt(1. / self.e(self.ac, t) - 1.) * eps

  def xstart_from_xprev(self, xt, t, xprev):
    return (xprev - self.e(self.c2, t) * xt) / self.e(self.c1, t)

  def p_mean_variance(self, f, x, t, clip):
    out = f(x, t)
    if self.var_type == 'learned':
      out, lv = np.split(out, 2, axis=-1)
      var = np.exp(lv)
    elif self.var_type == 'fixedlarge':
      var = self.e(self.betas, t) * np.ones_like(x)
      lv = self.e(np.log(np.concatenate([[self.pv[1]], self.betas[1:]])), t) * np.ones_like(x)
    else:
      var = self.e(self.pv, t) * np.ones_like(x)
      lv = self.e(self.plv, t) * np.ones_like(x)
    c = (lambda a: np.clip(a, -1., 1.)) if clip else (lambda a: a)
    if self.mean_type == 'xprev':
      pred = c(self.xstart_from_xprev(x, t, out))
      mean = out
    elif self.mean_type == 'xstart':
      pred = c(out)
      mean = self.q_posterior(pred, x, t)[0]
    else:
      pred = c(self.xstart_from_eps(x, t, out))
      mean = self.q_posterior(pred, x, t)[0]
    return mean, var, lv, pred

  def p_sample(self, f, x, t, noise, clip=True):
    mean, _, lv, pred = self.p_mean_variance(f, x, t, clip)
    mask = (np.asarray(t) != 0).astype(np.float64)[:, None, None, None]
    return mean + mask * np.exp(0.5 * lv) * noise, pred

  def vb_terms_bpd(self, f, x0, xt, t, clip):
    tm, _, tlv = self.q_posterior(x0, xt, t)
    mm, _, mlv, pred = self.p_mean_variance(f, xt, t, clip)
    kl = meanflat(np_normal_kl(tm, tlv, mm, mlv)) / LN2
    nll = meanflat(-np_discretized_ll(x0, mm, 0.5 * mlv)) / LN2
    return np.where(np.asarray(t) == 0, nll, kl), pred

  def training_losses(self, f, x0, t, noise):
    xt = self.q_sample(x0, t, noise)
    if self.loss_type == 'kl':
      return self.vb_terms_bpd(f, x0, xt, t, clip=False)[0]
    target = {'xprev': lambda: self.q_posterior(x0, xt, t)[0], 'xstart': lambda: x0,
              'eps': lambda: noise}[self.mean_type]()
    return meanflat((target - f(xt, t)) ** 2)

  def prior_bpd(self, x0):
    T = self.T
    m = np.sqrt(self.ac[T - 1]) * x0
    return meanflat(np_normal_kl(m, np.log(1. - self.ac[T - 1]), 0., 0.)) / LN2


# ============================================================================ fixed inputs

PATTERN = np.array([1., -0.5, 0.25])


def make_denoise(T, learned=False):
  """A fixed deterministic "network" linear in x (and t), in TF float32 and NumPy float64.

  At t=0 it is the identity, so every parameterisation's decoder mean stays within a few
  standard deviations of x0 (keeps the decoder NLL away from float32 CDF underflow).
  """
  pattern = tf.constant(PATTERN, tf.float32)

  def tf_fn(x, t):
    s = tf.cast(t, tf.float32)[:, None, None, None] / T
    out = (1. - 0.4 * s) * x + 0.1 * s * pattern
    if learned:
      return tf.concat([out, -5. + 0.5 * tf.tanh(x) + s], axis=-1)
    return out

  def np_fn(x, t):
    s = np.asarray(t, np.float64)[:, None, None, None] / T
    out = (1. - 0.4 * s) * x + 0.1 * s * PATTERN
    if learned:
      return np.concatenate([out, -5. + 0.5 * np.tanh(x) + s], axis=-1)
    return out

  return tf_fn, np_fn


def f32(a):
  """float32 values (as fed to TF) and their exact float64 copy (fed to NumPy)."""
  a = np.asarray(a, np.float32)
  return tf.constant(a), a.astype(np.float64)


T_SMALL = 20
BETAS_SMALL = linear_betas(T_SMALL, 1e-4, 0.1)
T_IDX = np.array([0, 1, 10, 19], np.int32)


@pytest.fixture(scope='module')
def data():
  rs = np.random.RandomState(0)
  k = rs.randint(0, 256, size=(4, 4, 4, 3))
  k[0, 0, 0] = 0
  k[1, 0, 0] = 255  # both edge bins of the discretized likelihood
  x0 = k / 127.5 - 1.
  noise = rs.randn(4, 4, 4, 3)
  return dict(x0=f32(x0), noise=f32(noise), t=tf.constant(T_IDX))


# ============================================================================ schedules and tables

def test_schedule_reference_values():
  gs = diffusion_base.get_beta_schedule
  assert diffusion_utils.get_beta_schedule is gs and diffusion_utils_2.get_beta_schedule is gs
  kw = dict(beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=1000)
  lin = gs('linear', **kw)
  assert lin.shape == (1000,) and lin.dtype == np.float64
  assert lin[0] == 1e-4 and lin[-1] == 0.02
  np.testing.assert_allclose(lin[1], 1.1991991991991993e-4, rtol=1e-14)
  np.testing.assert_allclose(lin, np.linspace(1e-4, 0.02, 1000), rtol=1e-15)
  quad = gs('quad', **kw)
  np.testing.assert_allclose(quad[500], 0.005742071067688482, rtol=1e-12)
  np.testing.assert_allclose(quad, np.linspace(1e-2, 0.02 ** 0.5, 1000) ** 2, rtol=1e-12)
  w10 = gs('warmup10', **kw)
  assert w10[99] == w10[100] == 0.02 and (w10[100:] == 0.02).all()
  np.testing.assert_allclose(w10[:100], np.linspace(1e-4, 0.02, 100), rtol=1e-15)
  w50 = gs('warmup50', **kw)
  np.testing.assert_allclose(w50[:500], np.linspace(1e-4, 0.02, 500), rtol=1e-15)
  assert (w50[500:] == 0.02).all()
  const = gs('const', **kw)
  assert (const == 0.02).all() and const.shape == (1000,)
  jsd = gs('jsd', **kw)
  np.testing.assert_allclose([jsd[0], jsd[-2], jsd[-1]], [0.001, 0.5, 1.], rtol=1e-15)
  np.testing.assert_allclose(jsd, 1. / np.linspace(1000, 1, 1000), rtol=1e-15)
  with pytest.raises(NotImplementedError):
    gs('cosine', **kw)


def test_jsd_schedule_tables():
  betas = diffusion_base.get_beta_schedule('jsd', beta_start=1e-4, beta_end=0.02,
                                           num_diffusion_timesteps=100)
  d = GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedlarge',
                         loss_type='mse')
  assert d.alphas_cumprod[-1] == 0.
  assert np.isinf(d.sqrt_recip_alphas_cumprod[-1])
  assert np.isfinite(d.sqrt_recip_alphas_cumprod[:-1]).all()


@pytest.mark.parametrize('bad', [np.array([0., 0.1]), np.array([0.1, 1.5]), np.array([-0.1, 0.2])])
def test_betas_must_be_in_unit_interval(bad):
  with pytest.raises(AssertionError):
    GaussianDiffusion(betas=bad, loss_type='noisepred')
  with pytest.raises(AssertionError):
    GaussianDiffusion2(betas=bad, model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse')


def test_invalid_types_rejected():
  b = linear_betas(10)
  for kw in (dict(model_mean_type='x0'), dict(model_var_type='fixed'), dict(loss_type='l1')):
    args = {**dict(model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse'), **kw}
    with pytest.raises(NotImplementedError):
      GaussianDiffusion2(betas=b, **args)


def test_table_reference_values_v1_v2():
  betas = linear_betas(1000)
  v1 = GaussianDiffusion(betas=betas, loss_type='noisepred')
  v2 = GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse')
  for d in (v1, v2):
    assert d.num_timesteps == 1000
    np.testing.assert_allclose(d.alphas_cumprod[0], 0.9999, rtol=1e-14)
    np.testing.assert_allclose(d.alphas_cumprod[-1], 4.035829765375676e-05, rtol=1e-10)
    np.testing.assert_allclose(d.sqrt_alphas_cumprod[-1], 0.0063528, rtol=1e-5)
    np.testing.assert_allclose(d.sqrt_one_minus_alphas_cumprod[0], 0.01, rtol=1e-12)
    assert d.posterior_variance[0] == 0.
    np.testing.assert_allclose(d.posterior_variance[1], 5.45318766e-05, rtol=1e-8)
    np.testing.assert_allclose(d.posterior_variance[-1], 0.01999998352656061, rtol=1e-12)
    np.testing.assert_allclose(d.posterior_mean_coef1[0], 1., rtol=1e-12)
    assert d.posterior_mean_coef2[0] == 0.
    np.testing.assert_allclose(d.posterior_mean_coef1[-1], 1.2835148717224682e-4, rtol=1e-10)
    np.testing.assert_allclose(d.posterior_mean_coef2[-1], 0.9899486782675173, rtol=1e-12)
    np.testing.assert_allclose(d.posterior_log_variance_clipped[1:], np.log(d.posterior_variance[1:]),
                               rtol=1e-14)
    # Everything else against the independent tables.
    ref = Ref(betas, version=1 if d is v1 else 2)
    np.testing.assert_allclose(d.alphas_cumprod_prev, ref.acp, rtol=1e-14)
    np.testing.assert_allclose(d.sqrt_recipm1_alphas_cumprod, np.sqrt(1. / ref.ac - 1.), rtol=1e-12)
    np.testing.assert_allclose(d.log_one_minus_alphas_cumprod, np.log(1. - ref.ac), rtol=1e-12)
    np.testing.assert_allclose(d.posterior_log_variance_clipped, ref.plv, rtol=1e-14)
  # v1 floors at log(1e-20); v2 substitutes log(beta~_1) at t=0.
  np.testing.assert_allclose(v1.posterior_log_variance_clipped[0], np.log(1e-20), rtol=1e-14)
  np.testing.assert_allclose(v1.posterior_log_variance_clipped[0], -46.0517, atol=1e-4)
  np.testing.assert_allclose(v2.posterior_log_variance_clipped[0], -9.81672513529567, rtol=1e-10)


def test_posterior_variance_identity():
  for betas in (linear_betas(1000), diffusion_base.get_beta_schedule(
      'quad', beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=500)):
    d = GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse')
    alphas = 1. - betas
    other = 1. / (1. / (1. - d.alphas_cumprod_prev[1:]) + alphas[1:] / betas[1:])
    np.testing.assert_allclose(d.posterior_variance[1:], other, rtol=1e-10)


def test_fixedlarge_log_variance_at_t0():
  betas = linear_betas(1000)
  d = GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse')
  x = tf.zeros([3, 2, 2, 1])
  t = tf.constant([0, 1, 500])
  _, var, logvar = d.p_mean_variance(lambda x, t: x, x=x, t=t, clip_denoised=True,
                                     return_pred_xstart=False)
  assert var.shape == logvar.shape == x.shape
  np.testing.assert_allclose(logvar.numpy()[0], -9.81673, atol=1e-5)  # log(beta~_1), not log(beta_0)
  np.testing.assert_allclose(var.numpy()[0], 1e-4, rtol=1e-6)  # ... while the variance is beta_0
  np.testing.assert_allclose(logvar.numpy()[1], np.log(betas[1]), rtol=1e-6)
  np.testing.assert_allclose(logvar.numpy()[2], np.log(betas[500]), rtol=1e-6)
  # fixedsmall at t=0: v2-clipped log(beta~_1) with variance 0.
  d2 = GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedsmall', loss_type='mse')
  _, var, logvar = d2.p_mean_variance(lambda x, t: x, x=x, t=t, clip_denoised=True,
                                      return_pred_xstart=False)
  assert var.numpy()[0].max() == 0.
  np.testing.assert_allclose(logvar.numpy()[0], -9.81673, atol=1e-5)


# ============================================================================ KL, prior, forward process

def test_normal_kl():
  assert diffusion_utils.normal_kl is diffusion_base.normal_kl is diffusion_utils_2.normal_kl
  rs = np.random.RandomState(1)
  m1, m2 = rs.randn(2, 50)
  lv1, lv2 = rs.uniform(-3, 2, (2, 50))
  kl = diffusion_base.normal_kl(tf.constant(m1), tf.constant(lv1), tf.constant(m2), tf.constant(lv2))
  # Closed form KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2
  s1, s2 = np.exp(0.5 * lv1), np.exp(0.5 * lv2)
  closed = np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
  np.testing.assert_allclose(kl.numpy(), closed, rtol=1e-10, atol=1e-12)
  assert (kl.numpy() >= -1e-12).all()
  same = diffusion_base.normal_kl(tf.constant(m1), tf.constant(lv1), tf.constant(m1), tf.constant(lv1))
  np.testing.assert_allclose(same.numpy(), 0., atol=1e-15)  # (-1 + lv2) - lv1 + 1 rounds in float64
  same32 = diffusion_base.normal_kl(*(tf.constant(a, tf.float32) for a in (m1, lv1, m1, lv1)))
  assert same32.dtype == tf.float32
  np.testing.assert_allclose(same32.numpy(), 0., atol=1e-6)
  # Scalars broadcast (v2's prior term passes mean2=0., logvar2=0.).
  kl0 = diffusion_base.normal_kl(tf.constant(m1, tf.float32), tf.constant(lv1, tf.float32), 0., 0.)
  np.testing.assert_allclose(kl0.numpy(), np_normal_kl(m1, lv1, 0., 0.), rtol=1e-5, atol=1e-6)


def test_prior_bpd_reference_values():
  d = GaussianDiffusion2(betas=linear_betas(1000), model_mean_type='eps', model_var_type='fixedlarge',
                         loss_type='mse')
  x = tf.constant(np.stack([np.ones([4, 4, 3]), -np.ones([4, 4, 3]), np.zeros([4, 4, 3])]), tf.float32)
  prior = d._prior_bpd(x).numpy()
  assert prior.shape == (3,)
  # float32: -1 - lv + exp(lv) with lv = -4e-5 cancels to ~1e-9 with ~6e-8 rounding, i.e.
  # ~1.5e-3 of the x0 = +-1 value (4e-5 nats).
  np.testing.assert_allclose(prior[:2], 2.9113e-05, rtol=2e-3)
  np.testing.assert_allclose(Ref(linear_betas(1000)).prior_bpd(np.ones([1, 4, 4, 3])), 2.9113e-05, rtol=1e-4)
  # The true value for x0 = 0 is 5.87e-10 (checked in float64 below); float32, as in the
  # original, rounds it to ~0.
  np.testing.assert_allclose(Ref(linear_betas(1000)).prior_bpd(np.zeros([1, 4, 4, 3])), 5.87e-10, rtol=1e-3)
  assert abs(prior[2]) < 1e-7


def test_q_mean_variance_and_q_sample_vs_numpy(data):
  d = GaussianDiffusion2(betas=BETAS_SMALL, model_mean_type='eps', model_var_type='fixedlarge',
                         loss_type='mse')
  ref = Ref(BETAS_SMALL)
  (x0, x0n), (noise, noisen), t = data['x0'], data['noise'], data['t']
  mean, var, logvar = d.q_mean_variance(x0, t)
  assert var.shape == logvar.shape == (4, 1, 1, 1)
  np.testing.assert_allclose(mean.numpy(), np.sqrt(ref.e(ref.ac, T_IDX)) * x0n, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(var.numpy(), 1. - ref.e(ref.ac, T_IDX), rtol=1e-5)
  np.testing.assert_allclose(logvar.numpy(), np.log(1. - ref.e(ref.ac, T_IDX)), rtol=1e-5)
  xt = d.q_sample(x0, t, noise=noise)
  assert xt.shape == x0.shape and xt.dtype == tf.float32
  np.testing.assert_allclose(xt.numpy(), ref.q_sample(x0n, T_IDX, noisen), rtol=1e-5, atol=1e-6)
  # v1 computes the same forward process.
  v1 = GaussianDiffusion(betas=BETAS_SMALL, loss_type='noisepred')
  np.testing.assert_allclose(v1.q_sample(x0, t, noise=noise).numpy(), xt.numpy(), rtol=1e-6, atol=1e-7)


def test_q_sample_monte_carlo_moments():
  T = 1000
  d = GaussianDiffusion2(betas=linear_betas(T), model_mean_type='eps', model_var_type='fixedlarge',
                         loss_type='mse')
  ref = Ref(linear_betas(T))
  n = 40000
  x0 = np.tile(np.array([0.7, -0.3], np.float32)[None, None, None, :], [n, 1, 1, 1])
  tf.random.set_seed(1234)
  for tt in (0, 100, 999):
    xt = d.q_sample(tf.constant(x0), tf.fill([n], tt)).numpy()[:, 0, 0, :]
    mean_true = np.sqrt(ref.ac[tt]) * np.array([0.7, -0.3])
    var_true = 1. - ref.ac[tt]
    # 5 standard errors: SE(mean) = sqrt(var/n), SE(var) = var*sqrt(2/(n-1)) for Gaussians.
    np.testing.assert_allclose(xt.mean(0), mean_true, atol=5 * np.sqrt(var_true / n))
    np.testing.assert_allclose(xt.var(0, ddof=1), var_true, atol=5 * var_true * np.sqrt(2. / (n - 1)))


def test_q_posterior_and_predict_xstart_vs_numpy(data):
  ref2, ref1 = Ref(BETAS_SMALL, version=2), Ref(BETAS_SMALL, version=1)
  d2 = GaussianDiffusion2(betas=BETAS_SMALL, model_mean_type='eps', model_var_type='fixedlarge',
                          loss_type='mse')
  d1 = GaussianDiffusion(betas=BETAS_SMALL, loss_type='noisepred')
  (x0, x0n), (noise, noisen), t = data['x0'], data['noise'], data['t']
  xt, xtn = f32(ref2.q_sample(x0n, T_IDX, noisen))
  for d, ref, fn in ((d2, ref2, d2.q_posterior_mean_variance), (d1, ref1, d1.q_posterior)):
    mean, var, logvar = fn(x0, xt, t)
    rmean, rvar, rlogvar = ref.q_posterior(x0n, xtn, T_IDX)
    assert var.shape == logvar.shape == (4, 1, 1, 1)
    np.testing.assert_allclose(mean.numpy(), rmean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var.numpy(), rvar, rtol=1e-5, atol=0)
    np.testing.assert_allclose(logvar.numpy(), rlogvar, rtol=1e-6)
  np.testing.assert_allclose(d1.q_posterior(x0, xt, t)[2].numpy()[0], np.log(1e-20), rtol=1e-6)
  np.testing.assert_allclose(d2._predict_xstart_from_eps(xt, t, noise).numpy(),
                             ref2.xstart_from_eps(xtn, T_IDX, noisen), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d1.predict_start_from_noise(xt, t, noise).numpy(),
                             ref2.xstart_from_eps(xtn, T_IDX, noisen), rtol=1e-5, atol=1e-5)
  # With the true noise the prediction recovers x0.
  np.testing.assert_allclose(d2._predict_xstart_from_eps(xt, t, noise).numpy(), x0n, atol=1e-4)


# ============================================================================ v2 model parameterisations

def _v2(mean_type, var_type, loss_type='mse', betas=BETAS_SMALL):
  return (GaussianDiffusion2(betas=betas, model_mean_type=mean_type, model_var_type=var_type,
                             loss_type=loss_type),
          Ref(betas, mean_type=mean_type, var_type=var_type, loss_type=loss_type))


@pytest.mark.parametrize('loss_type', LOSS_TYPES)
@pytest.mark.parametrize('var_type', VAR_TYPES)
@pytest.mark.parametrize('mean_type', MEAN_TYPES)
def test_training_losses_all_combinations(data, mean_type, var_type, loss_type):
  d, ref = _v2(mean_type, var_type, loss_type)
  tf_fn, np_fn = make_denoise(T_SMALL, learned=var_type == 'learned')
  (x0, x0n), (noise, noisen), t = data['x0'], data['noise'], data['t']
  if loss_type == 'mse' and var_type == 'learned':
    with pytest.raises(AssertionError):
      d.training_losses(tf_fn, x0, t, noise=noise)
    return
  losses = d.training_losses(tf_fn, x0, t, noise=noise)
  assert losses.shape == (4,) and losses.dtype == tf.float32
  expected = ref.training_losses(np_fn, x0n, T_IDX, noisen)
  assert np.isfinite(expected).all()
  np.testing.assert_allclose(losses.numpy(), expected, rtol=RTOL, atol=ATOL)
  # Default noise is drawn internally: still [B] and finite.
  rand = d.training_losses(tf_fn, x0, t)
  assert rand.shape == (4,) and np.isfinite(rand.numpy()).all()


@pytest.mark.parametrize('clip', [True, False])
@pytest.mark.parametrize('var_type', VAR_TYPES)
@pytest.mark.parametrize('mean_type', MEAN_TYPES)
def test_p_mean_variance_all_combinations(data, mean_type, var_type, clip):
  d, ref = _v2(mean_type, var_type)
  tf_fn, np_fn = make_denoise(T_SMALL, learned=var_type == 'learned')
  (x0, x0n), (noise, noisen) = data['x0'], data['noise']
  x, xn = f32(ref.q_sample(x0n, T_IDX, noisen))
  out = d.p_mean_variance(tf_fn, x=x, t=data['t'], clip_denoised=clip, return_pred_xstart=True)
  assert len(out) == 4 and all(o.shape == x.shape for o in out)
  expected = ref.p_mean_variance(np_fn, xn, T_IDX, clip)
  for name, got, want in zip(('mean', 'var', 'logvar', 'pred_xstart'), out, expected):
    np.testing.assert_allclose(got.numpy(), want, rtol=RTOL, atol=ATOL, err_msg=name)
  unclipped = ref.p_mean_variance(np_fn, xn, T_IDX, False)[3]
  assert np.abs(unclipped).max() > 1.05  # the inputs do exercise the clipping
  if clip:
    assert np.abs(out[3].numpy()).max() <= 1.
  three = d.p_mean_variance(tf_fn, x=x, t=data['t'], clip_denoised=clip, return_pred_xstart=False)
  assert len(three) == 3


@pytest.mark.parametrize('var_type', VAR_TYPES)
@pytest.mark.parametrize('mean_type', MEAN_TYPES)
def test_p_sample_all_combinations(data, mean_type, var_type):
  d, ref = _v2(mean_type, var_type)
  tf_fn, np_fn = make_denoise(T_SMALL, learned=var_type == 'learned')
  (x0, x0n), (noise, noisen) = data['x0'], data['noise']
  x, xn = f32(ref.q_sample(x0n, T_IDX, noisen))
  z = np.random.RandomState(5).randn(*x.shape)
  zt, zn = f32(z)
  calls = []

  def noise_fn(*, shape, dtype):
    calls.append((tuple(shape), dtype))
    return zt

  sample, pred = d.p_sample(tf_fn, x=x, t=data['t'], noise_fn=noise_fn, return_pred_xstart=True)
  assert calls == [((4, 4, 4, 3), tf.float32)]
  want_sample, want_pred = ref.p_sample(np_fn, xn, T_IDX, zn, clip=True)
  np.testing.assert_allclose(sample.numpy(), want_sample, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(pred.numpy(), want_pred, rtol=RTOL, atol=ATOL)
  # No noise at t == 0: the sample is exactly the model mean there; noise elsewhere.
  mean = d.p_mean_variance(tf_fn, x=x, t=data['t'], clip_denoised=True, return_pred_xstart=False)[0]
  np.testing.assert_array_equal(sample.numpy()[0], mean.numpy()[0])
  assert not np.allclose(sample.numpy()[1:], mean.numpy()[1:])
  only = d.p_sample(tf_fn, x=x, t=data['t'], noise_fn=noise_fn, return_pred_xstart=False)
  np.testing.assert_array_equal(only.numpy(), sample.numpy())


@pytest.mark.parametrize('clip', [True, False])
@pytest.mark.parametrize('mean_type,var_type', [('eps', 'fixedlarge'), ('xstart', 'learned'),
                                                ('xprev', 'fixedsmall')])
def test_vb_terms_bpd_vs_numpy(data, mean_type, var_type, clip):
  d, ref = _v2(mean_type, var_type, 'kl')
  tf_fn, np_fn = make_denoise(T_SMALL, learned=var_type == 'learned')
  (x0, x0n), (noise, noisen) = data['x0'], data['noise']
  xt, xtn = f32(ref.q_sample(x0n, T_IDX, noisen))
  out, pred = d._vb_terms_bpd(tf_fn, x0, xt, data['t'], clip_denoised=clip, return_pred_xstart=True)
  want, want_pred = ref.vb_terms_bpd(np_fn, x0n, xtn, T_IDX, clip)
  assert out.shape == (4,)
  np.testing.assert_allclose(out.numpy(), want, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(pred.numpy(), want_pred, rtol=RTOL, atol=ATOL)


# ============================================================================ v1

def test_v1_p_losses_and_p_mean_variance(data):
  d = GaussianDiffusion(betas=BETAS_SMALL, loss_type='noisepred')
  ref = Ref(BETAS_SMALL, version=1, mean_type='eps', var_type='fixedsmall')
  tf_fn, np_fn = make_denoise(T_SMALL)
  (x0, x0n), (noise, noisen), t = data['x0'], data['noise'], data['t']
  losses = d.p_losses(tf_fn, x0, t, noise=noise)
  assert losses.shape == (4,)
  xtn = ref.q_sample(x0n, T_IDX, noisen)
  np.testing.assert_allclose(losses.numpy(), meanflat((noisen - np_fn(xtn, T_IDX)) ** 2), rtol=RTOL, atol=ATOL)
  assert d.p_losses(tf_fn, x0, t).shape == (4,)
  x, xn = f32(xtn)
  for clip in (True, False):
    mean, var, logvar = d.p_mean_variance(tf_fn, x=x, t=t, clip_denoised=clip)
    assert var.shape == logvar.shape == (4, 1, 1, 1)  # v1 keeps [B,1,1,1]
    rmean, rvar, rlogvar, _ = ref.p_mean_variance(np_fn, xn, T_IDX, clip)
    np.testing.assert_allclose(mean.numpy(), rmean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(var.numpy(), rvar[:, :1, :1, :1], rtol=RTOL, atol=0)
    np.testing.assert_allclose(logvar.numpy(), rlogvar[:, :1, :1, :1], rtol=1e-6)
  np.testing.assert_allclose(logvar.numpy()[0], np.log(1e-20), rtol=1e-6)  # floor at t=0


def test_v1_rejects_other_loss_types(data):
  d = GaussianDiffusion(betas=BETAS_SMALL, loss_type='mse')
  tf_fn, _ = make_denoise(T_SMALL)
  with pytest.raises(NotImplementedError):
    d.p_losses(tf_fn, data['x0'][0], data['t'], noise=data['noise'][0])
  with pytest.raises(NotImplementedError):
    d.p_mean_variance(tf_fn, x=data['x0'][0], t=data['t'], clip_denoised=True)


def stateless_noise_fn(seed=(11, 22)):
  """Deterministic noise_fn: fixed values for each shape (repeatable inside tf.function)."""
  def noise_fn(*, shape, dtype=tf.float32):
    return tf.random.stateless_normal(shape, seed=list(seed), dtype=dtype)
  return noise_fn


@pytest.mark.parametrize('repeat_noise', [False, True])
def test_v1_p_sample_repeat_noise(data, repeat_noise):
  d = GaussianDiffusion(betas=BETAS_SMALL, loss_type='noisepred')
  ref = Ref(BETAS_SMALL, version=1, mean_type='eps', var_type='fixedsmall')
  tf_fn, np_fn = make_denoise(T_SMALL)
  (x0, x0n), (noise, noisen) = data['x0'], data['noise']
  x, xn = f32(ref.q_sample(x0n, T_IDX, noisen))
  t = tf.constant([3, 3, 3, 0])
  nf = stateless_noise_fn()
  sample = d.p_sample(tf_fn, x=x, t=t, noise_fn=nf, repeat_noise=repeat_noise).numpy()
  if repeat_noise:
    z = np.repeat(nf(shape=(1, 4, 4, 3)).numpy(), 4, axis=0).astype(np.float64)
  else:
    z = nf(shape=(4, 4, 4, 3)).numpy().astype(np.float64)
  want, _ = ref.p_sample(np_fn, xn, [3, 3, 3, 0], z, clip=True)
  np.testing.assert_allclose(sample, want, rtol=RTOL, atol=ATOL)
  mean = d.p_mean_variance(tf_fn, x=x, t=t, clip_denoised=True)[0].numpy()
  np.testing.assert_array_equal(sample[3], mean[3])  # no noise at t == 0
  if repeat_noise:  # the same noise for every example
    res = (sample - mean)[:3]
    np.testing.assert_allclose(res[0], res[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res[0], res[2], rtol=1e-5, atol=1e-6)


# ============================================================================ NumPy and Python inputs

def assert_same(got, want):
  """Equal tensors, or equal nests of tensors (the methods that return tuples)."""
  got, want = tf.nest.flatten(got), tf.nest.flatten(want)
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_array_equal(g.numpy(), w.numpy())


def test_numpy_and_python_inputs_give_the_tensor_results(data):
  # What a notebook passes: NumPy images (float64 here, holding float32 values), NumPy int64
  # timesteps, or one Python number for the whole batch. Each method must compute what the
  # same values as tensors compute.
  d2 = _v2('eps', 'fixedlarge')[0]
  d1 = GaussianDiffusion(betas=BETAS_SMALL, loss_type='noisepred')
  tf_fn, _ = make_denoise(T_SMALL)
  nf = stateless_noise_fn()
  (x0, x0n), (noise, noisen), t = data['x0'], data['noise'], data['t']
  tn = T_IDX.astype(np.int64)
  xt = d2.q_sample(x0, t, noise=noise)
  xtn = xt.numpy()
  assert_same(d2.q_sample(x0n, tn, noise=noisen), xt)
  assert_same(d1.q_sample(x0n.tolist(), list(T_IDX), noise=noisen), d1.q_sample(x0, t, noise=noise))
  assert_same(d2.q_mean_variance(x0n, tn), d2.q_mean_variance(x0, t))
  assert_same(d2.q_posterior_mean_variance(x0n, xtn, tn), d2.q_posterior_mean_variance(x0, xt, t))
  assert_same(d1.predict_start_from_noise(xtn, tn, noisen), d1.predict_start_from_noise(xt, t, noise))
  assert_same(d2.training_losses(tf_fn, x0n, tn, noise=noisen),
              d2.training_losses(tf_fn, x0, t, noise=noise))
  assert_same(d1.p_losses(tf_fn, x0n, tn, noise=noisen), d1.p_losses(tf_fn, x0, t, noise=noise))
  assert_same(d2.p_mean_variance(tf_fn, x=xtn, t=tn, clip_denoised=True, return_pred_xstart=True),
              d2.p_mean_variance(tf_fn, x=xt, t=t, clip_denoised=True, return_pred_xstart=True))
  assert_same(d1.p_mean_variance(tf_fn, x=xtn, t=tn, clip_denoised=True),
              d1.p_mean_variance(tf_fn, x=xt, t=t, clip_denoised=True))
  assert_same(d2.p_sample(tf_fn, x=xtn, t=tn, noise_fn=nf, return_pred_xstart=True),
              d2.p_sample(tf_fn, x=xt, t=t, noise_fn=nf, return_pred_xstart=True))
  # One timestep for the whole batch: a Python int, a whole float, NumPy and tensor scalars.
  t7 = tf.fill([4], 7)
  for scalar in (7, 7., np.int64(7), np.array(7), tf.constant(7)):
    assert_same(d2.q_sample(x0n, scalar, noise=noisen), d2.q_sample(x0, t7, noise=noise))
    assert_same(d1.p_sample(tf_fn, x=xtn, t=scalar, noise_fn=nf),
                d1.p_sample(tf_fn, x=xt, t=t7, noise_fn=nf))


def test_sample_shapes_may_be_numpy_arrays_or_tensorshapes():
  T = 4
  d = GaussianDiffusion2(betas=linear_betas(T, 1e-4, 0.05), model_mean_type='eps',
                         model_var_type='fixedlarge', loss_type='mse')
  v1 = GaussianDiffusion(betas=linear_betas(T, 1e-4, 0.05), loss_type='noisepred')
  tf_fn, _ = make_denoise(T)
  z = np.random.RandomState(3).randn(*SHAPE).astype(np.float32)
  want = d.p_sample_loop(tf_fn, shape=SHAPE, noise_fn=fixed_noise_fn(z))
  for shape in (np.array(SHAPE), tf.TensorShape(SHAPE), [np.int64(s) for s in SHAPE]):
    assert_same(d.p_sample_loop(tf_fn, shape=shape, noise_fn=fixed_noise_fn(z)), want)
  assert_same(d.p_sample_loop_progressive(tf_fn, shape=np.array(SHAPE), noise_fn=fixed_noise_fn(z),
                                          include_xstartpred_freq=2)[0], want)
  traj = v1.p_sample_loop_trajectory(tf_fn, shape=np.array(SHAPE), noise_fn=stateless_noise_fn())
  assert traj[1].shape == (T + 1, *SHAPE)


def _bad(method, *args, **kwargs):
  """A call of ``method`` on the v2 diffusion, or the v1 one for a 'v1.' prefix."""
  def call(d2, d1, x, t):
    d = d1 if method.startswith('v1.') else d2
    fill = lambda a: {'X': x, 'T': t}.get(a, a) if isinstance(a, str) else a
    args_ = [fill(a) for a in args]
    return getattr(d, method.split('.')[-1])(*args_, **{k: fill(v) for k, v in kwargs.items()})
  return call


_B4 = r"B = 4 \(the images' batch\); got "
_STEPS = r'expects timesteps t: an integer scalar or an int \[B\] vector, ' + _B4


@pytest.mark.parametrize('call,message', [
    (_bad('q_sample', 'X', [0, 1, 2]), r'GaussianDiffusion2.q_sample ' + _STEPS + r'shape \(3,\)'),
    (_bad('q_sample', 'X', [0, 1, 2, 20]), _STEPS + r'\[0, 1, 2, 20\], outside \[0, 19\]'),
    (_bad('q_sample', 'X', -1), _STEPS + r'-1, outside \[0, 19\]'),
    (_bad('q_sample', 'X', 1.5), _STEPS + r'1.5 \(not whole numbers\)'),
    (_bad('q_sample', 'X', tf.constant([1., 2., 3., 4.])), _STEPS + 'a tensor of dtype float32'),
    (_bad('q_sample', 'X', np.ones([4, 1], int)), _STEPS + r'shape \(4, 1\)'),
    (_bad('q_sample', np.zeros([4, 4], int), 'T'),
     r'q_sample expects x_start \[B, \.\.\.\] \(float\); got dtype int64'),
    (_bad('q_sample', 'X', 'T', noise=np.zeros([4, 2, 4, 3])),
     r'q_sample expects noise of the same shape as the images, \(4, 4, 4, 3\), float; '
     r'got shape \(4, 2, 4, 3\)'),
    (_bad('v1.p_losses', lambda x, t: x, 'X', 'T', noise=tf.zeros([4, 4, 4, 3], tf.float64)),
     r"GaussianDiffusion.p_losses expects noise of x_start's dtype float32; got float64"),
    (_bad('p_mean_variance', lambda x, t: x, x=np.zeros([4, 4, 3]), t=0, clip_denoised=True,
          return_pred_xstart=False),
     r'GaussianDiffusion2.p_mean_variance expects x \[B, H, W, C\] \(float\); got shape \(4, 4, 3\)'),
    (_bad('p_sample_loop', lambda x, t: x, shape=(2, 4.5, 4, 3)),
     r'p_sample_loop expects shape=\(B, H, W, C\), positive integers; got \(2, 4.5, 4, 3\)'),
    (_bad('v1.p_sample_loop_trajectory', lambda x, t: x, shape=[0, 4, 4, 3]),
     r'p_sample_loop_trajectory expects shape=\(B, H, W, C\), positive integers; got \[0, 4, 4, 3\]'),
    (_bad('v1.interpolate', lambda x, t: x, x1='X', x2='X', lam=0.5, t=20),
     r'GaussianDiffusion.interpolate expects t: one integer timestep in \[0, 19\]; got 20, outside'),
])
def test_wrong_inputs_say_what_was_expected(data, call, message):
  d2 = _v2('eps', 'fixedlarge')[0]
  d1 = GaussianDiffusion(betas=BETAS_SMALL, loss_type='noisepred')
  with pytest.raises(ValueError, match=message):
    call(d2, d1, data['x0'][0], data['t'])


# ============================================================================ sampling loops

def np_loop(ref, np_fn, x_T, noise, T, clip=True):
  x = x_T
  preds = {}
  for i in reversed(range(T)):
    t = np.full([x.shape[0]], i)
    x, preds[i] = ref.p_sample(np_fn, x, t, noise, clip=clip)
  return x, preds


def fixed_noise_fn(z):
  zt = tf.constant(z, tf.float32)

  def noise_fn(*, shape, dtype):
    assert tuple(shape) == z.shape and dtype == tf.float32
    return zt
  return noise_fn


SHAPE = (2, 4, 4, 3)


@pytest.mark.parametrize('version,mean_type,var_type', [
    (2, 'eps', 'fixedlarge'), (2, 'xstart', 'fixedsmall'), (2, 'xprev', 'learned'), (1, 'eps', 'fixedsmall')])
@pytest.mark.parametrize('zero_noise', [True, False])
def test_p_sample_loop_vs_numpy(version, mean_type, var_type, zero_noise):
  T = 10
  betas = linear_betas(T, 1e-4, 0.05)
  tf_fn, np_fn = make_denoise(T, learned=var_type == 'learned')
  z = np.zeros(SHAPE) if zero_noise else np.random.RandomState(7).randn(*SHAPE)
  z = z.astype(np.float32)
  if version == 1:
    d = GaussianDiffusion(betas=betas, loss_type='noisepred')
  else:
    d = GaussianDiffusion2(betas=betas, model_mean_type=mean_type, model_var_type=var_type, loss_type='kl')
  ref = Ref(betas, version=version, mean_type=mean_type, var_type=var_type)
  out = d.p_sample_loop(tf_fn, shape=SHAPE, noise_fn=fixed_noise_fn(z))
  again = d.p_sample_loop(tf_fn, shape=list(SHAPE), noise_fn=fixed_noise_fn(z))
  assert out.shape == SHAPE
  np.testing.assert_array_equal(out.numpy(), again.numpy())  # deterministic
  want, preds = np_loop(ref, np_fn, z.astype(np.float64), z.astype(np.float64), T)
  np.testing.assert_allclose(out.numpy(), want, rtol=RTOL, atol=ATOL)
  if mean_type != 'xprev':  # the last step's posterior mean is the clipped x0 prediction
    np.testing.assert_allclose(want, preds[0], rtol=1e-12, atol=1e-12)
    assert np.abs(out.numpy()).max() <= 1. + 1e-6


def test_p_sample_loop_is_not_clipped():
  # The x0 prediction is clipped inside each step, but the returned sample is whatever the
  # last step's mean is: with 'xprev' that is the raw network output.
  T = 5
  d = GaussianDiffusion2(betas=linear_betas(T), model_mean_type='xprev', model_var_type='fixedlarge',
                         loss_type='mse')
  out = d.p_sample_loop(lambda x, t: 3. + 0. * x, shape=SHAPE,
                        noise_fn=lambda shape, dtype: tf.zeros(shape, dtype))
  np.testing.assert_allclose(out.numpy(), 3.)


def test_p_sample_loop_progressive_vs_numpy():
  T, freq = 200, 50
  betas = linear_betas(T, 1e-4, 0.02)
  tf_fn, np_fn = make_denoise(T)
  z = np.random.RandomState(8).randn(*SHAPE).astype(np.float32)
  d = GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse')
  ref = Ref(betas, mean_type='eps', var_type='fixedlarge')
  sample, preds = d.p_sample_loop_progressive(tf_fn, shape=SHAPE, noise_fn=fixed_noise_fn(z),
                                              include_xstartpred_freq=freq)
  assert sample.shape == SHAPE and preds.shape == (2, 4, 4, 4, 3)
  want, want_preds = np_loop(ref, np_fn, z.astype(np.float64), z.astype(np.float64), T)
  np.testing.assert_allclose(sample.numpy(), want, rtol=RTOL, atol=ATOL)
  for k in range(T // freq):  # slot k holds the prediction made at t = 50 k
    np.testing.assert_allclose(preds.numpy()[:, k], want_preds[freq * k], rtol=RTOL, atol=ATOL)
  np.testing.assert_array_equal(preds.numpy()[:, 0], sample.numpy())  # slot 0 = final sample
  plain = d.p_sample_loop(tf_fn, shape=SHAPE, noise_fn=fixed_noise_fn(z))
  np.testing.assert_allclose(plain.numpy(), sample.numpy(), rtol=1e-6, atol=1e-6)


def test_p_sample_loop_trajectory_v1():
  T = 10
  betas = linear_betas(T, 1e-4, 0.05)
  d = GaussianDiffusion(betas=betas, loss_type='noisepred')
  ref = Ref(betas, version=1, mean_type='eps', var_type='fixedsmall')
  tf_fn, np_fn = make_denoise(T)
  nf = stateless_noise_fn((3, 4))
  z_full = nf(shape=SHAPE).numpy().astype(np.float64)
  z_rep = np.repeat(nf(shape=(1,) + SHAPE[1:]).numpy(), SHAPE[0], axis=0).astype(np.float64)
  assert not np.allclose(z_full, z_rep)  # the two draws are distinguishable

  for rns in (0, -1, 3):
    times, imgs = d.p_sample_loop_trajectory(tf_fn, shape=SHAPE, noise_fn=nf, repeat_noise_steps=rns)
    np.testing.assert_array_equal(times.numpy(), np.arange(T - 1, -2, -1))
    assert times.numpy()[0] == T - 1 and times.numpy()[-1] == -1 and times.shape == (T + 1,)
    assert imgs.shape == (T + 1,) + SHAPE
    imgs = imgs.numpy()
    x = z_rep if rns >= 0 else z_full  # x_T is shared across the batch iff rns >= 0
    np.testing.assert_allclose(imgs[0], x, rtol=1e-6, atol=1e-6)
    if rns >= 0:
      np.testing.assert_array_equal(imgs[0][0], imgs[0][1])
    for k in range(T):
      noise = z_rep if k < rns else z_full  # the first rns steps share their noise
      x, _ = ref.p_sample(np_fn, x, np.full([SHAPE[0]], T - 1 - k), noise)
      np.testing.assert_allclose(imgs[k + 1], x, rtol=RTOL, atol=ATOL, err_msg=f'rns={rns} k={k}')


def test_interpolate_v1(monkeypatch):
  """x1/x2 are diffused with q_sample's own standard-normal draws (as in the original), so
  we make tf.random.normal deterministic for this test to compare with NumPy."""
  T = 10
  betas = linear_betas(T, 1e-4, 0.05)
  d = GaussianDiffusion(betas=betas, loss_type='noisepred')
  ref = Ref(betas, version=1, mean_type='eps', var_type='fixedsmall')
  tf_fn, np_fn = make_denoise(T)
  stateless = tf.random.stateless_normal
  fake_normal = lambda shape, mean=0., stddev=1., dtype=tf.float32, seed=None, name=None: \
      stateless(shape, seed=[5, 6], dtype=dtype)
  monkeypatch.setattr(tf.random, 'normal', fake_normal)
  q_noise = stateless(SHAPE, seed=[5, 6]).numpy().astype(np.float64)
  nf = stateless_noise_fn((8, 9))
  z = nf(shape=SHAPE).numpy().astype(np.float64)
  rs = np.random.RandomState(9)
  x1, x1n = f32(rs.uniform(-1, 1, SHAPE))
  x2, x2n = f32(rs.uniform(-1, 1, SHAPE))

  def np_interp(a, b, lam, t):
    tb = np.full([SHAPE[0]], t)
    x = (1 - lam) * ref.q_sample(a, tb, q_noise) + lam * ref.q_sample(b, tb, q_noise)
    for i in reversed(range(t + 1)):
      x, _ = ref.p_sample(np_fn, x, np.full([SHAPE[0]], i), z)
    return x

  out0 = d.interpolate(tf_fn, x1=x1, x2=x2, lam=0., t=0, noise_fn=nf)
  assert out0.shape == SHAPE and np.isfinite(out0.numpy()).all()
  out1 = d.interpolate(tf_fn, x1=x2, x2=x1, lam=1., t=0, noise_fn=nf)
  np.testing.assert_allclose(out0.numpy(), out1.numpy(), rtol=1e-6, atol=1e-6)  # symmetry
  np.testing.assert_allclose(out0.numpy(), np_interp(x1n, x2n, 0., 0), rtol=RTOL, atol=ATOL)
  # t=0 with lam=0: one noiseless denoising step of a barely diffused x1 stays close to x1.
  assert np.abs(out0.numpy() - x1n).max() < 0.05
  mid = d.interpolate(tf_fn, x1=x1, x2=x2, lam=0.3, t=6, noise_fn=nf)
  np.testing.assert_allclose(mid.numpy(), np_interp(x1n, x2n, 0.3, 6), rtol=RTOL, atol=ATOL)


# ============================================================================ likelihood loop

def test_calc_bpd_loop_vs_numpy():
  """'xstart' model whose output ignores x_t: then the per-step KL does not depend on the
  random x_t (the coef2 * x_t terms cancel), so the whole loop is deterministic."""
  T, B = 10, 3
  betas = linear_betas(T, 1e-4, 0.05)
  rs = np.random.RandomState(10)
  k = rs.randint(0, 256, size=(B, 4, 4, 3))
  k[0, 0, 0], k[1, 0, 0] = 0, 255
  x0, x0n = f32(k / 127.5 - 1.)
  G = (x0n[None] + 0.01 * (np.arange(T)[:, None, None, None, None] + 1) * rs.randn(T, B, 4, 4, 3))
  G = G.astype(np.float32)
  assert np.abs(G).max() > 1.  # exercises clip_denoised
  Gt = tf.constant(G)

  def tf_fn(x, t):
    return tf.gather_nd(Gt, tf.stack([t, tf.range(B)], axis=1)) + 0. * x

  def np_fn(x, t):
    return G[np.asarray(t), np.arange(B)].astype(np.float64)

  for clip in (True, False):
    for var_type in ('fixedlarge', 'fixedsmall'):
      d = GaussianDiffusion2(betas=betas, model_mean_type='xstart', model_var_type=var_type, loss_type='kl')
      ref = Ref(betas, mean_type='xstart', var_type=var_type)
      total, terms, prior, mse = d.calc_bpd_loop(tf_fn, x0, clip_denoised=clip)
      assert total.shape == prior.shape == (B,) and terms.shape == mse.shape == (B, T)
      for a in (total, terms, prior, mse):
        assert np.isfinite(a.numpy()).all()
      want_terms = np.zeros([B, T])
      want_mse = np.zeros([B, T])
      for tt in range(T):
        tb = np.full([B], tt)
        xt = ref.q_sample(x0n, tb, np.zeros_like(x0n))  # any x_t: the result does not depend on it
        want_terms[:, tt], pred = ref.vb_terms_bpd(np_fn, x0n, xt, tb, clip)
        want_mse[:, tt] = meanflat((pred - x0n) ** 2)
      np.testing.assert_allclose(terms.numpy(), want_terms, rtol=RTOL, atol=ATOL)
      np.testing.assert_allclose(mse.numpy(), want_mse, rtol=RTOL, atol=ATOL)
      np.testing.assert_allclose(prior.numpy(), ref.prior_bpd(x0n), rtol=1e-3, atol=1e-7)
      np.testing.assert_allclose(total.numpy(), terms.numpy().sum(1) + prior.numpy(), rtol=1e-6)
      # terms[:, 0] is the decoder NLL of the discretized Gaussian likelihood, in bits/dim.
      mean0 = np.clip(G[0], -1, 1) if clip else G[0]
      logvar0 = np.log(ref.pv[1])  # log(beta~_1) at t=0 for both fixed types
      nll = -utils.discretized_gaussian_log_likelihood(
          x0, means=tf.constant(mean0), log_scales=tf.fill(x0.shape, np.float32(0.5 * logvar0)))
      np.testing.assert_allclose(terms.numpy()[:, 0], nll.numpy().reshape(B, -1).mean(1) / LN2,
                                 rtol=1e-5, atol=1e-6)


def test_calc_bpd_loop_with_eps_model_is_finite_and_consistent():
  T, B = 8, 2
  d = GaussianDiffusion2(betas=linear_betas(T, 1e-4, 0.05), model_mean_type='eps',
                         model_var_type='fixedlarge', loss_type='mse')
  tf_fn, _ = make_denoise(T)
  x0 = tf.constant(np.random.RandomState(11).randint(0, 256, (B, 4, 4, 3)) / 127.5 - 1., tf.float32)
  total, terms, prior, mse = d.calc_bpd_loop(tf_fn, x0)
  assert terms.shape == (B, T)
  for a in (total, terms, prior, mse):
    assert np.isfinite(a.numpy()).all()
  np.testing.assert_allclose(total.numpy(), terms.numpy().sum(1) + prior.numpy(), rtol=1e-6)
  assert (terms.numpy() >= -1e-6).all() and (mse.numpy() >= 0).all()


# ============================================================================ compiled loops

def test_sampling_loops_do_not_retrace():
  T = 6
  betas = linear_betas(T)
  traces = []

  def denoise(x, t):
    traces.append(1)  # Python side effect: runs once per trace
    return 0.5 * x

  zeros = lambda *, shape, dtype: tf.zeros(shape, dtype)
  d2 = GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse')
  d1 = GaussianDiffusion(betas=betas, loss_type='noisepred')
  x0 = tf.zeros(SHAPE)
  calls = [
      lambda: d2.p_sample_loop(denoise, shape=SHAPE, noise_fn=zeros),
      lambda: d2.p_sample_loop_progressive(denoise, shape=SHAPE, noise_fn=zeros, include_xstartpred_freq=2),
      lambda: d2.calc_bpd_loop(denoise, x0),
      lambda: d1.p_sample_loop(denoise, shape=SHAPE, noise_fn=zeros),
      lambda: d1.p_sample_loop_trajectory(denoise, shape=SHAPE, noise_fn=zeros, repeat_noise_steps=0),
      lambda: d1.interpolate(denoise, x1=x0, x2=x0, lam=0.5, t=3, noise_fn=zeros),
  ]
  for call in calls:
    n0 = len(traces)
    call()
    n1 = len(traces)
    assert n1 > n0  # traced (denoise_fn ran in Python) on the first call
    call()
    assert len(traces) == n1, 'second identical call retraced'
  # A different lam / t value is a tensor argument: no retrace either.
  n = len(traces)
  d1.interpolate(denoise, x1=x0, x2=x0, lam=0.25, t=5, noise_fn=zeros)
  assert len(traces) == n


def test_compiled_loops_are_per_diffusion_instance():
  """Same denoise_fn and noise_fn on diffusions with different tables (and on v1 vs v2)
  must each use their own tables."""
  T = 10
  tf_fn, np_fn = make_denoise(T)
  z = np.random.RandomState(12).randn(*SHAPE).astype(np.float32)
  nf = fixed_noise_fn(z)
  zn = z.astype(np.float64)
  results = []
  for version, betas in ((2, linear_betas(T, 1e-4, 0.05)), (2, linear_betas(T, 1e-3, 0.2)),
                         (1, linear_betas(T, 1e-4, 0.05))):
    if version == 2:
      d = GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse')
      ref = Ref(betas, version=2, mean_type='eps', var_type='fixedlarge')
    else:
      d = GaussianDiffusion(betas=betas, loss_type='noisepred')
      ref = Ref(betas, version=1, mean_type='eps', var_type='fixedsmall')
    out = d.p_sample_loop(tf_fn, shape=SHAPE, noise_fn=nf).numpy()
    np.testing.assert_allclose(out, np_loop(ref, np_fn, zn, zn, T)[0], rtol=RTOL, atol=ATOL)
    results.append(out)
  assert not np.allclose(results[0], results[1]) and not np.allclose(results[0], results[2])


def test_loops_inside_tf_function():
  T = 5
  d = GaussianDiffusion2(betas=linear_betas(T), model_mean_type='eps', model_var_type='fixedlarge',
                         loss_type='mse')
  tf_fn, _ = make_denoise(T)
  zeros = lambda *, shape, dtype: tf.zeros(shape, dtype) + 0.1
  eager = d.p_sample_loop(tf_fn, shape=SHAPE, noise_fn=zeros)
  graph = tf.function(lambda: d.p_sample_loop(tf_fn, shape=SHAPE, noise_fn=zeros))()
  np.testing.assert_allclose(graph.numpy(), eager.numpy(), rtol=1e-6, atol=1e-6)


def _while_ops(graph):
  ops = [op for op in graph.get_operations() if op.type in ('While', 'StatelessWhile')]
  for fn in graph._functions.values():  # loops nested in function bodies
    ops += [op for op in fn.graph.get_operations() if op.type in ('While', 'StatelessWhile')]
  return ops


def test_every_timestep_loop_runs_one_iteration_at_a_time():
  """calc_bpd_loop's iterations are independent; run concurrently, two iterations execute the
  same oneDNN fused conv kernel at once, which segfaulted the CPU test suite (TF 2.21)."""
  T = 4
  d2 = GaussianDiffusion2(betas=linear_betas(T), model_mean_type='eps',
                          model_var_type='fixedlarge', loss_type='mse')
  d1 = GaussianDiffusion(betas=linear_betas(T), loss_type='noisepred')
  tf_fn, _ = make_denoise(T)
  zeros = lambda *, shape, dtype: tf.zeros(shape, dtype)
  x0 = tf.zeros(SHAPE)
  for call in (lambda: d2.calc_bpd_loop(tf_fn, x0),
               lambda: d2.p_sample_loop(tf_fn, shape=SHAPE, noise_fn=zeros),
               lambda: d1.p_sample_loop(tf_fn, shape=SHAPE, noise_fn=zeros),
               lambda: d1.interpolate(tf_fn, x1=x0, x2=x0, lam=0.5, t=2, noise_fn=zeros)):
    graph = tf.function(call).get_concrete_function().graph
    loops = _while_ops(graph)
    assert loops, 'no while loop found'
    assert all(op.get_attr('parallel_iterations') == 1 for op in loops)


@pytest.mark.slow
def test_bpd_loop_with_a_unet_is_stable_when_repeated():
  """The crash above, as it showed: the bits/dim loop of a small U-Net, called repeatedly."""
  from diffusion_tf.models.unet import UNet
  T, B = 10, 10
  net = UNet(ch=32, out_ch=3, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.,
             in_ch=3, resolution=8)
  d = GaussianDiffusion2(betas=linear_betas(T), model_mean_type='eps',
                         model_var_type='fixedlarge', loss_type='mse')
  x0 = tf.constant(np.random.RandomState(3).uniform(-1, 1, (B, 8, 8, 3)), tf.float32)
  denoise = lambda x, t: net(x, t, training=False)
  for _ in range(30):
    total, _, _, _ = d.calc_bpd_loop(denoise, x0)
    assert np.isfinite(total.numpy()).all()
