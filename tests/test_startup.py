"""A quiet start: TensorFlow's no-GPU noise is filtered from our commands' stderr (real
errors and warnings are not), a user's TF_CPP_MIN_LOG_LEVEL is left alone, and commands
say which device they run on."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from diffusion_tf import startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CAPTURED = '''WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796178810.468653   14622 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796178810.511927   14622 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796178813.946172   14622 cpu_feature_guard.cc:227] This TensorFlow binary is optimized
To enable the following instructions: AVX2 FMA, rebuild TensorFlow.
E0000 00:00:1796179031.232787   14622 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
W0000 00:00:1796179031.300000   14622 some_op.cc:10] a real warning
E0000 00:00:1796179031.400000   14622 other.cc:20] a real error
  with its second line
/path/x.py:3: UserWarning: a Python warning
'''


def test_filter_drops_only_info_and_no_gpu_noise():
  out = startup.filter_startup_log(_CAPTURED, has_gpu_driver=False)
  assert out == ('W0000 00:00:1796179031.300000   14622 some_op.cc:10] a real warning\n'
                 'E0000 00:00:1796179031.400000   14622 other.cc:20] a real error\n'
                 '  with its second line\n'
                 '/path/x.py:3: UserWarning: a Python warning\n')
  # With an NVIDIA driver installed a failing cuInit is a real problem: it is shown.
  assert 'failed call to cuInit' in startup.filter_startup_log(_CAPTURED, has_gpu_driver=True)


def _run(args, env_update):
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'DIFFUSION_TF_SET_LOG_LEVEL')}
  env.update(env_update)
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.slow
def test_script_starts_without_cuda_noise(tmp_path):
  """A command that fails fast (no checkpoint there) shows its error, not TF's start-up log."""
  proc = _run(['scripts/run_digits.py', 'sample', '--model_dir', str(tmp_path / 'missing')], {})
  assert proc.returncode != 0
  assert 'not found' in proc.stderr  # our error message gets through
  noisy = [line for line in proc.stderr.splitlines()
           if 'cuda' in line.lower() or 'cuinit' in line.lower() or line.startswith('I0000')
           or 'absl::InitializeLog' in line]
  assert not noisy


@pytest.mark.slow
def test_users_log_level_is_respected():
  proc = _run(['-c', 'import os, diffusion_tf; print(os.environ["TF_CPP_MIN_LOG_LEVEL"])'],
              {'TF_CPP_MIN_LOG_LEVEL': '0'})
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == '0'
  proc = _run(['-c', 'import os, diffusion_tf; print(os.environ["TF_CPP_MIN_LOG_LEVEL"])'], {})
  assert proc.stdout.strip() == '1'  # our default: TF's INFO lines off, warnings and errors on


def test_device_line_printed_once(capsys, monkeypatch):
  monkeypatch.setattr(startup, '_announced', set())  # as in a fresh process
  strategy = tf.distribute.get_strategy()
  startup.announce_devices(strategy)
  startup.announce_devices(strategy)
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith('Device: ')]
  line = startup.describe_devices(strategy)
  assert lines == [f'Device: {line}']
  if not tf.config.list_physical_devices('GPU'):
    cores = len(os.sched_getaffinity(0))
    assert line.startswith('CPU (') and f'{cores} cores' in line


@pytest.mark.parametrize('flags,env,unit', [
    ({'avx2', 'avx512f', 'avx512_bf16'}, {}, 'AVX512_BF16'),  # AMD Zen 4/5
    ({'avx512_bf16', 'amx_bf16', 'amx_tile'}, {}, 'AMX'),    # Intel Sapphire Rapids and later
    ({'avx2', 'avx512f'}, {}, None),                          # no bf16 unit: emulated, slower
    ({'avx512_bf16'}, {'ONEDNN_MAX_CPU_ISA': 'AVX2'}, None),  # oneDNN capped below bf16
    ({'avx512_bf16'}, {'ONEDNN_MAX_CPU_ISA': 'avx512_core_bf16'}, 'AVX512_BF16'),
    ({'amx_bf16'}, {'TF_ENABLE_ONEDNN_OPTS': '0'}, None),     # Eigen's bf16 instead of oneDNN's
])
def test_native_bf16_is_a_bf16_unit_that_onednn_may_use(monkeypatch, flags, env, unit):
  monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
  monkeypatch.delenv('TF_ENABLE_ONEDNN_OPTS', raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setattr(startup, '_cpuinfo', lambda: ('a CPU', set(flags)))
  assert startup.native_bf16() == unit
