"""Concurrency: 8 threads x 1000 calls on one shared model, mixed M, through the
module fast path and the dispatcher (both ops): 0 errors, 0 mismatches.
The full count takes a few minutes under the interpreter (serialised launches),
so it is marked ``slow`` (CI runs that tier too); 8 x 100 runs in the default tier.

Expected outputs are computed single-threaded first and checked against the
contract; the kernels are deterministic, so the threaded calls must match them
bit for bit (``torch.equal``). The interpreter serialises kernel launches, so
this exercises everything around the launch under contention: the weight
cache, routing memo, call counters, fast path, dispatcher.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DQLinear

from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC, unpack_weight
from opregistry.registry import Registry

from reliability_helpers import OVERRIDE_WARNING, QUANT_CREATION_WARNING, arm_overrides, make_qweight, mismatches

pytestmark = [pytest.mark.filterwarnings(QUANT_CREATION_WARNING), pytest.mark.filterwarnings(OVERRIDE_WARNING)]

THREADS = 8
M_VALUES = (1, 2, 3, 5, 9, 16)      # both rules below, padded and not
# Two rules of the two quantize-once families, with tiles that make every call here one or two kernel programs
# (Triton's interpreter serialises programs; the packaged tables' small tiles would make 8 x 1 000 calls take
# half an hour there): rowdot_prequant for decode (its per-thread scratch is shared by nothing), tl.dot beyond.
ROUTING = [
    {"name": "decode", "when": {"m_max": 3}, "kernel": "rowdot_prequant", "block_m": 1, "block_n": 16, "block_k": 16},
    {"name": "rest", "kernel": "dot_prequant", "block_m": 16, "block_n": 16, "block_k": 16, "pad_m": True},
]
LAYOUT = {"block_k": 16, "block_n": 16}
IN_F, OUT_F = 16, 12


@pytest.mark.parametrize("CALLS", [100, pytest.param(1000, marks=pytest.mark.slow)], ids=["quick", "full"])
def test_threads_share_one_model(CALLS, record_property):
    reg = Registry()
    reg.enable(backend="arm", **arm_overrides("generic", routing=ROUTING, weight_layout=LAYOUT))
    try:
        layer = DQLinear(IN_F, OUT_F, dtype=torch.qint8)
        gen = torch.Generator().manual_seed(5)
        layer.set_weight_bias(make_qweight(OUT_F, IN_F, per_channel=True, zero_points=True, gen=gen),
                              torch.randn(OUT_F, generator=gen))
        packed = layer._packed_params._packed_params
        w = unpack_weight(packed)
        inputs = [torch.randn(m, IN_F, generator=gen) for m in M_VALUES]
        paths = {
            "module": lambda x: layer(x),
            "linear_dynamic": lambda x: torch.ops.quantized.linear_dynamic(x, packed),
            "linear_relu_dynamic": lambda x: torch.ops.quantized.linear_relu_dynamic(x, packed, True),
        }
        expected = {}
        for name, fn in paths.items():
            for j, x in enumerate(inputs):
                y = fn(x)
                assert mismatches(y, x, w, relu=name.endswith("relu_dynamic")) is None
                expected[name, j] = y
        names = list(paths)

        errors: list[str] = []
        mismatched: list[str] = []
        done = [0] * THREADS
        start = threading.Barrier(THREADS)

        def worker(t: int) -> None:
            try:
                start.wait()
                for i in range(CALLS):
                    name = names[(t + i) % len(names)]
                    j = (t * 7 + i * 3) % len(inputs)
                    y = paths[name](inputs[j])
                    if not torch.equal(y, expected[name, j]):
                        mismatched.append(f"thread {t} call {i}: {name} M={M_VALUES[j]}")
                    done[t] += 1
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(f"thread {t}: {type(exc).__name__}: {exc}")

        calls_before = {op: reg.status()["ops"][op]["calls_by_path"] for op in (LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC)}
        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t0
        status = reg.status()
    finally:
        reg.disable()
    total = sum(done)
    record_property("calls", total)
    record_property("seconds", round(elapsed, 1))
    print(f"\n{THREADS} threads x {CALLS} calls: {total} calls in {elapsed:.1f} s, "
          f"{len(errors)} errors, {len(mismatched)} mismatches")
    assert not errors, errors[:5]
    assert not mismatched, mismatched[:5]
    assert total == THREADS * CALLS
    # Counters are exact under contention: every dispatcher call was counted.
    per_path = {n: sum(1 for t in range(THREADS) for i in range(CALLS) if names[(t + i) % len(names)] == n)
                for n in names}
    for op, name in ((LINEAR_DYNAMIC, "linear_dynamic"), (LINEAR_RELU_DYNAMIC, "linear_relu_dynamic")):
        assert status["ops"][op]["calls_by_path"]["dispatcher"] - calls_before[op]["dispatcher"] == per_path[name]
    fast = status["ops"][LINEAR_DYNAMIC]["calls_by_path"]["fast_path"] - calls_before[LINEAR_DYNAMIC]["fast_path"]
    assert fast == per_path["module"]
    routed = sum(status["backends"]["arm"]["routing"][LINEAR_DYNAMIC].values())
    assert routed == per_path["module"] + per_path["linear_dynamic"] + len(inputs) * 2
