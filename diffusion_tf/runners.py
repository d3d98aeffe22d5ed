"""The bodies of the scripts' commands: ``train``, ``sample``, ``evaluation``, ``simple_eval`` and
the editing commands ``inpaint``, ``img2img`` and ``interpolate`` (`editing`).

Each takes the script's `recipes.Recipe` and ``flags``, the command's flag values by name (all
of them, defaults filled in by `cli`), and returns None (what it did is in its summary line).
`COMMANDS` is the table `cli.script_commands` builds a script's commands from. Paths given
with ``--bucket_name_prefix`` map to the original's bucket layout (`resolve_paths`).
"""

import inspect
import io
import json
import os

import numpy as np
import tensorflow as tf

from . import editing, integrity, interop, loading, recipes, sampling, script_models, startup, utils
from .errors import FlagError
from .loading import read_run_kwargs  # noqa: F401  (runners.read_run_kwargs, as before)
from .tpu_utils import tpu_utils

MIXED_PRECISION = script_models.MIXED_PRECISION
FEATURES = ('inception', 'digits')
DATA_PATH_FLAGS = ('tfds_data_dir', 'tfr_file')  # where a recipe's images are
_PATH_FLAGS = DATA_PATH_FLAGS + ('log_dir',)     # what --bucket_name_prefix maps


# ----------------------------------------------------------------------------- paths and names

def resolve_paths(bucket_name_prefix, region=None, **paths):
  """The original mapping ``p -> gs://{prefix}-{region}/{p}`` for every relative path when a
  bucket prefix is given; local paths otherwise. Returns (region or None, {name: path})."""
  if not bucket_name_prefix:
    return None, dict(paths)
  region = utils.get_gcp_region(region)
  return region, {k: utils.bucket_path(v, bucket_name_prefix, region) for k, v in paths.items()}


def model_dir_of(log_dir, exp_name):
  """Scripts always pass date_str='9999-99-99', as the original did."""
  return os.path.join(log_dir, '9999-99-99', exp_name)


def dataset_of(recipe):
  """The recipe's training images (`tpu_utils.datasets`; nothing is read yet)."""
  from .tpu_utils import datasets  # noqa: deferred: TFDS import is slow
  return datasets.get_dataset(recipe.data.dataset, **recipe.dataset_options())


# A run's kwargs.json as a flat dict, read by the code and tests written before recipes.
def make_model(kw, image_shape, num_classes=1):
  """The script model a train kwargs dict (a kwargs.json) describes."""
  return script_models.build(recipes.recipe_of_run(kw), image_shape, num_classes)


def experiment_name(kw):
  """The run-directory name of a train kwargs dict."""
  return recipes.recipe_of_run(kw).experiment_name()


def get_dataset_from_kwargs(kw):
  return dataset_of(recipes.recipe_of_run(kw))


def script_defaults(command):
  """A script command's defaults ({flag: value}); for ``train``, the released models' settings."""
  return {k: p.default for k, p in inspect.signature(command).parameters.items()
          if p.default is not inspect.Parameter.empty}


# ----------------------------------------------------------------------------- train

def _auto_precision(model_dir, tpu_name):
  """--mixed_precision auto: what the run in ``model_dir`` recorded if it is resumed (None for
  runs before 'auto' existed), else 'bfloat16' on a CPU with native bf16 (`startup.native_bf16`),
  else None (float32). Says so in one line when it is bf16."""
  if integrity.checkpoint_prefixes(model_dir):
    value = read_run_kwargs(model_dir, {'mixed_precision': None})['mixed_precision']
    if value == 'bfloat16':
      print('Mixed precision: bfloat16, as this run recorded')
    return value
  unit = startup.native_bf16()
  if tpu_name or not unit or tf.config.list_physical_devices('GPU'):
    return None
  print(f'Mixed precision: bfloat16 (this CPU has {unit}; float32 weights, loss and EMA; '
        f'--mixed_precision none trains in float32)')
  return 'bfloat16'


def train(recipe, flags):
  """Trains ``recipe`` with the ``train`` flags ``flags``; returns the `TrainState`.

  Maps paths to the bucket when ``bucket_name_prefix`` is given, records the flags (with the
  mapped paths and region) as kwargs.json, checks that the data is there before touching any
  accelerator, then trains.
  """
  region, paths = resolve_paths(flags.get('bucket_name_prefix'), flags.get('region'),
                                **{k: flags[k] for k in _PATH_FLAGS if flags.get(k) is not None})
  record = dict(flags, region=region, **paths)
  # Unset --dataset hf flags are not recorded: runs from before them resume unchanged.
  record = {k: v for k, v in record.items()
            if k not in recipes.HF_DATA_FLAGS or v not in (None, False)}
  for k in ('tfr_file', 'log_dir'):
    if k in record:
      print(f'{k}: {record[k]}')
  recipe = recipe.with_flags(record, 'train')
  if record.get('mixed_precision') == 'auto':
    record['mixed_precision'] = _auto_precision(
        model_dir_of(recipe.train.log_dir, recipe.experiment_name()), recipe.train.tpu_name)
    recipe = recipe.with_flags(record, 'train')
  ds = dataset_of(recipe)
  ds.check_available()  # fail now, not after connecting to a TPU and building the model
  t = recipe.train
  return tpu_utils.run_training(
      model_constructor=lambda: script_models.build(recipe, ds.image_shape, ds.num_classes),
      train_input_fn=ds.train_input_fn, total_bs=t.total_bs, optimizer=t.optimizer, lr=t.lr,
      warmup=t.warmup, grad_clip=t.grad_clip, ema_decay=t.ema_decay, tpu=t.tpu_name,
      log_dir=t.log_dir, exp_name=recipe.experiment_name(), dump_kwargs=record,
      date_str='9999-99-99', iterations_per_loop=t.iterations_per_loop,
      keep_checkpoint_max=t.keep_checkpoint_max,
      max_steps=t.max_steps or tpu_utils.UNBOUNDED_STEPS, warm_start_from=t.warm_start_model_dir,
      save_checkpoints_secs=t.save_checkpoints_secs, save_every_steps=t.save_every_steps,
      clip_mode=t.clip_mode, allow_kwargs_mismatch=t.allow_kwargs_mismatch,
      # float16's narrow exponent range needs loss scaling; bfloat16 has float32's range.
      loss_scale='dynamic' if recipe.model.mixed_precision == 'float16' else None,
      seed=t.seed, lr_schedule=t.lr_schedule)


def train_command(recipe, flags):
  """The ``train`` command: `train`, then (for a recipe with ``num_sample_images``) a grid of
  EMA samples from the ancestral sampler on ``sample_steps`` of the steps."""
  state = train(recipe, flags)
  recipe = recipe.with_flags(flags, 'train')
  count = recipe.train.num_sample_images
  if state.stopped_by_signal is not None or not count:
    return
  step = int(state.global_step.numpy())
  out = os.path.join(state.model_dir, f'samples_ema_step{step}')
  T = recipe.diffusion.num_diffusion_timesteps
  steps = min(recipe.train.sample_steps, T)
  print(f'Sampling {count} images with the EMA weights (ddpm, {steps} of {T} steps)...')
  with tpu_utils.ema_scope(state.variables, state.ema_shadows):
    samples = sampling.generate_samples(state.model, count, count, steps=steps, seed=0)
  images = write_samples(out, samples, overwrite=True)
  print(f'Wrote {len(images)} samples to {out}.npz and {out}.png'
        + _recognised(recipe.sampling.recognise, images))


# ----------------------------------------------------------------------------- sample

def _recognised(recogniser, images):
  """'; <share> recognised' for a recipe that names a classifier of its samples."""
  if recogniser is None:
    return ''
  from .metrics import digits_classifier
  return f'; {digits_classifier.recognisable_digits(images).summary()}'


def _check_free(out_prefix, overwrite):
  for ext in ('.npz', '.png'):
    if not overwrite and tf.io.gfile.exists(out_prefix + ext):
      raise FileExistsError(f'{out_prefix}{ext} exists; pass another --out or --overwrite')


def write_samples(out_prefix, samples, *, overwrite=False, grid=None, num_col=0):
  """Writes ``<out_prefix>.npz`` (uint8 ``samples`` [N, H, W, C]; floats in [-1, 1] are
  converted) and ``<out_prefix>.png`` (a grid of the samples, or of the uint8 ``grid`` images
  with ``num_col`` columns)."""
  images = samples if samples.dtype == np.uint8 else utils.to_uint8(samples)
  _check_free(out_prefix, overwrite)
  buf = io.BytesIO()
  np.savez(buf, samples=images)
  utils.atomic_write(out_prefix + '.npz', buf.getvalue(), overwrite=overwrite)
  utils.save_tiled_imgs(out_prefix + '.png', images[:256] if grid is None else grid, num_col=num_col)
  return images


def sampler_flags(flags):
  """The sampler settings among a command's flags, as `sampling.Sampler` takes them."""
  return {k: flags[k] for k in ('sampler', 'steps', 'eta', 'spacing', 'order')}


def _sampler_settings(flags, model):
  return sampling.SamplerSettings.resolve(
      flags['sampler'], model.diffusion.num_timesteps, steps=flags['steps'], eta=flags['eta'],
      spacing=flags['spacing'], order=flags['order'])


def _evaluations(flags, model):
  """``'ddim, 50 network evaluations per sample'``: the sampler's cost, for the summary line
  (Heun and KDPM2 evaluate the network twice per step)."""
  settings = _sampler_settings(flags, model)
  return f'{settings.name}, {settings.num_evaluations} network evaluations per sample'


def _default_out(flags, model, prefix, step):
  tag = _sampler_settings(flags, model).output_tag()
  if flags['pretrained']:  # a Hub id or folder: write beside the current directory
    return f'samples_{os.path.basename(os.path.normpath(flags["pretrained"]))}_{tag}'
  run_dir = flags['model_dir'] or os.path.dirname(prefix)
  return os.path.join(run_dir, f'samples_{tag}_ema{int(bool(flags["ema"]))}_step{step}')


def sample(recipe, flags):
  """The ``sample`` command: draw samples from a run, a checkpoint or a pretrained (Hub /
  diffusers) model and write ``OUT.npz`` and ``OUT.png`` (and, if asked, ``export_npz`` with
  ``arr_0`` and PNGs in ``export_png_dir``, see `interop`), then one summary line."""
  model, _, prefix, step = loading.load_for_sampling(
      recipe, model_dir=flags['model_dir'], ckpt=flags['ckpt'], pretrained=flags['pretrained'],
      ema=flags['ema'], mixed_precision=flags['mixed_precision'])
  startup.announce_devices(tf.distribute.get_strategy())
  print(f'Loaded {"EMA" if flags["ema"] else "raw"} weights from {prefix} (step {step})')
  out = flags['out'] or _default_out(flags, model, prefix, step)
  _check_free(out, flags['overwrite'])  # fail before sampling for an hour, not after
  interop.check_export_targets(npz=flags['export_npz'], png_dir=flags['export_png_dir'])
  samples = sampling.generate_samples(model, flags['num_samples'], flags['batch_size'],
                                      seed=flags['seed'], **sampler_flags(flags))
  images = write_samples(out, samples, overwrite=flags['overwrite'])
  exported = interop.export_samples(images, npz=flags['export_npz'], png_dir=flags['export_png_dir'])
  print(f'Wrote {images.shape[0]} samples to {out}.npz and {out}.png ({_evaluations(flags, model)})'
        + (f', {exported}' if exported else '') + _recognised(recipe.sampling.recognise, images))


def inspect_command(recipe, flags):
  """The ``inspect`` command: what the model ``sample`` would load from the same flags holds
  (`loading.inspect_model`), or the refusal, with nothing built; then one summary line."""
  report = loading.inspect_for_script(recipe, model_dir=flags['model_dir'], ckpt=flags['ckpt'],
                                      pretrained=flags['pretrained'], ema=flags['ema'])
  print(loading.format_report(report))
  print(f'Inspected {report["source"]}: {report["parameters"]:,} parameters, '
        f'{sum(report["files"].values()):,} bytes; nothing was built or written')


# ----------------------------------------------------------------------------- evaluation

def eval_dataset(recipe, flags, *, check=True):
  """The run's recipe with the evaluation's data-path flags (mapped to the bucket when
  ``bucket_name_prefix`` is given) and its data set; ``check``: fail now if its images are
  missing."""
  _, paths = resolve_paths(flags.get('bucket_name_prefix'), flags.get('region'),
                           **{k: flags[k] for k in DATA_PATH_FLAGS if flags.get(k) is not None})
  for k, v in paths.items():
    print(f'{k}: {v}')
  recipe = recipe.with_flags(paths, 'train')
  ds = dataset_of(recipe)
  if check:
    ds.check_available()  # fail before building the model or connecting to a TPU
  return recipe, ds


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


def _check_evaluation_flags(flags):
  export = flags['export_npz'] or flags['export_png_dir']
  one_checkpoint = flags['once'] or flags['load_ckpt'] or flags['pretrained']
  if export and not (flags['dump_samples_only'] and one_checkpoint):
    raise FlagError('--export_npz / --export_png_dir need --dump_samples_only and one checkpoint '
                    '(--once or --load_ckpt)')
  if flags['ref_stats'] and flags['dump_samples_only']:
    raise FlagError('--ref_stats is for FID; --dump_samples_only computes none')
  interop.check_export_targets(npz=flags['export_npz'], png_dir=flags['export_png_dir'])


def evaluation(recipe, flags, *, poll_interval=60, timeout=None):
  """The ``evaluation`` command: FID / IS of the EMA model (`EvalWorker`).

  Reads the model configuration from ``<model_dir>/kwargs.json`` (or the script's recipe for a
  release folder without one); loads the feature extractor first (not needed with
  ``dump_samples_only``), so a missing Inception graph is reported before any work. With
  ``pretrained`` (a Hub id or diffusers folder) the script's data set is the reference and
  ``model_dir`` receives the model as a TF1 checkpoint (``model.ckpt-0``) and the results.
  """
  from .metrics import eval_worker
  _check_evaluation_flags(flags)
  flags = dict(flags)
  if flags['pretrained']:
    flags.update(model_dir=_pretrained_run_dir(flags['pretrained'], flags['model_dir']),
                 load_ckpt='model.ckpt-0', once=True)
  ev = recipe.with_flags(flags, 'evaluation').evaluation
  run = loading.run_recipe(flags['model_dir'], recipe)
  extractor = reference = None
  if not flags['dump_samples_only']:
    reference = interop.load_reference_stats(flags['ref_stats']) if flags['ref_stats'] else None
    extractor = make_eval_extractor(flags['inception_graph'], features=ev.features)
  run, ds = eval_dataset(run, flags, check=not flags['ref_stats'])
  strategy = tpu_utils.resolve_strategy(flags['tpu_name'])
  model = lambda: script_models.build(run, ds.image_shape, ds.num_classes)
  if flags['pretrained']:
    with strategy.scope():
      model = _pretrained_for(flags['pretrained'], ds.image_shape)
  worker = eval_worker.EvalWorker(
      model, ev.total_bs, ds, inception_bs=ev.total_bs,
      num_inception_samples=ev.num_inception_samples, limit_dataset_size=ev.limit_dataset_size,
      extractor=extractor, stats_cache_dir=flags['stats_cache_dir'], strategy=strategy,
      ref_stats=reference, **sampler_flags(flags))
  results = worker.run(logdir=flags['model_dir'], once=flags['once'], skip_non_ema_pass=True,
                       dump_samples_only=flags['dump_samples_only'], load_ckpt=flags['load_ckpt'],
                       samples_dir=flags['samples_dir'], seed=flags['seed'],
                       poll_interval=poll_interval, timeout=timeout)
  if (flags['export_npz'] or flags['export_png_dir']) and results:
    (paths,) = results.values()
    images = interop.read_sample_shards(paths)
    print(f'Exported {len(images)} samples to '
          f'{interop.export_samples(images, npz=flags["export_npz"], png_dir=flags["export_png_dir"])}')


def _pretrained_run_dir(pretrained, model_dir):
  """Writes a pretrained model as ``<model_dir>/model.ckpt-0`` (EMA and raw names, TF1 layout)
  so that the evaluation reads it like a run; reuses one written for the same model."""
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
  from .checkpoints import save_tf1_checkpoint
  save_tf1_checkpoint(loading.pretrained_model(pretrained).net, model_dir)
  utils.atomic_write(marker, json.dumps({'pretrained': pretrained}).encode(), overwrite=False)
  return model_dir


def _pretrained_for(pretrained, image_shape):
  model = loading.pretrained_model(pretrained)
  if tuple(model.image_shape) != tuple(image_shape):
    raise FlagError(f'--pretrained {pretrained} makes {model.image_shape} images, the data set '
                    f'{image_shape}: evaluate it with the script of its data set')
  return model


def simple_eval(recipe, flags):
  """The ``simple_eval`` command: bits/dim or progressive samples of the EMA model
  (`SimpleEvalWorker`)."""
  from .tpu_utils import simple_eval_worker
  if flags['mode'] not in simple_eval_worker.MODES:
    raise NotImplementedError(f'--mode {flags["mode"]!r}; expected one of {simple_eval_worker.MODES}')
  run, ds = eval_dataset(loading.run_recipe(flags['model_dir'], recipe), flags)
  strategy = tpu_utils.resolve_strategy(flags['tpu_name'])
  worker = simple_eval_worker.SimpleEvalWorker(
      lambda: script_models.build(run, ds.image_shape, ds.num_classes), flags['total_bs'], ds,
      strategy=strategy)
  worker.run(flags['mode'], flags['model_dir'], flags['load_ckpt'],
             max_batches=flags['max_batches'], num_samples=50000, seed=0)


# ----------------------------------------------------------------------------- export

def export(recipe, flags):
  """The ``export`` command: a model (as for ``sample``) and the sampler of the sampler flags
  as a SavedModel, LiteRT or ONNX folder ``--out`` (`export`), then one summary line. The
  format, quantization and output are checked before the model is loaded."""
  from . import export as exporting
  exporting.check_request(flags['format'], flags['quantize'], flags['out'], flags['overwrite'])
  model, run, prefix, step = loading.load_for_sampling(
      recipe, model_dir=flags['model_dir'], ckpt=flags['ckpt'], pretrained=flags['pretrained'],
      ema=flags['ema'], mixed_precision=None if flags['pretrained'] else 'float32')
  settings = _sampler_settings(flags, model)
  print(f'Loaded {"EMA" if flags["ema"] else "raw"} weights from {prefix}'
        + (f' (step {step})' if step is not None else '') + f'; exporting {settings.describe()}',
        flush=True)
  out, size = exporting.export(
      model, settings, flags['out'], format=flags['format'], quantize=flags['quantize'],
      overwrite=flags['overwrite'], source=prefix, recipe=run)
  quantized = f', {flags["quantize"]} weights' if flags['quantize'] != 'none' else ''
  print(f'Exported {settings.describe()} as {flags["format"]}{quantized} to {out} '
        f'({exporting.human_size(size)})')


# ----------------------------------------------------------------------------- editing

def _edit_model(recipe, flags):
  model, _, prefix, step = loading.load_for_sampling(
      recipe, model_dir=flags['model_dir'], ckpt=flags['ckpt'], pretrained=flags['pretrained'],
      ema=flags['ema'], mixed_precision=flags['mixed_precision'])
  startup.announce_devices(tf.distribute.get_strategy())
  print(f'Loaded {"EMA" if flags["ema"] else "raw"} weights from {prefix} (step {step})')
  return model


def _edit_images(flags, model):
  """(uint8 --images fitted to the model, the same in [-1, 1])."""
  images = interop.fit_images(interop.read_images(flags['images']), model.image_shape,
                              resize=flags['resize'])
  return images, images.astype(np.float32) / 127.5 - 1.  # the data's scaling


def _grid_rows(*rows, limit=16):
  """The first ``limit`` images of each row, stacked row after row (all with the rows' channels)."""
  C = rows[0].shape[-1]
  return np.concatenate([np.repeat(r[:limit], C // r.shape[-1], axis=-1) for r in rows])


def _inpaint_edit(flags, model):
  """(edit function, its description, network evaluations per image), validated."""
  d = model.diffusion
  if flags['method'] == 'repaint':
    kw = dict(steps=flags['steps'], jump_length=flags['jump_length'],
              jump_n_sample=flags['jump_n_sample'], eta=flags['eta'])
    editing.repaint_plan(d, **kw)
    evals = editing.repaint_evaluations(d.num_timesteps, flags['steps'], flags['jump_length'],
                                        flags['jump_n_sample'])
    how = (f'RePaint with {flags["steps"]} steps, jumps of {flags["jump_length"]} x '
           f'{flags["jump_n_sample"]}, eta={flags["eta"]}')
    return (lambda noise_fn, x0, m: editing.repaint_loop(d, model.denoise, x0=x0, mask=m,
                                                         noise_fn=noise_fn, **kw)), how, evals
  settings = _sampler_settings(flags, model)
  settings.levels_after_steps(d)  # refuses a sampler that cannot replace, before any work
  return (lambda noise_fn, x0, m: editing.replace_loop(settings, d, model.denoise, x0=x0, mask=m,
                                                       noise_fn=noise_fn),
          f'replacement on {settings.describe()}', settings.num_evaluations)


def inpaint(recipe, flags):
  """The ``inpaint`` command: RePaint (or replacement) of the --masks' black pixels."""
  masks = interop.binary_masks(interop.read_images(flags['masks'], '--masks'),
                               invert=flags['invert_mask'])
  interop.check_masks(masks, interop.read_images(flags['images']))  # before loading the model
  model = _edit_model(recipe, flags)
  images, x0 = _edit_images(flags, model)
  masks = interop.check_masks(interop.fit_images(masks, model.image_shape[:2] + (1,), flag='--masks',
                                                 resize=flags['resize'], nearest=True), images)
  edit, how, evals = _inpaint_edit(flags, model)
  out = flags['out'] or 'inpainted'
  _check_free(out, flags['overwrite'])
  result = editing.EditRunner(edit)([x0, masks.astype(np.float32)], flags['batch_size'],
                                    flags['seed'], desc='inpaint')
  final = editing.compose(utils.to_uint8(result), images, masks)
  write_samples(out, final, overwrite=flags['overwrite'], num_col=min(len(images), 16),
                grid=_grid_rows(images, masks * 255, final))
  print(f'Inpainted {len(images)} images ({how}; {evals} network evaluations per image): '
        f'{int((masks == 0).sum())} of {masks.size} pixels repainted; wrote {out}.npz and '
        f'{out}.png' + _recognised(recipe.sampling.recognise, final))


def img2img(recipe, flags):
  """The ``img2img`` command: SDEdit of --images at --strength with any sampler."""
  model = _edit_model(recipe, flags)
  images, x0 = _edit_images(flags, model)
  d = model.diffusion
  settings = _sampler_settings(flags, model)
  k = editing.strength_steps(settings, flags['strength'])
  settings.check_start(k or None)
  out = flags['out'] or 'img2img'
  _check_free(out, flags['overwrite'])
  result = editing.EditRunner(
      lambda noise_fn, x: editing.img2img(settings, d, model.denoise, x0=x, strength=flags['strength'],
                                          noise_fn=noise_fn))([x0], flags['batch_size'], flags['seed'],
                                                              desc='img2img')
  final = utils.to_uint8(result) if k else images
  write_samples(out, final, overwrite=flags['overwrite'], num_col=min(len(images), 16),
                grid=_grid_rows(images, final))
  print(f'Edited {len(images)} images (strength {flags["strength"]}: the last {k} steps of '
        f'{settings.describe()}); wrote {out}.npz and {out}.png'
        + _recognised(recipe.sampling.recognise, final))


def interpolate(recipe, flags):
  """The ``interpolate`` command: a row of --num images between each pair of --images."""
  model = _edit_model(recipe, flags)
  images, x0 = _edit_images(flags, model)
  d = model.diffusion
  editing.check_timestep(flags['t'], d.num_timesteps)
  if len(images) % 2:
    raise FlagError(f'--images: interpolate takes pairs of images, got {len(images)}')
  out = flags['out'] or 'interpolated'
  _check_free(out, flags['overwrite'])
  lam = np.linspace(0., 1., flags['num'])
  rows = editing.EditRunner(
      lambda noise_fn, a, b: editing.interpolate(d, model.denoise, x1=a, x2=b, lam=lam, t=flags['t'],
                                                 mix=flags['mix'], noise_fn=noise_fn))(
      [x0[0::2], x0[1::2]], 1, flags['seed'], desc='interpolate')
  final = utils.to_uint8(rows)
  n = flags['num']
  grid = np.concatenate([np.concatenate([images[2 * i:2 * i + 1], final[i * n:(i + 1) * n],
                                         images[2 * i + 1:2 * i + 2]]) for i in range(len(images) // 2)])
  write_samples(out, final, overwrite=flags['overwrite'], grid=grid, num_col=n + 2)
  print(f'Interpolated {len(images) // 2} pairs at t={flags["t"]} ({flags["mix"]}, {n} images '
        f'each, {flags["t"] + 1} network evaluations per image); wrote {out}.npz and {out}.png')


COMMANDS = {'train': train_command, 'sample': sample, 'evaluation': evaluation,
            'simple_eval': simple_eval, 'inspect': inspect_command, 'export': export,
            'inpaint': inpaint, 'img2img': img2img, 'interpolate': interpolate}
