"""Compile and run the ARM backend's Triton kernel with the real Triton compiler
on an NVIDIA GPU, and check it against the reference backend.

The kernel source is the one Triton-CPU compiles on ARM; the GPU is only a
second real compiler here (its tl.dot needs tiles >= 16, so the decode tiles of
the CPU tables are tried and reported, and GPU-legal tiles are checked).

    python3 tools/gpu_check_arm.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402

from opregistry.backends.common.packed import unpack_weight  # noqa: E402
from opregistry.backends.arm.kernel import ACT_PER_ROW, qlinear_kernel  # noqa: E402
from opregistry.backends.arm.plan import launch  # noqa: E402
from opregistry.backends.arm.layout import prepare_weight  # noqa: E402
from opregistry.backends.reference.ops import linear_from_unpacked, quantize_activation  # noqa: E402
from opregistry.registry.config import load_yaml, merge_layers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def packed_weight(n, k, per_channel, zero_point, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if per_channel:
            s = (w.abs().amax(dim=1).clamp_min(1e-3) / 120).double()
            qw = torch.quantize_per_channel(w, s, torch.full((n,), zero_point, dtype=torch.long), 0, torch.qint8)
        else:
            qw = torch.quantize_per_tensor(w, float(w.abs().max()) / 120, zero_point, torch.qint8)
        return torch.ops.quantized.linear_prepack(qw, b)


def error_ratio(y, x, w, relu):
    """max |y - ref| / bound, the bound of tests/conftest.py (1.0 = at the bound)."""
    ref = linear_from_unpacked(x, w, relu=relu)
    if not torch.equal(torch.isnan(y), torch.isnan(ref)):
        return float("inf")
    q, s = quantize_activation(x)
    wc = w.w_int8.double() - w.zero_point.double()[:, None]
    sxw = s.double() * w.scale.double()[None, :]
    bound = 1e-5 * ((q.double().abs() @ wc.abs().T) * sxw + w.bias.double().abs()) \
        + 1.01 * sxw * wc.abs().amax(dim=1)[None, :] + 1e-30
    ok = ~torch.isnan(ref)
    return ((y.double() - ref.double()).abs() / bound)[ok].max().item()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    dev = torch.device("cuda")
    tables = {}
    for path in sorted((ROOT / "configs" / "arm").glob("*.yaml")):
        cfg = merge_layers([load_yaml(path)])
        tables[path.stem] = [r for r in cfg.op("quantized::linear_dynamic").routing]
    gpu_rules = [("gpu-dot-16", "dot", 16, 64, 32), ("gpu-dot-64", "dot", 64, 64, 32),
                 ("gpu-gemv-1", "gemv", 1, 64, 32), ("gpu-gemv-4", "gemv", 4, 64, 32)]
    rules = [(f"{dev_name}:{r.name}", r.kernel, r.block_m, r.block_n, r.block_k)
             for dev_name, rs in tables.items() for r in rs] + gpu_rules
    shapes = [(1, 45, 70), (2, 100, 67), (3, 64, 64), (13, 45, 70), (64, 256, 192), (130, 100, 67), (5, 2048, 2048)]
    results = []
    for name, kernel, bm, bn, bk in rules:
        for m, k, n in shapes:
            for per_channel, zp, relu in ((True, 3, False), (False, 0, True)):
                w = unpack_weight(packed_weight(n, k, per_channel, zp, seed=m + k + n))
                prepared = prepare_weight(w, 32, 64, "quantized::linear_dynamic").to(dev)
                x = torch.randn(m, k) * 2
                x[0, 0] = 0.0
                out = torch.full((m, n), float("nan"), device=dev)        # poison: every element must be written
                row = {"rule": name, "kernel": kernel, "tiles": [bm, bn, bk], "m": m, "k": k, "n": n,
                       "per_channel": per_channel, "zero_point": zp, "relu": relu}
                try:
                    t0 = time.perf_counter()
                    launch(qlinear_kernel, x.to(dev), prepared, out, block_m=bm, block_n=bn, block_k=bk,
                           use_dot=kernel == "dot", act=ACT_PER_ROW, relu=relu)
                    torch.cuda.synchronize()
                    row["seconds_first_call"] = round(time.perf_counter() - t0, 3)
                    row["error_over_bound"] = error_ratio(out.cpu(), x, w, relu)
                    row["ok"] = row["error_over_bound"] <= 1.0
                except Exception as exc:  # noqa: BLE001 - record what the compiler says
                    row["ok"] = False
                    row["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                results.append(row)
    summary = {}
    for r in results:
        s = summary.setdefault(r["rule"], {"tiles": r["tiles"], "kernel": r["kernel"], "cases": 0, "passed": 0,
                                           "worst": 0.0, "compile_error": None})
        s["cases"] += 1
        s["passed"] += r["ok"]
        if "error_over_bound" in r:
            s["worst"] = max(s["worst"], r["error_over_bound"])
        s["compile_error"] = s["compile_error"] or r.get("compile_error")
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d")}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check_arm.json").write_text(json.dumps({"env": env, "summary": summary,
                                                                  "results": results}, indent=1))
    print(json.dumps(env))
    print(f"{'rule':28} {'kernel':6} {'BMxBNxBK':12} {'passed':>9} {'worst err/bound':>16}  compile error")
    for name, s in summary.items():
        tiles = "x".join(map(str, s["tiles"]))
        print(f"{name:28} {s['kernel']:6} {tiles:12} {s['passed']:>4}/{s['cases']:<4} {s['worst']:16.3g}  "
              f"{s['compile_error'] or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
