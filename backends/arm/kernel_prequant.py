"""The ``dot_prequant`` / ``gemv_prequant`` kernels: activations quantized once,
then an int8 GEMM (``tl.dot``, or a dot-free multiply-and-sum for decode).

The fused ``dot`` kernel (:mod:`.kernel`) quantizes its A tile in registers
inside the K loop, so each of the ``N / BLOCK_N`` programs of a row block
re-reads and re-quantizes the same fp32 rows (O(M·K·N/BLOCK_N) float work), and
the A operand of ``tl.dot`` is a value computed in registers, not a load. This
variant splits the work in two launches:

1. ``quantize_rows_kernel`` — ``QBLOCK_M`` rows per program: absmax (``per_row``) and
   round-half-to-even int8 into a scratch ``X_q [M_pad, K_pad]``, its per-row
   scales (NaN for a row with NaN/Inf), and the row sums the weight zero-point
   correction needs. Rows past M and columns past K are written as zeros, so
2. ``qgemm_kernel`` reads ``X_q`` in unmasked, unit-stride int8 ``[BLOCK_M,
   BLOCK_K]`` tiles — the operand form the ARM forks' i8mm (``smmla``) lowering
   matches — against the cached tiled weight, with the fused kernel's epilogue.

Same quantization contract and numbers as the fused kernel (``per_row``,
``per_tensor``, ``pytorch``); only language features shared by Triton 3.0
(Triton-CPU ``legacy``) through 3.9.
"""

from __future__ import annotations

import triton
import triton.language as tl

QMAX = tl.constexpr(127.0)
UMAX = tl.constexpr(255.0)
INF = tl.constexpr(float("inf"))
# K chunk of the quantization pass (power of two). Small: each live value of a
# 64-column chunk is 16 registers of a 128-bit core (the aarch64 audit: ~1 100
# spills at 256 columns, ~140 at 64); no slower on the x86 proxy, where the pass
# is bound by loads and launch cost (30 us at M=1, K=2048 with 32 to 1024).
QUANT_BLOCK_K_MAX = 64


@triton.jit(do_not_specialize=["x_zp"])
def quantize_rows_kernel(
    x_ptr, xq_ptr, scale_ptr, rowsum_ptr,
    M, K, K_PAD, stride_xm, stride_xk, stride_qm,
    x_scale_arg, x_inv_scale, x_zp,
    QBLOCK_M: tl.constexpr, QBLOCK_K: tl.constexpr, ACT: tl.constexpr, HAS_ROWSUM: tl.constexpr,
):
    rows = tl.program_id(0) * QBLOCK_M + tl.arange(0, QBLOCK_M)
    k_end = tl.where(rows < M, K, 0)[:, None]     # rows past M (padding) read nothing: zeros
    x_rows = x_ptr + rows[:, None] * stride_xm
    if ACT == 0:  # per_row: absmax of each row; NaN counts as +inf
        absmax = tl.zeros([QBLOCK_M, QBLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, QBLOCK_K):
            rk = k0 + tl.arange(0, QBLOCK_K)[None, :]
            a = tl.load(x_rows + rk * stride_xk, mask=rk < k_end, other=0.0)
            absmax = tl.maximum(absmax, tl.where(a == a, tl.abs(a), INF))
        amax = tl.max(absmax, axis=1)
        row_ok = amax < INF
        x_scale = tl.where(amax == 0.0, 1.0, amax / QMAX)
        x_scale = tl.where(row_ok, x_scale, 1.0)
    else:
        row_ok = rows >= 0
        x_scale = tl.zeros([QBLOCK_M], dtype=tl.float32) + x_scale_arg
    rsum = tl.zeros([QBLOCK_M, QBLOCK_K], dtype=tl.int32)
    for k0 in range(0, K_PAD, QBLOCK_K):
        rk = k0 + tl.arange(0, QBLOCK_K)[None, :]
        k_in = rk < k_end
        a = tl.load(x_rows + rk * stride_xk, mask=k_in, other=0.0)
        if ACT == 2:
            v = a * x_inv_scale
        else:
            a = tl.where(row_ok[:, None], a, 0.0)
            v = a / x_scale[:, None]
        fl = tl.floor(v)
        frac = v - fl
        odd = (fl - 2.0 * tl.floor(fl * 0.5)) != 0.0
        r = fl + ((frac > 0.5) | ((frac == 0.5) & odd)).to(tl.float32)
        if ACT == 2:
            qf = tl.minimum(tl.maximum(r + x_zp, 0.0), UMAX) - 128.0
        else:
            qf = tl.minimum(tl.maximum(r, -QMAX), QMAX)
        q = tl.where(k_in, qf, 0.0).to(tl.int32)                 # padding is exactly zero
        if HAS_ROWSUM:
            rsum += q
        tl.store(xq_ptr + rows[:, None] * stride_qm + rk, q.to(tl.int8), mask=rk < K_PAD)
    if HAS_ROWSUM:
        tl.store(rowsum_ptr + rows, tl.sum(rsum, axis=1))
    tl.store(scale_ptr + rows, tl.where(row_ok, x_scale, float("nan")))


@triton.jit(do_not_specialize=["x_zp"])
def qgemm_kernel(
    xq_ptr, scale_ptr, rowsum_ptr, w_ptr, w_scale_ptr, w_zp_ptr, w_colsum_ptr, bias_ptr, out_ptr,
    M, N, K_PAD, LAYOUT_BLOCKS_N, stride_qm, stride_om, x_zp,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    LAYOUT_K: tl.constexpr, LAYOUT_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, RELU: tl.constexpr,
    USE_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)       # X_q has whole row blocks: no M mask on loads
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_tile = xq_ptr + rm[:, None] * stride_qm + rk[None, :]
    tile_n = pid_n * BLOCK_N
    w_tile_n = (tile_n // LAYOUT_N) * (LAYOUT_K * LAYOUT_N) + tile_n % LAYOUT_N
    w_in_tile = rk[:, None] * LAYOUT_N + tl.arange(0, BLOCK_N)[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    acc1 = tl.zeros([BLOCK_N], dtype=tl.int32)           # BLOCK_M == 1 without tl.dot: one row's sums
    x_row = xq_ptr + pid_m * stride_qm
    w_cols = tl.arange(0, BLOCK_N)
    for k0 in range(0, K_PAD, BLOCK_K):
        a = tl.load(a_tile + k0)
        w_off = (k0 // LAYOUT_K) * LAYOUT_BLOCKS_N * (LAYOUT_K * LAYOUT_N) + (k0 % LAYOUT_K) * LAYOUT_N
        b = tl.load(w_ptr + w_off + w_tile_n + w_in_tile)
        if USE_DOT:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        elif BLOCK_M == 1:
            # Dot-free: weight row k times the scalar x[k], added up row by row, in
            # 1-D vectors (no reduction across lanes and no [BK, BN] temporary, which
            # the generic lowering spills and shuffles). Products and their sum over
            # one K tile are integers below 2**24 (|x|, |w| <= 128, BLOCK_K <= 1024:
            # checked by the plan), so fp32 multiply-adds are exact here and cheaper
            # than 32-bit integer multiplies; each tile's sum joins the int32 total.
            part1 = tl.zeros([BLOCK_N], dtype=tl.float32)
            for kk in tl.static_range(BLOCK_K):
                a_k = tl.load(x_row + k0 + kk).to(tl.float32)
                b_k = tl.load(w_ptr + w_off + w_tile_n + kk * LAYOUT_N + w_cols).to(tl.float32)
                part1 += a_k * b_k
            acc1 += part1.to(tl.int32)
        else:       # the same for BLOCK_M rows: outer products of a column of X_q and a weight row
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for kk in tl.static_range(BLOCK_K):
                a_k = tl.load(xq_ptr + rm * stride_qm + k0 + kk).to(tl.float32)
                b_k = tl.load(w_ptr + w_off + w_tile_n + kk * LAYOUT_N + w_cols).to(tl.float32)
                part += a_k[:, None] * b_k[None, :]
            acc += part.to(tl.int32)

    if BLOCK_M == 1 and not USE_DOT:
        acc = acc + acc1[None, :]
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
