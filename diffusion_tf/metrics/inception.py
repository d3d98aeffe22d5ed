"""Inception graph for IS/FID: locate/download/cache/verify, preprocess, run.

This replaces what the original took from ``tensorflow-gan`` (which no longer imports on
TF >= 2.16): ``get_graph_def_from_url_tarball``, ``preprocess_image`` and ``run_inception``.

Network. The classic "inception-2015-12-05" network as frozen by tfgan: input ``Mul:0``
(299x299x3 float in [-1, 1]), outputs ``pool_3:0`` ([B, 1, 1, 2048], flattened to [B, 2048])
and ``logits:0`` ([B, 1008]). Two packagings exist: tfgan's default
(``frozen_inception_v1_2015_12_05.tar.gz`` / ``inceptionv1_for_inception_score.pb``) and the
TPU-compatible ``_v4`` tarball the original DDPM code pinned (``variant='tpu'``).

Where the graph comes from (:func:`locate_inception_graph`), first match wins:
  1. the ``path`` argument (a ``.pb`` or the ``.tar.gz``),
  2. the env var ``DIFFUSION_TF_INCEPTION_GRAPH`` (same),
  3. the cache dir: ``cache_dir`` argument, else ``$DIFFUSION_TF_CACHE/inception``, else
     ``~/.cache/diffusion_tf/inception``; the ``.pb`` there, else the tarball there,
  4. a one-time download of the tarball into the cache dir (only when ``download=True``;
     never at import time, unlike the original, which downloaded when ``tpu_utils`` was
     imported).
A tarball (from any source) is extracted into the cache dir once; later calls use the
extracted ``<cache dir>/<graph>.pb`` (delete it to re-extract).
Offline with no copy, :class:`InceptionGraphNotFound` names the URL, the paths to place the
file at, and the env var.

Checksums. No published SHA-256 of these tarballs or ``.pb`` files could be found, so none is
hard-coded (``PUBLISHED_SHA256`` is empty) -- we do not invent one. Instead:
  * trust-on-first-download: when we download or extract a file into the cache dir, its
    SHA-256 is written to a sidecar ``<file>.sha256``; every later load re-hashes the file
    and compares (a ``.pb`` found in the cache dir without a sidecar is trusted once and
    gets one);
  * pinning: ``sha256=`` or the env var ``DIFFUSION_TF_INCEPTION_SHA256`` gives the expected
    SHA-256 of the ``.pb`` (the extracted graph, not the tarball); when set, it is checked
    instead of the sidecar, for every source, including explicit paths;
  * an explicit ``.pb`` path is checked against its own sidecar if it has one; without a pin
    or sidecar it is used unverified (a warning is logged; we never write next to it).
A mismatch raises :class:`InceptionChecksumError` naming the file, expected and actual digest.

Feature-extractor protocol (used everywhere FID/IS is computed): any callable
``extractor(images) -> {'pool_3': [B, D], 'logits': [B, K]}`` where ``images`` is a uint8/int
or float batch [B, H, W, C] with values in [0, 255], grey (C = 1) or RGB (C = 3); outputs may
be tf.Tensors or arrays. Extractors convert channels with :func:`as_network_input` (the one
place where grey becomes RGB and RGB becomes grey) before their compiled functions.
An optional ``name`` attribute (str) identifies it in cache keys for reference statistics.
:class:`InceptionExtractor` (the real network) and :func:`make_random_projection_extractor`
(a tiny deterministic stand-in for tests / the built-in digits set) implement it.
"""

import hashlib
import logging
import os
import tarfile
import urllib.request
import uuid
import weakref

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

INCEPTION_URL = 'http://download.tensorflow.org/models/frozen_inception_v1_2015_12_05.tar.gz'
INCEPTION_FROZEN_GRAPH = 'inceptionv1_for_inception_score.pb'
# The TPU-compatible packaging pinned by the original DDPM code (tpu_utils.py).
INCEPTION_URL_TPU = 'http://download.tensorflow.org/models/frozen_inception_v1_2015_12_05_v4.tar.gz'
INCEPTION_FROZEN_GRAPH_TPU = 'inceptionv1_for_inception_score_tpu.pb'

INCEPTION_VARIANTS = {
    'default': (INCEPTION_URL, INCEPTION_FROZEN_GRAPH),
    'tpu': (INCEPTION_URL_TPU, INCEPTION_FROZEN_GRAPH_TPU),
}
# No published digest was found for either variant (see module docstring); fill in to pin.
PUBLISHED_SHA256 = {}

INCEPTION_INPUT = 'Mul:0'
INCEPTION_FINAL_POOL = 'pool_3:0'
INCEPTION_OUTPUT = 'logits:0'
INCEPTION_DEFAULT_IMAGE_SIZE = 299

ENV_GRAPH = 'DIFFUSION_TF_INCEPTION_GRAPH'
ENV_SHA256 = 'DIFFUSION_TF_INCEPTION_SHA256'
ENV_CACHE = 'DIFFUSION_TF_CACHE'

_CHUNK = 1 << 20
_TARBALL_SUFFIXES = ('.tar.gz', '.tgz', '.tar')


class InceptionGraphNotFound(FileNotFoundError):
  """No copy of the Inception graph is available (and it could not be downloaded)."""


class InceptionChecksumError(ValueError):
  """A file's SHA-256 does not match the pinned or recorded digest."""


# ----------------------------------------------------------------------------- files & checksums

def default_cache_root():
  """``$DIFFUSION_TF_CACHE``, else ``~/.cache/diffusion_tf``."""
  return os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser('~'), '.cache', 'diffusion_tf')


def default_inception_cache_dir():
  """``<cache root>/inception`` (see :func:`default_cache_root`)."""
  return os.path.join(default_cache_root(), 'inception')


def sha256_file(path):
  """Hex SHA-256 of a file (any tf.io.gfile path)."""
  h = hashlib.sha256()
  with tf.io.gfile.GFile(path, 'rb') as f:
    while True:
      chunk = f.read(_CHUNK)
      if not chunk:
        break
      h.update(chunk)
  return h.hexdigest()


def _normalize_digest(digest):
  digest = digest.strip().lower()
  if len(digest) != 64 or any(c not in '0123456789abcdef' for c in digest):
    raise ValueError(f'not a hex SHA-256 digest: {digest!r}')
  return digest


def _sidecar(path):
  return path + '.sha256'


def _atomic_write_bytes(path, data, overwrite=True):
  """Write via a temp file in the same directory, then rename (atomic on local/POSIX)."""
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  with tf.io.gfile.GFile(tmp, 'wb') as f:
    f.write(data)
  try:
    tf.io.gfile.rename(tmp, path, overwrite=overwrite)
  except BaseException:
    _remove_quietly(tmp)
    raise


def _remove_quietly(path):
  try:
    tf.io.gfile.remove(path)
  except (tf.errors.NotFoundError, OSError):
    pass


def _read_sidecar(path):
  side = _sidecar(path)
  if not tf.io.gfile.exists(side):
    return None
  with tf.io.gfile.GFile(side, 'r') as f:
    text = f.read().split()
  return _normalize_digest(text[0]) if text else None


def _write_sidecar(path, digest):
  # Same format as `sha256sum`: "<digest>  <file name>".
  _atomic_write_bytes(_sidecar(path), f'{digest}  {os.path.basename(path)}\n'.encode())


def _check_digest(path, expected, actual, source):
  if expected is not None and actual != expected:
    raise InceptionChecksumError(
        f'SHA-256 mismatch for {path}: expected {expected} ({source}), got {actual}. '
        f'The file is corrupt or not the expected graph; delete it (and {_sidecar(path)}) to '
        f're-download, or fix the pin ({ENV_SHA256} / sha256=).')


def _verify(path, pin, *, trust_on_first_use):
  """Check `path` against `pin`, else its sidecar; returns the actual digest.

  Without a pin or sidecar: writes a sidecar if `trust_on_first_use`, else only warns.
  """
  actual = sha256_file(path)
  if pin is not None:
    _check_digest(path, pin, actual, 'pinned')
    return actual
  recorded = _read_sidecar(path)
  if recorded is not None:
    _check_digest(path, recorded, actual, f'recorded in {_sidecar(path)}')
  elif trust_on_first_use:
    logger.warning('No checksum recorded for %s; trusting it and recording sha256=%s in %s',
                   path, actual, _sidecar(path))
    _write_sidecar(path, actual)
  else:
    logger.warning('Using %s unverified (sha256=%s): no pin (%s) and no %s sidecar.',
                   path, actual, ENV_SHA256, _sidecar(path))
  return actual


def _download_file(url, dest, timeout=60.):
  """Download `url` to `dest` (temp file + atomic rename). Tests replace this function."""
  tmp = f'{dest}.tmp-{uuid.uuid4().hex}'
  try:
    with urllib.request.urlopen(url, timeout=timeout) as resp, tf.io.gfile.GFile(tmp, 'wb') as f:
      while True:
        chunk = resp.read(_CHUNK)
        if not chunk:
          break
        f.write(chunk)
    tf.io.gfile.rename(tmp, dest, overwrite=True)
  except BaseException:
    _remove_quietly(tmp)
    raise


def _is_tarball(path):
  return path.lower().endswith(_TARBALL_SUFFIXES)


def _extract_graph(tar_path, member_name, dest_dir, pin):
  """Extract the ``.pb`` member from a tarball into `dest_dir`; returns the extracted path.

  The member is matched by basename (`member_name`, else the only ``.pb`` in the archive).
  The bytes are hashed while written to a temp file; only a file that matches `pin` (if
  any) is renamed into place, and its digest is recorded in a sidecar.
  """
  tf.io.gfile.makedirs(dest_dir)
  pb_members = []
  with tf.io.gfile.GFile(tar_path, 'rb') as fobj:
    # Two passes would re-read ~90 MB, so first look for `member_name` in streaming mode and
    # remember other .pb names for the fallback / error message.
    with tarfile.open(fileobj=fobj, mode='r|*') as tar:
      for member in tar:
        base = os.path.basename(member.name)
        if member.isfile() and base.endswith('.pb'):
          pb_members.append(member.name)
          if base == member_name:
            return _extract_member(tar, member, os.path.join(dest_dir, base), pin)
  if len(pb_members) == 1:
    with tf.io.gfile.GFile(tar_path, 'rb') as fobj, tarfile.open(fileobj=fobj, mode='r|*') as tar:
      for member in tar:
        if member.name == pb_members[0]:
          return _extract_member(tar, member, os.path.join(dest_dir, os.path.basename(member.name)), pin)
  raise InceptionGraphNotFound(
      f'{tar_path} does not contain {member_name!r} (graph members found: {pb_members}).')


def _extract_member(tar, member, dest, pin):
  src = tar.extractfile(member)
  h = hashlib.sha256()
  tmp = f'{dest}.tmp-{uuid.uuid4().hex}'
  try:
    with tf.io.gfile.GFile(tmp, 'wb') as f:
      while True:
        chunk = src.read(_CHUNK)
        if not chunk:
          break
        h.update(chunk)
        f.write(chunk)
    digest = h.hexdigest()
    _check_digest(dest, pin, digest, 'pinned')
    tf.io.gfile.rename(tmp, dest, overwrite=True)
  except BaseException:
    _remove_quietly(tmp)
    raise
  _write_sidecar(dest, digest)
  logger.info('Extracted %s (sha256=%s)', dest, digest)
  return dest


def locate_inception_graph(path=None, *, variant='default', cache_dir=None, download=True,
                           sha256=None, timeout=60.):
  """Return a local (or gfile) path to a verified Inception ``.pb``; see the module docstring.

  Args:
    path: explicit ``.pb`` or ``.tar.gz``; overrides env var and cache.
    variant: 'default' (tfgan's graph) or 'tpu' (the ``_v4`` graph the original used).
    cache_dir: where tarballs are downloaded/extracted (default: see module docstring).
    download: if False, never touch the network.
    sha256: expected SHA-256 of the ``.pb`` (overrides ``DIFFUSION_TF_INCEPTION_SHA256``).
    timeout: socket timeout of the download, in seconds.
  Raises:
    InceptionGraphNotFound, InceptionChecksumError.
  """
  if variant not in INCEPTION_VARIANTS:
    raise ValueError(f'variant must be one of {sorted(INCEPTION_VARIANTS)}, got {variant!r}')
  url, pb_name = INCEPTION_VARIANTS[variant]
  pin = sha256 or os.environ.get(ENV_SHA256) or PUBLISHED_SHA256.get(variant)
  pin = _normalize_digest(pin) if pin else None
  cache_dir = cache_dir or default_inception_cache_dir()

  source, origin = (path, 'the path argument') if path else (os.environ.get(ENV_GRAPH), ENV_GRAPH)
  if source:
    source = os.fspath(source)
    if not tf.io.gfile.exists(source):
      raise InceptionGraphNotFound(f'Inception graph {source!r} (from {origin}) does not exist.')
    if _is_tarball(source):
      cached_pb = os.path.join(cache_dir, pb_name)
      if tf.io.gfile.exists(cached_pb):  # already extracted earlier
        _verify(cached_pb, pin, trust_on_first_use=True)
        return cached_pb
      return _extract_graph(source, pb_name, cache_dir, pin)
    _verify(source, pin, trust_on_first_use=False)
    return source

  cached_pb = os.path.join(cache_dir, pb_name)
  if tf.io.gfile.exists(cached_pb):
    _verify(cached_pb, pin, trust_on_first_use=True)
    return cached_pb

  cached_tar = os.path.join(cache_dir, os.path.basename(url))
  if tf.io.gfile.exists(cached_tar):
    recorded = _read_sidecar(cached_tar)
    if recorded is not None:  # the tarball's own sidecar exists only if we downloaded it
      _check_digest(cached_tar, recorded, sha256_file(cached_tar), f'recorded in {_sidecar(cached_tar)}')
    return _extract_graph(cached_tar, pb_name, cache_dir, pin)

  def not_found(reason):
    return InceptionGraphNotFound(
        f'Inception graph {pb_name!r} ({variant} variant) not found, and {reason}.\n'
        f'Fix it in one of these ways:\n'
        f'  * download {url} and place it at {cached_tar}\n'
        f'  * or place the extracted {pb_name} at {cached_pb}\n'
        f'  * or set {ENV_GRAPH}=/path/to/{pb_name} (or to the .tar.gz), or pass path=...\n'
        f'  * or set {ENV_CACHE} to a cache root holding inception/{pb_name}.')

  if not download:
    raise not_found('downloading is disabled (download=False)')
  tf.io.gfile.makedirs(cache_dir)
  logger.info('Downloading %s to %s', url, cached_tar)
  try:
    _download_file(url, cached_tar, timeout=timeout)
  except Exception as e:  # network errors come in many types (URLError, timeout, OSError...)
    raise not_found(f'downloading {url} failed ({type(e).__name__}: {e})') from e
  _write_sidecar(cached_tar, sha256_file(cached_tar))  # trust-on-first-download
  return _extract_graph(cached_tar, pb_name, cache_dir, pin)


# ----------------------------------------------------------------------------- preprocessing

def preprocess_image(images, height=INCEPTION_DEFAULT_IMAGE_SIZE, width=INCEPTION_DEFAULT_IMAGE_SIZE):
  """tfgan's ``preprocess_image``: [B, H, W, C] (or [H, W, C]) in [0, 255] -> float32 in ~[-1, 1].

  Ints are cast to float32; TF1 legacy bilinear resize (``align_corners=False``, no
  half-pixel centres) to ``height x width``; then ``(x - 128) / 128``. Grey images (C = 1)
  are repeated to three channels first, as the network expects RGB.
  """
  images = tf.convert_to_tensor(images)
  is_single = images.shape.rank == 3
  if is_single:
    images = images[None]
  images = as_network_input(images, channels=3)
  resized = tf.raw_ops.ResizeBilinear(images=images, size=tf.constant([height, width], tf.int32),
                                      align_corners=False, half_pixel_centers=False)
  resized = (resized - 128.0) / 128.0
  if is_single:
    resized = resized[0]
  return resized


def as_network_input(images, channels=3):
  """Images [B, H, W, C] (C = 1 or 3, any dtype) as float32 [B, H, W, channels]: grey is
  repeated to RGB, RGB is averaged to grey (the digits network's input)."""
  images = tf.convert_to_tensor(images)
  if images.dtype != tf.float32:
    images = tf.cast(images, tf.float32)
  have = images.shape[-1]
  if images.shape.rank != 4 or have not in (1, 3):
    raise ValueError(f'expected images [B, H, W, C] with C = 1 (grey) or 3 (RGB), got shape '
                     f'{images.shape}')
  if have == channels:
    return images
  if channels == 3:
    return tf.tile(images, [1, 1, 1, 3])
  if channels == 1:
    return tf.reduce_mean(images, axis=-1, keepdims=True)
  raise ValueError(f'channels must be 1 or 3, got {channels!r}')


# ----------------------------------------------------------------------------- the network


def _flatten(x):
  """[B, ...] -> [B, prod(...)], keeping the static feature size when known."""
  if x.shape.rank == 2:
    return x
  inner = x.shape[1:]
  dim = int(np.prod(inner)) if inner.is_fully_defined() else -1
  return tf.reshape(x, [tf.shape(x)[0], dim])


class InceptionExtractor:
  """A frozen Inception GraphDef, run as a TF2 function.

  ``extractor(images)`` with images [B, H, W, C] (grey or RGB) in [0, 255] (uint8/int/float) returns
  ``{'pool_3': float32 [B, 2048], 'logits': float32 [B, 1008]}`` (shapes of the real graph).
  ``extractor.run_preprocessed(x)`` takes already preprocessed [B, 299, 299, 3] in [-1, 1]
  (the original's ``run_inception``). ``name`` identifies the graph in cache keys; by
  default it is derived from the SHA-256 of the serialized GraphDef.
  """

  def __init__(self, graph_def, *, name=None, input_tensor=INCEPTION_INPUT,
               output_tensors=(INCEPTION_FINAL_POOL, INCEPTION_OUTPUT),
               image_size=INCEPTION_DEFAULT_IMAGE_SIZE):
    if name is None:
      digest = hashlib.sha256(graph_def.SerializeToString(deterministic=True)).hexdigest()
      name = f'inception_graph_{digest[:16]}'
    self.name = name
    self.image_size = image_size
    output_tensors = list(output_tensors)

    def _import(x):
      # input_map replaces `Mul:0` by our batch-flexible input, exactly as tfgan did.
      return tf.compat.v1.import_graph_def(graph_def, input_map={input_tensor: x},
                                           return_elements=output_tensors, name='inception')

    self._wrapped = tf.compat.v1.wrap_function(
        _import, [tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    # prune() keeps only the subgraph from our input to the outputs, so the graph's own
    # (unfed) JPEG-decoding input ops upstream of `Mul` are dropped.
    self._graph_fn = self._wrapped.prune(self._wrapped.inputs[0], self._wrapped.outputs)
    self._run_preprocessed = tf.function(
        self._run_preprocessed_impl,
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    self._run_raw = tf.function(
        self._run_raw_impl, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])

  def _run_preprocessed_impl(self, x):
    pool_3, logits = self._graph_fn(x)
    return {'pool_3': _flatten(pool_3), 'logits': _flatten(logits)}

  def _run_raw_impl(self, images):
    return self._run_preprocessed_impl(preprocess_image(images, self.image_size, self.image_size))

  def run_preprocessed(self, x):
    """x: float32 [B, 299, 299, 3] in [-1, 1] -> {'pool_3' [B, D], 'logits' [B, K]}."""
    return self._run_preprocessed(as_network_input(x, channels=3))

  def __call__(self, images):
    """images: [B, H, W, C] in [0, 255] -> {'pool_3' [B, D], 'logits' [B, K]} float32."""
    return self._run_raw(as_network_input(images, channels=3))


def load_inception_graph(graph_def_or_path, *, name=None):
  """Build an :class:`InceptionExtractor` from a GraphDef, serialized bytes, or a ``.pb`` path."""
  graph_def = graph_def_or_path
  if isinstance(graph_def, (str, os.PathLike)):
    with tf.io.gfile.GFile(os.fspath(graph_def), 'rb') as f:
      graph_def = f.read()
  if isinstance(graph_def, bytes):
    graph_def = tf.compat.v1.GraphDef.FromString(graph_def)
  if not isinstance(graph_def, tf.compat.v1.GraphDef):
    raise TypeError(f'expected a GraphDef, bytes or a path, got {type(graph_def_or_path)}')
  return InceptionExtractor(graph_def, name=name)


def make_inception_extractor(path=None, *, variant='default', cache_dir=None, download=True,
                             sha256=None, name=None):
  """:func:`locate_inception_graph` + :func:`load_inception_graph`."""
  pb = locate_inception_graph(path, variant=variant, cache_dir=cache_dir, download=download,
                              sha256=sha256)
  return load_inception_graph(pb, name=name)


class RandomProjectionExtractor:
  """Tiny deterministic stand-in for Inception (tests, the built-in digits set).

  images [B, H, W, C] (grey or RGB) in [0, 255] -> legacy-bilinear resize to 32x32 and (x - 128) / 128 (as
  for Inception) -> fixed random 3x3 conv (16 ch) + ReLU -> 8x8 average pooling (4x4 grid)
  -> fixed random projection + tanh = 'pool_3' [B, dim] -> fixed random linear map =
  'logits' [B, num_logits]. Weights come from ``np.random.RandomState(seed)`` only, so
  every instance with the same arguments computes the same function.
  """

  _VERSION = 1  # bump if the architecture changes: the name is part of stats cache keys
  _SIZE, _CH, _POOL = 32, 16, 8

  def __init__(self, dim=64, num_logits=10, seed=0):
    rs = np.random.RandomState(seed)
    flat = (self._SIZE // self._POOL) ** 2 * self._CH
    self.name = f'random_projection_v{self._VERSION}_d{dim}_k{num_logits}_s{seed}'
    self.dim, self.num_logits = dim, num_logits
    self._w_conv = tf.constant(rs.randn(3, 3, 3, self._CH) / np.sqrt(27.), tf.float32)
    self._b_conv = tf.constant(0.1 * rs.randn(self._CH), tf.float32)
    self._w_proj = tf.constant(rs.randn(flat, dim) / np.sqrt(flat), tf.float32)
    # x3 makes the softmax reasonably peaked, so IS is not trivially ~1.
    self._w_logits = tf.constant(3. * rs.randn(dim, num_logits) / np.sqrt(dim), tf.float32)
    self._fn = tf.function(self._impl, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])

  def _impl(self, images):
    x = preprocess_image(images, self._SIZE, self._SIZE)
    h = tf.nn.relu(tf.nn.conv2d(x, self._w_conv, strides=1, padding='SAME') + self._b_conv)
    h = tf.nn.avg_pool2d(h, ksize=self._POOL, strides=self._POOL, padding='VALID')
    feats = tf.tanh(tf.matmul(_flatten(h), self._w_proj))
    return {'pool_3': feats, 'logits': tf.matmul(feats, self._w_logits)}

  def __call__(self, images):
    """images: [B, H, W, C] in [0, 255] -> {'pool_3' [B, dim], 'logits' [B, num_logits]} float32."""
    return self._fn(as_network_input(images, channels=3))


def make_random_projection_extractor(dim=64, num_logits=10, seed=0):
  """A :class:`RandomProjectionExtractor`; its ``name`` encodes (dim, num_logits, seed)."""
  return RandomProjectionExtractor(dim=dim, num_logits=num_logits, seed=seed)


# ----------------------------------------------------------------------------- running

def extractor_name(extractor):
  """The extractor's ``name`` attribute (required wherever results are cached)."""
  name = getattr(extractor, 'name', None)
  if not isinstance(name, str) or not name:
    raise ValueError(f'feature extractor {extractor!r} has no `name` attribute; one is needed '
                     f'to key cached statistics')
  return name


# Per-extractor cache of tf.functions wrapping strategy.run, so we trace once per strategy.
_replica_fns = weakref.WeakKeyDictionary()


def _distributed_fn(extractor, strategy):
  def make():
    @tf.function
    def step(values):
      return strategy.run(extractor, args=(values,))
    return step

  try:
    per_strategy = _replica_fns.setdefault(extractor, weakref.WeakKeyDictionary())
  except TypeError:  # not weak-referenceable: no caching
    return make()
  if strategy not in per_strategy:
    per_strategy[strategy] = make()
  return per_strategy[strategy]


def _as_2d_float64(x):
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2:
    x = x.reshape(x.shape[0], -1)
  return x


def extract_batch(extractor, images):
  """Run `extractor` on one batch [b, H, W, C]; returns {'pool_3', 'logits'} float64 arrays.

  If a tf.distribute strategy with several replicas is active (cross-replica context), the
  batch is split evenly over the replicas (padded by repeating the last image, then the
  padding is dropped); otherwise it runs on the default device.
  """
  b = int(images.shape[0])
  strategy = tf.distribute.get_strategy()
  n = strategy.num_replicas_in_sync
  if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context() and n > 1:
    images = np.asarray(images)
    per = -(-b // n)
    pad = per * n - b
    if pad:
      images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)], axis=0)
    chunks = [images[i * per:(i + 1) * per] for i in range(n)]
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(chunks[ctx.replica_id_in_sync_group]))
    out = _distributed_fn(extractor, strategy)(values)
    out = {k: np.concatenate([np.asarray(t) for t in strategy.experimental_local_results(v)], axis=0)[:b]
           for k, v in out.items()}
  else:
    out = extractor(images)
  res = {k: _as_2d_float64(out[k]) for k in ('pool_3', 'logits')}
  for k, v in res.items():
    if v.shape[0] != b:
      raise ValueError(f'extractor returned {k} with {v.shape[0]} rows for a batch of {b}')
  return res


def iter_image_batches(images, batch_size, limit=None):
  """Yield batches [<=batch_size, H, W, C] (arrays or tensors) from an array/tensor [N, H, W, C]
  or an iterable of batches (arrays, tensors, or dicts with an 'image' key, e.g. a batched
  tf.data.Dataset from ``datasets.py``), stopping after `limit` images if given."""
  if isinstance(images, (np.ndarray, tf.Tensor)):
    if len(images.shape) != 4:
      raise ValueError(f'expected images [N, H, W, C], got shape {images.shape}')
    array = images  # bind now: the generator below must not see the rebinding of `images`
    images = (array[i:i + batch_size] for i in range(0, int(array.shape[0]), batch_size))
  seen = 0
  for batch in images:
    if isinstance(batch, dict):
      batch = batch['image']
    if len(batch.shape) != 4:
      raise ValueError(f'expected batches [B, H, W, C], got shape {batch.shape}')
    for i in range(0, int(batch.shape[0]), batch_size):
      chunk = batch[i:i + batch_size]
      if limit is not None and seen + int(chunk.shape[0]) > limit:
        chunk = chunk[:limit - seen]
      if int(chunk.shape[0]) == 0:
        break
      seen += int(chunk.shape[0])
      yield chunk
    if limit is not None and seen >= limit:
      return


def _progress(iterable, enabled, total=None, desc=None):
  if not enabled:
    return iterable
  from tqdm import tqdm
  return tqdm(iterable, total=total, desc=desc, unit='batch')


def run_inception(images, extractor, *, batch_size=64, limit=None, progress=False):
  """Features of all images: {'pool_3': float64 [N, D], 'logits': float64 [N, K]}.

  images: array/tensor [N, H, W, C] in [0, 255] or an iterable of batches (see
  :func:`iter_image_batches`); extractor: any callable of the protocol in the module
  docstring, e.g. an :class:`InceptionExtractor`. Runs in batches of `batch_size` (split
  over replicas when a tf.distribute strategy is active, see :func:`extract_batch`).
  """
  total = None
  if isinstance(images, (np.ndarray, tf.Tensor)):
    n = int(images.shape[0]) if limit is None else min(limit, int(images.shape[0]))
    total = -(-n // batch_size)
  outs = {'pool_3': [], 'logits': []}
  for batch in _progress(iter_image_batches(images, batch_size, limit), progress, total, 'inception'):
    res = extract_batch(extractor, batch)
    for k in outs:
      outs[k].append(res[k])
  if not outs['pool_3']:
    raise ValueError('run_inception got no images')
  return {k: np.concatenate(v, axis=0) for k, v in outs.items()}
