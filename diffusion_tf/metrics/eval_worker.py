"""FID / Inception Score evaluation of checkpoints (original ``tpu_utils.EvalWorker``, §9.7-§9.8).

`EvalWorker.run` evaluates one checkpoint (``load_ckpt``) or watches a run directory and
evaluates every new checkpoint, always with the EMA weights (the raw weights only when
``skip_non_ema_pass=False``). Per checkpoint it

* samples ``ceil(N / total_bs)`` batches, truncated to exactly N = ``num_inception_samples``;
* runs the feature extractor on the samples clipped to [-1, 1] and mapped to [0, 255] **as
  floats** (not quantised, as the original did, §14.14);
* compares with the real-data statistics: the train split in ``drop_remainder`` batches of
  ``total_bs`` (49920 images for CIFAR-10 at 256), at most ``limit_dataset_size // total_bs``
  batches if that is > 0, and the eval split if the data set has one. They are computed once
  and cached as ``.npz`` (`reference_stats.get_or_compute_reference_stats`), keyed by data set,
  split, resolution, extractor and image count;
* records the original metrics ``real_inception_score_train``, ``real_inception_score`` (eval
  split), ``samples/inception{N}`` (IS over all N samples as one split),
  ``samples/trainfid{N}`` and ``samples/fid{N}`` (eval split) as TensorBoard scalars
  ``eval_ema/<metric>`` plus the image grid ``eval_ema/samples/samples``, in ``<logdir>/eval``
  (``<logdir>/eval_once_<time>`` with ``once``), and as ``metrics_ema_step{step:09d}.json``
  and ``samples_ema_step{step:09d}.png`` there. A checkpoint whose JSON exists is skipped, so a
  restarted watcher resumes where it stopped.

With ``dump_samples_only`` it writes the samples instead, as ``.npz`` shards (uint8
``samples`` [n, H, W, C], one per batch, exactly N images in total) that a crashed run
resumes: existing shards are kept, and shard i is always drawn with the noise seed
``shard_seed(seed, i)``, so shards never repeat each other's noise.

Deviations from the original: samples are truncated to exactly N also in the dumps (the
original wrote ``ceil(N / bs) * bs`` unclipped float images as pickles); the sampler is
selectable (DDPM, strided DDPM, DDIM; a non-default sampler writes to ``eval_<sampler...>``
so that its numbers never mix with the 1000-step ones); the ``seed`` is effective (the
original's was not, §14.17); the feature extractor is injectable.
"""

import hashlib
import io
import json
import math
import os
import re
import time

import numpy as np
import tensorflow as tf

from .. import checkpoints, integrity, sampling, utils
from . import inception, reference_stats
from ..tpu_utils import classifier_metrics_numpy
from ..tpu_utils.tpu_utils import unnormalize_data


# ----------------------------------------------------------------------------- helpers

shard_seed = sampling.batch_seed


def checkpoint_step(prefix):
  """The global step of a checkpoint: its ``global_step`` variable, else the ``-N`` suffix."""
  try:
    reader = tf.train.load_checkpoint(prefix)
    if reader.has_tensor('global_step'):
      return int(reader.get_tensor('global_step'))
  except (tf.errors.NotFoundError, ValueError):
    pass
  m = re.search(r'-(\d+)$', prefix)
  return int(m.group(1)) if m else 0


def dataset_cache_name(dataset):
  """A name for the data set in reference-statistics cache keys.

  Data read from a file or folder (LSUN, image folders) are told apart by the path: LSUN
  church and bedroom must not share statistics.
  """
  cls = type(dataset).__name__
  if hasattr(dataset, 'tfr_file'):
    path = str(dataset.tfr_file)
    stem = os.path.basename(path).split('.')[0]
    digest = hashlib.sha1(path.encode()).hexdigest()[:8]
    extra = f'-max{dataset.max_images}' if getattr(dataset, 'max_images', None) else ''
    return f'lsun-{stem}-{digest}{extra}'
  if hasattr(dataset, 'folder'):
    path = str(dataset.folder)
    digest = hashlib.sha1(path.encode()).hexdigest()[:8]
    return f'folder-{os.path.basename(path.rstrip("/"))}-{digest}'
  name = getattr(dataset, '_name', None) or getattr(dataset, 'name', None)
  if isinstance(name, str) and name:
    return name
  return {'DigitsDataset': 'digits'}.get(cls, cls)


def _is_model(obj):
  return hasattr(obj, 'diffusion') and hasattr(obj, 'net')


class ReplicatedFn:
  """Calls ``fn(*local_arrays)`` once per replica of a `tf.distribute` strategy, each on its
  slice (along axis 0) of the given arrays, and concatenates the per-replica outputs (a
  tensor or a dict of tensors) along axis 0 into NumPy arrays. With one replica ``fn`` runs
  directly (eagerly; the diffusion loops compile themselves)."""

  def __init__(self, strategy, fn):
    self.strategy, self.fn = strategy, fn
    self.num_replicas = strategy.num_replicas_in_sync

    @tf.function
    def step(*values):
      return strategy.run(fn, args=values)
    self._step = step

  def __call__(self, *arrays):
    n = self.num_replicas
    if n == 1:
      return _to_numpy(self.fn(*[tf.convert_to_tensor(a) for a in arrays]))
    size = int(arrays[0].shape[0])
    if size % n:
      raise ValueError(f'batch of {size} is not divisible by the {n} replicas')
    per = size // n

    def value_fn(k):
      return lambda ctx: tf.convert_to_tensor(
          arrays[k][ctx.replica_id_in_sync_group * per:(ctx.replica_id_in_sync_group + 1) * per])
    values = [self.strategy.experimental_distribute_values_from_function(value_fn(k))
              for k in range(len(arrays))]
    out = self._step(*values)
    local = lambda v: np.concatenate(
        [np.asarray(t) for t in self.strategy.experimental_local_results(v)], axis=0)
    return {k: local(v) for k, v in out.items()} if isinstance(out, dict) else local(out)


def _to_numpy(out):
  if isinstance(out, dict):
    return {k: np.asarray(v) for k, v in out.items()}
  return np.asarray(out)


class SampleBatcher(sampling.Sampler):
  """`sampling.Sampler` run on every replica of the strategy (each draws its own share)."""

  def __init__(self, model, *, sampler='ddpm', steps=None, eta=0., spacing='uniform',
               order=None, strategy=None):
    super().__init__(model, sampler=sampler, steps=steps, eta=eta, spacing=spacing, order=order,
                     strategy=strategy)
    self._replicated = ReplicatedFn(self.strategy, lambda dummy: self.sample(int(dummy.shape[0])))

  def __call__(self, batch_size, seed):
    """One batch drawn with noise seed ``seed``: float32 numpy [batch_size, H, W, C]."""
    self._gen.reset_from_seed(int(seed))
    return self._replicated(np.zeros([batch_size], np.float32)).astype(np.float32)


class SampleFeatures:
  """Streams sample batches (floats in [-1, 1]) through a feature extractor.

  Images are clipped to [-1, 1] and mapped to [0, 255] with ``unnormalize_data``, not
  quantised (the original's §9.3 ``sample_and_run_inception``). Keeps the moments of
  ``pool_3`` (float64) and all logits (for the Inception Score, whose marginal needs them all).
  """

  def __init__(self, extractor, batch_size):
    self.extractor, self.batch_size = extractor, int(batch_size)
    self.name = inception.extractor_name(extractor)
    self._moments = reference_stats._MomentAccumulator()
    self._logits = []

  @property
  def count(self):
    return self._moments.n

  def add(self, samples):
    images = unnormalize_data(np.clip(np.asarray(samples, np.float32), -1., 1.)).astype(np.float32)
    for chunk in inception.iter_image_batches(images, self.batch_size):
      feats = inception.extract_batch(self.extractor, chunk)
      self._moments.update(feats['pool_3'])
      self._logits.append(feats['logits'].astype(np.float32))  # the networks output float32

  def stats(self):
    """dict(mu, sigma, count, inception_score, extractor), as `reference_stats` stats."""
    mu, sigma = self._moments.finalize()
    logits = np.concatenate(self._logits, axis=0).astype(np.float64)
    return {'mu': mu, 'sigma': sigma, 'count': int(self._moments.n),
            'inception_score': float(classifier_metrics_numpy.classifier_score_from_logits(logits)),
            'extractor': self.name}


def sample_feature_stats(samples, extractor, batch_size=64):
  """Statistics of generated images (float [N, H, W, C] in [-1, 1]) as the evaluation
  computes them; comparable with `reference_stats` statistics of real uint8 images."""
  acc = SampleFeatures(extractor, batch_size)
  acc.add(samples)
  return acc.stats()


def _print(msg):
  print(msg, flush=True)


class Progress:
  """``<what> i/n ... elapsed, ETA`` lines; skipped (resumed) items do not count towards
  the rate."""

  def __init__(self, what, total, log_fn=None):
    self.what, self.total, self.t0 = what, total, time.time()
    self.log_fn = log_fn or _print
    self.skipped = 0

  def skip(self, n=1):
    self.skipped += n

  def update(self, i, extra=''):
    elapsed = time.time() - self.t0
    done = i - self.skipped
    rate = done / elapsed if elapsed > 0 and done > 0 else float('nan')
    eta = (self.total - i) / rate if self.total is not None and rate > 0 else float('nan')
    total = '?' if self.total is None else self.total
    self.log_fn(f'{self.what} {i}/{total}{extra}  {utils.format_duration(elapsed)} elapsed, '
                f'ETA {utils.format_duration(eta)}')


# ----------------------------------------------------------------------------- the worker

class EvalWorker:
  """FID / IS evaluation of a run's checkpoints; see the module docstring.

  Args:
    model_constructor_or_model: a script model (``.diffusion``, ``.denoise``, ``.net``,
      ``.image_shape``) or a zero-argument callable building one (called under the
      strategy's scope).
    total_bs: sampling batch size, and the batch size of the real-data passes.
    dataset: a data set of ``datasets.py`` (``train_one_pass_input_fn``, ``eval_input_fn``,
      ``image_shape``, ``num_classes == 1``).
    inception_bs: images per feature-extractor call (default ``total_bs``).
    num_inception_samples: N, the number of samples for IS / FID.
    limit_dataset_size: if > 0, real statistics use ``limit_dataset_size // total_bs`` batches.
    extractor: a feature extractor (``inception.py`` protocol, with a ``name``); default: the
      Inception network via `inception.make_inception_extractor()`, loaded when `run` starts
      (not needed with ``dump_samples_only``).
    stats_cache_dir: where reference statistics are cached (default
      `reference_stats.default_stats_cache_dir()`).
    sampler, steps, eta, spacing, order: as `sampling.Sampler` (default: the 1000-step sampler).
    strategy: a `tf.distribute` strategy (default: the current one).
    ref_stats: reference statistics from a file (`interop.load_reference_stats`, e.g.
      TTUR's); FID is then ``samples/reffid{N}`` against them, and the data set's own
      statistics are not computed (so its images are not needed).
  """

  def __init__(self, model_constructor_or_model, total_bs, dataset, *, inception_bs=None,
               num_inception_samples=1024, limit_dataset_size=0, extractor=None,
               stats_cache_dir=None, sampler='ddpm', steps=None, eta=0., spacing='uniform', order=None,
               strategy=None, log_fn=None, ref_stats=None):
    self.strategy = strategy or tf.distribute.get_strategy()
    self.num_replicas = self.strategy.num_replicas_in_sync
    self.total_bs = int(total_bs)
    self.inception_bs = int(inception_bs or total_bs)
    if self.total_bs % self.num_replicas:
      raise ValueError(f'total_bs={total_bs} is not divisible by the {self.num_replicas} replicas')
    if getattr(dataset, 'num_classes', 1) != 1:
      raise ValueError('EvalWorker evaluates unconditional models only (dataset.num_classes == 1)')
    self.dataset = dataset
    self.num_inception_samples = int(num_inception_samples)
    if self.num_inception_samples < 2:
      raise ValueError('num_inception_samples must be at least 2 (FID needs a covariance)')
    self.limit_dataset_size = int(limit_dataset_size or 0)
    self.stats_cache_dir = stats_cache_dir or reference_stats.default_stats_cache_dir()
    self.log = log_fn or _print
    if extractor is not None:
      inception.extractor_name(extractor)  # needs a name to key cached statistics
    self.extractor = extractor
    self.ref_stats = ref_stats

    if _is_model(model_constructor_or_model):
      self.model = model_constructor_or_model
    else:
      with self.strategy.scope():
        self.model = model_constructor_or_model()
    self.sample_batches = SampleBatcher(self.model, sampler=sampler, steps=steps, eta=eta,
                                        spacing=spacing, order=order, strategy=self.strategy)
    self._real_stats = None

  # --------------------------------------------------------------------------- real data

  def _ensure_extractor(self):
    if self.extractor is None:
      self.log('Loading the Inception network (see inception.py for where it is looked for)')
      self.extractor = inception.make_inception_extractor()
    return self.extractor

  def _split_stats(self, split):
    """Cached statistics of one split, or None if the data set lacks it."""
    bs = self.total_bs
    if split == 'train':
      input_fn = self.dataset.train_one_pass_input_fn
      total = getattr(self.dataset, 'num_train_examples', None)
    else:
      input_fn = self.dataset.eval_input_fn
      total = getattr(self.dataset, 'num_eval_examples', None)
    ds = input_fn({'batch_size': bs})
    if ds is None:
      return None
    num_batches = self.limit_dataset_size // bs if self.limit_dataset_size > 0 else None
    if num_batches == 0:
      raise ValueError(f'limit_dataset_size={self.limit_dataset_size} is less than one batch '
                       f'of {bs}')
    if num_batches is not None:
      ds = ds.take(num_batches)  # counts batches, as the original (§9.7)
    key_split = split
    if split != 'train':
      key_split = getattr(self.dataset, 'eval_split_name', None) or 'eval'
    if total is not None:  # drop_remainder batches
      count = total // bs * bs
      if num_batches is not None:
        count = min(count, num_batches * bs)
      if count == 0:
        if split == 'train':
          raise ValueError(f'the train split has fewer than total_bs={bs} images')
        self.log(f'The {split} split has fewer than total_bs={bs} images (batches drop the '
                 f'remainder): no {split} statistics, so no real_inception_score / fid metrics')
        return None
    else:  # size unknown (LSUN): the limit is part of the key instead
      count = None
      if num_batches is not None:
        key_split = f'{key_split}-max{num_batches * bs}'
    name = dataset_cache_name(self.dataset)
    res = int(self.dataset.image_shape[0])
    path = reference_stats.stats_cache_path(self.stats_cache_dir, name, key_split, res,
                                            inception.extractor_name(self.extractor), count)
    cached = tf.io.gfile.exists(path)
    self.log(f'Real-data statistics ({split}): '
             f'{"cached in" if cached else "computing, to be cached in"} {path}')
    stats = reference_stats.get_or_compute_reference_stats(
        ds, self.extractor, dataset=name, split=key_split, resolution=res, count=count,
        batch_size=self.inception_bs, cache_dir=self.stats_cache_dir, progress=not cached)
    self.log(f'  {stats["count"]} images, real Inception Score {stats["inception_score"]:.4f}')
    return stats

  def real_stats(self):
    """{'train': stats, 'eval': stats or None}, computed once (and cached on disk)."""
    if self._real_stats is None:
      self._ensure_extractor()
      if self.ref_stats is not None:
        self._check_ref_stats()
        self._real_stats = {'train': None, 'eval': None, 'ref': self.ref_stats}
      else:
        self._real_stats = {'train': self._split_stats('train'), 'eval': self._split_stats('eval')}
    return self._real_stats

  def _check_ref_stats(self):
    ref, name = self.ref_stats, inception.extractor_name(self.extractor)
    dim = inception.extract_batch(self.extractor, np.zeros((1,) + tuple(self.dataset.image_shape),
                                                           np.uint8))['pool_3'].shape[1]
    if ref['mu'].shape[0] != dim or (ref.get('extractor') and ref['extractor'] != name):
      raise reference_stats.ReferenceStatsMismatch(
          f"--ref_stats {ref.get('source')} holds statistics of {ref['mu'].shape[0]}-dimensional "
          f"features{' of ' + ref['extractor'] if ref.get('extractor') else ''}, but the feature "
          f'network {name} gives {dim}')
    self.log(f"Reference statistics: {ref.get('source')} ({dim}-dimensional features)")

  # --------------------------------------------------------------------------- sampling

  def _sample_batch(self, batch_size, seed):
    return self.sample_batches(batch_size, seed)

  def compute_metrics(self, seed=0):
    """Samples N images and returns (metrics dict, first batch of samples)."""
    real = self.real_stats()
    N, bs = self.num_inception_samples, self.total_bs
    num_batches = math.ceil(N / bs)
    feats = SampleFeatures(self.extractor, self.inception_bs)
    progress = Progress(f'sampling ({self.sample_batches.describe()}) + features: batch',
                        num_batches, self.log)
    first = None
    for i in range(num_batches):
      samples = self._sample_batch(bs, shard_seed(seed, i))
      if first is None:
        first = samples
      feats.add(samples[:N - i * bs])
      progress.update(i + 1, f' ({min((i + 1) * bs, N)}/{N} images)')
    assert feats.count == N
    gen = feats.stats()
    metrics = {}
    if real['train'] is not None:
      metrics['real_inception_score_train'] = real['train']['inception_score']
    if real['eval'] is not None:
      metrics['real_inception_score'] = real['eval']['inception_score']
    key = 'samples'
    metrics[f'{key}/inception{N}'] = gen['inception_score']  # one split over all N
    if real['train'] is not None:
      metrics[f'{key}/trainfid{N}'] = reference_stats.fid_from_stats(real['train'], gen)
    if real['eval'] is not None:
      metrics[f'{key}/fid{N}'] = reference_stats.fid_from_stats(real['eval'], gen)
    if real.get('ref') is not None:
      metrics[f'{key}/reffid{N}'] = reference_stats.fid_from_stats(real['ref'], gen)
    return {k: float(v) for k, v in metrics.items()}, first

  # --------------------------------------------------------------------------- outputs

  @staticmethod
  def metrics_path(eval_dir, step, ema=True):
    return os.path.join(eval_dir, f'metrics_{"ema" if ema else "raw"}_step{step:09d}.json')

  @staticmethod
  def grid_path(eval_dir, step, ema=True):
    return os.path.join(eval_dir, f'samples_{"ema" if ema else "raw"}_step{step:09d}.png')

  def _eval_config(self, ckpt, step, ema, seed):
    real = self._real_stats or {}
    return {
        'checkpoint': ckpt, 'global_step': step, 'ema': bool(ema), 'seed': seed,
        'num_samples': self.num_inception_samples, 'total_bs': self.total_bs,
        'sampler': self.sample_batches.sampler, 'steps': self.sample_batches.steps
        or self.model.diffusion.num_timesteps, 'eta': self.sample_batches.eta,
        'spacing': self.sample_batches.spacing, 'order': self.sample_batches.order,
        'extractor': inception.extractor_name(self.extractor),
        'dataset': dataset_cache_name(self.dataset),
        'real_counts': {k: real[k]['count'] for k in ('train', 'eval') if real.get(k)},
        'ref_stats': (self.ref_stats or {}).get('source'),
    }

  def _write_eval_and_samples(self, writer, eval_dir, ckpt, step, prefix, ema, seed):
    t0 = time.time()
    metrics, first = self.compute_metrics(seed=seed)
    images = utils.to_uint8(first)  # clipped and truncated, as the original's image summary
    writer.images(f'{prefix}/samples/samples', images, step)
    for k in sorted(metrics):
      writer.scalar(f'{prefix}/{k}', metrics[k], step)
    writer.flush()
    utils.save_tiled_imgs(self.grid_path(eval_dir, step, ema), images)
    record = dict(metrics, eval_config=self._eval_config(ckpt, step, ema, seed))
    utils.write_json(self.metrics_path(eval_dir, step, ema), record)  # last: marks completion
    self.log(json.dumps(metrics, sort_keys=True, indent=2))
    N = self.num_inception_samples
    fids = [(f'samples/trainfid{N}', 'train'), (f'samples/fid{N}', 'eval'),
            (f'samples/reffid{N}', (self.ref_stats or {}).get('source'))]
    self.log('FID ' + ', '.join(f'{metrics[k]:.4f} ({what})' for k, what in fids if k in metrics)
             + f', IS {metrics[f"samples/inception{N}"]:.4f} of {N} samples of {ckpt} '
             f'({"EMA" if ema else "raw"} weights, {inception.extractor_name(self.extractor)}) in '
             f'{utils.format_duration(time.time() - t0)}; wrote {self.metrics_path(eval_dir, step, ema)} '
             f'and {self.grid_path(eval_dir, step, ema)}')
    return metrics

  def shard_paths(self, samples_dir, step, ema=True):
    n = math.ceil(self.num_inception_samples / self.total_bs)
    base = f'samples_ema{int(bool(ema))}_step{step:09d}'
    return [os.path.join(samples_dir, f'{base}_shard{i:05d}.npz') for i in range(n)]

  def _dump_samples(self, step, samples_dir, ema, seed):
    """Shards of uint8 samples, exactly N in total; resumes after a crash."""
    N, bs = self.num_inception_samples, self.total_bs
    paths = self.shard_paths(samples_dir, step, ema)
    tf.io.gfile.makedirs(samples_dir)
    progress = Progress(f'dumping samples ({self.sample_batches.describe()}): shard',
                        len(paths), self.log)
    kept = 0
    for i, path in enumerate(paths):
      n_i = min(bs, N - i * bs)
      if tf.io.gfile.exists(path) and not integrity.set_aside_if_damaged(path, 'sample shard',
                                                                          self.log):
        with tf.io.gfile.GFile(path, 'rb') as f, np.load(io.BytesIO(f.read())) as z:
          have = z['samples'].shape
        if have[0] != n_i or tuple(have[1:]) != tuple(self.model.image_shape):
          raise FileExistsError(
              f'{path} exists with samples of shape {have}, but this run would write {n_i} '
              f'images of shape {tuple(self.model.image_shape)} (different --total_bs or '
              f'--num_inception_samples?); use another --samples_dir or remove the old shards')
        kept += 1
        progress.skip()
        continue
      samples = self._sample_batch(bs, shard_seed(seed, i))[:n_i]
      buf = io.BytesIO()
      np.savez(buf, samples=utils.to_uint8(samples))
      utils.atomic_write(path, buf.getvalue(), overwrite=False)
      progress.update(i + 1, f' ({min((i + 1) * bs, N)}/{N} images)')
    self.log(f'{len(paths)} shards with {N} samples in {samples_dir}'
             + (f' ({kept} existing shards kept)' if kept else ''))
    return paths

  # --------------------------------------------------------------------------- the loop

  def eval_dir_name(self, once):
    """'eval_once_<time>' for one pass, else the sampler's folder (`SamplerSettings.eval_dir_name`)."""
    if once:
      return f'eval_once_{time.time()}'
    return self.sample_batches.settings.eval_dir_name()

  def _checkpoints(self, logdir, load_ckpt, poll_interval, timeout, once=False):
    if load_ckpt:
      path = os.path.join(logdir, load_ckpt)
      if not tf.io.gfile.exists(path + '.index'):
        raise FileNotFoundError(f'Checkpoint {path} not found (no {path}.index); --load_ckpt is '
                                f'relative to --model_dir, e.g. model.ckpt-1000000')
      return [integrity.requested_checkpoint(path, '--load_ckpt')]
    if once:
      latest = integrity.newest_intact_checkpoint(logdir, self.log)
      if latest is not None:
        return [latest]
    self.log(f'Watching {logdir} for checkpoints' + (f' (timeout {timeout} s)' if timeout else ''))
    return self._intact(tf.train.checkpoints_iterator(logdir, min_interval_secs=poll_interval,
                                                      timeout=timeout))

  def _intact(self, ckpts):
    """The whole ones of ``ckpts``; a damaged one is reported and skipped (left in place: the
    directory's trainer sets it aside when it resumes)."""
    for ckpt in ckpts:
      reason = integrity.checkpoint_damage(ckpt)
      if reason is not None and tf.io.gfile.exists(ckpt + '.index'):
        self.log(f'WARNING: checkpoint {ckpt} is damaged ({reason}); skipping it')
        continue
      yield ckpt  # whole, or removed by the trainer's retention (reported below)

  def run(self, logdir, once=False, skip_non_ema_pass=True, dump_samples_only=False,
          load_ckpt=None, samples_dir=None, seed=0, poll_interval=60, timeout=None):
    """Evaluates ``load_ckpt`` (relative to ``logdir``) or every new checkpoint in ``logdir``
    (``once``: only the latest). Returns {checkpoint: metrics} (or {checkpoint: shard paths}
    with ``dump_samples_only``)."""
    # Under the strategy's scope, feature extraction is split over its replicas too.
    with self.strategy.scope():
      return self._run(logdir, once, skip_non_ema_pass, dump_samples_only, load_ckpt,
                       samples_dir, seed, poll_interval, timeout)

  def _run(self, logdir, once, skip_non_ema_pass, dump_samples_only, load_ckpt, samples_dir,
           seed, poll_interval, timeout):
    if not tf.io.gfile.isdir(logdir):
      raise FileNotFoundError(f'{logdir} is not a directory (pass the training run directory '
                              f'as --model_dir)')
    if not dump_samples_only:
      self.real_stats()  # loads the extractor and real statistics before any sampling
    eval_dir = os.path.join(logdir, self.eval_dir_name(once))
    passes = [(True, 'eval_ema')] + ([] if skip_non_ema_pass else [(False, 'eval')])
    writer, results = None, {}
    for ckpt in self._checkpoints(logdir, load_ckpt, poll_interval, timeout, once):
      step = checkpoint_step(ckpt)
      if not dump_samples_only and all(
          tf.io.gfile.exists(self.metrics_path(eval_dir, step, ema)) for ema, _ in passes):
        self.log(f'{ckpt} (step {step}) was already evaluated ({self.metrics_path(eval_dir, step)}'
                 f'); skipping (delete that file to evaluate it again)')
        if once:
          break
        continue
      for ema, prefix in passes:
        try:
          restored = checkpoints.restore_tf1_checkpoint(self.model.net, ckpt, ema=ema)
        except (tf.errors.NotFoundError, FileNotFoundError) as e:
          if load_ckpt:
            raise
          self.log(f'{ckpt} disappeared before it could be read ({e}); skipping')  # retention
          break
        self.log(f'Restored {"EMA" if ema else "raw"} weights from {ckpt} (step {restored})')
        if dump_samples_only:
          if ema:
            out_dir = samples_dir or os.path.join(
                eval_dir, f'{type(self.dataset).__name__}_samples{step}')
          else:  # the original's location of the raw-weights dump
            out_dir = os.path.join(samples_dir or eval_dir, 'samples' if not samples_dir else 'raw')
          results[ckpt] = self._dump_samples(step, out_dir, ema, seed)
        else:
          if writer is None:
            writer = utils.SummaryWriter(eval_dir, write_graph=False)
          results[ckpt] = self._write_eval_and_samples(writer, eval_dir, ckpt, step, prefix, ema,
                                                       seed)
      if once:
        break
    if writer is not None:
      writer.close()
    return results
