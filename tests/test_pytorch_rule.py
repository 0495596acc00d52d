"""Routing rules with ``kernel: pytorch``: those M go to the kernel that served the op
before the registry overrode it (PyTorch's own, captured at enable), directly,
never through the dispatcher again: bit-exact with the backend disabled, no recursion."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DQLinear

from conftest import ARM_EXECUTION
from opregistry import registry
from opregistry.backends.arm.runtime import ArmRuntime
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC
from opregistry.testing import make_packed

INT_MM = "aten::_int_mm"
ARM = {"backend": "arm", "device": "generic", "execution": ARM_EXECUTION}
# Decode through our kernel, M >= 8 to PyTorch's.
ROUTING = [
    {"name": "ours", "when": {"m_max": 7}, "kernel": "gemv", "block_m": 4, "block_n": 64, "block_k": 32,
     "pad_m": True},
    {"name": "torch-prefill", "kernel": "pytorch"},
]
OPS = {op: {"routing": ROUTING} for op in (LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC, INT_MM)}


def routing_counts(reg, op) -> dict:
    return reg.status()["backends"]["arm"]["routing"][op]


def calls(reg, op) -> int:
    return reg.status()["ops"][op]["calls"]


@pytest.mark.parametrize("op", [LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC])
def test_linear_prefill_is_pytorchs_bit_exact(fresh_registry, op):
    fn = getattr(torch.ops.quantized, op.partition("::")[2])
    packed = make_packed(70, 45, per_channel=True)
    xs = {m: torch.randn(m, 45) for m in (8, 9, 64)} | {"3d": torch.randn(2, 5, 45)}
    expected = {m: fn(x, packed, True) for m, x in xs.items()}
    fresh_registry.enable(ops=OPS, **ARM)
    for m, x in xs.items():
        assert torch.equal(fn(x, packed, True), expected[m]), m
    fn(torch.randn(3, 45), packed, True)                   # M=3: our kernel
    counts = routing_counts(fresh_registry, op)
    # One dispatcher call per op call: the captured kernel never re-entered ours (no recursion).
    assert calls(fresh_registry, op) == len(xs) + 1
    assert counts == {"ours": 1, "torch-prefill": len(xs)}
    assert fresh_registry.status()["backends"]["arm"]["weight_cache"]["entries"] == 1   # only the M=3 call


def test_status_counts_every_call_the_backend_served(fresh_registry):
    """``calls`` = dispatcher + module fast path; ``pytorch_kernel_calls`` = those of them, by either
    path, that a kernel: pytorch rule handed to PyTorch's kernel; the per-rule routing counts agree."""
    packed = make_packed(70, 45, per_channel=True)
    with torch.no_grad():
        module = DQLinear(45, 70, dtype=torch.qint8)
    module._packed_params._packed_params = packed
    fresh_registry.enable(ops=OPS, **ARM)
    for m in (3, 8, 9):                                           # dispatcher: ours, PyTorch's, PyTorch's
        torch.ops.quantized.linear_dynamic(torch.randn(m, 45), packed, True)
    for m in (1, 2, 16, 16, 64):                                  # fast path: ours twice, PyTorch's three times
        module(torch.randn(m, 45))
    info = fresh_registry.status()["ops"][LINEAR_DYNAMIC]
    assert info["calls_by_path"] == {"dispatcher": 3, "fast_path": 5}
    assert info["calls"] == 8 and info["pytorch_kernel_calls"] == 5
    assert routing_counts(fresh_registry, LINEAR_DYNAMIC) == {"ours": 3, "torch-prefill": 5}
    a, b = torch.randint(-128, 128, (9, 45), dtype=torch.int8), torch.randint(-128, 128, (45, 7), dtype=torch.int8)
    torch._int_mm(a, b), torch._int_mm(a[:2], b)
    info = fresh_registry.status()["ops"][INT_MM]
    assert (info["calls"], info["calls_by_path"], info["pytorch_kernel_calls"]) == (
        2, {"dispatcher": 2, "fast_path": 0}, 1)


@pytest.mark.parametrize("m", [8, 17, 64])
def test_int_mm_prefill_is_pytorchs_bit_exact(fresh_registry, m):
    gen = torch.Generator().manual_seed(m)
    a = torch.randint(-128, 128, (m, 45), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (70, 45), dtype=torch.int8, generator=gen)
    expected = torch._int_mm(a, w.t())
    fresh_registry.enable(ops=OPS, **ARM)
    out = torch.empty(m, 70, dtype=torch.int32)
    for y in (torch._int_mm(a, w.t()), torch._int_mm(a, w.t(), out=out)):
        assert torch.equal(y, expected)
    assert calls(fresh_registry, INT_MM) == 2
    assert routing_counts(fresh_registry, INT_MM) == {"ours": 0, "torch-prefill": 2}
    assert torch.equal(torch._int_mm(a[:3], w.t()), expected[:3])          # M=3: our kernel, exact too
    assert routing_counts(fresh_registry, INT_MM) == {"ours": 1, "torch-prefill": 2}


def test_no_recursion_at_any_depth(fresh_registry):
    """Counting every entry into our kernel: a call routed to PyTorch's kernel enters it
    exactly once, however deep the Python stack already is."""
    fresh_registry.enable(ops=OPS, **ARM)
    a = torch.randint(-128, 128, (16, 20), dtype=torch.int8)
    b = torch.randint(-128, 128, (20, 9), dtype=torch.int8)
    runner = next(iter([r for r in _runners(fresh_registry) if r.op == INT_MM]))
    entered = []
    original_run = runner.run

    def spy(*args, **kwargs):
        entered.append(1)
        return original_run(*args, **kwargs)

    runner.run = spy
    try:
        def nested(depth):
            return nested(depth - 1) if depth else torch._int_mm(a, b)

        limit = sys.getrecursionlimit()
        y = nested(limit - 100)             # a re-entry would overflow the stack here
    finally:
        del runner.run
    assert torch.equal(y, a.int() @ b.int())
    assert len(entered) == 1 and calls(fresh_registry, INT_MM) == 1


def _runners(reg):
    plugin = reg.plugins.backends["arm"].plugin
    return list(plugin.runtime.runners.values())


def test_module_fast_path_prefill_is_pytorchs(fresh_registry):
    """nn.quantized.dynamic.Linear served without the dispatcher: M >= 8 is still PyTorch's own."""
    layer = DQLinear(45, 70)
    x = torch.randn(12, 45)
    expected = layer(x)
    fresh_registry.enable(ops=OPS, **ARM)
    assert torch.equal(layer(x), expected)
    assert routing_counts(fresh_registry, LINEAR_DYNAMIC)["torch-prefill"] == 1


def test_captured_kernel_survives_backend_switches(fresh_registry):
    """reference -> arm: the kernel under arm's is still PyTorch's, not reference's."""
    packed = make_packed(70, 45)
    x = torch.randn(8, 45)
    expected = torch.ops.quantized.linear_dynamic(x, packed, True)
    fresh_registry.enable(backend="reference")
    assert not torch.equal(torch.ops.quantized.linear_dynamic(x, packed, True), expected)  # per-row != PyTorch's
    fresh_registry.enable(ops=OPS, **ARM)
    assert torch.equal(torch.ops.quantized.linear_dynamic(x, packed, True), expected)
    fresh_registry.enable(ops={op: {"routing": ROUTING[::-1][:1]} for op in OPS}, **ARM)   # re-enable, other config
    assert torch.equal(torch.ops.quantized.linear_dynamic(x, packed, True), expected)
    fresh_registry.disable()
    assert torch.equal(torch.ops.quantized.linear_dynamic(x, packed, True), expected)


def test_torch_without_get_kernel_fails_at_enable(fresh_registry, monkeypatch):
    fresh_registry.enable(backend="reference")
    before = fresh_registry.status()["ops"]
    monkeypatch.delattr(torch.library, "get_kernel")
    with pytest.raises(registry.BackendUnavailable, match=r"torch\.library\.get_kernel .*this is torch " + re.escape(torch.__version__)):
        fresh_registry.enable(ops=OPS, **ARM)
    assert fresh_registry.status()["ops"] == before                  # nothing changed
    fresh_registry.enable(**ARM)                                      # no pytorch rule: fine without it
    assert fresh_registry.status()["ops"][INT_MM]["backend"] == "arm"


def test_runner_outside_the_registry_says_so():
    cfg = registry.Registry().build_config(ops=OPS, **ARM)
    runtime = ArmRuntime(cfg)
    with pytest.raises(RuntimeError, match="names PyTorch's own kernel, which the registry hands over"):
        runtime.runners[INT_MM](torch.zeros(9, 4, dtype=torch.int8), torch.zeros(4, 3, dtype=torch.int8))


def test_pytorch_rule_takes_no_tiles():
    bad = [{"name": "p", "kernel": "pytorch", "block_m": 8}]
    with pytest.raises(registry.ConfigError, match=r"routing\[0\]\.block_m: unknown key for a rule with kernel: "
                                                   r"pytorch"):
        registry.Registry().build_config(ops={INT_MM: {"routing": bad}}, **ARM)
