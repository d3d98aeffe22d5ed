"""Every command of every script, run as a user runs it (``python scripts/run_*.py CMD``) on
that script's own model, trained here for a few steps at tiny settings.

run_digits: train, then sample and evaluation --once with every sampler in
sampling.SAMPLERS (default digits features). run_cifar / run_celebahq: train on a folder of
images with a small U-Net, then sample, simple_eval, and evaluation up to where it needs the
Inception graph; run_lsun: sample and evaluation of the same v1 model. Each command's output
must hold no fire help page (SYNOPSIS) and no TensorFlow deprecation notice ("Instructions for
updating"), and end with its one summary line (issue 18). Where a command needs data that is
not here (the default CIFAR-10 / CelebA-HQ / LSUN data, the Inception graph), it must fail
with the documented message (tested in-process: no output to inspect).

Also the interop of evaluation: --ref_stats (TTUR / pytorch-fid mu, sigma) and sample dumps
as one arr_0 .npz and as a folder of PNGs.
"""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusion_tf import interop, sampling
from diffusion_tf.tpu_utils import datasets

from diffusion_tf.metrics import digits_features, inception, reference_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny settings shared by every training run here: 8x8 images, 10 diffusion steps, 3 steps.
TINY = ['--resolution', '8', '--num_diffusion_timesteps', '10', '--max_steps', '3',
        '--total_bs', '4']
NUM = 8  # samples per sample / evaluation command

SUMMARY = {
    'train': r'^Trained 3 steps in \d+:\d\d:\d\d; checkpoint \S+model\.ckpt-3; logs \S+$',
    'digits_train': r'^Wrote 4 samples to \S+\.npz and \S+\.png; .*recognisable digits',
    'sample': rf'^Wrote {NUM} samples to \S+\.npz and \S+\.png \(\S+, \d+ network evaluations per sample\)',
    'evaluation': (rf'^FID [\d.]+ \(train\)(, [\d.]+ \(eval\))?, IS [\d.]+ of {NUM} samples of '
                   r'\S+ \(EMA weights, \S+\) in \S+; wrote \S+\.json and \S+\.png$'),
    'simple_eval': r'^bpd_train done in \d+ s; wrote \S+\.npz$',
}


def _env(tmp):
  env = dict(os.environ)
  # No Inception graph anywhere (and no download attempt): the documented failure.
  env[inception.ENV_GRAPH] = os.path.join(tmp, 'no_inception', 'inceptionv1_for_inception_score.pb')
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  return env


def run_script(script, *args, cwd, summary=None, ok=True):
  """Runs ``python scripts/<script> args`` in ``cwd``; checks what the user reads."""
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', script), *map(str, args)],
                        cwd=cwd, env=_env(str(cwd)), capture_output=True, text=True, timeout=900)
  both = proc.stdout + proc.stderr
  assert (proc.returncode == 0) == ok, f'{script} {args}: exit {proc.returncode}\n{both[-4000:]}'
  assert 'SYNOPSIS' not in both, f'fire printed a help page:\n{proc.stdout[-3000:]}'
  assert 'Instructions for updating' not in both, f'deprecation notice:\n{both[-3000:]}'
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  if summary is not None:
    assert lines and re.search(SUMMARY[summary], lines[-1]), \
        f'{script} {args} does not end with its {summary} summary line:\n{proc.stdout[-3000:]}'
  return proc


def _run_dir(log_dir):
  (run,) = glob.glob(os.path.join(log_dir, '9999-99-99', '*'))
  return run


@pytest.fixture(scope='module')
def work(tmp_path_factory):
  return tmp_path_factory.mktemp('e2e')


@pytest.fixture(scope='module')
def digits_run(work):
  run_script('run_digits.py', 'train', *TINY, '--log_dir', work / 'logs_digits',
             '--num_sample_images', 4, cwd=work, summary='digits_train')
  return _run_dir(str(work / 'logs_digits'))


@pytest.fixture(scope='module')
def image_folder(work):
  folder = work / 'images'
  folder.mkdir()
  for i, img in enumerate(datasets.load_digits_array(12, 3)[:8]):
    Image.fromarray(img).save(folder / f'{i}.png')
  return folder


def _train_on_folder(script, work, folder):
  log_dir = work / f'logs_{script}'
  # A checkpoint every step, one kept: TF1's Saver deletes two (issue 18: with a
  # deprecation notice of its own internals).
  run_script(script, 'train', '--dataset', 'folder', '--folder', folder, *TINY,
             '--model_name', 'unet_digits', '--log_dir', log_dir, '--save_every_steps', 1,
             '--keep_checkpoint_max', 1, cwd=work, summary='train')
  return _run_dir(str(log_dir))


@pytest.fixture(scope='module')
def cifar_run(work, image_folder):
  return _train_on_folder('run_cifar.py', work, image_folder)


@pytest.fixture(scope='module')
def celebahq_run(work, image_folder):
  return _train_on_folder('run_celebahq.py', work, image_folder)


def _metrics(run_dir):
  (path,) = glob.glob(os.path.join(run_dir, 'eval_once_*', 'metrics_ema_step000000003.json'))
  with open(path) as f:
    return json.load(f), os.path.dirname(path)


# ----------------------------------------------------------------------------- run_digits

@pytest.mark.slow  # trains a run first (the old-run tests of test_recipes cover the fast tier)
def test_digits_sample(digits_run, work):
  out = work / 'digits_sample'
  run_script('run_digits.py', 'sample', '--model_dir', digits_run, '--num_samples', NUM,
             '--batch_size', NUM, '--sampler', 'ddim', '--steps', 5, '--out', out, cwd=work,
             summary='sample')
  with np.load(f'{out}.npz') as z:
    assert z['samples'].shape == (NUM, 8, 8, 1) and z['samples'].dtype == np.uint8


@pytest.mark.parametrize('sampler', sampling.SAMPLERS)
@pytest.mark.slow
def test_digits_evaluation_every_sampler(digits_run, work, sampler):
  # Issue 17's command (at tiny size): it crashed on the grey default model.
  before = set(glob.glob(os.path.join(digits_run, 'eval_once_*')))
  proc = run_script('run_digits.py', 'evaluation', '--model_dir', digits_run, '--once',
                    '--num_inception_samples', NUM, '--total_bs', 4, '--sampler', sampler,
                    '--steps', 5, '--stats_cache_dir', work / 'stats', cwd=work,
                    summary='evaluation')
  assert 'Features: the digits classifier' in proc.stdout
  (new,) = set(glob.glob(os.path.join(digits_run, 'eval_once_*'))) - before
  with open(os.path.join(new, 'metrics_ema_step000000003.json')) as f:
    rec = json.load(f)
  assert rec['eval_config']['sampler'] == sampler and rec['eval_config']['steps'] == 5
  assert rec['eval_config']['extractor'] == digits_features.load_extractor().name
  for k in (f'samples/trainfid{NUM}', f'samples/fid{NUM}', f'samples/inception{NUM}'):
    assert np.isfinite(rec[k]), k
  assert 1 <= rec[f'samples/inception{NUM}'] <= 10  # ten classes
  assert os.path.exists(os.path.join(new, 'samples_ema_step000000003.png'))


# ----------------------------------------------------------------------------- run_cifar

@pytest.mark.slow
def test_cifar_commands(cifar_run, work):
  run_script('run_cifar.py', 'sample', '--model_dir', cifar_run, '--num_samples', NUM,
             '--batch_size', NUM, '--steps', 5, '--out', work / 'cifar_sample', cwd=work,
             summary='sample')
  run_script('run_cifar.py', 'simple_eval', '--model_dir', cifar_run, '--mode', 'bpd_train',
             '--total_bs', 4, '--max_batches', 1, cwd=work, summary='simple_eval')
  proc = run_script('run_cifar.py', 'evaluation', '--model_dir', cifar_run, '--once',
                    '--num_inception_samples', NUM, cwd=work, ok=False)
  _assert_missing_inception(proc)
  assert not glob.glob(os.path.join(cifar_run, 'eval*'))  # failed before any work
  # Resuming (issue 18: TF's deprecated checkpoint-mtime API printed a notice here).
  kw = _load(os.path.join(cifar_run, 'kwargs.json'))
  proc = run_script('run_cifar.py', 'train', '--dataset', 'folder', '--folder', kw['folder'],
                    *TINY[:-4], '--max_steps', 4, '--total_bs', 4, '--model_name', 'unet_digits',
                    '--log_dir', kw['log_dir'], cwd=work)
  last = proc.stdout.strip().splitlines()[-1]
  assert re.search(r'^Trained 1 steps in \S+; checkpoint \S+model\.ckpt-4; logs ', last), last


@pytest.mark.slow
def test_celebahq_and_lsun_commands(celebahq_run, work):
  for script in ('run_celebahq.py', 'run_lsun.py'):  # the same v1 model and defaults
    out = work / f'{script}_sample'
    run_script(script, 'sample', '--ckpt', os.path.join(celebahq_run, 'model.ckpt-3'),
               '--num_samples', NUM, '--batch_size', NUM, '--steps', 5, '--out', out,
               cwd=work, summary='sample')
    assert os.path.exists(f'{out}.png')
  proc = run_script('run_celebahq.py', 'evaluation', '--model_dir', celebahq_run, '--once',
                    cwd=work, ok=False)
  _assert_missing_inception(proc)


def _assert_missing_inception(proc):
  # A user error: one line naming the graph file and where it was looked for, exit 2.
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
  message = proc.stderr.strip().splitlines()[-1]
  assert message.startswith('error: Inception graph') and 'does not exist' in message, message


# -------------------------------------------------- the scripts' defaults without their data

@pytest.mark.parametrize('script,command,message', [
    ('run_cifar', 'train', 'TFDS dataset cifar10'),
    pytest.param('run_cifar', 'simple_eval', 'TFDS dataset cifar10', marks=pytest.mark.slow),
    ('run_celebahq', 'train', 'celeb_a_hq needs manually downloaded data'),
    ('run_lsun', 'train', "Dataset 'lsun': TFRecord file not found"),
])
def test_default_data_missing_is_the_documented_error(script, command, message, tmp_path,
                                                      monkeypatch, request):
  import importlib
  monkeypatch.chdir(tmp_path)  # the default data paths are relative: nothing here
  fn = getattr(importlib.import_module(f'scripts.{script}'), command)
  args = {}
  if command == 'simple_eval':  # the run's own data, but the script's default data set
    cifar_run = request.getfixturevalue('cifar_run')
    with open(os.path.join(cifar_run, 'kwargs.json')) as f:
      kw = json.load(f)
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'kwargs.json').write_text(json.dumps(dict(kw, dataset='cifar10', folder=None,
                                                     resolution=None)))
    args = {'model_dir': str(run)}
  with pytest.raises(datasets.DatasetNotFoundError, match=re.escape(message)):
    fn(**args)
  assert sorted(os.listdir(tmp_path)) == (['run'] if command == 'simple_eval' else [])


# ----------------------------------------------------------------------------- interop

@pytest.mark.slow
def test_sample_exports_arr0_npz_and_pngs(digits_run, work):
  out, npz, pngs = work / 'exp_sample', work / 'exp_sample_arr0.npz', work / 'exp_pngs'
  run_script('run_digits.py', 'sample', '--model_dir', digits_run, '--num_samples', NUM,
             '--batch_size', NUM, '--steps', 5, '--out', out, '--export_npz', npz,
             '--export_png_dir', pngs, cwd=work, summary='sample')
  with np.load(f'{out}.npz') as z:
    samples = z['samples']
  with np.load(npz) as z:
    assert z.files == ['arr_0']
    np.testing.assert_array_equal(z['arr_0'], samples)
  files = sorted(os.listdir(pngs))
  assert files == [f'{i:06d}.png' for i in range(NUM)]
  np.testing.assert_array_equal(np.asarray(Image.open(pngs / files[3])), samples[3, ..., 0])
  # Nothing already written is replaced: the same command fails before sampling.
  from scripts import run_digits
  before = os.path.getmtime(npz)
  with pytest.raises(FileExistsError, match=re.escape(f'--export_npz {npz} exists')):
    run_digits.sample(model_dir=digits_run, num_samples=NUM, out=str(work / 'exp_sample2'),
                      export_npz=str(npz))
  assert os.path.getmtime(npz) == before and not os.path.exists(f'{work}/exp_sample2.npz')


@pytest.mark.slow
def test_evaluation_dump_exports(digits_run, work):
  from scripts import run_digits
  npz, pngs, shards = work / 'dump_arr0.npz', work / 'dump_pngs', work / 'shards'
  run_digits.evaluation(digits_run, once=True, dump_samples_only=True, total_bs=4,
                        num_inception_samples=6, steps=5, samples_dir=str(shards),
                        export_npz=str(npz), export_png_dir=str(pngs))
  dumped = interop.read_sample_shards(sorted(glob.glob(str(shards / '*.npz'))))
  assert dumped.shape == (6, 8, 8, 1)
  with np.load(npz) as z:
    np.testing.assert_array_equal(z['arr_0'], dumped)
  assert len(os.listdir(pngs)) == 6
  with pytest.raises(ValueError, match='--dump_samples_only'):
    run_digits.evaluation(digits_run, once=True, export_npz=str(work / 'x.npz'))


@pytest.mark.slow
def test_evaluation_with_ttur_reference_stats(digits_run, work):
  from scripts import run_digits
  ref = digits_features.real_stats('all')
  path = work / 'fid_stats_digits.npz'
  np.savez(path, mu=ref['mu'], sigma=ref['sigma'])  # TTUR / pytorch-fid layout
  run_digits.evaluation(digits_run, once=True, total_bs=4, num_inception_samples=NUM,
                        sampler='ddim', steps=5, ref_stats=str(path),
                        stats_cache_dir=str(work / 'stats_unused'))
  recs = [r for r in (_load(p) for p in glob.glob(
      os.path.join(digits_run, 'eval_once_*', 'metrics_ema_step000000003.json')))
          if r['eval_config'].get('ref_stats') == str(path)]
  assert len(recs) == 1
  rec = recs[0]
  assert np.isfinite(rec[f'samples/reffid{NUM}']) and f'samples/trainfid{NUM}' not in rec
  assert not os.path.exists(work / 'stats_unused')  # the data set's statistics not computed


def _load(p):
  with open(p) as f:
    return json.load(f)


def test_reference_stats_files(tmp_path):
  good = tmp_path / 'ttur.npz'
  np.savez(good, mu=np.zeros(3), sigma=np.eye(3))
  got = interop.load_reference_stats(str(good))
  assert got['mu'].dtype == np.float64 and got['extractor'] is None
  ours = reference_stats.save_stats(str(tmp_path / 'ours.npz'), dict(
      mu=np.ones(2), sigma=np.eye(2), count=5, inception_score=1., extractor='x'))
  assert interop.load_reference_stats(ours)['extractor'] == 'x'
  bad = tmp_path / 'bad.npz'
  np.savez(bad, m=np.zeros(3))
  with pytest.raises(ValueError, match=re.escape(f'--ref_stats {bad} holds')):
    interop.load_reference_stats(str(bad))
  np.savez(bad, mu=np.zeros(3), sigma=np.eye(2))
  with pytest.raises(ValueError, match='expected \\[D\\] and \\[D, D\\]'):
    interop.load_reference_stats(str(bad))
  with pytest.raises(FileNotFoundError, match='--ref_stats'):
    interop.load_reference_stats(str(tmp_path / 'missing.npz'))


@pytest.mark.slow  # needs the trained digits run
def test_reference_stats_of_another_feature_network_are_refused(digits_run, work):
  from scripts import run_digits
  path = work / 'inception_like.npz'
  np.savez(path, mu=np.zeros(2048), sigma=np.eye(2048))
  with pytest.raises(reference_stats.ReferenceStatsMismatch, match='2048-dimensional'):
    run_digits.evaluation(digits_run, once=True, total_bs=4, num_inception_samples=NUM,
                          steps=5, ref_stats=str(path))
