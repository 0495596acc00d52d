"""The ``rowdot_prequant`` GEMM: activations quantized once (the quantize pass of
:mod:`.kernel_prequant`), then int8 products summed along K in the shape that
upstream Triton-CPU and LLVM turn into dot-product instructions.

Every output is the dot product of an activation row with a weight row, and the
weight is cached K-contiguous (layout ``nk``, :mod:`.layout`: ``[Np, Kp]``, so a K
step of any width reads unit-stride rows; ``K_MAIN`` is the part of ``Kp`` done in
whole ``BLOCK_K`` steps, the rest in ``TAIL_K`` steps). Each K step loads
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


@triton.jit
def _row_sums(x_ptrs, w, X_UNSIGNED: tl.constexpr):
    """``sum_k x[k] * w[n, k]`` for every row n of ``w`` (int32 ``[BLOCK_N, BK]``), ``x`` int8 at ``x_ptrs``."""
    x = tl.load(x_ptrs)
    if X_UNSIGNED:
        xe = (x.to(tl.uint8, bitcast=True) ^ 128).to(tl.uint8).to(tl.int32)
    else:
        xe = x.to(tl.int32)
    return tl.sum(xe[None, :] * w, axis=1)


@triton.jit(do_not_specialize=["x_zp"])
def rowdot_kernel(
    xq_ptr, scale_ptr, rowsum_ptr, w_ptr, w_sum_ptr, w_scale_ptr, w_zp_ptr, w_colsum_ptr, bias_ptr, out_ptr,
    M, N, K_PAD, K_MAIN, stride_qm, stride_om, x_zp,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TAIL_K: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, RELU: tl.constexpr,
    X_UNSIGNED: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)       # X_q has whole row blocks: no M mask on loads
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rt = tl.arange(0, TAIL_K)
    w_rows = w_ptr + rn[:, None] * K_PAD               # layout nk: [Np, K_PAD], K contiguous
    x_row = xq_ptr + pid_m * BLOCK_M * stride_qm
    row_ids = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    acc1 = tl.zeros([BLOCK_N], dtype=tl.int32)           # BLOCK_M == 1: one row, 1-D (no 3-D temporary)
    # Whole BLOCK_K steps, then the rest of the padded K in TAIL_K steps (TAIL_K divides both).
    for k0 in range(0, K_MAIN, BLOCK_K):
        w = tl.load(w_rows + k0 + rk[None, :]).to(tl.int32)
        if BLOCK_M == 1:
            acc1 += _row_sums(x_row + k0 + rk, w, X_UNSIGNED)
        else:
            # Row by row in the decode shape (a [BLOCK_M, BLOCK_N, BLOCK_K] product summed over its last
            # axis loses the dot-product form in LLVM and spills); each row's sums go to its row of acc.
            for i in tl.static_range(BLOCK_M):
                part = _row_sums(x_row + i * stride_qm + k0 + rk, w, X_UNSIGNED)
                acc += tl.where(row_ids[:, None] == i, part[None, :], 0)
    for k0 in range(K_MAIN, K_PAD, TAIL_K):
        w = tl.load(w_rows + k0 + rt[None, :]).to(tl.int32)
        if BLOCK_M == 1:
            acc1 += _row_sums(x_row + k0 + rt, w, X_UNSIGNED)
        else:
            for i in tl.static_range(BLOCK_M):
                part = _row_sums(x_row + i * stride_qm + k0 + rt, w, X_UNSIGNED)
                acc += tl.where(row_ids[:, None] == i, part[None, :], 0)

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
