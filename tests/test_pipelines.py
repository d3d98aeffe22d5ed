"""DDPM / DDIM / PNDM pipelines reproduce diffusers' pipelines for the same x_T (and, for
DDPM, the same step noise), on the small models of tests/fixtures/diffusers; the pipeline API;
the scripts' --pretrained and the conversion command."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from diffusion_tf import checkpoints, pipelines, runners
from diffusion_tf.models import unet

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'diffusers')
FOLDERS = {'google': os.path.join(FIXTURES, 'google'), 'uncond': os.path.join(FIXTURES, 'uncond')}
# Images in [0, 1] after 50-1000 float32 steps of a network whose outputs agree with
# diffusers' to ~1e-5 of their scale: the deterministic samplers carry the per-step rounding
# to the end (~2e-5 per evaluation), the stochastic one damps it.
ATOL = {'ddpm': 2e-4, 'ddim': 2e-5 * 50, 'pndm': 2e-5 * 59}


@pytest.fixture(scope='module')
def ref():
  return dict(np.load(os.path.join(FIXTURES, 'reference.npz')))


class ReplayNoise(tf.Module):
  """A generator replaying diffusers' recorded step noise (zeros once it runs out: diffusers
  adds no noise at t = 0, where ours draws and masks it)."""

  def __init__(self, noise):
    super().__init__()
    self.noise = tf.constant(np.concatenate([noise, np.zeros_like(noise[:1])]))
    self.i = tf.Variable(0)

  def normal(self, shape, dtype=tf.float32):
    i = self.i.assign_add(1) - 1
    return tf.cast(tf.reshape(tf.gather(self.noise, i), shape), dtype)


@pytest.mark.parametrize('tag', ['google', pytest.param('uncond', marks=pytest.mark.slow)])
def test_ddpm_pipeline_matches_diffusers_with_its_noise(ref, tag):
  pipe = pipelines.DDPMPipeline.from_pretrained(FOLDERS[tag])
  out = pipe(batch_size=1, latents=ref[f'{tag}_ddpm_xT'], output_type='np', progress=False,
             generator=ReplayNoise(ref[f'{tag}_ddpm_noise'])).images
  np.testing.assert_allclose(out, ref[f'{tag}_ddpm_images'], rtol=0, atol=ATOL['ddpm'])


@pytest.mark.parametrize('tag', ['google', 'uncond'])
@pytest.mark.parametrize('name', ['ddim', 'pndm'])
def test_ddim_and_pndm_pipelines_match_diffusers(ref, tag, name):
  pipe = pipelines.PIPELINES[name].from_pretrained(FOLDERS[tag])  # from a DDPM scheduler config
  if name == 'ddim':  # the fixture's DDIM runs unclipped (see make_diffusers_fixtures.py)
    pipe = pipelines.DDIMPipeline(pipe.unet, dict(pipe._raw_scheduler_config, clip_sample=False))
  out = pipe(latents=ref[f'{tag}_{name}_xT'], output_type='np', progress=False).images
  np.testing.assert_allclose(out, ref[f'{tag}_{name}_images'], rtol=0, atol=ATOL[name])


def test_pipeline_outputs_seeds_and_latents(capsys):
  pipe = pipelines.DDIMPipeline.from_pretrained(FOLDERS['google'])
  assert pipe.scheduler_config['set_alpha_to_one'] and pipe.pipeline_class == 'DDIMPipeline'
  a = pipe(batch_size=2, num_inference_steps=5, seed=3, output_type='np').images
  assert a.shape == (2, 8, 8, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
  assert '5/5' in capsys.readouterr().err  # the progress bar counted the evaluations
  b = pipe(batch_size=2, num_inference_steps=5, seed=3, output_type='np', progress=False).images
  np.testing.assert_array_equal(a, b)
  pil = pipe(batch_size=2, num_inference_steps=5, seed=3, progress=False).images
  assert len(pil) == 2 and isinstance(pil[0], Image.Image) and pil[0].size == (8, 8)
  np.testing.assert_array_equal(np.asarray(pil[1]), (a[1] * 255).round().astype(np.uint8))
  with pytest.raises(ValueError, match=r'latents must have shape \(2, 8, 8, 3\)'):
    pipe(batch_size=2, latents=np.zeros([1, 8, 8, 3], np.float32))
  with pytest.raises(ValueError, match='output_type'):
    pipe(output_type='pt')


def test_pndm_counts_its_evaluations():
  pipe = pipelines.PNDMPipeline.from_pretrained(FOLDERS['uncond'])
  assert pipe.num_evaluations(50) == 59


# ----------------------------------------------------------------------------- run dirs, scripts

KW = dict(dataset='digits', resolution=8, channels=3, model_name='unet_tiny_hub_test',
          optimizer='adam', total_bs=50, lr=1e-3, warmup=0, grad_clip=1.,
          num_diffusion_timesteps=10, beta_start=0.0001, beta_end=0.02, beta_schedule='linear',
          model_mean_type='eps', model_var_type='fixedsmall', loss_type='mse', dropout=0.0,
          randflip=0, exp_name='t', block_size=1)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
  monkeypatch.setitem(unet.MODEL_CONFIGS, KW['model_name'],
                      dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)))
  d = str(tmp_path / 'run')
  os.makedirs(d)
  with open(os.path.join(d, 'kwargs.json'), 'w') as f:
    json.dump(KW, f)
  model = runners.make_model(KW, (8, 8, 3))
  shadows = [tf.constant(v.numpy() + 0.05) for v in model.net.trainable_variables]
  checkpoints.write_tf1_checkpoint(os.path.join(d, 'model.ckpt'),
                                   checkpoints.model_var_dict(model.net, shadows), global_step=7)
  return d, shadows


def test_run_directory_loads_with_its_diffusion_and_ema_weights(run_dir, tmp_path):
  d, shadows = run_dir
  pipe = pipelines.DDPMPipeline.from_pretrained(d)
  for s, v in zip(shadows, pipe.unet.trainable_variables):
    np.testing.assert_array_equal(s.numpy(), v.numpy())
  assert pipe.diffusion.num_timesteps == 10 and pipe.diffusion.model_var_type == 'fixedsmall'
  out = pipe.save_pretrained(str(tmp_path / 'hub'))
  sched = json.load(open(os.path.join(out, 'scheduler', 'scheduler_config.json')))
  assert (sched['num_train_timesteps'], sched['variance_type'], sched['beta_schedule']) == (
      10, 'fixed_small', 'linear')
  again = pipelines.DDPMPipeline.from_pretrained(out)
  x = tf.random.stateless_normal([1, 8, 8, 3], [0, 1])
  np.testing.assert_array_equal(pipe(latents=x, seed=1, output_type='np', progress=False).images,
                                again(latents=x, seed=1, output_type='np', progress=False).images)


def test_sample_command_with_pretrained(tmp_path):
  from scripts import run_cifar
  out = str(tmp_path / 'samples')
  run_cifar.sample(pretrained=FOLDERS['google'], num_samples=3, batch_size=2, sampler='ddim',
                   steps=4, out=out)
  images = np.load(out + '.npz')['samples']
  assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8 and os.path.exists(out + '.png')
  with pytest.raises(ValueError, match='exactly one of'):
    run_cifar.sample(pretrained=FOLDERS['google'], ckpt='x')


def test_convert_command_both_ways(tmp_path, run_dir):
  from scripts import convert_diffusers
  d, shadows = run_dir
  convert_diffusers.to_diffusers(d, str(tmp_path / 'hub'), pipeline='pndm')
  index = json.load(open(tmp_path / 'hub' / 'model_index.json'))
  assert index['scheduler'] == ['diffusers', 'PNDMScheduler']
  convert_diffusers.to_tf1(str(tmp_path / 'hub'), str(tmp_path / 'tf1'))
  reader = tf.train.load_checkpoint(str(tmp_path / 'tf1' / 'model.ckpt-0'))
  for s, v in zip(shadows, pipelines.load_pretrained(d)[0].trainable_variables):
    np.testing.assert_array_equal(reader.get_tensor(checkpoints.ema_name(unet.tf1_name(v))), s.numpy())
  with pytest.raises(FileExistsError):
    convert_diffusers.to_tf1(str(tmp_path / 'hub'), str(tmp_path / 'tf1'))


def test_evaluation_reads_a_pretrained_model_as_a_run(tmp_path):
  """`evaluation --pretrained` writes the model as model.ckpt-0 under --model_dir (EMA names),
  reuses it for the same model and refuses a folder holding anything else."""
  d = str(tmp_path / 'eval')
  assert runners._pretrained_run_dir(FOLDERS['google'], d) == d
  net, _ = pipelines.load_diffusers_folder(FOLDERS['google'])
  reader = tf.train.load_checkpoint(os.path.join(d, 'model.ckpt-0'))
  for v in net.trainable_variables:
    np.testing.assert_array_equal(reader.get_tensor(checkpoints.ema_name(unet.tf1_name(v))), v.numpy())
  assert runners._pretrained_run_dir(FOLDERS['google'], d) == d  # reused
  with pytest.raises(FileExistsError, match='another pretrained model'):
    runners._pretrained_run_dir(FOLDERS['uncond'], d)
  model = runners._pretrained_for(FOLDERS['google'], (8, 8, 3))
  assert model.image_shape == (8, 8, 3) and model.diffusion.model_var_type == 'fixedlarge'
  with pytest.raises(ValueError, match='evaluate it with the script of its data set'):
    runners._pretrained_for(FOLDERS['google'], (32, 32, 3))


# ----------------------------------------------------------------------------- swapping samplers

def test_a_pipeline_with_dpmsolver_gives_the_scripts_samples():
  """``DDPMPipeline.from_pretrained(folder, scheduler='dpmsolver++')`` (or a
  DPMSolverMultistepScheduler config) is the scripts' ``--sampler dpmsolver++ --steps 20`` for
  the same x_T; a pipeline called with ``seed=batch_seed(seed, i)`` gives generate_samples'
  batch i (also for the stochastic strided DDPM, whose step noise follows the latents)."""
  from diffusion_tf import sampling
  model = pipelines.pretrained_model(FOLDERS['google'])
  by_name = pipelines.DDPMPipeline.from_pretrained(FOLDERS['google'], scheduler='dpmsolver++')
  config = dict(json.load(open(os.path.join(FOLDERS['google'], 'scheduler_config.json'))),
                _class_name='DPMSolverMultistepScheduler', timestep_spacing='linspace')
  by_config = pipelines.DDPMPipeline.from_pretrained(FOLDERS['google'], scheduler=config)
  assert by_name.scheduler.config == by_config.scheduler.config
  assert by_config.scheduler.config['_class_name'] == 'DPMSolverMultistepScheduler'
  images = lambda x: np.clip(x / 2 + .5, 0., 1.)
  # The same x_T: the latents the scripts' batch 0 draws from its seed.
  cli = sampling.generate_samples(model, 2, 2, sampler='dpmsolver++', steps=20, seed=5, log_fn=None)
  x_T = tf.random.Generator.from_seed(sampling.batch_seed(5, 0)).normal((2, 8, 8, 3))
  for pipe in (by_name, by_config):
    got = pipe(batch_size=2, num_inference_steps=20, latents=x_T, output_type='np', progress=False)
    np.testing.assert_allclose(got.images, images(cli), rtol=0, atol=2e-6)
  # Seeds: batch i of a run seeded 5 is the pipeline's seed batch_seed(5, i).
  for sampler, steps, pipe in (('dpmsolver++', 20, by_name),
                               ('ddpm', 10, pipelines.DDPMPipeline.from_pretrained(FOLDERS['google']))):
    cli = sampling.generate_samples(model, 3, 2, sampler=sampler, steps=steps, seed=5, log_fn=None)
    for i, batch in enumerate((cli[:2], cli[2:])):
      got = pipe(batch_size=len(batch), num_inference_steps=steps, seed=sampling.batch_seed(5, i),
                 output_type='np', progress=False).images
      np.testing.assert_allclose(got, images(batch), rtol=0, atol=2e-6)


class FakeDiffusersScheduler:
  """Duck-types a diffusers scheduler: a ``.config`` mapping without _class_name."""

  def __init__(self, **config):
    self.config = config


def test_scheduler_swaps_and_save_pretrained_writes_it(tmp_path):
  pipe = pipelines.DDPMPipeline.from_pretrained(FOLDERS['google'])
  assert pipe.scheduler.config['_class_name'] == 'DDPMScheduler'
  assert pipe.scheduler.config['variance_type'] == 'fixed_large'
  UniPCMultistepScheduler = type('UniPCMultistepScheduler', (FakeDiffusersScheduler,), {})
  cfg = {k: v for k, v in pipe.scheduler.config.items() if k != '_class_name'}
  pipe.scheduler = UniPCMultistepScheduler(**cfg, solver_order=3)
  assert pipe.scheduler.settings.name == 'unipc' and pipe.scheduler.settings.order == 3
  assert pipe.scheduler.settings.spacing == 'leading'  # the config's, as diffusers' from_config
  assert pipe.num_evaluations(7) == 7
  pipe.scheduler = pipelines.Scheduler.from_config(pipe.scheduler.config, 'PNDMScheduler')
  assert pipe.num_evaluations(10) == 19
  pipe.scheduler = 'ddim'
  out = pipe.save_pretrained(str(tmp_path / 'hub'))
  sched = json.load(open(os.path.join(out, 'scheduler', 'scheduler_config.json')))
  index = json.load(open(os.path.join(out, 'model_index.json')))
  assert sched['_class_name'] == 'DDIMScheduler' and index['scheduler'] == ['diffusers', 'DDIMScheduler']
  assert index['_class_name'] == 'DDPMPipeline'
  again = pipelines.DDPMPipeline.from_pretrained(out)  # its own sampler: DDPM on that schedule
  assert again.scheduler.settings.name == 'ddpm'
  assert pipelines.DDIMPipeline.from_pretrained(out).scheduler_config['set_alpha_to_one']
  with pytest.raises(ValueError, match='--sampler'):
    pipe.scheduler = 'lcm'
  with pytest.raises(ValueError, match='LCMScheduler'):
    pipe.scheduler = dict(cfg, _class_name='LCMScheduler')
  with pytest.raises(ValueError, match='algorithm_type'):
    pipe.scheduler = dict(cfg, _class_name='DPMSolverMultistepScheduler', algorithm_type='dpmsolver')


@pytest.mark.parametrize('name,steps', [('ddpm', 50), ('ddpm', 7), pytest.param('ddpm', 1000, marks=pytest.mark.slow),
                                        ('ddim', 1), pytest.param('ddim', 1000, marks=pytest.mark.slow),
                                        ('pndm', 4), ('pndm', 333)])
def test_every_pipeline_runs_with_any_step_count(name, steps):
  pipe = pipelines.PIPELINES[name].from_pretrained(FOLDERS['google'])
  out = pipe(num_inference_steps=steps, seed=0, output_type='np', progress=False).images
  assert out.shape == (1, 8, 8, 3) and np.isfinite(out).all()


def test_a_new_seed_does_not_trace_again():
  pipe = pipelines.DDIMPipeline.from_pretrained(FOLDERS['google'])
  traces = []
  denoise = pipe._denoise
  pipe._denoise = lambda x, t: traces.append(1) or denoise(x, t)  # Python runs only when tracing
  a = pipe(num_inference_steps=4, seed=1, output_type='np', progress=False).images
  n = len(traces)
  assert n > 0
  b = pipe(num_inference_steps=4, seed=2, output_type='np', progress=False).images
  gen = tf.random.Generator.from_seed(1)
  c = pipe(num_inference_steps=4, generator=gen, output_type='np', progress=False).images
  d = pipe(num_inference_steps=4, seed=1, eta=1., output_type='np', progress=False).images
  assert len(traces) == 2 * n  # only the new eta traced
  np.testing.assert_array_equal(a, c)
  assert np.abs(a - b).max() > 1e-3 and np.abs(a - d).max() > 1e-3
  # The caller's generator advanced as if it had drawn the latents itself.
  ref = tf.random.Generator.from_seed(1)
  ref.normal((1, 8, 8, 3))
  np.testing.assert_array_equal(gen.state.numpy(), ref.state.numpy())


@pytest.mark.slow  # about 15 s: many pipelines built and dropped
def test_pipelines_and_their_loops_are_freed():
  import gc
  import weakref
  from diffusion_tf import diffusers_format as fmt, diffusion_utils_2 as d2
  betas = d2.get_beta_schedule('linear', beta_start=1e-4, beta_end=0.2, num_diffusion_timesteps=10)
  diffusion = d2.GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedlarge',
                                    loss_type='mse')
  refs = []
  for i in range(20):
    net = unet.UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), out_ch=3, resolution=4,
                    in_ch=3, norm_num_groups=4)
    pipe = pipelines.PIPELINES[('ddpm', 'ddim', 'pndm')[i % 3]](net, fmt.scheduler_config(diffusion))
    pipe(num_inference_steps=4, seed=i, output_type='np', progress=False)
    refs += [weakref.ref(pipe), weakref.ref(net)]
    del pipe, net
  gc.collect()
  assert [r for r in refs if r() is not None] == []


@pytest.mark.slow
def test_stochastic_solver_by_name_saves_and_seeds_like_the_scripts(tmp_path):
  """``pipe.scheduler = 'sde-dpmsolver++'`` is DPMSolverMultistepScheduler with that
  algorithm_type (save_pretrained writes it, reading it back picks it); a pipeline called with
  ``seed=batch_seed(seed, i)`` gives generate_samples' batch i, step noise included."""
  from diffusion_tf import sampling
  model = pipelines.pretrained_model(FOLDERS['google'])
  pipe = pipelines.DDPMPipeline.from_pretrained(FOLDERS['google'], scheduler='sde-dpmsolver++')
  out = pipe.save_pretrained(str(tmp_path / 'hub'))
  sched = json.load(open(os.path.join(out, 'scheduler', 'scheduler_config.json')))
  assert sched['_class_name'] == 'DPMSolverMultistepScheduler'
  assert sched['algorithm_type'] == 'sde-dpmsolver++'
  assert pipelines.Scheduler.from_config(sched).settings.name == 'sde-dpmsolver++'
  cli = sampling.generate_samples(model, 2, 2, sampler='sde-dpmsolver++', steps=5, seed=5, log_fn=None)
  got = pipe(batch_size=2, num_inference_steps=5, seed=sampling.batch_seed(5, 0), output_type='np',
             progress=False).images
  np.testing.assert_allclose(got, np.clip(cli / 2 + .5, 0., 1.), rtol=0, atol=2e-6)
def _bf16_ops(concrete):
  """Op types computing in bfloat16 anywhere in a compiled loop (its while body included)."""
  graph = concrete.graph.as_graph_def()
  nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
  return {n.op for n in nodes if n.attr['T'].type == tf.bfloat16.as_datatype_enum}


def test_dtype_runs_the_unet_in_bfloat16_and_the_sampler_in_float32():
  ref = pipelines.DDIMPipeline.from_pretrained(FOLDERS['google'])
  low = pipelines.DDIMPipeline.from_pretrained(FOLDERS['google'], dtype='bfloat16')
  assert (ref.dtype, low.dtype) == (tf.float32, tf.bfloat16)
  assert {v.dtype for v in low.unet.trainable_variables} == {tf.float32}
  a = ref(num_inference_steps=4, seed=0, output_type='np', progress=False).images
  b = low(num_inference_steps=4, seed=0, output_type='np', progress=False).images
  assert b.dtype == np.float32 and np.isfinite(b).all()
  assert 0 < np.abs(a - b).max() < 0.05  # bf16's rounding (~1e-2 relative) and no more
  (loop,) = low._loops.values()
  assert {'Conv2D', 'MatMul'} & _bf16_ops(loop)  # the network's work is bf16 ...
  assert loop.structured_outputs.dtype == tf.float32  # ... the sampler's state float32
  assert not _bf16_ops(next(iter(ref._loops.values())))


def test_dtype_float32_and_changing_it_later():
  ref = pipelines.DDIMPipeline.from_pretrained(FOLDERS['google'])
  pipe = pipelines.DDIMPipeline.from_pretrained(FOLDERS['google'], dtype='float32')
  assert pipelines.DDIMPipeline.from_pretrained(FOLDERS['google'], dtype=tf.bfloat16).dtype == tf.bfloat16
  run = lambda p: p(num_inference_steps=4, seed=0, output_type='np', progress=False).images
  np.testing.assert_array_equal(run(pipe), run(ref))
  pipe.unet.set_compute_dtype(np.float16)  # the next call traces a loop for the new dtype
  assert pipe.dtype == tf.float16 and np.abs(run(pipe) - run(ref)).max() > 0
  with pytest.raises(ValueError, match='compute_dtype must be one of'):
    pipelines.DDIMPipeline.from_pretrained(FOLDERS['google'], dtype='int8')


def test_mixed_precision_overrides_a_runs_own(run_dir, monkeypatch):
  d, _ = run_dir
  with open(os.path.join(d, 'kwargs.json'), 'w') as f:
    json.dump(dict(KW, mixed_precision='bfloat16'), f)
  assert pipelines.DDPMPipeline.from_pretrained(d).dtype == tf.bfloat16  # as trained
  assert pipelines.DDPMPipeline.from_pretrained(d, dtype='float32').dtype == tf.float32


@pytest.mark.slow
def test_sample_command_with_pretrained_in_bfloat16(tmp_path):
  from scripts import run_cifar
  kw = dict(pretrained=FOLDERS['google'], num_samples=2, batch_size=2, sampler='ddim', steps=4)
  run_cifar.sample(out=str(tmp_path / 'fp32'), **kw)
  run_cifar.sample(out=str(tmp_path / 'bf16'), mixed_precision='bfloat16', **kw)
  a, b = (np.load(str(tmp_path / f'{n}.npz'))['samples'].astype(int) for n in ('fp32', 'bf16'))
  # bf16's rounding moves a few pixels of this random fixture net's images by up to ~16 levels.
  assert 0 < np.abs(a - b).mean() < 2
