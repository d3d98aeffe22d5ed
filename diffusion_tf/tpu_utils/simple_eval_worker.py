"""Bits/dim and progressive-sample dumps of one checkpoint (original ``simple_eval_worker.py``,
§11).

``SimpleEvalWorker(model, total_bs, dataset).run(mode, logdir, load_ckpt)`` restores the EMA
weights of ``<logdir>/<load_ckpt>`` (default: the latest checkpoint) and, by ``mode``:

* ``'bpd_train'`` / ``'bpd_eval'``: the full variational bound (``model.bpd_fn``, i.e.
  ``calc_bpd_loop`` with ``clip_denoised=True``) of every example of one pass over the split
  in ``drop_remainder`` batches of ``total_bs`` (49920 train / 9984 test images for CIFAR-10
  at 256), written to ``<logdir>/simple_eval/bpd/bpd_{train|eval}_ema1_step{step:09d}.npz``
  with float32 ``total_bpd`` [N], ``terms_bpd`` [N, T], ``prior_bpd`` [N], ``mse`` [N, T];
* ``'progressive_samples'``: ``ceil(num_samples / total_bs)`` batches of
  ``model.progressive_samples_fn`` (final samples and the x0 predictions every 50 steps),
  written to ``<logdir>/simple_eval/progressive_samples/
  samples_xstartpred_ema1_step{step:09d}_part{k:06d}.npz`` with float32 ``samples``
  [n, H, W, C] and ``progressive_samples`` [n, T // 50, H, W, C], flushed with the original's
  grouping (after batch i when ``i != 0 and i % 20 == 0``, plus the remainder: part 0 holds
  21 batches, later parts 20). No truncation to ``num_samples``, as the original.

Existing output files are never overwritten: the run refuses before computing anything.
Deviations: ``.npz`` instead of pickles; ``max_batches`` limits a run (its files are then
named ``..._first{n}batches``), and ``load_ckpt`` may be omitted (latest checkpoint).
"""

import io
import math
import os
import time

import numpy as np
import tensorflow as tf

from .. import checkpoints, integrity, utils
from ..metrics.eval_worker import Progress, ReplicatedFn, _is_model, _print, checkpoint_step
from .tpu_utils import normalize_data

MODES = ('bpd_train', 'bpd_eval', 'progressive_samples')
BPD_KEYS = ('total_bpd', 'terms_bpd', 'prior_bpd', 'mse')


class SimpleEvalWorker:
  """See the module docstring. ``model`` is a script model or a zero-argument callable
  building one (under the strategy's scope)."""

  def __init__(self, model, total_bs, dataset, *, strategy=None, log_fn=None):
    self.strategy = strategy or tf.distribute.get_strategy()
    self.total_bs = int(total_bs)
    if self.total_bs % self.strategy.num_replicas_in_sync:
      raise ValueError(f'total_bs={total_bs} is not divisible by the '
                       f'{self.strategy.num_replicas_in_sync} replicas')
    if getattr(dataset, 'num_classes', 1) != 1:
      raise ValueError('SimpleEvalWorker evaluates unconditional models only (num_classes == 1)')
    self.dataset = dataset
    self.log = log_fn or _print
    if _is_model(model):
      self.model = model
    else:
      with self.strategy.scope():
        self.model = model()
    self._bpd = ReplicatedFn(self.strategy, self._bpd_replica)
    self._progressive = ReplicatedFn(self.strategy, self._progressive_replica)

  def _bpd_replica(self, images):
    x = normalize_data(tf.cast(images, tf.float32))
    return self.model.bpd_fn(x, None)

  def _progressive_replica(self, dummy):
    # NaN dummy input, used only for its shape (as the original).
    dummy_x = tf.fill([int(dummy.shape[0]), *self.model.image_shape], float('nan'))
    return self.model.progressive_samples_fn(dummy_x, None)

  # --------------------------------------------------------------------------- bpd

  @staticmethod
  def bpd_path(output_dir, step, train, max_batches=None):
    suffix = f'_first{max_batches}batches' if max_batches else ''
    split = 'train' if train else 'eval'
    return os.path.join(output_dir, f'bpd_{split}_ema1_step{step:09d}{suffix}.npz')

  def dump_bpd(self, step, output_dir, *, train, max_batches=None):
    """Writes the bpd file of one pass over the split; returns its path."""
    path = self.bpd_path(output_dir, step, train, max_batches)
    if tf.io.gfile.exists(path):
      raise FileExistsError(f'{path} already exists; refusing to overwrite it')
    split = 'train' if train else 'eval'
    ds = (self.dataset.train_one_pass_input_fn if train else self.dataset.eval_input_fn)(
        {'batch_size': self.total_bs})
    if ds is None:
      raise ValueError(f'{type(self.dataset).__name__} has no eval split; use --mode bpd_train')
    if max_batches:
      ds = ds.take(int(max_batches))
    total = getattr(self.dataset, f'num_{"train" if train else "eval"}_examples', None)
    num_batches = total // self.total_bs if total else None
    if num_batches is not None and max_batches:
      num_batches = min(num_batches, int(max_batches))
    progress = Progress(f'bpd_{split} batch', num_batches, self.log)
    outs = {k: [] for k in BPD_KEYS}
    for i, batch in enumerate(ds):
      res = self._bpd(np.asarray(batch['image']))
      for k in BPD_KEYS:
        outs[k].append(np.asarray(res[k], np.float32))
      mean = float(np.mean(np.concatenate(outs['total_bpd'])))
      progress.update(i + 1, f'  mean total bpd so far {mean:.5f} '
                             f'({(i + 1) * self.total_bs} images)')
    if not outs['total_bpd']:
      raise ValueError(f'the {split} split has no complete batch of {self.total_bs} images')
    arrays = {k: np.concatenate(v, axis=0) for k, v in outs.items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    utils.atomic_write(path, buf.getvalue(), overwrite=False)
    n = arrays['total_bpd'].shape[0]
    self.log(f'bpd_{split}: mean total bits/dim {arrays["total_bpd"].mean():.6f} over {n} images '
             f'(prior {arrays["prior_bpd"].mean():.6f}, decoder term '
             f'{arrays["terms_bpd"][:, 0].mean():.6f}); wrote {path}')
    return path

  # --------------------------------------------------------------------------- progressive

  @staticmethod
  def flush_points(num_batches, batches_per_flush=20):
    """Lists of batch indices per part file, with the original's grouping."""
    parts, cur = [], []
    for i in range(num_batches):
      cur.append(i)
      if i != 0 and i % batches_per_flush == 0:
        parts.append(cur)
        cur = []
    if cur:
      parts.append(cur)
    return parts

  @staticmethod
  def progressive_path(output_dir, step, part, max_batches=None):
    suffix = f'_first{max_batches}batches' if max_batches else ''
    return os.path.join(output_dir,
                        f'samples_xstartpred_ema1_step{step:09d}{suffix}_part{part:06d}.npz')

  def dump_progressive_samples(self, step, output_dir, *, num_samples=50000, max_batches=None,
                               batches_per_flush=20, seed=0):
    """Writes the part files; returns their paths."""
    num_batches = math.ceil(num_samples / self.total_bs)
    if max_batches:
      num_batches = min(num_batches, int(max_batches))
    parts = self.flush_points(num_batches, batches_per_flush)
    paths = [self.progressive_path(output_dir, step, k, max_batches) for k in range(len(parts))]
    existing = [p for p in paths if tf.io.gfile.exists(p)]
    if existing:
      raise FileExistsError(f'{existing[0]} already exists ({len(existing)} of the {len(paths)} '
                            f'part files do); refusing to overwrite')
    tf.random.set_seed(seed)
    progress = Progress('progressive samples batch', num_batches, self.log)
    dummy = np.zeros([self.total_bs], np.float32)
    done = 0
    for k, (part, path) in enumerate(zip(parts, paths)):
      outs = {'samples': [], 'progressive_samples': []}
      for _ in part:
        res = self._progressive(dummy)
        for key in outs:
          outs[key].append(np.asarray(res[key], np.float32))
        done += 1
        progress.update(done)
      buf = io.BytesIO()
      np.savez(buf, **{key: np.concatenate(v, axis=0) for key, v in outs.items()})
      utils.atomic_write(path, buf.getvalue(), overwrite=False)
      self.log(f'wrote {path} ({len(part)} batches)')
    return paths

  # --------------------------------------------------------------------------- entry point

  def run(self, mode, logdir, load_ckpt=None, *, max_batches=None, num_samples=50000, seed=0):
    """Runs ``mode`` on ``<logdir>/<load_ckpt>`` (default: the latest checkpoint) with the EMA
    weights. Returns the written path(s)."""
    with self.strategy.scope():
      return self._run(mode, logdir, load_ckpt, max_batches, num_samples, seed)

  def _run(self, mode, logdir, load_ckpt, max_batches, num_samples, seed):
    if mode not in MODES:
      raise NotImplementedError(f'mode={mode!r}; expected one of {MODES}')
    if load_ckpt:
      ckpt = os.path.join(logdir, load_ckpt)
      if not tf.io.gfile.exists(ckpt + '.index'):
        raise FileNotFoundError(f'Checkpoint {ckpt} not found (no {ckpt}.index); --load_ckpt is '
                                f'relative to --model_dir, e.g. model.ckpt-790000')
      integrity.requested_checkpoint(ckpt, '--load_ckpt')
    else:
      ckpt = integrity.checkpoint_to_read(logdir, '--model_dir', self.log)
    step = checkpoint_step(ckpt)
    out_root = os.path.join(logdir, 'simple_eval')
    if mode in ('bpd_train', 'bpd_eval'):
      out_dir = os.path.join(out_root, 'bpd')
      path = self.bpd_path(out_dir, step, mode == 'bpd_train', max_batches)
      if tf.io.gfile.exists(path):  # fail before restoring or computing anything
        raise FileExistsError(f'{path} already exists; refusing to overwrite it')
    restored = checkpoints.restore_tf1_checkpoint(self.model.net, ckpt, ema=True)
    self.log(f'Restored EMA weights from {ckpt} (step {restored})')
    t0 = time.time()
    if mode in ('bpd_train', 'bpd_eval'):
      out = self.dump_bpd(step, out_dir, train=mode == 'bpd_train', max_batches=max_batches)
    else:
      out = self.dump_progressive_samples(step, os.path.join(out_root, 'progressive_samples'),
                                          num_samples=num_samples, max_batches=max_batches,
                                          seed=seed)
    written = out if isinstance(out, str) else ', '.join(out) or 'nothing'
    self.log(f'{mode} done in {time.time() - t0:.0f} s; wrote {written}')
    return out
