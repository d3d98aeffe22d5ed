"""inception.py and reference_stats.py, with a small stand-in frozen graph built here.

The stand-in graph has the real graph's tensor names: an unfed upstream placeholder (like the
real graph's JPEG-decoding input) -> ``Mul:0`` [None, 299, 299, 3] -> 1x1 "conv" + ReLU ->
``pool_3:0`` [None, 1, 1, D] -> ``logits:0`` [None, K]; we check the whole locate / verify /
load / preprocess / run path against a NumPy computation of that graph.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf.tpu_utils import classifier_metrics_numpy as cm
from diffusion_tf.metrics import inception
from diffusion_tf.metrics import reference_stats as rstats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, K = 8, 5
_RS = np.random.RandomState(0)
W_FEAT = _RS.randn(3, D).astype(np.float32)
W_LOGITS = _RS.randn(D, K).astype(np.float32)
B_LOGITS = _RS.randn(K).astype(np.float32)
# Read before the autouse fixture clears it, to optionally test the real graph.
REAL_GRAPH = os.environ.get(inception.ENV_GRAPH)


# ----------------------------------------------------------------------------- fixtures & refs

@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
  """No user env leaks in, and the default cache root is a temp dir (never ~/.cache)."""
  for var in (inception.ENV_GRAPH, inception.ENV_SHA256):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv(inception.ENV_CACHE, str(tmp_path / 'default_cache_root'))

  def no_network(url, dest, timeout=60.):
    raise AssertionError(f'unexpected download of {url}')
  monkeypatch.setattr(inception, '_download_file', no_network)


def _build_graph_def():
  g = tf.Graph()
  with g.as_default():
    raw = tf.compat.v1.placeholder(tf.float32, [None, 299, 299, 3], name='ResizeBilinear')
    sub = tf.subtract(raw, 128., name='Sub')
    mul = tf.multiply(sub, 1. / 128., name='Mul')
    h = tf.nn.relu(tf.einsum('bhwc,cd->bhwd', mul, tf.constant(W_FEAT)))
    pool = tf.reduce_mean(h, axis=[1, 2], keepdims=True, name='pool_3')
    logits = tf.add(tf.matmul(tf.reshape(pool, [-1, D]), tf.constant(W_LOGITS)), tf.constant(B_LOGITS),
                    name='logits')
  assert mul.name == 'Mul:0' and mul.shape.as_list() == [None, 299, 299, 3]
  assert pool.name == 'pool_3:0' and pool.shape.as_list() == [None, 1, 1, D]
  assert logits.name == 'logits:0' and logits.shape.as_list() == [None, K]
  return g.as_graph_def()


@pytest.fixture(scope='module')
def graph_files(tmp_path_factory):
  """The stand-in graph as GraphDef, .pb file and tarballs laid out like the real ones."""
  d = tmp_path_factory.mktemp('graph')
  graph_def = _build_graph_def()
  pb_bytes = graph_def.SerializeToString()
  pb = d / inception.INCEPTION_FROZEN_GRAPH
  pb.write_bytes(pb_bytes)
  tars = {}
  for variant, (url, member) in inception.INCEPTION_VARIANTS.items():
    member_file = d / member
    member_file.write_bytes(pb_bytes)
    tars[variant] = d / os.path.basename(url)
    with tarfile.open(tars[variant], 'w:gz') as tar:
      tar.add(member_file, arcname=member)  # members sit at the top level, as tfgan expects
  return {'graph_def': graph_def, 'pb': str(pb), 'pb_bytes': pb_bytes, 'tars': tars,
          'sha256': hashlib.sha256(pb_bytes).hexdigest()}


@pytest.fixture(scope='module')
def extractor(graph_files):
  return inception.load_inception_graph(graph_files['pb'])


def legacy_resize_bilinear_np(x, out_h, out_w):
  """TF1 resize_bilinear(align_corners=False, half_pixel_centers=False) in NumPy, float64."""
  x = np.asarray(x, np.float64)

  def coords(n_in, n_out):
    src = np.arange(n_out) * (n_in / n_out)          # no half-pixel offset
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)                # clamp at the border
    return lo, hi, src - lo

  y0, y1, fy = coords(x.shape[1], out_h)
  x0, x1, fx = coords(x.shape[2], out_w)
  fx = fx[None, None, :, None]
  top = x[:, y0][:, :, x0] * (1 - fx) + x[:, y0][:, :, x1] * fx
  bottom = x[:, y1][:, :, x0] * (1 - fx) + x[:, y1][:, :, x1] * fx
  fy = fy[None, :, None, None]
  return top * (1 - fy) + bottom * fy


def reference_outputs(images):
  """NumPy forward pass of the stand-in graph, fed at Mul:0 with tfgan's preprocessing."""
  pre = (legacy_resize_bilinear_np(images, 299, 299) - 128.) / 128.
  pool = np.maximum(pre @ W_FEAT, 0.).mean(axis=(1, 2))
  return {'pool_3': pool, 'logits': pool @ W_LOGITS + B_LOGITS}


def _images(n, size=8, seed=1):
  return np.random.RandomState(seed).randint(0, 256, size=(n, size, size, 3)).astype(np.uint8)


def _assert_matches_reference(out, images):
  ref = reference_outputs(images)
  for k in ('pool_3', 'logits'):
    got = np.asarray(out[k])
    assert got.shape == ref[k].shape, (k, got.shape)
    np.testing.assert_allclose(got, ref[k], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- preprocessing

@pytest.mark.parametrize('in_hw,out_hw', [((5, 7), (299, 299)), ((8, 8), (3, 4)), ((6, 9), (11, 13)),
                                          ((5, 7), (5, 7))])
def test_legacy_bilinear_resize_matches_numpy(in_hw, out_hw):
  x = np.random.RandomState(2).uniform(0, 255, size=(2, *in_hw, 3)).astype(np.float32)
  got = inception.preprocess_image(x, *out_hw).numpy()
  assert got.dtype == np.float32 and got.shape == (2, *out_hw, 3)
  ref = (legacy_resize_bilinear_np(x, *out_hw) - 128.) / 128.
  np.testing.assert_allclose(got, ref, atol=2e-6)


def test_preprocess_ints_single_images_and_not_half_pixel():
  x = _images(2, size=6)
  got = inception.preprocess_image(x).numpy()  # uint8 is cast to float, default size 299
  np.testing.assert_allclose(got, (legacy_resize_bilinear_np(x, 299, 299) - 128.) / 128., atol=2e-6)
  np.testing.assert_allclose(inception.preprocess_image(x[0]).numpy(), got[0], atol=1e-7)
  np.testing.assert_allclose(inception.preprocess_image(x.astype(np.int32)).numpy(), got, atol=1e-7)
  # TF2's default resize uses half-pixel centres and would change FIDs: make sure it's not used.
  tf2 = (tf.image.resize(x.astype(np.float32), [299, 299], method='bilinear').numpy() - 128.) / 128.
  assert np.abs(tf2 - got).max() > 0.05


def test_preprocess_grey_images_as_rgb():
  """Grey images (e.g. the built-in digits, C = 1) go to the network as three equal channels."""
  x = _images(2, size=6)[..., :1]
  got = inception.preprocess_image(x).numpy()
  assert got.shape == (2, 299, 299, 3)
  np.testing.assert_array_equal(got, inception.preprocess_image(np.repeat(x, 3, -1)).numpy())


# ----------------------------------------------------------------------------- load and run

@pytest.mark.numerics
def test_load_and_run_matches_numpy(graph_files, extractor):
  x = _images(3)
  out = extractor(x)
  assert out['pool_3'].dtype == tf.float32 and out['pool_3'].shape == (3, D)  # flattened from [B,1,1,D]
  _assert_matches_reference(out, x)
  # floats in [0, 255] (un-quantised samples) work too, and equal ints when integral
  np.testing.assert_allclose(extractor(x.astype(np.float32))['logits'], out['logits'], atol=1e-6)
  # run_preprocessed is the original's run_inception (input already at 299 in [-1, 1])
  pre = inception.preprocess_image(x)
  np.testing.assert_allclose(extractor.run_preprocessed(pre)['pool_3'], out['pool_3'], atol=1e-6)
  # usable inside tf.function
  fn = tf.function(lambda im: extractor(im)['logits'])
  np.testing.assert_allclose(fn(tf.constant(x)), out['logits'], atol=1e-6)


def test_load_from_graphdef_bytes_and_path_agree(graph_files, extractor):
  from_def = inception.load_inception_graph(graph_files['graph_def'])
  from_bytes = inception.load_inception_graph(graph_files['pb_bytes'], name='custom')
  assert from_def.name == extractor.name and extractor.name.startswith('inception_graph_')
  assert from_bytes.name == 'custom'
  x = _images(2, seed=5)
  np.testing.assert_allclose(from_bytes(x)['pool_3'], extractor(x)['pool_3'], atol=1e-6)
  other = _build_graph_def()
  other.node[1].attr['value'].tensor.float_val[:] = [127.]  # a different graph -> a different name
  assert inception.load_inception_graph(other).name != extractor.name
  with pytest.raises(TypeError):
    inception.load_inception_graph(12)


def test_run_inception_batching_iterables_and_limit(extractor):
  x = _images(5, seed=3)
  full = inception.run_inception(x, extractor, batch_size=5)
  assert full['pool_3'].dtype == np.float64 and full['pool_3'].shape == (5, D)
  _assert_matches_reference(full, x)
  batched = inception.run_inception(x, extractor, batch_size=2, progress=True)
  for k in full:
    np.testing.assert_allclose(batched[k], full[k], atol=1e-6)
  ds = tf.data.Dataset.from_tensor_slices({'image': x.astype(np.int32)}).batch(3)  # like datasets.py
  from_ds = inception.run_inception(ds, extractor, batch_size=2)
  np.testing.assert_allclose(from_ds['logits'], full['logits'], atol=1e-6)
  limited = inception.run_inception(ds, extractor, batch_size=2, limit=4)
  np.testing.assert_allclose(limited['logits'], full['logits'][:4], atol=1e-6)
  with pytest.raises(ValueError):
    inception.run_inception(x[:0], extractor)


# ----------------------------------------------------------------------------- locate & verify

def test_locate_explicit_pb_path(graph_files):
  assert inception.locate_inception_graph(graph_files['pb'], download=False) == graph_files['pb']
  # nothing written next to a user's file
  assert not os.path.exists(graph_files['pb'] + '.sha256')
  with pytest.raises(inception.InceptionGraphNotFound, match='does-not-exist.pb'):
    inception.locate_inception_graph('/nonexistent/does-not-exist.pb')


def test_locate_env_var_pb_and_tarball(graph_files, monkeypatch, tmp_path):
  monkeypatch.setenv(inception.ENV_GRAPH, graph_files['pb'])
  assert inception.locate_inception_graph(cache_dir=str(tmp_path / 'unused')) == graph_files['pb']
  # the explicit argument wins over the env var
  monkeypatch.setenv(inception.ENV_GRAPH, '/nonexistent/x.pb')
  assert inception.locate_inception_graph(graph_files['pb']) == graph_files['pb']

  cache = tmp_path / 'cache'
  monkeypatch.setenv(inception.ENV_GRAPH, str(graph_files['tars']['default']))
  pb = inception.locate_inception_graph(cache_dir=str(cache))
  assert pb == str(cache / inception.INCEPTION_FROZEN_GRAPH)
  assert open(pb, 'rb').read() == graph_files['pb_bytes']
  assert open(pb + '.sha256').read().split()[0] == graph_files['sha256']
  assert not [f for f in os.listdir(cache) if '.tmp-' in f]  # temp files renamed or removed
  x = _images(2, seed=7)
  _assert_matches_reference(inception.load_inception_graph(pb)(x), x)


def test_locate_cache_dir_trusts_once_then_detects_changes(graph_files, tmp_path, monkeypatch):
  root = tmp_path / 'root'
  monkeypatch.setenv(inception.ENV_CACHE, str(root))
  target = root / 'inception' / inception.INCEPTION_FROZEN_GRAPH
  target.parent.mkdir(parents=True)
  shutil.copy(graph_files['pb'], target)
  assert inception.locate_inception_graph(download=False) == str(target)
  side = str(target) + '.sha256'
  assert open(side).read().split()[0] == graph_files['sha256']  # trust-on-first-use recorded
  assert inception.locate_inception_graph(download=False) == str(target)

  with open(target, 'ab') as f:  # corrupt the cached graph
    f.write(b'\0')
  with pytest.raises(inception.InceptionChecksumError) as e:
    inception.locate_inception_graph(download=False)
  msg = str(e.value)
  assert str(target) in msg and graph_files['sha256'] in msg
  assert hashlib.sha256(target.read_bytes()).hexdigest() in msg


@pytest.mark.parametrize('variant', ['default', 'tpu'])
def test_download_once_then_cached(graph_files, tmp_path, monkeypatch, variant):
  url, member = inception.INCEPTION_VARIANTS[variant]
  calls = []

  def fake_download(u, dest, timeout=60.):
    calls.append(u)
    shutil.copy(graph_files['tars'][variant], dest)
  monkeypatch.setattr(inception, '_download_file', fake_download)
  cache = tmp_path / 'c'
  pb = inception.locate_inception_graph(variant=variant, cache_dir=str(cache))
  assert calls == [url]
  assert pb == str(cache / member)
  tar = cache / os.path.basename(url)
  assert tar.exists() and os.path.exists(str(tar) + '.sha256')
  assert open(str(tar) + '.sha256').read().split()[0] == hashlib.sha256(tar.read_bytes()).hexdigest()

  def offline(u, dest, timeout=60.):
    raise OSError('network is unreachable')
  monkeypatch.setattr(inception, '_download_file', offline)
  assert inception.locate_inception_graph(variant=variant, cache_dir=str(cache)) == pb
  # the .pb removed: re-extracted from the cached tarball, still without network
  os.remove(pb)
  assert inception.locate_inception_graph(variant=variant, cache_dir=str(cache)) == pb
  assert open(pb, 'rb').read() == graph_files['pb_bytes']


@pytest.mark.parametrize('download', [False, True])
def test_missing_graph_offline_error(tmp_path, monkeypatch, download):
  def offline(u, dest, timeout=60.):
    raise OSError('network is unreachable')
  monkeypatch.setattr(inception, '_download_file', offline)
  cache = tmp_path / 'empty'
  with pytest.raises(inception.InceptionGraphNotFound) as e:
    inception.locate_inception_graph(variant='tpu', cache_dir=str(cache), download=download)
  assert isinstance(e.value, FileNotFoundError)
  msg = str(e.value)
  assert inception.INCEPTION_URL_TPU in msg
  assert str(cache / os.path.basename(inception.INCEPTION_URL_TPU)) in msg
  assert str(cache / inception.INCEPTION_FROZEN_GRAPH_TPU) in msg
  assert inception.ENV_GRAPH in msg
  assert ('network is unreachable' in msg) == download
  assert not cache.exists() or not os.listdir(cache)  # no partial files left behind


def test_pinned_checksum(graph_files, tmp_path, monkeypatch):
  good, bad = graph_files['sha256'], '0' * 64
  assert inception.locate_inception_graph(graph_files['pb'], sha256=good.upper()) == graph_files['pb']
  with pytest.raises(inception.InceptionChecksumError) as e:
    inception.locate_inception_graph(graph_files['pb'], sha256=bad)
  assert graph_files['pb'] in str(e.value) and bad in str(e.value) and good in str(e.value)

  # a wrong pin (env var) while extracting: nothing is left in the cache
  monkeypatch.setenv(inception.ENV_SHA256, bad)
  cache = tmp_path / 'pin'
  with pytest.raises(inception.InceptionChecksumError):
    inception.locate_inception_graph(str(graph_files['tars']['default']), cache_dir=str(cache))
  assert not os.path.exists(cache / inception.INCEPTION_FROZEN_GRAPH)
  monkeypatch.setenv(inception.ENV_SHA256, good)
  pb = inception.locate_inception_graph(str(graph_files['tars']['default']), cache_dir=str(cache))
  assert open(pb, 'rb').read() == graph_files['pb_bytes']
  with pytest.raises(ValueError, match='SHA-256'):
    inception.locate_inception_graph(graph_files['pb'], sha256='xyz')


def test_explicit_pb_with_wrong_sidecar(graph_files, tmp_path):
  pb = tmp_path / 'g.pb'
  shutil.copy(graph_files['pb'], pb)
  (tmp_path / 'g.pb.sha256').write_text('f' * 64 + '  g.pb\n')
  with pytest.raises(inception.InceptionChecksumError, match='f' * 64):
    inception.locate_inception_graph(str(pb))
  (tmp_path / 'g.pb.sha256').write_text(graph_files['sha256'] + '  g.pb\n')
  assert inception.locate_inception_graph(str(pb)) == str(pb)


def test_tarball_without_graph(tmp_path):
  bad = tmp_path / 'frozen_inception_v1_2015_12_05.tar.gz'
  readme = tmp_path / 'README'
  readme.write_text('no graph here')
  with tarfile.open(bad, 'w:gz') as tar:
    tar.add(readme, arcname='README')
  with pytest.raises(inception.InceptionGraphNotFound, match=inception.INCEPTION_FROZEN_GRAPH):
    inception.locate_inception_graph(str(bad), cache_dir=str(tmp_path / 'c'))


def _run_python(code, env_extra=None):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
             TF_CPP_MIN_LOG_LEVEL='2', **(env_extra or {}))
  res = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-3000:]
  return res.stdout


@pytest.mark.slow
def test_import_does_not_download(tmp_path):
  # The original downloaded the graph when tpu_utils was imported; we must not.
  out = _run_python("""
      import socket, urllib.request
      def boom(*a, **k):
          raise AssertionError('network used at import time')
      urllib.request.urlopen = boom
      socket.socket.connect = boom
      from diffusion_tf.metrics import inception, reference_stats
      print('imported')
      """, {inception.ENV_CACHE: str(tmp_path / 'root')})
  assert 'imported' in out
  assert not (tmp_path / 'root').exists()


@pytest.mark.slow
def test_run_inception_under_mirrored_strategy():
  # Needs 2 logical CPUs, which must be configured before TF initialises: use a subprocess.
  out = _run_python("""
      import numpy as np, tensorflow as tf
      cpu = tf.config.list_physical_devices('CPU')[0]
      tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
      import sys; sys.path.insert(0, 'tests')
      import test_inception as T
      from diffusion_tf.metrics import inception
      x = np.random.RandomState(0).randint(0, 256, size=(7, 16, 16, 3)).astype(np.uint8)
      strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
      assert strategy.num_replicas_in_sync == 2
      for ex, d in [(inception.make_random_projection_extractor(), 64),
                    (inception.load_inception_graph(T._build_graph_def()), T.D)]:
          ref = inception.run_inception(x, ex, batch_size=4)
          with strategy.scope():
              out = inception.run_inception(x, ex, batch_size=4)  # 4 -> 2+2, 3 -> padded 2+2
          assert out['pool_3'].shape == (7, d), out['pool_3'].shape
          for k in ref:
              np.testing.assert_allclose(out[k], ref[k], atol=1e-5)
      T._assert_matches_reference(out, x)
      print('ok')
      """)
  assert out.strip().endswith('ok')


@pytest.mark.skipif(not REAL_GRAPH, reason=f'set {inception.ENV_GRAPH} to test the real Inception graph')
def test_real_inception_graph():
  ex = inception.make_inception_extractor(REAL_GRAPH, cache_dir=os.path.dirname(REAL_GRAPH))
  out = ex(_images(2, size=32))
  assert out['pool_3'].shape == (2, 2048) and out['logits'].shape == (2, 1008)


# ----------------------------------------------------------------------------- stand-in extractor

def test_random_projection_extractor_deterministic():
  x = _images(4, size=16, seed=9)
  a = inception.make_random_projection_extractor(dim=32, num_logits=7, seed=3)
  b = inception.make_random_projection_extractor(dim=32, num_logits=7, seed=3)
  c = inception.make_random_projection_extractor(dim=32, num_logits=7, seed=4)
  oa, ob, oc = a(x), b(x), c(x)
  assert oa['pool_3'].shape == (4, 32) and oa['logits'].shape == (4, 7)
  for k in oa:
    np.testing.assert_array_equal(oa[k], ob[k])
  assert np.abs(oa['pool_3'].numpy() - oc['pool_3'].numpy()).max() > 1e-3
  assert a.name == b.name != c.name and 'd32' in a.name and 'k7' in a.name
  # informative features: different images map to different points
  feats = oa['pool_3'].numpy()
  assert np.linalg.matrix_rank(feats - feats.mean(0)) == 3
  np.testing.assert_allclose(a(x.astype(np.float32))['logits'], oa['logits'], atol=1e-6)


# ----------------------------------------------------------------------------- reference stats

class CountingExtractor:
  def __init__(self, inner, name=None):
    self.inner, self.calls = inner, 0
    self.name = name or inner.name

  def __call__(self, images):
    self.calls += 1
    return self.inner(images)


@pytest.mark.numerics
def test_compute_reference_stats_matches_direct_computation():
  ex = inception.make_random_projection_extractor(dim=16)
  x = _images(50, size=12, seed=11)
  feats = inception.run_inception(x, ex, batch_size=50)
  stats = rstats.compute_reference_stats(x, ex, batch_size=7)  # streamed over 8 batches
  assert stats['count'] == 50 and stats['extractor'] == ex.name
  assert stats['mu'].dtype == np.float64 and stats['sigma'].shape == (16, 16)
  np.testing.assert_allclose(stats['mu'], feats['pool_3'].mean(0), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(stats['sigma'], np.cov(feats['pool_3'], rowvar=False), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(stats['inception_score'], cm.classifier_score_from_logits(feats['logits']),
                             rtol=1e-6)
  # FID from cached moments == FID from activations
  gen = inception.run_inception(_images(40, size=12, seed=12), ex)
  np.testing.assert_allclose(
      rstats.fid_from_stats(stats, {'mu': gen['pool_3'].mean(0), 'sigma': np.cov(gen['pool_3'], rowvar=False)}),
      cm.frechet_classifier_distance_from_activations(feats['pool_3'], gen['pool_3']), rtol=1e-6)
  assert abs(rstats.fid_from_stats(stats, stats)) < 1e-8
  limited = rstats.compute_reference_stats(x, ex, batch_size=7, limit=20)
  assert limited['count'] == 20
  np.testing.assert_allclose(limited['mu'], feats['pool_3'][:20].mean(0), rtol=1e-6, atol=1e-9)


def test_get_or_compute_caches_and_verifies(tmp_path):
  ex = CountingExtractor(inception.make_random_projection_extractor(dim=16))
  x = _images(30, size=8, seed=13)
  made = []

  def images():  # lazily built input, like a dataset input_fn
    made.append(1)
    return x
  kw = dict(dataset='digits', split='train', resolution=8, count=24, batch_size=10,
            cache_dir=str(tmp_path))
  first = rstats.get_or_compute_reference_stats(images, ex, **kw)
  assert ex.calls == 3 and made == [1] and first['count'] == 24
  path = rstats.stats_cache_path(str(tmp_path), 'digits', 'train', 8, ex.name, 24)
  assert os.path.exists(path)
  assert os.path.basename(path) == 'digits_train_8px_random_projection_v1_d16_k10_s0_n24.npz'

  second = rstats.get_or_compute_reference_stats(images, ex, **kw)
  assert ex.calls == 3 and made == [1]  # loaded from the file: extractor and input untouched
  for k in ('mu', 'sigma'):
    np.testing.assert_array_equal(second[k], first[k])
  assert second['inception_score'] == first['inception_score']
  assert second['metadata'] == {'dataset': 'digits', 'split': 'train', 'resolution': 8}

  # a file whose contents do not match its key is not silently reused
  wrong = dict(first, extractor='something_else')
  rstats.save_stats(path, wrong, overwrite=True)
  with pytest.raises(rstats.ReferenceStatsMismatch, match='something_else'):
    rstats.get_or_compute_reference_stats(images, ex, **kw)
  rstats.save_stats(path, dict(first, count=99), overwrite=True)
  with pytest.raises(rstats.ReferenceStatsMismatch, match='99'):
    rstats.get_or_compute_reference_stats(images, ex, **kw)
  # asking for more images than exist is an error, and nothing is cached
  with pytest.raises(ValueError, match='only 30'):
    rstats.get_or_compute_reference_stats(x, ex, **dict(kw, count=100))
  assert not os.path.exists(rstats.stats_cache_path(str(tmp_path), 'digits', 'train', 8, ex.name, 100))
  with pytest.raises(ValueError, match='name'):
    rstats.get_or_compute_reference_stats(x, lambda im: ex.inner(im), **kw)


def test_save_stats_refuses_overwrite_and_roundtrips(tmp_path):
  rs = np.random.RandomState(0)
  a = rs.randn(20, 4)
  stats = {'mu': a.mean(0), 'sigma': np.cov(a, rowvar=False), 'count': 20, 'inception_score': 1.5,
           'extractor': 'ex'}
  path = str(tmp_path / 'sub' / 's.npz')
  rstats.save_stats(path, stats)
  with pytest.raises(FileExistsError):
    rstats.save_stats(path, dict(stats, inception_score=2.5))
  assert rstats.load_stats(path)['inception_score'] == 1.5
  rstats.save_stats(path, dict(stats, inception_score=2.5), overwrite=True)
  loaded = rstats.load_stats(path)
  assert loaded['inception_score'] == 2.5 and loaded['count'] == 20 and loaded['extractor'] == 'ex'
  assert loaded['format_version'] == rstats.FORMAT_VERSION
  np.testing.assert_array_equal(loaded['sigma'], stats['sigma'])
  assert os.listdir(tmp_path / 'sub') == ['s.npz']  # no temp files left
  np.savez(str(tmp_path / 'other.npz'), mu=stats['mu'])
  with pytest.raises(ValueError, match='missing keys'):
    rstats.load_stats(str(tmp_path / 'other.npz'))


def test_stats_cache_path_is_deterministic_and_sanitised():
  p1 = rstats.stats_cache_path('/c', 'cifar10', 'train', 32, 'inception_graph_abc', 49920)
  assert p1 == '/c/cifar10_train_32px_inception_graph_abc_n49920.npz'
  assert rstats.stats_cache_path('/c', 'cifar10', 'train', 32, 'inception_graph_abc', 49920) == p1
  p2 = rstats.stats_cache_path('/c', 'lsun/church', 'train', 256, 'a b', None)
  assert p2 == '/c/lsun-church_train_256px_a-b_nall.npz'
