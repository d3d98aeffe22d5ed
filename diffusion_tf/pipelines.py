"""diffusers-style pipelines over our objects: a `UNet`, a diffusion and a sampler.

    from diffusion_tf.pipelines import DDPMPipeline
    pipe = DDPMPipeline.from_pretrained('google/ddpm-cifar10-32')   # or a local folder
    pipe(batch_size=1, seed=0).images[0].save('ddpm_generated_image.png')

`Pipeline.from_pretrained` loads a Hub repo id, a diffusers folder (the flat layout of the
google repos or the ``save_pretrained`` one), one of our run directories (kwargs.json and the
latest checkpoint) or a TF1 checkpoint prefix of the authors' release (through `loading`);
`save_pretrained` writes what diffusers writes. Any pipeline class loads any of them: the noise schedule is the
model's, the sampler the class's.
"""

import json
import os

import numpy as np
import tensorflow as tf

from . import diffusers_format as fmt, nn, sampling, utils
from .checkpoints import save_tf1_checkpoint  # noqa: F401  (public here before)
from .diffusion_base import timestep_loop
from .loading import (MODEL_INDEX, PretrainedModel, download, load_diffusers_folder,  # noqa: F401
                      load_pretrained, load_run_dir, load_tf1_checkpoint, model_config_name,
                      pretrained_model, released_diffusion, unet_kwargs_from_tf1_shapes)

OUTPUT_TYPES = ('pil', 'np')


# ----------------------------------------------------------------------------- pipelines

class ImagePipelineOutput:
  """``.images``: a list of PIL images, or float32 [N, H, W, C] in [0, 1] for 'np'."""

  def __init__(self, images):
    self.images = images


class _Progress:
  """A tqdm bar ticked from inside the compiled loop (one tick per network evaluation)."""

  def __init__(self):
    self.bar = None

  def tick(self):
    if self.bar is not None:
      self.bar.update(1)

  def wrap(self, denoise_fn):
    def denoise(x, t):
      out = denoise_fn(x, t)
      with tf.control_dependencies([out]):
        done = tf.py_function(self.tick, [], [])  # an Operation (no outputs)
      with tf.control_dependencies([done]):
        return tf.identity(out)
    return denoise


class Pipeline:
  """A `UNet` + a diffusion (from a diffusers scheduler config) + a sampler of `sampling`.

  ``scheduler_config`` is the config as this class's diffusers scheduler reads it (defaults
  filled in). The sampling loop is compiled once per batch size and step count with the
  U-Net's weights as constants (`nn.constant_weights`), read at the first call: change the
  weights and you need a new pipeline.
  """
  scheduler_class = 'DDPMScheduler'
  pipeline_class = 'DDPMPipeline'
  default_steps = 1000

  def __init__(self, unet, scheduler_config):
    self.unet = unet
    self.diffusion, self.scheduler_config = fmt.diffusion_from_scheduler_config(
        scheduler_config, self.scheduler_class)
    self._raw_scheduler_config = dict(scheduler_config)
    self._loops = {}
    self._progress = _Progress()

  @classmethod
  def from_pretrained(cls, name_or_path, *, subfolder=None, revision=None, ema=True,
                      resolution=None):
    """Loads a Hub repo id, a diffusers folder, a run directory or a TF1 checkpoint prefix
    (``ema``: its EMA weights; ``resolution``: for a checkpoint whose U-Net is not an
    original configuration)."""
    unet, scheduler_config = load_pretrained(name_or_path, subfolder=subfolder, revision=revision,
                                             ema=ema, resolution=resolution)
    return cls(unet, scheduler_config)

  def save_pretrained(self, out_dir, *, overwrite=False):
    """Writes the diffusers layout: model_index.json, unet/config.json,
    unet/diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json. An existing
    model there is an error unless ``overwrite``."""
    files = [os.path.join(out_dir, f) for f in (
        MODEL_INDEX, 'unet/config.json', f'unet/{fmt.WEIGHTS_SAFETENSORS}',
        'scheduler/scheduler_config.json')]
    existing = [f for f in files if os.path.exists(f)]
    if existing and not overwrite:
      raise FileExistsError(f'{out_dir} already holds a model ({", ".join(existing)}); pass '
                            f'overwrite=True (--overwrite) or another folder')
    unet_config = fmt.unet_config(self.unet)  # refuses what diffusers cannot express, first
    sched = fmt.scheduler_config(self.diffusion, self.scheduler_class,
                                 **{k: v for k, v in self.scheduler_config.items()
                                    if k not in ('beta_schedule', 'trained_betas', 'beta_start',
                                                 'beta_end', 'num_train_timesteps',
                                                 'prediction_type')})
    index = {'_class_name': self.pipeline_class, '_diffusers_version': fmt.DIFFUSERS_VERSION,
             'scheduler': ['diffusers', self.scheduler_class], 'unet': ['diffusers', 'UNet2DModel']}
    fmt.write_weights(os.path.join(out_dir, 'unet'), fmt.state_dict(self.unet), overwrite=True)
    for path, obj in zip((files[0], files[1], files[3]), (index, unet_config, sched)):
      utils.atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode())
    return out_dir

  # -- sampling

  @property
  def image_shape(self):
    return (self.unet.resolution, self.unet.resolution, self.unet.in_ch)

  def _denoise(self, x, t):
    return self.unet(x, t, training=False)

  def _sample(self, x_T, noise_fn, num_inference_steps, **options):
    raise NotImplementedError

  def _generator(self, seed, generator):
    if generator is not None:
      return generator
    if seed is not None:
      return tf.random.Generator.from_seed(int(seed))
    return tf.random.Generator.from_non_deterministic_state()

  def __call__(self, batch_size=1, num_inference_steps=None, *, seed=None, generator=None,
               latents=None, output_type='pil', progress=True, **options):
    """Samples ``batch_size`` images. ``latents``: x_T [N, H, W, C] (default: drawn from
    ``generator``, a `tf.random.Generator`, or one seeded with ``seed``)."""
    if output_type not in OUTPUT_TYPES:
      raise ValueError(f'output_type must be one of {OUTPUT_TYPES}, got {output_type!r}')
    steps = self.default_steps if num_inference_steps is None else int(num_inference_steps)
    steps = steps or self.diffusion.num_timesteps
    gen = self._generator(seed, generator)
    shape = (int(batch_size), *self.image_shape)
    if latents is None:
      latents = gen.normal(shape, dtype=tf.float32)
    latents = tf.convert_to_tensor(latents, tf.float32)
    if tuple(latents.shape) != shape:
      raise ValueError(f'latents must have shape {shape} (batch_size, H, W, C), got {tuple(latents.shape)}')
    key = (shape, steps, tuple(sorted(options.items())), id(gen))
    loop = self._loops.get(key)
    if loop is None:
      noise_fn = lambda shape, dtype: gen.normal(shape, dtype=dtype)
      with nn.constant_weights():  # traced now, so the weights are read now
        loop = tf.function(lambda x: self._sample(x, noise_fn, steps, **options)).get_concrete_function(
            tf.TensorSpec(shape, tf.float32))
      self._loops = {key: loop}  # one compiled loop at a time (the generator is part of it)
    if progress:
      from tqdm.auto import tqdm
      self._progress.bar = tqdm(total=self.num_evaluations(steps), desc=type(self).__name__)
    try:
      x = loop(latents).numpy()
    finally:
      if self._progress.bar is not None:
        self._progress.bar.close()
      self._progress.bar = None
    images = np.clip(x / 2 + 0.5, 0., 1.).astype(np.float32)
    if output_type == 'np':
      return ImagePipelineOutput(images)
    from PIL import Image
    pixels = (images * 255).round().astype(np.uint8)
    return ImagePipelineOutput([Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels])

  def num_evaluations(self, steps):
    return steps

  def _placement(self):
    """Where diffusers places the steps, from the scheduler config."""
    return dict(spacing=self.scheduler_config['timestep_spacing'],
                steps_offset=int(self.scheduler_config['steps_offset']))


class DDPMPipeline(Pipeline):
  """Ancestral sampling (all the model's steps by default, 1000 for the Hub models; fewer
  steps respace the process as diffusers' DDPMScheduler does)."""
  default_steps = None

  def _sample(self, x_T, noise_fn, num_inference_steps, **options):
    if options:
      raise TypeError(f'DDPMPipeline takes no options {sorted(options)}')
    diffusion, denoise = self.diffusion, self._progress.wrap(self._denoise)
    T = diffusion.num_timesteps
    if num_inference_steps != T:
      timesteps = sampling.diffusers_timesteps(T, num_inference_steps, **self._placement(),
                                               scheduler='ddpm')[::-1]
      diffusion, wrap = sampling.respace(diffusion, timesteps)
      denoise = wrap(denoise)
    clip, B = bool(self.scheduler_config['clip_sample']), x_T.shape[0]

    def body(i, x):
      return (diffusion.p_sample(denoise_fn=denoise, x=x, t=tf.fill([B], i), noise_fn=noise_fn,
                                 clip_denoised=clip, return_pred_xstart=False),)

    return timestep_loop(diffusion.num_timesteps, body, (x_T,))[0]


class DDIMPipeline(Pipeline):
  """DDIM (50 steps, ``eta=0.`` by default) as diffusers' DDIMPipeline + DDIMScheduler."""
  scheduler_class = 'DDIMScheduler'
  pipeline_class = 'DDIMPipeline'
  default_steps = 50

  def __call__(self, batch_size=1, num_inference_steps=None, *, eta=0., **kwargs):
    return super().__call__(batch_size, num_inference_steps, eta=float(eta), **kwargs)

  def _sample(self, x_T, noise_fn, num_inference_steps, *, eta):
    cfg = self.scheduler_config
    return sampling.diffusers_ddim_sample_loop(
        self.diffusion, self._progress.wrap(self._denoise), shape=tuple(x_T.shape),
        steps=num_inference_steps, set_alpha_to_one=bool(cfg['set_alpha_to_one']),
        clip_sample=bool(cfg['clip_sample']), eta=eta, x_T=x_T, noise_fn=noise_fn,
        **self._placement())


class PNDMPipeline(Pipeline):
  """PNDM (50 steps by default: 59 network evaluations, 51 with ``skip_prk_steps`` in the
  scheduler config) as diffusers' PNDMPipeline + PNDMScheduler."""
  scheduler_class = 'PNDMScheduler'
  pipeline_class = 'PNDMPipeline'
  default_steps = 50

  def num_evaluations(self, steps):
    return steps + (1 if self.scheduler_config['skip_prk_steps'] else 9)

  def _sample(self, x_T, noise_fn, num_inference_steps):
    cfg = self.scheduler_config
    return sampling.pndm_sample_loop(
        self.diffusion, self._progress.wrap(self._denoise), shape=tuple(x_T.shape),
        steps=num_inference_steps, skip_prk_steps=bool(cfg['skip_prk_steps']),
        set_alpha_to_one=bool(cfg['set_alpha_to_one']), x_T=x_T, noise_fn=noise_fn,
        **self._placement())


PIPELINES = {'ddpm': DDPMPipeline, 'ddim': DDIMPipeline, 'pndm': PNDMPipeline}
