"""Moved to `diffusion_tf.metrics.inception`; this name stays importable (the same module)."""
import sys

from ..metrics import inception as _moved

sys.modules[__name__] = _moved
