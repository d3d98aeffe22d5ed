"""Tests for diffusion_tf.nn (original §2, §3.1 GroupNorm, §14.5-14.7).

Expected values come from the spec's reference numbers or from independent NumPy code.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import nn


# ----------------------------------------------------------------------------- timestep embedding

@pytest.mark.numerics
def test_timestep_embedding_reference_values():
  # §2.5 reference values for t=[0, 1, 999], dim 8, rounded to 6 dp.
  expected = np.array([
      [0, 0, 0, 0, 1, 1, 1, 1],
      [0.841471, 0.046399, 0.002154, 0.0001, 0.540302, 0.998923, 0.999998, 1.0],
      [-0.026461, 0.684864, 0.835649, 0.099734, 0.99965, -0.728671, -0.549265, 0.995014],
  ])
  emb = nn.get_timestep_embedding(tf.constant([0, 1, 999], tf.int32), 8)
  assert emb.shape == (3, 8) and emb.dtype == tf.float32
  # Rows t=0, 1: the 6-dp rounding (5e-7) plus float32 rounding.
  np.testing.assert_allclose(emb.numpy()[:2], expected[:2], rtol=0, atol=5e-7 + 1e-7)
  # Row t=999: the argument t*freq is a float32 near 999 (as in the original, which also
  # computed in float32), whose half-ulp is 3e-5; sin/cos inherit that absolute error.
  np.testing.assert_allclose(emb.numpy()[2], expected[2], rtol=0, atol=5e-7 + 3.1e-5)


def _np_embedding(t, dim):
  half = dim // 2
  freqs = np.exp(-np.arange(half) * math.log(10000) / (half - 1))  # divisor half - 1
  arg = np.asarray(t, np.float64)[:, None] * freqs[None, :]
  emb = np.concatenate([np.sin(arg), np.cos(arg)], axis=1)  # sin first
  if dim % 2:
    emb = np.pad(emb, [(0, 0), (0, 1)])
  return emb


@pytest.mark.numerics
@pytest.mark.parametrize('dim', [16, 128, 9, 33])
def test_timestep_embedding_vs_numpy_and_odd_dim(dim):
  t = np.array([0, 3, 17, 250, 999])
  emb = nn.get_timestep_embedding(tf.constant(t, tf.int64), dim).numpy()
  assert emb.shape == (5, dim)
  # float32 argument rounding: |t * f| <= 999, relative rounding 6e-8 -> ~1e-4 absolute.
  np.testing.assert_allclose(emb, _np_embedding(t, dim), atol=2e-4)
  if dim % 2:
    np.testing.assert_array_equal(emb[:, -1], 0.)  # the zero column on the right


def test_timestep_embedding_int32_and_int64_agree():
  a = nn.get_timestep_embedding(tf.constant([5, 6], tf.int32), 12)
  b = nn.get_timestep_embedding(tf.constant([5, 6], tf.int64), 12)
  np.testing.assert_array_equal(a.numpy(), b.numpy())


# ----------------------------------------------------------------------------- default_init

@pytest.mark.parametrize('shape,fan_avg', [
    ([256, 128], (256 + 128) / 2),
    ([3, 3, 64, 32], (9 * 64 + 9 * 32) / 2),
    ([1, 1, 300, 300], 300.),
])
@pytest.mark.parametrize('scale', [1., 0.5])
def test_default_init_limits(shape, fan_avg, scale):
  tf.random.set_seed(0)
  w = nn.default_init(scale)(shape).numpy()
  limit = math.sqrt(3 * scale / fan_avg)
  assert w.shape == tuple(shape) and w.dtype == np.float32
  assert np.abs(w).max() <= limit * (1 + 1e-6)
  # Uniform on (-limit, limit): the extreme of >= 32k draws is within 1% of the limit,
  # the variance is limit^2 / 3 (relative SE ~ sqrt(0.8/n) < 0.5%).
  assert np.abs(w).max() > 0.99 * limit
  np.testing.assert_allclose(w.var(), limit ** 2 / 3, rtol=0.05)
  assert abs(w.mean()) < 0.02 * limit


def test_default_init_zero_scale_is_tiny_not_zero():
  tf.random.set_seed(1)
  shape = [3, 3, 128, 128]
  w = nn.default_init(0.)(shape).numpy()
  limit = math.sqrt(3 * 1e-10 / (9 * 128))
  assert np.abs(w).max() <= limit * (1 + 1e-6)
  assert np.abs(w).max() > 0.99 * limit
  assert np.count_nonzero(w) > 0.99 * w.size  # tiny noise, not exact zeros


# ----------------------------------------------------------------------------- reductions

def test_flatten_sumflat_meanflat():
  x = np.random.RandomState(0).randn(3, 4, 5, 2).astype(np.float32)
  np.testing.assert_allclose(nn.flatten(tf.constant(x)).numpy(), x.reshape(3, -1))
  np.testing.assert_allclose(nn.sumflat(tf.constant(x)).numpy(), x.reshape(3, -1).sum(1), rtol=1e-5)
  np.testing.assert_allclose(nn.meanflat(tf.constant(x)).numpy(), x.reshape(3, -1).mean(1),
                             rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- layers

def test_dense_nin_conv_variable_names_shapes_and_values():
  rs = np.random.RandomState(0)
  d = nn.Dense(6, 4, name='scope/dense0')
  assert d.W.name == 'scope/dense0/W:0' and d.W.shape == (6, 4)
  assert d.b.name == 'scope/dense0/b:0' and d.b.shape == (4,)
  np.testing.assert_array_equal(d.b.numpy(), 0.)  # biases init to 0
  d.b.assign(rs.randn(4).astype(np.float32))
  x = rs.randn(3, 6).astype(np.float32)
  np.testing.assert_allclose(d(tf.constant(x)).numpy(), x @ d.W.numpy() + d.b.numpy(), rtol=1e-5, atol=1e-6)

  nb = nn.Dense(6, 4, name='scope/nobias', bias=False)
  assert nb.b is None and [v.name for v in nb.trainable_variables] == ['scope/nobias/W:0']

  nin = nn.NIN(6, 5, name='scope/nin')
  assert nin.W.shape == (6, 5)  # 2-D kernel, as the original nin
  x4 = rs.randn(2, 3, 3, 6).astype(np.float32)
  np.testing.assert_allclose(nin(tf.constant(x4)).numpy(),
                             np.einsum('bhwc,cd->bhwd', x4, nin.W.numpy()) + nin.b.numpy(),
                             rtol=1e-5, atol=1e-6)

  conv = nn.Conv2D(4, 7, name='scope/conv')
  assert conv.W.name == 'scope/conv/W:0' and conv.W.shape == (3, 3, 4, 7) and conv.b.shape == (7,)
  conv1 = nn.Conv2D(4, 7, name='scope/conv1x1', filter_size=(1, 1))
  assert conv1.W.shape == (1, 1, 4, 7)


def _np_group_norm(x, gamma, beta, groups=32, eps=1e-6):
  B, H, W, C = x.shape
  g = x.astype(np.float64).reshape(B, H, W, groups, C // groups)  # contiguous groups
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)  # biased (population) variance
  return ((g - mean) / np.sqrt(var + eps)).reshape(B, H, W, C) * gamma + beta


@pytest.mark.numerics
@pytest.mark.parametrize('C', [32, 64, 96])
def test_group_norm_vs_numpy(C):
  rs = np.random.RandomState(C)
  gn = nn.GroupNorm(C, name=f'gn{C}/norm1')
  assert gn.gamma.name == f'gn{C}/norm1/gamma:0' and gn.beta.name == f'gn{C}/norm1/beta:0'
  np.testing.assert_array_equal(gn.gamma.numpy(), 1.)
  np.testing.assert_array_equal(gn.beta.numpy(), 0.)
  gamma, beta = rs.randn(C).astype(np.float32), rs.randn(C).astype(np.float32)
  gn.gamma.assign(gamma)
  gn.beta.assign(beta)
  # Per-channel offsets/scales make the groups' statistics differ, so a wrong grouping
  # (e.g. strided channels) would fail.
  x = (rs.randn(2, 5, 4, C) * rs.uniform(0.5, 3, C) + rs.randn(C) * 2).astype(np.float32)
  np.testing.assert_allclose(gn(tf.constant(x)).numpy(), _np_group_norm(x, gamma, beta),
                             rtol=1e-4, atol=1e-4)


def test_group_norm_epsilon_is_1e_minus_6():
  # A constant-per-group input with tiny spread: the result depends strongly on eps.
  C = 32
  gn = nn.GroupNorm(C, name='gn_eps/norm')
  x = np.zeros([1, 2, 2, C], np.float32)
  x[0, 0, 0, :] = 2e-3  # per-group values (2e-3, 0, 0, 0): variance 7.5e-7, same order as eps
  out = gn(tf.constant(x)).numpy()
  np.testing.assert_allclose(out, _np_group_norm(x, 1., 0., eps=1e-6), rtol=1e-3, atol=1e-5)
  assert not np.allclose(out, _np_group_norm(x, 1., 0., eps=1e-5), rtol=1e-2, atol=1e-3)


def test_group_norm_rejects_indivisible_channels():
  with pytest.raises(ValueError):
    nn.GroupNorm(48, name='bad/norm')
