"""What the public objects take as images, timesteps and sample shapes (`UNet.__call__`, the
diffusion methods), and the ValueError that says what was expected when an input does not fit.

Tensors of the shapes that already worked pass through unchanged, so such code computes exactly
what it did: the checks read only static shapes and dtypes (inside a `tf.function` they run
once, at trace time, and add no ops to the graph); only a scalar timestep tensor, which used to
fail, is filled to the batch. NumPy arrays, lists and Python numbers are converted
the way TensorFlow's own layers take them: images to float32, timesteps to int32, a scalar
timestep repeated for every example of the batch.
"""

import operator

import numpy as np
import tensorflow as tf

_INT32 = np.iinfo(np.int32)


def shape_text(shape):
  """A static shape for a message: ``(2, 8, 8, 3)``, ``(None, 8, 8, 3)`` or ``<unknown rank>``."""
  shape = tf.TensorShape(shape)
  return '<unknown rank>' if shape.rank is None else str(tuple(shape))


def _as_array(value, fail):
  try:
    return np.asarray(value)
  except (ValueError, TypeError) as e:  # ragged nested lists, objects NumPy cannot hold
    raise fail(f'{type(value).__name__} that is not an array ({e})') from None


def float_images(x, *, owner, expected, what='images', dtype=tf.float32, rank=None, min_rank=1):
  """``x`` as a float tensor of ``rank`` (or at least ``min_rank``) dimensions.

  Tensors and variables keep their dtype (the caller's dtype handling applies, e.g. the UNet's
  ``compute_dtype``); NumPy arrays, lists and Python numbers of a float dtype become ``dtype``.
  Integer arrays are refused rather than converted, since they are usually uint8 pixels in
  [0, 255] where [-1, 1] is meant. ``expected`` describes the wanted input for the message,
  e.g. ``'[B, 32, 32, 3] (NHWC float)'``: "``owner`` expects ``what`` ``expected``; got ...".
  """
  fail = lambda got: ValueError(f'{owner} expects {what} {expected}; got {got}')
  if tf.is_tensor(x):
    if not x.dtype.is_floating:
      raise fail(f'a tensor of dtype {x.dtype.name}')
  else:
    arr = _as_array(x, fail)
    if arr.dtype.kind != 'f':
      hint = ' (scale integer pixels to [-1, 1] first)' if arr.dtype.kind in 'iu' else ''
      raise fail(f'dtype {arr.dtype}{hint}')
    x = tf.convert_to_tensor(arr, dtype)
  r = x.shape.rank
  if r is not None and (r != rank if rank is not None else r < min_rank):
    raise fail(f'shape {shape_text(x.shape)}')
  return x


def like_images(y, x, *, owner, what):
  """``y`` (noise, x_t, eps, ...) checked to be a float tensor of ``x``'s shape; NumPy arrays,
  lists and numbers become ``x``'s dtype."""
  expected = f'of the same shape as the images, {shape_text(x.shape)}, float'
  y = float_images(y, owner=owner, expected=expected, what=what, dtype=x.dtype, min_rank=0)
  if not y.shape.is_compatible_with(x.shape):
    raise ValueError(f'{owner} expects {what} {expected}; got shape {shape_text(y.shape)}')
  return y


def _host_timesteps(t, fail, num_timesteps):
  """NumPy / Python timestep values as int32, checked on the host: integers, or floats that are
  whole numbers, within [0, num_timesteps) (or int32's range when it is None)."""
  arr = _as_array(t, fail)
  if arr.dtype.kind == 'f':
    if not np.all(np.isfinite(arr) & (arr == np.round(arr))):
      raise fail(f'{arr.tolist()} (not whole numbers)')
  elif arr.dtype.kind not in 'iu':
    raise fail(f'dtype {arr.dtype}')
  lo, hi = (0, num_timesteps - 1) if num_timesteps is not None else (_INT32.min, _INT32.max)
  if arr.size and (arr.min() < lo or arr.max() > hi):
    got = arr.tolist() if arr.size <= 8 else f'values from {arr.min()} to {arr.max()}'
    raise fail(f'{got}, outside [{lo}, {hi}]')
  return arr.astype(np.int32)


def timesteps(t, images, *, owner, num_timesteps=None, allow_single=False, allow_float=False):
  """``t`` as an integer [B] tensor for ``images`` [B, ...].

  A tensor must have an integer dtype (a float tensor's values are unknown while tracing, so a
  fractional timestep could not be caught); a [B] one passes through unchanged, a scalar one
  is filled to [B]. NumPy / Python values are checked on the host (see `_host_timesteps`),
  become int32, and a scalar is repeated B times. ``allow_single``: a length-1 vector also
  passes, for a caller that broadcasts it over the batch (the UNet's embedding add does).
  ``allow_float``: a float tensor passes too (a network whose embedding takes real t).
  """
  batch = images.shape.as_list()[0] if images.shape.rank else None

  def fail(got):  # the message is only built when it is needed (UNet calls are benchmarked)
    vector = 'int [B] vector' + (' (or [1])' if allow_single else '')
    b = f'B = {batch}' if batch is not None else 'B'
    return ValueError(f'{owner} expects timesteps t: an integer scalar or an {vector}, '
                      f'{b} (the images\' batch); got {got}')

  if tf.is_tensor(t):
    if not (t.dtype.is_integer or (allow_float and t.dtype.is_floating)):
      raise fail(f'a tensor of dtype {t.dtype.name}')
  else:
    t = _host_timesteps(t, fail, num_timesteps)
    if t.ndim == 0 and batch is not None:
      t = np.full([batch], t)
    t = tf.convert_to_tensor(t)
  rank = t.shape.rank
  if rank == 0:  # a scalar tensor, or a Python number while the batch size is unknown
    return tf.fill([batch] if batch is not None else tf.shape(images)[:1], t)
  if rank is not None:
    n = t.shape.as_list()[0] if rank == 1 else -1
    if rank != 1 or (n is not None and batch is not None and n != batch
                     and not (allow_single and n == 1)):
      raise fail(f'shape {shape_text(t.shape)}')
  return t


def timestep(t, *, owner, num_timesteps):
  """One timestep index as an int32 scalar tensor (an integer tensor passes through)."""
  fail = lambda got: ValueError(f'{owner} expects t: one integer timestep in '
                                f'[0, {num_timesteps - 1}]; got {got}')
  if tf.is_tensor(t):
    if not t.dtype.is_integer or t.shape.rank not in (0, None):
      raise fail(f'a tensor of dtype {t.dtype.name}, shape {shape_text(t.shape)}')
    return tf.cast(t, tf.int32) if t.dtype != tf.int32 else t
  t = _host_timesteps(t, fail, num_timesteps)
  if t.ndim != 0:
    raise fail(f'shape {t.shape}')
  return tf.convert_to_tensor(t)


def sample_shape(shape, *, owner, expected='(B, H, W, C)'):
  """A shape to sample (tuple, list, NumPy array or fully known TensorShape) as a tuple of
  positive Python ints."""
  fail = lambda: ValueError(f'{owner} expects shape={expected}, positive integers; got {shape!r}')
  if isinstance(shape, tf.TensorShape):
    if not shape.is_fully_defined():
      raise fail()
    shape = shape.as_list()
  try:
    dims = tuple(operator.index(d) for d in shape)
  except TypeError:  # not a sequence, or a float / None entry
    raise fail() from None
  if not dims or any(isinstance(d, bool) or d < 1 for d in dims):  # index(True) is True
    raise fail()
  return dims
