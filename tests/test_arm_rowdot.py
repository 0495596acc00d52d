"""The ``rowdot_prequant`` kernel (products summed along K on the K-contiguous ``nk``
weight layout) against the contract, in every activation scheme and with both
operand signs it takes (unsigned activations for x86's ``vpdpbusd``, signed for
aarch64's ``sdot``), through the ARM tier's execution (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from opregistry import registry
from opregistry.backends.arm import prequant
from opregistry.backends.arm.layout import KN, NK, tile_kn, tile_nk
from opregistry.backends.arm.runtime import ArmRuntime
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC

from conftest import ARM_EXECUTION
from opregistry.testing import assert_matches_contract, make_packed
from test_arm_prequant import pytorch_scheme_extra

ROWDOT = [
    {"name": "m1", "when": {"m": 1}, "kernel": "rowdot_prequant", "block_m": 1, "block_n": 16, "block_k": 64},
    {"name": "m2-3", "when": {"m_max": 3}, "kernel": "rowdot_prequant", "block_m": 2, "block_n": 32,
     "block_k": 32, "pad_m": True},
    {"name": "rest", "kernel": "rowdot_prequant", "block_m": 4, "block_n": 16, "block_k": 64, "pad_m": True},
]
MIXED = [   # rowdot for decode, the kn-layout kernels above: both layouts cached
    {"name": "m1", "when": {"m": 1}, "kernel": "rowdot_prequant", "block_m": 1, "block_n": 64, "block_k": 32},
    {"name": "rest", "kernel": "gemv_prequant", "block_m": 4, "block_n": 64, "block_k": 32, "pad_m": True},
]


def runtime(scheme: str, rules=ROWDOT) -> ArmRuntime:
    ops = {op: {"activation_scale": scheme, "routing": rules, "weight_layout": {"block_k": 64, "block_n": 64}}
           for op in (LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC)}
    return ArmRuntime(registry.Registry().build_config("arm", device="generic", execution=ARM_EXECUTION, ops=ops))


@pytest.fixture(params=[True, False], ids=["unsigned", "signed"])
def operand_sign(request, monkeypatch):
    monkeypatch.setattr(prequant, "unsigned_activations", lambda: request.param)
    return request.param


@pytest.mark.parametrize("scheme", ["per_row", "per_tensor", "pytorch"])
@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("zero_points, relu", [(False, False), (True, True)])
def test_rowdot_matches_contract(operand_sign, scheme, m, zero_points, relu):
    rt = runtime(scheme)
    packed = make_packed(70, 100, per_channel=zero_points, zero_points=zero_points, seed=m)   # N, K off-tile
    x = torch.randn(m, 100) * 3 + 0.5
    x[0, :7] = torch.tensor([127.0, -128.0, 0.0, 1e-30, -3.5, 2.5, 0.5])   # range ends, ties, tiny
    y = rt.runners[LINEAR_RELU_DYNAMIC if relu else LINEAR_DYNAMIC](x, packed, scheme == "pytorch")
    assert_matches_contract(y, x, packed, relu=relu, mode=scheme, **pytorch_scheme_extra(scheme, zero_points))
    plan = next(iter(rt.weight(packed, rt.runners[LINEAR_DYNAMIC].spec, LINEAR_DYNAMIC).plans.values()), None) \
        if not relu else None
    if plan is not None:
        assert plan.consts[0]["X_UNSIGNED"] is operand_sign


def test_rowdot_extreme_operands_are_exact(operand_sign):
    """Activations at -128/127 quanta times weights at -128: the unsigned shift's correction, and int32
    wrap-around, must still give the exact integer sums (per_tensor with scale 1 makes them visible)."""
    rt = runtime("per_tensor")
    packed = make_packed(33, 256, seed=3)
    x = torch.full((3, 256), 127.0)
    x[1] = -127.0
    x[2, ::2] = -127.0
    y = rt.runners[LINEAR_DYNAMIC](x, packed)
    assert_matches_contract(y, x, packed, mode="per_tensor")


@pytest.mark.parametrize("m, block_m", [(1, 1), (3, 2)])
def test_rowdot_k_steps_wider_than_the_layout_leave_a_tail(operand_sign, m, block_m):
    """K=200 pads to 224 (layout block_k 32): 128-wide steps cover 128, 32-wide ones the rest."""
    rules = [{"name": "wide", "kernel": "rowdot_prequant", "block_m": block_m, "block_n": 16, "block_k": 128,
              "pad_m": True}]
    ops = {LINEAR_DYNAMIC: {"routing": rules, "weight_layout": {"block_k": 32, "block_n": 64}}}
    rt = ArmRuntime(registry.Registry().build_config("arm", device="generic", execution=ARM_EXECUTION, ops=ops))
    packed = make_packed(40, 200, seed=2)
    x = torch.randn(m, 200)
    assert_matches_contract(rt.runners[LINEAR_DYNAMIC](x, packed), x, packed, mode="per_row")
    plan = next(iter(rt.weight(packed, rt.runners[LINEAR_DYNAMIC].spec, LINEAR_DYNAMIC).plans.values()))
    assert (plan.k_pad, plan.k_arg, plan.consts[0]["TAIL_K"]) == (224, 128, 32)      # k_arg: K_MAIN


def test_rowdot_block_k_is_capped():
    rules = [{"name": "r", "kernel": "rowdot_prequant", "block_m": 1, "block_n": 16, "block_k": 2048}]
    with pytest.raises(registry.ConfigError, match="block_k up to 1024"):
        registry.Registry().build_config("arm", ops={LINEAR_DYNAMIC: {"routing": rules}})


def test_rowdot_non_finite_rows(operand_sign):
    rt = runtime("per_row")
    packed = make_packed(20, 64, seed=1)
    x = torch.randn(4, 64)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    y = rt.runners[LINEAR_DYNAMIC](x, packed)
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    assert_matches_contract(y[[0, 3]], x[[0, 3]], packed, mode="per_row")


def test_a_table_mixing_layouts_caches_both_and_each_rule_reads_its_own():
    rt = runtime("per_row", MIXED)
    runner = rt.runners[LINEAR_DYNAMIC]
    assert runner.spec[3] == (KN, NK)
    packed = make_packed(70, 100, seed=5)
    for m in (1, 6):
        x = torch.randn(m, 100)
        assert_matches_contract(runner(x, packed), x, packed, mode="per_row")
    p = rt.weight(packed, runner.spec, LINEAR_DYNAMIC)
    assert p.weight.w_tiled is not None and p.weight.w_nk is not None
    only_rowdot = runtime("per_row").runners[LINEAR_DYNAMIC]
    assert only_rowdot.spec[3] == (NK,)
    assert only_rowdot.runtime.weight(packed, only_rowdot.spec, LINEAR_DYNAMIC).weight.w_tiled is None


def test_nk_layout_holds_the_weight_k_contiguous():
    w = torch.randint(-128, 128, (70, 100), dtype=torch.int8)
    nk = tile_nk(w, 32, 64).reshape(128, 128)               # [Np, Kp]
    kn = tile_kn(w.T, 32, 64).reshape(4, 2, 32, 64)         # [Kp/LK, Np/LN, LK, LN]
    assert torch.equal(nk[:70, :100], w)
    assert torch.equal(nk, kn.permute(1, 3, 0, 2).reshape(128, 128))
    assert nk[70:].abs().sum() == 0 and nk[:, 100:].abs().sum() == 0     # padding is zero


def test_rowdot_is_rejected_for_int_mm():
    with pytest.raises(registry.ConfigError, match="rowdot_prequant quantizes float activations"):
        registry.Registry().build_config("arm", ops={"aten::_int_mm": {"routing": [
            {"name": "r", "kernel": "rowdot_prequant", "block_m": 1, "block_n": 64, "block_k": 32}]}})
