"""What the per-dataset scripts share: the two script models (v2 diffusion for CIFAR-10 and
the digits set, v1 for the 256x256 sets), experiment names and the bucket path mapping.
"""

import inspect
import io
import json
import os

import numpy as np
import tensorflow as tf

from . import checkpoints, integrity, interop, sampling, startup, utils
from .diffusion_base import get_beta_schedule
from .diffusion_utils import GaussianDiffusion
from .diffusion_utils_2 import GaussianDiffusion2
from .models.unet import MODEL_CONFIGS, UNet
from .tpu_utils import tpu_utils
from .errors import FlagError


MIXED_PRECISION = (None, 'none', 'float32', 'bfloat16', 'float16')


def _build_unet(model_name, *, out_ch, dropout, image_shape, compute_dtype=None):
  if compute_dtype not in MIXED_PRECISION:
    raise FlagError(f'--mixed_precision must be one of none, bfloat16, float16; got {compute_dtype!r}')
  if model_name not in MODEL_CONFIGS:
    raise NotImplementedError(f'model_name={model_name!r}; expected one of {sorted(MODEL_CONFIGS)}')
  kwargs = dict(MODEL_CONFIGS[model_name], out_ch=out_ch, dropout=dropout, name='model',
                in_ch=image_shape[2], resolution=image_shape[0])
  if compute_dtype not in (None, 'none', 'float32'):
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


class DiffusionModel2(tpu_utils.Model):
  """The CIFAR-10 script model (original ``run_cifar.Model``) on `GaussianDiffusion2`."""

  def __init__(self, *, model_name, betas, model_mean_type, model_var_type, loss_type,
               num_classes, dropout, randflip, image_shape, compute_dtype=None, block_size=1):
    assert num_classes == 1, 'the original models are unconditional'
    self.model_name, self.dropout, self.randflip = model_name, dropout, randflip
    self.image_shape = tuple(image_shape)
    self.diffusion = GaussianDiffusion2(betas=betas, model_mean_type=model_mean_type,
                                        model_var_type=model_var_type, loss_type=loss_type)
    C = image_shape[2]
    self._blocknet = _BlockNet(model_name, out_ch=C * 2 if model_var_type == 'learned' else C,
                               dropout=dropout, image_shape=image_shape, block_size=block_size,
                               compute_dtype=compute_dtype)
    self.block_size, self.net = block_size, self._blocknet.net

  def denoise_train(self, x, t):
    return self._blocknet(x, t, training=True)

  def denoise(self, x, t):
    """The network at sampling time: no dropout."""
    return self._blocknet(x, t, training=False)

  def train_fn(self, x, y):
    B = x.shape[0]
    if self.randflip:
      x = _random_flip(x)
    t = tf.random.uniform([B], 0, self.diffusion.num_timesteps, dtype=tf.int32)
    losses = self.diffusion.training_losses(denoise_fn=self.denoise_train, x_start=x, t=t)
    return {'loss': tf.reduce_mean(losses)}

  def samples_fn(self, dummy_x, y):
    return {'samples': self.diffusion.p_sample_loop(
        denoise_fn=self.denoise, shape=dummy_x.shape.as_list(), noise_fn=tf.random.normal)}

  def progressive_samples_fn(self, dummy_x, y):
    samples, progressive_samples = self.diffusion.p_sample_loop_progressive(
        denoise_fn=self.denoise, shape=dummy_x.shape.as_list(), noise_fn=tf.random.normal)
    return {'samples': samples, 'progressive_samples': progressive_samples}

  def bpd_fn(self, x, y):
    total_bpd_b, terms_bpd_bt, prior_bpd_b, mse_bt = self.diffusion.calc_bpd_loop(
        denoise_fn=self.denoise, x_start=x, clip_denoised=True)
    return {'total_bpd': total_bpd_b, 'terms_bpd': terms_bpd_bt, 'prior_bpd': prior_bpd_b,
            'mse': mse_bt}


class DiffusionModel1(tpu_utils.Model):
  """The CelebA-HQ / LSUN script model (original ``run_celebahq.Model``) on v1
  `GaussianDiffusion`, with the optional space-to-depth ``block_size``."""

  def __init__(self, *, model_name, betas, loss_type, num_classes, dropout, randflip, block_size,
               image_shape, compute_dtype=None):
    assert num_classes == 1, 'the original models are unconditional'
    self.model_name, self.dropout, self.randflip = model_name, dropout, randflip
    self.image_shape = tuple(image_shape)
    self.diffusion = GaussianDiffusion(betas=betas, loss_type=loss_type)
    self._blocknet = _BlockNet(model_name, out_ch=image_shape[2], dropout=dropout,
                               image_shape=image_shape, block_size=block_size,
                               compute_dtype=compute_dtype)
    self.block_size, self.net = block_size, self._blocknet.net

  def _denoise(self, x, t, training):
    out = self._blocknet(x, t, training)
    assert out.shape == x.shape
    return out

  def denoise_train(self, x, t):
    return self._denoise(x, t, training=True)

  def denoise(self, x, t):
    return self._denoise(x, t, training=False)

  def train_fn(self, x, y):
    B = x.shape[0]
    if self.randflip:
      x = _random_flip(x)
    t = tf.random.uniform([B], 0, self.diffusion.num_timesteps, dtype=tf.int32)
    losses = self.diffusion.p_losses(denoise_fn=self.denoise_train, x_start=x, t=t)
    return {'loss': tf.reduce_mean(losses)}

  def samples_fn(self, dummy_x, y):
    return {'samples': self.diffusion.p_sample_loop(
        denoise_fn=self.denoise, shape=dummy_x.shape.as_list(), noise_fn=tf.random.normal)}

  def samples_fn_denoising_trajectory(self, dummy_x, y, repeat_noise_steps=0):
    times, imgs = self.diffusion.p_sample_loop_trajectory(
        denoise_fn=self.denoise, shape=dummy_x.shape.as_list(), noise_fn=tf.random.normal,
        repeat_noise_steps=repeat_noise_steps)
    return {'samples': imgs[-1], 'denoising_trajectory_times': times,
            'denoising_trajectory_images': imgs}

  def interpolate_fn(self, x1, x2, lam, t):
    return {'x_interp': self.diffusion.interpolate(self.denoise, x1=x1, x2=x2, lam=lam, t=t)}


def betas_from_kwargs(kw):
  return get_beta_schedule(kw['beta_schedule'], beta_start=kw['beta_start'], beta_end=kw['beta_end'],
                           num_diffusion_timesteps=kw['num_diffusion_timesteps'])


# ----------------------------------------------------------------------------- paths and names

def resolve_paths(bucket_name_prefix, region=None, **paths):
  """The original mapping ``p -> gs://{prefix}-{region}/{p}`` for every relative path when a
  bucket prefix is given; local paths otherwise. Returns (region or None, {name: path})."""
  if not bucket_name_prefix:
    return None, dict(paths)
  region = utils.get_gcp_region(region)
  return region, {k: utils.bucket_path(v, bucket_name_prefix, region) for k, v in paths.items()}


def exp_name_v2(*, exp_name, dataset, model_name, optimizer, total_bs, lr, warmup, beta_start,
                beta_end, beta_schedule, num_diffusion_timesteps, model_mean_type, model_var_type,
                loss_type, dropout, randflip):
  """The CIFAR-10 experiment name template."""
  return (f'{exp_name}_{dataset}_{model_name}_{optimizer}_bs{total_bs}_lr{lr}w{warmup}_'
          f'beta{beta_start}-{beta_end}-{beta_schedule}_t{num_diffusion_timesteps}_'
          f'{model_mean_type}-{model_var_type}-{loss_type}_dropout{dropout}_randflip{randflip}')


def exp_name_v1(*, exp_name, dataset, model_name, optimizer, total_bs, lr, warmup, beta_start,
                beta_end, beta_schedule, num_diffusion_timesteps, loss_type, dropout, randflip,
                block_size):
  """The CelebA-HQ / LSUN experiment name template."""
  return (f'{exp_name}_{dataset}_{model_name}_{optimizer}_bs{total_bs}_lr{lr}w{warmup}_'
          f'beta{beta_start}-{beta_end}-{beta_schedule}_t{num_diffusion_timesteps}_'
          f'{loss_type}_dropout{dropout}_randflip{randflip}_blk{block_size}')


def model_dir_of(log_dir, exp_name):
  """Scripts always pass date_str='9999-99-99', as the original did."""
  return os.path.join(log_dir, '9999-99-99', exp_name)


# ----------------------------------------------------------------------------- train command

# Keys of a script's train() that are not dataset or model settings.
_PATH_KEYS = ('tfds_data_dir', 'log_dir', 'tfr_file')


def make_model(kw, image_shape, num_classes=1):
  """The script model described by a train kwargs dict (a kwargs.json)."""
  common = dict(model_name=kw['model_name'], betas=betas_from_kwargs(kw), loss_type=kw['loss_type'],
                num_classes=num_classes, dropout=kw['dropout'], randflip=kw['randflip'],
                image_shape=image_shape, compute_dtype=kw.get('mixed_precision'))
  if 'model_mean_type' in kw:
    return DiffusionModel2(model_mean_type=kw['model_mean_type'],
                           model_var_type=kw['model_var_type'], block_size=kw.get('block_size', 1),
                           **common)
  return DiffusionModel1(block_size=kw.get('block_size', 1), **common)


def experiment_name(kw):
  keys = ('exp_name', 'dataset', 'model_name', 'optimizer', 'total_bs', 'lr', 'warmup', 'beta_start',
          'beta_end', 'beta_schedule', 'num_diffusion_timesteps', 'loss_type', 'dropout', 'randflip')
  if 'model_mean_type' in kw:
    name = exp_name_v2(model_mean_type=kw['model_mean_type'], model_var_type=kw['model_var_type'],
                       **{k: kw[k] for k in keys})
    # The v2 template has no block size (CIFAR-10 never used one); the digits script does.
    return name + (f'_blk{kw["block_size"]}' if kw.get('block_size', 1) != 1 else '')
  return exp_name_v1(block_size=kw['block_size'], **{k: kw[k] for k in keys})


def get_dataset_from_kwargs(kw):
  from .tpu_utils import datasets  # noqa: deferred: TFDS import is slow
  extra = {k: kw[k] for k in ('resolution', 'folder', 'shuffle_buffer', 'channels')
           if kw.get(k) is not None}
  return datasets.get_dataset(kw['dataset'], tfds_data_dir=kw.get('tfds_data_dir'),
                              tfr_file=kw.get('tfr_file'), **extra)


def train(kw, *, iterations_per_loop, warm_start_model_dir=None):
  """The body of every script's ``train`` command; ``kw`` is the command's arguments.

  Maps paths to the bucket when ``bucket_name_prefix`` is given, records the arguments
  (with the mapped paths and region) as kwargs.json, checks that the data is there
  before touching any accelerator, then trains. Returns the `TrainState`.
  """
  kw = dict(kw)
  region, paths = resolve_paths(kw.get('bucket_name_prefix'), kw.get('region'),
                                **{k: kw[k] for k in _PATH_KEYS if kw.get(k) is not None})
  kw.update(paths)
  kw['region'] = region
  for k in ('tfr_file', 'log_dir'):
    if k in kw:
      print(f'{k}: {kw[k]}')
  ds = get_dataset_from_kwargs(kw)
  ds.check_available()  # fail now, not after connecting to a TPU and building the model

  return tpu_utils.run_training(
      model_constructor=lambda: make_model(kw, ds.image_shape, ds.num_classes),
      train_input_fn=ds.train_input_fn, total_bs=kw['total_bs'], optimizer=kw['optimizer'],
      lr=kw['lr'], warmup=kw['warmup'], grad_clip=kw['grad_clip'],
      ema_decay=kw.get('ema_decay', 0.9999), tpu=kw.get('tpu_name'),
      log_dir=kw['log_dir'], exp_name=experiment_name(kw), dump_kwargs=kw, date_str='9999-99-99',
      iterations_per_loop=iterations_per_loop, keep_checkpoint_max=kw.get('keep_checkpoint_max', 2),
      max_steps=kw.get('max_steps') or tpu_utils.UNBOUNDED_STEPS,
      warm_start_from=warm_start_model_dir,
      save_checkpoints_secs=kw.get('save_checkpoints_secs', 1600),
      save_every_steps=kw.get('save_every_steps'), clip_mode=kw.get('clip_mode', 'global'),
      allow_kwargs_mismatch=kw.get('allow_kwargs_mismatch', False),
      # float16's narrow exponent range needs loss scaling; bfloat16 has float32's range.
      loss_scale='dynamic' if kw.get('mixed_precision') == 'float16' else None,
      seed=kw.get('seed'), lr_schedule=kw.get('lr_schedule', 'constant'))


# ----------------------------------------------------------------------------- sample command

def script_defaults(train_fn):
  """A script's train() defaults: the configuration of the authors' released models."""
  return {k: p.default for k, p in inspect.signature(train_fn).parameters.items()
          if p.default is not inspect.Parameter.empty}


def load_model_for_sampling(train_fn, *, model_dir=None, ckpt=None, ema=True, mixed_precision=None,
                            pretrained=None):
  """(model, kwargs, checkpoint prefix, step) from a run directory or a checkpoint prefix.

  A run directory brings its kwargs.json; a bare checkpoint (e.g. the authors'
  ``diffusion_cifar10_model/model.ckpt-790000``) uses a kwargs.json beside it if present,
  else the script's defaults, which are the released models' settings. ``pretrained`` (a
  Hub id or a diffusers folder, see `pipelines.load_pretrained`) gives (model, {}, pretrained,
  None).
  """
  if sum(map(bool, (model_dir, ckpt, pretrained))) != 1:
    raise ValueError('pass exactly one of --model_dir (a training run), --ckpt (a checkpoint '
                     'prefix) or --pretrained (a Hub id or diffusers folder)')
  if pretrained:
    from . import pipelines
    if mixed_precision not in (None, 'none', 'float32'):
      raise FlagError('--mixed_precision applies to --model_dir / --ckpt models only')
    return pipelines.pretrained_model(pretrained, ema=ema), {}, pretrained, None
  prefix = integrity.checkpoint_to_read(model_dir or ckpt, '--model_dir' if model_dir else '--ckpt')
  kw = read_run_kwargs(model_dir or os.path.dirname(prefix), script_defaults(train_fn))
  if mixed_precision is not None:
    kw['mixed_precision'] = mixed_precision
  image_shape = get_dataset_from_kwargs(kw).image_shape  # needs no data on disk
  model = make_model(kw, image_shape)
  step = checkpoints.restore_tf1_checkpoint(model.net, prefix, ema=ema)
  return model, kw, prefix, step


def _check_free(out_prefix, overwrite):
  for ext in ('.npz', '.png'):
    if not overwrite and tf.io.gfile.exists(out_prefix + ext):
      raise FileExistsError(f'{out_prefix}{ext} exists; pass another --out or --overwrite')


def write_samples(out_prefix, samples, *, overwrite=False):
  """Writes ``<out_prefix>.npz`` (uint8 ``samples`` [N, H, W, C]) and ``<out_prefix>.png`` (a grid)."""
  images = utils.to_uint8(samples)
  _check_free(out_prefix, overwrite)
  buf = io.BytesIO()
  np.savez(buf, samples=images)
  utils.atomic_write(out_prefix + '.npz', buf.getvalue(), overwrite=overwrite)
  utils.save_tiled_imgs(out_prefix + '.png', images[:256])
  return images


def sample(train_fn, *, model_dir=None, ckpt=None, num_samples=64, batch_size=64, sampler='ddpm',
           steps=None, eta=0., spacing='uniform', order=None, seed=0, ema=True, out=None, overwrite=False,
           mixed_precision=None, export_npz=None, export_png_dir=None, summary_fn=None,
           pretrained=None):
  """The scripts' ``sample`` command: draw samples from a run, a checkpoint or a pretrained
  (Hub / diffusers) model and write ``OUT.npz`` and ``OUT.png`` (and, if asked, ``export_npz``
  with ``arr_0`` and PNGs in ``export_png_dir``, see `interop`), then one summary line (with
  ``summary_fn(images)`` appended, e.g. the digits' recognisable share). Returns the uint8
  samples [N, H, W, C]."""
  model, kw, prefix, step = load_model_for_sampling(train_fn, model_dir=model_dir, ckpt=ckpt, ema=ema,
                                                    mixed_precision=mixed_precision,
                                                    pretrained=pretrained)
  startup.announce_devices(tf.distribute.get_strategy())
  print(f'Loaded {"EMA" if ema else "raw"} weights from {prefix} (step {step})')
  if out is None:
    tag = (f'{sampler}{steps or sampling.DEFAULT_STEPS.get(sampler, model.diffusion.num_timesteps)}'
           + (f'_order{order}' if order is not None else '') + (f'_eta{eta}' if sampler == 'ddim' else ''))
    if pretrained:  # a Hub id or folder: write beside the current directory
      out = f'samples_{os.path.basename(os.path.normpath(pretrained))}_{tag}'
    else:
      out = os.path.join(model_dir or os.path.dirname(prefix), f'samples_{tag}_ema{int(bool(ema))}_step{step}')
  _check_free(out, overwrite)  # fail before sampling for an hour, not after
  interop.check_export_targets(npz=export_npz, png_dir=export_png_dir)
  samples = sampling.generate_samples(model, num_samples, batch_size, sampler=sampler, steps=steps,
                                      eta=eta, spacing=spacing, order=order, seed=seed)
  images = write_samples(out, samples, overwrite=overwrite)
  exported = interop.export_samples(images, npz=export_npz, png_dir=export_png_dir)
  print(f'Wrote {images.shape[0]} samples to {out}.npz and {out}.png'
        + (f', {exported}' if exported else '') + (f'; {summary_fn(images)}' if summary_fn else ''))
  return images


# ============================================================================= evaluation commands
# The bodies of the scripts' ``evaluation`` (FID / IS, `EvalWorker`) and ``simple_eval``
# (bits/dim, progressive samples, `SimpleEvalWorker`) commands.

def read_run_kwargs(run_dir, defaults=None):
  """A run's kwargs.json over the script's ``defaults`` (and over
  `tpu_utils.RECORDED_BEFORE_OPTION_EXISTED` for options it predates). A directory without kwargs.json
  (e.g. an unpacked release folder such as ``diffusion_cifar10_model/``) gets the defaults,
  which are the released models' settings; with no defaults that is an error."""
  path = os.path.join(run_dir, 'kwargs.json')
  if tf.io.gfile.exists(path):
    recorded = tpu_utils.with_older_defaults(tpu_utils.load_train_kwargs(run_dir), defaults or {})
    return dict(defaults or {}, **recorded)
  if defaults is None:
    raise FileNotFoundError(f'{path} not found: --model_dir must be a training run directory '
                            f'(holding kwargs.json and the model.ckpt-* files)')
  print(f'No kwargs.json in {run_dir}: using the script\'s default settings (those of the '
        f'released models).', flush=True)
  return dict(defaults)


def eval_dataset(kw, *, bucket_name_prefix=None, region=None, data_paths=None, check=True):
  """The run's data set, with the evaluation's data-path flags (mapped to the bucket when
  ``bucket_name_prefix`` is given) overriding those recorded in kwargs.json; ``check``: fail
  now if its images are missing."""
  kw = dict(kw)
  _, paths = resolve_paths(bucket_name_prefix, region,
                           **{k: v for k, v in (data_paths or {}).items() if v is not None})
  kw.update(paths)
  for k, v in paths.items():
    print(f'{k}: {v}')
  ds = get_dataset_from_kwargs(kw)
  if check:
    ds.check_available()  # fail before building the model or connecting to a TPU
  return kw, ds


FEATURES = ('inception', 'digits')


def make_eval_extractor(inception_graph=None, *, features='inception'):
  """The feature network of FID / IS: ``features='inception'``, the Inception network
  (``inception_graph``: a .pb / .tar.gz path, else located or downloaded as
  `inception.locate_inception_graph` does), or ``'digits'``, the digits classifier of
  `digits_features` (the built-in data set's default; says so when loaded).
  """
  from .metrics import digits_features, inception
  if features not in FEATURES:
    raise FlagError(f'--features must be one of {FEATURES}, got {features!r}')
  if features == 'inception':
    return inception.make_inception_extractor(inception_graph)
  if inception_graph:
    raise FlagError('--inception_graph is only used with --features inception')
  extractor = digits_features.load_extractor()
  print(f'Features: the digits classifier {extractor.name} ({digits_features.WEIGHTS}): FID '
        f'measures how digit-like the samples are, IS (at most 10) how many digits they '
        f'show; neither compares with Inception-based numbers.', flush=True)
  return extractor


def evaluation(*, model_dir, total_bs, num_inception_samples, defaults=None, tpu_name=None,
               bucket_name_prefix=None, region=None, data_paths=None, once=False,
               dump_samples_only=False, load_ckpt=None, samples_dir=None, limit_dataset_size=0,
               sampler='ddpm', steps=None, eta=0., spacing='uniform', order=None, inception_graph=None,
               seed=0, stats_cache_dir=None, features='inception', ref_stats=None,
               export_npz=None, export_png_dir=None, poll_interval=60, timeout=None,
               pretrained=None):
  """The scripts' ``evaluation`` command: FID / IS of the EMA model (`EvalWorker`).

  Reads the model configuration from ``<model_dir>/kwargs.json`` (or the script's
  ``defaults`` for a release folder without one); loads the feature
  extractor first (not needed with ``dump_samples_only``), so a missing Inception graph is
  reported before any work. ``ref_stats``: a TTUR / pytorch-fid statistics file to compare
  with instead of the data set's images (see `interop`). ``export_npz`` / ``export_png_dir``
  (with ``dump_samples_only`` of one checkpoint): the dumped samples also as one ``arr_0``
  .npz / a folder of PNGs. With ``pretrained`` (a Hub id or diffusers folder) the script's
  data set is the reference and ``model_dir`` receives the model as a TF1 checkpoint
  (``model.ckpt-0``) and the results. Returns None.
  """
  from .metrics import eval_worker
  if (export_npz or export_png_dir) and not (dump_samples_only and (once or load_ckpt or pretrained)):
    raise FlagError('--export_npz / --export_png_dir need --dump_samples_only and one checkpoint '
                     '(--once or --load_ckpt)')
  if ref_stats and dump_samples_only:
    raise FlagError('--ref_stats is for FID; --dump_samples_only computes none')
  interop.check_export_targets(npz=export_npz, png_dir=export_png_dir)
  if pretrained:
    model_dir, load_ckpt, once = _pretrained_run_dir(pretrained, model_dir), 'model.ckpt-0', True
  kw = read_run_kwargs(model_dir, defaults)
  extractor = reference = None
  if not dump_samples_only:
    reference = interop.load_reference_stats(ref_stats) if ref_stats else None
    extractor = make_eval_extractor(inception_graph, features=features)
  kw, ds = eval_dataset(kw, bucket_name_prefix=bucket_name_prefix, region=region,
                        data_paths=data_paths, check=not ref_stats)
  strategy = tpu_utils.resolve_strategy(tpu_name)
  model = lambda: make_model(kw, ds.image_shape, ds.num_classes)
  if pretrained:
    with strategy.scope():
      model = _pretrained_for(pretrained, ds.image_shape)
  worker = eval_worker.EvalWorker(
      model, total_bs, ds,
      inception_bs=total_bs, num_inception_samples=num_inception_samples,
      limit_dataset_size=limit_dataset_size, extractor=extractor, stats_cache_dir=stats_cache_dir,
      sampler=sampler, steps=steps, eta=eta, spacing=spacing, order=order, strategy=strategy,
      ref_stats=reference)
  results = worker.run(logdir=model_dir, once=once, skip_non_ema_pass=True,
                       dump_samples_only=dump_samples_only, load_ckpt=load_ckpt,
                       samples_dir=samples_dir, seed=seed, poll_interval=poll_interval,
                       timeout=timeout)
  if (export_npz or export_png_dir) and results:
    (paths,) = results.values()
    images = interop.read_sample_shards(paths)
    print(f'Exported {len(images)} samples to '
          f'{interop.export_samples(images, npz=export_npz, png_dir=export_png_dir)}')


def _pretrained_run_dir(pretrained, model_dir):
  """Writes a pretrained model as ``<model_dir>/model.ckpt-0`` (EMA and raw names, TF1 layout)
  so that the evaluation reads it like a run; reuses one written for the same model."""
  from . import pipelines
  if not model_dir:
    raise FlagError('--pretrained evaluation needs --model_dir: the folder for the results')
  marker = os.path.join(model_dir, 'pretrained.json')
  if tf.io.gfile.exists(marker):
    if utils.read_json(marker).get('pretrained') != pretrained:
      raise FileExistsError(f'{model_dir} holds another pretrained model ({marker}); pass another '
                            f'--model_dir')
    return model_dir
  if tf.io.gfile.exists(model_dir) and tf.train.latest_checkpoint(model_dir):
    raise FileExistsError(f'{model_dir} already holds checkpoints; pass an empty or new --model_dir '
                          f'for --pretrained')
  pipelines.save_tf1_checkpoint(pipelines.pretrained_model(pretrained).net, model_dir)
  utils.atomic_write(marker, json.dumps({'pretrained': pretrained}).encode(), overwrite=False)
  return model_dir


def _pretrained_for(pretrained, image_shape):
  from . import pipelines
  model = pipelines.pretrained_model(pretrained)
  if tuple(model.image_shape) != tuple(image_shape):
    raise FlagError(f'--pretrained {pretrained} makes {model.image_shape} images, the data set '
                     f'{image_shape}: evaluate it with the script of its data set')
  return model


def simple_eval(*, model_dir, mode, total_bs, defaults=None, tpu_name=None, bucket_name_prefix=None, region=None,
                data_paths=None, load_ckpt=None, max_batches=None, num_samples=50000, seed=0):
  """The ``simple_eval`` command: bits/dim or progressive samples of the EMA model
  (`SimpleEvalWorker`). Returns None."""
  from .tpu_utils import simple_eval_worker
  if mode not in simple_eval_worker.MODES:
    raise NotImplementedError(f'--mode {mode!r}; expected one of {simple_eval_worker.MODES}')
  kw = read_run_kwargs(model_dir, defaults)
  kw, ds = eval_dataset(kw, bucket_name_prefix=bucket_name_prefix, region=region,
                        data_paths=data_paths)
  strategy = tpu_utils.resolve_strategy(tpu_name)
  worker = simple_eval_worker.SimpleEvalWorker(
      lambda: make_model(kw, ds.image_shape, ds.num_classes), total_bs, ds, strategy=strategy)
  worker.run(mode, model_dir, load_ckpt, max_batches=max_batches, num_samples=num_samples,
             seed=seed)
