"""``opregistry demo --model torchao``: the demo's MLP stack quantized by torchao
(``Int8DynamicActivationInt8WeightConfig``: per-token int8 activations, per-channel
int8 weights, one ``aten::_int_mm`` per linear), run with PyTorch alone and with
each backend that serves ``aten::_int_mm``, with the same accuracy and routing report.

torchao is an optional extra (``pip install 'opregistry[torchao]'``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import sys
import time
import warnings
from pathlib import Path

import torch

from opregistry import registry

from .workloads import (MLP_SIZES, DemoError, Impl, MLPStack, Progress, _print_results, backend_report, rel_error,
                        row_cosine)

INT_MM = "aten::_int_mm"
TORCHAO_INSTALL = ("--model torchao needs the optional extra 'torchao' (torchao from PyPI): "
                   "pip install 'opregistry[torchao]'")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _log_records_of(*names: str):
    """The records the loggers ``names`` (and their children) emit inside the block, instead of
    printing them (torchao logs each extension it cannot load at import; torch logs a deprecation)."""
    collect = _Collect()
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [collect], False
    try:
        yield collect.records
    finally:
        for lg, (handlers, propagate) in zip(loggers, saved):
            lg.handlers, lg.propagate = handlers, propagate


def missing_extensions(records: list[logging.LogRecord]) -> list[str]:
    """The torchao extensions (``_C_mxfp8``, ...) whose "Failed to load <file>" an import logged."""
    names = []
    for record in records:
        found = re.match(r"Failed to load (\S+?\.so)", record.getMessage())
        if found:
            names.append(Path(found.group(1)).name.split(".")[0])
    return names


def _torchao(out=None):
    """torchao's quantize_ and int8 recipe, imported without its log lines; says once, in our
    words, which of its optional compiled extensions are missing (the recipe needs none)."""
    out = out or sys.stdout
    try:
        with warnings.catch_warnings(), _log_records_of("torchao", "torch") as records:
            warnings.simplefilter("ignore")        # torchao warns about its optional CUDA/C++ extensions
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise DemoError(f"{TORCHAO_INSTALL} ({exc})") from None
    missing = missing_extensions(records)
    if missing:
        print(f"note: torchao could not load its optional compiled extensions ({', '.join(missing)}: kernels "
              "for other hardware or another torch build); the int8 recipe this demo runs does not use them",
              file=out)
    return quantize_, Int8DynamicActivationInt8WeightConfig


def run_torchao_demo(impls: list[Impl], seed: int = 0, quick: bool = False, dtype: torch.dtype = torch.float32,
                     out=None) -> dict:
    out = out or sys.stdout
    quantize_, config = _torchao(out)
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
