"""Euler, Euler ancestral, Heun, LMS, KDPM2 and KDPM2 ancestral against diffusers' schedulers
(fixtures made once by tests/fixtures/make_sigma_fixtures.py), on Gaussian data whose noise
predictor is exact, at the fractional timesteps these schedulers evaluate; the stochastic ones
with diffusers' recorded noise replayed."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import pipelines, sampling, sigma_samplers
from test_pipelines import FOLDERS, ReplayNoise
from test_solvers import T, S, _exact_ode_end, _Model, _v2

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'sigma_trajectories.npz')
LINEAR = dict(beta_start=1e-4, beta_end=0.02, beta_schedule='linear')  # the fixtures' betas


@pytest.fixture(scope='module')
def fx():
  return dict(np.load(FIXTURES))


class FractionalGaussianDenoiser:
  """The exact eps of data ~ N(mu, S^2 I) at int or float timesteps (alpha_cumprod interpolated
  linearly between training timesteps, as the fixture script), counting its calls and
  recording whether any timestep it saw was fractional."""

  def __init__(self, diffusion, mu):
    self.a = tf.constant(diffusion.alphas_cumprod, tf.float32)
    self.mu = tf.constant(mu, tf.float32)
    self.calls = tf.Variable(0, dtype=tf.int64)
    self.float_calls = tf.Variable(0, dtype=tf.int64)

  def __call__(self, x, t):
    self.calls.assign_add(1)
    if t.dtype.is_floating:
      self.float_calls.assign_add(1)
    t = tf.cast(t, tf.float32)
    lo = tf.floor(t)
    frac, lo = t - lo, tf.cast(lo, tf.int32)
    hi = tf.minimum(lo + 1, T - 1)
    a = tf.reshape(tf.gather(self.a, lo) * (1. - frac) + tf.gather(self.a, hi) * frac, [-1, 1, 1, 1])
    return tf.sqrt(1. - a) * (x - tf.sqrt(a) * self.mu) / (a * S ** 2 + 1. - a)


# name -> (scheduler class, config, steps, LMS order or Euler's churn); matches the fixture script
CASES = {
    'euler_linspace_10': ('EulerDiscreteScheduler', {}, 10, None),
    'euler_leading_offset1_8': ('EulerDiscreteScheduler', dict(timestep_spacing='leading', steps_offset=1), 8, None),
    'euler_trailing_karras_12': ('EulerDiscreteScheduler', dict(timestep_spacing='trailing',
                                                                use_karras_sigmas=True), 12, None),
    'euler_churn_10': ('EulerDiscreteScheduler', {}, 10, dict(s_churn=3., s_tmin=0.3, s_tmax=40.,
                                                              s_noise=1.003)),
    'euler_ancestral_linspace_10': ('EulerAncestralDiscreteScheduler', {}, 10, None),
    'euler_ancestral_leading_7': ('EulerAncestralDiscreteScheduler', dict(timestep_spacing='leading'), 7, None),
    'heun_linspace_6': ('HeunDiscreteScheduler', {}, 6, None),
    'heun_karras_8': ('HeunDiscreteScheduler', dict(use_karras_sigmas=True), 8, None),
    'heun_clip_trailing_5': ('HeunDiscreteScheduler', dict(clip_sample=True, timestep_spacing='trailing'), 5, None),
    'lms_linspace_10': ('LMSDiscreteScheduler', {}, 10, None),
    'lms_o2_karras_8': ('LMSDiscreteScheduler', dict(use_karras_sigmas=True), 8, 2),
    'lms_o3_leading_12': ('LMSDiscreteScheduler', dict(timestep_spacing='leading'), 12, 3),
    'kdpm2_linspace_6': ('KDPM2DiscreteScheduler', {}, 6, None),
    'kdpm2_karras_8': ('KDPM2DiscreteScheduler', dict(use_karras_sigmas=True), 8, None),
    'kdpm2_leading_5': ('KDPM2DiscreteScheduler', dict(timestep_spacing='leading'), 5, None),
    'kdpm2_ancestral_linspace_6': ('KDPM2AncestralDiscreteScheduler', {}, 6, None),
    'kdpm2_ancestral_karras_7': ('KDPM2AncestralDiscreteScheduler', dict(use_karras_sigmas=True), 7, None),
}


def _settings(name):
  """Our settings for a case, read from its diffusers scheduler config (as a pipeline would)."""
  class_name, config, steps, extra = CASES[name]
  settings, diffusion, _ = sampling.settings_from_scheduler_config(
      dict(config, _class_name=class_name, **LINEAR))
  settings = settings.with_steps(steps)
  if isinstance(extra, int):  # LMS's order: a step argument in diffusers
    settings = dataclasses.replace(settings, order=extra)
  return settings, diffusion


@pytest.mark.parametrize('name', sorted(CASES))
def test_matches_diffusers(fx, name):
  settings, diffusion = _settings(name)
  den = FractionalGaussianDenoiser(diffusion, fx['mu'])
  x_T, noise = fx['x_T'], fx.get(f'{name}/noise')
  noise_fn = ReplayNoise(noise).normal if noise is not None else tf.random.normal
  churn = CASES[name][3]
  if isinstance(churn, dict):  # Euler's step arguments: the loop's, not the registry's
    plan = sigma_samplers.euler_plan(diffusion.alphas_cumprod, steps=10, **churn)
    out = sigma_samplers.sigma_sample_loop(diffusion, den, plan, shape=x_T.shape, x_T=x_T,
                                           noise_fn=noise_fn)
  else:
    out = settings.loop(diffusion, den, shape=x_T.shape, x_T=x_T, noise_fn=noise_fn)
  want, ts = fx[f'{name}/trajectory'][-1], fx[f'{name}/timesteps']
  # float32 on both sides (diffusers' tables float32, ours float64): a few ulps per evaluation.
  np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=2e-5 * len(ts))
  # One network call per timestep diffusers evaluates, at those timesteps (Karras' and KDPM2's
  # interpolated ones differ by diffusers' float32 log-sigma table: < 0.01 of a step).
  assert int(den.calls.numpy()) == len(ts) == settings.num_evaluations
  plan_t = sampling._sigma_plan(_PLANS[settings.name], settings, diffusion.alphas_cumprod)['t']
  np.testing.assert_allclose(plan_t, ts, rtol=0, atol=1e-2)
  fractional = np.any(ts != np.round(ts))
  assert (int(den.float_calls.numpy()) > 0) == fractional
  if noise is not None and not isinstance(churn, dict):
    assert int(noise_fn.__self__.i.numpy()) == len(noise)  # drew exactly diffusers' noise


@pytest.mark.slow  # one compiled loop per evaluation: ~5-10 s a case
@pytest.mark.parametrize('name', ['euler_churn_10', 'heun_karras_8', 'lms_linspace_10',
                                  'kdpm2_leading_5', 'kdpm2_ancestral_karras_7'])
def test_matches_diffusers_step_by_step(fx, name):
  """After every evaluation (a plan cut there), the sample diffusers' step() returned, also
  the two-evaluation steps' intermediate one and with the noise drawn so far."""
  settings, diffusion = _settings(name)
  churn = CASES[name][3]
  plan = (sigma_samplers.euler_plan(diffusion.alphas_cumprod, steps=10, **churn)
          if isinstance(churn, dict) else
          sampling._sigma_plan(_PLANS[settings.name], settings, diffusion.alphas_cumprod))
  den = FractionalGaussianDenoiser(diffusion, fx['mu'])
  x_T, noise, traj = fx['x_T'], fx.get(f'{name}/noise'), fx[f'{name}/trajectory']
  for k in range(1, len(traj) + 1):
    cut = {key: (v if key == 'init' else v[:k]) for key, v in plan.items()}
    noise_fn = ReplayNoise(noise).normal if noise is not None else tf.random.normal
    out = sigma_samplers.sigma_sample_loop(diffusion, den, cut, shape=x_T.shape, x_T=x_T,
                                           noise_fn=noise_fn, clip_sample='clip' in name)
    np.testing.assert_allclose(out.numpy(), traj[k - 1], rtol=1e-4, atol=2e-5 * k,
                               err_msg=f'after evaluation {k}')


_PLANS = {'euler': sigma_samplers.euler_plan, 'euler_ancestral': sigma_samplers.euler_ancestral_plan,
          'heun': sigma_samplers.heun_plan, 'lms': sigma_samplers.lms_plan,
          'kdpm2': sigma_samplers.kdpm2_plan, 'kdpm2_ancestral': sigma_samplers.kdpm2_ancestral_plan}


def test_evaluation_counts_and_linspace_is_fractional():
  """N evaluations for euler, euler_ancestral, lms; 2N - 1 for heun, kdpm2, kdpm2_ancestral
  (the last step is Euler's); 'linspace' (their default) places fractional timesteps."""
  ac = _v2().alphas_cumprod
  for name, plan_fn in _PLANS.items():
    two = name in ('heun', 'kdpm2', 'kdpm2_ancestral')
    for n in (1, 4, 25):
      s = sampling.SamplerSettings.resolve(name, T, steps=n)
      assert s.num_evaluations == len(plan_fn(ac, steps=n)['t']) == (2 * n - 1 if two else n)
      assert f'{s.num_evaluations} network evaluations' in s.describe()
    t = plan_fn(ac, steps=20)['t']  # 999 / 19 apart
    assert np.any(t != np.round(t)) and t[0] == T - 1
    assert sampling.SamplerSettings.resolve(name, T).steps == 50


@pytest.mark.parametrize('sampler,order,evals', [
    ('euler_ancestral', None, 6), ('heun', None, 11), ('lms', 2, 6), ('kdpm2_ancestral', None, 11)])
def test_sampler_dispatch(fx, sampler, order, evals):
  """``--sampler NAME --steps 6`` through the scripts' Sampler: seeded, the counted evaluations."""
  diffusion = _v2()
  den = FractionalGaussianDenoiser(diffusion, fx['mu'])
  draw = sampling.Sampler(_Model(diffusion, den), sampler=sampler, steps=6, order=order)
  assert draw.num_evaluations == evals
  a = draw(3, seed=1)
  assert a.shape == (3, 4, 4, 1) and np.isfinite(a).all()
  assert int(den.calls.numpy()) == evals
  np.testing.assert_array_equal(draw(3, seed=1), a)
  if sampler.endswith('ancestral'):
    assert not np.array_equal(draw(3, seed=2), a)


def test_convergence_orders_on_gaussian_data(fx):
  """With the exact eps the probability-flow ODE's end point is known: doubling the steps
  halves Euler's error (first order), cuts Heun's and KDPM2's about fourfold (second order)
  and LMS's (order 4) far more."""
  diffusion = _v2()
  den = FractionalGaussianDenoiser(diffusion, fx['mu'])
  x_T = np.random.RandomState(1).randn(64, 4, 4, 1).astype(np.float32)
  exact = _exact_ode_end(diffusion, fx['mu'], x_T)
  ac = diffusion.alphas_cumprod

  def err(plan_fn, steps):
    out = sigma_samplers.sigma_sample_loop(diffusion, den, plan_fn(ac, steps=steps), shape=x_T.shape,
                                           x_T=x_T)
    return float(np.sqrt(np.mean((out.numpy() - exact) ** 2)))

  gain = lambda plan_fn, n: err(plan_fn, n) / err(plan_fn, 2 * n - 1)  # same 999 / (n - 1) grid
  assert 1.7 < gain(sigma_samplers.euler_plan, 20) < 2.4
  assert gain(sigma_samplers.heun_plan, 10) > 3.5
  assert gain(sigma_samplers.kdpm2_plan, 10) > 3.5
  assert gain(sigma_samplers.lms_plan, 20) > 20


@pytest.mark.parametrize('kwargs,match', [
    (dict(sampler='lms', order=5), '--order'), (dict(sampler='heun', order=2), '--order'),
    (dict(sampler='euler', steps=0), '--steps'), (dict(sampler='kdpm2', spacing='quad'), '--spacing')])
def test_bad_arguments_fail_before_work(kwargs, match):
  def denoise(x, t):
    raise AssertionError('no network call expected')

  with pytest.raises(ValueError, match=match):
    sampling.Sampler(_Model(_v2(), denoise), **kwargs)


@pytest.mark.parametrize('option,value', [('use_exponential_sigmas', True), ('sigma_min', 0.1),
                                          ('interpolation_type', 'log_linear')])
def test_unsupported_config_options_are_refused(option, value):
  with pytest.raises(ValueError, match=option):
    sampling.settings_from_scheduler_config({'_class_name': 'EulerDiscreteScheduler', option: value})


@pytest.mark.slow
def test_pipeline_takes_them_by_name_and_config_and_writes_them_back(tmp_path):
  """``scheduler='euler_ancestral'`` and a config naming EulerAncestralDiscreteScheduler give
  the same scheduler, the scripts' samples for the same seed, and save_pretrained writes it; a
  KDPM2 config with Karras sigmas keeps them."""
  model = pipelines.pretrained_model(FOLDERS['google'])
  by_name = pipelines.DDPMPipeline.from_pretrained(FOLDERS['google'], scheduler='euler_ancestral')
  config = dict(json.load(open(os.path.join(FOLDERS['google'], 'scheduler_config.json'))),
                _class_name='EulerAncestralDiscreteScheduler', timestep_spacing='linspace')
  by_config = pipelines.DDPMPipeline.from_pretrained(FOLDERS['google'], scheduler=config)
  assert by_name.scheduler.config == by_config.scheduler.config
  assert by_name.num_evaluations(5) == 5
  cli = sampling.generate_samples(model, 2, 2, sampler='euler_ancestral', steps=5, seed=3, log_fn=None)
  got = by_config(batch_size=2, num_inference_steps=5, seed=sampling.batch_seed(3, 0),
                  output_type='np', progress=False).images
  np.testing.assert_allclose(got, np.clip(cli / 2 + .5, 0., 1.), rtol=0, atol=2e-6)
  by_name.scheduler = dict(config, _class_name='KDPM2DiscreteScheduler', use_karras_sigmas=True)
  assert by_name.num_evaluations(5) == 9
  out = by_name.save_pretrained(str(tmp_path / 'hub'))
  sched = json.load(open(os.path.join(out, 'scheduler', 'scheduler_config.json')))
  assert sched['_class_name'] == 'KDPM2DiscreteScheduler' and sched['use_karras_sigmas'] is True
  assert sched['timestep_spacing'] == 'linspace'
  again = pipelines.Scheduler.from_config(sched)
  assert again.settings == by_name.scheduler.settings


@pytest.mark.slow
def test_sample_command_says_its_network_evaluations(tmp_path):
  """``run_digits.py sample --sampler heun --steps 3`` samples (fractional timesteps through the
  U-Net) and its summary line counts Heun's 5 network evaluations."""
  import scripts.run_digits as run_digits
  from diffusion_tf import runners
  from test_sampling import _run, _write_original_layout_checkpoint
  kw = runners.script_defaults(run_digits.train)
  model = runners.make_model(kw, (16, 16, kw['channels']))
  prefix, _ = _write_original_layout_checkpoint(str(tmp_path / 'model.ckpt'), model.net, 3)
  out = str(tmp_path / 'heun')
  proc = _run(['scripts/run_digits.py', 'sample', '--ckpt', prefix, '--num_samples', '2',
               '--sampler', 'heun', '--steps', '3', '--out', out])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '(heun, 5 network evaluations per sample)' in proc.stdout.strip().splitlines()[-1]
  samples = np.load(out + '.npz')['samples']
  assert samples.shape == (2, 16, 16, 1)
