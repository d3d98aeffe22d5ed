"""Mixed precision (`UNet(compute_dtype=...)`) and the fused GroupNorm fast path (nn.group_norm).

bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 2e-3 per operation), so a network
run in bf16 differs from float32 by ~1e-2 relative after ~100 layers; the tolerances below
are stated with that in mind. float32 paths are compared tightly (float32 rounding only).
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import nn, ops
from diffusion_tf.models import unet

SMALL = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))


def _randomize(net, seed):
  """Non-degenerate weights (the zero-initialised layers would make the output ~0)."""
  rng = np.random.default_rng(seed)
  for v in net.trainable_variables:
    shape = v.shape.as_list()
    if v.name.endswith('gamma:0'):
      val = rng.uniform(0.5, 1.5, shape)
    elif v.name.endswith(('beta:0', '/b:0')):
      val = rng.normal(0., 0.2, shape)
    else:
      val = rng.uniform(-1., 1., shape) * np.sqrt(3. / np.prod(shape[:-1]))
    v.assign(val.astype(np.float32))


def _pair(dtype, dropout=0., seed=0):
  ref = unet.UNet(**SMALL, out_ch=3, resolution=16, dropout=dropout)
  low = unet.UNet(**SMALL, out_ch=3, resolution=16, dropout=dropout, compute_dtype=dtype)
  _randomize(ref, seed)
  for a, b in zip(ref.trainable_variables, low.trainable_variables):
    b.assign(a)
  return ref, low


def _inputs(batch=2, res=16, seed=1):
  rng = np.random.default_rng(seed)
  x = tf.constant(rng.uniform(-1, 1, (batch, res, res, 3)).astype(np.float32))
  t = tf.constant(rng.integers(0, 1000, (batch,)).astype(np.int32))
  return x, t


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.numerics
@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_low_precision_output_close_to_float32(dtype):
  ref, low = _pair(dtype)
  x, t = _inputs()
  y32 = ref(x, t, training=False).numpy()
  y = low(x, t, training=False)
  assert y.dtype == tf.float32 and y.shape == y32.shape  # returned as float32
  assert np.all(np.isfinite(y.numpy()))
  # bf16: ~1e-2 relative (8-bit mantissa); fp16 (11-bit): ~10x closer.
  tol = 3e-2 if dtype == 'bfloat16' else 5e-3
  assert _rel(y.numpy(), y32) < tol
  # Same function of t: 100 steps later the float32 output moves by more than 3 tol, and
  # the low-precision output still stays within tol of it. A net that ignored t would be
  # off by more than 3 tol - tol - tol = tol there (triangle inequality). The difference of
  # two outputs is not compared to its float32 value: each carries its own rounding error
  # (up to tol), so for nearby t the relative error of the difference has no useful bound.
  t2 = (t + 100) % 1000
  y2 = low(x, t2, training=False).numpy()
  y2_32 = ref(x, t2, training=False).numpy()
  assert _rel(y2_32, y32) > 3 * tol
  assert _rel(y2, y2_32) < tol


# Measured on a Zen 5 (AVX512_BF16, oneDNN): 0.85-1.02% at every t below, two noise draws;
# the bound keeps 2.5x margin for other kernels (Eigen's bf16 under the AVX2 cap, AMX).
CIFAR10_BF16_EPS_REL = 2.5e-2


@pytest.mark.slow
@pytest.mark.numerics
def test_bfloat16_cifar10_unet_eps_within_stated_error_across_t():
  """The CIFAR-10 U-Net (35.7M parameters, random non-degenerate weights) in bf16 predicts
  eps within `CIFAR10_BF16_EPS_REL` (relative L2, per image) of float32 on x_t of the released
  schedule, from almost clean images (t=0) to pure noise (t=999)."""
  from diffusion_tf import loading
  net = unet.UNet(**unet.MODEL_CONFIGS['unet2d16b2'], out_ch=3, resolution=32, in_ch=3)
  _randomize(net, 0)
  alphas_cumprod = loading.released_diffusion(32).alphas_cumprod
  rng = np.random.default_rng(1)
  x0, noise = np.clip(rng.normal(0, 0.5, (2, 32, 32, 3)), -1, 1), rng.normal(size=(2, 32, 32, 3))
  for t in (0, 10, 100, 500, 999):
    ab = alphas_cumprod[t]
    x = tf.constant((np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise).astype(np.float32))
    y32 = net.set_compute_dtype(None)(x, tf.fill([2], t)).numpy()
    y16 = net.set_compute_dtype('bfloat16')(x, tf.fill([2], t)).numpy()
    for i in range(2):
      assert _rel(y16[i], y32[i]) < CIFAR10_BF16_EPS_REL, (t, i, _rel(y16[i], y32[i]))


def test_variables_stay_float32_with_the_same_names():
  ref, low = _pair('bfloat16')
  assert [v.name for v in low.trainable_variables] == [v.name for v in ref.trainable_variables]
  assert {v.dtype for v in low.trainable_variables} == {tf.float32}
  assert [v.shape for v in low.trainable_variables] == [v.shape for v in ref.trainable_variables]


@pytest.mark.numerics
def test_bfloat16_gradients_are_float32_and_close():
  ref, low = _pair('bfloat16', seed=2)
  x, t = _inputs(seed=3)
  target = tf.constant(np.random.default_rng(4).normal(size=x.shape).astype(np.float32))

  def grads(net):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(net(x, t, training=False) - target))
    return tape.gradient(loss, net.trainable_variables)

  g32, g16 = grads(ref), grads(low)
  assert all(g.dtype == tf.float32 for g in g16)
  flat32 = np.concatenate([g.numpy().ravel() for g in g32])
  flat16 = np.concatenate([g.numpy().ravel() for g in g16])
  cos = flat16 @ flat32 / (np.linalg.norm(flat16) * np.linalg.norm(flat32))
  assert cos > 0.99
  assert _rel(flat16, flat32) < 0.1


def test_bfloat16_inside_tf_function_and_training_with_dropout():
  _, low = _pair('bfloat16', dropout=0.1)
  x, t = _inputs()
  f = tf.function(lambda x, t: low(x, t, training=True))
  a, b = f(x, t).numpy(), f(x, t).numpy()
  assert a.dtype == np.float32 and np.all(np.isfinite(a))
  assert not np.allclose(a, b)  # dropout active
  assert f.experimental_get_tracing_count() == 1


def test_compute_dtype_default_and_validation():
  net = unet.UNet(**SMALL, out_ch=3, resolution=16)
  assert net.compute_dtype is None
  x, t = _inputs()
  assert net(x, t).dtype == tf.float32
  assert unet.UNet(**SMALL, out_ch=3, compute_dtype=tf.bfloat16).compute_dtype == tf.bfloat16
  assert unet.UNet(**SMALL, out_ch=3, compute_dtype='float32').compute_dtype == tf.float32
  with pytest.raises(ValueError):
    unet.UNet(**SMALL, out_ch=3, compute_dtype='int8')


# ----------------------------------------------------------------------------- fused GroupNorm

def _reference_group_norm(x, gamma, beta, groups=32, eps=1e-6, swish=False):
  """The straightforward composition (reshape + tf.nn.moments), differentiated by TF."""
  shape = tf.shape(x)
  c = x.shape[-1]
  g = tf.reshape(x, tf.concat([shape[:-1], [groups, c // groups]], 0))
  axes = list(range(1, len(x.shape) - 1)) + [len(x.shape)]
  mean, var = tf.nn.moments(g, axes=axes, keepdims=True)
  y = tf.reshape((g - mean) * tf.math.rsqrt(var + eps), shape) * gamma + beta
  return tf.nn.silu(y) if swish else y


@pytest.fixture(params=['fused', 'composition'])
def gn_path(request):
  """Runs a test with nn.group_norm on the fused CPU kernel, then on the TF composition."""
  fused = request.param == 'fused'
  if fused and ops.fused_lib() is None:
    pytest.skip('fused GroupNorm kernel unavailable (see test_fused_kernel_builds_and_is_used)')
  with nn.fused_kernels(fused):
    yield request.param


@pytest.mark.parametrize('swish', [False, True])
@pytest.mark.parametrize('shape', [(2, 5, 4, 64), (3, 8, 8, 96), (2, 6, 32), (4, 64),
                                   (1, 64, 48, 32)])  # the last: many row chunks merged
@pytest.mark.numerics
def test_group_norm_fast_path_value_and_gradient(shape, swish, gn_path):
  """Value and gradients (x, gamma, beta) of the hand-differentiated GroupNorm(+swish) vs
  TF's autodiff of the straightforward composition: both in float32, judged against the
  same composition in float64. The fast path may not be more than 3x further off than the
  float32 composition itself (+1e-6 of the scale); for well-conditioned groups both are
  ~1e-7 off, for the 2-element groups of the [4, 64] case both are ~1e-3 off."""
  rng = np.random.default_rng(len(shape) + shape[-1])
  C = shape[-1]
  # Per-channel offsets and scales so that groups differ (and |mean| >> std in some).
  x = rng.normal(size=shape) * rng.uniform(0.3, 3, C) + rng.normal(size=C) * 4
  gamma, beta, w = rng.uniform(0.5, 1.5, C), rng.normal(size=C), rng.normal(size=shape)

  def value_and_grads(fn, dtype):
    xs, gs, bs, ws = (tf.constant(a, dtype) for a in (x, gamma, beta, w))
    with tf.GradientTape() as tape:
      tape.watch([xs, gs, bs])
      y = fn(xs, gs, bs)
      loss = tf.reduce_sum(y * ws)
    return (y, *tape.gradient(loss, [xs, gs, bs]))

  def run(fn, dtype, compile=False):
    f = tf.function(value_and_grads) if compile else value_and_grads
    return [t.numpy().astype(np.float64) for t in f(fn, dtype)]

  fast_fn = lambda a, g, b: nn.group_norm(a, g, b, swish=swish)
  ref_fn = lambda a, g, b: _reference_group_norm(a, g, b, swish=swish)
  fast, ref32, ref64 = run(fast_fn, tf.float32), run(ref_fn, tf.float32), run(ref_fn, tf.float64)
  for name, f, r32, r64 in zip(('y', 'dx', 'dgamma', 'dbeta'), fast, ref32, ref64):
    scale = np.abs(r64).max()
    err_fast, err_ref = np.abs(f - r64).max() / scale, np.abs(r32 - r64).max() / scale
    assert err_fast <= 3 * err_ref + 1e-6, (name, err_fast, err_ref)
  # Same inside a tf.function (graph-mode custom gradient).
  graph = run(fast_fn, tf.float32, compile=True)
  for f, g in zip(fast, graph):
    np.testing.assert_allclose(g, f, rtol=1e-5, atol=1e-5 * np.abs(f).max())


def test_group_norm_unknown_batch_and_spatial_dims(gn_path):
  gn = nn.GroupNorm(64, name='t_dyn/norm')
  f = tf.function(lambda x: gn(x, swish=True),
                  input_signature=[tf.TensorSpec([None, None, None, 64], tf.float32)])
  x = np.random.default_rng(0).normal(size=(3, 5, 7, 64)).astype(np.float32)
  np.testing.assert_allclose(f(x).numpy(), gn(tf.constant(x), swish=True).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.numerics
@pytest.mark.parametrize('dtype', [tf.bfloat16, tf.float16])
def test_group_norm_low_precision_input(dtype, gn_path):
  rng = np.random.default_rng(5)
  x = tf.cast(rng.normal(size=(2, 8, 8, 64)) * 2 + 3, dtype)
  gamma = tf.constant(rng.uniform(0.5, 1.5, 64).astype(np.float32))
  beta = tf.constant(rng.normal(size=64).astype(np.float32))
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = nn.group_norm(x, gamma, beta, swish=True)
  dx = tape.gradient(y, x)
  assert y.dtype == dtype and dx.dtype == dtype
  # Statistics and normalisation are float32: the only error is the final rounding.
  ref = _reference_group_norm(tf.cast(x, tf.float32), gamma, beta, swish=True).numpy()
  eps = 2 ** -8 if dtype == tf.bfloat16 else 2 ** -11
  np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), ref, rtol=eps, atol=eps)


def _op_types(fn, *args):
  return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


@pytest.mark.skipif(shutil.which('g++') is None and shutil.which('c++') is None,
                    reason='no C++ compiler on this machine')
def test_fused_kernel_builds_and_is_used():
  """With a compiler the kernel builds, and group_norm (value and gradient) runs on it;
  fused_kernels(False) (what XLA-compiled code needs) gives the TF composition."""
  if not ops.enabled_by_env():
    pytest.skip(f'{ops.ENV_SWITCH}=0 switches the fused kernels off')
  assert ops.fused_lib() is not None
  x = tf.zeros([2, 4, 4, 64])
  g, b = tf.ones([64]), tf.zeros([64])

  def value_and_grad(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = nn.group_norm(x, g, b, swish=True)
    return y, tape.gradient(y, x)

  types = _op_types(value_and_grad, x)
  assert {'DiffusionGroupNorm', 'DiffusionGroupNormGrad'} <= types
  with nn.fused_kernels(False):
    types = _op_types(value_and_grad, x)
  assert not {'DiffusionGroupNorm', 'DiffusionGroupNormGrad'} & types


@pytest.mark.numerics
def test_fused_kernel_is_deterministic_and_accurate_with_a_large_offset():
  """Partial sums are merged in a fixed order (same bits on every call, whatever the
  thread timing) and the chunk merge keeps two-pass accuracy when |mean| >> std."""
  if ops.fused_lib() is None:
    pytest.skip('fused GroupNorm kernel unavailable')
  rng = np.random.default_rng(3)
  x = (1000. + rng.normal(size=(2, 64, 64, 32)) * 1e-2).astype(np.float32)
  gamma, beta = tf.ones([32]), tf.zeros([32])
  y1 = nn.group_norm(tf.constant(x), gamma, beta).numpy()
  y2 = nn.group_norm(tf.constant(x), gamma, beta).numpy()
  np.testing.assert_array_equal(y1, y2)
  g = x.astype(np.float64).reshape(2, 64, 64, 32, 1)  # 32 groups of one channel
  ref = ((g - g.mean((1, 2, 4), keepdims=True)) /
         np.sqrt(g.var((1, 2, 4), keepdims=True) + 1e-6)).reshape(x.shape)
  # float32 x has ~6e-5 absolute resolution at 1000, i.e. ~6e-3 of one std: the output can
  # be no closer than that; a one-pass E[x^2] - E[x]^2 in float32 would be off by O(1).
  np.testing.assert_allclose(y1, ref, atol=2e-2)


def test_fused_kernel_off_by_environment_and_on_compile_failure(tmp_path, monkeypatch):
  """DIFFUSION_TF_FUSED_OPS=0 switches the kernel off; a failing compiler gives one
  warning that says what happened and the TF composition, never an error."""
  monkeypatch.setenv(ops.ENV_SWITCH, '0')
  assert ops._load() is None
  monkeypatch.setenv(ops.ENV_SWITCH, '1')
  monkeypatch.setenv(ops.ENV_CACHE, str(tmp_path))
  monkeypatch.setenv('CXX', shutil.which('false') or '/bin/false')
  with pytest.warns(UserWarning, match='fused CPU kernels are unavailable.*exited with'):
    assert ops._load() is None
  assert not list(tmp_path.rglob('*.so'))  # no half-written library left in the cache


def test_fused_kernel_library_is_named_by_sources_compiler_and_cpu(monkeypatch):
  """A cache shared by machines with different CPUs (-march=native builds) or compilers
  never hands one of them a library built for the other."""
  monkeypatch.delenv(ops.ENV_ARCH, raising=False)  # native: the CPU's flags are in the name
  monkeypatch.setattr(ops, '_cpu_flags', lambda: {'sse2', 'avx2', 'avx512f'})
  name = ops.library_name('g++')
  assert name == ops.library_name('g++') and name.startswith('kernels_') and name.endswith('.so')
  assert ops.library_name('clang++') != name
  monkeypatch.setattr(ops, '_cpu_flags', lambda: {'sse2', 'avx2'})
  assert ops.library_name('g++') != name


_LOAD_KERNEL = ('from diffusion_tf import ops; lib = ops.fused_lib(); '
                'print("LOADED" if lib is not None else "NOT LOADED")')


def _load_in_subprocess(env):
  # A fresh process each time: loading a second copy of the library into one process would
  # register its kernels twice.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **env)
  env.pop('CXX', None)
  env[ops.ENV_SWITCH] = '1'  # this is about building them, even where the suite runs without
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, '-c', _LOAD_KERNEL], cwd=root, env=env,
                        capture_output=True, text=True, timeout=600).stdout


@pytest.mark.skipif(shutil.which('g++') is None, reason='no C++ compiler on this machine')
@pytest.mark.slow
def test_fused_kernel_builds_from_an_empty_cache(tmp_path):
  """A fresh machine: the kernel compiles into the cache once (atomically, nothing else left
  there), the next process reuses the file, and an unwritable cache falls back to the temp dir."""
  cache = tmp_path / 'cache'
  assert 'LOADED' == _load_in_subprocess({ops.ENV_CACHE: str(cache)}).strip()
  libs = [p for p in cache.rglob('*') if p.is_file()]
  assert len(libs) == 1 and libs[0].name.startswith('kernels_') and libs[0].suffix == '.so'
  mtime = libs[0].stat().st_mtime_ns
  assert 'LOADED' == _load_in_subprocess({ops.ENV_CACHE: str(cache)}).strip()
  assert libs[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
  blocker = tmp_path / 'not_a_dir'
  blocker.write_text('')  # a cache "directory" under a file cannot be created
  (tmp_path / 'tmp').mkdir()
  env = {ops.ENV_CACHE: str(blocker), 'TMPDIR': str(tmp_path / 'tmp')}
  assert 'LOADED' == _load_in_subprocess(env).strip()
  assert list((tmp_path / 'tmp').rglob('kernels_*.so'))
