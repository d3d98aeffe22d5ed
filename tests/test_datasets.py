"""Tests for diffusion_tf.tpu_utils.datasets (no network, no real datasets needed)."""

import os
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from diffusion_tf.tpu_utils import datasets


def _batches(ds, n=None):
  if n is not None:
    ds = ds.take(n)
  return list(ds.as_numpy_iterator())


def _check_batch(b, batch_size, size):
  img, label = b['image'], b['label']
  assert img.dtype == np.int32 and img.shape == (batch_size, size, size, 3)
  assert img.min() >= 0 and img.max() <= 255
  assert label.dtype == np.int32 and label.shape == (batch_size,)
  assert (label == 0).all()


@pytest.fixture
def mock_tfds():
  """TFDS random examples (offline, from the builder's code-defined features).

  mock_data does not make `is_prepared()` true, so we patch that too; the real
  not-prepared path is covered by test_cifar10_missing_data_error.
  """
  def enter(num_examples):
    stack.append(tfds.testing.mock_data(num_examples=num_examples))
    stack.append(mock.patch.object(tfds.core.DatasetBuilder, 'is_prepared', return_value=True))
    for cm in stack:
      cm.__enter__()
  stack = []
  yield enter
  for cm in reversed(stack):
    cm.__exit__(None, None, None)


# ------------------------------------------------------------------ TFDS: cifar10 / celebahq256

def test_cifar10_one_pass_and_eval_mocked(mock_tfds, tmp_path):
  mock_tfds(10)
  ds = datasets.get_dataset('cifar10', tfds_data_dir=str(tmp_path))
  assert ds.image_shape == (32, 32, 3) and ds.num_classes == 1
  assert (ds.num_train_examples, ds.num_eval_examples) == (50000, 10000)
  out = _batches(ds.train_one_pass_input_fn({'batch_size': 3}))
  assert len(out) == 10 // 3  # drop_remainder
  for b in out:
    _check_batch(b, 3, 32)
  # int32 cast keeps the uint8 pixel values (random mock data spans the range).
  assert np.concatenate([b['image'] for b in out]).max() > 200
  ev = _batches(ds.eval_input_fn({'batch_size': 4}))
  assert len(ev) == 10 // 4
  _check_batch(ev[0], 4, 32)


def test_cifar10_train_repeats_and_shuffles_mocked(mock_tfds, tmp_path):
  mock_tfds(6)
  ds = datasets.SimpleDataset('cifar10', str(tmp_path), shuffle_buffer=16)
  out = _batches(ds.train_input_fn({'batch_size': 4}), n=5)  # 20 images from 6: needs repeat
  assert len(out) == 5
  for b in out:
    _check_batch(b, 4, 32)


def test_celebahq256_mocked(mock_tfds, tmp_path):
  mock_tfds(5)
  ds = datasets.get_dataset('celebahq256', tfds_data_dir=str(tmp_path))
  assert ds.image_shape == (256, 256, 3)
  assert (ds.num_train_examples, ds.num_eval_examples) == (30000, 0)
  assert ds.eval_input_fn({'batch_size': 2}) is None
  out = _batches(ds.train_one_pass_input_fn({'batch_size': 2}))
  assert len(out) == 2
  _check_batch(out[0], 2, 256)


def test_tfds_constructor_is_lazy(tmp_path):
  # Shapes must be available without data (e.g. sampling from a released checkpoint).
  ds = datasets.get_dataset('cifar10', tfds_data_dir=str(tmp_path / 'none'))
  assert ds.image_shape == (32, 32, 3)


def test_cifar10_missing_data_error(tmp_path):
  ds = datasets.get_dataset('cifar10', tfds_data_dir=str(tmp_path))
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    ds.train_input_fn({'batch_size': 2})
  msg = str(e.value)
  assert 'cifar10' in msg and str(tmp_path) in msg and 'tfds build cifar10' in msg
  assert isinstance(e.value, FileNotFoundError)
  with pytest.raises(datasets.DatasetNotFoundError):
    ds.eval_input_fn({'batch_size': 2})


def test_celebahq_missing_data_error(tmp_path):
  ds = datasets.get_dataset('celebahq256', tfds_data_dir=str(tmp_path))
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    ds.train_one_pass_input_fn({'batch_size': 2})
  msg = str(e.value)
  assert 'celebahq256' in msg and 'celeb_a_hq' in msg
  assert os.path.join(str(tmp_path), 'downloads', 'manual') in msg


# ------------------------------------------------------------------ LSUN TFRecords

def _write_lsun_tfrecord(path, images_hwc):
  """Exactly StyleGAN2 dataset_tool's format: shape int64 [C,H,W], data raw CHW uint8."""
  with tf.io.TFRecordWriter(path) as w:
    for img in images_hwc:
      chw = np.ascontiguousarray(img.transpose(2, 0, 1))
      ex = tf.train.Example(features=tf.train.Features(feature={
          'shape': tf.train.Feature(int64_list=tf.train.Int64List(value=chw.shape)),
          'data': tf.train.Feature(bytes_list=tf.train.BytesList(value=[chw.tobytes()])),
      }))
      w.write(ex.SerializeToString())


def _sorted_images(imgs):
  return sorted(imgs, key=lambda a: a.tobytes())


@pytest.fixture
def lsun_file(tmp_path):
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, size=(10, 8, 8, 3)).astype(np.uint8)
  path = str(tmp_path / 'lsun-r03.tfrecords')
  _write_lsun_tfrecord(path, images)
  return path, images


def test_lsun_decodes_chw_to_hwc(lsun_file):
  path, images = lsun_file
  ds = datasets.get_dataset('lsun', tfr_file=path, resolution=8)
  assert ds.image_shape == [8, 8, 3] and ds.num_classes == 1
  assert ds.eval_input_fn({'batch_size': 2}) is None
  out = _batches(ds.train_one_pass_input_fn({'batch_size': 5}))
  assert len(out) == 2
  for b in out:
    _check_batch(b, 5, 8)
  got = [x for b in out for x in b['image']]
  for g, e in zip(_sorted_images(got), _sorted_images(list(images.astype(np.int32)))):
    np.testing.assert_array_equal(g, e)


@pytest.mark.slow
def test_lsun_drop_remainder_max_images_and_repeat(lsun_file):
  path, images = lsun_file
  expected = {x.astype(np.int32).tobytes() for x in images}
  ds = datasets.LsunDataset(path, resolution=8)
  out = _batches(ds.train_one_pass_input_fn({'batch_size': 3}))
  assert len(out) == 3  # 10 // 3
  got = [x.tobytes() for b in out for x in b['image']]
  assert len(set(got)) == 9 and set(got) <= expected

  ds = datasets.LsunDataset(path, resolution=8, max_images=4)
  out = _batches(ds.train_one_pass_input_fn({'batch_size': 2}))
  assert len(out) == 2
  got = {x.tobytes() for b in out for x in b['image']}
  assert got == {x.astype(np.int32).tobytes() for x in images[:4]}  # take() is before shuffle

  out = _batches(ds.train_input_fn({'batch_size': 3}), n=4)  # 12 > 4 images: repeats
  got = {x.tobytes() for b in out for x in b['image']}
  assert len(out) == 4 and got <= {x.astype(np.int32).tobytes() for x in images[:4]}


def test_lsun_one_pass_still_shuffles(tmp_path):
  # Original quirk (§14.15), kept on purpose.
  images = np.arange(40, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
  path = str(tmp_path / 'x.tfrecords')
  _write_lsun_tfrecord(path, images)
  out = _batches(datasets.LsunDataset(path, resolution=4).train_one_pass_input_fn(
      {'batch_size': 40}))
  order = out[0]['image'][:, 0, 0, 0]
  assert sorted(order.tolist()) == list(range(40))
  assert order.tolist() != list(range(40))


def test_lsun_missing_file_error(tmp_path):
  path = str(tmp_path / 'nope' / 'church-r08.tfrecords')
  ds = datasets.get_dataset('lsun', tfr_file=path)
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    ds.train_input_fn({'batch_size': 2})
  msg = str(e.value)
  assert 'lsun' in msg and path in msg and 'dataset_tool.py' in msg and 'create_lsun' in msg


# ------------------------------------------------------------------ image folder

def _centre_pattern(n):
  y, x = np.mgrid[0:n, 0:n]
  return np.stack([x * 30, y * 30, (x + y) * 10], -1).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path):
  root = tmp_path / 'imgs'
  (root / 'sub').mkdir(parents=True)
  # a.png: 12 wide x 8 high; red/blue 2-px margins left/right around an 8x8 pattern.
  a = np.zeros((8, 12, 3), np.uint8)
  a[:, :2] = [255, 0, 0]
  a[:, 10:] = [0, 0, 255]
  a[:, 2:10] = _centre_pattern(8)
  Image.fromarray(a).save(root / 'a.png')
  # b.jpg: 32 wide x 64 high; red top / blue bottom margins around a green 32x32 square.
  b = np.zeros((64, 32, 3), np.uint8)
  b[:16] = [255, 0, 0]
  b[48:] = [0, 0, 255]
  b[16:48] = [0, 255, 0]
  Image.fromarray(b).save(root / 'b.jpg', quality=95, subsampling=0)  # 4:4:4: no chroma bleed
  # sub/c.png: grayscale 24x16 with dark 4-px margins around a uniform 16x16 square.
  c = np.full((16, 24), 10, np.uint8)
  c[:, 4:20] = 200
  Image.fromarray(c, mode='L').save(root / 'sub' / 'c.png')
  (root / 'notes.txt').write_text('not an image')
  return str(root)


def test_image_folder_centre_crop_and_resize(image_folder):
  ds = datasets.get_dataset('folder', folder=image_folder, resolution=8)
  assert ds.num_train_examples == 3 and ds.image_shape == (8, 8, 3)
  assert ds.eval_input_fn({'batch_size': 1}) is None
  out = _batches(ds.train_one_pass_input_fn({'batch_size': 1}))  # sorted path order
  assert len(out) == 3
  for b in out:
    _check_batch(b, 1, 8)
  a, b, c = (o['image'][0] for o in out)
  np.testing.assert_array_equal(a, _centre_pattern(8))  # exact crop, no resize needed
  assert np.abs(b - np.array([0, 255, 0])).max() <= 12  # downsampled JPEG, margins gone
  np.testing.assert_array_equal(c, np.full((8, 8, 3), 200))  # gray -> RGB, downsampled


def test_image_folder_train_and_drop_remainder(image_folder):
  ds = datasets.ImageFolderDataset(image_folder, resolution=16, shuffle_buffer=8)
  assert len(_batches(ds.train_one_pass_input_fn({'batch_size': 2}))) == 1
  out = _batches(ds.train_input_fn({'batch_size': 2}), n=4)  # 8 images from 3 files
  assert len(out) == 4
  for b in out:
    _check_batch(b, 2, 16)


def test_image_folder_empty_or_missing(tmp_path):
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  (tmp_path / 'empty' / 'readme.txt').write_text('x')
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.get_dataset('folder', folder=str(tmp_path / 'empty'), resolution=8)
  assert 'no images' in str(e.value) and str(tmp_path / 'empty') in str(e.value)
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.ImageFolderDataset(str(tmp_path / 'missing'), 8)
  assert str(tmp_path / 'missing') in str(e.value)


# ------------------------------------------------------------------ digits

def test_load_digits_array():
  from sklearn.datasets import load_digits
  x = datasets.load_digits_array(32)
  assert x.dtype == np.uint8 and x.shape == (1797, 32, 32, 3)
  assert (x[..., 0] == x[..., 1]).all() and (x[..., 0] == x[..., 2]).all()
  assert x.min() == 0 and x.max() >= 250
  assert (x.reshape(1797, -1).max(1) > 100).all()  # every digit has ink
  assert len(np.unique(x)) > 17  # interpolated, not nearest-neighbour (17 levels)
  x8 = datasets.load_digits_array(8)
  ref = np.round(load_digits().images * 255. / 16.).astype(np.uint8)
  np.testing.assert_array_equal(x8[..., 0], ref)
  x[0] = 0  # a copy: must not corrupt later calls
  assert datasets.load_digits_array(32)[0].max() > 0


def test_digits_grey_channel_and_bad_channels():
  """channels=1 (run_digits' default) is the grey level itself: the RGB array's channel 0."""
  grey = datasets.load_digits_array(16, channels=1)
  assert grey.shape == (1797, 16, 16, 1) and grey.dtype == np.uint8
  np.testing.assert_array_equal(grey[..., 0], datasets.load_digits_array(16)[..., 0])
  ds = datasets.get_dataset('digits', resolution=16, channels=1)
  assert ds.image_shape == (16, 16, 1)
  b = _batches(ds.train_one_pass_input_fn({'batch_size': 100}), n=1)[0]
  assert b['image'].shape == (100, 16, 16, 1) and b['image'].dtype == np.int32
  np.testing.assert_array_equal(b['image'], grey[:100].astype(np.int32))
  for bad in (2, 4, 0):
    with pytest.raises(ValueError, match='channels must be 1 .grey. or 3'):
      datasets.get_dataset('digits', resolution=16, channels=bad)


def test_digits_dataset():
  ds = datasets.get_dataset('digits', resolution=16)
  assert ds.image_shape == (16, 16, 3) and ds.num_classes == 1
  assert (ds.num_train_examples, ds.num_eval_examples) == (1797, 180)
  ref = datasets.load_digits_array(16).astype(np.int32)
  out = _batches(ds.train_one_pass_input_fn({'batch_size': 100}))
  assert len(out) == 17  # 1797 // 100
  for b in out:
    _check_batch(b, 100, 16)
  np.testing.assert_array_equal(np.concatenate([b['image'] for b in out]), ref[:1700])
  ev = _batches(ds.eval_input_fn({'batch_size': 60}))
  assert len(ev) == 3
  np.testing.assert_array_equal(np.concatenate([b['image'] for b in ev]), ref[-180:])
  tr = _batches(ds.train_input_fn({'batch_size': 64}), n=30)  # > 1 epoch
  assert len(tr) == 30
  _check_batch(tr[0], 64, 16)
  assert not np.array_equal(tr[0]['image'], ref[:64])  # shuffled


# ------------------------------------------------------------------ get_dataset

def test_get_dataset_errors():
  with pytest.raises(ValueError) as e:
    datasets.get_dataset('mnist')
  assert 'mnist' in str(e.value)
  for name in ('cifar10', 'celebahq256', 'lsun', 'folder', 'digits'):
    assert name in str(e.value)
  with pytest.raises(ValueError, match='tfr_file'):
    datasets.get_dataset('lsun')
