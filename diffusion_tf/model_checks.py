"""Checks of a model's files made before its network is built: a folder or checkpoint from
elsewhere may be damaged or hostile, and building first costs the memory its config asks for.

How the expected variables are known without allocating them: `listed_unet` runs the U-Net's
own constructor (`UNet.build`, the one code that decides which layers exist and their shapes)
under `nn.shapes_only`, where every layer records the name and shape of the variable it would
create (`nn.VariableShape`) instead of creating it. The result is a UNet whose attributes hold
those records, so `diffusers_format.tensor_map` gives the diffusers names and shapes and
`models.unet.tf1_name` the TF1 ones, exactly as for a built network. The listing stops at a
limit (the number of tensors the weights hold), so a config asking for millions of layers
costs nothing either. Each check raises an `errors.ModelFileError` naming the file.
"""

import math
import os
import sys

import numpy as np
import tensorflow as tf

from . import checkpoints, diffusers_format as fmt, integrity, nn
from .errors import DamagedCheckpointError, ModelFileError
from .models.unet import UNet, tf1_name

# A .bin's tensors are known only once it is read: the listing's limit then.
MAX_TENSORS = 100_000


def _first_line(text, limit=300):
  text = str(text).strip().splitlines()[0] if str(text).strip() else ''
  return text if len(text) <= limit else text[:limit] + '...'


def in_file(path, fn, *args, **kwargs):
  """``fn(*args, **kwargs)``, its refusal (a ModelFileError, or the ValueError, TypeError, ...
  that values of the wrong type or range cause) said of file ``path``, as a ModelFileError."""
  try:
    return fn(*args, **kwargs)
  except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as e:
    message = _first_line(e if not isinstance(e, KeyError) else f'no {e}')
    if message.startswith(str(path)):
      raise
    error = type(e) if isinstance(e, ModelFileError) else ModelFileError
    raise error(f'{path}: {message}') from None


def listed_unet(kwargs, *, limit, source):
  """(UNet whose layers hold `nn.VariableShape`s, the list of them): the variables
  ``UNet(**kwargs)`` would create, listed by its constructor; nothing is allocated (see the
  module's docstring). More than ``limit`` variables: a ModelFileError naming ``source``."""
  try:
    with nn.shapes_only(limit) as created:
      net = UNet(**kwargs)
  except nn.TooManyVariables:
    raise fmt.DiffusersFormatError(
        f'{source} describes a network of more than {limit} tensors, more than its weights '
        f'hold: it does not describe these weights') from None
  except (ValueError, TypeError) as e:  # e.g. channels that do not split into norm groups
    raise fmt.DiffusersFormatError(f'{source}: {_first_line(e)}') from None
  return net, created


def parameter_count(shapes):
  return sum(math.prod(shape) for shape in shapes)


def check_header(weights, header, entries, config_path):
  """Refuses a safetensors header ({name: (dtype, shape)}) that cannot hold the variables of
  ``entries`` (`diffusers_format.tensor_map` of a listed U-Net): the parameter counts first,
  then the names, shapes and dtypes."""
  shapes = fmt.modernise_keys({name: shape for name, (_, shape) in header.items()})
  implied = parameter_count(var.shape.as_list() for _, var, _ in entries)
  held = parameter_count(shapes.values())
  problems = fmt.weight_problems(entries, shapes)
  if implied != held or problems:
    raise fmt.DiffusersFormatError(
        f'{weights} does not hold the network {config_path} describes: the config implies '
        f'{implied:,} parameters in {len(entries)} tensors, the file holds {held:,} in '
        f'{len(shapes)}; ' + '; '.join(problems))
  unreadable = sorted(f'{name} {dtype}' for name, (dtype, _) in header.items()
                      if dtype not in fmt.READABLE_DTYPES)
  if unreadable:
    raise fmt.DiffusersFormatError(
        f'{weights}: tensors of a dtype we do not read (only {", ".join(fmt.READABLE_DTYPES)}): '
        + checkpoints._summarise('tensors', unreadable))


def check_bin_size(weights, implied, config_path):
  """Refuses a ``.bin`` far larger than the parameters its config implies (at most 8 bytes
  each, plus the pickle's own few MB) before it is read into memory."""
  size = os.path.getsize(weights)
  if size > 8 * implied + 16 * 2 ** 20:
    raise fmt.DiffusersFormatError(
        f'{weights} holds {size:,} bytes, far more than the {implied:,} parameters {config_path} '
        f'implies: it does not hold that network')


def check_finite(named_arrays, source):
  """Refuses weights holding NaN or infinite values, naming the tensors (a network with them
  gives NaN images; refusing says which file is broken)."""
  bad = sorted(name for name, value in named_arrays if not np.all(np.isfinite(value)))
  if bad:
    raise ModelFileError(f'{source}: ' + checkpoints._summarise(
        'tensors holding NaN or infinite values', bad))


def check_variables_finite(net, source):
  check_finite(((tf1_name(v), v.numpy()) for v in net.trainable_variables), source)


def _inside(path, folder):
  try:
    return os.path.commonpath([path, folder]) == folder
  except ValueError:  # different drives
    return False


def warn_links(root, paths, hub_cache, out=None):
  """Prints a warning for each of ``paths`` that is a link leading outside the model's folder
  ``root`` and the Hugging Face cache (a folder from elsewhere reading files it did not bring).
  Returns the warnings."""
  allowed = [os.path.realpath(root)] + ([os.path.realpath(hub_cache)] if hub_cache else [])
  warnings = []
  for path in paths:
    real = os.path.realpath(path)
    if os.path.exists(path) and not any(_inside(real, a) for a in allowed):
      warnings.append(f'WARNING: {path} is a link to {real}, outside the model\'s folder '
                      f'{root} and the Hugging Face cache; it is read all the same')
  for line in warnings:
    print(line, file=out or sys.stderr, flush=True)
  return warnings


def checkpoint_shapes(prefix):
  """{name: shape} of a TF1 checkpoint's index, after checking that its files are there and as
  large as the index says (nothing else is read)."""
  reason = integrity.checkpoint_damage(prefix, read_tensors=False)
  if reason is not None:
    raise DamagedCheckpointError(f'{prefix}: the checkpoint is damaged: {reason}')
  return tf.train.load_checkpoint(prefix).get_variable_to_shape_map()


def check_checkpoint(prefix, shapes, build, *, ema=True, source=None):
  """Refuses checkpoint ``prefix`` (index ``shapes``) unless it holds the variables that
  ``build()`` (a network's constructor, run here under `nn.shapes_only`) would create; a
  network it cannot make is said of ``source`` (the file describing it, default ``prefix``).
  Returns (what ``build()`` returned, holding no weights; the listing)."""
  try:
    with nn.shapes_only(len(shapes)) as created:
      built = in_file(source or prefix, build)
  except NotImplementedError as e:  # a model name we do not have
    raise ModelFileError(f'{source or prefix}: {_first_line(e)}') from None
  except nn.TooManyVariables:
    raise checkpoints.CheckpointMismatchError(
        f'Checkpoint {prefix} holds {len(shapes)} variables, fewer than the model needs') from None
  checkpoints.check_matches(prefix, {tf1_name(v): v.shape.as_list() for v in created}, shapes,
                            ema=ema)
  return built, created
