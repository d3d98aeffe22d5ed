"""The reference side of the benchmark: Hugging Face diffusers' `UNet2DModel` on PyTorch (CPU).

Imported by `worker.py` when it runs under benchmarks/.venv-torch (see setup_torch_env.sh).
The models are built from their configurations (no hub download) and mirror ours:
``google/ddpm-cifar10-32`` for 32x32 (and, at sample_size 64, for the 64x64 case) and
``google/ddpm-ema-church-256`` for the 256x256 'unet2d16b2c112244' network.
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F

import diffusers
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

FRAMEWORK = 'diffusers'

LR, CLIP, EMA_DECAY = 2e-4, 1.0, 0.9999

_CIFAR = dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
              layers_per_block=2,
              down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
              up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
              norm_num_groups=32, norm_eps=1e-6, dropout=0.1, attention_head_dim=None,
              flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
              resnet_time_scale_shift='default', act_fn='silu')
_CHURCH = dict(_CIFAR, block_out_channels=(128, 128, 256, 256, 512, 512),
               down_block_types=('DownBlock2D', 'DownBlock2D', 'DownBlock2D', 'DownBlock2D',
                                 'AttnDownBlock2D', 'DownBlock2D'),
               up_block_types=('UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D',
                               'UpBlock2D', 'UpBlock2D'),
               dropout=0.0)
CONFIGS = {
    'cifar32': dict(_CIFAR, sample_size=32),
    'cifar64': dict(_CIFAR, sample_size=64),
    'big256': dict(_CHURCH, sample_size=256),
}
RESOLUTION = {'cifar32': 32, 'cifar64': 64, 'big256': 256}

_DTYPES = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def setup_threads(n):
  if n:
    torch.set_num_threads(n)


def versions():
  return {'torch': torch.__version__, 'diffusers': diffusers.__version__,
          'numpy': np.__version__, 'python': sys.version.split()[0],
          'torch_threads': torch.get_num_threads()}


def make_net(model, seed=0):
  torch.manual_seed(seed)
  return UNet2DModel(**CONFIGS[model])


def num_params(net):
  return int(sum(p.numel() for p in net.parameters()))


def _autocast(dtype):
  if _DTYPES[dtype] is None:
    return torch.autocast('cpu', enabled=False)
  return torch.autocast('cpu', dtype=_DTYPES[dtype])


class Bench:
  def __init__(self, fn, args):
    self.fn, self.args = fn, args

  def run(self):
    self.fn(*self.args)

  def tracing_count(self):
    return None


_NETS = {}


def _net(model):
  if model not in _NETS:
    _NETS[model] = make_net(model).eval()
  return _NETS[model]


def _inputs(model, batch, seed=1):
  res = RESOLUTION[model]
  rng = np.random.default_rng(seed)
  # Same values as ours, NCHW.
  x = rng.uniform(-1, 1, size=(batch, res, res, 3)).astype(np.float32).transpose(0, 3, 1, 2)
  t = rng.integers(0, 1000, size=(batch,)).astype(np.int64)
  return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(t)


def _betas():
  return np.linspace(1e-4, 0.02, 1000, dtype=np.float64)


def make_train_step(net, dtype='float32'):
  net.train()
  params = [p for p in net.parameters() if p.requires_grad]
  opt = torch.optim.Adam(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, foreach=True)
  ema = [p.detach().clone() for p in params]
  ac = np.cumprod(1. - _betas())
  sqrt_ac = torch.tensor(np.sqrt(ac), dtype=torch.float32)
  sqrt_1m_ac = torch.tensor(np.sqrt(1. - ac), dtype=torch.float32)

  def step(x, t=None, noise=None):
    B = x.shape[0]
    if t is None:
      t = torch.randint(0, 1000, (B,))
    if noise is None:
      noise = torch.randn_like(x)
    x_t = sqrt_ac[t].view(-1, 1, 1, 1) * x + sqrt_1m_ac[t].view(-1, 1, 1, 1) * noise
    with _autocast(dtype):
      out = net(x_t, t).sample
    loss = F.mse_loss(out.float(), noise)  # = mean over the batch of meanflat((eps - out)^2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, CLIP, foreach=True)
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1. - EMA_DECAY)  # ema += (1 - decay) * (p - ema)
    return loss.item()

  return step


def _faster(net, x, channels_last, compile):
  """PyTorch at its best on CPU: NHWC memory format and/or torch.compile (inductor, which
  generates and compiles C++ kernels with the local compiler on the first calls)."""
  if channels_last:
    net = net.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  if compile:
    net = torch.compile(net)
  return net, x


def build(kind, model='cifar32', batch=16, dtype='float32', xla=False, channels_last=False,
          compile=False):
  if xla:
    raise ValueError('xla is an option of our side only')
  x, t = _inputs(model, batch)
  if (channels_last or compile) and kind not in ('forward', 'train'):
    raise ValueError('channels_last / compile variants are built for forward and train only')
  if kind == 'forward':
    net, x = _faster(_net(model) if not (channels_last or compile) else make_net(model).eval(),
                     x, channels_last, compile)

    def fwd(x_, t_):
      with torch.inference_mode(), _autocast(dtype):
        return net(x_, t_).sample.float()
    return Bench(fwd, (x, t))
  if kind == 'train':
    net, x = _faster(make_net(model), x, channels_last, compile)
    return Bench(make_train_step(net, dtype), (x,))
  if kind == 'sample_ddpm':
    net = _net(model)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear', beta_start=1e-4,
                          beta_end=0.02, variance_type='fixed_large', clip_sample=True)
    sched.set_timesteps(1000)

    def sample_step(x_, i):
      with torch.inference_mode(), _autocast(dtype):
        eps = net(x_, torch.full((x_.shape[0],), i, dtype=torch.long)).sample.float()
        return sched.step(eps, i, x_).prev_sample
    return Bench(sample_step, (x, 500))
  if kind.startswith('sample_ddim'):  # 'sample_ddim:K' runs K steps of the 50-step schedule
    k = int(kind.split(':')[1])
    net = _net(model)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule='linear', beta_start=1e-4,
                          beta_end=0.02, clip_sample=True, set_alpha_to_one=True)
    sched.set_timesteps(50)
    steps = sched.timesteps[:k]

    def ddim_loop(x_):
      with torch.inference_mode(), _autocast(dtype):
        for s in steps:
          eps = net(x_, s.expand(x_.shape[0])).sample.float()
          x_ = sched.step(eps, s, x_, eta=0.).prev_sample
      return x_
    return Bench(ddim_loop, (x,))
  raise ValueError(kind)
