#!/usr/bin/env python
"""First-forward latency of the demo model with the arm backend compiled: cold
(an empty Triton cache: every kernel variant compiles during the forward) vs
after ``warmup`` (a separate process compiled them into the persistent cache
first). Each measurement runs in a fresh process with its own TRITON_CACHE_DIR.

    TRITON_CPU_BACKEND=1 OMP_NUM_THREADS=2 python tools/warmup_latency.py [--quick] [--device NAME] [--json out.json]

The model is ``opregistry demo``'s default MLP stack (or ``--quick``'s), fed the
demo's M values in one forward each; "first forward" is the wall time of that
whole first pass; "second forward" repeats it in the same process (steady state).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r'''
import json, sys, time, warnings
warnings.simplefilter("ignore")
t_start = time.perf_counter()
import torch
from opregistry import registry
from opregistry.demo.workloads import MLP_SIZES, MLPStack, quantize
mode, quick, execution = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
enable = {"execution": execution, **({"device": sys.argv[4]} if sys.argv[4] else {})}
torch.set_num_threads(2)
size = MLP_SIZES["quick" if quick else "default"]
model = MLPStack(size["hidden"], size["intermediate"], size["layers"], size["vocab"], 0).eval()
qmodel = quantize(model, False).eval()
gen = torch.Generator().manual_seed(1)
inputs = [torch.randn(m, size["hidden"], generator=gen) for m in size["ms"]]
out = {"mode": mode, "import_and_build_s": time.perf_counter() - t_start}
with torch.no_grad():
    if mode == "warmup":
        from opregistry.backends.arm.warmup import warmup
        t0 = time.perf_counter()
        report = warmup(qmodel, ms=size["ms"], **enable)
        out["warmup_s"] = time.perf_counter() - t0
        out["warmup_calls"] = report["calls"]
    else:
        with registry.enabled(backend="arm", **enable):
            t0 = time.perf_counter()
            for x in inputs:
                qmodel(x)
            out["first_forward_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for x in inputs:
                qmodel(x)
            out["second_forward_s"] = time.perf_counter() - t0
            out["routing"] = registry.status()["backends"]["arm"]["routing"]
print("RESULT" + json.dumps(out))
'''


def run(mode: str, cache: str, quick: bool, execution: str, device: str | None) -> dict:
    env = {**os.environ, "TRITON_CACHE_DIR": cache}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, mode, "1" if quick else "0", execution, device or ""],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")]
    if done.returncode or not line:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(line[-1][len("RESULT"):])
    result["process_wall_s"] = wall
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--execution", default="compiled")
    p.add_argument("--device", help="the arm backend's packaged table (default: detected)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as cold, tempfile.TemporaryDirectory() as warm:
        results = {"cold": run("forward", cold, args.quick, args.execution, args.device)}
        print(f"cold first forward: {results['cold']['first_forward_s']:.2f} s "
              f"(second: {results['cold']['second_forward_s'] * 1e3:.1f} ms)", flush=True)
        results["warmup"] = run("warmup", warm, args.quick, args.execution, args.device)
        print(f"warmup: {results['warmup']['warmup_s']:.2f} s, {results['warmup']['warmup_calls']} calls", flush=True)
        results["warm"] = run("forward", warm, args.quick, args.execution, args.device)
        print(f"warm first forward: {results['warm']['first_forward_s']:.2f} s "
              f"(second: {results['warm']['second_forward_s'] * 1e3:.1f} ms)", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
