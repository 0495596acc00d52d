"""ARM backend kernels against the reference: through Triton's interpreter (CI), or compiled by
Triton-CPU with ``--arm-execution=compiled`` (tests/conftest.py)."""

from __future__ import annotations

import gc
import re
import warnings

import pytest
import torch

from opregistry import registry
from opregistry.registry.errors import render
from opregistry.backends.arm.device import detect_device, read_cpuinfo
from opregistry.backends.arm.plugin import packaged_devices
from opregistry.backends.arm.runtime import ArmRuntime
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC

from conftest import ARM_EXECUTION, ENGINES
from opregistry.testing import assert_matches_contract, make_packed, quantized_engine

INTERP = {"execution": ARM_EXECUTION}


def arm_runtime(device="generic", **ops_overrides) -> ArmRuntime:
    reg = registry.Registry()
    ops = {op: dict(ops_overrides) for op in (LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC)} if ops_overrides else {}
    cfg = reg.build_config("arm", device=device, execution=ARM_EXECUTION, **({"ops": ops} if ops else {}))
    return ArmRuntime(cfg)


@pytest.fixture(scope="module")
def generic():
    return arm_runtime("generic")


M_VALUES = [0, 1, 2, 3, 4, 7, 8, 9, 63, 64, 65, 130]


@pytest.mark.parametrize("m", M_VALUES)
def test_every_m(generic, m):
    packed = make_packed(70, 45, seed=m)              # N, K not multiples of 64 / 32
    x = torch.randn(m, 45)
    y = generic.runners[LINEAR_DYNAMIC](x, packed)
    assert_matches_contract(y, x, packed)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_engines_and_schemes(generic, engine, per_channel):
    zero_point = 0 if engine == "onednn" else 5           # onednn requires symmetric weights
    packed = make_packed(67, 100, per_channel=per_channel, zero_points=bool(zero_point), engine=engine)
    x = torch.randn(9, 100) * 3 + 0.5
    with quantized_engine(engine):
        y = generic.runners[LINEAR_DYNAMIC](x, packed)
    assert_matches_contract(y, x, packed)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_bias_and_relu(generic, bias, relu):
    packed = make_packed(65, 33, bias=bias, per_channel=True, zero_points=True)
    x = torch.randn(5, 33)
    op = LINEAR_RELU_DYNAMIC if relu else LINEAR_DYNAMIC
    y = generic.runners[op](x, packed)
    assert_matches_contract(y, x, packed, relu=relu)
    if relu:
        assert (y >= 0).all()


def test_3d_and_non_contiguous(generic):
    packed = make_packed(40, 48)
    x3 = torch.randn(2, 5, 48)
    assert_matches_contract(generic.runners[LINEAR_DYNAMIC](x3, packed), x3, packed)
    xt = torch.randn(48, 11).T                          # stride (1, 11)
    assert not xt.is_contiguous()
    assert_matches_contract(generic.runners[LINEAR_DYNAMIC](xt, packed), xt, packed)
    xs = torch.randn(3, 7, 96)[:, ::2, ::2]              # 3-D with strides in every dim
    assert_matches_contract(generic.runners[LINEAR_DYNAMIC](xs, packed), xs, packed)


def test_per_tensor_activation_scale():
    rt = arm_runtime("generic", activation_scale="per_tensor")
    packed = make_packed(30, 50)
    x = torch.randn(13, 50)
    x[3] *= 40                                           # one loud row sets the shared scale
    y = rt.runners[LINEAR_DYNAMIC](x, packed)
    assert_matches_contract(y, x, packed, mode="per_tensor")


def _m_for_rule(rules, index):
    for m in range(1, 1000):
        if next(i for i, r in enumerate(rules) if r.matches(m)) == index:
            return m
    raise AssertionError(f"rule {index} unreachable")


@pytest.mark.parametrize("device", packaged_devices())
@pytest.mark.parametrize("padding", [True, False])
def test_every_routing_rule_of_every_packaged_config(device, padding):
    rt = arm_runtime(device, padding=padding)
    runner = rt.runners[LINEAR_DYNAMIC]
    packed = make_packed(72, 40, per_channel=True)
    rules = runner.router.rules
    for i, rule in enumerate(rules):
        m = _m_for_rule(rules, i)
        x = torch.randn(m, 40)
        y = runner(x, packed)
        assert_matches_contract(y, x, packed)
        route = runner.router.route(m)
        assert route.rule is rule
        expect_pad = padding and rule.pad_m and m % rule.block_m
        assert (route.m_run != m) == bool(expect_pad), (rule.name, m, route)
    counts = rt.status()["routing"][LINEAR_DYNAMIC]
    assert all(counts[r.name] == 1 for r in rules), counts


def test_new_weight_at_same_address_is_never_stale(generic):
    """Free a packed weight and make another of the same shape: the cache
    holds the first one alive, so a reused address cannot alias it."""
    x = torch.randn(3, 20)
    for seed in range(20):
        packed = make_packed(24, 20, seed=seed)
        y = generic.runners[LINEAR_DYNAMIC](x, packed)
        assert_matches_contract(y, x, packed)
        del packed
        gc.collect()


def test_cache_is_bounded_and_lru():
    one_weight = 64 * 32 + 64 * 4 * 3                     # int8 (nk layout) + scale + bias + row sums (padded to 64)
    rt = arm_runtime("generic")
    rt.cache.max_bytes = 2 * one_weight
    weights = [make_packed(50, 20, seed=s) for s in range(4)]
    x = torch.randn(1, 20)
    for w in weights:
        rt.runners[LINEAR_DYNAMIC](x, w)
    stats = rt.cache.stats()
    assert stats["entries"] == 2 and stats["bytes"] <= rt.cache.max_bytes, stats
    assert stats["evictions"] == 2 and stats["misses"] == 4
    rt.runners[LINEAR_DYNAMIC](x, weights[-1])            # most recent: a hit
    assert rt.cache.stats()["hits"] == 1


def test_weight_prepared_once_per_weight(generic, monkeypatch):
    calls = []
    import opregistry.backends.arm.runtime as rt_mod

    real = rt_mod.unpack_weight
    monkeypatch.setattr(rt_mod, "unpack_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    packed = make_packed(16, 16)
    for _ in range(5):
        generic.runners[LINEAR_DYNAMIC](torch.randn(2, 16), packed)
    assert len(calls) == 1


def test_cache_extra_memory_close_to_int8_weight_bytes():
    rt = arm_runtime("generic")
    packed = make_packed(256, 512)
    rt.runners[LINEAR_DYNAMIC](torch.randn(1, 512), packed)
    ratio = rt.cache.stats()["bytes"] / (256 * 512)
    assert ratio <= 1.03, ratio                           # 1.0x int8 + fp32 scale/bias, int32 row-sum vectors


def test_k_mismatch_and_dtype_errors(generic):
    packed = make_packed(8, 16)
    with pytest.raises(ValueError, match=r"X has 15 features.*expects 16"):
        generic.runners[LINEAR_DYNAMIC](torch.randn(2, 15), packed)
    with pytest.raises(TypeError, match=r"expected a float32 activation X, got torch.float64"):
        generic.runners[LINEAR_DYNAMIC](torch.randn(2, 16, dtype=torch.float64), packed)


def test_through_dispatcher_and_fast_path():
    from torch.ao.nn.quantized.dynamic import Linear as DQLinear

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = DQLinear(40, 30)
        layer.set_weight_bias(torch.quantize_per_tensor(torch.randn(30, 40), 0.02, 0, torch.qint8),
                              torch.randn(30))
    x = torch.randn(6, 40)
    native = layer(x)
    original_forward = DQLinear.forward
    with registry.enabled(backend="arm", **INTERP):
        assert "__call__" in DQLinear.__dict__ and DQLinear.forward is original_forward   # fast path installed
        y_fast = layer(x)
        y_disp = torch.ops.quantized.linear_dynamic(x, layer._packed_params._packed_params, True)
        st = registry.status()
    assert DQLinear.forward is original_forward and "__call__" not in DQLinear.__dict__
    packed = layer._packed_params._packed_params
    assert_matches_contract(y_fast, x, packed)
    assert torch.equal(y_fast, y_disp)
    assert st["ops"][LINEAR_DYNAMIC]["calls_by_path"] == {"dispatcher": 1, "fast_path": 1}   # the op call, the module call
    assert st["ops"][LINEAR_DYNAMIC]["calls"] == 2
    assert sum(st["backends"]["arm"]["routing"][LINEAR_DYNAMIC].values()) == 2
    assert torch.equal(layer(x), native)


def test_fast_path_can_be_turned_off():
    from torch.ao.nn.quantized.dynamic import Linear as DQLinear

    original = DQLinear.forward
    ops = {op: {"fast_path": False} for op in (LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC)}
    with registry.enabled(backend="arm", ops=ops, **INTERP):
        assert DQLinear.forward is original and "__call__" not in DQLinear.__dict__


def test_auto_execution_without_triton_cpu_is_a_clear_error(monkeypatch):
    from opregistry.backends.arm import device

    monkeypatch.setattr(device, "triton_cpu_status", lambda: device.TritonCpuStatus(False, False, "triton is not installed"))
    with pytest.raises(registry.BackendUnavailable, match=r'execution="auto" needs Triton-CPU.*execution="interpreter"'):
        registry.enable(backend="arm")
    assert registry.status()["ops"] == {}


def test_auto_selects_compiled_only_on_aarch64(monkeypatch):
    """x86 Triton-CPU is a validation proxy (1.2-8x slower than fbgemm at best): `auto`
    never picks it; `compiled` runs it, with one warning per process."""
    from opregistry.backends.arm import device

    active = device.TritonCpuStatus(True, True, "Triton-CPU active (triton 3.0.0)")
    assert device.compiled_unavailable_reason("auto", active, machine="aarch64") is None
    assert device.compiled_unavailable_reason("compiled", active, machine="x86_64") is None
    reason = render(device.compiled_unavailable_reason("auto", active, machine="x86_64"))
    assert "only on aarch64" in reason and "validation proxy" in reason and 'execution="compiled"' in reason
    inactive = device.TritonCpuStatus(False, False, "triton is not installed")
    assert "needs Triton-CPU" in device.compiled_unavailable_reason("auto", inactive, machine="aarch64")
    if not device.auto_selects_compiled():
        monkeypatch.setattr(device, "triton_cpu_status", lambda: active)
        with pytest.raises(registry.BackendUnavailable, match="only on aarch64.*validation proxy"):
            registry.enable(backend="arm")
        monkeypatch.setattr(device, "_proxy_warned", False)
        with pytest.warns(RuntimeWarning, match="validation proxy"):
            device.warn_if_proxy()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            device.warn_if_proxy()                          # once per process


CIX_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid sve2 i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd80

processor\t: 4
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid sve2 i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd81
"""


def test_device_detection():
    cix = read_cpuinfo(CIX_CPUINFO, machine="aarch64")
    assert cix.is_arm64 and cix.has_i8mm and "cortex-a720" in cix.cores
    assert detect_device(cix) == "cix-p1"
    n2 = read_cpuinfo("CPU part\t: 0xd49\nFeatures\t: sve2 i8mm\n", machine="aarch64")
    assert detect_device(n2) == "generic"
    x86 = read_cpuinfo("flags\t: fpu sse avx2\n", machine="x86_64")
    assert not x86.is_arm64 and detect_device(x86) == "generic"


def test_device_key_selects_the_packaged_table():
    reg = registry.Registry()
    cfg = reg.build_config("arm", device="cix-p1", execution="interpreter")
    assert cfg.sources[1].endswith("cix-p1.yaml")
    assert cfg.op(LINEAR_DYNAMIC).routing[0].kernel == "dot"
    with pytest.raises(registry.ConfigError, match=r"device.*no packaged config for device 'nope'; available: cix-p1, generic, x86-proxy"):
        reg.build_config("arm", device="nope")


def _triton_compilation_error(message: str, exc_type=AssertionError):
    """What Triton's code generator raises when the front end rejects a call: a
    CompilationError whose text starts with the source position and whose
    cause is the front end's own exception."""
    import ast

    from triton.compiler.errors import CompilationError

    src = "def qlinear_kernel(q, b, acc):\n    acc = tl.dot(q, b, acc, out_dtype=tl.int32)\n"
    node = ast.parse(src).body[0].body[0].value
    cause = exc_type(message)
    err = CompilationError(src, node, repr(cause))
    err.__cause__ = cause
    return err


class PickyCompiler:
    """The runtime's kernel (compiled or interpreted) behind a compiler front
    end that rejects some tl.dot calls the way Triton does."""

    def __init__(self, kernel, reject):
        from opregistry.backends.arm.kernel import qlinear_kernel

        self.kernel, self.reject, self.names, self.rejected = kernel, reject, qlinear_kernel.arg_names, []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            params = {**dict(zip(self.names, args)), **kwargs}
            error = self.reject(params)
            if error is not None:
                self.rejected.append((params["BLOCK_M"], params["USE_DOT"]))
                raise error
            return self.kernel[grid](*args, **kwargs)
        return run


def test_compiler_rejecting_tiny_dot_reroutes_rule_to_gemv_once():
    """A Triton-CPU build whose tl.dot needs M >= 4 (upstream legacy): the rule is
    re-routed to the dot-free kernel with one warning naming the compiler's
    reason (not "at 2:10:"), results stay right."""
    rt = arm_runtime("cix-p1")                          # decode-m1 is a BM=1 dot rule
    picky = PickyCompiler(rt.kernel, lambda p: _triton_compilation_error(
        "Input shapes should have M >= 4, N >= 4 and K >= 4") if p["USE_DOT"] and p["BLOCK_M"] < 4 else None)
    rt.kernel, rt.execution = picky, "compiled"
    packed = make_packed(70, 45)
    x = torch.randn(1, 45)
    with pytest.warns(RuntimeWarning, match=r"rule 'decode-m1' now uses the gemv kernel; the compiler rejected "
                                            r"tl.dot with tiles 1x64x4: Input shapes should have M >= 4, N >= 4 "
                                            r"and K >= 4$"):
        y = rt.runners[LINEAR_DYNAMIC](x, packed)
    assert_matches_contract(y, x, packed)
    y2 = rt.runners[LINEAR_DYNAMIC](x, packed)           # no second attempt, no second warning
    assert picky.rejected == [(1, True)] and torch.equal(y, y2)
    assert rt.status()["dot_fallbacks"]["decode-m1"].endswith("Input shapes should have M >= 4, N >= 4 and K >= 4")


@pytest.mark.parametrize("m, error", [
    (1, "Both operands must be same type. First operand (int32) and second operand (int8)"),   # a kernel bug
    (8, "Input shapes should have M >= 16, N >= 16 and K >= 16"),        # more than 4 rows: never re-routed
])
def test_other_compile_errors_are_never_rerouted(m, error):
    rt = arm_runtime("cix-p1")                          # decode-m1: dot 1x64x4, prefill-8: dot 8x64x32
    picky = PickyCompiler(rt.kernel, lambda p: _triton_compilation_error(error) if p["USE_DOT"] else None)
    rt.kernel, rt.execution = picky, "compiled"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(Exception, match=re.escape(error)):
            rt.runners[LINEAR_DYNAMIC](torch.randn(m, 45), make_packed(70, 45))
    assert picky.rejected == [(min(m, 8), True)] and rt.status()["dot_fallbacks"] == {}
