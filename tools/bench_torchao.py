"""torchao's int8 dynamic recipe on the CPU with and without the arm backend, side by
side in one run: the model's time per forward, and ``aten::_int_mm`` GOPS against
PyTorch's own ``_int_mm`` at the shapes of the other benchmarks.

    TRITON_CPU_BACKEND=1 python tools/bench_torchao.py [--threads 2] [--execution compiled] [--device TABLE]

Compiled execution needs Triton-CPU (docs/ARM.md); ``--execution interpreter`` runs
anywhere but says nothing about speed. Each figure is the median of alternating
rounds (PyTorch, arm, PyTorch, ...), after a warm-up call that compiles the variants.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from torch import nn

from opregistry import registry

INT_MM = "aten::_int_mm"
SHAPES = [(2048, 2048), (2048, 6144)]       # K x N, as docs/BENCHMARKS.md's other tables
MS = [1, 2, 8, 64, 128, 256]


def timed(fn, rounds: int) -> float:
    fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def side_by_side(fn, arm: dict, rounds: int, alternations: int) -> tuple[float, float]:
    ours, theirs = [], []
    for _ in range(alternations):
        theirs.append(timed(fn, rounds))
        with registry.enabled(**arm):
            ours.append(timed(fn, rounds))
    return statistics.median(theirs), statistics.median(ours)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--execution", default="compiled", choices=("compiled", "interpreter"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--alternations", type=int, default=3)
    ap.add_argument("--device", help="the arm backend's packaged table (default: detected)")
    args = ap.parse_args()
    arm = {"backend": "arm", "execution": args.execution, **({"device": args.device} if args.device else {})}
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        import torchao
    import triton

    print(f"torch {torch.__version__}, torchao {torchao.__version__}, triton {triton.__version__}, "
          f"threads {args.threads}, arm execution {args.execution}, table {args.device or 'detected'}")
    print("\n_int_mm, int8 [M,K] x int8 [K,N] (transposed view of an [N,K] weight, as torchao passes it):")
    print(f"{'K x N':>11} {'M':>4} | {'pytorch ms':>10} {'GOPS':>7} | {'arm ms':>9} {'GOPS':>7} | arm/pytorch")
    gen = torch.Generator().manual_seed(0)
    for k, n in SHAPES:
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
        for m in MS:
            a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
            with registry.enabled(**arm):
                assert torch.equal(torch._int_mm(a, w.t()), torch.ops.aten._int_mm.default(a, w.t()))
            theirs, ours = side_by_side(lambda: torch._int_mm(a, w.t()), arm, args.rounds, args.alternations)
            ops = 2 * m * k * n
            print(f"{f'{k}x{n}':>11} {m:>4} | {theirs * 1e3:>10.3f} {ops / theirs / 1e9:>7.2f} | "
                  f"{ours * 1e3:>9.3f} {ops / ours / 1e9:>7.2f} | {theirs / ours:.3f}x", flush=True)

    print("\ntorchao Int8DynamicActivationInt8WeightConfig model (fp32), time per forward:")
    hidden, inter, layers = 1024, 2816, 2
    model = nn.Sequential(*[nn.Sequential(nn.Linear(hidden, inter), nn.SiLU(), nn.Linear(inter, hidden))
                            for _ in range(layers)]).eval()
    qmodel = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(qmodel, Int8DynamicActivationInt8WeightConfig())
    print(f"  {layers} Qwen-style MLP blocks, hidden {hidden}, intermediate {inter} (no gating)")
    for m in (1, 64):
        x = torch.randn(m, hidden, generator=gen)
        with torch.no_grad():
            expected = qmodel(x)
            with registry.enabled(**arm):
                assert torch.equal(qmodel(x), expected), "not bit-exact with PyTorch's own _int_mm"
            theirs, ours = side_by_side(lambda: qmodel(x), arm, args.rounds, args.alternations)
        print(f"  M={m:>3}: pytorch {theirs * 1e3:8.2f} ms, arm {ours * 1e3:8.2f} ms per forward "
              f"(arm/pytorch speed {theirs / ours:.3f}x), outputs bit-exact", flush=True)


if __name__ == "__main__":
    main()
