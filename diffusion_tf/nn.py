"""Low-level layers as `tf.Module`s, initialisers and the timestep embedding.

Every layer creates its variables eagerly at construction under an explicit
TF1-style name (``<scope>/W``, ``<scope>/b``, ``<scope>/gamma``, ``<scope>/beta``),
so ``var.name`` reproduces the variable names of the original TF1 checkpoints.
"""

import contextlib
import math
import threading

import numpy as np
import tensorflow as tf

from diffusion_tf import ops

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


# ----------------------------------------------------------------------------- weight reads

_SETTINGS = threading.local()  # per-thread switches that apply while a function is traced


@contextlib.contextmanager
def _setting(name, value):
  previous = getattr(_SETTINGS, name, None)
  setattr(_SETTINGS, name, value)
  try:
    yield
  finally:
    setattr(_SETTINGS, name, previous)


@contextlib.contextmanager
def constant_weights():
  """Functions traced inside this context read the layers' weights as graph constants.

  Why: oneDNN reorders a convolution filter into its blocked layout on every call when the
  filter is a variable, but only once (then cached) when it is a constant. For the CIFAR-10
  U-Net that is ~25% of a batch-1 forward pass on CPU (101 -> 78 ms), ~5% at batch 16.
  The constants are the weights' values *at trace time*: only for inference with fixed
  weights (a sampling run); a function traced here does not see later updates.
  Eager calls and functions traced outside the context are unaffected.
  Caveat (TF shares oneDNN primitives between convolutions of the same shapes): if the same
  process has already run the network with variable weights on inputs of the same shape,
  the constant-weight graph reuses those primitives and the filter caching is lost (batch-1
  forward 54 -> 68 ms); results are unchanged.
  """
  with _setting('constant_weights', True):
    yield


def read_weight(v, dtype):
  """Variable ``v`` as a ``dtype`` tensor: a read, or (see `constant_weights`) a constant."""
  if (getattr(_SETTINGS, 'constant_weights', None) and not tf.executing_eagerly()
      and isinstance(v, tf.Variable)):
    with tf.init_scope():  # the value now, read eagerly even while tracing
      value = v.numpy()
    return tf.cast(tf.constant(value), dtype)  # the cast of a constant is folded at graph build
  return tf.cast(v, dtype)


# ----------------------------------------------------------------------------- variables

class VariableShape:
  """What a layer holds instead of a variable while built under `shapes_only`: the name and
  shape the variable would have, and no values."""

  def __init__(self, name, shape, dtype=DEFAULT_DTYPE):
    self.name, self.shape, self.dtype = name + ':0', tf.TensorShape(shape), dtype

  def __repr__(self):
    return f'VariableShape({self.name!r}, {self.shape.as_list()})'


class TooManyVariables(ValueError):
  """A network built under `shapes_only` asked for more variables than its limit."""


@contextlib.contextmanager
def shapes_only(limit=None):
  """Layers constructed inside create `VariableShape`s (listed, in order of creation, in the
  list this yields) instead of variables: the network's own constructor says which variables
  it has and their shapes, and nothing is allocated. ``limit``: raise `TooManyVariables` at
  variable ``limit + 1`` (a hostile configuration cannot make the listing itself large)."""
  created = []
  with _setting('shapes_only', (created, limit)):
    yield created


def variable(name, shape, initializer):
  """A float32 ``tf.Variable`` named ``name`` of ``initializer(shape)`` (or, inside
  `shapes_only`, its `VariableShape`)."""
  listing = getattr(_SETTINGS, 'shapes_only', None)
  if listing is None:
    return tf.Variable(initializer(shape), name=name)
  created, limit = listing
  if limit is not None and len(created) >= limit:
    raise TooManyVariables(f'more than {limit} variables')
  created.append(VariableShape(name, shape))
  return created[-1]


# ----------------------------------------------------------------------------- layers

class Dense(tf.Module):
  """``x @ W + b`` for 2-D ``x`` [B, in_dim] -> [B, num_units]."""

  def __init__(self, in_dim, num_units, *, name, init_scale=1., bias=True):
    super().__init__(name=name.replace('/', '_'))
    self.W = variable(name + '/W', [in_dim, num_units], default_init(init_scale))
    self.b = variable(name + '/b', [num_units], tf.zeros) if bias else None

  def __call__(self, x):
    y = tf.matmul(x, read_weight(self.W, x.dtype))
    # BiasAdd (not a broadcasting AddV2) so the graph optimizer fuses it into the MatMul.
    return y if self.b is None else tf.nn.bias_add(y, read_weight(self.b, x.dtype))


def _reshape_last(y, x, units):
  """Reshapes a [N, units] result back to x's leading shape; static where it is known."""
  lead = x.shape[1:-1]
  if lead.is_fully_defined():
    return tf.reshape(y, [-1, *lead.as_list(), units])
  return tf.reshape(y, tf.concat([tf.shape(x)[:-1], [units]], axis=0))


class NIN(Dense):
  """1x1 "network in network": contracts the last axis of a tensor of any rank.

  Same variables as `Dense` (a 2-D kernel ``W [in_dim, num_units]``), so the
  checkpoint layout matches the original ``nin``.
  """

  def __call__(self, x):
    if x.shape.rank == 2:
      return super().__call__(x)
    if x.shape.rank == 4:
      # A 1x1 convolution: oneDNN's 1x1 conv kernels (forward and both gradients) beat the
      # reshape + MatMul path on [B*H*W, C] matrices, and Conv2D+BiasAdd(+Add) fuse.
      return conv2d_1x1(x, self.W, self.b)
    y = super().__call__(tf.reshape(x, [-1, x.shape[-1]]))
    return _reshape_last(y, x, y.shape[-1])


def conv2d_1x1(x, W, b=None):
  """``x @ W + b`` over the channel axis of an NHWC tensor, as a 1x1 convolution.

  W: [in, out] (a `Dense`/`NIN` kernel, cast to x.dtype); b: [out] or None.
  """
  y = tf.nn.conv2d(x, read_weight(W, x.dtype)[None, None], strides=1, padding='VALID')
  return y if b is None else tf.nn.bias_add(y, read_weight(b, x.dtype))


class Conv2D(tf.Module):
  """NHWC convolution with TF 'SAME' padding (a stride-2 3x3 conv pads bottom/right only)."""

  def __init__(self, in_ch, num_units, *, name, filter_size=3, stride=1, init_scale=1.,
               bias=True, pad='SAME'):
    super().__init__(name=name.replace('/', '_'))
    fh, fw = (filter_size, filter_size) if isinstance(filter_size, int) else filter_size
    self.stride, self.pad = stride, pad
    self.W = variable(name + '/W', [fh, fw, in_ch, num_units], default_init(init_scale))
    self.b = variable(name + '/b', [num_units], tf.zeros) if bias else None

  def __call__(self, x):
    lib = self._winograd_lib(x)
    if lib is not None:
      b = self.b if self.b is not None else tf.zeros([self.W.shape[-1]])
      if x.dtype == tf.bfloat16:
        return conv3x3_bf16(x, read_weight(self.W, tf.float32), read_weight(b, tf.float32), lib)
      return conv3x3_winograd(x, read_weight(self.W, x.dtype), read_weight(b, x.dtype), lib)
    y = tf.nn.conv2d(x, read_weight(self.W, x.dtype), strides=self.stride, padding=self.pad)
    # BiasAdd lets the graph optimizer emit one fused Conv2D+BiasAdd(+Add) oneDNN kernel
    # and a fused Conv2DBackpropFilter+BiasAddGrad in the backward pass.
    return y if self.b is None else tf.nn.bias_add(y, read_weight(self.b, x.dtype))

  def _winograd_lib(self, x):
    """The fused kernels if this call should run as a Winograd convolution (bfloat16: only its
    filter gradient, see `conv3x3_bf16`), else None."""
    fh, fw, cin, cout = self.W.shape
    if ((fh, fw) != (3, 3) or self.stride != 1 or self.pad != 'SAME'
        or x.dtype not in (tf.float32, tf.bfloat16)
        or min(cin, cout) < WINOGRAD_MIN_CHANNELS or x.shape.rank != 4):
      return None
    n, h, w = x.shape[:3]
    if h is None or w is None:  # the tile kernels need the image size when traced
      return None
    if n is not None and n * -(-h // 4) * -(-w // 4) < WINOGRAD_MIN_TILES:
      return None
    if getattr(_SETTINGS, 'winograd', None) is False:
      return None
    return fused_kernels_lib()


# ----------------------------------------------------------------------------- winograd

# F(4x4, 3x3) (Lavin & Gray 2016): y = A^T [(G w G^T) * (B^T d B)] A on 6x6 input tiles d
# every 4 pixels. B^T and A^T are in diffusion_tf/ops/winograd_op.cc; G is applied here.
_WINOGRAD_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
# U[6a + b] = sum_ij G[a, i] G[b, j] w[i, j]: the filter transform as one [36, 9] matrix.
_WINOGRAD_GG = np.kron(_WINOGRAD_G, _WINOGRAD_G)
# Below these the direct convolution is as fast or faster on CPU: a channel block is 16
# lanes, and with few tiles the filter transform (4x the filter) costs more than it saves.
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_TILES = 16


@contextlib.contextmanager
def winograd(enabled):
  """Whether 3x3 convolutions made or traced inside may run as Winograd convolutions.

  By default they do where the fused CPU kernels apply (see `fused_kernels_lib`): float32,
  stride 1, 'SAME', at least `WINOGRAD_MIN_CHANNELS` channels in and out and
  `WINOGRAD_MIN_TILES` 4x4 output tiles per call; in bfloat16 only their filter gradient
  (`conv3x3_bf16`). Turn it off to get TF's direct convolution (its rounding is ~5x smaller;
  see `conv3x3_winograd`).
  """
  with _setting('winograd', bool(enabled)):
    yield


def winograd_filter(w):
  """[3, 3, in, out] filter -> [36, in, out], G w G^T for every channel pair."""
  cin, cout = w.shape[2], w.shape[3]
  gg = tf.constant(_WINOGRAD_GG, w.dtype)
  return tf.reshape(tf.matmul(gg, tf.reshape(w, [9, cin * cout])), [36, cin, cout])


def conv3x3_winograd(x, w, b, lib):
  """``bias_add(conv2d(x, w, 1, 'SAME'), b)`` for float32 NHWC x as a Winograd F(4x4, 3x3)
  convolution, with its gradient (`lib`: the fused kernels).

  The 36 channel products per 16 output pixels (direct: 9 per pixel, 4x as many) run as one
  batched MatMul ([36, tiles, in] @ [36, in, out]); forward + backward of the CIFAR-10
  U-Net's convolutions is 1.3-2.1x faster than TF's (oneDNN) on CPU at batch 16.
  Rounding: relative error ~1e-5 of the output's scale (direct: ~1e-6; a TPU's default
  float32 convolution, bfloat16 passes, ~1e-3).
  The gradient recomputes the input tiles from x rather than keeping them from the
  forward pass (they are 2.25x the size of x).
  """
  height, width = x.shape[1], x.shape[2]

  @tf.custom_gradient
  def _conv(x, w, b):
    u = winograd_filter(w)
    m = tf.matmul(lib.diffusion_winograd_input(x), u)
    y = lib.diffusion_winograd_output(m, b, height=height, width=width)

    def grad(dy):
      dm = lib.diffusion_winograd_output_grad(dy)
      dx = lib.diffusion_winograd_input_grad(tf.matmul(dm, u, transpose_b=True),
                                             height=height, width=width)
      return dx, _winograd_filter_grad(x, dm, lib), tf.reduce_sum(dy, [0, 1, 2])

    return y, grad

  return _conv(x, w, b)


def _winograd_filter_grad(x, dm, lib):
  """dL/dw [3, 3, in, out] of the 3x3 'SAME' convolution of float32 x [N, H, W, in], from the
  output gradient's transposed F(4x4, 3x3) tiles dm [36, T, out]: x's tiles, recomputed in the
  backward pass (2.25x x's size: not kept from the forward pass), times dm, then G^T . G."""
  cin, cout = x.shape[-1], dm.shape[-1]
  with tf.control_dependencies([dm]):  # recompute in the backward pass, not before
    v = lib.diffusion_winograd_input(tf.identity(x))
  du = tf.reshape(tf.matmul(v, dm, transpose_a=True), [36, cin * cout])
  return tf.reshape(tf.matmul(tf.constant(_WINOGRAD_GG, du.dtype), du, transpose_a=True),
                    [3, 3, cin, cout])


def conv3x3_bf16(x, w, b, lib):
  """``bias_add(conv2d(x, w, 1, 'SAME'), b)`` for bfloat16 NHWC x and float32 w [3, 3, in, out]
  and b [out] (cast to bf16), with its gradient (`lib`: the fused kernels).

  The forward pass and dx are oneDNN's direct bf16 convolutions; the filter gradient is the
  float32 Winograd one (`_winograd_filter_grad`) of the bf16 activations and output gradient
  cast up: 1.07-1.50x faster than oneDNN's bf16 filter gradient on an AMD Zen 4 and exact to
  ~5e-6 instead of ~2e-3 (benchmarks/bf16_winograd_study.py). dw and db are float32, as the
  float32 master weights want them (TF's bf16 bias gradient sums in bf16: ~1e-2 off).
  A bf16 Winograd forward pass does not pay: F(4x4, 3x3) rounds 11x worse than direct bf16,
  F(2x2, 3x3) runs no faster (benchmarks/RESULTS.md).
  """

  @tf.custom_gradient
  def _conv(x, w, b):
    wb = tf.cast(w, x.dtype)
    y = tf.nn.bias_add(tf.nn.conv2d(x, wb, 1, 'SAME'), tf.cast(b, x.dtype))

    def grad(dy):
      dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=wb, out_backprop=dy,
                                          strides=[1, 1, 1, 1], padding='SAME')
      dy32 = tf.cast(dy, tf.float32)
      dm = lib.diffusion_winograd_output_grad(dy32)
      dw = _winograd_filter_grad(tf.cast(x, tf.float32), dm, lib)
      return dx, dw, tf.reduce_sum(dy32, [0, 1, 2])

    return y, grad

  return _conv(x, w, b)


# ----------------------------------------------------------------------------- group norm

def _expand_dims_to(v, rank):
  """[B, C] -> [B, 1, ..., 1, C] of the given rank (static shapes, no dynamic reshape)."""
  for _ in range(rank - 2):
    v = tf.expand_dims(v, 1)
  return v


def _group_reduce(v, num_groups, op):
  """[B, C] -> [B, G]: reduces each group of C // G contiguous channels."""
  return op(tf.reshape(v, [-1, num_groups, v.shape[-1] // num_groups]), axis=-1)


def _group_stats(x32, num_groups):
  """Per-(example, group) mean and biased variance, two-pass, of a float32 tensor.

  Reduces the spatial axes first (one reduction per channel, cheap in NHWC), then
  the channels of each group; the variance is taken around the group mean.
  """
  rank, cg = x32.shape.rank, x32.shape[-1] // num_groups
  spatial = list(range(1, rank - 1))
  mean = _group_reduce(tf.reduce_mean(x32, spatial), num_groups, tf.reduce_mean)  # [B, G]
  mean_c = _expand_dims_to(tf.repeat(mean, cg, axis=1), rank)
  var_c = tf.reduce_mean(tf.math.squared_difference(x32, mean_c), spatial)
  var = _group_reduce(var_c, num_groups, tf.reduce_mean)
  return mean, var


def _group_size(x, cg):
  """Number of elements per (example, group): prod(spatial dims) * channels per group."""
  sp = x.shape[1:-1]
  if sp.is_fully_defined():
    return float(np.prod(sp.as_list(), dtype=np.int64) * cg)
  return tf.cast(tf.reduce_prod(tf.shape(x)[1:-1]), tf.float32) * cg


@contextlib.contextmanager
def fused_kernels(enabled):
  """Whether `group_norm`, the 3x3 convolutions (`Conv2D`, see `winograd`) and the training
  update (`tpu_utils.apply_update`) made or traced inside use the fused CPU kernels.

  By default they do when the kernels are available (see `diffusion_tf.ops`) and the
  process has no GPU or TPU. Turn them off for functions compiled with XLA
  (``jit_compile=True``), which cannot contain a custom kernel.
  """
  with _setting('fused_kernels', bool(enabled)):
    yield


@contextlib.contextmanager
def float_timesteps(enabled):
  """Whether UNets called or traced inside take float timestep tensors (the embedding is
  defined for any real t; the exported ``denoise`` signature takes float t). Off by default:
  a float tensor's values are unknown while tracing, so a fractional step could not be caught."""
  with _setting('float_timesteps', bool(enabled)):
    yield


def float_timesteps_allowed():
  return bool(getattr(_SETTINGS, 'float_timesteps', None))


def fused_kernels_lib():
  """The fused CPU kernels (`diffusion_tf.ops.fused_lib`) if they apply here, else None."""
  if getattr(_SETTINGS, 'fused_kernels', None) is False:
    return None
  # The kernels are CPU-only: on a GPU/TPU machine the TF ops run on the accelerator.
  if tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('TPU'):
    return None
  return ops.fused_lib()


def group_norm(x, gamma, beta, *, num_groups=32, eps=1e-6, swish=False):
  """GroupNorm (+ optional fused swish) with a hand-written gradient.

  ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` with mean/var over the spatial axes
  and the ``C // num_groups`` contiguous channels of each group, then ``y * sigmoid(y)``
  if ``swish``. x: [B, ..., C] of any float dtype; statistics, normalisation, swish and
  the gradient are computed in float32 and the result is cast back to ``x.dtype``.

  Same result as composing reshape + ``tf.nn.moments`` + arithmetic (+ ``tf.nn.silu``) and
  letting TF differentiate it, to float32 rounding, but: the statistics are reduced over
  the spatial axes per channel first (no dynamic reshape to groups), gamma/beta are folded
  into one per-(example, channel) scale and shift, and the backward pass is the closed-form
  GroupNorm gradient (two per-channel sums, then one affine map of dy and x). Forward plus
  backward runs ~3x faster on CPU than TF's autodiff of the composition, and only ``x``
  and [B, G] statistics stay alive for the backward pass (the normalised and activated
  tensors are recomputed), which lowers training memory.

  On CPU the same forward and gradient run as one fused kernel each
  (`diffusion_tf.ops`, ~2x faster than the composition; see `fused_kernels`).
  """
  rank = x.shape.rank
  if rank is None or rank < 2:
    raise ValueError(f'group_norm needs a tensor of known rank >= 2, got shape {x.shape}')
  C = x.shape[-1]
  if C is None or C % num_groups:
    raise ValueError(f'group_norm: {C} channels are not divisible into {num_groups} groups')
  gamma = tf.convert_to_tensor(gamma, tf.float32)
  beta = tf.convert_to_tensor(beta, tf.float32)
  lib = fused_kernels_lib()
  if lib is not None:
    return _group_norm_fused(x, gamma, beta, lib, num_groups=num_groups, eps=eps, swish=swish)
  return _group_norm_composed(x, gamma, beta, num_groups=num_groups, eps=eps, swish=swish)


def _group_norm_fused(x, gamma, beta, lib, *, num_groups, eps, swish):
  """`group_norm` as the fused CPU kernels (`lib`): one forward and one gradient kernel.

  x: [B, ..., C]; gamma, beta: float32 [C]. The kernels return the [B, G] mean and 1/std
  with the output, and the gradient kernel recomputes the rest from x and those.
  """
  @tf.custom_gradient
  def _gn_fused(x, gamma, beta):
    y, mean, rstd = lib.diffusion_group_norm(x, gamma, beta, num_groups=num_groups,
                                             epsilon=eps, swish=swish)

    def grad(dout):
      return lib.diffusion_group_norm_grad(dout, x, gamma, beta, mean, rstd,
                                           num_groups=num_groups, swish=swish)

    return y, grad

  return _gn_fused(x, gamma, beta)


def _group_norm_composed(x, gamma, beta, *, num_groups, eps, swish):
  """`group_norm` from TF ops, with the closed-form gradient of `_group_norm_grad`.

  x: [B, ..., C] of any float dtype; gamma, beta: float32 [C]. The forward pass folds
  gamma/beta into one per-(example, channel) ``scale`` and ``shift`` ([B, 1, ..., 1, C]).
  """
  rank, cg, in_dtype = x.shape.rank, x.shape[-1] // num_groups, x.dtype

  @tf.custom_gradient
  def _gn(x, gamma, beta):
    x32 = tf.cast(x, tf.float32)
    mean, var = _group_stats(x32, num_groups)
    rstd = tf.math.rsqrt(var + eps)  # [B, G]
    mean_c, rstd_c = tf.repeat(mean, cg, axis=1), tf.repeat(rstd, cg, axis=1)  # [B, C]
    scale = rstd_c * gamma
    shift = beta - mean_c * scale
    scale_b, shift_b = _expand_dims_to(scale, rank), _expand_dims_to(shift, rank)
    y = x32 * scale_b + shift_b
    if swish:
      y = tf.nn.silu(y)

    def grad(dout):
      # The forward pass's own tensors (not recomputed ones): the graph stays as it was.
      return _group_norm_grad(dout, x, gamma, (mean, rstd, mean_c, rstd_c), (scale_b, shift_b),
                              num_groups=num_groups, swish=swish)

    return tf.cast(y, in_dtype), grad

  return _gn(x, gamma, beta)


def _group_norm_grad(dout, x, gamma, stats, affine, *, num_groups, swish):
  """(dx, dgamma, dbeta) of `_group_norm_composed` for the output gradient ``dout``.

  stats: the forward pass's (mean, rstd) [B, G] and (mean_c, rstd_c) [B, C] (repeated per
  channel); affine: its (scale_b, shift_b) [B, 1, ..., 1, C]. dx has x's dtype; dgamma and
  dbeta are float32 [C].
  """
  mean, rstd, mean_c, rstd_c = stats
  scale_b, shift_b = affine
  rank, cg = x.shape.rank, x.shape[-1] // num_groups
  spatial = list(range(1, rank - 1))
  # Everything is recomputed from x (the input) and the [B, G] statistics. The control
  # dependency keeps the graph executor from running the recomputation early (during
  # the forward pass, since it does not depend on dout), which would keep the
  # recomputed tensors alive and defeat the memory saving.
  with tf.control_dependencies([dout]):
    x32_ = tf.identity(x) if x.dtype == tf.float32 else tf.cast(x, tf.float32)
  dy = tf.cast(dout, tf.float32)
  if swish:
    yy = x32_ * scale_b + shift_b
    s = tf.sigmoid(yy)
    # d/dy [y sigmoid(y)] = s + y s (1 - s)
    dy = dy * s + tf.raw_ops.SigmoidGrad(y=s, dy=dy * yy)
  # Per-(example, channel) sums over the spatial axes.
  s1 = tf.reduce_sum(dy, spatial)  # sum dy
  s2 = tf.reduce_sum(dy * x32_, spatial)  # sum dy * x
  sum_dy_xhat = rstd_c * (s2 - mean_c * s1)  # sum dy * xhat
  dgamma = tf.reduce_sum(sum_dy_xhat, 0)
  dbeta = tf.reduce_sum(s1, 0)
  # dx = rstd * (g dy - mean_group(g dy) - xhat * mean_group(g dy xhat)), g = gamma.
  n = _group_size(x, cg)
  a = _group_reduce(gamma * s1, num_groups, tf.reduce_sum) / n  # mean_group(g dy)
  d = _group_reduce(gamma * sum_dy_xhat, num_groups, tf.reduce_sum) / n  # mean_group(g dy xhat)
  coef_x = -rstd * rstd * d  # [B, G]
  coef_0 = rstd * (mean * rstd * d - a)
  coef_x, coef_0 = tf.repeat(coef_x, cg, axis=1), tf.repeat(coef_0, cg, axis=1)
  dx = (dy * _expand_dims_to(rstd_c * gamma, rank)
        + (x32_ * _expand_dims_to(coef_x, rank) + _expand_dims_to(coef_0, rank)))
  return tf.cast(dx, x.dtype), dgamma, dbeta


class GroupNorm(tf.Module):
  """``tf.contrib.layers.group_norm`` as the original used it.

  32 groups of contiguous channels, statistics over (H, W, channels-in-group) per
  example, biased variance, eps 1e-6, affine ``gamma``/``beta`` of shape [C].
  Statistics are computed in float32 even for bfloat16/float16 inputs, and the result
  has the input's dtype. ``swish=True`` fuses the following ``x * sigmoid(x)`` (see
  `group_norm`).
  """

  def __init__(self, ch, *, name, num_groups=32, eps=1e-6):
    super().__init__(name=name.replace('/', '_'))
    if ch % num_groups:
      raise ValueError(f'GroupNorm {name}: {ch} channels are not divisible into {num_groups} groups')
    self.num_groups, self.eps = num_groups, eps
    # TF1 created beta before gamma; the order only matters for variable listings.
    self.beta = variable(name + '/beta', [ch], tf.zeros)
    self.gamma = variable(name + '/gamma', [ch], tf.ones)

  def __call__(self, x, swish=False):
    return group_norm(x, read_weight(self.gamma, tf.float32), read_weight(self.beta, tf.float32),
                      num_groups=self.num_groups, eps=self.eps,
                      swish=swish)


# ----------------------------------------------------------------------------- embedding

def get_timestep_embedding(timesteps, embedding_dim, *, flip_sin_to_cos=False, freq_shift=1):
  """Sinusoidal timestep embedding (Fairseq / tensor2tensor), as in the original.

  timesteps: int or float [B]. Returns float32 [B, embedding_dim]: ``sin`` half first, then
  ``cos``; frequencies ``exp(-k ln(10000) / (half - 1))`` (note ``half - 1``); one
  zero column appended when ``embedding_dim`` is odd.
  ``flip_sin_to_cos`` (cos half first) and ``freq_shift`` (``half - freq_shift``) are
  diffusers' ``Timesteps`` options; the defaults are the original's.
  """
  assert len(timesteps.shape) == 1
  half_dim = embedding_dim // 2
  emb = math.log(10000) / (half_dim - freq_shift)
  emb = tf.exp(tf.range(half_dim, dtype=DEFAULT_DTYPE) * -emb)
  emb = tf.cast(timesteps, dtype=DEFAULT_DTYPE)[:, None] * emb[None, :]
  halves = [tf.cos(emb), tf.sin(emb)] if flip_sin_to_cos else [tf.sin(emb), tf.cos(emb)]
  emb = tf.concat(halves, axis=1)
  if embedding_dim % 2 == 1:
    emb = tf.pad(emb, [[0, 0], [0, 1]])
  return emb
