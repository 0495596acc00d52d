"""Weight-cache lifetime: layers created, run, freed and replaced by layers of
the same shape with other weights never see a stale prepared weight; the cache
stays within its byte budget; ``disable()`` empties it."""

from __future__ import annotations

import gc

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DQLinear

from opregistry.backends.common import LINEAR_DYNAMIC, unpack_weight
from opregistry.registry import Registry

from reliability_helpers import OVERRIDE_WARNING, QUANT_CREATION_WARNING, arm_overrides, make_packed, make_qweight, mismatches

pytestmark = [pytest.mark.filterwarnings(QUANT_CREATION_WARNING), pytest.mark.filterwarnings(OVERRIDE_WARNING)]

CYCLES = 1000
IN_F, OUT_F = 24, 16
BUDGET = 10_000       # bytes: about three 16x24 weights in the 32x64 layout


def _enabled(max_bytes: int):
    reg = Registry()
    reg.enable(backend="arm", **arm_overrides("generic", max_bytes=max_bytes))
    return reg, reg.plugins.get("arm").plugin.runtime


def test_dispatcher_path_fresh_weights_never_stale(record_property):
    reg, runtime = _enabled(BUDGET)
    try:
        peak = 0
        for i in range(CYCLES):
            packed, w = make_packed(OUT_F, IN_F, per_channel=bool(i % 2), zero_points=bool(i % 3),
                                    bias=bool(i % 5), seed=10_000 + i)
            x = torch.randn(1 + i % 5, IN_F, generator=torch.Generator().manual_seed(i))
            y = torch.ops.quantized.linear_dynamic(x, packed)
            problem = mismatches(y, x, w)
            assert problem is None, f"cycle {i}: {problem}"
            stats = runtime.cache.stats()
            peak = max(peak, stats["bytes"])
            assert stats["bytes"] <= BUDGET, f"cycle {i}: cache holds {stats['bytes']} B > budget {BUDGET}"
            del packed, w, y
        stats = runtime.cache.stats()
        assert stats["misses"] == CYCLES and stats["evictions"] > 0
        assert reg.status()["ops"][LINEAR_DYNAMIC]["calls"] == CYCLES
    finally:
        reg.disable()
    after = runtime.cache.stats()
    record_property("cycles", CYCLES)
    print(f"\ndispatcher path: {CYCLES} cycles, peak cache {peak} B of {BUDGET}, {stats}")
    assert after["entries"] == 0 and after["bytes"] == 0, "disable() must empty the cache"


def _new_layer(i: int) -> DQLinear:
    layer = DQLinear(IN_F, OUT_F, dtype=torch.qint8)
    gen = torch.Generator().manual_seed(20_000 + i)
    qw = make_qweight(OUT_F, IN_F, per_channel=bool(i % 2), zero_points=bool(i % 3), gen=gen)
    layer.set_weight_bias(qw, torch.randn(OUT_F, generator=gen) if i % 5 else None)
    return layer


@pytest.mark.parametrize("max_bytes", [BUDGET, 1 << 30], ids=["small-budget", "default-budget"])
def test_module_fast_path_layers_never_stale(max_bytes, record_property):
    reg, runtime = _enabled(max_bytes)
    try:
        assert "__call__" in DQLinear.__dict__   # the fast path is installed
        routed_before = sum(runtime.status()["routing"][LINEAR_DYNAMIC].values())
        for i in range(CYCLES):
            layer = _new_layer(i)
            x = torch.randn(2, 1 + i % 4, IN_F, generator=torch.Generator().manual_seed(i))
            y = layer(x)
            problem = mismatches(y, x, unpack_weight(layer._packed_params._packed_params))
            assert problem is None, f"cycle {i}: {problem}"
            assert runtime.cache.stats()["bytes"] <= max_bytes
            del layer, y
            if i % 100 == 99:
                gc.collect()
                # Entries made through the fast path die with their module.
                assert runtime.cache.stats()["entries"] <= 1, runtime.cache.stats()
        routed = sum(runtime.status()["routing"][LINEAR_DYNAMIC].values()) - routed_before
        assert routed == CYCLES
        paths = reg.status()["ops"][LINEAR_DYNAMIC]["calls_by_path"]
        assert paths == {"dispatcher": 0, "fast_path": CYCLES}, "the module path must bypass the dispatcher"
    finally:
        reg.disable()
    record_property("cycles", CYCLES)
    assert runtime.cache.stats()["entries"] == 0 and runtime.cache.stats()["bytes"] == 0


def test_weight_replaced_in_place_is_not_stale():
    """``set_weight_bias`` on a live module: the next call uses the new weight."""
    reg, runtime = _enabled(1 << 30)
    try:
        layer = DQLinear(IN_F, OUT_F, dtype=torch.qint8)
        x = torch.randn(3, IN_F)
        for i in range(50):
            gen = torch.Generator().manual_seed(30_000 + i)
            layer.set_weight_bias(make_qweight(OUT_F, IN_F, per_channel=True, zero_points=True, gen=gen),
                                  torch.randn(OUT_F, generator=gen))
            y = layer(x)
            assert mismatches(y, x, unpack_weight(layer._packed_params._packed_params)) is None, f"update {i}"
    finally:
        reg.disable()
    assert runtime.cache.stats()["entries"] == 0


def _same_kind_layer(i: int) -> DQLinear:
    """Layers of one shape and kind (per-channel, zero points, bias): one weight's bytes each."""
    layer = DQLinear(IN_F, OUT_F, dtype=torch.qint8)
    gen = torch.Generator().manual_seed(40_000 + i)
    layer.set_weight_bias(make_qweight(OUT_F, IN_F, per_channel=True, zero_points=True, gen=gen),
                          torch.randn(OUT_F, generator=gen))
    return layer


@pytest.mark.parametrize("how", ["set_weight_bias", "load_state_dict"])
def test_replaced_weight_frees_its_entry_at_once(how):
    """The module fast path's entry dies with the packed weight it was made from:
    replacing the weight frees the old prepared copy at once (not at LRU pressure),
    so with a budget of exactly one weight nothing is ever evicted."""
    layer = _same_kind_layer(0)
    x = torch.randn(3, IN_F, generator=torch.Generator().manual_seed(1))
    reg, runtime = _enabled(1 << 30)
    try:
        layer(x)
        one_weight = runtime.cache.stats()["bytes"]
        assert one_weight > 0 and runtime.cache.stats()["module_entries"] == 1
    finally:
        reg.disable()
    reg, runtime = _enabled(one_weight)                  # the budget: one weight
    try:
        for i in range(1, 30):
            layer(x)
            stats = runtime.cache.stats()
            assert stats["bytes"] == one_weight and stats["entries"] == 1, (i, stats)
            donor = _same_kind_layer(i)
            if how == "set_weight_bias":
                layer.set_weight_bias(donor.weight(), donor.bias())
            else:
                layer.load_state_dict(donor.state_dict())
            del donor
            stats = runtime.cache.stats()
            assert stats["bytes"] == 0 and stats["entries"] == 0, (i, stats)   # freed at once
            y = layer(x)
            assert mismatches(y, x, unpack_weight(layer._packed_params._packed_params)) is None, (i, how)
            assert runtime.cache.stats()["bytes"] == one_weight
        stats = runtime.cache.stats()
        assert stats["evictions"] == 0, stats
        del layer
        assert runtime.cache.stats()["bytes"] == 0          # a collected module frees its entry at once
    finally:
        reg.disable()
