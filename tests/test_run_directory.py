"""The pieces of run_training on their own: `RunDirectory` and `TrainSettings`."""

import json
import os

import pytest

from diffusion_tf.tpu_utils import tpu_utils
from diffusion_tf.tpu_utils.run_directory import RunDirectory
from diffusion_tf.tpu_utils.train_settings import TrainSettings


def test_run_directory_creates_the_directory_and_releases_its_lock_however_the_block_ends(tmp_path):
  path = str(tmp_path / 'd' / 'run')
  lock = os.path.join(path, tpu_utils.LOCK_FILE)
  with pytest.raises(RuntimeError, match='boom'):
    with RunDirectory(path, log_fn=lambda *_: None):
      assert json.load(open(lock))['pid'] == os.getpid()
      raise RuntimeError('boom')
  assert os.path.isdir(path) and not os.path.exists(lock)
  # A non-chief worker takes no lock and records no kwargs.
  with RunDirectory(path, chief=False, log_fn=lambda *_: None) as run_dir:
    run_dir.record_kwargs({'lr': 1.})
    assert not os.path.exists(lock) and not os.path.exists(os.path.join(path, 'kwargs.json'))


def test_run_directory_records_kwargs_and_refuses_a_directory_another_host_trains(tmp_path):
  path = str(tmp_path / 'run')
  with RunDirectory(path, log_fn=lambda *_: None) as run_dir:
    run_dir.record_kwargs({'lr': 1.})
  assert tpu_utils.load_train_kwargs(path) == {'lr': 1.}
  with open(os.path.join(path, tpu_utils.LOCK_FILE), 'w') as f:
    json.dump({'host': 'elsewhere', 'pid': 1}, f)
  with pytest.raises(tpu_utils.RunDirectoryBusyError, match="host 'elsewhere'"):
    with RunDirectory(path, log_fn=lambda *_: None):
      pass
  assert json.load(open(os.path.join(path, tpu_utils.LOCK_FILE)))['host'] == 'elsewhere'


def test_train_settings_check_their_values_and_are_frozen():
  kw = dict(optimizer='adam', lr=1e-3, warmup=10, grad_clip=1., total_bs=8)
  settings = TrainSettings(**kw)
  assert settings.total_steps is None and settings.max_steps == tpu_utils.UNBOUNDED_STEPS
  assert TrainSettings(**kw, max_steps=50).total_steps == 50
  with pytest.raises(ValueError, match='clip_mode'):
    TrainSettings(**kw, clip_mode='local')
  with pytest.raises(ValueError, match='loss_scale'):
    TrainSettings(**kw, loss_scale='static')
  with pytest.raises(ValueError, match='set max_steps'):
    TrainSettings(**kw, lr_schedule='linear')
  with pytest.raises(AttributeError):
    settings.lr = 1.
