"""The ARM plugin's commands: ``opregistry warmup`` and ``opregistry asm``.

Added through the ``opregistry_register_commands`` hook (plugin.py). Nothing
here imports triton until a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from opregistry.registry import RegistryError

EXECUTIONS = ("auto", "compiled", "interpreter")


def _shape(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.lower().split("x"))
        if k > 0 and n > 0:
            return k, n
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a shape KxN of positive integers, got {text!r}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_commands(subparsers) -> None:
    s = subparsers.add_parser(
        "warmup", help="compile the arm kernels some layer shapes will select, into Triton's persistent cache",
        description="Compile, before serving, every arm kernel variant that linears of these shapes select for "
                    "these M values (one call per distinct variant), into Triton's persistent cache "
                    "(TRITON_CACHE_DIR, default ~/.triton/cache). From Python: "
                    "opregistry.backends.arm.warmup.warmup(model, ms=..., max_m=...).")
    s.add_argument("--shapes", type=_shape, nargs="+", required=True, metavar="KxN",
                   help="weight shapes (in_features x out_features) of the model's linears")
    s.add_argument("--m", type=_positive, nargs="+", default=[1], metavar="M",
                   help="activation rows the model will see (default: 1)")
    s.add_argument("--max-m", type=_positive, help="also every M from 1 to this (prefill lengths)")
    s.add_argument("--relu", action="store_true", help="also linear_relu_dynamic")
    s.add_argument("--no-bias", action="store_true", help="layers without bias")
    s.add_argument("--zero-points", action="store_true", help="weights with non-zero zero points")
    s.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    s.add_argument("--config", help="deployment config file (as for registry.enable)")
    s.add_argument("--device", help="packaged table by name (generic, cix-p1, x86-proxy; default: detected)")
    s.add_argument("--execution", choices=EXECUTIONS, help="execution override (default: the config's)")
    s.add_argument("--json", action="store_true", help="machine-readable report")
    s.set_defaults(func=cmd_warmup)

    s = subparsers.add_parser(
        "asm", help="assembly audit: the arm kernels lowered for aarch64 (natively, and the host's IR retargeted)",
        description="Compile every routing rule of the packaged arm tables with this Triton-CPU (a private "
                    "cache); lower each kernel again from its Triton-CPU IR for an aarch64 core (Cortex-A720: "
                    "NEON, SVE2, dotprod, i8mm), retarget the host's LLVM IR to aarch64 with llc, and count "
                    "smmla/sdot, multiplies, vector loads/stores and spills in both (and the host's "
                    "vpdpbusd/vpmaddwd/vpmulld).")
    s.add_argument("--device", nargs="+", help="packaged tables to audit (default: all)")
    s.add_argument("--shape", type=_shape, default=(256, 256), metavar="KxN", help="weight shape (default 256x256)")
    s.add_argument("--llc", help="llc to use (default: llc-19 or llc on PATH)")
    s.add_argument("--llc-timeout", type=float, default=600, metavar="S",
                   help="seconds llc may take per kernel before it is reported as not audited (default 600)")
    s.add_argument("--keep", metavar="DIR", help="keep the compiled kernels' cache in DIR")
    s.add_argument("--json", action="store_true", help="machine-readable report")
    s.set_defaults(func=cmd_asm)


def cmd_warmup(args) -> int:
    from .warmup import LayerSignature, warmup

    layers = [LayerSignature(k, n, not args.no_bias, args.zero_points, args.per_channel, relu)
              for k, n in args.shapes for relu in ((False, True) if args.relu else (False,))]
    enable = {"config": args.config} if args.config else {}
    for key in ("device", "execution"):
        if getattr(args, key):
            enable[key] = getattr(args, key)
    try:
        report = warmup(layers=layers, ms=args.m, max_m=args.max_m, **enable)
    except RegistryError:
        raise                 # printed in the command line's words by the core
    except ValueError as exc:
        raise RegistryError(str(exc)) from None
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"arm warmup ({report['execution']}): {report['calls']} calls, {report['seconds']:.1f} s")
    for layer in report["layers"]:
        flags = ", ".join(f for f in ("bias", "zero_points", "per_channel", "relu") if layer[f]) or "plain"
        print(f"  {layer['k']}x{layer['n']} ({flags}): M in {layer['ms']}: {layer['seconds']:.1f} s")
    return 0


def cmd_asm(args) -> int:
    from .asm_audit import audit, to_json

    k, n = args.shape
    try:
        report = audit(devices=args.device, k=k, n=n, llc=args.llc, keep_dir=args.keep,
                       out=None if args.json else sys.stdout, llc_timeout=args.llc_timeout)
    except RegistryError:
        raise
    except RuntimeError as exc:
        raise RegistryError(str(exc)) from None
    if args.json:
        print(to_json(report))
    else:
        print(f"triton {report['triton']}, llc {report['llc']}, target {report['target']}")
    return 0
