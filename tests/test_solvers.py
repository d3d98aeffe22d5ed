"""PNDM, DPM-Solver++, UniPC and diffusers-placed DDIM against diffusers' schedulers
(fixtures made once by tests/fixtures/make_scheduler_fixtures.py), on Gaussian data whose
noise predictor is exact."""

import os

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import sampling, solvers
from diffusion_tf.diffusion_base import get_beta_schedule
from diffusion_tf.diffusion_utils import GaussianDiffusion
from diffusion_tf.diffusion_utils_2 import GaussianDiffusion2
from test_pipelines import ReplayNoise

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'scheduler_trajectories.npz')
T, S = 1000, 0.5  # as the fixture script


@pytest.fixture(scope='module')
def fx():
  return dict(np.load(FIXTURES))


def _betas():
  return get_beta_schedule('linear', beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=T)


def _v2(mean_type='eps', var_type='fixedlarge'):
  return GaussianDiffusion2(betas=_betas(), model_mean_type=mean_type, model_var_type=var_type,
                            loss_type='mse')


class GaussianDenoiser:
  """The exact eps (or x0) of data ~ N(mu, S^2 I), counting its calls (also when compiled)."""

  def __init__(self, diffusion, mu, predict='eps', learned_var=False):
    ac = diffusion.alphas_cumprod
    self.a = tf.constant(ac, tf.float32)
    self.mu = tf.constant(mu, tf.float32)
    self.predict, self.learned_var = predict, learned_var
    self.calls = tf.Variable(0, dtype=tf.int64)

  def __call__(self, x, t):
    self.calls.assign_add(1)
    a = tf.reshape(tf.gather(self.a, t), [-1, 1, 1, 1])
    eps = tf.sqrt(1. - a) * (x - tf.sqrt(a) * self.mu) / (a * S ** 2 + 1. - a)
    out = eps if self.predict == 'eps' else (x - tf.sqrt(1. - a) * eps) / tf.sqrt(a)
    return tf.concat([out, tf.zeros_like(out)], -1) if self.learned_var else out


def _exact_ode_end(diffusion, mu, x_T):
  """Where the probability-flow ODE takes x_T for this data: mu + S z."""
  a = diffusion.alphas_cumprod[-1]
  z = (x_T - np.sqrt(a) * mu) / np.sqrt(a * S ** 2 + 1. - a)
  return mu + S * z


# name -> (function, keyword arguments); matches CASES in the fixture script
CASES = {
    'ddim_leading_offset1_10': (sampling.diffusers_ddim_sample_loop, dict(steps=10, steps_offset=1)),
    'ddim_leading_noalpha1_noclip_7': (sampling.diffusers_ddim_sample_loop,
                                       dict(steps=7, set_alpha_to_one=False, clip_sample=False)),
    'ddim_trailing_8': (sampling.diffusers_ddim_sample_loop, dict(steps=8, spacing='trailing',
                                                                  clip_sample=False)),
    'pndm_prk_10': (sampling.pndm_sample_loop, dict(steps=10)),
    'pndm_prk_offset1_alpha1_6': (sampling.pndm_sample_loop, dict(steps=6, steps_offset=1,
                                                                  set_alpha_to_one=True)),
    'pndm_plms_10': (sampling.pndm_sample_loop, dict(steps=10, skip_prk_steps=True)),
    'pndm_plms_linspace_5': (sampling.pndm_sample_loop, dict(steps=5, skip_prk_steps=True,
                                                             spacing='linspace')),
    'dpm_o1_10': (sampling.dpm_solver_sample_loop, dict(steps=10, order=1)),
    'dpm_o2_10': (sampling.dpm_solver_sample_loop, dict(steps=10)),
    'dpm_o3_10': (sampling.dpm_solver_sample_loop, dict(steps=10, order=3)),
    'dpm_o2_20': (sampling.dpm_solver_sample_loop, dict(steps=20, order=2)),
    'dpm_o3_leading_offset1_8': (sampling.dpm_solver_sample_loop,
                                 dict(steps=8, order=3, spacing='leading', steps_offset=1)),
    'dpm_o2_trailing_5': (sampling.dpm_solver_sample_loop, dict(steps=5, spacing='trailing')),
    'dpm_o2_heun_12': (sampling.dpm_solver_sample_loop, dict(steps=12, solver_type='heun')),
    'dpm_o3_lu_16': (sampling.dpm_solver_sample_loop, dict(steps=16, order=3, use_lu_lambdas=True)),
    'dpm_o2_threshold_6': (sampling.dpm_solver_sample_loop,
                           dict(steps=6, thresholding=True, dynamic_thresholding_ratio=0.9,
                                sample_max_value=1.2)),
    'unipc_o2_10': (sampling.unipc_sample_loop, dict(steps=10)),
    'unipc_o1_6': (sampling.unipc_sample_loop, dict(steps=6, order=1)),
    'unipc_o3_10': (sampling.unipc_sample_loop, dict(steps=10, order=3)),
    'unipc_o2_trailing_20': (sampling.unipc_sample_loop, dict(steps=20, spacing='trailing')),
    'unipc_o3_leading_8': (sampling.unipc_sample_loop, dict(steps=8, order=3, spacing='leading')),
}

SCHEDULER = {sampling.diffusers_ddim_sample_loop: 'ddim', sampling.pndm_sample_loop: 'pndm',
             sampling.dpm_solver_sample_loop: 'dpmsolver++', sampling.unipc_sample_loop: 'unipc'}


@pytest.mark.parametrize('name', sorted(CASES))
def test_matches_diffusers(fx, name):
  fn, kwargs = CASES[name]
  diffusion = _v2()
  den = GaussianDenoiser(diffusion, fx['mu'])
  x_T = fx['x_T']
  out = fn(diffusion, den, shape=x_T.shape, x_T=x_T, **kwargs).numpy()
  want = fx[f'{name}/trajectory'][-1]
  # Both sides run in float32 from float32 (diffusers) / float64 (ours) tables: a few ulps of
  # |x| ~ 1-3 per step, over at most ~20 steps.
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=2e-5 * len(fx[f'{name}/timesteps']))
  # The network ran exactly once per timestep diffusers evaluates, at those timesteps.
  assert int(den.calls.numpy()) == len(fx[f'{name}/timesteps'])
  spacing = kwargs.get('spacing', 'linspace' if SCHEDULER[fn] in ('dpmsolver++', 'unipc') else 'leading')
  if not kwargs.get('use_lu_lambdas'):
    ts = solvers.diffusers_timesteps(T, kwargs['steps'], spacing, kwargs.get('steps_offset', 0),
                                     scheduler=SCHEDULER[fn],
                                     skip_prk_steps=kwargs.get('skip_prk_steps', False))
    np.testing.assert_array_equal(ts, fx[f'{name}/timesteps'])


def test_lu_lambda_timesteps(fx):
  plan = solvers.dpm_solver_plan(_v2().alphas_cumprod, steps=16, order=3, use_lu_lambdas=True)
  np.testing.assert_array_equal(plan['t'], fx['dpm_o3_lu_16/timesteps'])


def test_evaluation_counts():
  """The documented counts: pndm N + 9 (N + 1 without Runge-Kutta), the others N."""
  for n in (4, 10, 50):
    assert len(solvers.diffusers_timesteps(T, n, scheduler='pndm')) == n + 9
    assert len(solvers.diffusers_timesteps(T, n, scheduler='pndm', skip_prk_steps=True)) == n + 1
    for name in ('ddim', 'dpmsolver++', 'unipc'):
      for spacing in solvers.DIFFUSERS_SPACINGS:
        assert len(solvers.diffusers_timesteps(T, n, spacing, scheduler=name)) == n


class _Model:
  def __init__(self, diffusion, denoise):
    self.diffusion, self.denoise, self.image_shape = diffusion, denoise, (4, 4, 1)


@pytest.mark.parametrize('sampler,steps,order,evals', [
    ('pndm', 6, None, 15), ('dpmsolver++', 7, 3, 7), ('unipc', 5, None, 5), ('ddim', 8, None, 8),
    ('sde-dpmsolver++', 6, 3, 6), ('sasolver', 5, 4, 5), ('dpmsolver++_singlestep', 7, 3, 7),
    ('deis', 6, 3, 6)])
def test_sampler_dispatch_counts(fx, sampler, steps, order, evals):
  diffusion = _v2()
  den = GaussianDenoiser(diffusion, fx['mu'])
  draw = sampling.Sampler(_Model(diffusion, den), sampler=sampler, steps=steps, order=order)
  assert draw.num_evaluations == evals
  a = draw(3, seed=1)
  assert a.shape == (3, 4, 4, 1) and np.isfinite(a).all()
  assert int(den.calls.numpy()) == evals
  np.testing.assert_array_equal(draw(3, seed=1), a)  # seeded


def test_order1_is_ddim(fx):
  """DPM-Solver++ order 1 and UniPC order 1's predictor are DDIM (eta 0, unclipped) over the
  same timesteps, ending on the last x0 prediction."""
  diffusion = _v2()
  den = GaussianDenoiser(diffusion, fx['mu'])
  x_T = fx['x_T']
  dpm = sampling.dpm_solver_sample_loop(diffusion, den, shape=x_T.shape, steps=10, order=1, x_T=x_T)
  ts = solvers.diffusers_timesteps(T, 10, 'linspace', scheduler='dpmsolver++')[::-1]
  ddim = sampling.ddim_sample_loop(diffusion, den, shape=x_T.shape, timesteps=ts, clip_denoised=False,
                                   x_T=x_T)
  np.testing.assert_allclose(dpm.numpy(), ddim.numpy(), rtol=1e-4, atol=1e-4)


def test_higher_orders_beat_ddim_on_gaussian_data(fx):
  """With the exact eps of Gaussian data the ODE's end point is known: the higher orders get
  much closer to it than DDIM with the same 20 evaluations (at 8 the first, largest steps, all
  first order, dominate every solver's error), and reach the data's variance."""
  diffusion = _v2()
  den = GaussianDenoiser(diffusion, fx['mu'])
  x_T = np.random.RandomState(1).randn(256, 4, 4, 1).astype(np.float32)
  exact = _exact_ode_end(diffusion, fx['mu'], x_T)
  ts = solvers.diffusers_timesteps(T, 20, 'linspace', scheduler='dpmsolver++')[::-1]

  def err(out):
    return float(np.sqrt(np.mean((np.asarray(out) - exact) ** 2)))

  def var_err(out):  # against the data variance S^2 (as the exact end point has it, for this x_T)
    var = lambda a: float(np.var(np.asarray(a) - fx['mu'], axis=0).mean())
    return abs(var(out) - var(exact))

  kw = dict(shape=x_T.shape, x_T=x_T)
  ddim_out = sampling.ddim_sample_loop(diffusion, den, timesteps=ts, clip_denoised=False, **kw)
  ddim, ddim_var = err(ddim_out), var_err(ddim_out)
  assert ddim_var > 0.15 * S ** 2  # DDIM's samples are visibly too narrow
  higher = {
      'dpm2': sampling.dpm_solver_sample_loop(diffusion, den, steps=20, order=2, **kw),
      'dpm3': sampling.dpm_solver_sample_loop(diffusion, den, steps=20, order=3, **kw),
      'unipc2': sampling.unipc_sample_loop(diffusion, den, steps=20, **kw),
      'unipc3': sampling.unipc_sample_loop(diffusion, den, steps=20, order=3, **kw),
  }
  for name, out in higher.items():
    assert err(out) < ddim / 2, (name, err(out), ddim)
    assert var_err(out) < min(ddim_var / 2, 0.12 * S ** 2), (name, var_err(out), ddim_var)


@pytest.mark.parametrize('kind', ['xstart', 'learned', 'v1'])
def test_other_parameterizations(fx, kind):
  """An x0-predicting model, a learned-variance model and a v1 object give the eps model's
  samples."""
  x_T = fx['x_T']
  base = _v2()
  want = sampling.unipc_sample_loop(base, GaussianDenoiser(base, fx['mu']), shape=x_T.shape,
                                    steps=6, x_T=x_T).numpy()
  if kind == 'v1':
    diffusion, den = GaussianDiffusion(betas=_betas(), loss_type='noisepred'), None
  elif kind == 'xstart':
    diffusion = _v2('xstart')
    den = GaussianDenoiser(diffusion, fx['mu'], predict='x0')
  else:
    diffusion = _v2('eps', 'learned')
    den = GaussianDenoiser(diffusion, fx['mu'], learned_var=True)
  den = den or GaussianDenoiser(diffusion, fx['mu'])
  for fn in (sampling.unipc_sample_loop, sampling.pndm_sample_loop):
    out = fn(diffusion, den, shape=x_T.shape, steps=6, x_T=x_T).numpy()
    if fn is sampling.unipc_sample_loop:
      np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    assert np.isfinite(out).all()


def test_xprev_refused():
  diffusion = _v2('xprev')
  with pytest.raises(ValueError, match='xprev'):
    sampling.dpm_solver_sample_loop(diffusion, lambda x, t: x, shape=(1, 4, 4, 1), steps=5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(sampler='dpm'), '--sampler'),
    (dict(sampler='dpmsolver++', order=4), '--order'),
    (dict(sampler='unipc', order=0), '--order'),
    (dict(sampler='ddim', order=2), '--order'),
    (dict(sampler='dpmsolver++', steps=0), '--steps'),
    (dict(sampler='unipc', steps=1001), '--steps'),
    (dict(sampler='pndm', steps=3), '--steps'),
    (dict(sampler='pndm', steps=2.5), '--steps'),
    (dict(sampler='unipc', spacing='quad'), '--spacing'),
])
def test_bad_arguments_fail_before_work(kwargs, match):
  diffusion = _v2()

  def denoise(x, t):
    raise AssertionError('no network call expected')

  with pytest.raises(ValueError, match=match):
    sampling.Sampler(_Model(diffusion, denoise), **kwargs)


@pytest.mark.slow
def test_sample_command_with_a_solver_and_a_bad_order(tmp_path):
  """``run_digits.py sample --sampler dpmsolver++ --order 3`` (and ``sasolver --order 4``)
  samples, its summary naming the network evaluations; ``--order 5`` fails with a message naming
  the flag and writes nothing."""
  import scripts.run_digits as run_digits
  from diffusion_tf import runners
  from test_sampling import _run, _write_original_layout_checkpoint
  kw = runners.script_defaults(run_digits.train)
  model = runners.make_model(kw, (16, 16, kw['channels']))
  prefix, _ = _write_original_layout_checkpoint(str(tmp_path / 'model.ckpt'), model.net, 3)
  out = str(tmp_path / 'dpm')
  proc = _run(['scripts/run_digits.py', 'sample', '--ckpt', prefix, '--num_samples', '3',
               '--sampler', 'dpmsolver++', '--steps', '4', '--order', '3', '--out', out])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert np.load(out + '.npz')['samples'].shape == (3, 16, 16, 1)
  proc = _run(['scripts/run_digits.py', 'sample', '--ckpt', prefix, '--num_samples', '3',
               '--sampler', 'sasolver', '--steps', '4', '--order', '4', '--out', out + '_sa'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '(sasolver, 4 network evaluations per sample)' in proc.stdout.strip().splitlines()[-1]
  proc = _run(['scripts/run_digits.py', 'sample', '--ckpt', prefix, '--num_samples', '3',
               '--sampler', 'unipc', '--order', '5', '--out', out + '_bad'])
  assert proc.returncode != 0 and '--order' in proc.stderr
  assert not os.path.exists(out + '_bad.npz')


@pytest.mark.parametrize('name,var_type,spacing,steps', [
    ('ddpm_large_50', 'fixedlarge', 'leading', 50), ('ddpm_small_50', 'fixedsmall', 'leading', 50),
    ('ddpm_large_trailing_8', 'fixedlarge', 'trailing', 8)])
def test_strided_ddpm_matches_diffusers_with_its_noise(fx, name, var_type, spacing, steps):
  """The pipelines' strided DDPM (settings read from a DDPMScheduler config) is diffusers'
  DDPMScheduler with num_inference_steps; for 'leading' spacing without offset (the google
  models) the scripts' ``--sampler ddpm --steps N`` is the same sampler. 'trailing' ends on
  t > 0, where diffusers adds noise at the last step (and the scripts' sampler does not)."""
  diffusion = _v2('eps', var_type)
  den = GaussianDenoiser(diffusion, fx['mu'])
  config = {'_class_name': 'DDPMScheduler', 'variance_type': var_type.replace('fixed', 'fixed_'),
            'timestep_spacing': spacing, 'clip_sample': True}
  settings = sampling.settings_from_scheduler_config(config)[0].with_steps(steps)
  np.testing.assert_array_equal(settings.timesteps[::-1], fx[f'{name}/timesteps'])
  x_T, noise = fx['x_T'], fx[f'{name}/noise']
  out = settings.loop(diffusion, den, shape=x_T.shape, x_T=x_T, noise_fn=ReplayNoise(noise).normal)
  want = fx[f'{name}/trajectory'][-1]
  np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)
  assert int(den.calls.numpy()) == steps
  scripts = sampling.SamplerSettings.resolve('ddpm', T, steps=steps).loop(
      diffusion, den, shape=x_T.shape, x_T=x_T, noise_fn=ReplayNoise(noise).normal).numpy()
  if spacing == 'leading':
    np.testing.assert_allclose(scripts, out.numpy(), rtol=0, atol=1e-6)
  else:
    assert np.abs(scripts - want).max() > 1e-2


# name -> (function, keyword arguments); the fixture script's cases of the stochastic samplers
# (their noise replayed), DPM-Solver++ singlestep and DEIS
MORE_CASES = {
    'sde_o1_8': (solvers.dpm_solver_sample_loop, dict(steps=8, order=1, algorithm_type='sde-dpmsolver++')),
    'sde_o2_10': (solvers.dpm_solver_sample_loop, dict(steps=10, algorithm_type='sde-dpmsolver++')),
    'sde_o3_10': (solvers.dpm_solver_sample_loop, dict(steps=10, order=3, algorithm_type='sde-dpmsolver++')),
    'sde_o2_20': (solvers.dpm_solver_sample_loop, dict(steps=20, algorithm_type='sde-dpmsolver++')),
    'sde_o2_heun_trailing_7': (solvers.dpm_solver_sample_loop,
                               dict(steps=7, algorithm_type='sde-dpmsolver++', solver_type='heun',
                                    spacing='trailing')),
    'sa_p2c2_10': (solvers.sa_solver_sample_loop, dict(steps=10)),
    'sa_p2c2_20': (solvers.sa_solver_sample_loop, dict(steps=20)),
    'sa_p1c1_6': (solvers.sa_solver_sample_loop, dict(steps=6, predictor_order=1, corrector_order=1)),
    'sa_p3c4_12': (solvers.sa_solver_sample_loop, dict(steps=12, predictor_order=3, corrector_order=4)),
    'sa_p4c3_leading_9': (solvers.sa_solver_sample_loop, dict(steps=9, predictor_order=4, corrector_order=3,
                                                              spacing='leading')),
    'single_o2_10': (solvers.dpm_solver_singlestep_sample_loop, dict(steps=10)),
    'single_o3_10': (solvers.dpm_solver_singlestep_sample_loop, dict(steps=10, order=3)),
    'single_o3_9': (solvers.dpm_solver_singlestep_sample_loop, dict(steps=9, order=3)),
    'single_o1_5': (solvers.dpm_solver_singlestep_sample_loop, dict(steps=5, order=1)),
    'single_o3_heun_11': (solvers.dpm_solver_singlestep_sample_loop, dict(steps=11, order=3, solver_type='heun')),
    'single_o2_heun_20': (solvers.dpm_solver_singlestep_sample_loop, dict(steps=20, solver_type='heun')),
    'deis_o2_10': (solvers.deis_sample_loop, dict(steps=10)),
    'deis_o1_6': (solvers.deis_sample_loop, dict(steps=6, order=1)),
    'deis_o3_10': (solvers.deis_sample_loop, dict(steps=10, order=3)),
    'deis_o3_20': (solvers.deis_sample_loop, dict(steps=20, order=3)),
    'deis_o2_trailing_8': (solvers.deis_sample_loop, dict(steps=8, spacing='trailing')),
}


@pytest.mark.parametrize('name', sorted(MORE_CASES))
def test_more_schedulers_match_diffusers(fx, name):
  """Every step of diffusers' trajectory, with diffusers' own step noise replayed through our
  loop's noise_fn for the stochastic ones, and one network evaluation per diffusers timestep."""
  fn, kwargs = MORE_CASES[name]
  diffusion = _v2()
  den = GaussianDenoiser(diffusion, fx['mu'])
  x_T, want = fx['x_T'], fx[f'{name}/trajectory']
  noise = fx.get(f'{name}/noise')
  replay = {} if noise is None else dict(noise_fn=ReplayNoise(noise).normal)
  out = fn(diffusion, den, shape=x_T.shape, x_T=x_T, **kwargs, **replay).numpy()
  np.testing.assert_allclose(out, want[-1], rtol=1e-4, atol=2e-5 * len(want))
  assert int(den.calls.numpy()) == len(fx[f'{name}/timesteps'])
  if noise is not None:  # the noise matters: without it the end point differs
    assert len(noise) == len(want)
    quiet = fn(diffusion, den, shape=x_T.shape, x_T=x_T, noise_fn=tf.zeros, **kwargs).numpy()
    assert np.abs(quiet - want[-1]).max() > 1e-2
  spacing = kwargs.get('spacing', 'linspace')
  ts = solvers.diffusers_timesteps(T, kwargs['steps'], spacing, scheduler='dpmsolver++')
  np.testing.assert_array_equal(ts, fx[f'{name}/timesteps'])


# (registry name, diffusers config beyond the schedule, the fixture case that config runs)
REGISTRY_CASES = [
    ('sde-dpmsolver++', {'_class_name': 'DPMSolverMultistepScheduler', 'algorithm_type': 'sde-dpmsolver++'},
     'sde_o2_10'),
    ('sasolver', {'_class_name': 'SASolverScheduler'}, 'sa_p2c2_10'),
    ('dpmsolver++_singlestep', {'_class_name': 'DPMSolverSinglestepScheduler', 'solver_order': 3,
                                'timestep_spacing': 'leading'}, 'single_o3_10'),
    ('deis', {'_class_name': 'DEISMultistepScheduler', 'timestep_spacing': 'trailing', 'steps_offset': 1,
              'solver_type': 'midpoint'}, 'deis_o2_trailing_8'),
]


@pytest.mark.parametrize('name,config,case', REGISTRY_CASES)
def test_registry_reads_diffusers_configs_and_names(fx, name, config, case):
  """A diffusers scheduler config (its class, DPMSolverMultistepScheduler's algorithm_type)
  picks the entry and runs diffusers' trajectory, as diffusers' from_config reads it
  (DPMSolverSinglestepScheduler has no timestep_spacing; DEIS reads another solver's
  solver_type as its own); the config written back picks it again; ``--sampler NAME`` is the
  class's defaults."""
  settings, diffusion, _ = sampling.settings_from_scheduler_config(
      dict(config, beta_schedule='linear', beta_start=1e-4, beta_end=0.02))
  steps = len(fx[f'{case}/timesteps'])
  settings = settings.with_steps(steps)
  assert settings.name == name and settings.num_evaluations == steps
  np.testing.assert_array_equal(settings.timesteps, fx[f'{case}/timesteps'])
  den = GaussianDenoiser(diffusion, fx['mu'])
  x_T, noise = fx['x_T'], fx.get(f'{case}/noise')
  replay = lambda: ReplayNoise(noise).normal if noise is not None else tf.random.normal
  out = settings.loop(diffusion, den, shape=x_T.shape, x_T=x_T, noise_fn=replay())
  want = fx[f'{case}/trajectory'][-1]
  np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=2e-4)
  written = settings.scheduler_config(diffusion)
  assert written['_class_name'] == config['_class_name']
  assert sampling.settings_from_scheduler_config(written)[0].with_steps(steps) == settings
  if case.endswith('_10'):  # diffusers' defaults but the order
    by_name = sampling.SamplerSettings.resolve(name, T, steps=steps, order=settings.order)
    again = by_name.loop(diffusion, den, shape=x_T.shape, x_T=x_T, noise_fn=replay())
    np.testing.assert_array_equal(again.numpy(), out.numpy())


def test_config_algorithm_type_chooses_ode_or_sde():
  base = {'_class_name': 'DPMSolverMultistepScheduler'}
  pick = lambda cfg: sampling.settings_from_scheduler_config(cfg)[0].name
  assert pick(base) == 'dpmsolver++'
  assert pick(dict(base, algorithm_type='sde-dpmsolver++')) == 'sde-dpmsolver++'
  with pytest.raises(ValueError, match='algorithm_type'):
    pick(dict(base, algorithm_type='sde-dpmsolver'))
  with pytest.raises(ValueError, match='tau_func'):
    pick({'_class_name': 'SASolverScheduler', 'tau_func': 'custom'})


def test_stochastic_samplers_draw_their_noise_from_the_seed(fx):
  """Seeded: the same seed gives the same batch, another seed another (the step noise, not only
  x_T: x_T is drawn first, so a sampler that ignored its step noise would still differ)."""
  diffusion = _v2()
  for name in ('sde-dpmsolver++', 'sasolver'):
    draw = sampling.Sampler(_Model(diffusion, GaussianDenoiser(diffusion, fx['mu'])), sampler=name, steps=6)
    a, b = draw(2, seed=3), draw(2, seed=4)
    np.testing.assert_array_equal(draw(2, seed=3), a)
    assert np.abs(a - b).max() > 1e-2


def test_bad_sampler_options_fail_before_work():
  diffusion = _v2()

  def denoise(x, t):
    raise AssertionError('no network call expected')

  for kwargs, match in ((dict(sampler='sasolver', order=5), '--order'),
                        (dict(sampler='dpmsolver++_singlestep', spacing='trailing'), '--spacing'),
                        (dict(sampler='deis', order=4), '--order')):
    with pytest.raises(ValueError, match=match):
      sampling.Sampler(_Model(diffusion, denoise), **kwargs)


def test_thresholding_in_a_scheduler_config_reaches_the_solver(fx):
  """A DPMSolverMultistepScheduler config with diffusers' dynamic thresholding on (as a pipeline
  or `--pretrained` model reads it) runs the thresholded solver: diffusers' trajectory."""
  config = {'_class_name': 'DPMSolverMultistepScheduler', 'num_train_timesteps': T,
            'beta_start': 1e-4, 'beta_end': 0.02, 'thresholding': True,
            'dynamic_thresholding_ratio': 0.9, 'sample_max_value': 1.2}
  settings, diffusion, _ = sampling.settings_from_scheduler_config(config)
  x_T = fx['x_T']
  out = settings.with_steps(6).loop(diffusion, GaussianDenoiser(diffusion, fx['mu']),
                                    shape=x_T.shape, x_T=x_T).numpy()
  np.testing.assert_allclose(out, fx['dpm_o2_threshold_6/trajectory'][-1], rtol=1e-4, atol=2e-5 * 6)
  for name in ('DDPMScheduler', 'DDIMScheduler'):  # their option; our loops do not compute it
    with pytest.raises(ValueError, match=f'thresholding=True is not supported by {name}'):
      sampling.settings_from_scheduler_config(dict(config, _class_name=name))
