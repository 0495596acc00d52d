"""The ARM backend at run time: a config in, op kernels out.

:class:`ArmRuntime` owns everything one ``registry.enable(backend="arm")`` makes:
the Triton kernel in the chosen execution mode, the weight cache, one router
and runner per op, and the module fast path. ``disable()`` drops it whole.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings

import torch

from opregistry.registry import BackendUnavailable, CallCounter, Config
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC, check_activation, unpack_weight
from opregistry.backends.common.interpreter import InterpretedKernel
from opregistry.backends.common.pytorch_qparams import choose_qparams
from opregistry.backends.common.routing import Route, Router
from opregistry.backends.common.stub import StubKernel
from opregistry.backends.common.weights import WeightCache

from .config import KERNELS  # noqa: F401 - re-exported
from .device import triton_cpu_status
from .kernel import ACT_PER_ROW, ACT_PER_TENSOR, ACT_PYTORCH, launch, qlinear_kernel
from .layout import PreparedWeight, prepare_weight

log = logging.getLogger(__name__)


class OpRunner:
    """One op (``linear_dynamic`` or ``linear_relu_dynamic``) under one config."""

    def __init__(self, runtime: "ArmRuntime", op: str, relu: bool):
        cfg = runtime.config.op(op)
        self.runtime = runtime
        self.op = op
        self.relu = relu
        self.act = {"per_row": ACT_PER_ROW, "per_tensor": ACT_PER_TENSOR, "pytorch": ACT_PYTORCH}[cfg.activation_scale]
        # What the cached weight is prepared for: tile layout, and column sums for the PyTorch scheme.
        self.spec = (cfg.weight_layout.block_k, cfg.weight_layout.block_n, self.act == ACT_PYTORCH)
        self.router = Router(cfg.routing, cfg.padding)
        self.counts = {rule.name: CallCounter() for rule in cfg.routing}

    def __call__(self, x: torch.Tensor, w_prepack, reduce_range: bool = False) -> torch.Tensor:
        """The dispatcher entry point. ``reduce_range`` matters only in ``pytorch``
        mode (7-bit activations, as PyTorch); int32 accumulation needs no headroom."""
        return self.run(x, w_prepack, reduce_range=reduce_range)

    def run(self, x: torch.Tensor, w_prepack, owner=None, reduce_range: bool = False) -> torch.Tensor:
        w = self.runtime.weight(w_prepack, self.spec, self.op, owner)
        check_activation(x, w.k, self.op)
        flat = x.dim() == 2
        x2d = x if flat else x.reshape(-1, w.k)
        m = x2d.shape[0]
        if m == 0:
            return x.new_empty((*x.shape[:-1], w.n))
        route = self.router.route(m)
        self.counts[route.rule.name].increment()
        out = torch.empty(route.m_run, w.n, dtype=torch.float32)
        qparams = self._tensor_qparams(x2d, reduce_range)
        if qparams is None:                  # non-finite input: the whole tensor is NaN by contract
            out.fill_(float("nan"))
        else:
            if route.m_run != m:
                padded = x2d.new_zeros(route.m_run, w.k)
                padded[:m] = x2d
                x2d = padded
            self.runtime.launch(x2d, w, out, route, self.act, self.relu, qparams)
        if route.m_run != m:
            out = out[:m]
        return out if flat else out.view(*x.shape[:-1], w.n)

    def _tensor_qparams(self, x2d: torch.Tensor, reduce_range: bool) -> dict | None:
        """Kernel arguments for modes whose scale spans the whole tensor
        (``{}`` for per_row: the kernel finds its row scales itself)."""
        if self.act == ACT_PER_ROW:
            return {}
        if self.act == ACT_PER_TENSOR:
            absmax = x2d.abs().amax()
            if not torch.isfinite(absmax):
                return None
            scale = (absmax / 127).item() if absmax > 0 else 1.0   # fp32 division, as the reference
            return {"x_scale": scale}
        lo, hi = torch.aminmax(x2d)
        lo, hi = lo.item(), hi.item()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        p = choose_qparams(lo, hi, reduce_range)
        return {"x_scale": p.scale, "x_inv_scale": p.inv_scale, "x_zp": p.zero_point}


class ArmRuntime:
    dispatch_key = "CPU"
    device_type = "cpu"

    def __init__(self, config: Config):
        self.config = config
        self.execution, self.kernel, self.execution_detail = _resolve_execution(config.execution)
        self.cache = WeightCache(config.weight_cache.max_bytes, self._prepare)
        self.runners = {op: OpRunner(self, op, relu)
                        for op, relu in ((LINEAR_DYNAMIC, False), (LINEAR_RELU_DYNAMIC, True))
                        if config.op(op).enabled}
        self.dot_fallbacks: dict[str, str] = {}

    # -- weights -------------------------------------------------------
    def weight(self, w_prepack, spec, op, owner=None) -> PreparedWeight:
        return self.cache.get(w_prepack, spec, op, owner)

    @staticmethod
    def _prepare(w_prepack, spec, op) -> PreparedWeight:
        layout_k, layout_n, pytorch_scheme = spec
        return prepare_weight(unpack_weight(w_prepack, op), layout_k, layout_n, op=op, pytorch_scheme=pytorch_scheme)

    # -- launching -----------------------------------------------------
    def launch(self, x2d, w, out, route: Route, act: int, relu: bool, qparams: dict) -> None:
        rule = route.rule
        use_dot = route.use_dot and rule.name not in self.dot_fallbacks

        def run(use_dot):
            launch(self.kernel, x2d, w, out, block_m=rule.block_m, block_n=rule.block_n, block_k=rule.block_k,
                   use_dot=use_dot, act=act, relu=relu, **qparams)

        try:
            run(use_dot)
        except Exception as exc:
            # Some Triton-CPU builds reject tl.dot with M < 4 (and GPUs below 16).
            # Re-route that rule to the dot-free variant once, loudly, not per call;
            # if that fails too, the original error is the one to see.
            if not use_dot or self.execution != "compiled":
                raise
            try:
                run(False)
            except Exception:
                raise exc from None
            reason = (f"the compiler rejected tl.dot with tiles {rule.block_m}x{rule.block_n}x{rule.block_k}: "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            self.dot_fallbacks[rule.name] = reason
            warnings.warn(f"arm backend: routing rule {rule.name!r} now uses the gemv kernel; {reason}",
                          RuntimeWarning, stacklevel=2)

    # -- lifecycle -----------------------------------------------------
    def close(self) -> None:
        self.cache.clear()

    def status(self) -> dict:
        return {
            "execution": self.execution,
            "execution_detail": self.execution_detail,
            "device": self.config.device,
            "config_files": list(self.config.sources),
            "weight_cache": self.cache.stats(),
            "routing": {op: {name: c.value for name, c in r.counts.items()} for op, r in self.runners.items()},
            "dot_fallbacks": dict(self.dot_fallbacks),
        }

    @contextlib.contextmanager
    def stub_kernels(self):
        """Launch no kernel inside the block: outputs are allocated, not computed
        (host-overhead measurement; hook ``opregistry_stub_kernels``)."""
        kernel, self.kernel = self.kernel, StubKernel()
        try:
            yield
        finally:
            self.kernel = kernel


def _resolve_execution(mode: str):
    """Return ``(mode, kernel, detail)``; never falls back silently."""
    status = triton_cpu_status()
    if mode == "interpreter":
        return "interpreter", InterpretedKernel(qlinear_kernel), (
            "Triton interpreter: validates the kernel source on any host; not for speed")
    if status.active:
        log.info("arm backend: %s", status.detail)
        return "compiled", qlinear_kernel, status.detail
    raise BackendUnavailable(
        f"arm backend: execution={mode!r} needs Triton-CPU, which is not usable here: {status.detail}. "
        "Install Triton-CPU (built from source: see docs/ARM.md) and set TRITON_CPU_BACKEND=1, "
        "or pass execution='interpreter' to run the same kernels through Triton's interpreter "
        "(slow; for validation).")
