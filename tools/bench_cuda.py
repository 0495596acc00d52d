#!/usr/bin/env python3
"""CUDA backend: correctness, then timing, in one GPU call (see docs/CUDA.md).

1. Correctness vs ``backends.reference`` (float64 on the CPU) for every shape
   class: the Qwen shapes at several M, odd N/K, per-channel weights with zero
   points, bias / no bias, ReLU, per-row and per-tensor activation scales, 3-D
   and non-contiguous inputs, M=0, rows with NaN/Inf, every kernel variant.
   Bound: relative Frobenius error <= 1e-5 on finite entries and the same NaN
   pattern (the integer sum is exact; only fp32 rounding of the dequantization
   and of split-K partial sums differs from the reference, ~1e-7).
2. A real ``quantize_dynamic`` MLP on CUDA tensors: PyTorch's error without the
   backend, the reference's answer with it.
3. Timing (``triton.testing.do_bench`` medians; it also clears L2 before each
   call; inputs that fit in L2 are rotated besides): this backend's op (fp32 in,
   fp32 out, quantization included) via the runner and via the dispatcher,
   every kernel variant, ``F.linear`` in bf16 (cuBLAS), ``torch._int_mm`` on
   pre-quantized int8 (cuBLASLt), and the HBM floor (int8 weight bytes over the
   device-to-device copy bandwidth measured in this run).

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

from opregistry.registry import RoutingRule                          # noqa: E402
from opregistry.registry.core import Registry                        # noqa: E402
from opregistry.registry.plugins import Plugins                      # noqa: E402
from opregistry.backends.cuda.plugin import CudaPlugin               # noqa: E402
from opregistry.backends.cuda.runtime import CudaRuntime             # noqa: E402
from opregistry.backends.reference import plugin as reference_plugin  # noqa: E402
from opregistry.backends.reference.ops import linear_dynamic as reference_linear  # noqa: E402

LINEAR = "quantized::linear_dynamic"
REL_TOL = 1e-5
# (name, K, N): in_features x out_features
SHAPES = [
    ("qwen3-1.7b-qkv", 2048, 2048), ("qwen3-1.7b-kv", 2048, 1024), ("qwen3-1.7b-up", 2048, 6144),
    ("qwen3-1.7b-down", 6144, 2048), ("qwen2-7b-up", 3584, 18944), ("qwen2-7b-down", 18944, 3584),
]
MS = [1, 2, 4, 8, 16, 64, 128, 512, 2048, 8192]
L2_BYTES = 50 * 2**20

# Kernel variants timed side by side (selectable in a config by these kernel names and tiles).
VARIANTS = [
    (RoutingRule("gemv_fused.1x16x512", "gemv_fused", 1, 16, 512, num_warps=4), 1, 2),
    (RoutingRule("dot_streamk.16x64x256", "dot_streamk", 16, 64, 256, num_warps=4, num_stages=4), 1, 16),
    (RoutingRule("dot_streamk.64x128x256", "dot_streamk", 64, 128, 256, num_warps=4, num_stages=3), 16, 512),
    (RoutingRule("dot_splitk.64x128x128", "dot_splitk", 64, 128, 128, num_warps=4, num_stages=4), 64, 512),
    (RoutingRule("dot.64x128x128", "dot", 64, 128, 128, num_warps=4, num_stages=4), 64, 2048),
    (RoutingRule("dot.128x128x64", "dot", 128, 128, 64, num_warps=8, num_stages=5), 512, 10**9),
    (RoutingRule("dot.128x256x128", "dot", 128, 256, 128, num_warps=8, num_stages=3), 512, 10**9),
]
# Smaller stand-ins for --cpu-smoke (interpreter: tiles must be tiny to finish).
SMOKE_VARIANTS = [
    (RoutingRule("gemv_fused.1x16x64", "gemv_fused", 1, 16, 64), 1, 4),
    (RoutingRule("dot_streamk.16x32x64", "dot_streamk", 16, 32, 64), 1, 64),
    (RoutingRule("dot_splitk.16x32x64", "dot_splitk", 16, 32, 64), 1, 64),
    (RoutingRule("dot.16x32x64", "dot", 16, 32, 64), 1, 10**9),
]
GRAPH_M_MAX = 16     # decode: also time the op and bf16 F.linear as CUDA-graph replays (GPU time alone)
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
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if per_channel:
            scales = (w.abs().amax(1) / 127).clamp_min(1e-8).double()
            zps = (torch.randint(-4, 5, (n,), generator=g) if zero_point else torch.zeros(n, dtype=torch.long))
            qw = torch.quantize_per_channel(w, scales, zps, 0, torch.qint8)
        else:
            qw = torch.quantize_per_tensor(w, float(w.abs().max() / 120), 2 if zero_point else 0, torch.qint8)
    b = torch.randn(n, generator=g) * 0.1 if bias else None
    return torch.ops.quantized.linear_prepack(qw, b)


def rel_err(y, y_ref):
    y = y.detach().cpu()
    nan, nan_ref = torch.isnan(y), torch.isnan(y_ref)
    if not torch.equal(nan, nan_ref):
        return float("inf"), "NaN pattern differs"
    a, b = y[~nan_ref].double(), y_ref[~nan_ref].double()
    if b.numel() == 0:
        return 0.0, ""
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item(), ""


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

    def host_us(self, fn, calls: int = 50) -> float:
        """Back-to-back calls, one sync at the end: max(CPU overhead, GPU time) per call."""
        fn()
        self.sync()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        self.sync()
        return (time.perf_counter() - t) / calls * 1e6

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

    def record(label, y, y_ref):
        err, note = rel_err(y, y_ref)
        ok = err <= REL_TOL
        rows.append({"case": label, "rel_err": err, "ok": ok, "note": note})
        if not ok:
            log(f"  FAIL {label}: rel_err={err:.3e} {note}")

    def guarded(label, fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - record and go on
            rows.append({"case": label, "rel_err": None, "ok": False, "note": f"{type(exc).__name__}: {exc}"})
            log(f"  ERROR {label}: {type(exc).__name__}: {exc}")
            traceback.print_exc()

    g = torch.Generator().manual_seed(0)
    op, op_relu = torch.ops.quantized.linear_dynamic, torch.ops.quantized.linear_relu_dynamic

    # Shape classes: every benchmark shape through the dispatcher (routing as configured).
    max_ref_flops = 2e9 if smoke else 6e10
    for name, k, n in shapes:
        wp = packed_weight(n, k, seed=k + n)
        for m in ms:
            if 2 * m * n * k > max_ref_flops:
                continue
            x = torch.randn(m, k, generator=g)
            guarded(f"{name} M={m}", lambda: record(f"{name} M={m}", op(x.to(device), wp, True),
                                                    reference_linear(x, wp)))

    # Odd sizes, weight kinds, ReLU, activation modes, every variant.
    odd = [(37, 70), (1000, 1031)] if not smoke else [(37, 70), (50, 129)]
    wkinds = {"per_tensor": dict(per_channel=False), "per_channel_zp": dict(zero_point=True),
              "per_tensor_zp_nobias": dict(per_channel=False, zero_point=True, bias=False)}
    # Each variant sees every weight kind once, with the flags rotated (keeps the number of
    # compiled specializations, and so the run time, small).
    combos = [("per_tensor", "per_row", False), ("per_channel_zp", "per_tensor", True),
              ("per_tensor_zp_nobias", "per_row", True)]
    for (n, k) in odd:
        for wname, mode, relu in combos:
            wp = packed_weight(n, k, seed=n * k, **wkinds[wname])
            w = rt.weight(wp, torch.device(device), LINEAR)
            for rule, m_lo, m_hi in variants:
                for m in (1, 3, 130) if not smoke else (1, 3, 17):
                    x = torch.randn(m, k, generator=g) * 2
                    if m >= 3:
                        x[1, 2] = float("nan")
                        x[2].zero_()
                    label = f"{rule.name} {n}x{k} {wname} M={m} {mode} relu={relu}"
                    guarded(label, lambda: record(
                        label, rt.linear(x.to(device), w, rule, mode == "per_row", relu),
                        reference_linear(x, wp, relu=relu, activation_scale=mode)))

    # Layouts and edge cases through the dispatcher.
    wp = packed_weight(96, 80, zero_point=True)
    xs = {"M=0": torch.randn(0, 80), "3-D": torch.randn(4, 5, 80), "Inf row": torch.randn(3, 80)}
    xs["Inf row"][1, 7] = float("inf")
    for label, x in xs.items():
        guarded(label, lambda: record(label, op(x.to(device), wp, False), reference_linear(x, wp)))
        guarded(label + " relu", lambda: record(label + " relu", op_relu(x.to(device), wp, False),
                                                reference_linear(x, wp, relu=True)))
    base = torch.randn(80, 9)
    guarded("non-contiguous", lambda: record("non-contiguous", op(base.to(device).t(), wp, False),
                                             reference_linear(base.t(), wp)))
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
        err, note = rel_err(y, expected)
        result["enabled_rel_err"], result["enabled_ok"] = err, err <= REL_TOL
        result["note"] = note
    return result


# ---------------------------------------------------------------------------
# 3. Timing
# ---------------------------------------------------------------------------

def copy_bandwidth(timer: Timer, device) -> float:
    """Device-to-device copy, bytes read + written per second."""
    nbytes = (1 << 30) if device == "cuda" else (1 << 24)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = timer.ms(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3)


def time_shape(reg, timer: Timer, device, name, k, n, ms, variants, bw, smoke) -> list[dict]:
    rt: CudaRuntime = reg.plugins.get("cuda").plugin.runtime
    runner = rt.runners[LINEAR]
    w_bytes = n * k
    n_rot = rotations(w_bytes) if device == "cuda" else 1
    wps = [packed_weight(n, k, seed=i) for i in range(n_rot)]
    prepared = [rt.weight(wp, torch.device(device), LINEAR) for wp in wps]
    w_bf16 = [p.w[:n, :k].to(torch.bfloat16) * p.scale[:n, None].to(torch.bfloat16) for p in prepared]
    w_i8_t = [p.w[:n, :k].t() for p in prepared]             # [K, N] column-major view for _int_mm
    bias_bf16 = [p.bias[:n].to(torch.bfloat16) if p.bias is not None else None for p in prepared]
    rows = []
    for m in ms:
        row = {"shape": name, "K": k, "N": n, "M": m, "weight_bytes": w_bytes,
               "hbm_floor_us": w_bytes / bw * 1e6, "flops": 2 * m * n * k}
        x_rot = max(1, min(n_rot, rotations(m * k * 4))) if device == "cuda" else 1
        xs = [torch.randn(m, k, device=device) for _ in range(x_rot)]
        idx = Rotating([(xs[i % x_rot], wps[i % n_rot], prepared[i % n_rot], i) for i in range(max(n_rot, x_rot))])

        graph = timer.cuda and m <= GRAPH_M_MAX

        def measure(key, fn, host=False):
            try:
                row[key + "_us"] = timer.ms(fn) * 1e3
                if host:
                    row[key + "_host_us"] = timer.host_us(fn)
                if graph:
                    row[key + "_graph_us"] = timer.graph_us(fn)
            except Exception as exc:  # noqa: BLE001
                row[key + "_us"] = None
                row[key + "_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"

        row["route"] = runner.router.route(m).rule.name
        measure("op_direct", lambda: runner.run(*idx.next()[:2]), host=True)
        graph = False    # the dispatcher path: do_bench and host time only
        measure("op_dispatch", lambda: torch.ops.quantized.linear_dynamic(*idx.next()[:2], True), host=True)
        graph = timer.cuda and m <= GRAPH_M_MAX
        xb = [x.to(torch.bfloat16) for x in xs]
        bidx = Rotating([(xb[i % x_rot], w_bf16[i % n_rot], bias_bf16[i % n_rot]) for i in range(max(n_rot, x_rot))])
        measure("bf16_linear", lambda: F.linear(*bidx.next()))
        if m > 16 and m % 8 == 0 and k % 8 == 0 and n % 8 == 0:
            xq = [rt.quantize(x, k, True)[0][:, :k] for x in xs]
            iidx = Rotating([(xq[i % x_rot], w_i8_t[i % n_rot]) for i in range(max(n_rot, x_rot))])
            measure("int_mm", lambda: torch._int_mm(*iidx.next()))
        else:
            row["int_mm_us"] = None
            row["int_mm_error"] = "not run: torch._int_mm needs M > 16 and M, K, N multiples of 8"
        row["variants"] = {}
        for rule, m_lo, m_hi in variants:
            if not (m_lo <= m <= m_hi):
                continue
            def call(rule=rule):
                x, _, w, _ = idx.next()
                return rt.linear(x, w, rule, True, False)
            try:
                row["variants"][rule.name] = timer.ms(call) * 1e3
            except Exception as exc:  # noqa: BLE001
                row["variants"][rule.name] = None
                row.setdefault("variant_errors", {})[rule.name] = f"{type(exc).__name__}: {str(exc)[:300]}"
        good = {k_: v for k_, v in row["variants"].items() if v}
        if good:
            row["best_variant"] = min(good, key=good.get)
            row["best_variant_us"] = good[row["best_variant"]]
        if graph:
            # decode: the op's GPU time (graph replay) and its two launches apart
            def prepass(rule=rt.runners[LINEAR].router.route(m).rule):
                x, _, w, _ = idx.next()
                return rt.quantize(x, w.kp, True, zero_out=torch.empty(m, n, device=device))
            try:
                row["prepass_graph_us"] = timer.graph_us(prepass)
            except Exception as exc:  # noqa: BLE001
                row["prepass_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        if row.get("op_direct_us"):
            gpu_us = row.get("op_direct_graph_us") or row["op_direct_us"]
            row["op_tops"] = row["flops"] / (gpu_us * 1e-6) / 1e12
            row["op_weight_bw_frac"] = row["hbm_floor_us"] / gpu_us
        rows.append(row)
        del xs, xb
        log(f"  {name} M={m}: op {fmt(row.get('op_direct_us'))} us (graph {fmt(row.get('op_direct_graph_us'))}, "
            f"prepass {fmt(row.get('prepass_graph_us'))}, bf16 graph {fmt(row.get('bf16_linear_graph_us'))}, "
            f"dispatch {fmt(row.get('op_dispatch_us'))}, "
            f"host {fmt(row.get('op_direct_host_us'))}), bf16 {fmt(row.get('bf16_linear_us'))}, "
            f"int_mm {fmt(row.get('int_mm_us'))}, floor {fmt(row['hbm_floor_us'])}, "
            f"best {row.get('best_variant', '-')} {fmt(row.get('best_variant_us'))}")
    rt.cache.clear()
    return rows


def fmt(v, width=0):
    s = "-" if v is None else (f"{v:.1f}" if v < 1000 else f"{v:.0f}")
    return s.rjust(width) if width else s


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def plot(rows, bw, int8_peak_tops, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001
        log(f"plot skipped: {exc}")
        return
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(shapes) / cols), cols, figsize=(15, 4.5 * math.ceil(len(shapes) / cols)),
                             squeeze=False)
    for ax, shape in zip(axes.flat, shapes):
        rs = [r for r in rows if r["shape"] == shape]
        m = [r["M"] for r in rs]
        for key, label in (("op_direct", "cuda backend (runner)"), ("op_dispatch", "cuda backend (dispatcher)"),
                           ("bf16_linear", "F.linear bf16 (cuBLAS)"), ("int_mm", "torch._int_mm int8 (pre-quantized, cuBLASLt)"),
                           ("best_variant", "best kernel variant")):
            pts = [(r["M"], r["flops"] / (r[key + "_us"] * 1e-6) / 1e12) for r in rs if r.get(key + "_us")]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        k, n = rs[0]["K"], rs[0]["N"]
        roof = [min(int8_peak_tops, 2 * mm * n * k / ((n * k + mm * k * 4 + mm * n * 4) / bw) / 1e12) for mm in m]
        ax.plot(m, roof, "k--", label="roofline (int8 W + fp32 X/Y at copy BW; int8 peak)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{shape}: K={k}, N={n}")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("TOPS (2MNK / time)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    log(f"wrote {path}")


def table(rows) -> str:
    head = (f"{'shape':<17}{'M':>6} {'route':<15}{'op':>9}{'graph':>8}{'disp':>9}{'host':>9}{'bf16':>9}{'bf16g':>8}{'int_mm':>9}"
            f"{'floor':>8}{'%HBM':>6}{'TOPS':>7}  best variant (us)")
    lines = [head, "-" * len(head)]
    for r in rows:
        frac = r.get("op_weight_bw_frac")
        pct = f"{100 * frac:.0f}" if frac else "-"
        tops = f"{r['op_tops']:.0f}" if r.get("op_tops") else "-"
        lines.append(
            f"{r['shape']:<17}{r['M']:>6} {r.get('route', '-'):<15}{fmt(r.get('op_direct_us'), 9)}"
            f"{fmt(r.get('op_direct_graph_us'), 8)}"
            f"{fmt(r.get('op_dispatch_us'), 9)}{fmt(r.get('op_direct_host_us'), 9)}{fmt(r.get('bf16_linear_us'), 9)}"
            f"{fmt(r.get('bf16_linear_graph_us'), 8)}"
            f"{fmt(r.get('int_mm_us'), 9)}{fmt(r['hbm_floor_us'], 8)}"
            f"{pct:>6}{tops:>7}"
            f"  {r.get('best_variant', '-')} {fmt(r.get('best_variant_us'))}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="output folder (default $OUT)")
    ap.add_argument("--shapes", default="", help="comma-separated shape names or indices (default: all)")
    ap.add_argument("--ms", default="", help="comma-separated M values (default: %s)" % MS)
    ap.add_argument("--config", default=None, help="deployment YAML layered over the packaged cuda config")
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

    import triton

    reg = make_registry()
    overrides = {"execution": "interpreter"} if smoke else {}
    cfg = reg.enable("cuda", config=args.config, **overrides)
    result = {
        "env": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
                "device": torch.cuda.get_device_name(0) if not smoke else "cpu (interpreter smoke run)",
                "config_files": list(cfg.sources), "entry_point_installed": entry_point_installed(),
                "rel_tol": REL_TOL},
        "correctness": [], "model": None, "timing": [],
    }
    if not smoke:
        props = torch.cuda.get_device_properties(0)
        result["env"].update(sm_count=props.multi_processor_count, total_memory=props.total_memory,
                             l2_bytes=getattr(props, "L2_cache_size", None))
    log(f"bench_cuda: {result['env']}")
    json_path = out / "cuda_bench.json"

    def save():
        result["elapsed_s"] = time.time() - t0
        json_path.write_text(json.dumps(result, indent=1, default=str))

    failures = 0
    if not args.skip_correctness:
        log("== correctness vs backends.reference (CPU, float64) ==")
        rows = correctness(reg, device, shapes, ms, variants, smoke)
        result["correctness"] = rows
        bad = [r for r in rows if not r["ok"]]
        failures += len(bad)
        worst = max((r["rel_err"] for r in rows if r["rel_err"] is not None), default=0.0)
        log(f"correctness: {len(rows) - len(bad)}/{len(rows)} cases ok, worst rel_err {worst:.2e} "
            f"(bound {REL_TOL:g}) [{time.time() - t0:.0f}s]")
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

    if not args.skip_timing:
        timer = Timer(not smoke, args.warmup_ms, args.rep_ms)
        bw = copy_bandwidth(timer, device)
        result["env"]["copy_bandwidth_Bps"] = bw
        log(f"== timing == device-to-device copy: {bw / 1e12:.2f} TB/s (read + write)")
        for name, k, n in shapes:
            if time.time() - t0 > args.budget_s:
                log(f"  budget of {args.budget_s:.0f}s reached: {name} and later shapes not timed")
                result.setdefault("not_timed", []).append(name)
                continue
            try:
                result["timing"] += time_shape(reg, timer, device, name, k, n, ms, variants, bw, smoke)
            except Exception as exc:  # noqa: BLE001
                result.setdefault("timing_errors", {})[name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            save()
            if not smoke:
                torch.cuda.empty_cache()
        # int8 ceiling for the roofline: the best _int_mm throughput seen (datasheet 1979 TOPS dense)
        seen = [r["flops"] / (r["int_mm_us"] * 1e-6) / 1e12 for r in result["timing"] if r.get("int_mm_us")]
        peak = max(seen) if seen else 1979.0
        result["env"]["int8_ceiling_tops"] = peak
        save()
        if result["timing"]:
            plot(result["timing"], bw, peak, out / "cuda_throughput.png")

    reg.disable()
    save()
    log(f"wrote {json_path} [{time.time() - t0:.0f}s]")
    if result["timing"]:
        log("times in us (median); op = this backend via runner (do_bench), graph = the same as CUDA-graph "
            "replay (GPU time, M <= 16), disp = via dispatcher, host = back-to-back wall time per call, "
            "bf16g = bf16 F.linear graph replay, floor = int8 weight bytes / copy BW, %HBM = floor / (graph or op)")
        log(table(result["timing"]))
    log(f"correctness failures: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
