"""How much arithmetic the U-Nets are, and how much this CPU can do: benchmarks/flops.json.

    python benchmarks/flops.py [--torch-python PATH] [--out benchmarks/flops.json]

1. FLOPs of the networks, counted once on diffusers' `UNet2DModel` built from the same configs
   as run.py's (torch_side.CONFIGS; the same networks as ours, parameter for parameter) with
   `torch.utils.flop_counter.FlopCounterMode`: convolutions, matmuls and attention as
   2 x multiply-adds; normalisation, activations and element-wise ops are not counted (they are
   a few percent of the arithmetic and bound by memory, not by the FMA units). Forward at batch 1
   and the training step's forward + backward at batch 1 (both scale linearly with the batch).
   Runs under the torch venv (``--torch-python``, as run.py).
2. The CPU's arithmetic peak per core, measured: peak_flops.c (compiled here with the system C
   compiler) runs 12 independent chains of 512-bit FMAs (`vfmadd..ps`, 32 FLOP each) and of
   `vdpbf16ps` (AVX512_BF16: 32 bf16 pairs into 16 fp32 sums, 64 FLOP each) on one core; the
   per-core peak x cores is the machine's peak. The nominal peak (cores x clock x FLOP/cycle,
   the clock from /proc/cpuinfo) is recorded beside it.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def count(models=('cifar32', 'big256')):
  """{model: {'forward': FLOPs per image, 'train': forward + backward FLOPs per image}}."""
  import torch
  from torch.utils.flop_counter import FlopCounterMode
  sys.path.insert(0, HERE)
  import torch_side
  out = {}
  for model in models:
    net = torch_side.make_net(model)
    x, t = torch_side._inputs(model, 1)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
      net.eval()(x, t)
    fwd = fc.get_total_flops()
    net.train()
    with FlopCounterMode(display=False) as fc:
      net(x, t).sample.square().mean().backward()
    out[model] = {'forward': int(fwd), 'train': int(fc.get_total_flops())}
  return out


def measured_peak():
  """GFLOP/s of one core: {'fp32_fma': 512-bit, 'fp32_fma256': 256-bit (AVX2 code),
  'bf16_dot': vdpbf16ps} (best of 3 runs), or {} when the compiler or the instructions are
  missing."""
  src = os.path.join(HERE, 'peak_flops.c')
  exe = os.path.join(tempfile.mkdtemp(), 'peak_flops')
  try:
    subprocess.run(['cc', '-O2', '-mfma', '-mavx512f', '-mavx512bf16', src, '-o', exe], check=True)
    runs = [subprocess.run([exe], capture_output=True, text=True, check=True).stdout for _ in range(3)]
  except (OSError, subprocess.CalledProcessError) as e:
    print(f'peak_flops.c not run: {e}', file=sys.stderr)
    return {}
  best = {}
  for run in runs:
    for line in run.splitlines():  # "fp32 fma512 123.4 GFLOP/s (...)"
      key = {'fma512': 'fp32_fma', 'fma256': 'fp32_fma256', 'dp512': 'bf16_dot'}[line.split()[1]]
      best[key] = max(best.get(key, 0.), float(line.split()[2]))
  return best


def nominal_clock_ghz():
  with open('/proc/cpuinfo') as f:
    for line in f:
      if line.startswith('cpu MHz'):
        return float(line.split(':')[1]) / 1e3
  return None


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--torch-python', default=os.environ.get('DIFFUSION_TF_TORCH_PYTHON') or os.path.join(
      HERE, '.venv-torch', 'bin', 'python'))
  p.add_argument('--out', default=os.path.join(HERE, 'flops.json'))
  p.add_argument('--count-only', action='store_true', help=argparse.SUPPRESS)  # the torch side
  a = p.parse_args()
  if a.count_only:
    print(json.dumps(count()))
    return
  res = subprocess.run([a.torch_python, os.path.abspath(__file__), '--count-only'],
                       capture_output=True, text=True, check=True)
  data = {'flops_per_image': json.loads(res.stdout.strip().splitlines()[-1]),
          'counted_with': 'torch.utils.flop_counter.FlopCounterMode on diffusers UNet2DModel '
                          '(conv, matmul, attention; 2 FLOP per multiply-add)',
          'per_core_gflops': measured_peak(), 'cores': os.cpu_count(),
          'nominal_clock_ghz': nominal_clock_ghz(), 'load': os.getloadavg()}
  with open(a.out, 'w') as f:
    json.dump(data, f, indent=1)
  print(json.dumps(data, indent=1))


if __name__ == '__main__':
  main()
