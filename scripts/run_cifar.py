"""Unconditional CIFAR-10 (32x32), the paper's FID 3.17 model.

Train (TPU, with the original bucket layout gs://<prefix>-<region>/...):
  python3 scripts/run_cifar.py train --bucket_name_prefix $BUCKET_PREFIX --exp_name $EXPERIMENT_NAME --tpu_name $TPU_NAME
Evaluate (FID / Inception Score on the EMA model):
  python3 scripts/run_cifar.py evaluation --bucket_name_prefix $BUCKET_PREFIX --tpu_name $EVAL_TPU_NAME --model_dir $MODEL_DIR
Locally (GPU or CPU, data under ./tensorflow_datasets, runs under ./logs):
  python3 scripts/run_cifar.py train --exp_name my_run
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fire  # noqa: E402

from diffusion_tf import runners  # noqa: E402


def train(exp_name='EXP', tpu_name=None, bucket_name_prefix=None, model_name='unet2d16b2',
          dataset='cifar10', optimizer='adam', total_bs=128, grad_clip=1., lr=2e-4, warmup=5000,
          num_diffusion_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule='linear',
          model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse', dropout=0.1,
          randflip=1, tfds_data_dir='tensorflow_datasets', log_dir='logs', keep_checkpoint_max=2,
          *, region=None, max_steps=None, save_every_steps=None, save_checkpoints_secs=1600,
          clip_mode='global', allow_kwargs_mismatch=False, mixed_precision=None):
  """Trains the CIFAR-10 model; re-running the same command resumes the run."""
  return runners.train(dict(locals()), iterations_per_loop=2000)


if __name__ == '__main__':
  fire.Fire()
