"""A/B-time two checkouts of the library against each other (development tool).

    python benchmarks/ab.py --a /path/to/old/checkout --b /path/to/new/checkout \
        --cases forward:cifar32:16,train:cifar32:16 [--dtype float32] [--repeats 7]
    python benchmarks/ab.py --a . --b . --b_direct --cases train:digits16:64   # Winograd vs direct

Each side runs in its own worker process (benchmarks/worker.py with DIFFUSION_TF_ROOT set);
calls alternate A, B, A, B ... so background load hits both alike. Prints medians and B/A of
the wall time and of the worker's CPU time (user + system): on a shared machine the CPU time
is inflated far less by other load than the wall time.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


class Side:
  def __init__(self, root, threads, extra_env=()):
    env = dict(os.environ, DIFFUSION_TF_ROOT=os.path.abspath(root), TF_CPP_MIN_LOG_LEVEL='2')
    env.update(kv.split('=', 1) for kv in extra_env)
    self.p = subprocess.Popen([sys.executable, os.path.join(HERE, 'worker.py'), '--framework',
                               'ours', '--threads', str(threads)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    json.loads(self.p.stdout.readline())

  def call(self, **msg):
    self.p.stdin.write(json.dumps(msg) + '\n')
    self.p.stdin.flush()
    res = json.loads(self.p.stdout.readline())
    if not res.get('ok'):
      raise RuntimeError(res.get('traceback') or res.get('error'))
    return res


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--a', required=True)
  p.add_argument('--b', required=True)
  p.add_argument('--cases', default='forward:cifar32:16,train:cifar32:16')
  p.add_argument('--dtype', default='float32')
  p.add_argument('--repeats', type=int, default=7)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--b_direct', action='store_true',
                 help="B with TF's direct 3x3 convolutions (nn.winograd(False)): --b may be --a")
  p.add_argument('--const', action='store_true',
                 help="forward cases on the samplers' path (weights compiled in as constants)")
  p.add_argument('--b_env', action='append', default=[], metavar='KEY=VALUE',
                 help='environment of B only, e.g. --b_env ONEDNN_MAX_CPU_ISA=AVX2 '
                      '--b_env DIFFUSION_TF_KERNEL_ARCH=x86-64-v3 (B as on an AVX2 CPU)')
  a = p.parse_args()
  if any('=' not in kv for kv in a.b_env):
    p.error(f'--b_env expects KEY=VALUE, got {a.b_env}')
  sides = {'A': Side(a.a, a.threads), 'B': Side(a.b, a.threads, a.b_env)}
  try:
    for case in a.cases.split(','):
      kind, model, batch = case.split(':')[0], case.split(':')[1], int(case.split(':')[2])
      key = case
      for name, s in sides.items():
        s.call(cmd='setup', key=key, kind=kind, model=model, batch=batch, dtype=a.dtype,
               direct=name == 'B' and a.b_direct, const=a.const)
      ts, cs = {'A': [], 'B': []}, {'A': [], 'B': []}
      for r in range(a.repeats):
        for name in (('A', 'B') if r % 2 == 0 else ('B', 'A')):
          res = sides[name].call(cmd='time', key=key)
          ts[name].append(res['times'][0])
          cs[name].append(res['cpu_times'][0])
      ma, mb = np.median(ts['A']), np.median(ts['B'])
      ca, cb = np.median(cs['A']), np.median(cs['B'])
      print(f'{case} {a.dtype}: A {ma:.4f}s [{min(ts["A"]):.4f}]  B {mb:.4f}s [{min(ts["B"]):.4f}]  '
            f'B/A {mb / ma:.3f}; CPU time A {ca:.4f}s B {cb:.4f}s B/A {cb / ca:.3f}  '
            f'(load {os.getloadavg()[0]:.2f})', flush=True)
      for s in sides.values():
        s.call(cmd='drop', key=key)
  finally:
    for s in sides.values():
      s.call(cmd='quit')


if __name__ == '__main__':
  main()
