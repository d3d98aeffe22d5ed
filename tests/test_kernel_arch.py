"""DIFFUSION_TF_KERNEL_ARCH: the instruction set the fused kernels are compiled for
(native by default; x86-64-v3 to run as on an AVX2 machine), part of the library's name."""

import shutil

import pytest

from diffusion_tf import ops


def test_arch_is_part_of_the_name_and_only_native_hashes_the_cpu(monkeypatch):
  monkeypatch.delenv(ops.ENV_ARCH, raising=False)
  monkeypatch.setattr(ops, '_cpu_flags', lambda: {'sse2', 'avx2', 'avx512f'})
  native = ops.library_name('g++')
  assert native.startswith('kernels_native_')
  *compiles, link = ops._compile_commands('g++', 'OUT')
  assert len(compiles) == len(ops._SOURCES) and all('-march=native' in c for c in compiles)
  assert link[:2] == ['g++', '-shared'] and all(c[-1] in link for c in compiles)
  monkeypatch.setenv(ops.ENV_ARCH, 'x86-64-v3')
  v3 = ops.library_name('g++')
  assert v3.startswith('kernels_x86-64-v3_') and v3 != native
  for command in ops._compile_commands('g++', 'OUT')[:-1]:
    assert '-march=x86-64-v3' in command and '-march=native' not in command
  # An x86-64-v3 build is the same code whatever CPU builds it; a native one is not.
  monkeypatch.setattr(ops, '_cpu_flags', lambda: {'sse2', 'avx2'})
  assert ops.library_name('g++') == v3
  monkeypatch.delenv(ops.ENV_ARCH)
  assert ops.library_name('g++') != native


@pytest.mark.parametrize('value', ['-O0', 'x86-64 -v3', 'native;rm', '../x'])
def test_malformed_arch_is_a_clear_error(monkeypatch, value):
  monkeypatch.setenv(ops.ENV_ARCH, value)
  with pytest.raises(ops.KernelArchError, match=f'{ops.ENV_ARCH}=.*expected native'):
    ops._load()


@pytest.mark.skipif(shutil.which('g++') is None, reason='no C++ compiler on this machine')
def test_arch_the_compiler_does_not_know_is_a_clear_error(tmp_path, monkeypatch):
  """Not a silent fall-back to the slower ops: the user asked for this instruction set."""
  monkeypatch.setenv(ops.ENV_ARCH, 'no-such-cpu')
  monkeypatch.setenv(ops.ENV_CACHE, str(tmp_path))
  monkeypatch.setenv('CXX', shutil.which('g++'))
  with pytest.raises(ops.KernelArchError, match=f'{ops.ENV_ARCH}=no-such-cpu: .* does not build for it'):
    ops._load()
  assert not list(tmp_path.rglob('*.so'))
