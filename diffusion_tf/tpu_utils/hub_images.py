"""Images from a `datasets` (Hugging Face) data set, as encoded bytes, for `datasets.HubDataset`.

`open_hub_images` finds the data set, in any form the `datasets` library reads:

- a ``save_to_disk`` folder (``state.json`` or ``dataset_dict.json`` in it): `load_from_disk`;
- any other local folder (parquet / arrow files, an imagefolder of PNG/JPEG with or without a
  ``metadata`` file), or a Hub id: `load_dataset` (a Hub id from its cache when offline);

takes one split and its image column as *undecoded* images (``Image(decode=False)``: each row
holds the file's bytes, or its path for an imagefolder), and checks them before anything else
runs: a missing data set, split or column, or a column that holds no images, is a one-line
error. The bytes are decoded by TensorFlow in the input pipeline's parallel ``map``, not here.
Nothing here downloads unless the name is a Hub id and the Hub can be reached (as
`load_dataset` does); ``HF_HUB_OFFLINE=1`` keeps it offline.
"""

import io
import os

import numpy as np

from ..errors import DatasetContentError, DatasetNotFoundError, UserError

SIZE_CHECK_LIMIT = 2000  # images whose size is read (headers only) before training
STREAM_SHUFFLE_BUFFER = 1000  # encoded images held to shuffle a stream
DOWNLOAD_HINT = ("on a machine with internet run `python -c \"import datasets; "
                 "datasets.load_dataset('{name}', split='{split}').save_to_disk('DIR')\"` and pass "
                 "DIR instead (or fill the Hub cache with `huggingface-cli download --repo-type "
                 "dataset {name}`)")


def _library():
  try:
    import datasets
  except ImportError:
    raise UserError("Hub data sets need the `datasets` library: pip install 'diffusion_tf[hf]' "
                    '(or pip install datasets)') from None
  return datasets


def _saved_to_disk(path):
  return any(os.path.exists(os.path.join(path, f)) for f in ('state.json', 'dataset_dict.json'))


def _looks_local(name):
  """A name that can only be a path (a Hub id is ``name`` or ``owner/name``)."""
  return name.startswith(('.', '/', '~')) or name.count('/') > 1 or os.sep != '/' and os.sep in name


def _pick_split(found, name, split):
  if not hasattr(found, 'keys'):  # a single Dataset: it is the split
    return found
  if split not in found:
    raise DatasetNotFoundError(f'Data set {name!r} has no split {split!r}; its splits: '
                               + ', '.join(sorted(found)))
  return found[split]


def _load(name, config, split, streaming, cache_dir):
  hf = _library()
  if os.path.isdir(name) and _saved_to_disk(name):
    found = _pick_split(hf.load_from_disk(name), name, split)
    return found.to_iterable_dataset() if streaming else found
  if not os.path.exists(os.path.expanduser(name)) and _looks_local(name):
    raise DatasetNotFoundError(f'Data set {name!r}: no such directory')
  try:
    return hf.load_dataset(os.path.expanduser(name), config, split=split, streaming=streaming,
                           cache_dir=cache_dir)
  except ValueError as e:
    if 'split' in str(e).lower():
      raise DatasetNotFoundError(f'Data set {name!r}: {e}') from None
    raise
  except (ConnectionError, FileNotFoundError, hf.exceptions.DatasetNotFoundError) as e:
    raise DatasetNotFoundError(
        f'Data set {name!r} is neither a directory here nor in the Hub cache, and the Hub did '
        f'not give it ({type(e).__name__}: {" ".join(str(e).split())[:200]}); '
        + DOWNLOAD_HINT.format(name=name, split=split)) from None


class HubImages:
  """One split's image column, undecoded. ``num_examples`` is None when streaming a data set
  whose size its card does not state."""

  def __init__(self, name, *, config=None, split='train', image_column='image', streaming=False,
               cache_dir=None):
    hf = _library()
    self.name, self.streaming = name, bool(streaming)
    data = _load(name, config, split, self.streaming, cache_dir)
    features = data.features or {}
    if image_column not in features:
      raise DatasetContentError(
          f'Data set {name!r} has no column {image_column!r}; its columns: '
          + (', '.join(features) or 'unknown') + ' (pass the image column as --image_column)')
    if not isinstance(features[image_column], hf.Image):
      raise DatasetContentError(
          f'Column {image_column!r} of data set {name!r} holds {features[image_column]!r}, not '
          'images; pass the image column as --image_column')
    data = data.select_columns([image_column])
    self.data = data.cast_column(image_column, hf.Image(decode=False))
    self.column = image_column
    self.num_examples = len(self.data) if not self.streaming else _stated_size(self.data, split)
    if self.num_examples == 0:
      raise DatasetNotFoundError(f'Data set {name!r}: split {split!r} has no images')

  def sizes(self, limit=SIZE_CHECK_LIMIT):
    """{(height, width): count} of the first ``limit`` images (read from their headers)."""
    from PIL import Image
    counts = {}
    for i, encoded in enumerate(self.encoded()):
      if i >= limit:
        break
      with Image.open(io.BytesIO(encoded)) as img:
        size = (img.height, img.width)
      counts[size] = counts.get(size, 0) + 1
    return counts

  def encoded(self, seed=None, repeat=False):
    """The images' encoded bytes: in the data set's order (``seed`` None) or shuffled with
    ``seed`` (a new order each pass); forever when ``repeat``."""
    epoch = 0
    while True:
      rows = self.data
      if seed is not None and not self.streaming:
        rows = rows.shuffle(seed=seed + epoch)
      encoded = (_bytes(row[self.column]) for row in rows)
      if seed is not None and self.streaming:
        encoded = _buffer_shuffled(encoded, np.random.default_rng(seed + epoch))
      yield from encoded
      epoch += 1
      if not repeat:
        return


def _buffer_shuffled(items, rng, buffer_size=STREAM_SHUFFLE_BUFFER):
  """``items`` in an order drawn through a buffer of ``buffer_size`` (a stream cannot be
  permuted whole). Ours: `IterableDataset.shuffle` took 5 s to start each pass here."""
  buffer = []
  for item in items:
    if len(buffer) < buffer_size:
      buffer.append(item)
      continue
    i = rng.integers(len(buffer))
    yield buffer[i]
    buffer[i] = item
  rng.shuffle(buffer)
  yield from buffer


def _bytes(value):
  if value.get('bytes') is not None:
    return value['bytes']
  with open(value['path'], 'rb') as f:  # an imagefolder's rows hold their file's path
    return f.read()


def _stated_size(data, split):
  splits = getattr(getattr(data, 'info', None), 'splits', None) or {}
  return splits[split].num_examples if split in splits else None


def check_sizes(images, resolution):
  """The image shape every image takes: ``resolution`` square when given, else the one size
  all images have (``DatasetContentError`` when they differ)."""
  if resolution is not None:
    return int(resolution), int(resolution)
  counts = images.sizes()
  if len(counts) > 1:
    common = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
    shown = ', '.join(f'{h}x{w} ({n})' for (h, w), n in common)
    raise DatasetContentError(
        f'Data set {images.name!r} has images of different sizes ({shown}); pass --resolution '
        'R to centre-crop and resize them to R x R')
  (h, w), = counts
  if h != w:
    raise DatasetContentError(f'Data set {images.name!r} has {h}x{w} images, not squares; pass '
                              '--resolution R to centre-crop and resize them to R x R')
  return h, w

