"""The ARM kernels lowered for an aarch64 target by the Triton-CPU of this process, whatever the host.

Triton-CPU compiles for the host it runs on. Its stages up to ``ttcir`` (Triton-CPU IR) are target-independent;
from there on it reads the host: ``make_tttcir`` picks target passes by the CPU's architecture and features,
``make_llir`` sets the host's triple and data layout and, with a vector library, splits math into AVX-512-sized
(512-bit) calls whatever the target; ``make_asm`` runs the host's code generator. :class:`Aarch64Lowering` runs
those stages again from a compiled kernel's ``ttcir`` as a Triton-CPU running on an aarch64 core would, for
:data:`CPU` with :data:`FEATURES`: aarch64 architecture and features for the target passes, no vector library
(vector math stays LLVM intrinsics, which the AArch64 code generator lowers to 128-bit NEON), the aarch64 data
layout, and LLVM's AArch64 code generator. The result is the kernel as aarch64 assembly: what
``opregistry asm`` counts in its native rows, and what tools/aarch64/aot.py links and runs under qemu.

Written against the stages of Triton-CPU's ``legacy`` line (Triton 3.0); another build that lacks them is
reported by name (:class:`LoweringUnavailable`).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

TRIPLE = "aarch64-unknown-linux-gnu"
CPU = "cortex-a720"      # the CIX P1's big core: Armv9.2-A with NEON, SVE2 (128-bit), dotprod, i8mm, bf16
FEATURES = "+neon,+fp-armv8,+dotprod,+i8mm,+sve,+sve2,+bf16"


class LoweringUnavailable(RuntimeError):
    """This Triton has no Triton-CPU compiler stages this module knows how to drive."""


class Aarch64Lowering:
    """Lowers compiled kernels' ``ttcir`` for aarch64; results cached by IR text.

    ``llc``: an LLVM ``llc`` to generate code with instead of Triton's own ``translate_to_asm`` (the same -O3
    pipeline), so that ``llc_flags`` can switch passes off. AArch64's MachineCombiner is quadratic in a basic
    block's size: on a fully unrolled 64x64x32 ``tl.dot`` tile it took 56% of ~400 s of code generation (llc
    -time-passes, 2026-12-05); ``-aarch64-enable-mcr=false`` drops it (it only fuses separate multiplies and
    adds into multiply-adds) where code generation time matters more than the last instruction.
    """

    def __init__(self, llc: str | None = None, llc_flags: tuple[str, ...] = ()):
        self.llc, self.llc_flags = llc, tuple(llc_flags)
        try:
            from triton._C.libtriton import ir, llvm
            from triton.backends.cpu.compiler import CPUBackend
            from triton.runtime import driver
        except ImportError as e:
            raise LoweringUnavailable(f"no Triton-CPU compiler in this triton: {e}") from None
        missing = [name for name in ("make_tttcir", "make_llir") if not hasattr(CPUBackend, name)]
        missing += [name for name in ("attach_datalayout", "translate_to_asm", "set_host_target")
                    if not hasattr(llvm, name)]
        if missing:
            raise LoweringUnavailable(f"this Triton-CPU lacks {', '.join(missing)} (written for the legacy line)")
        self._ir, self._llvm = ir, llvm
        self.backend = CPUBackend(driver.active.get_current_target())
        # What the backend reads of the host when it lowers: the CPU's architecture, name and features.
        self.backend.cpu_arch = "aarch64"
        self.backend.cpu_name = CPU
        self.backend.cpu_features = {f.lstrip("+") for f in FEATURES.split(",")}
        self._cache: dict[str, tuple[str, str, list[str]]] = {}

    def lower(self, ttcir: str) -> tuple[str, str, list[str]]:
        """``(aarch64 assembly, kernel name, LLVM parameter types)`` of one kernel's ``ttcir``."""
        found = self._cache.get(ttcir)
        if found is None:
            found = self._cache[ttcir] = self._lower(ttcir)
        return found

    def _lower(self, ttcir: str):
        ir, llvm, backend = self._ir, self._llvm, self.backend
        context = ir.context()
        ir.load_dialects(context)
        backend.load_dialects(context)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "kernel.ttcir"
            path.write_text(ttcir)
            mod = ir.parse_mlir_module(str(path), context)
            mod.context = context
        options = backend.parse_options({"vec_lib": None})
        metadata = {"num_warps": 0}
        mod = backend.make_tttcir(mod, metadata, options)
        host_target = llvm.set_host_target
        llvm.set_host_target = lambda m: llvm.attach_datalayout(m, TRIPLE, CPU, FEATURES)
        # No debug line info: its DWARF 5 ``.file`` directives are more than some assemblers take.
        line_info = os.environ.get("TRITON_DISABLE_LINE_INFO")
        os.environ["TRITON_DISABLE_LINE_INFO"] = "1"
        try:
            llir = backend.make_llir(mod, metadata, options)
        finally:
            llvm.set_host_target = host_target
            if line_info is None:
                os.environ.pop("TRITON_DISABLE_LINE_INFO", None)
            else:
                os.environ["TRITON_DISABLE_LINE_INFO"] = line_info
        llir = f'target triple = "{TRIPLE}"\n' + re.sub(r'^target triple = ".*"$', "", llir, flags=re.M)
        if self.llc:
            asm = self._llc(llir)
        else:
            asm = llvm.translate_to_asm(llir, TRIPLE, CPU, FEATURES, [], options.enable_fp_fusion, False)
        name = metadata["name"]
        match = re.search(rf"^define [^@]*@{re.escape(name)}\(([^)]*)\)", llir, flags=re.M)
        if match is None:
            raise RuntimeError(f"no definition of {name} in the aarch64 LLVM IR")
        params = [p.strip().split()[0] for p in match.group(1).split(",") if p.strip()]
        return asm, name, params

    def _llc(self, llir: str) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "kernel.ll", Path(tmp) / "kernel.s"
            src.write_text(llir)
            cmd = [self.llc, "-O3", f"-mtriple={TRIPLE}", f"-mcpu={CPU}", f"-mattr={FEATURES}", "-relocation-model=pic",
                   *self.llc_flags, str(src), "-o", str(out)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:-3])}: {done.stderr.strip()[:600]}")
            return out.read_text()
