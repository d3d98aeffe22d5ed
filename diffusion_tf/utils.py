"""Utilities of the original ``utils.py`` (§7): summaries, image grids, the discretized
Gaussian likelihood, warmup, seeding, plus GCS bucket/region helpers and atomic writes.
"""

import io
import json
import math
import os
import random
import urllib.request
import uuid

import numpy as np
import tensorflow as tf
from PIL import Image


# ----------------------------------------------------------------------------- files

def atomic_write(path, data: bytes, *, overwrite=True):
  """Writes ``data`` to ``path`` (local or gs://) via a temporary file and a rename,
  so readers never see a partial file. With ``overwrite=False`` an existing file is an error."""
  if not overwrite and tf.io.gfile.exists(path):
    raise FileExistsError(f'{path} already exists; refusing to overwrite it')
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    with tf.io.gfile.GFile(tmp, 'wb') as f:
      f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=overwrite)
  finally:  # a write that failed midway (a full disk) leaves no partial file behind
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)


def write_json(path, obj, *, overwrite=True):
  """Atomic JSON dump, ``indent=2, sort_keys=True`` plus a newline as in the original."""
  atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode(), overwrite=overwrite)


def read_json(path):
  with tf.io.gfile.GFile(path, 'r') as f:
    return json.load(f)


# ----------------------------------------------------------------------------- summaries

class SummaryWriter:
  """TensorBoard writer with the original's interface (scalar / image / images)."""

  def __init__(self, dir, write_graph=True):
    del write_graph  # no default graph in TF2
    tf.io.gfile.makedirs(dir)
    self.dir = dir
    self._writer = tf.summary.create_file_writer(dir)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()

  def scalar(self, tag, value, step):
    with self._writer.as_default():
      tf.summary.scalar(tag, float(value), step=int(step))

  def image(self, tag, image, step):
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[:, :, None]
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    assert image.dtype == np.uint8, 'images must be uint8'
    with self._writer.as_default():
      tf.summary.image(tag, image[None], step=int(step))

  def images(self, tag, images, step):
    self.image(tag, tile_imgs(images), step=step)


# ----------------------------------------------------------------------------- seeding

def seed_all(seed):
  """Seeds Python, NumPy and TensorFlow (global seed) random number generators."""
  random.seed(seed)
  np.random.seed(seed)
  tf.random.set_seed(seed)


# ----------------------------------------------------------------------------- image grids

def tile_imgs(imgs, *, pad_pixels=1, pad_val=255, num_col=0):
  """uint8 [n, h, w(, c)] -> one uint8 grid image.

  ``num_col <= 0`` gives a square grid of ceil(sqrt(n)) columns; empty cells are
  ``pad_val``; images are separated by ``2 * pad_pixels`` lines of ``pad_val`` and the
  outer border is cropped. A 1-channel result is returned 2-D.
  """
  assert pad_pixels >= 0 and 0 <= pad_val <= 255
  imgs = np.asarray(imgs)
  assert imgs.dtype == np.uint8, 'tile_imgs takes uint8 images'
  if imgs.ndim == 3:
    imgs = imgs[..., None]
  n, h, w, c = imgs.shape
  assert c == 1 or c == 3, 'Expected 1 or 3 channels'

  if num_col <= 0:
    ceil_sqrt_n = int(np.ceil(np.sqrt(float(n))))
    num_row = num_col = ceil_sqrt_n
  else:
    assert n % num_col == 0
    num_row = int(np.ceil(n / num_col))

  imgs = np.pad(imgs, pad_width=((0, num_row * num_col - n), (pad_pixels, pad_pixels),
                                 (pad_pixels, pad_pixels), (0, 0)),
                mode='constant', constant_values=pad_val)
  h, w = h + 2 * pad_pixels, w + 2 * pad_pixels
  imgs = imgs.reshape(num_row, num_col, h, w, c).transpose(0, 2, 1, 3, 4)
  imgs = imgs.reshape(num_row * h, num_col * w, c)
  if pad_pixels > 0:
    imgs = imgs[pad_pixels:-pad_pixels, pad_pixels:-pad_pixels, :]
  return imgs[..., 0] if c == 1 else imgs


def save_tiled_imgs(filename, imgs, pad_pixels=1, pad_val=255, num_col=0):
  """Tiles uint8 images and writes the grid as an image file (PNG by extension), atomically."""
  grid = tile_imgs(imgs, pad_pixels=pad_pixels, pad_val=pad_val, num_col=num_col)
  buf = io.BytesIO()
  Image.fromarray(grid).save(buf, format=os.path.splitext(filename)[1][1:].upper() or 'PNG')
  atomic_write(filename, buf.getvalue())


def to_uint8(x):
  """[-1, 1] floats -> uint8 [0, 255], clipped and truncated as the original's image summaries."""
  return np.clip((np.asarray(x, np.float32) + 1.) * 127.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- likelihood

def approx_standard_normal_cdf(x):
  """The tanh approximation of the standard normal CDF used by the original (not erf)."""
  return 0.5 * (1.0 + tf.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * tf.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
  """Log-likelihood in nats of 8-bit data rescaled to [-1, 1] under a Gaussian
  discretized into bins of half-width 1/255; the edge bins extend to -inf / +inf.
  All inputs have the same shape; so does the output."""
  assert x.shape == means.shape == log_scales.shape
  centered_x = x - means
  inv_stdv = tf.exp(-log_scales)
  plus_in = inv_stdv * (centered_x + 1. / 255.)
  cdf_plus = approx_standard_normal_cdf(plus_in)
  min_in = inv_stdv * (centered_x - 1. / 255.)
  cdf_min = approx_standard_normal_cdf(min_in)
  log_cdf_plus = tf.math.log(tf.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = tf.math.log(tf.maximum(1. - cdf_min, 1e-12))
  cdf_delta = cdf_plus - cdf_min
  log_probs = tf.where(
      x < -0.999, log_cdf_plus,
      tf.where(x > 0.999, log_one_minus_cdf_min, tf.math.log(tf.maximum(cdf_delta, 1e-12))))
  assert log_probs.shape == x.shape
  return log_probs


# ----------------------------------------------------------------------------- training helpers

def rms(variables):
  """sqrt(sum of squares / number of elements) over a list of variables ("pnorm")."""
  return tf.sqrt(sum(tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables)
                 / sum(int(np.prod(v.shape.as_list())) for v in variables))


def get_warmed_up_lr(max_lr, warmup, global_step):
  """Linear warmup from 0 (at step 0 the rate is exactly 0) to ``max_lr``, then constant."""
  if warmup == 0:
    return max_lr
  return max_lr * tf.minimum(tf.cast(global_step, tf.float32) / float(warmup), 1.0)


# 'constant' is the original's schedule; 'linear' (not in the original) also anneals the rate
# to 0 at the last step, which gives short runs cleaner samples. The others are diffusers'
# `get_scheduler` choices with their default shapes ('constant_with_warmup' is our 'constant';
# diffusers' 'constant' has no warmup: warmup 0 here).
LR_SCHEDULES = ('constant', 'linear', 'cosine', 'cosine_with_restarts', 'polynomial',
                'constant_with_warmup')
DECAYING_LR_SCHEDULES = ('linear', 'cosine', 'cosine_with_restarts', 'polynomial')
POLYNOMIAL_LR_END, POLYNOMIAL_POWER = 1e-7, 1.0  # diffusers' defaults


def check_lr_schedule(schedule, total_steps):
  """Raises ValueError unless `get_lr` can follow ``schedule`` (plain Python: no TF op, so it
  can run before a distribution strategy is set up)."""
  if schedule not in LR_SCHEDULES:
    raise ValueError(f'lr_schedule={schedule!r}; expected one of {LR_SCHEDULES}')
  if schedule in DECAYING_LR_SCHEDULES and not total_steps:
    raise ValueError(f"lr_schedule={schedule!r} decays the rate to 0 at max_steps: set max_steps")


def _decayed(schedule, max_lr, step, progress):
  """The factor of ``max_lr`` after the warmup; ``progress`` runs from 0 to 1 at the end."""
  if schedule == 'linear':
    return tf.maximum(1. - progress, 0.)
  if schedule == 'cosine':  # half a cosine period (diffusers' num_cycles=0.5)
    return tf.maximum(0.5 * (1. + tf.cos(np.pi * progress)), 0.)
  if schedule == 'cosine_with_restarts':  # one cycle: the same half cosine, then 0
    return tf.where(progress >= 1., 0., 0.5 * (1. + tf.cos(np.pi * tf.math.floormod(progress, 1.))))
  end = POLYNOMIAL_LR_END / max_lr
  return tf.where(progress > 1., end,
                  (1. - end) * tf.maximum(1. - progress, 0.) ** POLYNOMIAL_POWER + end)


def get_ema_decay(max_decay, global_step, warmup=None):
  """The EMA decay of the update at ``global_step`` (0 for the first): ``max_decay``, or with
  ``warmup`` = (inv_gamma, power) diffusers' `EMAModel` warm-up 1 - (1 + step / inv_gamma) **
  -power capped at ``max_decay`` (its step counts from 0 at our first update, whose decay
  is 0 in both: the average starts as a copy of the weights)."""
  if warmup is None:
    return max_decay
  inv_gamma, power = warmup
  step = tf.cast(global_step, tf.float32)
  return tf.clip_by_value(1. - (1. + step / float(inv_gamma)) ** -float(power), 0., max_decay)


def get_lr(max_lr, warmup, global_step, schedule='constant', total_steps=None):
  """The learning rate at ``global_step`` (0 for the first update): `get_warmed_up_lr`, then for
  a decaying schedule (`DECAYING_LR_SCHEDULES`) the rate times a factor that falls from 1 after
  the warmup to 0 at ``total_steps`` (diffusers' `get_scheduler` formulas; 'linear' is (total
  - step) / (total - warmup); a run that ends within the warmup has no decay phase)."""
  check_lr_schedule(schedule, total_steps)
  lr = get_warmed_up_lr(max_lr, warmup, global_step)
  if schedule not in DECAYING_LR_SCHEDULES:
    return lr
  step = tf.cast(global_step, tf.float32)
  progress = (step - float(warmup)) / float(max(total_steps - warmup, 1))
  return tf.where(step < float(warmup), lr, max_lr * _decayed(schedule, max_lr, step, progress))


# ----------------------------------------------------------------------------- GCS paths

REGION_ENV_VARS = ('DIFFUSION_TF_REGION', 'GCP_REGION', 'CLOUDSDK_COMPUTE_REGION')
_METADATA_ZONE_URL = 'http://metadata.google.internal/computeMetadata/v1/instance/zone'


def get_gcp_region(region=None, *, timeout=2.0):
  """The GCP region for bucket names: ``region`` if given, else an environment variable
  (see `REGION_ENV_VARS`), else the GCE metadata server (``us-central1-f`` -> ``us-central1``)."""
  if region:
    return region
  for var in REGION_ENV_VARS:
    if os.environ.get(var):
      return os.environ[var]
  req = urllib.request.Request(_METADATA_ZONE_URL, headers={'Metadata-Flavor': 'Google'})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as resp:
      zone = resp.read().decode().strip().split('/')[-1]
  except OSError as e:
    raise RuntimeError(
        'Could not determine the GCP region for --bucket_name_prefix: pass --region '
        f'(e.g. --region us-central1) or set {REGION_ENV_VARS[0]}; the GCE metadata server '
        f'was not reachable ({e}).') from None
  return '-'.join(zone.split('-')[:-1])


def bucket_path(path, bucket_name_prefix, region):
  """The original's path mapping: relative ``path`` -> ``gs://{prefix}-{region}/{path}``.

  Without a bucket prefix, paths stay local. Absolute or already-remote paths are kept.
  """
  if not bucket_name_prefix or path is None or '://' in path or os.path.isabs(path):
    return path
  return f'gs://{bucket_name_prefix}-{region}/{path}'


def format_duration(seconds):
  """``H:MM:SS`` of ``seconds`` (rounded), or '-' for a duration not known yet (NaN, inf)."""
  if not math.isfinite(seconds):
    return '-'
  seconds = int(round(seconds))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def log(msg):
  """Progress output: flushed at once, so it shows up promptly in log files too."""
  print(msg, flush=True)

