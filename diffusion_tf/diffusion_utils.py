"""Gaussian diffusion, version 1 (original ``diffusion_utils.py``, §5), used by the
CelebA-HQ and LSUN models: the network predicts the noise ('noisepred') and sampling uses
the posterior variance beta~_t, with the log-variance floored at log(1e-20) at t = 0.

Images are float [B, H, W, C] in [-1, 1]; ``t`` is an int [B] of 0-based timesteps. The
methods also take NumPy arrays and Python numbers (images become float32, a scalar ``t`` is
used for the whole batch) and raise a ValueError naming what was expected for wrong shapes.
"""

import numpy as np
import tensorflow as tf

from . import inputs, nn
from .diffusion_base import (BETA_SCHEDULES, DiffusionTables, get_beta_schedule, noise_like,
                             normal_kl, timestep_loop, with_step_hook)

__all__ = ['GaussianDiffusion', 'get_beta_schedule', 'normal_kl', 'noise_like', 'BETA_SCHEDULES',
           'LOSS_TYPES']

LOSS_TYPES = ('noisepred',)  # the only loss of v1 diffusion


class GaussianDiffusion(DiffusionTables):
  """Noise-prediction diffusion with posterior-variance sampling."""

  def __init__(self, *, betas, loss_type, tf_dtype=tf.float32):
    self.loss_type = loss_type
    self.tf_dtype = tf_dtype
    super().__init__(betas)
    # The posterior variance is exactly 0 at t=0; v1 floors it before the log.
    self.posterior_log_variance_clipped = np.log(np.maximum(self.posterior_variance, 1e-20))

  def q_posterior(self, x_start, x_t, t):
    """Mean, variance, clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    return self.q_posterior_mean_variance(x_start, x_t, t)

  def predict_start_from_noise(self, x_t, t, noise):
    """x_0 predicted from the noise in x_t [B, ...] at timesteps ``t``; same shape as x_t."""
    return self._predict_xstart_from_eps(x_t, t, noise, method='predict_start_from_noise')

  def _check_loss_type(self):
    if self.loss_type not in LOSS_TYPES:
      raise NotImplementedError(f"loss_type={self.loss_type!r}: v1 diffusion supports only 'noisepred'")

  def p_losses(self, denoise_fn, x_start, t, noise=None):
    """Noise-prediction MSE per example, [B], for x_start [B, H, W, C] at timesteps ``t``."""
    self._check_loss_type()
    x_start = self._images(x_start, 'p_losses', 'x_start', rank=4)
    t = self._timesteps(t, x_start, 'p_losses')
    B, H, W, C = x_start.shape
    if noise is None:
      noise = tf.random.normal(shape=tf.shape(x_start), dtype=x_start.dtype)
    noise = self._like(noise, x_start, 'p_losses', 'noise')
    if noise.dtype != x_start.dtype:
      raise ValueError(f'GaussianDiffusion.p_losses expects noise of x_start\'s dtype '
                       f'{x_start.dtype.name}; got {noise.dtype.name}')
    x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
    x_recon = denoise_fn(x_noisy, t)
    assert x_noisy.shape == x_start.shape
    assert x_recon.shape[:3] == [B, H, W] and len(x_recon.shape) == 4
    # Predicting the noise weights the terms "naturally like SNR" (the original's remark).
    losses = nn.meanflat(tf.math.squared_difference(tf.cast(noise, x_recon.dtype), x_recon))
    assert losses.shape == [B]
    return losses

  def p_mean_variance(self, denoise_fn, *, x, t, clip_denoised: bool):
    """Mean, posterior variance and clipped log-variance of p(x_{t-1} | x_t), x [B, H, W, C]."""
    self._check_loss_type()
    x = self._images(x, 'p_mean_variance', rank=4)
    t = self._timesteps(t, x, 'p_mean_variance')
    x_recon = self.predict_start_from_noise(x, t=t, noise=denoise_fn(x, t))
    if clip_denoised:
      x_recon = tf.clip_by_value(x_recon, -1., 1.)
    model_mean, posterior_variance, posterior_log_variance = self.q_posterior(x_start=x_recon, x_t=x, t=t)
    assert model_mean.shape == x_recon.shape == x.shape
    assert posterior_variance.shape == posterior_log_variance.shape == [x.shape[0], 1, 1, 1]
    return model_mean, posterior_variance, posterior_log_variance

  def p_sample(self, denoise_fn, *, x, t, noise_fn, clip_denoised=True, repeat_noise=False):
    """One ancestral step x_t -> x_{t-1}; no noise where t == 0; ``repeat_noise`` shares
    one noise draw across the batch."""
    x = self._images(x, 'p_sample', rank=4)
    t = self._timesteps(t, x, 'p_sample')
    model_mean, _, model_log_variance = self.p_mean_variance(denoise_fn, x=x, t=t,
                                                             clip_denoised=clip_denoised)
    noise = noise_like(x.shape, noise_fn, repeat_noise, dtype=x.dtype)
    assert noise.shape == x.shape
    nonzero_mask = tf.reshape(1 - tf.cast(tf.equal(t, 0), x.dtype), [x.shape[0]] + [1] * (len(x.shape) - 1))
    return model_mean + nonzero_mask * tf.exp(0.5 * model_log_variance) * noise

  def p_sample_loop(self, denoise_fn, *, shape, noise_fn=tf.random.normal, x_T=None,
                    clip_denoised=True, step_hook=None):
    """T ancestral steps from ``x_T`` (default: drawn from ``noise_fn`` first);
    `sampling.SamplerSettings.loop` says what ``step_hook`` is. Returns [B, H, W, C], not
    clipped."""
    shape = self._sample_shape(shape, 'p_sample_loop')
    x_T = () if x_T is None else (tf.convert_to_tensor(x_T, tf.float32),)
    return self._run_compiled(self._p_sample_loop, (denoise_fn, shape, noise_fn, clip_denoised,
                                                    step_hook), x_T)

  def _p_sample_loop(self, denoise_fn, shape, noise_fn, clip_denoised, step_hook, *x_T):
    def body(i, img):
      return (self.p_sample(denoise_fn=denoise_fn, x=img, t=tf.fill([shape[0]], i), noise_fn=noise_fn,
                            clip_denoised=clip_denoised),)
    img, = timestep_loop(self.num_timesteps, with_step_hook(body, step_hook),
                         (self._start(shape, noise_fn, x_T),))
    assert img.shape == shape
    return img

  def p_sample_loop_trajectory(self, denoise_fn, *, shape, noise_fn=tf.random.normal,
                               repeat_noise_steps=-1):
    """Sampling that records every intermediate image.

    x_T is shared across the batch iff ``repeat_noise_steps >= 0``; the first
    ``repeat_noise_steps`` steps share their noise across the batch too.
    Returns (times int32 [T+1] = T-1, ..., 0, -1; imgs [T+1, B, H, W, C]) with
    ``imgs[k+1] = p_sample(imgs[k], t=times[k])``.
    """
    shape = self._sample_shape(shape, 'p_sample_loop_trajectory')
    return self._run_compiled(self._p_sample_loop_trajectory,
                              (denoise_fn, shape, noise_fn, repeat_noise_steps), ())

  def _p_sample_loop_trajectory(self, denoise_fn, shape, noise_fn, repeat_noise_steps):
    T = self.num_timesteps
    x_T = noise_like(shape, noise_fn, repeat=repeat_noise_steps >= 0)
    imgs = tf.TensorArray(tf.float32, size=T + 1, element_shape=shape).write(0, x_T)

    def body(i, img, imgs):
      # Step k = T-1-i counts how many steps were taken; the first repeat_noise_steps share noise.
      k = T - 1 - i
      repeat = tf.less(k, repeat_noise_steps)
      sample = lambda rep: self.p_sample(denoise_fn=denoise_fn, x=img, t=tf.fill([shape[0]], i),
                                         noise_fn=noise_fn, repeat_noise=rep)
      img = tf.cond(repeat, lambda: sample(True), lambda: sample(False)) if repeat_noise_steps > 0 \
          else sample(False)
      return img, imgs.write(k + 1, img)

    _, imgs = timestep_loop(T, body, (x_T, imgs))
    times = tf.range(T - 1, -2, -1, dtype=tf.int32)
    return times, imgs.stack()

  def interpolate(self, denoise_fn, *, x1, x2, lam, t, noise_fn=tf.random.normal):
    """Interpolate two images in the latent space of step ``t``.

    Diffuses x1, x2 [B, H, W, C] to step ``t`` (int scalar) with independent noise, mixes
    them linearly with ``lam`` (scalar in [0, 1]) and denoises from ``t`` back to 0.
    Eager replacement for the original's placeholder-based graph. Returns [B, H, W, C].
    """
    x1 = tf.convert_to_tensor(self._images(x1, 'interpolate', 'x1', rank=4), tf.float32)
    x2 = tf.convert_to_tensor(self._like(x2, x1, 'interpolate', 'x2'), tf.float32)
    t = inputs.timestep(t, owner='GaussianDiffusion.interpolate', num_timesteps=self.num_timesteps)
    return self._run_compiled(self._interpolate, (denoise_fn, noise_fn), (
        x1, x2, tf.convert_to_tensor(lam, tf.float32), t))

  def _interpolate(self, denoise_fn, noise_fn, x1, x2, lam, t):
    B = x1.shape[0]
    t_batch = tf.fill([B], t)
    xt1 = self.q_sample(x1, t=t_batch)
    xt2 = self.q_sample(x2, t=t_batch)
    x_interp = (1 - lam) * xt1 + lam * xt2  # linear mixing, as in the original

    def body(i, img):
      return (self.p_sample(denoise_fn=denoise_fn, x=img, t=tf.fill([B], i), noise_fn=noise_fn),)

    i0 = tf.identity(t)
    _, out = tf.while_loop(lambda i, _: i >= 0, lambda i, img: (i - 1, *body(i, img)), (i0, x_interp),
                           parallel_iterations=1)  # see diffusion_base.timestep_loop
    return tf.stop_gradient(out)
