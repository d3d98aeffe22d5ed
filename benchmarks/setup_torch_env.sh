#!/usr/bin/env bash
# Creates benchmarks/.venv-torch with a CPU-only torch 2.13.0 and diffusers, kept apart from
# the project's own (TensorFlow-only) requirements. The exact pin matters: on the benchmark
# machine a CPU wheel of torch 2.13.0 for Python 3.11 is available locally and pip picks it;
# an unpinned `pip install torch` would pull a multi-GB CUDA build.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
VENV="$HERE/.venv-torch"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --upgrade pip >/dev/null || true
"$VENV/bin/pip" install "torch==2.13.0" diffusers psutil scipy  # scipy: LMSDiscreteScheduler
"$VENV/bin/python" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
