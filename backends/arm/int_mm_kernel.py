"""The ``aten::_int_mm`` kernel: ``int8 [M, K] x int8 [K, N] -> int32 [M, N]``.

The same kernel family as :mod:`.kernel` (``qlinear_kernel``) without the
activation quantization: the first operand is already int8 (or uint8, which
PyTorch's CPU ``_int_mm`` also accepts), the second arrives in the cached tiled
layout of :mod:`.layout` (``[Kp/LAYOUT_K, Np/LAYOUT_N, LAYOUT_K, LAYOUT_N]``,
zero-padded once), so every B load is an unmasked unit-stride 2-D block; masks
remain only on the M/K edges of A and the N edge of C, each switched off by an
``EVEN_*`` constexpr. An operand that is not cached (``B_TILED`` off) is read
where it lies, with its strides, masked on its K/N edges only. ``tl.dot`` (``USE_DOT``) or a dot-free broadcast multiply
and ``tl.sum`` for compilers whose ``tl.dot`` rejects tiny M.

The int32 sum wraps modulo 2**32, as PyTorch's CPU kernel does (measured on
torch 2.13: 140000 x (-128)(-128) gives -2001207296 there too), so results are
exact for every shape, bit for bit. A uint8 A is shifted by -128 into int8 and
the shift is undone in the epilogue with B's cached column sums (exact modulo
2**32 as well).

Only language features shared by Triton 3.0 (triton-cpu) through 3.9 are used.
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
    A_UNSIGNED: tl.constexpr, B_TILED: tl.constexpr, USE_DOT: tl.constexpr,
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
    for k0 in range(0, K, BLOCK_K):
        a_tile = a_rows + (k0 + rk)[None, :] * stride_ak
        if EVEN_M and EVEN_K:
            a = tl.load(a_tile)
        else:
            # Masked-off A is 0 (-128 once shifted); B is zero there (K padding) or the row is not stored.
            a = tl.load(a_tile, mask=m_ok[:, None] & ((k0 + rk) < K)[None, :], other=0)
        if A_UNSIGNED:
            a = (a.to(tl.int32) - 128).to(tl.int8)
        if B_TILED:
            w_off = (k0 // LAYOUT_K) * LAYOUT_BLOCKS_N * (LAYOUT_K * LAYOUT_N) + (k0 % LAYOUT_K) * LAYOUT_N
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


def launch_int_mm(kernel, a, b, out, *, block_m, block_n, block_k, use_dot):
    """Launch ``kernel`` (``int_mm_kernel`` compiled or interpreted) over ``out``.

    ``a`` is ``[M, K]`` int8 or uint8 (any strides); ``b`` either a
    :class:`~opregistry.backends.arm.int_mm.PreparedOperand` (the cached tiled
    layout) or a :class:`~opregistry.backends.arm.int_mm.InPlaceOperand` (the
    operand read where it lies); either has ``colsum`` exactly when ``a`` is
    uint8. ``out`` is ``[M, N]`` int32 with unit column stride.
    """
    m, k = a.shape
    n = b.n
    tiled = b.w_tiled is not None
    src = b.w_tiled if tiled else b.tensor
    stride_bk, stride_bn = (0, 0) if tiled else b.tensor.stride()
    grid = (-(-m // block_m), -(-n // block_n))
    kernel[grid](
        a, src, b.colsum, out,
        m, n, k, b.layout_blocks_n,
        a.stride(0), a.stride(1), stride_bk, stride_bn, out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        LAYOUT_K=b.layout_k, LAYOUT_N=b.layout_n,
        EVEN_M=m % block_m == 0, EVEN_K=k % block_k == 0, EVEN_N=n % block_n == 0,
        A_UNSIGNED=b.colsum is not None, B_TILED=tiled, USE_DOT=use_dot,
    )
    return out
