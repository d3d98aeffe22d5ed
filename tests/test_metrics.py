"""classifier_metrics_numpy: IS and FID against independent SciPy references."""

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats

from diffusion_tf.tpu_utils import classifier_metrics_numpy as cm


def _scipy_fid(act1, act2):
  """Textbook FID with scipy.linalg.sqrtm (the reference implementation most papers use)."""
  m1, m2 = act1.mean(0), act2.mean(0)
  s1, s2 = np.cov(act1, rowvar=False), np.cov(act2, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1.dot(s2))
  return np.sum((m1 - m2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(covmean).real


def _scipy_is(logits):
  p = scipy.special.softmax(logits.astype(np.float64), axis=1)
  q = p.mean(axis=0)
  return np.exp(np.mean([scipy.stats.entropy(p_i, q) for p_i in p]))


@pytest.mark.parametrize('d,n1,n2,rtol', [
    (16, 64, 256, 1e-10),   # full-rank covariances
    (128, 400, 500, 1e-10),
    (256, 64, 300, 1e-6),   # fewer samples than dims: singular covariances, sqrtm is less exact
])
def test_fid_matches_scipy_sqrtm(d, n1, n2, rtol):
  rs = np.random.RandomState(1234)
  real, gen = rs.randn(n1, d), rs.rand(n2, d)  # as in the original test_all (randn vs rand)
  fid = cm.frechet_classifier_distance_from_activations(real, gen)
  assert isinstance(fid, np.float64)
  np.testing.assert_allclose(fid, _scipy_fid(real, gen), rtol=rtol)


def test_fid_of_set_with_itself_is_zero():
  rs = np.random.RandomState(0)
  act = rs.randn(200, 32) * 3. + 1.
  scale = np.trace(np.cov(act, rowvar=False))
  assert abs(cm.frechet_classifier_distance_from_activations(act, act)) < 1e-6 * scale
  # ...and clearly positive for a shifted copy: ||shift||^2 exactly, covariances being equal.
  fid_shift = cm.frechet_classifier_distance_from_activations(act, act + 0.5)
  np.testing.assert_allclose(fid_shift, 0.25 * 32, rtol=1e-8)


def test_frechet_distance_from_moments_agrees_with_activations_version():
  rs = np.random.RandomState(1)
  real, gen = rs.randn(100, 24), 0.5 * rs.randn(150, 24) + 0.3
  mu1, s1 = real.mean(0), np.cov(real, rowvar=False)
  mu2, s2 = gen.mean(0), np.cov(gen, rowvar=False)
  from_moments = cm.frechet_distance_from_moments(mu1, s1, mu2, s2)
  np.testing.assert_allclose(from_moments, cm.frechet_classifier_distance_from_activations(real, gen),
                             rtol=1e-12)
  np.testing.assert_allclose(from_moments, _scipy_fid(real, gen), rtol=1e-9)
  # Gaussians with equal covariance: FID reduces to the squared mean distance.
  np.testing.assert_allclose(cm.frechet_distance_from_moments(mu1, s1, mu1 + 2., s1), 4. * 24, rtol=1e-8)
  with pytest.raises(AssertionError):
    cm.frechet_distance_from_moments(mu1, s1, mu2[:-1], s2)


def test_symmetric_matrix_square_root_squares_back():
  rs = np.random.RandomState(2)
  x = rs.randn(50, 20)
  mat = x.T.dot(x) / 49.
  root = cm._symmetric_matrix_square_root(mat)
  np.testing.assert_allclose(root, root.T, atol=1e-12)
  np.testing.assert_allclose(root.dot(root), mat, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(root, scipy.linalg.sqrtm(mat).real, atol=1e-10)
  # Singular values below eps are kept as they are, not square-rooted (tfgan behaviour).
  small = cm._symmetric_matrix_square_root(np.diag([4., 1e-12]))
  np.testing.assert_allclose(np.diag(small), [2., 1e-12], rtol=1e-12)


def test_trace_sqrt_product_matches_scipy():
  rs = np.random.RandomState(3)
  a, b = rs.randn(60, 10), rs.randn(70, 10)
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  ref = np.trace(scipy.linalg.sqrtm(s1.dot(s2))).real
  np.testing.assert_allclose(cm.trace_sqrt_product(s1, s2), ref, rtol=1e-10)


def test_log_softmax_and_kl_divergence():
  rs = np.random.RandomState(4)
  logits = rs.randn(8, 6) * 4.
  np.testing.assert_allclose(cm.log_softmax(logits, axis=1), scipy.special.log_softmax(logits, axis=1),
                             atol=1e-12)
  p = scipy.special.softmax(logits, axis=1)
  q = scipy.special.softmax(rs.randn(6))
  ref = [scipy.stats.entropy(p_i, q) for p_i in p]
  np.testing.assert_allclose(cm.kl_divergence(p, logits, q), ref, rtol=1e-10)


def test_inception_score_matches_scipy_entropy():
  rs = np.random.RandomState(1234)
  logits = rs.randn(64, 1008) * 3.
  score = cm.classifier_score_from_logits(logits)
  assert isinstance(score, np.float64)
  np.testing.assert_allclose(score, _scipy_is(logits), rtol=1e-10)


def test_inception_score_limits():
  # Uniform predictions (or any identical rows): p_i == q, so KL = 0 and IS = 1.
  np.testing.assert_allclose(cm.classifier_score_from_logits(np.zeros((10, 7))), 1., rtol=1e-12)
  same_rows = np.tile(np.random.RandomState(5).randn(1, 7), (10, 1))
  np.testing.assert_allclose(cm.classifier_score_from_logits(same_rows), 1., rtol=1e-12)
  # N confident predictions of N distinct classes: IS = N.
  for n in (2, 5, 10):
    np.testing.assert_allclose(cm.classifier_score_from_logits(100. * np.eye(n)), n, rtol=1e-10)
  # Confident but only 2 distinct classes over 6 images: IS = 2.
  two = 100. * np.eye(6)[[0, 1, 0, 1, 0, 1]]
  np.testing.assert_allclose(cm.classifier_score_from_logits(two), 2., rtol=1e-10)


def test_float32_in_float32_out():
  rs = np.random.RandomState(6)
  logits = rs.randn(32, 10).astype(np.float32)
  score = cm.classifier_score_from_logits(logits)
  assert score.dtype == np.float32
  # computed in float64 and only then cast
  assert score == np.float32(cm.classifier_score_from_logits(logits.astype(np.float64)))

  real, gen = rs.randn(40, 8).astype(np.float32), rs.rand(50, 8).astype(np.float32)
  fid = cm.frechet_classifier_distance_from_activations(real, gen)
  assert fid.dtype == np.float32
  assert fid == np.float32(cm.frechet_classifier_distance_from_activations(
      real.astype(np.float64), gen.astype(np.float64)))
  assert cm.frechet_classifier_distance_from_activations(real.astype(np.float64), gen).dtype == np.float64
