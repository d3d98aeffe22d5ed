"""Fused CPU kernels, compiled once per machine with the local C++ compiler.

`group_norm_op.cc` fuses GroupNorm (+ swish) into one forward and one backward kernel;
`adam_ema_op.cc` fuses the clipped Adam step and the EMA of the weights into one pass;
`winograd_op.cc` has the tile transforms of the Winograd 3x3 convolution (`nn.conv3x3_winograd`).
They are built into one library on first use against the installed TensorFlow's headers
(``tf.sysconfig``), cached under ``$DIFFUSION_TF_CACHE`` (default
``~/.cache/diffusion_tf``; the temp directory if that is not writable) in a file named by a hash of the source, the TF version and
the flags, and loaded with ``tf.load_op_library``. Anything that goes wrong (no
compiler, a compile or load error) gives one warning and `fused_lib` returns
None: callers then use the plain TensorFlow ops, which compute the same thing.
``DIFFUSION_TF_FUSED_OPS=0`` turns the kernels off. ``DIFFUSION_TF_KERNEL_ARCH`` picks the
instruction set they are compiled for: ``native`` (default, ``-march=native``: this CPU),
``x86-64-v3`` (AVX2 + FMA, as on most x86 machines of the last decade) or any other
``-march`` value of the compiler; it is part of the library's file name.
"""

import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import tensorflow as tf

ENV_SWITCH = 'DIFFUSION_TF_FUSED_OPS'
ENV_CACHE = 'DIFFUSION_TF_CACHE'
ENV_ARCH = 'DIFFUSION_TF_KERNEL_ARCH'
_SOURCES = [Path(__file__).with_name(n) for n in ('group_norm_op.cc', 'adam_ema_op.cc', 'winograd_op.cc')]
_HEADERS = [Path(__file__).with_name('kernel_common.h')]
_COMPILE_TIMEOUT_S = 600

_lock = threading.Lock()
_loaded = {}  # 'kernels' -> module or None (None: tried and failed, or switched off)


def enabled_by_env():
  return os.environ.get(ENV_SWITCH, '1').strip().lower() not in ('0', 'false', 'no', 'off')


def cache_dir():
  return Path(os.environ.get(ENV_CACHE) or Path.home() / '.cache' / 'diffusion_tf') / 'ops'


def _cpu_flags():
  """The CPU's instruction-set flags: /proc/cpuinfo's 'flags' (x86) or 'Features' (ARM)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(('flags', 'Features')):
          return set(line.split(':', 1)[1].split())
  except OSError:
    pass
  return set()


class KernelArchError(ValueError):
  """DIFFUSION_TF_KERNEL_ARCH names no instruction set the compiler knows: a user error,
  raised rather than silently falling back to the plain TF ops."""


def kernel_arch():
  """The ``-march`` value the kernels are built for (``DIFFUSION_TF_KERNEL_ARCH``)."""
  arch = os.environ.get(ENV_ARCH, '').strip() or 'native'
  # Goes into a compiler argument and a file name: one word such as 'x86-64-v3', 'znver3',
  # 'armv8.2-a+fp16'.
  if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_.+-]*', arch):
    raise KernelArchError(
        f'{ENV_ARCH}={arch!r}: expected native (this CPU, the default), x86-64-v3 (AVX2 + '
        f'FMA) or another -march value of the C++ compiler (letters, digits, . _ + -)')
  return arch


def _compile_commands(cxx, out):
  """One compile command per source (run side by side: ~12 s instead of ~21 s on 2 cores),
  then the link command into ``out``."""
  arch = kernel_arch()
  flags = [f'-march={arch}']
  # Eigen's AVX512-FP16 packet code does not compile with GCC 12; TF itself is not built
  # with it, so leave it off (float16 tensors are converted to float32 row by row anyway).
  # Only -march=native on such an x86 CPU turns it on.
  if arch == 'native' and _is_x86() and 'avx512_fp16' in _cpu_flags():
    flags.append('-mno-avx512fp16')
  # No FMA contraction: the Adam kernel then rounds exactly like TF's own optimizer kernels.
  flags = ['-fPIC', '-O3', '-w', '-ffp-contract=off', *flags, *tf.sysconfig.get_compile_flags()]
  objects = [f'{out}.{source.stem}.o' for source in _SOURCES]
  compiles = [[cxx, '-c', *flags, str(source), '-o', obj] for source, obj in zip(_SOURCES, objects)]
  return compiles + [[cxx, '-shared', *objects, '-o', str(out), *tf.sysconfig.get_link_flags()]]


def _run_compiler(commands, cxx):
  """Runs the compile commands side by side, then the link; raises with the compiler's words."""
  *compiles, link = commands
  procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
           for c in compiles]
  try:
    results = [(p.wait(timeout=_COMPILE_TIMEOUT_S), p.stderr.read()) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.stderr.close()
  for code, err in results:
    if code and kernel_arch() != 'native' and '-march' in err:
      raise KernelArchError(f'{ENV_ARCH}={kernel_arch()}: {cxx} does not build for it:\n' + err[-2000:])
    if code:
      raise RuntimeError(f'{cxx} exited with {code}:\n' + err[-2000:])
  proc = subprocess.run(link, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
  if proc.returncode:
    raise RuntimeError(f'{cxx} (linking) exited with {proc.returncode}:\n' + proc.stderr[-2000:])


def _is_x86():
  return platform.machine().lower() in ('x86_64', 'amd64', 'i686', 'i386')


def library_name(cxx):
  """File name of the built library: a hash of what it is built from and for."""
  key = hashlib.sha256()
  for source in _SOURCES + _HEADERS:
    key.update(source.read_bytes())
  key.update(repr(_compile_commands(cxx, 'OUT')).encode())
  key.update(tf.__version__.encode())
  arch = kernel_arch()
  if arch == 'native':
    # -march=native code may not run on another CPU sharing this cache (e.g. a network home
    # directory on a cluster): a CPU with other instruction sets gets its own build. A named
    # arch builds the same code on every CPU, so the CPU's flags are not part of its key.
    key.update(' '.join(sorted(_cpu_flags())).encode())
  return f'kernels_{arch}_{key.hexdigest()[:16]}.so'


def _build(cxx):
  """Compiles the kernel into the cache (atomically) unless it is there; returns its path."""
  name = library_name(cxx)
  target = cache_dir() / name
  if target.exists():
    return target
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(target.parent, os.W_OK):
      raise PermissionError(f'{target.parent} is not writable')
  except OSError:  # e.g. a read-only home directory: build in the temp directory instead
    target = Path(tempfile.gettempdir()) / f'diffusion_tf_ops_{os.getuid()}' / name
    if target.exists():
      return target
    target.parent.mkdir(parents=True, exist_ok=True)
  logging.getLogger(__name__).warning(
      'diffusion_tf: compiling the fused CPU kernels into %s (once per machine, ~15 s)',
      target)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=target.parent)
  os.close(fd)
  commands = _compile_commands(cxx, tmp)
  try:
    _run_compiler(commands, cxx)
    os.replace(tmp, target)  # concurrent builders (e.g. two workers) each replace atomically
  finally:
    for leftover in [tmp] + [c[-1] for c in commands[:-1]]:  # the .so and each compile's object
      if os.path.exists(leftover):
        os.remove(leftover)
  return target


@tf.autograph.experimental.do_not_convert  # called while tracing; plain Python file checks
def fused_lib():
  """The loaded op library (``diffusion_group_norm``, ``diffusion_group_norm_grad``,
  ``diffusion_adam_ema``, ``diffusion_winograd_*``) or None."""
  with _lock:
    if 'kernels' not in _loaded:
      _loaded['kernels'] = _load()
    return _loaded['kernels']


def _load():
  if not enabled_by_env():
    return None
  cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if cxx is None:
    warnings.warn('diffusion_tf: no C++ compiler found (g++/c++/$CXX); GroupNorm, the '
                  '3x3 convolutions and the optimizer use the slower TensorFlow ops. Install g++ to get the fused CPU '
                  'kernels.')
    return None
  try:
    return tf.load_op_library(str(_build(cxx)))
  except KernelArchError:
    raise
  except Exception as e:  # any failure means: fall back, say why once
    warnings.warn(f'diffusion_tf: the fused CPU kernels are unavailable, using the plain '
                  f'TensorFlow ops instead ({type(e).__name__}: {e})')
    return None
