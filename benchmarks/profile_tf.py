"""Where does our time go? Runs a case under the TF profiler and prints time per op type.

    python benchmarks/profile_tf.py --kind forward --batch 16 [--dtype bfloat16] [--top 25]
    python benchmarks/profile_tf.py --kind train --batch 16 --by name   # per op instance

Op times are wall-clock durations of the executor's op events on the host, summed over
the profiled calls; with 2 intra-op threads an op's duration includes its parallel work.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tf_side  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402


_NOT_OPS = {'MemoryAllocation', 'MemoryDeallocation', 'ExecutorDoneCallback', 'ParallelFor',
             'PartitionedCall', 'StatefulPartitionedCall'}


def op_table(logdir):
  path = sorted(glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True))[-1]
  space = xplane_pb2.XSpace()
  with open(path, 'rb') as f:
    space.ParseFromString(f.read())
  by_type, by_name = collections.Counter(), collections.Counter()
  counts = collections.Counter()
  for plane in space.planes:
    if not plane.name.startswith('/host:CPU'):
      continue
    md = plane.event_metadata
    for line in plane.lines:
      for ev in line.events:
        name = md[ev.metadata_id].name
        # Executor op events are "<op name>:<op type>" (TF op trace), skip function/step events.
        m = re.match(r'^([^:]+):([A-Za-z0-9_]+)$', name)
        if not m or '::' in name:
          continue
        op_type = m.group(2)
        if op_type in _NOT_OPS:
          continue
        by_type[op_type] += ev.duration_ps / 1e9
        by_name[name] += ev.duration_ps / 1e9
        counts[op_type] += 1
  return by_type, by_name, counts


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--kind', default='forward')
  p.add_argument('--model', default='cifar32')
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--dtype', default='float32')
  p.add_argument('--calls', type=int, default=3)
  p.add_argument('--top', type=int, default=30)
  p.add_argument('--by', default='type', choices=['type', 'name'])
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--const', action='store_true', help='weights as constants (as the samplers)')
  p.add_argument('--no_winograd', action='store_true', help='direct 3x3 convolutions only')
  p.add_argument('--inter', type=int, default=None,
                 help='inter-op threads (1 makes op times add up to the wall time)')
  a = p.parse_args()
  tf_side.setup_threads(a.threads)
  if a.inter:
    tf.config.threading.set_inter_op_parallelism_threads(a.inter)
  with tf_side.winograd_scope(not a.no_winograd):
    bench = tf_side.build(a.kind, a.model, a.batch, a.dtype, const=a.const)
    bench.fn.get_concrete_function(*bench.args)  # trace inside the context
  for _ in range(2):
    bench.run()
  t0 = time.perf_counter()
  for _ in range(a.calls):
    bench.run()
  wall = (time.perf_counter() - t0) / a.calls
  logdir = tempfile.mkdtemp(prefix='tfprof_')
  tf.profiler.experimental.start(logdir)
  for _ in range(a.calls):
    bench.run()
  tf.profiler.experimental.stop()
  by_type, by_name, counts = op_table(logdir)
  table = by_type if a.by == 'type' else by_name
  total = sum(table.values()) / a.calls
  print(f'{a.kind} {a.model} batch {a.batch} {a.dtype}: wall {wall * 1e3:.1f} ms/call, '
        f'sum of op times {total:.1f} ms/call')
  for k, v in table.most_common(a.top):
    n = f'  x{counts[k] // a.calls}' if a.by == 'type' else ''
    print(f'  {v / a.calls:9.2f} ms  {100 * v / a.calls / total:5.1f}%  {k}{n}')


if __name__ == '__main__':
  main()
