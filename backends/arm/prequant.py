"""Launch plan of the ``dot_prequant`` and ``gemv_prequant`` kernels
(:mod:`.kernel_prequant`): the activation quantized once into int8 scratch, then
the int8 GEMM.

:class:`PrequantPlan` has :class:`~.kernel.LaunchPlan`'s call signature, so the
runtime launches, memoises and falls back the same way; it takes the runtime's
``qlinear_kernel`` (compiled, interpreted or stubbed) as the sign of the mode to
launch its own two kernels in.
"""

from __future__ import annotations

import torch

from opregistry.backends.common.interpreter import InterpretedKernel
from opregistry.backends.common.weights import round_up

from .kernel_prequant import QUANT_BLOCK_K_MAX, qgemm_kernel, quantize_rows_kernel

PREQUANT_KERNEL = "dot_prequant"     # routing-table names of this variant: with tl.dot,
PREQUANT_GEMV = "gemv_prequant"      # and dot-free (any M; decode)
PREQUANT_KERNELS = (PREQUANT_KERNEL, PREQUANT_GEMV)
_INTERPRETED: dict = {}


def _kernels_like(kernel):
    """(quantize, gemm) in the mode of the runtime's ``kernel``."""
    if isinstance(kernel, InterpretedKernel):
        if not _INTERPRETED:
            _INTERPRETED["k"] = (InterpretedKernel(quantize_rows_kernel), InterpretedKernel(qgemm_kernel))
        return _INTERPRETED["k"]
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:          # pragma: no cover - the runtime imported triton already
        JITFunction = ()
    if isinstance(kernel, JITFunction):
        return quantize_rows_kernel, qgemm_kernel
    return kernel, kernel        # a stub (host-overhead measurement) launches nothing


class PrequantPlan:
    """A ``dot_prequant`` launch on one prepared weight, tiles and scheme."""

    __slots__ = ("block_m", "n", "k", "k_pad", "grid_n", "w_args", "sizes", "consts", "quant_consts",
                 "has_rowsum")

    def __init__(self, weight, *, block_m, block_n, block_k, use_dot, act, relu):
        n, k = weight.n, weight.k
        self.block_m, self.n, self.k = block_m, n, k
        self.k_pad = round_up(max(k, 1), weight.layout_k)       # the cached weight's K rows (zero-padded)
        self.grid_n = -(-n // block_n)
        self.has_rowsum = weight.zero_point is not None
        self.w_args = (weight.w_tiled, weight.scale, weight.zero_point, weight.colsum, weight.bias)
        self.sizes = (n, weight.layout_blocks_n)
        consts = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, LAYOUT_K=weight.layout_k,
                      LAYOUT_N=weight.layout_n, EVEN_N=n % block_n == 0, ACT=act,
                      HAS_BIAS=weight.bias is not None, HAS_WZP=self.has_rowsum, RELU=relu, USE_DOT=use_dot)
        self.consts = ({**consts, "EVEN_M": False}, {**consts, "EVEN_M": True})   # by m % block_m == 0
        self.quant_consts = dict(QBLOCK_K=min(QUANT_BLOCK_K_MAX, 1 << (self.k_pad - 1).bit_length()), ACT=act,
                                 HAS_ROWSUM=self.has_rowsum)

    def __call__(self, kernel, x2d, m, stride_xm, stride_xk, out, x_scale=1.0, x_inv_scale=1.0, x_zp=0):
        quantize, gemm = _kernels_like(kernel)
        bm = self.block_m
        m_pad = -(-m // bm) * bm
        k_pad = self.k_pad
        xq = torch.empty(m_pad, k_pad, dtype=torch.int8)
        scale = torch.empty(m_pad, dtype=torch.float32)
        rowsum = torch.empty(m_pad, dtype=torch.int32) if self.has_rowsum else None
        quantize[(m_pad,)](x2d, xq, scale, rowsum, m, self.k, k_pad, stride_xm, stride_xk, k_pad,
                           x_scale, x_inv_scale, x_zp, **self.quant_consts)
        w_tiled, w_scale, w_zp, w_colsum, bias = self.w_args
        n, blocks_n = self.sizes
        gemm[(m_pad // bm, self.grid_n)](xq, scale, rowsum, w_tiled, w_scale, w_zp, w_colsum, bias, out,
                                         m, n, k_pad, blocks_n, k_pad, n, x_zp, **self.consts[m == m_pad])
        return out
