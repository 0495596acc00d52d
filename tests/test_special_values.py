"""Special values: every outcome here is part of the contract
(``backends/reference/ops.py``) and holds for the reference backend and for the
ARM kernels (interpreter, through the dispatcher).

=====================================  =============================================================
input                                  outcome
=====================================  =============================================================
NaN or +-Inf anywhere in a row         that whole output row is NaN (``per_tensor``: the whole
                                       output); other rows are unaffected, bit-exact vs. the same
                                       rows computed alone. ReLU does not hide it (NaN, not 0).
all-zero rows / input                  exactly the bias (zeros without bias; ReLU(bias) with ReLU)
huge magnitudes (1e30)                 finite, within the contract tolerance of the reference
near FLT_MAX (3e38)                    matches the reference: +-inf exactly where the exact result
                                       exceeds fp32, never NaN
subnormal-only rows (1e-45)            the activation scale underflows to 0: exactly the bias
K at the int32 accumulator limit       K = (2**31-1) // (127 * max|w - zw|): exact result
K one above the limit                  ValueError naming the op, K, the product and the largest K;
                                       the backend keeps working afterwards
=====================================  =============================================================
"""

from __future__ import annotations

import math

import pytest
import torch

from opregistry.backends.common import LINEAR_OPS, unpack_weight
from opregistry.registry import Registry

from conftest import ARM_EXECUTION
from reliability_helpers import (OVERRIDE_WARNING, QUANT_CREATION_WARNING, arm_overrides, default_engine,
                                 make_packed, mismatches, quantized_engine, reference)

pytestmark = [pytest.mark.filterwarnings(QUANT_CREATION_WARNING), pytest.mark.filterwarnings(OVERRIDE_WARNING)]

M, K, N = 6, 40, 70       # crosses the K (32) and N (64) tiles of the packaged tables
MODES = ("per_row", "per_tensor")


@pytest.fixture(params=MODES)
def arm(request):
    """A private registry with the arm backend enabled (interpreter) in one activation mode."""
    reg = Registry()
    reg.enable(backend="arm", **arm_overrides("generic", activation_scale=request.param))
    try:
        yield request.param
    finally:
        reg.disable()
        assert reg.installed_library_count() == 0


def op(relu: bool):
    return torch.ops.quantized.linear_relu_dynamic if relu else torch.ops.quantized.linear_dynamic


@pytest.fixture(scope="module")
def weight():
    return make_packed(N, K, per_channel=True, zero_points=True, bias=True, seed=7)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_row_gives_nan_row(arm, weight, bad, relu):
    packed, w = weight
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1))
    x[2, 5] = bad
    x[4, K - 1] = bad
    good = [0, 1, 3, 5]
    for run in (lambda t: op(relu)(t, packed), lambda t: reference(t, w, relu, arm)):
        y = run(x)
        if arm == "per_tensor":
            assert torch.isnan(y).all()
        else:
            assert torch.isnan(y[[2, 4]]).all()
            assert not torch.isnan(y[good]).any()
            assert torch.equal(y[good], run(x[good])), "a NaN row must not change the other rows"


def test_non_finite_3d_input(arm, weight):
    packed, w = weight
    x = torch.randn(2, 3, K, generator=torch.Generator().manual_seed(2))
    x[1, 0, 0] = float("nan")
    y = torch.ops.quantized.linear_dynamic(x, packed)
    assert y.shape == (2, 3, N)
    if arm == "per_row":
        assert torch.isnan(y[1, 0]).all() and not torch.isnan(y[0]).any() and not torch.isnan(y[1, 1:]).any()
    else:
        assert torch.isnan(y).all()
    assert mismatches(y, x, w, False, arm) is None


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_zero_input_gives_bias(arm, relu, bias):
    packed, w = make_packed(N, K, per_channel=False, zero_points=True, bias=bias, seed=3)
    expected = (w.bias if bias else torch.zeros(N)).expand(M, N)
    if relu:
        expected = expected.clamp_min(0)
    for x in (torch.zeros(M, K), torch.zeros(2, 3, K)):
        y = op(relu)(x, packed).reshape(M, N)
        assert torch.equal(y, expected)
        assert torch.equal(reference(x, w, relu, arm).reshape(M, N), expected)


def test_zero_rows_among_others_give_bias(arm, weight):
    packed, w = weight
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(4)) * 3
    x[[0, 3]] = 0.0
    y = torch.ops.quantized.linear_dynamic(x, packed)
    if arm == "per_row":
        assert torch.equal(y[[0, 3]], w.bias.expand(2, N))
    assert mismatches(y, x, w, False, arm) is None


@pytest.mark.parametrize("magnitude", [1e30, -1e30, 1e-30])
def test_huge_and_tiny_magnitudes(arm, weight, magnitude):
    packed, w = weight
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(5)) * magnitude
    y = torch.ops.quantized.linear_dynamic(x, packed)
    assert torch.isfinite(y).all()
    assert mismatches(y, x, w, False, arm) is None


def test_near_float_max_overflows_like_reference(arm, weight):
    packed, w = weight
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(6)).sign() * 3e38
    y = torch.ops.quantized.linear_dynamic(x, packed)
    ref = reference(x, w, False, arm)
    assert not torch.isnan(y).any() and not torch.isnan(ref).any()
    assert torch.isinf(ref).any(), "the case must exercise overflow"
    assert torch.equal(torch.isinf(y), torch.isinf(ref)) and torch.equal(y[torch.isinf(y)], ref[torch.isinf(ref)])
    assert mismatches(y, x, w, False, arm) is None


@pytest.mark.filterwarnings("ignore:(divide by zero|invalid value) encountered:RuntimeWarning")  # numpy, in the interpreter
def test_subnormal_rows_give_bias(arm, weight):
    packed, w = weight
    x = torch.full((M, K), 1e-45)
    x[:, ::2] = -1e-45
    y = torch.ops.quantized.linear_dynamic(x, packed)
    assert torch.equal(y, w.bias.expand(M, N))
    assert torch.equal(reference(x, w, False, arm), w.bias.expand(M, N))


# -- the int32 accumulator limit ---------------------------------------------

# One wide tile so that K ~ 66k is a few dozen interpreter steps (M = N = 1).
# Compiled (--arm-execution=compiled), ordinary tiles: a compiler unrolls a tile
# whole, and a 1x16x2048 one takes it many minutes.
WIDE_TILES = ({"weight_layout": {"block_k": 2048, "block_n": 16},
               "routing": [{"name": "all", "kernel": "dot", "block_m": 1, "block_n": 16, "block_k": 2048}]}
              if ARM_EXECUTION == "interpreter" else
              {"weight_layout": {"block_k": 32, "block_n": 16},
               "routing": [{"name": "all", "kernel": "gemv", "block_m": 1, "block_n": 16, "block_k": 32}]})
INT32_MAX, QMAX = 2**31 - 1, 127
CENTERED_MAX = 255                                       # w = 127, zero point = -128
K_LIMIT = INT32_MAX // (QMAX * CENTERED_MAX)             # 66311


def _extreme_weight(k: int, sign: int):
    """[1, k] weight with |w - zp| = 255 everywhere (the largest possible)."""
    ints = torch.full((1, k), 127 if sign > 0 else -128, dtype=torch.int8)
    with quantized_engine(default_engine(zero_points=True)):
        qw = torch._make_per_tensor_quantized_tensor(ints, 1e-3, -128 if sign > 0 else 127)
        return torch.ops.quantized.linear_prepack(qw, torch.tensor([0.5]))


@pytest.fixture
def wide_arm():
    reg = Registry()
    overrides = arm_overrides("generic")
    for name in LINEAR_OPS:
        overrides["ops"][name].update(WIDE_TILES)
    reg.enable(backend="arm", **overrides)
    try:
        yield reg
    finally:
        reg.disable()


@pytest.mark.parametrize("sign", [1, -1])
def test_k_just_below_int32_limit_is_exact(wide_arm, sign):
    assert K_LIMIT * QMAX * CENTERED_MAX <= INT32_MAX < (K_LIMIT + 1) * QMAX * CENTERED_MAX
    packed = _extreme_weight(K_LIMIT, sign)
    x = torch.full((1, K_LIMIT), 2.5)               # every q = 127: the largest |sum| there is
    y = torch.ops.quantized.linear_dynamic(x, packed)
    acc = sign * K_LIMIT * QMAX * CENTERED_MAX       # 2147434... : within 2**31 - 1
    expected = acc * (2.5 / QMAX) * 1e-3 + 0.5
    assert math.isclose(float(y), expected, rel_tol=2**-21)
    assert mismatches(y, x, unpack_weight(packed)) is None


def test_k_just_above_int32_limit_is_refused(wide_arm):
    k = K_LIMIT + 1
    packed = _extreme_weight(k, 1)
    with pytest.raises(ValueError) as info:
        torch.ops.quantized.linear_dynamic(torch.ones(1, k), packed)
    msg = str(info.value)
    assert "quantized::linear_dynamic" in msg and f"K={k}" in msg and "2**31 - 1" in msg
    assert f"largest K for it is {K_LIMIT}" in msg
    # Nothing is left half-done: the backend still serves, the bad weight was not cached.
    ok_packed, w = make_packed(N, K, seed=9)
    x = torch.randn(M, K)
    assert mismatches(torch.ops.quantized.linear_dynamic(x, ok_packed), x, w) is None
    stats = wide_arm.status()["backends"]["arm"]["weight_cache"]
    assert stats["entries"] == 1
