"""The int8 dynamic-quantized linear kernel, fused (its launch plan: :mod:`.plan`).

One Triton kernel computes ``y = dequant(quant(x) @ W_int8) (+ bias) (ReLU)``:

* activations are quantized to int8 inside the kernel, round half to even:
  symmetric with per-row scales from a first pass over the program's rows
  (``per_row``), symmetric with one caller-computed scale (``per_tensor``), or
  PyTorch's own asymmetric uint8 scheme (``pytorch``: caller-computed scale and
  zero point; the uint8 values are shifted by -128 into int8 and the shift is
  undone in the epilogue with the weight's cached column sums),
* ``int8 x int8 -> int32`` through ``tl.dot`` (``USE_DOT``) or, for compilers
  whose ``tl.dot`` rejects tiny M, a broadcast multiply and ``tl.sum``,
* the epilogue applies the zero-point corrections, activation x weight
  scales, bias, ReLU, and marks rows with non-finite input as NaN.

The weight arrives pre-tiled as ``[Kp/LAYOUT_K, Np/LAYOUT_N, LAYOUT_K, LAYOUT_N]``
int8, zero-padded to whole tiles once when it is cached, so every weight load is
an unmasked, unit-stride 2-D block (what Triton-CPU's i8mm lowering needs).
Masks remain only where a shape forces them: the M/K edges of the activation
and the N edge of the output, each switched off by an ``EVEN_*`` constexpr.

Only language features shared by Triton 3.0 (triton-cpu) through 3.9 are used.
"""

from __future__ import annotations

import triton
import triton.language as tl

QMAX = tl.constexpr(127.0)    # symmetric int8 range [-127, 127]
UMAX = tl.constexpr(255.0)    # PyTorch's uint8 activations (its reduce_range only narrows the scale)
INF = tl.constexpr(float("inf"))

ACT_PER_ROW, ACT_PER_TENSOR, ACT_PYTORCH = 0, 1, 2   # values of the ACT constexpr
SCAN_BLOCK_K_MAX = 512  # K tile of the per-row absmax pass (power of two)


@triton.jit(do_not_specialize=["x_zp"])
def qlinear_kernel(
    x_ptr, w_ptr, w_scale_ptr, w_zp_ptr, w_colsum_ptr, bias_ptr, out_ptr,
    M, N, K, LAYOUT_BLOCKS_N,
    stride_xm, stride_xk, stride_om,
    x_scale_arg, x_inv_scale, x_zp,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    LAYOUT_K: tl.constexpr, LAYOUT_N: tl.constexpr, SCAN_BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr,
    RELU: tl.constexpr, USE_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rm[:, None] * stride_xm
    m_ok = rm < M

    # -- activation scale: absmax per row (this program's rows), or the caller's
    # (which handles non-finite input itself). NaN is mapped to +inf so that a
    # bad row is detected whatever max() does with NaN.
    if ACT == 0:  # ACT_PER_ROW
        absmax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, SCAN_BLOCK_K):
            rs = k0 + tl.arange(0, SCAN_BLOCK_K)
            a = tl.load(x_rows + rs[None, :] * stride_xk, mask=m_ok[:, None] & (rs < K)[None, :], other=0.0)
            a = tl.where(a == a, tl.abs(a), INF)
            absmax = tl.maximum(absmax, tl.max(a, axis=1))
        row_ok = absmax < INF                             # False for inf and NaN
        x_scale = tl.where(absmax == 0.0, 1.0, absmax / QMAX)
        x_scale = tl.where(row_ok, x_scale, 1.0)
    else:
        row_ok = rm >= 0
        x_scale = tl.zeros([BLOCK_M], dtype=tl.float32) + x_scale_arg

    # -- main loop over K: quantize the A tile, multiply with the cached B tile.
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.int32)
    tile_n = pid_n * BLOCK_N
    # Offset of the (k0, tile_n) tile in the tiled layout is scalar arithmetic;
    # inside the tile, rows are LAYOUT_N apart and columns contiguous.
    w_tile_n = (tile_n // LAYOUT_N) * (LAYOUT_K * LAYOUT_N) + tile_n % LAYOUT_N
    w_in_tile = rk[:, None] * LAYOUT_N + tl.arange(0, BLOCK_N)[None, :]
    for k0 in range(0, K, BLOCK_K):
        x_tile = x_rows + (k0 + rk)[None, :] * stride_xk
        if EVEN_M and EVEN_K:
            a = tl.load(x_tile)
        else:
            a = tl.load(x_tile, mask=m_ok[:, None] & ((k0 + rk) < K)[None, :], other=0.0)
        if ACT == 2:  # ACT_PYTORCH: PyTorch multiplies by the fp32 reciprocal
            v = a * x_inv_scale
        else:
            a = tl.where(row_ok[:, None], a, 0.0)         # keep non-finite values out of the int cast
            v = a / x_scale[:, None]
        # Round half to even, written out: no rint that all of Triton-CPU,
        # CUDA and the interpreter share.
        fl = tl.floor(v)
        frac = v - fl                                     # exact for |v| < 2**23
        odd = (fl - 2.0 * tl.floor(fl * 0.5)) != 0.0
        r = fl + ((frac > 0.5) | ((frac == 0.5) & odd)).to(tl.float32)
        if ACT == 2:
            # uint8 q = clamp(r + zp, 0, 255), stored shifted by -128 as int8.
            q = (tl.minimum(tl.maximum(r + x_zp, 0.0), UMAX) - 128.0).to(tl.int8)
            if not EVEN_K:  # a masked-off x of 0 quantizes to zp - 128, not 0
                # (Triton 3.0 promotes where(int8, 0) to int32: cast back for tl.dot)
                q = tl.where(((k0 + rk) < K)[None, :], q, 0).to(tl.int8)
        else:
            q = tl.minimum(tl.maximum(r, -QMAX), QMAX).to(tl.int8)
        w_off = (k0 // LAYOUT_K) * LAYOUT_BLOCKS_N * (LAYOUT_K * LAYOUT_N) + (k0 % LAYOUT_K) * LAYOUT_N
        b = tl.load(w_ptr + w_off + w_tile_n + w_in_tile)
        if USE_DOT:
            acc = tl.dot(q, b, acc, out_dtype=tl.int32)
        else:
            acc += tl.sum(q.to(tl.int32)[:, :, None] * b.to(tl.int32)[None, :, :], axis=1)
        if HAS_WZP:
            row_sum += tl.sum(q.to(tl.int32), axis=1)

    # -- epilogue. Weight vectors are padded to whole tiles: unmasked loads.
    # int32 wraps modulo 2**32; the weight cache checked that the true sum fits.
    if HAS_WZP:
        acc = acc - row_sum[:, None] * tl.load(w_zp_ptr + rn)[None, :]
    if ACT == 2:
        # sum_k (q_u - zp_x)(w - zp_w) = sum_k (q_u - 128)(w - zp_w) + (128 - zp_x) * colsum_n
        acc = acc + (128 - x_zp) * tl.load(w_colsum_ptr + rn)[None, :]
    y = acc.to(tl.float32) * (x_scale[:, None] * tl.load(w_scale_ptr + rn)[None, :])
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn)[None, :]
    if RELU:
        y = tl.maximum(y, 0.0)
    y = tl.where(row_ok[:, None], y, float("nan"))
    out = out_ptr + rm[:, None] * stride_om + rn[None, :]
    if EVEN_M and EVEN_N:
        tl.store(out, y)
    else:
        tl.store(out, y, mask=m_ok[:, None] & (rn < N)[None, :])
