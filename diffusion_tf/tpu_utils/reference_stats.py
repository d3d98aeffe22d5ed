"""Moved to `diffusion_tf.metrics.reference_stats`; this name stays importable (the same module)."""
import sys

from ..metrics import reference_stats as _moved

sys.modules[__name__] = _moved
