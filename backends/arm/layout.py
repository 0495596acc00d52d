"""The ARM kernels' weight layouts, zero-padded to whole tiles once, so every
weight load in a kernel is an unmasked 2-D block of unit-stride rows:

* ``kn``: int8 tiles ``[Kp/LK, Np/LN, LK, LN]`` (N contiguous: what ``tl.dot``
  and its i8mm lowering in Triton-CPU forks read, and the dot-free kernels),
* ``nk``: int8 ``[Np, Kp]``, row-major (K contiguous: each output's products
  along K sit side by side, the operand order of ``sdot`` and ``vpdpbusd``, and
  a K step of any width reads unit-stride rows; tiling it measured no faster).

A weight is prepared in the orders its op's routing table reads (both only when
rules of both kinds share a table)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opregistry.backends.common.packed import UnpackedWeight
from opregistry.backends.common.weights import (PYTORCH_ACT_MAX, SYMMETRIC_ACT_MAX, check_accumulator_bound,
                                                pad_vector, round_up)


@dataclass(frozen=True)
class PreparedWeight:
    """One weight in the kernels' layouts: ``w_tiled`` (order ``kn``) and/or
    ``w_nk`` (order ``nk``), ``None`` where not prepared, and per-channel vectors
    padded to ``Np``. ``zero_point``/``bias`` are ``None`` when absent (all-zero
    zero points are dropped: symmetric weights skip the correction).
    ``colsum[n] = sum_k (w[n, k] - zero_point[n])`` is kept only for the
    ``pytorch`` activation scheme; ``wsum[n] = sum_k w[n, k]`` with ``w_nk`` (a
    kernel that shifts int8 activations to unsigned subtracts ``128 * wsum``)."""

    w_tiled: torch.Tensor | None
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    bias: torch.Tensor | None
    colsum: torch.Tensor | None
    n: int
    k: int
    layout_k: int
    layout_n: int
    w_nk: torch.Tensor | None = None
    wsum: torch.Tensor | None = None

    @property
    def layout_blocks_n(self) -> int:
        return self.scale.shape[0] // self.layout_n

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.w_tiled, self.scale, self.zero_point, self.bias, self.colsum, self.w_nk, self.wsum)
                   if t is not None)

    def to(self, device) -> "PreparedWeight":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PreparedWeight(move(self.w_tiled), move(self.scale), move(self.zero_point), move(self.bias),
                              move(self.colsum), self.n, self.k, self.layout_k, self.layout_n,
                              move(self.w_nk), move(self.wsum))


KN, NK = "kn", "nk"     # the layouts' orders (module docstring)


def prepare_weight(w: UnpackedWeight, layout_k: int, layout_n: int, op: str,
                   pytorch_scheme: bool = False, orders: tuple[str, ...] = (KN,)) -> PreparedWeight:
    """Tile and pad an unpacked weight once, in each of ``orders``; check the int32
    accumulator bound.

    ``pytorch_scheme``: prepare for PyTorch's asymmetric uint8 activations (keeps the
    column sums; activations span up to 255 quanta instead of 127).
    """
    n, k = w.w_int8.shape
    centered = check_accumulator_bound(w, PYTORCH_ACT_MAX if pytorch_scheme else SYMMETRIC_ACT_MAX, op)
    np_ = round_up(max(n, 1), layout_n)
    has_zp = bool((w.zero_point != 0).any())
    return PreparedWeight(tile_kn(w.w_int8.T, layout_k, layout_n) if KN in orders else None,
                          pad_vector(w.scale, np_, torch.float32),
                          pad_vector(w.zero_point, np_, torch.int32) if has_zp else None,
                          pad_vector(w.bias, np_, torch.float32),
                          pad_vector(centered.sum(dim=1), np_, torch.int32) if pytorch_scheme else None,
                          n, k, layout_k, layout_n,
                          tile_nk(w.w_int8, layout_k, layout_n) if NK in orders else None,
                          pad_vector(w.w_int8.to(torch.int32).sum(dim=1), np_, torch.int32) if NK in orders else None)


def tile_kn(w_kn: torch.Tensor, layout_k: int, layout_n: int) -> torch.Tensor:
    """``w_kn`` (int8 ``[K, N]``, any strides) zero-padded to whole tiles and laid
    out as ``[Kp/LK, Np/LN, LK, LN]``, flattened."""
    k, n = w_kn.shape
    kp, np_ = round_up(max(k, 1), layout_k), round_up(max(n, 1), layout_n)
    padded = torch.zeros(kp, np_, dtype=torch.int8)
    padded[:k, :n] = w_kn
    return (padded.reshape(kp // layout_k, layout_k, np_ // layout_n, layout_n)
            .permute(0, 2, 1, 3).contiguous().reshape(-1))


def tile_nk(w_nk: torch.Tensor, layout_k: int, layout_n: int) -> torch.Tensor:
    """``w_nk`` (int8 ``[N, K]``, any strides) zero-padded to ``[Np, Kp]`` (whole
    layout tiles), row-major, flattened."""
    n, k = w_nk.shape
    kp, np_ = round_up(max(k, 1), layout_k), round_up(max(n, 1), layout_n)
    padded = torch.zeros(np_, kp, dtype=torch.int8)
    padded[:n, :k] = w_nk
    return padded.reshape(-1)
