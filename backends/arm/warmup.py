"""Compile, before serving, every kernel variant a model's shapes will select.

Triton compiles a kernel per combination of its constexprs (the routing rule's
tiles and kernel, ``EVEN_M/K/N``, bias, weight zero points, activation scheme,
ReLU) and of its integer-argument specialisation (``== 1``, ``% 16 == 0``),
at the first call that needs it: seconds to minutes each on Triton-CPU, paid by
the first request (FlagGems' ARM users report ~15 minutes of JIT on first use).
:func:`warmup` makes those first calls up front, through the enabled op, on
zero activations: one call per distinct layer signature and per distinct
variant over the M values the model will see. Compiled kernels land in Triton's
persistent cache (``TRITON_CACHE_DIR``, default ``~/.triton/cache``), so a later
process pays only loading them.

``opregistry warmup`` (the ARM plugin's command) does the same for shapes
given on the command line.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass

import torch

from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC

SPECIALISE = 16      # Triton specialises integer arguments on divisibility by 16 and on == 1


@dataclass(frozen=True)
class LayerSignature:
    """What of a layer selects a kernel variant (not its values)."""

    k: int
    n: int
    bias: bool
    zero_points: bool
    per_channel: bool
    relu: bool


def _signature(module) -> tuple[LayerSignature, object] | None:
    """``(signature, packed params)`` of a dynamic-quantized linear module, else None."""
    from torch.ao.nn.quantized.dynamic import Linear as DQLinear

    if not isinstance(module, DQLinear):
        return None
    packed = module._packed_params
    if packed.dtype != torch.qint8:
        return None
    weight, bias = packed._weight_bias()
    per_channel = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    zps = weight.q_per_channel_zero_points() if per_channel else torch.tensor([weight.q_zero_point()])
    relu = type(module).__name__ == "LinearReLU"
    n, k = weight.shape
    return LayerSignature(k, n, bias is not None, bool((zps != 0).any()), per_channel, relu), packed._packed_params


def synthetic_layer(sig: LayerSignature):
    """Packed params of a random weight with ``sig``'s shape and flags."""
    from opregistry.testing import make_packed

    return make_packed(sig.n, sig.k, per_channel=sig.per_channel or sig.zero_points,
                       zero_points=sig.zero_points, bias=sig.bias)


def variant_ms(router, ms) -> list[int]:
    """One M per distinct kernel variant among ``ms``: the routing rule, whether the
    launched rows fill whole row blocks, and Triton's specialisation of M."""
    seen, picked = set(), []
    for m in sorted(set(ms)):
        if m <= 0:
            continue
        route = router.route(m)
        m_run = route.m_run
        key = (route.rule.name, m_run % max(route.rule.block_m, 1) == 0, m_run == 1, m_run % SPECIALISE == 0)
        if key not in seen:
            seen.add(key)
            picked.append(m)
    return picked


def warmup(model: torch.nn.Module | None = None, *, layers=(), ms=(1,), max_m: int | None = None,
           registry=None, **enable) -> dict:
    """Compile every variant ``model``'s dynamic-quantized linears (and ``layers``:
    :class:`LayerSignature` values) select for ``ms`` (and, with ``max_m``, every M
    up to it) into Triton's persistent cache. Uses the ARM backend if it is
    enabled, else enables it for the duration with ``enable`` (``registry.enable``
    keywords: ``config=``, ``execution=``, ...). Returns what ran and how long."""
    from opregistry import registry as default

    reg = registry or default.default_registry()
    targets: dict[LayerSignature, object] = {}
    if model is not None:
        for module in model.modules():
            found = _signature(module)
            if found is not None:
                targets.setdefault(*found)
    for sig in layers:
        targets.setdefault(sig, None)
    if not targets:
        raise ValueError("warmup: no dynamic-quantized linear layer in the model and no layers given")
    wanted_ms = set(ms) | (set(range(1, max_m + 1)) if max_m else set())

    served = {op: info.get("backend") for op, info in reg.status()["ops"].items()}
    already = served.get(LINEAR_DYNAMIC) == "arm"
    if already and enable:
        raise ValueError("warmup: the arm backend is already enabled; its config is the one warmed up "
                         f"(got {', '.join(enable)})")
    report = {"layers": [], "calls": 0}
    start = time.perf_counter()
    ctx = contextlib.nullcontext() if already else reg.enabled(backend="arm", **enable)
    with ctx, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)      # quantized tensor creation deprecations
        runtime = reg.plugins.get("arm").plugin.runtime        # the ArmRuntime serving now
        for sig, packed in targets.items():
            packed = packed if packed is not None else synthetic_layer(sig)
            op = torch.ops.quantized.linear_relu_dynamic if sig.relu else torch.ops.quantized.linear_dynamic
            runner = runtime.runners.get(LINEAR_RELU_DYNAMIC if sig.relu else LINEAR_DYNAMIC)
            picked = variant_ms(runner.router, wanted_ms)
            t0 = time.perf_counter()
            for m in picked:
                op(torch.zeros(m, sig.k), packed, True)
                report["calls"] += 1
            report["layers"].append({**sig.__dict__, "ms": picked, "seconds": time.perf_counter() - t0})
        report["execution"] = runtime.execution
    report["seconds"] = time.perf_counter() - start
    return report
