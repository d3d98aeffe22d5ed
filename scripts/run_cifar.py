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

from diffusion_tf import cli  # noqa: E402
from diffusion_tf.recipes import CIFAR10  # noqa: E402  (the numbers: diffusion_tf/recipes/cifar10.py)

(train, sample, evaluation, simple_eval, inspect,
 export, inpaint, img2img, interpolate) = cli.script_commands(
    CIFAR10, 'train', 'sample', 'evaluation', 'simple_eval', 'inspect', 'export', 'inpaint',
    'img2img', 'interpolate')

if __name__ == '__main__':
  cli.main({'train': train, 'sample': sample, 'evaluation': evaluation,
            'simple_eval': simple_eval, 'inspect': inspect, 'export': export, 'inpaint': inpaint,
            'img2img': img2img, 'interpolate': interpolate})
