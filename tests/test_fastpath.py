"""The module fast path (``nn.quantized.dynamic.Linear`` served without the
dispatcher) changes nothing that TorchScript, tracing, ``torch.compile``, FX,
``copy``, pickling or ``state_dict`` see of the class or its modules, before,
during and after ``enable()`` / ``disable()``; it takes a call only when
``nn.Module.__call__`` would do nothing but call ``forward``; it counts what it
serves; and the shared slot has one owner of the class patch."""

from __future__ import annotations

import copy
import io
import itertools
import pickle
import warnings

import pytest
import torch
from torch.ao.nn.intrinsic.quantized.dynamic import LinearReLU as DQLinearReLU
from torch.ao.nn.quantized.dynamic import Linear as DQLinear

from opregistry import registry
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC
from opregistry.backends.common.fastpath import DYNAMIC_LINEAR
from opregistry.testing import (assert_matches_contract, engines, make_packed, quantized_engine,
                                quiet_quantized_tensor_creation)

pytestmark = [pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*deprecated:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*Overriding a previously registered kernel:UserWarning")]

ARM = {"backend": "arm", "execution": "interpreter"}
DQLinear.__annotations__    # Python creates an empty one on first access (TorchScript reads it): not ours
CLASS_DICT = dict(DQLinear.__dict__)        # the class as PyTorch made it (nothing enabled at import)
FORWARD = DQLinear.forward


def assert_class_pristine():
    assert dict(DQLinear.__dict__) == CLASS_DICT
    assert all(DQLinear.__dict__[k] is v for k, v in CLASS_DICT.items())
    assert "__call__" not in DQLinear.__dict__ and DQLinear.__call__ is torch.nn.Module.__call__
    assert "forward" in DQLinear.__dict__ and DQLinear.forward is FORWARD


def assert_class_while_enabled():
    """Only ``__call__`` is added; ``forward`` (what TorchScript compiles) is PyTorch's."""
    extra = set(DQLinear.__dict__) - set(CLASS_DICT)
    assert extra == {"__call__"}, extra
    assert all(DQLinear.__dict__[k] is v for k, v in CLASS_DICT.items())
    assert DQLinear.forward is FORWARD


def layer(n=12, k=20, seed=0) -> DQLinear:
    m = DQLinear(k, n)
    m._packed_params.set_weight_bias(*torch.ops.quantized.linear_unpack(make_packed(n, k, seed=seed)))
    return m


def qmodel(relu=False) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(20, 16)] + ([torch.nn.ReLU()] if relu else []) + [torch.nn.Linear(16, 8)]
    model = torch.nn.Sequential(*layers).eval()
    with quiet_quantized_tensor_creation():
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def served(backend="arm"):
    """(dispatcher calls of linear_dynamic, module fast-path calls) so far."""
    paths = registry.status()["ops"].get(LINEAR_DYNAMIC, {}).get("calls_by_path", {})
    return paths.get("dispatcher", 0), paths.get("fast_path", 0)


# -- the class ------------------------------------------------------------------

def test_class_is_pytorchs_before_during_and_after():
    assert_class_pristine()
    with registry.enabled(**ARM):
        assert_class_while_enabled()
        layer()(torch.randn(2, 20))
    assert_class_pristine()
    registry.enable(**ARM)
    registry.enable(backend="arm", execution="interpreter", ops={LINEAR_DYNAMIC: {"padding": False}})  # replace
    assert_class_while_enabled()
    registry.disable()
    assert_class_pristine()


def test_fast_path_off_adds_nothing():
    with registry.enabled(ops={LINEAR_DYNAMIC: {"fast_path": False}}, **ARM):
        assert_class_pristine()
        m = layer()
        x = torch.randn(3, 20)
        before = served()
        m(x)
        assert served() == (before[0] + 1, 0)


# -- TorchScript, tracing, compile, FX ------------------------------------------

@pytest.mark.parametrize("relu", [False, True])
def test_script_while_enabled_reaches_the_backend_through_the_dispatcher(relu):
    model = qmodel(relu)
    x = torch.randn(3, 20)
    expected = model(x)                                   # PyTorch's kernels
    with registry.enabled(**ARM):
        scripted = torch.jit.script(model)                # the bug: "undefined value torch"
        calls, fast = served()
        y = scripted(x)
        assert served() == (calls + 2, fast)             # two layers, both through the dispatcher
        assert torch.equal(y, model(x))                   # the fast path computes the same
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        buf.seek(0)
        assert torch.equal(torch.jit.load(buf)(x), y)
    assert torch.equal(scripted(x), expected)             # disabled: PyTorch's kernels again
    assert torch.equal(torch.jit.script(model)(x), expected)   # and scripting still works ("Can't redefine")
    assert_class_pristine()


def test_script_single_module_before_during_after():
    m = layer()
    x = torch.randn(4, 20)
    before = torch.jit.script(m)
    with registry.enabled(**ARM):
        during = torch.jit.script(m)
        assert torch.equal(during(x), before(x))           # both reach the backend
        assert_matches_contract(during(x), x, m._packed_params._packed_params)
    after = torch.jit.script(m)
    assert torch.equal(after(x), m(x)) and torch.equal(before(x), m(x))


def test_trace_while_enabled_records_the_op():
    model = qmodel()
    x = torch.randn(3, 20)
    with registry.enabled(**ARM):
        calls, _ = served()
        traced = torch.jit.trace(model, x, check_trace=False)
        assert served()[0] == calls + 2                    # traced through forward and the dispatcher
        assert str(traced.inlined_graph).count("quantized::linear_dynamic") == 2
        assert torch.equal(traced(x), model(x))


def test_fx_symbolic_trace_sees_leaf_modules():
    model = qmodel()
    with registry.enabled(**ARM):
        gm = torch.fx.symbolic_trace(model)
        assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "call_module", "output"]
        x = torch.randn(2, 20)
        assert torch.equal(gm(x), model(x))


def test_torch_compile_goes_through_the_dispatcher():
    model = qmodel()
    x = torch.randn(3, 20)
    expected = model(x)
    torch._dynamo.reset()
    try:
        with registry.enabled(**ARM):
            calls, fast = served()
            y = torch.compile(model, backend="eager")(x)
            assert served() == (calls + 2, fast)          # Dynamo never takes the fast path
            assert torch.equal(y, model(x))
        torch._dynamo.reset()
        assert torch.equal(torch.compile(model, backend="eager")(x), expected)
    finally:
        torch._dynamo.reset()
    assert_class_pristine()


# -- what a module looks like ---------------------------------------------------

def test_module_state_copy_pickle_unchanged_while_enabled():
    fresh = layer(seed=3)
    names, attrs = set(dir(fresh)), set(fresh.__dict__)
    keys = list(fresh.state_dict())
    x = torch.randn(2, 20)
    with registry.enabled(**ARM):
        m = layer(seed=3)
        y = m(x)
        m(x)                                               # prepared and planned: the direct route
        assert served()[1] >= 2
        assert set(dir(m)) == names and set(m.__dict__) == attrs
        assert set(m._packed_params.__dict__) == set(fresh._packed_params.__dict__)
        sd = m.state_dict()
        assert list(sd) == keys
        assert [type(v) for v in sd.values()] == [type(v) for v in fresh.state_dict().values()]
        clone = copy.deepcopy(m)
        assert set(clone.__dict__) == attrs and torch.equal(clone(x), y)
        shallow = copy.copy(m)
        assert torch.equal(shallow(x), y)
        restored = pickle.loads(pickle.dumps(m))
        assert set(restored.__dict__) == attrs and torch.equal(restored(x), y)
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        assert torch.equal(torch.load(buf, weights_only=False)(x), y)
        other = DQLinear(20, 12)
        other.load_state_dict(sd)
        assert torch.equal(other(x), y)
    with registry.enabled(**ARM):
        assert torch.equal(clone(x), y) and torch.equal(restored(x), y)


# -- which calls take it ----------------------------------------------------------

def _calls_through_dispatcher(m, call):
    calls, fast = served()
    y = call()
    after = served()
    return y, after[0] - calls, after[1] - fast


def test_hooks_modes_and_subclasses_take_pytorchs_path():
    x = torch.randn(3, 20)
    with registry.enabled(**ARM):
        m = layer()
        _, disp, fast = _calls_through_dispatcher(m, lambda: m(x))
        assert (disp, fast) == (0, 1)
        seen = []
        h = m.register_forward_hook(lambda mod, args, out: seen.append("hook"))
        _, disp, fast = _calls_through_dispatcher(m, lambda: m(x))
        h.remove()
        assert seen == ["hook"] and (disp, fast) == (1, 0)
        h = m.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
        y, disp, _ = _calls_through_dispatcher(m, lambda: m(x))
        h.remove()
        assert disp == 1 and torch.equal(y, m(x * 2))
        h = torch.nn.modules.module.register_module_forward_hook(lambda mod, args, out: seen.append("global"))
        try:
            _, disp, fast = _calls_through_dispatcher(m, lambda: m(x))
        finally:
            h.remove()
        assert seen[-1] == "global" and (disp, fast) == (1, 0)
        for label, call in [("keyword", lambda: m(x=x)),
                            ("requires_grad", lambda: m(x.clone().requires_grad_())),
                            ("device context", lambda: _under(torch.device("cpu"), m, x)),
                            ("dispatch mode", lambda: _under(_CountingMode(), m, x))]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, disp, fast = _calls_through_dispatcher(m, call)
            assert (disp, fast) == (1, 0), label
        fused = DQLinearReLU(20, 12)
        fused.set_weight_bias(*torch.ops.quantized.linear_unpack(make_packed(12, 20, seed=4)))
        calls = registry.status()["ops"][LINEAR_RELU_DYNAMIC]["calls"]
        y = fused(x)
        assert registry.status()["ops"][LINEAR_RELU_DYNAMIC]["calls"] == calls + 1 and (y >= 0).all()
        fp16_engines = [e for e in engines() if e in ("x86", "fbgemm")]   # qnnpack/onednn pack no fp16 weights
        if fp16_engines:
            with quantized_engine(fp16_engines[0]):
                half = DQLinear(20, 12, dtype=torch.float16)
                _, disp, fast = _calls_through_dispatcher(half, lambda: half(x))
            assert (disp, fast) == (0, 0)                   # fp16: PyTorch's own op, untouched


def _under(ctx, m, x):
    with ctx:
        return m(x)


class _CountingMode(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_shapes_and_errors_through_the_fast_path():
    m = layer(n=30, k=40)
    packed = m._packed_params._packed_params
    with registry.enabled(**ARM):
        for shape in [(1, 40), (1, 40), (3, 40), (3, 40), (2, 5, 40), (0, 40), (9, 40), (9, 40)]:
            x = torch.randn(*shape)
            y = m(x)
            assert y.shape == (*shape[:-1], 30)
            assert_matches_contract(y, x, packed)
        x = torch.randn(8, 80)[:, ::2]                     # strided activation
        assert_matches_contract(m(x), x, packed)
        with pytest.raises(ValueError, match="X has 41 features"):
            m(torch.randn(2, 41))
        with pytest.raises(TypeError, match="expected a float32 activation"):
            m(torch.randn(2, 40, dtype=torch.float64))
        # every call above but M=0 (no kernel to route) and the two errors
        assert registry.status()["ops"][LINEAR_DYNAMIC]["calls_by_path"]["fast_path"] == 8


def test_default_dtype_float64_still_gives_float32():
    m = layer()
    x = torch.randn(2, 20)
    with registry.enabled(**ARM):
        m(x)
        m(x)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            y = m(x)
        finally:
            torch.set_default_dtype(previous)
        assert y.dtype == torch.float32
        assert_matches_contract(y, x, m._packed_params._packed_params)


# -- the slot ----------------------------------------------------------------------

@pytest.mark.parametrize("order", list(itertools.permutations(range(2))))
def test_handlers_stack_and_leave_in_any_order(order):
    m = DQLinear(8, 4)
    x = torch.randn(2, 8)
    native = m(x)
    first = lambda mod, x: torch.full((2, 4), 1.0)                                   # noqa: E731
    second = lambda mod, x: torch.full((2, 4), 2.0) if x.shape[0] == 2 else NotImplemented  # noqa: E731
    handlers = [first, second]
    DYNAMIC_LINEAR.add(first)
    DYNAMIC_LINEAR.add(second)
    try:
        assert_class_while_enabled()
        assert m(x).eq(2.0).all()                       # newest first
        assert m(torch.randn(3, 8)).eq(1.0).all()       # declined: falls through to the older one
    finally:
        for i in order:
            DYNAMIC_LINEAR.remove(handlers[i])
            if DYNAMIC_LINEAR._handlers:
                remaining = DYNAMIC_LINEAR._handlers[0]
                assert m(x).eq(1.0 if remaining is first else 2.0).all()
    assert_class_pristine()
    assert torch.equal(m(x), native)


def test_declined_calls_run_pytorchs_forward():
    m = DQLinear(8, 4)
    x = torch.randn(2, 8)
    decline = lambda mod, x: NotImplemented                                            # noqa: E731
    DYNAMIC_LINEAR.add(decline)
    try:
        assert torch.equal(m(x), DQLinear.forward(m, x))
    finally:
        DYNAMIC_LINEAR.remove(decline)
    assert_class_pristine()
