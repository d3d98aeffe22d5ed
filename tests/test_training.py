"""Training loop: optimizer/warmup/clipping/EMA arithmetic, strategies, resume, safety."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import checkpoints, nn, ops, recipes, runners, utils
from diffusion_tf.tpu_utils import tpu_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- hand-checkable model

class TinyModel(tpu_utils.Model):
  """loss = mean((w * x - 0.5)^2) for one weight vector ``model/w/W`` [3]."""

  def __init__(self, nan_after_calls=None):
    self.w = tf.Variable([0.3, -0.2, 0.1], name='model/w/W')
    self.calls = tf.Variable(0, trainable=False, name='calls')
    self.nan_after_calls = nan_after_calls

  @property
  def trainable_variables(self):
    return [self.w]

  def train_fn(self, x, y):
    feats = tf.reduce_mean(x, axis=[1, 2])  # [B, 3]
    loss = tf.reduce_mean(tf.square(self.w * feats - 0.5)) * 100.  # large gradients: clipping matters
    if self.nan_after_calls is not None:
      self.calls.assign_add(1)
      loss = tf.where(self.calls > self.nan_after_calls, tf.constant(np.nan, tf.float32), loss)
    return {'loss': loss}


def _images(n, seed=0, size=4):
  return np.random.RandomState(seed).randint(0, 256, size=(n, size, size, 3)).astype(np.int32)


def _input_fn(images):
  def input_fn(params):
    ds = tf.data.Dataset.from_tensor_slices({'image': images, 'label': np.zeros(len(images), np.int32)})
    return ds.repeat().batch(params['batch_size'], drop_remainder=True)
  return input_fn


def _numpy_reference(images, bs, steps, *, lr, warmup, grad_clip, ema_decay, w0, lr_schedule='constant',
                     decays=None, weight_decay=0.):
  """TF1 AdamOptimizer + warmup (+ linear decay to 0 at ``steps``) + global-norm clipping + EMA,
  written out in NumPy."""
  w, m, v = np.array(w0, np.float64), np.zeros(3), np.zeros(3)
  shadow = w.copy()
  b1, b2, eps = 0.9, 0.999, 1e-8
  b1p, b2p = b1, b2
  for step in range(steps):
    x = images[step * bs:(step + 1) * bs] / 127.5 - 1.
    feats = x.mean(axis=(1, 2))
    grad = (2. * (w * feats - 0.5) * feats).mean(axis=0) / 3. * 100.
    norm = np.sqrt((grad ** 2).sum())
    grad = grad * min(1., grad_clip / norm)
    lr_t = lr * min(step / warmup, 1.)
    if lr_schedule == 'linear':
      lr_t *= min((steps - step) / (steps - warmup), 1.)
    w = w * (1. - lr_t * weight_decay)  # torch's AdamW: decoupled decay first
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad ** 2
    w = w - lr_t * np.sqrt(1 - b2p) / (1 - b1p) * m / (np.sqrt(v) + eps)
    b1p, b2p = b1p * b1, b2p * b2
    decay = 1e-10 if step < 1 else ema_decay if decays is None else decays[step]
    shadow = shadow - (1 - decay) * (shadow - w)
  return w, shadow, m, v


@pytest.mark.numerics
@pytest.mark.parametrize('fused', [True, False], ids=['fused_update', 'tf_ops'])
def test_optimizer_warmup_clipping_ema_match_hand_computation(tmp_path, fused):
  images = _images(64)
  kw = dict(lr=0.1, warmup=4, grad_clip=1.0, ema_decay=0.9)
  with nn.fused_kernels(fused):
    state = tpu_utils.run_training(
        model_constructor=TinyModel, train_input_fn=_input_fn(images), total_bs=8, optimizer='adam',
        log_dir=str(tmp_path), exp_name='tiny', max_steps=6, log_fn=lambda *_: None, **kw)
  w, shadow, m, v = _numpy_reference(images, 8, 6, w0=[0.3, -0.2, 0.1], **kw)
  # float32 training vs a float64 reference: clipped gradients have norm 1, so absolute
  # errors of ~1e-6 are float32 rounding; a wrong formula is off by orders of magnitude more.
  tol = dict(rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state.variables[0].numpy(), w, **tol)
  np.testing.assert_allclose(state.ema_shadows[0].numpy(), shadow, **tol)
  np.testing.assert_allclose(state.optimizer.m[0].numpy(), m, **tol)
  np.testing.assert_allclose(state.optimizer.v[0].numpy(), v, rtol=1e-4, atol=1e-8)
  assert int(state.global_step.numpy()) == 6
  # The checkpoint holds every variable under its TF1 name.
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(state.model_dir))
  names = set(reader.get_variable_to_shape_map())
  assert names == {'model/w/W', 'model/w/W/ExponentialMovingAverage', 'model/w/W/Adam',
                   'model/w/W/Adam_1', 'beta1_power', 'beta2_power', 'global_step'}
  np.testing.assert_allclose(reader.get_tensor('model/w/W/ExponentialMovingAverage'), shadow, rtol=2e-5)
  np.testing.assert_allclose(reader.get_tensor('beta1_power'), 0.9 ** 7, rtol=1e-5)


def test_clip_scale_is_the_factor_of_clip_by_global_norm():
  grads = [tf.constant([3., -4.]), tf.constant([[1e-3, 2.5], [7., -0.5]])]
  for clip in (1.0, 0.5, 100.):
    gnorm = tf.linalg.global_norm(grads)
    expected, _ = tf.clip_by_global_norm(grads, clip, use_norm=gnorm)
    scale = tpu_utils.clip_scale(gnorm, clip)
    for g, e in zip(grads, expected):
      np.testing.assert_array_equal((g * scale).numpy(), e.numpy())
  assert np.isnan(tpu_utils.clip_scale(tf.constant(np.inf), 1.0).numpy())  # as TF: NaN, not 0


def _update_state(shapes, seed):
  rs = np.random.RandomState(seed)
  variables = [tf.Variable(rs.randn(*s).astype(np.float32)) for s in shapes]
  shadows = [tf.Variable(v * 0.9) for v in variables]
  return variables, shadows, tpu_utils.Adam(variables)


@pytest.mark.numerics
def test_fused_update_is_bit_identical_to_the_tf_kernels():
  """The fused CPU kernel (clip factor + Adam + EMA, all variables in one op) against the TF
  ops it replaces: same weights, slots, shadows and beta powers, bit for bit, over 5 steps;
  sizes cover many work chunks and lengths that are not a multiple of the vector width."""
  if nn.fused_kernels_lib() is None:
    pytest.skip('fused CPU kernels unavailable (see test_fused_kernel_builds_and_is_used)')
  shapes = [(3, 3, 64, 80), (257,), (1,), (33, 1000)]
  rs = np.random.RandomState(1)
  grad_steps = [[tf.constant(rs.randn(*s).astype(np.float32) * 10. ** rs.uniform(-4, 1))
                 for s in shapes] for _ in range(5)]
  results, op_types = [], []
  for fused in (True, False):
    variables, shadows, adam = _update_state(shapes, seed=0)
    with nn.fused_kernels(fused):
      @tf.function
      def step(grads, lr, decay):
        gnorm = tf.linalg.global_norm(grads)
        tpu_utils.apply_update(adam, grads, variables, shadows, lr, decay,
                               tpu_utils.clip_scale(gnorm, 1.0))
      for i, grads in enumerate(grad_steps):
        step(grads, tf.constant(1e-3 * (i + 1)), tf.constant(0.99 if i else 1e-10))
      graph = step.get_concrete_function(grad_steps[0], tf.constant(1.), tf.constant(1.)).graph
      op_types.append({op.type for op in graph.get_operations()})
    results.append([t.numpy() for t in [*variables, *shadows, *adam.m, *adam.v,
                                        adam.beta1_power, adam.beta2_power]])
  assert 'DiffusionAdamEma' in op_types[0] and 'ResourceApplyAdam' not in op_types[0]
  assert 'DiffusionAdamEma' not in op_types[1] and 'ResourceApplyAdam' in op_types[1]
  for a, b in zip(*results):
    np.testing.assert_array_equal(a, b)
  assert np.abs(results[0][0] - _update_state(shapes, seed=0)[0][0].numpy()).max() > 1e-4  # it moved


def test_update_with_rmsprop_uses_the_tf_kernels():
  """Only Adam has a fused kernel; RMSProp runs TF's, with the clip factor and the EMA."""
  variables, shadows, _ = _update_state([(5,)], seed=0)
  opt = tpu_utils.RMSProp(variables)
  before = variables[0].numpy()
  fn = tf.function(lambda g: tpu_utils.apply_update(opt, [g], variables, shadows, 0.1, 0.5, 0.25))
  graph = fn.get_concrete_function(tf.ones(5)).graph
  types = {op.type for op in graph.get_operations()}
  assert 'DiffusionAdamEma' not in types and 'ResourceApplyRMSProp' in types
  fn(tf.ones(5) * 4.)  # scaled to 1: RMSProp's first step with ms=1 -> ms = .95 + .05 = 1
  np.testing.assert_allclose(variables[0].numpy(), before - 0.1 / np.sqrt(1. + 1e-8), rtol=1e-6)
  np.testing.assert_allclose(shadows[0].numpy(), 0.5 * before * 0.9 + 0.5 * variables[0].numpy(),
                             rtol=1e-6)


def test_linear_lr_schedule_matches_hand_computation(tmp_path):
  images = _images(64)
  kw = dict(lr=0.1, warmup=2, grad_clip=1.0, ema_decay=0.9)
  state = tpu_utils.run_training(
      model_constructor=TinyModel, train_input_fn=_input_fn(images), total_bs=8, optimizer='adam',
      log_dir=str(tmp_path), exp_name='tiny', max_steps=6, lr_schedule='linear',
      log_fn=lambda *_: None, **kw)
  w, shadow, _, _ = _numpy_reference(images, 8, 6, w0=[0.3, -0.2, 0.1], lr_schedule='linear', **kw)
  const_w, _, _, _ = _numpy_reference(images, 8, 6, w0=[0.3, -0.2, 0.1], **kw)
  tol = dict(rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state.variables[0].numpy(), w, **tol)
  np.testing.assert_allclose(state.ema_shadows[0].numpy(), shadow, **tol)
  assert np.abs(w - const_w).max() > 1e-2  # the schedule changed the trajectory measurably


DIFFUSERS = json.loads((Path(__file__).parent / 'fixtures' / 'diffusers_training_schedules.json')
                       .read_text())  # tests/fixtures/make_training_fixtures.py


@pytest.mark.parametrize('schedule', sorted(DIFFUSERS['learning_rates']))
def test_lr_schedules_are_diffusers_get_scheduler(schedule):
  expected = DIFFUSERS['learning_rates'][schedule]
  # diffusers' 'constant' has no warmup; ours is the original's (with warmup): warmup 0 here.
  ours, warmup = (('constant', 0) if schedule == 'constant'
                  else (schedule, DIFFUSERS['warmup']))
  got = [float(utils.get_lr(DIFFUSERS['lr'], warmup, step, ours, DIFFUSERS['steps']))
         for step in range(len(expected))]
  # float32 arithmetic: 1e-6 of the peak rate absolutely (near 0 the cosine loses digits).
  np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6 * DIFFUSERS['lr'])


@pytest.mark.parametrize('case', DIFFUSERS['ema'], ids=lambda c: f"g{c['inv_gamma']}p{c['power']:.2f}")
def test_ema_warmup_is_diffusers_ema_model_decay(case):
  # diffusers' EMAModel.step k (from 1) is our update at global step k - 1.
  got = [float(utils.get_ema_decay(case['max_decay'], step, (case['inv_gamma'], case['power'])))
         for step in range(len(case['decays']))]
  np.testing.assert_allclose(got, case['decays'], rtol=1e-6, atol=1e-7)
  assert got[0] == 0. and got == sorted(got) and max(got) <= case['max_decay']
  if case['decays'][-1] == case['max_decay']:
    assert got[-1] == pytest.approx(case['max_decay'])  # the cap


def test_ema_warmup_in_training_matches_hand_computation(tmp_path):
  images = _images(64)
  kw = dict(lr=0.1, warmup=2, grad_clip=1.0, ema_decay=0.9999)
  case = DIFFUSERS['ema'][0]
  state = tpu_utils.run_training(
      model_constructor=TinyModel, train_input_fn=_input_fn(images), total_bs=8, optimizer='adam',
      log_dir=str(tmp_path), exp_name='tiny', max_steps=6, log_fn=lambda *_: None,
      ema_warmup=(case['inv_gamma'], case['power']), **kw)
  w, shadow, _, _ = _numpy_reference(images, 8, 6, w0=[0.3, -0.2, 0.1], decays=case['decays'], **kw)
  _, fixed, _, _ = _numpy_reference(images, 8, 6, w0=[0.3, -0.2, 0.1], **kw)
  tol = dict(rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state.variables[0].numpy(), w, **tol)
  np.testing.assert_allclose(state.ema_shadows[0].numpy(), shadow, **tol)
  assert np.abs(shadow - fixed).max() > 1e-3  # the warm-up moved the average measurably


@pytest.mark.parametrize('fused', [True, False], ids=['fused_kernels_on', 'tf_ops'])
def test_adamw_weight_decay_matches_hand_computation(tmp_path, fused):
  images = _images(64)
  kw = dict(lr=0.1, warmup=2, grad_clip=1.0, ema_decay=0.9)
  logged = []
  with nn.fused_kernels(fused):  # weight decay takes the TF ops either way
    state = tpu_utils.run_training(
        model_constructor=TinyModel, train_input_fn=_input_fn(images), total_bs=8,
        optimizer='adam', log_dir=str(tmp_path), exp_name='tiny', max_steps=6,
        log_fn=logged.append, optimizer_options={'weight_decay': 0.5}, **kw)
  w, shadow, _, _ = _numpy_reference(images, 8, 6, w0=[0.3, -0.2, 0.1], weight_decay=0.5, **kw)
  plain, _, _, _ = _numpy_reference(images, 8, 6, w0=[0.3, -0.2, 0.1], **kw)
  tol = dict(rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state.variables[0].numpy(), w, **tol)
  np.testing.assert_allclose(state.ema_shadows[0].numpy(), shadow, **tol)
  assert np.abs(w - plain).max() > 1e-2  # the decay changed the weights measurably
  assert any('the fused Adam+EMA kernel has none' in str(line) for line in logged)


class BatchSizeModel(TinyModel):
  """TinyModel that keeps the batch size its loss last saw."""

  def __init__(self):
    super().__init__()
    self.seen = tf.Variable(0, trainable=False, name='seen')

  def train_fn(self, x, y):
    self.seen.assign(tf.shape(x)[0])
    return super().train_fn(x, y)


@pytest.mark.slow
def test_gradient_accumulation_k_micro_batches_equal_one_batch(tmp_path):
  images = _images(64)
  kw = dict(model_constructor=BatchSizeModel, train_input_fn=_input_fn(images), total_bs=8,
            optimizer='adam', lr=0.1, warmup=2, grad_clip=1.0, ema_decay=0.9, max_steps=5,
            log_fn=lambda *_: None, log_dir=str(tmp_path))
  whole = tpu_utils.run_training(exp_name='whole', **kw)
  split = tpu_utils.run_training(exp_name='split', grad_accumulation=4, **kw)  # 4 x 2 images
  assert (int(whole.model.seen.numpy()), int(split.model.seen.numpy())) == (8, 2)
  np.testing.assert_allclose(split.variables[0].numpy(), whole.variables[0].numpy(), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(split.ema_shadows[0].numpy(), whole.ema_shadows[0].numpy(),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='grad_accumulation=3 must be >= 1 and divide total_bs=8'):
    tpu_utils.run_training(exp_name='bad', grad_accumulation=3, **kw)


def test_linear_lr_schedule_needs_max_steps_and_fails_before_any_work(tmp_path):
  common = dict(model_constructor=TinyModel, train_input_fn=_input_fn(_images(8)), total_bs=8,
                optimizer='adam', lr=0.1, warmup=2, grad_clip=1.0, log_dir=str(tmp_path),
                exp_name='bad', log_fn=lambda *_: None)
  with pytest.raises(ValueError, match='max_steps'):
    tpu_utils.run_training(lr_schedule='linear', **common)
  with pytest.raises(ValueError, match=r"lr_schedule='exponential'; expected one of"):
    tpu_utils.run_training(lr_schedule='exponential', max_steps=4, **common)
  with pytest.raises(ValueError, match=r'ema_warmup=\(1.0,\); expected \(inv_gamma > 0'):
    tpu_utils.run_training(ema_warmup=(1.0,), max_steps=4, **common)
  assert not os.listdir(tmp_path)  # nothing written


def test_step_zero_has_zero_lr_and_ema_copies(tmp_path):
  images = _images(16)
  state = tpu_utils.run_training(
      model_constructor=TinyModel, train_input_fn=_input_fn(images), total_bs=8, optimizer='adam',
      lr=0.1, warmup=10, grad_clip=1.0, ema_decay=0.9999, log_dir=str(tmp_path), exp_name='s0',
      max_steps=1, log_fn=lambda *_: None)
  # lr is 0 at step 0: weights unchanged, but Adam's moments moved and the EMA copied the weights.
  np.testing.assert_array_equal(state.variables[0].numpy(), np.float32([0.3, -0.2, 0.1]))
  np.testing.assert_array_equal(state.ema_shadows[0].numpy(), state.variables[0].numpy())
  assert np.abs(state.optimizer.m[0].numpy()).sum() > 0


def test_per_replica_clipping_on_one_replica_equals_global(tmp_path):
  images = _images(32)
  outs = []
  for mode in tpu_utils.CLIP_MODES:
    state = tpu_utils.run_training(
        model_constructor=TinyModel, train_input_fn=_input_fn(images), total_bs=8,
        optimizer='adam', lr=0.1, warmup=2, grad_clip=0.5, log_dir=str(tmp_path), exp_name=mode,
        max_steps=4, clip_mode=mode, log_fn=lambda *_: None)
    outs.append(state.variables[0].numpy())
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  images = _images(64)
  with pytest.raises(FloatingPointError, match='Non-finite loss'):
    tpu_utils.run_training(
        model_constructor=lambda: TinyModel(nan_after_calls=2), train_input_fn=_input_fn(images),
        total_bs=8, optimizer='adam', lr=0.1, warmup=1, grad_clip=1.0, log_dir=str(tmp_path),
        exp_name='nan', max_steps=10, save_every_steps=2, log_fn=lambda *_: None)
  model_dir = tmp_path / time.strftime('%Y-%m-%d') / 'nan'
  latest = tf.train.latest_checkpoint(str(model_dir))
  assert latest.endswith('model.ckpt-2')
  reader = tf.train.load_checkpoint(latest)
  assert np.isfinite(reader.get_tensor('model/w/W')).all()
  assert not tf.io.gfile.glob(str(model_dir / 'model.ckpt-4*'))
  # The run lock goes with the failed run: a restart from another process is not refused.
  assert not (model_dir / tpu_utils.LOCK_FILE).exists()


def _event_scalars(model_dir):
  """{tag: {step: value}} of every scalar summary in a run directory."""
  from tensorflow.core.util import event_pb2
  out = {}
  for f in tf.io.gfile.glob(os.path.join(str(model_dir), 'events.out.tfevents.*')):
    for rec in tf.data.TFRecordDataset(f):
      e = event_pb2.Event.FromString(rec.numpy())
      for v in e.summary.value:
        out.setdefault(v.tag, {})[e.step] = float(tf.make_ndarray(v.tensor))
  return out


def test_tensorboard_summaries_have_the_documented_tags(tmp_path):
  images = _images(64)
  state = tpu_utils.run_training(
      model_constructor=TinyModel, train_input_fn=_input_fn(images), total_bs=8,
      optimizer='adam', lr=0.1, warmup=2, grad_clip=1.0, log_dir=str(tmp_path), exp_name='tb',
      max_steps=5, summary_every=2, log_fn=lambda *_: None)
  scalars = _event_scalars(state.model_dir)
  # Written from inside the compiled loop, yet not prefixed with its scope ('while/cond/...').
  assert {'train/loss', 'train/gnorm', 'train/pnorm', 'train/lr', 'train/steps_per_sec'} <= set(scalars)
  assert sorted(scalars['train/lr']) == [0, 2, 4]
  np.testing.assert_allclose([scalars['train/lr'][s] for s in (0, 2, 4)], [0., 0.1, 0.1])
  assert all(np.isfinite(v) and v > 0 for v in scalars['train/loss'].values())


def test_dynamic_loss_scale_schedule():
  ls = tpu_utils.DynamicLossScale(initial=8., growth_interval=3, min_scale=2.)
  seen = []
  for finite in [True, True, False, True, True, True, True, False, False, False]:
    ls.update(tf.constant(finite))
    seen.append((float(ls.scale.numpy()), int(ls.good_steps.numpy())))
  assert seen == [(8, 1), (8, 2), (4, 0),  # overflow: halve, restart the count
                  (4, 1), (4, 2), (8, 0),  # 3 finite steps in a row: double
                  (8, 1), (4, 0), (2, 0), (2, 0)]  # never below min_scale
  assert int(ls.skipped.numpy()) == 4


class Float16Model(TinyModel):
  """TinyModel computed in float16: its gradients overflow at a large loss scale."""

  def train_fn(self, x, y):
    feats = tf.cast(tf.reduce_mean(x, axis=[1, 2]), tf.float16)
    err = tf.cast(self.w, tf.float16) * feats - 0.5
    return {'loss': tf.cast(tf.reduce_mean(tf.square(err)), tf.float32) * 100.}


def test_float16_training_skips_overflowing_steps_and_matches_float32(tmp_path):
  images = _images(64)
  common = dict(total_bs=8, optimizer='adam', lr=0.05, warmup=0, grad_clip=100.,
                log_dir=str(tmp_path), max_steps=6, log_fn=lambda *_: None)
  state = tpu_utils.run_training(model_constructor=Float16Model, train_input_fn=_input_fn(images),
                                 exp_name='f16', loss_scale='dynamic', **common)
  ls = state.loss_scale
  # 2^15 * 100 * O(1) gradients overflow float16 (max 65504): those steps are skipped, each
  # halving the scale, until the gradients fit; the run still trains max_steps real steps.
  skipped = int(ls.skipped.numpy())
  assert skipped >= 1 and float(ls.scale.numpy()) == 2. ** 15 / 2 ** skipped
  assert int(state.global_step.numpy()) == 6
  # The applied steps are the float32 steps (on the batches after the skipped ones) up to
  # float16 rounding of the gradients.
  ref = tpu_utils.run_training(model_constructor=TinyModel, exp_name='f32',
                               train_input_fn=_input_fn(np.roll(images, -8 * skipped, axis=0)), **common)
  np.testing.assert_allclose(state.variables[0].numpy(), ref.variables[0].numpy(), rtol=2e-3, atol=1e-4)
  with pytest.raises(ValueError, match="loss_scale='static'"):
    tpu_utils.run_training(model_constructor=Float16Model, train_input_fn=_input_fn(images),
                           exp_name='bad', loss_scale='static', **common)


def test_kwargs_conflict_is_refused_unless_allowed(tmp_path):
  images = _images(16)
  common = dict(model_constructor=TinyModel, train_input_fn=_input_fn(images), total_bs=8,
                optimizer='adam', warmup=1, grad_clip=1.0, log_dir=str(tmp_path), exp_name='kw',
                max_steps=1, log_fn=lambda *_: None)
  tpu_utils.run_training(lr=0.1, dump_kwargs={'lr': 0.1, 'log_dir': 'a'}, **common)
  with pytest.raises(tpu_utils.KwargsMismatchError, match=r'lr: existing 0\.1, now 0\.2'):
    tpu_utils.run_training(lr=0.2, dump_kwargs={'lr': 0.2, 'log_dir': 'a'}, **common)
  # Operational flags may change on resume.
  tpu_utils.run_training(lr=0.1, dump_kwargs={'lr': 0.1, 'log_dir': 'b'}, **dict(common, max_steps=2))
  model_dir = os.path.join(tmp_path, time.strftime('%Y-%m-%d'), 'kw')
  state = tpu_utils.run_training(lr=0.2, dump_kwargs={'lr': 0.2, 'log_dir': 'b'},
                                 allow_kwargs_mismatch=True, **dict(common, max_steps=3))
  assert int(state.global_step.numpy()) == 3
  assert json.load(open(os.path.join(model_dir, 'kwargs.json')))['lr'] == 0.2
  backups = [f for f in os.listdir(model_dir) if f.startswith('kwargs.json.') and f.endswith('.bak')]
  assert backups and any(json.load(open(os.path.join(model_dir, b)))['lr'] == 0.1 for b in backups)


def test_run_recorded_before_an_option_existed_resumes_with_the_old_behaviour(tmp_path):
  """A kwargs.json without channels / lr_schedule was written when they were RGB / constant:
  resuming with those values is accepted, with the new defaults it is refused."""
  common = dict(model_constructor=TinyModel, train_input_fn=_input_fn(_images(16)), total_bs=8,
                optimizer='adam', lr=0.1, warmup=1, grad_clip=1.0, log_dir=str(tmp_path),
                exp_name='old', log_fn=lambda *_: None)
  tpu_utils.run_training(dump_kwargs={'lr': 0.1}, max_steps=1, **common)  # an "old" record
  tpu_utils.run_training(dump_kwargs={'lr': 0.1, 'channels': 3, 'lr_schedule': 'constant'},
                         max_steps=2, **common)
  with pytest.raises(tpu_utils.KwargsMismatchError, match="channels: existing 3, now 1"):
    tpu_utils.run_training(dump_kwargs={'lr': 0.1, 'channels': 1}, max_steps=3, **common)
  with pytest.raises(tpu_utils.KwargsMismatchError, match="lr_schedule: existing 'constant'"):
    tpu_utils.run_training(dump_kwargs={'lr': 0.1, 'lr_schedule': 'linear'}, max_steps=3,
                           lr_schedule='linear', **common)
  # run_digits' --sample_steps (the end-of-training grid's sampler) came later too, but changes
  # nothing trained: a run recorded before it resumes with any value.
  state = tpu_utils.run_training(dump_kwargs={'lr': 0.1, 'channels': 3, 'lr_schedule': 'constant',
                                              'sample_steps': 100}, max_steps=3, **common)
  assert int(state.global_step.numpy()) == 3


def test_resume_continues_from_latest_checkpoint(tmp_path):
  images = _images(64)
  common = dict(model_constructor=TinyModel, train_input_fn=_input_fn(images), total_bs=8,
                optimizer='adam', lr=0.1, warmup=2, grad_clip=1.0, log_dir=str(tmp_path),
                exp_name='resume', log_fn=lambda *_: None)
  tpu_utils.run_training(max_steps=3, **common)
  state = tpu_utils.run_training(max_steps=5, **common)
  assert int(state.global_step.numpy()) == 5
  # Adam's bias-correction accumulators carried over: 0.9^(5+1).
  np.testing.assert_allclose(state.optimizer.beta1_power.numpy(), 0.9 ** 6, rtol=1e-5)
  files = sorted(os.listdir(state.model_dir))
  assert 'model.ckpt-5.index' in files and 'model.ckpt-3.index' in files


# ----------------------------------------------------------------------------- strategies

_MIRRORED_SCRIPT = textwrap.dedent('''
    import sys, json, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from diffusion_tf.models.unet import UNet
    from diffusion_tf import diffusion_utils_2 as d2
    from diffusion_tf.tpu_utils import tpu_utils

    class DeterministicModel(tpu_utils.Model):
      # t and noise are functions of each example, so splitting a batch across replicas
      # changes nothing but the arithmetic's grouping.
      def __init__(self):
        tf.random.set_seed(0)
        self.net = UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), out_ch=3,
                        in_ch=3, resolution=8)
        self.diffusion = d2.GaussianDiffusion2(
            betas=d2.get_beta_schedule('linear', beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=100),
            model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse')
      def train_fn(self, x, y):
        t = tf.cast(tf.reduce_sum(tf.abs(x) * 1000., axis=[1, 2, 3]), tf.int32) % 100
        noise = tf.sin(37. * x + 11.)
        return {'loss': tf.reduce_mean(self.diffusion.training_losses(
            lambda x_, t_: self.net(x_, t_, training=True), x, t, noise=noise))}

    images = np.random.RandomState(0).randint(0, 256, size=(64, 8, 8, 3)).astype(np.int32)
    def input_fn(params):
      return tf.data.Dataset.from_tensor_slices({'image': images, 'label': np.zeros(64, np.int32)}).repeat().batch(
          params['batch_size'], drop_remainder=True)
    # 'multiworker': run_training resolves the strategy itself from TF_CONFIG (set by the test).
    strategy = {'mirrored': lambda: tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']),
                'default': tf.distribute.get_strategy, 'multiworker': lambda: None}[sys.argv[1]]()
    losses = []
    state = tpu_utils.run_training(model_constructor=DeterministicModel, train_input_fn=input_fn, total_bs=8,
        optimizer='adam', lr=1e-3, warmup=1, grad_clip=1., log_dir=sys.argv[2], exp_name=sys.argv[1],
        max_steps=3, strategy=strategy, log_fn=lambda s: losses.append(s))
    local = lambda v: v.values[0] if hasattr(v, 'values') else v
    np.savez(sys.argv[3], **{v.name: local(v).numpy() for v in state.variables},
             **{'ema/' + s.name: local(s).numpy() for s in state.ema_shadows})
    print('REPLICAS', state.strategy.num_replicas_in_sync,
          'multi-worker' if isinstance(state.strategy, tf.distribute.MultiWorkerMirroredStrategy) else '')
''')


def _run(args, **kw):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_mirrored_strategy_matches_default_strategy(tmp_path):
  script = tmp_path / 'mirrored.py'
  script.write_text(_MIRRORED_SCRIPT)
  results = {}
  for kind in ('default', 'mirrored'):
    out = tmp_path / f'{kind}.npz'
    proc = _run([sys.executable, str(script), kind, str(tmp_path / 'logs'), str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'REPLICAS {2 if kind == "mirrored" else 1}' in proc.stdout
    results[kind] = dict(np.load(out))
  assert results['default'].keys() == results['mirrored'].keys()
  moved = 0
  for name, value in results['default'].items():
    np.testing.assert_allclose(results['mirrored'][name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    moved += name.endswith('conv1/W:0')
  assert moved > 0


def _free_port():
  import socket
  with socket.socket() as sock:
    sock.bind(('localhost', 0))
    return sock.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_training_from_tf_config_matches_one_process(tmp_path):
  """Two worker processes (the multi-host path) from TF_CONFIG: MultiWorkerMirroredStrategy,
  each worker feeding its shard of the global batch, give the one-process result; only the
  chief writes checkpoints."""
  script = tmp_path / 'train.py'
  script.write_text(_MIRRORED_SCRIPT)
  ref = tmp_path / 'default.npz'
  proc = _run([sys.executable, str(script), 'default', str(tmp_path / 'ref_logs'), str(ref)], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  cluster = {'worker': [f'localhost:{_free_port()}', f'localhost:{_free_port()}']}
  procs = []
  for i in range(2):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2',
               TF_CONFIG=json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': i}}))
    procs.append(subprocess.Popen(
        [sys.executable, str(script), 'multiworker', str(tmp_path / 'logs'), str(tmp_path / f'w{i}.npz')],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=300))
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert 'REPLICAS 2 multi-worker' in out
  expected = dict(np.load(ref))
  for i in range(2):
    got = dict(np.load(tmp_path / f'w{i}.npz'))
    assert got.keys() == expected.keys()
    for name, value in expected.items():
      np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-6, err_msg=f'worker {i}: {name}')
  model_dir = tmp_path / 'logs' / time.strftime('%Y-%m-%d') / 'multiworker'
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('model.ckpt-3')
  assert not (model_dir / tpu_utils.LOCK_FILE).exists()
  # The other worker kept its summaries out of the chief's directory.
  assert tf.io.gfile.glob(str(model_dir / 'worker_tmp' / 'events.*'))


# ----------------------------------------------------------------------------- the digits script

_DIGITS = [sys.executable, 'scripts/run_digits.py', 'train', '--resolution', '8',
           '--num_sample_images', '0', '--total_bs', '8']


def _digits_model_dir(log_dir, exp_name):
  kw = runners.script_defaults(__import__('scripts.run_digits', fromlist=['train']).train)
  kw.update(exp_name=exp_name, total_bs=8)
  return os.path.join(log_dir, '9999-99-99', runners.experiment_name(kw))


def _wait_for(proc, pattern, timeout):
  lines, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    lines.append(line)
    if pattern in line:
      return lines
  raise AssertionError(f'{pattern!r} not seen; output:\n' + ''.join(lines[-30:]))


def _popen(args):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _assert_checkpoints_readable(model_dir):
  prefixes = tf.train.get_checkpoint_state(model_dir).all_model_checkpoint_paths
  assert prefixes
  for p in prefixes:
    p = p if os.path.isabs(p) else os.path.join(model_dir, p)
    assert int(tf.train.load_checkpoint(p).get_tensor('global_step')) == int(p.rsplit('-', 1)[1])


@pytest.mark.slow
def test_sigterm_saves_and_rerun_resumes(tmp_path):
  log_dir = str(tmp_path)
  proc = _popen(_DIGITS + ['--log_dir', log_dir, '--exp_name', 'term', '--max_steps', '100000'])
  try:
    _wait_for(proc, 'step 2', timeout=240)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
  finally:
    proc.kill()
  assert proc.returncode == 0, out[-3000:]
  assert '(signal)' in out
  model_dir = _digits_model_dir(log_dir, 'term')
  step = int(tf.train.latest_checkpoint(model_dir).rsplit('-', 1)[1])
  assert step >= 2
  proc = _run(_DIGITS + ['--log_dir', log_dir, '--exp_name', 'term', '--max_steps', str(step + 3)],
              timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert f'Resuming from' in proc.stdout and f'(step {step})' in proc.stdout
  assert tf.train.latest_checkpoint(model_dir).endswith(f'model.ckpt-{step + 3}')
  _assert_checkpoints_readable(model_dir)


@pytest.mark.slow
def test_hard_kill_between_checkpoints_resumes_from_last_checkpoint(tmp_path):
  log_dir = str(tmp_path)
  args = _DIGITS + ['--log_dir', log_dir, '--exp_name', 'kill', '--save_every_steps', '2']
  proc = _popen(args + ['--max_steps', '100000'])
  try:
    _wait_for(proc, 'model.ckpt-4', timeout=240)
    proc.kill()  # SIGKILL: no chance to save
    proc.communicate(timeout=60)
  finally:
    proc.kill()
  model_dir = _digits_model_dir(log_dir, 'kill')
  _assert_checkpoints_readable(model_dir)
  step = int(tf.train.latest_checkpoint(model_dir).rsplit('-', 1)[1])
  proc = _run(args + ['--max_steps', str(step + 2)], timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert tf.train.latest_checkpoint(model_dir).endswith(f'model.ckpt-{step + 2}')
  _assert_checkpoints_readable(model_dir)


# ----------------------------------------------------------------------------- scripts: names and paths

def _script(name):
  return __import__(f'scripts.{name}', fromlist=['train'])


@pytest.mark.parametrize('script, expected', [
    ('run_cifar', 'EXP_cifar10_unet2d16b2_adam_bs128_lr0.0002w5000_beta0.0001-0.02-linear_t1000_'
                  'eps-fixedlarge-mse_dropout0.1_randflip1'),
    ('run_celebahq', 'EXP_celebahq256_unet2d16b2c112244_adam_bs64_lr2e-05w5000_beta0.0001-0.02-linear_'
                     't1000_noisepred_dropout0.0_randflip1_blk1'),
    ('run_lsun', 'EXP_lsun_unet2d16b2c112244_adam_bs64_lr2e-05w5000_beta0.0001-0.02-linear_t1000_'
                 'noisepred_dropout0.0_randflip1_blk1'),
])
def test_experiment_names_match_the_original(script, expected):
  assert runners.experiment_name(runners.script_defaults(_script(script).train)) == expected


def test_bucket_prefix_maps_every_path_flag(monkeypatch):
  seen = {}

  def fake_dataset_of(recipe):  # the recipe the command trains, paths and region mapped
    seen.update(tfr_file=recipe.data.tfr_file, tfds_data_dir=recipe.data.tfds_data_dir,
                log_dir=recipe.train.log_dir, region=recipe.train.region)
    raise RuntimeError('stop here')

  monkeypatch.setattr(runners, 'dataset_of', fake_dataset_of)
  with pytest.raises(RuntimeError, match='stop here'):
    _script('run_lsun').train(bucket_name_prefix='mybucket', region='us-central1', exp_name='E')
  assert seen['tfr_file'] == 'gs://mybucket-us-central1/tensorflow_datasets/lsun/church/church-r08.tfrecords'
  assert seen['log_dir'] == 'gs://mybucket-us-central1/logs'
  assert seen['region'] == 'us-central1'
  seen.clear()
  monkeypatch.setenv('DIFFUSION_TF_REGION', 'europe-west4')
  with pytest.raises(RuntimeError, match='stop here'):
    _script('run_cifar').train(bucket_name_prefix='p', exp_name='E')
  assert seen['tfds_data_dir'] == 'gs://p-europe-west4/tensorflow_datasets'
  assert seen['log_dir'] == 'gs://p-europe-west4/logs'
  seen.clear()
  monkeypatch.delenv('DIFFUSION_TF_REGION')
  with pytest.raises(RuntimeError, match='stop here'):
    _script('run_celebahq').train(exp_name='E')
  assert seen['tfds_data_dir'] == 'tensorflow_datasets' and seen['log_dir'] == 'logs'
  assert seen['region'] is None


@pytest.mark.slow
def test_original_train_command_stops_at_the_data_check(tmp_path):
  proc = _run([sys.executable, 'scripts/run_cifar.py', 'train', '--exp_name', 'E', '--tpu_name', 'my-tpu',
               '--tfds_data_dir', str(tmp_path / 'tfds'), '--log_dir', str(tmp_path / 'logs')], timeout=120)
  assert proc.returncode != 0
  assert 'cifar10' in proc.stderr and str(tmp_path / 'tfds') in proc.stderr
  # Nothing was created for a run that never started.
  assert not (tmp_path / 'logs').exists()


@pytest.mark.slow
def test_bfloat16_training_keeps_float32_variables_and_finite_loss(tmp_path):
  kw = dict(runners.script_defaults(_script('run_digits').train), mixed_precision='bfloat16',
            num_diffusion_timesteps=50)
  images = _images(32, size=8)
  state = tpu_utils.run_training(
      model_constructor=lambda: runners.make_model(kw, (8, 8, 3)), train_input_fn=_input_fn(images),
      total_bs=8, optimizer='adam', lr=1e-3, warmup=1, grad_clip=1.0, log_dir=str(tmp_path),
      exp_name='bf16', max_steps=3, log_fn=lambda *_: None)
  assert state.model.net.compute_dtype == tf.bfloat16
  assert all(v.dtype == tf.float32 for v in state.variables)
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(state.model_dir))
  assert np.isfinite(reader.get_tensor('model/conv_in/W')).all()
  assert int(reader.get_tensor('global_step')) == 3


@pytest.mark.slow
def test_float16_flag_trains_the_digits_model_with_loss_scaling(tmp_path):
  proc = _run(_DIGITS + ['--log_dir', str(tmp_path), '--exp_name', 'f16', '--max_steps', '3',
                         '--mixed_precision', 'float16', '--num_diffusion_timesteps', '50'], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The progress line reports the dynamic loss scale (the float16 path of run_training).
  assert 'loss scale ' in proc.stdout and 'steps skipped' in proc.stdout, proc.stdout[-2000:]
  model_dir, = tf.io.gfile.glob(str(tmp_path / '9999-99-99' / 'f16_digits_*_t50_*'))
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  assert int(reader.get_tensor('global_step')) == 3
  assert reader.get_variable_to_dtype_map()['model/conv_in/W'] == tf.float32
  assert np.isfinite(reader.get_tensor('model/conv_in/W')).all()


@pytest.mark.slow
def test_seed_makes_a_digits_run_reproducible(tmp_path):
  kw = dict(runners.script_defaults(_script('run_digits').train), resolution=8, total_bs=8,
            max_steps=3, num_diffusion_timesteps=50, num_sample_images=0, warmup=1)
  def weights(log_dir, seed):
    recipe = recipes.DIGITS.with_flags({'iterations_per_loop': 10})
    state = runners.train(recipe, dict(kw, log_dir=str(tmp_path / log_dir), seed=seed))
    # The digits default anneals the rate (recorded, so a resume keeps the same schedule).
    assert tpu_utils.load_train_kwargs(state.model_dir)['lr_schedule'] == 'linear'
    return np.concatenate([v.numpy().ravel() for v in state.variables])
  a, b, c = weights('a', 0), weights('b', 0), weights('c', 1)
  np.testing.assert_array_equal(a, b)  # initial weights, data order, timesteps, noise
  assert np.abs(a - c).max() > 1e-3


# ----------------------------------------------------------------------------- space-to-depth

@pytest.mark.parametrize('var_type', ['fixedlarge', 'learned'])
def test_block_size_runs_the_unet_on_space_to_depth_blocks(var_type):
  kw = dict(runners.script_defaults(_script('run_digits').train), model_var_type=var_type,
            loss_type='kl' if var_type == 'learned' else 'mse', block_size=2)
  model = runners.make_model(kw, (16, 16, 3))
  C = 6 if var_type == 'learned' else 3
  # The network sees 8x8x12 inputs and predicts 4 pixels' worth of channels per position.
  assert model.net.resolution == 8 and model.net.in_ch == 12 and model.net.out_ch == 4 * C
  x = tf.random.stateless_uniform([2, 16, 16, 3], seed=[1, 2], minval=-1, maxval=1)
  t = tf.constant([3, 700])
  out = model.denoise(x, t)
  assert out.shape == (2, 16, 16, C)
  manual = tf.nn.depth_to_space(model.net(tf.nn.space_to_depth(x, 2), t, training=False), 2)
  np.testing.assert_allclose(out.numpy(), manual.numpy(), rtol=1e-6, atol=1e-6)
  # Pixel (i, j) of the input reaches the network as channel block ((i%2)*2 + j%2) of (i//2, j//2).
  s2d = tf.nn.space_to_depth(x, 2).numpy()
  np.testing.assert_array_equal(s2d[1, 3, 5, 9:12], x.numpy()[1, 7, 5 * 2 + 1])
  assert np.isfinite(model.train_fn(x, None)['loss'].numpy())


def test_block_size_is_part_of_the_digits_experiment_name_and_validated():
  kw = dict(runners.script_defaults(_script('run_digits').train), block_size=2)
  assert runners.experiment_name(kw).endswith('_randflip0_blk2')
  assert runners.experiment_name(dict(kw, block_size=1)).endswith('_randflip0')  # v2 template
  with pytest.raises(ValueError, match='block_size=3 does not divide'):
    runners.make_model(dict(kw, block_size=3), (16, 16, 3))


# ----------------------------------------------------------------------------- one trainer per run

def _tiny_run(log_dir, **kw):
  return tpu_utils.run_training(
      model_constructor=TinyModel, train_input_fn=_input_fn(_images(64)), total_bs=8,
      optimizer='adam', lr=0.1, warmup=0, grad_clip=1., log_dir=log_dir, exp_name='lock',
      date_str='d', log_fn=lambda *_: None, **kw)


def test_a_run_directory_busy_with_another_live_trainer_is_refused(tmp_path):
  model_dir = tmp_path / 'd' / 'lock'
  model_dir.mkdir(parents=True)
  lock = model_dir / tpu_utils.LOCK_FILE
  other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    lock.write_text(json.dumps({'host': __import__('socket').gethostname(), 'pid': other.pid}))
    with pytest.raises(tpu_utils.RunDirectoryBusyError, match=f'pid {other.pid}.*delete'):
      _tiny_run(str(tmp_path), max_steps=2)
    assert tf.train.latest_checkpoint(str(model_dir)) is None  # nothing was written
    assert json.loads(lock.read_text())['pid'] == other.pid  # the owner's lock is untouched
  finally:
    other.kill()
    other.wait()
  # The owner is gone now: its stale lock is taken over, and released at the end of training.
  state = _tiny_run(str(tmp_path), max_steps=2)
  assert int(state.global_step.numpy()) == 2
  assert not lock.exists()


def test_run_lock_is_reentrant_for_the_same_process_and_released(tmp_path):
  release = tpu_utils.acquire_run_lock(str(tmp_path))
  lock = tmp_path / tpu_utils.LOCK_FILE
  assert json.loads(lock.read_text())['pid'] == os.getpid()
  # An earlier call of this process that died with an exception (a notebook) does not block.
  release2 = tpu_utils.acquire_run_lock(str(tmp_path))
  release()
  release2()  # already released: no error
  assert not lock.exists()
  # gs:// directories are not locked (no atomic create through gfile).
  assert tpu_utils.acquire_run_lock('gs://bucket/run')() is None


def test_a_step_hook_gets_control_at_the_steps_it_asks_for(tmp_path):
  class EveryThird(tpu_utils.StepHook):
    def __init__(self):
      self.seen, self.began = [], None

    def begin(self, state, run_dir):
      self.began = int(state.global_step.numpy())

    def next_stop(self, step):
      return (step // 3 + 1) * 3

    def after(self, state, step, rate):
      self.seen.append(int(state.global_step.numpy()))

  hook = EveryThird()
  tpu_utils.run_training(
      model_constructor=TinyModel, train_input_fn=_input_fn(_images(16)), total_bs=8,
      optimizer='adam', lr=0.1, warmup=0, grad_clip=1.0, log_dir=str(tmp_path), exp_name='hook',
      max_steps=8, iterations_per_loop=100, max_seconds_per_loop=1e6, step_hook=hook,
      log_fn=lambda *_: None)
  # Calls end at 3 and 6 even though the loop would take up to 100 steps a call; 8 is the end.
  assert hook.began == 0 and {3, 6, 8} <= set(hook.seen) and hook.seen[-1] == 8
  assert all(a < b for a, b in zip(hook.seen, hook.seen[1:]))
