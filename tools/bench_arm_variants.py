#!/usr/bin/env python
"""Kernel variants of the arm backend side by side, compiled (Triton-CPU).

Each variant is a one-rule routing table (kernel, tiles, padding) run through
the arm runtime's op runner on the same weight and activations; PyTorch's
quantized op (fbgemm/x86) is timed in the same rounds. Rounds alternate the
variants and every round takes the median of its calls; the table shows the
median over rounds, so ratios come from interleaved samples (the only honest
kind on a shared host). First calls (the compiles) are timed separately.

    TRITON_CPU_BACKEND=1 OMP_NUM_THREADS=2 python tools/bench_arm_variants.py \\
        --shape 2048x2048 --m 1 2 3 8 64 --variants gemv:1x64x32 dot:4x64x32:pad dot_prequant:64x64x32

A variant is ``kernel:BMxBNxBK[:pad]`` (``pad``: pad M to a multiple of BM).
Its weight layout is ``[K/32, N/64]`` tiles, or ``BN`` columns wide when BN > 64
(a rule's tiles must divide the layout's).
Variants whose tiles cannot serve an M (a dot tile of more rows than M without
padding) still run, with masks on the M edge.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings


def parse_variant(text: str) -> dict:
    parts = text.split(":")
    kernel, tiles = parts[0], parts[1]
    bm, bn, bk = (int(v) for v in tiles.split("x"))
    return {"label": text, "kernel": kernel, "block_m": bm, "block_n": bn, "block_k": bk,
            "pad_m": "pad" in parts[2:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="2048x2048", help="KxN")
    p.add_argument("--m", type=int, nargs="+", default=[1, 2, 8, 64])
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.1, help="seconds per variant, M and round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scheme", default="per_row", choices=("per_row", "per_tensor", "pytorch"))
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)

    import torch

    from opregistry import registry
    from opregistry.backends.arm.runtime import ArmRuntime
    from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC
    from opregistry.demo.workloads import make_qlinear, time_call

    torch.set_num_threads(args.threads)
    k, n = (int(v) for v in args.shape.split("x"))
    _, qlin = make_qlinear(k, n, seed=0)
    packed = qlin._packed_params._packed_params
    gen = torch.Generator().manual_seed(1)
    xs = {m: torch.randn(m, k, generator=gen) for m in args.m}
    variants = [parse_variant(v) for v in args.variants]
    runners, first_call = {}, {}
    warnings.simplefilter("ignore")
    for v in variants:
        rule = {key: v[key] for key in ("kernel", "block_m", "block_n", "block_k", "pad_m")}
        layout = {"block_k": max(32, v["block_k"]), "block_n": max(64, v["block_n"])}
        ops = {op: {"routing": [{"name": "only", **rule}], "activation_scale": args.scheme, "weight_layout": layout}
               for op in (LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC)}
        cfg = registry.Registry().build_config("arm", device="generic", execution="compiled", ops=ops)
        rt = ArmRuntime(cfg)
        runner = rt.runners[LINEAR_DYNAMIC]
        runners[v["label"]] = (rt, runner)
        for m in args.m:
            t0 = time.perf_counter()
            runner(xs[m], packed)
            first_call[(v["label"], m)] = time.perf_counter() - t0
            print(f"  first call {v['label']} M={m}: {first_call[(v['label'], m)]:.2f} s"
                  + (f" (dot re-routed: {rt.dot_fallbacks})" if rt.dot_fallbacks else ""), file=sys.stderr,
                  flush=True)
    op = torch.ops.quantized.linear_dynamic
    labels = ["pytorch"] + [v["label"] for v in variants]
    samples = {}
    with torch.no_grad():
        for r in range(args.rounds):
            for label in labels:
                for m in args.m:
                    if label == "pytorch":
                        fn = lambda m=m: op(xs[m], packed, True)  # noqa: E731
                    else:
                        fn = lambda m=m, runner=runners[label][1]: runner(xs[m], packed)  # noqa: E731
                    samples.setdefault((label, m), []).append(time_call(fn, args.min_time))
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows = []
    for label in labels:
        for m in args.m:
            sec = statistics.median(samples[(label, m)])
            rows.append({"variant": label, "m": m, "k": k, "n": n, "ms": sec * 1e3, "gops": 2 * m * k * n / sec / 1e9,
                         "first_call_s": first_call.get((label, m)),
                         "rounds_ms": [s * 1e3 for s in samples[(label, m)]]})
    env = {"torch": torch.__version__, "threads": args.threads, "omp": os.environ.get("OMP_NUM_THREADS"),
           "scheme": args.scheme, "rounds": args.rounds}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    print(f"\nK={k} N={n}, {env}")
    print(f"{'variant':<28} " + " ".join(f"{'M=' + str(m):>16}" for m in args.m))
    base = {r["m"]: r["gops"] for r in rows if r["variant"] == "pytorch"}
    for label in labels:
        cells = []
        for m in args.m:
            r = next(x for x in rows if x["variant"] == label and x["m"] == m)
            cells.append(f"{r['ms']:7.3f}ms {r['gops']:6.1f}" + ("" if label == "pytorch" else ""))
        print(f"{label:<28} " + " ".join(f"{c:>16}" for c in cells))
    print("\nGOPS / pytorch GOPS:")
    for label in labels[1:]:
        print(f"{label:<28} " + " ".join(f"{next(x['gops'] for x in rows if x['variant'] == label and x['m'] == m) / base[m]:>16.3f}"
                                         for m in args.m))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
