"""The ``aten::_int_mm`` kernel: ``int8 [M, K] x int8 [K, N] -> int32 [M, N]``.

The same kernel family as :mod:`.kernel` (``qlinear_kernel``) without the
activation quantization: the first operand is already int8 (or uint8, which
PyTorch's CPU ``_int_mm`` also accepts), the second arrives in the cached tiled
layout of :mod:`.layout` (``[Kp/LAYOUT_K, Np/LAYOUT_N, LAYOUT_K, LAYOUT_N]``,
zero-padded once), so every B load is an unmasked unit-stride 2-D block; masks
remain only on the M/K edges of A and the N edge of C, each switched off by an
``EVEN_*`` constexpr. An operand that is not cached (``B_TILED`` off) is read
where it lies, with its strides, masked on its K/N edges only.

Three ways to multiply a tile, by constexpr: ``tl.dot`` (``USE_DOT``); dot-free
in fp32 (``GEMV_FP32``, the form of the linear ops' ``gemv_prequant``: a column
of A times a row of B, added up in fp32 vectors; or, for a B read in place with
unit K stride, rows of B^T multiplied and summed over K; exact for K tiles of
at most 1024, which the launcher checks); or a broadcast multiply and ``tl.sum``
in int32 (larger dot-free tiles).

The int32 sum wraps modulo 2**32, as PyTorch's CPU kernel does (measured on
torch 2.13: 140000 x (-128)(-128) gives -2001207296 there too), so results are
exact for every shape, bit for bit. A uint8 A is shifted by -128 into int8 and
the shift is undone in the epilogue with B's cached column sums (exact modulo
2**32 as well).

Only language features shared by Triton 3.0 (triton-cpu) through 3.9 are used;
the launcher is :mod:`.int_mm` (this module holds only Triton code: it is loaded
by path under other Triton versions, tests/test_triton_versions.py).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def int_mm_kernel(
    a_ptr, b_ptr, b_colsum_ptr, c_ptr,
    M, N, K, LAYOUT_BLOCKS_N,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    LAYOUT_K: tl.constexpr, LAYOUT_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
    A_UNSIGNED: tl.constexpr, B_TILED: tl.constexpr, B_K_CONTIGUOUS: tl.constexpr, USE_DOT: tl.constexpr,
    GEMV_FP32: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + rm[:, None] * stride_am
    m_ok = rm < M

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    tile_n = pid_n * BLOCK_N
    # As in qlinear_kernel: the (k0, tile_n) tile's offset is scalar arithmetic;
    # inside a tile, rows are LAYOUT_N apart and columns contiguous.
    w_tile_n = (tile_n // LAYOUT_N) * (LAYOUT_K * LAYOUT_N) + tile_n % LAYOUT_N
    w_in_tile = rk[:, None] * LAYOUT_N + tl.arange(0, BLOCK_N)[None, :]
    w_cols = tl.arange(0, BLOCK_N)
    for k0 in range(0, K, BLOCK_K):
        w_off = (k0 // LAYOUT_K) * LAYOUT_BLOCKS_N * (LAYOUT_K * LAYOUT_N) + (k0 % LAYOUT_K) * LAYOUT_N
        if GEMV_FP32 and B_K_CONTIGUOUS:
            # B read in place with unit K stride (torchao's transposed weight): a row of B
            # along N would be a gather, so take [BLOCK_N, BLOCK_K] rows of B^T (contiguous)
            # and reduce over K; exact in fp32 as below (any order: every partial sum is an
            # integer of at most 2**24).
            a_tile = a_rows + (k0 + rk)[None, :] * stride_ak
            if EVEN_M and EVEN_K:
                a = tl.load(a_tile).to(tl.int32)
            else:
                a = tl.load(a_tile, mask=m_ok[:, None] & ((k0 + rk) < K)[None, :], other=0).to(tl.int32)
            if A_UNSIGNED:
                a = a - 128
            bt_tile = b_ptr + rn[:, None] * stride_bn + (k0 + rk)[None, :]
            if EVEN_K and EVEN_N:
                bt = tl.load(bt_tile)
            else:
                bt = tl.load(bt_tile, mask=(rn < N)[:, None] & ((k0 + rk) < K)[None, :], other=0)
            part = tl.sum(a.to(tl.float32)[:, None, :] * bt.to(tl.float32)[None, :, :], axis=2)
            acc += part.to(tl.int32)
        elif GEMV_FP32:
            # Products of int8 values (a uint8 A shifted included) are at most 2**14 in
            # magnitude and a tile of <= 1024 of them sums to at most 2**24: every partial
            # sum is an exact fp32 integer; each tile's sum joins the wrapping int32 total.
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for kk in tl.static_range(BLOCK_K):
                a_col = a_ptr + rm * stride_am + (k0 + kk) * stride_ak
                if EVEN_M and EVEN_K:
                    a_k = tl.load(a_col).to(tl.int32)
                else:
                    a_k = tl.load(a_col, mask=m_ok & (rm * 0 + k0 + kk < K), other=0).to(tl.int32)
                if A_UNSIGNED:
                    a_k = a_k - 128
                if B_TILED:
                    b_k = tl.load(b_ptr + w_off + w_tile_n + kk * LAYOUT_N + w_cols)
                elif EVEN_K and EVEN_N:
                    b_k = tl.load(b_ptr + (k0 + kk) * stride_bk + rn * stride_bn)
                else:
                    b_k = tl.load(b_ptr + (k0 + kk) * stride_bk + rn * stride_bn,
                                  mask=(rn < N) & (rn * 0 + k0 + kk < K), other=0)
                part += a_k.to(tl.float32)[:, None] * b_k.to(tl.float32)[None, :]
            acc += part.to(tl.int32)
        else:
            a_tile = a_rows + (k0 + rk)[None, :] * stride_ak
            if EVEN_M and EVEN_K:
                a = tl.load(a_tile)
            else:
                # Masked-off A is 0 (-128 once shifted); B is zero there (K padding) or the row is not stored.
                a = tl.load(a_tile, mask=m_ok[:, None] & ((k0 + rk) < K)[None, :], other=0)
            if A_UNSIGNED:
                a = (a.to(tl.int32) - 128).to(tl.int8)
            if B_TILED:
                b = tl.load(b_ptr + w_off + w_tile_n + w_in_tile)
            else:
                # B read where it lies (any strides; torchao's is K-contiguous), zero outside [K, N].
                b_tile = b_ptr + (k0 + rk)[:, None] * stride_bk + rn[None, :] * stride_bn
                if EVEN_K and EVEN_N:
                    b = tl.load(b_tile)
                else:
                    b = tl.load(b_tile, mask=((k0 + rk) < K)[:, None] & (rn < N)[None, :], other=0)
            if USE_DOT:
                acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            else:
                acc += tl.sum(a.to(tl.int32)[:, :, None] * b.to(tl.int32)[None, :, :], axis=1)

    if A_UNSIGNED:
        # sum_k a_u8 b = sum_k (a_u8 - 128) b + 128 colsum_n (column sums padded to whole tiles)
        acc = acc + 128 * tl.load(b_colsum_ptr + rn)[None, :]
    c = c_ptr + rm[:, None] * stride_cm + rn[None, :]
    if EVEN_M and EVEN_N:
        tl.store(c, acc)
    else:
        tl.store(c, acc, mask=m_ok[:, None] & (rn < N)[None, :])
