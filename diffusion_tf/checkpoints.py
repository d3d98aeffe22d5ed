"""Name-based (TF1 layout) checkpoints: read the authors' released models, and write ours
in the same layout so one reader serves both.

Layout (original §3.4): raw weights ``model/...``, EMA shadows
``model/.../ExponentialMovingAverage``, Adam slots ``model/.../Adam`` and ``.../Adam_1``,
``beta1_power``, ``beta2_power`` and ``global_step``; files ``model.ckpt-<step>.*`` plus
the ``checkpoint`` state file that `tf.train.latest_checkpoint` reads.
"""

import logging
import os

import tensorflow as tf

from .errors import ModelFileError
from .models.unet import tf1_name

EMA_SUFFIX = '/ExponentialMovingAverage'
# Slot and bookkeeping suffixes that may sit beside a model variable in a training checkpoint.
_AUX_SUFFIXES = (EMA_SUFFIX, '/Adam', '/Adam_1', '/RMSProp', '/RMSProp_1', '/Momentum')


class CheckpointMismatchError(ModelFileError):
  """The checkpoint's variables do not match the network's."""


def ema_name(name):
  return name + EMA_SUFFIX


def resolve_checkpoint(path):
  """A checkpoint prefix from a prefix or a directory (its latest checkpoint)."""
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise FileNotFoundError(f'No checkpoint found in directory {path} (no "checkpoint" file '
                              f'or no model.ckpt-* files)')
    return latest
  if not tf.io.gfile.exists(path + '.index'):
    raise FileNotFoundError(f'Checkpoint {path!r} not found: expected the file {path}.index '
                            f'(pass a prefix such as .../model.ckpt-790000, or a directory)')
  return path


def _summarise(title, items, limit=10):
  items = sorted(items)
  more = f' ... and {len(items) - limit} more' if len(items) > limit else ''
  return f'{title} ({len(items)}): ' + ', '.join(items[:limit]) + more


def check_matches(prefix, expected, shapes, *, ema=True, strict=True):
  """Raises `CheckpointMismatchError` unless checkpoint ``prefix`` (its ``shapes``, from the
  index) holds the variables ``expected`` ({TF1 name: shape}: a network's, built or listed by
  `nn.shapes_only`), listing what is missing, mis-shaped and (``strict``) unexpected."""
  names = list(expected)
  scopes = {n.split('/')[0] for n in names}
  if ema and not any(k.endswith(EMA_SUFFIX) for k in shapes):
    raise CheckpointMismatchError(f'{prefix} holds no EMA weights (no "*{EMA_SUFFIX}" '
                                  f'variables); load the raw weights with ema=False')
  missing, misshaped = [], []
  for name, shape in expected.items():
    key = ema_name(name) if ema else name
    if key not in shapes:
      missing.append(key)
    elif list(shapes[key]) != list(shape):
      misshaped.append(f'{key} {list(shapes[key])} vs model {list(shape)}')
  used = {ema_name(n) if ema else n for n in names}
  unexpected = [k for k in shapes
                if k.split('/')[0] in scopes and k not in used
                and not any(k.endswith(s) for s in _AUX_SUFFIXES) and k not in expected]
  problems = []
  if missing:
    problems.append(_summarise('missing from checkpoint', missing))
  if misshaped:
    problems.append(_summarise('shape mismatch', misshaped))
  if strict and unexpected:
    problems.append(_summarise('in checkpoint but not in model', unexpected))
  if problems:
    raise CheckpointMismatchError(
        f'Checkpoint {prefix} does not match the model ({"EMA" if ema else "raw"} weights): '
        + '; '.join(problems)
        + ' (Is the model configuration, e.g. out_ch / ch_mult / model_name, the one it was '
          'trained with?)')


def restore_tf1_checkpoint(net, ckpt, *, ema=True, strict=True):
  """Loads a TF1-layout checkpoint into a built `UNet` (or any module whose variables
  carry TF1 names). ``ema=True`` takes the ``.../ExponentialMovingAverage`` shadows,
  ``ema=False`` the raw weights. Returns the checkpoint's global step (or None).

  Raises `CheckpointMismatchError` listing missing, mis-shaped and (with ``strict``)
  unexpected variables, before assigning anything.
  """
  variables = list(net.trainable_variables)
  if not variables:
    raise ValueError('The network has no variables yet: build it (pass resolution= or call it once)')
  prefix = resolve_checkpoint(ckpt)
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()

  check_matches(prefix, {tf1_name(v): v.shape.as_list() for v in variables}, shapes, ema=ema,
                strict=strict)
  values = [(v, ema_name(tf1_name(v)) if ema else tf1_name(v)) for v in variables]
  for v, key in values:
    v.assign(reader.get_tensor(key))
  return int(reader.get_tensor('global_step')) if 'global_step' in shapes else None


def tf1_saver(var_list, **kwargs):
  """``tf.compat.v1.train.Saver`` without its deprecation warning: name-based saving is what
  keeps our checkpoints in the TF1 layout of the released ones, on purpose."""
  logger = tf.get_logger()
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    return tf.compat.v1.train.Saver(var_list=var_list, **kwargs)
  finally:
    logger.setLevel(level)


class _DropSaverDeprecations(logging.Filter):
  """Drops TF's deprecation notices for the functions TF1's Saver calls internally when it
  deletes checkpoints beyond ``max_to_keep`` (``remove_checkpoint``); other records pass."""

  _INTERNAL = ('remove_checkpoint (from tensorflow',)

  def filter(self, record):
    msg = record.getMessage()
    return not ('is deprecated' in msg and any(name in msg for name in self._INTERNAL))


def saver_save(saver, prefix, global_step=None):
  """``saver.save`` of a `tf1_saver` without the deprecation notices of TF's own internals."""
  logger, drop = tf.get_logger(), _DropSaverDeprecations()
  logger.addFilter(drop)
  try:
    return saver.save(None, prefix, global_step=global_step, write_meta_graph=False)
  finally:
    logger.removeFilter(drop)


def checkpoint_mtimes(prefixes):
  """[(prefix, modification time in seconds)] of the checkpoints that exist, by their
  ``.index`` files (what TF's deprecated ``get_checkpoint_mtimes`` did, for retention)."""
  out = []
  for prefix in prefixes:
    index = prefix + '.index'
    if tf.io.gfile.exists(index):
      out.append((prefix, tf.io.gfile.stat(index).mtime_nsec / 1e9))
  return out


def write_tf1_checkpoint(prefix, var_dict, *, global_step=None, max_to_keep=None):
  """Writes ``{tf1_name: variable_or_tensor}`` as a name-based checkpoint.

  Returns the written prefix (``prefix-<global_step>`` when a step is given) and
  updates the directory's ``checkpoint`` state file. Data is written to temporary
  files and renamed into place by TF's saver, so a crash never leaves a half-written
  checkpoint registered as the latest.
  """
  var_dict = {k: (v if isinstance(v, tf.Variable) else tf.Variable(v, trainable=False))
              for k, v in var_dict.items()}
  saver = tf1_saver(var_dict, max_to_keep=max_to_keep or 5, save_relative_paths=True)
  return saver_save(saver, prefix, global_step=global_step)


def model_var_dict(net, ema_shadows=None):
  """``{tf1_name: variable}`` for a network's weights and, if given, their EMA shadows
  (a list parallel to ``net.trainable_variables``)."""
  out = {tf1_name(v): v for v in net.trainable_variables}
  if ema_shadows is not None:
    out.update({ema_name(tf1_name(v)): s for v, s in zip(net.trainable_variables, ema_shadows)})
  return out


def save_tf1_checkpoint(unet, out_dir):
  """Writes ``out_dir/model.ckpt-0`` in the authors' layout: the weights under both the raw and
  the EMA names (so ``ema=True`` loaders read them too). Refuses a folder with checkpoints."""
  if tf.io.gfile.exists(out_dir) and tf.train.latest_checkpoint(out_dir):
    raise FileExistsError(f'{out_dir} already holds checkpoints; pass a new folder')
  return write_tf1_checkpoint(
      os.path.join(out_dir, 'model.ckpt'),
      model_var_dict(unet, ema_shadows=[tf.identity(v) for v in unet.trainable_variables]),
      global_step=0)
