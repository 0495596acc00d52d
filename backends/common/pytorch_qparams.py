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

Which engines apply ``reduce_range``: PyTorch's op calls
``W_prepack->apply_dynamic(X, reduce_range)`` on the packed weight's own C++
class, so **the engine that packed the weight decides**, not the engine in
effect at the call. Measured on torch 2.13 (tests/test_pytorch_scheme.py pins
it): weights packed under ``fbgemm``, ``x86`` and ``onednn`` narrow the
activations to 7 bits when asked; weights packed under ``qnnpack`` ignore
``reduce_range`` (8 bits always; PyTorch warns once that it does). There is
no public accessor for the packing engine, so :func:`reduce_range_applies`
asks PyTorch's own kernel once per weight, when the weight is prepared.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

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


def reduce_range_applies(w_prepack, in_features: int) -> bool:
    """Whether PyTorch's own ``linear_dynamic`` kernel, for this packed weight,
    narrows the activations to 7 bits when called with ``reduce_range=True``.

    Asked of the kernel itself through ``_quantized::linear_dynamic`` (the same
    C++ kernel as ``quantized::linear_dynamic`` under another name, which no
    backend overrides): two rows spanning [0, 255] whose values differ between
    8-bit (scale 1) and 7-bit (scale 255/127) quantization in every column are
    run with ``reduce_range`` True and False. The outputs differ unless the
    weight is blind to that difference (e.g. every weight equals its zero
    point), when either answer gives PyTorch's result on it. Without that op
    (it exists in every torch this project supports), the engine in effect
    decides: ``qnnpack`` ignores ``reduce_range``, the others apply it.
    """
    op = getattr(getattr(torch.ops, "_quantized", None), "linear_dynamic", None)
    if op is None or in_features < 1:
        return torch.backends.quantized.engine != "qnnpack"
    g = torch.Generator().manual_seed(20261130)
    probe = torch.rand(2, in_features, generator=g, dtype=torch.float32) * 253 + 1    # in [1, 254)
    probe[:, 0] = 255.0
    if in_features > 1:
        probe[:, 1] = 0.0
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            narrowed = op(probe, w_prepack, True)
            full = op(probe, w_prepack, False)
        except Exception:  # noqa: BLE001 - a weight PyTorch's kernel rejects: fall back to the engine rule
            return torch.backends.quantized.engine != "qnnpack"
    return not torch.equal(narrowed.nan_to_num(), full.nan_to_num())
