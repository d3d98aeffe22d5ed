"""`--dataset hf`: a `datasets` data set (Hub id or local folder) in the tf.data pipeline
(`tpu_utils.datasets.HubDataset`, `tpu_utils.hub_images`). Offline: every data set here is
written by the test with the `datasets` library, in each local form it reads."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from diffusion_tf.tpu_utils import datasets

hf = pytest.importorskip('datasets')

NUM = 6


def _png(size, value):
  h, w = size if isinstance(size, tuple) else (size, size)
  pixels = np.zeros((h, w, 3), np.uint8)
  pixels[..., 0] = value  # red carries the image's index: order and content are checkable
  pixels[..., 1] = 255 - value
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, 'PNG')
  return out.getvalue()


def _values(n=NUM):
  return [10 * i + 5 for i in range(n)]


def _dataset(sizes=None, column='image'):
  sizes = sizes or [8] * NUM
  rows = [{'bytes': _png(s, v), 'path': None} for s, v in zip(sizes, _values(len(sizes)))]
  features = hf.Features({column: hf.Image(), 'label': hf.Value('int64')})
  return hf.Dataset.from_dict({column: rows, 'label': list(range(len(rows)))}, features=features)


def write_form(form, root, sizes=None, column='image'):
  """The data set written by `datasets` as ``form``; returns the path to pass."""
  path = str(root / form)
  if form == 'save_to_disk':
    _dataset(sizes, column).save_to_disk(path)
  elif form == 'save_to_disk_dict':
    hf.DatasetDict({'train': _dataset(sizes, column)}).save_to_disk(path)
  elif form == 'parquet':
    os.makedirs(os.path.join(path, 'data'))
    _dataset(sizes, column).to_parquet(os.path.join(path, 'data', 'train-00000-of-00001.parquet'))
  elif form == 'imagefolder':
    os.makedirs(os.path.join(path, 'train'))
    for i, (s, v) in enumerate(zip(sizes or [8] * NUM, _values())):
      with open(os.path.join(path, 'train', f'{i:03d}.png'), 'wb') as f:
        f.write(_png(s, v))
  return path


def _hub(path, tmp_path, **kw):
  return datasets.get_dataset('hf', hf_dataset=path, hf_cache_dir=str(tmp_path / 'cache'), **kw)


FORMS = ('save_to_disk', 'save_to_disk_dict', 'parquet', 'imagefolder')


@pytest.mark.parametrize('form', FORMS)
def test_each_local_form_gives_its_images_in_order(form, tmp_path):
  ds = _hub(write_form(form, tmp_path), tmp_path)
  ds.check_available()
  assert ds.image_shape == (8, 8, 3) and ds.num_train_examples == NUM
  batches = list(ds.train_one_pass_input_fn({'batch_size': 2}).as_numpy_iterator())
  assert len(batches) == NUM // 2
  images = np.concatenate([b['image'] for b in batches])
  assert images.dtype == np.int32 and images.shape == (NUM, 8, 8, 3)
  np.testing.assert_array_equal(images[:, 0, 0, 0], _values())
  np.testing.assert_array_equal(images[:, 3, 5, 1], 255 - np.array(_values()))


def test_train_input_repeats_and_shuffles(tmp_path):
  ds = _hub(write_form('save_to_disk', tmp_path), tmp_path)
  batches = list(ds.train_input_fn({'batch_size': 4}).take(6).as_numpy_iterator())
  seen = np.concatenate([b['image'][:, 0, 0, 0] for b in batches])  # 24 = 4 passes of 6
  for k in range(4):
    assert sorted(seen[6 * k:6 * k + 6]) == _values()  # each pass is a permutation
  assert [list(seen[6 * k:6 * k + 6]) for k in range(4)] != [_values()] * 4


def test_streaming(tmp_path):
  ds = _hub(write_form('parquet', tmp_path), tmp_path, hf_streaming=True)
  ds.check_available()
  images = np.concatenate([b['image'] for b in ds.train_one_pass_input_fn({'batch_size': 3})
                           .as_numpy_iterator()])
  np.testing.assert_array_equal(images[:, 0, 0, 0], _values())
  assert len(list(ds.train_input_fn({'batch_size': 3}).take(5))) == 5  # repeats


def test_resolution_crops_and_resizes_mixed_sizes(tmp_path):
  sizes = [8, (8, 12), 16, (20, 10), 8, 12]
  ds = _hub(write_form('save_to_disk', tmp_path, sizes), tmp_path, resolution=4)
  assert ds.image_shape == (4, 4, 3)
  (batch,) = ds.train_one_pass_input_fn({'batch_size': 6}).as_numpy_iterator()
  assert batch['image'].shape == (6, 4, 4, 3)
  np.testing.assert_array_equal(batch['image'][:, 2, 2, 0], _values())  # constant images


def test_image_column_and_split(tmp_path):
  path = write_form('save_to_disk_dict', tmp_path, column='img')
  ds = _hub(path, tmp_path, image_column='img', hf_split='train')
  assert ds.image_shape == (8, 8, 3)


@pytest.mark.parametrize('kw, error, message', [
    (dict(image_column='picture'), datasets.DatasetContentError,
     "has no column 'picture'; its columns: image, label"),
    (dict(image_column='label'), datasets.DatasetContentError,
     "Column 'label' of data set .* holds Value.*not images"),
    (dict(hf_split='test'), datasets.DatasetNotFoundError, "has no split 'test'; its splits: train"),
])
def test_refusals_of_a_data_set_that_is_there(kw, error, message, tmp_path):
  ds = _hub(write_form('save_to_disk_dict', tmp_path), tmp_path, **kw)
  with pytest.raises(error, match=message):
    ds.check_available()


@pytest.mark.parametrize('sizes, message', [
    ([8, 8, 16, 8, 16, 12], r'images of different sizes \(8x8 \(3\), 16x16 \(2\), 12x12 \(1\)\); '
                            'pass --resolution'),
    ([(8, 12)] * NUM, '8x12 images, not squares; pass --resolution'),
])
def test_sizes_without_resolution_are_refused(sizes, message, tmp_path):
  ds = _hub(write_form('imagefolder', tmp_path, sizes), tmp_path)
  with pytest.raises(datasets.DatasetContentError, match=message):
    ds.check_available()


def test_a_missing_local_folder(tmp_path):
  ds = _hub(str(tmp_path / 'no' / 'such' / 'set'), tmp_path)
  with pytest.raises(datasets.DatasetNotFoundError, match='no such directory'):
    ds.check_available()


def test_a_hub_id_not_cached_offline(tmp_path, monkeypatch):
  import huggingface_hub
  monkeypatch.setattr(hf.config, 'HF_HUB_OFFLINE', True)
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  ds = _hub('nobody-here/no-such-data-set', tmp_path)
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    ds.check_available()
  message = str(e.value)
  assert "'nobody-here/no-such-data-set' is neither a directory here nor in the Hub cache" in message
  assert "load_dataset('nobody-here/no-such-data-set', split='train').save_to_disk('DIR')" in message
  assert '\n' not in message


# ----------------------------------------------------------------------------- the scripts

def _train_argv(tmp_path, *extra):
  return ['train', '--dataset', 'hf', '--log_dir', str(tmp_path / 'logs'), '--max_steps', '2',
          '--total_bs', '2', '--num_diffusion_timesteps', '10', *map(str, extra)]


@pytest.mark.parametrize('form, extra, message', [
    ('save_to_disk', ['--image_column', 'picture'], "has no column 'picture'"),
    ('imagefolder', [], 'images of different sizes'),
    (None, [], 'no such directory'),
    (None, ['--dataset', 'cifar10'], '--hf_dataset does not apply to --dataset cifar10'),
])
def test_the_scripts_refuse_before_making_a_run_directory(form, extra, message, tmp_path,
                                                          capsys):
  from scripts import run_cifar  # no default --resolution (digits' is 16)
  from diffusion_tf import cli
  sizes = [8, 16] * 3 if form == 'imagefolder' else None
  path = write_form(form, tmp_path, sizes) if form else str(tmp_path / 'nowhere' / 'x' / 'y')
  argv = _train_argv(tmp_path, '--hf_dataset', path, '--hf_cache_dir', tmp_path / 'cache', *extra)
  capsys.readouterr()  # the writing's progress bars
  with pytest.raises(SystemExit) as e:
    cli.main({'train': run_cifar.train}, argv)
  assert e.value.code == cli.USER_ERROR_STATUS
  last = capsys.readouterr().err.strip().splitlines()[-1]  # after `datasets`' progress bars
  assert last.startswith('error: ') and message in last
  assert not (tmp_path / 'logs').exists()


def test_dataset_hf_needs_hf_dataset(tmp_path, capsys):
  from scripts import run_digits
  from diffusion_tf import cli
  with pytest.raises(SystemExit):
    cli.main({'train': run_digits.train}, _train_argv(tmp_path))
  assert 'error: --dataset hf needs --hf_dataset' in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize('form', ('save_to_disk', 'parquet', 'imagefolder'))
def test_each_local_form_trains(form, tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  argv = _train_argv(tmp_path, '--hf_dataset', write_form(form, tmp_path),
                     '--hf_cache_dir', tmp_path / 'cache', '--num_sample_images', 0)
  proc = subprocess.run([sys.executable, os.path.join(root, 'scripts', 'run_digits.py'), *argv],
                        cwd=tmp_path, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, PYTHONPATH=root, HF_HUB_OFFLINE='1'))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1].startswith('Trained 2 steps in ')
  (run,) = os.listdir(tmp_path / 'logs' / '9999-99-99')
  assert '_hf_' in run
