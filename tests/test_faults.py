"""Fault injection: bad flags, damaged files and failing writes, as users meet them.

Bad flag values must be refused before anything is written (exit 2, the flag named, no
traceback); a damaged checkpoint, sample shard or statistics file is set aside and replaced by
an intact one or redone; a write that fails midway loses nothing already written. The scripts
run in-process through `cli.main` (a few in subprocesses, for the exit status and stderr).
"""

import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.lib.io import file_io

from diffusion_tf import cli, errors, integrity, runners, startup, validation
from diffusion_tf.tpu_utils import datasets

from diffusion_tf.metrics import eval_worker, inception, reference_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ('run_digits', 'run_cifar', 'run_celebahq', 'run_lsun')
COMMANDS = ('train', 'sample', 'evaluation', 'simple_eval', 'export')


def _commands(script):
  module = importlib.import_module(f'scripts.{script}')
  return {name: getattr(module, name) for name in COMMANDS if hasattr(module, name)}


def _run(script, argv):
  """Runs a script command in-process; returns its exit status."""
  try:
    cli.main(_commands(script), [str(a) for a in argv])
  except SystemExit as e:
    return e.code
  return 0


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, n), root)
                for d, dirs, files in os.walk(root) for n in dirs + files)


# ----------------------------------------------------------------------------- bad flags

def test_every_flag_of_every_command_has_a_rule():
  from scripts import convert_diffusers
  for script in SCRIPTS:
    for name, fn in _commands(script).items():
      assert validation.unchecked_flags(fn) == [], f'{script} {name}'
  for fn in (convert_diffusers.to_diffusers, convert_diffusers.to_tf1):
    assert validation.unchecked_flags(fn) == [], f'convert_diffusers {fn.__name__}'


def test_sampler_options_checked_against_the_sampler(tmp_path):
  """--order and --spacing are refused for a sampler that cannot take them, and a diffusers
  placement is accepted for the diffusers samplers, before anything is read or written."""
  from scripts import run_digits
  for options, message in [(dict(sampler='ddim', order=2), '--order applies to'),
                           (dict(sampler='unipc', spacing='quad'), '--spacing for --sampler unipc'),
                           (dict(sampler='ddpm', spacing='trailing'), '--spacing for --sampler ddpm')]:
    with pytest.raises(errors.FlagError, match=message):
      validation.check_call(run_digits.sample, (), dict(model_dir=str(tmp_path), **options))
  validation.check_call(run_digits.sample, (), dict(model_dir=str(tmp_path), sampler='unipc',
                                                    spacing='trailing', order=3))
  assert _files(tmp_path) == []


_TRAIN_DIGITS = [
    # the twelve of issue 16
    ('--total_bs', '0'), ('--total_bs', '-8'), ('--lr', '-1'), ('--warmup', '-5'),
    ('--beta_schedule', 'cosine'), ('--model_mean_type', 'v'), ('--model_var_type', 'big'),
    ('--loss_type', 'l1'), ('--mixed_precision', 'fp8'), ('--optimizer', 'sgd'),
    ('--max_steps', '0'), ('--resolution', '7'),
    # and more
    ('--total_bs', '1.5'), ('--lr', 'fast'), ('--grad_clip', '0'), ('--dropout', '1.5'),
    ('--ema_decay', '1.0'), ('--num_diffusion_timesteps', '0'), ('--beta_start', '0.5'),
    ('--beta_end', '2'), ('--lr_schedule', 'exponential'), ('--clip_mode', 'local'),
    ('--channels', '2'), ('--block_size', '0'), ('--block_size', '3'), ('--resolution', '4'),
    ('--dataset', 'mnist'), ('--model_name', 'unet9'), ('--keep_checkpoint_max', '0'),
    ('--save_every_steps', '0'), ('--save_checkpoints_secs', '-1'), ('--seed', '-1'),
    ('--num_sample_images', '-1'), ('--randflip', '2'), ('--exp_name', ''),
    ('--hf_streaming', '2'), ('--image_column', ''), ('--hf_split', ''),
]
_SAMPLE = [('--num_samples', '0'), ('--batch_size', '-1'), ('--sampler', 'lcm'),
           ('--steps', '0'), ('--eta', '-1'), ('--spacing', 'log'), ('--mixed_precision', 'fp8'),
           ('--seed', 'x')]
_EVALUATION = [('--total_bs', '0'), ('--num_inception_samples', '1'), ('--sampler', 'lcm'),
               ('--steps', '0'), ('--spacing', 'log'), ('--eta', '-0.5')]

BAD_FLAGS = (
    [('run_digits', 'train', flag, value) for flag, value in _TRAIN_DIGITS]
    + [('run_cifar', 'train', flag, value) for flag, value in (
        ('--beta_schedule', 'cosine'), ('--total_bs', '0'), ('--resolution', '30'),
        ('--mixed_precision', 'fp8'), ('--loss_type', 'noisepred'), ('--resolution', '64'))]
    + [('run_cifar', 'train', '--folder', ('--dataset', 'folder'))]
    + [('run_celebahq', 'train', flag, value) for flag, value in (
        ('--loss_type', 'mse'), ('--lr', '0'), ('--randflip', '2'))]
    + [('run_lsun', 'train', flag, value) for flag, value in (
        ('--loss_type', 'kl'), ('--warmup', '-1'), ('--tfr_file', 'None'))]
    + [(script, 'sample', flag, value) for script in SCRIPTS for flag, value in _SAMPLE]
    + [(script, 'sample', '--model_dir', ('--model_dir', 'None'))
       for script in ('run_digits', 'run_cifar')]
    + [(script, 'evaluation', flag, value) for script in SCRIPTS for flag, value in _EVALUATION]
    + [('run_cifar', 'simple_eval', flag, value) for flag, value in (
        ('--mode', 'fid'), ('--total_bs', '0'), ('--max_batches', '0'))]
    + [(script, 'export', flag, value) for script in SCRIPTS for flag, value in (
        ('--format', 'coreml'), ('--quantize', 'int4'), ('--sampler', 'lcm'))]
)


@pytest.mark.parametrize('script,command,flag,value', BAD_FLAGS)
def test_bad_flag_is_refused_before_anything_is_written(script, command, flag, value, tmp_path,
                                                        capsys):
  run = tmp_path / 'run'
  bad = list(value) if isinstance(value, tuple) else [flag, value]
  defaults = {'train': {'--log_dir': tmp_path / 'logs'}, 'sample': {'--model_dir': run}}.get(
      command, {})
  if command == 'train' and script in ('run_cifar', 'run_celebahq'):
    defaults['--tfds_data_dir'] = tmp_path / 'tfds'
  if command == 'train' and script == 'run_lsun':
    defaults['--tfr_file'] = tmp_path / 'x.tfrecords'
  args = [a for k, v in defaults.items() if k not in bad for a in (k, v)]
  if command in ('evaluation', 'simple_eval'):
    args = [run]
  status = _run(script, [command, *args, *bad])
  err = capsys.readouterr().err
  assert status == 2, err
  message = err.strip().splitlines()[-1]
  assert message.startswith('error: ') and flag in message, err
  assert 'Traceback' not in err
  assert _files(tmp_path) == []


def test_allowed_values_are_listed_in_the_message(tmp_path, capsys):
  assert _run('run_digits', ['train', '--log_dir', tmp_path, '--beta_schedule', 'cosine']) == 2
  err = capsys.readouterr().err
  assert 'quad, linear, warmup10, warmup50, const, jsd' in err


def test_errors_of_ours_keep_their_traceback():
  def broken():
    raise RuntimeError('a bug')
  with pytest.raises(RuntimeError, match='a bug'):
    cli.main({'broken': broken}, ['broken'])


def test_user_error_exits_2_with_one_line_and_no_traceback(tmp_path):
  proc = subprocess.run([sys.executable, 'scripts/run_digits.py', 'train', '--lr', '-1',
                         '--log_dir', str(tmp_path / 'logs')], cwd=ROOT, text=True,
                        capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'),
                        timeout=900)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == 'error: --lr must be a number > 0; got -1'
  assert not os.listdir(tmp_path)


def test_debug_flag_or_variable_shows_the_traceback(tmp_path, monkeypatch):
  argv = ['train', '--lr', '-1', '--log_dir', tmp_path]
  with pytest.raises(errors.FlagError, match='--lr'):
    _run('run_digits', argv + ['--debug'])
  monkeypatch.setenv(cli.DEBUG_ENV, '1')
  with pytest.raises(errors.FlagError, match='--lr'):
    _run('run_digits', argv)
  assert not os.listdir(tmp_path)


def test_missing_checkpoint_and_fire_usage_errors_exit_2(tmp_path, capsys):
  assert _run('run_cifar', ['sample', '--ckpt', tmp_path / 'gone' / 'model.ckpt-5']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'model.ckpt-5' in err and 'Traceback' not in err, err
  # A misspelt flag is refused before the command runs (Fire alone would train 5000 steps
  # with the defaults and complain afterwards).
  assert _run('run_digits', ['train', '--max_step', 1, '--log_dir', tmp_path]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: train has no flag --max_step; its flags: ') and '--max_steps' in err
  assert _run('run_digits', ['trian']) == 2  # Fire's own usage errors keep their status
  assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------- a small trained run

TRAIN = ['train', '--resolution', 8, '--total_bs', 8, '--warmup', 1, '--max_steps', 2,
         '--num_diffusion_timesteps', 50, '--save_every_steps', 1, '--keep_checkpoint_max', 3,
         '--num_sample_images', 0]
SAMPLE = ['--sampler', 'ddim', '--steps', 2, '--num_samples', 2, '--batch_size', 2]


def _model_dir(log_dir):
  kw = dict(runners.script_defaults(_commands('run_digits')['train']), total_bs=8, warmup=1,
            num_diffusion_timesteps=50)
  return runners.model_dir_of(str(log_dir), runners.experiment_name(kw))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """The log directory of a digits run with model.ckpt-1 and model.ckpt-2.

  Before it trained, its directory held what a refused `--mixed_precision fp8` start used to
  leave: a kwargs.json with other settings and no checkpoint. The corrected command must run."""
  log_dir = tmp_path_factory.mktemp('trained') / 'logs'
  model_dir = _model_dir(log_dir)
  os.makedirs(model_dir)
  kw = dict(runners.script_defaults(_commands('run_digits')['train']), mixed_precision='fp8')
  with open(os.path.join(model_dir, 'kwargs.json'), 'w') as f:
    json.dump(kw, f)
  assert _run('run_digits', [*TRAIN, '--log_dir', log_dir]) == 0
  with open(os.path.join(model_dir, 'kwargs.json')) as f:  # the digits default, resolved
    assert json.load(f)['mixed_precision'] == ('bfloat16' if startup.native_bf16() else None)
  assert [f for f in os.listdir(model_dir) if f.startswith('kwargs.json.') and f.endswith('.bak')]
  return log_dir


@pytest.fixture
def run(trained, tmp_path):
  """A copy of the trained run: (log_dir, model_dir)."""
  log_dir = tmp_path / 'logs'
  shutil.copytree(trained, log_dir)
  return log_dir, _model_dir(log_dir)


def _data(prefix):
  data, = tf.io.gfile.glob(prefix + '.data-*')
  return data


def _truncate(path, fraction=0.5):
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.truncate(int(size * fraction))


def _snapshot(model_dir):
  """{file name: bytes} of the checkpoints and kwargs.json."""
  out = {}
  for name in sorted(os.listdir(model_dir)):
    if name.startswith(('model.ckpt', 'kwargs.json', 'checkpoint')):
      with open(os.path.join(model_dir, name), 'rb') as f:
        out[name] = f.read()
  return out


def test_steps_the_model_cannot_take_are_one_line_errors(run, capsys):
  """--steps beyond the run's diffusion steps is known only once kwargs.json is read: still a
  one-line error, exit 2, nothing written."""
  _, model_dir = run
  before = sorted(os.listdir(model_dir))
  for sampler in ('ddim', 'dpmsolver++'):
    assert _run('run_digits', ['sample', '--model_dir', model_dir, '--sampler', sampler,
                               '--steps', 51, '--num_samples', 2]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: --steps must be') and '50' in err and 'Traceback' not in err, err
  assert sorted(os.listdir(model_dir)) == before


# ----------------------------------------------------------------------------- damaged checkpoints

def test_truncated_latest_checkpoint_is_set_aside_and_sample_uses_the_previous(run, capsys):
  _, model_dir = run
  ckpt1, ckpt2 = (os.path.join(model_dir, f'model.ckpt-{s}') for s in (1, 2))
  data2 = _data(ckpt2)
  with open(data2, 'rb') as f:
    original = f.read()
  _truncate(data2)
  assert _run('run_digits', ['sample', '--model_dir', model_dir, *SAMPLE]) == 0
  out = capsys.readouterr().out
  assert f'checkpoint {ckpt2} is damaged' in out and 'truncated' in out, out
  assert f'using {ckpt1} (step 1) instead of the damaged {ckpt2}' in out
  assert f'Loaded EMA weights from {ckpt1} (step 1)' in out
  assert tf.train.latest_checkpoint(model_dir) == ckpt1  # the state file names the good one
  aside = sorted(f for f in os.listdir(model_dir) if '.damaged-' in f)
  assert [f.split('.damaged-')[0] for f in aside] == sorted(
      [os.path.basename(data2), 'model.ckpt-2.index'])
  with open(os.path.join(model_dir, [f for f in aside if '.data-' in f][0]), 'rb') as f:
    assert f.read() == original[:len(original) // 2]  # kept as it was, not deleted
  assert tf.io.gfile.glob(os.path.join(model_dir, 'samples_ddim2_*_step1.npz'))


def test_train_resumes_from_the_newest_intact_checkpoint(run, capsys):
  log_dir, model_dir = run
  _truncate(_data(os.path.join(model_dir, 'model.ckpt-2')))
  assert _run('run_digits', [*TRAIN, '--log_dir', log_dir, '--max_steps', 3]) == 0
  out = capsys.readouterr().out
  assert 'model.ckpt-2 is damaged' in out
  assert f'Resuming from {os.path.join(model_dir, "model.ckpt-1")} (step 1)' in out, out
  latest = tf.train.latest_checkpoint(model_dir)
  assert latest.endswith('model.ckpt-3')
  assert int(tf.train.load_checkpoint(latest).get_tensor('global_step')) == 3


def test_explicitly_requested_damaged_checkpoint_is_an_error(run, capsys):
  _, model_dir = run
  ckpt2 = os.path.join(model_dir, 'model.ckpt-2')
  _truncate(_data(ckpt2))
  before = _snapshot(model_dir)
  assert _run('run_digits', ['sample', '--ckpt', ckpt2, *SAMPLE]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: --ckpt {ckpt2}: the checkpoint is damaged') and 'Traceback' not in err
  assert _snapshot(model_dir) == before  # asked for by name: reported, not moved


def test_missing_index_falls_back_to_the_previous_checkpoint(run, capsys):
  _, model_dir = run
  os.remove(os.path.join(model_dir, 'model.ckpt-2.index'))
  assert _run('run_digits', ['sample', '--model_dir', model_dir, *SAMPLE]) == 0
  assert 'index file' in capsys.readouterr().out
  assert tf.train.latest_checkpoint(model_dir).endswith('model.ckpt-1')


def test_garbage_checkpoint_state_file_is_rewritten(run, capsys):
  _, model_dir = run
  with open(os.path.join(model_dir, 'checkpoint'), 'w') as f:
    f.write('model_checkpoint_path: {{{ not a checkpoint state')
  assert _run('run_digits', ['sample', '--model_dir', model_dir, *SAMPLE]) == 0
  assert 'checkpoint is unreadable' in capsys.readouterr().out
  state = tf.train.get_checkpoint_state(model_dir)
  assert state.model_checkpoint_path.endswith('model.ckpt-2')
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
      'model.ckpt-1', 'model.ckpt-2']


def test_a_flipped_byte_is_found_by_the_crc(run):
  _, model_dir = run
  prefix = os.path.join(model_dir, 'model.ckpt-2')
  assert integrity.checkpoint_damage(prefix) is None
  data = _data(prefix)
  with open(data, 'r+b') as f:
    f.seek(os.path.getsize(data) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
  assert 'unreadable' in integrity.checkpoint_damage(prefix)


def test_invalid_kwargs_json_is_reported_and_kept(run, capsys):
  log_dir, model_dir = run
  path = os.path.join(model_dir, 'kwargs.json')
  with open(path, 'w') as f:
    f.write('{"lr": 0.001, ')
  before = _snapshot(model_dir)
  for argv in ([*TRAIN, '--log_dir', log_dir, '--max_steps', 3],
               ['sample', '--model_dir', model_dir, *SAMPLE]):
    assert _run('run_digits', argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {path} is not valid JSON') and 'Traceback' not in err, err
  assert _snapshot(model_dir) == before


# ----------------------------------------------------------------------------- failing writes

def test_unwritable_log_directory(tmp_path, capsys):
  locked = tmp_path / 'locked'
  locked.mkdir()
  # Root ignores permission bits; the immutable attribute stops root too.
  if subprocess.run(['chattr', '+i', str(locked)], capture_output=True).returncode:
    os.chmod(locked, 0o500)
    if os.access(locked, os.W_OK):
      pytest.skip('cannot make a directory unwritable here')
  try:
    assert _run('run_digits', [*TRAIN, '--log_dir', locked / 'logs']) == 2
  finally:
    subprocess.run(['chattr', '-i', str(locked)], capture_output=True)
    os.chmod(locked, 0o700)
  err = capsys.readouterr().err
  assert err.startswith('error: ') and str(locked / 'logs') in err and 'Traceback' not in err, err
  assert not os.listdir(locked)


def test_kwargs_json_write_failing_midway_keeps_the_previous_one(run, monkeypatch):
  log_dir, model_dir = run
  before = _snapshot(model_dir)
  real_gfile = tf.io.gfile.GFile

  class DiskFullMidway(real_gfile):
    def write(self, data):
      if os.path.basename(self.name).startswith('kwargs.json.tmp-'):
        super().write(data[:len(data) // 2])
        raise OSError(28, 'No space left on device')
      return super().write(data)

  monkeypatch.setattr(tf.io.gfile, 'GFile', DiskFullMidway)
  with pytest.raises(OSError, match='No space left'):
    _run('run_digits', [*TRAIN, '--log_dir', log_dir, '--max_steps', 3, '--grad_clip', 0.5,
                        '--allow_kwargs_mismatch'])  # a new setting of the same run
  monkeypatch.undo()
  after = _snapshot(model_dir)
  assert {k: after[k] for k in before} == before  # kwargs.json and the checkpoints as they were
  assert [k for k in after if k.endswith('.bak')]  # the write got as far as kwargs.json
  assert all(k.endswith('.bak') for k in set(after) - set(before))  # no partial or temporary file


def test_checkpoint_state_write_failing_keeps_the_previous_checkpoint(run, monkeypatch, capsys):
  log_dir, model_dir = run
  before = {k: v for k, v in _snapshot(model_dir).items() if not k.startswith('kwargs.json')}
  real_rename = file_io.rename

  def failing_rename(src, dst, overwrite=False):
    if os.path.basename(dst) == 'checkpoint':
      raise OSError(28, 'No space left on device')
    return real_rename(src, dst, overwrite)

  monkeypatch.setattr(file_io, 'rename', failing_rename)
  with pytest.raises(OSError, match='No space left'):
    _run('run_digits', [*TRAIN, '--log_dir', log_dir, '--max_steps', 3])
  monkeypatch.undo()
  after = _snapshot(model_dir)
  assert {k: after[k] for k in before} == before  # ckpt-1, ckpt-2 and the state file
  # The next run resumes from the previous checkpoint (model.ckpt-3, written but never
  # registered, is overwritten when step 3 is saved again).
  assert integrity.newest_intact_checkpoint(model_dir) == os.path.join(model_dir, 'model.ckpt-2')


# ----------------------------------------------------------------------------- damaged .npz files

def test_truncated_sample_shard_is_set_aside_and_redone(run, capsys):
  _, model_dir = run
  kw = runners.read_run_kwargs(model_dir)
  ds = datasets.DigitsDataset(resolution=8, channels=1)
  worker = eval_worker.EvalWorker(lambda: runners.make_model(kw, ds.image_shape), 2, ds,
                                  num_inception_samples=4, sampler='ddim', steps=2)
  samples_dir = os.path.join(model_dir, 'dump')
  run_dump = lambda: worker.run(model_dir, dump_samples_only=True, load_ckpt='model.ckpt-2',
                                samples_dir=samples_dir)
  first, second = run_dump()[os.path.join(model_dir, 'model.ckpt-2')]
  whole = np.load(second)['samples']
  _truncate(second)
  kept_mtime = os.stat(first).st_mtime_ns
  run_dump()
  assert 'sample shard' in capsys.readouterr().out
  assert os.stat(first).st_mtime_ns == kept_mtime  # the intact shard is kept
  np.testing.assert_array_equal(np.load(second)['samples'], whole)  # redone, same noise seed
  assert [f.split('.damaged-')[0] for f in os.listdir(samples_dir) if '.damaged-' in f] == [
      os.path.basename(second)]


def test_truncated_reference_stats_are_set_aside_and_recomputed(tmp_path):
  images = np.random.RandomState(0).randint(0, 256, (12, 16, 16, 3)).astype(np.float32)
  extractor = inception.make_random_projection_extractor()
  kw = dict(dataset='d', split='train', resolution=16, count=12, batch_size=6,
            cache_dir=str(tmp_path))
  stats = reference_stats.get_or_compute_reference_stats(images, extractor, **kw)
  path, = tf.io.gfile.glob(str(tmp_path / '*.npz'))
  _truncate(path, 0.7)
  again = reference_stats.get_or_compute_reference_stats(images, extractor, **kw)
  np.testing.assert_array_equal(again['mu'], stats['mu'])
  assert reference_stats.load_stats(path)['count'] == 12
  assert len([f for f in os.listdir(tmp_path) if '.damaged-' in f]) == 1


@pytest.mark.slow
@pytest.mark.parametrize('unit', ['AMX', None])
def test_digits_training_chooses_bf16_on_a_native_bf16_cpu_and_a_resume_keeps_it(
    tmp_path, monkeypatch, capsys, unit):
  """--mixed_precision auto (the digits default): bfloat16 where the CPU has a bf16 unit,
  float32 elsewhere, recorded in kwargs.json; a resume keeps the record whatever this CPU
  has, and --mixed_precision overrides it for a new run."""
  log_dir = tmp_path / 'logs'
  monkeypatch.setattr(startup, 'native_bf16', lambda: unit)
  assert _run('run_digits', [*TRAIN, '--max_steps', 1, '--log_dir', log_dir]) == 0
  chosen = 'bfloat16' if unit else None
  kwargs_path = os.path.join(_model_dir(log_dir), 'kwargs.json')
  with open(kwargs_path) as f:
    assert json.load(f)['mixed_precision'] == chosen
  said = 'Mixed precision: bfloat16 (this CPU has AMX' in capsys.readouterr().out
  assert said == bool(unit)
  monkeypatch.setattr(startup, 'native_bf16', lambda: 'AMX' if not unit else None)  # another CPU
  assert _run('run_digits', [*TRAIN, '--log_dir', log_dir]) == 0  # resumes to step 2
  assert tf.train.latest_checkpoint(_model_dir(log_dir)).endswith('model.ckpt-2')
  with open(kwargs_path) as f:
    assert json.load(f)['mixed_precision'] == chosen
  other = tmp_path / 'other'
  assert _run('run_digits', [*TRAIN, '--max_steps', 1, '--log_dir', other,
                             '--mixed_precision', 'none']) == 0
  with open(os.path.join(_model_dir(other), 'kwargs.json')) as f:
    assert json.load(f)['mixed_precision'] == 'none'


def test_auto_precision_of_a_new_run_and_of_a_resumed_one(tmp_path, monkeypatch):
  """A new run: bf16 on a CPU with a bf16 unit (not on a TPU); a run with a checkpoint: its
  record, and float32 for one recorded before --mixed_precision existed."""
  run = str(tmp_path / 'run')
  for unit, tpu, chosen in (('AMX', None, 'bfloat16'), (None, None, None), ('AMX', 'tpu', None)):
    monkeypatch.setattr(startup, 'native_bf16', lambda: unit)
    assert runners._auto_precision(run, tpu) == chosen
  os.makedirs(run)
  open(os.path.join(run, 'model.ckpt-5.index'), 'w').close()
  for record, unit, kept in (({'mixed_precision': None}, 'AMX', None), ({}, 'AMX', None),
                             ({'mixed_precision': 'bfloat16'}, None, 'bfloat16')):
    with open(os.path.join(run, 'kwargs.json'), 'w') as f:
      json.dump(record, f)
    monkeypatch.setattr(startup, 'native_bf16', lambda: unit)
    assert runners._auto_precision(run, None) == kept
