"""CelebA-HQ 256x256.

Train (TPU, with the original bucket layout gs://<prefix>-<region>/...):
  python3 scripts/run_celebahq.py train --bucket_name_prefix $BUCKET_PREFIX --exp_name $EXPERIMENT_NAME --tpu_name $TPU_NAME
Evaluate:
  python3 scripts/run_celebahq.py evaluation --bucket_name_prefix $BUCKET_PREFIX --tpu_name $EVAL_TPU_NAME --model_dir $MODEL_DIR
CelebA-HQ needs a manual TFDS download; see README.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fire  # noqa: E402

from diffusion_tf import runners  # noqa: E402


def train(exp_name='EXP', tpu_name=None, bucket_name_prefix=None, model_name='unet2d16b2c112244',
          dataset='celebahq256', optimizer='adam', total_bs=64, grad_clip=1., lr=0.00002,
          warmup=5000, num_diffusion_timesteps=1000, beta_start=0.0001, beta_end=0.02,
          beta_schedule='linear', loss_type='noisepred', dropout=0.0, randflip=1, block_size=1,
          tfds_data_dir='tensorflow_datasets', log_dir='logs',
          *, region=None, max_steps=None, save_every_steps=None, save_checkpoints_secs=1600,
          keep_checkpoint_max=2, clip_mode='global', allow_kwargs_mismatch=False,
          mixed_precision=None):
  """Trains the CelebA-HQ model; re-running the same command resumes the run."""
  return runners.train(dict(locals()), iterations_per_loop=1000)


if __name__ == '__main__':
  fire.Fire()
