"""A training run's directory and everything the trainer keeps in it.

``<log_dir>/<date>/<exp_name>`` holds the run lock (``train.lock``: one trainer per run), the
settings it was started with (``kwargs.json``, compared on every resumption), the checkpoints
(``model.ckpt-<step>``, the newest N kept) and the TensorBoard events. `RunDirectory` owns all
of them for one training, so the loop in `tpu_utils.run_training` only says when to save.
"""

import json
import os
import signal
import socket
import time

import numpy as np
import tensorflow as tf

from .. import checkpoints, integrity, utils
from ..errors import DamagedFileError, UserError


# ----------------------------------------------------------------------------- kwargs.json and the run lock

# Arguments that may change between a run and its resumption without changing what is trained.
RESUME_SAFE_KWARGS = frozenset({
    'tpu_name', 'bucket_name_prefix', 'region', 'log_dir', 'tfds_data_dir', 'tfr_file', 'data_dir',
    'max_steps', 'save_every_steps', 'save_checkpoints_secs', 'keep_checkpoint_max',
    'iterations_per_loop', 'warm_start_model_dir', 'allow_kwargs_mismatch', 'num_sample_images',
    'sample_steps', 'shuffle_buffer', 'seed', 'summary_every', 'hf_cache_dir', 'hf_streaming',
})


# Options added after runs had been recorded, with the behaviour a kwargs.json written before
# them had (a script default may differ: run_digits now defaults to channels=1, a linear
# learning-rate schedule and mixed_precision='auto').
RECORDED_BEFORE_OPTION_EXISTED = {'channels': 3, 'lr_schedule': 'constant', 'mixed_precision': None}


def with_older_defaults(recorded, keys):
  """``recorded`` (a kwargs.json) plus `RECORDED_BEFORE_OPTION_EXISTED` for those of ``keys``
  it predates."""
  older = {k: v for k, v in RECORDED_BEFORE_OPTION_EXISTED.items() if k in keys and k not in recorded}
  return dict(older, **recorded)


class KwargsMismatchError(UserError, ValueError):
  pass


def load_train_kwargs(model_dir):
  """The run's kwargs.json; `DamagedFileError` if it is not valid JSON."""
  path = os.path.join(model_dir, 'kwargs.json')
  try:
    return utils.read_json(path)
  except ValueError as e:
    raise DamagedFileError(
        f'{path} is not valid JSON ({e}); it records the settings of the run in {model_dir}. '
        f'Repair it (a kwargs.json.*.bak beside it may hold a previous copy), or use another '
        f'--exp_name or --log_dir.') from None


class RunDirectoryBusyError(UserError, RuntimeError):
  pass


LOCK_FILE = 'train.lock'


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def acquire_run_lock(model_dir, log_fn=utils.log):
  """Claims ``<model_dir>/train.lock`` so that two trainings never write the same run.

  The lock names the owner's host and pid. A lock left by a process that no longer runs on
  this host (a crash, a kill -9), or by this very process (an earlier call in a notebook), is
  taken over. Local directories only: gs:// has no atomic create-if-absent through gfile.
  Returns a function that releases the lock.
  """
  if '://' in model_dir:
    return lambda: None
  path = os.path.join(model_dir, LOCK_FILE)
  me = {'host': socket.gethostname(), 'pid': os.getpid()}
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path) as f:
          owner = json.load(f)
      except (OSError, ValueError):  # unreadable: refused below, the message names the file
        owner = {}
      same_host = owner.get('host') == me['host']
      pid = owner.get('pid')
      if same_host and isinstance(pid, int) and (pid == me['pid'] or not _pid_alive(pid)):
        if pid != me['pid']:
          log_fn(f'Taking over {path} left by pid {pid}, which no longer runs')
        os.remove(path)
        continue
      raise RunDirectoryBusyError(
          f'{model_dir} is being trained by another process ({path}: host '
          f'{owner.get("host")!r}, pid {pid}). Wait for it to finish, use another --exp_name or '
          f'--log_dir, or delete {path} if that process is gone.')
    with os.fdopen(fd, 'w') as f:
      json.dump(me, f)

    def release():
      try:
        with open(path) as f:
          mine = json.load(f).get('pid') == me['pid']
        if mine:
          os.remove(path)
      except (OSError, ValueError):
        pass  # already gone
    return release
  raise RunDirectoryBusyError(f'could not claim {path}')


def _check_and_write_kwargs(model_dir, kwargs, allow_mismatch, log_fn=utils.log):
  path = os.path.join(model_dir, 'kwargs.json')
  kwargs = _jsonable(kwargs)
  if tf.io.gfile.exists(path):
    if not integrity.checkpoint_prefixes(model_dir):
      # A start that failed before its first checkpoint is not a run to protect.
      try:
        recorded = load_train_kwargs(model_dir)
      except DamagedFileError:
        recorded = None
      if recorded != kwargs:
        log_fn(f'{path} records other settings but {model_dir} holds no checkpoint: replacing '
               f'it with these settings')
    else:
      recorded = load_train_kwargs(model_dir)
      old = with_older_defaults(recorded, kwargs)
      diff = sorted(k for k in set(old) | set(kwargs)
                    if k not in RESUME_SAFE_KWARGS and old.get(k) != kwargs.get(k))
      if diff and not allow_mismatch:
        lines = '\n'.join(f'  {k}: existing {old.get(k)!r}, now {kwargs.get(k)!r}' for k in diff)
        raise KwargsMismatchError(
            f'{path} records a run with different settings:\n{lines}\nUse another --exp_name or '
            f'--log_dir, or pass --allow_kwargs_mismatch to continue this run with the new settings.')
    if recorded == kwargs:
      return
    # Keep the previous record rather than overwrite it.
    utils.atomic_write(f'{path}.{time.strftime("%Y%m%d-%H%M%S")}.bak',
                       tf.io.gfile.GFile(path, 'rb').read())
  utils.write_json(path, kwargs)


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (np.integer, np.floating)):
    return obj.item()
  return obj

# ----------------------------------------------------------------------------- the run directory

class RunDirectory:
  """One training's run directory: lock, ``kwargs.json``, resumption, checkpoints, summaries.

  ``with RunDirectory(path, chief=...) as run_dir:`` creates the directory and claims its
  lock, and releases the lock however the block ends (NaN stop, refused kwargs, Ctrl-C in a
  notebook), so the next training of this directory is never refused because of this
  process. A non-chief worker of a multi-worker run takes no lock, writes neither
  ``kwargs.json`` nor checkpoints, leaves damaged checkpoints where they are (the chief sets
  them aside) and writes its summaries to ``worker_tmp``.
  """

  def __init__(self, path, *, chief=True, keep_checkpoint_max=2, allow_kwargs_mismatch=False,
               log_fn=utils.log):
    self.path, self.chief, self.log_fn = path, chief, log_fn
    self.keep_checkpoint_max = keep_checkpoint_max
    self.allow_kwargs_mismatch = allow_kwargs_mismatch
    self.writer = None
    self._release_lock = lambda: None
    self._saver = None
    self._saved_step = None  # the step of the newest checkpoint on disk, if this run knows it
    self._last_save_time = time.time()

  def __enter__(self):
    tf.io.gfile.makedirs(self.path)
    if self.chief:
      self._release_lock = acquire_run_lock(self.path, self.log_fn)
    return self

  def __exit__(self, *exc):
    release, self._release_lock = self._release_lock, lambda: None
    release()

  def record_kwargs(self, kwargs):
    """Writes ``kwargs`` (a script's flags; None: nothing to record) to ``kwargs.json``, or
    refuses with `KwargsMismatchError` if the checkpoints here were trained with other
    settings (see `RESUME_SAFE_KWARGS`)."""
    if kwargs is not None and self.chief:
      _check_and_write_kwargs(self.path, kwargs, self.allow_kwargs_mismatch, self.log_fn)

  def restore(self, state, warm_start_from=None):
    """Resumes ``state`` (a `TrainState`) from the newest intact checkpoint here, or, in a new
    run, warm-starts its weights from ``warm_start_from`` (a run directory or checkpoint; the
    step stays 0). Then opens the checkpoint saver. Returns the checkpoint resumed from, or None."""
    latest = integrity.newest_intact_checkpoint(self.path, self.log_fn, set_aside_damaged=self.chief)
    if latest:
      missing = state.restore(latest)
      if missing:
        raise ValueError(f'{latest} lacks {len(missing)} training variables, e.g. {missing[:5]}')
      self.log_fn(f'Resuming from {latest} (step {int(state.global_step.numpy())})')
    elif warm_start_from:
      ckpt = integrity.checkpoint_to_read(warm_start_from, '--warm_start_model_dir', self.log_fn)
      missing = state.restore(ckpt, include_step=False)
      self.log_fn(f'Warm-started from {ckpt}' + (f' ({len(missing)} variables not in it kept '
                                                  f'their initial values)' if missing else ''))
    self._saver = _Saver(state, self.path, self.keep_checkpoint_max) if self.chief else None
    # A resumed run does not save again the step it resumed from.
    self._saved_step = int(state.global_step.numpy()) if latest else None
    return latest

  def open_summary_writer(self):
    """The TensorBoard writer of this run (also flushed by `save`)."""
    self.writer = tf.summary.create_file_writer(
        self.path if self.chief else os.path.join(self.path, 'worker_tmp'))
    return self.writer

  def start_save_clock(self):
    """Time-based saves count from now (the first training step), not from the setup."""
    self._last_save_time = time.time()

  def seconds_since_save(self):
    return time.time() - self._last_save_time

  def save(self, step, reason):
    """Saves checkpoint ``model.ckpt-<step>`` (chief only; not twice for one step) and logs
    it with ``reason``."""
    if self._saver is None or self._saved_step == step:
      return
    path = self._saver.save(step)
    self.writer.flush()
    self._last_save_time, self._saved_step = time.time(), step
    self.log_fn(f'Saved {path} ({reason})')

  def latest_checkpoint(self):
    return tf.train.latest_checkpoint(self.path)

  @staticmethod
  def stop_request():
    """A context in which SIGTERM / SIGINT ask the loop to save and stop (`_StopRequest`)."""
    return _StopRequest()


# ----------------------------------------------------------------------------- checkpoints

def _local(v):
  """The first local component of a (possibly distributed) variable."""
  values = getattr(v, 'values', None)
  return values[0] if isinstance(values, tuple) else v


class _Saver:
  """Name-based checkpoints ``<model_dir>/model.ckpt-<step>``, keeping the newest N.

  Saves each variable's first local copy (all replicas hold the same values); TF's saver
  writes to temporary files and renames them, then updates the ``checkpoint`` file.
  """

  def __init__(self, state, model_dir, keep):
    self.prefix = os.path.join(model_dir, 'model.ckpt')
    self.saver = checkpoints.tf1_saver({k: _local(v) for k, v in state.var_dict().items()},
                                       max_to_keep=keep, save_relative_paths=True)
    # Keep retention working across restarts.
    ckpt_state = tf.train.get_checkpoint_state(model_dir)
    if ckpt_state is not None:
      self.saver.set_last_checkpoints_with_time(
          checkpoints.checkpoint_mtimes(ckpt_state.all_model_checkpoint_paths))

  def save(self, step):
    return checkpoints.saver_save(self.saver, self.prefix, global_step=step)


# ----------------------------------------------------------------------------- signals

class _StopRequest:
  """SIGTERM / SIGINT set a flag: the loop saves a checkpoint and returns. A second
  SIGINT interrupts at once."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    try:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    except ValueError:  # not the main thread: no signal handling
      pass
    return self

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    print(f'\nReceived signal {signum}: saving a checkpoint and stopping after the current steps.',
          flush=True)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
