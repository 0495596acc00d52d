"""PyTorch's choice of activation qparams for ``quantized::linear_dynamic``.

The fbgemm/x86 op quantizes the whole activation tensor to uint8 with
ChooseQuantizationParams(min, max, qmin=0, qmax=255, reduce_range): the range
widened to include 0, ``scale = (max - min) / (qmax - qmin)`` in double, a
0-or-overflowing scale replaced by 0.1, scales under 6.1e-5 raised to it (and
the range stretched), the zero point from whichever end loses less precision,
nudged into [qmin, qmax] and rounded half to even. ``reduce_range`` halves
qmin/qmax (7-bit values). Values are then ``clamp(rne(x * (1/scale)) + zp, 0, 255)``
with the reciprocal in fp32. Written out here in float32/float64 as PyTorch's
C++ does; tests/test_pytorch_scheme.py checks it against
``torch._choose_qparams_per_tensor`` and the op itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SMALL_SCALE_THRESHOLD = np.float32(6.1e-5)


@dataclass(frozen=True)
class PyTorchQParams:
    scale: float          # the fp32 scale, as a Python float
    inv_scale: float      # fp32 1/scale, as PyTorch multiplies by it
    zero_point: int


def choose_qparams(x_min: float, x_max: float, reduce_range: bool) -> PyTorchQParams:
    qmin, qmax = (0, 127) if reduce_range else (0, 255)
    lo = min(np.float32(x_min), np.float32(0.0))
    hi = max(np.float32(x_max), np.float32(0.0))
    scale = (float(hi) - float(lo)) / (qmax - qmin)                  # double
    if np.float32(scale) == 0 or math.isinf(np.float32(1.0) / np.float32(scale)):
        scale = 0.1
    if scale < SMALL_SCALE_THRESHOLD:
        original = np.float32(scale)
        scale = float(SMALL_SCALE_THRESHOLD)
        if lo == 0:
            hi = SMALL_SCALE_THRESHOLD * np.float32(qmax - qmin)
        elif hi == 0:
            lo = -SMALL_SCALE_THRESHOLD * np.float32(qmax - qmin)
        else:
            amplifier = SMALL_SCALE_THRESHOLD / original
            lo, hi = lo * amplifier, hi * amplifier
    from_min = qmin - float(lo) / scale
    from_max = qmax - float(hi) / scale
    from_min_error = abs(qmin) - abs(float(lo) / scale)
    from_max_error = abs(qmax) - abs(float(hi) / scale)
    initial = from_min if from_min_error < from_max_error else from_max
    zero_point = qmin if initial < qmin else qmax if initial > qmax else int(round(initial))  # half to even
    scale32 = np.float32(scale)
    return PyTorchQParams(float(scale32), float(np.float32(1.0) / scale32), zero_point)
