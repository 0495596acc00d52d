#!/usr/bin/env python3
"""CUDA backend: correctness, then timing, in one GPU call (see docs/CUDA.md).

1. Correctness vs ``backends.reference`` (float64 on the CPU) for every shape
   class: the Qwen shapes at several M, odd N/K, per-channel weights with zero
   points, bias / no bias, ReLU, per-row and per-tensor activation scales, 3-D
   and non-contiguous inputs, M=0, rows with NaN/Inf, every kernel variant, each
   through the Triton launch and the direct launch. Bound, per element
   (opregistry.testing.check): fp32 epilogue rounding, relative 1e-5 of the
   magnitudes summed, plus one activation quantum; the same NaN pattern.
2. A real ``quantize_dynamic`` MLP on CUDA tensors: PyTorch's error without the
   backend, the reference's answer with it.
3. Timing, side by side in one process, per shape and M:
   * eager wall time per call as a user calls it (``nn.quantized.dynamic.Linear``
     module, the backend's fast path; back-to-back calls, one sync, median of
     repeats) for the op, the op with Triton's own launch path (the old host
     path), and bf16 ``F.linear``;
   * GPU time as CUDA-graph replays (M <= GRAPH_M_MAX) of the op and bf16;
   * ``triton.testing.do_bench`` medians (L2 cleared) of the op, bf16, and
     ``torch._int_mm`` on pre-quantized int8 (cuBLASLt), for larger M;
   * the HBM floor: int8 weight bytes over the device-to-device copy bandwidth
     measured in this run;
   * with ``--variants``, kernel variants (tiles, stages, PDL, stream-K grid) timed
     the same way, for tuning a device table.

Writes ``$OUT/cuda_bench.json`` (everything) and ``$OUT/cuda_throughput.png``;
prints a compact table last. ``--cpu-smoke`` runs the whole script through
Triton's interpreter on tiny CPU shapes (to check the script itself, no GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from opregistry.registry.core import Registry                        # noqa: E402
from opregistry.backends.cuda.config import CudaRule                 # noqa: E402
from opregistry.testing import check, make_packed  # noqa: E402

GPU_EPILOGUE_REL = 1e-5   # fp32 epilogue + split-K / stream-K partial sums in another order
from opregistry.registry.plugins import Plugins                      # noqa: E402
from opregistry.backends.cuda.plugin import CudaPlugin               # noqa: E402
from opregistry.backends.cuda.runtime import CudaRuntime             # noqa: E402
from opregistry.backends.reference import plugin as reference_plugin  # noqa: E402
from opregistry.backends.reference.ops import linear_dynamic as reference_linear  # noqa: E402

LINEAR = "quantized::linear_dynamic"
# (name, K, N): in_features x out_features
SHAPES = [
    ("qwen2-7b-up", 3584, 18944), ("qwen2-7b-down", 18944, 3584),
    ("qwen3-1.7b-qkv", 2048, 2048), ("qwen3-1.7b-kv", 2048, 1024), ("qwen3-1.7b-up", 2048, 6144),
    ("qwen3-1.7b-down", 6144, 2048),
]
MS = [1, 4, 16, 64, 2048, 8192]           # the done-when set: decode {1,4,16,64}, prefill >= 2048
L2_BYTES = 50 * 2**20



def R(kernel, bm, bn, bk, warps=4, stages=3):
    return CudaRule(f"{kernel}.{bm}x{bn}x{bk}.w{warps}s{stages}", kernel, block_m=bm, block_n=bn, block_k=bk,
                    num_warps=warps, num_stages=stages)


# Kernel variants for correctness (every kernel kind) and, with --variants, timing:
# (rule, smallest M, largest M, weight class: "any", "small" (<= 16 MiB) or "large").
VARIANTS = [
    (R("gemv_fused", 1, 16, 512), 1, 2, "small"),
    (R("gemv_fused", 2, 16, 256), 2, 4, "small"),
    (R("gemv_fused", 4, 16, 128), 4, 16, "small"),
    (R("dot_fused", 16, 16, 256), 1, 64, "small"),
    (R("dot_fused", 16, 32, 256), 1, 64, "small"),
    (R("dot_fused", 16, 64, 128, stages=4), 1, 64, "small"),
    (R("dot_fused", 64, 64, 128, stages=2), 64, 64, "small"),
    (R("dot_streamk", 16, 64, 256, stages=4), 1, 64, "any"),
    (R("dot_streamk_fused", 16, 64, 256, stages=4), 1, 16, "any"),
    (R("dot_streamk", 16, 128, 256, stages=4), 1, 16, "large"),
    (R("dot_streamk", 16, 64, 512, stages=3), 1, 16, "large"),
    (R("dot_streamk", 16, 128, 128, stages=6), 1, 16, "large"),
    (R("dot_streamk", 64, 128, 256, stages=3), 64, 512, "any"),
    (R("dot_splitk", 64, 128, 128, stages=4), 64, 512, "any"),
    (R("dot", 64, 128, 128, stages=4), 64, 2048, "any"),
    (R("dot", 128, 256, 128, warps=8, stages=3), 512, 10**9, "any"),
    (R("dot", 128, 256, 64, warps=8, stages=4), 512, 10**9, "any"),
    (R("dot", 128, 128, 128, warps=8, stages=4), 512, 10**9, "any"),
    (R("dot", 256, 128, 128, warps=8, stages=3), 512, 10**9, "any"),
    (R("dot", 128, 256, 128, warps=4, stages=3), 512, 10**9, "any"),
    (R("dot", 128, 128, 64, warps=4, stages=5), 512, 10**9, "any"),
]
CORRECTNESS_VARIANTS = [v for v in VARIANTS if v[0].name in {
    "gemv_fused.1x16x512.w4s3", "dot_fused.16x16x256.w4s3", "dot_fused.64x64x128.w4s2",
    "dot_streamk.16x64x256.w4s4", "dot_streamk_fused.16x64x256.w4s4", "dot_streamk.64x128x256.w4s3", "dot_splitk.64x128x128.w4s4",
    "dot.64x128x128.w4s4", "dot.128x256x128.w8s3"}]
# Smaller stand-ins for --cpu-smoke (interpreter: tiles must be tiny to finish).
SMOKE_VARIANTS = [
    (R("gemv_fused", 1, 16, 64), 1, 4, "any"),
    (R("dot_fused", 16, 16, 64), 1, 64, "any"),
    (R("dot_streamk", 16, 32, 64), 1, 64, "any"),
    (R("dot_streamk_fused", 16, 32, 64), 1, 16, "any"),
    (R("dot_splitk", 16, 32, 64), 1, 64, "any"),
    (R("dot", 16, 32, 64), 1, 10**9, "any"),
]
SMALL_WEIGHT_BYTES = 16 * 2**20
GRAPH_M_MAX = 64     # decode: also time the op and bf16 F.linear as CUDA-graph replays (GPU time alone)
GRAPH_CALLS = 20


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------

def make_registry() -> Registry:
    """A registry with this checkout's cuda and reference plugins (independent of
    whether the entry points are installed; that is reported separately)."""
    plugins = Plugins(strict=True)
    plugins.register(CudaPlugin, name="cuda", distribution="opregistry")
    plugins.register(reference_plugin, name="reference", distribution="opregistry")
    return Registry(plugins)


def entry_point_installed() -> bool:
    import importlib.metadata as md

    return any(ep.name == "cuda" for ep in md.entry_points(group="opregistry.backends"))


def packed_weight(n, k, *, bias=True, per_channel=True, zero_point=False, seed=0):
    return make_packed(n, k, bias=bias, per_channel=per_channel, zero_points=zero_point, seed=seed, bias_scale=0.1)


def per_element(y, x, wp, relu=False, mode="per_row"):
    """``(ok, worst err / bound, note)`` of the op's output against the reference."""
    return check(y, x, wp, relu=relu, mode=mode, rel=GPU_EPILOGUE_REL)


class Timer:
    """do_bench medians on CUDA; perf_counter medians in --cpu-smoke."""

    def __init__(self, cuda: bool, warmup_ms: float, rep_ms: float):
        self.cuda = cuda
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms

    def ms(self, fn) -> float:
        if self.cuda:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median"))
        fn()
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        return sorted(ts)[1]

    def host_us(self, fn, calls: int = 40, repeats: int = 7) -> float:
        """Eager wall time per call: back-to-back calls, one sync at the end (so
        max(host time, GPU time) per call); median of ``repeats``."""
        if not self.cuda:
            calls, repeats = 1, 1                      # --cpu-smoke: the interpreter is slow
        for _ in range(3):
            fn()
        self.sync()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            self.sync()
            ts.append((time.perf_counter() - t) / calls * 1e6)
        return sorted(ts)[len(ts) // 2]

    def paired_wall_us(self, fa, fb, calls: int = 40, repeats: int = 15) -> tuple[float, float]:
        """Eager wall time per call of ``fa`` and ``fb``, their batches interleaved (A B A B ...)
        so that both see the same host conditions; medians."""
        if not self.cuda:
            calls, repeats = 1, 1
        ta, tb = [], []
        for fn in (fa, fb):
            for _ in range(3):
                fn()
        self.sync()
        for _ in range(repeats):
            for fn, ts in ((fa, ta), (fb, tb)):
                t = time.perf_counter()
                for _ in range(calls):
                    fn()
                self.sync()
                ts.append((time.perf_counter() - t) / calls * 1e6)
        return sorted(ta)[len(ta) // 2], sorted(tb)[len(tb) // 2]

    def graph_us(self, fn, calls: int = GRAPH_CALLS) -> float:
        """GPU time per call without host launch gaps: ``calls`` calls captured in one CUDA
        graph, replays timed with events (median of 10)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(10):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            graph.replay()
            e1.record()
            torch.cuda.synchronize()
            times.append(e0.elapsed_time(e1) * 1e3 / calls)
        return sorted(times)[len(times) // 2]

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


class Rotating:
    """Cycle through argument sets so that repeated calls do not hit in L2."""

    def __init__(self, sets):
        self.sets, self.i = sets, 0

    def next(self):
        s = self.sets[self.i]
        self.i = (self.i + 1) % len(self.sets)
        return s


def rotations(nbytes: int, cap: int = 16) -> int:
    # >= L2: two sets, so that back-to-back calls (CUDA-graph replays) never find the weight in L2
    return 2 if nbytes >= L2_BYTES else min(cap, math.ceil(2 * L2_BYTES / max(nbytes, 1)))


# ---------------------------------------------------------------------------
# 1. Correctness
# ---------------------------------------------------------------------------

def correctness(reg: Registry, device, shapes, ms, variants, smoke: bool) -> list[dict]:
    rt: CudaRuntime = reg.plugins.get("cuda").plugin.runtime
    rows = []

    def record(label, fn, x, wp, relu=False, mode="per_row"):
        try:
            ok, worst, note = per_element(fn(), x, wp, relu, mode)
        except Exception as exc:  # noqa: BLE001 - record and go on
            ok, worst, note = False, None, f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        rows.append({"case": label, "err_over_bound": worst, "ok": ok, "note": note})
        if not ok:
            log(f"  FAIL {label}: {note}")

    g = torch.Generator().manual_seed(0)
    op, op_relu = torch.ops.quantized.linear_dynamic, torch.ops.quantized.linear_relu_dynamic

    # Shape classes: every benchmark shape through the dispatcher (routing as configured),
    # twice (the first call binds the launch plan, the second launches directly).
    max_ref_flops = 2e9 if smoke else 4e10
    for name, k, n in shapes:
        wp = packed_weight(n, k, seed=k + n)
        for m in ms:
            if 2 * m * n * k > max_ref_flops:
                continue
            x = torch.randn(m, k, generator=g)
            for call in ("bind", "direct"):
                record(f"{name} M={m} {call}", lambda: op(x.to(device), wp, True), x, wp)

    # Odd sizes, weight kinds, ReLU, activation modes, every kernel kind; Triton launch, direct launch.
    odd = [(37, 70), (1000, 1031)] if not smoke else [(37, 70), (50, 129)]
    wkinds = {"per_tensor": dict(per_channel=False), "per_channel_zp": dict(zero_point=True),
              "per_tensor_zp_nobias": dict(per_channel=False, zero_point=True, bias=False)}
    combos = [("per_tensor", "per_row", False), ("per_channel_zp", "per_tensor", True),
              ("per_tensor_zp_nobias", "per_row", True)]
    for (n, k) in odd:
        for wname, mode, relu in combos:
            wp = packed_weight(n, k, seed=n * k, **wkinds[wname])
            w = rt.weight(wp, torch.device(device), LINEAR)
            for rule, m_lo, m_hi, _ in variants:
                for m in (1, 3, 130) if not smoke else (1, 3, 17):
                    x = torch.randn(m, k, generator=g) * 2
                    if m >= 3:
                        x[1, 2] = float("nan")
                        x[2].zero_()
                    for call in ("bind", "direct"):
                        label = f"{rule.name} {n}x{k} {wname} M={m} {mode} relu={relu} {call}"
                        record(label, lambda: rt.linear(x.to(device), w, rule, mode == "per_row", relu),
                               x, wp, relu, mode)

    # Layouts and edge cases through the dispatcher.
    wp = packed_weight(96, 80, zero_point=True)
    xs = {"M=0": torch.randn(0, 80), "3-D": torch.randn(4, 5, 80), "Inf row": torch.randn(3, 80)}
    xs["Inf row"][1, 7] = float("inf")
    for label, x in xs.items():
        record(label, lambda: op(x.to(device), wp, False), x, wp)
        record(label + " relu", lambda: op_relu(x.to(device), wp, False), x, wp, relu=True)
    base = torch.randn(80, 9)
    record("non-contiguous", lambda: op(base.to(device).t(), wp, False), base.t(), wp)
    return rows


def model_check(reg: Registry, device) -> dict:
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate([(256, 1024), (1024, 1024), (1024, 256)]):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < 2 else [])
    model = torch.nn.Sequential(*layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(2, 7, 256)
    result = {"model": "quantize_dynamic MLP 256-1024-1024-256, input [2, 7, 256]"}
    reg.disable()
    with reg.enabled("reference"):
        expected = qmodel(x)
    reg.disable()                       # the error must come from PyTorch itself
    if device == "cpu":
        result["disabled"], result["disabled_ok"] = "n/a in --cpu-smoke (PyTorch has a CPU kernel)", True
    else:
        try:
            qmodel(x.to(device))
            result["disabled"] = "no error (unexpected: PyTorch has no CUDA kernel for this op)"
            result["disabled_ok"] = False
        except Exception as exc:  # noqa: BLE001
            msg = str(exc).splitlines()[0]
            result["disabled"] = msg
            result["disabled_ok"] = "Could not run 'quantized::linear_dynamic'" in msg
    with reg.enabled("cuda", execution="compiled" if device == "cuda" else "interpreter"):
        y = qmodel(x.to(device))
        result["enabled_device"] = str(y.device)
        err = float(((y.cpu() - expected).norm() / expected.norm()).item())
        # three layers: one layer's fp32 rounding can move the next one's quantization by a quantum
        result["enabled_rel_err"], result["enabled_ok"] = err, err <= 1e-4
    return result


# ---------------------------------------------------------------------------
# 3. Timing
# ---------------------------------------------------------------------------

def host_profile(reg, device) -> dict:
    """Host time of the pieces of one decode call (no sync; a tiny layer, so the GPU never
    limits): where an eager call's microseconds go, next to bf16 ``F.linear``'s whole call."""
    rt: CudaRuntime = reg.plugins.get("cuda").plugin.runtime
    runner = rt.runners[LINEAR]
    k, n = 2048, 2048
    wp = packed_weight(n, k, seed=99)
    mod = module_for(wp, k, n)
    x = torch.randn(1, k, device=device)
    w = rt.weight(wp, x.device, LINEAR)
    wb = torch.randn(n, k, device=device, dtype=torch.bfloat16)
    xb = x.to(torch.bfloat16)
    gemv, streamk = R("gemv_fused", 1, 16, 512), R("dot_streamk", 16, 64, 256, stages=4)

    def per_call(fn, calls=400):
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            best = min(best, (time.perf_counter() - t) / calls * 1e6)
            torch.cuda.synchronize()
        return best

    out = {}
    out["bf16 F.linear (one cuBLAS launch)"] = per_call(lambda: F.linear(xb, wb))
    out["torch.empty (16 KB, CUDA)"] = per_call(lambda: torch.empty((1, n), dtype=torch.float32, device=x.device))
    out["rt.weight (cache hit)"] = per_call(lambda: rt.weight(wp, x.device, LINEAR))
    with rt.stub_kernels():
        out["runner, no launch"] = per_call(lambda: runner.run(x, wp))
        out["module, no launch"] = per_call(lambda: mod(x))
    for name, rule in (("gemv_fused (1 launch)", gemv), ("dot_streamk (2 launches)", streamk)):
        rt.linear(x, w, rule, True, False)                     # bind
        out[f"rt.linear {name}, direct launch"] = per_call(lambda: rt.linear(x, w, rule, True, False))
        fast_pdl = rt.fast_launch, rt.pdl
        rt.fast_launch, rt.pdl = False, False
        out[f"rt.linear {name}, Triton launch"] = per_call(lambda: rt.linear(x, w, rule, True, False))
        rt.fast_launch, rt.pdl = fast_pdl
    rt.cache.clear()
    return out


def copy_bandwidth(timer: Timer, device) -> float:
    """Device-to-device copy, bytes read + written per second."""
    nbytes = (1 << 30) if device == "cuda" else (1 << 24)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = timer.ms(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3)


def module_for(wp, k, n):
    """A ``torch.ao`` dynamic-quantized Linear holding ``wp``: the op as a user's model calls it."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = DynamicLinear(k, n, dtype=torch.qint8)
    mod._packed_params._packed_params = wp
    return mod


def time_shape(reg, timer: Timer, device, name, k, n, ms, variants, bw, smoke, sweep: bool) -> list[dict]:
    rt: CudaRuntime = reg.plugins.get("cuda").plugin.runtime
    runner = rt.runners[LINEAR]
    w_bytes = n * k
    n_rot = rotations(w_bytes) if device == "cuda" else 1
    wps = [packed_weight(n, k, seed=i) for i in range(n_rot)]
    prepared = [rt.weight(wp, torch.device(device), LINEAR) for wp in wps]
    mods = [module_for(wp, k, n) for wp in wps]
    w_bf16 = [p.w[:n, :k].to(torch.bfloat16) * p.scale[:n, None].to(torch.bfloat16) for p in prepared]
    w_i8_t = [p.w[:n, :k].t() for p in prepared]             # [K, N] column-major view for _int_mm
    bias_bf16 = [p.bias[:n].to(torch.bfloat16) if p.bias is not None else None for p in prepared]
    weight_class = "small" if w_bytes <= SMALL_WEIGHT_BYTES else "large"
    rows = []
    for m in ms:
        row = {"shape": name, "K": k, "N": n, "M": m, "weight_bytes": w_bytes,
               "hbm_floor_us": w_bytes / bw * 1e6, "flops": 2 * m * n * k}
        x_rot = max(1, min(n_rot, rotations(m * k * 4))) if device == "cuda" else 1
        xs = [torch.randn(m, k, device=device) for _ in range(x_rot)]
        count = max(n_rot, x_rot)
        sets = Rotating([(xs[i % x_rot], wps[i % n_rot], prepared[i % n_rot], mods[i % n_rot]) for i in range(count)])
        decode = m <= GRAPH_M_MAX
        graph = timer.cuda and decode

        def measure(key, fn, wall=True, gpu=True):
            try:
                if wall:
                    row[key + "_wall_us"] = timer.host_us(fn)
                if gpu:
                    row[key + "_gpu_us"] = timer.graph_us(fn) if graph else timer.ms(fn) * 1e3
            except Exception as exc:  # noqa: BLE001
                row[key + "_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log(f"  {key}: {row[key + '_error']}")

        def module_call():
            x, _, _, mod = sets.next()
            return mod(x)

        row["route"] = runner.rule_for(m, prepared[0]).name
        xb = [x.to(torch.bfloat16) for x in xs]
        bsets = Rotating([(xb[i % x_rot], w_bf16[i % n_rot], bias_bf16[i % n_rot]) for i in range(count)])

        def bf16_call():
            return F.linear(*bsets.next())
        # the op as a user calls it (module fast path, launch plans, direct launches, PDL) against
        # bf16 F.linear: wall times with their batches interleaved
        try:
            row["op_wall_us"], row["bf16_wall_us"] = timer.paired_wall_us(module_call, bf16_call)
        except Exception as exc:  # noqa: BLE001
            row["op_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            log(f"  op: {row['op_error']}")
        measure("op", module_call, wall=False)
        measure("bf16", bf16_call, wall=False)
        # the same through the dispatcher (torch.ops.quantized.linear_dynamic)
        measure("op_dispatch", lambda: torch.ops.quantized.linear_dynamic(*sets.next()[:2], True), gpu=False)
        # the previous host path: Triton's own launch for every kernel, no PDL (same kernels, same routing)
        if decode:
            with rt.stub_kernels():                    # host work alone: everything but the launches
                measure("op_stub", module_call, gpu=False)
        fast_pdl = rt.fast_launch, rt.pdl
        rt.fast_launch, rt.pdl = False, False
        measure("op_triton_launch", module_call)
        rt.fast_launch, rt.pdl = fast_pdl
        if m > 16 and m % 8 == 0 and k % 8 == 0 and n % 8 == 0 and not decode:
            xq = [rt.quantize(x, k, True)[0][:, :k] for x in xs]
            isets = Rotating([(xq[i % x_rot], w_i8_t[i % n_rot]) for i in range(count)])
            measure("int_mm", lambda: torch._int_mm(*isets.next()), wall=False)
        if sweep:
            row["variants"] = {}
            for rule, m_lo, m_hi, wclass in variants:
                if not (m_lo <= m <= m_hi) or wclass not in ("any", weight_class):
                    continue
                options = [("", {})]
                if rule.kernel == "dot_streamk" and decode:
                    options += [("+nopdl", {"pdl": False}), ("+2/SM", {"streamk_per_sm": 2}),
                                ("+4/SM", {"streamk_per_sm": 4})]
                for suffix, attrs in options:
                    for attr, value in attrs.items():
                        setattr(rt, attr, value)

                    def call(rule=rule):
                        x, _, w, _ = sets.next()
                        return rt.linear(x, w, rule, True, False)
                    entry = {}
                    try:
                        if decode and weight_class == "small":
                            entry["wall_us"] = timer.host_us(call)
                        entry["gpu_us"] = timer.graph_us(call) if graph else timer.ms(call) * 1e3
                    except Exception as exc:  # noqa: BLE001
                        entry["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    row["variants"][rule.name + suffix] = entry
                    rt.pdl, rt.streamk_per_sm = fast_pdl[1], 0
            key = "wall_us" if decode and weight_class == "small" else "gpu_us"
            good = {v: e[key] for v, e in row["variants"].items() if e.get(key)}
            if good:
                row["best_variant"] = min(good, key=good.get)
                row["best_variant_us"] = good[row["best_variant"]]
                row["best_variant_metric"] = key
        if graph:
            def prepass():
                x, _, w, _ = sets.next()
                return rt.quantize(x, w.kp, True, zero_out=torch.empty(m, n, device=device))
            try:
                row["prepass_gpu_us"] = timer.graph_us(prepass)
            except Exception as exc:  # noqa: BLE001
                row["prepass_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        if row.get("op_gpu_us"):
            row["op_tops"] = row["flops"] / (row["op_gpu_us"] * 1e-6) / 1e12
            row["op_floor_frac"] = row["hbm_floor_us"] / row["op_gpu_us"]
        if row.get("op_wall_us") and row.get("bf16_wall_us"):
            row["wall_vs_bf16"] = row["bf16_wall_us"] / row["op_wall_us"]
        if row.get("op_gpu_us") and row.get("bf16_gpu_us"):
            row["gpu_vs_bf16"] = row["bf16_gpu_us"] / row["op_gpu_us"]
        rows.append(row)
        del xs, xb
        log(f"  {name} M={m} [{row['route']}]: wall op {fmt(row.get('op_wall_us'))} "
            f"(dispatch {fmt(row.get('op_dispatch_wall_us'))}, triton launch {fmt(row.get('op_triton_launch_wall_us'))}, "
            f"no launch {fmt(row.get('op_stub_wall_us'))}) "
            f"bf16 {fmt(row.get('bf16_wall_us'))} | gpu op {fmt(row.get('op_gpu_us'))} "
            f"(triton launch, no pdl {fmt(row.get('op_triton_launch_gpu_us'))}, prepass {fmt(row.get('prepass_gpu_us'))}) "
            f"bf16 {fmt(row.get('bf16_gpu_us'))} int_mm {fmt(row.get('int_mm_gpu_us'))} floor {fmt(row['hbm_floor_us'])}"
            + (f" | best {row.get('best_variant')} {fmt(row.get('best_variant_us'))}" if sweep else ""))
        if sweep and row.get("variants"):
            log("    " + "; ".join(f"{v} " + "/".join(fmt(e.get(x)) for x in ("wall_us", "gpu_us") if x in e)
                                  + (" ERR" if "error" in e else "") for v, e in row["variants"].items()))
    rt.cache.clear()
    return rows


def fmt(v, width=0):
    s = "-" if v is None else (f"{v:.1f}" if v < 1000 else f"{v:.0f}")
    return s.rjust(width) if width else s


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def pct(v):
    return "-" if v is None else f"{100 * v:.0f}%"


def ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def table(rows) -> str:
    head = (f"{'shape':<16}{'M':>5} {'route':<15}{'wall op':>8}{'trit.l':>8}{'bf16':>8}{'bf16/op':>8}"
            f"{'gpu op':>8}{'no pdl':>8}{'bf16':>8}{'bf16/op':>8}{'int_mm':>8}{'floor':>7}{'%floor':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['shape']:<16}{r['M']:>5} {r.get('route', '-'):<15}{fmt(r.get('op_wall_us'), 8)}"
            f"{fmt(r.get('op_triton_launch_wall_us'), 8)}{fmt(r.get('bf16_wall_us'), 8)}{ratio(r.get('wall_vs_bf16')):>8}"
            f"{fmt(r.get('op_gpu_us'), 8)}{fmt(r.get('op_triton_launch_gpu_us'), 8)}{fmt(r.get('bf16_gpu_us'), 8)}"
            f"{ratio(r.get('gpu_vs_bf16')):>8}{fmt(r.get('int_mm_gpu_us'), 8)}{fmt(r['hbm_floor_us'], 7)}"
            f"{pct(r.get('op_floor_frac') if r['M'] <= GRAPH_M_MAX else None):>7}")
    return "\n".join(lines)


def goals(rows) -> dict:
    """The issue's done-when checks on this run's rows."""
    eager = [r for r in rows if r["M"] in (1, 4, 16, 64) and r.get("op_wall_us") and r.get("bf16_wall_us")]
    decode7b = [r for r in rows if r["shape"].startswith("qwen2-7b") and r["M"] <= 16 and r.get("op_floor_frac")]
    prefill = [r for r in rows if r["M"] >= 2048 and r.get("gpu_vs_bf16")]
    return {
        "eager_wall_le_bf16": {f"{r['shape']} M={r['M']}": r["op_wall_us"] <= r["bf16_wall_us"] for r in eager},
        "decode_7b_floor_ge_85pct": {f"{r['shape']} M={r['M']}": round(r["op_floor_frac"], 3) for r in decode7b},
        "prefill_ge_1.3x_bf16": {f"{r['shape']} M={r['M']}": round(r["gpu_vs_bf16"], 3) for r in prefill},
    }


# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="output folder (default $OUT)")
    ap.add_argument("--shapes", default="", help="comma-separated shape names or indices (default: all)")
    ap.add_argument("--ms", default="", help="comma-separated M values (default: %s)" % MS)
    ap.add_argument("--config", default=None, help="deployment YAML layered over the packaged cuda config")
    ap.add_argument("--device-table", default=None, help="packaged table to use (default: detected)")
    ap.add_argument("--variants", action="store_true", help="also time the kernel variants (tuning sweep)")
    ap.add_argument("--skip-correctness", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--budget-s", type=float, default=280.0,
                    help="stop timing further shapes after this many seconds (results so far are kept)")
    ap.add_argument("--warmup-ms", type=float, default=5.0)
    ap.add_argument("--rep-ms", type=float, default=25.0)
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="no GPU: interpreter on tiny CPU shapes, to check this script end to end")
    args = ap.parse_args(argv)
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        log("bench_cuda: no CUDA device (use --cpu-smoke to check the script on a CPU host)")
        return 2
    device = "cpu" if smoke else "cuda"
    shapes = SHAPES if not smoke else [("smoke-a", 64, 48), ("smoke-b", 96, 40)]
    if args.shapes:
        want = args.shapes.split(",")
        shapes = [s for i, s in enumerate(shapes) if s[0] in want or str(i) in want]
    ms = [int(v) for v in args.ms.split(",")] if args.ms else (MS if not smoke else [1, 3, 16, 40])
    variants = VARIANTS if not smoke else SMOKE_VARIANTS
    check_variants = CORRECTNESS_VARIANTS if not smoke else SMOKE_VARIANTS

    import triton

    from opregistry.backends.cuda.device import detect_device

    reg = make_registry()
    overrides = {"execution": "interpreter"} if smoke else {}
    if args.device_table:
        overrides["device"] = args.device_table
    cfg = reg.enable("cuda", config=args.config, **overrides)
    rt = reg.plugins.get("cuda").plugin.runtime
    result = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "env": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
                "device": torch.cuda.get_device_name(0) if not smoke else "cpu (interpreter smoke run)",
                "detected_table": detect_device() if not smoke else None, "table": cfg.device,
                "config_files": list(cfg.sources), "entry_point_installed": entry_point_installed(),
                "bound": "per element: 1e-5 x magnitudes summed + one activation quantum",
                "date_utc": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())},
        "correctness": [], "model": None, "timing": [],
    }
    if not smoke:
        props = torch.cuda.get_device_properties(0)
        result["env"].update(sm_count=props.multi_processor_count, total_memory=props.total_memory,
                             l2_bytes=getattr(props, "L2_cache_size", None),
                             capability=list(torch.cuda.get_device_capability(0)))
        from opregistry.backends.cuda.runtime import pdl_supported
        result["env"]["pdl_supported"] = pdl_supported(0)
    log(f"bench_cuda: {result['env']}")
    json_path = out / "cuda_bench.json"

    def save():
        result["elapsed_s"] = time.time() - t0
        json_path.write_text(json.dumps(result, indent=1, default=str))

    failures = 0
    if not args.skip_correctness:
        log("== correctness vs backends.reference (CPU, float64), per-element bound ==")
        rows = correctness(reg, device, shapes, ms, check_variants, smoke)
        result["correctness"] = rows
        bad = [r for r in rows if not r["ok"]]
        failures += len(bad)
        worst = max((r["err_over_bound"] for r in rows if r["err_over_bound"] is not None), default=0.0)
        log(f"correctness: {len(rows) - len(bad)}/{len(rows)} cases ok, worst err/bound {worst:.3g} "
            f"[{time.time() - t0:.0f}s]")
        if not smoke:
            direct = sum(1 for w in rt.cache._entries.values() for p in w.prepared.plans.values()
                         for launch in p.launches if launch.bound is not None)
            total = sum(len(p.launches) for w in rt.cache._entries.values() for p in w.prepared.plans.values())
            result["env"]["direct_launches_bound"] = f"{direct}/{total}"
            log(f"launch plans: {direct}/{total} launches bound for direct launch")
        try:
            result["model"] = model_check(reg, device)
            reg.enable("cuda", config=args.config, **overrides)   # model_check toggled backends
            failures += not (result["model"]["disabled_ok"] and result["model"]["enabled_ok"])
        except Exception as exc:  # noqa: BLE001
            result["model"] = {"error": f"{type(exc).__name__}: {exc}"}
            failures += 1
            traceback.print_exc()
            reg.enable("cuda", config=args.config, **overrides)
        log(f"model: {result['model']}")
        save()

    if not args.skip_timing and not smoke:
        try:
            result["host_profile_us"] = host_profile(reg, device)
            log("host time per call, us (no sync, tiny layer): " + json.dumps(
                {k: round(v, 2) for k, v in result["host_profile_us"].items()}))
        except Exception as exc:  # noqa: BLE001
            result["host_profile_us"] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()

    if not args.skip_timing:
        timer = Timer(not smoke, args.warmup_ms, args.rep_ms)
        bw = copy_bandwidth(timer, device)
        result["env"]["copy_bandwidth_Bps"] = bw
        log(f"== timing == device-to-device copy: {bw / 1e12:.3f} TB/s (read + write)")
        for name, k, n in shapes:
            if time.time() - t0 > args.budget_s:
                log(f"  budget of {args.budget_s:.0f}s reached: {name} and later shapes not timed")
                result.setdefault("not_timed", []).append(name)
                continue
            try:
                result["timing"] += time_shape(reg, timer, device, name, k, n, ms, variants, bw, smoke,
                                               args.variants)
            except Exception as exc:  # noqa: BLE001
                result.setdefault("timing_errors", {})[name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            save()
            if not smoke:
                torch.cuda.empty_cache()
        result["goals"] = goals(result["timing"])

    reg.disable()
    save()
    log(f"wrote {json_path} [{time.time() - t0:.0f}s]")
    if result["timing"]:
        log("us, medians. wall = eager wall time per call (back-to-back, one sync): op = module fast path with "
            "launch plans; trit.l = same kernels through Triton's launch, no PDL; gpu = CUDA-graph replay "
            f"(M <= {GRAPH_M_MAX}) or do_bench; floor = int8 weight bytes / copy BW")
        log(table(result["timing"]))
        log(f"goals: {json.dumps(result['goals'])}")
    log(f"correctness failures: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
