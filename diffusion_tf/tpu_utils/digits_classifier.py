"""Moved to `diffusion_tf.metrics.digits_classifier`; this name stays importable (the same module)."""
import sys

from ..metrics import digits_classifier as _moved

sys.modules[__name__] = _moved
