"""The ``dot_prequant`` / ``gemv_prequant`` kernels (activations quantized once,
then an int8 GEMM on unmasked tiles) against the contract, in every activation
scheme, through the ARM tier's execution (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from opregistry import registry
from opregistry.backends.arm.runtime import ArmRuntime
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC

from conftest import ARM_EXECUTION
from opregistry.testing import assert_matches_contract, default_engine, make_packed

# PyTorch's op applies reduce_range for weights packed under these engines; qnnpack (aarch64) ignores it.
REDUCE_RANGE_APPLIES = {"x86": True, "fbgemm": True, "onednn": True, "qnnpack": False}


def pytorch_scheme_extra(scheme: str, zero_points: bool) -> dict:
    """The contract's ``reduce_range`` for a ``pytorch``-scheme call with reduce_range=True on a weight that
    make_packed packed under this host's default engine."""
    return {"reduce_range": REDUCE_RANGE_APPLIES[default_engine(zero_points)]} if scheme == "pytorch" else {}

RULES = [
    {"name": "pq-m1", "when": {"m": 1}, "kernel": "gemv_prequant", "block_m": 1, "block_n": 64, "block_k": 32},
    {"name": "pq-gemv4", "when": {"m_max": 3}, "kernel": "gemv_prequant", "block_m": 4, "block_n": 64,
     "block_k": 32, "pad_m": True},
    {"name": "pq-dot8", "kernel": "dot_prequant", "block_m": 8, "block_n": 64, "block_k": 32},
]


FUSED_RULES = [
    {"name": "fused-m1", "when": {"m": 1}, "kernel": "gemv", "block_m": 1, "block_n": 64, "block_k": 32},
    {"name": "fused-dot8", "kernel": "dot", "block_m": 8, "block_n": 64, "block_k": 32},
]


def runtime(scheme: str, rules=RULES) -> ArmRuntime:
    ops = {op: {"activation_scale": scheme, "routing": rules} for op in (LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC)}
    return ArmRuntime(registry.Registry().build_config("arm", device="generic", execution=ARM_EXECUTION, ops=ops))


@pytest.fixture(scope="module", params=["per_row", "per_tensor", "pytorch"])
def scheme_rt(request):
    return request.param, runtime(request.param)


@pytest.mark.parametrize("m", [1, 2, 5, 8, 17])
@pytest.mark.parametrize("zero_points, relu", [(False, False), (True, True)])
def test_prequant_matches_contract(scheme_rt, m, zero_points, relu):
    scheme, rt = scheme_rt
    packed = make_packed(70, 45, per_channel=zero_points, zero_points=zero_points, seed=m)
    x = torch.randn(m, 45) * 3 + 0.5
    y = rt.runners[LINEAR_RELU_DYNAMIC if relu else LINEAR_DYNAMIC](x, packed, scheme == "pytorch")
    assert_matches_contract(y, x, packed, relu=relu, mode=scheme, **pytorch_scheme_extra(scheme, zero_points))


def test_prequant_non_finite_rows(scheme_rt):
    scheme, rt = scheme_rt
    packed = make_packed(64, 64)
    x = torch.randn(9, 64)
    x[2, 3], x[5, 0] = float("nan"), float("inf")
    y = rt.runners[LINEAR_RELU_DYNAMIC](x, packed)
    if scheme == "per_row":       # a bad row is a NaN row; the others are right
        assert torch.isnan(y[[2, 5]]).all() and not torch.isnan(y[[0, 1, 3, 4, 6, 7, 8]]).any()
        good = [0, 1, 3, 4, 6, 7, 8]
        assert_matches_contract(y[good], x[good], packed, relu=True)
    else:
        assert torch.isnan(y).all()


def test_prequant_strided_and_3d():
    rt = runtime("per_row")
    packed = make_packed(40, 48)
    xs = torch.randn(3, 7, 96)[:, ::2, ::2]
    assert_matches_contract(rt.runners[LINEAR_DYNAMIC](xs, packed), xs, packed)
    counts = rt.status()["routing"][LINEAR_DYNAMIC]
    assert counts["pq-dot8"] == 1


def test_prequant_is_rejected_for_int_mm():
    rules = [{"name": "all", "kernel": "dot_prequant", "block_m": 8, "block_n": 64, "block_k": 32}]
    with pytest.raises(registry.ConfigError, match="dot_prequant quantizes float activations"):
        registry.Registry().build_config("arm", execution=ARM_EXECUTION, ops={"aten::_int_mm": {"routing": rules}})


@pytest.mark.skipif(ARM_EXECUTION != "compiled",
                    reason="direct launches are made only for compiled kernels (--arm-execution=compiled)")
@pytest.mark.parametrize("rules", [RULES, FUSED_RULES], ids=["prequant", "fused"])
@pytest.mark.parametrize("scheme", ["per_row", "pytorch"])
def test_direct_launches_repeat_the_jit_launch(scheme, rules):
    """After its first launch per (M, X strides, pointer alignment) a plan repeats the
    compiled kernels through Triton's launcher; the results are bit-exact with the
    first launch's, and a call that Triton would specialize differently (X at a
    4-byte offset, transposed X, another M) is bound anew, not launched wrongly."""
    rt = runtime(scheme, rules)
    runner = rt.runners[LINEAR_DYNAMIC]
    packed = make_packed(70, 48, per_channel=True, zero_points=True)
    base = torch.randn(17 * 48 + 1) * 3 + 0.5
    cases = {
        "aligned": base[:17 * 48].view(17, 48),
        "offset-4-bytes": base[1:].view(17, 48),
        "transposed": base[:17 * 48].view(48, 17).t(),
        "m1": base[:48].view(1, 48),
    }
    firsts = {name: runner(x, packed, True) for name, x in cases.items()}
    for name, x in cases.items():
        assert_matches_contract(firsts[name], x, packed, mode=scheme, **pytorch_scheme_extra(scheme, True))
        for _ in range(2):
            assert torch.equal(runner(x, packed, True), firsts[name]), name
    p = rt.weight(packed, runner.spec, LINEAR_DYNAMIC)
    assert sum(plan.bound.direct for plan in p.plans.values()) == 2 * len(cases)
    entries = [entry for plan in p.plans.values() for entry in plan.bound.entries.values()]
    assert len(entries) == len(cases) and None not in entries      # one binding per specialization


def test_gemv_prequant_tile_sum_is_exact_at_its_limit():
    """The dot-free GEMM sums a K tile in fp32: at the largest allowed tile (1024) with
    every product at 127 x -127 the sum is -16 515 072, odd multiples all the way, below
    2**24 so every partial sum is an exact fp32 integer. With unit scales (per_tensor,
    X = 127) the output is that integer exactly."""
    import opregistry.testing as T

    k = 1024
    rules = [{"name": "wide", "kernel": "gemv_prequant", "block_m": 1, "block_n": 16, "block_k": k}]
    ops = {op: {"routing": rules, "weight_layout": {"block_k": k, "block_n": 16}, "activation_scale": "per_tensor"}
           for op in (LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC)}
    rt = ArmRuntime(registry.Registry().build_config("arm", device="generic", execution=ARM_EXECUTION, ops=ops))
    with T.quiet_quantized_tensor_creation():
        qw = torch.quantize_per_tensor(torch.full((16, k), -127.0), 1.0, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, None)
    x = torch.full((2, k), 127.0)                          # scale 127 / 127 = 1: x_q = 127
    y = rt.runners[LINEAR_DYNAMIC](x, packed)
    assert torch.equal(y, torch.full((2, 16), -127.0 * 127 * k))
    assert_matches_contract(y, x, packed, mode="per_tensor")


def test_gemv_prequant_refuses_tiles_past_the_exact_limit():
    rules = [{"name": "too-wide", "kernel": "gemv_prequant", "block_m": 1, "block_n": 16, "block_k": 2048}]
    ops = {LINEAR_DYNAMIC: {"routing": rules, "weight_layout": {"block_k": 2048, "block_n": 16}}}
    with pytest.raises(registry.ConfigError, match=r"routing\[0\]\.block_k.*exact up to 1024 \(got 2048\)"):
        registry.Registry().build_config("arm", execution=ARM_EXECUTION, ops=ops)


@pytest.mark.parametrize("rows_per_program", [1, 8])
def test_quantize_pass_rows_per_program(rows_per_program):
    """The quantization pass runs one row per program compiled and the GEMM's row block
    interpreted: each form gives torch's own per-row quantization (round half to even),
    NaN scale for a non-finite row, zero padding rows and columns, exact row sums."""
    from opregistry.backends.arm.kernel_prequant import quantize_rows_kernel
    from opregistry.backends.common.interpreter import InterpretedKernel

    kernel = quantize_rows_kernel if ARM_EXECUTION == "compiled" else InterpretedKernel(quantize_rows_kernel)
    m, k, k_pad, m_pad = 13, 45, 64, 16
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(3)) * 3
    x[4, 7] = float("nan")
    x[6] = 0.0
    x[2, 4] = 127.0                                      # row 2: step exactly 1, then halves are ties
    x[2, :4] = torch.tensor([0.5, 1.5, -2.5, 3.5])
    xq = torch.full((m_pad, k_pad), 99, dtype=torch.int8)
    scale = torch.full((m_pad,), -1.0)
    rowsum = torch.full((m_pad,), -1, dtype=torch.int32)
    kernel[(m_pad // rows_per_program,)](x, xq, scale, rowsum, m, k, k_pad, x.stride(0), x.stride(1), k_pad,
                                         1.0, 1.0, 0, rows_per_program, 32, 0, True)
    s = x.abs().amax(dim=1) / 127
    s[s == 0] = 1.0
    want = torch.zeros(m_pad, k_pad, dtype=torch.int8)
    want[:m, :k] = torch.round(x / s[:, None]).clamp(-127, 127).nan_to_num(0).to(torch.int8)
    want[4] = 0                                          # a non-finite row quantizes to zeros, scale NaN
    assert torch.equal(xq, want)
    assert torch.isnan(scale[4]) and torch.equal(scale[[0, 1, 2, 3, 5, 6]], s[[0, 1, 2, 3, 5, 6]])
    assert torch.equal(scale[m:], torch.ones(m_pad - m))
    assert torch.equal(rowsum, want.to(torch.int32).sum(dim=1))
