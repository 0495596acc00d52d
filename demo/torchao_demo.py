"""``opregistry demo --model torchao``: the demo's MLP stack quantized by torchao
(``Int8DynamicActivationInt8WeightConfig``: per-token int8 activations, per-channel
int8 weights, one ``aten::_int_mm`` per linear), run with PyTorch alone and with
each backend that serves ``aten::_int_mm``, with the same accuracy and routing report.

torchao is an optional extra (``pip install 'opregistry[torchao]'``).
"""

from __future__ import annotations

import copy
import sys
import time
import warnings

import torch

from opregistry import registry

from .workloads import (MLP_SIZES, DemoError, Impl, MLPStack, Progress, _print_results, backend_report, rel_error,
                        row_cosine)

INT_MM = "aten::_int_mm"
TORCHAO_INSTALL = ("--model torchao needs the optional extra 'torchao' (torchao from PyPI): "
                   "pip install 'opregistry[torchao]'")


def _torchao():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # torchao warns about its optional CUDA/C++ extensions
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise DemoError(f"{TORCHAO_INSTALL} ({exc})") from None
    return quantize_, Int8DynamicActivationInt8WeightConfig


def run_torchao_demo(impls: list[Impl], seed: int = 0, quick: bool = False, dtype: torch.dtype = torch.float32,
                     out=None) -> dict:
    out = out or sys.stdout
    quantize_, config = _torchao()
    serving = {row["name"] for row in registry.backends() if INT_MM in row["ops"]}
    for impl in impls:
        if impl.backend is not None and impl.backend not in serving:
            print(f"  skipping backend {impl.backend!r}: it does not serve {INT_MM}", file=out)
    impls = [i for i in impls if i.backend is None or i.backend in serving]

    size = MLP_SIZES["quick" if quick else "default"]
    h, i, layers, vocab, ms = (size[k] for k in ("hidden", "intermediate", "layers", "vocab", "ms"))
    print(f"Model: Qwen3-shaped MLP stack, {layers} layer(s): hidden={h}, intermediate={i}, "
          f"lm_head vocab={vocab}; {str(dtype).removeprefix('torch.')}; seed={seed}", file=out)
    print(f"Inputs: hidden states with M = {', '.join(map(str, ms))} rows", file=out)
    torch.manual_seed(seed)
    model = MLPStack(h, i, layers, vocab, seed).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = [torch.randn(m, h, generator=gen) for m in ms]
    with torch.no_grad():
        ref = torch.cat([model(x) for x in inputs])
        qmodel = copy.deepcopy(model).to(dtype)
        quantize_(qmodel, config())
    linears = [m for m in qmodel.modules() if isinstance(m, torch.nn.Linear)]
    int8_bytes = sum(m.in_features * m.out_features for m in linears)
    print(f"Quantized with torchao Int8DynamicActivationInt8WeightConfig: {len(linears)} int8 linears "
          f"(one {INT_MM} each), {int8_bytes} weight bytes\n", file=out)

    results = []
    for impl in impls:
        with impl.active():
            bar = Progress(impl.label, len(linears) * len(ms))
            handles = [m.register_forward_hook(lambda *_: bar.step()) for m in linears]
            try:
                with torch.no_grad():
                    t0 = time.perf_counter()
                    y = torch.cat([qmodel(x.to(dtype)) for x in inputs]).float()
                    wall = time.perf_counter() - t0
            finally:
                for handle in handles:
                    handle.remove()
                bar.close()
            report = backend_report(impl.backend) if impl.backend else {}
        cos = row_cosine(y, ref)
        results.append({
            "impl": impl.label, "note": impl.note if impl.backend else "PyTorch's own aten::_int_mm",
            "wall_s": wall, "rel_error": rel_error(y, ref), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "top1_agreement": float((y.argmax(-1) == ref.argmax(-1)).double().mean()),
            "bit_exact_vs_pytorch": torch.equal(y, results[0]["_y"]) if results else True,
            "report": report, "_y": y,
        })
    _print_results(results, int8_bytes, out, extra=("top1_agreement", "top-1 = fp32"))
    for r in results[1:]:
        print(f"{r['impl']}: output {'bit-exact with' if r['bit_exact_vs_pytorch'] else 'DIFFERS from'} "
              f"PyTorch's own kernels", file=out)
    for r in results:
        del r["_y"]
    return {"model": "torchao", "sizes": size, "dtype": str(dtype), "int8_weight_bytes": int8_bytes,
            "results": results}
