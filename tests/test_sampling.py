"""DDIM / strided samplers and the scripts' `sample` command on TF1-layout checkpoints."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from diffusion_tf import (checkpoints, diffusion_utils as d1, diffusion_utils_2 as d2, loading, recipes,
                          runners, sampling)
from diffusion_tf.models import unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (2, 4, 4, 3)


def _betas(T):
  return d2.get_beta_schedule('linear', beta_start=1e-4, beta_end=0.02 * 1000 / T, num_diffusion_timesteps=T)


def _denoise(x, t):
  # A fixed, smooth stand-in network: depends on x and t like a real eps-predictor would.
  return 0.3 * x + 0.002 * tf.cast(t, tf.float32)[:, None, None, None]


def _fixed_noise():
  noise = tf.random.stateless_normal(SHAPE, seed=[3, 4])
  return lambda shape, dtype: tf.cast(noise, dtype)


@pytest.mark.parametrize('make', [
    lambda b: d2.GaussianDiffusion2(betas=b, model_mean_type='eps', model_var_type='fixedsmall', loss_type='mse'),
    lambda b: d1.GaussianDiffusion(betas=b, loss_type='noisepred'),
])
def test_ddim_eta1_all_steps_equals_posterior_variance_ancestral(make):
  diffusion = make(_betas(50))
  noise_fn = _fixed_noise()
  ancestral = diffusion.p_sample_loop(_denoise, shape=SHAPE, noise_fn=noise_fn)
  ddim = sampling.ddim_sample_loop(diffusion, _denoise, shape=SHAPE, eta=1.0, noise_fn=noise_fn)
  np.testing.assert_allclose(ddim.numpy(), ancestral.numpy(), atol=2e-5)
  # eta=0 is a different sampler: it must not coincide.
  ddim0 = sampling.ddim_sample_loop(diffusion, _denoise, shape=SHAPE, eta=0.0, noise_fn=noise_fn)
  assert np.abs(ddim0.numpy() - ancestral.numpy()).max() > 1e-3


def test_ddim_eta0_is_deterministic_given_x_T():
  diffusion = d2.GaussianDiffusion2(betas=_betas(100), model_mean_type='eps',
                                    model_var_type='fixedlarge', loss_type='mse')
  x_T = tf.random.stateless_normal(SHAPE, seed=[1, 2])
  seq = sampling.timestep_sequence(100, 10)
  a = sampling.ddim_sample_loop(diffusion, _denoise, shape=SHAPE, timesteps=seq, eta=0., x_T=x_T)
  tf.random.set_seed(123)  # a different global RNG state must not matter
  b = sampling.ddim_sample_loop(diffusion, _denoise, shape=SHAPE, timesteps=seq, eta=0., x_T=x_T)
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  c = sampling.ddim_sample_loop(diffusion, _denoise, shape=SHAPE, timesteps=seq, eta=0., x_T=-x_T)
  assert np.abs(a.numpy() - c.numpy()).max() > 1e-3


@pytest.mark.numerics
def test_ddim_matches_numpy_reference():
  T = 40
  diffusion = d2.GaussianDiffusion2(betas=_betas(T), model_mean_type='eps',
                                    model_var_type='fixedlarge', loss_type='mse')
  x_T = tf.random.stateless_normal(SHAPE, seed=[5, 6])
  seq = sampling.timestep_sequence(T, 8, 'uniform')
  got = sampling.ddim_sample_loop(diffusion, _denoise, shape=SHAPE, timesteps=seq, eta=0., x_T=x_T)
  ac = np.cumprod(1 - _betas(T))
  x = x_T.numpy().astype(np.float64)
  for i in reversed(range(len(seq))):
    t = seq[i]
    a_t, a_prev = ac[t], (ac[seq[i - 1]] if i > 0 else 1.)
    eps = 0.3 * x + 0.002 * t
    x0 = np.clip((x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t), -1, 1)
    eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
    x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
  np.testing.assert_allclose(got.numpy(), x, atol=1e-4)


@pytest.mark.parametrize('spacing', sampling.SPACINGS)
@pytest.mark.parametrize('steps', [1, 10, 50, 100, 999, 1000])
def test_strided_schedules_have_requested_length_and_end_at_zero(steps, spacing):
  seq = sampling.timestep_sequence(1000, steps, spacing)
  assert len(seq) == steps and seq[0] == 0 and seq[-1] < 1000
  assert (np.diff(seq) > 0).all()


def test_timestep_sequence_rejects_bad_steps():
  with pytest.raises(ValueError, match='--steps'):
    sampling.timestep_sequence(1000, 0)
  with pytest.raises(ValueError, match='--steps'):
    sampling.timestep_sequence(1000, 1001)


def test_respaced_process_keeps_the_marginals():
  diffusion = d2.GaussianDiffusion2(betas=_betas(1000), model_mean_type='eps',
                                    model_var_type='fixedlarge', loss_type='mse')
  seq = sampling.timestep_sequence(1000, 25)
  new, wrap = sampling.respace(diffusion, seq)
  assert new.num_timesteps == 25
  np.testing.assert_allclose(new.alphas_cumprod, diffusion.alphas_cumprod[seq], rtol=1e-12)
  seen = []
  wrapped = wrap(lambda x, t: seen.append(t) or tf.zeros_like(x))
  new.p_sample_loop(wrapped, shape=SHAPE)
  # The network sees original timesteps.
  assert any(isinstance(t, tf.Tensor) for t in seen)


def test_respacing_all_steps_is_the_original_sampler():
  diffusion = d2.GaussianDiffusion2(betas=_betas(30), model_mean_type='eps',
                                    model_var_type='fixedsmall', loss_type='mse')
  new, wrap = sampling.respace(diffusion, np.arange(30))
  noise_fn = _fixed_noise()
  a = diffusion.p_sample_loop(_denoise, shape=SHAPE, noise_fn=noise_fn)
  b = new.p_sample_loop(wrap(_denoise), shape=SHAPE, noise_fn=noise_fn)
  np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- the sample command

def _write_original_layout_checkpoint(prefix, net, step, seed=0):
  """A checkpoint like the authors' release: raw weights, EMA shadows, Adam slots, step."""
  rng = np.random.RandomState(seed)
  var_list, ema_values = {}, {}
  for v in net.trainable_variables:
    name = unet.tf1_name(v)
    shape = v.shape.as_list()
    var_list[name] = tf.Variable(rng.normal(0, 0.05, shape).astype(np.float32))
    ema_values[name] = rng.normal(0, 0.05, shape).astype(np.float32)
    var_list[name + '/ExponentialMovingAverage'] = tf.Variable(ema_values[name])
    var_list[name + '/Adam'] = tf.Variable(np.zeros(shape, np.float32))
    var_list[name + '/Adam_1'] = tf.Variable(np.zeros(shape, np.float32))
  var_list['beta1_power'] = tf.Variable(0.5)
  var_list['beta2_power'] = tf.Variable(0.5)
  var_list['global_step'] = tf.Variable(step, dtype=tf.int64)
  saver = tf.compat.v1.train.Saver(var_list=var_list)
  return saver.save(None, prefix, global_step=step, write_meta_graph=False), ema_values


def _run(args):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)


@pytest.mark.slow
def test_sample_command_on_a_bare_original_layout_checkpoint(tmp_path):
  import scripts.run_digits as run_digits
  kw = runners.script_defaults(run_digits.train)
  model = runners.make_model(kw, (16, 16, kw['channels']))  # grey: the script's default
  prefix, ema = _write_original_layout_checkpoint(str(tmp_path / 'release' / 'model.ckpt'), model.net, 790)
  out = str(tmp_path / 'out' / 'grid')
  proc = _run(['scripts/run_digits.py', 'sample', '--ckpt', prefix, '--num_samples', '6',
               '--batch_size', '4', '--sampler', 'ddim', '--steps', '5', '--out', out])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'EMA weights' in proc.stdout and 'step 790' in proc.stdout
  assert '/6 samples' in proc.stdout and 'recognisable digits' in proc.stdout  # the digit check
  samples = np.load(out + '.npz')['samples']
  assert samples.shape == (6, 16, 16, 1) and samples.dtype == np.uint8
  assert len({s.tobytes() for s in samples}) == 6
  assert Image.open(out + '.png').size[0] > 16
  # Never silently overwritten.
  before = os.path.getmtime(out + '.npz')
  proc = _run(['scripts/run_digits.py', 'sample', '--ckpt', prefix, '--num_samples', '2',
               '--sampler', 'ddim', '--steps', '2', '--out', out])
  assert proc.returncode != 0 and 'exists' in proc.stderr
  assert os.path.getmtime(out + '.npz') == before


def test_sample_uses_ema_by_default_and_raw_on_request(tmp_path):
  import scripts.run_digits as run_digits
  kw = runners.script_defaults(run_digits.train)
  model = runners.make_model(kw, (16, 16, kw['channels']))
  prefix, ema = _write_original_layout_checkpoint(str(tmp_path / 'model.ckpt'), model.net, 5)
  for use_ema in (True, False):
    loaded, _, _, step = loading.load_for_sampling(recipes.DIGITS, ckpt=prefix, ema=use_ema)
    w = {unet.tf1_name(v): v.numpy() for v in loaded.net.trainable_variables}
    name = 'model/conv_in/W'
    reader = tf.train.load_checkpoint(prefix)
    expected = ema[name] if use_ema else reader.get_tensor(name)
    np.testing.assert_array_equal(w[name], expected)
    assert step == 5


@pytest.mark.slow
def test_sample_command_on_full_size_cifar_checkpoint(tmp_path):
  """The released CIFAR-10 layout at full size (random values): loads and samples."""
  net = unet.UNet(**unet.MODEL_CONFIGS['unet2d16b2'], out_ch=3, resolution=32)
  prefix, _ = _write_original_layout_checkpoint(
      str(tmp_path / 'diffusion_cifar10_model' / 'model.ckpt'), net, 790000)
  reader = tf.train.load_checkpoint(prefix)
  assert len(reader.get_variable_to_shape_map()) == 4 * 328 + 3  # 1315, as the spec expects
  out = str(tmp_path / 'cifar')
  proc = _run(['scripts/run_cifar.py', 'sample', '--ckpt', prefix, '--num_samples', '2',
               '--batch_size', '2', '--sampler', 'ddim', '--steps', '2', '--out', out])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'step 790000' in proc.stdout
  assert np.load(out + '.npz')['samples'].shape == (2, 32, 32, 3)


@pytest.mark.slow
def test_sample_rejects_wrong_configuration_with_a_clear_error(tmp_path):
  net = unet.UNet(**unet.MODEL_CONFIGS['unet_digits'], out_ch=6, resolution=16)
  prefix, _ = _write_original_layout_checkpoint(str(tmp_path / 'model.ckpt'), net, 1)
  proc = _run(['scripts/run_digits.py', 'sample', '--ckpt', prefix, '--num_samples', '1',
               '--sampler', 'ddim', '--steps', '1', '--out', str(tmp_path / 'x')])
  assert proc.returncode != 0
  assert 'conv_out/W' in proc.stderr and 'shape mismatch' in proc.stderr


def test_generate_samples_seed_fixes_the_samples():
  import scripts.run_digits as run_digits
  kw = dict(runners.script_defaults(run_digits.train), num_diffusion_timesteps=20, resolution=8)
  model = runners.make_model(kw, (8, 8, 3))
  kwargs = dict(sampler='ddpm', log_fn=None)
  a = sampling.generate_samples(model, 5, 3, seed=1, **kwargs)
  b = sampling.generate_samples(model, 5, 3, seed=2, **kwargs)
  c = sampling.generate_samples(model, 5, 3, seed=1, **kwargs)
  assert a.shape == (5, 8, 8, 3)
  np.testing.assert_array_equal(a, c)
  assert np.abs(a - b).min() > 0 or np.abs(a - b).max() > 1e-3
  # Batches do not repeat each other's noise.
  assert np.abs(a[0] - a[3]).max() > 1e-3


def _randomized_digits_model(T=20):
  import scripts.run_digits as run_digits
  kw = dict(runners.script_defaults(run_digits.train), num_diffusion_timesteps=T, resolution=8)
  model = runners.make_model(kw, (8, 8, 3))
  rng = np.random.RandomState(0)
  for v in model.net.trainable_variables:  # the zero-initialised output layers make eps = 0
    v.assign(rng.normal(0., 0.05, v.shape).astype(np.float32))
  return model


@pytest.mark.numerics
@pytest.mark.parametrize('sampler', [s if s == 'ddpm' else pytest.param(s, marks=pytest.mark.slow)
                                     for s in sampling.SAMPLERS])
def test_constant_weight_sampling_equals_variable_reads_and_snapshots_the_weights(sampler):
  model = _randomized_digits_model()
  plain = sampling.Sampler(model, sampler=sampler, steps=10)
  frozen = sampling.Sampler(model, sampler=sampler, steps=10, constant_weights=True)
  a, b = plain(3, 7), frozen(3, 7)
  assert np.abs(a).max() > 0
  # Same samples up to float32 rounding: with constant weights TF may fold the filter
  # transforms and oneDNN may pick another kernel, which on some CPUs (AVX2) reorders sums
  # (1-2 ulp per step); stale or wrong weights differ by > 1e-4 (asserted below).
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
  # The compiled loop holds no variable reads of the network, only of the noise generator.
  graph = frozen._compiled[3].graph.as_graph_def()
  nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
  reads = [n for n in nodes if n.op == 'ReadVariableOp']
  assert len(reads) <= 2, [n.name for n in reads]
  # The weights are those of the first batch: a later update is not seen by this Sampler
  # (hence generate_samples makes a fresh one per call), but is by a new one.
  v = model.net.trainable_variables[0]
  v.assign(v + 0.5)
  np.testing.assert_array_equal(frozen(3, 7), b)
  fresh = sampling.Sampler(model, sampler=sampler, steps=10, constant_weights=True)
  np.testing.assert_allclose(fresh(3, 7), plain(3, 7), rtol=0, atol=1e-5)
  assert np.abs(fresh(3, 7) - b).max() > 1e-4


def test_read_weight_is_a_constant_only_when_traced_inside_the_context():
  from diffusion_tf import nn
  v = tf.Variable([1., 2.])

  def op_types(fn):
    return {op.type for op in fn.get_concrete_function().graph.get_operations()}

  f = lambda: nn.read_weight(v, tf.float32) * 2.
  with nn.constant_weights():
    frozen = tf.function(f)
    assert 'ReadVariableOp' not in op_types(frozen)
    assert nn.read_weight(v, tf.float32).numpy().tolist() == [1., 2.]  # eager: a plain read
  assert 'ReadVariableOp' in op_types(tf.function(f))
  v.assign([3., 4.])
  np.testing.assert_array_equal(frozen(), [2., 4.])  # traced inside: the value at trace time
  np.testing.assert_array_equal(tf.function(f)(), [6., 8.])


def test_runs_recorded_before_the_channels_option_read_as_rgb(tmp_path):
  """run_digits defaults to grey (channels=1) now; a kwargs.json written before the option
  existed describes an RGB model and must keep loading as one (sample / evaluation)."""
  import json
  import scripts.run_digits as run_digits
  defaults = runners.script_defaults(run_digits.train)
  assert defaults['channels'] == 1
  old, new = tmp_path / 'old', tmp_path / 'new'
  old.mkdir()
  new.mkdir()
  (old / 'kwargs.json').write_text(json.dumps({'dataset': 'digits', 'resolution': 16}))
  (new / 'kwargs.json').write_text(json.dumps({'dataset': 'digits', 'channels': 1}))
  assert runners.read_run_kwargs(str(old), defaults)['channels'] == 3
  assert runners.read_run_kwargs(str(new), defaults)['channels'] == 1
  assert runners.read_run_kwargs(str(tmp_path), defaults)['channels'] == 1  # no kwargs.json
  assert runners.get_dataset_from_kwargs(runners.read_run_kwargs(str(old), defaults)).image_shape == (16, 16, 3)
  # Scripts without the option (the paper's data sets) are unaffected.
  import scripts.run_cifar as run_cifar
  assert 'channels' not in runners.read_run_kwargs(str(old), runners.script_defaults(run_cifar.train))


# ----------------------------------------------------------------------------- the registry

def _old_output_tag(sampler, steps, order, eta, T):
  """runners.sample's tag before the registry (the reference)."""
  return (f'{sampler}{steps or {"pndm": 50, "dpmsolver++": 20, "unipc": 20}.get(sampler, T)}'
          + (f'_order{order}' if order is not None else '') + (f'_eta{eta}' if sampler == 'ddim' else ''))


def _old_eval_dir_name(sb, T):
  """eval_worker.eval_dir_name before the registry, on a Sampler (the reference)."""
  if sb.sampler == 'ddpm' and sb.steps is None:
    return 'eval'
  name = f'eval_{sb.sampler}{sb.steps or T}'
  if sb.steps is not None and sb.spacing != 'uniform':
    name += f'_{sb.spacing}'
  name += f'_order{sb.order}' if sb.order is not None else ''
  return name + (f'_eta{sb.eta}' if sb.sampler == 'ddim' else '')


@pytest.mark.parametrize('sampler,steps,order,eta,spacing', [
    ('ddpm', None, None, 0., 'uniform'), ('ddpm', 1000, None, 0., 'uniform'), ('ddpm', 100, None, 0., 'quad'),
    ('ddim', None, None, 0., 'uniform'), ('ddim', 50, None, 1.0, 'uniform'), ('ddim', 20, None, 0.5, 'quad'),
    ('ddim', 50, None, 1, 'uniform'),  # --eta 1 arrives as an int: the tag said _eta1, the folder _eta1.0
    ('pndm', None, None, 0., 'uniform'), ('pndm', 10, None, 0., 'linspace'),
    ('dpmsolver++', None, None, 0., 'uniform'), ('dpmsolver++', 12, 3, 0., 'trailing'),
    ('unipc', 10, 1, 0., 'leading'), ('unipc', None, 2, 0., 'uniform')])
def test_settings_give_the_old_tags_and_folders(sampler, steps, order, eta, spacing):
  T = 1000
  settings = sampling.SamplerSettings.resolve(sampler, T, steps=steps, order=order, eta=eta,
                                              spacing=spacing)
  assert settings.output_tag() == _old_output_tag(sampler, steps, order, eta, T)
  model = type('M', (), dict(diffusion=d2.GaussianDiffusion2(
      betas=_betas(T), model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse'),
      denoise=staticmethod(_denoise), image_shape=(4, 4, 3)))()
  draw = sampling.Sampler(model, sampler=sampler, steps=steps, order=order, eta=eta, spacing=spacing)
  assert settings.eval_dir_name() == _old_eval_dir_name(draw, T) == draw.settings.eval_dir_name()
  assert draw.describe() == settings.describe() and sampler in settings.describe()


class _TinyModel:
  """A script model whose network is one variable (fast to trace)."""

  def __init__(self, T=20):
    betas = d2.get_beta_schedule('linear', beta_start=1e-4, beta_end=0.2, num_diffusion_timesteps=T)
    self.diffusion = d2.GaussianDiffusion2(betas=betas, model_mean_type='eps',
                                           model_var_type='fixedlarge', loss_type='mse')
    self.w = tf.Variable(0.3)
    self.image_shape = (4, 4, 3)
    self.traces = 0

  def denoise(self, x, t):
    self.traces += 1  # Python: runs only while a loop is traced
    return self.w * x + 0.002 * tf.cast(t, tf.float32)[:, None, None, None]


@pytest.mark.slow  # about 12 s: every sampler compiled and dropped
def test_samplers_and_their_loops_are_freed():
  import gc
  import weakref
  refs = []
  for i in range(20):
    model = _TinyModel()
    draw = sampling.Sampler(model, sampler=sampling.SAMPLERS[i % len(sampling.SAMPLERS)], steps=4,
                            constant_weights=bool(i % 2))
    draw(2, seed=i)
    refs += [weakref.ref(model), weakref.ref(draw)]
    del model, draw
  gc.collect()
  assert [r for r in refs if r() is not None] == []


def test_eager_library_loops_keep_their_compiled_loop_on_the_model_not_the_module():
  import gc
  import weakref
  refs = []
  for i in range(5):
    model = _TinyModel()
    model.diffusion.p_sample_loop(model.denoise, shape=(2, 4, 4, 3))
    traces = model.traces
    model.diffusion.p_sample_loop(model.denoise, shape=(2, 4, 4, 3))
    assert model.traces == traces  # the second identical call reuses the loop
    refs.append(weakref.ref(model))
    del model
  gc.collect()
  assert [r for r in refs if r() is not None] == []


def test_a_new_seed_does_not_trace_again():
  model = _TinyModel()
  draw = sampling.Sampler(model, sampler='ddpm', steps=5, constant_weights=True)
  a = draw(2, seed=1)
  traces = model.traces
  assert traces > 0
  b, c = draw(2, seed=2), draw(2, seed=1)
  assert model.traces == traces and len(draw._compiled) == 1
  np.testing.assert_array_equal(a, c)
  assert np.abs(a - b).max() > 1e-3
