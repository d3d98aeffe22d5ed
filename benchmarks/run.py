"""Benchmarks our U-Net against Hugging Face diffusers on this machine; writes RESULTS.md.

    python benchmarks/run.py            # full run (~15-25 min on 2 cores)
    python benchmarks/run.py --quick    # smoke run (a few minutes)
    python benchmarks/run.py --xla      # also measure our side with jit_compile
    python benchmarks/run.py --isa avx2 # both sides capped to AVX2 (as on an AVX2-only CPU)

Each framework runs in its own persistent subprocess (diffusers under
benchmarks/.venv-torch/bin/python, see setup_torch_env.sh). For every case all variants are
built and warmed up first (tracing excluded from the timings), then timed one call at a
time, alternating frameworks and rotating the order each repeat so that drift (other load,
thermal state) hits every variant alike. Peak memory is measured in fresh processes.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TORCH_PY = os.environ.get('DIFFUSION_TF_TORCH_PYTHON') or os.path.join(HERE, '.venv-torch', 'bin', 'python')
EXPECTED_PARAMS = 35_746_307


# ----------------------------------------------------------------------------- workers

class Worker:
  def __init__(self, framework, python, threads, log, isa):
    cmd = [python, os.path.join(HERE, 'worker.py'), '--framework', framework,
           '--threads', str(threads)]
    self.framework = framework
    self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                              text=True, cwd=ROOT, env=_env(isa))
    hello = self._recv()
    if not hello.get('ready'):
      raise RuntimeError(f'{framework} worker failed to start: {hello}')

  def _recv(self):
    line = self.p.stdout.readline()
    if not line:
      raise RuntimeError(f'{self.framework} worker died (see benchmarks/.worker_logs)')
    return json.loads(line)

  def call(self, **msg):
    self.p.stdin.write(json.dumps(msg) + '\n')
    self.p.stdin.flush()
    res = self._recv()
    if not res.get('ok'):
      raise RuntimeError(f'{self.framework} {msg}: {res.get("error")}\n{res.get("traceback")}')
    return res

  def close(self):
    try:
      self.call(cmd='quit')
    except Exception:
      pass
    try:
      self.p.wait(timeout=30)
    except subprocess.TimeoutExpired:
      self.p.kill()


# Environment that makes both frameworks use AVX2 code only, set before TF/torch are imported:
# oneDNN's ISA cap (TF and torch), our kernels built for x86-64-v3 instead of -march=native,
# and ATen's (and inductor's) vector code capped to AVX2.
ISA_CAPS = {'native': {},
            'avx2': {'ONEDNN_MAX_CPU_ISA': 'AVX2', 'DIFFUSION_TF_KERNEL_ARCH': 'x86-64-v3',
                     'ATEN_CPU_CAPABILITY': 'avx2'}}


def _env(isa='native'):
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env.update(ISA_CAPS[isa])
  return env


# ----------------------------------------------------------------------------- plan

OURS32, DIFF32 = ('ours', 'float32'), ('diffusers', 'float32')
OURS16, DIFF16 = ('ours', 'bfloat16'), ('diffusers', 'bfloat16')
# Our inference as the samplers run it: the weights compiled in as constants (nn.constant_weights).
CONST32, CONST16 = ('ours', 'float32', 'const'), ('ours', 'bfloat16', 'const')
# Ours with TF's direct 3x3 convolutions instead of the Winograd ones (nn.winograd(False)).
DIRECT32 = ('ours', 'float32', 'direct')
# PyTorch at its best on CPU: NHWC memory format, and torch.compile (inductor).
DIFF_CL32, DIFF_COMPILE32 = ('diffusers', 'float32', 'channels_last'), ('diffusers', 'float32', 'compile')
TORCH_BEST = [DIFF_CL32, DIFF_COMPILE32]
DIFF_CL16, DIFF_COMPILE16 = ('diffusers', 'bfloat16', 'channels_last'), ('diffusers', 'bfloat16', 'compile')
# Every diffusers configuration the table compares against: eager, channels_last, torch.compile,
# each in fp32 and under bf16 autocast.
TORCH_ALL = [DIFF32, DIFF_CL32, DIFF_COMPILE32, DIFF16, DIFF_CL16, DIFF_COMPILE16]


def table_plan(quick):
  """The speed table: {fp32, bf16} x forward (our two paths: the user's `unet(x, t)` reading
  variables and the samplers' weights-as-constants) and training step, CIFAR-10 U-Net and the
  256x256 one, each against all six diffusers configurations. Select cells with --only."""
  fwd = [OURS32, CONST32, OURS16, CONST16] + TORCH_ALL
  train = [OURS32, OURS16] + TORCH_ALL
  r = lambda n: min(n, 2) if quick else n
  return [('forward', 'forward', 'cifar32', 1, fwd, r(8), 2),
          ('forward', 'forward', 'cifar32', 4, fwd, r(6), 1),
          ('forward', 'forward', 'cifar32', 16, fwd, r(5), 1),
          ('forward', 'forward', 'cifar32', 64, fwd, r(3), 1),
          ('train', 'train', 'cifar32', 16, train, r(4), 1),
          ('train', 'train', 'cifar32', 64, train, r(3), 1),
          ('forward', 'forward', 'big256', 1, fwd, r(4), 1),
          ('forward', 'forward', 'big256', 4, fwd, r(3), 1),
          ('train', 'train', 'big256', 1, train, r(3), 1),
          ('train', 'train', 'big256', 4, train, r(2), 1)]


def plan(quick, xla, with_diffusers_bf16, fp32_only=False, vs_torch_best=False, table=False):
  """(name, kind, model, batch, variants, repeats, calls per sample)."""
  if table:
    cases = table_plan(quick)
    if fp32_only:
      cases = [c[:4] + ([v for v in c[4] if v[1] == 'float32'],) + c[5:] for c in cases]
    return cases
  if vs_torch_best:  # fp32 forward and training step against diffusers' three CPU variants
    v = [OURS32, DIFF32] + TORCH_BEST
    reps = 2 if quick else 5
    return [(kind, kind, 'cifar32', b, v, reps, 1) for kind in ('forward', 'train') for b in (16, 64)]
  if fp32_only:
    cases = plan(quick, xla, False)
    return [c[:4] + ([v for v in c[4] if v[1] == 'float32'],) + c[5:] for c in cases]
  all4 = [OURS32, DIFF32, OURS16] + ([DIFF16] if with_diffusers_bf16 else [])
  three = [OURS32, DIFF32, OURS16]
  infer = [CONST32, CONST16]  # extra variants of the inference cases
  if quick:
    cases = [
        ('forward', 'forward', 'cifar32', 1, all4 + infer, 3, 2),
        ('forward', 'forward', 'cifar32', 16, all4 + infer + [DIRECT32] + TORCH_BEST, 3, 1),
        ('train', 'train', 'cifar32', 16, all4 + [DIRECT32] + TORCH_BEST, 2, 1),
        ('sample_ddpm', 'sample_ddpm', 'cifar32', 16, three + infer, 2, 1),
        ('sample_ddim', 'sample_ddim:2', 'cifar32', 16, three + infer, 2, 1),
        ('forward', 'forward', 'cifar64', 1, three, 2, 1),
        ('forward', 'forward', 'big256', 1, three, 2, 1),
    ]
  else:
    cases = [
        ('forward', 'forward', 'cifar32', 1, all4 + infer, 12, 2),
        ('forward', 'forward', 'cifar32', 16, all4 + infer + [DIRECT32] + TORCH_BEST, 9, 1),
        ('forward', 'forward', 'cifar32', 64, all4 + infer + TORCH_BEST, 5, 1),
        ('train', 'train', 'cifar32', 16, all4 + [DIRECT32] + TORCH_BEST, 7, 1),
        ('train', 'train', 'cifar32', 64, all4 + TORCH_BEST, 3, 1),
        ('sample_ddpm', 'sample_ddpm', 'cifar32', 16, three + infer, 7, 1),
        ('sample_ddim', 'sample_ddim:3', 'cifar32', 16, three + infer, 4, 1),
        ('forward', 'forward', 'cifar64', 1, three, 9, 1),
        ('forward', 'forward', 'cifar64', 16, three, 4, 1),
        ('forward', 'forward', 'big256', 1, three, 4, 1),
    ]
  if xla:
    reps = 2 if quick else 5
    cases += [
        ('forward', 'forward', 'cifar32', 16, [OURS32, ('ours', 'float32', 'xla'), DIFF32,
                                               ('ours', 'bfloat16', 'xla')], reps, 1),
        ('train', 'train', 'cifar32', 16, [OURS32, ('ours', 'float32', 'xla'), DIFF32], reps, 1),
    ]
  return cases


def select_cases(cases, only=None, repeats=None, no_compile=False, dtype=None, variants=None):
  """The cases and variants a run measures: `only` "kind:model:batch,..." cells, `variants`
  "ours/float32,diffusers/float32/channels_last,..." names; a case left without variants is
  dropped."""
  if only:
    want = set(only.split(','))
    cases = [c for c in cases if f'{c[1].split(":")[0]}:{c[2]}:{c[3]}' in want]
  if repeats:
    cases = [c[:5] + (repeats,) + c[6:] for c in cases]
  names = set(variants.split(',')) if variants else None
  keep = lambda v: ((not no_compile or vmode(v) != 'compile') and (not dtype or v[1] == dtype)
                    and (names is None or vname(v) in names))
  cases = [c[:4] + ([v for v in c[4] if keep(v)],) + c[5:] for c in cases]
  return [c for c in cases if c[4]]


def vname(v):
  return '/'.join(v)


def vmode(v):
  """'' (plain), 'xla' (jit_compile), 'const' (constant weights) or 'direct' (no Winograd
  convolutions) of ours; 'channels_last' or 'compile' (torch.compile) of diffusers."""
  return v[2] if len(v) > 2 else ''


# ----------------------------------------------------------------------------- measuring

def stats(ts):
  ts = np.asarray(ts, np.float64)
  return {'median': float(np.median(ts)), 'p25': float(np.percentile(ts, 25)),
          'p75': float(np.percentile(ts, 75)), 'min': float(ts.min()), 'max': float(ts.max()),
          'n': int(ts.size), 'samples': ts.tolist()}


def run_case(workers, case, log, restart=None):
  """Times a case's variants alternately. A variant whose setup kills its worker (inductor's
  generated code has segfaulted under ATEN_CPU_CAPABILITY=avx2) is left out of the case and
  listed under 'failed'; ``restart(fw)`` brings up a fresh worker for the remaining cases."""
  name, kind, model, batch, variants, repeats, calls = case
  key = f'{kind}|{model}|{batch}'
  label = f'{name} {model} b{batch}'
  setup, failed = {}, {}
  # Constant-weight variants first: TF shares oneDNN primitives between convolutions of the
  # same shapes, and a constant-weight graph created after a variable-weight one has run
  # reuses its primitives and loses the cached filter reorders (batch-1 forward 54 -> 68 ms).
  # A sampling process has only the constant-weight graph; the other order costs the
  # variable-weight variant nothing.
  def set_up(v):
    fw, dtype, mode = v[0], v[1], vmode(v)
    extra = {mode: True} if mode in ('const', 'direct', 'channels_last', 'compile') else {}
    res = workers[fw].call(cmd='setup', key=f'{key}|{dtype}|{mode}', kind=kind, model=model,
                           batch=batch, dtype=dtype, xla=mode == 'xla', warmup=2, **extra)
    setup[vname(v)] = res
    log(f'  setup {label} {vname(v)}: {res["setup_s"]:.1f}s '
        f'(warm-up calls {", ".join(f"{t:.2f}" for t in res["warmup_times"])} s)')

  done = []
  for v in sorted(variants, key=lambda v: vmode(v) != 'const'):
    try:
      set_up(v)
      done.append(v)
    except RuntimeError as e:
      if restart is None or 'worker died' not in str(e):
        raise
      log(f'  setup {label} {vname(v)}: {e}; left out, worker restarted')
      failed[vname(v)] = str(e)
      restart(v[0])
      for u in done:  # the fresh worker has none of this case's earlier set-ups
        if u[0] == v[0]:
          set_up(u)
  variants = [v for v in variants if vname(v) not in failed]
  samples = {vname(v): [] for v in variants}
  cpu = {vname(v): [] for v in variants}  # the worker's CPU time per call (all its threads)
  for r in range(repeats):
    order = variants[r % len(variants):] + variants[:r % len(variants)]
    for v in order:
      fw, dtype = v[0], v[1]
      res = workers[fw].call(cmd='time', key=f'{key}|{dtype}|{vmode(v)}', n=calls)
      samples[vname(v)].append(float(np.mean(res['times'])))
      cpu[vname(v)].append(float(np.mean(res['cpu_times'])))
  tracing = {}
  for v in variants:
    fw, dtype = v[0], v[1]
    k = f'{key}|{dtype}|{vmode(v)}'
    if fw == 'ours':
      tr = workers[fw].call(cmd='tracing')['tracing'][k]
      tracing[vname(v)] = {'after_warmup': setup[vname(v)]['tracing_after_warmup'], 'end': tr}
    workers[fw].call(cmd='drop', key=k)
  out = {'name': name, 'kind': kind, 'model': model, 'batch': batch, 'label': label,
         'results': {k: stats(s) for k, s in samples.items()},
         'cpu': {k: stats(s) for k, s in cpu.items()}, 'tracing': tracing, 'failed': failed,
         'load': os.getloadavg()}
  line = ', '.join(f'{k} {v["median"]:.3f}s' for k, v in out['results'].items())
  log(f'  {label}: {line}  (load {out["load"][0]:.2f})')
  return out


def memory_runs(specs, threads, log, isa, torch_python):
  out = {}
  for fw, spec in specs:
    python = sys.executable if fw == 'ours' else torch_python
    cmd = [python, os.path.join(HERE, 'worker.py'), '--framework', fw, '--threads',
           str(threads), '--memory', spec]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(isa))
    if res.returncode != 0:
      log(f'  memory {fw} {spec} FAILED:\n{res.stderr[-3000:]}')
      continue
    r = json.loads(res.stdout.strip().splitlines()[-1])
    out[f'{fw}|{spec}'] = r
    log(f'  memory {fw} {spec}: peak RSS {r["peak_rss_mb"]:.0f} MiB '
        f'(after import {r["rss_after_import_mb"]:.0f}, {time.time() - t0:.0f}s)')
  return out


# ----------------------------------------------------------------------------- machine

def machine_info():
  cpu, fields = platform.processor(), {}
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if not line.strip():
          break
        k, _, v = line.partition(':')
        fields[k.strip()] = v.strip()
    cpu = (f'{fields.get("model name", cpu)} (family {fields.get("cpu family", "?")}, '
           f'model {fields.get("model", "?")}, stepping {fields.get("stepping", "?")})')
  except OSError:
    pass
  flags = ''
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          fl = set(line.split(':', 1)[1].split())
          flags = ' '.join(x for x in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile',
                                        'avx512_fp16') if x in fl)
          break
  except OSError:
    pass
  mem = ''
  try:
    with open('/proc/meminfo') as f:
      mem = f'{int(f.readline().split()[1]) / 2 ** 20:.1f} GiB'
  except OSError:
    pass
  return {'cpu': cpu, 'logical_cores': os.cpu_count(), 'flags': flags, 'memory': mem,
          'isa': native_isa(flags.split()), 'platform': platform.platform(),
          'python': platform.python_version()}


def native_isa(flags):
  """The widest x86 vector instruction set the CPU has, as oneDNN/ATen name their levels."""
  for flag, name in (('amx_tile', 'AVX-512 + AMX'), ('avx512f', 'AVX-512'), ('avx2', 'AVX2')):
    if flag in flags:
      return name
  return 'older than AVX2 (or not x86)'


# ----------------------------------------------------------------------------- report

def fmt_t(s):
  if s is None:
    return '–'
  v = s['median']
  unit, scale = ('ms', 1e3) if v < 1 else ('s', 1.)
  return (f'{v * scale:.{1 if unit == "ms" else 2}f} {unit} '
          f'[{s["p25"] * scale:.{1 if unit == "ms" else 2}f}–{s["p75"] * scale:.{1 if unit == "ms" else 2}f}]')


def speedup(ref, ours):
  if not ref or not ours:
    return '–'
  return f'{ref["median"] / ours["median"]:.2f}×'


def fastest_torch(c):
  """(variant name, stats) of the fastest fp32 diffusers variant measured in a case."""
  runs = [(k, s) for k, s in c['results'].items() if k.startswith('diffusers/float32')]
  return min(runs, key=lambda ks: ks[1]['median']) if runs else (None, None)


def add_torch_best(add, cases, data):
  variants = ('diffusers/float32/compile', 'diffusers/float32/channels_last')
  rows = [c for c in cases if any(c['results'].get(k) or k in c.get('failed', {}) for k in variants)]
  if not rows:
    return
  m = data['machine']
  isa = data.get('isa', 'native')
  where = m.get('isa') if isa == 'native' else f'{isa.upper()} cap on an {m.get("isa")} CPU'
  add(f'## Against PyTorch at its best on CPU, fp32 ({where})')
  add('')
  add('diffusers\' UNet eager (NCHW), with `channels_last` memory format, and under '
      '`torch.compile` (inductor, default mode; compilation excluded as warm-up). Speedup = '
      'the fastest of the three / ours.')
  add('')
  add('| case | ours fp32 | diffusers eager | channels_last | torch.compile | speedup vs fastest torch |')
  add('|---|---|---|---|---|---|')
  for c in rows:
    o32 = c['results'].get('ours/float32')
    best_k, best = fastest_torch(c)
    r = c['results']
    cell = lambda k: 'worker crashed' if k in c.get('failed', {}) else fmt_t(r.get(k))
    add(f'| {c["label"]} | {fmt_t(o32)} | {cell("diffusers/float32")} | '
        f'{cell("diffusers/float32/channels_last")} | '
        f'{cell("diffusers/float32/compile")} | **{speedup(best, o32)}** '
        f'({best_k.split("/")[-1] if best_k.count("/") > 1 else "eager"}) |')
  add('')


def write_report(path, data):
  L = []
  add = L.append
  m, v = data['machine'], data['versions']
  add('# Benchmarks: diffusion_tf U-Net vs Hugging Face diffusers `UNet2DModel`')
  add('')
  add(f'Generated by `python benchmarks/run.py{" --quick" if data["quick"] else ""}'
      f'{" --xla" if data["xla"] else ""}'
      f'{" --isa " + data["isa"] if data.get("isa", "native") != "native" else ""}'
      f'{" --vs-torch-best" if data.get("vs_torch_best") else ""}` on {data["date"]} '
      f'(wall time {data["wall_s"] / 60:.1f} min).' + (' **Quick smoke run: few repeats, '
                                                        'numbers are indicative only.**'
                                                        if data['quick'] else ''))
  add('')
  add('## Machine and software')
  add('')
  add(f'- CPU: {m["cpu"]}, {m["logical_cores"]} logical cores ({m["flags"]}), memory {m["memory"]}')
  isa = data.get('isa', 'native')
  add(f'- Instruction set used: ' + (f'native ({m.get("isa")})' if isa == 'native' else
      f'**capped to {isa.upper()}** on a {m.get("isa")} CPU (' + ', '.join(
          f'`{k}={v}`' for k, v in ISA_CAPS[isa].items()) + ' in both workers)'))
  add(f'- {m["platform"]}, Python {m["python"]}')
  add(f'- ours: TensorFlow {v["ours"].get("tensorflow")}, NumPy {v["ours"].get("numpy")}; '
      f'diffusers side: torch {v["diffusers"].get("torch")}, diffusers {v["diffusers"].get("diffusers")} '
      f'(Python {v["diffusers"].get("python")}, separate venv)')
  add(f'- Threads: {data["threads"]} for both (TF intra-op = inter-op = {data["threads"]}; '
      f'torch.set_num_threads({data["threads"]})).')
  add(f'- Library: `{data.get("library")}`; sha256 of the imported files: ' + ', '.join(
      f'`{k}` {v}' for k, v in (data.get('library_hashes') or {}).items()) + '.')
  add(f'- Train step, ours: {data.get("train_pieces", "?")}.')
  la = data['load']
  # Between cases the benchmark's own threads keep the load near `threads`; only the load
  # when it starts tells whether other work shared the machine.
  add(f'- Load average (1 min) at start {la["start"][0]:.2f}, at end {la["end"][0]:.2f}, '
      f'max seen between cases {la["max"]:.2f} (the benchmark itself keeps about '
      f'{data.get("threads") or "its"} threads busy).' +
      (' **Other work had been running when this run started (load > 1); absolute times may '
       'be inflated and noisier, but each comparison alternated the frameworks call by call, '
       'so the ratios are fair.**' if la['start'][0] > 1.0 else ''))
  p = data['params']
  add(f'- Parameters: CIFAR-10 config ours {p["ours"]["cifar32"]:,}, diffusers '
      f'{p["diffusers"]["cifar32"]:,}; 256² config ours {p["ours"]["big256"]:,}, diffusers '
      f'{p["diffusers"]["big256"]:,}.')
  add('')
  add('Times are per call: median [interquartile range] over the repeats; warm-up '
      '(tracing, graph optimisation, first-call allocation) excluded. Speedup = '
      'diffusers time / our time (> 1: we are faster). "bf16" = our `UNet(compute_dtype='
      '\'bfloat16\')` and, for diffusers, `torch.autocast("cpu", torch.bfloat16)`.')
  add('')

  cases = data['cases']

  def get(c, fw, dt, xla=False, mode=''):
    return c['results'].get(f'{fw}/{dt}' + ('/xla' if xla else '') + (f'/{mode}' if mode else ''))

  add('## U-Net forward and training step (CIFAR-10 config, 32×32)')
  add('')
  add('| case | ours fp32 | diffusers fp32 | speedup fp32 | ours bf16 | speedup ours bf16 vs diffusers fp32 | diffusers bf16 | speedup bf16 vs bf16 |')
  add('|---|---|---|---|---|---|---|---|')
  for c in cases:
    if c['model'] != 'cifar32' or c['name'] not in ('forward', 'train') or c.get('xla_case'):
      continue
    o32, d32, o16, d16 = get(c, 'ours', 'float32'), get(c, 'diffusers', 'float32'), \
        get(c, 'ours', 'bfloat16'), get(c, 'diffusers', 'bfloat16')
    add(f'| {c["name"]} batch {c["batch"]} | {fmt_t(o32)} | {fmt_t(d32)} | **{speedup(d32, o32)}** | '
        f'{fmt_t(o16)} | **{speedup(d32, o16)}** | {fmt_t(d16)} | {speedup(d16, o16)} |')
  add('')
  add('Training step = loss (mean `training_losses`, eps-prediction MSE, dropout 0.1) + '
      'backward + global-norm clip 1.0 + Adam (lr 2e-4) + EMA 0.9999 update, one compiled '
      'call on our side; the same in PyTorch (foreach Adam, `clip_grad_norm_`, `_foreach_lerp_` EMA).')
  add('')

  rows = [c for c in cases if get(c, 'ours', 'float32', mode='direct')]
  if rows:
    add('### What the Winograd convolutions give (fp32)')
    add('')
    add('Ours with TF\'s direct (oneDNN) 3x3 convolutions (`nn.winograd(False)`) against ours '
        'with the default Winograd F(4x4, 3x3) ones, in the same run:')
    add('')
    add('| case | ours fp32 direct convs | ours fp32 Winograd | Winograd speedup | diffusers fp32 | speedup direct vs diffusers |')
    add('|---|---|---|---|---|---|')
    for c in rows:
      o32, w32, d32 = get(c, 'ours', 'float32', mode='direct'), get(c, 'ours', 'float32'), \
          get(c, 'diffusers', 'float32')
      add(f'| {c["label"]} | {fmt_t(o32)} | {fmt_t(w32)} | **{speedup(o32, w32)}** | '
          f'{fmt_t(d32)} | {speedup(d32, o32)} |')
    add('')

  add_torch_best(add, cases, data)

  add('## Inference as our samplers run it: weights compiled in as constants')
  add('')
  add('`generate_samples` / the `sample` commands trace their sampling loop inside '
      '`nn.constant_weights()`: the network reads its weights as graph constants, so oneDNN '
      'reorders each convolution filter into its blocked layout once and caches it, instead of '
      'at every call (the plain columns above read variables, as the training step must). '
      'Same outputs up to float32 rounding (bit for bit on most CPUs; within 1e-5 after 10 '
      'sampler steps, tests/test_sampling.py).')
  add('')
  add('| case | ours fp32 plain | ours fp32 const | diffusers fp32 | speedup fp32 const | ours bf16 const | speedup bf16 const vs diffusers fp32 |')
  add('|---|---|---|---|---|---|---|')
  for c in cases:
    c32 = get(c, 'ours', 'float32', mode='const')
    if c['model'] != 'cifar32' or not c32:
      continue
    o32, d32, c16 = get(c, 'ours', 'float32'), get(c, 'diffusers', 'float32'), get(c, 'ours', 'bfloat16', mode='const')
    add(f'| {c["label"]} | {fmt_t(o32)} | {fmt_t(c32)} | {fmt_t(d32)} | **{speedup(d32, c32)}** | '
        f'{fmt_t(c16)} | **{speedup(d32, c16)}** |')
  add('')

  add('## Sampling cost per image (batch 16)')
  add('')
  add('Per-step time measured at batch 16; per-image cost = per-step × steps / 16. DDPM: one '
      'ancestral step (`GaussianDiffusion2.p_sample` / `DDPMScheduler.step`) timed and '
      'multiplied by 1000. DDIM (η = 0): the real samplers (`diffusion_tf.sampling.ddim_sample_loop`, '
      'one compiled while-loop / `DDIMScheduler`) timed over K steps of the 50-step schedule, '
      'per-step = time / K, extrapolated to 50 and 100 steps.')
  add('')
  add('| sampler | ours fp32 | diffusers fp32 | speedup | ours bf16 | speedup bf16 vs diffusers fp32 |')
  add('|---|---|---|---|---|---|')
  for c in cases:
    if c['name'] == 'sample_ddpm':
      rows = [('DDPM 1000 steps', 1000, 1)]
    elif c['name'] == 'sample_ddim':
      k = int(c['kind'].split(':')[1])
      rows = [('DDIM 50 steps', 50, k), ('DDIM 100 steps', 100, k)]
    else:
      continue
    o32, d32, o16 = get(c, 'ours', 'float32'), get(c, 'diffusers', 'float32'), get(c, 'ours', 'bfloat16')
    for label, steps, k in rows:
      f = lambda s: '–' if s is None else f'{s["median"] / k * steps / c["batch"]:.1f} s'
      add(f'| {label} | {f(o32)} | {f(d32)} | **{speedup(d32, o32)}** | {f(o16)} | **{speedup(d32, o16)}** |')
  for c in cases:
    if c['name'] in ('sample_ddpm', 'sample_ddim'):
      add(f'\n({c["label"]} per call: ' + ', '.join(f'{k} {fmt_t(s)}' for k, s in c['results'].items()) + ')')
  add('')

  add('## Cost growth')
  add('')
  add('Per-image time vs batch size (CIFAR-10 config, fp32):')
  add('')
  add('| case | batch | ours per image | diffusers per image | speedup |')
  add('|---|---|---|---|---|')
  for c in cases:
    if c['model'] == 'cifar32' and c['name'] in ('forward', 'train') and not c.get('xla_case'):
      o, d = get(c, 'ours', 'float32'), get(c, 'diffusers', 'float32')
      if o and d:
        add(f'| {c["name"]} | {c["batch"]} | {o["median"] / c["batch"] * 1e3:.1f} ms | '
            f'{d["median"] / c["batch"] * 1e3:.1f} ms | {speedup(d, o)} |')
  add('')
  add('Forward time vs resolution (64×64 keeps the CIFAR topology with attention at the second '
      'level, as diffusers\' block types do; 256×256 is the CelebA-HQ/LSUN config '
      '`unet2d16b2c112244` / `google/ddpm-ema-church-256`):')
  add('')
  add('| model | batch | ours fp32 | diffusers fp32 | speedup | ours bf16 | speedup bf16 |')
  add('|---|---|---|---|---|---|---|')
  for c in cases:
    if c['name'] == 'forward' and (c['model'] != 'cifar32' or c['batch'] == 1) and not c.get('xla_case'):
      o32, d32, o16 = get(c, 'ours', 'float32'), get(c, 'diffusers', 'float32'), get(c, 'ours', 'bfloat16')
      add(f'| {c["model"]} | {c["batch"]} | {fmt_t(o32)} | {fmt_t(d32)} | {speedup(d32, o32)} | '
          f'{fmt_t(o16)} | {speedup(d32, o16)} |')
  add('')

  xla_cases = [c for c in cases if c.get('xla_case')]
  if xla_cases:
    add('## XLA (`jit_compile=True`) on our side')
    add('')
    add('| case | ours fp32 | ours fp32 XLA | diffusers fp32 | ours bf16 XLA |')
    add('|---|---|---|---|---|')
    for c in xla_cases:
      add(f'| {c["label"]} | {fmt_t(get(c, "ours", "float32"))} | '
          f'{fmt_t(get(c, "ours", "float32", True))} | {fmt_t(get(c, "diffusers", "float32"))} | '
          f'{fmt_t(get(c, "ours", "bfloat16", True))} |')
    add('')

  add('## Peak resident memory of the training step')
  add('')
  add('Each measured in a fresh process (warm-up + 2 steps), `ru_maxrss`; "after import" is '
      'the process RSS once the framework and the library are imported, before the model exists.')
  add('')
  add('| framework | case | peak RSS | RSS after import | peak − after import |')
  add('|---|---|---|---|---|')
  for k, r in data['memory'].items():
    fw, spec = k.split('|')
    add(f'| {fw} | {spec.replace(":", " ")} | {r["peak_rss_mb"]:.0f} MiB | '
        f'{r["rss_after_import_mb"]:.0f} MiB | {r["peak_rss_mb"] - r["rss_after_import_mb"]:.0f} MiB |')
  add('')

  add('## Retracing')
  add('')
  add('Tracing count of each of our `tf.function`s after the two warm-up calls and after all '
      'timed calls (`experimental_get_tracing_count()`); equal means no retracing after warm-up.')
  add('')
  add('| case | variant | after warm-up | after timing |')
  add('|---|---|---|---|')
  retraced = False
  for c in cases:
    for k, tr in c['tracing'].items():
      add(f'| {c["label"]} | {k} | {tr["after_warmup"]} | {tr["end"]} |')
      retraced |= tr['after_warmup'] != tr['end']
  add('')
  add('**Retracing after warm-up: ' + ('YES — see the table.**' if retraced else 'none.**'))
  add('')

  for key, label, what in (
      ('numerics_fp32', 'fp32 Winograd', 'Float32 with the Winograd 3x3 convolutions (the default on CPU)'),
      ('numerics', 'bf16', 'bfloat16 compute')):
    num = data.get(key)
    if not num:
      continue
    add(f'## Numerical effect of {label} (ours)')
    add('')
    add(f'{what} against float32 with TF\'s direct convolutions '
        '(`nn.winograd(False)`). Same weights (the near-zero initialisations of '
        'conv2/proj_out/conv_out replaced by the default init so the output is not ~0), input '
        f'uniform in [-1, 1], batch {num["batch"]}; relative L2 difference ‖y − y_ref‖ / ‖y_ref‖ '
        'at t = 10, 500, 990:')
    add('')
    add('| t | rel. L2 difference | max abs difference | (output RMS) |')
    add('|---|---|---|---|')
    for t, r, a in zip((10, 500, 990), num['output_rel_l2'], num['output_max_abs']):
      add(f'| {t} | {r:.2e} | {a:.2e} | {num["output_rms"]:.3f} |')
    add('')
    l32, llo = np.asarray(num['loss_fp32']), np.asarray(num['loss_low'])
    add(f'Short training run from identical initial weights with identical data (built-in digits), '
        f'timesteps and noise, batch {num["batch"]}, Adam 2e-4, {len(l32)} steps:')
    add('')
    add('| step | ' + ' | '.join(str(i + 1) for i in range(len(l32))) + ' |')
    add('|---|' + '---|' * len(l32))
    add('| reference loss | ' + ' | '.join(f'{x:.4f}' for x in l32) + ' |')
    add(f'| {label} loss | ' + ' | '.join(f'{x:.4f}' for x in llo) + ' |')
    rel = np.abs(llo - l32) / np.abs(l32)
    add('')
    add(f'Relative loss difference: mean {rel.mean():.2e}, max {rel.max():.2e}. '
        f'Model variables: {", ".join(num["param_dtypes"])}.')
    add('')

  add('## Targets')
  add('')
  tg = data.get('targets', [])
  for line in tg:
    add(f'- {line}')
  add('')
  if data.get('notes'):
    add('## Notes')
    add('')
    for n in data['notes']:
      add(f'- {n}')
    add('')
  with open(path, 'w') as f:
    f.write('\n'.join(L))


def targets(data):
  out = []
  cases = data['cases']

  def find(name, batch):
    for c in cases:
      if c['name'] == name and c['model'] == 'cifar32' and c['batch'] == batch and not c.get('xla_case'):
        return c
    return None
  for name in ('forward', 'train'):
    for b in (1, 16, 64):
      c = find(name, b)
      if not c:
        continue
      o32, d32, o16, c32, c16 = (c['results'].get(k) for k in (
          'ours/float32', 'diffusers/float32', 'ours/bfloat16', 'ours/float32/const',
          'ours/bfloat16/const'))
      if o32 and d32:
        s = d32['median'] / o32['median']
        out.append(f'fp32 {name} batch {b}: {s:.2f}× diffusers (target ≥ 1.2×) — '
                   f'{"met" if s >= 1.2 else "NOT met"}')
      best_k, best = fastest_torch(c)
      if o32 and best_k and best_k != 'diffusers/float32':
        s = best['median'] / o32['median']
        out.append(f'fp32 {name} batch {b}: {s:.2f}× the fastest torch variant ({best_k}) '
                   f'(target ≥ 1.3×) — {"met" if s >= 1.3 else "NOT met"}')
      if c32 and d32:
        s = d32['median'] / c32['median']
        out.append(f'fp32 {name} batch {b}, constant weights (as sampling runs it): {s:.2f}× '
                   f'diffusers (target ≥ 1.2×) — {"met" if s >= 1.2 else "NOT met"}')
      if o16 and d32:
        s = d32['median'] / o16['median']
        out.append(f'bf16 {name} batch {b}: {s:.2f}× diffusers fp32 (target ≥ 1.8×) — '
                   f'{"met" if s >= 1.8 else "NOT met"}')
      if c16 and d32:
        s = d32['median'] / c16['median']
        out.append(f'bf16 {name} batch {b}, constant weights: {s:.2f}× diffusers fp32 '
                   f'(target ≥ 1.8×) — {"met" if s >= 1.8 else "NOT met"}')
  retr = any(tr['after_warmup'] != tr['end'] for c in cases for tr in c['tracing'].values())
  out.append(f'No retracing after warm-up — {"NOT met" if retr else "met"}')
  mem = data['memory']
  ko = [k for k in mem if k.startswith('ours|train') and k.endswith('float32')]
  kd = [k for k in mem if k.startswith('diffusers|train') and k.endswith('float32')]
  if ko and kd:
    o, d = mem[ko[0]]['peak_rss_mb'], mem[kd[0]]['peak_rss_mb']
    out.append(f'Peak memory of the fp32 train step ({ko[0].split("|")[1]}): ours {o:.0f} MiB vs '
               f'diffusers {d:.0f} MiB — {"met" if o <= d else "NOT met"}')
  return out


# ----------------------------------------------------------------------------- main

def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='smoke run: few repeats, small cases')
  p.add_argument('--xla', action='store_true', help='also time our side with jit_compile=True')
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--no-diffusers-bf16', action='store_true',
                 help='skip the diffusers bf16 autocast variant')
  p.add_argument('--only', default=None,
                 help='comma-separated case filter, e.g. "forward:cifar32:16,train:cifar32:16" '
                      '(development; skips numerics and memory unless --memory is given)')
  p.add_argument('--repeats', type=int, default=None, help='override the repeats of every case')
  p.add_argument('--memory', action='store_true', help='with --only: also run the memory cases')
  p.add_argument('--isa', default='native', choices=sorted(ISA_CAPS),
                 help='avx2: cap both frameworks to AVX2 code (oneDNN, ATen/inductor, our '
                      'kernels built for x86-64-v3), to measure as on an AVX2-only CPU')
  p.add_argument('--vs-torch-best', action='store_true',
                 help='only fp32 forward/train at batch 16 and 64: ours against diffusers eager, '
                      'channels_last and torch.compile')
  p.add_argument('--table', action='store_true',
                 help='the speed table: fp32 and bf16, forward batch 1/4/16/64 on both our paths and '
                      'training step, CIFAR-10 and 256x256 U-Nets, against all six diffusers '
                      'configurations (select cells with --only; no numerics or memory cases)')
  p.add_argument('--no-compile', action='store_true',
                 help='leave out the torch.compile variants (inductor compiles for minutes per '
                      'case, far longer on a loaded machine)')
  p.add_argument('--dtype', default=None, choices=('float32', 'bfloat16'),
                 help='only the variants in this dtype (a worker holds every variant of a case: '
                      'the six 256x256 or batch-64 training variants of one framework can '
                      'exceed the memory of a 24 GB machine)')
  p.add_argument('--variants', default=None,
                 help='only these variants, comma-separated names as in the report, e.g. '
                      '"ours/float32,diffusers/float32/channels_last" (a run per diffusers '
                      'configuration where a worker holding two would not fit in memory)')
  p.add_argument('--torch-python', default=TORCH_PY,
                 help='Python of the diffusers venv (default: $DIFFUSION_TF_TORCH_PYTHON or '
                      'benchmarks/.venv-torch/bin/python)')
  p.add_argument('--out', default=os.path.join(HERE, 'RESULTS.md'))
  p.add_argument('--json', default=os.path.join(HERE, 'results.json'))
  a = p.parse_args()
  if not os.path.exists(a.torch_python):
    sys.exit(f'--torch-python {a.torch_python} not found: run benchmarks/setup_torch_env.sh '
             'first, or point --torch-python / $DIFFUSION_TF_TORCH_PYTHON at a venv with torch '
             'and diffusers')
  if a.isa != 'native' and native_isa(machine_info()['flags'].split()) == 'older than AVX2 (or not x86)':
    sys.exit(f'--isa {a.isa}: this CPU has no AVX2')

  t_start = time.time()
  logdir = os.path.join(HERE, '.worker_logs')
  os.makedirs(logdir, exist_ok=True)

  def log(msg):
    print(f'[{time.time() - t_start:6.0f}s] {msg}', flush=True)

  load_start = os.getloadavg()
  log(f'load average {load_start}')
  data = {'quick': a.quick, 'xla': a.xla, 'threads': a.threads, 'machine': machine_info(), 'isa': a.isa,
          'vs_torch_best': a.vs_torch_best, 'table': a.table, 'no_compile': a.no_compile,
          'dtype': a.dtype, 'variants': a.variants,
          'date': datetime.datetime.now().strftime('%Y-%m-%d %H:%M'), 'notes': []}
  loads = [load_start[0]]
  workers = {}
  try:
    with open(os.path.join(logdir, 'ours.log'), 'w') as lo, \
        open(os.path.join(logdir, 'diffusers.log'), 'w') as ld:
      workers['ours'] = Worker('ours', sys.executable, a.threads, lo, a.isa)
      workers['diffusers'] = Worker('diffusers', a.torch_python, a.threads, ld, a.isa)
      infos = {fw: w.call(cmd='info') for fw, w in workers.items()}
      data['versions'] = {fw: i['versions'] for fw, i in infos.items()}
      data['params'] = {fw: i['params'] for fw, i in infos.items()}
      data['train_pieces'] = infos['ours'].get('train_pieces')
      data['library'] = infos['ours'].get('library')
      data['library_hashes'] = infos['ours'].get('library_hashes')
      log(f'params: {data["params"]}')
      for fw in infos:
        if data['params'][fw]['cifar32'] != EXPECTED_PARAMS:
          data['notes'].append(f'{fw} CIFAR-10 parameter count {data["params"][fw]["cifar32"]:,} '
                               f'!= {EXPECTED_PARAMS:,}')
      data['cases'] = []
      # oneDNN has no bf16 kernels below AVX-512 (TF's graph rewrite still picks them under
      # the cap, and they fail): under --isa avx2 only float32 is measured.
      cases = plan(a.quick, a.xla, not a.no_diffusers_bf16, fp32_only=a.isa != 'native',
                   vs_torch_best=a.vs_torch_best, table=a.table)
      cases = select_cases(cases, only=a.only, repeats=a.repeats, no_compile=a.no_compile,
                           dtype=a.dtype, variants=a.variants)
      if not cases:
        sys.exit('--only / --dtype / --variants: no case is left to measure')
      def restart(fw):
        workers.pop(fw).p.kill()
        workers[fw] = Worker(fw, sys.executable if fw == 'ours' else a.torch_python, a.threads,
                             lo if fw == 'ours' else ld, a.isa)

      for case in cases:
        log(f'case {case[0]} {case[2]} batch {case[3]}: {[vname(v) for v in case[4]]} x{case[5]}')
        res = run_case(workers, case, log, restart=restart)
        res['xla_case'] = any(vmode(v) == 'xla' for v in case[4])
        data['cases'].append(res)
        loads.append(res['load'][0])
        with open(a.json + '.partial', 'w') as f:  # the cases so far, should the run be cut short
          json.dump(data, f, default=str)
      if not a.only and not a.vs_torch_best and not a.table:
        nb, ns = (4, 3) if a.quick else (8, 12)
        for key, dtype in (('numerics', 'bfloat16'), ('numerics_fp32', 'float32')):
          log(f'numerics ({dtype} vs fp32 with direct convolutions)')
          num = workers['ours'].call(cmd='numerics', dtype=dtype, steps=ns, batch=nb)
          num['batch'] = nb
          data[key] = num
          log(f'  output rel L2 {num["output_rel_l2"]}, losses {num["loss_fp32"][-1]:.4f} vs '
              f'{num["loss_low"][-1]:.4f}')
  finally:
    for w in workers.values():
      w.close()

  mb = 16 if a.quick else 64
  specs = [('ours', f'train:cifar32:{mb}:float32'), ('diffusers', f'train:cifar32:{mb}:float32'),
           ('ours', f'train:cifar32:{mb}:bfloat16')]
  if not a.no_diffusers_bf16:
    specs.append(('diffusers', f'train:cifar32:{mb}:bfloat16'))
  if a.isa != 'native':
    specs = [sp for sp in specs if sp[1].endswith('float32')]
  if (a.only or a.vs_torch_best or a.table) and not a.memory:
    specs = []
  log('peak memory (fresh processes)')
  data['memory'] = memory_runs(specs, a.threads, log, a.isa, a.torch_python)
  load_end = os.getloadavg()
  loads.append(load_end[0])
  data['load'] = {'start': load_start, 'end': load_end, 'max': max(loads)}
  hashes = [r.get('library_hashes') for k, r in data['memory'].items() if k.startswith('ours|')]
  if any(h != data['library_hashes'] for h in hashes):
    data['notes'].append('The library files changed during the run (memory runs imported '
                         f'different versions: {hashes} vs {data["library_hashes"]}).')
  data['wall_s'] = time.time() - t_start
  data['targets'] = targets(data)
  with open(a.json, 'w') as f:
    json.dump(data, f, indent=1, default=str)
  write_report(a.out, data)
  log(f'wrote {a.out} and {a.json}')
  for line in data['targets']:
    log(line)


if __name__ == '__main__':
  main()
