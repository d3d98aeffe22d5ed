"""diffusers' examples/unconditional_image_generation/train_unconditional.py, on diffusion_tf:
its flags by their names, defaults and meanings (the table: docs/training.md, "Training your
own"); the output directory is a diffusers pipeline folder that DDPMPipeline.from_pretrained
loads, in diffusers and here.

  python scripts/train_unconditional.py --dataset_name=huggan/flowers-102-categories \\
    --resolution=64 --output_dir=ddpm-ema-flowers-64 --train_batch_size=16 --num_epochs=100 \\
    --learning_rate=1e-4 --lr_warmup_steps=500 --use_ema --mixed_precision=no --push_to_hub
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_tf import train_unconditional  # noqa: E402

parse = train_unconditional.parse  # the flags as a dict (the docs' commands are checked with it)

if __name__ == '__main__':
  train_unconditional.main()
