"""Moved to `diffusion_tf.metrics.eval_worker`; this name stays importable (the same module)."""
import sys

from ..metrics import eval_worker as _moved

sys.modules[__name__] = _moved
