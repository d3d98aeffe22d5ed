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

from diffusion_tf import cli  # noqa: E402
from diffusion_tf.recipes import LSUN  # noqa: E402  (the numbers: diffusion_tf/recipes/lsun.py)

(train, sample, evaluation, inspect, export,
 inpaint, img2img, interpolate) = cli.script_commands(
    LSUN, 'train', 'sample', 'evaluation', 'inspect', 'export', 'inpaint', 'img2img',
    'interpolate')

if __name__ == '__main__':
  cli.main({'train': train, 'sample': sample, 'evaluation': evaluation, 'inspect': inspect,
            'export': export, 'inpaint': inpaint, 'img2img': img2img, 'interpolate': interpolate})
