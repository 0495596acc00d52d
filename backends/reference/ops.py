"""The quantization contract, written to be read.

For ``y = x @ W.T + b`` with a packed int8 weight ``W`` (scale ``sw[n]``, zero
point ``zw[n]``, per tensor or per output channel):

* activations are quantized **symmetrically to int8**: ``s = absmax / 127``
  per row (``per_row``, the default) or over the whole tensor
  (``per_tensor``); ``q = clamp(round_half_even(x / s), -127, 127)``; a row
  (tensor) of zeros uses ``s = 1``;
* ``y[m, n] = s[m] * sw[n] * sum_k q[m, k] * (W[n, k] - zw[n]) + b[n]``,
  the sum exact (int32 in the kernels);
* ReLU, when asked, is applied last;
* a row whose activations contain NaN or +-Inf yields NaN for that whole row
  (the whole tensor in ``per_tensor`` mode): a finite answer would be wrong.

``reduce_range`` exists in PyTorch's op to keep fbgemm's u8 x s8 pair sums
inside int16; int32 accumulation of int8 x int8 cannot saturate that way, so
it is accepted and ignored here (as qnnpack does).

``activation_scale: pytorch`` instead reproduces PyTorch's own activation
quantization: per-tensor asymmetric uint8 with PyTorch's choice of scale and
zero point, see :mod:`backends.common.pytorch_qparams`; the sum is the same
exact integer math on ``(q - zp_x)``, never fbgemm's int16 saturation. With
``reduce_range`` the activations are 7-bit where PyTorch's own kernel for the
packed weight makes them so: the engine that **packed** the weight decides
(fbgemm, x86 and onednn apply it, qnnpack ignores it), as in PyTorch, whose op
dispatches on the packed weight's class. :func:`linear_dynamic` asks PyTorch's
kernel for each call's weight (``reduce_range_applies``); the arm backend asks
once per prepared weight. :func:`linear_from_unpacked` takes the decision as
given (an unpacked weight has no engine).
"""

from __future__ import annotations

import math

import torch

from opregistry.backends.common import LINEAR_DYNAMIC, UnpackedWeight, check_activation, unpack_weight
from opregistry.backends.common.pytorch_qparams import choose_qparams, reduce_range_applies

QMAX = 127


def quantize_activation(x2d: torch.Tensor, mode: str = "per_row") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(q, s)``: integer-valued float32 ``q`` in [-127, 127] and scale ``s`` ([M, 1] or [1, 1])."""
    if mode == "per_row":
        absmax = x2d.abs().amax(dim=1, keepdim=True)
    elif mode == "per_tensor":
        absmax = x2d.abs().amax().reshape(1, 1)
    else:
        raise ValueError(f"activation_scale: expected per_row, per_tensor or pytorch, got {mode!r}")
    scale = torch.where(absmax == 0, torch.ones_like(absmax), absmax / QMAX)
    q = torch.round(x2d / scale).clamp(-QMAX, QMAX)
    return q, scale


def quantize_activation_pytorch(x2d: torch.Tensor, reduce_range: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's uint8 scheme; return ``(q - zp, s)`` with ``s`` of shape [1, 1]
    (NaN when the tensor has a non-finite value)."""
    lo, hi = x2d.min().item(), x2d.max().item()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return torch.zeros_like(x2d), torch.full((1, 1), float("nan"))
    p = choose_qparams(lo, hi, reduce_range)
    q = (torch.round(x2d * p.inv_scale) + p.zero_point).clamp(0, 255)
    return q - p.zero_point, torch.full((1, 1), p.scale)


def linear_from_unpacked(x: torch.Tensor, w: UnpackedWeight, relu: bool = False,
                         activation_scale: str = "per_row", reduce_range: bool = False) -> torch.Tensor:
    check_activation(x, w.in_features)
    x2d = x.reshape(-1, w.in_features)
    out_shape = (*x.shape[:-1], w.out_features)
    if x2d.shape[0] == 0:
        return x.new_zeros(out_shape)
    if activation_scale == "pytorch":
        q, s = quantize_activation_pytorch(x2d, reduce_range)
    else:
        q, s = quantize_activation(x2d, activation_scale)
    w_centered = w.w_int8.double() - w.zero_point.double()[:, None]
    acc = q.double() @ w_centered.T                      # exact: integers below 2**53
    y = acc * (s.double() * w.scale.double()[None, :])
    if w.bias is not None:
        y = y + w.bias.double()
    if relu:
        y = y.clamp_min(0)
    y = torch.where(torch.isfinite(s).expand_as(y), y, torch.full_like(y, float("nan")))
    return y.to(torch.float32).reshape(out_shape)


def linear_dynamic(x: torch.Tensor, w_prepack, reduce_range: bool = False, *, relu: bool = False,
                   activation_scale: str = "per_row") -> torch.Tensor:
    """``quantized::linear_dynamic`` under the project's contract (``reduce_range``
    as PyTorch's own kernel for ``w_prepack`` applies it, in ``pytorch`` mode)."""
    w = unpack_weight(w_prepack, LINEAR_DYNAMIC)
    if activation_scale == "pytorch" and reduce_range:
        reduce_range = reduce_range_applies(w_prepack, w.in_features)
    return linear_from_unpacked(x, w, relu, activation_scale, reduce_range)
