"""The ``rowdot_prequant`` GEMM: activations quantized once (the quantize pass of
:mod:`.kernel_prequant`), then int8 products summed along K in the shape that
upstream Triton-CPU and LLVM turn into dot-product instructions.

Every output is the dot product of an activation row with a weight row, and the
weight is cached K-contiguous (layout ``nk``, :mod:`.layout`). Each K step loads
a ``[BLOCK_N, BLOCK_K]`` weight block, multiplies it, widened, with the
activation row and sums along K with ``tl.sum``. Triton-CPU lowers that sum to
one ``llvm.vector.reduce.add`` of ``mul(ext i8, ext i8)`` per output, which
LLVM's AArch64 backend emits as ``sdot`` (+dotprod: both operands signed) and
its x86 backend as ``vpdpbusd`` (AVX-512 VNNI / AVX-VNNI: unsigned bytes times
signed bytes). For the latter the activations are made unsigned in registers
(``X_UNSIGNED``: ``x + 128``, the sign bit flipped) and ``128 * sum_k w[n, k]``
is subtracted once at the end. int32 arithmetic wraps, so the result is exact
whenever the true sum fits int32, which the weight cache checks.

A ``tl.dot`` would be the natural spelling, but upstream Triton-CPU lowers int8
``tl.dot`` to widening outer products (32-bit multiplies), and so does every
other shape tried (sums over groups of 4 after a reshape, ``tl.split`` pairs).

Same epilogue and numbers as ``qgemm_kernel``; only language features shared by
Triton 3.0 (Triton-CPU ``legacy``) through 3.9.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["x_zp"])
def rowdot_kernel(
    xq_ptr, scale_ptr, rowsum_ptr, w_ptr, w_sum_ptr, w_scale_ptr, w_zp_ptr, w_colsum_ptr, bias_ptr, out_ptr,
    M, N, K_PAD, stride_qm, stride_om, x_zp,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    LAYOUT_K: tl.constexpr, LAYOUT_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, RELU: tl.constexpr,
    X_UNSIGNED: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)       # X_q has whole row blocks: no M mask on loads
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # Layout nk: tile (n // LN, k // LK) starts at ((n // LN) * (K_PAD // LK) + k // LK) * LN * LK, its rows
    # LK apart; the N offset is scalar arithmetic, the K step adds a tile or moves inside one.
    tile_n = pid_n * BLOCK_N
    w_rows = w_ptr + (tile_n // LAYOUT_N) * (K_PAD * LAYOUT_N) + (tile_n % LAYOUT_N) * LAYOUT_K
    w_in = tl.arange(0, BLOCK_N)[:, None] * LAYOUT_K + rk[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    acc1 = tl.zeros([BLOCK_N], dtype=tl.int32)           # BLOCK_M == 1: one row, 1-D (no 3-D temporary)
    x_row = xq_ptr + pid_m * stride_qm + rk
    x_rows = xq_ptr + rm[:, None] * stride_qm + rk[None, :]
    for k0 in range(0, K_PAD, BLOCK_K):
        w = tl.load(w_rows + (k0 // LAYOUT_K) * (LAYOUT_N * LAYOUT_K) + k0 % LAYOUT_K + w_in).to(tl.int32)
        if BLOCK_M == 1:
            x = tl.load(x_row + k0)
            if X_UNSIGNED:
                xe = (x.to(tl.uint8, bitcast=True) ^ 128).to(tl.uint8).to(tl.int32)
            else:
                xe = x.to(tl.int32)
            acc1 += tl.sum(xe[None, :] * w, axis=1)
        else:
            x = tl.load(x_rows + k0)
            if X_UNSIGNED:
                xe = (x.to(tl.uint8, bitcast=True) ^ 128).to(tl.uint8).to(tl.int32)
            else:
                xe = x.to(tl.int32)
            acc += tl.sum(xe[:, None, :] * w[None, :, :], axis=2)

    if BLOCK_M == 1:
        acc = acc + acc1[None, :]
    if X_UNSIGNED:
        acc = acc - 128 * tl.load(w_sum_ptr + rn)[None, :]
    x_scale = tl.load(scale_ptr + rm)                  # NaN marks a row with non-finite input
    if HAS_WZP:
        acc = acc - tl.load(rowsum_ptr + rm)[:, None] * tl.load(w_zp_ptr + rn)[None, :]
    if ACT == 2:
        acc = acc + (128 - x_zp) * tl.load(w_colsum_ptr + rn)[None, :]
    y = acc.to(tl.float32) * (x_scale[:, None] * tl.load(w_scale_ptr + rn)[None, :])
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn)[None, :]
    if RELU:
        y = tl.maximum(y, 0.0)
    y = tl.where((x_scale == x_scale)[:, None], y, float("nan"))
    out = out_ptr + rm[:, None] * stride_om + rn[None, :]
    if EVEN_M and EVEN_N:
        tl.store(out, y)
    else:
        tl.store(out, y, mask=(rm < M)[:, None] & (rn < N)[None, :])
