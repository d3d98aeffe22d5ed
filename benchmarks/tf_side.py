"""Our side of the benchmark: builders for the U-Net forward, train step and sampling step.

Imported by `worker.py` (under the project's Python) and by `profile_tf.py`. Every hot
path is one `tf.function` with fixed input signatures; tracing counts are recorded so
the orchestrator can check that nothing retraces after warm-up.
"""

import contextlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if os.environ.get('DIFFUSION_TF_ROOT'):  # A/B against another checkout of the library
  ROOT = os.environ['DIFFUSION_TF_ROOT']
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from diffusion_tf import diffusion_utils_2  # noqa: E402
from diffusion_tf.models import unet  # noqa: E402

FRAMEWORK = 'ours'

# Model configurations. The 64x64 variant keeps the CIFAR topology (attention at the
# second level, like diffusers' AttnDownBlock2D at block index 1), so both frameworks
# run the same network.
CONFIGS = {
    'cifar32': dict(config='unet2d16b2', resolution=32, attn_resolutions=(16,)),
    'cifar64': dict(config='unet2d16b2', resolution=64, attn_resolutions=(32,)),
    # google/ddpm-ema-church-256 / -celebahq-256 (same network); trained without dropout.
    'big256': dict(config='unet2d16b2c112244', resolution=256, attn_resolutions=(16,), dropout=0.),
    'digits16': dict(config='unet_digits_lite', resolution=16, attn_resolutions=(8,)),  # quick start
    'digits16wide': dict(config='unet_digits', resolution=16, attn_resolutions=(8,)),  # before issue 13
}

LR, CLIP, EMA_DECAY, BETA1, BETA2, ADAM_EPS = 2e-4, 1.0, 0.9999, 0.9, 0.999, 1e-8


def setup_threads(n):
  if n:
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(n)


def versions():
  return {'tensorflow': tf.__version__, 'numpy': np.__version__,
          'python': sys.version.split()[0]}


def _supports_compute_dtype():
  import inspect
  return 'compute_dtype' in inspect.signature(unet.UNet.__init__).parameters


def make_net(model, *, dropout=0.1, dtype='float32', seed=0):
  cfg = CONFIGS[model]
  kw = dict(unet.MODEL_CONFIGS[cfg['config']])
  kw['attn_resolutions'] = cfg['attn_resolutions']
  if dtype not in (None, 'float32'):
    if not _supports_compute_dtype():
      raise RuntimeError('this checkout of the library has no compute_dtype option')
    kw['compute_dtype'] = dtype
  tf.random.set_seed(seed)
  return unet.UNet(**kw, out_ch=3, dropout=dropout, resolution=cfg['resolution'], in_ch=3)


def make_diffusion():
  betas = diffusion_utils_2.get_beta_schedule('linear', beta_start=1e-4, beta_end=0.02,
                                              num_diffusion_timesteps=1000)
  return diffusion_utils_2.GaussianDiffusion2(betas=betas, model_mean_type='eps',
                                              model_var_type='fixedlarge', loss_type='mse')


class Bench:
  """One benchmark case: ``setup()`` builds and warms up, ``run()`` is one timed call."""

  def __init__(self, fn, args):
    self.fn, self.args = fn, args

  def run(self):
    out = self.fn(*self.args)
    np.asarray(out)  # make sure the result exists (CPU calls are synchronous anyway)

  def tracing_count(self):
    return self.fn.experimental_get_tracing_count()


_NETS = {}


def _net(model, dtype, dropout):
  key = (model, dtype, dropout)
  if key not in _NETS:
    _NETS[key] = make_net(model, dtype=dtype, dropout=dropout)
  return _NETS[key]


def _inputs(model, batch, seed=1):
  res = CONFIGS[model]['resolution']
  rng = np.random.default_rng(seed)
  x = tf.constant(rng.uniform(-1, 1, size=(batch, res, res, 3)).astype(np.float32))
  t = tf.constant(rng.integers(0, 1000, size=(batch,)).astype(np.int32))
  return x, t


class _OwnAdam:
  """Fallback if tpu_utils is unavailable: TF1 Adam via ResourceApplyAdam."""

  def __init__(self, variables):
    self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
    self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
    self.beta1_power = tf.Variable(BETA1, trainable=False)
    self.beta2_power = tf.Variable(BETA2, trainable=False)

  def apply(self, grads, variables, lr):
    b1p, b2p = self.beta1_power.read_value(), self.beta2_power.read_value()
    for var, g, m, v in zip(variables, grads, self.m, self.v):
      tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=b1p,
                                   beta2_power=b2p, lr=lr, beta1=BETA1, beta2=BETA2,
                                   epsilon=ADAM_EPS, grad=g)
    self.beta1_power.assign(b1p * BETA1)
    self.beta2_power.assign(b2p * BETA2)


def _own_ema_update(variables, shadows, decay):
  for v, s in zip(variables, shadows):
    s.assign(s - (1. - decay) * (s - v))


def _training_pieces():
  """The training loop's own update (diffusion_tf.tpu_utils.tpu_utils: global-norm clip,
  Adam, EMA -- one fused CPU kernel where available) when importable, else equivalent
  local ops. Returns (Adam class, update(optimizer, grads, variables, shadows), source)."""
  try:
    from diffusion_tf.tpu_utils import tpu_utils as tu
  except Exception:  # pragma: no cover
    tu = None
  if tu is not None and hasattr(tu, 'apply_update'):
    def update(opt, grads, variables, shadows):
      scale = tu.clip_scale(tf.linalg.global_norm(grads), CLIP)
      tu.apply_update(opt, grads, variables, shadows, LR, EMA_DECAY, scale)
    return tu.Adam, update, 'diffusion_tf.tpu_utils.tpu_utils.apply_update'
  adam_cls, ema_update = (tu.Adam, tu.ema_update) if tu is not None else (_OwnAdam, _own_ema_update)

  def update(opt, grads, variables, shadows):  # older checkouts (A/B runs)
    grads, _ = tf.clip_by_global_norm(grads, CLIP)
    opt.apply(grads, variables, LR)
    ema_update(variables, shadows, EMA_DECAY)
  source = ('diffusion_tf.tpu_utils.tpu_utils.Adam/ema_update' if tu is not None
            else 'benchmark-local ResourceApplyAdam/EMA')
  return adam_cls, update, source


class TrainState:
  """Adam slots and EMA shadows, updated exactly like the training loop does."""

  def __init__(self, net):
    adam_cls, self._update, self.source = _training_pieces()
    self.vars = list(net.trainable_variables)
    with tf.init_scope():
      self.optimizer = adam_cls(self.vars)
      self.ema = [tf.Variable(v.read_value(), trainable=False) for v in self.vars]

  def apply(self, grads):
    """Global-norm clip at CLIP, Adam at LR, EMA at EMA_DECAY."""
    self._update(self.optimizer, grads, self.vars, self.ema)


def make_train_step(net, diffusion):
  """loss = mean training_losses; GradientTape; global-norm clip 1.0; Adam 2e-4; EMA 0.9999."""
  state = TrainState(net)

  def denoise_fn(x, t):
    return net(x, t, training=True)

  def update(x, t, noise):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(diffusion.training_losses(denoise_fn, x, t, noise=noise))
    state.apply(tape.gradient(loss, state.vars))
    return loss

  @tf.function
  def train_step(x):
    t = tf.random.uniform([x.shape[0]], 0, diffusion.num_timesteps, dtype=tf.int32)
    return update(x, t, tf.random.normal(tf.shape(x)))

  # Fixed t and noise (for the float32-vs-bfloat16 loss-curve comparison).
  train_step_fixed = tf.function(update)
  return train_step, train_step_fixed, state


def _maybe_jit(fn, xla):
  return tf.function(fn, jit_compile=True) if xla else tf.function(fn)


def winograd_scope(enabled):
  """`nn.winograd(enabled)`; a no-op for older checkouts, which only have direct convolutions."""
  from diffusion_tf import nn
  return nn.winograd(enabled) if hasattr(nn, 'winograd') else contextlib.nullcontext()


def build(kind, model='cifar32', batch=16, dtype='float32', xla=False, const=False,
          direct=False):
  """Returns a `Bench` for kind in forward / train / sample_ddpm / sample_ddim:K.

  ``const``: inference with the weights compiled in as constants, as the library's samplers
  run it (`nn.constant_weights`); the function is traced here, inside that context.
  ``direct``: TF's direct 3x3 convolutions instead of the Winograd ones (`nn.winograd`).
  """
  if direct:
    with winograd_scope(False):
      bench = build(kind, model, batch, dtype, xla, const)
      bench.fn.get_concrete_function(*bench.args)  # trace now, inside the context
    return bench
  if const:
    if kind == 'train':
      raise ValueError('constant weights are for inference, not for the train step')
    from diffusion_tf import nn
    with nn.constant_weights():
      bench = build(kind, model, batch, dtype, xla)
      bench.fn.get_concrete_function(*bench.args)  # trace now, inside the context
    return bench
  x, t = _inputs(model, batch)
  if kind == 'forward':
    net = _net(model, dtype, 0.1)
    fn = _maybe_jit(lambda x_, t_: net(x_, t_, training=False), xla)
    bench = Bench(fn, (x, t))
  elif kind == 'train':
    # own weights: the step updates them; dropout as the model was trained (diffusers' side too)
    net = make_net(model, dtype=dtype, dropout=CONFIGS[model].get('dropout', 0.1))
    diffusion = make_diffusion()
    step, _, _ = make_train_step(net, diffusion)
    if xla:
      step = tf.function(step.python_function, jit_compile=True)
    bench = Bench(step, (x,))
  elif kind == 'sample_ddpm':
    net = _net(model, dtype, 0.1)
    diffusion = make_diffusion()

    def denoise_fn(x_, t_):
      return net(x_, t_, training=False)

    def sample_step(x_, i):
      return diffusion.p_sample(denoise_fn, x=x_, t=tf.fill([batch], i),
                                noise_fn=tf.random.normal, return_pred_xstart=False)
    fn = _maybe_jit(sample_step, xla)
    bench = Bench(fn, (x, tf.constant(500, tf.int32)))
  elif kind.startswith('sample_ddim'):  # 'sample_ddim:K': K steps of the 50-step schedule
    from diffusion_tf import sampling
    k = int(kind.split(':')[1])
    net = _net(model, dtype, 0.1)
    diffusion = make_diffusion()
    seq = sampling.timestep_sequence(diffusion.num_timesteps, 50)[-k:]

    def denoise_fn(x_, t_):
      return net(x_, t_, training=False)

    def ddim_loop(x_):
      return sampling.ddim_sample_loop(diffusion, denoise_fn, shape=x_.shape, timesteps=seq,
                                       eta=0., x_T=x_)
    bench = Bench(_maybe_jit(ddim_loop, xla), (x,))
  else:
    raise ValueError(kind)
  if xla:  # trace now, without the fused CPU kernels (XLA cannot compile a custom op)
    from diffusion_tf import nn
    with nn.fused_kernels(False):
      bench.fn.get_concrete_function(*bench.args)
  return bench


# ------------------------------------------------------------------------------- numerics

def _nonzero_init(net, seed=0):
  """Replaces the near-zero initialisations (conv2, proj_out, conv_out) by the default
  variance-scaling init so the network output is not ~0 and a comparison means something."""
  rng = np.random.default_rng(seed)
  for v in net.trainable_variables:
    if v.shape.rank >= 2 and float(tf.reduce_max(tf.abs(v))) < 1e-3:
      shape = v.shape.as_list()
      fan_in = float(np.prod(shape[:-1]))
      fan_out = float(np.prod(shape[:-2]) * shape[-1]) if len(shape) > 2 else float(shape[-1])
      limit = np.sqrt(3. / max(1., (fan_in + fan_out) / 2.))
      v.assign(rng.uniform(-limit, limit, size=shape).astype(np.float32))


def _copy_weights(src, dst):
  for a, b in zip(src.trainable_variables, dst.trainable_variables):
    assert a.name == b.name and a.shape == b.shape
    b.assign(a)


def digits_batches(batch, steps, resolution=32, seed=0):
  """Batches of real images (the built-in digits) in [-1, 1], else smooth random images."""
  try:
    from diffusion_tf.tpu_utils.datasets import load_digits_array
    imgs = load_digits_array(resolution).astype(np.float32) / 127.5 - 1.
  except Exception:  # pragma: no cover - sklearn missing
    rng0 = np.random.default_rng(123)
    imgs = np.tanh(rng0.normal(size=(1024, resolution, resolution, 3))).astype(np.float32)
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(imgs), size=batch)
    yield imgs[idx]


def numerics(dtype='bfloat16', steps=20, batch=16, model='cifar32'):
  """Network-output and short-loss-curve differences of ``dtype`` compute (with the default
  fast paths: Winograd 3x3 convolutions in float32) vs float32 with TF's direct convolutions."""
  direct = lambda: winograd_scope(False)  # wraps the reference's calls (and so its traces)
  res = CONFIGS[model]['resolution']
  out = {}
  ref = make_net(model, dtype='float32', dropout=0.0, seed=3)
  low = make_net(model, dtype=dtype, dropout=0.0, seed=4)
  _nonzero_init(ref)
  _copy_weights(ref, low)
  rng = np.random.default_rng(7)
  x = tf.constant(rng.uniform(-1, 1, size=(batch, res, res, 3)).astype(np.float32))
  rel, maxabs = [], []
  for tt in (10, 500, 990):
    t = tf.fill([batch], tt)
    with direct():
      y32 = ref(x, t, training=False).numpy()
    ylo = low(x, t, training=False)
    assert ylo.dtype == tf.float32
    ylo = ylo.numpy()
    rel.append(float(np.linalg.norm(ylo - y32) / np.linalg.norm(y32)))
    maxabs.append(float(np.max(np.abs(ylo - y32))))
  out['output_rel_l2'] = rel
  out['output_max_abs'] = maxabs
  out['output_rms'] = float(np.sqrt(np.mean(y32 ** 2)))
  # Short loss curve: identical initial weights, data, timesteps and noise.
  diffusion = make_diffusion()
  ref = make_net(model, dtype='float32', dropout=0.0, seed=11)
  low = make_net(model, dtype=dtype, dropout=0.0, seed=12)
  _copy_weights(ref, low)
  _, step32, _ = make_train_step(ref, diffusion)
  _, steplo, _ = make_train_step(low, diffusion)
  rng = np.random.default_rng(8)
  l32, llo = [], []
  for xb in digits_batches(batch, steps, res):
    t = tf.constant(rng.integers(0, 1000, size=(batch,)).astype(np.int32))
    noise = tf.constant(rng.normal(size=xb.shape).astype(np.float32))
    with direct():
      l32.append(float(step32(tf.constant(xb), t, noise)))
    llo.append(float(steplo(tf.constant(xb), t, noise)))
  out['loss_fp32'] = l32
  out['loss_low'] = llo
  out['param_dtypes'] = sorted({v.dtype.name for v in low.trainable_variables})
  return out
