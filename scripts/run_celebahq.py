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

from diffusion_tf import cli  # noqa: E402
from diffusion_tf.recipes import CELEBAHQ  # noqa: E402  (the numbers: diffusion_tf/recipes/celebahq.py)

(train, sample, evaluation, inspect, export,
 inpaint, img2img, interpolate) = cli.script_commands(
    CELEBAHQ, 'train', 'sample', 'evaluation', 'inspect', 'export', 'inpaint', 'img2img',
    'interpolate')

if __name__ == '__main__':
  cli.main({'train': train, 'sample': sample, 'evaluation': evaluation, 'inspect': inspect,
            'export': export, 'inpaint': inpaint, 'img2img': img2img, 'interpolate': interpolate})
