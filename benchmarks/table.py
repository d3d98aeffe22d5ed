"""The speed table (`run.py --table`): every cell against diffusers at its fastest, with FLOP/s.

    python benchmarks/table.py RUN.json [RUN2.json ...] [--flops benchmarks/flops.json] [--out T.md]
    python benchmarks/table.py --merge EAGER.json CHANNELS_LAST.json COMPILE.json   # one cell, 3 runs

Reads the results.json of one or more `run.py --table` runs (e.g. one per `--only` subset, or
native and `--isa avx2`) and benchmarks/flops.json (`flops.py`: FLOPs per image and the
measured per-core peak), and writes a Markdown section: per cell our time on the user's path
(`unet(x, t)`, weights read from variables) and on the samplers' path (weights compiled in as
constants), the fastest diffusers configuration, the ratio (target >= 1.3x, and by how much a
missed cell falls short) and the FLOP/s as a share of the peak of the cores the run used.
With --merge, the runs of one cell (`run.py --variants`, one diffusers configuration per run
where two do not fit in memory) become one row: each variant's calls pooled over the runs.
"""

import argparse
import json
import os

from run import stats  # median, quartiles, ... of a variant's calls (the same as in the runs)

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = 1.3
TORCH_NAMES = {'': 'eager', 'channels_last': 'channels_last', 'compile': 'torch.compile'}
MODELS = {'cifar32': 'CIFAR-10 32²', 'big256': '256² (CelebA-HQ)', 'cifar64': 'CIFAR topology 64²'}


def fastest_torch(results, dtype):
  """(label, stats, key) of the fastest diffusers configuration a `dtype` cell is compared with:
  fp32 cells against eager / channels_last / torch.compile in fp32; bf16 cells against all six
  (those three, in fp32 and under bf16 autocast)."""
  runs = [(k, s) for k, s in results.items() if k.startswith('diffusers/') and
          (dtype == 'bfloat16' or k.split('/')[1] == 'float32')]
  if not runs:
    return None, None, None
  k, s = min(runs, key=lambda ks: ks[1]['median'])
  parts = k.split('/')
  mode = TORCH_NAMES[parts[2] if len(parts) > 2 else '']
  return (mode if parts[1] == 'float32' else f'{mode}, bf16 autocast'), s, k


def ratio_cell(best, ours):
  if not best or not ours:
    return '–'
  r = best['median'] / ours['median']
  return f'**{r:.2f}×**' if r >= TARGET else f'{r:.2f}× ({TARGET / r:.2f}× short)'


def ms(s):
  if not s:
    return '–'
  v = s['median']
  return f'{v * 1e3:.1f} ms' if v < 1 else f'{v:.2f} s'


def peak_gflops(flops, dtype, isa, threads):
  """Peak GFLOP/s of the cores the run used: measured per-core peak x threads. fp32: 512-bit
  FMAs natively, 256-bit under the AVX2 cap; bf16: vdpbf16ps (AVX512_BF16)."""
  per_core = flops.get('per_core_gflops', {})
  key = {'bfloat16': 'bf16_dot'}.get(dtype, 'fp32_fma256' if isa == 'avx2' else 'fp32_fma')
  return per_core[key] * threads if key in per_core else None


def share(flops, c, key, dtype, isa, threads):
  """'GFLOP/s (share of peak)' of variant ``key``'s calls, or '–'. Per CPU-second when the run
  recorded the workers' CPU time (a machine shared with other jobs gives a process only part
  of a core: wall time would understate what the code does with the core it gets), else per
  wall-clock second of `threads` cores, and not at all when other work loaded the machine
  (load average above the run's threads x 2 after the case)."""
  loaded = c['load'][0] > 2 * threads
  s = (c.get('cpu') or c['results']).get(key)
  if not s or not flops or c['model'] not in flops['flops_per_image'] or (not c.get('cpu') and loaded):
    return '–'
  per_image = flops['flops_per_image'][c['model']]['train' if c['name'] == 'train' else 'forward']
  g = per_image * c['batch'] / s['median'] / 1e9
  threads = 1 if c.get('cpu') else threads  # per CPU-second: one core's peak
  peak = peak_gflops(flops, dtype, isa, threads)
  return f'{g:.0f} ({100 * g / peak:.0f}%)' if peak else f'{g:.0f}'


def cells(run, flops):
  """One row per (case, precision) of a run."""
  isa, threads = run.get('isa', 'native'), run['threads']
  for c in run['cases']:
    r = c['results']
    for dtype in ('float32', 'bfloat16'):
      plain, const = r.get(f'ours/{dtype}'), r.get(f'ours/{dtype}/const')
      if not plain and not const:
        continue
      label, best, best_key = fastest_torch(r, dtype)
      ours_best = min((k for k in (f'ours/{dtype}', f'ours/{dtype}/const') if r.get(k)),
                      key=lambda k: r[k]['median'])
      yield {'model': MODELS.get(c['model'], c['model']), 'case': c['name'], 'batch': str(c['batch']),
             'dtype': 'fp32' if dtype == 'float32' else 'bf16', 'isa': isa,
             'plain': ms(plain), 'const': ms(const) if c['name'] != 'train' else 'n/a',
             'torch': f'{ms(best)} ({label})' if best else '–',
             'r_plain': ratio_cell(best, plain), 'r_const': ratio_cell(best, const),
             'ours_flops': share(flops, c, ours_best, dtype, isa, threads),
             'torch_flops': share(flops, c, best_key, 'bfloat16' if label and 'bf16' in label
                                  else 'float32', isa, threads),
             'load': f'{c["load"][0]:.1f}'}


def all_times(run):
  """The medians of every variant, for the record."""
  names = sorted({k for c in run['cases'] for k in c['results']})
  yield '| case | ' + ' | '.join(n.replace('diffusers', 'torch') for n in names) + ' |'
  yield '|---|' + '---|' * len(names)
  for c in run['cases']:
    yield f'| {c["label"]} | ' + ' | '.join(ms(c['results'].get(n)) for n in names) + ' |'


def merge(runs):
  """One run whose cases are the runs' cases of the same cell (case, U-Net, batch), their
  variants united and a variant measured in several runs pooled. The runs must share ISA and
  threads: a cell compares variants under the same conditions."""
  conditions = {(r.get('isa', 'native'), r['threads']) for r in runs}
  if len(conditions) > 1:
    raise SystemExit(f'--merge: the runs differ in ISA / threads {sorted(conditions)}')
  cells = {}
  for run in runs:
    for c in run['cases']:
      key = (c['name'], c['model'], c['batch'])
      if key not in cells:
        cells[key] = dict(c, results=dict(c['results']), cpu=dict(c.get('cpu') or {}),
                          load=list(c['load']))
        continue
      m = cells[key]
      for field in ('results', 'cpu'):
        for k, st in (c.get(field) or {}).items():
          m[field][k] = stats(m[field][k]['samples'] + st['samples']) if k in m[field] else st
      m['load'] = [max(x, y) for x, y in zip(m['load'], c['load'])]
  out = dict(runs[0], cases=list(cells.values()))
  out['date'] = ', '.join(sorted({r['date'] for r in runs}))
  out['no_compile'] = all(r.get('no_compile') for r in runs)
  return out


def section(runs, flops):
  L = ['| U-Net | case | batch | dtype | ISA | ours `unet(x, t)` | ours samplers\' path | '
       'fastest diffusers (config) | ratio `unet(x, t)` | ratio samplers\' | ours GFLOP/s '
       '(% of peak)* | diffusers GFLOP/s (% of peak)* | load |',
       '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for run in runs:
    for x in cells(run, flops):
      L.append('| ' + ' | '.join(x[k] for k in (
          'model', 'case', 'batch', 'dtype', 'isa', 'plain', 'const', 'torch', 'r_plain', 'r_const',
          'ours_flops', 'torch_flops', 'load')) + ' |')
  L.append('')
  L.append('\\* FLOP/s of the faster of our two paths and of the fastest diffusers configuration: the '
           'network\'s FLOPs counted as direct convolutions and matmuls (flops.json) over the '
           'worker\'s CPU time per call, as a share of one core\'s measured peak (fp32: 512-bit '
           'FMA, 256-bit under the AVX2 cap; bf16: vdpbf16ps); "–" where the run recorded no CPU '
           'time. Our fp32 3x3 convolutions are Winograd ones (fewer multiplies than the count), '
           'so our fp32 share can pass 100%.')
  L.append('')
  for run in runs:
    loads = [c['load'][0] for c in run['cases']]
    L.append(f'All medians, run of {run["date"]} ({run.get("isa", "native")}, {run["threads"]} '
             f'thread(s) per framework{", no torch.compile" if run.get("no_compile") else ""}; '
             f'load average after each case {", ".join(f"{x:.1f}" for x in loads)}):')
    L.append('')
    L.extend(all_times(run))
    L.append('')
  return '\n'.join(L)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('runs', nargs='+', help='results.json files of run.py --table runs')
  p.add_argument('--flops', default=os.path.join(HERE, 'flops.json'))
  p.add_argument('--out', default=None, help='Markdown file (default: print)')
  p.add_argument('--merge', action='store_true',
                 help='the runs measured parts of the same cells: one row per cell')
  a = p.parse_args()
  runs = []
  for path in a.runs:
    with open(path) as f:
      runs.append(json.load(f))
  if a.merge:
    runs = [merge(runs)]
  flops = None
  if os.path.exists(a.flops):
    with open(a.flops) as f:
      flops = json.load(f)
  text = section(runs, flops)
  if a.out:
    with open(a.out, 'w') as f:
      f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  main()
