"""``opregistry demo`` and ``opregistry bench``: argument parsing, runs, reports.

Added to the ``opregistry`` command line by :mod:`opregistry.demo.plugin`
through the ``opregistry_register_commands`` hook. The workloads live in
:mod:`opregistry.demo.workloads`, imported when a command runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import textwrap

EXECUTIONS = ("auto", "compiled", "interpreter")
DEFAULT_SHAPES = [(1024, 1024), (2048, 2048), (2048, 6144)]
DEFAULT_MS = [1, 4, 16, 64, 256]


# ---------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------

def _shape(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape KxN such as 2048x2048, got {text!r}") from None
    if k < 1 or n < 1:
        raise argparse.ArgumentTypeError(f"expected positive K and N, got {text!r}")
    return k, n


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def add_commands(subparsers) -> None:
    """Add ``demo`` and ``bench`` to the ``opregistry`` parser's subparsers."""
    s = subparsers.add_parser("demo", help="run a dynamic-quantized model with PyTorch's kernel and each backend")
    s.add_argument("--model", choices=("mlp", "minilm", "torchao"), default="mlp",
                   help="mlp: small Qwen3-shaped MLP stack (default); minilm: all-MiniLM-L6-v2 "
                        "(needs the extra: pip install 'opregistry[minilm]'); torchao: the MLP stack quantized "
                        "by torchao, served through aten::_int_mm (pip install 'opregistry[torchao]')")
    s.add_argument("--backend", help="only this backend (PyTorch's own kernel, row 'pytorch', always runs); "
                                     "an error if it cannot run here")
    s.add_argument("--execution", choices=EXECUTIONS, help="execution override for the backends")
    s.add_argument("--device", help="the --backend's packaged table by name (e.g. arm: generic, cix-p1, x86-proxy); "
                                    "default: detected")
    s.add_argument("--seed", type=int, default=0, help="seed of the model's weights and inputs (default 0)")
    s.add_argument("--quick", action="store_true", help="a tiny MLP model (seconds; for tests)")
    s.add_argument("--per-channel", action="store_true",
                   help="quantize weights per output channel (default: quantize_dynamic's per-tensor)")
    s.set_defaults(func=cmd_demo)

    s = subparsers.add_parser("bench", help="per-op throughput, host overhead and cache memory")
    s.add_argument("--shapes", type=_shape, nargs="+", default=None, metavar="KxN",
                   help=f"weight shapes (default: {' '.join(f'{k}x{n}' for k, n in DEFAULT_SHAPES)})")
    s.add_argument("--m", type=_positive_int, nargs="+", default=DEFAULT_MS, metavar="M",
                   help=f"activation rows (default: {' '.join(map(str, DEFAULT_MS))})")
    s.add_argument("--backend", help="only this backend (PyTorch's own kernel, row 'pytorch', always runs); "
                                     "an error if it cannot be timed here")
    s.add_argument("--execution", choices=EXECUTIONS, help="execution override for the backends")
    s.add_argument("--device", help="the --backend's packaged table by name (e.g. arm: generic, cix-p1, x86-proxy); "
                                    "default: detected")
    s.add_argument("--config", help="deployment config file for the --backend (a tuned file from "
                                    "opregistry tune, say); default: $OPREGISTRY_CONFIG, else the packaged table")
    s.add_argument("--include-interpreter", action="store_true",
                   help="also time backends through Triton's interpreter (validation only: very slow)")
    s.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    s.add_argument("--min-time", type=float, default=0.2, help="seconds to spend per measurement")
    s.add_argument("--rounds", type=_positive_int, default=1,
                   help="alternate the implementations this many times per shape and keep medians (ratios "
                        "from interleaved samples, for shared or noisy hosts)")
    s.add_argument("--fp32", action="store_true", help="also time fp32 F.linear on the unquantized weight")
    s.add_argument("--ratios", action="store_true",
                   help="also print each implementation's GOPS as a multiple of PyTorch's quantized op")
    s.add_argument("--threads", type=_positive_int,
                   help="torch.set_num_threads for the run (default: 1, so that timings on a shared or "
                        "loaded host measure the kernels, not thread scheduling)")
    s.add_argument("--overhead-iters", type=_positive_int, default=2000,
                   help="calls per host-overhead measurement (default 2000)")
    s.add_argument("--no-overhead", action="store_true", help="skip the host-overhead and memory sections")
    s.add_argument("--fidelity", action="store_true",
                   help="accuracy instead of speed: relative error vs fp32 of PyTorch's op and of the default "
                        "per_row scheme on random and outlier-row inputs, and error vs float64 math on inputs "
                        "exactly on the int8 grid (first --shapes entry, M=64)")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="every measurement as JSON on stdout (progress on stderr)")
    fmt.add_argument("--csv", action="store_true", help="the throughput rows as CSV on stdout")
    s.add_argument("--plot", metavar="PNG", help="write GOPS vs M, one line per implementation "
                                                  "(needs matplotlib: pip install 'opregistry[plot]')")
    s.set_defaults(func=cmd_bench)

    s = subparsers.add_parser(
        "tune", help="time a backend's candidate kernels against PyTorch's op on this machine; write the routing",
        description="On this machine, time every candidate kernel the backend offers for each op (hook "
                    "opregistry_tune_candidates) and PyTorch's own op, nothing enabled, in alternating rounds, "
                    "for each M; write a deployment config whose routing hands each range of M to the fastest "
                    "(load it with registry.enable(backend=..., config=FILE), OPREGISTRY_CONFIG=FILE or "
                    "opregistry bench --config FILE). The rule measured at an M serves every M above the "
                    "previous measured one; the largest serves all M above it. A candidate is chosen by its "
                    "worst ratio to PyTorch over the shapes. Tune with the thread count you deploy with.")
    s.add_argument("--backend", required=True, help="the backend to tune")
    s.add_argument("--shapes", type=_shape, nargs="+", required=True, metavar="KxN",
                   help="weight shapes (in_features x out_features) of the model's layers")
    s.add_argument("--m", type=_positive_int, nargs="+", required=True, metavar="M",
                   help="activation rows to measure (decode 1, prefill lengths...)")
    s.add_argument("--out", required=True, metavar="FILE", help="the deployment config to write")
    s.add_argument("--ops", nargs="+", metavar="OP",
                   help="only these ops (default: every op of the backend that offers candidates)")
    s.add_argument("--config", help="deployment config to tune over; the written file keeps its settings "
                                    "(default: $OPREGISTRY_CONFIG, else the packaged table)")
    s.add_argument("--execution", choices=EXECUTIONS, help="execution override for the backend")
    s.add_argument("--device", help="the backend's packaged table by name (e.g. arm: generic, cix-p1, x86-proxy); "
                                    "default: detected")
    s.add_argument("--threads", type=_positive_int,
                   help="torch.set_num_threads for the run (default: 1, as bench)")
    s.add_argument("--rounds", type=_positive_int, default=3, help="alternating rounds, medians kept (default 3)")
    s.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement (default 0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    s.set_defaults(func=cmd_tune)


# ---------------------------------------------------------------------------
# tune
# ---------------------------------------------------------------------------

def cmd_tune(args) -> int:
    import torch

    from . import tune as t

    if args.min_time <= 0:
        raise t.TuneError(f"--min-time must be positive, got {args.min_time}")
    settings = t.TuneSettings(args.backend, list(dict.fromkeys(args.shapes)), sorted(set(args.m)),
                              ops=args.ops, config=args.config, execution=args.execution, device=args.device,
                              rounds=args.rounds, min_time=args.min_time, seed=args.seed)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads or 1)
    try:
        env = t.environment()
        print(f"opregistry tune on {env['machine']}: torch {env['torch']}, triton {env['triton']}, "
              f"quantized engine {env['quantized_engine']}, threads: {env['threads']}")
        base, results = t.tune(settings)
        t.report(settings, results)
        text = t.render_config(settings, base, results, t.command_line())
    finally:
        torch.set_num_threads(threads_before)
    t.write(args.out, text, args.backend)
    print(f"\nwrote {args.out}: load it with registry.enable(backend={args.backend!r}, config={args.out!r}) "
          f"or OPREGISTRY_CONFIG={args.out}; check it with opregistry bench --backend {args.backend} "
          f"--config {args.out} --ratios")
    return 0


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------

def cmd_demo(args) -> int:
    from . import workloads as w

    env = w.environment()
    print(f"opregistry demo on {env['machine']}: torch {env['torch']}, triton {env['triton']}, "
          f"quantized engine {env['quantized_engine']}, threads: {env['threads']}")
    impls = w.select_impls(args.backend, args.execution, device=args.device)
    print("Implementations: " + ", ".join(i.label for i in impls))
    if any(i.is_interpreter for i in impls):
        print("  (an [interpreter] run executes the backend's Triton kernels through Triton's interpreter "
              "to validate them on this host: its wall time says nothing about speed)")
    print()
    if args.model == "minilm":
        w.run_minilm_demo(impls, per_channel=args.per_channel)
    elif args.model == "torchao":
        from .torchao_demo import run_torchao_demo

        run_torchao_demo(impls, seed=args.seed, quick=args.quick)
    else:
        w.run_mlp_demo(impls, seed=args.seed, quick=args.quick, per_channel=args.per_channel)
    return 0


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------

def _check_plot_target(path: str, error) -> bool:
    """Fail before measuring if ``path`` cannot be written or matplotlib is
    missing; return whether this call created the (empty) file."""
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise error(f"--plot {path}: cannot write there: {exc.strerror or exc}") from None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not existed:
            os.remove(path)
        raise error("--plot needs matplotlib (the optional extra 'plot'): "
                    "pip install 'opregistry[plot]'") from None
    return not existed


def cmd_bench(args) -> int:
    import torch

    from . import workloads as w

    shapes_given = args.shapes is not None
    shapes = args.shapes or DEFAULT_SHAPES
    if args.plot and args.fidelity:
        raise w.DemoError("--plot draws the throughput measurements; --fidelity makes none")
    created_plot = _check_plot_target(args.plot, w.DemoError) if args.plot else False
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads or 1)
    done = False
    try:
        status = _bench(args, w, shapes, shapes_given)
        done = True
        return status
    finally:
        torch.set_num_threads(threads_before)
        if created_plot and not done:
            try:
                os.remove(args.plot)
            except OSError:
                pass


def _bench(args, w, shapes, shapes_given) -> int:
    machine = args.json or args.csv
    log = sys.stderr if machine else sys.stdout
    env = w.environment()
    print(f"opregistry bench on {env['machine']}: torch {env['torch']}, triton {env['triton']}, "
          f"quantized engine {env['quantized_engine']}, threads: {env['threads']}"
          + ("" if args.threads else " (the default; --threads N to change)"), file=log)
    if args.fidelity:
        return _bench_fidelity(args, w, env, shapes if shapes_given else [(2048, 2048)])
    # Every backend that can run here, through the interpreter if need be: the host-overhead and
    # memory probes stub the kernel launch, so any execution serves them; throughput needs speed.
    impls = w.select_impls(args.backend, args.execution, include_interpreter=True, out=log, device=args.device,
                           config=args.config)
    timed = [i for i in impls if args.include_interpreter or not i.is_interpreter]
    for impl in impls:
        if impl not in timed:
            if args.backend:
                why = f" ({impl.default_failure.rstrip('.')})" if impl.default_failure else ""
                raise w.DemoError(f"backend {impl.backend!r} cannot be timed here: it runs only through "
                                  f"Triton's interpreter, which validates kernels but says nothing about "
                                  f"speed{why}. Pass --include-interpreter to time it anyway")
            print(f"  not timing {impl.label}: it runs here only through Triton's interpreter, which says "
                  "nothing about speed (--include-interpreter times it anyway)", file=log)
    rows = w.run_bench(timed, shapes, args.m, seed=args.seed, min_time=args.min_time, rounds=args.rounds,
                       fp32=args.fp32)
    labels = [i.label for i in timed] + ([w.FP32_LABEL] if args.fp32 else [])
    result = {"environment": env, "rows": rows}
    if not args.no_overhead:
        k, n = shapes[0]
        result["overhead"] = w.measure_overhead(impls, k, n, m=1, iters=args.overhead_iters)
        result["memory"] = w.measure_cache_memory(impls, shapes)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=["k", "n", "m", "impl", "ms", "gops"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "ms": sig(row["ms"], 6), "gops": sig(row["gops"], 6)})
    else:
        _print_bench_table(rows, labels)
        if args.ratios:
            _print_ratios(rows, labels)
        if "overhead" in result:
            _print_overhead(result["overhead"], result["memory"], w)
    if args.plot:
        _plot(rows, labels, args.plot, env)
        print(f"plot written to {args.plot}", file=log)
    return 0


def sig(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits at any magnitude: 12345, 123, 1.23, 0.00123,
    1.23e-07 (a fixed number of decimals prints 0.00 for an interpreter's GOPS)."""
    if value == 0 or value != value or abs(value) == float("inf"):
        return f"{value:g}"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def _print_bench_table(rows, labels) -> None:
    by_key = {(r["k"], r["n"], r["m"], r["impl"]): r for r in rows}
    keys = sorted({(r["k"], r["n"], r["m"]) for r in rows})
    head = f"{'K x N':>11} {'M':>5}" + "".join(f" | {lab:>22}" for lab in labels)
    print("\nThroughput (ms per call / GOPS; GOPS = 2*M*K*N / time):")
    print(head)
    print("-" * len(head))
    for k, n, m in keys:
        cells = []
        for lab in labels:
            r = by_key.get((k, n, m, lab))
            cells.append(f"{sig(r['ms'], 4):>9} ms {sig(r['gops']):>9}" if r else f"{'-':>22}")
        print(f"{f'{k}x{n}':>11} {m:>5}" + "".join(f" | {c:>22}" for c in cells))


def _print_ratios(rows, labels) -> None:
    by_key = {(r["k"], r["n"], r["m"], r["impl"]): r for r in rows}
    keys = sorted({(r["k"], r["n"], r["m"]) for r in rows})
    others = [lab for lab in labels if lab != "pytorch"]
    head = f"{'K x N':>11} {'M':>5}" + "".join(f" | {lab + ' / pytorch':>26}" for lab in others)
    print("\nRatios (GOPS of each implementation / GOPS of PyTorch's quantized op; > 1 is faster):")
    print(head)
    print("-" * len(head))
    for k, n, m in keys:
        base = by_key.get((k, n, m, "pytorch"))
        cells = [f"{sig(by_key[(k, n, m, lab)]['gops'] / base['gops']):>26}" if base and (k, n, m, lab) in by_key
                 else f"{'-':>26}" for lab in others]
        print(f"{f'{k}x{n}':>11} {m:>5}" + "".join(f" | {c}" for c in cells))


def _print_overhead(ov, mem, w) -> None:
    print(f"\nHost overhead per linear call, kernel launch stubbed (K={ov['k']}, N={ov['n']}, M={ov['m']}):")
    print(f"    pytorch: torch.ops.quantized.linear_dynamic, nothing enabled, kernel included: "
          f"{ov['pytorch_op_us']:8.2f} us")
    for b in ov["backends"]:
        if "error" in b:
            print(f"    {b['impl']}: not measured: {b['error']}")
            continue
        path = "module fast path" if b["fast_path"] else "module call (no fast path)"
        print(f"    {b['impl']} ({b['execution']} runtime, kernel stubbed):")
        print(f"        {'dispatcher path, torch.ops.quantized.linear_dynamic:':<58}{b['dispatcher_us']:8.2f} us")
        print(f"        {path + ', nn.quantized.dynamic.Linear(x):':<58}{b['module_us']:8.2f} us")
    print(f"\nWeight cache memory, one weight per shape ({', '.join(mem['shapes'])}; their int8 bytes: "
          f"{w.fmt_bytes(mem['int8_weight_bytes'])}), beyond PyTorch's packed weights:")
    for b in mem["backends"]:
        if "error" in b:
            print(f"    {b['impl']}: not measured: {b['error']}")
        elif b["cache_bytes"] is None:
            print(f"    {b['impl']}: no weight cache reported")
        else:
            print(f"    {b['impl']}: {w.fmt_bytes(b['cache_bytes'])}, {sig(b['ratio'])}x the int8 bytes")


def _plot(rows, labels, path, env) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(r["k"], r["n"]) for r in rows})
    # Constrained layout keeps the title, labels and legend inside the canvas; the title wraps.
    fig, axes = plt.subplots(1, len(shapes), figsize=(max(6.0, 4.5 * len(shapes)), 4.5), squeeze=False,
                             layout="constrained")
    for ax, (k, n) in zip(axes[0], shapes):
        for lab in labels:
            pts = sorted((r["m"], r["gops"]) for r in rows if (r["k"], r["n"], r["impl"]) == (k, n, lab))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=lab)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (rows)")
        ax.set_ylabel("GOPS")
        ax.set_title(f"K={k}, N={n}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    title = f"int8 dynamic linear, {env['machine']}, torch {env['torch']}, threads: {env['threads']}"
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 10)))   # ~10 characters per inch at 12 pt
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def _bench_fidelity(args, w, env, shapes) -> int:
    k, n = shapes[0]
    m = 64
    out = {"environment": env, "random": [], "grid": []}
    for per_channel in (False, True):
        out["random"].append(w.fidelity_random(k, n, m, seed=args.seed, per_channel=per_channel))
    ref = w.Impl("reference", "reference")
    out["grid"].append(w.fidelity_grid(ref, k, n, m, seed=args.seed))
    if args.include_interpreter:
        arm = w.Impl("arm[interpreter]", "arm", {"execution": "interpreter"})
        out["grid"].append(w.fidelity_grid(arm, 200, 96, 13, seed=args.seed))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for r in out["random"]:
        print(f"\n(a) random weights ({r['weights']} int8), K={r['k']} N={r['n']} M={r['m']}; "
              "ours = default scheme (per_row) on the reference backend; rel.err vs fp32 weights and inputs")
        for case in ("gaussian", "outlier_rows"):
            e = r[case]
            label = case if case == "gaussian" else f"outliers: {r['outliers']}"
            print(f"    {label}")
            for name in ("pytorch", "ours"):
                extra = (f", rows without outliers {e[name]['normal_rows_rel_error']:.3e}"
                         if "normal_rows_rel_error" in e[name] else "")
                print(f"      {name:<7} rel.err {e[name]['rel_error']:.3e}, mean row rel.err "
                      f"{e[name]['row_rel_error']:.3e}{extra}; activation quantization alone "
                      f"{e[name]['activation_only_rel_error']:.3e}")
            print(f"      ours/pytorch: {e['ratio']:.3f} (whole tensor), {e['row_ratio']:.3f} (mean per row), "
                  f"{e['activation_only_ratio']:.3f} (activation quantization alone)")
    for g in out["grid"]:
        print(f"\n(b) on-grid inputs, {g['impl']}, K={g['k']} N={g['n']} M={g['m']}: activation "
              f"quantization lossless: {g['activation_quantization_lossless']}")
        print(f"      error vs float64 on dequantized weights, in units of fp32 rounding of the terms: "
              f"ours {g['ours_err_units']:.2f}, pytorch {g['pytorch_err_units']:.1f}")
        print(f"      rel.err: ours {g['ours_rel_error']:.3e}, pytorch {g['pytorch_rel_error']:.3e}")
    return 0
