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
