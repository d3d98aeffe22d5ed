"""Low-level layers as `tf.Module`s, initialisers and the timestep embedding.

Every layer creates its variables eagerly at construction under an explicit
TF1-style name (``<scope>/W``, ``<scope>/b``, ``<scope>/gamma``, ``<scope>/beta``),
so ``var.name`` reproduces the variable names of the original TF1 checkpoints.
"""

import math

import numpy as np
import tensorflow as tf

DEFAULT_DTYPE = tf.float32


# ----------------------------------------------------------------------------- initialisers

def _fans(shape):
  """fan_in/fan_out of a dense ``[in, out]`` or conv ``[kh, kw, in, out]`` kernel (TF1 rules)."""
  if len(shape) < 1:
    return 1., 1.
  if len(shape) == 1:
    return float(shape[0]), float(shape[0])
  if len(shape) == 2:
    return float(shape[0]), float(shape[1])
  receptive = float(np.prod(shape[:-2]))
  return receptive * shape[-2], receptive * shape[-1]


def default_init(scale):
  """Variance scaling, fan_avg, uniform; scale 0 becomes 1e-10 ("zero" init is tiny noise).

  Returns ``init(shape, dtype) -> Tensor`` with values ~ U(-limit, limit),
  ``limit = sqrt(3 * scale / max(1, fan_avg))``.
  """
  scale = 1e-10 if scale == 0 else float(scale)

  def init(shape, dtype=DEFAULT_DTYPE):
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(3. * scale / max(1., (fan_in + fan_out) / 2.))
    return tf.random.uniform(shape, -limit, limit, dtype=dtype)

  return init


# ----------------------------------------------------------------------------- reductions

def flatten(x):
  """[B, ...] -> [B, prod(...)]."""
  return tf.reshape(x, [tf.shape(x)[0], -1])


def sumflat(x):
  """Sum over every axis but the batch axis: [B, ...] -> [B]."""
  return tf.reduce_sum(x, axis=list(range(1, len(x.shape))))


def meanflat(x):
  """Mean over every axis but the batch axis: [B, ...] -> [B]."""
  return tf.reduce_mean(x, axis=list(range(1, len(x.shape))))


def debug_print(x, name):
  """Prints name, mean, std, min, max of ``x`` and passes ``x`` through."""
  tf.print(name, tf.reduce_mean(x), tf.math.reduce_std(x), tf.reduce_min(x), tf.reduce_max(x))
  return x


# ----------------------------------------------------------------------------- layers

class Dense(tf.Module):
  """``x @ W + b`` for 2-D ``x`` [B, in_dim] -> [B, num_units]."""

  def __init__(self, in_dim, num_units, *, name, init_scale=1., bias=True):
    super().__init__(name=name.replace('/', '_'))
    self.W = tf.Variable(default_init(init_scale)([in_dim, num_units]), name=name + '/W')
    self.b = tf.Variable(tf.zeros([num_units]), name=name + '/b') if bias else None

  def __call__(self, x):
    y = tf.matmul(x, tf.cast(self.W, x.dtype))
    return y if self.b is None else y + tf.cast(self.b, x.dtype)


class NIN(Dense):
  """1x1 "network in network": contracts the last axis of a tensor of any rank.

  Same variables as `Dense` (a 2-D kernel ``W [in_dim, num_units]``), so the
  checkpoint layout matches the original ``nin``.
  """

  def __call__(self, x):
    shape = tf.shape(x)
    y = super().__call__(tf.reshape(x, [-1, x.shape[-1]]))
    return tf.reshape(y, tf.concat([shape[:-1], [y.shape[-1]]], axis=0))


class Conv2D(tf.Module):
  """NHWC convolution with TF 'SAME' padding (a stride-2 3x3 conv pads bottom/right only)."""

  def __init__(self, in_ch, num_units, *, name, filter_size=3, stride=1, init_scale=1.,
               bias=True, pad='SAME'):
    super().__init__(name=name.replace('/', '_'))
    fh, fw = (filter_size, filter_size) if isinstance(filter_size, int) else filter_size
    self.stride, self.pad = stride, pad
    self.W = tf.Variable(default_init(init_scale)([fh, fw, in_ch, num_units]), name=name + '/W')
    self.b = tf.Variable(tf.zeros([num_units]), name=name + '/b') if bias else None

  def __call__(self, x):
    y = tf.nn.conv2d(x, tf.cast(self.W, x.dtype), strides=self.stride, padding=self.pad)
    return y if self.b is None else y + tf.cast(self.b, x.dtype)


class GroupNorm(tf.Module):
  """``tf.contrib.layers.group_norm`` as the original used it.

  32 groups of contiguous channels, statistics over (H, W, channels-in-group) per
  example, biased variance, eps 1e-6, affine ``gamma``/``beta`` of shape [C].
  Statistics are computed in float32 even for bfloat16/float16 inputs.
  """

  def __init__(self, ch, *, name, num_groups=32, eps=1e-6):
    super().__init__(name=name.replace('/', '_'))
    if ch % num_groups:
      raise ValueError(f'GroupNorm {name}: {ch} channels are not divisible into {num_groups} groups')
    self.num_groups, self.eps = num_groups, eps
    # TF1 created beta before gamma; the order only matters for variable listings.
    self.beta = tf.Variable(tf.zeros([ch]), name=name + '/beta')
    self.gamma = tf.Variable(tf.ones([ch]), name=name + '/gamma')

  def __call__(self, x):
    in_dtype = x.dtype
    x = tf.cast(x, tf.float32)
    shape = tf.shape(x)
    c = x.shape[-1]
    g = tf.reshape(x, tf.concat([shape[:-1], [self.num_groups, c // self.num_groups]], 0))
    axes = list(range(1, len(x.shape) - 1)) + [len(x.shape)]
    mean, var = tf.nn.moments(g, axes=axes, keepdims=True)
    g = (g - mean) * tf.math.rsqrt(var + self.eps)
    y = tf.reshape(g, shape) * self.gamma + self.beta
    return tf.cast(y, in_dtype)


# ----------------------------------------------------------------------------- embedding

def get_timestep_embedding(timesteps, embedding_dim):
  """Sinusoidal timestep embedding (Fairseq / tensor2tensor), as in the original.

  timesteps: int [B]. Returns float32 [B, embedding_dim]: ``sin`` half first, then
  ``cos``; frequencies ``exp(-k ln(10000) / (half - 1))`` (note ``half - 1``); one
  zero column appended when ``embedding_dim`` is odd.
  """
  assert len(timesteps.shape) == 1
  half_dim = embedding_dim // 2
  emb = math.log(10000) / (half_dim - 1)
  emb = tf.exp(tf.range(half_dim, dtype=DEFAULT_DTYPE) * -emb)
  emb = tf.cast(timesteps, dtype=DEFAULT_DTYPE)[:, None] * emb[None, :]
  emb = tf.concat([tf.sin(emb), tf.cos(emb)], axis=1)
  if embedding_dim % 2 == 1:
    emb = tf.pad(emb, [[0, 0], [0, 1]])
  return emb
