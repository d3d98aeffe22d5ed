"""Sampling throughput of our compiled samplers: images/s for DDPM-1000 and DDIM-50 by batch size.

    python benchmarks/throughput.py [--batches 16 64 128] [--dtypes float32 bfloat16] [--k 10]

Runs the real DDIM loop (`sampling.ddim_sample_loop`, one compiled while loop) over the last K
steps of the 50-step schedule, after a warm-up call, and the real ancestral step
(`p_sample`, the body of `p_sample_loop`) K times; per-step time x 50 (DDIM) or x 1000 (DDPM)
gives the time of a full run, batch / that time the throughput. Like `generate_samples`, the
loops read the weights as constants (`nn.constant_weights`; --plain reads variables). Prints a
Markdown table and appends it to RESULTS.md with --append.
"""

import argparse
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tf_side  # noqa: E402
import numpy as np  # noqa: E402


def per_step_seconds(kind, batch, dtype, k, repeats, const=True):
  """Median seconds per sampler step over `repeats` timed calls."""
  bench = tf_side.build(kind if kind == 'sample_ddpm' else f'sample_ddim:{k}', 'cifar32', batch, dtype,
                        const=const)
  bench.run()  # warm-up beyond build's
  steps_per_call = 1 if kind == 'sample_ddpm' else k
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    bench.run()
    times.append((time.perf_counter() - t0) / steps_per_call)
  return float(np.median(times)), bench.tracing_count()


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--batches', type=int, nargs='+', default=[16, 64, 128])
  p.add_argument('--dtypes', nargs='+', default=['float32', 'bfloat16'])
  p.add_argument('--k', type=int, default=5, help='DDIM steps per timed call')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--plain', action='store_true', help='weights as variable reads, not constants')
  p.add_argument('--append', action='store_true', help='append the table to RESULTS.md')
  a = p.parse_args()
  tf_side.setup_threads(a.threads)
  rows, best = [], {}
  for dtype in a.dtypes:
    for batch in a.batches:
      ddim, tr1 = per_step_seconds('sample_ddim', batch, dtype, a.k, a.repeats, not a.plain)
      ddpm, tr2 = per_step_seconds('sample_ddpm', batch, dtype, a.k, a.repeats, not a.plain)
      ips_ddpm, ips_ddim = batch / (1000 * ddpm), batch / (50 * ddim)
      rows.append(f'| {dtype} | {batch} | {ddpm * 1e3:.0f} ms | {ips_ddpm:.4f} | '
                  f'{ddim * 1e3:.0f} ms | {ips_ddim:.3f} | {tr1}/{tr2} |')
      print(rows[-1], flush=True)
      for name, ips in (('DDPM-1000', ips_ddpm), ('DDIM-50', ips_ddim)):
        if ips > best.get((dtype, name), (0, 0))[0]:
          best[(dtype, name)] = (ips, batch)
  table = ['| dtype | batch | DDPM step | DDPM-1000 images/s | DDIM step | DDIM-50 images/s | traces |',
           '|---|---|---|---|---|---|---|'] + rows
  summary = [f'- best {name} {dtype}: {ips:.4f} images/s at batch {b}'
             for (dtype, name), (ips, b) in sorted(best.items())]
  text = '\n'.join([
      f'\n## Sampling throughput (CIFAR-10 config, `python benchmarks/throughput.py`, '
      f'{datetime.datetime.now():%Y-%m-%d %H:%M})\n',
      f'Per-step time of the compiled DDIM loop (last {a.k} steps of the 50-step schedule per '
      'call) and of the ancestral step, median of '
      f'{a.repeats} calls after warm-up, weights {"read from variables" if a.plain else "as constants"}; '
      'images/s = batch / (steps x per-step time). '
      '"traces" = tracing count of the DDIM / DDPM functions after all calls (1 = no retracing).\n',
      *table, '', *summary, ''])
  print(text)
  if a.append:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'RESULTS.md'), 'a') as f:
      f.write(text)


if __name__ == '__main__':
  main()
