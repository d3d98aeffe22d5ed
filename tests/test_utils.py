"""Tests for diffusion_tf.utils (original §7; GCS helpers per design §4). No network access."""

import os
import urllib.error
import urllib.request

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from PIL import Image

from diffusion_tf import utils


# ============================================================================ tile_imgs

def test_tile_imgs_cifar_grid_geometry():
  rs = np.random.RandomState(0)
  imgs = rs.randint(0, 255, size=(256, 32, 32, 3)).astype(np.uint8)  # values < 255 != pad
  grid = utils.tile_imgs(imgs)
  assert grid.shape == (542, 542, 3) and grid.dtype == np.uint8  # (16 * 34 - 2)^2, §16
  # Image (r, c) occupies rows r*34 .. r*34+31, cols c*34 .. c*34+31 (outer border cropped).
  for r, c in [(0, 0), (0, 15), (15, 0), (7, 9), (15, 15)]:
    np.testing.assert_array_equal(grid[r * 34:r * 34 + 32, c * 34:c * 34 + 32], imgs[r * 16 + c])
  # Separators are 2 * pad_pixels lines of pad_val.
  for k in range(15):
    assert (grid[k * 34 + 32:k * 34 + 34, :] == 255).all()
    assert (grid[:, k * 34 + 32:k * 34 + 34] == 255).all()
  assert (grid != 255).sum() == imgs.size  # nothing else is padding


def test_tile_imgs_pad_value_pixels_and_num_col():
  imgs = np.zeros((6, 5, 4, 3), np.uint8)
  grid = utils.tile_imgs(imgs, pad_pixels=2, pad_val=7, num_col=3)
  # 2 rows x 3 cols of (5+4) x (4+4) cells, minus the 2-pixel outer border.
  assert grid.shape == (2 * 9 - 4, 3 * 8 - 4, 3)
  assert (grid[5:9] == 7).all() and (grid[:, 4:8] == 7).all()
  assert (grid[:5, :4] == 0).all() and (grid[9:, 16:] == 0).all()
  no_pad = utils.tile_imgs(imgs, pad_pixels=0, num_col=2)
  assert no_pad.shape == (3 * 5, 2 * 4, 3) and (no_pad == 0).all()
  with pytest.raises(AssertionError):
    utils.tile_imgs(imgs, num_col=4)  # n % num_col != 0


def test_tile_imgs_non_square_count_fills_pad_cells():
  imgs = np.full((5, 4, 4, 3), 10, np.uint8)
  grid = utils.tile_imgs(imgs, pad_val=200)
  assert grid.shape == (3 * 6 - 2, 3 * 6 - 2, 3)  # ceil(sqrt(5)) = 3
  cell = lambda r, c: grid[r * 6:r * 6 + 4, c * 6:c * 6 + 4]
  for i in range(9):
    assert (cell(i // 3, i % 3) == (10 if i < 5 else 200)).all(), i


def test_tile_imgs_single_channel_returns_2d():
  imgs = np.arange(4 * 3 * 3).reshape(4, 3, 3, 1).astype(np.uint8)
  grid = utils.tile_imgs(imgs)
  assert grid.shape == (2 * 5 - 2, 2 * 5 - 2)
  np.testing.assert_array_equal(grid[:3, :3], imgs[0, ..., 0])
  np.testing.assert_array_equal(grid[5:, 5:], imgs[3, ..., 0])
  grid2 = utils.tile_imgs(imgs[..., 0])  # [n, h, w] input
  np.testing.assert_array_equal(grid2, grid)


def test_tile_imgs_input_checks():
  with pytest.raises(AssertionError):
    utils.tile_imgs(np.zeros((4, 3, 3, 3), np.float32))  # must be uint8
  with pytest.raises(AssertionError):
    utils.tile_imgs(np.zeros((4, 3, 3, 2), np.uint8))  # 1 or 3 channels


def test_save_tiled_imgs_writes_png(tmp_path):
  imgs = np.random.RandomState(1).randint(0, 256, size=(9, 8, 8, 3)).astype(np.uint8)
  path = str(tmp_path / 'sub' / 'grid.png')
  utils.save_tiled_imgs(path, imgs)
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.size == (3 * 10 - 2, 3 * 10 - 2)
    np.testing.assert_array_equal(np.asarray(im), utils.tile_imgs(imgs))
  assert [p for p in os.listdir(tmp_path / 'sub')] == ['grid.png']  # no temp files left


# ============================================================================ likelihood

def test_approx_standard_normal_cdf():
  x = np.linspace(-6, 6, 2001)
  got = utils.approx_standard_normal_cdf(tf.constant(x)).numpy()
  # The tanh (GELU) approximation, not erf ...
  tanh_formula = 0.5 * (1. + np.tanh(np.sqrt(2. / np.pi) * (x + 0.044715 * x ** 3)))
  np.testing.assert_allclose(got, tanh_formula, rtol=1e-12, atol=1e-15)
  # ... which is within 1e-3 of the exact normal CDF, but not equal to it.
  exact = scipy.stats.norm.cdf(x)
  assert np.abs(got - exact).max() < 1e-3
  assert np.abs(got - exact).max() > 1e-5
  x32 = utils.approx_standard_normal_cdf(tf.constant(x, tf.float32))
  assert x32.dtype == tf.float32


@pytest.mark.parametrize('mean,log_scale', [
    (0., np.log(0.01)), (0.3, np.log(0.1)), (-0.95, np.log(0.05)), (0.999, np.log(0.5)),
    (0., np.log(2.)), (0.51, np.log(0.003)), (1., np.log(1e-3)),
])
def test_discretized_gaussian_log_likelihood_sums_to_one(mean, log_scale):
  k = np.arange(256)
  x = (k / 255.) * 2. - 1.
  shape = (256,)
  lp = utils.discretized_gaussian_log_likelihood(
      tf.constant(x, tf.float32), means=tf.fill(shape, np.float32(mean)),
      log_scales=tf.fill(shape, np.float32(log_scale)))
  assert lp.shape == shape and lp.dtype == tf.float32
  lp = lp.numpy().astype(np.float64)
  assert (lp <= 1e-6).all()
  # The bins telescope (the edge bins extend to -inf/+inf), so the probabilities sum to 1
  # up to float32 rounding of 256 CDF differences and the 1e-12 floors.
  np.testing.assert_allclose(np.exp(lp).sum(), 1., atol=2e-5)


def test_discretized_gaussian_log_likelihood_vs_numpy():
  rs = np.random.RandomState(2)
  k = rs.randint(0, 256, size=(4, 6, 6, 3))
  k[0, 0, 0] = [0, 255, 128]
  x = (k / 127.5 - 1.).astype(np.float32)
  # Means within 2.5 scales of x: in the far tails float32 CDF differences underflow to the
  # 1e-12 floor (as they did in the original), which a float64 reference would not reproduce.
  log_scales = rs.uniform(np.log(0.01), np.log(0.1), x.shape).astype(np.float32)
  means = (x + np.exp(log_scales) * np.clip(rs.randn(*x.shape), -2.5, 2.5)).astype(np.float32)
  got = utils.discretized_gaussian_log_likelihood(tf.constant(x), means=tf.constant(means),
                                                  log_scales=tf.constant(log_scales)).numpy()
  xd, md, ld = (a.astype(np.float64) for a in (x, means, log_scales))
  cdf = lambda z: 0.5 * (1. + np.tanh(np.sqrt(2. / np.pi) * (z + 0.044715 * z ** 3)))
  plus = cdf(np.exp(-ld) * (xd - md + 1. / 255.))
  minus = cdf(np.exp(-ld) * (xd - md - 1. / 255.))
  want = np.where(xd < -0.999, np.log(np.maximum(plus, 1e-12)),
                  np.where(xd > 0.999, np.log(np.maximum(1. - minus, 1e-12)),
                           np.log(np.maximum(plus - minus, 1e-12))))
  # float32 CDF differences: relative error ~ 1e-7 / (plus - minus), plus - minus >= ~1e-3 here.
  assert (plus - minus).min() > 5e-4
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)
  with pytest.raises(AssertionError):
    utils.discretized_gaussian_log_likelihood(tf.constant(x), means=tf.constant(means[:2]),
                                              log_scales=tf.constant(log_scales))


def test_discretized_gaussian_edge_bins():
  # x = -1 takes the whole left tail, x = +1 the whole right tail.
  x = tf.constant([-1., 1.])
  m = tf.constant([-1., 1.])
  ls = tf.constant([np.log(0.2)] * 2, tf.float32)
  lp = utils.discretized_gaussian_log_likelihood(x, means=m, log_scales=ls).numpy()
  cdf = lambda z: 0.5 * (1. + np.tanh(np.sqrt(2. / np.pi) * (z + 0.044715 * z ** 3)))
  np.testing.assert_allclose(lp, np.log(cdf((1. / 255.) / 0.2)), rtol=1e-5)


# ============================================================================ training helpers

def test_rms_vs_numpy():
  rs = np.random.RandomState(3)
  arrays = [rs.randn(3, 4), rs.randn(7), rs.randn(2, 2, 2, 5)]
  vs = [tf.Variable(a.astype(np.float32)) for a in arrays]
  flat = np.concatenate([a.ravel() for a in arrays])
  np.testing.assert_allclose(float(utils.rms(vs)), np.sqrt(np.mean(flat ** 2)), rtol=1e-6)


def test_get_warmed_up_lr():
  f = lambda step: float(utils.get_warmed_up_lr(2e-4, 5000, tf.constant(step, tf.int64)))
  assert f(0) == 0.  # exactly 0 at step 0
  np.testing.assert_allclose(f(1), 2e-4 / 5000, rtol=1e-6)
  np.testing.assert_allclose(f(2500), 1e-4, rtol=1e-6)
  np.testing.assert_allclose(f(4999), 2e-4 * 4999 / 5000, rtol=1e-6)
  np.testing.assert_allclose(f(5000), 2e-4, rtol=1e-6)
  np.testing.assert_allclose(f(10 ** 6), 2e-4, rtol=1e-6)  # constant after warmup, no decay
  steps = np.arange(0, 5001, 500)
  lrs = np.array([f(s) for s in steps])
  np.testing.assert_allclose(np.diff(lrs), 2e-4 / 10, rtol=1e-5)  # linear
  # warmup 0: max_lr from the start.
  for step in (0, 1, 100):
    np.testing.assert_allclose(float(utils.get_warmed_up_lr(2e-4, 0, tf.constant(step))), 2e-4)
  # Usable with a plain int step and inside tf.function.
  np.testing.assert_allclose(float(utils.get_warmed_up_lr(1., 10, 5)), 0.5)
  g = tf.function(lambda s: utils.get_warmed_up_lr(1., 10, s))
  np.testing.assert_allclose(float(g(tf.constant(3, tf.int64))), 0.3, rtol=1e-6)



def test_linear_lr_schedule_decays_to_zero_at_the_last_step():
  f = lambda step: float(utils.get_lr(1e-3, 200, tf.constant(step, tf.int64), 'linear', 5000))
  assert f(0) == 0.
  np.testing.assert_allclose(f(100), 0.5e-3, rtol=1e-6)  # warmup as before
  np.testing.assert_allclose(f(200), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(f(2600), 0.5e-3, rtol=1e-6)  # half way through the decay
  np.testing.assert_allclose(f(4999), 1e-3 / 4800, rtol=1e-4)
  assert f(5000) == 0. and f(6000) == 0.  # never negative past the end
  np.testing.assert_allclose(float(utils.get_lr(1e-3, 200, 2600, 'constant', 5000)), 1e-3, rtol=1e-7)
  with pytest.raises(ValueError, match='max_steps'):
    utils.get_lr(1e-3, 200, 0, 'linear', None)
  # A run shorter than the warmup (a smoke test) warms up and ends: no decay phase.
  short = [float(utils.get_lr(1e-3, 200, s, 'linear', 3)) for s in range(3)]
  np.testing.assert_allclose(short, [0., 1e-3 / 200, 2e-3 / 200], rtol=1e-6)

def test_seed_all_makes_random_draws_repeatable():
  utils.seed_all(123)
  a = (np.random.rand(), tf.random.uniform([3]).numpy())
  utils.seed_all(123)
  b = (np.random.rand(), tf.random.uniform([3]).numpy())
  assert a[0] == b[0]
  np.testing.assert_array_equal(a[1], b[1])


# ============================================================================ GCS region / paths

@pytest.fixture
def no_region_env(monkeypatch):
  for var in utils.REGION_ENV_VARS:
    monkeypatch.delenv(var, raising=False)

  def no_network(*args, **kwargs):
    raise urllib.error.URLError('network disabled in tests')
  monkeypatch.setattr(urllib.request, 'urlopen', no_network)
  return monkeypatch


def test_bucket_path():
  assert utils.bucket_path('logs', 'mybucketprefix', 'us-central1') == 'gs://mybucketprefix-us-central1/logs'
  assert (utils.bucket_path('tensorflow_datasets/lsun/church/church-r08.tfrecords', 'p', 'europe-west4')
          == 'gs://p-europe-west4/tensorflow_datasets/lsun/church/church-r08.tfrecords')
  assert utils.bucket_path('logs', None, None) == 'logs'  # no prefix: local
  assert utils.bucket_path('logs', '', 'us-central1') == 'logs'
  assert utils.bucket_path('/abs/logs', 'p', 'r') == '/abs/logs'
  assert utils.bucket_path('gs://other/x', 'p', 'r') == 'gs://other/x'
  assert utils.bucket_path(None, 'p', 'r') is None


def test_get_gcp_region_explicit_argument_wins(no_region_env):
  no_region_env.setenv(utils.REGION_ENV_VARS[0], 'env-region1')
  assert utils.get_gcp_region(region='us-east1') == 'us-east1'


def test_get_gcp_region_env_precedence(no_region_env):
  assert len(utils.REGION_ENV_VARS) >= 2
  for var in reversed(utils.REGION_ENV_VARS):  # later entries have lower precedence
    no_region_env.setenv(var, f'{var.lower()}-value')
    assert utils.get_gcp_region() == f'{var.lower()}-value'
  assert utils.get_gcp_region() == f'{utils.REGION_ENV_VARS[0].lower()}-value'
  assert 'DIFFUSION_TF_REGION' in utils.REGION_ENV_VARS


def test_get_gcp_region_no_region_error_mentions_flag(no_region_env):
  with pytest.raises(RuntimeError, match='--region'):
    utils.get_gcp_region()


def test_get_gcp_region_from_metadata_server(no_region_env):
  seen = {}

  class FakeResponse:
    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def read(self):
      return b'projects/123456789/zones/us-central1-f'

  def fake_urlopen(req, timeout=None):
    seen['url'], seen['headers'], seen['timeout'] = req.full_url, dict(req.header_items()), timeout
    return FakeResponse()

  no_region_env.setattr(urllib.request, 'urlopen', fake_urlopen)
  assert utils.get_gcp_region() == 'us-central1'  # zone us-central1-f -> region us-central1
  assert 'computeMetadata/v1/instance/zone' in seen['url']
  assert seen['headers'].get('Metadata-flavor') == 'Google'
  assert seen['timeout'] is not None and seen['timeout'] <= 10


# ============================================================================ file helpers

def test_write_json_and_atomic_write(tmp_path):
  path = str(tmp_path / 'a' / 'kwargs.json')
  utils.write_json(path, {'b': 1, 'a': [1, 2]})
  with open(path) as f:
    text = f.read()
  assert text.endswith('\n') and text.index('"a"') < text.index('"b"')  # sort_keys
  assert utils.read_json(path) == {'a': [1, 2], 'b': 1}
  with pytest.raises(FileExistsError):
    utils.atomic_write(path, b'x', overwrite=False)
  utils.atomic_write(path, b'{}')
  assert utils.read_json(path) == {}


def test_to_uint8_truncates():
  x = np.array([-2., -1., 0., 0.999, 1., 3.])
  np.testing.assert_array_equal(utils.to_uint8(x), [0, 0, 127, 254, 255, 255])
