"""The ``export`` command and `Pipeline.export`: SavedModels that plain TensorFlow loads in a
process where diffusion_tf cannot be imported, giving our sampler's images; LiteRT and ONNX
denoisers and samplers equal to TensorFlow's; the refusals before anything is written.

Exports trace the whole sampler and take a minute each on a shared 2-core CPU: slow tier."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from diffusion_tf import cli, export, loading, pipelines, sampling, utils
from diffusion_tf.models import unet

FIXTURES = Path(__file__).parent / 'fixtures'
GOOGLE = str(FIXTURES / 'diffusers' / 'google')
SEEDS = np.array([11, 12, 13], np.int64)


def _legacy():
  spec = importlib.util.spec_from_file_location('make_legacy_runs', FIXTURES / 'make_legacy_runs.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


LEGACY = _legacy()


# ----------------------------------------------------------------------------- refusals (fast)

def _run(script, argv, capsys):
  module = importlib.import_module(f'scripts.{script}')
  with pytest.raises(SystemExit) as e:
    cli.main({'export': module.export}, ['export'] + argv)
  assert e.value.code == cli.USER_ERROR_STATUS
  return capsys.readouterr().err


@pytest.mark.parametrize('argv, message', [
    (['--format', 'coreml'], '--format must be one of saved_model, tflite, onnx'),
    (['--quantize', 'int4'], '--quantize must be one of none, fp16, dynamic'),
    (['--quantize', 'fp16'], '--quantize fp16 applies to --format tflite'),
    (['--format', 'onnx', '--quantize', 'dynamic'], '--quantize dynamic applies to --format tflite'),
    (['--sampler', 'lcm'], '--sampler must be one of'),
    (['--sampler', 'ddim', '--order', '2'], '--order applies to'),
])
def test_refusals_name_the_flag_and_write_nothing(argv, message, tmp_path, capsys):
  out = tmp_path / 'out'
  err = _run('run_cifar', ['--pretrained', GOOGLE, '--out', str(out)] + argv, capsys)
  assert message in err and not out.exists()
  assert os.listdir(tmp_path) == []


def test_an_existing_output_needs_overwrite(tmp_path, capsys):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  err = _run('run_cifar', ['--pretrained', GOOGLE, '--out', str(out)], capsys)
  assert 'exists; pass another --out or --overwrite' in err
  assert os.listdir(out) == ['keep.txt'] and sorted(os.listdir(tmp_path)) == ['out']
  with pytest.raises(FileExistsError):
    pipelines.DDPMPipeline.from_pretrained(GOOGLE).export(str(out))


def test_a_graph_with_our_custom_kernels_is_refused():
  from diffusion_tf import nn
  if nn.fused_kernels_lib() is None:
    pytest.skip('the fused CPU kernels are not available here')
  g = nn.GroupNorm(32, name='gn')
  fn = tf.function(lambda x: g(x, swish=True)).get_concrete_function(tf.TensorSpec([1, 4, 4, 32]))
  with pytest.raises(export.ExportError, match='stock TensorFlow cannot load: .*GroupNorm'):
    export.check_stock_ops({'denoise': fn})


def test_seeded_noise_is_a_function_of_the_seed_and_step():
  a, b = export.seeded_noise(tf.constant(3, tf.int64)), export.seeded_noise(tf.constant(4, tf.int64))
  np.testing.assert_array_equal(a([2, 3]), a([2, 3]))
  assert not np.array_equal(a([2, 3]), b([2, 3]))


# ----------------------------------------------------------------------------- SavedModel (slow)

LOADER = r'''
import json, sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == 'diffusion_tf' or name.startswith('diffusion_tf.'):
            raise ImportError('diffusion_tf is not importable in this process')
sys.meta_path.insert(0, Blocker())
try:
    import diffusion_tf  # noqa
    raise SystemExit('diffusion_tf was importable')
except ImportError:
    pass
import numpy as np, tensorflow as tf
folder, inputs, outputs = sys.argv[1:4]
sig = tf.saved_model.load(folder).signatures
z = dict(np.load(inputs))
seed = tf.constant(z['seed'])
config = json.load(open(folder + '/assets/diffusion_tf_export.json'))
res = {
    'from_noise': sig['from_noise'](x_T=tf.constant(z['x_T']), seed=seed)['images'].numpy(),
    'serve': sig['serving_default'](seed=seed)['images'].numpy(),
    'serve_again': sig['serving_default'](seed=seed)['images'].numpy(),
    'serve_other_batch': sig['serving_default'](seed=tf.constant(z['seed'][::-1][:2]))['images'].numpy(),
    'denoised': sig['denoise'](x=tf.constant(z['x_T']), t=tf.constant(z['t']))[config['network_output']].numpy(),
}
np.savez(outputs, **res)
print(json.dumps(config))
'''


def _load_elsewhere(folder, tmp_path, x_T, t):
  """The SavedModel's outputs computed by a plain-TensorFlow process that cannot import us."""
  inputs, outputs = tmp_path / 'inputs.npz', tmp_path / 'outputs.npz'
  np.savez(inputs, x_T=x_T, seed=SEEDS, t=t)
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir(exist_ok=True)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run([sys.executable, '-I', '-c', LOADER, str(folder), str(inputs), str(outputs)],
                        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = json.loads(proc.stdout.strip().splitlines()[-1])
  return dict(np.load(outputs)), config


def _check(folder, model, settings, tmp_path):
  H, W, C = model.image_shape
  x_T = tf.random.stateless_normal([len(SEEDS), H, W, C], [5, 6]).numpy()
  t = np.array([0., 17., settings.num_timesteps - 1], np.float32)
  got, config = _load_elsewhere(folder, tmp_path, x_T, t)
  assert config['sampler'] == settings.describe() and config['image_shape'] == [H, W, C]
  # from_noise: our in-process sampler (with our CPU kernels), one image per seed as the graph.
  ref = np.concatenate([utils.to_uint8(settings.loop(
      model.diffusion, model.denoise, shape=(1, H, W, C), x_T=x_T[i:i + 1],
      noise_fn=export.seeded_noise(tf.constant(s)))) for i, s in enumerate(SEEDS)])
  diff = np.abs(got['from_noise'].astype(int) - ref)
  assert got['from_noise'].dtype == np.uint8 and diff.max() <= 1 and (diff > 0).mean() < 0.02
  # serving_default: deterministic, image i from seed i alone (any batch, any order).
  np.testing.assert_array_equal(got['serve'], got['serve_again'])
  np.testing.assert_array_equal(got['serve_other_batch'], got['serve'][::-1][:2])
  assert not np.array_equal(got['serve'][0], got['serve'][1])
  # denoise: the network, to float32 rounding, at float t.
  eps = model.denoise(tf.constant(x_T), tf.constant(t.astype(np.int32)))[..., :C]
  np.testing.assert_allclose(got['denoised'], eps, rtol=0, atol=2e-5 * float(np.abs(eps).max()) + 1e-6)
  return got


@pytest.fixture
def legacy_run(tmp_path, monkeypatch):
  """A copy of a tiny trained run of tests/fixtures/legacy_runs: (its folder, the script)."""
  def make(name):
    script, flags = LEGACY.RUNS[name]
    monkeypatch.setitem(unet.MODEL_CONFIGS, LEGACY.TINY_NAME, LEGACY.TINY)
    shutil.copytree(Path(LEGACY.HERE) / name, tmp_path / name)
    monkeypatch.chdir(tmp_path / name)
    if flags.get('folder'):
      LEGACY.write_images(flags['folder'])
    (run,) = [str(p) for p in Path('logs', '9999-99-99').iterdir()]
    return run, importlib.import_module(f'scripts.{script}')
  return make


@pytest.mark.slow
@pytest.mark.parametrize('name, sampler, steps', [('digits', 'ddpm', 4),
                                                  ('celebahq_folder', 'ddim', 4)])
def test_saved_model_of_a_run_samples_without_diffusion_tf(legacy_run, name, sampler, steps,
                                                           tmp_path, capsys):
  run, script = legacy_run(name)
  out = tmp_path / 'exported'
  script.export(model_dir=run, sampler=sampler, steps=steps, out=str(out))
  summary = capsys.readouterr().out.strip().splitlines()[-1]
  assert summary.startswith(f'Exported {sampler} with {steps} of 1000 steps') and str(out) in summary
  recipe = script.export._recipe
  model = loading.load_for_sampling(recipe, model_dir=run)[0]
  settings = sampling.SamplerSettings.resolve(sampler, 1000, steps=steps)
  _check(out, model, settings, tmp_path)
  assert json.loads((out / 'assets' / export.CONFIG_ASSET).read_text())['recipe']['data'][
      'resolution'] == 8


@pytest.mark.slow
def test_saved_model_of_a_diffusers_folder_from_the_pipeline(tmp_path):
  pipe = pipelines.DDPMPipeline.from_pretrained(GOOGLE)
  out = pipe.export(str(tmp_path / 'exported'), scheduler='dpmsolver++', num_inference_steps=4)
  model = loading.pretrained_model(GOOGLE)
  settings = pipelines.DDPMPipeline(pipe.unet, pipe._raw_scheduler_config,
                                    scheduler='dpmsolver++')._settings(4, {})
  got = _check(out, model, settings, tmp_path)
  # An ODE sampler: the in-process batched sampler gives the same images from the same x_T.
  x_T = tf.random.stateless_normal([len(SEEDS), *model.image_shape], [5, 6])
  batched = utils.to_uint8(settings.loop(model.diffusion, model.denoise, shape=tuple(x_T.shape), x_T=x_T))
  assert np.abs(got['from_noise'].astype(int) - batched).max() <= 1


# ----------------------------------------------------------------------------- LiteRT, ONNX (slow)

@pytest.fixture(scope='module')
def google_ddpm():
  model = loading.pretrained_model(GOOGLE)
  settings = sampling.SamplerSettings.resolve('ddpm', model.diffusion.num_timesteps, steps=4)
  x = tf.random.stateless_normal([2, *model.image_shape], [1, 2]).numpy()
  t = np.array([3., 700.], np.float32)
  noise = tf.random.stateless_normal([settings.num_evaluations, 1, *model.image_shape], [3, 4]).numpy()
  eps = model.denoise(x, t.astype(np.int32)).numpy()
  x_0 = settings.loop(model.diffusion, model.denoise, shape=(1, *model.image_shape), x_T=x[:1],
                      noise_fn=export.replayed_noise(tf.constant(noise))).numpy()
  return model, settings, dict(x=x, t=t, noise=noise, eps=eps, x_0=x_0)


# fp16 weights: the outputs move by about the weights' relative rounding (2^-11) times the
# network's depth; on this model under 1e-2 of eps's scale.
TFLITE_ATOL = {'none': 2e-5, 'fp16': 1e-2}


@pytest.mark.slow
@pytest.mark.parametrize('quantize', ['none', 'fp16'])
def test_tflite_denoiser_and_sampler_equal_tensorflow(google_ddpm, quantize, tmp_path):
  Interpreter = pytest.importorskip('ai_edge_litert.interpreter').Interpreter
  model, settings, ref = google_ddpm
  out = tmp_path / 'lite'
  export.export(model, settings, str(out), format='tflite', quantize=quantize)
  den = Interpreter(model_path=str(out / 'denoiser.tflite'))
  assert den.get_signature_list() == {'serving_default': {'inputs': ['t', 'x'], 'outputs': ['eps']}}
  eps = den.get_signature_runner()(x=ref['x'], t=ref['t'])['eps']
  scale = float(np.abs(ref['eps']).max())
  np.testing.assert_allclose(eps, ref['eps'], rtol=0, atol=TFLITE_ATOL[quantize] * scale)
  sampler = Interpreter(model_path=str(out / 'sampler.tflite')).get_signature_runner()
  x_0 = sampler(x_T=ref['x'][:1], noise=ref['noise'])['x_0']
  np.testing.assert_allclose(x_0, ref['x_0'], rtol=0, atol=1e-4)
  config = json.loads((out / export.CONFIG_ASSET).read_text())
  assert config['quantize'] == quantize and config['sampler_inputs'] == ['x_T', 'noise']


@pytest.mark.slow
def test_onnx_denoiser_and_sampler_equal_tensorflow(google_ddpm, tmp_path):
  ort = pytest.importorskip('onnxruntime')
  pytest.importorskip('tf2onnx')
  model, settings, ref = google_ddpm
  out = tmp_path / 'onnx'
  export.export(model, settings, str(out), format='onnx')
  den = ort.InferenceSession(str(out / 'denoiser.onnx'))
  eps = den.run(['eps'], {'x': ref['x'], 't': ref['t']})[0]
  np.testing.assert_allclose(eps, ref['eps'], rtol=0, atol=2e-5 * float(np.abs(ref['eps']).max()))
  sampler = ort.InferenceSession(str(out / 'sampler.onnx'))
  assert [i.name for i in sampler.get_inputs()] == ['x_T', 'noise']
  x_0 = sampler.run(None, {'x_T': ref['x'][:1], 'noise': ref['noise']})[0]
  np.testing.assert_allclose(x_0, ref['x_0'], rtol=0, atol=1e-4)
