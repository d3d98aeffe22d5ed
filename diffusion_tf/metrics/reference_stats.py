"""Real-data feature statistics for FID/IS, computed once and cached as ``.npz``.

A stats file holds ``mu`` (float64 [D]), ``sigma`` (float64 [D, D], unbiased covariance),
``count`` (number of images), ``inception_score`` (real-data IS, single split, as the
original's ``InceptionFeatures.get``), ``extractor`` (the feature extractor's ``name``),
``format_version`` and ``metadata`` (a JSON string). FID against generated samples is then
``classifier_metrics_numpy.frechet_distance_from_moments(mu, sigma, mu_gen, sigma_gen)``
(see :func:`fid_from_stats`).

Which and how many images go in is the caller's concern. To reproduce the original, use
its counts: real features came from ``drop_remainder`` batches, i.e. 49920 train / 9984 test
images for CIFAR-10 at batch size 256, and 29952 for CelebA-HQ / LSUN (256x256, batch 128).
"""

import io
import json
import os
import re
import uuid

import numpy as np
import tensorflow as tf

from diffusion_tf import integrity
from diffusion_tf.errors import UserError
from diffusion_tf.tpu_utils import classifier_metrics_numpy
from diffusion_tf.metrics import inception

FORMAT_VERSION = 1
_REQUIRED_KEYS = ('mu', 'sigma', 'count', 'inception_score', 'extractor', 'format_version')


class ReferenceStatsMismatch(UserError, ValueError):
  """A cached stats file was made with a different extractor or image count."""


def default_stats_cache_dir():
  """``<cache root>/reference_stats``: ``$DIFFUSION_TF_CACHE`` or ``~/.cache/diffusion_tf``."""
  return os.path.join(inception.default_cache_root(), 'reference_stats')


class _MomentAccumulator:
  """Streaming mean / unbiased covariance of rows [n, D] in float64.

  Rows are shifted by the first batch's mean before accumulating sums, which avoids the
  cancellation of the naive sum-of-squares formula; memory is O(D^2) instead of O(N D).
  """

  def __init__(self):
    self.n = 0
    self._shift = self._sum = self._outer = None

  def update(self, x):
    x = np.asarray(x, dtype=np.float64)
    if self._shift is None:
      self._shift = x.mean(axis=0)
      self._sum = np.zeros_like(self._shift)
      self._outer = np.zeros((x.shape[1], x.shape[1]), np.float64)
    xc = x - self._shift
    self._sum += xc.sum(axis=0)
    self._outer += xc.T.dot(xc)
    self.n += x.shape[0]

  def finalize(self):
    if self.n < 2:
      raise ValueError(f'need at least 2 images for a covariance, got {self.n}')
    d = self._sum / self.n
    mu = self._shift + d
    sigma = (self._outer - self.n * np.outer(d, d)) / (self.n - 1)
    return mu, (sigma + sigma.T) / 2  # exact symmetry; differences are rounding only


def compute_reference_stats(images, extractor, *, batch_size, limit=None, progress=False):
  """Feature statistics of real images.

  Args:
    images: array/tensor [N, H, W, 3] in [0, 255], or an iterable of such batches (or of
      dicts with an 'image' key, e.g. ``dataset.train_one_pass_input_fn(...)``), or a
      zero-argument callable returning one of those (only called here).
    extractor: a feature extractor (protocol in ``inception.py``) with a ``name``.
    batch_size: images per extractor call.
    limit: use at most this many images.
  Returns:
    dict(mu=float64 [D], sigma=float64 [D, D], count=int, inception_score=float,
         extractor=str).
  """
  name = inception.extractor_name(extractor)
  if callable(images) and not isinstance(images, (np.ndarray, tf.Tensor, tf.data.Dataset)):
    images = images()
  moments = _MomentAccumulator()
  logits = []  # all kept (as the original did): IS needs q = mean softmax over all images
  batches = inception.iter_image_batches(images, batch_size, limit)
  for batch in inception._progress(batches, progress, desc='reference stats'):
    feats = inception.extract_batch(extractor, batch)
    moments.update(feats['pool_3'])
    logits.append(feats['logits'])
  if moments.n == 0:
    raise ValueError('compute_reference_stats got no images')
  mu, sigma = moments.finalize()
  logits = np.concatenate(logits, axis=0)
  return {
      'mu': mu,
      'sigma': sigma,
      'count': int(moments.n),
      'inception_score': float(classifier_metrics_numpy.classifier_score_from_logits(logits)),
      'extractor': name,
  }


def fid_from_stats(stats_real, stats_gen):
  """FID between two stats dicts (``mu``/``sigma``); real first, as tfgan orders them."""
  if stats_real.get('extractor') and stats_gen.get('extractor') and \
      stats_real['extractor'] != stats_gen['extractor']:
    raise ReferenceStatsMismatch(
        f"stats from different extractors: {stats_real['extractor']!r} vs {stats_gen['extractor']!r}")
  return float(classifier_metrics_numpy.frechet_distance_from_moments(
      stats_real['mu'], stats_real['sigma'], stats_gen['mu'], stats_gen['sigma']))


def save_stats(path, stats, *, overwrite=False, metadata=None):
  """Write `stats` (keys of :func:`compute_reference_stats`) to `path` (.npz) atomically.

  Refuses to replace an existing file (FileExistsError) unless ``overwrite=True``.
  """
  if tf.io.gfile.exists(path) and not overwrite:
    raise FileExistsError(f'{path} exists; pass overwrite=True to replace it')
  mu = np.asarray(stats['mu'], np.float64)
  sigma = np.asarray(stats['sigma'], np.float64)
  if mu.ndim != 1 or sigma.shape != mu.shape * 2:
    raise ValueError(f'bad shapes: mu {mu.shape}, sigma {sigma.shape}')
  buf = io.BytesIO()
  np.savez(buf, mu=mu, sigma=sigma, count=np.int64(stats['count']),
           inception_score=np.float64(stats['inception_score']),
           extractor=np.str_(stats['extractor']), format_version=np.int64(FORMAT_VERSION),
           metadata=np.str_(json.dumps(metadata or {}, sort_keys=True)))
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  with tf.io.gfile.GFile(tmp, 'wb') as f:
    f.write(buf.getvalue())
  try:
    tf.io.gfile.rename(tmp, path, overwrite=overwrite)
  except tf.errors.AlreadyExistsError as e:  # another process won the race
    raise FileExistsError(f'{path} exists; pass overwrite=True to replace it') from e
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
  return path


def load_stats(path):
  """Read a stats file written by :func:`save_stats`.

  Returns dict(mu float64 [D], sigma float64 [D, D], count int, inception_score float,
  extractor str, format_version int, metadata dict).
  """
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  with np.load(io.BytesIO(data), allow_pickle=False) as z:
    missing = [k for k in _REQUIRED_KEYS if k not in z.files]
    if missing:
      raise ValueError(f'{path} is not a reference-stats file (missing keys {missing})')
    version = int(z['format_version'])
    if version > FORMAT_VERSION:
      raise ValueError(f'{path} has format_version {version}; this code reads <= {FORMAT_VERSION}')
    return {
        'mu': z['mu'].astype(np.float64),
        'sigma': z['sigma'].astype(np.float64),
        'count': int(z['count']),
        'inception_score': float(z['inception_score']),
        'extractor': str(z['extractor']),
        'format_version': version,
        'metadata': json.loads(str(z['metadata'])) if 'metadata' in z.files else {},
    }


def _slug(s):
  return re.sub(r'[^A-Za-z0-9._-]+', '-', str(s)).strip('-') or 'none'


def stats_cache_path(cache_dir, dataset, split, resolution, extractor_name, count):
  """``<cache_dir>/<dataset>_<split>_<res>px_<extractor>_n<count|all>.npz`` (sanitised)."""
  n = 'all' if count is None else str(int(count))
  fname = '_'.join([_slug(dataset), _slug(split), f'{int(resolution)}px', _slug(extractor_name), f'n{n}'])
  return os.path.join(cache_dir, fname + '.npz')


def get_or_compute_reference_stats(images, extractor, *, dataset, split, resolution, count=None,
                                   batch_size, cache_dir=None, progress=False):
  """Load cached stats for (dataset, split, resolution, extractor, count), else compute + save.

  `images` as in :func:`compute_reference_stats` (pass a callable to avoid building the
  input pipeline when the cache hits). If `count` is given, exactly that many images are
  used (fewer available is an error). A cached file whose extractor name or count differs
  raises :class:`ReferenceStatsMismatch` rather than being silently reused or replaced.
  """
  name = inception.extractor_name(extractor)
  cache_dir = cache_dir or default_stats_cache_dir()
  path = stats_cache_path(cache_dir, dataset, split, resolution, name, count)
  if tf.io.gfile.exists(path) and not integrity.set_aside_if_damaged(
      path, 'cached reference statistics'):
    stats = load_stats(path)
    if stats['extractor'] != name:
      raise ReferenceStatsMismatch(
          f"{path} was computed with extractor {stats['extractor']!r}, not {name!r}; delete it "
          f'or use another cache_dir')
    if count is not None and stats['count'] != int(count):
      raise ReferenceStatsMismatch(
          f"{path} holds statistics of {stats['count']} images, expected {count}; delete it or "
          f'use another cache_dir')
    return stats
  stats = compute_reference_stats(images, extractor, batch_size=batch_size, limit=count,
                                  progress=progress)
  if count is not None and stats['count'] != int(count):
    raise ValueError(f'asked for statistics of {count} images but the input had only '
                     f"{stats['count']}")
  save_stats(path, stats, metadata={'dataset': dataset, 'split': split,
                                    'resolution': int(resolution)})
  stats = load_stats(path)  # return exactly what later calls will get
  return stats
