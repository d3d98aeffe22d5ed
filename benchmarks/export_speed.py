"""Sizes and speeds of the exported formats (docs/deployment.md): the digits and CIFAR-10 U-Nets
(initial weights: size and speed do not depend on the values) exported with DPM-Solver++ 20
steps as a SavedModel, LiteRT (fp32, fp16, dynamic-range int8 weights) and ONNX; then, at batch
1 and in interleaved rounds, the time per denoiser call and per 20-step sample of TF in-process
(our CPU kernels), the SavedModel, LiteRT (XNNPACK) and onnxruntime.

  python benchmarks/export_speed.py [--models digits cifar10] [--rounds 5] [--json out.json]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from diffusion_tf import export, loading, recipes, sampling, script_models  # noqa: E402

STEPS = 20


def build(name):
  recipe = recipes.RECIPES[name]
  return script_models.build(recipe, loading.image_shape(recipe))


def export_all(model, settings, where):
  """{label: (folder, seconds to export)}."""
  jobs = [('saved_model', 'saved_model', 'none'), ('tflite', 'tflite', 'none'),
          ('tflite_fp16', 'tflite', 'fp16'), ('tflite_dynamic', 'tflite', 'dynamic'),
          ('onnx', 'onnx', 'none')]
  out = {}
  for label, fmt, quantize in jobs:
    t0 = time.time()
    folder = os.path.join(where, label)
    export.export(model, settings, folder, format=fmt, quantize=quantize)
    out[label] = (folder, time.time() - t0)
    print(f'  exported {label} in {out[label][1]:.0f} s', flush=True)
  return out


def runners(model, settings, folders):
  """{runtime: (denoiser call, 20-step sample call)}, each a no-argument function, batch 1."""
  from ai_edge_litert.interpreter import Interpreter
  import onnxruntime as ort
  H, W, C = model.image_shape
  x = np.random.RandomState(0).randn(1, H, W, C).astype(np.float32)
  t = np.array([500.], np.float32)
  noise = np.zeros([settings.num_evaluations, 1, H, W, C], np.float32)
  draw = sampling.Sampler(model, sampler=settings.name, steps=settings.steps, constant_weights=True)
  den_tf = tf.function(lambda x: model.denoise(x, tf.constant([500])))
  out = {'tf_in_process': (lambda: den_tf(x).numpy(), lambda: draw(1, 0))}
  sm = tf.saved_model.load(folders['saved_model'][0]).signatures
  out['saved_model'] = (lambda: sm['denoise'](x=tf.constant(x), t=tf.constant(t)),
                        lambda: sm['serving_default'](seed=tf.constant([0], tf.int64)))
  for label in ('tflite', 'tflite_fp16', 'tflite_dynamic'):
    d = folders[label][0]
    den = Interpreter(model_path=os.path.join(d, 'denoiser.tflite')).get_signature_runner()
    samp = Interpreter(model_path=os.path.join(d, 'sampler.tflite')).get_signature_runner()
    feeds = dict(x_T=x, noise=noise) if settings_draw_noise(folders[label][0]) else dict(x_T=x)
    out[label] = (lambda den=den: den(x=x, t=t), lambda samp=samp, feeds=feeds: samp(**feeds))
  d = folders['onnx'][0]
  den = ort.InferenceSession(os.path.join(d, 'denoiser.onnx'))
  samp = ort.InferenceSession(os.path.join(d, 'sampler.onnx'))
  feeds = {i.name: (x if i.name == 'x_T' else noise) for i in samp.get_inputs()}
  out['onnxruntime'] = (lambda: den.run(None, {'x': x, 't': t}), lambda: samp.run(None, feeds))
  return out


def settings_draw_noise(folder):
  with open(os.path.join(folder, export.CONFIG_ASSET)) as f:
    return 'noise' in json.load(f)['sampler_inputs']


def time_rounds(fns, rounds, reps):
  """Median seconds per call of each function, the runtimes interleaved round by round."""
  for f in fns.values():
    f()  # first call: tracing, allocation
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k, f in fns.items():
      t0 = time.perf_counter()
      for _ in range(reps):
        f()
      times[k].append((time.perf_counter() - t0) / reps)
  return {k: statistics.median(v) for k, v in times.items()}


def sizes(folders):
  return {label: {os.path.relpath(os.path.join(d, f), folder): os.path.getsize(os.path.join(d, f))
                  for d, _, fs in os.walk(folder) for f in fs}
          for label, (folder, _) in folders.items()}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--models', nargs='+', default=['digits', 'cifar10'])
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--json', default=None)
  args = ap.parse_args()
  results = {}
  for name in args.models:
    model = build(name)
    settings = sampling.SamplerSettings.resolve('dpmsolver++', model.diffusion.num_timesteps, steps=STEPS)
    print(f'{name}: {model.image_shape}, {settings.describe()}', flush=True)
    with tempfile.TemporaryDirectory() as where:
      folders = export_all(model, settings, where)
      fns = runners(model, settings, folders)
      den = time_rounds({k: v[0] for k, v in fns.items()}, args.rounds, 10)
      smp = time_rounds({k: v[1] for k, v in fns.items()}, args.rounds, 1)
      results[name] = dict(sizes=sizes(folders), export_s={k: v[1] for k, v in folders.items()},
                           denoiser_s=den, sample_s=smp)
    for k in den:
      print(f'  {k:15s} denoiser {den[k] * 1e3:8.2f} ms   20-step sample {smp[k] * 1e3:9.1f} ms')
    for label, files in results[name]['sizes'].items():
      print(f'  {label:15s} ' + ', '.join(f'{f} {n / 1e6:.2f} MB' for f, n in sorted(files.items())
                                         if n > 10000))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
