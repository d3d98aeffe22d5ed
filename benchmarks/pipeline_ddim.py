"""DDIM-50, one 32x32x3 image (batch 1): our `DDIMPipeline` against diffusers' `DDIMPipeline`
on the same weights (the google/ddpm-cifar10-32 U-Net, `unet2d16b2`, random weights).

    python benchmarks/pipeline_ddim.py [--repeats 7] [--threads 2] [--torch-python PATH]
                                       [--isa avx2] [--out benchmarks/.pipeline_ddim]

Writes the model once with our `save_pretrained` (a diffusers folder), then runs two worker
processes, ours and diffusers' (under ``--torch-python``, default $DIFFUSION_TF_TORCH_PYTHON or
benchmarks/.venv-torch, see setup_torch_env.sh), each loading that folder, and times whole pipeline calls: the first
call on its own (ours traces and compiles its loop there), then ``--repeats`` later calls with
new seeds, alternating ours and diffusers' call by call. Prints medians and the CPU; not a
test. ``--isa avx2`` caps oneDNN in both (``ONEDNN_MAX_CPU_ISA=AVX2``).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STEPS = 50


def _cpu_name():
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
    return next(line.split(':', 1)[1].strip() for line in out.splitlines() if line.startswith('Model name'))
  except (OSError, StopIteration):
    return platform.processor() or 'unknown CPU'


def write_model(folder):
  """Our U-Net (unet2d16b2, 32x32, seed 0) + a DDIM scheduler config, in diffusers' layout."""
  sys.path.insert(0, ROOT)
  from diffusion_tf import diffusers_format as fmt, pipelines
  from diffusion_tf.diffusion_base import get_beta_schedule
  from diffusion_tf.diffusion_utils_2 import GaussianDiffusion2
  from diffusion_tf.models.unet import MODEL_CONFIGS, UNet
  import tensorflow as tf
  if os.path.exists(os.path.join(folder, 'model_index.json')):
    return folder
  tf.random.set_seed(0)
  net = UNet(**MODEL_CONFIGS['unet2d16b2'], out_ch=3, in_ch=3, resolution=32)
  net(tf.zeros([1, 32, 32, 3]), tf.zeros([1], tf.int32), training=False)
  for v in net.trainable_variables:  # zero-initialised output layers would make eps = 0
    v.assign(tf.random.normal(v.shape, stddev=0.02))
  betas = get_beta_schedule('linear', beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=1000)
  diffusion = GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedlarge',
                                 loss_type='mse')
  pipe = pipelines.DDIMPipeline(net, fmt.scheduler_config(diffusion, 'DDIMScheduler'))
  return pipe.save_pretrained(folder)


# ----------------------------------------------------------------------------- workers
# A worker reads seeds on stdin, one a line, and answers each with the call's seconds.

def ours_worker(folder, threads):
  sys.path.insert(0, ROOT)
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  from diffusion_tf import pipelines
  pipe = pipelines.DDIMPipeline.from_pretrained(folder)
  return lambda seed: pipe(num_inference_steps=STEPS, seed=seed, output_type='np', progress=False)


def diffusers_worker(folder, threads):
  import diffusers
  import torch
  torch.set_num_threads(threads)
  pipe = diffusers.DDIMPipeline.from_pretrained(folder)
  pipe.set_progress_bar_config(disable=True)
  return lambda seed: pipe(num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed),
                           output_type='np')


def serve(kind, folder, threads):
  call = (ours_worker if kind == 'ours' else diffusers_worker)(folder, threads)
  print('ready', flush=True)
  for line in sys.stdin:
    t0 = time.perf_counter()
    call(int(line))
    print(time.perf_counter() - t0, flush=True)


# ----------------------------------------------------------------------------- driver

def _start(python, kind, folder, threads, env):
  proc = subprocess.Popen([python, os.path.abspath(__file__), '--worker', kind, '--folder', folder,
                           '--threads', str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, env=env, cwd=ROOT)
  line = proc.stdout.readline()
  while line and line.strip() != 'ready':  # skip anything a library printed
    line = proc.stdout.readline()
  if not line:
    raise RuntimeError(f'the {kind} worker died while loading (see its stderr)')
  return proc


def _time(proc, seed):
  proc.stdin.write(f'{seed}\n')
  proc.stdin.flush()
  return float(proc.stdout.readline())


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=7)
  p.add_argument('--threads', type=int, default=2)
  # The same torch side as run.py: benchmarks/.venv-torch (setup_torch_env.sh) or the variable.
  p.add_argument('--torch-python', default=os.environ.get('DIFFUSION_TF_TORCH_PYTHON') or os.path.join(
      HERE, '.venv-torch', 'bin', 'python'))
  p.add_argument('--isa', choices=('native', 'avx2'), default='native')
  p.add_argument('--out', default=os.path.join(HERE, '.pipeline_ddim'))
  p.add_argument('--worker', choices=('ours', 'diffusers'))
  p.add_argument('--folder')
  a = p.parse_args()
  if a.worker:
    return serve(a.worker, a.folder, a.threads)
  if not os.path.exists(a.torch_python):
    raise SystemExit('no torch venv: bash benchmarks/setup_torch_env.sh or --torch-python PATH')
  folder = write_model(os.path.join(a.out, 'model'))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT, OMP_NUM_THREADS=str(a.threads))
  if a.isa == 'avx2':
    env['ONEDNN_MAX_CPU_ISA'] = 'AVX2'
  workers = {k: _start(py, k, folder, a.threads, env)
             for k, py in (('ours', sys.executable), ('diffusers', a.torch_python))}
  first = {k: _time(w, 0) for k, w in workers.items()}
  later = {k: [] for k in workers}
  for r in range(a.repeats):
    for k, w in (workers.items() if r % 2 == 0 else reversed(list(workers.items()))):
      later[k].append(_time(w, r + 1))
  for w in workers.values():
    w.stdin.close()
    w.wait()
  med = {k: statistics.median(v) for k, v in later.items()}
  result = dict(cpu=_cpu_name(), isa=a.isa, threads=a.threads, repeats=a.repeats, first=first,
                later=later, median=med, speedup=med['diffusers'] / med['ours'],
                load=os.getloadavg()[0], date=time.strftime('%Y-%m-%d %H:%M'))
  print(json.dumps(result, indent=1))
  return result


if __name__ == '__main__':
  main()
