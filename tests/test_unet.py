"""Tests for diffusion_tf.models.unet (original §3, §14.5-14.9, §16).

The expected variable list is enumerated here from the rules of §3.2 (checked against the
spec's parameter counts); block outputs are compared with independent NumPy code.
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import pipelines
from diffusion_tf.models import unet

CIFAR = unet.MODEL_CONFIGS['unet2d16b2']
BIG = unet.MODEL_CONFIGS['unet2d16b2c112244']
DIGITS = unet.MODEL_CONFIGS['unet_digits']


# ============================================================================ helpers

def expected_variables(*, ch, ch_mult, num_res_blocks, attn_resolutions, resolution,
                       in_ch=3, out_ch=3, s='model', resamp_with_conv=True):
  """{TF1 name: shape} following §3.2/§3.4 (written from the spec, not from unet.py)."""
  out = {}
  temb_ch = 4 * ch

  def dense(name, i, o):
    out[f'{name}/W'], out[f'{name}/b'] = (i, o), (o,)

  def conv(name, i, o):
    out[f'{name}/W'], out[f'{name}/b'] = (3, 3, i, o), (o,)

  def norm(name, c):
    out[f'{name}/gamma'], out[f'{name}/beta'] = (c,), (c,)

  def resblock(name, i, o):
    norm(f'{name}/norm1', i)
    conv(f'{name}/conv1', i, o)
    dense(f'{name}/temb_proj', temb_ch, o)
    norm(f'{name}/norm2', o)
    conv(f'{name}/conv2', o, o)
    if i != o:
      dense(f'{name}/nin_shortcut', i, o)

  def attn(name, c):
    norm(f'{name}/norm', c)
    for k in ('q', 'k', 'v', 'proj_out'):
      dense(f'{name}/{k}', c, c)

  dense(f'{s}/temb/dense0', ch, temb_ch)
  dense(f'{s}/temb/dense1', temb_ch, temb_ch)
  conv(f'{s}/conv_in', in_ch, ch)
  hs, cur, res, L = [ch], ch, resolution, len(ch_mult)
  for l, m in enumerate(ch_mult):
    for i in range(num_res_blocks):
      resblock(f'{s}/down_{l}/block_{i}', cur, ch * m)
      cur = ch * m
      if res in attn_resolutions:
        attn(f'{s}/down_{l}/attn_{i}', cur)
      hs.append(cur)
    if l != L - 1:
      if resamp_with_conv:
        conv(f'{s}/down_{l}/downsample/conv', cur, cur)
      hs.append(cur)
      res //= 2
  resblock(f'{s}/mid/block_1', cur, cur)
  attn(f'{s}/mid/attn_1', cur)
  resblock(f'{s}/mid/block_2', cur, cur)
  for l in reversed(range(L)):
    for i in range(num_res_blocks + 1):
      resblock(f'{s}/up_{l}/block_{i}', cur + hs.pop(), ch * ch_mult[l])
      cur = ch * ch_mult[l]
      if res in attn_resolutions:
        attn(f'{s}/up_{l}/attn_{i}', cur)
    if l != 0:
      if resamp_with_conv:
        conv(f'{s}/up_{l}/upsample/conv', cur, cur)
      res *= 2
  assert not hs
  norm(f'{s}/norm_out', cur)
  conv(f'{s}/conv_out', cur, out_ch)
  return out


def var_shapes(net):
  return {unet.tf1_name(v): tuple(v.shape.as_list()) for v in net.trainable_variables}


def randomize(module, seed):
  """Assigns O(1)-scale random values to every variable (the near-zero inits would hide
  most of the computation from an output comparison)."""
  rs = np.random.RandomState(seed)
  for v in module.trainable_variables:
    name, shape = unet.tf1_name(v), v.shape.as_list()
    if name.endswith('/W'):
      fan_in = np.prod(shape[:-1])
      fan_out = np.prod(shape[:-2]) * shape[-1] if len(shape) == 4 else shape[-1]
      lim = math.sqrt(3. / ((fan_in + fan_out) / 2.))
      val = rs.uniform(-lim, lim, shape)
    elif name.endswith('/gamma'):
      val = 1. + 0.2 * rs.randn(*shape)
    else:  # b, beta
      val = 0.1 * rs.randn(*shape)
    v.assign(val.astype(np.float32))


def params_np(module):
  return {unet.tf1_name(v): v.numpy().astype(np.float64) for v in module.trainable_variables}


def swish(x):
  return x / (1. + np.exp(-x))


def np_group_norm(x, gamma, beta, groups=32, eps=1e-6):
  B, H, W, C = x.shape
  g = x.reshape(B, H, W, groups, C // groups)
  m = g.mean(axis=(1, 2, 4), keepdims=True)
  v = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - m) / np.sqrt(v + eps)).reshape(B, H, W, C) * gamma + beta


def np_conv(x, W, b, *, stride=1, pad=((1, 1), (1, 1))):
  """Direct cross-correlation with explicit (top, bottom), (left, right) zero padding."""
  kh, kw = W.shape[:2]
  xp = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  Ho = (xp.shape[1] - kh) // stride + 1
  Wo = (xp.shape[2] - kw) // stride + 1
  out = np.zeros(x.shape[:1] + (Ho, Wo, W.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride, :]
      out += patch @ W[i, j]
  return out + b


def np_timestep_embedding(t, dim):
  half = dim // 2
  f = np.exp(-np.arange(half) * math.log(10000) / (half - 1))
  a = np.asarray(t, np.float64)[:, None] * f[None]
  return np.concatenate([np.sin(a), np.cos(a)], 1)


def np_resblock(P, s, x, temb, out_ch):
  h = np_conv(swish(np_group_norm(x, P[f'{s}/norm1/gamma'], P[f'{s}/norm1/beta'])),
              P[f'{s}/conv1/W'], P[f'{s}/conv1/b'])
  h = h + (swish(temb) @ P[f'{s}/temb_proj/W'] + P[f'{s}/temb_proj/b'])[:, None, None, :]
  h = swish(np_group_norm(h, P[f'{s}/norm2/gamma'], P[f'{s}/norm2/beta']))
  h = np_conv(h, P[f'{s}/conv2/W'], P[f'{s}/conv2/b'])
  if x.shape[-1] != out_ch:
    x = x @ P[f'{s}/nin_shortcut/W'] + P[f'{s}/nin_shortcut/b']
  return x + h


def np_attn(P, s, x):
  """§3.1 attn_block: norm (no swish), q/k/v nin, softmax over all H*W keys, proj_out, residual."""
  B, H, W, C = x.shape
  h = np_group_norm(x, P[f'{s}/norm/gamma'], P[f'{s}/norm/beta'])
  q, k, v = (h @ P[f'{s}/{n}/W'] + P[f'{s}/{n}/b'] for n in ('q', 'k', 'v'))
  w = np.einsum('bhwc,bHWc->bhwHW', q, k) * C ** -0.5
  w = w.reshape(B, H, W, H * W)
  w = np.exp(w - w.max(-1, keepdims=True))
  w = (w / w.sum(-1, keepdims=True)).reshape(B, H, W, H, W)
  h = np.einsum('bhwHW,bHWc->bhwc', w, v)
  h = h @ P[f'{s}/proj_out/W'] + P[f'{s}/proj_out/b']
  return x + h


def np_unet(P, x, t, *, ch, ch_mult, num_res_blocks, attn_resolutions, s='model'):
  """§3.2 in NumPy float64."""
  temb = np_timestep_embedding(t, ch) @ P[f'{s}/temb/dense0/W'] + P[f'{s}/temb/dense0/b']
  temb = swish(temb) @ P[f'{s}/temb/dense1/W'] + P[f'{s}/temb/dense1/b']  # no act. after dense1
  hs = [np_conv(x, P[f'{s}/conv_in/W'], P[f'{s}/conv_in/b'])]
  L = len(ch_mult)
  for l in range(L):
    for i in range(num_res_blocks):
      h = np_resblock(P, f'{s}/down_{l}/block_{i}', hs[-1], temb, ch * ch_mult[l])
      if h.shape[1] in attn_resolutions:
        h = np_attn(P, f'{s}/down_{l}/attn_{i}', h)
      hs.append(h)
    if l != L - 1:
      hs.append(np_conv(hs[-1], P[f'{s}/down_{l}/downsample/conv/W'],
                        P[f'{s}/down_{l}/downsample/conv/b'], stride=2, pad=((0, 1), (0, 1))))
  h = hs[-1]
  h = np_resblock(P, f'{s}/mid/block_1', h, temb, h.shape[-1])
  h = np_attn(P, f'{s}/mid/attn_1', h)
  h = np_resblock(P, f'{s}/mid/block_2', h, temb, h.shape[-1])
  for l in reversed(range(L)):
    for i in range(num_res_blocks + 1):
      h = np_resblock(P, f'{s}/up_{l}/block_{i}', np.concatenate([h, hs.pop()], -1), temb,
                      ch * ch_mult[l])
      if h.shape[1] in attn_resolutions:
        h = np_attn(P, f'{s}/up_{l}/attn_{i}', h)
    if l != 0:
      h = np.repeat(np.repeat(h, 2, axis=1), 2, axis=2)
      h = np_conv(h, P[f'{s}/up_{l}/upsample/conv/W'], P[f'{s}/up_{l}/upsample/conv/b'])
  assert not hs
  h = swish(np_group_norm(h, P[f'{s}/norm_out/gamma'], P[f'{s}/norm_out/beta']))
  return np_conv(h, P[f'{s}/conv_out/W'], P[f'{s}/conv_out/b'])


# ============================================================================ fixtures

@pytest.fixture(scope='module')
def cifar_net():
  return unet.UNet(**CIFAR, out_ch=3, resolution=32)


@pytest.fixture(scope='module')
def digits_net():
  net = unet.UNet(**DIGITS, out_ch=3, resolution=16)
  randomize(net, seed=0)
  return net


def _inputs(B, S, C=3, seed=0, t=(3, 17, 250, 999)):
  x = np.random.RandomState(seed).uniform(-1, 1, (B, S, S, C)).astype(np.float32)
  return tf.constant(x), tf.constant(list(t)[:B], tf.int32)


# ============================================================================ variables

def test_expected_variable_enumeration_matches_spec_counts():
  # Sanity check of the test's own enumerator against §3.3/§16.
  c3 = expected_variables(**CIFAR, resolution=32, out_ch=3)
  c6 = expected_variables(**CIFAR, resolution=32, out_ch=6)
  big = expected_variables(**BIG, resolution=256, out_ch=3)
  count = lambda d: sum(int(np.prod(s)) for s in d.values())
  assert (count(c3), len(c3)) == (35_746_307, 328)
  assert count(c6) == 35_749_766
  assert (count(big), len(big)) == (113_673_219, 450)


def test_cifar_param_count_names_and_shapes(cifar_net):
  vs = cifar_net.trainable_variables
  assert unet.num_params(cifar_net) == 35_746_307
  assert len(vs) == 328
  names = unet.variable_names(cifar_net)
  assert len(set(names)) == len(names), 'variable names must be unique'
  assert all(v.name.endswith(':0') for v in vs)
  assert all(v.dtype == tf.float32 for v in vs)
  assert var_shapes(cifar_net) == expected_variables(**CIFAR, resolution=32, out_ch=3)


def test_cifar_out_ch_6_param_count():
  net = unet.UNet(**CIFAR, out_ch=6, resolution=32)
  assert unet.num_params(net) == 35_749_766
  assert len(net.trainable_variables) == 328
  assert var_shapes(net)['model/conv_out/W'] == (3, 3, 128, 6)


def test_cifar_representative_names(cifar_net):
  shapes = var_shapes(cifar_net)
  expected = {
      'model/temb/dense0/W': (128, 512), 'model/temb/dense0/b': (512,),
      'model/temb/dense1/W': (512, 512), 'model/temb/dense1/b': (512,),
      'model/conv_in/W': (3, 3, 3, 128), 'model/conv_in/b': (128,),
      'model/down_0/block_0/norm1/gamma': (128,), 'model/down_0/block_0/norm1/beta': (128,),
      'model/down_0/block_0/conv1/W': (3, 3, 128, 128),
      'model/down_0/block_0/temb_proj/W': (512, 128),
      'model/down_0/block_0/conv2/W': (3, 3, 128, 128),
      'model/down_1/block_0/nin_shortcut/W': (128, 256),
      'model/down_1/block_0/nin_shortcut/b': (256,),
      'model/down_0/downsample/conv/W': (3, 3, 128, 128),
      'model/down_2/downsample/conv/W': (3, 3, 256, 256),
      'model/mid/block_1/conv1/W': (3, 3, 256, 256),
      'model/mid/block_2/conv2/W': (3, 3, 256, 256),
      'model/mid/attn_1/norm/gamma': (256,),
      'model/mid/attn_1/q/W': (256, 256), 'model/mid/attn_1/k/W': (256, 256),
      'model/mid/attn_1/v/W': (256, 256), 'model/mid/attn_1/proj_out/W': (256, 256),
      'model/up_1/block_0/nin_shortcut/W': (512, 256),
      'model/up_1/block_1/nin_shortcut/W': (512, 256),
      'model/up_1/block_2/nin_shortcut/W': (384, 256),
      'model/up_1/block_2/norm1/gamma': (384,),
      'model/up_0/block_0/norm1/gamma': (384,), 'model/up_0/block_0/nin_shortcut/W': (384, 128),
      'model/up_0/block_1/norm1/gamma': (256,), 'model/up_0/block_2/norm1/gamma': (256,),
      'model/up_3/upsample/conv/W': (3, 3, 256, 256),
      'model/up_1/upsample/conv/W': (3, 3, 256, 256),
      'model/norm_out/gamma': (128,), 'model/norm_out/beta': (128,),
      'model/conv_out/W': (3, 3, 128, 3), 'model/conv_out/b': (3,),
  }
  for name, shape in expected.items():
    assert shapes.get(name) == shape, name
  # §3.3 up-block input widths.
  for l, widths in {3: (512, 512, 512), 2: (512, 512, 512), 1: (512, 512, 384),
                    0: (384, 256, 256)}.items():
    assert tuple(shapes[f'model/up_{l}/block_{i}/norm1/gamma'][0] for i in range(3)) == widths
  names = set(shapes)
  assert not any(n.startswith('model/up_0/upsample') for n in names)
  assert not any(n.startswith('model/down_3/downsample') for n in names)
  assert not any('conv_shortcut' in n for n in names)
  assert not any('block_3' in n for n in names)  # up levels have exactly nrb + 1 = 3 blocks
  assert {'/'.join(n.split('/')[:3]) for n in names if '/attn_' in n} == {
      'model/down_1/attn_0', 'model/down_1/attn_1', 'model/mid/attn_1',
      'model/up_1/attn_0', 'model/up_1/attn_1', 'model/up_1/attn_2'}
  # Mid names are 1-indexed.
  assert not any(n.startswith(('model/mid/block_0', 'model/mid/attn_0')) for n in names)
  nin = {'/'.join(n.split('/')[:3]) for n in names if '/nin_shortcut/' in n}
  assert nin == {'model/down_1/block_0'} | {f'model/up_{l}/block_{i}' for l in range(4) for i in range(3)}


def test_big_model_counts_names_and_shortcuts():
  net = unet.UNet(**BIG, out_ch=3, resolution=256)  # built only, no 256x256 forward pass
  try:
    assert unet.num_params(net) == 113_673_219
    assert len(net.trainable_variables) == 450
    shapes = var_shapes(net)
    assert shapes == expected_variables(**BIG, resolution=256, out_ch=3)
    names = set(shapes)
    nin = {'/'.join(n.split('/')[:3]) for n in names if '/nin_shortcut/' in n}
    assert nin == {'model/down_2/block_0', 'model/down_4/block_0'} | {
        f'model/up_{l}/block_{i}' for l in range(6) for i in range(3)}
    assert len(nin) == 20
    widths = {5: (1024, 1024, 1024), 4: (1024, 1024, 768), 3: (768, 512, 512),
              2: (512, 512, 384), 1: (384, 256, 256), 0: (256, 256, 256)}
    for l, w in widths.items():
      assert tuple(shapes[f'model/up_{l}/block_{i}/norm1/gamma'][0] for i in range(3)) == w
    assert {'/'.join(n.split('/')[:3]) for n in names if '/attn_' in n} == {
        'model/down_4/attn_0', 'model/down_4/attn_1', 'model/mid/attn_1',
        'model/up_4/attn_0', 'model/up_4/attn_1', 'model/up_4/attn_2'}
    assert shapes['model/mid/attn_1/q/W'] == (512, 512)
    assert shapes['model/temb/dense0/W'] == (128, 512)
    assert shapes['model/conv_out/W'] == (3, 3, 128, 3)
    assert not any(n.startswith('model/up_0/upsample') for n in names)
    assert not any(n.startswith('model/down_5/downsample') for n in names)
  finally:
    del net


@pytest.mark.parametrize('name', ['unet_digits', 'unet_digits_lite'])
def test_digits_configs_keep_their_variables_so_earlier_quick_start_runs_still_load(name):
  # unet_digits was the quick start's model before unet_digits_lite: both stay, with the
  # spec's names and shapes, so a run dir's kwargs.json (model_name) rebuilds its network.
  cfg = dict(unet.MODEL_CONFIGS[name])
  groups = cfg.pop('norm_num_groups', 32)
  net = unet.UNet(**cfg, norm_num_groups=groups, in_ch=1, out_ch=1, resolution=16)
  assert var_shapes(net) == expected_variables(**cfg, in_ch=1, out_ch=1, resolution=16)
  assert net.block_out_channels == {'unet_digits': (32, 64, 64), 'unet_digits_lite': (16, 64, 64)}[name]
  out = net(*_inputs(2, 16, C=1))
  assert out.shape == (2, 16, 16, 1) and np.isfinite(out.numpy()).all()


def test_lazy_build_on_first_call_gives_same_names():
  eager = unet.UNet(**DIGITS, out_ch=3, resolution=16)
  lazy = unet.UNet(**DIGITS, out_ch=3)
  assert lazy.trainable_variables == ()
  x, t = _inputs(1, 16)
  out = lazy(x, t)
  assert out.shape == (1, 16, 16, 3)
  assert var_shapes(lazy) == var_shapes(eager) == expected_variables(**DIGITS, resolution=16)
  with pytest.raises(ValueError):
    lazy(tf.zeros([1, 8, 8, 3]), t)  # built for 16x16


def test_lazy_build_inside_tf_function():
  lazy = unet.UNet(**DIGITS, out_ch=3)
  x, t = _inputs(2, 16)
  out = tf.function(lambda x, t: lazy(x, t))(x, t)
  assert out.shape == (2, 16, 16, 3)
  assert var_shapes(lazy) == expected_variables(**DIGITS, resolution=16)
  np.testing.assert_allclose(lazy(x, t).numpy(), out.numpy(), rtol=1e-5, atol=1e-7)


def test_input_validation(digits_net):
  with pytest.raises(ValueError):
    digits_net(tf.zeros([1, 16, 8, 3]), tf.constant([1]))  # not square
  with pytest.raises(ValueError):
    digits_net(tf.zeros([1, 16, 16, 3]), tf.constant([True]))  # not a number (float t is allowed)


def test_numpy_and_python_inputs_give_the_tensor_output(digits_net):
  # A notebook passes NumPy images and timesteps (or one Python number for the batch); they
  # must compute what the same values as tensors compute.
  x, t = _inputs(2, 16, seed=4, t=(17, 250))
  want = digits_net(x, t).numpy()
  np.testing.assert_array_equal(digits_net(x.numpy(), t.numpy().astype(np.int64)).numpy(), want)
  np.testing.assert_array_equal(digits_net(x.numpy().astype(np.float64).tolist(), [17, 250]).numpy(),
                                want)
  same_t = digits_net(x, tf.constant([17, 17])).numpy()
  for scalar in (17, np.int64(17), 17., np.array(17), tf.constant(17)):  # whole floats too
    np.testing.assert_array_equal(digits_net(x.numpy(), scalar).numpy(), same_t)
  # Traced with an unknown batch size, a Python timestep still covers the whole batch.
  fn = tf.function(lambda x: digits_net(x, 17), input_signature=[tf.TensorSpec([None, 16, 16, 3])])
  np.testing.assert_allclose(fn(x).numpy(), same_t, rtol=1e-5, atol=1e-5 * np.abs(same_t).max())


def test_pipeline_unet_takes_numpy_images_and_timesteps():
  folder = os.path.join(os.path.dirname(__file__), 'fixtures', 'diffusers', 'google')
  net = pipelines.DDIMPipeline.from_pretrained(folder).unet
  x = np.random.RandomState(5).uniform(-1, 1, (2, net.resolution, net.resolution, net.in_ch))
  t = np.array([10, 500])  # int64, as NumPy makes them
  out = net(x.astype(np.float32), t)  # AttributeError: 'tuple' object has no attribute 'rank' once
  assert out.shape == (2, net.resolution, net.resolution, net.in_ch) and out.dtype == tf.float32
  want = net(tf.constant(x, tf.float32), tf.constant(t, tf.int32))
  np.testing.assert_array_equal(out.numpy(), want.numpy())


_ONE, _TWO = np.zeros([1, 16, 16, 3], np.float32), np.zeros([2, 16, 16, 3], np.float32)
_IMAGES = r'images \[B, 16, 16, 3\] \(NHWC float\); got '
_STEPS = r'timesteps t: a number scalar or a float or int \[B\] vector \(or \[1\]\), '


@pytest.mark.parametrize('x,t,message', [
    (_ONE[0], [1], _IMAGES + r'shape \(16, 16, 3\)'),
    (_ONE[..., :1], [1], _IMAGES + r'shape \(1, 16, 16, 1\)'),  # channels
    (_ONE[:, :8, :8], [1], _IMAGES + r'shape \(1, 8, 8, 3\)'),  # resolution
    (tf.zeros([1, 16, 8, 3]), [1], _IMAGES + r'shape \(1, 16, 8, 3\)'),
    (_ONE.astype(np.uint8), [1], _IMAGES + r'dtype uint8'),
    (tf.zeros([1, 16, 16, 3], tf.int32), [1], _IMAGES + r'a tensor of dtype int32'),
    (np.full([1, 16, 16, 3], 'a'), [1], _IMAGES + r'dtype <U1'),
    (_TWO, [1, 2, 3], _STEPS + r"B = 2 \(the images' batch\); got shape \(3,\)"),
    (_TWO, np.zeros([2, 1], int), _STEPS + r'B = 2 .*; got shape \(2, 1\)'),
    (_ONE, tf.constant([True]), _STEPS + r'.*; got a tensor of dtype bool'),
    (_ONE, float('nan'), _STEPS + r'.*; got nan \(not whole numbers\)'),
    (_ONE, ['1'], _STEPS + r'.*; got dtype <U1'),
    (_ONE, 2 ** 40, _STEPS + r'.*; got 1099511627776, outside \[-2147483648, 2147483647\]'),
])
def test_wrong_inputs_say_what_was_expected(digits_net, x, t, message):
  with pytest.raises(ValueError, match=r'^UNet expects ' + message):
    digits_net(x, t)


def test_float_timesteps(digits_net):
  """diffusers' sigma-family schedulers evaluate the network at fractional timesteps: a float t
  runs the continuous embedding there; a whole-valued float t gives the int t's output exactly."""
  x = np.random.RandomState(0).randn(2, 16, 16, 3).astype(np.float32)
  at = lambda t: digits_net(x, t).numpy()
  np.testing.assert_array_equal(at(tf.constant([3., 7.])), at(tf.constant([3, 7])))
  np.testing.assert_array_equal(at(7.), at(7))
  mid, lo, hi = at(np.array([3.5, 3.5])), at(3), at(4)
  assert np.isfinite(mid).all() and not np.array_equal(mid, lo) and not np.array_equal(mid, hi)
  np.testing.assert_array_equal(mid, at(tf.constant([3.5, 3.5])))


def test_an_unbuilt_unet_asks_for_square_images():
  lazy = unet.UNet(**DIGITS, out_ch=3)
  with pytest.raises(ValueError, match=r'UNet expects images \[B, S, S, C\] \(NHWC float, square\); '
                                       r'got shape \(1, 16, 8, 3\)'):
    lazy(np.zeros([1, 16, 8, 3], np.float32), 1)
  assert lazy.trainable_variables == ()


# ============================================================================ forward passes

def test_cifar_forward_shape_and_zero_init_output(cifar_net):
  x, t = _inputs(2, 32)
  out = cifar_net(x, t, training=False)
  assert out.shape == (2, 32, 32, 3) and out.dtype == tf.float32
  # conv_out (and every conv2/proj_out) is "zero" initialised: 1e-10-scale weights.
  assert np.abs(out.numpy()).max() < 1e-3
  assert np.all(np.isfinite(out.numpy()))


@pytest.mark.numerics
def test_digits_forward_matches_numpy_reference():
  cfg = dict(ch=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,))
  net = unet.UNet(**cfg, out_ch=3, resolution=8)
  randomize(net, seed=1)
  x, t = _inputs(2, 8, seed=2, t=(3, 17))
  out = net(x, t, training=False).numpy()
  ref = np_unet(params_np(net), x.numpy().astype(np.float64), [3, 17], **cfg)
  assert out.shape == ref.shape == (2, 8, 8, 3)
  # float32 through ~30 layers vs float64: relative error ~1e-5.
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_tf_function_equals_eager(digits_net):
  x, t = _inputs(2, 16, seed=3)
  eager = digits_net(x, t, training=False).numpy()
  graph = tf.function(lambda x, t: digits_net(x, t, training=False))(x, t).numpy()
  np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-5 * np.abs(eager).max())


def test_dropout_only_when_training():
  net = unet.UNet(**DIGITS, out_ch=3, resolution=16, dropout=0.1)
  randomize(net, seed=4)
  x, t = _inputs(2, 16, seed=5)
  a = net(x, t, training=False).numpy()
  b = net(x, t, training=False).numpy()
  np.testing.assert_array_equal(a, b)
  c = net(x, t, training=True).numpy()
  d = net(x, t, training=True).numpy()
  assert not np.allclose(c, d, rtol=1e-4, atol=1e-4)
  assert not np.allclose(c, a, rtol=1e-4, atol=1e-4)
  # Without dropout, training=True changes nothing.
  net0 = unet.UNet(**DIGITS, out_ch=3, resolution=16, dropout=0.)
  for v0, v in zip(net0.trainable_variables, net.trainable_variables):
    v0.assign(v)
  np.testing.assert_allclose(net0(x, t, training=True).numpy(), a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('make_strategy', [
    lambda: tf.distribute.MirroredStrategy(['/cpu:0']),
    lambda: tf.distribute.OneDeviceStrategy('/cpu:0'),
], ids=['mirrored', 'one_device'])
def test_build_under_distribution_strategy(make_strategy):
  strategy = make_strategy()
  with strategy.scope():
    net = unet.UNet(**DIGITS, out_ch=3, resolution=16)
  assert var_shapes(net) == expected_variables(**DIGITS, resolution=16)
  x, t = _inputs(1, 16)
  out = strategy.run(tf.function(lambda x, t: net(x, t)), args=(x, t))
  out = strategy.experimental_local_results(out)[0]
  assert out.shape == (1, 16, 16, 3)


def test_functional_model_shares_weights():
  kw = dict(name='model_fn_test', num_classes=1, ch=32, out_ch=3, ch_mult=(1, 2),
            num_res_blocks=1, attn_resolutions=(4,))
  x, t = _inputs(2, 8, seed=6)
  before = len(unet._MODEL_CACHE)
  a = unet.model(x, t=t, y=None, **kw)
  assert len(unet._MODEL_CACHE) == before + 1
  net = [n for n in unet._MODEL_CACHE.values() if n.scope == 'model_fn_test'][0]
  assert all(n.startswith('model_fn_test/') for n in unet.variable_names(net))
  randomize(net, seed=7)  # changing the shared weights changes the next call's output
  b = unet.model(x, t=t, y=None, **kw)
  c = unet.model(x, t=t, y=None, **kw)
  assert len(unet._MODEL_CACHE) == before + 1  # no new variables created
  assert not np.allclose(a.numpy(), b.numpy())
  np.testing.assert_array_equal(b.numpy(), c.numpy())
  np.testing.assert_allclose(b.numpy(), net(x, t, training=False).numpy(), rtol=1e-6, atol=1e-6)
  with pytest.raises(AssertionError):
    unet.model(x, t=t, y=None, **{**kw, 'num_classes': 10})


# ============================================================================ blocks

def test_upsample_is_pixel_duplication():
  x = np.random.RandomState(0).randn(2, 5, 5, 4).astype(np.float32)
  up = unet.Upsample(4, name='t_up/upsample', with_conv=False)
  out = up(tf.constant(x)).numpy()
  np.testing.assert_array_equal(out, np.repeat(np.repeat(x, 2, axis=1), 2, axis=2))
  # ... which is what the TF1 nearest resize with align_corners=True produced (§3.1).
  np.testing.assert_array_equal(
      out, tf.compat.v1.image.resize_nearest_neighbor(x, [10, 10], align_corners=True).numpy())


def test_upsample_with_conv():
  rs = np.random.RandomState(1)
  x = rs.randn(1, 4, 4, 8).astype(np.float32)
  up = unet.Upsample(8, name='t_upc/upsample', with_conv=True)
  assert up.conv.W.name == 't_upc/upsample/conv/W:0'
  randomize(up, seed=2)
  P = params_np(up)
  ref = np_conv(np.repeat(np.repeat(x.astype(np.float64), 2, 1), 2, 2),
                P['t_upc/upsample/conv/W'], P['t_upc/upsample/conv/b'])
  np.testing.assert_allclose(up(tf.constant(x)).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_downsample_conv_pads_bottom_right_only():
  rs = np.random.RandomState(3)
  x = rs.randn(2, 8, 8, 4).astype(np.float32)
  down = unet.Downsample(4, name='t_down/downsample', with_conv=True)
  assert down.conv.W.name == 't_down/downsample/conv/W:0' and down.conv.W.shape == (3, 3, 4, 4)
  randomize(down, seed=4)
  P = params_np(down)
  W, b = P['t_down/downsample/conv/W'], P['t_down/downsample/conv/b']
  out = down(tf.constant(x)).numpy()
  assert out.shape == (2, 4, 4, 4)
  x64 = x.astype(np.float64)
  ref = np_conv(x64, W, b, stride=2, pad=((0, 1), (0, 1)))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  symmetric = np_conv(x64, W, b, stride=2, pad=((1, 1), (1, 1)))
  assert symmetric.shape == out.shape and not np.allclose(out, symmetric, atol=1e-2)


def test_downsample_avg_pool_without_conv():
  x = np.random.RandomState(5).randn(1, 6, 6, 3).astype(np.float32)
  down = unet.Downsample(3, name='t_pool/downsample', with_conv=False)
  assert down.trainable_variables == ()
  ref = x.reshape(1, 3, 2, 3, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(down(tf.constant(x)).numpy(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.numerics
def test_attn_block_vs_numpy():
  rs = np.random.RandomState(6)
  C = 64
  blk = unet.AttnBlock(C, name='t_attn/attn_0')
  assert sorted(unet.tf1_name(v) for v in blk.trainable_variables) == sorted(
      [f't_attn/attn_0/norm/{n}' for n in ('gamma', 'beta')]
      + [f't_attn/attn_0/{n}/{p}' for n in ('q', 'k', 'v', 'proj_out') for p in ('W', 'b')])
  assert blk.q.W.shape == (C, C)
  # Zero-init proj_out: the block starts as (almost) the identity.
  x = rs.randn(2, 4, 3, C).astype(np.float32)
  np.testing.assert_allclose(blk(tf.constant(x)).numpy(), x, atol=1e-3)
  randomize(blk, seed=7)
  ref = np_attn(params_np(blk), 't_attn/attn_0', x.astype(np.float64))
  np.testing.assert_allclose(blk(tf.constant(x)).numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.numerics
@pytest.mark.parametrize('in_ch,out_ch', [(32, 32), (32, 64)])
def test_resnet_block_vs_numpy(in_ch, out_ch):
  rs = np.random.RandomState(in_ch + out_ch)
  blk = unet.ResnetBlock(in_ch, out_ch, 48, name=f't_res{out_ch}/block_0', dropout=0.)
  has_nin = any('nin_shortcut' in unet.tf1_name(v) for v in blk.trainable_variables)
  assert has_nin == (in_ch != out_ch)
  randomize(blk, seed=8)
  x = rs.randn(2, 6, 6, in_ch).astype(np.float32)
  temb = rs.randn(2, 48).astype(np.float32)
  out = blk(tf.constant(x), tf.constant(temb), False).numpy()
  ref = np_resblock(params_np(blk), f't_res{out_ch}/block_0', x.astype(np.float64),
                    temb.astype(np.float64), out_ch)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
