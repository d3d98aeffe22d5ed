"""benchmarks/run.py: the AVX2 cap and the comparison with PyTorch at its best (no workers run)."""

import importlib.util
import os

import pytest

_spec = importlib.util.spec_from_file_location(
    'bench_run', os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks', 'run.py'))
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)


def test_avx2_cap_env_reaches_both_frameworks():
  env = run._env('avx2')
  assert env['ONEDNN_MAX_CPU_ISA'] == 'AVX2'          # TF's and torch's oneDNN
  assert env['ATEN_CPU_CAPABILITY'] == 'avx2'         # torch eager kernels and inductor
  assert env['DIFFUSION_TF_KERNEL_ARCH'] == 'x86-64-v3'  # our fused kernels
  native = run._env('native')
  for k in ('ONEDNN_MAX_CPU_ISA', 'ATEN_CPU_CAPABILITY', 'DIFFUSION_TF_KERNEL_ARCH'):
    assert native.get(k) == os.environ.get(k)


@pytest.mark.parametrize('flags,isa', [
    ('avx2 avx512f amx_tile', 'AVX-512 + AMX'), ('avx2 avx512f', 'AVX-512'), ('avx2', 'AVX2'),
    ('sse4_2', 'older than AVX2 (or not x86)')])
def test_native_isa_names_the_widest_vector_set(flags, isa):
  assert run.native_isa(flags.split()) == isa


def test_avx2_plan_measures_float32_only():
  for case in run.plan(quick=False, xla=False, with_diffusers_bf16=True, fp32_only=True):
    assert case[4] and all(v[1] == 'float32' for v in case[4]), case


def test_vs_torch_best_plan_and_fastest_variant():
  cases = run.plan(quick=False, xla=False, with_diffusers_bf16=True, vs_torch_best=True)
  assert {(c[1], c[3]) for c in cases} == {('forward', 16), ('forward', 64), ('train', 16),
                                            ('train', 64)}
  for c in cases:
    assert set(map(run.vname, c[4])) == {'ours/float32', 'diffusers/float32',
                                          'diffusers/float32/channels_last',
                                          'diffusers/float32/compile'}
  case = {'results': {'ours/float32': {'median': 1.0}, 'diffusers/float32': {'median': 2.0},
                      'diffusers/float32/channels_last': {'median': 1.5},
                      'diffusers/float32/compile': {'median': 1.7}}}
  assert run.fastest_torch(case) == ('diffusers/float32/channels_last', {'median': 1.5})


class _FakeWorker:
  """Answers setup/time/tracing/drop like benchmarks/worker.py; dies on setup of `dies_on`."""

  def __init__(self, dies_on=(), seconds=0.5):
    self.dies_on, self.calls, self.ready, self.seconds = set(dies_on), [], set(), seconds

  def call(self, cmd, **msg):
    self.calls.append((cmd, msg.get('key')))
    if cmd == 'setup' and msg['key'].split('|')[-1] in self.dies_on:
      raise RuntimeError('diffusers worker died (see benchmarks/.worker_logs)')
    if cmd == 'setup':
      self.ready.add(msg['key'])
      return {'setup_s': 0.1, 'warmup_times': [0.1], 'tracing_after_warmup': 1}
    if cmd == 'time':
      assert msg['key'] in self.ready, f'{msg["key"]} timed before its setup in this worker'
      return {'times': [self.seconds], 'cpu_times': [self.seconds]}
    if cmd == 'tracing':
      return {'tracing': {k: 1 for _, k in self.calls if k}}
    return {}


def test_a_variant_that_kills_its_worker_is_left_out_and_the_worker_restarted():
  # diffusers' torch.compile training step segfaulted under ATEN_CPU_CAPABILITY=avx2: the
  # run must keep the case's other variants and go on with a fresh worker.
  case = next(c for c in run.plan(quick=False, xla=False, with_diffusers_bf16=True, vs_torch_best=True)
              if c[1] == 'train' and c[3] == 64)
  case = case[:5] + (2, 1)
  workers = {'ours': _FakeWorker(), 'diffusers': _FakeWorker(dies_on={'compile'}, seconds=1.0)}
  restarted = []

  def restart(fw):
    restarted.append(fw)
    workers[fw] = _FakeWorker(seconds=1.0)

  res = run.run_case(workers, case, lambda *_: None, restart=restart)
  assert restarted == ['diffusers']
  assert set(res['failed']) == {'diffusers/float32/compile'}
  assert set(res['results']) == {'ours/float32', 'diffusers/float32', 'diffusers/float32/channels_last'}
  lines = []
  run.add_torch_best(lines.append, [res], {'machine': {'isa': 'AVX2'}, 'isa': 'native'})
  row = next(l for l in lines if l.startswith('| train'))
  assert row.split(' | ')[4] == 'worker crashed' and row.endswith('**2.00×** (eager) |')
  with pytest.raises(RuntimeError, match='worker died'):  # without a restart hook: loud
    run.run_case({'ours': _FakeWorker(), 'diffusers': _FakeWorker(dies_on={'compile'})}, case,
                 lambda *_: None)


def test_select_cases_keeps_the_named_cells_and_variants():
  # The 256x256 fp32 training step is measured one diffusers configuration per run (two in
  # one worker ran out of memory): --only picks the cell, --variants the configurations.
  cases = run.select_cases(run.table_plan(quick=False), only='train:big256:4',
                           variants='ours/float32,diffusers/float32/channels_last')
  assert [(c[1], c[2], c[3]) for c in cases] == [('train', 'big256', 4)]
  assert list(map(run.vname, cases[0][4])) == ['ours/float32', 'diffusers/float32/channels_last']
  bf16 = run.select_cases(run.table_plan(quick=False), no_compile=True, dtype='bfloat16', repeats=1)
  assert bf16 and all(v[1] == 'bfloat16' and run.vmode(v) != 'compile' for c in bf16 for v in c[4])
  assert {c[5] for c in bf16} == {1}
  assert run.select_cases(run.table_plan(quick=False), variants='ours/float16') == []


def _table():
  import sys
  bench = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks')
  sys.path.insert(0, bench)
  try:
    spec = importlib.util.spec_from_file_location('bench_table', os.path.join(bench, 'table.py'))
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
  finally:
    sys.path.remove(bench)
  return table


def _run_json(results, load=1.0, isa='native', threads=2):
  case = {'name': 'train', 'kind': 'train', 'model': 'big256', 'batch': 4, 'label': 'train big256 b4',
          'results': {k: run.stats(v) for k, v in results.items()},
          'cpu': {k: run.stats(v) for k, v in results.items()}, 'load': [load, load, load]}
  return {'isa': isa, 'threads': threads, 'date': '2026-12-03 15:00', 'cases': [case]}


def test_table_merges_the_runs_of_one_cell_into_one_row():
  table = _table()
  eager = _run_json({'ours/float32': [20.0, 22.0], 'diffusers/float32': [70.0, 72.0]})
  cl = _run_json({'diffusers/float32/channels_last': [50.0, 52.0]}, load=1.5)
  comp = _run_json({'ours/float32': [21.0, 23.0], 'diffusers/float32/compile': [44.0, 46.0]})
  merged = table.merge([eager, cl, comp])
  (case,) = merged['cases']
  assert set(case['results']) == {'ours/float32', 'diffusers/float32',
                                  'diffusers/float32/channels_last', 'diffusers/float32/compile'}
  assert case['results']['ours/float32']['samples'] == [20.0, 22.0, 21.0, 23.0]  # pooled
  assert case['results']['ours/float32']['median'] == 21.5
  assert case['load'][0] == 1.5
  (row,) = table.cells(merged, None)
  assert row['torch'] == '45.00 s (torch.compile)' and row['r_plain'] == '**2.09×**'
  with pytest.raises(SystemExit, match='differ in ISA'):
    table.merge([eager, _run_json({'diffusers/float32': [1.0]}, isa='avx2')])
