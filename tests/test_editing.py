"""Editing: RePaint against diffusers' RePaintScheduler (tests/fixtures/make_repaint_fixtures.py),
inpainting by replacement, image-to-image and interpolation, on small diffusions with a fake
noise predictor (the properties hold for any network)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import editing, pipelines, sampling
from diffusion_tf.diffusion_base import get_beta_schedule
from diffusion_tf.diffusion_utils import GaussianDiffusion
from diffusion_tf.diffusion_utils_2 import GaussianDiffusion2
from diffusion_tf.errors import FlagError
from test_pipelines import FIXTURES, FOLDERS, ReplayNoise


def betas(T):
  return get_beta_schedule('linear', beta_start=1e-4, beta_end=0.02 * 1000 / T, num_diffusion_timesteps=T)


def v2(T=40):
  return GaussianDiffusion2(betas=betas(T), model_mean_type='eps', model_var_type='fixedlarge',
                            loss_type='mse')


def v1(T=40):
  return GaussianDiffusion(betas=betas(T), loss_type='noisepred')


def fake_eps(x, t):  # depends on x and t, so a wrong step order or level shows
  return 0.3 * tf.tanh(x) + 0.001 * tf.cast(t, tf.float32)[:, None, None, None]


def seeded(seed):
  gen = tf.random.Generator.from_seed(seed)
  return lambda shape, dtype=tf.float32: gen.normal(shape, dtype=dtype)


@pytest.fixture(scope='module')
def data():
  rng = np.random.RandomState(0)
  x0 = rng.uniform(-1, 1, (2, 6, 6, 1)).astype(np.float32)
  mask = np.ones((2, 6, 6, 1), np.float32)
  mask[0, 3:] = 0
  mask[1, 1:4, 1:4] = 0
  return x0, mask


# ----------------------------------------------------------------------------- RePaint vs diffusers

@pytest.fixture(scope='module')
def repaint_ref():
  return dict(np.load(os.path.join(FIXTURES, 'repaint.npz')))


@pytest.mark.parametrize('tag,eta', [('eta0', 0.), pytest.param('eta05', .5, marks=pytest.mark.slow)])
def test_repaint_follows_diffusers_step_by_step(repaint_ref, tag, eta):
  r = repaint_ref
  pipe = pipelines.DDPMPipeline.from_pretrained(FOLDERS['google'])
  T = int(r['num_train_timesteps'])
  diffusion = GaussianDiffusion2(
      betas=get_beta_schedule('linear', beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=T),
      model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse')
  kw = dict(steps=int(r['steps']), jump_length=int(r['jump_length']),
            jump_n_sample=int(r['jump_n_sample']))
  np.testing.assert_array_equal(editing.repaint_timesteps(T, **kw), r[f'{tag}_timesteps'])
  noise = r[f'{tag}_noise']
  K = len(r[f'{tag}_timesteps'])
  # Each entry's prev_sample from diffusers' previous one (the noise that entry drew replayed).
  plan_draws = np.cumsum([1] + [1 if s else int(T // kw['steps']) for s in
                                editing.repaint_plan(diffusion, eta=eta, **kw)['step']])
  for k in (0, 9, 10, 14, K - 1):  # steps down, undo steps, the last step
    start = r[f'{tag}_samples'][k - 1] if k else noise[0]
    sub = dict(editing.repaint_plan(diffusion, eta=eta, **kw))
    x = _one_entry(pipe, diffusion, sub, k, start, noise[plan_draws[k]:plan_draws[k + 1]],
                   r['image'], r['mask'])
    np.testing.assert_allclose(x, r[f'{tag}_samples'][k], atol=2e-5, err_msg=f'entry {k}')
  out = editing.repaint_loop(diffusion, pipe._denoise, x0=r['image'], mask=r['mask'], eta=eta,
                             x_T=noise[0], noise_fn=ReplayNoise(noise[1:]).normal, **kw)
  np.testing.assert_allclose(np.clip(out.numpy() / 2 + .5, 0, 1), r[f'{tag}_images'], atol=1e-4)
  known = r['mask'][..., 0] > 0
  np.testing.assert_array_equal(out.numpy()[known], r['image'][known])


def _one_entry(pipe, diffusion, plan, k, x, draws, image, mask):
  """Entry k of the schedule alone: a loop over a one-row plan."""
  one = {name: v[k:k + 1] for name, v in plan.items()}
  saved = editing.repaint_plan
  try:
    editing.repaint_plan = lambda *a, **kw: one
    return editing.repaint_loop(diffusion, pipe._denoise, x0=image, mask=mask, steps=1,
                                x_T=x, noise_fn=ReplayNoise(draws).normal).numpy()
  finally:
    editing.repaint_plan = saved


# ----------------------------------------------------------------------------- inpainting

@pytest.mark.parametrize('make', [v1, v2])
def test_repaint_keeps_the_known_pixels_and_fills_the_rest(data, make):
  x0, mask = data
  out = editing.repaint_loop(make(), fake_eps, x0=x0, mask=mask, steps=10, jump_length=2,
                             jump_n_sample=2, eta=1., noise_fn=seeded(0)).numpy()
  np.testing.assert_array_equal(out[mask > 0], x0[mask > 0])
  assert np.abs(out[mask == 0] - x0[mask == 0]).max() > 0.1


def test_repaint_with_all_ones_returns_the_input(data):
  x0, _ = data
  out = editing.repaint_loop(v2(), fake_eps, x0=x0, mask=np.ones_like(x0), steps=10, jump_length=2,
                             jump_n_sample=2, noise_fn=seeded(0))
  np.testing.assert_array_equal(out.numpy(), x0)


@pytest.mark.parametrize('eta', [0., 1.])
def test_repaint_without_jumps_or_known_pixels_is_ddim_with_the_same_noise(data, eta):
  x0, _ = data
  d = v2()
  out = editing.repaint_loop(d, fake_eps, x0=x0, mask=np.zeros_like(x0), steps=10, jump_length=2,
                             jump_n_sample=1, eta=eta, noise_fn=seeded(3))
  ddim = sampling.diffusers_ddim_sample_loop(d, fake_eps, shape=x0.shape, steps=10, spacing='leading',
                                             set_alpha_to_one=True, eta=eta, noise_fn=seeded(3))
  np.testing.assert_allclose(out.numpy(), ddim.numpy(), atol=1e-5)


def test_repaint_counts_its_network_evaluations():
  ts = editing.repaint_timesteps(1000, 250, 10, 10)
  assert editing.repaint_evaluations(1000, 250, 10, 10) == 2410 == np.sum(np.diff(ts) < 0) + 1


@pytest.mark.parametrize('name,steps', [('ddpm', 10), ('ddpm', None), ('ddim', 10)])
def test_replacement_keeps_the_known_pixels(data, name, steps):
  x0, mask = data
  d = v2()
  settings = sampling.SamplerSettings.resolve(name, d.num_timesteps, steps=steps, eta=1.)
  out = editing.replace_loop(settings, d, fake_eps, x0=x0, mask=mask, noise_fn=seeded(0)).numpy()
  np.testing.assert_array_equal(out[mask > 0], x0[mask > 0])
  ones = editing.replace_loop(settings, d, fake_eps, x0=x0, mask=np.ones_like(mask), noise_fn=seeded(0))
  np.testing.assert_array_equal(ones.numpy(), x0)


@pytest.mark.parametrize('name', ['dpmsolver++', 'unipc', 'pndm'])
def test_replacement_refuses_samplers_with_a_history(data, name):
  x0, mask = data
  settings = sampling.SamplerSettings.resolve(name, 40, steps=10)
  with pytest.raises(FlagError, match='history'):
    editing.replace_loop(settings, v2(), fake_eps, x0=x0, mask=mask)


def test_compose_takes_the_known_pixels_from_the_input():
  images = np.arange(8, dtype=np.uint8).reshape(2, 2, 2, 1)
  masks = np.array([[[[1], [0]], [[0], [1]]]], np.uint8)
  out = editing.compose(np.full_like(images, 99), images, masks)
  np.testing.assert_array_equal(out[..., 0], [[[0, 99], [99, 3]], [[4, 99], [99, 7]]])


# ----------------------------------------------------------------------------- image-to-image

def test_strength_0_returns_the_input(data):
  x0, _ = data
  settings = sampling.SamplerSettings.resolve('ddim', 40, steps=10)
  out = editing.img2img(settings, v2(), fake_eps, x0=x0, strength=0., noise_fn=seeded(0))
  np.testing.assert_array_equal(out.numpy(), x0)


@pytest.mark.parametrize('name,steps', [('ddpm', None), ('ddim', 10), ('dpmsolver++', 8),
                                        ('unipc', 8), ('pndm', 8)])
def test_strength_1_is_the_sampler_started_from_q_of_x0(data, name, steps):
  x0, _ = data
  d = v2()
  settings = sampling.SamplerSettings.resolve(name, d.num_timesteps, steps=steps)
  out = editing.img2img(settings, d, fake_eps, x0=x0, strength=1., noise_fn=seeded(5))
  z = seeded(5)(x0.shape)
  top = settings.start_timestep(settings.num_steps)
  x_T = np.sqrt(d.alphas_cumprod[top]) * x0 + np.sqrt(1 - d.alphas_cumprod[top]) * z.numpy()
  gen = seeded(5)
  gen(x0.shape)  # the latent noise, drawn first
  ref = settings.loop(d, fake_eps, shape=x0.shape, x_T=x_T, noise_fn=gen)
  np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name,steps', [('ddpm', 10), ('ddim', 10), ('dpmsolver++', 8), ('unipc', 8),
                                        ('sde-dpmsolver++', 8), ('deis', 8)])
def test_a_part_way_start_runs_the_last_steps(data, name, steps):
  x0, _ = data
  d = v2()
  s = sampling.SamplerSettings.resolve(name, d.num_timesteps, steps=steps)
  out = editing.img2img(s, d, fake_eps, x0=x0, strength=0.5, noise_fn=seeded(1)).numpy()
  assert s.start_timestep(editing.strength_steps(s, .5)) < s.start_timestep(s.num_steps)
  assert np.isfinite(out).all() and np.abs(out - x0).max() > 1e-3
  if name == 'ddim':  # deterministic: the same as the full loop's tail from the same x_t
    k = editing.strength_steps(s, .5)
    x_t = d.q_sample(x0, s.start_timestep(k), noise=seeded(1)(x0.shape))
    tail = sampling.ddim_sample_loop(d, fake_eps, shape=x0.shape, timesteps=s.timesteps[:k], x_T=x_t)
    np.testing.assert_allclose(out, tail.numpy(), atol=1e-6)


@pytest.mark.parametrize('name', ['pndm', 'sasolver', 'dpmsolver++_singlestep', 'euler'])
def test_samplers_without_a_part_way_start_are_refused(data, name):
  s = sampling.SamplerSettings.resolve(name, 40, steps=8)
  with pytest.raises(FlagError, match='part-way'):
    editing.img2img(s, v2(), fake_eps, x0=data[0], strength=.5)


@pytest.mark.parametrize('strength', [-0.1, 1.5, True])
def test_strength_outside_0_1_is_refused(strength):
  with pytest.raises(FlagError, match='--strength'):
    editing.check_strength(strength)


# ----------------------------------------------------------------------------- interpolation

@pytest.mark.parametrize('mix', ['slerp', pytest.param('lerp', marks=pytest.mark.slow)])
def test_interpolation_ends_are_the_reconstructions(data, mix):
  x0, _ = data
  d = v2()
  x1, x2 = x0[:1], x0[1:]
  row = editing.interpolate(d, fake_eps, x1=x1, x2=x2, lam=[0., .5, 1.], t=8, mix=mix,
                            noise_fn=seeded(2)).numpy()
  gen = seeded(2)
  z = gen(x1.shape)
  for x, got in ((x1, row[0]), (x2, row[2])):
    rec = editing.interpolate(d, fake_eps, x1=x, x2=x, lam=[0.], t=8, latent_noise=(z, z),
                              noise_fn=_after_one_draw(2)).numpy()
    np.testing.assert_allclose(got, rec[0], atol=1e-5)
  assert np.abs(row[1] - row[0]).max() > 1e-3


def _after_one_draw(seed):
  gen = seeded(seed)
  gen((1, 6, 6, 1))
  return gen


@pytest.mark.slow
def test_v1_interpolation_is_the_originals_formula(data):
  """The original: x_t of each image (its own noise), (1 - lam) x_t1 + lam x_t2, then p_sample
  from t down to 0."""
  x0, _ = data
  d = v1()
  x1, x2 = x0[:1], x0[1:]
  z1, z2 = (np.random.RandomState(s).randn(*x1.shape).astype(np.float32) for s in (1, 2))
  out = editing.interpolate(d, fake_eps, x1=x1, x2=x2, lam=[.3], t=4, mix='lerp',
                            latent_noise=(z1, z2), noise_fn=seeded(4)).numpy()
  x = 0.7 * d.q_sample(x1, 4, noise=z1) + 0.3 * d.q_sample(x2, 4, noise=z2)
  gen = seeded(4)
  for t in range(4, -1, -1):
    x = d.p_sample(fake_eps, x=x, t=tf.fill([1], t), noise_fn=gen)
  np.testing.assert_allclose(out, x.numpy(), atol=1e-5)


@pytest.mark.parametrize('t', [-1, 40, 2.5])
def test_interpolation_refuses_t_outside_the_schedule(data, t):
  with pytest.raises(FlagError, match='--t'):
    editing.interpolate(v2(), fake_eps, x1=data[0][:1], x2=data[0][1:], lam=[0.], t=t)


# ----------------------------------------------------------------------------- pipelines

@pytest.mark.slow
def test_repaint_pipeline_gives_diffusers_image(repaint_ref):
  r = repaint_ref
  unet = pipelines.DDPMPipeline.from_pretrained(FOLDERS['google']).unet
  config = {'_class_name': 'DDPMScheduler', 'num_train_timesteps': int(r['num_train_timesteps']),
            'beta_start': 1e-4, 'beta_end': 0.02, 'beta_schedule': 'linear'}
  pipe = pipelines.RePaintPipeline(unet, config)
  out = pipe(r['image'], r['mask'], num_inference_steps=int(r['steps']), eta=.5,
             jump_length=int(r['jump_length']), jump_n_sample=int(r['jump_n_sample']),
             generator=ReplayNoise(r['eta05_noise']), output_type='np', progress=False).images
  np.testing.assert_allclose(out, r['eta05_images'], atol=1e-4)
  pil = pipe(r['image'], r['mask'], num_inference_steps=int(r['steps']), eta=.5,
             jump_length=int(r['jump_length']), jump_n_sample=int(r['jump_n_sample']), seed=0,
             progress=False).images
  assert len(pil) == 2 and pil[0].size == (8, 8)


@pytest.mark.slow
def test_pipeline_img2img_and_interpolate():
  pipe = pipelines.DDIMPipeline.from_pretrained(FOLDERS['google'])
  image = np.random.RandomState(0).randint(0, 256, (2, 8, 8, 3)).astype(np.uint8)
  same = pipe.img2img(image, strength=0., num_inference_steps=10, seed=0, output_type='np',
                      progress=False).images
  np.testing.assert_allclose(same, image / 255., atol=1 / 255.)
  edited = pipe.img2img(image, strength=.5, num_inference_steps=10, seed=0, output_type='np',
                        progress=False).images
  assert edited.shape == (2, 8, 8, 3) and np.abs(edited - image / 255.).max() > 0.05
  row = pipe.interpolate(image[:1], image[1:], t=5, num=3, seed=0, output_type='np',
                         progress=False).images
  assert row.shape == (3, 8, 8, 3)


def test_repaint_pipeline_saves_the_scheduler_diffusers_repaint_needs(tmp_path):
  """diffusers' RePaintPipeline calls its scheduler with RePaint's arguments: a folder it loads
  must name RePaintScheduler, with that class's options alone; we read it back as the DDPM
  noise schedule."""
  pipe = pipelines.RePaintPipeline.from_pretrained(FOLDERS['google'])
  pipe.save_pretrained(str(tmp_path))
  index = json.load(open(tmp_path / 'model_index.json'))
  config = json.load(open(tmp_path / 'scheduler' / 'scheduler_config.json'))
  assert index['_class_name'] == 'RePaintPipeline'
  assert index['scheduler'] == ['diffusers', 'RePaintScheduler'] == ['diffusers', config['_class_name']]
  # RePaintScheduler().config of diffusers 0.42: these keys, no prediction or variance type.
  assert set(config) - {'_class_name', '_diffusers_version'} == {
      'num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule', 'eta', 'trained_betas',
      'clip_sample'}
  for cls in (pipelines.RePaintPipeline, pipelines.DDPMPipeline):
    back = cls.from_pretrained(str(tmp_path))
    np.testing.assert_array_equal(back.diffusion.betas, pipe.diffusion.betas)
  xstart = pipelines.RePaintPipeline(pipe.unet, dict(pipe._raw_scheduler_config, prediction_type='sample'))
  with pytest.raises(ValueError, match='epsilon'):
    xstart.save_pretrained(str(tmp_path / 'x'))
