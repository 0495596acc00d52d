"""Reference backend: the project's quantization contract in plain PyTorch.

It is the oracle the other backends are tested against and a portable fallback.
"""

from .ops import linear_dynamic, quantize_activation

__all__ = ["linear_dynamic", "quantize_activation"]
