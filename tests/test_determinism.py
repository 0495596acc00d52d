"""Deterministic mode on the CPU backends, and the config key every backend takes.

The arm and reference backends are deterministic by construction (every output
element is computed by one program or one exact sum, in a fixed order); these
tests hold them to it: the same bits call after call and between the module
fast path and the dispatcher, with ``deterministic: true`` and under
``torch.use_deterministic_algorithms(True)``, on several threads. The CUDA
backend's deterministic forms are tested in ``tests/test_cuda.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DQLinear

from opregistry import registry
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_OPS

from conftest import ARM_EXECUTION
from reliability_helpers import QUANT_CREATION_WARNING, make_packed, mismatches

pytestmark = pytest.mark.filterwarnings(QUANT_CREATION_WARNING)

INT_MM = "aten::_int_mm"
ARM = {"backend": "arm", "execution": ARM_EXECUTION, "device": "generic"}
K, N = 40, 24
MS = (1, 2, 13, 64)          # every rule of the generic table: gemv_prequant (1, 2-3), padded dot, M % 64


@pytest.fixture
def torch_switch():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture
def threads():
    """More than one intra-op thread, where the host has them: the results must not depend on the split."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


def _module(packed, k: int, n: int) -> DQLinear:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = DQLinear(k, n, dtype=torch.qint8)
    module._packed_params._packed_params = packed
    return module


@pytest.mark.parametrize("backend", ["arm", "reference"])
@pytest.mark.parametrize("how", ["config_key", "torch_switch"])
def test_cpu_backends_are_bitwise_reproducible(backend, how, request, threads):
    """Three dispatcher calls and one module call per M: one result, bit for bit, and within the contract."""
    overrides = dict(ARM) if backend == "arm" else {"backend": "reference"}
    if how == "config_key":
        overrides["deterministic"] = True
    else:
        request.getfixturevalue("torch_switch")
    packed, w = make_packed(N, K, per_channel=True, zero_points=True, seed=4)
    module = _module(packed, K, N)
    g = torch.Generator().manual_seed(8)
    with registry.enabled(**overrides) as cfg, torch.no_grad():
        assert all(cfg.op(op).deterministic == (how == "config_key") for op in LINEAR_OPS)
        for m in MS:
            x = torch.randn(m, K, generator=g) * 3
            ys = [torch.ops.quantized.linear_dynamic(x, packed, True) for _ in range(3)] + [module(x)]
            assert all(torch.equal(y, ys[0]) for y in ys[1:]), f"{backend} M={m}"
            assert mismatches(ys[0], x, w) is None
        paths = registry.status()["ops"][LINEAR_DYNAMIC]["calls_by_path"]
    fast = len(MS) if backend == "arm" else 0            # the reference has no fast path: its modules dispatch
    assert paths == {"dispatcher": 4 * len(MS) - fast, "fast_path": fast}


@pytest.mark.parametrize("operand_cache", [False, True])
def test_arm_int_mm_is_bitwise_reproducible(torch_switch, threads, operand_cache):
    g = torch.Generator().manual_seed(3)
    b = torch.randint(-128, 128, (K, N), dtype=torch.int8, generator=g)
    ops = {INT_MM: {"operand_cache": operand_cache}}
    with registry.enabled(**ARM, deterministic=True, ops=ops):
        for m in MS:
            a = torch.randint(-128, 128, (m, K), dtype=torch.int8, generator=g)
            ys = [torch._int_mm(a, b) for _ in range(3)]          # with the cache: in place, then cached
            expected = (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)
            assert all(torch.equal(y, expected) for y in ys), f"M={m}"


def test_deterministic_is_a_setting_of_every_builtin_backend():
    reg = registry.Registry()
    for backend, extra in (("arm", {"execution": "interpreter"}), ("reference", {}), ("cuda", {"device": "default"})):
        cfg = reg.build_config(backend, deterministic=True, **extra)
        assert all(op.deterministic for op in cfg.ops.values()), backend
        cfg = reg.build_config(backend, ops={LINEAR_DYNAMIC: {"deterministic": True}}, **extra)
        assert cfg.op(LINEAR_DYNAMIC).deterministic and not cfg.op("quantized::linear_relu_dynamic").deterministic
        with pytest.raises(registry.ConfigError, match=r"<keyword overrides>: deterministic: expected a boolean, "
                                                       r"got 'yes'"):
            reg.build_config(backend, deterministic="yes", **extra)
