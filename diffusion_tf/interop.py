"""Files other tools read and write: FID tools' (so our numbers compare with theirs) and the
images users bring to edit.

* Reference statistics in the TTUR / pytorch-fid format: an ``.npz`` with ``mu`` [D] and
  ``sigma`` [D, D] (e.g. TTUR's ``fid_stats_cifar10_train.npz``), or our own cache files
  (`reference_stats.save_stats`), read by :func:`load_reference_stats`.
* Samples as one ``.npz`` holding ``arr_0``, uint8 [N, H, W, C] (what guided-diffusion's
  evaluator reads), by :func:`write_npz_arr0`.
* Samples as a folder of PNG files ``000000.png, ...`` (what clean-fid and torch-fidelity
  read), by :func:`write_png_folder`.
* Images and masks to edit (`read_images`, `fit_images`, `binary_masks`, `check_masks`): an
  ``.npz`` (``images``, ``arr_0`` or ``samples``), PNG / JPEG files or folders of them.
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


# ----------------------------------------------------------------------------- images to edit

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
NPZ_IMAGE_KEYS = ('images', 'arr_0', 'samples')


def read_images(spec, flag='--images'):
  """uint8 [N, H, W, C] from ``spec``: an ``.npz`` (``images``, ``arr_0`` or ``samples``,
  uint8 NHWC or NHW), a PNG / JPEG file, a folder of them (sorted by name) or several of
  these separated by commas. Images of a list must share their size."""
  if not spec or not isinstance(spec, str):
    raise FlagError(f'{flag} is required: an .npz, a PNG / JPEG file or a folder of them')
  parts = [_read_one(p.strip(), flag) for p in spec.split(',') if p.strip()]
  sizes = {p.shape[1:3] for p in parts}
  if len(sizes) > 1:
    raise FlagError(f'{flag}: the images differ in size ({sorted(sizes)}); pass --resize or '
                    f'images of one size')
  channels = max(p.shape[3] for p in parts)
  return np.concatenate([np.repeat(p, channels // p.shape[3], axis=3) for p in parts])


def _read_one(path, flag):
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'{flag} {path} does not exist')
  if tf.io.gfile.isdir(path):
    names = sorted(n for n in tf.io.gfile.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
      raise FlagError(f'{flag} {path} holds no PNG or JPEG images')
    return read_images(','.join(os.path.join(path, n) for n in names), flag)
  if path.endswith('.npz'):
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = np.load(io.BytesIO(f.read()))
      key = next((k for k in NPZ_IMAGE_KEYS if k in data.files), None)
      if key is None:
        raise FlagError(f'{flag} {path} has none of the arrays {NPZ_IMAGE_KEYS} (it has {data.files})')
      images = data[key]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
      raise FlagError(f'{flag} {path}: {key} must be uint8 [N, H, W, C] (or [N, H, W]), got '
                      f'{images.dtype} {images.shape}')
    return images[..., None] if images.ndim == 3 else images
  if not path.lower().endswith(IMAGE_EXTENSIONS):
    raise FlagError(f'{flag} {path} is not an .npz, a PNG / JPEG file or a folder')
  with tf.io.gfile.GFile(path, 'rb') as f:
    image = Image.open(io.BytesIO(f.read()))
    image = np.asarray(image.convert('L' if image.mode in ('1', 'L', 'I', 'I;16') else 'RGB'))
  return (image[..., None] if image.ndim == 2 else image)[None]


def fit_images(images, shape, *, resize=False, flag='--images', nearest=False):
  """``images`` uint8 [N, H, W, C] at ``shape`` (H, W, C): grey <-> RGB converted; another
  size resized with ``resize`` (bicubic; ``nearest`` for masks) and refused otherwise."""
  H, W, C = shape
  if images.shape[3] != C:
    if C == 1:  # grey as the mean of the channels
      images = images.mean(axis=3, keepdims=True).round().astype(np.uint8)
    else:
      images = np.repeat(images[..., :1], C, axis=3)
  if images.shape[1:3] == (H, W):
    return images
  if not resize:
    raise FlagError(f'{flag}: images of {images.shape[1]}x{images.shape[2]}, the model takes '
                    f'{H}x{W}; pass --resize to resize them')
  method = Image.NEAREST if nearest else Image.BICUBIC
  out = [np.asarray(Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).resize((W, H), method))
         for im in images]
  return np.stack([o[..., None] if o.ndim == 2 else o for o in out])


def binary_masks(masks, *, invert=False):
  """uint8 {0, 1} [N, H, W, 1] (1 keep, 0 fill) from masks read by `read_images`: the channels'
  mean, white (>= 128, diffusers' 0.5) keeps; masks holding only 0 and 1 are taken as they
  are. ``invert``: white fills."""
  grey = masks.mean(axis=3, keepdims=True)
  keep = grey > 0 if grey.max() <= 1 else grey >= 128
  return (keep != bool(invert)).astype(np.uint8)


def check_masks(masks, images, flag='--masks'):
  """``masks`` [1 or N, H, W, 1] broadcast to the N ``images`` (the same H, W)."""
  if masks.shape[1:3] != images.shape[1:3]:
    raise FlagError(f'{flag}: masks of {masks.shape[1]}x{masks.shape[2]}, images of '
                    f'{images.shape[1]}x{images.shape[2]}; they must have the same size')
  if len(masks) not in (1, len(images)):
    raise FlagError(f'{flag}: {len(masks)} masks for {len(images)} images (pass one mask, or one '
                    f'per image)')
  return np.broadcast_to(masks, images.shape[:3] + (1,)).copy()
