"""Training on any `tf.distribute` strategy (original ``tpu_utils.py`` §9, without TPUEstimator).

`run_training` is a custom loop: ``strategy.run`` inside a `tf.function` that does many
steps per call, gradients all-reduced by the strategy, TF1-exact Adam / RMSProp kernels,
EMA after the optimizer step, TensorBoard summaries every 100 steps, and name-based
checkpoints in the original TF1 layout (``model/...``, ``.../ExponentialMovingAverage``,
``.../Adam``, ``beta1_power``, ``global_step``) so one reader loads ours and the
authors' released models.

It is three pieces: the run directory (`run_directory.RunDirectory`: lock, kwargs.json,
resumption, checkpoints, summaries, signals), the compiled step (`make_train_step`) and, in
between, the loop (`_loop`), all configured by one `train_settings.TrainSettings`.
"""

import contextlib
import math
import os
import time

import tensorflow as tf

from .. import nn, startup, utils
from ..checkpoints import EMA_SUFFIX
from ..models.unet import tf1_name
# The run directory's and the settings' public names, importable from here as before.
from .run_directory import (  # noqa: F401
    LOCK_FILE, RECORDED_BEFORE_OPTION_EXISTED, RESUME_SAFE_KWARGS, KwargsMismatchError,
    RunDirectory, RunDirectoryBusyError, acquire_run_lock, load_train_kwargs, with_older_defaults)
from .train_settings import CLIP_MODES, UNBOUNDED_STEPS, TrainSettings  # noqa: F401


# ----------------------------------------------------------------------------- data scaling

def normalize_data(x):
  """[0, 255] -> [-1, 1]."""
  return x / 127.5 - 1.


def unnormalize_data(x):
  """[-1, 1] -> [0, 255]."""
  return (x + 1.) * 127.5


# ----------------------------------------------------------------------------- model interface

class Model:
  """What a script's model provides; every image is float [B, H, W, C] in [-1, 1].

  Subclasses set ``self.net`` (a `UNet` whose variables exist after construction) and
  implement ``train_fn(x, y) -> {'loss': scalar}`` and ``samples_fn(dummy_x, y) -> {name: images}``.
  """
  net = None

  def train_fn(self, x, y):
    raise NotImplementedError

  def samples_fn(self, dummy_x, y):
    raise NotImplementedError

  def bpd_fn(self, x, y):
    return None

  @property
  def trainable_variables(self):
    return list(self.net.trainable_variables)


# ----------------------------------------------------------------------------- strategies

def resolve_strategy(tpu=None, zone=None, project=None):
  """The `tf.distribute` strategy for the flags: ``tpu`` -> TPUStrategy; a ``TF_CONFIG``
  cluster -> MultiWorkerMirroredStrategy; several GPUs -> MirroredStrategy; otherwise
  the default strategy (one CPU or GPU). Prints which devices that is, once."""
  strategy = _resolve_strategy(tpu, zone, project)
  startup.announce_devices(strategy)
  return strategy


def _resolve_strategy(tpu, zone, project):
  if tpu:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu, zone=zone, project=project)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  if os.environ.get('TF_CONFIG'):
    return tf.distribute.MultiWorkerMirroredStrategy()
  if len(tf.config.list_logical_devices('GPU')) > 1:
    return tf.distribute.MirroredStrategy()
  return tf.distribute.get_strategy()


def _is_chief(strategy):
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not getattr(resolver, 'task_type', None):
    return True
  if resolver.task_type == 'chief':
    return True
  has_chief = 'chief' in resolver.cluster_spec().as_dict()
  return not has_chief and resolver.task_type == 'worker' and resolver.task_id == 0


# ----------------------------------------------------------------------------- optimizers

class Adam:
  """TF1 ``AdamOptimizer`` (beta1 .9, beta2 .999, eps 1e-8 applied after bias correction)
  run by TF's own ``ResourceApplyAdam`` kernel; slots ``<var>/Adam`` (m), ``<var>/Adam_1``
  (v) and the ``beta1_power`` / ``beta2_power`` accumulators keep their TF1 names.

  `apply` runs in a replica context on already-reduced gradients: every replica updates
  its own copy identically, so no further synchronisation is needed.
  """

  def __init__(self, variables, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.):
    self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
    self.weight_decay = weight_decay  # decoupled (AdamW): var *= 1 - lr * weight_decay first
    mk = lambda v, suffix: tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                       name=f'{tf1_name(v)}/{suffix}')
    self.m = [mk(v, 'Adam') for v in variables]
    self.v = [mk(v, 'Adam_1') for v in variables]
    self.beta1_power = tf.Variable(beta1, dtype=tf.float32, trainable=False, name='beta1_power')
    self.beta2_power = tf.Variable(beta2, dtype=tf.float32, trainable=False, name='beta2_power')

  def apply(self, grads, variables, lr):
    b1p, b2p = self.beta1_power.read_value(), self.beta2_power.read_value()
    for var, g, m, v in zip(variables, grads, self.m, self.v):
      if self.weight_decay:  # as torch's AdamW: var -= lr * weight_decay * var, then Adam
        tf.raw_ops.ResourceApplyGradientDescent(
            var=var.handle, alpha=tf.cast(lr, var.dtype) * self.weight_decay, delta=var.read_value())
      tf.raw_ops.ResourceApplyAdam(
          var=var.handle, m=m.handle, v=v.handle, beta1_power=b1p, beta2_power=b2p, lr=lr,
          beta1=self.beta1, beta2=self.beta2, epsilon=self.epsilon, grad=g)
    self._advance_powers(b1p, b2p)

  def _advance_powers(self, b1p, b2p):
    """beta1^t, beta2^t -> beta1^(t+1), beta2^(t+1) after a step that used b1p, b2p."""
    tf.raw_ops.AssignVariableOp(resource=self.beta1_power.handle, value=b1p * self.beta1)
    tf.raw_ops.AssignVariableOp(resource=self.beta2_power.handle, value=b2p * self.beta2)

  def apply_with_ema(self, lib, grads, variables, shadows, lr, ema_alpha, grad_scale):
    """`apply` on ``grads * grad_scale``, then the EMA update of ``shadows``, as one fused
    CPU kernel (``lib.diffusion_adam_ema``; the same float32 arithmetic as the TF kernels)."""
    b1p, b2p = self.beta1_power.read_value(), self.beta2_power.read_value()
    handles = lambda vs: [v.handle for v in vs]
    lib.diffusion_adam_ema(
        var=handles(variables), m=handles(self.m), v=handles(self.v), shadow=handles(shadows),
        grad=grads, grad_scale=grad_scale, lr=tf.cast(lr, tf.float32), beta1_power=b1p,
        beta2_power=b2p, ema_alpha=ema_alpha, beta1=self.beta1, beta2=self.beta2,
        epsilon=self.epsilon)
    self._advance_powers(b1p, b2p)

  def var_dict(self, variables):
    out = {'beta1_power': self.beta1_power, 'beta2_power': self.beta2_power}
    for var, m, v in zip(variables, self.m, self.v):
      out[f'{tf1_name(var)}/Adam'], out[f'{tf1_name(var)}/Adam_1'] = m, v
    return out


class RMSProp:
  """TF1 ``RMSPropOptimizer(decay=.95, momentum=.9, epsilon=1e-8)`` via ``ResourceApplyRMSProp``;
  slots ``<var>/RMSProp`` (mean square, initialised to ones as in TF1) and ``<var>/RMSProp_1``."""

  def __init__(self, variables, decay=0.95, momentum=0.9, epsilon=1e-8):
    self.decay, self.momentum, self.epsilon = decay, momentum, epsilon
    self.ms = [tf.Variable(tf.ones(v.shape, v.dtype), trainable=False, name=f'{tf1_name(v)}/RMSProp')
               for v in variables]
    self.mom = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                            name=f'{tf1_name(v)}/RMSProp_1') for v in variables]

  def apply(self, grads, variables, lr):
    for var, g, ms, mom in zip(variables, grads, self.ms, self.mom):
      tf.raw_ops.ResourceApplyRMSProp(var=var.handle, ms=ms.handle, mom=mom.handle, lr=lr,
                                      rho=self.decay, momentum=self.momentum,
                                      epsilon=self.epsilon, grad=g)

  def var_dict(self, variables):
    out = {}
    for var, ms, mom in zip(variables, self.ms, self.mom):
      out[f'{tf1_name(var)}/RMSProp'], out[f'{tf1_name(var)}/RMSProp_1'] = ms, mom
    return out


OPTIMIZERS = {'adam': Adam, 'rmsprop': RMSProp}


def make_optimizer(name, variables, **options):
  """``options``: the optimizer's hyper-parameters (Adam: beta1, beta2, epsilon, weight_decay)."""
  if name not in OPTIMIZERS:
    raise NotImplementedError(f'optimizer={name!r}; expected one of {sorted(OPTIMIZERS)}')
  return OPTIMIZERS[name](variables, **options)


# ----------------------------------------------------------------------------- EMA

def make_ema_shadows(variables):
  """One non-trainable shadow per variable, named ``<var>/ExponentialMovingAverage`` and
  initialised to the variable's value (as TF1's ExponentialMovingAverage did)."""
  return [tf.Variable(v.read_value(), trainable=False, name=tf1_name(v) + EMA_SUFFIX)
          for v in variables]


def ema_update(variables, shadows, decay):
  """``shadow -= (1 - decay) * (shadow - var)`` on each replica's local copies.

  As ``ApplyGradientDescent(shadow, alpha=1 - decay, delta=shadow - var)``: the same
  arithmetic in two ops per variable instead of four (~10% of the optimizer's time)."""
  # 1 - decay before the cast: a Python float decay is subtracted in float64, as before.
  alphas = {}  # dtype -> alpha, one cast per dtype rather than one per variable
  for v, s in zip(variables, shadows):
    if s.dtype not in alphas:
      alphas[s.dtype] = tf.cast(1. - decay, s.dtype)
    tf.raw_ops.ResourceApplyGradientDescent(var=s.handle, alpha=alphas[s.dtype], delta=s - v)


def clip_scale(gnorm, clip_norm):
  """The factor `tf.clip_by_global_norm` multiplies every gradient by: min(1, clip_norm /
  gnorm), computed as it does (NaN when gnorm is not finite)."""
  gnorm = tf.convert_to_tensor(gnorm)
  scale = clip_norm * tf.minimum(1. / gnorm, tf.constant(1., gnorm.dtype) / clip_norm)
  return scale + (gnorm - gnorm)


def apply_update(optimizer, grads, variables, shadows, lr, ema_decay, grad_scale=None):
  """One training update from reduced gradients: ``grads * grad_scale`` (the clipping factor,
  `clip_scale`; None: as they are), the optimizer step, then the EMA of the new weights
  (`ema_update`).

  On CPU, Adam on float32 variables runs as one fused kernel (`Adam.apply_with_ema`): bit
  for bit the same result as the TF ops, one pass over the arrays instead of four and one
  kernel instead of ~4 per variable (CIFAR-10 model: 44 instead of ~80 ms per step).
  Elsewhere, under ``nn.fused_kernels(False)``, or with weight decay (the fused kernel has
  none), TF's own kernels."""
  fusable = isinstance(optimizer, Adam) and not optimizer.weight_decay
  lib = nn.fused_kernels_lib() if fusable else None
  grads = [tf.convert_to_tensor(g) for g in grads]
  if lib is not None and all(t.dtype == tf.float32 for t in [*variables, *shadows, *grads]):
    scale = tf.constant(1., tf.float32) if grad_scale is None else tf.cast(grad_scale, tf.float32)
    # 1 - decay before the cast, as in ema_update.
    optimizer.apply_with_ema(lib, grads, variables, shadows, lr, tf.cast(1. - ema_decay, tf.float32),
                             scale)
    return
  if grad_scale is not None:
    grads = [g * tf.cast(grad_scale, g.dtype) for g in grads]
  optimizer.apply(grads, variables, lr)
  ema_update(variables, shadows, ema_decay)


class DynamicLossScale:
  """Dynamic loss scaling for float16 training (the scheme of Micikevicius et al. 2018 and of
  Keras' ``LossScaleOptimizer``): the loss is multiplied by ``scale`` before the backward pass
  so that small float16 gradients do not flush to zero, and the gradients are divided by it
  again. A step whose gradients overflow (non-finite global norm) is skipped -- no optimizer,
  EMA or global-step update -- and halves the scale; ``growth_interval`` finite steps in a row
  double it. The state is not checkpointed: a resumed run starts again at ``initial``.

  Runs in a replica context: every replica sees the same reduced gradient norm, so every copy
  of the state takes the same update (raw ops on each replica's own handle, like global_step).
  """

  def __init__(self, initial=2. ** 15, growth_interval=2000, min_scale=1.):
    self.growth_interval, self.min_scale = growth_interval, min_scale
    self.scale = tf.Variable(initial, dtype=tf.float32, trainable=False, name='loss_scale')
    self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name='loss_scale_good_steps')
    self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name='loss_scale_skipped_steps')

  def update(self, finite):
    """Updates the scale after a step whose gradients were ``finite`` (a bool tensor)."""
    scale, good = self.scale.read_value(), self.good_steps.read_value() + 1
    grow = tf.logical_and(finite, good >= self.growth_interval)
    new_scale = tf.where(finite, tf.where(grow, scale * 2., scale),
                         tf.maximum(scale / 2., self.min_scale))
    tf.raw_ops.AssignVariableOp(resource=self.scale.handle, value=new_scale)
    tf.raw_ops.AssignVariableOp(resource=self.good_steps.handle,
                                value=tf.where(tf.logical_and(finite, tf.logical_not(grow)), good,
                                               tf.constant(0, tf.int64)))
    tf.raw_ops.AssignAddVariableOp(resource=self.skipped.handle,
                                   value=tf.cast(tf.logical_not(finite), tf.int64))


@contextlib.contextmanager
def ema_scope(variables, shadows):
  """Temporarily swaps the EMA shadows into ``variables`` (for sampling with EMA weights)."""
  backup = [v.read_value() for v in variables]
  for v, s in zip(variables, shadows):
    v.assign(s.read_value())
  try:
    yield
  finally:
    for v, b in zip(variables, backup):
      v.assign(b)


# ----------------------------------------------------------------------------- training state

class TrainState:
  """Everything a training checkpoint holds, under TF1 names."""

  def __init__(self, model, optimizer, ema_decay, loss_scale=None, optimizer_options=None):
    self.model = model
    self.variables = model.trainable_variables
    self.optimizer = make_optimizer(optimizer, self.variables, **(optimizer_options or {}))
    self.ema_decay = ema_decay
    self.ema_shadows = make_ema_shadows(self.variables)
    self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step')
    self.loss_scale = DynamicLossScale() if loss_scale == 'dynamic' else None

  def var_dict(self):
    out = {tf1_name(v): v for v in self.variables}
    out.update({tf1_name(v) + EMA_SUFFIX: s for v, s in zip(self.variables, self.ema_shadows)})
    out.update(self.optimizer.var_dict(self.variables))
    out['global_step'] = self.global_step
    return out

  def restore(self, ckpt, *, include_step=True):
    """Assigns every state variable from a TF1-layout checkpoint. Returns the names it lacked."""
    reader = tf.train.load_checkpoint(ckpt)
    shapes = reader.get_variable_to_shape_map()
    missing = []
    for name, var in self.var_dict().items():
      if name == 'global_step' and not include_step:
        continue
      if name not in shapes:
        missing.append(name)
        continue
      if list(shapes[name]) != var.shape.as_list():
        raise ValueError(f'{ckpt}: {name} has shape {shapes[name]}, the model expects {var.shape}')
      var.assign(tf.cast(reader.get_tensor(name), var.dtype))
    return missing


# ----------------------------------------------------------------------------- the training step

def make_train_step(state, strategy, settings, writer):
  """Compiles the training step for ``state`` (a `TrainState` built in ``strategy.scope()``).

  Returns ``train_loop(iterator, num_steps) -> (mean loss, all losses finite)``, one
  `tf.function` that runs ``num_steps`` steps of ``strategy.run``: on each replica the loss and
  its gradients, all-reduced and clipped (``settings.clip_mode``), then the optimizer and EMA
  update, with float16 loss scaling if ``settings.loss_scale``. Every ``settings.summary_every``
  steps it writes the TensorBoard scalars to ``writer``.
  """
  replica_step = _replica_step_fn(state, settings, strategy.num_replicas_in_sync)
  write_summaries = _summaries_fn(state, writer)
  summary_every = settings.summary_every

  @tf.function
  def train_loop(iterator, num_steps):
    loss_sum, all_finite = tf.constant(0., tf.float32), tf.constant(True)
    for _ in tf.range(num_steps):
      # Steps are sequential by nature; never let two run the same kernels at once (see
      # diffusion_base.timestep_loop).
      tf.autograph.experimental.set_loop_options(parallel_iterations=1)
      step = state.global_step.read_value()  # the step this iteration trains
      loss, gnorm, lr_t = strategy.run(replica_step, args=(next(iterator),))
      loss, gnorm, lr_t = (strategy.experimental_local_results(v)[0] for v in (loss, gnorm, lr_t))
      tf.cond(tf.equal(step % summary_every, 0),
              lambda: write_summaries(step, loss, gnorm, lr_t), lambda: tf.constant(False))
      loss_sum += loss
      all_finite = tf.logical_and(all_finite, tf.math.is_finite(loss))
    return loss_sum / tf.cast(num_steps, tf.float32), all_finite

  return train_loop


def _replica_step_fn(state, settings, num_replicas):
  """One step on one replica's batch: returns (mean loss over replicas, gradient norm, lr)."""
  s = settings

  def replica_step(batch):
    ctx = tf.distribute.get_replica_context()
    loss, grads = _accumulated_loss_and_gradients(state.model, state.variables, batch,
                                                  state.loss_scale, s.grad_accumulation)
    grads, gnorm, grad_scale = _reduce_and_clip(ctx, grads, s.clip_mode, s.grad_clip, num_replicas)
    step = state.global_step.read_value()
    lr_t = utils.get_lr(s.lr, s.warmup, step, s.lr_schedule, s.total_steps)
    ema_decay = utils.get_ema_decay(s.ema_decay, step, s.ema_warmup)
    _update_unless_overflowed(state, grads, gnorm, grad_scale, lr_t, step, ema_decay)
    return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, loss), gnorm, lr_t

  return replica_step


def _loss_and_gradients(model, variables, batch, loss_scale):
  """The model's loss on ``batch`` and its gradients; with a `DynamicLossScale` the gradients
  are taken of the scaled loss (so small float16 values survive) and unscaled afterwards."""
  x = normalize_data(tf.cast(batch['image'], tf.float32))
  with tf.GradientTape() as tape:
    loss = model.train_fn(x, batch['label'])['loss']
    scaled_loss = loss if loss_scale is None else loss * loss_scale.scale
  grads = tape.gradient(scaled_loss, variables)
  if loss_scale is not None:
    inv_scale = 1. / loss_scale.scale.read_value()
    grads = [g * inv_scale for g in grads]
  return loss, grads


def _accumulated_loss_and_gradients(model, variables, batch, loss_scale, k):
  """`_loss_and_gradients` as the mean over ``k`` equal micro-batches of ``batch``, taken one
  after another (one micro-batch's activations in memory at a time): the same update as the
  whole batch at once, up to float rounding and the random draws."""
  if k == 1:
    return _loss_and_gradients(model, variables, batch, loss_scale)
  micro = tf.nest.map_structure(lambda t: tf.reshape(t, [k, -1, *t.shape[1:]]), batch)

  def body(i, loss_sum, grad_sums):
    part = tf.nest.map_structure(lambda t: t[i], micro)
    loss, grads = _loss_and_gradients(model, variables, part, loss_scale)
    return i + 1, loss_sum + loss, [a + tf.cast(g, a.dtype) for a, g in zip(grad_sums, grads)]

  start = (tf.constant(0), tf.constant(0.), [tf.zeros(v.shape, v.dtype) for v in variables])
  _, loss_sum, grad_sums = tf.while_loop(lambda i, *_: i < k, body, start)
  return loss_sum / k, [g / k for g in grad_sums]


def _reduce_and_clip(ctx, grads, clip_mode, grad_clip, num_replicas):
  """All-reduces one replica's gradients. Returns (grads, gnorm, grad_scale): ``'global'``
  leaves the clipping factor to the update (``grad_scale``, one pass with Adam, see
  `apply_update`); ``'per_replica'`` clips each replica's gradient of loss/num_replicas at
  grad_clip/num_replicas before summing, as the original on TPU (§9.6)."""
  if clip_mode == 'per_replica':
    grads = [g / num_replicas for g in grads]
    gnorm = tf.linalg.global_norm(grads)
    grads, _ = tf.clip_by_global_norm(grads, grad_clip / num_replicas, use_norm=gnorm)
    grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    gnorm = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, gnorm)
    return grads, gnorm, None
  grads = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
  gnorm = tf.linalg.global_norm(grads)
  return grads, gnorm, clip_scale(gnorm, grad_clip)


def _update_unless_overflowed(state, grads, gnorm, grad_scale, lr_t, step, ema_decay):
  """The optimizer step, the EMA and ``global_step += 1``; under loss scaling only if the
  gradients are finite (an overflowing float16 step is skipped and lowers the scale)."""

  def update():
    # EMA after the optimizer step; decay ~0 at step 0 copies the weights.
    apply_update(state.optimizer, grads, state.variables, state.ema_shadows, lr_t,
                 tf.where(step < 1, 1e-10, ema_decay), grad_scale)
    tf.raw_ops.AssignAddVariableOp(resource=state.global_step.handle,
                                   value=tf.constant(1, tf.int64))
    return tf.constant(True)

  if state.loss_scale is None:
    update()
  else:
    finite = tf.math.is_finite(gnorm)
    tf.cond(finite, update, lambda: tf.constant(False))
    state.loss_scale.update(finite)


def _summaries_fn(state, writer):
  """``write_summaries(step, loss, gnorm, lr)``: the ``train/*`` scalars, from inside the loop."""

  def write_summaries(step, loss, gnorm, lr_t):
    # 'train/' with a trailing slash is an absolute scope: inside the loop's cond the tags
    # would otherwise become 'while/cond/train/loss'.
    with writer.as_default(step=step), tf.name_scope('train/'):
      tf.summary.scalar('loss', loss)
      tf.summary.scalar('gnorm', gnorm)
      tf.summary.scalar('pnorm', utils.rms(state.variables))
      tf.summary.scalar('lr', lr_t)
      if state.loss_scale is not None:
        tf.summary.scalar('loss_scale', state.loss_scale.scale)
    return tf.constant(True)

  return write_summaries


# ----------------------------------------------------------------------------- the loop

def run_training(*, model_constructor, train_input_fn, total_bs, optimizer, lr, warmup, grad_clip,
                 ema_decay=0.9999, tpu=None, zone=None, project=None, log_dir, exp_name,
                 dump_kwargs=None, date_str=None, iterations_per_loop=1000, keep_checkpoint_max=2,
                 max_steps=UNBOUNDED_STEPS, warm_start_from=None, save_checkpoints_secs=1600,
                 save_every_steps=None, clip_mode='global', summary_every=100, strategy=None,
                 allow_kwargs_mismatch=False, loss_scale=None, seed=None, max_seconds_per_loop=30.,
                 lr_schedule='constant', ema_warmup=None, optimizer_options=(),
                 grad_accumulation=1, step_hook=None, log_fn=utils.log):
  """Trains ``model_constructor()`` on batches of ``train_input_fn({'batch_size': per_replica_bs})``.

  The run lives in ``<log_dir>/<date_str or today>/<exp_name>``. An existing run is
  resumed from its latest checkpoint (model, EMA, optimizer and step; the data order is
  reshuffled). ``clip_mode='global'`` clips the all-reduced gradient at ``grad_clip``;
  ``'per_replica'`` reproduces the original TPU behaviour (§9.6: each replica's gradient of
  loss/num_replicas is clipped at grad_clip/num_replicas before summing).
  ``lr_schedule='linear'`` (or diffusers' 'cosine', ...) anneals the rate to 0 at ``max_steps``
  after the warmup (`utils.get_lr`); the default ``'constant'`` is the original's.
  ``ema_warmup=(inv_gamma, power)`` raises the EMA decay towards ``ema_decay`` as diffusers'
  `EMAModel` warm-up does (`utils.get_ema_decay`); None keeps the paper's fixed decay.
  ``optimizer_options``: ((name, value), ...) of the optimizer, e.g. Adam's ``weight_decay``
  (decoupled, as torch's AdamW) or ``beta1``. ``grad_accumulation=k`` takes each replica's
  share of ``total_bs`` as k micro-batches, one after another, for one update.
  ``loss_scale='dynamic'`` (for float16 compute) scales the loss, unscales the gradients and
  skips overflowing steps (`DynamicLossScale`). ``seed`` (default None: unseeded, as the
  original) fixes the initial weights and, offset by the resumed step, the data order,
  timesteps and noise. ``step_hook`` (see `StepHook`) gets control at the steps it asks for,
  e.g. at epoch ends to save or sample.

  Steps run ``strategy.run`` inside one `tf.function` call of at most
  ``iterations_per_loop`` steps, sized to take about ``max_seconds_per_loop`` so that
  signals and checkpoint intervals are honoured promptly. Returns the `TrainState` (with
  ``model_dir``, ``strategy`` and ``stopped_by_signal`` set).
  """
  settings = TrainSettings(  # checks the values before any work
      optimizer=optimizer, lr=lr, warmup=warmup, grad_clip=grad_clip, total_bs=total_bs,
      ema_decay=ema_decay, ema_warmup=ema_warmup, max_steps=max_steps, lr_schedule=lr_schedule,
      clip_mode=clip_mode, optimizer_options=tuple(dict(optimizer_options).items()),
      grad_accumulation=grad_accumulation,
      loss_scale=loss_scale, seed=seed, keep_checkpoint_max=keep_checkpoint_max,
      save_checkpoints_secs=save_checkpoints_secs, save_every_steps=save_every_steps,
      iterations_per_loop=iterations_per_loop, summary_every=summary_every,
      max_seconds_per_loop=max_seconds_per_loop, allow_kwargs_mismatch=allow_kwargs_mismatch)
  strategy = strategy or resolve_strategy(tpu, zone, project)
  model_dir = os.path.join(log_dir, date_str or time.strftime('%Y-%m-%d'), exp_name)
  return _train(model_constructor, train_input_fn, settings, strategy, model_dir,
                dump_kwargs=dump_kwargs, warm_start_from=warm_start_from, log_fn=log_fn,
                step_hook=step_hook)


def _train(model_constructor, train_input_fn, settings, strategy, model_dir, *, dump_kwargs,
           warm_start_from, log_fn, step_hook=None):
  """`run_training` once its arguments are checked: wires the run directory, the state and the
  compiled step together, then runs `_loop`. The run lock is held from before the first file
  it writes until it returns or raises."""
  num_replicas = strategy.num_replicas_in_sync
  if settings.total_bs % num_replicas:
    raise ValueError(f'total_bs={settings.total_bs} is not divisible by the {num_replicas} replicas')
  with RunDirectory(model_dir, chief=_is_chief(strategy), log_fn=log_fn,
                    keep_checkpoint_max=settings.keep_checkpoint_max,
                    allow_kwargs_mismatch=settings.allow_kwargs_mismatch) as run_dir:
    run_dir.record_kwargs(dump_kwargs)
    log_fn(f'model_dir: {model_dir}')
    state = _build_state(model_constructor, strategy, settings, log_fn)
    run_dir.restore(state, warm_start_from)
    if settings.seed is not None:
      # Data order, timesteps and noise: seeded by (seed, step), so a resumed run does not
      # replay the stream it started with.
      tf.random.set_seed(settings.seed + int(state.global_step.numpy()))
    iterator = iter(strategy.distribute_datasets_from_function(
        _dataset_fn(train_input_fn, settings.total_bs)))
    train_loop = make_train_step(state, strategy, settings, run_dir.open_summary_writer())
    stopped_by_signal = _loop(train_loop, iterator, state, run_dir, settings, log_fn,
                              step_hook or StepHook())
    state.model_dir, state.strategy = model_dir, strategy
    state.stopped_by_signal = stopped_by_signal
    return state


def _build_state(model_constructor, strategy, settings, log_fn):
  """The model and its `TrainState` under ``strategy`` (``settings.seed``, if any, fixes the
  initial weights)."""
  if settings.seed is not None:
    tf.random.set_seed(settings.seed)  # the initial weights
  with strategy.scope():
    model = model_constructor()
    state = TrainState(model, settings.optimizer, settings.ema_decay, settings.loss_scale,
                       dict(settings.optimizer_options))
  if dict(settings.optimizer_options).get('weight_decay'):
    log_fn('weight decay: the unfused optimizer step (the fused Adam+EMA kernel has none)')
  num_replicas = strategy.num_replicas_in_sync
  log_fn(f'num params: {sum(v.shape.num_elements() for v in state.variables):,} '
         f'in {len(state.variables)} variables; {num_replicas} replica(s), '
         f'{settings.total_bs // num_replicas} examples each')
  return state


def _dataset_fn(train_input_fn, total_bs):
  """For `distribute_datasets_from_function`: each input pipeline batches for its replicas
  and, when there are several (multi-worker), reads its own shard."""

  def dataset_fn(ctx):
    ds = train_input_fn({'batch_size': ctx.get_per_replica_batch_size(total_bs)})
    return ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id) if ctx.num_input_pipelines > 1 else ds

  return dataset_fn


class StepHook:
  """What `run_training`'s loop calls besides training (this base class: nothing).
  ``begin(state, run_dir)`` once the state is restored, before the first step;
  ``next_stop(step)``: the next step at which it wants control (the loop's calls end there);
  ``after(state, step, rate)`` after each call of the compiled loop (``rate``: steps/s, NaN
  until measured)."""

  def begin(self, state, run_dir):
    pass

  def next_stop(self, step):
    return None

  def after(self, state, step, rate):
    pass


def _loop(train_loop, iterator, state, run_dir, settings, log_fn, hook):
  """Calls ``train_loop`` until ``max_steps`` or SIGTERM / SIGINT, logging a progress line per
  call and saving every ``save_every_steps`` steps or ``save_checkpoints_secs`` seconds, and
  at the end. A non-finite loss stops it without saving (`FloatingPointError`). Returns the
  signal that stopped it, or None."""
  s = settings
  step = int(state.global_step.numpy())
  start_step, t_start = step, time.time()
  run_dir.start_save_clock()
  steps_per_call, rate = 1, float('nan')
  hook.begin(state, run_dir)
  with run_dir.stop_request() as stop:
    while step < s.max_steps and stop.signum is None:
      n = _steps_this_call(step, steps_per_call, s)
      stop_at = hook.next_stop(step)
      n = n if stop_at is None or stop_at <= step else min(n, stop_at - step)
      t0 = time.time()
      mean_loss, finite = train_loop(iterator, tf.constant(n, tf.int32))
      mean_loss, finite = float(mean_loss), bool(finite)
      step = int(state.global_step.numpy())
      if not finite:
        raise FloatingPointError(
            f'Non-finite loss ({mean_loss}) between steps {step - n} and {step}; stopping without '
            f'saving. The last good checkpoint in {run_dir.path} is intact '
            f'({run_dir.latest_checkpoint() or "none yet"}). Try a lower --lr or --grad_clip.')
      dt = time.time() - t0
      # The first call includes tracing; size later calls from the measured rate.
      if step - n != start_step or n > 1:
        rate = n / dt
        steps_per_call = max(1, min(s.iterations_per_loop, int(rate * s.max_seconds_per_loop)))
      with run_dir.writer.as_default(step=step):
        if math.isfinite(rate):
          tf.summary.scalar('train/steps_per_sec', rate)
      log_fn(_progress_line(step, s.max_steps, mean_loss, rate, state.loss_scale))
      if s.save_every_steps and step % s.save_every_steps == 0:
        run_dir.save(step, f'every {s.save_every_steps} steps')
      elif run_dir.seconds_since_save() >= s.save_checkpoints_secs:
        run_dir.save(step, f'every {s.save_checkpoints_secs} s')
      hook.after(state, step, rate)
    run_dir.save(step, 'signal' if stop.signum is not None else 'end of training')
  run_dir.writer.flush()
  log_fn(f'Trained {step - start_step} steps in {utils.format_duration(time.time() - t_start)}; '
         f'checkpoint {run_dir.latest_checkpoint()}; logs {run_dir.path}')
  return stop.signum


def _steps_this_call(step, steps_per_call, settings):
  """The next call's step count: the size the measured rate allows, at most
  ``iterations_per_loop``, never past ``max_steps`` or the next multiple of ``save_every_steps``."""
  n = min(steps_per_call, settings.iterations_per_loop, settings.max_steps - step)
  if settings.save_every_steps:
    n = min(n, settings.save_every_steps - step % settings.save_every_steps)
  return n


def _progress_line(step, max_steps, mean_loss, rate, loss_scale):
  """``step 120/1000  loss 0.03125  2.50 steps/s  ETA 0:06:00`` (+ the loss scale under float16)."""
  eta = (max_steps - step) / rate if max_steps < 1e9 and math.isfinite(rate) else float('nan')
  rate_text = f'{rate:.2f} steps/s' if math.isfinite(rate) else '(tracing)'
  scale_text = '' if loss_scale is None else (
      f'  loss scale {loss_scale.scale.numpy():g} ({int(loss_scale.skipped.numpy())} steps skipped)')
  return (f'step {step}' + (f'/{max_steps}' if max_steps < 1e9 else '')
          + f'  loss {mean_loss:.5f}  {rate_text}  ETA {utils.format_duration(eta)}{scale_text}')
