"""Side check (not a test): a folder written by scripts/train_unconditional.py loads in
diffusers' `DDPMPipeline.from_pretrained` and its U-Net gives our network's output.

    python benchmarks/train_unconditional_check.py OUTPUT_DIR [--torch-python PATH]
                                                   [--sample N --steps K]

Runs our U-Net (`DDPMPipeline.from_pretrained(OUTPUT_DIR)` of ours) on seeded inputs at a few
timesteps, then diffusers' (under ``--torch-python``, default $DIFFUSION_TF_TORCH_PYTHON or
benchmarks/.venv-torch, see setup_torch_env.sh) on the same inputs, and prints the largest
difference. ``--sample N`` also draws N images with diffusers' pipeline (K steps) and writes
them as ``OUTPUT_DIR/samples/diffusers.png``.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TORCH_SIDE = r'''
import sys, numpy as np, torch
from diffusers import DDPMPipeline
folder, io_path, n, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pipe = DDPMPipeline.from_pretrained(folder)
data = np.load(io_path)
x = torch.from_numpy(data['x']).permute(0, 3, 1, 2)
with torch.no_grad():
  out = pipe.unet(x, torch.from_numpy(data['t'])).sample.permute(0, 2, 3, 1).numpy()
images = None
if n:
  images = pipe(batch_size=n, num_inference_steps=steps, generator=torch.manual_seed(0),
                output_type='np').images
np.savez(io_path, out=out, images=images if images is not None else np.zeros(0))
print(f'diffusers {__import__("diffusers").__version__} loaded {folder}: {type(pipe.unet).__name__}, '
      f'{type(pipe.scheduler).__name__}')
'''


def _torch_python(arg):
  return arg or os.environ.get('DIFFUSION_TF_TORCH_PYTHON') or os.path.join(HERE, '.venv-torch', 'bin', 'python')


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('folder')
  p.add_argument('--torch-python')
  p.add_argument('--sample', type=int, default=0)
  p.add_argument('--steps', type=int, default=1000)
  args = p.parse_args()
  sys.path.insert(0, ROOT)
  from diffusion_tf import utils
  from diffusion_tf.pipelines import DDPMPipeline
  pipe = DDPMPipeline.from_pretrained(args.folder)
  H, W, C = pipe.image_shape
  rng = np.random.default_rng(0)
  T = pipe.scheduler_config['num_train_timesteps']
  t = np.array([0, T // 3, 2 * T // 3, T - 1], np.int64)
  x = rng.standard_normal((len(t), H, W, C)).astype(np.float32)
  ours = np.asarray(pipe.unet(x, t.astype(np.int32), training=False))
  with tempfile.TemporaryDirectory() as tmp:
    io_path = os.path.join(tmp, 'io.npz')
    np.savez(io_path, x=x, t=t)
    subprocess.run([_torch_python(args.torch_python), '-c', TORCH_SIDE, args.folder, io_path,
                    str(args.sample), str(args.steps)], check=True)
    theirs = np.load(io_path)
    diff = np.abs(theirs['out'] - ours)
    print(f'U-Net output at t={t.tolist()}: max |ours - diffusers| = {diff.max():.2e} '
          f'(outputs up to {np.abs(ours).max():.2f})')
    if args.sample:
      images = np.clip(np.round(theirs['images'] * 255), 0, 255).astype(np.uint8)
      path = os.path.join(args.folder, 'samples', 'diffusers.png')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      utils.save_tiled_imgs(path, images)
      print(f'wrote {len(images)} diffusers samples to {path}')


if __name__ == '__main__':
  main()
