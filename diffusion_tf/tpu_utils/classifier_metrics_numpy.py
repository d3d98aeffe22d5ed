"""Direct NumPy port of ``tfgan.eval.classifier_metrics`` (Inception score and FID).

Everything is computed in float64, as in the original ``classifier_metrics_numpy.py``.

Differences from the original, both on purpose:
  * ``frechet_distance_from_moments`` is new, so that FID can be computed against cached
    reference statistics (mean and covariance); ``frechet_classifier_distance_from_activations``
    now computes the moments and calls it, so there is a single FID implementation.
  * Results are cast back to the input dtype only when that dtype is a floating type (the
    original cast back to any non-float64 dtype, which would truncate FID/IS for integer
    inputs; nobody passes integers, so real uses are unaffected).
  * ``test_all`` compares against SciPy (``scipy.linalg.sqrtm``, ``scipy.stats.entropy``)
    instead of tfgan, which no longer imports on TF >= 2.16.
"""

import numpy as np
import scipy.special

__all__ = [
    'log_softmax',
    'kl_divergence',
    'trace_sqrt_product',
    'classifier_score_from_logits',
    'frechet_classifier_distance_from_activations',
    'frechet_distance_from_moments',
]


def log_softmax(x, axis):
  """log softmax of `x` along `axis` (same shape as `x`)."""
  return x - scipy.special.logsumexp(x, axis=axis, keepdims=True)


def kl_divergence(p, p_logits, q):
  """Row-wise KL(p_i || q).

  p, p_logits: [N, K] (p = softmax(p_logits)); q: [K]. Returns [N].
  """
  assert p.ndim == p_logits.ndim == 2
  assert q.ndim == 1
  return np.sum(p * (log_softmax(p_logits, axis=1) - np.log(q)[None, :]), axis=1)


def _symmetric_matrix_square_root(mat, eps=1e-10):
  """Square root of a symmetric PSD matrix [D, D] via SVD (as tfgan did)."""
  u, s, vt = np.linalg.svd(mat)
  # sqrt is unstable around 0, so tiny singular values are kept as they are (tfgan behaviour).
  si = np.where(s < eps, s, np.sqrt(s))
  return u.dot(np.diag(si)).dot(vt)


def trace_sqrt_product(sigma, sigma_v):
  """trace(sqrtm(sigma @ sigma_v)) for PSD [D, D] matrices, computed as
  trace(sqrtm(A sigma_v A)) with A = sqrtm(sigma), which is symmetric."""
  sqrt_sigma = _symmetric_matrix_square_root(sigma)
  sqrt_a_sigmav_a = sqrt_sigma.dot(sigma_v.dot(sqrt_sigma))
  return np.trace(_symmetric_matrix_square_root(sqrt_a_sigmav_a))


def _cast_back(value, dtype):
  value = np.float64(value)
  if dtype != np.float64 and np.issubdtype(dtype, np.floating):
    return value.astype(dtype)
  return value


def classifier_score_from_logits(logits):
  """Inception score exp(mean_i KL(p_i || mean_j p_j)) of logits [N, K], over a single split.

  Returns a NumPy scalar of the input dtype (float64 for float64 or non-float input).
  """
  logits = np.asarray(logits)
  logits_dtype = logits.dtype
  logits = logits.astype(np.float64)
  assert logits.ndim == 2
  p = scipy.special.softmax(logits, axis=1)
  q = np.mean(p, axis=0)
  kl = kl_divergence(p, logits, q)
  assert kl.ndim == 1
  final_score = np.exp(np.mean(kl))
  return _cast_back(final_score, logits_dtype)


def frechet_distance_from_moments(mu1, sigma1, mu2, sigma2):
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

  mu*: [D], sigma*: [D, D]. Computed in float64 exactly as tfgan's FID:
  trace(sigma1 + sigma2) - 2 trace_sqrt_product(sigma1, sigma2) + ||mu1 - mu2||^2.
  Returns a float64 NumPy scalar. (1 = real data, 2 = generated, in tfgan's order.)
  """
  mu1 = np.asarray(mu1, dtype=np.float64)
  mu2 = np.asarray(mu2, dtype=np.float64)
  sigma1 = np.asarray(sigma1, dtype=np.float64)
  sigma2 = np.asarray(sigma2, dtype=np.float64)
  assert mu1.ndim == mu2.ndim == 1 and mu1.shape == mu2.shape, (mu1.shape, mu2.shape)
  assert sigma1.shape == sigma2.shape == mu1.shape * 2, (sigma1.shape, sigma2.shape)
  sqrt_trace_component = trace_sqrt_product(sigma1, sigma2)
  trace = np.trace(sigma1 + sigma2) - 2.0 * sqrt_trace_component
  mean = np.sum(np.square(mu1 - mu2))
  return np.float64(trace + mean)


def _mean_and_unbiased_cov(activations):
  """activations [N, D] float64 -> (mean [D], unbiased covariance Xc^T Xc / (N - 1) [D, D])."""
  m = np.mean(activations, axis=0)
  centered = activations - m
  sigma = centered.T.dot(centered) / (activations.shape[0] - 1)
  return m, sigma


def frechet_classifier_distance_from_activations(real_activations, generated_activations):
  """FID between activations [N, D] and [M, D] (e.g. Inception pool_3).

  Uses unbiased covariances. Returns a NumPy scalar of the input dtype (float64 for
  float64 or non-float input).
  """
  real_activations = np.asarray(real_activations)
  generated_activations = np.asarray(generated_activations)
  activations_dtype = real_activations.dtype
  assert real_activations.ndim == generated_activations.ndim == 2
  m, sigma = _mean_and_unbiased_cov(real_activations.astype(np.float64))
  m_w, sigma_w = _mean_and_unbiased_cov(generated_activations.astype(np.float64))
  fid = frechet_distance_from_moments(m, sigma, m_w, sigma_w)
  return _cast_back(fid, activations_dtype)


def test_all():
  """Self-check against SciPy on the original's random data (tfgan is not available)."""
  import scipy.linalg
  import scipy.stats

  rs = np.random.RandomState(1234)
  logits = rs.randn(64, 1008)
  p = scipy.special.softmax(logits, axis=1)
  q = p.mean(axis=0)
  ref_is = np.exp(np.mean([scipy.stats.entropy(p_i, q) for p_i in p]))
  assert np.allclose(classifier_score_from_logits(logits), ref_is, rtol=1e-10), 'inception score'

  act1 = rs.randn(64, 2048)
  act2 = rs.rand(256, 2048)
  m1, s1 = act1.mean(0), np.cov(act1, rowvar=False)
  m2, s2 = act2.mean(0), np.cov(act2, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1.dot(s2))
  ref_fid = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(covmean).real
  fid = frechet_classifier_distance_from_activations(act1, act2)
  assert np.allclose(fid, ref_fid, rtol=1e-5), ('fid', fid, ref_fid)
  print('all ok')


if __name__ == '__main__':
  test_all()
