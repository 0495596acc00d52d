"""The int8 dynamic-quantized linear kernel and its launcher.

One Triton kernel computes ``y = dequant(quant(x) @ W_int8) (+ bias) (ReLU)``:

* activations are quantized to int8 inside the kernel (symmetric, round half
  to even; per-row scales from a first pass over the program's rows, or one
  per-tensor absmax computed by the caller),
* ``int8 x int8 -> int32`` through ``tl.dot`` (``USE_DOT``) or, for compilers
  whose ``tl.dot`` rejects tiny M, a broadcast multiply and ``tl.sum``,
* the epilogue applies the weight zero-point correction, activation x weight
  scales, bias, ReLU, and marks rows with non-finite input as NaN.

The weight arrives pre-tiled as ``[Kp/LAYOUT_K, Np/LAYOUT_N, LAYOUT_K, LAYOUT_N]``
int8, zero-padded to whole tiles once when it is cached, so every weight load is
an unmasked, unit-stride 2-D block (what Triton-CPU's i8mm lowering needs).
Masks remain only where a shape forces them: the M/K edges of the activation
and the N edge of the output, each switched off by an ``EVEN_*`` constexpr.

Only language features shared by Triton 3.0 (triton-cpu) through 3.9 are used.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

QMAX = tl.constexpr(127.0)
INF = tl.constexpr(float("inf"))
SCAN_BLOCK_K_MAX = 512  # K tile of the per-row absmax pass (power of two)


@triton.jit
def qlinear_kernel(
    x_ptr, w_ptr, w_scale_ptr, w_zp_ptr, bias_ptr, x_absmax_ptr, out_ptr,
    M, N, K, LAYOUT_BLOCKS_N,
    stride_xm, stride_xk, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    LAYOUT_K: tl.constexpr, LAYOUT_N: tl.constexpr, SCAN_BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
    PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr,
    RELU: tl.constexpr, USE_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rm[:, None] * stride_xm
    m_ok = rm < M

    # -- activation scale: absmax per row (this program's rows) or per tensor.
    # NaN is mapped to +inf so that a bad row is detected whatever max() does with NaN.
    if PER_ROW:
        absmax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, SCAN_BLOCK_K):
            rs = k0 + tl.arange(0, SCAN_BLOCK_K)
            a = tl.load(x_rows + rs[None, :] * stride_xk, mask=m_ok[:, None] & (rs < K)[None, :], other=0.0)
            a = tl.where(a == a, tl.abs(a), INF)
            absmax = tl.maximum(absmax, tl.max(a, axis=1))
    else:
        absmax = tl.zeros([BLOCK_M], dtype=tl.float32) + tl.load(x_absmax_ptr)
    row_ok = absmax < INF                       # False for inf and NaN
    x_scale = tl.where(absmax == 0.0, 1.0, absmax / QMAX)
    x_scale = tl.where(row_ok, x_scale, 1.0)

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
        a = tl.where(row_ok[:, None], a, 0.0)             # keep non-finite values out of the int cast
        # Symmetric int8 quantization, round half to even (written out: no
        # rint that all of Triton-CPU, CUDA and the interpreter share).
        v = a / x_scale[:, None]
        fl = tl.floor(v)
        frac = v - fl                                     # exact for |v| < 2**23
        odd = (fl - 2.0 * tl.floor(fl * 0.5)) != 0.0
        r = fl + ((frac > 0.5) | ((frac == 0.5) & odd)).to(tl.float32)
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
    if HAS_WZP:
        # int32 wraps modulo 2**32; the cache checked that the true sum fits.
        acc = acc - row_sum[:, None] * tl.load(w_zp_ptr + rn)[None, :]
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


def launch(kernel, x2d, weight, out, *, block_m, block_n, block_k, use_dot, per_row, relu,
           x_absmax=None):
    """Launch ``kernel`` (``qlinear_kernel`` compiled or interpreted) over ``out``.

    ``x2d`` is ``[M, K]`` fp32 (any strides); ``out`` is ``[M, N]`` fp32 with unit
    column stride; ``weight`` is a :class:`backends.common.weights.PreparedWeight`.
    """
    m, k = x2d.shape
    n = weight.n
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    scan = min(SCAN_BLOCK_K_MAX, triton.next_power_of_2(k))
    kernel[grid](
        x2d, weight.w_tiled, weight.scale, weight.zero_point, weight.bias, x_absmax, out,
        m, n, k, weight.layout_blocks_n,
        x2d.stride(0), x2d.stride(1), out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        LAYOUT_K=weight.layout_k, LAYOUT_N=weight.layout_n, SCAN_BLOCK_K=scan,
        EVEN_M=m % block_m == 0, EVEN_K=k % block_k == 0, EVEN_N=n % block_n == 0,
        PER_ROW=per_row, HAS_BIAS=weight.bias is not None, HAS_WZP=weight.zero_point is not None,
        RELU=relu, USE_DOT=use_dot,
    )
    return out


class InterpretedKernel:
    """Run a ``@triton.jit`` kernel through Triton's interpreter, whatever
    ``TRITON_INTERPRET`` was when Triton was imported.

    ``InterpretedFunction`` interprets the kernel body, but the Triton standard
    library (``tl.zeros``, ``tl.sum``, ...) was compiled-mode ``@jit`` at import
    and refuses to be called from Python. During a launch those calls are
    routed to the interpreter too. The interpreter patches ``triton.language``
    globally while it runs, so launches are serialised by one lock.
    """

    _lock = threading.Lock()
    _device_fns: dict = {}  # id(JITFunction) -> InterpretedFunction; stdlib functions live forever

    def __init__(self, jit_fn):
        from triton.runtime.interpreter import InterpretedFunction

        self._fn = InterpretedFunction(getattr(jit_fn, "fn", jit_fn))

    @classmethod
    @contextmanager
    def _nested_jit_calls_interpreted(cls):
        from triton.runtime.interpreter import InterpretedFunction

        def call(jit_fn, *args, **kwargs):
            fn = cls._device_fns.get(id(jit_fn))
            if fn is None:
                fn = cls._device_fns[id(jit_fn)] = InterpretedFunction(jit_fn.fn)
            return fn(*args, **kwargs)

        original = JITFunction.__call__
        JITFunction.__call__ = call
        try:
            yield
        finally:
            JITFunction.__call__ = original

    def __getitem__(self, grid):
        launcher = self._fn[grid]

        def run(*args, **kwargs):
            with self._lock, self._nested_jit_calls_interpreted():
                return launcher(*args, **kwargs)

        return run
