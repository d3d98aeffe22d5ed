"""One framework's benchmark process, driven by run.py over stdin/stdout (JSON lines).

    python benchmarks/worker.py --framework ours        # the project's Python (TensorFlow)
    benchmarks/.venv-torch/bin/python benchmarks/worker.py --framework diffusers

Commands (one JSON object per line): info | setup | time | tracing | numerics | quit.
``--memory KIND:MODEL:BATCH:DTYPE`` instead runs warm-up + 2 calls of one case in this
fresh process and prints its peak resident memory (ru_maxrss) as one JSON line.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _rss_mb():
  try:
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20
  except Exception:  # pragma: no cover
    return float('nan')


def _peak_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.  # KiB on Linux


def load_side(framework):
  if framework == 'ours':
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import tf_side as side
  elif framework == 'diffusers':
    import torch_side as side
  else:
    raise ValueError(framework)
  return side


def library_hashes(side):
  """sha256 (first 12 hex digits) of the library files our side actually imported."""
  if side.FRAMEWORK != 'ours':
    return {}
  import hashlib
  from diffusion_tf import nn
  from diffusion_tf.models import unet
  out = {}
  for mod, name in ((nn, 'diffusion_tf/nn.py'), (unet, 'diffusion_tf/models/unet.py')):
    with open(mod.__file__, 'rb') as f:
      out[name] = hashlib.sha256(f.read()).hexdigest()[:12]
  return out


def info(side):
  out = {'framework': side.FRAMEWORK, 'versions': side.versions(), 'params': {}}
  for model in ('cifar32', 'big256'):
    net = side.make_net(model)
    if side.FRAMEWORK == 'ours':
      from diffusion_tf.models import unet
      out['params'][model] = unet.num_params(net)
    else:
      out['params'][model] = side.num_params(net)
    del net
  if side.FRAMEWORK == 'ours':
    out['train_pieces'] = side._training_pieces()[2]
    out['library'] = side.ROOT
    out['library_hashes'] = library_hashes(side)
  return out


def memory_run(side, spec):
  kind, model, batch, dtype = spec.split(':')
  base_rss = _rss_mb()
  bench = side.build(kind, model, int(batch), dtype)
  built_rss = _rss_mb()
  t0 = time.perf_counter()
  bench.run()  # warm-up (tracing/graph optimisation on our side)
  warm = time.perf_counter() - t0
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    bench.run()
    times.append(time.perf_counter() - t0)
  return {'spec': spec, 'library_hashes': library_hashes(side), 'peak_rss_mb': _peak_mb(), 'rss_after_import_mb': base_rss,
          'rss_after_build_mb': built_rss, 'rss_end_mb': _rss_mb(), 'warmup_s': warm,
          'times': times}


def serve(side, out):
  benches = {}
  for line in sys.stdin:
    line = line.strip()
    if not line:
      continue
    msg = json.loads(line)
    cmd = msg.get('cmd')
    try:
      if cmd == 'quit':
        res = {'ok': True}
      elif cmd == 'info':
        res = info(side)
      elif cmd == 'setup':
        key = msg['key']
        t0 = time.perf_counter()
        # const/direct: our side's options; channels_last/compile: the diffusers side's.
        extra = {k: True for k in ('const', 'direct', 'channels_last', 'compile') if msg.get(k)}
        bench = side.build(msg['kind'], msg.get('model', 'cifar32'), msg['batch'],
                           msg.get('dtype', 'float32'), msg.get('xla', False), **extra)
        warm = []
        for _ in range(msg.get('warmup', 2)):
          t1 = time.perf_counter()
          bench.run()
          warm.append(time.perf_counter() - t1)
        benches[key] = bench
        res = {'setup_s': time.perf_counter() - t0, 'warmup_times': warm,
               'tracing_after_warmup': bench.tracing_count()}
      elif cmd == 'time':
        bench = benches[msg['key']]
        times, cpu = [], []  # wall and this process's CPU time (user + system, all threads)
        for _ in range(msg.get('n', 1)):
          t0, c0 = time.perf_counter(), time.process_time()
          bench.run()
          times.append(time.perf_counter() - t0)
          cpu.append(time.process_time() - c0)
        res = {'times': times, 'cpu_times': cpu}
      elif cmd == 'tracing':
        res = {'tracing': {k: b.tracing_count() for k, b in benches.items()}}
      elif cmd == 'drop':
        benches.pop(msg['key'], None)
        res = {'ok': True}
      elif cmd == 'numerics':
        res = side.numerics(dtype=msg.get('dtype', 'bfloat16'), steps=msg.get('steps', 20),
                            batch=msg.get('batch', 16))
      else:
        raise ValueError(f'unknown command {cmd!r}')
      res['ok'] = res.get('ok', True)
    except Exception as e:  # report, keep serving
      res = {'ok': False, 'error': f'{type(e).__name__}: {e}', 'traceback': traceback.format_exc()}
    out.write(json.dumps(res) + '\n')
    out.flush()
    if cmd == 'quit':
      break


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--framework', required=True, choices=['ours', 'diffusers'])
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--memory', default=None)
  a = p.parse_args()
  # Protocol output goes to the real stdout; everything else (library logs) to stderr.
  out = os.fdopen(os.dup(sys.stdout.fileno()), 'w')
  sys.stdout = sys.stderr
  side = load_side(a.framework)
  side.setup_threads(a.threads)
  if a.memory:
    out.write(json.dumps(memory_run(side, a.memory)) + '\n')
    out.flush()
    return
  out.write(json.dumps({'ready': True, 'pid': os.getpid(), 'python': platform.python_version()})
            + '\n')
  out.flush()
  serve(side, out)


if __name__ == '__main__':
  main()
