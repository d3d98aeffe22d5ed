"""Tests for the Winograd F(4x4, 3x3) convolution (nn.conv3x3_winograd, ops/winograd_op.cc)
and the bfloat16 convolution whose filter gradient it computes (nn.conv3x3_bf16).

The reference is TF's direct convolution in float64; the Winograd path runs in float32.
"""

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import nn, ops

pytestmark = [pytest.mark.numerics,
              pytest.mark.skipif(ops.fused_lib() is None, reason='fused CPU kernels unavailable')]


def _value_and_grads(conv, x, w, b, dy, compile=False):
  def f(x, w, b):
    with tf.GradientTape() as tape:
      tape.watch([x, w, b])
      y = conv(x, w, b)
      loss = tf.reduce_sum(y * dy)
    return (y, *tape.gradient(loss, [x, w, b]))
  return [t.numpy().astype(np.float64) for t in (tf.function(f) if compile else f)(x, w, b)]


def _direct(x, w, b):
  return tf.nn.bias_add(tf.nn.conv2d(x, w, 1, 'SAME'), b)


# Odd sizes (partial 4x4 tiles, partial 16-channel blocks, one-pixel images, both parities
# of tile rows) and the U-Net's own shapes.
@pytest.mark.parametrize('n,h,w,cin,cout', [(2, 7, 9, 20, 33), (1, 1, 1, 16, 16),
                                            (3, 5, 6, 17, 16), (2, 13, 4, 16, 40),
                                            (2, 16, 16, 64, 64)])
def test_winograd_conv_value_and_gradients_match_direct_convolution(n, h, w, cin, cout):
  """y, dy/dx, dy/dw, dy/db against the float64 direct convolution: within 5e-5 of the
  output's scale (F(4x4, 3x3) in float32 is ~1e-5 off, the float32 direct conv ~1e-6)."""
  rng = np.random.default_rng(n * 1000 + h * 10 + cin)
  arrays = (rng.normal(size=(n, h, w, cin)), rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin),
            rng.normal(size=cout), rng.normal(size=(n, h, w, cout)))
  x, wt, b, dy = (tf.constant(a, tf.float32) for a in arrays)
  lib = ops.fused_lib()
  wino = lambda x, w, b: nn.conv3x3_winograd(x, w, b, lib)
  ref = _value_and_grads(_direct, *(tf.constant(a, tf.float64) for a in arrays))
  for compile in (False, True):
    got = _value_and_grads(wino, x, wt, b, dy, compile=compile)
    for name, g, r in zip(('y', 'dx', 'dw', 'db'), got, ref):
      assert g.shape == r.shape, name
      err = np.abs(g - r).max() / np.abs(r).max()
      assert err < 5e-5, (name, err)


@pytest.mark.parametrize('n,h,w,cin,cout', [(2, 7, 9, 20, 33), (2, 16, 16, 64, 64)])
def test_bfloat16_conv_is_the_direct_one_with_float32_filter_gradients(n, h, w, cin, cout):
  """nn.conv3x3_bf16: y and dy/dx are oneDNN's bf16 convolution's own; dy/dw and dy/db, which
  go to float32 master weights, are the float32 gradients of the bf16 x and dy given (within
  5e-5 of float64), where TF's bf16 gradients are ~1e-3 (dw) and ~1e-2 (db) off."""
  rng = np.random.default_rng(n * 1000 + h * 10 + cin)
  bf16 = lambda a: tf.cast(tf.constant(a, tf.float32), tf.bfloat16)
  x, dy = bf16(rng.normal(size=(n, h, w, cin))), bf16(rng.normal(size=(n, h, w, cout)))
  wt = tf.constant(rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin), tf.float32)
  b = tf.constant(rng.normal(size=cout), tf.float32)
  lib = ops.fused_lib()

  def value_and_grads(conv):
    with tf.GradientTape() as tape:
      tape.watch([x, wt, b])
      y = conv(x, wt, b)
      loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.cast(dy, tf.float32))
    return [y, *tape.gradient(loss, [x, wt, b])]

  got = value_and_grads(lambda x, w, b: nn.conv3x3_bf16(x, w, b, lib))
  tf_bf16 = value_and_grads(lambda x, w, b: _direct(x, tf.cast(w, tf.bfloat16), tf.cast(b, tf.bfloat16)))
  assert [g.dtype for g in got] == [tf.bfloat16, tf.bfloat16, tf.float32, tf.float32]
  for name, g, d in zip(('y', 'dx'), got, tf_bf16):
    np.testing.assert_array_equal(g.numpy().astype(np.float32), d.numpy().astype(np.float32), name)
  f64 = lambda t: tf.cast(t, tf.float64)
  ref = _value_and_grads(_direct, f64(x), f64(tf.cast(wt, tf.bfloat16)), f64(tf.cast(b, tf.bfloat16)), f64(dy))
  for name, g, d, r in zip(('dw', 'db'), got[2:], tf_bf16[2:], ref[2:]):
    scale = np.abs(r).max()
    assert np.abs(g.numpy().astype(np.float64) - r).max() / scale < 5e-5, name
    assert np.abs(d.numpy().astype(np.float64) - r).max() / scale > 1e-4, name  # what it improves on


def _conv_op_types(layer, x):
  def f(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x)
    return y, tape.gradient(y, [x, layer.W])
  return {op.type for op in tf.function(f).get_concrete_function(x).graph.get_operations()}


_WINOGRAD_OPS = {'DiffusionWinogradInput', 'DiffusionWinogradOutput',
                 'DiffusionWinogradOutputGrad', 'DiffusionWinogradInputGrad'}


def test_conv2d_layer_runs_winograd_only_where_it_applies():
  """The U-Net's 3x3 stride-1 float32 convolutions (value and gradient) run as Winograd
  convolutions; strided, 1x1, few-channel, low-precision and tiny (few tiles) ones, and
  everything under nn.winograd(False) or nn.fused_kernels(False), stay direct."""
  x = tf.zeros([4, 8, 8, 32])  # 16 tiles of 4x4
  conv = nn.Conv2D(32, 32, name='wino/conv')
  assert _WINOGRAD_OPS <= _conv_op_types(conv, x)
  assert 'Conv2D' not in _conv_op_types(conv, x)
  direct_cases = [
      (nn.Conv2D(32, 32, name='wino/stride2', stride=2), x),
      (nn.Conv2D(32, 32, name='wino/one', filter_size=1), x),
      (nn.Conv2D(3, 32, name='wino/rgb_in'), tf.zeros([4, 8, 8, 3])),
      (nn.Conv2D(32, 3, name='wino/rgb_out'), x),
      (conv, tf.zeros([1, 4, 4, 32])),  # one tile: the filter transform would dominate
  ]
  for layer, inp in direct_cases:
    assert not _WINOGRAD_OPS & _conv_op_types(layer, inp), layer.name
  # bfloat16: direct forward and input gradient, the filter gradient by the float32 tiles.
  bf16_ops = _conv_op_types(conv, tf.zeros([4, 8, 8, 32], tf.bfloat16))
  assert {'Conv2D', 'Conv2DBackpropInput'} <= bf16_ops
  assert _WINOGRAD_OPS & bf16_ops == {'DiffusionWinogradInput', 'DiffusionWinogradOutputGrad'}
  for switch in (nn.winograd, nn.fused_kernels):
    with switch(False):
      for inp in (x, tf.cast(x, tf.bfloat16)):
        assert not _WINOGRAD_OPS & _conv_op_types(conv, inp)


def test_conv2d_layer_winograd_matches_direct_with_unknown_batch_or_size():
  rng = np.random.default_rng(0)
  conv = nn.Conv2D(48, 32, name='wino_layer/conv')
  conv.b.assign(rng.normal(size=32).astype(np.float32))
  x = tf.constant(rng.normal(size=(3, 12, 10, 48)).astype(np.float32))
  f = tf.function(conv, input_signature=[tf.TensorSpec([None, 12, 10, 48], tf.float32)])
  with nn.winograd(False):
    direct = tf.function(conv)(x).numpy()
  y = f(x)
  assert y.shape == (3, 12, 10, 32)
  assert _WINOGRAD_OPS & {op.type for op in f.get_concrete_function().graph.get_operations()}
  np.testing.assert_allclose(y.numpy(), direct, atol=5e-5 * np.abs(direct).max())
  # Unknown height/width (the tile kernels need them when traced): the direct convolution.
  g = tf.function(conv, input_signature=[tf.TensorSpec([None, None, None, 48], tf.float32)])
  assert not _WINOGRAD_OPS & {op.type for op in g.get_concrete_function().graph.get_operations()}
  np.testing.assert_allclose(g(x).numpy(), direct, rtol=1e-6, atol=1e-6 * np.abs(direct).max())


def test_winograd_ops_reject_inconsistent_shapes():
  lib = ops.fused_lib()
  with pytest.raises(tf.errors.InvalidArgumentError, match='do not make whole'):
    lib.diffusion_winograd_output(tf.zeros([36, 5, 16]), tf.zeros([16]), height=8, width=8)
  with pytest.raises(tf.errors.InvalidArgumentError, match='bias must be'):
    lib.diffusion_winograd_output(tf.zeros([36, 4, 16]), tf.zeros([15]), height=8, width=8)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'\[36, T, C\]'):
    lib.diffusion_winograd_input_grad(tf.zeros([16, 4, 16]), height=8, width=8)
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=r'\[N, H, W, C\]'):
    lib.diffusion_winograd_input(tf.zeros([8, 8, 16]))


@pytest.mark.slow  # a whole U-Net's gradients twice; the kernels' own tests stay fast
def test_unet_output_and_gradients_close_to_the_direct_convolution():
  """The whole digits U-Net (O(1) random weights, so every layer matters): output and weight
  gradients with the Winograd convolutions within 1e-4 (relative L2) of the direct ones,
  and the Winograd ops really in the graph."""
  from diffusion_tf.models import unet
  from test_unet import randomize  # tests/ is on sys.path under pytest
  net = unet.UNet(**unet.MODEL_CONFIGS['unet_digits'], in_ch=1, out_ch=1, resolution=16)
  randomize(net, seed=1)
  rng = np.random.default_rng(2)
  x = tf.constant(rng.uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32))
  t = tf.constant(rng.integers(0, 1000, 8).astype(np.int32))

  def run(winograd):
    with nn.winograd(winograd):
      @tf.function
      def f(x, t):
        with tf.GradientTape() as tape:
          y = net(x, t, training=False)
          loss = tf.reduce_mean(tf.square(y))
        return y, tape.gradient(loss, net.trainable_variables)
      ops_used = {op.type for op in f.get_concrete_function(x, t).graph.get_operations()}
      y, grads = f(x, t)
    return y.numpy(), [g.numpy() for g in grads], ops_used

  y_w, g_w, ops_w = run(True)
  y_d, g_d, ops_d = run(False)
  assert 'DiffusionWinogradInput' in ops_w and 'DiffusionWinogradInput' not in ops_d
  rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
  assert rel(y_w, y_d) < 1e-4, rel(y_w, y_d)
  assert rel(np.concatenate([g.ravel() for g in g_w]), np.concatenate([g.ravel() for g in g_d])) < 1e-4
  # Per variable, except those whose gradient is zero in exact arithmetic and ~1e-8 rounding
  # noise here (biases right before a one-channel-per-group GroupNorm, attention k biases).
  scale = max(np.linalg.norm(g) for g in g_d)
  errors = {i: rel(a, b) for i, (a, b) in enumerate(zip(g_w, g_d)) if np.linalg.norm(b) > 1e-5 * scale}
  assert len(errors) > len(g_d) // 2 and max(errors.values()) < 1e-3, max(errors.values())
