"""Launch plan of the ``dot_prequant``, ``gemv_prequant`` (:mod:`.kernel_prequant`)
and ``rowdot_prequant`` (:mod:`.kernel_rowdot`) kernels: the activation quantized
once into int8 scratch, then the int8 GEMM.

:class:`PrequantPlan` has :class:`~.plan.LaunchPlan`'s call signature, so the
runtime launches, memoises and falls back the same way; it takes the runtime's
``qlinear_kernel`` (compiled, interpreted or stubbed) as the sign of the mode to
launch its own two kernels in.
"""

from __future__ import annotations

import platform
import threading

import torch

from opregistry.backends.common.interpreter import InterpretedKernel
from opregistry.backends.common.launch import BoundLaunches, jit_function_class
from opregistry.backends.common.weights import round_up

from .config import EXACT_FP32_BLOCK_K
from .kernel_prequant import QUANT_BLOCK_K_MAX, qgemm_kernel, quantize_rows_kernel
from .kernel_rowdot import rowdot_kernel

_QUANT_CONSTEXPRS = ("QBLOCK_M", "QBLOCK_K", "ACT", "HAS_ROWSUM")
_GEMM_CONSTEXPRS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "LAYOUT_K", "LAYOUT_N", "EVEN_M", "EVEN_N", "ACT", "HAS_BIAS",
                    "HAS_WZP", "RELU", "USE_DOT")
_ROWDOT_CONSTEXPRS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "TAIL_K", "EVEN_M", "EVEN_N", "ACT", "HAS_BIAS", "HAS_WZP",
                      "RELU", "X_UNSIGNED")
assert tuple(quantize_rows_kernel.arg_names[-len(_QUANT_CONSTEXPRS):]) == _QUANT_CONSTEXPRS
assert tuple(qgemm_kernel.arg_names[-len(_GEMM_CONSTEXPRS):]) == _GEMM_CONSTEXPRS
assert tuple(rowdot_kernel.arg_names[-len(_ROWDOT_CONSTEXPRS):]) == _ROWDOT_CONSTEXPRS

PREQUANT_KERNEL = "dot_prequant"     # routing-table names of this variant: with tl.dot,
PREQUANT_GEMV = "gemv_prequant"      # dot-free (any M; decode),
ROWDOT = "rowdot_prequant"           # and dot products along K on the nk layout (sdot / vpdpbusd)
PREQUANT_KERNELS = (PREQUANT_KERNEL, PREQUANT_GEMV, ROWDOT)
_INTERPRETED: dict = {}
# Decode-sized scratch (X_q, its scales and row sums) is reused, per thread: two or three
# allocations are ~1 us each, a fifth of a call's host time. Larger M allocates afresh (its
# kernel time dwarfs them; the memory stays bounded by K x SCRATCH_REUSE_ROWS per thread).
SCRATCH_REUSE_ROWS = 16
_scratch = threading.local()


def _scratch_buffers(m_pad: int, k_pad: int, has_rowsum: bool) -> tuple:
    """``(X_q, scales, row sums or None)`` for ``m_pad`` rows: fresh, or this thread's own when small.
    Launches are synchronous and a call writes every element before reading it, so reuse is safe."""
    if m_pad > SCRATCH_REUSE_ROWS:
        return (torch.empty(m_pad, k_pad, dtype=torch.int8), torch.empty(m_pad, dtype=torch.float32),
                torch.empty(m_pad, dtype=torch.int32) if has_rowsum else None)
    held = getattr(_scratch, "held", None)
    if held is None:
        held = _scratch.held = {}
    key = (m_pad, k_pad, has_rowsum)
    bufs = held.get(key)
    if bufs is None:
        bufs = held[key] = (torch.empty(m_pad, k_pad, dtype=torch.int8), torch.empty(m_pad, dtype=torch.float32),
                            torch.empty(m_pad, dtype=torch.int32) if has_rowsum else None)
    return bufs


def unsigned_activations() -> bool:
    """Whether ``rowdot_prequant`` feeds the dot product unsigned activations: on x86,
    whose ``vpdpbusd`` multiplies unsigned by signed bytes; elsewhere (aarch64 ``sdot``)
    signed. Read when a plan is made, so a tool lowering for another target may patch it."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _kernels_like(kernel, gemm_kernel):
    """(quantize, gemm) in the mode of the runtime's ``kernel`` when it is not compiled:
    interpreted, or a stub (host-overhead measurement) that launches nothing."""
    if isinstance(kernel, InterpretedKernel):
        if gemm_kernel not in _INTERPRETED:
            _INTERPRETED[gemm_kernel] = (InterpretedKernel(quantize_rows_kernel), InterpretedKernel(gemm_kernel))
        return _INTERPRETED[gemm_kernel]
    return kernel, kernel


class PrequantPlan:
    """A ``dot_prequant`` / ``gemv_prequant`` / ``rowdot_prequant`` (``rowdot``) launch
    pair on one prepared weight, tiles and scheme."""

    __slots__ = ("block_m", "n", "k", "k_pad", "k_arg", "grid_n", "gemm", "gemm_args", "consts",
                 "quant_consts", "quant_tail", "tails", "has_rowsum", "bound")

    def __init__(self, weight, *, block_m, block_n, block_k, use_dot, act, relu, rowdot=False):
        if not use_dot and not rowdot and block_k > EXACT_FP32_BLOCK_K:
            raise ValueError(f"gemv_prequant sums one K tile in fp32, exact up to block_k={EXACT_FP32_BLOCK_K}; "
                             f"got block_k={block_k}")
        n, k = weight.n, weight.k
        self.block_m, self.n, self.k = block_m, n, k
        self.k_pad = round_up(max(k, 1), weight.layout_k)       # the cached weight's K rows (zero-padded)
        self.grid_n = -(-n // block_n)
        self.has_rowsum = weight.zero_point is not None
        consts = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, LAYOUT_K=weight.layout_k,
                      LAYOUT_N=weight.layout_n, EVEN_N=n % block_n == 0, ACT=act,
                      HAS_BIAS=weight.bias is not None, HAS_WZP=self.has_rowsum, RELU=relu, USE_DOT=use_dot)
        # The GEMM's arguments after (xq, scale, rowsum) up to out, and its constexprs' names.
        if rowdot:
            self.gemm, names = rowdot_kernel, _ROWDOT_CONSTEXPRS
            consts.update(USE_DOT=False, X_UNSIGNED=unsigned_activations(),
                          TAIL_K=min(block_k, weight.layout_k))      # powers of two: divides both
            # K_MAIN: the part of K done in whole BLOCK_K steps (the argument after K_PAD).
            self.k_arg = self.k_pad // block_k * block_k
            self.gemm_args = (weight.w_nk, weight.wsum, weight.scale, weight.zero_point, weight.colsum, weight.bias)
        else:
            self.gemm, names = qgemm_kernel, _GEMM_CONSTEXPRS
            self.k_arg = weight.layout_blocks_n          # LAYOUT_BLOCKS_N
            self.gemm_args = (weight.w_tiled, weight.scale, weight.zero_point, weight.colsum, weight.bias)
        # By m % block_m == 0; each holds the GEMM's constexprs only.
        self.consts = tuple({k: v for k, v in {**consts, "EVEN_M": even}.items() if k in names}
                            for even in (False, True))
        # Rows per quantization program: compiled, one (a 64-column chunk of one row already
        # fills a 128-bit core's registers); interpreted, the GEMM's row block (the
        # interpreter pays per operation, not per element: one program per row made the
        # pass ~7 ms a row, 4-20x the GEMM at M = 64).
        self.quant_consts = dict(QBLOCK_M=1, QBLOCK_K=min(QUANT_BLOCK_K_MAX, 1 << (self.k_pad - 1).bit_length()),
                                 ACT=act, HAS_ROWSUM=self.has_rowsum)
        # Constexprs passed positionally, in each kernel's own order (cheaper than keywords per launch).
        self.quant_tail = tuple({**self.quant_consts, "QBLOCK_M": block_m}[name] for name in _QUANT_CONSTEXPRS)
        self.tails = tuple(tuple(c[name] for name in names) for c in self.consts)
        # Compiled mode: both launches repeated through Triton's launcher (common/launch.py).
        self.bound = BoundLaunches()

    def __call__(self, kernel, x2d, m, stride_xm, stride_xk, out, x_scale=1.0, x_inv_scale=1.0, x_zp=0):
        bm = self.block_m
        m_pad = -(-m // bm) * bm
        k_pad = self.k_pad
        xq, scale, rowsum = _scratch_buffers(m_pad, k_pad, self.has_rowsum)
        n = self.n
        quant_args = (x2d, xq, scale, rowsum, m, self.k, k_pad, stride_xm, stride_xk, k_pad,
                      x_scale, x_inv_scale, x_zp)
        gemm_args = (xq, scale, rowsum, *self.gemm_args, out, m, n, k_pad, self.k_arg, k_pad, n, x_zp)
        if isinstance(kernel, jit_function_class()):       # compiled (not interpreted, not a stub)
            key = (m, stride_xm, stride_xk, x2d.data_ptr() & 15, out.data_ptr() & 15)
            self.bound.run(key, ((quantize_rows_kernel, (m_pad,), quant_args, self.quant_consts),
                                 (self.gemm, (m_pad // bm, self.grid_n), gemm_args, self.consts[m == m_pad])))
            return out
        quantize, gemm = _kernels_like(kernel, self.gemm)
        quantize[(m_pad // bm,)](*quant_args, *self.quant_tail)
        gemm[(m_pad // bm, self.grid_n)](*gemm_args, *self.tails[m == m_pad])
        return out
