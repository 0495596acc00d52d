"""``activation_scale: pytorch`` reproduces PyTorch's own activation quantization,
with the engine semantics of the engine that packed the weight: x86, fbgemm and
onednn apply ``reduce_range`` (7-bit activations), qnnpack ignores it (8-bit), as
PyTorch's op does (it dispatches on the packed weight's class). Checked against
PyTorch's own op under every engine this host has, ``reduce_range`` True and
False, through the dispatcher (arm, reference) and the module fast path (arm).

Bound against PyTorch's op: both choose the
same scale and zero point and quantize with the same fp32 multiply and
round-half-even, so the uint8 activations agree except where an fp32 product
lands on a tie the two compute differently; the integer sums are exact on both
sides (7-bit activations keep fbgemm's int16 pair sums from saturating); the rest
is fp32 epilogue rounding. Per element: one activation quantum in one product,
``s_x * s_w[n] * max_k |W[n,k] - zw[n]|``, plus 1e-5 of the magnitudes summed.
"""

from __future__ import annotations

import pytest
import torch

from opregistry import registry
from opregistry.backends.arm.runtime import ArmRuntime
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC, unpack_weight
from opregistry.backends.common.pytorch_qparams import choose_qparams, reduce_range_applies
from opregistry.backends.reference.ops import linear_dynamic as reference_linear

from conftest import ARM_EXECUTION
from opregistry.testing import (default_engine, engines, make_packed, quantized_engine,
                                quiet_quantized_tensor_creation)

PYTORCH_OPS = {op: {"activation_scale": "pytorch"} for op in (LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC)}


@pytest.fixture(scope="module")
def arm_pytorch():
    cfg = registry.Registry().build_config("arm", device="generic", execution=ARM_EXECUTION, ops=PYTORCH_OPS)
    return ArmRuntime(cfg)


def test_qparams_equal_pytorchs_choice():
    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(50, generator=g) * 10 ** e + shift for e in range(-7, 4) for shift in (0.0, 3.0, -3.0)]
    cases += [torch.zeros(4), torch.full((4,), 2.5), torch.full((4,), -1e-9), torch.tensor([1e-12, 3e-12]),
              torch.rand(30, generator=g) * 1e-6, torch.tensor([-5.0, 1e-20])]
    checked = 0
    # Under qnnpack, PyTorch's own choice ignores reduce_range (as its op does): ask an engine that applies it.
    engine = next(e for e in engines() if APPLIES[e])
    for x in cases:
        for reduce_range in (False, True):
            with quantized_engine(engine):
                scale, zp = torch._choose_qparams_per_tensor(x, reduce_range)
            ours = choose_qparams(x.min().item(), x.max().item(), reduce_range)
            assert ours.scale == pytest.approx(float(torch.tensor(scale, dtype=torch.float32)), rel=0, abs=0), x
            assert ours.zero_point == zp, (x, reduce_range)
            checked += 1
    assert checked == 2 * len(cases)


def native_bound(x2d, packed, reduce_range, y_ref):
    w = unpack_weight(packed)
    p = choose_qparams(x2d.min().item(), x2d.max().item(), reduce_range)
    wc = w.w_int8.double() - w.zero_point.double()[:, None]
    sxw = p.scale * w.scale.double()[None, :]
    q = ((x2d.double() / p.scale).round() + p.zero_point).clamp(0, 255) - p.zero_point
    magnitude = (q.abs() @ wc.abs().T) * sxw + (w.bias.double().abs() if w.bias is not None else 0)
    return 1.01 * sxw * wc.abs().amax(dim=1)[None, :] + 1e-5 * magnitude + 1e-30


MATRIX = [  # (m, n, k, per_channel, zero_point, bias)
    (1, 70, 45, False, 0, True), (2, 67, 100, True, 0, True), (7, 70, 45, False, 4, False),
    (9, 33, 64, True, -6, True), (64, 40, 32, False, 0, True), (65, 70, 45, True, 2, False),
]


@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("m, n, k, per_channel, zp, bias", MATRIX)
def test_matches_pytorch_native_op_with_reduce_range(arm_pytorch, engine, m, n, k, per_channel, zp, bias):
    zp = zp if engine in engines(zero_point_nonzero=True) else 0
    packed = make_packed(n, k, per_channel=per_channel, zero_points=bool(zp), bias=bias, engine=engine, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k)) * 3 + 0.5
    with quantized_engine(engine):
        y_native = torch.ops.quantized.linear_dynamic(x, packed, True)
        y_ref = reference_linear(x, packed, True, activation_scale="pytorch")
        y_arm = arm_pytorch.runners[LINEAR_DYNAMIC](x, packed, True)
    bound = native_bound(x, packed, APPLIES[engine], y_native)
    for name, y in (("reference", y_ref), ("arm", y_arm)):
        ratio = ((y.double() - y_native.double()).abs() / bound).max().item()
        assert ratio <= 1.0, f"{name}: max error / bound = {ratio:.3g}"


def test_relu_3d_and_padding_in_native_mode(arm_pytorch):
    engine = default_engine(zero_points=True)
    packed = make_packed(30, 50, per_channel=True, zero_points=True, engine=engine)
    x = torch.randn(2, 7, 50) + 1
    with quantized_engine(engine):
        y_native = torch.ops.quantized.linear_relu_dynamic(x, packed, True)
    y_arm = arm_pytorch.runners[LINEAR_RELU_DYNAMIC](x, packed, True)
    bound = native_bound(x.reshape(-1, 50), packed, APPLIES[engine], None).reshape(2, 7, 30)
    assert ((y_arm.double() - y_native.double()).abs() <= bound).all()


def test_without_reduce_range_we_match_float64_asymmetric_math():
    """reduce_range=False is the schema's default. fbgemm's AVX2 kernel then
    lets u8 x s8 pair sums saturate int16 (hosts with AVX-512 VNNI accumulate
    in int32 and do not); ours follow the intended math on every host."""
    g = torch.Generator().manual_seed(11)
    full_range = torch.randint(-128, 128, (70, 100), generator=g, dtype=torch.int8)
    qweight = torch._make_per_tensor_quantized_tensor(full_range, 0.01, 0)
    with quantized_engine(default_engine()):
        packed = torch.ops.quantized.linear_prepack(qweight, torch.randn(70, generator=g))
    x = torch.randn(16, 100, generator=g) * 3 + 0.5
    _, bias = packed.unpack()

    p = choose_qparams(x.min().item(), x.max().item(), False)
    q = (torch.round(x * p.inv_scale) + p.zero_point).clamp(0, 255)
    expected = ((q.double() - p.zero_point) * p.scale) @ qweight.dequantize().double().T + bias.double()
    y_ref = reference_linear(x, packed, False, activation_scale="pytorch")
    torch.testing.assert_close(y_ref.double(), expected, rtol=1e-5, atol=1e-4)
    exact = x.double() @ qweight.dequantize().double().T + bias.double()
    assert ((y_ref.double() - exact).norm() / exact.norm()).item() < 0.02   # 8-bit quantization error only


def test_non_finite_input_gives_nan(arm_pytorch):
    packed = make_packed(8, 16)
    x = torch.randn(3, 16)
    x[1, 2] = float("inf")
    assert torch.isnan(arm_pytorch.runners[LINEAR_DYNAMIC](x, packed, True)).all()
    assert torch.isnan(reference_linear(x, packed, True, activation_scale="pytorch")).all()


def test_pytorch_scheme_through_the_dispatcher():
    engine = default_engine()
    packed = make_packed(24, 40, engine=engine)
    x = torch.randn(5, 40)
    with quantized_engine(engine):
        y_native = torch.ops.quantized.linear_dynamic(x, packed, True)
        with registry.enabled(backend="arm", execution=ARM_EXECUTION, ops=PYTORCH_OPS):
            y = torch.ops.quantized.linear_dynamic(x, packed, True)
    assert ((y.double() - y_native.double()).abs() <= native_bound(x, packed, APPLIES[engine], None)).all()


def _grid_case(engine, m, k, n, per_channel, reduce_range, seed):
    """PyTorch's own test, in spirit: uint8-grid activations (scale 1, zero point 0,
    values spanning the full 8- or 7-bit range) and full-range int8 weights with
    scale 1, so quantization is lossless and the answer is exact integer math."""
    g = torch.Generator().manual_seed(seed)
    x_max = 127 if reduce_range else 255
    x = torch.randint(0, x_max + 1, (m, k), generator=g).float()
    x[0, 0], x[0, 1] = 0, x_max                                   # pin the range: scale 1, zero point 0
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    bias = torch.randint(-10, 11, (n,), generator=g).float()
    if per_channel:
        qw = torch._make_per_channel_quantized_tensor(w, torch.ones(n, dtype=torch.double),
                                                      torch.zeros(n, dtype=torch.long), 0)
    else:
        qw = torch._make_per_tensor_quantized_tensor(w, 1.0, 0)
    with quantized_engine(engine):
        packed = torch.ops.quantized.linear_prepack(qw, bias)
    exact = x.double() @ w.double().T + bias.double()
    return x, packed, exact


@pytest.mark.parametrize("engine", ["x86", "fbgemm", "qnnpack", "onednn"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_integer_grid_is_exact_through_the_dispatcher(engine, per_channel, reduce_range, relu):
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"engine {engine} not built into this torch")
    m, k, n = 5, 24, 7
    # A qnnpack-packed weight gets 8-bit activations whatever reduce_range says: the
    # lossless grid is then the 8-bit one.
    x, packed, exact = _grid_case(engine, m, k, n, per_channel, reduce_range and APPLIES[engine],
                                  seed=len(engine) * 8 + per_channel * 4 + reduce_range * 2 + relu)
    if relu:
        exact = exact.clamp_min(0)
    op = torch.ops.quantized.linear_relu_dynamic if relu else torch.ops.quantized.linear_dynamic
    with quantized_engine(engine):
        for backend, extra in (("arm", {"execution": ARM_EXECUTION}), ("reference", {})):
            with registry.enabled(backend=backend, ops=PYTORCH_OPS, **extra):
                y = op(x, packed, reduce_range)
                served = registry.status()["ops"][LINEAR_RELU_DYNAMIC if relu else LINEAR_DYNAMIC]
            assert served["backend"] == backend and served["calls"] == 1
            assert torch.equal(y.double(), exact), (backend, (y.double() - exact).abs().max())


# -- engine semantics: every engine, reduce_range True and False, both paths ---------

ALL_ENGINES = engines()                  # this host's engines (onednn: symmetric weights only)
APPLIES = {"x86": True, "fbgemm": True, "onednn": True, "qnnpack": False}   # measured, torch 2.13


def _weights(engine):
    """(label, packed) prepacked under ``engine``: per-tensor with a zero point where the
    engine takes one, per-channel, and per-tensor without bias."""
    zp = engine != "onednn"
    return [("per_tensor", make_packed(33, 70, zero_points=zp, engine=engine, seed=1)),
            ("per_channel", make_packed(33, 70, per_channel=True, engine=engine, seed=2)),
            ("no_bias", make_packed(33, 70, bias=False, engine=engine, seed=3))]


def _assert_like_pytorch(y, y_pytorch, x2d, packed, reduce_range, what):
    bound = native_bound(x2d, packed, reduce_range, None).reshape(y.shape)
    ratio = ((y.double() - y_pytorch.double()).abs() / bound).max().item()
    assert ratio <= 1.0, f"{what}: max error / bound = {ratio:.3g}"


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_which_engines_apply_reduce_range(engine):
    """The rule, measured on PyTorch's own op: 7-bit activations unless qnnpack packed the weight."""
    x = torch.randn(4, 70, generator=torch.Generator().manual_seed(5)) * 3 + 0.5
    for _, packed in _weights(engine):
        with quantized_engine(engine):
            with_rr = torch.ops.quantized.linear_dynamic(x, packed, True)
        w = unpack_weight(packed)
        for rr in (False, True):
            expected = _pytorch_scheme(x, w, rr)
            close = ((with_rr.double() - expected).abs() <= native_bound(x, packed, rr, None)).all().item()
            assert close == (rr == APPLIES[engine]), (engine, rr)
        assert reduce_range_applies(packed, 70) == APPLIES[engine]


def _pytorch_scheme(x, w, reduce_range):
    from opregistry.backends.reference.ops import linear_from_unpacked

    return linear_from_unpacked(x, w, False, "pytorch", reduce_range).double()


@pytest.mark.parametrize("engine", ALL_ENGINES)
@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_dispatcher_matches_pytorchs_op_on_every_engine(engine, reduce_range, relu):
    op = torch.ops.quantized.linear_relu_dynamic if relu else torch.ops.quantized.linear_dynamic
    name = LINEAR_RELU_DYNAMIC if relu else LINEAR_DYNAMIC
    x = torch.randn(2, 3, 70, generator=torch.Generator().manual_seed(7)) * 2 - 0.7
    x2d = x.reshape(-1, 70)
    effective = reduce_range and APPLIES[engine]
    with quantized_engine(engine):
        for label, packed in _weights(engine):
            y_pytorch = op(x, packed, reduce_range)
            for backend, extra in (("arm", {"execution": ARM_EXECUTION}), ("reference", {})):
                with registry.enabled(backend=backend, ops=PYTORCH_OPS, **extra):
                    y = op(x, packed, reduce_range)
                    assert registry.status()["ops"][name]["backend"] == backend
                _assert_like_pytorch(y, y_pytorch, x2d, packed, effective, f"{backend} {label}")


@pytest.mark.parametrize("engine", ALL_ENGINES)
@pytest.mark.parametrize("reduce_range", [False, True])
def test_module_fast_path_matches_pytorchs_module_on_every_engine(engine, reduce_range):
    """``nn.quantized.dynamic.Linear`` passes ``reduce_range=True`` from module version 4
    on and nothing before (version 3 modules from old checkpoints): both, through the
    fast path, against the same module with nothing enabled."""
    from torch.ao.nn.quantized.dynamic import Linear as DQLinear

    x = torch.randn(5, 70, generator=torch.Generator().manual_seed(9)) * 3 + 0.5
    effective = reduce_range and APPLIES[engine]
    with quantized_engine(engine):
        for label, packed in _weights(engine):
            module = DQLinear(70, 33)
            with quiet_quantized_tensor_creation():
                module.set_weight_bias(*torch.ops.quantized.linear_unpack(packed))
            module.version = 4 if reduce_range else 3
            y_pytorch = module(x)
            with registry.enabled(backend="arm", execution=ARM_EXECUTION, ops=PYTORCH_OPS):
                before = registry.status()["ops"][LINEAR_DYNAMIC]["calls_by_path"]["fast_path"]
                ys = [module(x), module(x)]                  # first call prepares, second takes the direct route
                st = registry.status()
            assert st["ops"][LINEAR_DYNAMIC]["calls_by_path"] == {"dispatcher": 0, "fast_path": before + 2}
            assert torch.equal(ys[0], ys[1])
            _assert_like_pytorch(ys[0], y_pytorch, x, module._packed_params._packed_params, effective,
                                 f"fast path {label}")


@pytest.mark.parametrize("packed_under, run_under", [("qnnpack", "x86"), ("x86", "qnnpack"),
                                                      ("onednn", "qnnpack"), ("qnnpack", "onednn")])
def test_the_engine_that_packed_the_weight_decides(packed_under, run_under):
    if not {packed_under, run_under} <= set(ALL_ENGINES):
        pytest.skip("engine not built into this torch")
    packed = make_packed(33, 70, per_channel=True, engine=packed_under, seed=4)
    x = torch.randn(3, 70, generator=torch.Generator().manual_seed(2)) * 3 + 0.5
    with quantized_engine(run_under):
        y_pytorch = torch.ops.quantized.linear_dynamic(x, packed, True)
        for backend, extra in (("arm", {"execution": ARM_EXECUTION}), ("reference", {})):
            with registry.enabled(backend=backend, ops=PYTORCH_OPS, **extra):
                y = torch.ops.quantized.linear_dynamic(x, packed, True)
            _assert_like_pytorch(y, y_pytorch, x, packed, APPLIES[packed_under], backend)
