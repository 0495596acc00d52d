"""The CUDA backend at run time: a config in, op kernels out.

:class:`CudaRuntime` owns what one ``registry.enable(backend="cuda")`` makes:
the kernels in the chosen execution mode, the device weight cache, one
router and runner per op, and the module fast path. ``disable()`` drops it.

Execution modes:

* ``compiled`` (``auto`` when a CUDA device is present): compiled Triton
  kernels on CUDA tensors; the ops are registered for the ``CUDA`` key.
* ``interpreter``: the same kernel source through Triton's interpreter on
  CPU tensors, registered for the ``CPU`` key. For validation on hosts
  without a GPU only (slow, serial grid).

A call runs a :class:`Plan` worked out once per (weight, rule, M, activation
layout): grids, constexprs, one allocation, and in compiled mode kernels bound
for direct launch (``backends/common/launch.py``) after the plan's first call; on sm_90 the GEMM
after the prepass is a programmatic dependent launch, and ``dot_streamk_fused`` runs
both in one cooperative launch (docs/CUDA.md, "Design").
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch

from opregistry.registry import BackendUnavailable, CallCounter, Config
from opregistry.registry.errors import option
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC, check_activation, unpack_weight
from opregistry.backends.common.interpreter import InterpretedKernel
from opregistry.backends.common.launch import bind
from opregistry.backends.common.routing import Router
from opregistry.backends.common.stub import StubKernel
from opregistry.backends.common.weights import WeightCache

from . import kernels as K
from .config import DETERMINISTIC_KERNEL, KERNELS  # noqa: F401 - KERNELS re-exported
from .device import cuda_status
from .weights import CudaWeight, prepare_cuda_weight

# Activation prepass (quantize_kernel) shapes:
QUANT_SMALL_M = 64                # up to this M, a row's quantization is split over chunks of K ...
QUANT_CHUNK = 2048                # ... of this many columns (the row's absmax is read whole by each)
QUANT_SCAN_ONCE_MAX = 32768       # ... when the whole row fits in one load (<= 64 fp32 per thread)
QUANT_PREFILL_SCAN_ONCE_MAX = 4096  # larger M: one load per row up to this K, else a loop ...
QUANT_BLOCK_K = 4096              # ... of this K tile (16 KB of the row in flight per load)
# Larger M, padded rows up to this K: the row is read once and quantized from registers (<= 16
# fp32 per thread); the two-pass form reads it twice from HBM. H200, M = 8192: K = 3584 59 us
# against 76, K = 6144 118 against 124. Not beyond: K = 18944 in registers (64 per thread, one
# program per SM) took 806 us against 328 for the two-pass loop.
QUANT_ROW_IN_REGS_MAX = 8192
QUANT_PROGRAMS = 128              # small M: at most about this many prepass programs (see prepass_shape)
SMEM_PER_SM = 228 * 1024    # H100 / H200; the occupancy estimate of the stream-K grid
STREAMK_MAX_PER_SM = 4      # stream-K programs per SM at most
# dot_streamk_fused (prepass inside the stream-K launch): every program must be resident at once,
# so the grid is this many programs per SM at most (a margin under the 3 that the shared memory of a
# 16x64x256 tile allows), launched cooperatively where Triton can (a launch error, never a hang).
FUSED_PER_SM = 2
FUSED_SMEM_PER_SM = 180 * 1024   # ... and no more than fit in this much shared memory (Triton pads tiles)
FUSED_QBLOCK_MAX = 4096     # activation columns a quantizing program holds in registers (32 per thread at 4 warps)
SCAN_BLOCK_K_MAX = 512      # K tile of the fused kernels' absmax scan
GROUP_M = 8
DEFAULT_NUM_WARPS = 4
DEFAULT_NUM_STAGES = 3
PLAN_MEMO_MAX = 256         # launch plans kept per weight (one per M, rule and activation layout)
EPILOGUE_BLOCK_M = 16       # int_epilogue_kernel tiles: at most this many rows ...
EPILOGUE_ELEMENTS = 4096    # ... and elements per program (32 per thread at 4 warps)


def current_stream(index: int) -> int:
    """The raw current CUDA stream of device ``index`` (the capture stream under graph capture)."""
    return torch._C._cuda_getCurrentRawStream(index)


@lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@lru_cache(maxsize=None)
def pdl_supported(index: int) -> bool:
    """Programmatic dependent launch: an sm_90+ device and a Triton with ``gdc_wait`` and ``launch_pdl``."""
    if not K.HAS_GDC:
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions

        if "launch_pdl" not in getattr(CUDAOptions, "__dataclass_fields__", {}):
            return False
        return torch.cuda.get_device_capability(index)[0] >= 9
    except Exception:  # noqa: BLE001
        return False


@lru_cache(maxsize=None)
def cooperative_supported() -> bool:
    """Whether the installed Triton can launch a grid cooperatively (all programs co-resident or an error)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions

        return "launch_cooperative_grid" in getattr(CUDAOptions, "__dataclass_fields__", {})
    except Exception:  # noqa: BLE001
        return False


@dataclass(frozen=True)
class Kernels:
    """The kernels, compiled (``compiled``) or interpreted."""

    quantize: object
    dot: object
    streamk: object
    gemv: object
    fused_dot: object
    streamk_fused: object
    epilogue: object


class OpRunner:
    """One op (``linear_dynamic`` or ``linear_relu_dynamic``) under one config."""

    def __init__(self, runtime: "CudaRuntime", op: str, relu: bool):
        cfg = runtime.config.op(op)
        self.runtime = runtime
        self.op = op
        self.relu = relu
        self.per_row = cfg.activation_scale == "per_row"
        self.router = Router(cfg.routing, padding=False)
        self.small_max_bytes = cfg.small_max_bytes if cfg.small_routing else 0
        self.small_router = Router(cfg.small_routing, padding=False) if cfg.small_routing else None
        self.counts = {rule.name: CallCounter() for rule in cfg.routing}
        for rule in cfg.small_routing:
            self.counts.setdefault(rule.name, CallCounter())
        # Deterministic mode (config key, or torch.use_deterministic_algorithms(True) at call
        # time): what each rule runs as, worked out once; None where the kernel has no
        # deterministic form (then deterministic mode refuses the rule).
        self.deterministic = cfg.deterministic
        self.det_rules = {id(rule): deterministic_rule(rule) for rule in cfg.routing + cfg.small_routing}
        if self.deterministic:
            for rule in cfg.routing + cfg.small_routing:
                if self.det_rules[id(rule)] is None:
                    raise BackendUnavailable(no_deterministic_form(op, rule, "deterministic: true was set"))

    def __call__(self, x: torch.Tensor, w_prepack, reduce_range: bool = False) -> torch.Tensor:
        """The dispatcher entry point (``reduce_range`` is ignored: int32 accumulation)."""
        return self.run(x, w_prepack)

    def rule_for(self, m: int, w: CudaWeight):
        """The routing rule for M rows on this weight (small weights have their own table)."""
        if w.n * w.k <= self.small_max_bytes:
            return self.small_router.route(m).rule
        return self.router.route(m).rule

    def run(self, x: torch.Tensor, w_prepack, owner=None, reduce_range: bool = False) -> torch.Tensor:
        rt = self.runtime
        if x.device.type != rt.device_type:
            raise ValueError(f"{self.op}: the cuda backend ({rt.execution}) expects X on a "
                             f"{rt.device_type} device, got X on {x.device} (shape {list(x.shape)}, {x.dtype})")
        w = rt.weight(w_prepack, x.device, self.op, owner)
        check_activation(x, w.k, self.op)
        two_d = x.dim() == 2
        x2d = x if two_d else x.reshape(-1, w.k)
        m = x2d.shape[0]
        if m == 0:
            return x.new_empty((*x.shape[:-1], w.n))
        rule = self.rule_for(m, w)
        self.counts[rule.name].increment()
        deterministic = self.deterministic or _deterministic_algorithms()
        if deterministic:
            rule = self.det_rules[id(rule)] or _refuse(self.op, rule)
        out = rt.linear(x2d, w, rule, self.per_row, self.relu, deterministic)
        return out if two_d else out.view(*x.shape[:-1], w.n)


_deterministic_algorithms = torch.are_deterministic_algorithms_enabled


def deterministic_rule(rule):
    """The rule as deterministic mode runs it (the same object where the kernel is
    reproducible as it is), or ``None`` where its kernel has no deterministic form."""
    kernel = DETERMINISTIC_KERNEL.get(rule.kernel)
    if kernel is None:
        return None
    return rule if kernel == rule.kernel else dataclasses.replace(rule, kernel=kernel)


def no_deterministic_form(op: str, rule, why: str) -> str:
    """PyTorch's words for an operation without a deterministic implementation, naming the rule."""
    return (f"{op}: routing rule {rule.name!r} (kernel {rule.kernel!r}) of the cuda backend does not have a "
            f"deterministic implementation, but {why}. Route those M to a kernel that has one "
            f"({', '.join(sorted(DETERMINISTIC_KERNEL))}; docs/CUDA.md, \"Determinism\")")


def _refuse(op: str, rule):
    """As PyTorch does for its own such operations: an error, or a warning under ``warn_only=True``
    (then the rule runs as it is)."""
    why = "you set 'torch.use_deterministic_algorithms(True)'"
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(no_deterministic_form(op, rule, why + " with warn_only=True"), UserWarning, stacklevel=3)
        return rule
    raise RuntimeError(no_deterministic_form(op, rule, why) + ". You can turn off determinism just for this "
                       "operation, or use the 'warn_only=True' option")


@dataclass(frozen=True)
class _Ptrs:
    """A weight's device addresses (ints), shaped like :class:`CudaWeight` for ``Plan._args``."""

    w: int
    scale: int
    zero_point: int | None
    bias: int | None


class _Launch:
    """One kernel launch of a plan: the kernel, its grid, constexprs and launch options,
    and (compiled mode) the bound kernel that repeats it without ``JITFunction.run``."""

    __slots__ = ("kernel", "grid", "kwargs", "bound", "tried")

    def __init__(self, kernel, grid, kwargs):
        self.kernel, self.grid, self.kwargs = kernel, grid, kwargs
        self.bound = None
        self.tried = False

    def launch(self, args: tuple, fast: bool) -> None:
        if fast and not self.tried:
            self.tried = True
            self.bound = bind(self.kernel, self.grid, args, self.kwargs)
            return
        self.kernel[self.grid](*args, **self.kwargs)


class Plan:
    """How one (weight, rule, M, activation layout, mode) call runs, worked out once:
    grids, constexprs, the workspace layout (``Xq``, scales, row sums in one
    allocation) and, in compiled mode, the bound kernels. A call then costs two
    allocations (output, workspace) and one to three direct launches.

    ``deterministic``: a GEMM that adds partial sums with atomics adds them as
    int32 (``INT_ACC``: exact, so the same bits in any order) and a third launch,
    :func:`~.kernels.int_epilogue_kernel`, makes the fp32 output of them."""

    def __init__(self, rt: "CudaRuntime", w: CudaWeight, rule, m: int, per_row: bool, relu: bool,
                 stride_xm: int, stride_xk: int, device: torch.device, deterministic: bool = False):
        kern = rt.kernels
        self.stub = rt._stubbed
        self.rule = rule
        self.m, self.n, self.k, self.kp = m, w.n, w.k, w.kp
        self.device = device
        self.index = device.index if device.type == "cuda" else -1
        self.per_row = per_row
        self.w = w
        self.sxm, self.sxk = stride_xm, stride_xk
        self.relu_after = False
        self.int_acc = False
        self.ptrs = None
        self.launches: list[_Launch] = []
        warps = rule.num_warps or DEFAULT_NUM_WARPS
        stages = rule.num_stages or DEFAULT_NUM_STAGES
        has_wzp, has_bias = w.zero_point is not None, w.bias is not None
        self.has_wzp = has_wzp
        self.kind = rule.kernel
        bm, bn, bk = rule.block_m, rule.block_n, rule.block_k
        self.ws_bytes = 0
        self.one_alloc, self.ws_off = False, 0
        if rule.kernel in ("gemv_fused", "dot_fused"):
            grid = (triton_cdiv(w.n, bn), triton_cdiv(m, bm), 1)
            consts = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SCAN_BLOCK_K=min(SCAN_BLOCK_K_MAX, _next_pow2(w.k)),
                          PER_ROW=per_row, HAS_WZP=has_wzp, HAS_BIAS=has_bias, RELU=relu,
                          num_warps=warps, num_stages=stages)
            self.launches.append(_Launch(kern.gemv if rule.kernel == "gemv_fused" else kern.fused_dot, grid, consts))
            return
        if rule.kernel == "dot_streamk_fused":
            if self._plan_fused(rt, w, rule, m, per_row, relu, device, warps, stages):
                return
            self.kind = "dot_streamk"      # see _plan_fused: the same GEMM after a separate prepass
        pdl = rt.pdl and device.type == "cuda" and pdl_supported(self.index)
        # workspace: Xq [m, kp] int8 | scales [m] fp32 | row sums [m] int32 (16-byte aligned pieces)
        self.xs_off = m * w.kp
        self.rs_off = self.xs_off + round_up(4 * m, 16)
        self.ws_bytes = self.rs_off + (round_up(4 * m, 16) if has_wzp else 0)
        self.one_alloc = m <= QUANT_SMALL_M
        self.ws_off = round_up(4 * m * w.n, 16) if self.one_alloc else 0
        self.total_words = (self.ws_off + self.ws_bytes) // 4
        if self.kind == "dot_streamk":
            units = triton_cdiv(m, bm) * triton_cdiv(w.n, bn) * (w.kp // bk)
            programs = min(units, rt._resident_programs(device, rule, warps, stages))
            gemm = _Launch(kern.streamk, (programs, 1, 1),
                           dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, HAS_WZP=has_wzp, HAS_BIAS=has_bias,
                                num_warps=warps, num_stages=stages))
            self.split = 0
            zero_out = True
            self.int_acc = deterministic
        else:
            tiles = triton_cdiv(m, bm) * triton_cdiv(w.n, bn)
            k_blocks = w.kp // bk
            split = 1
            if rule.kernel == "dot_splitk":
                split = split_k_for(tiles, k_blocks, rt._target_programs(device))
            k_per_split = triton_cdiv(k_blocks, split) * bk
            split = triton_cdiv(w.kp, k_per_split)
            self.split = k_per_split
            gemm = _Launch(kern.dot, (tiles, split, 1),
                           dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=GROUP_M, SPLIT_K=split,
                                HAS_WZP=has_wzp, HAS_BIAS=has_bias, RELU=relu, num_warps=warps, num_stages=stages))
            zero_out = split > 1
            self.int_acc = deterministic and split > 1
        if self.int_acc:
            gemm.kwargs["INT_ACC"] = True
        else:
            self.relu_after = relu and zero_out      # fp32 partials: ReLU after their sum
        if pdl:
            gemm.kwargs.update(PDL=True, launch_pdl=True)
        self.zero_out = zero_out
        # the prepass
        k = w.k
        n_out = w.n if zero_out else 0
        block_k, scan_once, qblock, chunks, in_regs = prepass_shape(m, k, w.kp, has_wzp, zero_out)
        self.chunk_k = triton_cdiv(triton_cdiv(w.kp, chunks), 16) * 16
        self.chunk_n = triton_cdiv(n_out, chunks)
        self.n_out = n_out
        qkw = dict(BLOCK_K=block_k, QBLOCK=qblock, SCAN_ONCE=scan_once, PER_ROW=per_row, WANT_ROWSUM=has_wzp,
                   ZERO_OUT=zero_out, num_warps=quant_warps(block_k))
        if in_regs:
            qkw["ROW_IN_REGS"] = True
        if pdl:
            qkw["PDL"] = True
        self.launches = [_Launch(kern.quantize, (m, chunks, 1), qkw), gemm]
        if self.int_acc:
            ebm = min(EPILOGUE_BLOCK_M, _next_pow2(m))
            ebn = min(EPILOGUE_ELEMENTS // ebm, K.N_ALIGN)
            self.launches.append(_Launch(kern.epilogue, (triton_cdiv(m, ebm), triton_cdiv(w.n, ebn), 1),
                                         dict(BLOCK_M=ebm, BLOCK_N=ebn, HAS_WZP=has_wzp, HAS_BIAS=has_bias,
                                              RELU=relu, num_warps=4)))

    def _plan_fused(self, rt, w: CudaWeight, rule, m: int, per_row: bool, relu: bool, device, warps: int,
                    stages: int) -> bool:
        """``dot_streamk_fused``: one launch, grid of ``P`` resident programs, the first
        ``m * chunks`` of them quantizing one chunk of one row each (see the kernel). False
        where it cannot run, and the plan is the two-launch ``dot_streamk`` instead: in the
        interpreter (its grid runs one program after another, so no program can wait for
        another), or when a chunk would not fit in registers (``FUSED_QBLOCK_MAX``)."""
        if device.type != "cuda":
            return False
        bm, bn, bk = rule.block_m, rule.block_n, rule.block_k
        units = triton_cdiv(m, bm) * triton_cdiv(w.n, bn) * (w.kp // bk)
        per_sm = max(1, min(FUSED_PER_SM, FUSED_SMEM_PER_SM // tile_smem(rule, stages)))
        programs = min(units, per_sm * _sm_count(self.index))
        # one chunk per row where the row fits in registers: the kernel's first handoff is skipped
        chunks = 1 if _next_pow2(w.kp) <= FUSED_QBLOCK_MAX else min(triton_cdiv(w.kp, QUANT_CHUNK), programs // m)
        if chunks < 1 or m * chunks > programs:
            return False
        chunk_k = round_up(triton_cdiv(w.kp, chunks), 16)
        chunks = triton_cdiv(w.kp, chunk_k)
        qblock = _next_pow2(chunk_k)
        if qblock > FUSED_QBLOCK_MAX:
            return False
        self.chunks, self.chunk_k, self.chunk_n = chunks, chunk_k, triton_cdiv(w.n, chunks)
        # workspace: Xq [m, kp] int8 | scales [m] fp32 | chunk absmax [m*chunks] fp32 | chunk sums of q
        self.xs_off = m * w.kp
        self.part_off = self.xs_off + round_up(4 * m, 16)
        self.psum_off = self.part_off + round_up(4 * m * chunks, 16)
        self.ws_bytes = self.psum_off + (round_up(4 * m * chunks, 16) if self.has_wzp else 0)
        self.one_alloc = True
        self.ws_off = round_up(4 * m * w.n, 16)
        self.total_words = (self.ws_off + self.ws_bytes) // 4
        self.syncs: dict[int, torch.Tensor] = {}      # per stream: the kernel's never-reset counters
        consts = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, QBLOCK=qblock, CHUNKS_P2=_next_pow2(chunks),
                      PER_ROW=per_row, HAS_WZP=self.has_wzp, HAS_BIAS=w.bias is not None,
                      num_warps=warps, num_stages=stages)
        if cooperative_supported():
            consts["launch_cooperative_grid"] = True
        self.kind = "dot_streamk_fused"
        self.relu_after = relu                       # partials are added with atomics: ReLU after the sum
        self.launches = [_Launch(rt.kernels.streamk_fused, (programs, 1, 1), consts)]
        return True

    def _sync(self, stream: int) -> torch.Tensor:
        """The fused kernel's counters for this stream (zeroed once; calls on one stream are ordered,
        calls on two streams must not share counters)."""
        sync = self.syncs.get(stream)
        if sync is None:
            sync = self.syncs[stream] = torch.zeros(4, dtype=torch.int64, device=self.device)
        return sync

    def _fused_args(self, x, absmax, out, base, sync, w):
        """Arguments of ``streamk_fused_kernel``; ``base`` is the workspace's address (int) or int8 tensor."""
        if isinstance(base, int):
            xq, xs, part = base, base + self.xs_off, base + self.part_off
            psum = base + self.psum_off if self.has_wzp else None
        else:
            m = self.m
            xq = base[:self.xs_off].view(m, self.kp)
            xs = base[self.xs_off:self.xs_off + 4 * m].view(torch.float32)
            part = base[self.part_off:self.part_off + 4 * m * self.chunks].view(torch.float32)
            psum = base[self.psum_off:self.psum_off + 4 * m * self.chunks].view(torch.int32) if self.has_wzp else None
        return ((x, absmax, xq, xs, part, psum, sync, w.w, w.scale, w.zero_point, w.bias, out,
                 self.m, self.n, self.k, self.kp, self.chunk_k, self.chunk_n, self.chunks,
                 self.sxm, self.sxk, self.kp, self.kp, self.n),)

    # -- arguments -------------------------------------------------------
    def _pointers(self):
        """The weight's device addresses as ints (direct launches; the plan lives with the weight)."""
        w = self.w
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        return _Ptrs(ptr(w.w), ptr(w.scale), ptr(w.zero_point), ptr(w.bias))

    def _args(self, x, absmax, out, xq, xs, rs, w=None):
        w = w or self.w
        if self.kind in ("gemv_fused", "dot_fused"):
            return ((x, absmax, w.w, w.scale, w.zero_point, w.bias, out,
                     self.m, self.n, self.k, self.kp, self.sxm, self.sxk, self.kp, self.n),)
        quant = (x, xq, xs, rs, absmax, out if self.zero_out else None, self.k, self.kp, self.n_out,
                 self.chunk_k, self.chunk_n, self.sxm, self.sxk, self.kp, self.n if self.zero_out else 0)
        # INT_ACC: the GEMM adds int32 sums into the output's bytes, the epilogue reads them there
        acc = out if not self.int_acc or isinstance(out, int) else out.view(torch.int32)
        if self.kind == "dot_streamk":
            gemm = (xq, xs, rs, w.w, w.scale, w.zero_point, w.bias, acc,
                    self.m, self.n, self.kp, self.kp, self.kp, self.n)
        else:
            gemm = (xq, xs, rs, w.w, w.scale, w.zero_point, w.bias, acc,
                    self.m, self.n, self.kp, self.split, self.kp, self.kp, self.n)
        if self.int_acc:
            return quant, gemm, (acc, xs, rs, w.scale, w.zero_point, w.bias, out, self.m, self.n, self.n)
        return quant, gemm

    def __call__(self, x: torch.Tensor, absmax, fast: bool) -> torch.Tensor:
        m, n = self.m, self.n
        ws_bytes = self.ws_bytes
        # One allocation per call: at decode sizes the workspace rides behind the output in the same
        # fp32 buffer (an allocation is ~4 us of host time on the H200 machine, as much as the GPU work
        # of a small layer); the output is a [M, N] view at its start.
        if ws_bytes and self.one_alloc:
            buf = x.new_empty(self.total_words)
            out = buf.as_strided((m, n), (n, 1))
        else:
            out = x.new_empty((m, n))
            buf = torch.empty(ws_bytes, dtype=torch.int8, device=x.device) if ws_bytes else None
        launches = self.launches
        if self.stub or (fast and all(launch.bound is not None for launch in launches)):
            ptrs = self.ptrs
            if ptrs is None:
                ptrs = self.ptrs = self._pointers()
            xp, op = x.data_ptr(), out.data_ptr()
            ap = None if absmax is None else absmax.data_ptr()
            if self.kind == "dot_streamk_fused":
                stream = current_stream(self.index)
                args = self._fused_args(xp, ap, op, buf.data_ptr() + self.ws_off, self._sync(stream).data_ptr(), ptrs)
            elif ws_bytes:
                p = buf.data_ptr() + self.ws_off
                args = self._args(xp, ap, op, p, p + self.xs_off, p + self.rs_off if self.has_wzp else None, ptrs)
            else:
                args = self._args(xp, ap, op, None, None, None, ptrs)
            if self.stub:                                      # stub_kernels(): the host work alone
                return out
            if self.kind != "dot_streamk_fused":
                stream = current_stream(self.index)
            try:
                for launch, a in zip(launches, args):
                    launch.bound(stream, *a)
            except (TypeError, ValueError, OverflowError):
                # the launcher refused the arguments (raised before launching): Triton's own path from now on
                for launch in launches:
                    launch.bound = None
                return self(x, absmax, False)
        elif self.kind == "dot_streamk_fused":
            ws = buf.view(torch.int8)[self.ws_off:self.ws_off + ws_bytes]
            sync = self._sync(current_stream(self.index))
            try:
                launches[0].launch(self._fused_args(x, absmax, out, ws, sync, self.w)[0], fast)
            except RuntimeError as exc:        # e.g. the grid cannot be co-resident: refused before it runs
                raise RuntimeError(
                    f"cuda backend: dot_streamk_fused ({self.rule.name}) for X [{m}, {self.k}] float32, "
                    f"W [{n}, {self.k}] int8: launching {launches[0].grid[0]} co-resident programs failed: {exc}. "
                    "Route this M to dot_streamk or use smaller tiles") from exc
        else:
            if ws_bytes:
                ws = buf.view(torch.int8)[self.ws_off:self.ws_off + ws_bytes]
                xq = ws[:self.xs_off].view(m, self.kp)
                xs = ws[self.xs_off:self.xs_off + 4 * m].view(torch.float32)
                rs = ws[self.rs_off:self.rs_off + 4 * m].view(torch.int32) if self.has_wzp else None
                args = self._args(x, absmax, out, xq, xs, rs)
            else:
                args = self._args(x, absmax, out, None, None, None)
            for launch, a in zip(launches, args):
                launch.launch(a, fast)
        if self.relu_after:
            torch.relu_(out)                                   # NaN stays NaN
        return out


class CudaRuntime:
    def __init__(self, config: Config):
        self.config = config
        self.execution, self.kernels, self.execution_detail = _resolve_execution(config.execution)
        self.device_type = "cuda" if self.execution == "compiled" else "cpu"
        self.dispatch_key = "CUDA" if self.execution == "compiled" else "CPU"
        self.cache = WeightCache(config.weight_cache.max_bytes, self._prepare)
        self.runners = {op: OpRunner(self, op, relu)
                        for op, relu in ((LINEAR_DYNAMIC, False), (LINEAR_RELU_DYNAMIC, True))
                        if config.op(op).enabled}
        self.streamk_per_sm = 0            # 0: from the occupancy estimate (a benchmark may force it)
        # Launch compiled kernels directly after their first launch (common/launch.py); the
        # benchmark turns these off to measure what they save.
        self.fast_launch = self.execution == "compiled"
        self.pdl = self.execution == "compiled"
        self._stubbed = False

    @contextlib.contextmanager
    def stub_kernels(self):
        """Launch no kernel inside the block: outputs are allocated, not computed
        (host-overhead measurement; hook ``opregistry_stub_kernels``). Plans made
        inside use the stub; the plans made before are kept for afterwards."""
        kernels, fast = self.kernels, self.fast_launch
        stub = StubKernel()
        self.kernels, self.fast_launch, self._stubbed = Kernels(*[stub] * 7), False, True
        try:
            yield
        finally:
            self.kernels, self.fast_launch, self._stubbed = kernels, fast, False

    # -- weights -------------------------------------------------------
    def weight(self, w_prepack, device: torch.device, op: str, owner=None) -> CudaWeight:
        index = -1 if device.type == "cpu" else (device.index if device.index is not None
                                                 else torch.cuda.current_device())
        # The cache's "layout" slot carries the device: one device copy per (weight, device).
        return self.cache.get(w_prepack, (index, K.K_ALIGN), op, owner)

    @staticmethod
    def _prepare(w_prepack, key, op) -> CudaWeight:
        index = key[0]
        w = prepare_cuda_weight(unpack_weight(w_prepack, op), op)      # on the CPU
        return w if index < 0 else w.to(torch.device("cuda", index))

    # -- the op ----------------------------------------------------------
    def linear(self, x2d: torch.Tensor, w: CudaWeight, rule, per_row: bool, relu: bool,
               deterministic: bool = False) -> torch.Tensor:
        """``y = dequant(quant(x2d) @ W^T) (+bias) (ReLU)`` for ``x2d [M, K]`` fp32, any strides;
        ``deterministic``: the same bits on every call (see :class:`Plan`; ``rule`` is then the
        rule as deterministic mode runs it, :func:`deterministic_rule`)."""
        if x2d.is_cuda and x2d.get_device() != torch._C._cuda_getDevice():
            with torch.cuda.device(x2d.device):
                return self._linear(x2d, w, rule, per_row, relu, deterministic)
        return self._linear(x2d, w, rule, per_row, relu, deterministic)

    def _linear(self, x2d, w: CudaWeight, rule, per_row: bool, relu: bool, deterministic: bool) -> torch.Tensor:
        m = x2d.shape[0]
        sxm, sxk = x2d.stride()
        fast = self.fast_launch and self.execution == "compiled"
        # id(rule): hashing the frozen rule dataclass costs ~1 us a call; the plan keeps the rule
        # and is rebuilt if another rule ever takes that id
        key = (id(rule), m, per_row, relu, sxm, sxk, x2d.data_ptr() & 15, fast, self.pdl, self.streamk_per_sm,
               self._stubbed, deterministic)
        plans = w.plans
        plan = plans.get(key)
        if plan is None or plan.rule is not rule:
            plan = Plan(self, w, rule, m, per_row, relu, sxm, sxk, x2d.device, deterministic)
            if len(plans) >= PLAN_MEMO_MAX:
                plans.clear()
            plans[key] = plan
        absmax = None if per_row else x2d.abs().amax().reshape(1)   # NaN/Inf propagate: the row check sees them
        return plan(x2d, absmax, fast)

    def quantize(self, x2d: torch.Tensor, kp: int, per_row: bool, absmax=None, want_rowsum: bool = False,
                 zero_out: torch.Tensor | None = None):
        """Activation prepass alone (benchmarks, tests): ``(xq [M, kp] int8, scale [M] fp32,
        rowsum [M] int32 or None)``; also zeroes ``zero_out`` ([M, N] fp32) when given."""
        m, k = x2d.shape
        dev = x2d.device
        xq = torch.empty(m, kp, dtype=torch.int8, device=dev)
        xs = torch.empty(m, dtype=torch.float32, device=dev)
        rowsum = torch.empty(m, dtype=torch.int32, device=dev) if want_rowsum else None
        if per_row is False and absmax is None:
            absmax = x2d.abs().amax().reshape(1)
        n_out = 0 if zero_out is None else zero_out.shape[1]
        block_k, scan_once, qblock, chunks, in_regs = prepass_shape(m, k, kp, want_rowsum, zero_out is not None)
        chunk_k = triton_cdiv(triton_cdiv(kp, chunks), 16) * 16
        chunk_n = triton_cdiv(n_out, chunks)
        self.kernels.quantize[(m, chunks)](
            x2d, xq, xs, rowsum, absmax, zero_out, k, kp, n_out, chunk_k, chunk_n,
            x2d.stride(0), x2d.stride(1), xq.stride(0), 0 if zero_out is None else zero_out.stride(0),
            BLOCK_K=block_k, QBLOCK=qblock, SCAN_ONCE=scan_once, PER_ROW=per_row, WANT_ROWSUM=want_rowsum,
            ZERO_OUT=zero_out is not None, ROW_IN_REGS=in_regs, num_warps=quant_warps(block_k),
        )
        return xq, xs, rowsum

    def _resident_programs(self, device: torch.device, rule, warps: int, stages: int) -> int:
        """Programs of one full wave for the stream-K grid: SMs x blocks per SM
        (estimated from the tiles' shared memory and the warps)."""
        if device.type != "cuda":
            return 8
        per_sm = self.streamk_per_sm or max(1, min(SMEM_PER_SM // tile_smem(rule, stages), 64 // warps,
                                                   STREAMK_MAX_PER_SM))
        return per_sm * _sm_count(device.index if device.index is not None else torch.cuda.current_device())

    def _target_programs(self, device: torch.device) -> int:
        """Programs wanted in flight for split-K: two waves of the device's SMs."""
        if device.type != "cuda":
            return 8
        return 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())

    # -- lifecycle -----------------------------------------------------
    def close(self) -> None:
        self.cache.clear()

    def status(self) -> dict:
        return {
            "execution": self.execution,
            "execution_detail": self.execution_detail,
            "dispatch_key": self.dispatch_key,
            "device": self.config.device,
            "config_files": list(self.config.sources),
            "fast_launch": self.fast_launch,
            "pdl": self.pdl and self.execution == "compiled" and pdl_supported(torch.cuda.current_device()),
            "weight_cache": self.cache.stats(),
            "routing": {op: {name: c.value for name, c in r.counts.items()} for op, r in self.runners.items()},
            # per op: deterministic kernels always (config), or while torch.use_deterministic_algorithms(True)
            "deterministic": {op: "always" if r.deterministic else "under torch.use_deterministic_algorithms"
                              for op, r in self.runners.items()},
        }


def prepass_shape(m: int, k: int, kp: int, want_rowsum: bool, zero_out: bool) -> tuple[int, bool, int, int, bool]:
    """``(BLOCK_K, SCAN_ONCE, QBLOCK, chunks, ROW_IN_REGS)`` of the prepass for M rows of K
    (padded Kp); one program per (row, chunk).

    Small M: the whole row in one load, its quantization split over chunks of
    ``QUANT_CHUNK`` columns so that a decode row's divisions run on several SMs;
    each chunk re-reads the row for the absmax, so the chunks are capped at about
    ``QUANT_PROGRAMS`` programs in all (at M = 64, K = 18944 on an H200: 640 programs
    took 17 us, the re-reads being 48 MB). Larger M: one chunk; the row read once and
    quantized from registers up to ``QUANT_ROW_IN_REGS_MAX`` (not with ``zero_out``),
    else a loop over K tiles (absmax, then quantization)."""
    if m <= QUANT_SMALL_M and k <= QUANT_SCAN_ONCE_MAX:
        chunks = 1 if want_rowsum else max(1, min(triton_cdiv(kp, QUANT_CHUNK), QUANT_PROGRAMS // m))
        return _next_pow2(k), True, QUANT_CHUNK, chunks, False
    if _next_pow2(kp) <= QUANT_ROW_IN_REGS_MAX and not zero_out:
        return _next_pow2(kp), True, _next_pow2(kp), 1, True
    if k <= QUANT_PREFILL_SCAN_ONCE_MAX:
        return _next_pow2(k), True, _next_pow2(k), 1, False
    return QUANT_BLOCK_K, False, QUANT_BLOCK_K, 1, False


def split_k_for(tiles: int, k_blocks: int, target_programs: int) -> int:
    """K splits so that ``tiles x splits`` reaches ``target_programs`` (at most one split per K block)."""
    if tiles >= target_programs:
        return 1
    return max(1, min(k_blocks, math.ceil(target_programs / tiles)))


def tile_smem(rule, stages: int) -> int:
    """Shared memory of a dot tile as Triton 3.6 allocates it for sm_90: ``stages`` buffers
    for wgmma tiles (block_m >= 64), ``stages - 1`` for mma.sync tiles; plus 1 KiB."""
    buffers = stages if rule.block_m >= 64 else max(1, stages - 1)
    return (rule.block_m + rule.block_n) * rule.block_k * buffers + 1024


def quant_warps(block_k: int) -> int:
    """Warps of the prepass: about 16 fp32 values of the row per thread, 1..16 warps."""
    return max(1, min(16, block_k // 512))


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(v: int, multiple: int) -> int:
    return -(-v // multiple) * multiple


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _resolve_execution(mode: str):
    """Return ``(mode, kernels, detail)``; never falls back silently."""
    if mode == "interpreter":
        return "interpreter", Kernels(InterpretedKernel(K.quantize_kernel),
                                      InterpretedKernel(K.dot_kernel),
                                      InterpretedKernel(K.streamk_kernel),
                                      InterpretedKernel(K.gemv_kernel),
                                      InterpretedKernel(K.fused_dot_kernel),
                                      InterpretedKernel(K.streamk_fused_kernel),
                                      InterpretedKernel(K.int_epilogue_kernel)), (
            "Triton interpreter on CPU tensors (ops registered for the CPU key): validates the "
            "kernel source on any host; not for speed")
    ok, detail = cuda_status()
    if ok:
        return "compiled", Kernels(K.quantize_kernel, K.dot_kernel, K.streamk_kernel, K.gemv_kernel,
                                   K.fused_dot_kernel, K.streamk_fused_kernel, K.int_epilogue_kernel), detail
    raise BackendUnavailable(
        f"cuda backend: {option('execution', mode)} needs a CUDA device: {detail}. "
        "Run on a host with an NVIDIA GPU and a CUDA build of torch, or pass "
        f"{option('execution', 'interpreter')} to run the same kernels through Triton's interpreter "
        "on CPU tensors (slow; for validation).")
