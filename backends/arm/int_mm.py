"""``aten::_int_mm`` on CPU tensors through the ARM kernels (the torchao path).

torchao's int8 dynamic recipe (``Int8DynamicActivationInt8WeightConfig``)
quantizes activations with eager ops and multiplies with
``torch._int_mm(int8 [M, K], int8 [K, N]) -> int32 [M, N]``, the second operand
being a transposed view of the stored int8 weight. :class:`IntMmRunner` serves
that op (and its ``out=`` overload, which ``torch.compile``'d code calls) with
:func:`.int_mm_kernel.int_mm_kernel`, routed by M like the linear ops, and
caches the second operand in the kernel's tiled layout.

When the second operand is cached
---------------------------------
A cache entry is keyed on a token that names one state of the operand: the
tensor it views (its ``_base``, or itself), the view (storage offset, shape,
strides, data pointer) and that tensor's version counter (shared by all its
views; every in-place write bumps it). The token's hash is a serial number
never reused in the process, so a tensor freed and another made at the same
address can never hit the old entry; and the token is held only by a table
entry that dies with the tensor, and is replaced when the version changes, so
the entry (owned by the token) is dropped at once when the tensor is freed or
written. A hit is therefore never stale.

An operand is cached from its second use in the same state; until then (a
fresh tensor every call, or a weight just written) the kernel reads it where it
lies (masked on its edges only), so it costs no copy and never evicts a weight
(counted as ``uncached_operands`` in ``registry.status()``). Entries live in
the runtime's weight cache, under the same ``weight_cache.max_bytes`` budget as
the linear ops' weights, and are dropped on ``disable()``. Never cached:
inference tensors (``torch.inference_mode``), which have no version counter,
and every operand when the op's ``operand_cache`` is ``false`` — the packaged
default, because of the writes below.

What the version counter cannot see: writes that bypass it, which PyTorch
makes for the tensors inside a tensor subclass when the subclass writes them
in its ``__torch_dispatch__`` (autograd's ADInplaceOrView step has already run
for the outer tensor): torchao's ``Int8Tensor.copy_``, i.e.
``model.load_state_dict(sd)`` into an already-quantized model, writes
``qdata`` in place and leaves its version unchanged (measured: torchao 0.18,
torch 2.13); likewise ``tensor.data`` written in place. After such a write to a
weight that already ran with ``operand_cache: true``, re-enable the backend
(``disable()`` drops the cache) or load with ``load_state_dict(sd, assign=True)``
(new tensors, new keys).
"""

from __future__ import annotations

import itertools
import threading
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch.utils.weak import WeakIdKeyDictionary

from opregistry.registry import CallCounter
from opregistry.backends.common.interpreter import InterpretedKernel
from opregistry.backends.common.launch import BoundLaunches, jit_function_class
from opregistry.backends.common.pytorch_kernel import PYTORCH_KERNEL, PytorchKernel
from opregistry.backends.common.routing import Router
from opregistry.backends.common.stub import StubKernel
from opregistry.backends.common.weights import pad_vector, round_up

from .config import EXACT_FP32_BLOCK_K, INT_MM
from .int_mm_kernel import int_mm_kernel
from .layout import tile_kn

_SEEN_MAX = 16   # distinct views remembered per tensor before the first-use set is reset
_RUNTIME_ARGS = 13   # int_mm_kernel's parameters before its constexprs
assert not any(p.is_constexpr for p in int_mm_kernel.params[:_RUNTIME_ARGS]), int_mm_kernel.arg_names


@dataclass(frozen=True)
class PreparedOperand:
    """The second operand in the kernel's layout: int8 tiles ``[Kp/LK, Np/LN, LK, LN]``
    and, for a uint8 A, its column sums padded to ``Np`` (int32)."""

    w_tiled: torch.Tensor
    colsum: torch.Tensor | None
    n: int
    k: int
    layout_k: int
    layout_n: int
    tensor = None

    @property
    def layout_blocks_n(self) -> int:
        return round_up(max(self.n, 1), self.layout_n) // self.layout_n

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.w_tiled, self.colsum) if t is not None)


@dataclass(frozen=True)
class InPlaceOperand(PreparedOperand):
    """An operand the kernel reads where it lies (not cached): ``tensor`` ``[K, N]``
    int8 with any strides; ``colsum`` as :class:`PreparedOperand`."""

    tensor: torch.Tensor | None = None


def _colsum(b: torch.Tensor, layout_n: int, unsigned_a: bool) -> torch.Tensor | None:
    """Column sums for a uint8 A (int32, wrapping as the kernel's sum), padded to whole tiles."""
    if not unsigned_a:
        return None
    return pad_vector(b.sum(dim=0, dtype=torch.int64).to(torch.int32), round_up(max(b.shape[1], 1), layout_n),
                      torch.int32)


def tile_operand(b: torch.Tensor, layout_k: int, layout_n: int, unsigned_a: bool) -> PreparedOperand:
    k, n = b.shape
    return PreparedOperand(tile_kn(b, layout_k, layout_n), _colsum(b, layout_n, unsigned_a), n, k, layout_k, layout_n)


def in_place_operand(b: torch.Tensor, layout_k: int, layout_n: int, unsigned_a: bool) -> InPlaceOperand:
    k, n = b.shape
    return InPlaceOperand(None, _colsum(b, layout_n, unsigned_a), n, k, layout_k, layout_n, b)


class _Token:
    """Names one view of one tensor at one version for the weight cache: its hash
    is a serial number never reused in the process, and it lives exactly as long
    as that state may be hit (held only by its tensor's :class:`_Views`)."""

    __slots__ = ("serial", "base", "view", "__weakref__")
    _serials = itertools.count(1)

    def __init__(self, base: torch.Tensor, view: tuple):
        self.serial = next(self._serials)
        self.base = weakref.ref(base)
        self.view = view                  # (storage offset, shape, strides, data pointer)

    def __hash__(self) -> int:
        return self.serial


class _Views:
    """The tokens of one tensor at its current version; held only by the
    runner's table entry for that tensor, so they die with it."""

    __slots__ = ("version", "tokens", "__weakref__")

    def __init__(self, version: int):
        self.version = version
        self.tokens: dict[tuple, _Token] = {}


def prepare_operand(token: _Token, spec: tuple) -> PreparedOperand:
    """Rebuild the token's view from its tensor and tile it (the runtime weight
    cache's ``prepare`` for ``aten::_int_mm``)."""
    _, layout_k, layout_n, unsigned_a = spec
    base = token.base()
    if base is None:    # cannot happen while the call that asked holds the view
        raise RuntimeError(f"{INT_MM}: the operand's tensor was freed during the call")
    offset, shape, stride, _ = token.view
    return tile_operand(torch.as_strided(base, shape, stride, offset), layout_k, layout_n, unsigned_a)


class IntMmRunner:
    """``aten::_int_mm`` (and ``aten::_int_mm.out``) under one config."""

    def __init__(self, runtime):
        cfg = runtime.config.op(INT_MM)
        self.runtime = runtime
        self.op = INT_MM
        self.layout = (cfg.weight_layout.block_k, cfg.weight_layout.block_n)
        self.operand_cache = cfg.operand_cache
        self.router = Router(cfg.routing, cfg.padding)
        self.counts = {rule.name: CallCounter() for rule in cfg.routing}
        self.pytorch = PytorchKernel(INT_MM, cfg.routing)
        self.receive_original = self.pytorch.receive_original      # OpKernel fields
        self.overloads = {"out": self.out}
        self.kernel = InterpretedKernel(int_mm_kernel) if runtime.execution == "interpreter" else int_mm_kernel
        self._tokens = WeakIdKeyDictionary()     # tensor -> _Views
        self._lock = threading.Lock()
        self.uncached = CallCounter()            # calls whose operand was read in place, not cached
        # Compiled mode: launches repeated through Triton's launcher (common/launch.py), by
        # everything Triton specializes on (no plan here: the second operand is often new).
        self.bound = BoundLaunches(limit=256)
        self.dot_fallbacks: dict[str, str] = {}

    # -- dispatcher entry points ----------------------------------------
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.run(a, b)

    def out(self, a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
        return self.run(a, b, out)

    def run(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            a.size(0), b.size(1)         # PyTorch sizes its result first: the same IndexError for a 0-d/1-d operand
        _check(a, b, out)
        m, k = a.shape
        n = b.shape[1]
        if m == 0:
            return out if out is not None else torch.empty(0, n, dtype=torch.int32)
        route = self.router.route(m)
        rule = route.rule
        self.counts[rule.name].increment()
        if rule.kernel == PYTORCH_KERNEL:
            result = self.pytorch(a, b)
            return result if out is None else out.copy_(result)
        if n == 0 or k == 0:
            return torch.zeros(m, n, dtype=torch.int32) if out is None else out.zero_()
        operand = self._operand(b, a.dtype == torch.uint8)
        if route.m_run != m:
            padded = a.new_zeros(route.m_run, k)
            padded[:m] = a
            a = padded
        dst = out if out is not None and route.m_run == m else torch.empty(route.m_run, n, dtype=torch.int32)
        self._launch(a, operand, dst, rule, route.use_dot)
        if route.m_run != m:
            dst = dst[:m]
        if out is not None and dst is not out:
            return out.copy_(dst)
        return dst

    # -- the second operand -----------------------------------------------
    def _operand(self, b: torch.Tensor, unsigned_a: bool) -> PreparedOperand:
        layout_k, layout_n = self.layout
        if not self.operand_cache or b.is_inference():   # inference tensors have no version counter
            self.uncached.increment()
            return in_place_operand(b, layout_k, layout_n, unsigned_a)
        base = b._base
        if (base is None or base.dtype != b.dtype
                or base.data_ptr() - base.storage_offset() * base.element_size()
                != b.data_ptr() - b.storage_offset() * b.element_size()):
            base = b                             # not a plain view of its base's storage: key the view itself
        version = b._version                     # shared by every view of the tensor
        view = (b.storage_offset(), tuple(b.shape), tuple(b.stride()), b.data_ptr())
        views = self._views_of(base, version)
        token = views.tokens.get(view)
        if token is None:                        # first use of this state: read in place, not cached
            if len(views.tokens) >= _SEEN_MAX:
                views.tokens.clear()
            views.tokens[view] = _Token(base, view)
            self.uncached.increment()
            return in_place_operand(b, layout_k, layout_n, unsigned_a)
        # The token owns the entry: it dies (and the entry with it) when the tensor dies or is written.
        return self.runtime.weight(token, ("int_mm", layout_k, layout_n, unsigned_a), INT_MM, token)

    def _views_of(self, base: torch.Tensor, version: int) -> _Views:
        with self._lock:
            views = self._tokens.get(base)
            if views is None or views.version != version:
                # Written in place since: drop the old tokens, and their cache entries with them.
                views = self._tokens[base] = _Views(version)
            return views

    # -- launching ------------------------------------------------------------
    def _launch(self, a, operand, out, rule, use_dot) -> None:
        kernel = StubKernel() if isinstance(self.runtime.kernel, StubKernel) else self.kernel
        use_dot = use_dot and rule.name not in self.dot_fallbacks

        def run(use_dot):
            launch_int_mm(kernel, a, operand, out, block_m=rule.block_m, block_n=rule.block_n,
                          block_k=rule.block_k, use_dot=use_dot, bound=self.bound)

        try:
            run(use_dot)
        except Exception as exc:
            # As the linear ops: a compiler that rejects tl.dot at these tiles re-routes
            # the rule to the dot-free variant once, loudly.
            if not use_dot or self.runtime.execution != "compiled":
                raise
            try:
                run(False)
            except Exception:
                raise exc from None
            reason = (f"the compiler rejected tl.dot with tiles {rule.tiles}: "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            self.dot_fallbacks[rule.name] = reason
            warnings.warn(f"arm backend: {INT_MM} routing rule {rule.name!r} now uses the gemv kernel; {reason}",
                          RuntimeWarning, stacklevel=2)

    def pytorch_kernel_calls(self) -> int:
        """Calls that ``kernel: pytorch`` rules handed to PyTorch's kernel."""
        return sum(self.counts[name].value for name in self.pytorch.rules)

    def status(self) -> dict:
        return {"uncached_operands": self.uncached.value, "dot_fallbacks": dict(self.dot_fallbacks)}


def launch_int_mm(kernel, a, b, out, *, block_m, block_n, block_k, use_dot, bound: BoundLaunches | None = None):
    """Launch ``kernel`` (``int_mm_kernel`` compiled or interpreted) over ``out``.

    ``a`` is ``[M, K]`` int8 or uint8 (any strides); ``b`` either a
    :class:`PreparedOperand` (the cached tiled layout) or an
    :class:`InPlaceOperand` (the operand read where it lies); either has
    ``colsum`` exactly when ``a`` is uint8. ``out`` is ``[M, N]`` int32 with unit
    column stride. A compiled kernel is launched through ``bound`` when given:
    directly after the first launch with the same specialization.
    """
    m, k = a.shape
    n = b.n
    tiled = b.w_tiled is not None
    src = b.w_tiled if tiled else b.tensor
    stride_bk, stride_bn = (0, 0) if tiled else src.stride()
    grid = (-(-m // block_m), -(-n // block_n))
    args = (a, src, b.colsum, out, m, n, k, b.layout_blocks_n, a.stride(0), a.stride(1), stride_bk, stride_bn,
            out.stride(0))
    consts = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, LAYOUT_K=b.layout_k, LAYOUT_N=b.layout_n,
                  EVEN_M=m % block_m == 0, EVEN_K=k % block_k == 0, EVEN_N=n % block_n == 0,
                  A_UNSIGNED=b.colsum is not None, B_TILED=tiled, B_K_CONTIGUOUS=not tiled and stride_bk == 1,
                  USE_DOT=use_dot,
                  GEMV_FP32=not use_dot and block_k <= EXACT_FP32_BLOCK_K)
    if bound is not None and isinstance(kernel, jit_function_class()):
        # Every value Triton specializes on is in the key (the ints whole, the pointers' alignment).
        key = (block_m, block_n, block_k, use_dot, b.layout_k, b.layout_n, tiled, a.dtype, b.colsum is None,
               *args[4:], a.data_ptr() & 15, src.data_ptr() & 15, out.data_ptr() & 15,
               0 if b.colsum is None else b.colsum.data_ptr() & 15)
        bound.run(key, ((kernel, grid, args, consts),))
    else:
        kernel[grid](*args, **consts)
    return out


# How PyTorch's messages name a dtype (its C++ type name).
_CPP_NAMES = {torch.int8: "signed char", torch.uint8: "unsigned char", torch.int16: "short int", torch.int32: "int",
              torch.int64: "long int", torch.float32: "float", torch.float64: "double", torch.bool: "bool",
              torch.float16: "c10::Half", torch.bfloat16: "c10::BFloat16"}


def _pytorch_takes_uint8_a() -> bool:
    """Whether this torch's CPU ``_int_mm`` takes a uint8 first operand (2.13 does, 2.10 does not). Probed when
    this module is imported, which is before the backend overrides ``_int_mm``."""
    try:
        torch._int_mm(torch.zeros(1, 8, dtype=torch.uint8), torch.zeros(8, 8, dtype=torch.int8))
    except RuntimeError:
        return False
    return True


A_DTYPES = (torch.int8, torch.uint8) if _pytorch_takes_uint8_a() else (torch.int8,)


def _check(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None) -> None:
    """PyTorch's CPU checks, with its messages (``int_mm_out_cpu`` of torch 2.13; of 2.10 for the first
    operand's dtype, where only int8 is taken)."""
    name = "int_mm_out_cpu"

    def dtype(t):
        return _CPP_NAMES.get(t.dtype, str(t.dtype))
    if a.dim() != 2:
        raise RuntimeError(f"{name}: Expected self to be of dimension 2 but got {a.dim()}")
    if b.dim() != 2:
        raise RuntimeError(f"{name}: Expected mat2 to be of dimension 2 but got {b.dim()}")
    if a.shape[1] != b.shape[0]:
        raise RuntimeError(f"{name}: self.size(1) needs to match mat2.size(0) but got {a.shape[1]} and {b.shape[0]}")
    if a.dtype not in A_DTYPES:
        expected = "int8 or uint8" if len(A_DTYPES) == 2 else "of type int8"
        raise RuntimeError(f"{name}: Expected self dtype to be {expected} but got {dtype(a)}")
    if b.dtype != torch.int8:
        raise RuntimeError(f"{name}: Expected mat2 dtype to be of type int8 but got {dtype(b)}")
    if out is not None:
        if out.dtype != torch.int32:
            raise RuntimeError(f"{name}: Expected result dtype to be of type kInt but got {dtype(out)}")
        for dim, size in enumerate((a.shape[0], b.shape[1])):
            if out.dim() <= dim or out.shape[dim] != size:
                got = out.shape[dim] if out.dim() > dim else "none"
                raise RuntimeError(f"{name}: Expected result.size({dim}) to be {size} but got {got}")
        if not out.is_contiguous():
            raise RuntimeError(f"{name}: Expected result to be contiguous.")
