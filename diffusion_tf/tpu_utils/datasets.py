"""Dataset loading utilities.

All images are scaled to [0, 255] instead of [0, 1]: every input fn yields batches
``{'image': int32 [B, H, W, 3] in [0, 255] (NHWC), 'label': int32 [B] (always 0)}``.
Normalisation to [-1, 1] and random flips happen in the model, not here.

Every input fn takes ``params`` with ``params['batch_size']`` and batches with
``drop_remainder=True``. Missing data raises :class:`DatasetNotFoundError` before any
pipeline is built; nothing here ever downloads. All paths go through TensorFlow's file
systems, so ``gs://`` works.
"""

import functools
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ..errors import DatasetContentError, DatasetNotFoundError  # noqa: F401  (datasets.*Error)

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SHUFFLE_BUFFER = 50000


def pack(image, label):
  label = tf.cast(label, tf.int32)
  return {'image': image, 'label': label}


def _zero_label():
  return tf.constant(0, dtype=tf.int32)


def _batch_and_prefetch(ds, batch_size):
  return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


# ----------------------------------------------------------------------------------------
# TFDS datasets (cifar10, celebahq256)

class SimpleDataset:
  """CIFAR-10 (32x32) or CelebA-HQ (256x256) from TFDS. Real labels are discarded (label 0).

  Deviation: the original pinned `cifar10:3.0.0` / `celeb_a_hq/256:2.0.0`; we use whatever
  version the installed TFDS builds (cifar10 3.0.2, celeb_a_hq/256 2.0.0). The images are the same.
  """
  DATASET_NAMES = ('cifar10', 'celebahq256')

  def __init__(self, name, tfds_data_dir, shuffle_buffer=DEFAULT_SHUFFLE_BUFFER):
    if name not in self.DATASET_NAMES:
      raise ValueError(f'Unknown TFDS dataset {name!r}; expected one of {self.DATASET_NAMES}')
    self._name = name
    self._data_dir = tfds_data_dir
    self._img_size = {'cifar10': 32, 'celebahq256': 256}[name]
    self._img_shape = [self._img_size, self._img_size, 3]
    self._tfds_name = {'cifar10': 'cifar10', 'celebahq256': 'celeb_a_hq/256'}[name]
    self.num_train_examples, self.num_eval_examples = {
        'cifar10': (50000, 10000),
        'celebahq256': (30000, 0),
    }[name]
    self.num_classes = 1  # unconditional
    self.eval_split_name = {'cifar10': 'test', 'celebahq256': None}[name]
    self.shuffle_buffer = shuffle_buffer

  @property
  def image_shape(self):
    """Returns a tuple with the image shape (S, S, 3)."""
    return tuple(self._img_shape)

  def check_available(self):
    """Raises DatasetNotFoundError unless the TFDS data is prepared under tfds_data_dir."""
    builder = tfds.builder(self._tfds_name, data_dir=self._data_dir)
    if builder.is_prepared():
      return
    root = str(builder.data_dir_root)
    msg = (f'Dataset {self._name!r}: TFDS dataset {self._tfds_name} (version {builder.version}) '
           f'is not prepared; looked in {builder.data_dir}. ')
    if self._name == 'cifar10':
      msg += (
          'TFDS must download it, which this code never does. On a machine with internet run '
          f'`tfds build cifar10 --data_dir {root}` (or in Python: '
          f"tfds.builder('cifar10', data_dir='{root}').download_and_prepare()), "
          f'or copy a prepared `cifar10/{builder.version}` directory into {root}.')
    else:
      msg += (
          'celeb_a_hq needs manually downloaded data: put the progressive_growing_of_gans '
          f'CelebA-HQ tar files (data256x256.tar) in {os.path.join(root, "downloads", "manual")} '
          'and run `tfds build celeb_a_hq/256 --data_dir ' + root + '` (see the TFDS docs for '
          f'celeb_a_hq), or copy a prepared `celeb_a_hq/256/{builder.version}` directory into '
          f'{root}. TFDS says: {" ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}')
    raise DatasetNotFoundError(msg)

  def _load(self, split, shuffle_files):
    self.check_available()
    # download=False: TFDS must never try the network from here.
    return tfds.load(self._tfds_name, split=split, shuffle_files=shuffle_files,
                     data_dir=self._data_dir, download=False)

  def _proc_and_batch(self, ds, batch_size):
    def _process_data(x_):
      img_ = tf.cast(x_['image'], tf.int32)
      img_.set_shape(self._img_shape)
      return pack(image=img_, label=_zero_label())

    ds = ds.map(_process_data, num_parallel_calls=AUTOTUNE)
    return _batch_and_prefetch(ds, batch_size)

  def train_input_fn(self, params):
    """Infinite, shuffled train batches."""
    ds = self._load('train', shuffle_files=True)
    ds = ds.repeat()
    ds = ds.shuffle(self.shuffle_buffer)
    return self._proc_and_batch(ds, params['batch_size'])

  def train_one_pass_input_fn(self, params):
    """One unshuffled pass over the train split (num_train_examples // batch_size batches)."""
    ds = self._load('train', shuffle_files=False)
    return self._proc_and_batch(ds, params['batch_size'])

  def eval_input_fn(self, params):
    """One unshuffled pass over the eval split, or None if there is none."""
    if self.eval_split_name is None:
      return None
    ds = self._load(self.eval_split_name, shuffle_files=False)
    return self._proc_and_batch(ds, params['batch_size'])


# ----------------------------------------------------------------------------------------
# LSUN: StyleGAN2 dataset_tool.py TFRecords

class LsunDataset:
  """Adapted from https://github.com/NVlabs/stylegan2/blob/master/training/dataset.py.

  Records have features `shape` (int64 [3], CHW) and `data` (raw uint8 CHW bytes), as written
  by StyleGAN2's dataset_tool.py. `shuffle_mb` is unused, as in the original.
  Quirk kept from the original: the one-pass input fn still shuffles.
  """

  def __init__(self,
               tfr_file,            # Path to tfrecord file.
               resolution=256,      # Dataset resolution.
               max_images=None,     # Maximum number of images to use, None = use all images.
               shuffle_mb=4096,     # Unused (kept for signature compatibility).
               buffer_mb=256,       # Read buffer size (megabytes).
               shuffle_buffer=DEFAULT_SHUFFLE_BUFFER,  # In images; 50000 int32 256² images is ~39 GB.
               ):
    self.tfr_file = tfr_file
    self.dtype = 'int32'
    self.max_images = max_images
    self.shuffle_mb = shuffle_mb
    self.buffer_mb = buffer_mb
    self.shuffle_buffer = shuffle_buffer
    self.num_classes = 1  # unconditional
    self.resolution = resolution
    self.resolution_log2 = int(np.log2(self.resolution))
    self.image_shape = [self.resolution, self.resolution, 3]

  def check_available(self):
    if self.tfr_file is None or not tf.io.gfile.exists(self.tfr_file):
      raise DatasetNotFoundError(
          f"Dataset 'lsun': TFRecord file not found: {self.tfr_file}. Create it with StyleGAN2's "
          'dataset_tool.py `create_lsun` from the LSUN lmdb, e.g. '
          '`python dataset_tool.py create_lsun datasets/lsun-church-r08 '
          '~/lsun/church_outdoor_train_lmdb --resolution 256`, which writes '
          '`datasets/lsun-church-r08/lsun-church-r08-r08.tfrecords` (full 256x256 resolution; '
          'the -r07 .. -r02 files beside it are lower resolutions); pass that file as tfr_file.')

  def _train_input_fn(self, params, one_pass: bool):
    self.check_available()
    dset = tf.data.TFRecordDataset(self.tfr_file, compression_type='',
                                   buffer_size=self.buffer_mb << 20)
    if self.max_images is not None:
      dset = dset.take(self.max_images)
    if not one_pass:
      dset = dset.repeat()
    dset = dset.map(self._parse_tfrecord_tf, num_parallel_calls=AUTOTUNE)
    dset = dset.shuffle(self.shuffle_buffer)  # even when one_pass (original behaviour)
    return _batch_and_prefetch(dset, params['batch_size'])

  def train_input_fn(self, params):
    return self._train_input_fn(params, one_pass=False)

  def train_one_pass_input_fn(self, params):
    return self._train_input_fn(params, one_pass=True)

  def eval_input_fn(self, params):
    return None

  def _parse_tfrecord_tf(self, record):
    """Serialized record -> pack(image int32 [res, res, 3] HWC, label 0)."""
    features = tf.io.parse_single_example(record, features={
        'shape': tf.io.FixedLenFeature([3], tf.int64),
        'data': tf.io.FixedLenFeature([], tf.string)})
    data = tf.io.decode_raw(features['data'], tf.uint8)
    data = tf.cast(data, tf.int32)
    data = tf.reshape(data, features['shape'])
    data = tf.transpose(data, [1, 2, 0])  # CHW -> HWC
    data.set_shape(self.image_shape)
    return pack(image=data, label=_zero_label())


# ----------------------------------------------------------------------------------------
# New: any folder of images

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


def decode_rgb(encoded, channels=3):
  """A PNG / JPEG / GIF / BMP file's bytes -> uint8 [H, W, 3] (grey repeated, alpha dropped),
  or [H, W, 1] grey with ``channels`` 1."""
  return tf.io.decode_image(encoded, channels=channels, expand_animations=False)


def square_and_resize(img, resolution, random_crop=False):
  """The largest square of ``img`` (centred, or at a random offset along the longer side),
  resized to ``resolution`` (bilinear with antialiasing, i.e. area-like when shrinking), as
  int32 [resolution, resolution, channels] in [0, 255]."""
  h, w = tf.shape(img)[0], tf.shape(img)[1]
  s = tf.minimum(h, w)
  if random_crop:
    top = tf.random.uniform([], 0, h - s + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, w - s + 1, dtype=tf.int32)
  else:
    top, left = (h - s) // 2, (w - s) // 2
  img = tf.image.crop_to_bounding_box(img, top, left, s, s)
  img = tf.image.resize(img, [resolution, resolution], method='bilinear', antialias=True)
  img = tf.cast(tf.clip_by_value(tf.round(img), 0., 255.), tf.int32)
  img.set_shape((resolution, resolution, img.shape[-1]))
  return img


def _list_images(folder):
  files = []
  for dirname, _, filenames in tf.io.gfile.walk(folder):
    files.extend(os.path.join(dirname, f) for f in filenames
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  return sorted(files)


class ImageFolderDataset:
  """All PNG/JPEG files under `folder` (recursive), centre-cropped to a square and resized to
  `resolution` (bilinear with antialiasing, i.e. area-like when shrinking), as RGB.

  Yields int32 [B, res, res, 3] in [0, 255], label 0. The one-pass fn reads files in sorted
  path order. There is no eval split.
  """

  def __init__(self, folder, resolution, shuffle_buffer=DEFAULT_SHUFFLE_BUFFER):
    self.folder = folder
    self.resolution = int(resolution)
    self.image_shape = (self.resolution, self.resolution, 3)
    self.num_classes = 1
    self.shuffle_buffer = shuffle_buffer
    # Listed eagerly: an empty or missing folder fails here, and the count is known up front.
    if not tf.io.gfile.isdir(folder):
      raise DatasetNotFoundError(f"Dataset 'folder': directory does not exist: {folder}")
    self.files = _list_images(folder)
    if not self.files:
      raise DatasetNotFoundError(
          f"Dataset 'folder': found no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder} "
          '(searched recursively).')
    self.num_train_examples = len(self.files)
    self.num_eval_examples = 0

  def check_available(self):
    pass  # checked in the constructor

  def _load_image(self, path):
    img = decode_rgb(tf.io.read_file(path))
    return pack(image=square_and_resize(img, self.resolution), label=_zero_label())

  def _input_fn(self, params, one_pass):
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(self.files))
    if not one_pass:
      # Shuffling paths (not decoded images) is cheap, so each epoch is a fresh permutation.
      ds = ds.shuffle(min(self.shuffle_buffer, len(self.files)), reshuffle_each_iteration=True)
      ds = ds.repeat()
    ds = ds.map(self._load_image, num_parallel_calls=AUTOTUNE)
    return _batch_and_prefetch(ds, params['batch_size'])

  def train_input_fn(self, params):
    return self._input_fn(params, one_pass=False)

  def train_one_pass_input_fn(self, params):
    return self._input_fn(params, one_pass=True)

  def eval_input_fn(self, params):
    return None


# ----------------------------------------------------------------------------------------
# New: a data set of the `datasets` library (the Hub, or a local copy in any of its forms)

class HubDataset:
  """One split of a `datasets` data set (`hub_images`): a Hub id or a local folder. Its image
  column's encoded bytes come from the `datasets` library in a generator; TensorFlow decodes
  them in the parallel ``map``. With ``resolution`` each image is cropped to its largest
  square (centred, or at a random place with ``center_crop=False``, as train_unconditional's
  RandomCrop) and resized; without, all images must have one square size (checked on the
  first `hub_images.SIZE_CHECK_LIMIT` images before training, then on every image as it is
  decoded). Yields int32 [B, res, res, 3] in [0, 255] (``channels`` 1: grey), label 0; no
  eval split.

  Opening is deferred to `check_available` (or the first use), which raises the data set's
  errors (missing, no such split or column, mixed sizes) before a run writes anything.
  ``hf_streaming`` reads the data set as it trains (for data sets larger than the disk cache).
  """

  def __init__(self, hf_dataset, resolution=None, hf_split=None, image_column=None,
               hf_streaming=False, hf_config=None, hf_cache_dir=None, center_crop=True,
               shuffle_buffer=DEFAULT_SHUFFLE_BUFFER, channels=3):
    self.name = hf_dataset
    self.options = dict(config=hf_config, split=hf_split or 'train',
                        image_column=image_column or 'image', streaming=bool(hf_streaming),
                        cache_dir=hf_cache_dir)
    self.resolution = None if resolution is None else int(resolution)
    self.center_crop = center_crop
    self.channels = int(channels)
    self.shuffle_buffer = shuffle_buffer
    self.num_classes = 1
    self.num_eval_examples = 0
    self._images = None

  def check_available(self):
    self._opened()

  def _opened(self):
    if self._images is None:
      from . import hub_images
      images = hub_images.HubImages(self.name, **self.options)
      self._shape = hub_images.check_sizes(images, self.resolution) + (self.channels,)
      self._images = images
    return self._images

  @property
  def image_shape(self):
    self._opened()
    return self._shape

  @property
  def num_train_examples(self):
    return self._opened().num_examples

  def _decode(self, encoded, train):
    img = decode_rgb(encoded, self.channels)
    if self.resolution is not None:
      img = square_and_resize(img, self.resolution, random_crop=train and not self.center_crop)
    else:
      img = tf.cast(tf.ensure_shape(img, self._shape), tf.int32)
    return pack(image=img, label=_zero_label())

  def _input_fn(self, params, train):
    images = self._opened()
    # Drawn from TensorFlow's generator, so a run's --seed fixes the order too.
    seed = int(tf.random.uniform([], 0, 2 ** 31 - 1, dtype=tf.int64)) if train else None
    ds = tf.data.Dataset.from_generator(
        lambda: images.encoded(seed=seed, repeat=train),
        output_signature=tf.TensorSpec([], tf.string))
    ds = ds.map(lambda b: self._decode(b, train), num_parallel_calls=AUTOTUNE)
    return _batch_and_prefetch(ds, params['batch_size'])

  def train_input_fn(self, params):
    return self._input_fn(params, train=True)

  def train_one_pass_input_fn(self, params):
    return self._input_fn(params, train=False)

  def eval_input_fn(self, params):
    return None


# ----------------------------------------------------------------------------------------
# New: small built-in dataset (scikit-learn's 8x8 digits, shipped in the wheel)

DIGITS_NUM_IMAGES = 1797
DIGITS_NUM_EVAL = 180  # the last 10%
DIGITS_MIN_RESOLUTION = 8  # the images' own size: never downsampled
DIGITS_CHANNELS = (1, 3)  # grey, or RGB with three equal channels


@functools.lru_cache(maxsize=4)
def _digits_array(resolution, channels):
  from sklearn.datasets import load_digits  # local import: only this dataset needs sklearn
  x = load_digits().images.astype(np.float32) * (255. / 16.)  # [N, 8, 8], 0..16 -> 0..255
  # Bicubic keeps the upsampled strokes smooth; it overshoots slightly, hence the clip.
  x = tf.image.resize(x[..., None], [resolution, resolution], method='bicubic').numpy()
  x = np.clip(np.round(x), 0, 255).astype(np.uint8)
  x = np.repeat(x, channels, axis=-1)
  x.setflags(write=False)
  return x


def load_digits_array(resolution=32, channels=3):
  """The scikit-learn digits as uint8 [1797, resolution, resolution, channels]: grey (1) or
  three equal channels (3)."""
  resolution = int(resolution)
  if resolution < DIGITS_MIN_RESOLUTION:
    raise ValueError(f'digits resolution must be >= {DIGITS_MIN_RESOLUTION}, got {resolution}')
  if channels not in DIGITS_CHANNELS:
    raise ValueError(f'digits channels must be 1 (grey) or 3 (RGB, three equal channels), '
                     f'got {channels!r}')
  return _digits_array(resolution, int(channels)).copy()


class DigitsDataset:
  """scikit-learn's 1797 8x8 digits, upsampled (bicubic) to `resolution`, grey (`channels` 1)
  or replicated to RGB (`channels` 3, the default).

  Train split: all 1797 images. Eval split: the last 180 images (10%), which are ALSO in the
  train split, so eval numbers on it are not held-out numbers; it exists so eval code paths
  (bpd_eval, test FID) can be exercised. Yields int32 [B, res, res, channels] in [0, 255],
  label 0.
  """

  def __init__(self, resolution=32, shuffle_buffer=DEFAULT_SHUFFLE_BUFFER, channels=3):
    self.resolution = int(resolution)
    self._images = load_digits_array(self.resolution, channels)
    self.image_shape = (self.resolution, self.resolution, int(channels))
    self.num_classes = 1
    self.shuffle_buffer = shuffle_buffer
    self.num_train_examples = len(self._images)
    self.num_eval_examples = DIGITS_NUM_EVAL

  def check_available(self):
    pass  # shipped with scikit-learn

  def _make(self, images, params, train):
    ds = tf.data.Dataset.from_tensor_slices(images)
    if train:
      ds = ds.shuffle(min(self.shuffle_buffer, len(images)), reshuffle_each_iteration=True)
      ds = ds.repeat()
    ds = ds.map(lambda x: pack(image=tf.cast(x, tf.int32), label=_zero_label()),
                num_parallel_calls=AUTOTUNE)
    return _batch_and_prefetch(ds, params['batch_size'])

  def train_input_fn(self, params):
    return self._make(self._images, params, train=True)

  def train_one_pass_input_fn(self, params):
    return self._make(self._images, params, train=False)

  def eval_input_fn(self, params):
    return self._make(self._images[-DIGITS_NUM_EVAL:], params, train=False)


# ----------------------------------------------------------------------------------------

DATASETS = {
    'cifar10': functools.partial(SimpleDataset, name='cifar10'),
    'celebahq256': functools.partial(SimpleDataset, name='celebahq256'),
    'lsun': LsunDataset,
    'folder': ImageFolderDataset,
    'digits': DigitsDataset,
    'hf': HubDataset,
}


def get_dataset(name, *, tfds_data_dir=None, tfr_file=None, seed=547, **kwargs):
  """Instantiates a data set. Extra kwargs go to the constructor (e.g. `shuffle_buffer`,
  `max_images` for lsun, `folder`/`resolution` for folder, `resolution`/`channels` for digits).

  `seed` is accepted and ignored, as in the original (where it was dead code).
  """
  del seed
  if name not in DATASETS:
    raise ValueError(f'Dataset {name!r} is not available; valid names: {sorted(DATASETS)}')
  if name == 'lsun':
    # LsunDataset takes the path to the tf record, not a directory
    if tfr_file is None:
      raise ValueError("Dataset 'lsun' requires tfr_file (a StyleGAN2 dataset_tool .tfrecords file)")
    kwargs['tfr_file'] = tfr_file
  elif name in SimpleDataset.DATASET_NAMES:
    kwargs['tfds_data_dir'] = tfds_data_dir
  return DATASETS[name](**kwargs)
