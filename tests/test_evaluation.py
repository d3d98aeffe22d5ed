"""EvalWorker (FID/IS of checkpoints, sample dumps), SimpleEvalWorker (bits/dim, progressive
samples) and the scripts' evaluation / simple_eval commands, on the built-in digits set at
8x8 with a tiny U-Net, T=10 diffusion steps and the random-projection feature extractor."""

import glob
import io
import json
import os
import urllib.error

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import checkpoints, runners
from diffusion_tf.models import unet
from diffusion_tf.tpu_utils import datasets
from diffusion_tf.metrics import eval_worker, inception, reference_stats
from diffusion_tf.tpu_utils.simple_eval_worker import SimpleEvalWorker
from diffusion_tf.tpu_utils.tpu_utils import normalize_data

STEP = 7
RES = 8
KW = dict(dataset='digits', resolution=RES, model_name='unet_tiny_eval_test', optimizer='adam',
          total_bs=50, lr=1e-3, warmup=0, grad_clip=1., num_diffusion_timesteps=10,
          beta_start=0.0001, beta_end=0.02, beta_schedule='linear', model_mean_type='eps',
          model_var_type='fixedlarge', loss_type='mse', dropout=0.0, randflip=0, exp_name='t')


@pytest.fixture(scope='module', autouse=True)
def tiny_config():
  unet.MODEL_CONFIGS[KW['model_name']] = dict(ch=32, ch_mult=(1,), num_res_blocks=1,
                                              attn_resolutions=())
  yield
  del unet.MODEL_CONFIGS[KW['model_name']]


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, tiny_config):
  """A run directory: kwargs.json + model.ckpt-7 with raw weights and (different) EMA shadows."""
  d = str(tmp_path_factory.mktemp('run'))
  with open(os.path.join(d, 'kwargs.json'), 'w') as f:
    json.dump(KW, f)
  model = runners.make_model(KW, (RES, RES, 3))
  rs = np.random.RandomState(0)
  shadows = [tf.constant(v.numpy() + 0.05 * rs.randn(*v.shape).astype(np.float32))
             for v in model.net.trainable_variables]
  var_dict = checkpoints.model_var_dict(model.net, shadows)
  var_dict['global_step'] = tf.Variable(STEP, dtype=tf.int64)
  checkpoints.write_tf1_checkpoint(os.path.join(d, 'model.ckpt'), var_dict, global_step=STEP)
  assert os.path.exists(os.path.join(d, f'model.ckpt-{STEP}.index'))
  return d


@pytest.fixture(scope='module')
def stats_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('stats'))


@pytest.fixture(scope='module')
def dataset():
  return datasets.DigitsDataset(resolution=RES)


@pytest.fixture(scope='module')
def model(tiny_config):
  return runners.make_model(KW, (RES, RES, 3))


class CountingExtractor:
  """The random-projection extractor, counting calls and recording what it was fed."""

  def __init__(self):
    self.inner = inception.make_random_projection_extractor()
    self.name = self.inner.name
    self.calls = 0
    self.float_inputs = []

  def __call__(self, images):
    self.calls += 1
    arr = np.asarray(images)
    if arr.dtype.kind == 'f':
      self.float_inputs.append(arr)
    return self.inner(images)


def _event_tags(eval_dir):
  tags = {}
  for path in glob.glob(os.path.join(eval_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        tags.setdefault(v.tag, set()).add(event.step)
  return tags


def _mtimes(paths):
  return {p: os.stat(p).st_mtime_ns for p in paths}


# ----------------------------------------------------------------------------- EvalWorker metrics

def test_eval_worker_end_to_end(run_dir, stats_dir, dataset, model):
  N, bs = 120, 50  # 3 batches, the last truncated to 20
  ext = CountingExtractor()
  worker = eval_worker.EvalWorker(model, bs, dataset, num_inception_samples=N, extractor=ext,
                                  stats_cache_dir=stats_dir)
  with pytest.raises(FileNotFoundError, match='model.ckpt-999.index'):
    worker.run(run_dir, load_ckpt='model.ckpt-999')

  results = worker.run(run_dir, load_ckpt=f'model.ckpt-{STEP}')
  eval_dir = os.path.join(run_dir, 'eval')
  with open(os.path.join(eval_dir, f'metrics_ema_step{STEP:09d}.json')) as f:
    record = json.load(f)
  metric_keys = {'real_inception_score_train', 'real_inception_score', f'samples/inception{N}',
                 f'samples/trainfid{N}', f'samples/fid{N}'}
  assert set(record) - {'eval_config'} == metric_keys
  assert list(results.values())[0] == {k: record[k] for k in metric_keys}
  for k in metric_keys:
    assert np.isfinite(record[k]), k
  assert 1. <= record[f'samples/inception{N}'] <= 10.  # 10 logits: IS is between 1 and 10
  assert record[f'samples/trainfid{N}'] > 0 and record[f'samples/fid{N}'] > 0
  # drop_remainder real passes: 1797 // 50 * 50 train images and 180 // 50 * 50 eval images.
  assert record['eval_config']['real_counts'] == {'train': 1750, 'eval': 150}
  assert record['eval_config']['global_step'] == STEP and record['eval_config']['ema'] is True

  # Extractor calls: 35 + 3 real batches, then ceil(120 / 50) = 3 sample batches.
  assert ext.calls == 35 + 3 + 3
  # Samples reach the extractor as floats in [0, 255], not quantised (original quirk).
  sample_inputs = np.concatenate(ext.float_inputs[-3:])
  assert sample_inputs.shape == (N, RES, RES, 3)
  assert sample_inputs.min() >= 0. and sample_inputs.max() <= 255.
  assert np.any(sample_inputs != np.round(sample_inputs))

  # The EMA shadows were restored, not the raw weights.
  reader = tf.train.load_checkpoint(os.path.join(run_dir, f'model.ckpt-{STEP}'))
  v = model.net.trainable_variables[0]
  name = unet.tf1_name(v)
  np.testing.assert_array_equal(v.numpy(), reader.get_tensor(name + checkpoints.EMA_SUFFIX))
  assert not np.array_equal(v.numpy(), reader.get_tensor(name))

  # TensorBoard: the original tags, at the checkpoint's step; the grid PNG.
  tags = _event_tags(eval_dir)
  expected = {f'eval_ema/{k}' for k in metric_keys} | {'eval_ema/samples/samples'}
  assert expected <= set(tags), sorted(tags)
  assert all(tags[t] == {STEP} for t in expected)
  assert os.path.getsize(os.path.join(eval_dir, f'samples_ema_step{STEP:09d}.png')) > 0

  # Reference statistics are cached: a new worker (as after a restart) does not recompute them.
  stats_files = glob.glob(os.path.join(stats_dir, '*.npz'))
  assert len(stats_files) == 2
  before = _mtimes(stats_files)
  ext2 = CountingExtractor()
  worker2 = eval_worker.EvalWorker(model, bs, dataset, num_inception_samples=N, extractor=ext2,
                                   stats_cache_dir=stats_dir)
  # A watcher restarted on the same run skips the evaluated checkpoint (its JSON exists) and
  # stops at the timeout: no sampling, no feature extraction at all.
  assert worker2.run(run_dir, poll_interval=0, timeout=1) == {}
  assert ext2.calls == 0
  # --once evaluates the latest checkpoint again, into eval_once_<time>, reusing the stats.
  worker2.run(run_dir, once=True, poll_interval=0, timeout=1)
  assert ext2.calls == 3
  assert _mtimes(stats_files) == before
  once_dirs = glob.glob(os.path.join(run_dir, 'eval_once_*'))
  assert len(once_dirs) == 1
  with open(os.path.join(once_dirs[0], f'metrics_ema_step{STEP:09d}.json')) as f:
    record2 = json.load(f)
  # Same statistics, same seeds: the same numbers.
  for k in metric_keys:
    np.testing.assert_allclose(record2[k], record[k], rtol=1e-6, err_msg=k)


def _batch_order_error_bound(ext):
  """Bound on how much one 'pool_3' feature of the random-projection extractor may change
  when the batch shape changes: the GEMM/conv kernel a shape gets may sum in another order.

  Two float32 orders of one chain of sums differ by at most 2 * gamma_N * A (first order,
  Higham, Accuracy and Stability, 3.1), gamma_N = N u / (1 - N u), u = 2^-24, where N counts
  the terms summed along the chain (3x3x3 conv + bias, 8x8 average pool, projection) and A
  is the chain evaluated on absolute values. Preprocessed pixels are in [-1, 1], so
  A <= max_c (sum |w_conv[..., c]| + |b_c|) * max_j sum_k |w_proj[k, j]|. ReLU and tanh are
  1-Lipschitz; tanh itself is elementwise, within 4 ulp however it is vectorised.
  """
  w_conv, b_conv, w_proj = (np.abs(t.numpy().astype(np.float64))
                            for t in (ext._w_conv, ext._b_conv, ext._w_proj))
  n_terms = 27 + 1 + ext._POOL ** 2 + w_proj.shape[0]
  u = 2. ** -24
  gamma = n_terms * u / (1 - n_terms * u)
  a = (w_conv.sum(axis=(0, 1, 2)) + b_conv).max() * w_proj.sum(axis=0).max()
  return 2 * gamma * a + 8 * u


@pytest.mark.numerics
def test_fid_of_identical_sets_is_zero(dataset):
  """Real uint8 images through the reference path, and the same images as [-1, 1] "samples"
  through the evaluation's sample path: FID ~ 0, equal IS; a different set: FID clearly > 0."""
  ext = inception.make_random_projection_extractor()
  images = datasets.load_digits_array(RES)
  a, b = images[:400], images[400:800]
  real = reference_stats.compute_reference_stats(a, ext, batch_size=64)
  # Same batch shapes, same float32 pixels: the same kernels on every CPU, the same numbers.
  same = eval_worker.sample_feature_stats(normalize_data(a.astype(np.float32)), ext, batch_size=64)
  other = eval_worker.sample_feature_stats(normalize_data(b.astype(np.float32)), ext)
  assert same['count'] == real['count'] == 400
  np.testing.assert_allclose(same['mu'], real['mu'], rtol=0, atol=1e-10)
  np.testing.assert_allclose(same['sigma'], real['sigma'], rtol=0, atol=1e-10)
  np.testing.assert_allclose(same['inception_score'], real['inception_score'], rtol=1e-10)
  # Other batch shapes (8 x 50 instead of 6 x 64 + 16): only the summation order inside
  # the float32 kernels may change, by at most `delta` per feature. The mean moves by at
  # most delta; a covariance entry by n/(n-1) (2 delta max|f - mu| + delta^2) with |f| <= 1.
  rebatched = eval_worker.sample_feature_stats(normalize_data(a.astype(np.float32)), ext,
                                               batch_size=50)
  delta = _batch_order_error_bound(ext)
  assert rebatched['count'] == 400
  np.testing.assert_allclose(rebatched['mu'], real['mu'], rtol=0, atol=delta)
  np.testing.assert_allclose(rebatched['sigma'], real['sigma'], rtol=0,
                             atol=400 / 399 * (4 * delta + delta ** 2))
  # ~0 up to the numerical floor of the matrix square root (FID of the set with itself).
  fid_same = reference_stats.fid_from_stats(real, same)
  assert abs(fid_same) < 1e-4
  assert abs(fid_same - reference_stats.fid_from_stats(real, real)) < 1e-9
  assert reference_stats.fid_from_stats(real, other) > 1e-2
  # Samples outside [-1, 1] are clipped before the extractor, as the original did.
  x = normalize_data(a.astype(np.float32))
  clipped = eval_worker.sample_feature_stats(x * 3., ext)
  saturated = eval_worker.sample_feature_stats(np.clip(x * 3., -1., 1.), ext)
  np.testing.assert_allclose(clipped['mu'], saturated['mu'], rtol=0, atol=1e-12)
  assert not np.allclose(clipped['mu'], same['mu'], atol=1e-3)


# ----------------------------------------------------------------------------- sample dumps

def _load_shard(path):
  with np.load(path) as z:
    return z['samples']


def test_dump_samples_resume(run_dir, dataset, model, tmp_path):
  N, bs = 130, 50  # shards of 50, 50, 30
  worker = eval_worker.EvalWorker(model, bs, dataset, num_inception_samples=N)  # no extractor needed
  real_sample = worker._sample_batch
  calls = []

  def flaky(batch_size, seed):
    if len(calls) == 2:
      raise RuntimeError('simulated crash')
    calls.append(seed)
    return real_sample(batch_size, seed)

  worker._sample_batch = flaky
  out = str(tmp_path / 'dump')
  with pytest.raises(RuntimeError, match='simulated crash'):
    worker.run(run_dir, dump_samples_only=True, load_ckpt=f'model.ckpt-{STEP}', samples_dir=out)
  first = sorted(glob.glob(os.path.join(out, '*')))
  assert [os.path.basename(p) for p in first] == [
      f'samples_ema1_step{STEP:09d}_shard{i:05d}.npz' for i in range(2)]  # no partial files
  before = _mtimes(first)

  worker._sample_batch = real_sample  # "restart"
  paths = worker.run(run_dir, dump_samples_only=True, load_ckpt=f'model.ckpt-{STEP}',
                     samples_dir=out)[os.path.join(run_dir, f'model.ckpt-{STEP}')]
  assert len(paths) == 3 and sorted(glob.glob(os.path.join(out, '*'))) == paths
  assert _mtimes(first) == before  # complete shards were kept, not rewritten
  shards = [_load_shard(p) for p in paths]
  assert [s.shape for s in shards] == [(50, RES, RES, 3)] * 2 + [(30, RES, RES, 3)]
  assert all(s.dtype == np.uint8 for s in shards)
  allimgs = np.concatenate(shards).reshape(N, -1)
  assert len(np.unique(allimgs, axis=0)) == N  # no image repeated across shards

  # Shard i is drawn with its own seed, so the interrupted + resumed dump equals an
  # uninterrupted one.
  out2 = str(tmp_path / 'dump2')
  paths2 = list(worker.run(run_dir, dump_samples_only=True, load_ckpt=f'model.ckpt-{STEP}',
                           samples_dir=out2).values())[0]
  for p, q in zip(paths, paths2):
    np.testing.assert_array_equal(_load_shard(p), _load_shard(q))

  # Shards that do not fit this run's settings are an error, never silently replaced.
  after = _mtimes(paths)
  worker3 = eval_worker.EvalWorker(model, 40, dataset, num_inception_samples=N)
  with pytest.raises(FileExistsError, match='shard00000'):
    worker3.run(run_dir, dump_samples_only=True, load_ckpt=f'model.ckpt-{STEP}', samples_dir=out)
  assert _mtimes(paths) == after


# ----------------------------------------------------------------------------- simple_eval

def test_simple_eval_bpd_command(run_dir, model, dataset):
  from scripts import run_cifar
  assert run_cifar.simple_eval(run_dir, mode='bpd_eval', total_bs=20,
                               load_ckpt=f'model.ckpt-{STEP}') is None
  path = os.path.join(run_dir, 'simple_eval', 'bpd', f'bpd_eval_ema1_step{STEP:09d}.npz')
  with np.load(path) as z:
    out = {k: z[k] for k in z.files}
  T, n = KW['num_diffusion_timesteps'], 180 // 20 * 20
  assert set(out) == {'total_bpd', 'terms_bpd', 'prior_bpd', 'mse'}
  assert out['total_bpd'].shape == (n,) and out['prior_bpd'].shape == (n,)
  assert out['terms_bpd'].shape == (n, T) and out['mse'].shape == (n, T)
  assert all(v.dtype == np.float32 for v in out.values())
  assert all(np.isfinite(v).all() for v in out.values())
  np.testing.assert_allclose(out['total_bpd'], out['terms_bpd'].sum(1) + out['prior_bpd'],
                             rtol=1e-5)
  assert np.all(out['terms_bpd'][:, 0] > 0)  # decoder NLL
  assert np.all((out['total_bpd'] > 0) & (out['total_bpd'] < 100))
  assert np.all(out['prior_bpd'] > 0) and np.all(out['mse'] >= 0)

  # The same examples (the eval split in order) and the EMA weights give the same bound up to
  # the Monte Carlo noise of x_t: compare the mean with a direct computation.
  mtime = os.stat(path).st_mtime_ns
  worker = SimpleEvalWorker(model, 20, dataset)
  with pytest.raises(FileExistsError, match='refusing to overwrite'):
    worker.run('bpd_eval', run_dir, f'model.ckpt-{STEP}')
  assert os.stat(path).st_mtime_ns == mtime
  checkpoints.restore_tf1_checkpoint(model.net, os.path.join(run_dir, f'model.ckpt-{STEP}'), ema=True)
  x = normalize_data(tf.cast(datasets.load_digits_array(RES)[-180:][:n], tf.float32))
  direct = model.bpd_fn(x, None)
  np.testing.assert_allclose(np.mean(direct['prior_bpd']), out['prior_bpd'].mean(), rtol=1e-5)
  np.testing.assert_allclose(np.mean(direct['total_bpd']), out['total_bpd'].mean(), rtol=0.05)

  with pytest.raises(NotImplementedError):
    worker.run('bpd_test', run_dir, f'model.ckpt-{STEP}')


def test_progressive_grouping_is_the_originals():
  parts = SimpleEvalWorker.flush_points(196)  # CIFAR-10: 50000 samples at batch 256
  assert len(parts) == 10 and len(parts[0]) == 21 and all(len(p) == 20 for p in parts[1:-1])
  assert sum(parts, []) == list(range(196))
  assert SimpleEvalWorker.flush_points(1) == [[0]]
  assert SimpleEvalWorker.flush_points(21) == [list(range(21))]
  assert SimpleEvalWorker.flush_points(22) == [list(range(21)), [21]]


# ----------------------------------------------------------------------------- commands

@pytest.fixture
def offline(monkeypatch, tmp_path):
  """No Inception graph anywhere, and any download attempt fails like a machine offline."""
  cache = tmp_path / 'empty_cache'
  cache.mkdir()
  monkeypatch.setenv(inception.ENV_CACHE, str(cache))
  monkeypatch.delenv(inception.ENV_GRAPH, raising=False)
  attempts = []

  def no_network(url, dest, timeout=60.):
    attempts.append(url)
    raise urllib.error.URLError('network is unreachable')
  monkeypatch.setattr(inception, '_download_file', no_network)
  return str(cache), attempts


def test_evaluation_command_offline_fails_with_documented_message(run_dir, offline):
  from scripts import run_cifar
  cache, attempts = offline
  before = set(os.listdir(run_dir))
  with pytest.raises(inception.InceptionGraphNotFound) as info:
    run_cifar.evaluation(run_dir, once=True)
  msg = str(info.value)
  assert inception.INCEPTION_URL in msg
  assert os.path.join(cache, 'inception', os.path.basename(inception.INCEPTION_URL)) in msg
  assert os.path.join(cache, 'inception', inception.INCEPTION_FROZEN_GRAPH) in msg
  assert 'network is unreachable' in msg
  assert attempts == [inception.INCEPTION_URL]
  assert set(os.listdir(run_dir)) == before  # failed before any evaluation output


def test_digits_evaluation_command_uses_digits_features(run_dir, stats_dir, offline, capsys):
  from scripts import run_digits
  _, attempts = offline
  N = 60
  assert run_digits.evaluation(run_dir, once=True, total_bs=50, num_inception_samples=N,
                               sampler='ddim', steps=5, stats_cache_dir=stats_dir) is None
  out = capsys.readouterr().out
  assert 'Features: the digits classifier' in out
  assert attempts == []  # the digits command never downloads
  once_dirs = glob.glob(os.path.join(run_dir, 'eval_once_*'))
  records = []
  for d in once_dirs:
    p = os.path.join(d, f'metrics_ema_step{STEP:09d}.json')
    if os.path.exists(p):
      with open(p) as f:
        records.append(json.load(f))
  rec = [r for r in records if f'samples/inception{N}' in r]
  assert len(rec) == 1
  rec = rec[0]
  assert rec['eval_config']['sampler'] == 'ddim' and rec['eval_config']['steps'] == 5
  assert rec['eval_config']['extractor'].startswith('digits_cnn_')
  assert np.isfinite(rec[f'samples/trainfid{N}']) and np.isfinite(rec[f'samples/fid{N}'])


@pytest.mark.slow
def test_progressive_samples_dump(tmp_path, dataset):
  kw = dict(KW, num_diffusion_timesteps=50)  # one x0 prediction slot (every 50 steps)
  worker = SimpleEvalWorker(lambda: runners.make_model(kw, (RES, RES, 3)), 2, dataset)
  out = str(tmp_path / 'prog')
  paths = worker.dump_progressive_samples(STEP, out, num_samples=44)  # 22 batches of 2
  assert [os.path.basename(p) for p in paths] == [
      f'samples_xstartpred_ema1_step{STEP:09d}_part{k:06d}.npz' for k in range(2)]
  sizes = []
  for p in paths:
    with np.load(p) as z:
      samples, prog = z['samples'], z['progressive_samples']
    assert samples.dtype == prog.dtype == np.float32
    assert prog.shape == (samples.shape[0], 1, RES, RES, 3)
    # Slot 0 holds the x0 prediction at t=0, which is the final (noise-free) sample.
    np.testing.assert_allclose(prog[:, 0], samples, atol=1e-6)
    sizes.append(samples.shape[0])
  assert sizes == [42, 2]  # the original grouping: 21 batches, then the rest
  mtimes = _mtimes(paths)
  with pytest.raises(FileExistsError, match='refusing to overwrite'):
    worker.dump_progressive_samples(STEP, out, num_samples=44)
  assert _mtimes(paths) == mtimes
