"""Files other FID tools read and write, so our numbers compare with theirs.

* Reference statistics in the TTUR / pytorch-fid format: an ``.npz`` with ``mu`` [D] and
  ``sigma`` [D, D] (e.g. TTUR's ``fid_stats_cifar10_train.npz``), or our own cache files
  (`reference_stats.save_stats`), read by :func:`load_reference_stats`.
* Samples as one ``.npz`` holding ``arr_0``, uint8 [N, H, W, C] (what guided-diffusion's
  evaluator reads), by :func:`write_npz_arr0`.
* Samples as a folder of PNG files ``000000.png, ...`` (what clean-fid and torch-fidelity
  read), by :func:`write_png_folder`.
"""

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from . import utils
from .errors import FlagError


def load_reference_stats(path):
  """``{'mu', 'sigma', 'extractor' (None if the file does not say), 'source'}`` from a
  TTUR / pytorch-fid ``.npz`` (``mu``, ``sigma``) or one of our statistics files."""
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'--ref_stats {path} does not exist')
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  try:
    z = np.load(io.BytesIO(data), allow_pickle=False)
  except (ValueError, OSError) as e:
    raise FlagError(f'--ref_stats {path} is not an .npz file ({e})') from e
  with z:
    if 'mu' not in z.files or 'sigma' not in z.files:
      raise FlagError(f'--ref_stats {path} holds {sorted(z.files)}; expected the arrays mu '
                       f'[D] and sigma [D, D] (TTUR / pytorch-fid statistics)')
    mu, sigma = z['mu'].astype(np.float64), z['sigma'].astype(np.float64)
    extractor = str(z['extractor']) if 'extractor' in z.files else None
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise FlagError(f'--ref_stats {path}: mu has shape {mu.shape} and sigma {sigma.shape}; '
                     f'expected [D] and [D, D]')
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise FlagError(f'--ref_stats {path} holds non-finite values')
  return {'mu': mu, 'sigma': sigma, 'extractor': extractor, 'source': path}


def check_images(images):
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'expected uint8 images [N, H, W, 1 or 3], got {images.dtype} {images.shape}')
  return images


def write_npz_arr0(path, images):
  """One ``.npz`` with ``arr_0`` = uint8 images [N, H, W, C]; never replaces a file."""
  images = check_images(images)
  buf = io.BytesIO()
  np.savez(buf, images)  # a positional array is stored as arr_0
  utils.atomic_write(path, buf.getvalue(), overwrite=False)
  return path


def write_png_folder(folder, images):
  """``<folder>/000000.png, ...``, one image each (grey images as 8-bit grey PNGs). The
  folder must not hold PNGs already, so two dumps are never mixed."""
  images = check_images(images)
  if tf.io.gfile.isdir(folder) and tf.io.gfile.glob(os.path.join(folder, '*.png')):
    raise FileExistsError(f'{folder} already holds PNG files; pass an empty or new folder')
  tf.io.gfile.makedirs(folder)
  for i, image in enumerate(images):
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format='PNG')
    utils.atomic_write(os.path.join(folder, f'{i:06d}.png'), buf.getvalue(), overwrite=False)
  return folder


def check_export_targets(npz=None, png_dir=None):
  """Fails before any sampling if an export target is taken."""
  if npz and tf.io.gfile.exists(npz):
    raise FileExistsError(f'--export_npz {npz} exists; pass another path')
  if npz and not npz.endswith('.npz'):
    raise FlagError(f'--export_npz {npz} must end in .npz')
  if png_dir and tf.io.gfile.isdir(png_dir) and tf.io.gfile.glob(os.path.join(png_dir, '*.png')):
    raise FileExistsError(f'--export_png_dir {png_dir} already holds PNG files; pass an empty '
                          f'or new folder')


def export_samples(images, *, npz=None, png_dir=None):
  """Writes the samples in the formats asked for; returns a description of what was
  written (empty if nothing was asked)."""
  written = []
  if npz:
    written.append(f'{write_npz_arr0(npz, images)} (arr_0)')
  if png_dir:
    written.append(f'{len(images)} PNGs in {write_png_folder(png_dir, images)}')
  return ', '.join(written)


def read_sample_shards(paths):
  """The ``samples`` of the evaluation's dump shards, concatenated."""
  parts = []
  for p in paths:
    with tf.io.gfile.GFile(p, 'rb') as f, np.load(io.BytesIO(f.read())) as z:
      parts.append(z['samples'])
  return np.concatenate(parts, axis=0)
