"""A quiet TensorFlow start and the one line saying which device a command runs on.

TensorFlow's GPU build writes C++ log lines to stderr while it is imported and while it
looks for devices ("Could not find cuda drivers", "failed call to cuInit ... (303)" on a
machine without a GPU). Most are printed before TF's ``TF_CPP_MIN_LOG_LEVEL`` is read, so the
variable alone cannot hide them; a new user reads them as a broken install. Unless the user
set ``TF_CPP_MIN_LOG_LEVEL`` (then TF prints what it prints), `import_tensorflow_quietly`
sets it to 1 (no INFO lines) and runs the import and the device scan with stderr captured,
then passes on every line except INFO lines, absl's "before InitializeLog" banner and,
when this machine has no NVIDIA driver, the CUDA errors that only say so. Warnings and
other errors are passed on unchanged.
"""

import contextlib
import os
import platform
import re
import sys
import tempfile

_LOG_LINE = re.compile(r'^([IWEF])\d{4} ')  # absl: severity, MMDD, time, thread, file:line]
_ABSL_BANNER = 'WARNING: All log messages before absl::InitializeLog() is called'
_NO_GPU_NOISE = ('failed call to cuInit', 'Could not find cuda drivers',
                 'Unable to register cuDNN factory', 'Unable to register cuFFT factory',
                 'Unable to register cuBLAS factory')
_OURS = 'DIFFUSION_TF_SET_LOG_LEVEL'  # marks TF_CPP_MIN_LOG_LEVEL as set by us, not the user
_announced = set()


def _has_nvidia_driver():
  return os.path.exists('/proc/driver/nvidia') or os.path.exists('/dev/nvidiactl')


def filter_startup_log(text, *, has_gpu_driver):
  """The lines of `text` (captured stderr) a user should see; see the module docstring.
  A log line's continuation lines (not starting a new entry) share its fate."""
  kept, keep = [], True
  for line in text.splitlines(keepends=True):
    m = _LOG_LINE.match(line)
    if m:
      keep = m.group(1) != 'I' and (has_gpu_driver or not any(s in line for s in _NO_GPU_NOISE))
    elif line.startswith(_ABSL_BANNER):
      continue
    if keep:
      kept.append(line)
  return ''.join(kept)


@contextlib.contextmanager
def _filtered_stderr():
  """Captures file descriptor 2 (C++ writes there directly) and replays it filtered."""
  sys.stderr.flush()
  try:
    saved = os.dup(2)
  except OSError:  # no file descriptor 2 (a closed stderr): nothing to filter
    yield
    return
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text = capture.read().decode(errors='replace')
      sys.stderr.write(filter_startup_log(text, has_gpu_driver=_has_nvidia_driver()))
      sys.stderr.flush()


def import_tensorflow_quietly():
  """Imports TensorFlow and scans its devices, quietly (module docstring). A no-op when
  TensorFlow is already imported or the user chose ``TF_CPP_MIN_LOG_LEVEL``."""
  # A child process (e.g. an evaluation worker) inherits the level we set: still ours.
  ours = os.environ.get(_OURS) == os.environ.get('TF_CPP_MIN_LOG_LEVEL') == '1'
  if 'tensorflow' in sys.modules or ('TF_CPP_MIN_LOG_LEVEL' in os.environ and not ours):
    return
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = os.environ[_OURS] = '1'
  if platform.machine() in ('x86_64', 'AMD64'):
    # Set to its x86 default, TF does not print that oneDNN is on (ARM's default differs).
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
  with _filtered_stderr():
    import tensorflow as tf
    tf.config.list_physical_devices()  # where the GPU platform is initialised (cuInit)


def _cpuinfo():
  """(model name or None, instruction-set flags) from /proc/cpuinfo (None, set() without it)."""
  model, flags = None, set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        key = key.strip()
        if key in ('model name', 'Model') and model is None:
          model = value.strip()
        elif key in ('flags', 'Features') and not flags:
          flags = set(value.split())
  except OSError:
    pass
  return model, flags


# /proc/cpuinfo flags of bf16 arithmetic units, and the oneDNN ISA caps (ONEDNN_MAX_CPU_ISA)
# that still let oneDNN use one: below them TF hands bf16 convolutions to a oneDNN with no
# kernel for them.
_BF16_UNITS = (('amx_bf16', 'AMX'), ('avx512_bf16', 'AVX512_BF16'))
_BF16_CAPS = ('BF16', 'AMX', 'FP16', 'AVX10', 'ALL', 'DEFAULT')


def native_bf16():
  """'AMX' or 'AVX512_BF16' if this CPU computes bfloat16 natively and TF's oneDNN may use it
  (not switched off by TF_ENABLE_ONEDNN_OPTS=0 nor capped below bf16 by ONEDNN_MAX_CPU_ISA),
  else None. Elsewhere bf16 runs emulated, slower than float32."""
  cap = os.environ.get('ONEDNN_MAX_CPU_ISA', '').upper()
  if os.environ.get('TF_ENABLE_ONEDNN_OPTS', '1').strip() in ('0', 'false', 'False'):
    return None
  if cap and not any(word in cap for word in _BF16_CAPS):
    return None
  flags = _cpuinfo()[1]
  return next((name for flag, name in _BF16_UNITS if flag in flags), None)


def _cpu_description():
  model, flags = _cpuinfo()
  model = model or platform.processor() or platform.machine()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  isa = next((name for flag, name in (('avx512f', 'AVX-512'), ('avx2', 'AVX2'), ('sve', 'SVE'),
                                      ('asimd', 'NEON')) if flag in flags), None)
  parts = [model, f'{cores} cores'] + ([isa] if isa else [])
  if os.environ.get('ONEDNN_MAX_CPU_ISA'):
    parts.append(f"oneDNN capped at {os.environ['ONEDNN_MAX_CPU_ISA']}")
  return f'CPU ({", ".join(parts)})'


def describe_devices(strategy):
  """One line: the devices `strategy` runs on, e.g. 'CPU (AMD EPYC, 2 cores, AVX-512)' or
  '2 GPUs (MirroredStrategy)'."""
  import tensorflow as tf
  kind = type(strategy).__name__
  n = strategy.num_replicas_in_sync
  if 'TPU' in kind:
    return f'TPU ({n} cores, {kind})'
  if kind.startswith('MultiWorker'):
    return f'{n} replicas on several workers ({kind})'
  if kind.startswith('Mirrored') or kind.startswith('CentralStorage'):
    return f'{n} devices ({kind})' if not tf.config.list_logical_devices('GPU') else f'{n} GPUs ({kind})'
  gpus = tf.config.list_physical_devices('GPU')
  if gpus:
    name = tf.config.experimental.get_device_details(gpus[0]).get('device_name', 'GPU')
    return f'GPU ({name})'
  return _cpu_description()


def announce_devices(strategy):
  """Prints 'Device: ...' for `strategy`, once per process and description."""
  line = describe_devices(strategy)
  if line not in _announced:
    _announced.add(line)
    print(f'Device: {line}', flush=True)
