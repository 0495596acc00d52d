"""Shared helpers of the reliability suite (issue 6): weights, activations, the
contract tolerance, and configs for the ARM backend under the interpreter.

Not a test module. Only the reliability tests import it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from backends.common import LINEAR_OPS, UnpackedWeight, unpack_weight
from backends.reference.ops import linear_from_unpacked, quantize_activation

# torch.quantize_per_* and friends warn (UserWarning) in 2.13; filter in tests only.
QUANT_CREATION_WARNING = "ignore:.*quantized tensor creation functions.*deprecated:UserWarning"
OVERRIDE_WARNING = "ignore:.*Overriding a previously registered kernel:UserWarning"

# Relative bound of the fp32 epilogue (see tests/test_fuzz.py's docstring).
EPILOGUE_REL = 2.0 ** -21
EPILOGUE_ABS = 2.0 ** -146
TIE_ULPS = 4


def engines_for(zero_point_nonzero: bool) -> list[str]:
    """Engines whose ``linear_prepack`` takes this weight (oneDNN: symmetric only)."""
    supported = torch.backends.quantized.supported_engines
    names = ["x86", "fbgemm", "qnnpack"] + ([] if zero_point_nonzero else ["onednn"])
    return [e for e in names if e in supported]


@contextmanager
def quantized_engine(name: str):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def make_qweight(n: int, k: int, *, per_channel: bool, zero_points: bool, gen: torch.Generator,
                 full_range: bool = True) -> torch.Tensor:
    """A qint8 weight ``[n, k]`` with int8 values over the whole range
    (including -128) and, when asked, non-zero zero points."""
    if full_range:
        ints = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    else:
        ints = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    if per_channel:
        scales = torch.rand(n, dtype=torch.float64, generator=gen) * 0.05 + 1e-4
        zps = (torch.randint(-128, 128, (n,), generator=gen) if zero_points
               else torch.zeros(n, dtype=torch.int64))
        return torch._make_per_channel_quantized_tensor(ints, scales, zps, 0)
    scale = float(torch.rand((), generator=gen)) * 0.05 + 1e-4
    zp = int(torch.randint(-128, 128, (), generator=gen)) if zero_points else 0
    if zero_points and zp == 0:
        zp = 1
    return torch._make_per_tensor_quantized_tensor(ints, scale, zp)


def make_packed(n: int, k: int, *, per_channel: bool = False, zero_points: bool = False, bias: bool = True,
                engine: str = "x86", seed: int = 0, bias_scale: float = 1.0):
    """``(packed, unpacked)`` for a fresh random weight prepacked under ``engine``."""
    gen = torch.Generator().manual_seed(seed)
    qw = make_qweight(n, k, per_channel=per_channel, zero_points=zero_points, gen=gen)
    b = torch.randn(n, generator=gen) * bias_scale if bias else None
    with quantized_engine(engine):
        packed = torch.ops.quantized.linear_prepack(qw, b)
    return packed, unpack_weight(packed)


def reference(x: torch.Tensor, w: UnpackedWeight, relu: bool = False, mode: str = "per_row") -> torch.Tensor:
    return linear_from_unpacked(x, w, relu, mode)


def contract_tolerance(x: torch.Tensor, w: UnpackedWeight, mode: str = "per_row") -> torch.Tensor:
    """Elementwise bound (float64, shape of the output) on |kernel - reference|.

    ``EPILOGUE_REL * (|acc| s sw + |b|) + EPILOGUE_ABS`` for the fp32 epilogue,
    plus ``s sw sum_k tie[m, k] |w[n, k] - zw[n]|``: one quantum of every
    activation element within ``TIE_ULPS`` ulps of a rounding tie.
    """
    x2d = x.reshape(-1, w.in_features)
    q, s = quantize_activation(x2d, mode)
    wc = w.w_int8.double() - w.zero_point.double()[:, None]
    acc = q.double() @ wc.T
    scale = s.double() * w.scale.double()[None, :]
    mag = acc.abs() * scale
    if w.bias is not None:
        mag = mag + w.bias.double().abs()[None, :]
    v = x2d / s
    frac = v - torch.floor(v)
    a = v.abs()
    ulp = torch.nextafter(a, torch.full_like(a, math.inf)) - a
    near_tie = ((frac - 0.5).abs() <= TIE_ULPS * ulp) & torch.isfinite(v)
    ties = (near_tie.double() @ wc.abs().T) * scale
    tol = EPILOGUE_REL * mag + EPILOGUE_ABS + ties
    return tol.reshape(*x.shape[:-1], w.out_features)


def mismatches(y: torch.Tensor, x: torch.Tensor, w: UnpackedWeight, relu: bool = False,
               mode: str = "per_row") -> str | None:
    """``None`` when ``y`` satisfies the contract for ``x``; otherwise a description."""
    expected = reference(x, w, relu, mode)
    if y.shape != expected.shape or y.dtype != expected.dtype:
        return f"shape/dtype {tuple(y.shape)} {y.dtype}, expected {tuple(expected.shape)} {expected.dtype}"
    nan_y, nan_e = torch.isnan(y), torch.isnan(expected)
    if not torch.equal(nan_y, nan_e):
        return f"NaN positions differ: {int((nan_y != nan_e).sum())} elements"
    if y.numel() == 0:
        return None
    tol = contract_tolerance(x, w, mode)
    ok = ~nan_e
    err = (y.double() - expected.double()).abs()
    inf_same = torch.isinf(y) & torch.isinf(expected) & (y == expected)
    bad = ok & ~inf_same & ~(err <= tol)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        return (f"{int(bad.sum())} elements beyond tolerance; first at {idx}: got {float(y[idx])!r}, "
                f"expected {float(expected[idx])!r}, |diff| {float(err[idx]):.3e} > tol {float(tol[idx]):.3e}")
    return None


def arm_overrides(device: str = "generic", padding: bool = True, activation_scale: str = "per_row",
                  max_bytes: int | None = None, **op_keys) -> dict:
    """Keyword overrides for ``registry.enable(backend="arm", ...)`` under the interpreter."""
    op = {"padding": padding, "activation_scale": activation_scale, **op_keys}
    out = {"execution": "interpreter", "device": device, "ops": {name: dict(op) for name in LINEAR_OPS}}
    if max_bytes is not None:
        out["weight_cache"] = {"max_bytes": max_bytes}
    return out


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def launch_cost(router, m: int, k: int, n: int) -> int:
    """Interpreter cost proxy of one call: programs x K steps (gemv counts double)."""
    if m == 0:
        return 0
    route = router.route(m)
    rule = route.rule
    steps = ceil_div(route.m_run, rule.block_m) * ceil_div(n, rule.block_n) * ceil_div(k, rule.block_k)
    return steps * (2 if rule.kernel == "gemv" else 1)

