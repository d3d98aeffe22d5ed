"""LSUN church, bedroom and cat, 256x256, from StyleGAN2 dataset_tool TFRecords.

Church:
  python3 scripts/run_lsun.py train --bucket_name_prefix $BUCKET_PREFIX --exp_name $EXPERIMENT_NAME --tpu_name $TPU_NAME --tfr_file 'tensorflow_datasets/lsun/church/church-r08.tfrecords'
  python3 scripts/run_lsun.py evaluation --bucket_name_prefix $BUCKET_PREFIX --tpu_name $EVAL_TPU_NAME --model_dir $MODEL_DIR --tfr_file 'tensorflow_datasets/lsun/church/church-r08.tfrecords'
Bedroom:
  python3 scripts/run_lsun.py train --bucket_name_prefix $BUCKET_PREFIX --exp_name $EXPERIMENT_NAME --tpu_name $TPU_NAME --tfr_file 'tensorflow_datasets/lsun/bedroom-full/bedroom-full-r08.tfrecords'
  python3 scripts/run_lsun.py evaluation --bucket_name_prefix $BUCKET_PREFIX --tpu_name $EVAL_TPU_NAME --model_dir $MODEL_DIR --tfr_file 'tensorflow_datasets/lsun/bedroom-full/bedroom-full-r08.tfrecords'
Cat (no random flips):
  python3 scripts/run_lsun.py train --bucket_name_prefix $BUCKET_PREFIX --exp_name $EXPERIMENT_NAME --tpu_name $TPU_NAME --tfr_file 'tensorflow_datasets/lsun/cat/cat-r08.tfrecords' --randflip 0
  python3 scripts/run_lsun.py evaluation --bucket_name_prefix $BUCKET_PREFIX --tpu_name $EVAL_TPU_NAME --model_dir $MODEL_DIR --tfr_file 'tensorflow_datasets/lsun/cat/cat-r08.tfrecords'
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fire  # noqa: E402

from diffusion_tf import runners  # noqa: E402


def train(exp_name='EXP', tpu_name=None, bucket_name_prefix=None, model_name='unet2d16b2c112244',
          dataset='lsun', optimizer='adam', total_bs=64, grad_clip=1., lr=2e-5, warmup=5000,
          num_diffusion_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule='linear',
          loss_type='noisepred', dropout=0.0, randflip=1, block_size=1,
          tfr_file='tensorflow_datasets/lsun/church/church-r08.tfrecords', log_dir='logs',
          warm_start_model_dir=None,
          *, region=None, max_steps=None, save_every_steps=None, save_checkpoints_secs=1600,
          keep_checkpoint_max=2, clip_mode='global', allow_kwargs_mismatch=False,
          mixed_precision=None, shuffle_buffer=None):
  """Trains an LSUN model; re-running the same command resumes the run."""
  return runners.train(dict(locals()), iterations_per_loop=1000,
                       warm_start_model_dir=warm_start_model_dir)


if __name__ == '__main__':
  fire.Fire()
