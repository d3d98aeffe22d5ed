"""Whole-pipeline latency, one image (batch 1): our pipelines against diffusers' on the same
weights (random weights of the google/ddpm-cifar10-32 U-Net, `unet2d16b2`, or with ``--model
big256`` of the 256x256 one, google/ddpm-ema-celebahq-256's `unet2d16b2c112244`).

    python benchmarks/pipeline_ddim.py [--repeats 7] [--threads 2] [--torch-python PATH]
                                       [--isa avx2] [--out benchmarks/.pipeline_ddim]
    python benchmarks/pipeline_ddim.py --sampler dpmsolver++ --steps 20 --dtype float32,bfloat16

Default: DDIM-50 (our `DDIMPipeline` against diffusers' `DDIMPipeline`). ``--sampler
dpmsolver++``: our `DDPMPipeline` with ``scheduler='dpmsolver++'`` against diffusers'
`DDPMPipeline` whose scheduler is `DPMSolverMultistepScheduler.from_config` of the same folder's
(diffusers' defaults: DPM-Solver++ order 2). ``--dtype bfloat16``: ours
``from_pretrained(..., dtype='bfloat16')``, diffusers' pipeline call under
``torch.autocast('cpu', torch.bfloat16)`` (both keep float32 weights and run the U-Net's
layers in bf16); several dtypes are timed side by side, one worker each.

Writes the model once with our `save_pretrained` (a diffusers folder), then runs one worker
process per framework and dtype, ours and diffusers' (under ``--torch-python``, default
$DIFFUSION_TF_TORCH_PYTHON or benchmarks/.venv-torch, see setup_torch_env.sh), each loading that
folder, and times whole pipeline calls: the first call on its own (ours traces and compiles its
loop there), then ``--repeats`` later calls with new seeds, rotating the workers call by call.
Prints medians and the CPU; not a test. ``--isa avx2`` caps oneDNN in both
(``ONEDNN_MAX_CPU_ISA=AVX2``).
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
MODELS = {'cifar32': ('unet2d16b2', 32, (16,)), 'big256': ('unet2d16b2c112244', 256, (16,))}
# sampler -> (our pipeline class, diffusers' pipeline class, scheduler the folder is saved with)
SAMPLERS = {'ddim': ('DDIMPipeline', 'DDIMPipeline', 'DDIMScheduler'),
            'dpmsolver++': ('DDPMPipeline', 'DDPMPipeline', 'DDPMScheduler')}


def _cpu_name():
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
    return next(line.split(':', 1)[1].strip() for line in out.splitlines() if line.startswith('Model name'))
  except (OSError, StopIteration):
    return platform.processor() or 'unknown CPU'


def write_model(folder, model='cifar32', sampler='ddim'):
  """Our U-Net (seed 0, random weights) + the sampler's pipeline and scheduler config, in
  diffusers' layout."""
  sys.path.insert(0, ROOT)
  from diffusion_tf import diffusers_format as fmt, pipelines
  from diffusion_tf.diffusion_base import get_beta_schedule
  from diffusion_tf.diffusion_utils_2 import GaussianDiffusion2
  from diffusion_tf.models.unet import MODEL_CONFIGS, UNet
  import tensorflow as tf
  if os.path.exists(os.path.join(folder, 'model_index.json')):
    return folder
  config, res, attn = MODELS[model]
  tf.random.set_seed(0)
  net = UNet(**dict(MODEL_CONFIGS[config], attn_resolutions=attn), out_ch=3, in_ch=3,
             resolution=res, dropout=0.)
  net(tf.zeros([1, res, res, 3]), tf.zeros([1], tf.int32), training=False)
  for v in net.trainable_variables:  # zero-initialised output layers would make eps = 0
    v.assign(tf.random.normal(v.shape, stddev=0.02))
  betas = get_beta_schedule('linear', beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=1000)
  diffusion = GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedlarge',
                                 loss_type='mse')
  pipe_cls, _, scheduler = SAMPLERS[sampler]
  pipe = getattr(pipelines, pipe_cls)(net, fmt.scheduler_config(diffusion, scheduler))
  return pipe.save_pretrained(folder)


# ----------------------------------------------------------------------------- workers
# A worker reads seeds on stdin, one a line, and answers each with the call's seconds.

def ours_worker(folder, threads, sampler, steps, dtype):
  sys.path.insert(0, ROOT)
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  from diffusion_tf import pipelines
  pipe_cls = getattr(pipelines, SAMPLERS[sampler][0])
  pipe = pipe_cls.from_pretrained(folder, scheduler=None if sampler == 'ddim' else sampler,
                                  dtype=dtype)
  return lambda seed: pipe(num_inference_steps=steps, seed=seed, output_type='np', progress=False)


def diffusers_worker(folder, threads, sampler, steps, dtype):
  import contextlib
  import diffusers
  import torch
  torch.set_num_threads(threads)
  pipe = getattr(diffusers, SAMPLERS[sampler][1]).from_pretrained(folder)
  if sampler == 'dpmsolver++':
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
  pipe.set_progress_bar_config(disable=True)
  precision = (torch.autocast('cpu', torch.bfloat16) if dtype == 'bfloat16'
               else contextlib.nullcontext())

  def call(seed):
    with precision:
      return pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                  output_type='np')
  return call


def serve(kind, folder, threads, sampler, steps, dtype):
  call = (ours_worker if kind == 'ours' else diffusers_worker)(folder, threads, sampler, steps, dtype)
  print('ready', flush=True)
  for line in sys.stdin:
    t0 = time.perf_counter()
    call(int(line))
    print(time.perf_counter() - t0, flush=True)


# ----------------------------------------------------------------------------- driver

def _start(python, kind, folder, a, dtype, env):
  proc = subprocess.Popen([python, os.path.abspath(__file__), '--worker', kind, '--folder', folder,
                           '--threads', str(a.threads), '--sampler', a.sampler,
                           '--steps', str(a.steps), '--dtype', dtype],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
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
  p.add_argument('--sampler', choices=sorted(SAMPLERS), default='ddim')
  p.add_argument('--steps', type=int, default=None, help='default: 50 for ddim, 20 for dpmsolver++')
  p.add_argument('--dtype', default='float32', help='comma-separated: float32, bfloat16')
  p.add_argument('--model', choices=sorted(MODELS), default='cifar32')
  p.add_argument('--worker', choices=('ours', 'diffusers'))
  p.add_argument('--folder')
  a = p.parse_args()
  if a.steps is None:
    a.steps = 50 if a.sampler == 'ddim' else 20
  if a.worker:
    return serve(a.worker, a.folder, a.threads, a.sampler, a.steps, a.dtype)
  if not os.path.exists(a.torch_python):
    raise SystemExit('no torch venv: bash benchmarks/setup_torch_env.sh or --torch-python PATH')
  folder = write_model(os.path.join(a.out, 'model' if (a.model, a.sampler) == ('cifar32', 'ddim')
                                    else f'model-{a.model}-{a.sampler}'), a.model, a.sampler)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT, OMP_NUM_THREADS=str(a.threads))
  if a.isa == 'avx2':
    env['ONEDNN_MAX_CPU_ISA'] = 'AVX2'
  workers = {f'{k} {dtype}': _start(py, k, folder, a, dtype, env)
             for dtype in a.dtype.split(',')
             for k, py in (('ours', sys.executable), ('diffusers', a.torch_python))}
  first = {k: _time(w, 0) for k, w in workers.items()}
  later = {k: [] for k in workers}
  names = list(workers)
  for r in range(a.repeats):
    for k in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
      later[k].append(_time(workers[k], r + 1))
  for w in workers.values():
    w.stdin.close()
    w.wait()
  med = {k: statistics.median(v) for k, v in later.items()}
  speedup = {dtype: med[f'diffusers {dtype}'] / med[f'ours {dtype}'] for dtype in a.dtype.split(',')}
  result = dict(cpu=_cpu_name(), isa=a.isa, threads=a.threads, repeats=a.repeats,
                sampler=a.sampler, steps=a.steps, model=a.model, first=first, later=later,
                median=med, speedup=speedup, load=os.getloadavg()[0],
                date=time.strftime('%Y-%m-%d %H:%M'))
  print(json.dumps(result, indent=1))
  return result


if __name__ == '__main__':
  main()
