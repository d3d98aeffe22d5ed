"""Conversion between our models and the diffusers (Hugging Face Hub) format.

To the diffusers layout (model_index.json, unet/, scheduler/; loads in diffusers and in
diffusion_tf.pipelines), from a run directory, a TF1 checkpoint prefix (the authors' release),
a diffusers folder or a Hub id:
  python3 scripts/convert_diffusers.py to_diffusers diffusion_cifar10_model/model.ckpt-790000 ddpm-cifar10-32
Back to a TF1 checkpoint (OUT_DIR/model.ckpt-0, EMA and raw names; `--ckpt` of the scripts
for the original configurations):
  python3 scripts/convert_diffusers.py to_tf1 google/ddpm-cifar10-32 cifar10_tf1
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_tf import cli, pipelines  # noqa: E402


def to_diffusers(source, out, pipeline='ddpm', ema=True, resolution=None, overwrite=False):
  """Writes SOURCE in the diffusers layout to OUT. --pipeline ddpm|ddim|pndm names the
  pipeline and scheduler class written; --ema False takes the raw weights of a checkpoint;
  --resolution is needed only for a checkpoint whose U-Net is not an original configuration."""
  pipe = pipelines.PIPELINES[pipeline].from_pretrained(source, ema=ema, resolution=resolution)
  pipe.save_pretrained(out, overwrite=overwrite)
  print(f'Wrote {out} ({pipe.pipeline_class}, {pipe.unet.resolution}x{pipe.unet.resolution})')


def to_tf1(source, out_dir, ema=True, resolution=None):
  """Writes SOURCE as a TF1-layout checkpoint OUT_DIR/model.ckpt-0 (never over existing
  checkpoints)."""
  unet, _ = pipelines.load_pretrained(source, ema=ema, resolution=resolution)
  prefix = pipelines.save_tf1_checkpoint(unet, out_dir)
  name = pipelines.model_config_name(vars(unet))
  print(f'Wrote {prefix}' + (f' (the {name} configuration)' if name else ''))


if __name__ == '__main__':
  cli.main({'to_diffusers': to_diffusers, 'to_tf1': to_tf1})
