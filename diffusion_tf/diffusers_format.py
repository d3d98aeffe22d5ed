"""The diffusers format as a serialisation of our objects: ``UNet2DModel`` configs <-> `UNet`
arguments, diffusers tensor names <-> our TF1 variable names, scheduler configs <-> our
diffusion objects, and the weight files (``diffusion_pytorch_model.safetensors``, ``.bin``).

Layouts: a diffusers Conv2d weight is OIHW (ours HWIO), a Linear weight is [out, in] (ours
[in, out]); diffusers lists the up blocks from the lowest resolution up (``up_blocks.0`` is
our ``up_{L-1}``). Attention layers carry either the names of the google repos
(``query/key/value/proj_attn``) or of current diffusers (``to_q/to_k/to_v/to_out.0``).
"""

import json
import math
import os

import numpy as np
import tensorflow as tf

from . import nn
from .checkpoints import _summarise  # the same listing as checkpoint mismatches
from .diffusion_utils_2 import GaussianDiffusion2
from .errors import ModelFileError

WEIGHTS_SAFETENSORS = 'diffusion_pytorch_model.safetensors'
WEIGHTS_BIN = 'diffusion_pytorch_model.bin'
# The diffusers version whose files the tests compare ours with (tests/fixtures).
DIFFUSERS_VERSION = '0.42.1'


class DiffusersFormatError(ModelFileError):
  """A diffusers config, weight file or tensor set that we cannot map onto our objects (a
  `errors.ModelFileError`, so a ValueError and a user error)."""


# ----------------------------------------------------------------------------- UNet2DModel config

# UNet2DModel's constructor defaults: a config.json may omit any of these (the google repos
# predate most), and diffusers then takes the default.
UNET_DEFAULTS = {
    'sample_size': None, 'in_channels': 3, 'out_channels': 3, 'center_input_sample': False,
    'time_embedding_type': 'positional', 'time_embedding_dim': None, 'freq_shift': 0,
    'flip_sin_to_cos': True,
    'down_block_types': ['DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'],
    'mid_block_type': 'UNetMidBlock2D',
    'up_block_types': ['AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'],
    'block_out_channels': [224, 448, 672, 896], 'layers_per_block': 2,
    'mid_block_scale_factor': 1, 'downsample_padding': 1, 'downsample_type': 'conv',
    'upsample_type': 'conv', 'dropout': 0.0, 'act_fn': 'silu', 'attention_head_dim': 8,
    'norm_num_groups': 32, 'attn_norm_num_groups': None, 'norm_eps': 1e-05,
    'resnet_time_scale_shift': 'default', 'add_attention': True, 'class_embed_type': None,
    'num_class_embeds': None, 'num_train_timesteps': None,
}
# Options our U-Net has no counterpart for: the only value each may take.
_UNET_FIXED = {
    'center_input_sample': False, 'time_embedding_type': 'positional', 'time_embedding_dim': None,
    'mid_block_type': 'UNetMidBlock2D', 'mid_block_scale_factor': 1, 'downsample_type': 'conv',
    'upsample_type': 'conv', 'act_fn': 'silu', 'attn_norm_num_groups': None,
    'resnet_time_scale_shift': 'default', 'add_attention': True, 'class_embed_type': None,
    'num_class_embeds': None,
}
_DOWN_TYPES = {'DownBlock2D': False, 'AttnDownBlock2D': True}
_UP_TYPES = {'UpBlock2D': False, 'AttnUpBlock2D': True}


def unet_config_with_defaults(config):
  """The config as diffusers sees it: every option, defaults filled in, bookkeeping dropped."""
  known = {k: v for k, v in config.items() if not k.startswith('_')}
  return dict(UNET_DEFAULTS, **known)


def _positive_int(value):
  return type(value) is int and value > 0


def _check_types(cfg):
  """Refuses, naming the option, values of the wrong type or range (a damaged or hostile
  config), before they reach the U-Net's constructor."""
  for key in ('in_channels', 'out_channels', 'layers_per_block', 'norm_num_groups'):
    if not _positive_int(cfg[key]):
      raise DiffusersFormatError(f'UNet2DModel option {key}={cfg[key]!r}: expected a positive int')
  for key in ('block_out_channels', 'down_block_types', 'up_block_types'):
    if not isinstance(cfg[key], (list, tuple)) or not cfg[key]:
      raise DiffusersFormatError(f'UNet2DModel option {key}={str(cfg[key])[:80]}: expected a '
                                 f'non-empty list')
  if not all(_positive_int(c) for c in cfg['block_out_channels']):
    raise DiffusersFormatError(f'UNet2DModel option block_out_channels='
                               f'{str(cfg["block_out_channels"])[:80]}: expected positive ints')
  head_dim = cfg['attention_head_dim']
  if head_dim is not None and not _positive_int(head_dim) and not isinstance(head_dim, list):
    raise DiffusersFormatError(f'UNet2DModel option attention_head_dim={head_dim!r}: expected a '
                               f'positive int or null')
  for key, low, high in (('norm_eps', 0, 1), ('dropout', 0, 1), ('freq_shift', -1e6, 1e6)):
    value = cfg[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value < high:
      raise DiffusersFormatError(f'UNet2DModel option {key}={value!r}: expected a number in '
                                 f'[{low}, {high})')


def unet_kwargs_from_config(config, *, name='model'):
  """`UNet` keyword arguments (with ``in_ch`` and ``resolution``) for a ``UNet2DModel`` config.

  Refuses, naming the option and its value, anything our U-Net does not compute.
  """
  cfg = unet_config_with_defaults(config)
  cls = config.get('_class_name', 'UNet2DModel')
  if cls != 'UNet2DModel':
    raise DiffusersFormatError(f'_class_name {cls!r} is not supported: only UNet2DModel '
                               f'(pixel-space DDPM U-Nets) maps onto our UNet')
  unknown = sorted(set(cfg) - set(UNET_DEFAULTS))
  if unknown:
    raise DiffusersFormatError(f'UNet2DModel config has options we do not know: {unknown}')
  for key, value in _UNET_FIXED.items():
    if cfg[key] != value and not (isinstance(value, (int, float)) and cfg[key] == float(value)):
      raise DiffusersFormatError(f'UNet2DModel option {key}={cfg[key]!r} is not supported '
                                 f'(only {value!r})')
  _check_types(cfg)
  down, up, chs = cfg['down_block_types'], cfg['up_block_types'], list(cfg['block_out_channels'])
  for types, table, key in ((down, _DOWN_TYPES, 'down_block_types'), (up, _UP_TYPES, 'up_block_types')):
    bad = [t for t in types if t not in table]
    if bad:
      raise DiffusersFormatError(f'UNet2DModel option {key} has unsupported blocks {bad} '
                                 f'(supported: {sorted(table)})')
  if not len(down) == len(up) == len(chs):
    raise DiffusersFormatError(f'UNet2DModel config: {len(down)} down blocks, {len(up)} up blocks '
                               f'and {len(chs)} block_out_channels must be equally many')
  size = cfg['sample_size']
  if isinstance(size, (list, tuple)):
    if len(size) != 2 or size[0] != size[1]:
      raise DiffusersFormatError(f'UNet2DModel option sample_size={size!r}: only square images')
    size = size[0]
  if not isinstance(size, int) or size % 2 ** (len(chs) - 1):
    raise DiffusersFormatError(f'UNet2DModel option sample_size={size!r}: expected an int '
                               f'divisible by 2**{len(chs) - 1}')
  if cfg['downsample_padding'] not in (0, 1):
    raise DiffusersFormatError(f'UNet2DModel option downsample_padding='
                               f'{cfg["downsample_padding"]!r} is not supported (0 or 1)')
  head_dim = cfg['attention_head_dim']
  if isinstance(head_dim, (list, tuple)):
    raise DiffusersFormatError(f'UNet2DModel option attention_head_dim={head_dim!r}: one int or null')
  num_levels = len(chs)
  return dict(
      ch=chs[0], out_ch=cfg['out_channels'], block_out_channels=tuple(chs),
      num_res_blocks=cfg['layers_per_block'], attn_resolutions=(),
      attn_levels=(tuple(_DOWN_TYPES[t] for t in down),
                   tuple(_UP_TYPES[up[num_levels - 1 - level]] for level in range(num_levels))),
      attn_head_dim=head_dim, dropout=float(cfg['dropout']), resamp_with_conv=True, name=name,
      in_ch=cfg['in_channels'], resolution=size, downsample_padding=cfg['downsample_padding'],
      flip_sin_to_cos=bool(cfg['flip_sin_to_cos']), freq_shift=cfg['freq_shift'],
      norm_num_groups=cfg['norm_num_groups'], norm_eps=float(cfg['norm_eps']))


def _attn_flags(net):
  """Per-level attention flags (down, up) of a built UNet, from its modules."""
  return (tuple(bool(level['attns']) for level in net.down),
          tuple(bool(level['attns']) for level in net.up))


def unet_config(net):
  """The ``UNet2DModel`` config (every option, as diffusers writes it) of a built `UNet`."""
  if net.resolution is None:
    raise ValueError('The UNet is not built yet: pass resolution= or call it once')
  if not net.resamp_with_conv and net.resolution % 2 ** (len(net.block_out_channels) - 1):
    raise DiffusersFormatError(
        f'A UNet with resamp_with_conv=False at resolution {net.resolution} has no UNet2DModel '
        'counterpart: its average pooling meets an odd size, where no convolution equals it')
  down, up = _attn_flags(net)
  L = len(net.block_out_channels)
  config = dict(UNET_DEFAULTS)
  config.update(
      sample_size=net.resolution, in_channels=net.in_ch, out_channels=net.out_ch,
      freq_shift=net.freq_shift, flip_sin_to_cos=net.flip_sin_to_cos,
      down_block_types=['AttnDownBlock2D' if a else 'DownBlock2D' for a in down],
      up_block_types=['AttnUpBlock2D' if up[L - 1 - i] else 'UpBlock2D' for i in range(L)],
      block_out_channels=list(net.block_out_channels), layers_per_block=net.num_res_blocks,
      downsample_padding=net.downsample_padding, dropout=float(net.dropout),
      attention_head_dim=net.attn_head_dim, norm_num_groups=net.norm['num_groups'],
      norm_eps=float(net.norm['eps']))
  if net.ch != net.block_out_channels[0]:
    raise DiffusersFormatError(f'UNet ch={net.ch} differs from its first level\'s '
                               f'{net.block_out_channels[0]} channels: no UNet2DModel counterpart')
  return {'_class_name': 'UNet2DModel', '_diffusers_version': DIFFUSERS_VERSION, **config}


# ----------------------------------------------------------------------------- tensor names

# How a diffusers tensor relates to our variable: conv (OIHW <-> HWIO), linear ([out, in] <->
# [in, out]), conv1x1 (a 1x1 Conv2d [out, in, 1, 1] <-> our [in, out] NIN kernel), same.
def _to_ours(kind, value):
  if kind == 'conv':
    return np.transpose(value, (2, 3, 1, 0))
  if kind in ('linear', 'conv1x1'):
    return np.transpose(value.reshape(value.shape[:2]) if value.ndim == 4 else value)
  return value


def _to_theirs(kind, value):
  if kind == 'conv':
    return np.transpose(value, (3, 2, 0, 1))
  if kind == 'linear':
    return np.transpose(value)
  if kind == 'conv1x1':
    return np.transpose(value)[:, :, None, None]
  return value


def _their_shape(kind, shape):
  """The shape `_to_theirs` gives a variable of ``shape`` (computed, nothing allocated)."""
  shape = tuple(shape)
  if kind == 'conv':
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == 'linear':
    return shape[::-1]
  if kind == 'conv1x1':
    return shape[::-1] + (1, 1)
  return shape


def _layer(entries, layer, key, kind):
  """Weight and bias of a Dense/NIN/Conv2D (``W``, ``b``) or GroupNorm (``gamma``, ``beta``)."""
  if hasattr(layer, 'gamma'):
    entries.append((f'{key}.weight', layer.gamma, 'same'))
    entries.append((f'{key}.bias', layer.beta, 'same'))
    return
  entries.append((f'{key}.weight', layer.W, kind))
  if layer.b is not None:
    entries.append((f'{key}.bias', layer.b, 'same'))


def _resnet(entries, block, key):
  _layer(entries, block.norm1, f'{key}.norm1', None)
  _layer(entries, block.conv1, f'{key}.conv1', 'conv')
  _layer(entries, block.temb_proj, f'{key}.time_emb_proj', 'linear')
  _layer(entries, block.norm2, f'{key}.norm2', None)
  _layer(entries, block.conv2, f'{key}.conv2', 'conv')
  if block.shortcut is not None:
    kind = 'conv' if isinstance(block.shortcut, nn.Conv2D) else 'conv1x1'
    _layer(entries, block.shortcut, f'{key}.conv_shortcut', kind)


def _attention(entries, block, key):
  _layer(entries, block.norm, f'{key}.group_norm', None)
  for ours, theirs in (('q', 'to_q'), ('k', 'to_k'), ('v', 'to_v'), ('proj_out', 'to_out.0')):
    _layer(entries, getattr(block, ours), f'{key}.{theirs}', 'linear')


def _level(entries, level, key, resample):
  """One resolution level of the U-Net: its resnets, attentions and 'downsample' or 'upsample'
  convolution (diffusers' ``downsamplers.0`` / ``upsamplers.0``)."""
  for j, block in enumerate(level['blocks']):
    _resnet(entries, block, f'{key}.resnets.{j}')
  for j, block in enumerate(level['attns']):
    _attention(entries, block, f'{key}.attentions.{j}')
  module = level[resample]
  if module is not None:
    _layer(entries, module.conv or _FixedConv(module, resample), f'{key}.{resample}rs.0.conv', 'conv')


class _FixedConv:
  """The convolution diffusers' blocks always resample with, standing in for a U-Net that has
  none (``resamp_with_conv=False``, the digits models) with the same function: 2x2 average
  pooling is a stride-2 3x3 kernel of 1/4 on the window's four taps (where ``padding`` puts
  them), plain nearest upsampling the identity 3x3 kernel; zero biases. `state_dict` writes
  these values and `load_state_dict` accepts only them, so such a U-Net goes to diffusers and
  comes back (as one with convolutions) computing the same images."""

  def __init__(self, module, resample):
    ch, eye = module.ch, np.eye(module.ch, dtype=np.float32)
    kernel = np.zeros((3, 3, ch, ch), np.float32)
    if resample == 'downsample':
      taps = (0, 1) if module.padding == 0 else (1, 2)  # 'SAME' pads bottom/right only
      for h in taps:
        for w in taps:
          kernel[h, w] = eye / 4.
    else:
      kernel[1, 1] = eye
    self.W, self.b = _Fixed(kernel, module.name), _Fixed(np.zeros(ch, np.float32), module.name)


class _Fixed:
  """A constant with the part of a variable's interface `tensor_map`'s users touch."""

  def __init__(self, value, where):
    self.value, self.where, self.shape = value, where, tf.TensorShape(value.shape)

  def numpy(self):
    return self.value

  def assign(self, value):
    if not np.allclose(value, self.value, rtol=0, atol=1e-6):
      raise DiffusersFormatError(f'{self.where} resamples without a convolution: the weights '
                                 'hold a trained one (load them into a U-Net built from their '
                                 'config instead)')


def tensor_map(net):
  """[(diffusers key, our variable, kind)] for every variable of a built `UNet`, in
  the order diffusers lists its state dict."""
  if net.resolution is None:
    raise ValueError('The UNet is not built yet: pass resolution= or call it once')
  e = []
  _layer(e, net.conv_in, 'conv_in', 'conv')
  _layer(e, net.temb_dense0, 'time_embedding.linear_1', 'linear')
  _layer(e, net.temb_dense1, 'time_embedding.linear_2', 'linear')
  for i, level in enumerate(net.down):
    _level(e, level, f'down_blocks.{i}', 'downsample')
  for i, level in enumerate(reversed(net.up)):  # diffusers lists the up blocks from the bottom
    _level(e, level, f'up_blocks.{i}', 'upsample')
  _attention(e, net.mid_attn_1, 'mid_block.attentions.0')
  _resnet(e, net.mid_block_1, 'mid_block.resnets.0')
  _resnet(e, net.mid_block_2, 'mid_block.resnets.1')
  _layer(e, net.norm_out, 'conv_norm_out', None)
  _layer(e, net.conv_out, 'conv_out', 'conv')
  return e


# The google repos' attention names (diffusers' deprecated AttentionBlock) -> current ones.
_OLD_ATTENTION_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}


def modernise_keys(tensors):
  """Renames ``attentions.N.{query,key,value,proj_attn}.*`` to ``to_q/to_k/to_v/to_out.0``."""
  out = {}
  for key, value in tensors.items():
    parts = key.split('.')
    if len(parts) >= 3 and parts[-3].isdigit() and 'attentions' in parts and parts[-2] in _OLD_ATTENTION_NAMES:
      key = '.'.join(parts[:-2] + [_OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
    out[key] = value
  return out


def _shape_fits(kind, ours, theirs):
  """Whether a diffusers tensor of shape ``theirs`` is our variable of shape ``ours``."""
  want = _their_shape(kind, tuple(ours))
  return tuple(theirs) == want or (kind == 'linear' and len(theirs) == 4
                                   and tuple(theirs) == want + (1, 1))


def weight_problems(entries, shapes):
  """What keeps tensors of ``shapes`` ({diffusers key: shape}, current names) from being the
  variables of `tensor_map` ``entries``: ['missing (n): ...', 'shape mismatch (n): ...',
  'unexpected (n): ...'], empty when they match."""
  missing = [key for key, _, _ in entries if key not in shapes]
  misshaped = [f'{key} {list(shapes[key])} vs model {list(_their_shape(kind, tuple(var.shape.as_list())))}'
               for key, var, kind in entries
               if key in shapes and not _shape_fits(kind, var.shape.as_list(), shapes[key])]
  unexpected = sorted(set(shapes) - {key for key, _, _ in entries})
  return [_summarise(title, items) for title, items in (
      ('missing', missing), ('shape mismatch', misshaped), ('unexpected', unexpected)) if items]


def load_state_dict(net, tensors, *, source='the weights'):
  """Assigns a diffusers state dict ({key: array}) to a built `UNet`.

  Checks everything first and raises `DiffusersFormatError` listing missing, unexpected and
  mis-shaped tensors, assigning nothing then.
  """
  tensors = modernise_keys(tensors)
  entries = tensor_map(net)
  problems = weight_problems(entries, {k: np.shape(v) for k, v in tensors.items()})
  if problems:
    raise DiffusersFormatError(f'{source} do not match the UNet2DModel config: '
                               + '; '.join(problems))
  for key, var, kind in entries:
    var.assign(_to_ours(kind, np.asarray(tensors[key]).astype(np.float32)))


def state_dict(net):
  """A built `UNet`'s weights as a diffusers state dict {key: float32 array}, current names."""
  return {key: np.ascontiguousarray(_to_theirs(kind, var.numpy()).astype(np.float32))
          for key, var, kind in tensor_map(net)}


# ----------------------------------------------------------------------------- weight files

# Bytes per element of the safetensors dtypes; the float ones are what we read.
SAFETENSORS_ITEMSIZE = {'F64': 8, 'F32': 4, 'F16': 2, 'BF16': 2, 'F8_E4M3': 1, 'F8_E5M2': 1,
                        'I64': 8, 'U64': 8, 'I32': 4, 'U32': 4, 'I16': 2, 'U16': 2, 'I8': 1,
                        'U8': 1, 'BOOL': 1}
READABLE_DTYPES = ('F32', 'F16', 'F64')
MAX_HEADER_BYTES = 100 * 2 ** 20  # safetensors' own limit


def _header_entry(path, name, entry, data_bytes):
  """(dtype, shape) of one header entry, whose bytes must lie inside the file's data."""
  try:
    dtype, shape, (begin, end) = entry['dtype'], entry['shape'], entry['data_offsets']
    shape = tuple(shape)
    ok = (dtype in SAFETENSORS_ITEMSIZE and all(type(d) is int and d >= 0 for d in shape)
          and type(begin) is int and type(end) is int)
  except (TypeError, KeyError, ValueError):
    ok = False
  if not ok:
    raise DiffusersFormatError(f'{path} is damaged: its header entry {name!r} is not a tensor '
                               f'description ({str(entry)[:100]})')
  need = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
  if end - begin != need or begin < 0:
    raise DiffusersFormatError(f'{path} is damaged: tensor {name!r} {dtype} {list(shape)} needs '
                               f'{need} bytes, its header gives it {end - begin}')
  if end > data_bytes:
    raise DiffusersFormatError(f'{path} is truncated: tensor {name!r} ends at byte {end} of the '
                               f'data, the file holds {data_bytes} bytes of data')
  return dtype, shape


def read_safetensors_header(path):
  """{name: (dtype, shape)} of a safetensors file, read from its header alone (the 8-byte
  length and the JSON after it; never the tensors). `DiffusersFormatError` naming the file
  when the header is damaged or describes more data than the file holds (a truncated copy)."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    length = int.from_bytes(f.read(8), 'little') if size >= 8 else -1
    if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
      raise DiffusersFormatError(f'{path} is damaged or not a safetensors file: its header length '
                                 f'{length} does not fit its {size} bytes')
    raw = f.read(length)
  try:
    header = json.loads(raw.decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DiffusersFormatError(f'{path} is damaged: its header is not JSON ({e})') from None
  if not isinstance(header, dict):
    raise DiffusersFormatError(f'{path} is damaged: its header is not a JSON object')
  header.pop('__metadata__', None)
  return {name: _header_entry(path, name, entry, size - 8 - length)
          for name, entry in header.items()}


def weights_file(folder):
  """The weight file ``folder``'s weights are read from: the safetensors file, else (with torch
  installed) the ``.bin``."""
  st = os.path.join(folder, WEIGHTS_SAFETENSORS)
  if os.path.exists(st):
    return st
  binary = os.path.join(folder, WEIGHTS_BIN)
  if os.path.exists(binary):
    try:
      import torch  # noqa: F401
    except ImportError:
      raise DiffusersFormatError(
          f'{binary} is a PyTorch pickle, which needs torch to read, and torch is not installed. '
          f'Get the safetensors file instead ({WEIGHTS_SAFETENSORS}: most Hub repos have one; '
          f'otherwise convert once where torch is installed: `python -c "import torch, '
          f'safetensors.torch as s; s.save_file(torch.load(\'{WEIGHTS_BIN}\'), '
          f'\'{WEIGHTS_SAFETENSORS}\')"`), or pip install torch') from None
    return binary
  raise FileNotFoundError(f'No weights in {folder}: expected {st} (or {WEIGHTS_BIN})')


def read_weights(folder):
  """{key: float array} from ``folder``'s diffusion_pytorch_model.safetensors (or, with torch
  installed, .bin: read with ``weights_only=True``, which runs no code from the file).
  `DiffusersFormatError` naming the file when it cannot be read."""
  path = weights_file(folder)
  try:
    if path.endswith('.safetensors'):
      from safetensors.numpy import load_file
      return load_file(path)
    import torch
    return {k: v.float().numpy() for k, v in torch.load(path, map_location='cpu',
                                                         weights_only=True).items()}
  except Exception as e:  # noqa: BLE001 -- each reader fails in its own types
    raise DiffusersFormatError(f'{path} is damaged or not a weights file: '
                               f'{type(e).__name__}: {str(e)[:200]}') from None


def write_weights(folder, tensors, *, overwrite=False):
  """Writes ``folder/diffusion_pytorch_model.safetensors`` (atomically, never over an existing
  file unless ``overwrite``)."""
  from safetensors.numpy import save
  from . import utils
  os.makedirs(folder, exist_ok=True)
  utils.atomic_write(os.path.join(folder, WEIGHTS_SAFETENSORS),
                     save(tensors, metadata={'format': 'pt'}), overwrite=overwrite)


# A config is a few KB (trained_betas of 1000 steps: ~20 KB); a larger file is not one.
MAX_JSON_BYTES = 16 * 2 ** 20


def read_json(path):
  """The JSON object in ``path``; `DiffusersFormatError` naming the file (and the line and
  column of a syntax error) when it is too large, not JSON or not an object."""
  size = os.path.getsize(path)
  if size > MAX_JSON_BYTES:
    raise DiffusersFormatError(f'{path} holds {size} bytes, more than a config can '
                               f'({MAX_JSON_BYTES}): not a config file')
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    value = json.loads(raw.decode('utf-8'))
  except UnicodeDecodeError as e:
    raise DiffusersFormatError(f'{path} is not UTF-8 text (byte {e.start})') from None
  except json.JSONDecodeError as e:
    raise DiffusersFormatError(f'{path} is not valid JSON: {e.msg} at line {e.lineno}, '
                               f'column {e.colno}') from None
  if not isinstance(value, dict):
    raise DiffusersFormatError(f'{path} holds a JSON {type(value).__name__}, expected an object '
                               f'of options')
  return value


# ----------------------------------------------------------------------------- schedulers

# The scheduler classes we map and their constructor defaults (a config may omit any).
_COMMON = {'num_train_timesteps': 1000, 'beta_start': 0.0001, 'beta_end': 0.02,
           'beta_schedule': 'linear', 'trained_betas': None, 'prediction_type': 'epsilon',
           'timestep_spacing': 'leading', 'steps_offset': 0}
_CLIPPED = {'clip_sample': True, 'thresholding': False, 'dynamic_thresholding_ratio': 0.995,
            'clip_sample_range': 1.0, 'sample_max_value': 1.0, 'rescale_betas_zero_snr': False}
SCHEDULER_DEFAULTS = {
    'DDPMScheduler': dict(_COMMON, variance_type='fixed_small', **_CLIPPED),
    'DDIMScheduler': dict(_COMMON, set_alpha_to_one=True, **_CLIPPED),
    'PNDMScheduler': dict(_COMMON, skip_prk_steps=False, set_alpha_to_one=False),
}
# The multistep solvers: the options our samplers read or refuse (diffusers has more, all
# ignored as diffusers' from_config ignores another class's fields).
_SOLVER = {'solver_order': 2, 'thresholding': False, 'dynamic_thresholding_ratio': 0.995,
           'sample_max_value': 1.0, 'lower_order_final': True, 'final_sigmas_type': 'zero',
           'use_karras_sigmas': False, 'rescale_betas_zero_snr': False}
SCHEDULER_DEFAULTS.update({
    'DPMSolverMultistepScheduler': dict(_COMMON, timestep_spacing='linspace', **_SOLVER,
                                        algorithm_type='dpmsolver++', solver_type='midpoint',
                                        euler_at_final=False, use_lu_lambdas=False),
    'UniPCMultistepScheduler': dict(_COMMON, timestep_spacing='linspace', **_SOLVER,
                                    predict_x0=True, solver_type='bh2', disable_corrector=[]),
})
# DPM-Solver++ singlestep, DEIS and SA-Solver (the singlestep class has no timestep_spacing: its
# steps are always 'linspace'-placed; the entry reads any other spacing so).
_DPM_SINGLE = dict(_SOLVER, algorithm_type='dpmsolver++', solver_type='midpoint')
_DPM_SINGLE['lower_order_final'] = False
_NO_FINAL = {k: v for k, v in _SOLVER.items() if k != 'final_sigmas_type'}
SCHEDULER_DEFAULTS.update({
    'DPMSolverSinglestepScheduler': dict(_COMMON, timestep_spacing='linspace', **_DPM_SINGLE),
    'DEISMultistepScheduler': dict(_COMMON, timestep_spacing='linspace', **_NO_FINAL,
                                   algorithm_type='deis', solver_type='logrho'),
    'SASolverScheduler': dict(_COMMON, timestep_spacing='linspace',
                              **{k: v for k, v in _NO_FINAL.items() if k != 'solver_order'},
                              predictor_order=2, corrector_order=2, tau_func=None,
                              algorithm_type='data_prediction'),
})
# The sigma-family schedulers (`sigma_samplers`): 'linspace' placement, their sigma options.
_SIGMA = dict(_COMMON, timestep_spacing='linspace')
_SIGMA_OPTIONS = {'use_karras_sigmas': False, 'use_exponential_sigmas': False, 'use_beta_sigmas': False}
_SD_BETAS = {'beta_start': 0.00085, 'beta_end': 0.012}  # Heun's and KDPM2's class defaults
SCHEDULER_DEFAULTS.update({
    'EulerDiscreteScheduler': dict(_SIGMA, **_SIGMA_OPTIONS, interpolation_type='linear',
                                   sigma_min=None, sigma_max=None, timestep_type='discrete',
                                   rescale_betas_zero_snr=False, final_sigmas_type='zero'),
    'EulerAncestralDiscreteScheduler': dict(_SIGMA, rescale_betas_zero_snr=False),
    'HeunDiscreteScheduler': dict(_SIGMA, **_SD_BETAS, **_SIGMA_OPTIONS, clip_sample=False,
                                  clip_sample_range=1.0),
    'LMSDiscreteScheduler': dict(_SIGMA, **_SIGMA_OPTIONS),
    'KDPM2DiscreteScheduler': dict(_SIGMA, **_SD_BETAS, **_SIGMA_OPTIONS),
    'KDPM2AncestralDiscreteScheduler': dict(_SIGMA, **_SD_BETAS, **_SIGMA_OPTIONS),
})
# Scheduler classes read for their noise schedule alone, as the class named here reads them:
# RePaint's own options (eta, and the jumps it takes as call arguments) are RePaintPipeline's.
READ_AS = {'RePaintScheduler': 'DDPMScheduler'}
REPAINT_KEYS = ('num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule', 'eta',
                'trained_betas', 'clip_sample')  # RePaintScheduler's whole config
_VARIANCE_TYPES = {'fixed_large': 'fixedlarge', 'fixed_small': 'fixedsmall'}
_PREDICTION_TYPES = {'epsilon': 'eps', 'sample': 'xstart'}


def scheduler_config_with_defaults(config, class_name=None):
  """The config read by ``class_name``'s scheduler (default: the one it names), as diffusers'
  ``from_config`` does: the class's options from the file, the rest defaults."""
  name = class_name or config.get('_class_name', 'DDPMScheduler')
  name = READ_AS.get(name, name)
  if name not in SCHEDULER_DEFAULTS:
    raise DiffusersFormatError(f'scheduler _class_name {name!r} is not supported '
                               f'(supported: {sorted(SCHEDULER_DEFAULTS)})')
  defaults = SCHEDULER_DEFAULTS[name]
  return {k: config.get(k, v) for k, v in defaults.items()}


def _cosine_betas(T, max_beta=0.999):
  alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)])


# The largest num_train_timesteps we build tables for (models use 1000 to 4000): a larger
# value is refused rather than allocated.
MAX_TRAIN_TIMESTEPS = 100_000


def _beta(cfg, key):
  value = cfg[key]
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
    raise DiffusersFormatError(f'scheduler option {key}={value!r} is out of range: a beta is a '
                               f'number in (0, 1)')
  return float(value)


def betas_from_scheduler_config(cfg):
  """float64 betas of a scheduler config (``trained_betas`` first, as diffusers). Refuses,
  naming the option, timesteps outside 1..`MAX_TRAIN_TIMESTEPS` and betas outside (0, 1)."""
  T = cfg['num_train_timesteps']
  if type(T) is not int or not 0 < T <= MAX_TRAIN_TIMESTEPS:
    raise DiffusersFormatError(f'scheduler option num_train_timesteps={T!r} is out of range '
                               f'(an int in 1..{MAX_TRAIN_TIMESTEPS})')
  if cfg.get('trained_betas') is not None:
    try:
      betas = np.asarray(cfg['trained_betas'], np.float64)
    except (TypeError, ValueError):
      betas = np.zeros(0)
    if betas.shape != (T,):
      raise DiffusersFormatError(f'scheduler trained_betas has {betas.size} numbers, '
                                 f'num_train_timesteps is {T}')
    if not np.all((betas > 0) & (betas < 1)):
      raise DiffusersFormatError(f'scheduler option trained_betas is out of range: '
                                 f'{int(np.sum(~((betas > 0) & (betas < 1))))} of its values are '
                                 f'not in (0, 1)')
    return betas
  schedule, b0, b1 = cfg['beta_schedule'], _beta(cfg, 'beta_start'), _beta(cfg, 'beta_end')
  if schedule == 'linear':
    return np.linspace(b0, b1, T, dtype=np.float64)
  if schedule == 'scaled_linear':
    return np.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=np.float64) ** 2
  if schedule == 'squaredcos_cap_v2':
    return _cosine_betas(T)
  raise DiffusersFormatError(f'scheduler option beta_schedule={schedule!r} is not supported '
                             f'(linear, scaled_linear, squaredcos_cap_v2 or trained_betas)')


def diffusion_from_scheduler_config(config, class_name=None, *, thresholding=False):
  """(GaussianDiffusion2, the scheduler options with defaults) for a scheduler config.

  Refuses, naming option and value, what our diffusion and samplers do not compute
  (``thresholding=True``: the sampler reading it computes diffusers' dynamic thresholding).
  """
  cfg = scheduler_config_with_defaults(config, class_name)
  if cfg.get('thresholding', False) not in (False, bool(thresholding)):
    raise DiffusersFormatError(f'scheduler option thresholding={cfg["thresholding"]!r} is not '
                               f'supported by {class_name or config.get("_class_name")} (it is by '
                               f'the multistep and singlestep solvers: dpmsolver++, unipc, deis, '
                               f'sasolver)')
  if cfg.get('rescale_betas_zero_snr', False):
    raise DiffusersFormatError(f'scheduler option rescale_betas_zero_snr='
                               f'{cfg["rescale_betas_zero_snr"]!r} is not supported')
  if cfg.get('clip_sample_range', 1.0) != 1.0:
    raise DiffusersFormatError(f'scheduler option clip_sample_range={cfg["clip_sample_range"]!r} '
                               f'is not supported (our samplers clip x0 to [-1, 1])')
  if cfg['prediction_type'] not in _PREDICTION_TYPES:
    raise DiffusersFormatError(f'scheduler option prediction_type={cfg["prediction_type"]!r} is '
                               f'not supported (epsilon or sample)')
  # DDIM and PNDM configs have no variance type (the solvers' is None); a DDPM sampler then uses
  # DDPMScheduler's default.
  variance = config.get('variance_type') or SCHEDULER_DEFAULTS['DDPMScheduler']['variance_type']
  if variance not in _VARIANCE_TYPES:
    raise DiffusersFormatError(f'scheduler option variance_type={variance!r} is not supported '
                               f'(fixed_large or fixed_small)')
  diffusion = GaussianDiffusion2(betas=betas_from_scheduler_config(cfg),
                                 model_mean_type=_PREDICTION_TYPES[cfg['prediction_type']],
                                 model_var_type=_VARIANCE_TYPES[variance], loss_type='mse')
  return diffusion, cfg


def scheduler_config(diffusion, class_name='DDPMScheduler', *, clip_sample=True, **options):
  """A diffusers scheduler config (every option of ``class_name``) describing our diffusion:
  a linear or scaled-linear beta schedule when the betas are one, else ``trained_betas``."""
  betas = np.asarray(diffusion.betas, np.float64)
  T = len(betas)
  mean_type = getattr(diffusion, 'model_mean_type', 'eps')
  var_type = getattr(diffusion, 'model_var_type', 'fixedsmall')  # v1: the posterior variance
  prediction = {v: k for k, v in _PREDICTION_TYPES.items()}.get(mean_type)
  variance = {v: k for k, v in _VARIANCE_TYPES.items()}.get(var_type)
  if prediction is None or variance is None:
    raise DiffusersFormatError(f'model_mean_type={mean_type!r} / model_var_type={var_type!r} have '
                               f'no diffusers scheduler counterpart (eps or xstart; fixedlarge or '
                               f'fixedsmall)')
  cfg = dict(SCHEDULER_DEFAULTS[class_name])
  cfg.update(num_train_timesteps=T, beta_start=float(betas[0]), beta_end=float(betas[-1]),
             prediction_type=prediction)
  # The float64 tables must come back exactly: a named schedule only if it reproduces them.
  for name in ('linear', 'scaled_linear'):
    cfg['beta_schedule'] = name
    if np.array_equal(betas_from_scheduler_config(cfg), betas):
      break
  else:
    cfg.update(beta_schedule='linear', trained_betas=[float(b) for b in betas])
  if 'clip_sample' in cfg:
    cfg['clip_sample'] = bool(clip_sample)
  if class_name == 'DDPMScheduler':
    cfg['variance_type'] = variance
  cfg.update({k: v for k, v in options.items() if k in cfg})
  return {'_class_name': class_name, '_diffusers_version': DIFFUSERS_VERSION, **cfg}


def repaint_scheduler_config(diffusion, *, eta=0.):
  """diffusers' RePaintScheduler config of our diffusion (for RePaintPipeline folders, which
  diffusers loads with that scheduler). It has no prediction or variance type: RePaint
  predicts epsilon and draws with the posterior variance, so other models are refused."""
  ddpm = scheduler_config(diffusion)
  if ddpm['prediction_type'] != 'epsilon':
    raise DiffusersFormatError(f'prediction_type {ddpm["prediction_type"]!r}: diffusers\' '
                               f'RePaintScheduler only computes epsilon-predicting models')
  cfg = {k: ddpm.get(k) for k in REPAINT_KEYS}
  cfg['eta'] = float(eta)
  return {'_class_name': 'RePaintScheduler', '_diffusers_version': DIFFUSERS_VERSION, **cfg}
