"""Shared fixtures: packed weights under each engine, and the tolerance of the
ARM kernels against the reference backend."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

import registry
from backends.common import unpack_weight
from backends.reference.ops import linear_from_unpacked, quantize_activation

ENGINES = [e for e in ("x86", "fbgemm", "qnnpack", "onednn") if e in torch.backends.quantized.supported_engines]


@contextlib.contextmanager
def quantized_engine(name: str):
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def make_packed(n: int, k: int, *, per_channel=False, zero_point=0, bias=True, engine="x86", seed=0):
    """A packed qint8 linear weight [n, k] under ``engine`` (random, full int8 range)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    with quantized_engine(engine), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*deprecated")
        if per_channel:
            scales = w.abs().amax(dim=1).clamp_min(1e-3) / 120
            zps = torch.full((n,), zero_point, dtype=torch.long)
            qw = torch.quantize_per_channel(w, scales.double(), zps, 0, torch.qint8)
        else:
            qw = torch.quantize_per_tensor(w, float(w.abs().max()) / 120, zero_point, torch.qint8)
        return torch.ops.quantized.linear_prepack(qw, b)


def assert_close_to_reference(y: torch.Tensor, x: torch.Tensor, packed, *, relu=False,
                              activation_scale="per_row"):
    """The kernels quantize activations with the same fp32 arithmetic as the
    reference, and their int32 sums are exact. What may differ: fp32 epilogue
    rounding (relative 1e-5 of the magnitudes summed), and on an exact
    rounding tie computed differently, one activation quantum in one element:
    ``s_x[m] * s_w[n] * max_k |W[n,k] - zw[n]|``."""
    w = unpack_weight(packed)
    ref = linear_from_unpacked(x, w, relu=relu, activation_scale=activation_scale)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    assert y.dtype == torch.float32
    x2d = x.reshape(-1, w.in_features)
    y2d, ref2d = y.reshape(-1, w.out_features), ref.reshape(-1, w.out_features)
    if x2d.shape[0] == 0:
        return
    assert torch.equal(torch.isnan(y2d), torch.isnan(ref2d)), "NaN pattern differs from the reference"
    q, s = quantize_activation(x2d, activation_scale)
    wc = (w.w_int8.double() - w.zero_point.double()[:, None])
    sxw = s.double() * w.scale.double()[None, :]
    magnitude = (q.double().abs() @ wc.abs().T) * sxw + (w.bias.double().abs() if w.bias is not None else 0)
    flip = sxw * wc.abs().amax(dim=1)[None, :]
    bound = 1e-5 * magnitude + 1.01 * flip + 1e-30
    finite = ~torch.isnan(ref2d)
    err = (y2d.double() - ref2d.double()).abs()
    worst = (err / bound)[finite].max().item() if finite.any() else 0.0
    assert worst <= 1.0, f"max error / bound = {worst:.3g}"


@pytest.fixture
def fresh_registry():
    """A private Registry, disabled at the end whatever happened."""
    reg = registry.Registry()
    try:
        yield reg
    finally:
        reg.disable()


@pytest.fixture(autouse=True)
def _no_backend_left_enabled():
    yield
    registry.disable()
