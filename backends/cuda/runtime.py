"""The CUDA backend at run time: a config in, op kernels out.

:class:`CudaRuntime` owns what one ``registry.enable(backend="cuda")`` makes:
the kernels in the chosen execution mode, the device weight cache, one
router and runner per op, and the module fast path. ``disable()`` drops it.

Execution modes:

* ``native`` (``auto`` when a CUDA device is present): compiled Triton
  kernels on CUDA tensors; the ops are registered for the ``CUDA`` key.
* ``interpreter``: the same kernel source through Triton's interpreter on
  CPU tensors, registered for the ``CPU`` key. For validation on hosts
  without a GPU only (slow, serial grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from registry import BackendUnavailable, CallCounter, Config
from backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC, check_activation, unpack_weight
from backends.common.qlinear_kernel import InterpretedKernel
from backends.common.routing import Router
from backends.common.weights import WeightCache

from . import kernels as K
from .weights import CudaWeight, prepare_cuda_weight

# Kernel names a routing rule may use (config key ``kernel``).
DOT_KERNELS = ("dot", "dot_splitk", "dot_streamk")
GEMV_KERNELS = ("gemv_fused",)
KERNELS = DOT_KERNELS + GEMV_KERNELS

# Activation prepass (quantize_kernel) shapes:
QUANT_SMALL_M = 64                # up to this M, a row's quantization is split over chunks of K ...
QUANT_CHUNK = 2048                # ... of this many columns (the row's absmax is read whole by each)
QUANT_SCAN_ONCE_MAX = 32768       # ... when the whole row fits in one load (<= 64 fp32 per thread)
QUANT_PREFILL_SCAN_ONCE_MAX = 4096  # larger M: one load per row up to this K, else a loop ...
QUANT_BLOCK_K = 1024              # ... of this K tile (small programs, many per SM)
SMEM_PER_SM = 228 * 1024    # H100; the occupancy estimate of the stream-K grid
STREAMK_MAX_PER_SM = 4      # stream-K programs per SM at most
SCAN_BLOCK_K_MAX = 512      # K tile of the fused GEMV's absmax scan
GROUP_M = 8
DEFAULT_NUM_WARPS = 4
DEFAULT_NUM_STAGES = 3


def cuda_status() -> tuple[bool, str]:
    """``(available, reason)``: cheap, never raises."""
    try:
        if not torch.cuda.is_available():
            built = torch.version.cuda
            why = (f"torch {torch.__version__} was built without CUDA" if built is None
                   else f"torch {torch.__version__} (CUDA {built}) sees no CUDA device")
            return False, why
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"
    return True, f"{torch.cuda.device_count()} CUDA device(s): {torch.cuda.get_device_name(0)}"


@lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@dataclass(frozen=True)
class Kernels:
    """The kernels, compiled (``native``) or interpreted."""

    quantize: object
    dot: object
    streamk: object
    gemv: object


class OpRunner:
    """One op (``linear_dynamic`` or ``linear_relu_dynamic``) under one config."""

    def __init__(self, runtime: "CudaRuntime", op: str, relu: bool):
        cfg = runtime.config.op(op)
        self.runtime = runtime
        self.op = op
        self.relu = relu
        self.per_row = cfg.activation_scale == "per_row"
        self.router = Router(cfg.routing, padding=False)
        self.counts = {rule.name: CallCounter() for rule in cfg.routing}

    def __call__(self, x: torch.Tensor, w_prepack, reduce_range: bool = False) -> torch.Tensor:
        """The dispatcher entry point (``reduce_range`` is ignored: int32 accumulation)."""
        return self.run(x, w_prepack)

    def run(self, x: torch.Tensor, w_prepack, owner=None, reduce_range: bool = False) -> torch.Tensor:
        rt = self.runtime
        if x.device.type != rt.device_type:
            raise ValueError(f"{self.op}: the cuda backend ({rt.execution}) expects X on a "
                             f"{rt.device_type} device, got X on {x.device} (shape {list(x.shape)}, {x.dtype})")
        w = rt.weight(w_prepack, x.device, self.op, owner)
        check_activation(x, w.k, self.op)
        x2d = x.reshape(-1, w.k)
        m = x2d.shape[0]
        out_shape = (*x.shape[:-1], w.n)
        if m == 0:
            return x.new_empty(out_shape)
        rule = self.router.route(m).rule
        self.counts[rule.name].increment()
        out = rt.linear(x2d, w, rule, self.per_row, self.relu)
        return out.view(out_shape)


class CudaRuntime:
    def __init__(self, config: Config):
        self.config = config
        self.execution, self.kernels, self.execution_detail = _resolve_execution(config.execution)
        self.device_type = "cuda" if self.execution == "native" else "cpu"
        self.dispatch_key = "CUDA" if self.execution == "native" else "CPU"
        self.cache = WeightCache(config.weight_cache.max_bytes, self._prepare)
        self.runners = {op: OpRunner(self, op, relu)
                        for op, relu in ((LINEAR_DYNAMIC, False), (LINEAR_RELU_DYNAMIC, True))
                        if config.op(op).enabled}
        self.streamk_per_sm = 0            # 0: from the occupancy estimate (a benchmark may force it)

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
    def linear(self, x2d: torch.Tensor, w: CudaWeight, rule, per_row: bool, relu: bool) -> torch.Tensor:
        """``y = dequant(quant(x2d) @ W^T) (+bias) (ReLU)`` for ``x2d [M, K]`` fp32, any strides."""
        if x2d.device.type == "cuda" and x2d.device.index != torch.cuda.current_device():
            with torch.cuda.device(x2d.device):
                return self._linear(x2d, w, rule, per_row, relu)
        return self._linear(x2d, w, rule, per_row, relu)

    def _linear(self, x2d, w: CudaWeight, rule, per_row: bool, relu: bool) -> torch.Tensor:
        m, k = x2d.shape
        n = w.n
        absmax = None if per_row else x2d.abs().amax().reshape(1)   # NaN/Inf propagate: the row check sees them
        warps = rule.num_warps or DEFAULT_NUM_WARPS
        stages = rule.num_stages or DEFAULT_NUM_STAGES
        has_wzp = w.zero_point is not None
        if rule.kernel == "gemv_fused":
            out = torch.empty(m, n, dtype=torch.float32, device=x2d.device)
            self._gemv(x2d, absmax, w, out, rule, per_row, relu, warps, stages)
            return out
        bm, bn, bk = rule.block_m, rule.block_n, rule.block_k
        has_bias = w.bias is not None
        if rule.kernel == "dot_streamk":
            out = torch.empty(m, n, dtype=torch.float32, device=x2d.device)
            xq, xs, rowsum = self.quantize(x2d, w.kp, per_row, absmax, has_wzp, zero_out=out)
            units = triton_cdiv(m, bm) * triton_cdiv(n, bn) * (w.kp // bk)
            programs = min(units, self._resident_programs(x2d.device, rule, warps, stages))
            self.kernels.streamk[(programs,)](
                xq, xs, rowsum, w.w, w.scale, w.zero_point, w.bias, out,
                m, n, w.kp, xq.stride(0), w.w.stride(0), out.stride(0),
                BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, HAS_WZP=has_wzp, HAS_BIAS=has_bias,
                num_warps=warps, num_stages=stages,
            )
            if relu:
                torch.relu_(out)                               # NaN stays NaN
            return out
        tiles = triton_cdiv(m, bm) * triton_cdiv(n, bn)
        k_blocks = w.kp // bk
        split = 1
        if rule.kernel == "dot_splitk":
            split = split_k_for(tiles, k_blocks, self._target_programs(x2d.device))
        k_per_split = triton_cdiv(k_blocks, split) * bk
        split = triton_cdiv(w.kp, k_per_split)
        out = torch.empty(m, n, dtype=torch.float32, device=x2d.device)
        xq, xs, rowsum = self.quantize(x2d, w.kp, per_row, absmax, has_wzp, zero_out=out if split > 1 else None)
        self.kernels.dot[(tiles, split)](
            xq, xs, rowsum, w.w, w.scale, w.zero_point, w.bias, out,
            m, n, w.kp, k_per_split, xq.stride(0), w.w.stride(0), out.stride(0),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=GROUP_M, SPLIT_K=split,
            HAS_WZP=has_wzp, HAS_BIAS=has_bias, RELU=relu,
            num_warps=warps, num_stages=stages,
        )
        if split > 1 and relu:
            torch.relu_(out)                                   # NaN stays NaN
        return out

    def quantize(self, x2d: torch.Tensor, kp: int, per_row: bool, absmax=None, want_rowsum: bool = False,
                 zero_out: torch.Tensor | None = None):
        """Activation prepass: ``(xq [M, kp] int8, scale [M] fp32, rowsum [M] int32 or None)``;
        also zeroes ``zero_out`` ([M, N] fp32) when given."""
        m, k = x2d.shape
        dev = x2d.device
        xq = torch.empty(m, kp, dtype=torch.int8, device=dev)
        xs = torch.empty(m, dtype=torch.float32, device=dev)
        rowsum = torch.empty(m, dtype=torch.int32, device=dev) if want_rowsum else None
        if per_row is False and absmax is None:
            absmax = x2d.abs().amax().reshape(1)
        n_out = 0 if zero_out is None else zero_out.shape[1]
        if m <= QUANT_SMALL_M and k <= QUANT_SCAN_ONCE_MAX:
            # decode: the whole row in one load, its quantization split over chunks of K
            block_k, scan_once, qblock = _next_pow2(k), True, QUANT_CHUNK
            chunks = 1 if want_rowsum else triton_cdiv(kp, QUANT_CHUNK)
        elif k <= QUANT_PREFILL_SCAN_ONCE_MAX:
            block_k, scan_once, chunks = _next_pow2(k), True, 1
            qblock = block_k
        else:
            block_k, scan_once, qblock, chunks = QUANT_BLOCK_K, False, QUANT_BLOCK_K, 1
        chunk_k = triton_cdiv(triton_cdiv(kp, chunks), 16) * 16
        chunk_n = triton_cdiv(n_out, chunks)
        self.kernels.quantize[(m, chunks)](
            x2d, xq, xs, rowsum, absmax, zero_out, k, kp, n_out, chunk_k, chunk_n,
            x2d.stride(0), x2d.stride(1), xq.stride(0), 0 if zero_out is None else zero_out.stride(0),
            BLOCK_K=block_k, QBLOCK=qblock, SCAN_ONCE=scan_once, PER_ROW=per_row, WANT_ROWSUM=want_rowsum,
            ZERO_OUT=zero_out is not None, num_warps=quant_warps(block_k),
        )
        return xq, xs, rowsum

    def _gemv(self, x2d, absmax, w: CudaWeight, out, rule, per_row, relu, warps, stages):
        m, n = out.shape
        grid = (triton_cdiv(n, rule.block_n), triton_cdiv(m, rule.block_m))
        self.kernels.gemv[grid](
            x2d, absmax, w.w, w.scale, w.zero_point, w.bias, out,
            m, n, w.k, w.kp, x2d.stride(0), x2d.stride(1), w.w.stride(0), out.stride(0),
            BLOCK_M=rule.block_m, BLOCK_N=rule.block_n, BLOCK_K=rule.block_k,
            SCAN_BLOCK_K=min(SCAN_BLOCK_K_MAX, _next_pow2(w.k)), PER_ROW=per_row,
            HAS_WZP=w.zero_point is not None, HAS_BIAS=w.bias is not None, RELU=relu,
            num_warps=warps, num_stages=stages,
        )

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
            "weight_cache": self.cache.stats(),
            "routing": {op: {name: c.value for name, c in r.counts.items()} for op, r in self.runners.items()},
        }


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


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


class _RestoringInterpretedKernel(InterpretedKernel):
    """:class:`InterpretedKernel` that also undoes what the interpreter leaves patched.

    Triton's interpreter patches ``triton.language`` for nested ``@jit`` helper
    calls and (3.9) never restores it, which breaks later *compiled* kernels
    in the same process. Each launch snapshots the patched namespaces and
    puts them back afterwards.
    """

    def __getitem__(self, grid):
        run = super().__getitem__(grid)

        def restoring(*args, **kwargs):
            saved = _snapshot_language()
            try:
                return run(*args, **kwargs)
            finally:
                _restore_language(saved)

        return restoring


def _language_namespaces():
    import triton.language as tl

    objs = [tl, tl.core, tl.math, tl.tensor, getattr(tl.core, "tensor_descriptor_base", None)]
    return [o for o in dict.fromkeys(objs) if o is not None]


def _snapshot_language():
    return [(obj, dict(vars(obj))) for obj in _language_namespaces()]


def _restore_language(saved) -> None:
    for obj, before in saved:
        now = vars(obj)   # names the interpreter added are left: its cached helpers refer to them
        for name, value in before.items():
            if now.get(name, _MISSING) is not value:
                setattr(obj, name, value)


_MISSING = object()


def _resolve_execution(mode: str):
    """Return ``(mode, kernels, detail)``; never falls back silently."""
    if mode == "interpreter":
        return "interpreter", Kernels(_RestoringInterpretedKernel(K.quantize_kernel),
                                      _RestoringInterpretedKernel(K.dot_kernel),
                                      _RestoringInterpretedKernel(K.streamk_kernel),
                                      _RestoringInterpretedKernel(K.gemv_kernel)), (
            "Triton interpreter on CPU tensors (ops registered for the CPU key): validates the "
            "kernel source on any host; not for speed")
    ok, detail = cuda_status()
    if ok:
        return "native", Kernels(K.quantize_kernel, K.dot_kernel, K.streamk_kernel, K.gemv_kernel), detail
    raise BackendUnavailable(
        f"cuda backend: execution={mode!r} needs a CUDA device: {detail}. "
        "Run on a host with an NVIDIA GPU and a CUDA build of torch, or pass execution='interpreter' "
        "to run the same kernels through Triton's interpreter on CPU tensors (slow; for validation).")
