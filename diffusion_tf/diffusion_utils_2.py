"""Gaussian diffusion, version 2 (original ``diffusion_utils_2.py``, §6): configurable
model mean / variance / loss. The CIFAR-10 recipe is ``eps`` / ``fixedlarge`` / ``mse``.

All images are float [B, H, W, C] in [-1, 1]; ``t`` is an int [B] of 0-based timesteps;
per-example results are [B]; likelihood terms are in bits per dimension. The methods also
take NumPy arrays and Python numbers (images become float32, a scalar ``t`` is used for the
whole batch) and raise a ValueError naming what was expected for wrong shapes.
"""

import numpy as np
import tensorflow as tf

from . import nn, utils
from .diffusion_base import (BETA_SCHEDULES, DiffusionTables, get_beta_schedule, normal_kl,
                             timestep_loop, with_step_hook)

__all__ = ['GaussianDiffusion2', 'get_beta_schedule', 'normal_kl', 'BETA_SCHEDULES',
           'MODEL_MEAN_TYPES', 'MODEL_VAR_TYPES', 'LOSS_TYPES']

MODEL_MEAN_TYPES = ('xprev', 'xstart', 'eps')  # what the network predicts
MODEL_VAR_TYPES = ('learned', 'fixedsmall', 'fixedlarge')  # sampling variance
LOSS_TYPES = ('kl', 'mse')  # 'kl': the variational bound term; 'mse': L_simple


class GaussianDiffusion2(DiffusionTables):
  """Diffusion process q and model p(x_{t-1} | x_t) built around a denoising network.

  model_mean_type: the network predicts x_{t-1} ('xprev'), x_0 ('xstart') or the noise ('eps').
  model_var_type: the network's second half of channels is the log-variance ('learned'),
    or the variance is fixed to the posterior's beta~_t ('fixedsmall') or to beta_t ('fixedlarge').
  loss_type: 'mse' on the prediction target, or 'kl', the variational bound term in bits/dim.
  """

  def __init__(self, *, betas, model_mean_type, model_var_type, loss_type):
    for value, allowed, what in ((model_mean_type, MODEL_MEAN_TYPES, 'model_mean_type'),
                                 (model_var_type, MODEL_VAR_TYPES, 'model_var_type'),
                                 (loss_type, LOSS_TYPES, 'loss_type')):
      if value not in allowed:
        raise NotImplementedError(f'{what}={value!r}; expected one of {allowed}')
    self.model_mean_type = model_mean_type
    self.model_var_type = model_var_type
    self.loss_type = loss_type
    super().__init__(betas)
    # The posterior variance is 0 at t=0; v2 substitutes beta~_1 there before the log.
    self.posterior_log_variance_clipped = np.log(
        np.append(self.posterior_variance[1], self.posterior_variance[1:]))

  def _predict_xstart_from_xprev(self, x_t, t, xprev):
    assert x_t.shape == xprev.shape
    ex = lambda a: self._extract(a, t, x_t.shape, x_t.dtype)
    # (xprev - coef2*x_t) / coef1
    return (ex(1. / self.posterior_mean_coef1) * xprev
            - ex(self.posterior_mean_coef2 / self.posterior_mean_coef1) * x_t)

  # === Reverse process ===

  def p_mean_variance(self, denoise_fn, *, x, t, clip_denoised: bool, return_pred_xstart: bool):
    """Mean, variance, log-variance (and x0 prediction) of p(x_{t-1} | x_t), x [B, H, W, C]."""
    x = self._images(x, 'p_mean_variance', rank=4)
    t = self._timesteps(t, x, 'p_mean_variance')
    B, H, W, C = x.shape
    model_output = denoise_fn(x, t)

    # Learned or fixed variance?
    if self.model_var_type == 'learned':
      assert model_output.shape == [B, H, W, C * 2]
      model_output, model_log_variance = tf.split(model_output, 2, axis=-1)
      model_variance = tf.exp(model_log_variance)
    else:
      model_variance, model_log_variance = {
          # fixedlarge: log-variance at t=0 is log(beta~_1), not log(beta_0): the original's
          # choice for a better decoder likelihood; only the log-variance is used downstream.
          'fixedlarge': (self.betas, np.log(np.append(self.posterior_variance[1], self.betas[1:]))),
          'fixedsmall': (self.posterior_variance, self.posterior_log_variance_clipped),
      }[self.model_var_type]
      ones = tf.ones_like(x)
      model_variance = self._extract(model_variance, t, x.shape, x.dtype) * ones
      model_log_variance = self._extract(model_log_variance, t, x.shape, x.dtype) * ones

    # Mean parameterization
    _maybe_clip = lambda x_: (tf.clip_by_value(x_, -1., 1.) if clip_denoised else x_)
    if self.model_mean_type == 'xprev':  # the model predicts x_{t-1}
      pred_xstart = _maybe_clip(self._predict_xstart_from_xprev(x_t=x, t=t, xprev=model_output))
      model_mean = model_output
    elif self.model_mean_type == 'xstart':  # the model predicts x_0
      pred_xstart = _maybe_clip(model_output)
      model_mean, _, _ = self.q_posterior_mean_variance(x_start=pred_xstart, x_t=x, t=t)
    else:  # the model predicts epsilon
      pred_xstart = _maybe_clip(self._predict_xstart_from_eps(x_t=x, t=t, eps=model_output))
      model_mean, _, _ = self.q_posterior_mean_variance(x_start=pred_xstart, x_t=x, t=t)

    assert model_mean.shape == model_log_variance.shape == pred_xstart.shape == x.shape
    if return_pred_xstart:
      return model_mean, model_variance, model_log_variance, pred_xstart
    return model_mean, model_variance, model_log_variance

  # === Sampling ===

  def p_sample(self, denoise_fn, *, x, t, noise_fn, clip_denoised=True, return_pred_xstart: bool,
               final_log_variance=None):
    """One ancestral step x_t -> x_{t-1}; no noise is added where t == 0, unless
    ``final_log_variance`` (a float) gives the log-variance of the noise added there (a
    respaced process whose first kept timestep is not 0, as diffusers' DDPMScheduler)."""
    x = self._images(x, 'p_sample', rank=4)
    t = self._timesteps(t, x, 'p_sample')
    model_mean, _, model_log_variance, pred_xstart = self.p_mean_variance(
        denoise_fn, x=x, t=t, clip_denoised=clip_denoised, return_pred_xstart=True)
    noise = noise_fn(shape=x.shape, dtype=x.dtype)
    assert noise.shape == x.shape
    at_zero = tf.reshape(tf.equal(t, 0), [x.shape[0]] + [1] * (len(x.shape) - 1))
    if final_log_variance is None:
      scale = (1 - tf.cast(at_zero, x.dtype)) * tf.exp(0.5 * model_log_variance)
    else:
      scale = tf.exp(0.5 * tf.where(at_zero, tf.cast(final_log_variance, x.dtype), model_log_variance))
    sample = model_mean + scale * noise
    assert sample.shape == pred_xstart.shape
    return (sample, pred_xstart) if return_pred_xstart else sample

  def p_sample_loop(self, denoise_fn, *, shape, noise_fn=tf.random.normal, x_T=None,
                    clip_denoised=True, final_log_variance=None, step_hook=None):
    """T ancestral steps from ``x_T`` (default: drawn from ``noise_fn`` first); see `p_sample`
    for ``final_log_variance``, `sampling.SamplerSettings.loop` for ``step_hook``. Returns
    [B, H, W, C], not clipped."""
    shape = self._sample_shape(shape, 'p_sample_loop')
    x_T = () if x_T is None else (tf.convert_to_tensor(x_T, tf.float32),)
    return self._run_compiled(self._p_sample_loop, (denoise_fn, shape, noise_fn, clip_denoised,
                                                    final_log_variance, step_hook), x_T)

  def _p_sample_loop(self, denoise_fn, shape, noise_fn, clip_denoised, final_log_variance, step_hook,
                     *x_T):
    def body(i, img):
      return (self.p_sample(denoise_fn=denoise_fn, x=img, t=tf.fill([shape[0]], i), noise_fn=noise_fn,
                            clip_denoised=clip_denoised, return_pred_xstart=False,
                            final_log_variance=final_log_variance),)
    img, = timestep_loop(self.num_timesteps, with_step_hook(body, step_hook),
                         (self._start(shape, noise_fn, x_T),))
    assert img.shape == shape
    return img

  def p_sample_loop_progressive(self, denoise_fn, *, shape, noise_fn=tf.random.normal,
                                include_xstartpred_freq=50):
    """`p_sample_loop` that also keeps the x0 prediction every ``include_xstartpred_freq`` steps.

    Returns (samples [B, H, W, C], xstartpreds [B, T // freq, H, W, C]); slot k holds
    the prediction made at t = freq * k, so slot 0 equals the final sample.
    """
    shape = self._sample_shape(shape, 'p_sample_loop_progressive')
    return self._run_compiled(self._p_sample_loop_progressive,
                              (denoise_fn, shape, noise_fn, include_xstartpred_freq), ())

  def _p_sample_loop_progressive(self, denoise_fn, shape, noise_fn, include_xstartpred_freq):
    num_recorded_xstartpred = self.num_timesteps // include_xstartpred_freq

    def body(i, img, xstartpreds):
      sample, pred_xstart = self.p_sample(denoise_fn=denoise_fn, x=img, t=tf.fill([shape[0]], i),
                                          noise_fn=noise_fn, return_pred_xstart=True)
      assert sample.shape == pred_xstart.shape == shape
      # Overwrite slot i // freq of xstartpreds with the current pred_xstart.
      insert_mask = tf.equal(tf.math.floordiv(i, include_xstartpred_freq),
                             tf.range(num_recorded_xstartpred, dtype=tf.int32))
      insert_mask = tf.reshape(tf.cast(insert_mask, tf.float32),
                               [1, num_recorded_xstartpred, *([1] * len(shape[1:]))])
      new_xstartpreds = insert_mask * pred_xstart[:, None, ...] + (1. - insert_mask) * xstartpreds
      return sample, new_xstartpreds

    return timestep_loop(
        self.num_timesteps, body,
        (noise_fn(shape=shape, dtype=tf.float32),
         tf.zeros([shape[0], num_recorded_xstartpred, *shape[1:]], dtype=tf.float32)))

  # === Log likelihood calculation ===

  def _vb_terms_bpd(self, denoise_fn, x_start, x_t, t, *, clip_denoised: bool, return_pred_xstart: bool):
    """The variational bound term for timestep t in bits/dim: [B] (decoder NLL where t == 0)."""
    true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)
    model_mean, _, model_log_variance, pred_xstart = self.p_mean_variance(
        denoise_fn, x=x_t, t=t, clip_denoised=clip_denoised, return_pred_xstart=True)
    kl = normal_kl(true_mean, true_log_variance_clipped, model_mean, model_log_variance)
    kl = nn.meanflat(kl) / np.log(2.)

    decoder_nll = -utils.discretized_gaussian_log_likelihood(
        x_start, means=model_mean, log_scales=0.5 * model_log_variance)
    assert decoder_nll.shape == x_start.shape
    decoder_nll = nn.meanflat(decoder_nll) / np.log(2.)

    assert kl.shape == decoder_nll.shape == t.shape == [x_start.shape[0]]
    output = tf.where(tf.equal(t, 0), decoder_nll, kl)
    return (output, pred_xstart) if return_pred_xstart else output

  def training_losses(self, denoise_fn, x_start, t, noise=None):
    """Training loss per example, [B], for x_start [B, ...] at timesteps ``t``."""
    x_start = self._images(x_start, 'training_losses', 'x_start')
    t = self._timesteps(t, x_start, 'training_losses')
    if noise is None:
      noise = tf.random.normal(shape=tf.shape(x_start), dtype=x_start.dtype)
    noise = self._like(noise, x_start, 'training_losses', 'noise')
    if noise.dtype != x_start.dtype:
      raise ValueError(f'GaussianDiffusion2.training_losses expects noise of x_start\'s dtype '
                       f'{x_start.dtype.name}; got {noise.dtype.name}')
    x_t = self.q_sample(x_start=x_start, t=t, noise=noise)

    if self.loss_type == 'kl':  # unclipped, unlike evaluation
      losses = self._vb_terms_bpd(denoise_fn=denoise_fn, x_start=x_start, x_t=x_t, t=t,
                                  clip_denoised=False, return_pred_xstart=False)
    elif self.loss_type == 'mse':
      assert self.model_var_type != 'learned'
      target = {
          'xprev': lambda: self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)[0],
          'xstart': lambda: x_start,
          'eps': lambda: noise,
      }[self.model_mean_type]()
      model_output = denoise_fn(x_t, t)
      assert model_output.shape == target.shape == x_start.shape
      losses = nn.meanflat(tf.math.squared_difference(tf.cast(target, model_output.dtype), model_output))
    else:
      raise NotImplementedError(self.loss_type)

    assert losses.shape == t.shape
    return losses

  def _prior_bpd(self, x_start):
    """KL(q(x_T | x_0) || N(0, I)) in bits/dim: [B]."""
    B, T = x_start.shape[0], self.num_timesteps
    qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t=tf.fill([B], tf.constant(T - 1, dtype=tf.int32)))
    kl_prior = normal_kl(mean1=qt_mean, logvar1=qt_log_variance, mean2=0., logvar2=0.)
    return nn.meanflat(kl_prior) / np.log(2.)

  def calc_bpd_loop(self, denoise_fn, x_start, *, clip_denoised=True):
    """The full variational bound, one fresh x_t per timestep.

    Returns (total_bpd [B], terms_bpd [B, T], prior_bpd [B], mse [B, T]) with
    ``total_bpd = terms_bpd.sum(1) + prior_bpd``; mse is of the x0 prediction.
    """
    x_start = self._images(x_start, 'calc_bpd_loop', 'x_start', rank=4)
    x_start = tf.convert_to_tensor(x_start, dtype=tf.float32)
    return self._run_compiled(self._calc_bpd_loop, (denoise_fn, clip_denoised), (x_start,))

  def _calc_bpd_loop(self, denoise_fn, clip_denoised, x_start):
    (B, H, W, C), T = x_start.shape, self.num_timesteps

    def body(i, cur_vals_bt, cur_mse_bt):
      t_b = tf.fill([B], i)
      new_vals_b, pred_xstart = self._vb_terms_bpd(
          denoise_fn, x_start=x_start, x_t=self.q_sample(x_start=x_start, t=t_b), t=t_b,
          clip_denoised=clip_denoised, return_pred_xstart=True)
      new_mse_b = nn.meanflat(tf.math.squared_difference(pred_xstart, x_start))
      # Write column t of the [B, T] buffers.
      mask_bt = tf.cast(tf.equal(t_b[:, None], tf.range(T)[None, :]), tf.float32)
      cur_vals_bt = cur_vals_bt * (1. - mask_bt) + new_vals_b[:, None] * mask_bt
      cur_mse_bt = cur_mse_bt * (1. - mask_bt) + new_mse_b[:, None] * mask_bt
      return cur_vals_bt, cur_mse_bt

    terms_bpd_bt, mse_bt = timestep_loop(T, body, (tf.zeros([B, T]), tf.zeros([B, T])))
    prior_bpd_b = self._prior_bpd(x_start)
    total_bpd_b = tf.reduce_sum(terms_bpd_bt, axis=1) + prior_bpd_b
    return total_bpd_b, terms_bpd_bt, prior_bpd_b, mse_bt
