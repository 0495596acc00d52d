"""Helpers for testing a backend against the quantization contract.

Used by this project's tests and tools, and by third-party backends that want
the same checks: packed weights under a chosen engine, and one per-element
bound on ``|kernel - reference|`` derived from the contract (never a
whole-tensor norm, under which one flipped quantum hides).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import torch

from opregistry.backends.common import UnpackedWeight, unpack_weight
from opregistry.backends.common.engines import quantized_engine, usable_engines
from opregistry.backends.reference.ops import linear_from_unpacked, quantize_activation, quantize_activation_pytorch

# Relative bound of an fp32 epilogue (a few roundings of the product and bias).
EPILOGUE_REL = 2.0 ** -21
EPILOGUE_ABS = 2.0 ** -146
TIE_ULPS = 4   # an activation this close to a rounding tie may round either way in another fp32 order


def engines(zero_point_nonzero: bool = False) -> list[str]:
    """Quantized engines that pack and run linear weights on this host (x86/fbgemm on x86,
    qnnpack/onednn on aarch64), in preference order; with ``zero_point_nonzero``, only those
    that take such a weight (oneDNN takes symmetric weights only)."""
    return usable_engines(zero_points=zero_point_nonzero)


def default_engine(zero_points: bool = False) -> str:
    """The engine :func:`make_packed` uses when none is named: this host's first usable one."""
    usable = engines(zero_points)
    if not usable:
        raise RuntimeError(f"no quantized engine of torch {torch.__version__} packs "
                           f"{'asymmetric ' if zero_points else ''}linear weights on this host "
                           f"(built with: {', '.join(torch.backends.quantized.supported_engines)})")
    return usable[0]


def make_qweight(n: int, k: int, *, per_channel: bool = False, zero_points: bool = False,
                 gen: torch.Generator | None = None, full_range: bool = True) -> torch.Tensor:
    """A qint8 weight ``[n, k]``: random int8 values (with ``full_range``, -128
    included) and, when asked, non-zero zero points."""
    gen = gen or torch.Generator().manual_seed(0)
    low = -128 if full_range else -127
    ints = torch.randint(low, 128, (n, k), dtype=torch.int8, generator=gen)
    with quiet_quantized_tensor_creation():
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
                engine: str | None = None, seed: int = 0, bias_scale: float = 1.0):
    """A fresh random packed ``LinearPackedParamsBase`` (``[n, k]`` qint8, full
    int8 range) prepacked under ``engine`` (default: :func:`default_engine`)."""
    engine = engine or default_engine(zero_points)
    gen = torch.Generator().manual_seed(seed)
    qw = make_qweight(n, k, per_channel=per_channel, zero_points=zero_points, gen=gen)
    b = torch.randn(n, generator=gen) * bias_scale if bias else None
    with quantized_engine(engine), quiet_quantized_tensor_creation():
        return torch.ops.quantized.linear_prepack(qw, b)


def reference(x: torch.Tensor, w: UnpackedWeight, relu: bool = False, mode: str = "per_row",
              reduce_range: bool = False) -> torch.Tensor:
    """The contract in float64, as the reference backend computes it."""
    return linear_from_unpacked(x, w, relu, mode, reduce_range)


def contract_tolerance(x: torch.Tensor, w: UnpackedWeight, mode: str = "per_row",
                       reduce_range: bool = False, rel: float = EPILOGUE_REL) -> torch.Tensor:
    """Per-element bound (float64, shape of the output) on ``|kernel - reference|``.

    ``rel * (sum_k |q w| s sw + |b|) + EPILOGUE_ABS`` for the fp32 epilogue (``rel``:
    ``EPILOGUE_REL`` for one fused epilogue; more where partial sums are added
    in fp32 in another order, e.g. split-K on a GPU),
    plus ``s sw sum_k tie[m, k] |w[n, k] - zw[n]|``: one quantum of every
    activation element within ``TIE_ULPS`` ulps of a rounding tie.
    """
    x2d = x.detach().cpu().reshape(-1, w.in_features)
    if mode == "pytorch":
        q, s = quantize_activation_pytorch(x2d, reduce_range)
        v = x2d / s if torch.isfinite(s).all() else x2d
    else:
        q, s = quantize_activation(x2d, mode)
        v = x2d / s
    wc = w.w_int8.double() - w.zero_point.double()[:, None]
    scale = s.double() * w.scale.double()[None, :]
    mag = (q.double().abs() @ wc.abs().T) * scale     # the magnitudes summed (partial sums may cancel)
    if w.bias is not None:
        mag = mag + w.bias.double().abs()[None, :]
    frac = v - torch.floor(v)
    a = v.abs()
    ulp = torch.nextafter(a, torch.full_like(a, math.inf)) - a
    near_tie = ((frac - 0.5).abs() <= TIE_ULPS * ulp) & torch.isfinite(v)
    ties = (near_tie.double() @ wc.abs().T) * scale
    tol = rel * mag + EPILOGUE_ABS + ties
    return tol.reshape(*x.shape[:-1], w.out_features)


def check(y: torch.Tensor, x: torch.Tensor, w, relu: bool = False, mode: str = "per_row",
          reduce_range: bool = False, rel: float = EPILOGUE_REL) -> tuple[bool, float, str]:
    """``(ok, worst |error| / bound, what is wrong)`` of ``y`` against the contract for
    ``x`` and weight ``w`` (packed or :class:`UnpackedWeight`); tensors may live on any
    device (compared on the CPU in float64)."""
    if not isinstance(w, UnpackedWeight):
        w = unpack_weight(w)
    x = x.detach().cpu()
    y = y.detach().cpu()
    expected = reference(x, w, relu, mode, reduce_range)
    if y.shape != expected.shape or y.dtype != expected.dtype:
        return False, math.inf, (f"shape/dtype {tuple(y.shape)} {y.dtype}, expected {tuple(expected.shape)} "
                                 f"{expected.dtype}")
    nan_y, nan_e = torch.isnan(y), torch.isnan(expected)
    if not torch.equal(nan_y, nan_e):
        return False, math.inf, f"NaN positions differ: {int((nan_y != nan_e).sum())} elements"
    if y.numel() == 0:
        return True, 0.0, ""
    tol = contract_tolerance(x, w, mode, reduce_range, rel)
    ok = ~nan_e & ~(torch.isinf(y) & torch.isinf(expected) & (y == expected))
    err = (y.double() - expected.double()).abs()
    ratio = torch.where(ok, err / tol, torch.zeros_like(err))
    worst = float(ratio.max())
    bad = ok & ~(err <= tol)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        return False, worst, (f"{int(bad.sum())} elements beyond tolerance; first at {idx}: got {float(y[idx])!r}, "
                              f"expected {float(expected[idx])!r}, |diff| {float(err[idx]):.3e} > "
                              f"tol {float(tol[idx]):.3e}")
    return True, worst, ""


def mismatches(y: torch.Tensor, x: torch.Tensor, w, relu: bool = False, mode: str = "per_row",
               reduce_range: bool = False, rel: float = EPILOGUE_REL) -> str | None:
    """``None`` when ``y`` satisfies the contract (see :func:`check`); otherwise what is wrong."""
    ok, _, note = check(y, x, w, relu, mode, reduce_range, rel)
    return None if ok else note


def assert_matches_contract(y: torch.Tensor, x: torch.Tensor, w, relu: bool = False, mode: str = "per_row",
                            reduce_range: bool = False, rel: float = EPILOGUE_REL) -> None:
    problem = mismatches(y, x, w, relu, mode, reduce_range, rel)
    assert problem is None, problem


@contextmanager
def quiet_quantized_tensor_creation():
    """torch 2.13 deprecates quantized tensor creation; silence exactly that, for a block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*(quantize_per_(tensor|channel)|quantized tensor).*deprecated")
        yield
