"""Enable/disable lifecycle: the native kernels come back bit-exact every time,
nested ``enabled()`` blocks restore exactly what was there, registrations and
memory do not grow."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
import torch

from opregistry import registry
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_OPS, LINEAR_RELU_DYNAMIC
from opregistry.registry import Registry

from reliability_helpers import OVERRIDE_WARNING, QUANT_CREATION_WARNING, arm_overrides, make_packed, mismatches, reference

pytestmark = [pytest.mark.filterwarnings(QUANT_CREATION_WARNING), pytest.mark.filterwarnings(OVERRIDE_WARNING)]

CYCLES = 1000
ARM_CYCLES = 10


@pytest.fixture(scope="module")
def probe():
    packed, w = make_packed(12, 20, per_channel=True, zero_points=True, seed=21)
    x = torch.randn(4, 20, generator=torch.Generator().manual_seed(3))
    lin, relu = torch.ops.quantized.linear_dynamic, torch.ops.quantized.linear_relu_dynamic
    native = (lin(x, packed), relu(x, packed))      # nothing enabled: PyTorch's own kernels
    per_row = (reference(x, w, False), reference(x, w, True))
    per_tensor = (reference(x, w, False, "per_tensor"), reference(x, w, True, "per_tensor"))
    assert not torch.equal(native[0], per_row[0]), "the probe must tell the kernels apart"
    assert not torch.equal(per_tensor[0], per_row[0])
    return x, packed, w, native, per_row, per_tensor


def outputs(x, packed):
    return torch.ops.quantized.linear_dynamic(x, packed), torch.ops.quantized.linear_relu_dynamic(x, packed)


def same(a, b) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b))


PER_TENSOR = {"ops": {op: {"activation_scale": "per_tensor"} for op in LINEAR_OPS}}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_enable_disable_cycles_restore_pytorch_kernels(probe, record_property):
    """1000 cycles, alternating the default registry (public API), a private
    registry, and nested context managers."""
    x, packed, _, native, per_row, per_tensor = probe
    reg = Registry()

    def cycle(i: int) -> None:
        # One op per cycle (alternating) keeps 1000 cycles cheap; both are restored every time.
        pick = i % 2
        check = lambda expected: torch.equal(outputs(x, packed)[pick], expected[pick])  # noqa: E731
        kind = i % 3
        if kind == 0:
            registry.enable(backend="reference")
            assert check(per_row)
            assert registry.default_registry().installed_library_count() == len(LINEAR_OPS)
            registry.disable()
        elif kind == 1:
            reg.enable(backend="reference", **PER_TENSOR)
            assert check(per_tensor)
            reg.enable(backend="reference")                       # re-enable, other config
            assert check(per_row)
            assert reg.installed_library_count() == len(LINEAR_OPS)
            reg.disable("reference")
        else:
            with reg.enabled(backend="reference"):
                with reg.enabled(backend="reference", **PER_TENSOR):
                    with reg.enabled(backend="reference", **PER_TENSOR):   # idempotent inner
                        assert check(per_tensor)
                    assert reg.installed_library_count() == len(LINEAR_OPS)
                assert check(per_row)
        assert reg.installed_library_count() == 0
        assert registry.default_registry().installed_library_count() == 0
        assert same(outputs(x, packed), native), f"native kernels not restored bit-exact after cycle {i}"

    for i in range(60):                                 # warm-up: caches, first-call allocations
        cycle(i)
    gc.collect()
    tracemalloc.start()
    rss0 = _rss_bytes()
    snap0 = tracemalloc.take_snapshot()
    for i in range(60, CYCLES):
        cycle(i)
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    rss_growth = _rss_bytes() - rss0
    record_property("cycles", CYCLES)
    record_property("python_heap_growth_bytes", growth)
    record_property("rss_growth_bytes", rss_growth)
    print(f"\n{CYCLES} cycles: python heap growth {growth} B, RSS growth {rss_growth} B")
    # PyTorch's Library.impl keeps ~100 B of untracked objects per registration
    # even after _destroy() (torch/library.py, measured ~96 B per enable/disable
    # of two ops); the bound allows that and catches any object of ours kept alive.
    assert growth < 256 * 1024, f"python heap grew by {growth} bytes over {CYCLES - 60} cycles"
    assert rss_growth < 32 * 1024 * 1024, f"RSS grew by {rss_growth} bytes over {CYCLES - 60} cycles"


def test_enabled_restores_on_exception(probe):
    x, packed, _, native, per_row, _ = probe
    reg = Registry()
    for _ in range(50):
        with pytest.raises(KeyError):
            with reg.enabled(backend="reference"):
                assert same(outputs(x, packed), per_row)
                raise KeyError("user code failed")
        assert reg.installed_library_count() == 0
        assert same(outputs(x, packed), native)


def _arm_status(reg: Registry) -> dict:
    return reg.status()["backends"].get("arm", {})


def test_arm_cycles_and_nesting(probe):
    x, packed, w, native, per_row, _ = probe
    reg = Registry()
    for i in range(ARM_CYCLES):
        device = ("generic", "cix-p1")[i % 2]
        with reg.enabled(backend="reference"):
            with reg.enabled(backend="arm", **arm_overrides(device)):
                y = outputs(x, packed)
                assert mismatches(y[0], x, w) is None and mismatches(y[1], x, w, True) is None
                status = _arm_status(reg)
                assert status["device"] == device and status["fast_path"] is True
                assert reg.status()["ops"][LINEAR_DYNAMIC]["backend"] == "arm"
            assert same(outputs(x, packed), per_row), "the outer reference block must be restored"
            assert reg.status()["ops"][LINEAR_RELU_DYNAMIC]["backend"] == "reference"
        assert reg.installed_library_count() == 0
        assert same(outputs(x, packed), native)


def test_arm_reenable_with_other_config_keeps_runtime(probe):
    """Re-enabling arm with another config (directly, or by a nested block and
    its exit) leaves an active runtime with the module fast path installed."""
    from torch.ao.nn.quantized.dynamic import Linear as DQLinear

    x, packed, w, native, _, _ = probe
    original_forward = DQLinear.forward
    reg = Registry()
    try:
        reg.enable(backend="arm", **arm_overrides("generic"))
        reg.enable(backend="arm", **arm_overrides("cix-p1"))
        status = _arm_status(reg)
        assert status["device"] == "cix-p1" and status["fast_path"] is True
        assert "__call__" in DQLinear.__dict__ and DQLinear.forward is original_forward   # fast path installed
        with reg.enabled(backend="arm", **arm_overrides("generic", padding=False)):
            assert _arm_status(reg)["device"] == "generic" and _arm_status(reg)["fast_path"] is True
            assert mismatches(outputs(x, packed)[0], x, w) is None
        status = _arm_status(reg)
        assert status["device"] == "cix-p1" and status["fast_path"] is True
        assert mismatches(outputs(x, packed)[0], x, w) is None
    finally:
        reg.disable()
    assert DQLinear.forward is original_forward and "__call__" not in DQLinear.__dict__, \
        "disable must leave the module class as PyTorch made it"
    assert reg.installed_library_count() == 0
    assert same(outputs(x, packed), native)
