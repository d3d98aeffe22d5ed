"""Tests for diffusion_tf.checkpoints: TF1-layout (name-based) checkpoints as released by
the original authors (§3.4, §13): raw weights, ``/ExponentialMovingAverage`` shadows, Adam
slots, ``beta1_power``/``beta2_power`` and ``global_step``.

The checkpoints are written here with ``tf.compat.v1.train.Saver(var_list={name: Variable})``,
the same name-based format TF1's Saver produced.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import checkpoints
from diffusion_tf.checkpoints import CheckpointMismatchError
from diffusion_tf.models import unet

SMALL = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
RES = 8
EMA = '/ExponentialMovingAverage'


def small_net():
  return unet.UNet(**SMALL, out_ch=3, resolution=RES)


def random_values(net, seed, scale=0.1):
  rs = np.random.RandomState(seed)
  return {unet.tf1_name(v): (scale * rs.randn(*v.shape.as_list())).astype(np.float32)
          for v in net.trainable_variables}


def net_values(net):
  return {unet.tf1_name(v): v.numpy().copy() for v in net.trainable_variables}


def assign(net, values):
  for v in net.trainable_variables:
    v.assign(values[unet.tf1_name(v)])


def training_var_list(raw, ema, step, *, adam=True):
  """{TF1 name: tf.Variable} of a full training checkpoint (4N + 3 variables)."""
  var_list = {}
  for name, a in raw.items():
    var_list[name] = tf.Variable(a)
  for name, a in (ema or {}).items():
    var_list[name + EMA] = tf.Variable(a)
  if adam:
    for name, a in raw.items():
      var_list[name + '/Adam'] = tf.Variable(np.full_like(a, 0.5))
      var_list[name + '/Adam_1'] = tf.Variable(np.full_like(a, 0.25))
    var_list['beta1_power'] = tf.Variable(np.float32(0.9 ** 3))
    var_list['beta2_power'] = tf.Variable(np.float32(0.999 ** 3))
  var_list['global_step'] = tf.Variable(step, dtype=tf.int64)
  return var_list


def save_with_saver(prefix, var_list, step):
  saver = tf.compat.v1.train.Saver(var_list=var_list)
  return saver.save(None, prefix, global_step=step, write_meta_graph=False)


def assert_values(net, values):
  for v in net.trainable_variables:
    np.testing.assert_array_equal(v.numpy(), values[unet.tf1_name(v)], err_msg=unet.tf1_name(v))


def inputs():
  rs = np.random.RandomState(0)
  return tf.constant(rs.uniform(-1, 1, (2, RES, RES, 3)).astype(np.float32)), tf.constant([5, 700])


@pytest.fixture(scope='module')
def training_ckpt(tmp_path_factory):
  """A full small training checkpoint with distinct raw and EMA values."""
  d = tmp_path_factory.mktemp('ckpt')
  ref = small_net()
  raw, ema = random_values(ref, 1), random_values(ref, 2)
  var_list = training_var_list(raw, ema, 1234)
  assert len(var_list) == 4 * len(raw) + 3
  prefix = save_with_saver(str(d / 'model.ckpt'), var_list, 1234)
  return dict(dir=str(d), prefix=prefix, raw=raw, ema=ema)


# ============================================================================ restore

def test_checkpoint_layout_as_tf1(training_ckpt):
  prefix = training_ckpt['prefix']
  assert prefix.endswith('model.ckpt-1234')
  assert os.path.exists(prefix + '.index') and os.path.exists(os.path.join(training_ckpt['dir'], 'checkpoint'))
  keys = set(tf.train.load_checkpoint(prefix).get_variable_to_shape_map())
  assert {'global_step', 'beta1_power', 'beta2_power', 'model/conv_in/W', 'model/conv_in/W' + EMA,
          'model/conv_in/W/Adam', 'model/conv_in/W/Adam_1'} <= keys


def test_restore_ema_by_default(training_ckpt):
  net = small_net()
  step = checkpoints.restore_tf1_checkpoint(net, training_ckpt['prefix'])
  assert step == 1234 and isinstance(step, int)
  assert_values(net, training_ckpt['ema'])
  # The restored network computes what a network holding those values directly computes.
  other = small_net()
  assign(other, training_ckpt['ema'])
  x, t = inputs()
  out = net(x, t).numpy()
  np.testing.assert_array_equal(out, other(x, t).numpy())
  assert np.abs(out).max() > 1e-3  # not the near-zero output of a fresh network


def test_restore_raw_weights(training_ckpt):
  net = small_net()
  step = checkpoints.restore_tf1_checkpoint(net, training_ckpt['prefix'], ema=False)
  assert step == 1234
  assert_values(net, training_ckpt['raw'])
  other = small_net()
  assign(other, training_ckpt['raw'])
  x, t = inputs()
  np.testing.assert_array_equal(net(x, t).numpy(), other(x, t).numpy())


def test_restore_from_directory_uses_latest(tmp_path):
  ref = small_net()
  a, b = random_values(ref, 3), random_values(ref, 4)
  save_with_saver(str(tmp_path / 'model.ckpt'), training_var_list(a, a, 10, adam=False), 10)
  latest = save_with_saver(str(tmp_path / 'model.ckpt'), training_var_list(b, b, 20, adam=False), 20)
  net = small_net()
  assert checkpoints.resolve_checkpoint(str(tmp_path)) == latest
  assert checkpoints.restore_tf1_checkpoint(net, str(tmp_path)) == 20
  assert_values(net, b)
  # An explicit older prefix still works.
  assert checkpoints.restore_tf1_checkpoint(net, str(tmp_path / 'model.ckpt-10')) == 10
  assert_values(net, a)


def test_missing_paths_raise(tmp_path):
  net = small_net()
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    checkpoints.restore_tf1_checkpoint(net, str(tmp_path))  # empty directory
  with pytest.raises(FileNotFoundError, match=r'\.index'):
    checkpoints.restore_tf1_checkpoint(net, str(tmp_path / 'model.ckpt-5'))  # no such prefix


def test_unbuilt_network_raises(training_ckpt):
  with pytest.raises(ValueError, match='build'):
    checkpoints.restore_tf1_checkpoint(unet.UNet(**SMALL, out_ch=3), training_ckpt['prefix'])


def test_checkpoint_without_step(tmp_path):
  ref = small_net()
  vals = random_values(ref, 5)
  var_list = {n: tf.Variable(a) for n, a in vals.items()}
  prefix = save_with_saver(str(tmp_path / 'model.ckpt'), var_list, None)
  net = small_net()
  assert checkpoints.restore_tf1_checkpoint(net, prefix, ema=False) is None
  assert_values(net, vals)


# ============================================================================ mismatches

def _expect_mismatch(prefix, *, ema, names, strict=True):
  net = small_net()
  before = net_values(net)
  with pytest.raises(CheckpointMismatchError) as info:
    checkpoints.restore_tf1_checkpoint(net, prefix, ema=ema, strict=strict)
  for name in names:
    assert name in str(info.value)
  assert_values(net, before)  # nothing was assigned
  return str(info.value)


def test_missing_variable_raises_and_assigns_nothing(tmp_path):
  ref = small_net()
  raw, ema = random_values(ref, 6), random_values(ref, 7)
  del ema['model/conv_out/W'], ema['model/mid/attn_1/q/b']
  prefix = save_with_saver(str(tmp_path / 'model.ckpt'), training_var_list(raw, ema, 1), 1)
  msg = _expect_mismatch(prefix, ema=True, names=['model/conv_out/W' + EMA, 'model/mid/attn_1/q/b' + EMA])
  assert 'missing' in msg
  # The raw weights are complete, so ema=False loads.
  net = small_net()
  checkpoints.restore_tf1_checkpoint(net, prefix, ema=False)
  assert_values(net, raw)


def test_misshaped_variable_raises_and_assigns_nothing(tmp_path):
  ref = small_net()
  raw = random_values(ref, 8)
  raw['model/conv_out/W'] = np.zeros([3, 3, 32, 6], np.float32)  # e.g. a learned-variance model
  prefix = save_with_saver(str(tmp_path / 'model.ckpt'), training_var_list(raw, raw, 1), 1)
  msg = _expect_mismatch(prefix, ema=False, names=['model/conv_out/W'])
  assert 'shape' in msg and '[3, 3, 32, 6]' in msg and '[3, 3, 32, 3]' in msg
  _expect_mismatch(prefix, ema=True, names=['model/conv_out/W' + EMA])


def test_unexpected_variable_raises_unless_not_strict(tmp_path):
  ref = small_net()
  raw = random_values(ref, 9)
  var_list = training_var_list(raw, raw, 1)
  var_list['model/extra_block/W'] = tf.Variable(np.ones([4, 4], np.float32))
  var_list['model/extra_block/W' + EMA] = tf.Variable(np.ones([4, 4], np.float32))
  prefix = save_with_saver(str(tmp_path / 'model.ckpt'), var_list, 1)
  _expect_mismatch(prefix, ema=False, names=['model/extra_block/W'])
  _expect_mismatch(prefix, ema=True, names=['model/extra_block/W'])
  net = small_net()
  assert checkpoints.restore_tf1_checkpoint(net, prefix, ema=False, strict=False) == 1
  assert_values(net, raw)


def test_checkpoint_without_ema_gives_clear_error(tmp_path):
  ref = small_net()
  raw = random_values(ref, 10)
  prefix = save_with_saver(str(tmp_path / 'model.ckpt'), training_var_list(raw, None, 3), 3)
  msg = _expect_mismatch(prefix, ema=True, names=[])
  assert 'EMA' in msg and 'ema=False' in msg
  net = small_net()
  assert checkpoints.restore_tf1_checkpoint(net, prefix, ema=False) == 3
  assert_values(net, raw)


def test_other_scope_variables_are_ignored(tmp_path):
  # Variables outside the network's top-level scope (e.g. an optimizer's bookkeeping)
  # are not "unexpected".
  ref = small_net()
  raw = random_values(ref, 11)
  var_list = training_var_list(raw, raw, 2)
  var_list['other_scope/thing'] = tf.Variable(1.)
  prefix = save_with_saver(str(tmp_path / 'model.ckpt'), var_list, 2)
  net = small_net()
  assert checkpoints.restore_tf1_checkpoint(net, prefix) == 2


# ============================================================================ writer

def test_write_tf1_checkpoint_roundtrip(tmp_path):
  src = small_net()
  assign(src, random_values(src, 12))
  shadows = [tf.Variable(-v) for v in src.trainable_variables]  # distinct EMA values
  var_dict = checkpoints.model_var_dict(src, ema_shadows=shadows)
  assert len(var_dict) == 2 * len(src.trainable_variables)
  assert 'model/conv_in/W' + EMA in var_dict
  var_dict['global_step'] = tf.Variable(77, dtype=tf.int64)
  prefix = checkpoints.write_tf1_checkpoint(str(tmp_path / 'model.ckpt'), var_dict, global_step=77)
  assert prefix.endswith('model.ckpt-77') and os.path.exists(prefix + '.index')
  assert tf.train.latest_checkpoint(str(tmp_path)) == prefix
  dst = small_net()
  assert checkpoints.restore_tf1_checkpoint(dst, str(tmp_path)) == 77
  for v, s in zip(dst.trainable_variables, shadows):
    np.testing.assert_array_equal(v.numpy(), s.numpy())
  assert checkpoints.restore_tf1_checkpoint(dst, prefix, ema=False) == 77
  x, t = inputs()
  np.testing.assert_array_equal(dst(x, t).numpy(), src(x, t).numpy())
  # Plain arrays/tensors are accepted too.
  prefix2 = checkpoints.write_tf1_checkpoint(
      str(tmp_path / 'arrays.ckpt'), {k: v.numpy() for k, v in checkpoints.model_var_dict(src).items()})
  dst2 = small_net()
  assert checkpoints.restore_tf1_checkpoint(dst2, prefix2, ema=False) is None
  np.testing.assert_array_equal(dst2(x, t).numpy(), src(x, t).numpy())


def test_full_size_cifar_checkpoint_roundtrip(tmp_path):
  src = unet.UNet(**unet.MODEL_CONFIGS['unet2d16b2'], out_ch=3, resolution=32)  # random init
  dst = unet.UNet(**unet.MODEL_CONFIGS['unet2d16b2'], out_ch=3, resolution=32)
  var_dict = {unet.tf1_name(v): v for v in src.trainable_variables}
  var_dict.update({unet.tf1_name(v) + EMA: tf.Variable(v * 2. + 1.) for v in src.trainable_variables})
  var_dict['global_step'] = tf.Variable(790000, dtype=tf.int64)
  assert len(var_dict) == 2 * 328 + 1
  prefix = checkpoints.write_tf1_checkpoint(str(tmp_path / 'model.ckpt'), var_dict, global_step=790000)
  assert prefix.endswith('model.ckpt-790000')
  src_vals = {unet.tf1_name(v): v for v in src.trainable_variables}
  dst_vars = {unet.tf1_name(v): v for v in dst.trainable_variables}
  names = ['model/temb/dense0/W', 'model/conv_in/W', 'model/down_1/block_0/nin_shortcut/W',
           'model/mid/attn_1/q/W', 'model/up_1/block_2/nin_shortcut/W', 'model/conv_out/W']
  assert not np.array_equal(dst_vars['model/conv_in/W'].numpy(), src_vals['model/conv_in/W'].numpy())
  assert checkpoints.restore_tf1_checkpoint(dst, prefix) == 790000
  for n in names:
    np.testing.assert_array_equal(dst_vars[n].numpy(), src_vals[n].numpy() * 2. + 1.)
  assert checkpoints.restore_tf1_checkpoint(dst, prefix, ema=False) == 790000
  for n in names:
    np.testing.assert_array_equal(dst_vars[n].numpy(), src_vals[n].numpy())
  assert unet.num_params(dst) == 35_746_307
