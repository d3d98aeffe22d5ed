"""diffusers' ``train_unconditional.py`` on our training loop: its flags by their names, defaults
and meanings (`FLAGS`, the table the parser and docs/training.md follow), mapped onto
`tpu_utils.run_training` and a `datasets` data set (`tpu_utils.datasets.HubDataset`).

The output directory becomes a diffusers pipeline folder (``model_index.json``, ``unet/``,
``scheduler/``; the EMA weights with ``--use_ema``), rewritten every ``--save_model_epochs`` and at
the end; our TF1 checkpoints and the TensorBoard events live in ``<output_dir>/<logging_dir>``,
which ``--resume_from_checkpoint`` continues. Every check runs before anything is written.

An epoch is ``ceil(ceil(images / (train_batch_size x replicas)) / gradient_accumulation_steps)``
updates, as diffusers counts them; our input pipeline repeats and reshuffles without epoch
boundaries, so an epoch is that many updates' worth of images, not one exact pass.
"""

import argparse
import collections
import contextlib
import json
import math
import os
import shlex
import shutil
import sys
import time

import numpy as np
import tensorflow as tf

from . import diffusers_format as fmt
from . import pipelines, utils
from .errors import FlagError
from .models.unet import UNet
from .tpu_utils import datasets, run_directory, tpu_utils

Flag = collections.namedtuple('Flag', 'name type default help choices ours',
                              defaults=(None, ''))
# ours: '' = mapped onto our training with diffusers' meaning; 'note: ...' = accepted, no
# meaning here (printed when given); 'ours' = a flag train_unconditional does not have.
FLAGS = (
    Flag('dataset_name', str, None, 'a Hub data set id, or a local folder the `datasets` library '
         'reads (save_to_disk, parquet / arrow, imagefolder)'),
    Flag('dataset_config_name', str, None, "the data set's configuration"),
    Flag('model_config_name_or_path', str, None, "a UNet2DModel config.json (a file or a folder "
         "holding one); default: train_unconditional's U-Net at --resolution"),
    Flag('train_data_dir', str, None, 'a folder of images (an imagefolder), instead of --dataset_name'),
    Flag('image_column', str, 'image', "the data set's image column", ours='ours'),
    Flag('output_dir', str, 'ddpm-model-64', 'the diffusers pipeline folder written (and our '
         'checkpoints in its --logging_dir)'),
    Flag('overwrite_output_dir', bool, False, 'start again in an --output_dir that holds a run'),
    Flag('cache_dir', str, None, 'where downloaded data sets are kept'),
    Flag('resolution', int, 64, 'images are cropped to a square and resized to this'),
    Flag('center_crop', bool, False, 'crop the centre (default: a random square)'),
    Flag('random_flip', bool, False, 'flip images horizontally at random'),
    Flag('train_batch_size', int, 16, 'images per device per micro-batch'),
    Flag('eval_batch_size', int, 16, 'images in each sample grid'),
    Flag('dataloader_num_workers', int, 0, 'data-loading processes',
         ours="note: images are decoded in tf.data's parallel map, sized automatically"),
    Flag('num_epochs', int, 100, 'training epochs'),
    Flag('max_train_steps', int, None, 'stop after this many updates (overrides --num_epochs)',
         ours='ours'),
    Flag('save_images_epochs', int, 10, 'write a sample grid every N epochs (and after the last)'),
    Flag('save_model_epochs', int, 10, 'write the pipeline folder every N epochs (and at the end)'),
    Flag('gradient_accumulation_steps', int, 1, 'micro-batches per update'),
    Flag('learning_rate', float, 1e-4, 'the learning rate after the warm-up'),
    Flag('lr_scheduler', str, 'cosine', "diffusers' get_scheduler name",
         choices=('linear', 'cosine', 'cosine_with_restarts', 'polynomial', 'constant',
                  'constant_with_warmup')),
    Flag('lr_warmup_steps', int, 500, 'warm-up updates'),
    Flag('adam_beta1', float, 0.95, "AdamW's beta1"),
    Flag('adam_beta2', float, 0.999, "AdamW's beta2"),
    Flag('adam_weight_decay', float, 1e-6, "AdamW's decoupled weight decay"),
    Flag('adam_epsilon', float, 1e-8, "AdamW's epsilon"),
    Flag('use_ema', bool, False, 'save the EMA weights (diffusers EMAModel warm-up)'),
    Flag('ema_inv_gamma', float, 1.0, "the EMA warm-up's inv_gamma"),
    Flag('ema_power', float, 3 / 4, "the EMA warm-up's power"),
    Flag('ema_max_decay', float, 0.9999, 'the EMA decay cap'),
    Flag('push_to_hub', bool, False, 'upload the pipeline folder and a model card at the end'),
    Flag('hub_token', str, None, 'the Hub token (default: the logged-in one)'),
    Flag('hub_model_id', str, None, "the Hub repo (default: --output_dir's name)"),
    Flag('hub_private_repo', bool, False, 'create the Hub repo private'),
    Flag('logger', str, 'tensorboard', 'where the logs go', choices=('tensorboard', 'wandb')),
    Flag('logging_dir', str, 'logs', 'TensorBoard events and our checkpoints, in --output_dir'),
    Flag('local_rank', int, -1, 'the process rank',
         ours='note: devices come from tf.distribute (as every script); nothing to set'),
    Flag('mixed_precision', str, 'no', 'no: float32; bf16: bfloat16 compute; fp16: float16 '
         'compute with dynamic loss scaling', choices=('no', 'fp16', 'bf16')),
    Flag('prediction_type', str, 'epsilon', 'what the U-Net predicts (sample: SNR-weighted loss)',
         choices=('epsilon', 'sample')),
    Flag('ddpm_num_steps', int, 1000, 'diffusion steps T'),
    Flag('ddpm_num_inference_steps', int, 1000, "the sample grids' DDPM steps"),
    Flag('ddpm_beta_schedule', str, 'linear', 'the beta schedule',
         choices=('linear', 'scaled_linear', 'squaredcos_cap_v2')),
    Flag('checkpointing_steps', int, 500, 'save a TF1 checkpoint every N updates'),
    Flag('checkpoints_total_limit', int, None, 'keep at most N checkpoints (default: all)'),
    Flag('resume_from_checkpoint', str, None, "'latest' or the run's newest checkpoint"),
    Flag('enable_xformers_memory_efficient_attention', bool, False, 'xformers attention',
         ours='note: no xformers in TensorFlow; attention runs as it is'),
    Flag('preserve_input_precision', bool, False, 'keep the images in float32',
         ours='note: images always enter in float32 here'),
    Flag('seed', int, None, 'fixes the initial weights, the data order and the noise', ours='ours'),
)
FLAG_BY_NAME = {f.name: f for f in FLAGS}
KEEP_ALL = 10 ** 6  # keep_checkpoint_max without --checkpoints_total_limit
MIXED_PRECISION = {'no': None, 'bf16': 'bfloat16', 'fp16': 'float16'}
PIPELINE_PARTS = (pipelines.MODEL_INDEX, 'unet', 'scheduler')
SAMPLES_DIR = 'samples'
SAVING_DIR = '.saving'
RUN_NAME = 'train_unconditional'  # the run directory in --logging_dir (diffusers' tracker name)

# train_unconditional's U-Net when no --model_config_name_or_path is given (114M parameters).
DEFAULT_UNET = {
    '_class_name': 'UNet2DModel', 'in_channels': 3, 'out_channels': 3, 'layers_per_block': 2,
    'block_out_channels': [128, 128, 256, 256, 512, 512],
    'down_block_types': ['DownBlock2D'] * 4 + ['AttnDownBlock2D', 'DownBlock2D'],
    'up_block_types': ['UpBlock2D', 'AttnUpBlock2D'] + ['UpBlock2D'] * 4,
}


# ----------------------------------------------------------------------------- flags

class _Parser(argparse.ArgumentParser):
  def error(self, message):  # argparse would print usage and exit: one line of ours instead
    raise FlagError(message)


def _bool(value):
  if value.lower() in ('1', 'true', 'yes'):
    return True
  if value.lower() in ('0', 'false', 'no'):
    return False
  raise argparse.ArgumentTypeError(f'expected true or false, got {value!r}')


def parser():
  p = _Parser(prog='train_unconditional.py', description=__doc__.split('\n\n')[0],
              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  for f in FLAGS:
    text = f.help + ('' if not f.ours or f.ours == 'ours' else f' ({f.ours})')
    if f.type is bool:  # store_true as diffusers, also --flag=true|false
      p.add_argument(f'--{f.name}', nargs='?', const=True, default=f.default, type=_bool, help=text)
    else:
      p.add_argument(f'--{f.name}', type=f.type, default=f.default, choices=f.choices, help=text)
  return p


def parse(argv):
  """The flags of ``argv`` as a dict (every flag, defaults filled in)."""
  return vars(parser().parse_args(argv))


def notes(flags):
  """One line for each flag given that has no meaning here."""
  return [f'note: --{f.name} is accepted and ignored ({f.ours[len("note: "):]})'
          for f in FLAGS if f.ours.startswith('note: ') and flags[f.name] != f.default]


_POSITIVE = ('resolution', 'train_batch_size', 'eval_batch_size', 'num_epochs', 'save_images_epochs',
             'save_model_epochs', 'gradient_accumulation_steps', 'ddpm_num_steps',
             'ddpm_num_inference_steps', 'checkpointing_steps', 'max_train_steps',
             'checkpoints_total_limit')


def check_values(flags):
  """Refuses (FlagError) values out of range, before anything is opened."""
  if (flags['dataset_name'] is None) == (flags['train_data_dir'] is None):
    raise FlagError('give one of --dataset_name (a Hub id or a local data set) or --train_data_dir '
                    '(a folder of images)')
  for name in _POSITIVE:
    if flags[name] is not None and flags[name] < 1:
      raise FlagError(f'--{name} must be >= 1; got {flags[name]}')
  for name in ('learning_rate', 'adam_epsilon', 'ema_inv_gamma', 'ema_power'):
    if not flags[name] > 0:
      raise FlagError(f'--{name} must be > 0; got {flags[name]}')
  for name in ('adam_beta1', 'adam_beta2', 'ema_max_decay'):
    if not 0 <= flags[name] < 1:
      raise FlagError(f'--{name} must be in [0, 1); got {flags[name]}')
  if flags['adam_weight_decay'] < 0 or flags['lr_warmup_steps'] < 0:
    raise FlagError('--adam_weight_decay and --lr_warmup_steps must be >= 0')
  if flags['ddpm_num_inference_steps'] > flags['ddpm_num_steps']:
    raise FlagError(f'--ddpm_num_inference_steps={flags["ddpm_num_inference_steps"]} exceeds '
                    f'--ddpm_num_steps={flags["ddpm_num_steps"]}')
  if flags['logger'] != 'tensorboard':
    raise FlagError(f'--logger {flags["logger"]}: only tensorboard here (the events are in '
                    f'--output_dir/--logging_dir)')
  if flags['push_to_hub']:
    try:
      import huggingface_hub  # noqa: F401  (only whether it is there)
    except ImportError:
      raise FlagError('--push_to_hub needs huggingface_hub: pip install huggingface_hub') from None


# ----------------------------------------------------------------------------- the model

def unet_config(flags):
  """The UNet2DModel config trained: --model_config_name_or_path's or train_unconditional's
  default, with sample_size = --resolution (a config's own sample_size must agree)."""
  path = flags['model_config_name_or_path']
  if path is None:
    return dict(DEFAULT_UNET, sample_size=flags['resolution'])
  if os.path.isdir(path):
    path = os.path.join(path, 'config.json')
  if not os.path.isfile(path):
    raise FlagError(f'--model_config_name_or_path {flags["model_config_name_or_path"]}: no such '
                    f'config.json (a UNet2DModel config file or a folder holding one)')
  config = fmt.read_json(path)
  size = config.get('sample_size')
  if size is not None and size not in (flags['resolution'], [flags['resolution']] * 2):
    raise FlagError(f'{path}: sample_size={size} but --resolution={flags["resolution"]}; make '
                    f'them agree')
  config = dict(config, sample_size=flags['resolution'])
  fmt.unet_kwargs_from_config(config)  # refuses, naming the option, what our U-Net cannot be
  return config


def scheduler_config(flags):
  """The DDPMScheduler config train_unconditional makes from the --ddpm_* flags."""
  cfg = fmt.scheduler_config_with_defaults(
      {'num_train_timesteps': flags['ddpm_num_steps'], 'beta_schedule': flags['ddpm_beta_schedule'],
       'prediction_type': flags['prediction_type']}, 'DDPMScheduler')
  return {'_class_name': 'DDPMScheduler', '_diffusers_version': fmt.DIFFUSERS_VERSION, **cfg}


class UnconditionalModel(tpu_utils.Model):
  """train_unconditional's objective: uniform timesteps, MSE to the noise (epsilon) or, for
  ``sample``, to the image weighted per example by its SNR alpha_bar / (1 - alpha_bar), as
  diffusers' script; optional horizontal flips."""

  def __init__(self, unet_kwargs, diffusion, *, random_flip):
    self.net = UNet(**unet_kwargs)
    self.diffusion = diffusion
    self.random_flip = random_flip
    ac = np.asarray(diffusion.alphas_cumprod, np.float64)
    self._snr = None if diffusion.model_mean_type == 'eps' else tf.constant(ac / (1. - ac), tf.float32)

  def _denoise_train(self, x, t):
    return tf.cast(self.net(x, t, training=True), tf.float32)

  def train_fn(self, x, y):
    if self.random_flip:
      x = tf.image.random_flip_left_right(x)
    t = tf.random.uniform([tf.shape(x)[0]], 0, self.diffusion.num_timesteps, dtype=tf.int32)
    losses = self.diffusion.training_losses(self._denoise_train, x, t)
    if self._snr is not None:
      losses = losses * tf.gather(self._snr, t)
    return {'loss': tf.reduce_mean(losses)}


# ----------------------------------------------------------------------------- the plan

class Plan:
  """Everything a run needs, checked: made by `make_plan` before anything is written."""

  def __init__(self, flags, dataset, unet_cfg, sched_cfg, strategy):
    self.flags, self.dataset, self.unet_config, self.scheduler_config = (
        flags, dataset, unet_cfg, sched_cfg)
    self.strategy = strategy
    self.output_dir = flags['output_dir']
    self.run_dir = os.path.join(flags['output_dir'], flags['logging_dir'], RUN_NAME)
    replicas = strategy.num_replicas_in_sync
    k = flags['gradient_accumulation_steps']
    self.total_bs = flags['train_batch_size'] * replicas * k
    batches = math.ceil(dataset.num_train_examples / (flags['train_batch_size'] * replicas))
    self.steps_per_epoch = math.ceil(batches / k)
    self.max_steps = flags['max_train_steps'] or flags['num_epochs'] * self.steps_per_epoch
    self.num_epochs = math.ceil(self.max_steps / self.steps_per_epoch)

  def recorded(self):
    """What kwargs.json keeps: the settings a resumed run must share with its start."""
    f = self.flags
    return {'unet': self.unet_config, 'scheduler': self.scheduler_config,
            **{k: f[k] for k in ('train_batch_size', 'gradient_accumulation_steps',
                                 'mixed_precision', 'image_column')}}


def _dataset(flags):
  ds = datasets.HubDataset(flags['dataset_name'] or flags['train_data_dir'],
                           resolution=flags['resolution'], hf_config=flags['dataset_config_name'],
                           hf_cache_dir=flags['cache_dir'], image_column=flags['image_column'],
                           center_crop=flags['center_crop'])
  ds.check_available()
  return ds


def _check_output_dir(plan):
  """Refuses an --output_dir holding a run unless it is resumed or --overwrite_output_dir; a
  resumed run must have been started with the same settings."""
  f, has_run = plan.flags, bool(_checkpoints(plan.run_dir))
  held = [p for p in PIPELINE_PARTS if os.path.exists(os.path.join(plan.output_dir, p))]
  if f['overwrite_output_dir']:
    return
  if f['resume_from_checkpoint'] is None and (has_run or held):
    raise FlagError(f'--output_dir {plan.output_dir} holds a run ({", ".join(held) or plan.run_dir}); '
                    f'pass --resume_from_checkpoint latest to continue it or --overwrite_output_dir '
                    f'to start again')
  if f['resume_from_checkpoint'] not in (None, 'latest'):
    _check_resume_path(f['resume_from_checkpoint'], plan.run_dir)
  if has_run:
    recorded = run_directory.load_train_kwargs(plan.run_dir)
    now = json.loads(json.dumps(plan.recorded()))
    diff = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
    if diff:
      raise FlagError(f'{plan.run_dir} was trained with other settings ({", ".join(diff)}); use the '
                      f'same flags to resume, or --overwrite_output_dir to start again')


def _checkpoints(run_dir):
  state = tf.train.get_checkpoint_state(run_dir) if os.path.isdir(run_dir) else None
  return list(state.all_model_checkpoint_paths) if state else []


def _check_resume_path(path, run_dir):
  """--resume_from_checkpoint PATH: this run's newest checkpoint (a prefix, or its folder)."""
  newest = tf.train.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
  candidates = {os.path.abspath(path), os.path.abspath(os.path.join(run_dir, path))}
  if newest and (os.path.abspath(newest) in candidates or os.path.abspath(run_dir) in candidates):
    return
  raise FlagError(f'--resume_from_checkpoint {path}: expected "latest" or the newest checkpoint of '
                  f'{run_dir} ({newest or "none there"}); resuming from an older one is not '
                  f'supported (move the newer ones away)')


def make_plan(flags):
  """Checks every flag, the data set and the output directory; writes nothing."""
  check_values(flags)
  unet_cfg = unet_config(flags)
  sched_cfg = scheduler_config(flags)
  fmt.diffusion_from_scheduler_config(sched_cfg)  # refuses what our diffusion does not compute
  dataset = _dataset(flags)
  plan = Plan(flags, dataset, unet_cfg, sched_cfg, tpu_utils.resolve_strategy())
  _check_output_dir(plan)
  return plan


# ----------------------------------------------------------------------------- outputs

def write_pipeline_folder(unet, sched_cfg, out_dir):
  """The diffusers layout of ``unet`` in ``out_dir``: written beside it first, then each part
  moved into place (a reader sees the old part or the new one, never half a file)."""
  tmp = os.path.join(out_dir, SAVING_DIR)
  shutil.rmtree(tmp, ignore_errors=True)
  pipelines.DDPMPipeline(unet, sched_cfg).save_pretrained(tmp)
  for part in ('unet', 'scheduler'):
    dst, old = os.path.join(out_dir, part), os.path.join(out_dir, f'.{part}.old')
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(dst):
      os.replace(dst, old)
    os.replace(os.path.join(tmp, part), dst)
    shutil.rmtree(old, ignore_errors=True)
  os.replace(os.path.join(tmp, pipelines.MODEL_INDEX), os.path.join(out_dir, pipelines.MODEL_INDEX))
  os.rmdir(tmp)


def sample_grid(unet, sched_cfg, num_images, num_steps, path):
  """``num_images`` DDPM samples of ``unet`` (seed 0, as diffusers' script), as a PNG grid at
  ``path``; returns them (uint8 [N, H, W, C])."""
  pipe = pipelines.DDPMPipeline(unet, sched_cfg)
  images = pipe(batch_size=num_images, num_inference_steps=num_steps, seed=0, output_type='np').images
  images = np.clip(np.round(np.asarray(images) * 255), 0, 255).astype(np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  utils.save_tiled_imgs(path, images)
  return images


class EpochHook(tpu_utils.StepHook):
  """The script's work between updates: the time estimate once the step rate is measured,
  sample grids and the pipeline folder at epoch ends (diffusers' epoch e = 0, 1, ...: when
  e % N == 0 and after the last)."""

  def __init__(self, plan, log_fn=print):
    self.plan, self.log_fn = plan, log_fn
    self.estimated, self.saved_step, self.grid = False, None, None

  def begin(self, state, run_dir):
    self.state, self.writer = state, run_dir.writer
    p, step = self.plan, int(state.global_step.numpy())
    self.start_step = step
    verb = 'Resuming at' if step else 'Starting at'
    self.log_fn(f'{verb} step {step} (epoch {step // p.steps_per_epoch}) of {p.max_steps} '
                f'({p.num_epochs} epochs x {p.steps_per_epoch} updates of {p.total_bs} images; '
                f'{p.dataset.num_train_examples} images)')

  def next_stop(self, step):
    epoch_end = (step // self.plan.steps_per_epoch + 1) * self.plan.steps_per_epoch
    return epoch_end if self.estimated else min(epoch_end, self.start_step + 2)

  def after(self, state, step, rate):
    p = self.plan
    if not self.estimated and math.isfinite(rate):
      self.estimated = True
      grids = len({e for e in range(p.num_epochs) if e % p.flags['save_images_epochs'] == 0}
                  | {p.num_epochs - 1})
      self.log_fn(f'Estimated time: {utils.format_duration((p.max_steps - step) / rate)} for the '
                  f'{p.max_steps - step} updates left, at {rate:.2f} updates/s (measured), '
                  f'plus {grids} sample grid(s) of {p.flags["eval_batch_size"]} images x '
                  f'{p.flags["ddpm_num_inference_steps"]} steps')
    if step % p.steps_per_epoch == 0 or step == p.max_steps:
      self.epoch_end(math.ceil(step / p.steps_per_epoch) - 1, last=step == p.max_steps)

  def _ema(self):
    use = self.plan.flags['use_ema']
    return tpu_utils.ema_scope(self.state.variables, self.state.ema_shadows) if use else contextlib.nullcontext()

  def epoch_end(self, epoch, last):
    p, f = self.plan, self.plan.flags
    step = int(self.state.global_step.numpy())
    with self._ema():
      if epoch % f['save_images_epochs'] == 0 or last:
        self.grid = os.path.join(p.output_dir, SAMPLES_DIR, f'epoch_{epoch:04d}.png')
        t0 = time.time()
        images = sample_grid(self.state.model.net, p.scheduler_config, f['eval_batch_size'],
                             f['ddpm_num_inference_steps'], self.grid)
        with self.writer.as_default(step=epoch):
          tf.summary.image('test_samples', images, max_outputs=len(images))
        to_come = len([e for e in range(epoch + 1, p.num_epochs - 1) if e % f['save_images_epochs'] == 0])
        to_come += 0 if last else 1
        self.log_fn(f'Epoch {epoch}: wrote {self.grid} in {utils.format_duration(time.time() - t0)}'
                    + (f' ({to_come} more grids to come)' if to_come else ''))
      if (epoch % f['save_model_epochs'] == 0 or last) and self.saved_step != step:
        write_pipeline_folder(self.state.model.net, p.scheduler_config, p.output_dir)
        self.saved_step = step
        self.log_fn(f'Epoch {epoch}: wrote the pipeline folder {p.output_dir} (step {step}'
                    + (', EMA weights)' if f['use_ema'] else ')'))


# ----------------------------------------------------------------------------- the Hub

def model_card(plan, grid, argv):
  """README.md for the Hub: the command, the data set, the last sample grid."""
  f = plan.flags
  data = f['dataset_name'] or f['train_data_dir']
  command = 'python scripts/train_unconditional.py ' + ' '.join(shlex.quote(a) for a in _redacted(argv))
  image = f'\n![samples]({os.path.relpath(grid, plan.output_dir)})\n' if grid else ''
  return (f'---\nlibrary_name: diffusers\ntags:\n- pytorch\n- diffusers\n- unconditional-image-generation\n'
          f'- diffusion_tf\n---\n\n# {os.path.basename(os.path.abspath(plan.output_dir))}\n\n'
          f'An unconditional DDPM ({plan.unet_config["_class_name"]}, {f["resolution"]}x'
          f'{f["resolution"]}) trained with diffusion_tf on `{data}` for {plan.max_steps} updates '
          f'({plan.num_epochs} epochs){", EMA weights" if f["use_ema"] else ""}.\n\n'
          f'```python\nfrom diffusers import DDPMPipeline\n\npipeline = DDPMPipeline.from_pretrained('
          f'"{hub_repo_id(f)}")\nimage = pipeline().images[0]\n```\n\n## Training command\n\n'
          f'```bash\n{command}\n```\n{image}')


def _redacted(argv):
  """``argv`` without the value of --hub_token (the card is public)."""
  out = []
  for a in argv:
    hidden = out and out[-1] == '--hub_token'
    out.append('***' if hidden else '--hub_token=***' if a.startswith('--hub_token=') else a)
  return out


def hub_repo_id(flags):
  return flags['hub_model_id'] or os.path.basename(os.path.abspath(flags['output_dir']))


def push_to_hub(plan, grid, argv):
  """Uploads the pipeline folder, the sample grids and a model card (the one network call)."""
  import huggingface_hub
  f = plan.flags
  utils.atomic_write(os.path.join(plan.output_dir, 'README.md'), model_card(plan, grid, argv).encode())
  api = huggingface_hub.HfApi(token=f['hub_token'])
  repo_id = api.create_repo(hub_repo_id(f), private=f['hub_private_repo'], exist_ok=True).repo_id
  logs = os.path.relpath(os.path.dirname(plan.run_dir), plan.output_dir)
  api.upload_folder(repo_id=repo_id, folder_path=plan.output_dir,
                    commit_message=f'End of training (step {plan.max_steps})',
                    ignore_patterns=[f'{logs}/**', f'{SAVING_DIR}/**', '.*.old/**'])
  return repo_id


# ----------------------------------------------------------------------------- the run

def _clear(plan):
  """--overwrite_output_dir: removes what an earlier run wrote here (nothing else)."""
  for part in PIPELINE_PARTS + (SAMPLES_DIR, os.path.relpath(plan.run_dir, plan.output_dir), 'README.md'):
    path = os.path.join(plan.output_dir, part)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def _training_options(plan):
  f = plan.flags
  constant = f['lr_scheduler'] == 'constant'  # diffusers' constant has no warm-up
  return dict(
      total_bs=plan.total_bs, optimizer='adam', lr=f['learning_rate'],
      warmup=0 if constant else f['lr_warmup_steps'], grad_clip=1.0, max_steps=plan.max_steps,
      lr_schedule=f['lr_scheduler'], ema_decay=f['ema_max_decay'],
      ema_warmup=(f['ema_inv_gamma'], f['ema_power']), grad_accumulation=f['gradient_accumulation_steps'],
      optimizer_options={'beta1': f['adam_beta1'], 'beta2': f['adam_beta2'],
                         'epsilon': f['adam_epsilon'], 'weight_decay': f['adam_weight_decay']},
      loss_scale='dynamic' if f['mixed_precision'] == 'fp16' else None, seed=f['seed'],
      keep_checkpoint_max=f['checkpoints_total_limit'] or KEEP_ALL,
      save_every_steps=f['checkpointing_steps'], save_checkpoints_secs=float('inf'))


def _model_constructor(plan):
  f = plan.flags
  kwargs = fmt.unet_kwargs_from_config(plan.unet_config)
  if MIXED_PRECISION[f['mixed_precision']]:
    kwargs['compute_dtype'] = MIXED_PRECISION[f['mixed_precision']]
  diffusion, _ = fmt.diffusion_from_scheduler_config(plan.scheduler_config)
  return lambda: UnconditionalModel(kwargs, diffusion, random_flip=f['random_flip'])


def run(flags, argv=()):
  """Trains as train_unconditional with ``flags`` (`parse`); returns the `Plan`."""
  plan = make_plan(flags)
  for line in notes(flags):
    print(line)
  if flags['mixed_precision'] == 'fp16' and not tf.config.list_physical_devices('GPU'):
    print('note: --mixed_precision fp16 on a CPU: float16 compute is emulated (slower than no or '
          'bf16), with dynamic loss scaling')
  if flags['overwrite_output_dir']:
    _clear(plan)
  if flags['resume_from_checkpoint'] and not _checkpoints(plan.run_dir):
    print(f'note: no checkpoint in {plan.run_dir}: starting a new run')
  hook = EpochHook(plan)
  t0 = time.time()
  state = tpu_utils.run_training(
      model_constructor=_model_constructor(plan), train_input_fn=plan.dataset.train_input_fn,
      strategy=plan.strategy, log_dir=plan.output_dir, date_str=flags['logging_dir'],
      exp_name=RUN_NAME,
      dump_kwargs=plan.recorded(), step_hook=hook, **_training_options(plan))
  step = int(state.global_step.numpy())
  if step == plan.max_steps and hook.saved_step != step:
    hook.epoch_end(plan.num_epochs - 1, last=True)
  pushed = ''
  if flags['push_to_hub'] and step == plan.max_steps:
    pushed = f'; pushed to {push_to_hub(plan, hook.grid, list(argv))}'
  written = os.path.exists(os.path.join(plan.output_dir, pipelines.MODEL_INDEX))
  folder = (f'pipeline folder {plan.output_dir}' if written else
            'no pipeline folder yet (written at epoch ends); --resume_from_checkpoint latest continues')
  print(f'Trained to step {step} ({step / plan.steps_per_epoch:.2f} epochs) in '
        f'{utils.format_duration(time.time() - t0)}; {folder}; checkpoints and TensorBoard events in '
        f'{plan.run_dir}{pushed}')
  return plan


def main(argv=None):
  """The script's entry point: one ``error:`` line for a user error (`cli.report_user_errors`)."""
  from . import cli
  argv = list(sys.argv[1:] if argv is None else argv)
  cli.report_user_errors(lambda args: run(parse(args), args), argv)
