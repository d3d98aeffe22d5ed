"""The script models: a diffusion object and the U-Net (with the original v1 models' optional
space-to-depth), as the training loop, the samplers and the evaluation workers see a model
(`tpu_utils.Model`: ``.net``, ``.diffusion``, ``.denoise``, ``.image_shape``, ``train_fn``).
`build` makes the one a `recipes.Recipe` describes: `DiffusionModel2` for v2 diffusion
(CIFAR-10, digits), `DiffusionModel1` for v1 (CelebA-HQ, LSUN).
"""

import tensorflow as tf

from .diffusion_base import get_beta_schedule
from .diffusion_utils import GaussianDiffusion
from .diffusion_utils_2 import GaussianDiffusion2
from .errors import FlagError
from .models.unet import MODEL_CONFIGS, UNet
from .tpu_utils import tpu_utils


# --mixed_precision. 'auto' (the digits training's default) is resolved when a run starts
# (`runners.train`: bfloat16 on a CPU with native bf16, else float32); unresolved, as for a
# bare checkpoint without kwargs.json, it is float32.
MIXED_PRECISION = (None, 'none', 'float32', 'bfloat16', 'float16', 'auto')
NO_MIXED_PRECISION = (None, 'none', 'float32', 'auto')


def _build_unet(model_name, *, out_ch, dropout, image_shape, compute_dtype=None):
  if compute_dtype not in MIXED_PRECISION:
    raise FlagError(f'--mixed_precision must be one of none, bfloat16, float16, auto; got {compute_dtype!r}')
  if model_name not in MODEL_CONFIGS:
    raise NotImplementedError(f'model_name={model_name!r}; expected one of {sorted(MODEL_CONFIGS)}')
  kwargs = dict(MODEL_CONFIGS[model_name], out_ch=out_ch, dropout=dropout, name='model',
                in_ch=image_shape[2], resolution=image_shape[0])
  if compute_dtype not in NO_MIXED_PRECISION:
    kwargs['compute_dtype'] = compute_dtype
  return UNet(**kwargs)


class _BlockNet:
  """The U-Net seen through an optional space-to-depth of ``block_size`` (the original v1
  model's option): [B, H, W, C] images become [B, H/b, W/b, C*b*b] network inputs, and the
  output is mapped back with depth_to_space. ``out_ch`` is per image pixel."""

  def __init__(self, model_name, *, out_ch, dropout, image_shape, block_size, compute_dtype):
    H, W, C = image_shape
    if block_size < 1 or H % block_size or W % block_size:
      raise ValueError(f'block_size={block_size} does not divide the image size {H}x{W}')
    self.block_size = block_size
    inner = (H // block_size, W // block_size, C * block_size ** 2)
    self.net = _build_unet(model_name, out_ch=out_ch * block_size ** 2, dropout=dropout,
                           image_shape=inner, compute_dtype=compute_dtype)

  def __call__(self, x, t, training):
    b = self.block_size
    h = tf.nn.space_to_depth(x, b) if b != 1 else x
    out = tf.cast(self.net(h, t, training=training), tf.float32)
    return tf.nn.depth_to_space(out, b) if b != 1 else out


def _random_flip(x):
  # Per-example horizontal flip with probability 1/2.
  return tf.image.random_flip_left_right(x)


class _ScriptModel(tpu_utils.Model):
  """What both script models share: the network seen through `_BlockNet`, the training loss at
  uniformly drawn timesteps (with random flips if ``randflip``) and the ancestral sampler."""

  def __init__(self, diffusion, *, model_name, out_ch, num_classes, dropout, randflip,
               image_shape, compute_dtype=None, block_size=1):
    assert num_classes == 1, 'the original models are unconditional'
    self.model_name, self.dropout, self.randflip = model_name, dropout, randflip
    self.image_shape = tuple(image_shape)
    self.diffusion = diffusion
    self._blocknet = _BlockNet(model_name, out_ch=out_ch, dropout=dropout, image_shape=image_shape,
                               block_size=block_size, compute_dtype=compute_dtype)
    self.block_size, self.net = block_size, self._blocknet.net

  def denoise_train(self, x, t):
    return self._blocknet(x, t, training=True)

  def denoise(self, x, t):
    """The network at sampling time: no dropout."""
    return self._blocknet(x, t, training=False)

  def _losses(self, x, t):
    raise NotImplementedError

  def train_fn(self, x, y):
    B = x.shape[0]
    if self.randflip:
      x = _random_flip(x)
    t = tf.random.uniform([B], 0, self.diffusion.num_timesteps, dtype=tf.int32)
    return {'loss': tf.reduce_mean(self._losses(x, t))}

  def samples_fn(self, dummy_x, y):
    return {'samples': self.diffusion.p_sample_loop(
        denoise_fn=self.denoise, shape=dummy_x.shape.as_list(), noise_fn=tf.random.normal)}


class DiffusionModel2(_ScriptModel):
  """The CIFAR-10 script model (original ``run_cifar.Model``) on `GaussianDiffusion2`."""

  def __init__(self, *, betas, model_mean_type, model_var_type, loss_type, image_shape,
               block_size=1, **common):
    diffusion = GaussianDiffusion2(betas=betas, model_mean_type=model_mean_type,
                                   model_var_type=model_var_type, loss_type=loss_type)
    C = image_shape[2]
    super().__init__(diffusion, out_ch=C * 2 if model_var_type == 'learned' else C,
                     image_shape=image_shape, block_size=block_size, **common)

  def _losses(self, x, t):
    return self.diffusion.training_losses(denoise_fn=self.denoise_train, x_start=x, t=t)

  def progressive_samples_fn(self, dummy_x, y):
    samples, progressive_samples = self.diffusion.p_sample_loop_progressive(
        denoise_fn=self.denoise, shape=dummy_x.shape.as_list(), noise_fn=tf.random.normal)
    return {'samples': samples, 'progressive_samples': progressive_samples}

  def bpd_fn(self, x, y):
    total_bpd_b, terms_bpd_bt, prior_bpd_b, mse_bt = self.diffusion.calc_bpd_loop(
        denoise_fn=self.denoise, x_start=x, clip_denoised=True)
    return {'total_bpd': total_bpd_b, 'terms_bpd': terms_bpd_bt, 'prior_bpd': prior_bpd_b,
            'mse': mse_bt}


class DiffusionModel1(_ScriptModel):
  """The CelebA-HQ / LSUN script model (original ``run_celebahq.Model``) on v1
  `GaussianDiffusion`, with the optional space-to-depth ``block_size``."""

  def __init__(self, *, betas, loss_type, image_shape, **common):
    super().__init__(GaussianDiffusion(betas=betas, loss_type=loss_type), out_ch=image_shape[2],
                     image_shape=image_shape, **common)

  def _denoise(self, x, t, training):
    out = self._blocknet(x, t, training)
    assert out.shape == x.shape
    return out

  def denoise_train(self, x, t):
    return self._denoise(x, t, training=True)

  def denoise(self, x, t):
    return self._denoise(x, t, training=False)

  def _losses(self, x, t):
    return self.diffusion.p_losses(denoise_fn=self.denoise_train, x_start=x, t=t)

  def samples_fn_denoising_trajectory(self, dummy_x, y, repeat_noise_steps=0):
    times, imgs = self.diffusion.p_sample_loop_trajectory(
        denoise_fn=self.denoise, shape=dummy_x.shape.as_list(), noise_fn=tf.random.normal,
        repeat_noise_steps=repeat_noise_steps)
    return {'samples': imgs[-1], 'denoising_trajectory_times': times,
            'denoising_trajectory_images': imgs}

  def interpolate_fn(self, x1, x2, lam, t):
    return {'x_interp': self.diffusion.interpolate(self.denoise, x1=x1, x2=x2, lam=lam, t=t)}


def betas(diffusion):
  """float64 [T] betas of a recipe's `recipes.Diffusion` section."""
  return get_beta_schedule(diffusion.beta_schedule, beta_start=diffusion.beta_start,
                           beta_end=diffusion.beta_end,
                           num_diffusion_timesteps=diffusion.num_diffusion_timesteps)


def build(recipe, image_shape, num_classes=1):
  """The script model ``recipe`` describes, for images of ``image_shape`` (H, W, C)."""
  d, m = recipe.diffusion, recipe.model
  common = dict(model_name=m.model_name, betas=betas(d), loss_type=d.loss_type,
                num_classes=num_classes, dropout=m.dropout, randflip=recipe.data.randflip,
                image_shape=image_shape, compute_dtype=m.mixed_precision,
                block_size=m.block_size)
  if d.version == 2:
    return DiffusionModel2(model_mean_type=d.model_mean_type, model_var_type=d.model_var_type,
                           **common)
  return DiffusionModel1(**common)
