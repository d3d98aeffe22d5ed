"""Is a file whole? Checkpoints and ``.npz`` files damaged after they were written (a partial
copy from a bucket, a full disk) are found before they are used, set aside (renamed, never
deleted) and replaced by the newest intact checkpoint, or redone.

Checkpoints: `checkpoint_damage` (index readable, data files at least as large as the index's
tensors need, every tensor readable, which also checks TF's per-tensor CRC);
`newest_intact_checkpoint` for a run directory; `requested_checkpoint` for a checkpoint named
on the command line, where damage is an error. ``.npz`` files: `npz_damage`, `set_aside`.
"""

import io
import os
import re
import time
import zipfile

import numpy as np
import tensorflow as tf

from .checkpoints import resolve_checkpoint
from .errors import DamagedCheckpointError

_STEP = re.compile(r'-(\d+)$')


def _first_line(e):
  text = e.message if isinstance(e, tf.errors.OpError) else str(e)
  return (text.strip().splitlines() or [type(e).__name__])[0]


def _norm(path):
  return path if '://' in path else os.path.abspath(path)


def _step(prefix):
  m = _STEP.search(prefix)
  return int(m.group(1)) if m else -1


def checkpoint_prefixes(model_dir):
  """The prefixes of the checkpoints in ``model_dir`` (by their ``.index`` files), newest step
  first. Set-aside files (``*.damaged-*``) are not among them."""
  indexes = tf.io.gfile.glob(os.path.join(model_dir, '*.index'))
  return sorted((p[:-len('.index')] for p in indexes), key=_step, reverse=True)


def _data_files(prefix):
  return tf.io.gfile.glob(prefix + '.data-?????-of-?????')


def checkpoint_damage(prefix, *, read_tensors=True):
  """None if the checkpoint ``prefix`` is whole, else why it is not (one line).
  ``read_tensors=False`` checks the index and the data files' size only (nothing is read)."""
  index = prefix + '.index'
  if not tf.io.gfile.exists(index):
    return f'its index file {index} is missing'
  try:
    reader = tf.train.load_checkpoint(prefix)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
  except Exception as e:  # noqa: BLE001 -- whatever TF's reader says, the file is unusable
    return f'its index {index} is unreadable ({_first_line(e)})'
  data = _data_files(prefix)
  if not data:
    return f'it has no data file ({prefix}.data-*)'
  size = sum(tf.io.gfile.stat(f).length for f in data)
  needed = sum(int(np.prod(shapes[k], dtype=np.int64)) * dtypes[k].size
               for k in shapes if dtypes[k] != tf.string)
  if size < needed:
    return (f'its data {"files hold" if len(data) > 1 else "file " + data[0] + " holds"} '
            f'{size} bytes, less than the {needed} its index describes (truncated?)')
  for name in sorted(shapes) if read_tensors else ():
    try:
      reader.get_tensor(name)
    except Exception as e:  # noqa: BLE001 -- read errors come as several types
      return f'its variable {name} is unreadable ({_first_line(e)})'
  return None


def set_aside(path, log_fn=None):
  """Renames ``path`` to ``<path>.damaged-<UTC time>`` (never deletes it); returns the new name."""
  new = f'{path}.damaged-{time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())}'
  tf.io.gfile.rename(path, new, overwrite=False)
  if log_fn:
    log_fn(f'  set aside {path} as {new}')
  return new


def _checkpoint_files(prefix):
  return [f for f in [prefix + '.index', *_data_files(prefix), prefix + '.meta']
          if tf.io.gfile.exists(f)]


def _read_state(model_dir):
  """(CheckpointState or None, whether the ``checkpoint`` state file exists but is unusable)."""
  path = os.path.join(model_dir, 'checkpoint')
  if not tf.io.gfile.exists(path):
    return None, False
  state = tf.train.get_checkpoint_state(model_dir)  # None (with a warning) when unparseable
  return state, state is None or not state.model_checkpoint_path


def newest_intact_checkpoint(model_dir, log_fn=print, *, set_aside_damaged=True):
  """The checkpoint of ``model_dir`` to use: the one its ``checkpoint`` state file names, if
  whole, else the newest whole one. Damaged checkpoints tried on the way are reported and set
  aside, and the state file is rewritten to name the one returned (also when it was
  unreadable). None if the directory holds no checkpoint; `DamagedCheckpointError` if it
  holds only damaged ones. ``set_aside_damaged=False`` (a non-chief worker) only skips them."""
  state, state_bad = _read_state(model_dir)
  named = state.model_checkpoint_path if state is not None and state.model_checkpoint_path else None
  candidates = ([named] if named else []) + [p for p in checkpoint_prefixes(model_dir)
                                            if not named or _norm(p) != _norm(named)]
  damaged, good = [], None
  for prefix in candidates:
    reason = checkpoint_damage(prefix)
    if reason is None:
      good = prefix
      break
    damaged.append((prefix, reason))
  if not set_aside_damaged:
    return good
  for prefix, reason in damaged:
    files = _checkpoint_files(prefix)
    log_fn(f'WARNING: checkpoint {prefix} is damaged: {reason}.'
           + (' Setting its files aside:' if files else ''))
    for f in files:
      set_aside(f, log_fn)
  if good is None:
    if damaged:
      raise DamagedCheckpointError(
          f'{model_dir} holds no intact checkpoint: {", ".join(p for p, _ in damaged)} '
          f'{"is" if len(damaged) == 1 else "are"} damaged (set aside as *.damaged-*). Restore '
          f'them from a copy, or run again to start afresh.')
    return None
  if damaged or state_bad or named is not None and _norm(named) != _norm(good):
    if damaged:
      log_fn(f'WARNING: using {good} (step {_step(good)}) instead of the damaged '
             f'{damaged[0][0]}')
    elif state_bad:
      log_fn(f'WARNING: {os.path.join(model_dir, "checkpoint")} is unreadable; using {good}')
    _rewrite_state(model_dir, state, good)
  return good


def _rewrite_state(model_dir, state, good):
  kept = [p for p in (state.all_model_checkpoint_paths if state is not None else [])
          if tf.io.gfile.exists(p + '.index')]
  kept = sorted(kept, key=_step)
  if not kept:  # a lost state file: the directory's intact checkpoints, for retention
    kept = list(reversed(checkpoint_prefixes(model_dir)))
  kept = [p for p in kept if _step(p) < _step(good)]
  # Relative names, as our saver writes them: the directory can be moved or copied.
  tf.compat.v1.train.update_checkpoint_state(
      model_dir, os.path.basename(good),
      all_model_checkpoint_paths=[os.path.basename(p) for p in kept + [good]])


def checkpoint_to_read(path, flag, log_fn=print):
  """The checkpoint to read for a flag that takes a run directory (its newest intact
  checkpoint, see `newest_intact_checkpoint`) or a checkpoint prefix (which must be whole)."""
  if tf.io.gfile.isdir(path):
    good = newest_intact_checkpoint(path, log_fn)
    return good if good is not None else resolve_checkpoint(path)  # its "no checkpoint" error
  return requested_checkpoint(resolve_checkpoint(path), flag)


def requested_checkpoint(prefix, flag):
  """``prefix``, a checkpoint named by ``flag``, if it is whole; else `DamagedCheckpointError`
  naming the file and what is wrong (it is not set aside: the user asked for it)."""
  reason = checkpoint_damage(prefix)
  if reason is not None:
    raise DamagedCheckpointError(
        f'{flag} {prefix}: the checkpoint is damaged: {reason}. Copy it again, or pass another '
        f'checkpoint.')
  return prefix


# ----------------------------------------------------------------------------- .npz files

def npz_damage(path):
  """None if ``path`` is a whole ``.npz`` (a zip whose members all pass their CRC check), else
  why it is not."""
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = f.read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
      bad = z.testzip()
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    return f'not a readable .npz file ({_first_line(e)})'
  if bad is not None:
    return f'its member {bad} fails its CRC check'
  return None


def set_aside_if_damaged(path, what, log_fn=print):
  """True (after reporting and renaming it) if the ``.npz`` file ``path`` is damaged."""
  reason = npz_damage(path)
  if reason is None:
    return False
  log_fn(f'WARNING: {what} {path} is damaged ({reason}); setting it aside and computing it again')
  set_aside(path, log_fn)
  return True
