#!/usr/bin/env python3
"""CUDA backend, deterministic mode: bitwise checks on every packaged rule, and its cost, in one GPU call.

1. Every routing rule of every packaged table (``configs/cuda/*.yaml``, the main and the
   small-weights tables), at the smallest M it routes and at its largest up to 256: one input
   through the op 100 times (``torch.ops.quantized.linear_dynamic``, the dispatcher) and once
   through the module (``nn.quantized.dynamic.Linear``, the fast path), in three modes: the
   config key ``deterministic: true``, ``torch.use_deterministic_algorithms(True)``, and the
   default. Reported per case: how many of the 100 outputs differ bitwise from the first, whether
   the module's output equals the dispatcher's, and (M <= 64) whether the first output is within
   the per-element bound of the reference (``opregistry.testing.check``).
2. What determinism costs, side by side in one process on the detected table: GPU time
   (CUDA-graph replays for M <= 64, ``do_bench`` medians above) and eager wall time per module
   call (batches interleaved), for the default kernels, the deterministic ones (config key),
   under torch's switch, and bf16 ``F.linear``.

Writes ``$OUT/cuda_determinism.json`` and prints both tables last. ``--cpu-smoke`` runs the
script through Triton's interpreter on tiny CPU shapes (checks the script; its times mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_cuda import GRAPH_M_MAX, Rotating, Timer, make_registry, module_for, packed_weight, rotations  # noqa: E402
from opregistry.backends.common.packaged import packaged_devices  # noqa: E402
from opregistry.testing import check  # noqa: E402

LINEAR = "quantized::linear_dynamic"
CALLS = 100
SMALL_SHAPE = (2048, 2048)          # K, N: 4 MiB, a small-weights table's weight
LARGE_SHAPE = (4096, 4352)          # 17 MiB: just above the 16 MiB small-weights bound
COST_SHAPES = [("qwen2-7b-up", 3584, 18944), ("qwen2-7b-down", 18944, 3584),
               ("qwen3-1.7b-qkv", 2048, 2048), ("qwen3-1.7b-down", 6144, 2048)]
COST_MS = [1, 4, 16, 64, 2048]
MODES = ("config", "torch", "default")


def log(*a):
    print(*a, flush=True)


@contextlib.contextmanager
def torch_deterministic(on: bool):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def first_match(rules, m):
    return next(r for r in rules if r.matches(m))


def ms_of(rules, rule, cap: int = 256, search: int = 5000) -> list[int]:
    """The smallest M ``rules`` route to ``rule`` and the largest up to ``cap`` (if another)."""
    routed = [m for m in range(1, search) if first_match(rules, m) is rule]
    small = [m for m in routed if m <= cap]
    return sorted({routed[0], small[-1]} if small else {routed[0]})


def bitwise_cases(reg, device: str, tables: list[str], calls: int, smoke: bool) -> list[dict]:
    rows = []
    for table in tables:
        cfg = reg.build_config("cuda", device=table, **({"execution": "interpreter"} if smoke else {}))
        op = cfg.op(LINEAR)
        groups = [("small", op.small_routing, SMALL_SHAPE)] if op.small_routing else []
        groups.append(("main", op.routing, LARGE_SHAPE if op.small_routing else SMALL_SHAPE))
        if smoke:
            groups = [(g, rules, (64, 48)) for g, rules, _ in groups]
        weights = {}
        for mode in MODES:
            overrides = {"device": table, "deterministic": mode == "config"}
            if smoke:
                overrides["execution"] = "interpreter"
            reg.enable("cuda", **overrides)
            try:
                with torch_deterministic(mode == "torch"):
                    for group, rules, (k, n) in groups:
                        if (k, n) not in weights:
                            wp = packed_weight(n, k, per_channel=True, zero_point=True, seed=k + n)
                            weights[k, n] = (wp, module_for(wp, k, n))
                        wp, mod = weights[k, n]
                        for rule in rules:
                            for m in ms_of(rules, rule, cap=16 if smoke else 256):
                                rows.append(one_case(table, group, rule, m, k, n, wp, mod, mode, device, calls))
                                r = rows[-1]
                                log(f"  {table:8s} {group:5s} {rule.name:20s} {rule.kernel:18s} M={m:<5d} {mode:7s} "
                                    f"differ {r['differ']}/{calls - 1}  module==op {r['module_equal']}  "
                                    f"bound {r['within_bound']}")
            finally:
                reg.disable("cuda")
    return rows


def one_case(table, group, rule, m, k, n, wp, mod, mode, device, calls) -> dict:
    g = torch.Generator().manual_seed(1000 + m)
    x = (torch.randn(m, k, generator=g) * 2).to(device)
    op = torch.ops.quantized.linear_dynamic
    with torch.no_grad():
        ys = [op(x, wp) for _ in range(calls)]
        y_mod = mod(x)
    differ = sum(not torch.equal(y, ys[0]) for y in ys[1:])
    row = {"table": table, "group": group, "rule": rule.name, "kernel": rule.kernel, "M": m, "K": k, "N": n,
           "mode": mode, "calls": calls, "differ": differ, "module_equal": torch.equal(y_mod, ys[0]),
           "within_bound": None}
    if m <= 64:
        row["within_bound"] = bool(check(ys[0].cpu(), x.cpu(), wp, rel=1e-5)[0])
    return row


def interleaved_wall_us(timer: Timer, fns: dict, calls: int = 40, repeats: int = 11) -> dict:
    """Eager wall time per call of each ``(setup, fn)``, their batches interleaved (``setup``
    before each batch); medians."""
    if not timer.cuda:
        calls, repeats = 1, 1
    for setup, fn in fns.values():
        setup()
        for _ in range(3):
            fn()
    timer.sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (setup, fn) in fns.items():
            setup()
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            timer.sync()
            times[name].append((time.perf_counter() - t) / calls * 1e6)
    return {name: statistics.median(ts) for name, ts in times.items()}


def cost(reg, timer: Timer, device: str, shapes, ms, budget_s: float, t0: float, smoke: bool) -> list[dict]:
    """Default vs deterministic vs torch's switch vs bf16, per shape and M (the detected table).
    The modes share one enabled runtime: the runners' ``deterministic`` flag (what the config
    key sets) and torch's switch are set before each batch."""
    cfg = reg.enable("cuda", **({"execution": "interpreter"} if smoke else {}))
    rt = reg.plugins.get("cuda").plugin.runtime
    runners = list(rt.runners.values())
    torch_before = torch.are_deterministic_algorithms_enabled()

    def mode(det_config: bool, det_torch: bool):
        def setup():
            for r in runners:
                r.deterministic = det_config
            torch.use_deterministic_algorithms(det_torch)
        return setup

    def plain():
        mode(False, False)()

    rows = []
    try:
        for name, k, n in shapes:
            if time.time() - t0 > budget_s:
                log(f"  budget reached: {name} and later shapes not timed")
                break
            n_rot = rotations(n * k) if not smoke else 1
            wps = [packed_weight(n, k, seed=i) for i in range(n_rot)]
            mods = [module_for(wp, k, n) for wp in wps]
            prepared = [rt.weight(wp, torch.device(device), LINEAR) for wp in wps]
            w_bf16 = [p.w[:n, :k].to(torch.bfloat16) * p.scale[:n, None].to(torch.bfloat16) for p in prepared]
            b_bf16 = [p.bias[:n].to(torch.bfloat16) if p.bias is not None else None for p in prepared]
            for m in ms:
                xs = [torch.randn(m, k, device=device) for _ in range(n_rot)]
                xb = [x.to(torch.bfloat16) for x in xs]
                sets = Rotating(list(zip(xs, mods, xb, w_bf16, b_bf16)))

                def op_call():
                    x, mod, *_ = sets.next()
                    return mod(x)

                def bf16_call():
                    _, _, x, w, b = sets.next()
                    return F.linear(x, w, b)

                fns = {"default": (mode(False, False), op_call), "deterministic": (mode(True, False), op_call),
                       "torch_switch": (mode(False, True), op_call), "bf16": (plain, bf16_call)}
                rule = runners[0].rule_for(m, prepared[0])
                row = {"shape": name, "K": k, "N": n, "M": m, "route": rule.name, "kernel": rule.kernel}
                try:
                    with torch.no_grad():
                        for key, us in interleaved_wall_us(timer, fns).items():
                            row[f"{key}_wall_us"] = us
                        for key, (setup, fn) in fns.items():
                            setup()
                            row[f"{key}_gpu_us"] = (timer.graph_us(fn) if timer.cuda and m <= GRAPH_M_MAX
                                                    else timer.ms(fn) * 1e3)
                except Exception as exc:  # noqa: BLE001 - keep the other rows
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                finally:
                    plain()
                rows.append(row)
                log("  " + " ".join(f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}"
                                    for key, value in row.items()))
    finally:
        torch.use_deterministic_algorithms(torch_before)
        reg.disable("cuda")
    for row in rows:
        row["table"] = cfg.device
    return rows


def bitwise_table(rows) -> str:
    """One line per (table, group, rule, M): differing outputs out of 99 and module == op, per mode."""
    by_case: dict[tuple, dict] = {}
    for r in rows:
        by_case.setdefault((r["table"], r["group"], r["rule"], r["kernel"], r["M"]), {})[r["mode"]] = r
    lines = ["| table | weights | rule | kernel | M | deterministic: true | torch switch | default |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (table, group, rule, kernel, m), modes in by_case.items():
        cells = []
        for mode in MODES:
            r = modes.get(mode)
            if r is None:
                cells.append("–")
                continue
            bound = "" if r["within_bound"] is None else (", in bound" if r["within_bound"] else ", OUT OF BOUND")
            cells.append(f"{r['differ']}/{r['calls'] - 1} differ, module {'==' if r['module_equal'] else '!='} op"
                         + bound)
        lines.append(f"| {table} | {group} | {rule} | {kernel} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(rows) -> str:
    lines = ["| shape | M | route (kernel) | GPU µs default / deterministic / torch switch / bf16 | "
             "wall µs default / deterministic / torch switch / bf16 | deterministic / default (GPU, wall) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['M']} | {r['route']} ({r['kernel']}) | {r['error']} | | |")
            continue
        gpu = " / ".join(f"{r[f'{k}_gpu_us']:.1f}" for k in ("default", "deterministic", "torch_switch", "bf16"))
        wall = " / ".join(f"{r[f'{k}_wall_us']:.1f}" for k in ("default", "deterministic", "torch_switch", "bf16"))
        ratio = (f"{r['deterministic_gpu_us'] / r['default_gpu_us']:.2f}×, "
                 f"{r['deterministic_wall_us'] / r['default_wall_us']:.2f}×")
        lines.append(f"| {r['shape']} | {r['M']} | {r['route']} ({r['kernel']}) | {gpu} | {wall} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".", help="output folder")
    ap.add_argument("--tables", default="", help="comma-separated packaged tables to check (default: all)")
    ap.add_argument("--calls", type=int, default=CALLS, help=f"calls per case (default {CALLS})")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop timing shapes after this many seconds")
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: interpreter, tiny shapes, 3 calls")
    args = ap.parse_args(argv)
    t0 = time.time()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        log("determinism_cuda: no CUDA device (--cpu-smoke checks the script on a CPU host)")
        return 2
    device = "cpu" if smoke else "cuda"
    tables = args.tables.split(",") if args.tables else packaged_devices("cuda")
    if smoke and not args.tables:
        tables = ["default"]
    calls = 3 if smoke else args.calls
    import triton

    result = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "env": {"torch": torch.__version__, "triton": triton.__version__,
                      "python": platform.python_version(),
                      "device": torch.cuda.get_device_name(0) if not smoke else "cpu (interpreter smoke run)",
                      "date_utc": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())},
              "bitwise": [], "cost": []}
    log(f"determinism_cuda: {result['env']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cuda_determinism.json"
    reg = make_registry()
    timer = Timer(not smoke, warmup_ms=5.0, rep_ms=25.0)

    log(f"== bitwise: every rule of {', '.join(tables)}, {calls} calls per case ==")
    result["bitwise"] = bitwise_cases(reg, device, tables, calls, smoke)
    path.write_text(json.dumps(result, indent=1, default=str))
    failures = [r for r in result["bitwise"] if r["mode"] != "default"
                and (r["differ"] or not r["module_equal"] or r["within_bound"] is False)]
    failures += [r for r in result["bitwise"] if r["mode"] == "default" and r["within_bound"] is False]
    log(f"bitwise: {len(result['bitwise'])} cases, {len(failures)} failing [{time.time() - t0:.0f}s]")
    if not args.skip_cost:
        log("== cost: default vs deterministic vs torch switch vs bf16 ==")
        shapes = COST_SHAPES if not smoke else [("smoke", 64, 48)]
        ms = COST_MS if not smoke else [1, 3]
        result["cost"] = cost(reg, timer, device, shapes, ms, args.budget_s, t0, smoke)
    result["elapsed_s"] = time.time() - t0
    path.write_text(json.dumps(result, indent=1, default=str))
    log("\n" + bitwise_table(result["bitwise"]))
    if result["cost"]:
        log("\n" + cost_table(result["cost"]))
    log(f"\ndeterminism_cuda: {len(failures)} failing cases; {time.time() - t0:.0f}s; {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
