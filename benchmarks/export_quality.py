"""Do the exported samplers keep the model's quality? A trained digits run is sampled by the
``sample`` command in-process, and exported as a SavedModel and as LiteRT; each export is then
sampled by a fresh Python process that cannot import diffusion_tf (plain TensorFlow, plain
LiteRT), and the digit classifier reads all three sets (docs/deployment.md).

  python benchmarks/export_quality.py --model_dir logs/9999-99-99/<digits run> \
      [--samplers dpmsolver++ sde-dpmsolver++] [--steps 20] [--num 256] [--json out.json]

The three sets have different noise (the exports draw theirs from per-image seeds), so they are
compared as shares with their binomial standard errors, not image by image (tests/test_export.py
checks the images themselves).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# Runs in a process where diffusion_tf cannot be imported: argv = kind, folder, num, out.npz.
ELSEWHERE = r'''
import sys, time
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == 'diffusion_tf' or name.startswith('diffusion_tf.'):
            raise ImportError('diffusion_tf is not importable here')
sys.meta_path.insert(0, Blocker())
import numpy as np
kind, folder, num, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t0 = time.time()
if kind == 'saved_model':
    import tensorflow as tf
    serve = tf.saved_model.load(folder).signatures['serving_default']
    images = serve(seed=tf.range(num, dtype=tf.int64))['images'].numpy()
else:
    from ai_edge_litert.interpreter import Interpreter
    run = Interpreter(model_path=folder + '/sampler.tflite').get_signature_runner()
    spec = run.get_input_details()
    rng = np.random.RandomState(0)
    images = []
    for _ in range(num):
        inputs = {k: rng.standard_normal(v['shape']).astype(np.float32) for k, v in spec.items()}
        images.append(run(**inputs)['x_0'][0])
    images = np.clip((np.stack(images) + 1.) * 127.5, 0, 255).astype(np.uint8)  # as the sampler's
np.savez(out, images=images, seconds=time.time() - t0)
'''


def run(*argv):
  proc = subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f'{argv[:3]} failed:\n{proc.stderr[-3000:]}')
  return proc.stdout.strip().splitlines()[-1]


def elsewhere(kind, folder, num, out):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run([sys.executable, '-I', '-c', ELSEWHERE, kind, folder, str(num), out],
                        cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f'{kind} in a fresh process failed:\n{proc.stderr[-3000:]}')
  with np.load(out) as z:
    return z['images'], float(z['seconds'])


def share(images):
  from diffusion_tf.metrics import digits_classifier
  report = digits_classifier.recognisable_digits(images)
  p = report.fraction
  return dict(recognised=p, stderr=float(np.sqrt(p * (1 - p) / report.num_samples)),
              digits=len(report.digits_present))


def study(model_dir, sampler, steps, num, work):
  script = os.path.join(ROOT, 'scripts', 'run_digits.py')
  model = ['--model_dir', model_dir, '--sampler', sampler, '--steps', steps]
  prefix = os.path.join(work, f'in_process_{sampler}')
  t0 = time.time()
  run(script, 'sample', *model, '--num_samples', num, '--batch_size', num, '--seed', 0,
      '--out', prefix)
  with np.load(prefix + '.npz') as z:
    rows = {'in-process sample': (z['samples'], time.time() - t0)}
  for kind in ('saved_model', 'tflite'):
    folder = os.path.join(work, f'{kind}_{sampler}')
    run(script, 'export', *model, '--format', kind, '--out', folder)
    rows[kind] = elsewhere(kind, folder, num, os.path.join(work, f'{kind}_{sampler}.npz'))
  return {name: dict(share(images), seconds_per_image=seconds / num)
          for name, (images, seconds) in rows.items()}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--model_dir', required=True, help='a trained digits run')
  ap.add_argument('--samplers', nargs='+', default=['dpmsolver++', 'sde-dpmsolver++'])
  ap.add_argument('--steps', type=int, default=20)
  ap.add_argument('--num', type=int, default=256)
  ap.add_argument('--json', default=None)
  args = ap.parse_args()
  results = {}
  with tempfile.TemporaryDirectory() as work:
    for sampler in args.samplers:
      results[sampler] = study(args.model_dir, sampler, args.steps, args.num, work)
      for name, r in results[sampler].items():
        print(f'{sampler} {args.steps} steps, {name}: {100 * r["recognised"]:.1f} ± '
              f'{100 * r["stderr"]:.1f}% recognised, {r["digits"]} digits, '
              f'{r["seconds_per_image"] * 1e3:.0f} ms per image (wall, with loading)', flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(model=os.path.basename(os.path.normpath(args.model_dir)), steps=args.steps, num=args.num, results=results), f,
                indent=1)


if __name__ == '__main__':
  main()
