"""Would a bfloat16 Winograd convolution pay? Rounding and speed of the candidates (study).

    python benchmarks/bf16_winograd_study.py [--threads 1]

Our float32 3x3 convolutions are Winograd F(4x4, 3x3) ones; in bfloat16 they fall back to
oneDNN's direct convolution, which is why our bf16 lead over diffusers is smaller than the
fp32 one (docs/performance.md). Two questions decide a bf16 Winograd path:

1. Rounding. The tiles (B^T d B) and transformed filters (G w G^T) would be stored in bf16
   and their products summed in float32. The relative L2 error against a float64 direct
   convolution is computed in NumPy (bf16 rounding by ml_dtypes), for F(4x4, 3x3) and
   F(2x2, 3x3), next to bf16's direct convolution (input and filter rounded).
2. Speed. The channel products are one batched MatMul ([P, tiles, in] x [P, in, out], P = 36
   or 16 positions); timed in bf16 at the CIFAR-10 U-Net's shapes against TF's direct bf16
   convolution and our float32 F(4x4, 3x3) MatMul. The tile transforms (memory-bound) come on
   top of the MatMul and are not timed here.
3. The training step's weight gradients, the slow part of our bf16 step: oneDNN's bf16
   Conv2DBackpropFilter against our float32 Winograd weight gradient computed from the same
   bf16 activations and output gradients (cast up, tiles, one batched MatMul, G^T . G), with
   both errors against TF's float32 direct weight gradient.

Outcome (benchmarks/RESULTS.md): 3 became the bf16 step's filter gradient (nn.conv3x3_bf16);
F(2x2, 3x3) in bf16, built end to end, ran no faster than the direct convolution once its
tile transforms were counted, so the bf16 forward pass stays direct.
"""

import argparse
import os
import time

import ml_dtypes
import numpy as np

# (B^T, G, A^T) of F(m x m, 3 x 3) (Lavin & Gray 2016); F(4x4, 3x3) as in ops/winograd_op.cc.
WINOGRAD = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], float)),
}


def bf16(a):
  """a rounded to bfloat16 (nearest even), back in float64."""
  return a.astype(ml_dtypes.bfloat16).astype(np.float64)


def conv_direct(x, w):
  """x [H, W, C], w [3, 3, C, K] -> 'SAME' stride-1 convolution, float64."""
  h, wd = x.shape[:2]
  xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  return sum(xp[i:i + h, j:j + wd] @ w[i, j] for i in range(3) for j in range(3))


def conv_winograd(x, w, m, rnd):
  """The same as F(m x m, 3 x 3) with tiles and transformed filters passed through `rnd`."""
  bt, g, at = WINOGRAD[m]
  a = bt.shape[0]
  h, wd = x.shape[:2]
  u = rnd(np.einsum('ai,ijck,bj->abck', g, w, g))
  xp = np.pad(x, ((1, 1 + m), (1, 1 + m), (0, 0)))
  out = np.zeros((h + m, wd + m, w.shape[3]))
  for ti in range(0, h, m):
    for tj in range(0, wd, m):
      v = rnd(np.einsum('ai,ijc,bj->abc', bt, xp[ti:ti + a, tj:tj + a], bt))
      out[ti:ti + m, tj:tj + m] = np.einsum('ia,abk,jb->ijk', at, np.einsum('abc,abck->abk', v, u), at)
  return out[:h, :wd]


def rounding(channels=(64, 128), size=16, seed=0):
  rng = np.random.default_rng(seed)
  for c in channels:
    x = rng.standard_normal((size, size, c))
    w = rng.standard_normal((3, 3, c, 32)) / np.sqrt(9 * c)
    ref = conv_direct(x, w)
    err = lambda y: np.linalg.norm(y - ref) / np.linalg.norm(ref)
    direct = err(conv_direct(bf16(x), bf16(w)))
    f23, f43 = (err(conv_winograd(bf16(x), w, m, bf16)) for m in (2, 4))
    print(f'{c:4d} channels: direct bf16 {direct:.2e}   F(2x2,3x3) bf16 {f23:.2e} ({f23 / direct:.1f}x)'
          f'   F(4x4,3x3) bf16 {f43:.2e} ({f43 / direct:.1f}x)', flush=True)


def speed(shapes=((4, 32, 128), (4, 16, 256), (16, 32, 128), (16, 16, 256), (16, 8, 256))):
  import tensorflow as tf

  def median_ms(f, n=15):
    f(), f()
    ts = []
    for _ in range(n):
      t0 = time.perf_counter()
      f()
      ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))

  rnd = lambda shape, dtype: tf.constant(tf.cast(tf.random.normal(shape), dtype))
  for n, h, c in shapes:
    x, w = rnd((n, h, h, c), tf.bfloat16), rnd((3, 3, c, c), tf.bfloat16)
    t23, u23 = rnd((16, n * (h // 2) ** 2, c), tf.bfloat16), rnd((16, c, c), tf.bfloat16)
    t43, u43 = rnd((36, n * (h // 4) ** 2, c), tf.float32), rnd((36, c, c), tf.float32)
    direct = median_ms(tf.function(lambda: tf.nn.conv2d(x, w, 1, 'SAME')))
    mm23 = median_ms(tf.function(lambda: tf.matmul(t23, u23)))
    mm43 = median_ms(tf.function(lambda: tf.matmul(t43, u43)))
    print(f'batch {n:2d} {h:2d}x{h:<2d} {c} ch: direct bf16 conv {direct:6.2f} ms   F(2x2,3x3) bf16 '
          f'MatMul {mm23:6.2f} ms ({direct / mm23:.2f}x)   our fp32 F(4x4,3x3) MatMul {mm43:6.2f} ms',
          flush=True)


def weight_gradient(shapes=((16, 32, 128), (16, 16, 256), (16, 8, 256), (64, 32, 128))):
  import sys
  import tensorflow as tf
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from diffusion_tf import nn
  lib = nn.fused_kernels_lib()
  if lib is None:
    print('no fused kernels (compiler missing or DIFFUSION_TF_FUSED_OPS=0): skipped')
    return
  gg = tf.constant(nn._WINOGRAD_GG, tf.float32)
  for n, h, c in shapes:
    x = tf.constant(tf.cast(tf.random.normal((n, h, h, c)), tf.bfloat16))
    dy = tf.constant(tf.cast(tf.random.normal((n, h, h, c)), tf.bfloat16))
    backprop = lambda a, b: tf.compat.v1.nn.conv2d_backprop_filter(a, [3, 3, c, c], b, [1] * 4, 'SAME')
    direct16 = tf.function(lambda: backprop(x, dy))
    direct32 = tf.function(lambda: backprop(tf.cast(x, tf.float32), tf.cast(dy, tf.float32)))

    @tf.function
    def winograd32():
      v = lib.diffusion_winograd_input(tf.cast(x, tf.float32))
      dm = lib.diffusion_winograd_output_grad(tf.cast(dy, tf.float32))
      du = tf.reshape(tf.matmul(v, dm, transpose_a=True), [36, c * c])
      return tf.reshape(tf.matmul(gg, du, transpose_a=True), [3, 3, c, c])

    fns = {'bf16 direct': direct16, 'fp32 Winograd': winograd32}
    times = {k: [] for k in fns}
    for f in fns.values():
      f(), f()
    for _ in range(9):  # alternated, so that other load hits both alike
      for k, f in fns.items():
        t0 = time.perf_counter()
        f()
        times[k].append(time.perf_counter() - t0)
    ref = direct32().numpy().astype(np.float64)
    err = lambda f: np.linalg.norm(tf.cast(f(), tf.float64).numpy() - ref) / np.linalg.norm(ref)
    t16, t32 = (1e3 * float(np.median(times[k])) for k in fns)
    print(f'batch {n:2d} {h:2d}x{h:<2d} {c} ch: bf16 direct {t16:6.1f} ms (error {err(direct16):.1e})   '
          f'fp32 Winograd {t32:6.1f} ms (error {err(winograd32):.1e})   {t16 / t32:.2f}x', flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--threads', type=int, default=1)
  a = p.parse_args()
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(a.threads)  # once, before TF starts
  tf.config.threading.set_inter_op_parallelism_threads(a.threads)
  print('Relative L2 error against a float64 direct convolution (16x16 image, 32 output channels):')
  rounding()
  print(f'Batched MatMul against the direct convolution, {a.threads} thread(s), median of 15:')
  speed()
  print(f'Weight gradient of a 3x3 convolution from bf16 activations, {a.threads} thread(s), median of 9:')
  weight_gradient()


if __name__ == '__main__':
  main()
