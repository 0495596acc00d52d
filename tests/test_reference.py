"""The reference backend against float64 math computed independently."""

from __future__ import annotations

import pytest
import torch

from opregistry.backends.reference.ops import linear_dynamic

from conftest import ENGINES
from opregistry.testing import make_packed, quantized_engine


def float64_expected(x2d, packed, per_row=True):
    """Quantize with numpy-style float64 arithmetic, then multiply by the
    weight PyTorch dequantizes itself (``qweight.dequantize()``)."""
    qweight, bias = packed.unpack()
    xd = x2d.double()
    absmax = xd.abs().amax(dim=1, keepdim=True) if per_row else xd.abs().amax().reshape(1, 1)
    scale = torch.where(absmax == 0, torch.ones_like(absmax), (absmax.float() / 127).double())
    q = torch.round(xd / scale).clamp(-127, 127)
    y = (q * scale) @ qweight.dequantize().double().T
    return y + bias.double() if bias is not None else y


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("per_row", [True, False])
def test_matches_float64(engine, per_channel, per_row):
    zp = 0 if engine == "onednn" else -7
    packed = make_packed(33, 70, per_channel=per_channel, zero_points=bool(zp), engine=engine, seed=3)
    x = torch.randn(11, 70, generator=torch.Generator().manual_seed(4)) * 2
    with quantized_engine(engine):
        y = linear_dynamic(x, packed, activation_scale="per_row" if per_row else "per_tensor")
        expected = float64_expected(x, packed, per_row)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_integer_grid_inputs_are_lossless():
    packed = make_packed(20, 50, per_channel=True, zero_points=True, seed=5)
    k = torch.randint(-127, 128, (6, 50), generator=torch.Generator().manual_seed(6)).double()
    k[:, 0] = 127                                              # each row reaches the grid's edge
    s = torch.rand(6, 1, dtype=torch.float64) + 0.1
    x = (k * s).float()
    qweight, bias = packed.unpack()
    exact = x.double() @ qweight.dequantize().double().T + bias.double()
    y = linear_dynamic(x, packed)
    # Lossless quantization leaves only fp32 rounding of the result: a few ulps of
    # the magnitudes summed (cancellation makes a relative bound on y too tight).
    magnitude = x.double().abs() @ qweight.dequantize().double().abs().T + bias.double().abs()
    assert ((y.double() - exact).abs() <= 2.0 ** -21 * magnitude).all()


def test_shapes_m0_3d_and_relu():
    packed = make_packed(9, 12)
    assert linear_dynamic(torch.randn(0, 12), packed).shape == (0, 9)
    assert linear_dynamic(torch.randn(2, 0, 12), packed).shape == (2, 0, 9)
    x = torch.randn(2, 3, 12)
    y = linear_dynamic(x, packed)
    assert y.shape == (2, 3, 9)
    torch.testing.assert_close(y.reshape(6, 9), linear_dynamic(x.reshape(6, 12), packed))
    assert (linear_dynamic(x, packed, relu=True) >= 0).all()


def test_special_rows():
    packed = make_packed(5, 8)
    _, bias = packed.unpack()
    x = torch.randn(4, 8)
    x[0] = 0
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    y = linear_dynamic(x, packed)
    torch.testing.assert_close(y[0], bias)                    # zero row: bias only
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    assert torch.isfinite(y[3]).all()
    assert torch.isnan(linear_dynamic(x, packed, activation_scale="per_tensor")).all()
