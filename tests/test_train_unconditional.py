"""scripts/train_unconditional.py (`diffusion_tf.train_unconditional`): diffusers' flags, the
refusals before anything is written, the diffusers pipeline folder it writes, resume and the Hub
upload. Offline: the data sets are written by the tests with the `datasets` library."""

import json
import os

import numpy as np
import pytest

from diffusion_tf import cli, diffusers_format as fmt, train_unconditional as tu

pytest.importorskip('datasets')
from test_hub_datasets import write_form  # noqa: E402  (the data sets in each local form)

TINY_UNET = {'_class_name': 'UNet2DModel', 'sample_size': 8, 'block_out_channels': [16, 32],
             'layers_per_block': 1, 'down_block_types': ['DownBlock2D', 'AttnDownBlock2D'],
             'up_block_types': ['AttnUpBlock2D', 'UpBlock2D'], 'norm_num_groups': 8}


def _config(tmp_path, **changes):
  path = tmp_path / 'unet_config.json'
  path.write_text(json.dumps(dict(TINY_UNET, **changes)))
  return str(path)


def _argv(tmp_path, data, *extra):
  """A few updates of the tiny U-Net on 6 images of 8x8: 3 updates an epoch at batch 2."""
  return ['--dataset_name', data, '--cache_dir', str(tmp_path / 'cache'), '--resolution', '8',
          '--model_config_name_or_path', _config(tmp_path), '--output_dir', str(tmp_path / 'out'),
          '--train_batch_size', '2', '--ddpm_num_steps', '20', '--ddpm_num_inference_steps', '4',
          '--eval_batch_size', '4', '--lr_warmup_steps', '2', '--seed', '1', *map(str, extra)]


def _error(capsys, argv):
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    tu.main(argv)
  assert e.value.code == cli.USER_ERROR_STATUS
  err = capsys.readouterr().err.strip().splitlines()
  return err[-1]


# ----------------------------------------------------------------------------- flags

def test_the_flags_have_diffusers_defaults():
  flags = tu.parse(['--dataset_name', 'x'])
  assert flags['output_dir'] == 'ddpm-model-64' and flags['resolution'] == 64
  assert (flags['train_batch_size'], flags['eval_batch_size'], flags['num_epochs']) == (16, 16, 100)
  assert (flags['learning_rate'], flags['lr_scheduler'], flags['lr_warmup_steps']) == (1e-4, 'cosine', 500)
  assert (flags['adam_beta1'], flags['adam_beta2'], flags['adam_weight_decay'],
          flags['adam_epsilon']) == (0.95, 0.999, 1e-6, 1e-8)
  assert (flags['ema_inv_gamma'], flags['ema_power'], flags['ema_max_decay']) == (1.0, 0.75, 0.9999)
  assert (flags['ddpm_num_steps'], flags['ddpm_beta_schedule'], flags['prediction_type']) == (
      1000, 'linear', 'epsilon')
  assert (flags['save_images_epochs'], flags['save_model_epochs'], flags['checkpointing_steps']) == (
      10, 10, 500)
  assert flags['use_ema'] is False and tu.parse(['--use_ema'])['use_ema'] is True
  assert flags['mixed_precision'] == 'no' and flags['logging_dir'] == 'logs'


def test_flags_without_meaning_here_are_noted():
  flags = tu.parse(['--dataset_name', 'x', '--local_rank', '0', '--dataloader_num_workers', '4',
                    '--enable_xformers_memory_efficient_attention'])
  lines = tu.notes(flags)
  assert len(lines) == 3 and all(line.startswith('note: --') for line in lines)
  assert not tu.notes(tu.parse(['--dataset_name', 'x']))


def test_the_default_unet_is_train_unconditionals(tmp_path):
  kwargs = fmt.unet_kwargs_from_config(tu.unet_config(tu.parse(['--dataset_name', 'x'])))
  assert kwargs['block_out_channels'] == (128, 128, 256, 256, 512, 512)
  assert kwargs['resolution'] == 64 and kwargs['num_res_blocks'] == 2
  assert kwargs['attn_levels'][0] == (False,) * 4 + (True, False)


def test_sample_prediction_weights_the_loss_by_snr():
  import tensorflow as tf
  flags = tu.parse(['--dataset_name', 'x', '--prediction_type', 'sample', '--ddpm_num_steps', '50'])
  diffusion, _ = fmt.diffusion_from_scheduler_config(tu.scheduler_config(flags))
  assert diffusion.model_mean_type == 'xstart'
  model = tu.UnconditionalModel(fmt.unet_kwargs_from_config(TINY_UNET), diffusion, random_flip=False)
  seen = {}

  def unit_losses(denoise_fn, x, t):
    seen['t'] = t.numpy()
    return tf.ones_like(t, tf.float32)

  model.diffusion.training_losses = unit_losses
  loss = float(model.train_fn(tf.zeros([64, 8, 8, 3]), None)['loss'])
  betas = np.linspace(1e-4, 0.02, 50, dtype=np.float64)  # DDPMScheduler's linear betas
  ac = np.cumprod(1 - betas)
  np.testing.assert_allclose(loss, np.mean((ac / (1 - ac))[seen['t']]), rtol=1e-5)


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize('extra, message', [
    (['--dataset_name', None], 'give one of --dataset_name'),
    (['--train_data_dir', 'x'], 'give one of --dataset_name'),
    (['--logger', 'wandb'], 'only tensorboard'),
    (['--lr_scheduler', 'exponential'], "invalid choice: 'exponential'"),
    (['--resolution', '16'], 'sample_size=8 but --resolution=16'),
    (['--train_batch_size', '0'], '--train_batch_size must be >= 1'),
    (['--ddpm_num_inference_steps', '50'], 'exceeds --ddpm_num_steps=20'),
    (['--image_column', 'picture'], "has no column 'picture'"),
    (['--dataset_name', 'MISSING'], 'no such directory'),
])
def test_refusals_before_anything_is_written(extra, message, tmp_path, capsys):
  argv = _argv(tmp_path, write_form('save_to_disk', tmp_path))
  if extra[:2] == ['--dataset_name', None]:
    argv = argv[2:]
    extra = []
  elif extra[:2] == ['--dataset_name', 'MISSING']:
    extra = ['--dataset_name', str(tmp_path / 'nowhere' / 'x')]
  line = _error(capsys, argv + extra)
  assert line.startswith('error: ') and message in line
  assert not (tmp_path / 'out').exists()


def test_a_unet_config_we_cannot_compute_is_refused(tmp_path, capsys):
  argv = _argv(tmp_path, write_form('save_to_disk', tmp_path))
  argv[argv.index('--model_config_name_or_path') + 1] = str(tmp_path / 'bad.json')
  (tmp_path / 'bad.json').write_text(json.dumps(dict(TINY_UNET, act_fn='gelu')))
  line = _error(capsys, argv)
  assert 'act_fn' in line and not (tmp_path / 'out').exists()


def test_mixed_sizes_need_a_resolution(tmp_path, capsys):
  # --resolution has a default (64) here, as in diffusers: mixed sizes are resized, not refused.
  data = write_form('imagefolder', tmp_path, sizes=[8, 16] * 3)
  plan = tu.make_plan(tu.parse(_argv(tmp_path, data)))
  assert plan.dataset.image_shape == (8, 8, 3) and plan.steps_per_epoch == 3
  assert not (tmp_path / 'out').exists()


def test_an_output_dir_holding_a_model_is_not_overwritten(tmp_path, capsys):
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'model_index.json').write_text('{}')
  line = _error(capsys, _argv(tmp_path, write_form('save_to_disk', tmp_path)))
  assert '--overwrite_output_dir' in line and '--resume_from_checkpoint latest' in line
  assert os.listdir(tmp_path / 'out') == ['model_index.json']


# ----------------------------------------------------------------------------- training

def _weights(run_dir, ema=True):
  import tensorflow as tf
  from diffusion_tf import checkpoints
  from diffusion_tf.models.unet import UNet
  net = UNet(**fmt.unet_kwargs_from_config(TINY_UNET))
  checkpoints.restore_tf1_checkpoint(net, tf.train.latest_checkpoint(run_dir), ema=ema)
  return fmt.state_dict(net)


@pytest.mark.slow
def test_the_output_folder_is_a_pipeline_holding_the_ema_weights(tmp_path, capsys):
  from diffusion_tf.pipelines import DDPMPipeline
  data = write_form('save_to_disk', tmp_path)
  tu.main(_argv(tmp_path, data, '--num_epochs', 2, '--use_ema', '--save_model_epochs', 1,
                '--save_images_epochs', 1, '--random_flip', '--lr_scheduler', 'linear'))
  out = capsys.readouterr().out
  assert 'Estimated time:' in out and 'Epoch 1: wrote the pipeline folder' in out
  assert out.strip().splitlines()[-1].startswith('Trained to step 6 (2.00 epochs)')
  folder = tmp_path / 'out'
  assert (folder / 'samples' / 'epoch_0000.png').exists() and (folder / 'samples' / 'epoch_0001.png').exists()
  pipe = DDPMPipeline.from_pretrained(str(folder))
  run_dir = str(folder / 'logs' / 'train_unconditional')
  ours, ema, raw = fmt.state_dict(pipe.unet), _weights(run_dir), _weights(run_dir, ema=False)
  assert sorted(ours) == sorted(ema)
  for name in ours:
    np.testing.assert_array_equal(ours[name], ema[name], err_msg=name)
  assert any(not np.array_equal(ours[name], raw[name]) for name in ours)  # EMA, not the raw weights
  assert pipe.scheduler_config['num_train_timesteps'] == 20
  images = pipe(batch_size=2, num_inference_steps=4, seed=0, output_type='np').images
  assert np.asarray(images).shape == (2, 8, 8, 3)


@pytest.mark.slow
def test_resume_continues_at_the_same_step_and_epoch(tmp_path, capsys):
  data = write_form('parquet', tmp_path)
  tu.main(_argv(tmp_path, data, '--num_epochs', 2, '--max_train_steps', 4, '--checkpointing_steps', 2))
  assert 'Trained to step 4 (1.33 epochs)' in capsys.readouterr().out
  line = _error(capsys, _argv(tmp_path, data, '--num_epochs', 2))  # neither resume nor overwrite
  assert '--resume_from_checkpoint latest' in line
  tu.main(_argv(tmp_path, data, '--num_epochs', 2, '--resume_from_checkpoint', 'latest'))
  out = capsys.readouterr().out
  assert 'Resuming at step 4 (epoch 1) of 6' in out
  assert out.strip().splitlines()[-1].startswith('Trained to step 6 (2.00 epochs)')


@pytest.mark.slow
def test_push_to_hub_uploads_the_folder_with_a_model_card(tmp_path, capsys, monkeypatch):
  import huggingface_hub
  calls = []

  class FakeApi:  # the only network call of the script, replaced
    def __init__(self, token=None):
      calls.append(('token', token))

    def create_repo(self, repo_id, private=False, exist_ok=False):
      calls.append(('create_repo', repo_id, private))
      return huggingface_hub.RepoUrl(f'https://huggingface.co/{repo_id}')

    def upload_folder(self, repo_id, folder_path, **kw):
      calls.append(('upload_folder', repo_id, folder_path, os.path.exists(
          os.path.join(folder_path, 'unet', fmt.WEIGHTS_SAFETENSORS))))

  monkeypatch.setattr(huggingface_hub, 'HfApi', FakeApi)
  data = write_form('imagefolder', tmp_path)
  tu.main(_argv(tmp_path, data, '--num_epochs', 1, '--push_to_hub', '--hub_model_id', 'me/tiny-ddpm',
                '--hub_private_repo', '--hub_token', 'secret'))
  folder = str(tmp_path / 'out')
  assert calls == [('token', 'secret'), ('create_repo', 'me/tiny-ddpm', True),
                   ('upload_folder', 'me/tiny-ddpm', folder, True)]
  card = (tmp_path / 'out' / 'README.md').read_text()
  assert data in card and '--push_to_hub' in card and 'samples/epoch_0000.png' in card
  assert 'secret' not in card and '--hub_token' in card  # the token itself is not published
  assert 'pushed to me/tiny-ddpm' in capsys.readouterr().out
