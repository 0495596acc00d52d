"""Property-based fuzzing: the ARM backend's Triton kernels (run by Triton's
interpreter) against the reference backend, the oracle of the quantization
contract (``backends/reference/ops.py``).

What is drawn: M in [0, 300], K and N in [1, 300] (tile edges and
non-multiples of every tile weighted in), per-tensor or per-channel qint8
weights over the whole int8 range with zero or non-zero zero points, prepacked
under every engine that accepts them (oneDNN only symmetric), bias or not,
``linear_dynamic`` or ``linear_relu_dynamic``, 2-D or 3-D activations,
contiguous / transposed / strided / broadcast (stride 0) layouts, per-row or
per-tensor activation scales, activation values from Gaussian over 12 decades
to half-integer grids that hit rounding ties exactly, zero rows; for every
packaged ARM routing table (``configs/arm/*.yaml`` through ``device=``) with
padding on and off. The interpreter costs ~5 ms per program x K-step, so each
case's launch cost is capped (``COST_CAP``) by narrowing the dimensions drawn
last; the full-size corners (M, K, N up to 300 together) run as fixed cases in
``test_fuzz_full_size_corners``.

Tolerance, derived from the contract. With activation scale ``s`` (per row or
per tensor), weight scale ``sw[n]``, zero point ``zw[n]``:

1. Both sides quantize activations identically: the same fp32 ``absmax``
   (a max is exact), the same fp32 ``s = absmax / 127`` and ``x / s`` (IEEE
   division, correctly rounded), round half to even, clamp to [-127, 127].
   So ``q`` is bit-identical, except that a compiler allowed to compute the
   division less exactly (fast-math on native Triton-CPU) may move a value
   sitting on a rounding tie ``k + 1/2`` to the other side: one quantum per
   such element. Elements within ``TIE_ULPS`` = 4 ulps of a tie are counted
   (``tie[m, k]``), each adding at most ``s sw[n] |w[n, k] - zw[n]|``.
2. The integer sum ``acc = sum_k q (w - zw)`` is exact in both (int32 in the
   kernel, the weight cache refuses any K for which it could overflow;
   float64 with integers below 2**53 in the reference).
3. The rest is the fp32 epilogue. Kernel: ``fp32(acc)``, ``s * sw``, the
   product, ``+ b``: four roundings of at most half an ulp of a value bounded
   by ``mag = |acc| s sw + |b|``. Reference: exact in float64, one rounding
   to fp32 (half an ulp of ``mag``). Total < 2.5 ulp = 2.5 * 2**-23 * mag; the
   bound used is ``2**-21 * mag`` (4 ulp) plus ``2**-146`` absolute for
   results in the subnormal range. ReLU is 1-Lipschitz and adds nothing.

So ``|y_arm - y_ref| <= 2**-21 * mag + 2**-146 + s sw sum_k tie |w - zw|``
elementwise, NaN exactly where the reference has NaN; 0 mismatches allowed.
(Under the interpreter the tie term is in practice never used: the division
is IEEE.)

Counts: ``RUNNER_EXAMPLES`` + ``DISPATCH_EXAMPLES`` per (table, padding)
combination (in the compiled ARM tier, ``--arm-execution=compiled``, a quarter:
there a case costs no interpreter time but each new kernel variant it draws
compiles, seconds each, under the tier's per-test limit); each test asserts how many cases it actually ran and records it
(``record_property("examples_run", n)``, printed with ``-s``): cases that
completed the comparison, not draws hypothesis abandoned.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from opregistry.backends.arm.plugin import packaged_devices
from opregistry.backends.arm.runtime import ArmRuntime
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC
from opregistry.registry import Registry

from conftest import ARM_EXECUTION
from reliability_helpers import (OVERRIDE_WARNING, QUANT_CREATION_WARNING, arm_overrides, default_engine,
                                 engines_for, launch_cost, make_packed, mismatches)

pytestmark = [pytest.mark.filterwarnings(QUANT_CREATION_WARNING), pytest.mark.filterwarnings(OVERRIDE_WARNING)]

# x86-proxy is a table for compiled kernels on x86 only; its dot-free rules unroll every K tile
# element by element, which Triton's interpreter pays per operation (its fuzz took ~600 s there
# against ~130 s for the other two tables together): fuzzed in the compiled tier, its rules
# checked in the interpreter by tests/test_arm.py.
DEVICES = [d for d in packaged_devices() if ARM_EXECUTION == "compiled" or d != "x86-proxy"]
COMBOS = [(device, padding) for device in DEVICES for padding in (True, False)]
TOTAL_TARGET = 2000 if ARM_EXECUTION == "interpreter" else 500
DISPATCH_EXAMPLES = 80 if ARM_EXECUTION == "interpreter" else 20
RUNNER_EXAMPLES = -(-TOTAL_TARGET // len(COMBOS)) - DISPATCH_EXAMPLES
assert len(COMBOS) * (RUNNER_EXAMPLES + DISPATCH_EXAMPLES) >= TOTAL_TARGET

COST_CAP = 24
CACHE_BYTES = 1 << 22          # small: the cache evicts during the run too
EDGES = sorted({0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129,
                191, 192, 193, 255, 256, 257, 299, 300})
VALUE_KINDS = ("gaussian", "row_scaled", "half_grid", "sparse", "positive")
LAYOUTS = ("contiguous", "transposed", "strided", "broadcast")

FUZZ_SETTINGS = dict(deadline=None, database=None, derandomize=False, print_blob=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.filter_too_much])

_registry = Registry()
_runtimes: dict = {}


def runtime(device: str, padding: bool, mode: str) -> ArmRuntime:
    key = (device, padding, mode)
    if key not in _runtimes:
        cfg = _registry.build_config("arm", None, **arm_overrides(device, padding, mode, max_bytes=CACHE_BYTES))
        _runtimes[key] = ArmRuntime(cfg)
    return _runtimes[key]


def draw_dims(data, router) -> tuple[int, int, int]:
    """M, K, N with launch cost <= COST_CAP: drawn in a random order, each from
    the values that keep the cost within the cap given the ones already drawn."""
    dims = {"m": 0, "k": 1, "n": 1}           # placeholders: the cheapest values (M = 0 launches nothing)
    for name in data.draw(st.permutations(["m", "k", "n"]), label="order"):
        lo = 0 if name == "m" else 1
        allowed = [v for v in range(lo, 301)
                   if launch_cost(router, **{**dims, name: v}) <= COST_CAP]
        edges = [v for v in EDGES if v in allowed]
        dims[name] = data.draw(st.one_of(st.sampled_from(edges), st.sampled_from(allowed)), label=name)
    return dims["m"], dims["k"], dims["n"]


def make_activation(m: int, k: int, kind: str, layout: str, batch: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "gaussian":
        x = torch.randn(m, k, generator=gen) * 10.0 ** int(torch.randint(-6, 7, (), generator=gen))
    elif kind == "row_scaled":
        x = torch.randn(m, k, generator=gen) * 10.0 ** (torch.rand(m, 1, generator=gen) * 10 - 5)
    elif kind == "half_grid":
        # s = 2**j exactly, x / s on the half-integer grid: exact rounding ties.
        j = int(torch.randint(-10, 11, (), generator=gen))
        x = torch.randint(-254, 255, (m, k), generator=gen).float() / 2
        x[:, 0] = 127.0 * torch.sign(torch.randn(m, generator=gen))
        x = x * 2.0 ** j
    elif kind == "sparse":
        x = torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) < 0.1)
    else:
        x = torch.rand(m, k, generator=gen) * 3
    if m and kind != "sparse":
        zero_rows = torch.rand(m, generator=gen) < 0.1
        x[zero_rows] = 0.0
    if layout == "broadcast":
        x = x[:1].expand(m, k)
    shape = (batch, m // batch, k) if batch else (m, k)
    x = x.reshape(shape)
    if layout == "transposed":
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "strided":
        buf = torch.full((*shape[:-1], 2 * k), float("nan"))
        buf[..., ::2] = x
        x = buf[..., ::2]
    return x


def draw_case(data, router, *, modes=("per_row", "per_tensor")) -> dict:
    m, k, n = draw_dims(data, router)
    per_channel = data.draw(st.booleans(), label="per_channel")
    zero_points = data.draw(st.booleans(), label="zero_points")
    case = dict(
        m=m, k=k, n=n, per_channel=per_channel, zero_points=zero_points,
        engine=data.draw(st.sampled_from(engines_for(zero_points)), label="engine"),
        bias=data.draw(st.booleans(), label="bias"),
        relu=data.draw(st.booleans(), label="relu"),
        mode=data.draw(st.sampled_from(modes), label="mode"),
        kind=data.draw(st.sampled_from(VALUE_KINDS), label="kind"),
        layout=data.draw(st.sampled_from(LAYOUTS), label="layout"),
        batch=0,
        seed=data.draw(st.integers(0, 2**31 - 1), label="seed"),
    )
    if data.draw(st.booleans(), label="three_d"):
        b = data.draw(st.sampled_from([1, 2, 3, 4]), label="batch")
        case["batch"] = b if m % b == 0 else 1
    return case


def build(case: dict):
    gen = torch.Generator().manual_seed(case["seed"])
    packed, w = make_packed(case["n"], case["k"], per_channel=case["per_channel"],
                            zero_points=case["zero_points"], bias=case["bias"], engine=case["engine"],
                            seed=case["seed"] + 1, bias_scale=10.0 ** int(torch.randint(-2, 3, (), generator=gen)))
    x = make_activation(case["m"], case["k"], case["kind"], case["layout"], case["batch"], gen)
    return x, packed, w


@pytest.mark.parametrize("device,padding", COMBOS)
def test_fuzz_runner_vs_reference(device, padding, record_property):
    """Runner objects called directly (no dispatcher): most of the cases."""
    runners = {mode: runtime(device, padding, mode).runners for mode in ("per_row", "per_tensor")}
    router = runners["per_row"][LINEAR_DYNAMIC].router
    ran = 0

    @seed(zlib.crc32(f"runner-{device}-{padding}".encode()))
    @settings(max_examples=RUNNER_EXAMPLES, **FUZZ_SETTINGS)
    @given(st.data())
    def check(data):
        nonlocal ran
        case = draw_case(data, router)
        x, packed, w = build(case)
        runner = runners[case["mode"]][LINEAR_RELU_DYNAMIC if case["relu"] else LINEAR_DYNAMIC]
        y = runner.run(x, packed)
        problem = mismatches(y, x, w, case["relu"], case["mode"])
        assert problem is None, f"{problem}; case {case}; x strides {x.stride()}"
        ran += 1                        # completed cases only (not draws hypothesis abandoned)

    check()
    record_property("examples_run", ran)
    print(f"\ntest_fuzz_runner_vs_reference[{device}-{padding}]: {ran} cases")
    assert ran >= RUNNER_EXAMPLES


@pytest.mark.parametrize("device,padding", COMBOS)
def test_fuzz_dispatcher_vs_reference(device, padding, record_property):
    """The same properties through ``torch.ops.quantized.linear(_relu)_dynamic``
    with the arm backend enabled (a registry of the test's own)."""
    reg = Registry()
    ran = 0
    calls = {LINEAR_DYNAMIC: 0, LINEAR_RELU_DYNAMIC: 0}
    with reg.enabled(backend="arm", **arm_overrides(device, padding, max_bytes=CACHE_BYTES)):
        router = reg.plugins.get("arm").plugin.runtime.runners[LINEAR_DYNAMIC].router

        @seed(zlib.crc32(f"dispatch-{device}-{padding}".encode()))
        @settings(max_examples=DISPATCH_EXAMPLES, **FUZZ_SETTINGS)
        @given(st.data())
        def check(data):
            nonlocal ran
            case = draw_case(data, router, modes=("per_row",))
            x, packed, w = build(case)
            op_name = LINEAR_RELU_DYNAMIC if case["relu"] else LINEAR_DYNAMIC
            op = torch.ops.quantized.linear_relu_dynamic if case["relu"] else torch.ops.quantized.linear_dynamic
            reduce_range = data.draw(st.booleans(), label="reduce_range")
            y = op(x, packed, reduce_range)
            calls[op_name] += 1
            problem = mismatches(y, x, w, case["relu"], "per_row")
            assert problem is None, f"{problem}; case {case}; x strides {x.stride()}"
            ran += 1

        check()
        served = {op: reg.status()["ops"][op]["calls"] for op in calls}
    record_property("examples_run", ran)
    print(f"\ntest_fuzz_dispatcher_vs_reference[{device}-{padding}]: {ran} cases, arm calls {served}")
    assert ran >= DISPATCH_EXAMPLES
    assert served == calls and sum(calls.values()) >= ran, "every call must have been served by the arm backend"


CORNERS = [(300, 300, 300), (257, 300, 129), (299, 129, 300)]
# Triton's interpreter pays per program: a table of small tiles (generic's 1x8x128: M x N/8 programs) would
# spend minutes on M = 300 there, so the interpreter halves M until the call fits this cost; K and N stay
# full-size, and the compiled tier runs the corners whole.
CORNER_COST_CAP = 3000 if ARM_EXECUTION == "interpreter" else None


@pytest.mark.parametrize("device,padding", COMBOS)
def test_fuzz_full_size_corners(device, padding):
    """Fixed full-size cases the cost cap keeps out of the random draw."""
    m, k, n = CORNERS[COMBOS.index((device, padding)) % len(CORNERS)]
    router = runtime(device, padding, "per_row").runners[LINEAR_DYNAMIC].router
    while CORNER_COST_CAP and m > 1 and launch_cost(router, m, k, n) > CORNER_COST_CAP:
        m = (m + 1) // 2
    for i, (per_channel, relu) in enumerate(((True, False), (False, True))):
        case = dict(m=m, k=k, n=n, per_channel=per_channel, zero_points=True, engine=default_engine(True), bias=True,
                    relu=relu, mode="per_row", kind="row_scaled", layout="strided", batch=0, seed=1234 + i)
        x, packed, w = build(case)
        runner = runtime(device, padding, "per_row").runners[LINEAR_RELU_DYNAMIC if relu else LINEAR_DYNAMIC]
        problem = mismatches(runner.run(x, packed), x, w, relu, "per_row")
        assert problem is None, f"{problem}; case {case}"
