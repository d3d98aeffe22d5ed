"""Moved to `diffusion_tf.metrics.digits_features`; this name stays importable (the same module)."""
import sys

from ..metrics import digits_features as _moved

sys.modules[__name__] = _moved
