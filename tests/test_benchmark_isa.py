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
