"""Assembly audit of the ARM kernels without ARM hardware (``opregistry asm``).

Triton-CPU keeps each compiled kernel's LLVM IR (``*.llir``) in its cache.
This audit compiles every routing variant of every packaged ARM table with the
Triton-CPU of this process (into a private cache directory, one variant at a
time, so each new ``.llir`` is known to belong to one rule), then hands the IR
to LLVM's ``llc`` for ``aarch64`` with ``+sve2,+i8mm,+dotprod`` and counts the
instructions that matter for int8 GEMM: ``smmla``/``ummla``/``usmmla`` (i8mm),
``sdot``/``udot``/``usdot`` (dotprod), widening multiplies, vector loads and
stores, and stack spills/reloads. The host's own assembly (what Triton-CPU
emitted for this machine) is counted too (x86: ``vpdpbusd``, ``vpmaddwd``,
``vpmulld``).

Natively targeted rows: each kernel is also lowered again from its ``ttcir`` as a
Triton-CPU running on an aarch64 core would lower it (:mod:`.aarch64`: aarch64
target passes, data layout and code generator, no AVX-512-sized vector-library
calls) and counted the same way; that is the code tools/aarch64/aot.py runs
under qemu.

A kernel whose int8 ``tl.dot`` lowers to ``smmla``/``sdot`` shows them here; a
change that silently loses them (a fork once regressed 21.6x that way) shows
zero. IR that cannot be retargeted is reported with llc's own message (x86-only
intrinsics, data layout).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

AARCH64_TRIPLE = "aarch64-unknown-linux-gnu"
AARCH64_ATTRS = "+sve2,+i8mm,+dotprod"

AARCH64_COUNTS = {
    "smmla": r"\b(?:s|u|us)mmla\b",
    "sdot": r"\b(?:s|u|us|su)dot\b",
    "widening_mul": r"\b(?:s|u)mull2?\b|\b(?:s|u)mlal2?\b|\bmul\s+(?:v|z)\d",
    "fp_mul": r"\bf(?:mul|mla|mls)\s+(?:v|z)\d",          # fp32 vector multiplies, fused or not (dot-free kernels)
    "scvtf": r"\bscvtf\s+(?:v|z)\d",                     # int -> fp32 vector conversion
    "vector_loads": r"\b(?:ld1[a-z]*|ld[234]|ldr|ldp|ldur)\s+(?:q|z|d|v)\d",
    "vector_stores": r"\b(?:st1[a-z]*|st[234]|str|stp|stur)\s+(?:q|z|d|v)\d",
    "spills": r"\b(?:str|stp|stur|st1[a-z]*)\s+[^\n]*\[(?:sp|x29)\b",
    "reloads": r"\b(?:ldr|ldp|ldur|ld1[a-z]*)\s+[^\n]*\[(?:sp|x29)\b",
    "instructions": r"^\s+[a-z][a-z0-9.]*\s",
}
X86_COUNTS = {
    "vpdpbusd": r"\bvpdpbusds?\b",          # VNNI u8 x s8 dot product
    "vpmaddwd": r"\bvpmaddwd\b",            # 16-bit multiply, pairwise add
    "vpmaddubsw": r"\bvpmaddubsw\b",
    "vpmulld": r"\bvpmulld\b",              # 32-bit multiply: the generic int8 lowering
    "vfmadd": r"\bvfn?madd[0-9]*ps\b",        # fp32 multiply-add (the dot-free kernels)
    "vcvtdq2ps": r"\bvcvtdq2ps\b",          # int32 -> fp32
    "tdpbssd": r"\btdpb[su][su]d\b",         # AMX
    "spills": r"\bv?mov[a-z0-9]*\s+[^\n]*,\s*-?\d*\(%rsp\)",     # incl. AVX vmovups/vmovaps
    "instructions": r"^\s+[a-z][a-z0-9]*\s",
}


def count(text: str, patterns: dict) -> dict:
    return {name: len(re.findall(p, text, flags=re.MULTILINE)) for name, p in patterns.items()}


def find_llc() -> str | None:
    for name in ("llc-19", "llc", "llc-20", "llc-18"):
        path = shutil.which(name)
        if path:
            return path
    return None


def retarget(llir: str, llc: str, triple: str = AARCH64_TRIPLE, attrs: str = AARCH64_ATTRS,
             timeout: float = 600) -> tuple[str | None, str]:
    """``(assembly, note)``: ``llir`` compiled by ``llc`` for ``triple``/``attrs``
    (the host's triple and data layout dropped first), or ``(None, llc's error)``."""
    stripped = re.sub(r'^target (datalayout|triple) = ".*"\n', "", llir, flags=re.MULTILINE)
    # Host CPU/feature attributes (e.g. "target-cpu"="sapphirerapids") do not apply to AArch64.
    stripped = re.sub(r'"target-(cpu|features)"="[^"]*"', "", stripped)
    # A group left empty is a parse error: keep it valid with an inert string attribute.
    stripped = re.sub(r"^(attributes #\d+ = \{)\s*\}", r'\1 "opregistry-retargeted" }', stripped, flags=re.MULTILINE)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ll"
        src.write_text(stripped)
        out = Path(tmp) / "kernel.s"
        try:
            done = subprocess.run([llc, "-O3", f"-mtriple={triple}", f"-mattr={attrs}", str(src), "-o", str(out)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, (f"llc did not finish in {timeout:g} s ({len(llir) // 1024} KiB of IR; the kernel's tiles are "
                          "fully unrolled): not audited (opregistry asm --llc-timeout S to wait longer)")
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            return None, " | ".join(lines[:3])[:600] or f"llc exited with {done.returncode}"
        return out.read_text(), ""


def _rule_input(router, rule, k: int):
    """An activation whose M routes to ``rule``: the smallest such M from ``block_m`` up (an earlier rule
    may take M = block_m itself, as a decode rule with m_max: 3 takes a prefill rule's 2)."""
    import torch

    start = max(rule.block_m or 1, 1)
    m = next((m for m in (*range(start, start + 4096), *range(1, start)) if router.route(m).rule.name == rule.name),
             start)
    return torch.randn(m, k)


def audit(devices=None, k: int = 256, n: int = 256, llc: str | None = None, keep_dir: str | None = None,
          out=None, llc_timeout: float = 600) -> dict:
    """Compile and audit every routing rule of the packaged ARM tables (or ``devices``)."""
    import torch

    from opregistry import registry
    from opregistry.backends.common import LINEAR_DYNAMIC
    from opregistry.testing import make_packed

    from .device import triton_cpu_status
    from .plugin import packaged_devices
    from .runtime import ArmRuntime

    status = triton_cpu_status()
    if not status.active:
        raise RuntimeError(f"the assembly audit compiles with Triton-CPU, which is not usable here: {status.detail}")
    llc = llc or find_llc()
    cache = Path(keep_dir or tempfile.mkdtemp(prefix="opregistry-asm-"))
    cache.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = str(cache)
    import triton

    from .aarch64 import CPU, FEATURES, Aarch64Lowering, LoweringUnavailable

    try:
        lowering, lowering_note = Aarch64Lowering(), None
    except LoweringUnavailable as e:
        lowering, lowering_note = None, str(e)
    report = {"triton": triton.__version__, "llc": llc, "target": f"{AARCH64_TRIPLE} {AARCH64_ATTRS}",
              "native_target": f"{AARCH64_TRIPLE} {CPU} {FEATURES}", "native_unavailable": lowering_note,
              "shape": {"k": k, "n": n}, "variants": []}
    from . import prequant

    host_form = prequant.unsigned_activations()

    def compile_rule(runner, rule, unsigned: bool) -> tuple[list, list]:
        """Run ``rule`` once with ``rowdot_prequant``'s operand form set (aarch64: signed); return the
        ``.llir`` files it compiled and the warnings it raised."""
        before = set(cache.rglob("*.llir"))
        real = prequant.unsigned_activations
        prequant.unsigned_activations = lambda: unsigned
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                runner(_rule_input(runner.router, rule, k), packed)
        finally:
            prequant.unsigned_activations = real
        return sorted(set(cache.rglob("*.llir")) - before), caught

    try:
        packed = make_packed(n, k, bias=True)
        for device in devices or packaged_devices():
            cfg = registry.Registry().build_config("arm", device=device, execution="compiled")
            # The aarch64 rows need the kernels as an aarch64 host compiles them (rowdot_prequant: signed
            # operands, for sdot); the host rows, the host's own form (x86: unsigned, for vpdpbusd).
            rt, rt_host = ArmRuntime(cfg), ArmRuntime(cfg)
            runner = rt.runners[LINEAR_DYNAMIC]
            for rule in runner.router.rules:
                entry = {"device": device, "rule": rule.name, "kernel": rule.kernel,
                         "tiles": f"{rule.block_m}x{rule.block_n}x{rule.block_k}" if rule.block_m else None}
                if rule.kernel == "pytorch":
                    entry["note"] = "PyTorch's own kernel: nothing compiled"
                    report["variants"].append(entry)
                    continue
                new, caught = compile_rule(runner, rule, False)
                entry["fallback"] = rt.dot_fallbacks.get(rule.name)
                entry["warnings"] = [str(w.message) for w in caught if "validation proxy" not in str(w.message)]
                entry["kernels"] = [_audit_file(path, llc, llc_timeout, lowering) for path in new]
                if host_form and rule.kernel == prequant.ROWDOT:
                    host_new, _ = compile_rule(rt_host.runners[LINEAR_DYNAMIC], rule, True)
                    host = {path.stem: _audit_file(path, None, llc_timeout, None).get("host") for path in host_new}
                    for kern in entry["kernels"]:
                        if host.get(kern["name"]) is not None:
                            kern["host"] = host[kern["name"]]
                    entry["host_form"] = "unsigned activations (vpdpbusd); the aarch64 rows: signed (sdot)"
                if not new:
                    entry["note"] = "no new kernel compiled (an earlier rule compiled the same variant)"
                report["variants"].append(entry)
                if out is not None:
                    print(_line(entry), file=out, flush=True)
            rt.close()
            rt_host.close()
    finally:
        if previous is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = previous
        if keep_dir is None:
            shutil.rmtree(cache, ignore_errors=True)
    report["cache_dir"] = str(cache) if keep_dir else None
    del torch
    return report


def _audit_file(path: Path, llc: str | None, llc_timeout: float = 600, lowering=None) -> dict:
    llir = path.read_text()
    item = {"name": path.stem, "llir_bytes": len(llir),
            "x86_intrinsics": sorted(set(re.findall(r"@llvm\.x86\.[a-z0-9_.]+", llir)))}
    host_asm = next((p for p in path.parent.iterdir() if p.suffix in (".asm", ".s") and p.stem == path.stem), None)
    if host_asm is not None:
        item["host"] = count(host_asm.read_text(errors="replace"), X86_COUNTS)
    ttcir = path.with_suffix(".ttcir")
    if lowering is not None and ttcir.exists():
        try:
            item["aarch64_native"] = count(lowering.lower(ttcir.read_text())[0], AARCH64_COUNTS)
        except Exception as e:  # noqa: BLE001 - reported in the row, the audit goes on
            item["aarch64_native_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if llc is None:
        item["aarch64_error"] = "no llc found (install LLVM: llc-19)"
        return item
    asm, note = retarget(llir, llc, timeout=llc_timeout)
    if asm is None:
        item["aarch64_error"] = note
    else:
        item["aarch64"] = count(asm, AARCH64_COUNTS)
    return item


def _line(entry: dict) -> str:
    head = f"{entry['device']:<8} {entry['rule']:<12} {entry['kernel']:<13} {entry['tiles'] or '-':<9}"
    if entry.get("note") and not entry.get("kernels"):
        return f"{head} {entry['note']}"
    parts = []
    if entry.get("fallback"):
        parts.append(f"[re-routed to gemv: {entry['fallback']}]")
    for kern in entry.get("kernels", ()):
        native = kern.get("aarch64_native")
        if native is not None:
            parts.append(f"{kern['name']}: native aarch64 smmla {native['smmla']} sdot {native['sdot']} "
                         f"mul {native['widening_mul']} fmul/fmla {native['fp_mul']} "
                         f"spills {native['spills']}/{native['reloads']} insns {native['instructions']}")
        elif kern.get("aarch64_native_error"):
            parts.append(f"{kern['name']}: native aarch64 FAILED: {kern['aarch64_native_error']}")
        a = kern.get("aarch64")
        h = kern.get("host", {})
        host = (f" host: vpdpbusd {h.get('vpdpbusd', 0)} vpmaddwd {h.get('vpmaddwd', 0)} "
                f"vpmulld {h.get('vpmulld', 0)} vfmadd {h.get('vfmadd', 0)} vcvtdq2ps {h.get('vcvtdq2ps', 0)} "
                f"spills {h.get('spills', 0)}") if h else ""
        if a is None:
            parts.append(f"{kern['name']}: aarch64 FAILED: {kern.get('aarch64_error')}{host}")
        else:
            parts.append(f"{kern['name']}: aarch64 smmla {a['smmla']} sdot {a['sdot']} mul {a['widening_mul']} "
                         f"fmul/fmla {a['fp_mul']} scvtf {a['scvtf']} "
                         f"vld {a['vector_loads']} vst {a['vector_stores']} spills {a['spills']}/{a['reloads']} "
                         f"insns {a['instructions']};{host}")
    return f"{head} " + " || ".join(parts)


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2)
