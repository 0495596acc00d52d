"""Pieces shared by the backends: reading packed weights, the Triton int8
linear kernel, the prepared-weight cache, routing. Not a backend itself."""

from .packed import (LINEAR_DYNAMIC, LINEAR_OPS, LINEAR_RELU_DYNAMIC, UnpackedWeight, check_activation,
                     unpack_weight)

__all__ = ["LINEAR_DYNAMIC", "LINEAR_OPS", "LINEAR_RELU_DYNAMIC", "UnpackedWeight", "check_activation",
           "unpack_weight"]
