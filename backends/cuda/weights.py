"""Weights in the CUDA kernels' layout: plain ``[Np, Kp]`` int8, K contiguous.

Prepared once on the CPU from the packed weight (which stays on the CPU),
then moved to the device; the backend's :class:`~backends.common.weights.WeightCache`
owns the device copy (keyed by packed weight and device).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opregistry.backends.common import UnpackedWeight
from opregistry.backends.common.weights import SYMMETRIC_ACT_MAX, check_accumulator_bound, pad_vector, round_up

from .layout import K_ALIGN, N_ALIGN


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
    # launch plans of this weight (runtime.Plan, keyed by rule, M, activation layout): they hold
    # this weight's device pointers, so they live and die with it
    plans: dict = field(default_factory=dict, compare=False, repr=False)

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


def prepare_cuda_weight(w: UnpackedWeight, op: str) -> CudaWeight:
    """Pad to ``[Np, Kp]`` on the CPU; check the exact int32 accumulator bound."""
    n, k = w.w_int8.shape
    check_accumulator_bound(w, SYMMETRIC_ACT_MAX, op)
    kp, np_ = round_up(max(k, 1), K_ALIGN), round_up(max(n, 1), N_ALIGN)
    w_nk = torch.zeros(np_, kp, dtype=torch.int8)
    w_nk[:n, :k] = w.w_int8

    has_zp = bool((w.zero_point != 0).any())
    return CudaWeight(w_nk, pad_vector(w.scale, np_, torch.float32),
                      pad_vector(w.zero_point, np_, torch.int32) if has_zp else None,
                      pad_vector(w.bias, np_, torch.float32), n, k)
