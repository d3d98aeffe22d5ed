"""The built-in data set: scikit-learn's 8x8 handwritten digits (1,797 images, shipped with
scikit-learn, no download), upsampled to 16x16, grey. A small U-Net trains to recognisable digits
on a laptop CPU in minutes with the paper's CIFAR-10 diffusion (T=1000, linear betas,
eps prediction, fixedlarge sampling).

  python scripts/run_digits.py train            # trains, then writes an EMA sample grid
  python scripts/run_digits.py sample --model_dir logs/9999-99-99/<run>
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_tf import cli  # noqa: E402
from diffusion_tf.recipes import DIGITS  # noqa: E402  (the numbers: diffusion_tf/recipes/digits.py)

(train, sample, evaluation, inspect, export,
 inpaint, img2img, interpolate) = cli.script_commands(
    DIGITS, 'train', 'sample', 'evaluation', 'inspect', 'export', 'inpaint', 'img2img',
    'interpolate')

if __name__ == '__main__':
  cli.main({'train': train, 'sample': sample, 'evaluation': evaluation, 'inspect': inspect,
            'export': export, 'inpaint': inpaint, 'img2img': img2img, 'interpolate': interpolate})
