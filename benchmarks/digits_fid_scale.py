"""The scale of the digits features' FID: real digits, noise, and samples of a run, measured
like `run_digits.py evaluation` measures its ``trainfid`` (against all 1,797 real digits).

  python benchmarks/digits_fid_scale.py [SAMPLES.npz ...] [--num 200] [--seeds 3]

Each SAMPLES.npz is a `sample` command output (uint8 ``samples``) or an ``arr_0`` dump; its
first --num images are scored. Rows with random draws are repeated over --seeds (mean and
spread). Prints a Markdown table.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from diffusion_tf.metrics import digits_features  # noqa: E402


def _row(name, values):
  values = np.atleast_1d(values)
  spread = f' ± {values.std(ddof=1):.1f}' if len(values) > 1 else ''
  return f'| {name} | {values.mean():.1f}{spread} |'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('samples', nargs='*')
  p.add_argument('--num', type=int, default=200)
  p.add_argument('--seeds', type=int, default=3)
  args = p.parse_args(argv)
  fd = digits_features.frechet_distance
  real = digits_features.real_digits('all')
  rows = []
  draws = [np.random.RandomState(s) for s in range(args.seeds)]
  rows.append(_row(f'{args.num} real digits (drawn from the 1,797)',
                   [fd(real[r.choice(len(real), args.num, replace=False)], 'all') for r in draws]))
  rows.append(_row(f'{digits_features.HELD_OUT} real digits the feature network never saw, '
                   f'against the {len(real) - digits_features.HELD_OUT} it was trained on',
                   fd(digits_features.real_digits('held_out'), 'train')))
  rows.append(_row(f'{args.num} images of uniform noise',
                   [fd(r.randint(0, 256, (args.num,) + real.shape[1:]).astype(np.uint8), 'all')
                    for r in draws]))
  rows.append(_row(f'{args.num} blank (black) images',
                   fd(np.zeros((args.num,) + real.shape[1:], np.uint8), 'all')))
  for path in args.samples:
    with np.load(path) as z:
      images = z['samples'] if 'samples' in z.files else z['arr_0']
    rows.append(_row(f'{min(args.num, len(images))} samples: {os.path.basename(path)}',
                     fd(images[:args.num], 'all')))
  print(f'Digits-features FID (features: {digits_features.load_extractor().name}), against '
        f'all 1,797 real digits unless said otherwise\n')
  print('| images | FID |\n|---|---|')
  print('\n'.join(rows))


if __name__ == '__main__':
  main()
