"""A feature network for the built-in digits set, so that its FID / IS mean "how digit-like
and how diverse" (the Inception network knows nothing about 16x16 handwriting).

A small convolutional classifier, trained on the real digits' train split (all but the last
`HELD_OUT` images; those are held out) by ``scripts/make_digits_features.py`` (seeded), ships
as ``digits_features.npz`` (a few tens of KB). It implements the extractor protocol of
``inception.py``: images [B, H, W, C] in [0, 255], grey or RGB, any square size >= 8 ->
``{'pool_3': [B, FEATURE_DIM] (its penultimate layer), 'logits': [B, 10]}``. Images are
averaged to grey and resized (area) to 16x16 first, so grey and RGB runs and other
resolutions are measured alike.

    extractor = digits_features.load_extractor()
    fd = digits_features.frechet_distance(samples_uint8)  # vs the real train split
"""

import functools
import hashlib
import os

import numpy as np
import tensorflow as tf

from . import inception, reference_stats
from ..tpu_utils import datasets

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'digits_features.npz')
RESOLUTION = 16
HELD_OUT = datasets.DIGITS_NUM_EVAL  # the data set's eval split: the last 180 images
NUM_CLASSES = 10
# Layer names in the weights file, in order; the architecture is in `_forward`.
PARAM_NAMES = ('conv1_w', 'conv1_b', 'conv2_w', 'conv2_b', 'dense_w', 'dense_b',
               'logits_w', 'logits_b')
SPLITS = ('train', 'held_out', 'all')


def init_params(rng, conv1=8, conv2=16, feature_dim=32):
  """He-initialised float32 parameters (the architecture `_forward` runs)."""
  def he(shape, fan_in):
    return (rng.randn(*shape) * np.sqrt(2. / fan_in)).astype(np.float32)
  flat = (RESOLUTION // 4) ** 2 * conv2
  return {
      'conv1_w': he((3, 3, 1, conv1), 9), 'conv1_b': np.zeros(conv1, np.float32),
      'conv2_w': he((3, 3, conv1, conv2), 9 * conv1), 'conv2_b': np.zeros(conv2, np.float32),
      'dense_w': he((flat, feature_dim), flat), 'dense_b': np.zeros(feature_dim, np.float32),
      'logits_w': he((feature_dim, NUM_CLASSES), feature_dim),
      'logits_b': np.zeros(NUM_CLASSES, np.float32),
  }


def preprocess(images):
  """[B, H, W, C] in [0, 255] (grey or RGB) -> float32 grey [B, 16, 16, 1] in [0, 1]."""
  x = inception.as_network_input(images, channels=1)
  if x.shape[1] != RESOLUTION or x.shape[2] != RESOLUTION:
    x = tf.image.resize(x, [RESOLUTION, RESOLUTION], method='area')
  return x / 255.


def _forward(params, x):
  """x: preprocessed [B, 16, 16, 1] -> (features [B, D], logits [B, 10])."""
  h = tf.nn.relu(tf.nn.conv2d(x, params['conv1_w'], 1, 'SAME') + params['conv1_b'])
  h = tf.nn.max_pool2d(h, 2, 2, 'VALID')
  h = tf.nn.relu(tf.nn.conv2d(h, params['conv2_w'], 1, 'SAME') + params['conv2_b'])
  h = tf.nn.max_pool2d(h, 2, 2, 'VALID')
  h = tf.reshape(h, [-1, int(np.prod(h.shape[1:]))])
  features = tf.nn.relu(tf.matmul(h, params['dense_w']) + params['dense_b'])
  return features, tf.matmul(features, params['logits_w']) + params['logits_b']


def forward(params, images):
  """The network on raw images [B, H, W, C] in [0, 255]: (features, logits)."""
  return _forward(params, preprocess(images))


class DigitsFeatureExtractor:
  """The digits classifier as a feature extractor (protocol of ``inception.py``). Its
  ``name`` holds a digest of the weights, so cached statistics follow retrained weights."""

  def __init__(self, params, *, name):
    missing = [k for k in PARAM_NAMES if k not in params]
    if missing:
      raise ValueError(f'digits feature weights lack {missing}')
    self.params = {k: tf.constant(np.asarray(params[k], np.float32)) for k in PARAM_NAMES}
    self.name = name
    self.feature_dim = int(self.params['dense_b'].shape[0])
    self._fn = tf.function(
        lambda x: _forward(self.params, x),
        input_signature=[tf.TensorSpec([None, RESOLUTION, RESOLUTION, 1], tf.float32)])

  def __call__(self, images):
    """images: [B, H, W, C] in [0, 255] -> {'pool_3' [B, D], 'logits' [B, 10]} float32."""
    features, logits = self._fn(preprocess(images))
    return {'pool_3': features, 'logits': logits}

  def predict(self, images):
    """Predicted digit [B] (numpy int)."""
    return np.argmax(np.asarray(self(images)['logits']), axis=1)


def save_params(path, params):
  """Writes the weights as float16 (halves the file; the features move by ~1e-3 relative)."""
  np.savez_compressed(path, **{k: np.asarray(params[k], np.float16) for k in PARAM_NAMES})


@functools.lru_cache(maxsize=2)
def load_extractor(path=WEIGHTS):
  """The shipped digits feature network (or the weights file ``path``)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'digits feature weights {path} not found; make them with '
                            f'python scripts/make_digits_features.py --out {path}')
  with open(path, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:12]
  with np.load(path) as z:
    params = {k: z[k] for k in z.files}
  return DigitsFeatureExtractor(params, name=f'digits_cnn_{digest}')


def real_digits(split='train', resolution=RESOLUTION, channels=1):
  """Real digits, uint8 [N, resolution, resolution, channels]: 'train' (what the feature
  network was fitted on), 'held_out' (the last `HELD_OUT`), or 'all'."""
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  images = datasets.load_digits_array(resolution, channels)
  return {'train': images[:-HELD_OUT], 'held_out': images[-HELD_OUT:], 'all': images}[split]


def feature_stats(images, extractor=None, batch_size=256):
  """Feature statistics (mu, sigma, count, inception_score, extractor) of uint8 or float
  images [N, H, W, C] in [0, 255]."""
  return reference_stats.compute_reference_stats(images, extractor or load_extractor(),
                                                 batch_size=batch_size)


@functools.lru_cache(maxsize=8)
def real_stats(split='train', extractor=None):
  """`feature_stats` of a split of the real digits (cached per process)."""
  return feature_stats(real_digits(split), extractor)


def frechet_distance(samples, reference='train', extractor=None):
  """Fréchet distance between the digits features of ``samples`` (uint8 [N, H, W, C], grey
  or RGB) and of ``reference``: a split name of `real_digits` or a stats dict."""
  samples = np.asarray(samples)
  if samples.dtype != np.uint8 or samples.ndim != 4:
    raise ValueError(f'expected uint8 samples [N, H, W, C], got {samples.dtype} {samples.shape}')
  extractor = extractor or load_extractor()
  ref = real_stats(reference, extractor) if isinstance(reference, str) else reference
  return reference_stats.fid_from_stats(ref, feature_stats(samples, extractor))
