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
from opregistry.backends.common.pytorch_kernel import PYTORCH_KERNEL, PytorchKernel
from opregistry.backends.common.pytorch_qparams import choose_qparams, reduce_range_applies
from opregistry.backends.common.routing import Router
from opregistry.backends.common.stub import StubKernel
from opregistry.backends.common.weights import WeightCache

from .config import INT_MM, KERNELS  # noqa: F401 - re-exported
from .device import compiled_unavailable_reason, triton_cpu_status
from .fallback import min_dot_size_rejection
from .prequant import PREQUANT_KERNEL, PREQUANT_KERNELS, ROWDOT, PrequantPlan
from .kernel import ACT_PER_ROW, ACT_PER_TENSOR, ACT_PYTORCH, qlinear_kernel
from .plan import LaunchPlan
from .int_mm import IntMmRunner, prepare_operand
from .layout import KN, NK, PreparedWeight, prepare_weight

log = logging.getLogger(__name__)


CALL_MEMO_MAX = 256   # planned calls kept per (prepared weight, runner): one per M


class Prepared:
    """A linear weight as this runtime runs it: ``weight`` in the kernel's tiled
    layout; for the PyTorch scheme, whether PyTorch's own kernel for this packed
    weight applies ``reduce_range`` (the engine that packed it decides: see
    :mod:`~opregistry.backends.common.pytorch_qparams`); and, per runner (plain,
    ReLU), the launch plans by routing rule and the planned calls by M. Cached
    (and freed) as one entry of the runtime's weight cache."""

    __slots__ = ("weight", "n", "k", "reduce_range_applies", "plans", "calls", "nbytes")

    def __init__(self, weight: PreparedWeight, reduce_range_applies: bool = True):
        self.weight = weight
        self.n, self.k = weight.n, weight.k
        self.reduce_range_applies = reduce_range_applies
        self.plans: dict[tuple, LaunchPlan] = {}      # (relu, rule name) -> plan
        self.calls: tuple[dict, dict] = ({}, {})      # [relu] -> {M: _Call}
        self.nbytes = weight.nbytes


class _Call:
    """M rows on one prepared weight through one runner: the rule's launch plan,
    the rows launched (M padded to the rule's block_m when it pads), the routing
    counters to bump (dispatcher calls, module fast-path calls) and, when the
    module fast path may launch it directly (no padding, a Triton rule), the
    output's shape."""

    __slots__ = ("rule", "plan", "m_run", "count", "count_fast", "direct_shape")

    def __init__(self, rule, plan: LaunchPlan | None, m: int, m_run: int, n: int, count, count_fast):
        self.rule, self.plan, self.m_run = rule, plan, m_run
        self.count, self.count_fast = count, count_fast
        self.direct_shape = (m, n) if plan is not None and m_run == m else None


class _Sum:
    """``.value``: the sum of some CallCounters (read like one)."""

    def __init__(self, counters):
        self._counters = tuple(counters)

    @property
    def value(self) -> int:
        return sum(c.value for c in self._counters)


class OpRunner:
    """One op (``linear_dynamic`` or ``linear_relu_dynamic``) under one config."""

    def __init__(self, runtime: "ArmRuntime", op: str, relu: bool):
        cfg = runtime.config.op(op)
        self.runtime = runtime
        self.op = op
        self.relu = relu
        self.act = {"per_row": ACT_PER_ROW, "per_tensor": ACT_PER_TENSOR, "pytorch": ACT_PYTORCH}[cfg.activation_scale]
        # What the cached weight is prepared for: tiles, column sums for the PyTorch scheme, and the
        # layout orders the routing's kernels read (rowdot_prequant: nk; the others: kn).
        kernels = {rule.kernel for rule in cfg.routing} - {PYTORCH_KERNEL}
        orders = tuple(order for order, needed in ((KN, bool(kernels - {ROWDOT})), (NK, ROWDOT in kernels))
                       if needed) or (KN,)
        self.spec = (cfg.weight_layout.block_k, cfg.weight_layout.block_n, self.act == ACT_PYTORCH, orders)
        self.router = Router(cfg.routing, cfg.padding)
        self.counts = {rule.name: CallCounter() for rule in cfg.routing}        # dispatcher calls
        self.fast_counts = {rule.name: CallCounter() for rule in cfg.routing}   # module fast-path calls
        self.fast_calls = _Sum(self.fast_counts.values())
        self.pytorch = PytorchKernel(op, cfg.routing)                # rules with kernel: pytorch
        self.receive_original = self.pytorch.receive_original        # OpKernel field

    def __call__(self, x: torch.Tensor, w_prepack, reduce_range: bool = False) -> torch.Tensor:
        """The dispatcher entry point (the registry keeps Dynamo out of it).
        ``reduce_range`` matters only in ``pytorch`` mode (7-bit activations where
        PyTorch's kernel for this weight applies it)."""
        return self.run(x, w_prepack, reduce_range=reduce_range)

    def routing_counts(self) -> dict[str, int]:
        return {name: c.value + self.fast_counts[name].value for name, c in self.counts.items()}

    def pytorch_kernel_calls(self) -> int:
        """Calls, by either path, that ``kernel: pytorch`` rules handed to PyTorch's kernel."""
        return sum(self.counts[name].value + self.fast_counts[name].value for name in self.pytorch.rules)

    def run(self, x: torch.Tensor, w_prepack, owner=None, reduce_range: bool = False,
            fast: bool = False) -> torch.Tensor:
        """Any call: the dispatcher's, the module fast path's (``fast``, with the
        module's packed params as ``owner``) when its direct route does not apply."""
        counts = self.fast_counts if fast else self.counts
        if self.pytorch.wanted and x.dim() and (m := math.prod(x.shape[:-1])):
            rule = self.router.route(m).rule
            if rule.kernel == PYTORCH_KERNEL:            # PyTorch's own kernel, captured at enable
                counts[rule.name].increment()
                return self.pytorch(x, w_prepack, reduce_range)
        p = self.runtime.weight(w_prepack, self.spec, self.op, owner)
        check_activation(x, p.k, self.op)
        flat = x.dim() == 2
        x2d = x if flat else x.reshape(-1, p.k)
        m = x2d.shape[0]
        if m == 0:
            return x.new_empty((*x.shape[:-1], p.n))
        call = self._call(p, m)
        (call.count_fast if fast else call.count)()
        out = torch.empty(call.m_run, p.n, dtype=torch.float32)
        qparams = self._tensor_qparams(x2d, reduce_range and p.reduce_range_applies)
        if qparams is None:                  # non-finite input: the whole tensor is NaN by contract
            out.fill_(float("nan"))
        else:
            if call.m_run != m:
                padded = x2d.new_zeros(call.m_run, p.k)
                padded[:m] = x2d
                x2d = padded
            self.runtime.launch(call, p, x2d, out, qparams)
        if call.m_run != m:
            out = out[:m]
        return out if flat else out.view(*x.shape[:-1], p.n)

    def _call(self, p: Prepared, m: int) -> _Call:
        """The planned call for M rows on ``p`` (made once per M, bounded)."""
        calls = p.calls[self.relu]
        call = calls.get(m)
        if call is None:
            route = self.router.route(m)
            rule = route.rule
            use_dot = route.use_dot or rule.kernel == PREQUANT_KERNEL
            call = _Call(rule, self.runtime.plan(p, rule, use_dot, self.act, self.relu), m, route.m_run, p.n,
                         self.counts[rule.name].increment, self.fast_counts[rule.name].increment)
            if len(calls) >= CALL_MEMO_MAX:
                calls.clear()
            calls[m] = call
        return call

    def _tensor_qparams(self, x2d: torch.Tensor, reduce_range: bool) -> tuple | None:
        """Kernel arguments ``(x_scale[, x_inv_scale, x_zp])`` for modes whose scale
        spans the whole tensor (``()`` for per_row: the kernel finds its row scales
        itself); ``None`` when the tensor holds a non-finite value. ``reduce_range``:
        7-bit PyTorch-scheme activations (already decided for the packed weight)."""
        if self.act == ACT_PER_ROW:
            return ()
        if self.act == ACT_PER_TENSOR:
            absmax = x2d.abs().amax()
            if not torch.isfinite(absmax):
                return None
            scale = (absmax / 127).item() if absmax > 0 else 1.0   # fp32 division, as the reference
            return (scale,)
        lo, hi = torch.aminmax(x2d)
        lo, hi = lo.item(), hi.item()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        p = choose_qparams(lo, hi, reduce_range)
        return (p.scale, p.inv_scale, p.zero_point)

    def module_handler(self):
        """The module fast path's handler for this runner (``nn.quantized.dynamic.Linear``
        calls ``linear_dynamic``). A planned M on a prepared weight is served with
        two dictionary reads, one allocation and one launch: the prepared weight is
        the module's own cache entry (:meth:`WeightCache.owned`: no hash, lock or LRU
        bookkeeping), freed with its packed params. Anything else (first call of a
        weight or an M, padding, 3-D input, a ``kernel: pytorch`` rule, errors) goes
        through :meth:`run`. ``handler.calls.value`` counts the calls it served."""
        runtime = self.runtime
        spec, op, relu = self.spec, self.op, self.relu
        owned = runtime.cache.owned(spec).get
        run = self.run
        empty, f32, qint8 = torch.empty, torch.float32, torch.qint8
        per_row = self.act == ACT_PER_ROW
        pytorch_scheme = self.act == ACT_PYTORCH
        tensor_qparams = self._tensor_qparams
        nan = float("nan")

        def handler(module, x):
            if not x.is_cpu:
                return NotImplemented
            params = module._modules["_packed_params"]
            packed = params._packed_params
            p = owned(id(packed))
            if p is None:
                if params.dtype != qint8:
                    return NotImplemented
                p = runtime.weight(packed, spec, op, params)      # prepared, owned by the module's packed params
            # PyTorch's forward passes reduce_range=True from module version 4 on.
            reduce_range = pytorch_scheme and p.reduce_range_applies and (
                (version := module.version) is not None and version >= 4)
            shape = x.shape
            if x.dtype is f32 and len(shape) == 2:
                m, k = shape
                call = p.calls[relu].get(m)
                if call is not None and k == p.k and (out_shape := call.direct_shape) is not None:
                    out = empty(*out_shape)       # ~1 us less than with dtype=; checked below instead
                    if out.dtype is not f32:      # torch.set_default_dtype changed the default
                        out = empty(out_shape, dtype=f32)
                    qparams = () if per_row else tensor_qparams(x, reduce_range)
                    if qparams is None:
                        out.fill_(nan)
                    else:
                        try:
                            call.plan(runtime.kernel, x, m, *x.stride(), out, *qparams)
                        except Exception:      # noqa: BLE001 - launch() retries, falls back or raises
                            runtime.launch(call, p, x, out, qparams)
                    call.count_fast()
                    return out
            # The module's own reduce_range: a kernel: pytorch rule hands it to PyTorch's kernel as is.
            return run(x, packed, params, (version := module.version) is not None and version >= 4, fast=True)

        handler.calls = self.fast_calls
        return handler


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
        if config.op(INT_MM).enabled:
            self.runners[INT_MM] = IntMmRunner(self)
        self.dot_fallbacks: dict[str, str] = {}

    # -- weights -------------------------------------------------------
    def weight(self, w_prepack, spec, op, owner=None) -> Prepared:
        return self.cache.get(w_prepack, spec, op, owner)

    @staticmethod
    def _prepare(w_prepack, spec, op) -> PreparedWeight:
        if op == INT_MM:                    # w_prepack: the operand's token (int_mm.py)
            return prepare_operand(w_prepack, spec)
        layout_k, layout_n, pytorch_scheme, orders = spec
        w = prepare_weight(unpack_weight(w_prepack, op), layout_k, layout_n, op=op, pytorch_scheme=pytorch_scheme,
                           orders=orders)
        return Prepared(w, reduce_range_applies(w_prepack, w.k) if pytorch_scheme else True)

    # -- launching -----------------------------------------------------
    def plan(self, p: Prepared, rule, use_dot: bool, act: int, relu: bool) -> LaunchPlan | None:
        """The launch plan of ``rule`` on ``p`` (made once; ``None`` for a rule that
        names PyTorch's own kernel)."""
        if rule.kernel == PYTORCH_KERNEL:
            return None
        use_dot = use_dot and rule.name not in self.dot_fallbacks
        key = (relu, rule.name, use_dot)
        plan = p.plans.get(key)
        if plan is None:
            tiles = dict(block_m=rule.block_m, block_n=rule.block_n, block_k=rule.block_k, use_dot=use_dot,
                         act=act, relu=relu)
            if rule.kernel in PREQUANT_KERNELS:                                  # prequant.py
                plan = PrequantPlan(p.weight, **tiles, rowdot=rule.kernel == ROWDOT)
            else:
                plan = LaunchPlan(p.weight, **tiles)
            p.plans[key] = plan
        return plan

    def launch(self, call, p: Prepared, x2d, out, qparams: tuple) -> None:
        """Launch ``call``'s plan for ``x2d`` (``[call.m_run, K]``) into ``out``."""
        plan = call.plan
        try:
            plan(self.kernel, x2d, x2d.shape[0], *x2d.stride(), out, *qparams)
        except Exception as exc:
            # Some Triton-CPU builds reject tl.dot with M < 4 (and GPUs below 16).
            # Re-route that rule to the dot-free variant once, loudly, not per call,
            # and only on that rejection (fallback.py); if the gemv fails too, the
            # original error is the one to see.
            rule = call.rule
            cause = (min_dot_size_rejection(exc, rule.block_m, rule.block_n, rule.block_k)
                     if plan.consts[0].get("USE_DOT") and self.execution == "compiled" else None)
            if cause is None:
                raise
            gemv = self.plan(p, rule, False, plan.consts[0]["ACT"], plan.consts[0]["RELU"])
            try:
                gemv(self.kernel, x2d, x2d.shape[0], *x2d.stride(), out, *qparams)
            except Exception:
                raise exc from None
            call.plan = gemv
            if rule.name not in self.dot_fallbacks:
                reason = f"the compiler rejected tl.dot with tiles {rule.block_m}x{rule.block_n}x{rule.block_k}: {cause}"
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
            "routing": {op: r.routing_counts() if isinstance(r, OpRunner)
                        else {name: c.value for name, c in r.counts.items()} for op, r in self.runners.items()},
            "dot_fallbacks": dict(self.dot_fallbacks),
            **({INT_MM: self.runners[INT_MM].status()} if INT_MM in self.runners else {}),
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
    reason = compiled_unavailable_reason(mode, status)   # auto: compiled only on aarch64 (device.py)
    if reason is None:
        log.info("arm backend: %s", status.detail)
        return "compiled", qlinear_kernel, status.detail
    raise BackendUnavailable(reason)
