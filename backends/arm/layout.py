"""The ARM kernel's weight layout: int8 tiles ``[Kp/LK, Np/LN, LK, LN]``,
zero-padded to whole tiles once, so every weight load in the kernel is an
unmasked, unit-stride 2-D block (what Triton-CPU's i8mm lowering needs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opregistry.backends.common.packed import UnpackedWeight
from opregistry.backends.common.weights import (PYTORCH_ACT_MAX, SYMMETRIC_ACT_MAX, check_accumulator_bound,
                                                pad_vector, round_up)


@dataclass(frozen=True)
class PreparedWeight:
    """One weight in the kernel's layout: int8 tiles ``[Kp/LK, Np/LN, LK, LN]``
    and per-channel vectors padded to ``Np``. ``zero_point``/``bias`` are ``None``
    when absent (all-zero zero points are dropped: symmetric weights skip the
    correction). ``colsum[n] = sum_k (w[n, k] - zero_point[n])`` is kept only for
    the ``pytorch`` activation scheme."""

    w_tiled: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    bias: torch.Tensor | None
    colsum: torch.Tensor | None
    n: int
    k: int
    layout_k: int
    layout_n: int

    @property
    def layout_blocks_n(self) -> int:
        return self.scale.shape[0] // self.layout_n

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.w_tiled, self.scale, self.zero_point, self.bias, self.colsum)
                   if t is not None)

    def to(self, device) -> "PreparedWeight":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PreparedWeight(move(self.w_tiled), move(self.scale), move(self.zero_point), move(self.bias),
                              move(self.colsum), self.n, self.k, self.layout_k, self.layout_n)


def prepare_weight(w: UnpackedWeight, layout_k: int, layout_n: int, op: str,
                   pytorch_scheme: bool = False) -> PreparedWeight:
    """Tile and pad an unpacked weight once; check the int32 accumulator bound.

    ``pytorch_scheme``: prepare for PyTorch's asymmetric uint8 activations (keeps the
    column sums; activations span up to 255 quanta instead of 127).
    """
    n, k = w.w_int8.shape
    centered = check_accumulator_bound(w, PYTORCH_ACT_MAX if pytorch_scheme else SYMMETRIC_ACT_MAX, op)
    np_ = round_up(max(n, 1), layout_n)
    tiled = tile_kn(w.w_int8.T, layout_k, layout_n)

    has_zp = bool((w.zero_point != 0).any())
    return PreparedWeight(tiled, pad_vector(w.scale, np_, torch.float32),
                          pad_vector(w.zero_point, np_, torch.int32) if has_zp else None,
                          pad_vector(w.bias, np_, torch.float32),
                          pad_vector(centered.sum(dim=1), np_, torch.int32) if pytorch_scheme else None,
                          n, k, layout_k, layout_n)


def tile_kn(w_kn: torch.Tensor, layout_k: int, layout_n: int) -> torch.Tensor:
    """``w_kn`` (int8 ``[K, N]``, any strides) zero-padded to whole tiles and laid
    out as ``[Kp/LK, Np/LN, LK, LN]``, flattened."""
    k, n = w_kn.shape
    kp, np_ = round_up(max(k, 1), layout_k), round_up(max(n, 1), layout_n)
    padded = torch.zeros(kp, np_, dtype=torch.int8)
    padded[:k, :n] = w_kn
    return (padded.reshape(kp // layout_k, layout_k, np_ // layout_n, layout_n)
            .permute(0, 2, 1, 3).contiguous().reshape(-1))
