"""Weights in the CUDA kernels' layout: plain ``[Np, Kp]`` int8, K contiguous.

Prepared once on the CPU from the packed weight (which stays on the CPU),
then moved to the device; the backend's :class:`~backends.common.weights.WeightCache`
owns the device copy (keyed by packed weight and device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backends.common import UnpackedWeight

from .kernels import K_ALIGN, N_ALIGN

INT32_MAX = 2**31 - 1
QMAX = 127


def _round_up(v: int, multiple: int) -> int:
    return -(-v // multiple) * multiple


@dataclass(frozen=True)
class CudaWeight:
    """``w [Np, Kp]`` int8 (zero padded), per-channel vectors padded to ``Np``.

    ``zero_point`` is ``None`` for symmetric weights (all zero points 0),
    ``bias`` is ``None`` when the layer has none.
    """

    w: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    bias: torch.Tensor | None
    n: int
    k: int

    @property
    def kp(self) -> int:
        return self.w.shape[1]

    @property
    def device(self) -> torch.device:
        return self.w.device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.w, self.scale, self.zero_point, self.bias) if t is not None)

    def to(self, device) -> "CudaWeight":
        move = lambda t: None if t is None else t.to(device, non_blocking=False)  # noqa: E731
        return CudaWeight(move(self.w), move(self.scale), move(self.zero_point), move(self.bias),
                          self.n, self.k)


def max_exact_k(w: UnpackedWeight) -> int:
    """Largest K for which ``K x 127 x max|w - zp|`` fits an int32 accumulator."""
    n, k = w.w_int8.shape
    centered = int((w.w_int8.to(torch.int32) - w.zero_point[:, None]).abs().max()) if n and k else 0
    return INT32_MAX // (QMAX * max(centered, 1))


def prepare_cuda_weight(w: UnpackedWeight, op: str) -> CudaWeight:
    """Pad to ``[Np, Kp]`` on the CPU; check the exact int32 accumulator bound."""
    n, k = w.w_int8.shape
    limit = max_exact_k(w)
    if k > limit:
        raise ValueError(f"{op}: K={k} is too large for an exact int32 accumulator with this weight "
                         f"(K x 127 x max|w - zero_point| > 2**31 - 1); the largest K for it is {limit}")
    kp, np_ = _round_up(max(k, 1), K_ALIGN), _round_up(max(n, 1), N_ALIGN)
    w_nk = torch.zeros(np_, kp, dtype=torch.int8)
    w_nk[:n, :k] = w.w_int8

    def padded(v: torch.Tensor | None, dtype) -> torch.Tensor | None:
        if v is None:
            return None
        out = torch.zeros(np_, dtype=dtype)
        out[:n] = v
        return out

    has_zp = bool((w.zero_point != 0).any())
    return CudaWeight(w_nk, padded(w.scale, torch.float32),
                      padded(w.zero_point, torch.int32) if has_zp else None,
                      padded(w.bias, torch.float32), n, k)
