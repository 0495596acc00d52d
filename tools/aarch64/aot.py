"""The ARM backend's kernels as aarch64 machine code, executed under qemu on an x86_64 host.

    TRITON_CPU_BACKEND=1 python tools/aarch64/aot.py check [--devices D ...] [--m M ...] [--shapes NxK ...]
    TRITON_CPU_BACKEND=1 python tools/aarch64/aot.py count [--devices D ...] [--m M ...] [--shapes NxK ...]

Run in a Python environment whose ``triton`` is a Triton-CPU build (x86_64 host) with this project installed.

How: the backend runs each call on the host as usual (compiled by Triton-CPU for x86) while every kernel
launch is recorded: the compiled kernel, its arguments and the bytes of every buffer it touches. Each kernel
is then lowered again from its target-independent Triton-CPU IR (``ttcir``) with the target set to aarch64
(Cortex-A720: NEON, SVE2, dotprod, i8mm): Triton-CPU's target passes run for an aarch64 CPU, the LLVM module
gets the aarch64 data layout, no AVX-512-sized vector-library calls are emitted (vector math stays LLVM
intrinsics, which the AArch64 backend lowers to 128-bit NEON), and LLVM's AArch64 code generator writes the
assembly. A generated C harness links those kernels, replays the recorded launches over the recorded bytes
(the same grid loop as Triton-CPU's launcher) and writes the buffers back; it is cross-compiled with Debian's
``aarch64-linux-gnu-gcc`` and run by ``qemu-aarch64`` (``-cpu max,sme=off``). The output read back from the
aarch64 run is compared with the reference backend within the contract's bound (``_int_mm``: exactly).

``count`` runs the same harness under ``qemu-aarch64 -plugin count_insns.so`` (tools/aarch64/count_insns.c),
which marks the start and end of one replay: the executed instructions of one call's kernel launches (no Python,
no setup), by class (SMMLA, SDOT, other vector multiplies, loads, stores); then PyTorch's own aarch64 kernels on
the same shapes in the lane's arm64 Python (tools/aarch64/count_pytorch.py).

Code generation: ``--codegen triton`` is Triton's own (``translate_to_asm``, every pass); ``--codegen fast``
(the default for ``check``) is ``llc -O3`` without AArch64's MachineCombiner, which is quadratic in a basic
block's size and dominates the time on fully unrolled 64-row tiles.

Why ahead of time, not Triton-CPU built for aarch64 and run inside the emulated lane: a native build would be
compiled under emulation (hours) or cross-compiled against arm64 LLVM/MLIR libraries; this way the same
Triton-CPU build that serves the x86 compiled tier lowers the kernels for aarch64, and everything that runs
under emulation is the kernels' own machine code. Emulation proves the instruction set and counts
instructions; it says nothing about time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from opregistry.backends.arm.aarch64 import CPU, Aarch64Lowering
from opregistry.backends.arm.asm_audit import find_llc

HERE = Path(__file__).resolve().parent
QEMU_CPU = "max,sme=off"             # qemu 7.2's SME makes some programs die with SIGILL
CC = "aarch64-linux-gnu-gcc"
ASM_ARCH = "-march=armv9-a+i8mm+bf16+dotprod"   # what the assembler must accept of the kernels (Cortex-A720)
GRID_TAIL = 6                        # Triton-CPU kernels end with (x, y, z, gridX, gridY, gridZ)
_HEADER = 9                          # launcher arguments before the kernel's (grid, stream, function, ...)

C_TYPES = {"ptr": "void *", "i1": "_Bool", "i8": "int8_t", "i16": "int16_t", "i32": "int32_t", "i64": "int64_t",
           "float": "float", "double": "double"}


# -- recording launches -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Buffer:
    base: int
    data: bytes


@dataclasses.dataclass
class Launch:
    ck: object                       # triton CompiledKernel
    grid: tuple[int, int, int]
    args: list                       # the kernel's own arguments: ("buf", index, offset) | ("val", value)


class Recorder:
    """Records every Triton-CPU kernel launch made inside :meth:`recording` (any thread of this process)."""

    def __init__(self):
        self.launches: list[Launch] = []
        self.buffers: list[Buffer] = []
        self._kernels: dict[int, object] = {}

    def buffer_of(self, ptr: int, tensor=None) -> tuple[int, int]:
        """``(buffer index, byte offset)`` of pointer ``ptr``; snapshots its storage on first sight."""
        for i, b in enumerate(self.buffers):
            if b.base <= ptr < b.base + max(len(b.data), 1):
                return i, ptr - b.base
        if tensor is None:
            raise RuntimeError(f"pointer {ptr:#x} belongs to no tensor seen in this call")
        st = tensor.untyped_storage()
        base, nbytes = st.data_ptr(), st.nbytes()
        data = bytes(torch.empty(0, dtype=torch.uint8).set_(st, 0, (nbytes,)).numpy().tobytes())
        self.buffers.append(Buffer(base, data))
        return len(self.buffers) - 1, ptr - base

    def _kernel_of(self, launcher):
        from triton.compiler.compiler import CompiledKernel

        ck = self._kernels.get(id(launcher))
        if ck is None:
            for obj in gc.get_objects():
                # type(), not isinstance(): the latter reads __class__, which some objects warn about
                if type(obj) is CompiledKernel and getattr(obj, "run", None) is launcher:
                    ck = obj
                    break
            if ck is None:
                raise RuntimeError("a launch of a kernel that is not a Triton CompiledKernel")
            self._kernels[id(launcher)] = ck
        return ck

    def record(self, launcher, args) -> None:
        ck = self._kernel_of(launcher)
        signature, constants = ck.src.signature, ck.src.constants
        values = args[_HEADER:]
        indices = list(signature)         # the run-time parameters, in the kernel's order (keyed by name)
        if len(values) != len(indices):
            raise RuntimeError(f"{ck.metadata.name}: {len(values)} launch arguments for {len(indices)} parameters")
        kernel_args = []
        for idx, value in zip(indices, values):
            if idx in constants:          # specialized (== 1): not a parameter of the compiled function
                continue
            if signature[idx].startswith("*"):
                if value is None:
                    kernel_args.append(("val", 0))
                elif isinstance(value, int):
                    kernel_args.append(("buf", *self.buffer_of(value)))
                else:
                    kernel_args.append(("buf", *self.buffer_of(value.data_ptr(), value)))
            else:
                kernel_args.append(("val", value))
        self.launches.append(Launch(ck, tuple(int(g) for g in args[:3]), kernel_args))

    @contextlib.contextmanager
    def recording(self):
        from triton.runtime import driver

        cls = driver.active.launcher_cls
        original = cls.__call__
        recorder = self

        def __call__(self, *args, **kwargs):
            recorder.record(self, args)
            return original(self, *args, **kwargs)

        cls.__call__ = __call__
        try:
            yield self
        finally:
            cls.__call__ = original


# -- the harness --------------------------------------------------------------------------------------------

def _c_value(ty: str, value) -> str:
    if ty in ("float", "double"):
        return repr(float(value)) if value == value and abs(value) != float("inf") else (
            "NAN" if value != value else ("INFINITY" if value > 0 else "-INFINITY"))
    return str(int(value))


def build_harness(rec: Recorder, lowering: Aarch64Lowering, work: Path) -> Path:
    """Write and cross-compile the harness of ``rec``'s launches into ``work``; return the executable."""
    work.mkdir(parents=True, exist_ok=True)
    symbols: dict[str, str] = {}          # kernel hash -> symbol
    protos, sources, calls = [], [], []
    for launch in rec.launches:
        asm, name, params = lowering.lower(launch.ck.asm["ttcir"])
        sym = symbols.get(launch.ck.hash)
        if sym is None:
            sym = symbols[launch.ck.hash] = f"k{len(symbols)}_{name}"
            src = work / f"{sym}.s"
            src.write_text(re.sub(rf"\b{re.escape(name)}\b", sym, asm))
            sources.append(src.name)
            ctypes = ", ".join(C_TYPES[p] for p in params)
            protos.append(f"extern void {sym}({ctypes});")
        n_args = len(params) - GRID_TAIL
        if n_args != len(launch.args) or params[n_args:] != ["i32"] * GRID_TAIL:
            raise RuntimeError(f"{name}: {len(launch.args)} recorded arguments for parameters {params}")
        actual = []
        for ty, arg in zip(params, launch.args):
            if arg[0] == "buf":
                actual.append(f"(void *)(buf[{arg[1]}] + {arg[2]})")
            else:
                actual.append(f"({C_TYPES[ty]}){_c_value(ty, arg[1])}")
        gx, gy, gz = launch.grid
        calls.append(f"    for (int z = 0; z < {gz}; z++) for (int y = 0; y < {gy}; y++) "
                     f"for (int x = 0; x < {gx}; x++)\n"
                     f"        {sym}({', '.join(actual + ['x', 'y', 'z', str(gx), str(gy), str(gz)])});")
    sizes = [len(b.data) for b in rec.buffers]
    (work / "in.bin").write_bytes(b"".join(b.data for b in rec.buffers))
    harness = f"""/* generated by tools/aarch64/aot.py: replays recorded Triton-CPU launches */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
{chr(10).join(protos)}
/* a mark for tools/aarch64/count_insns.c: sched_get_priority_max with an invalid policy does nothing else */
static void mark(void) {{ syscall(SYS_sched_get_priority_max, 28528); }}
static const size_t sizes[{max(len(sizes), 1)}] = {{{', '.join(map(str, sizes)) or '0'}}};
static unsigned char *buf[{max(len(sizes), 1)}];
static void replay(void) {{
{chr(10).join(calls)}
}}
int main(int argc, char **argv) {{
    if (argc < 4) {{ fprintf(stderr, "usage: %s IN OUT REPLAYS\\n", argv[0]); return 2; }}
    FILE *in = fopen(argv[1], "rb");
    if (!in) {{ perror(argv[1]); return 2; }}
    for (int i = 0; i < {len(sizes)}; i++) {{
        buf[i] = aligned_alloc(64, (sizes[i] + 63) / 64 * 64 + 64);
        if (fread(buf[i], 1, sizes[i], in) != sizes[i]) {{ fprintf(stderr, "short input\\n"); return 2; }}
    }}
    fclose(in);
    int replays = atoi(argv[3]);
    for (int r = 0; r < replays; r++) {{
        mark();
        replay();
        mark();
    }}
    FILE *out = fopen(argv[2], "wb");
    if (!out) {{ perror(argv[2]); return 2; }}
    for (int i = 0; i < {len(sizes)}; i++)
        fwrite(buf[i], 1, sizes[i], out);
    fclose(out);
    return 0;
}}
"""
    (work / "harness.c").write_text(harness)
    exe = work / "harness"
    cmd = [CC, "-O2", "-static", ASM_ARCH, "-o", str(exe), "harness.c", *sources, "-lm"]
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return exe


def read_marks(path: Path) -> list[dict]:
    """count_insns.c's output: the whole run's counts, then the counts at each mark."""
    return [{key: int(v) for key, v in (kv.split("=") for kv in line.split())}
            for line in path.read_text().splitlines() if line.strip()]


def between(marks: list[dict], i: int) -> dict:
    """What ran between mark ``i`` and mark ``i + 1`` (``marks`` as :func:`read_marks` gives them)."""
    return {key: marks[i + 2][key] - marks[i + 1][key] for key in marks[0]}


def run_harness(exe: Path, replays: int = 1, plugin: Path | None = None) -> tuple[bytes, dict | None]:
    """Run the harness under qemu; ``(buffers after the run, one replay's instruction counts or None)``."""
    work = exe.parent
    out = work / f"out{replays}.bin"
    qemu = shutil.which("qemu-aarch64" if plugin else "qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if qemu is None:
        raise RuntimeError("needs qemu-aarch64 (Debian: qemu-user / qemu-user-static)")
    cmd = [qemu, "-cpu", QEMU_CPU]
    counts_file = work / f"counts{replays}.txt"
    if plugin:
        cmd += ["-plugin", f"{plugin},out={counts_file}"]
    cmd += [str(exe), str(work / "in.bin"), str(out), str(replays)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    counts = None
    if plugin:
        counts = between(read_marks(counts_file), 2 * (replays - 1))     # the last replay
    return out.read_bytes(), counts


def read_back(rec: Recorder, dumped: bytes, result: torch.Tensor) -> torch.Tensor:
    """``result`` (a tensor the host run returned) as the aarch64 run left it."""
    index, offset = rec.buffer_of(result.data_ptr())
    start = sum(len(b.data) for b in rec.buffers[:index])
    raw = bytearray(dumped[start:start + len(rec.buffers[index].data)])
    whole = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    typed = whole.view(result.dtype)
    return torch.as_strided(typed, result.shape, result.stride(), offset // result.element_size()).clone()


# -- the cases ----------------------------------------------------------------------------------------------

LINEAR = "quantized::linear_dynamic"
LINEAR_RELU = "quantized::linear_relu_dynamic"
INT_MM = "aten::_int_mm"
# (op, activation scheme): the linear ops in every scheme, ReLU once, and _int_mm
VARIANTS = [(LINEAR, "per_row"), (LINEAR, "per_tensor"), (LINEAR, "pytorch"), (LINEAR_RELU, "per_row"),
            (INT_MM, None)]


@dataclasses.dataclass
class Outcome:
    device: str
    op: str
    scheme: str | None
    rule: str
    kernel: str
    m: int
    n: int
    k: int
    ok: bool
    detail: str
    launches: int
    counts: dict | None = None


def _runtime(device: str, op: str, scheme: str | None, config: str | None = None):
    from opregistry.backends.arm.runtime import ArmRuntime
    from opregistry.registry import Registry

    ops = {} if scheme is None else {o: {"activation_scale": scheme} for o in (LINEAR, LINEAR_RELU)}
    return ArmRuntime(Registry().build_config("arm", config, device=device, execution="compiled", ops=ops))


def run_case(runtime, device, op, scheme, m, n, k, lowering, work: Path, plugin: Path | None) -> Outcome | None:
    from opregistry.testing import check, default_engine, make_packed, quantized_engine

    runner = runtime.runners[op]
    rule = runner.router.route(m).rule
    if rule.kernel == "pytorch":
        return None                          # PyTorch's own kernel: nothing of ours to run
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    rec = Recorder()
    if op == INT_MM:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        b = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=gen)
        with rec.recording():
            y = runner.run(a, b)
        expected = torch._int_mm(a, b) if m > 16 else (a.int() @ b.int())
        check_fn = lambda got: (torch.equal(got, expected), "exact" if torch.equal(got, expected)
                                else f"{int((got != expected).sum())} elements differ")
    else:
        engine = default_engine()
        packed = make_packed(n, k, per_channel=bool(m % 2), zero_points=True, engine=default_engine(True), seed=m)
        x = torch.randn(m, k, generator=gen) * 2 + 0.3
        reduce_range = scheme == "pytorch"
        with quantized_engine(engine), rec.recording():
            y = runner.run(x, packed, reduce_range=reduce_range)
        applies = reduce_range and runtime.weight(packed, runner.spec, op).reduce_range_applies

        def check_fn(got):
            ok, worst, note = check(got, x, packed, relu=op == LINEAR_RELU, mode=scheme, reduce_range=applies)
            return ok, f"worst |error|/bound {worst:.3g}" + (f"; {note}" if note else "")
    if not rec.launches:
        raise RuntimeError(f"{device} {op} m={m}: no kernel launch was recorded")
    host_ok, _ = check_fn(y)
    exe = build_harness(rec, lowering, work)
    dumped, counts = run_harness(exe, 1, plugin)
    got = read_back(rec, dumped, y)
    ok, detail = check_fn(got)
    if not host_ok:
        detail += " (the x86 run is off too)"
    kernels = "+".join(dict.fromkeys(l.ck.metadata.name for l in rec.launches))
    fallback = runner.dot_fallbacks.get(rule.name) if hasattr(runner, "dot_fallbacks") else \
        runtime.dot_fallbacks.get(rule.name)
    return Outcome(device, op, scheme, rule.name, rule.kernel + (" (gemv: dot rejected)" if fallback else ""),
                   m, n, k, ok, f"{detail}; kernels {kernels}", len(rec.launches), counts)


def count_pytorch(root: Path, plugin: Path, cases: list[tuple[str, int, int, int]], work: Path) -> list[dict]:
    """Executed instructions of one call of PyTorch's own aarch64 kernels, per case ``(kind, M, K, N)`` (kind:
    qnnpack or onednn ``linear_dynamic``, or ``int_mm``): one process of the lane's arm64 Python under
    ``qemu-aarch64 -L root``, the call counted between two marks after a warm-up call."""
    python = root / "usr" / "bin" / "python3"
    site = next((root / "opt" / "venv" / "lib").glob("python3*/site-packages"), None)
    if not python.exists() or site is None:
        raise RuntimeError(f"no arm64 Python with torch in {root}: run tools/aarch64/lane.sh once first")
    work.mkdir(parents=True, exist_ok=True)
    out = work / "pytorch-counts.txt"
    cmd = [shutil.which("qemu-aarch64"), "-L", str(root), "-cpu", QEMU_CPU, "-plugin", f"{plugin},out={out}",
           str(python), str(HERE / "count_pytorch.py"), *(":".join(map(str, case)) for case in cases)]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/" + str(site.relative_to(root)), "OMP_NUM_THREADS": "1",
           "LANG": "C.UTF-8", "HOME": "/root"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    marks = read_marks(out)
    if len(marks) != 1 + 2 * len(cases):
        raise RuntimeError(f"expected {2 * len(cases)} marks from count_pytorch.py, got {len(marks) - 1}")
    return [between(marks, 2 * i) for i in range(len(cases))]


def _per_mac(c: dict, macs: int) -> str:
    return (f"per MAC: total {c['total'] / macs:.3f} smmla {c['smmla'] / macs:.4f} sdot {c['sdot'] / macs:.4f} "
            f"vimul {c['vimul'] / macs:.3f} vfmul {c['vfmul'] / macs:.3f} load {c['load'] / macs:.3f} "
            f"store {c['store'] / macs:.3f}  (total {c['total']:,})")


def main(argv=None) -> int:
    from opregistry.backends.arm.plugin import packaged_devices

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("check", "count"),
                   help="check: run every routing rule under qemu and compare with the reference; "
                        "count: also count executed instructions per call (qemu TCG plugin)")
    p.add_argument("--devices", nargs="+", default=None, help="packaged tables (default: all)")
    p.add_argument("--m", nargs="+", type=int, default=None,
                   help="rows (default check: 1 2 3 8 64 65; count: 1 64)")
    p.add_argument("--shapes", nargs="+", default=None,
                   help="KxN weight shapes, as opregistry bench takes them (default check: 100x67, off every "
                        "tile; count: 2048x2048 2048x6144)")
    p.add_argument("--ops", nargs="+", default=None, help="op[:scheme] variants (default: all)")
    p.add_argument("--config", default=None,
                   help="a deployment config layered over each table (its routing, say), as registry.enable takes")
    p.add_argument("--work", default=None, help="folder for harnesses (default: a temporary one)")
    p.add_argument("--json", default=None, help="write the outcomes here")
    p.add_argument("--codegen", choices=("fast", "triton"), default=None,
                   help="fast: llc-19 -O3 without AArch64's MachineCombiner (quadratic on the unrolled 64-row "
                        "tiles); triton: Triton's own code generation, every pass (default: fast for check, "
                        "triton for count)")
    p.add_argument("--pytorch-root", default="/var/cache/opregistry-aarch64/root-bookworm",
                   help="count: the lane's arm64 root, whose torch runs PyTorch's own kernels on the same shapes "
                        "(qnnpack and onednn linear_dynamic, _int_mm); 'none' to skip them")
    args = p.parse_args(argv)

    missing = [t for t in (CC, "qemu-aarch64-static", "qemu-aarch64") if shutil.which(t) is None]
    if missing:
        print(f"needs {', '.join(missing)} (Debian: gcc-aarch64-linux-gnu, qemu-user-static, qemu-user)",
              file=sys.stderr)
        return 2
    from opregistry.backends.arm.device import triton_cpu_status
    status = triton_cpu_status()
    if not status.active:
        print(f"needs an active Triton-CPU (TRITON_CPU_BACKEND=1): {status.detail}", file=sys.stderr)
        return 2
    counting = args.mode == "count"
    ms = args.m or ([1, 64] if counting else [1, 2, 3, 8, 64, 65])
    if args.shapes:
        shapes = [tuple(int(v) for v in s.lower().split("x"))[::-1] for s in args.shapes]   # (N, K)
    else:
        shapes = [(2048, 2048), (6144, 2048)] if counting else [(67, 100)]
    devices = args.devices or packaged_devices()
    variants = VARIANTS
    if args.ops:
        variants = [v for v in VARIANTS if f"{v[0]}:{v[1]}" in args.ops or v[0] in args.ops]
    plugin = None
    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="opregistry-aot-"))
    if counting:
        plugin = root / "count_insns.so"
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(plugin), str(HERE / "count_insns.c")],
                       check=True)
    torch.set_num_threads(1)
    # The kernels run on aarch64: rowdot_prequant takes signed activations there (sdot), not x86's unsigned.
    from opregistry.backends.arm import prequant
    prequant.unsigned_activations = lambda: False
    # fast: llc without AArch64's MachineCombiner (quadratic on the unrolled 64-row tiles; see Aarch64Lowering);
    # triton: Triton's own code generation, exactly.
    codegen = args.codegen or ("triton" if counting else "fast")
    llc = find_llc() if codegen == "fast" else None
    lowering = Aarch64Lowering(llc, ("-aarch64-enable-mcr=false",) if llc else ())
    outcomes: list[Outcome] = []
    started = time.monotonic()
    for device in devices:
        for op, scheme in variants:
            runtime = _runtime(device, op, scheme, args.config)
            for n, k in shapes:
                for m in ms:
                    work = root / f"{device}-{op.split('::')[1]}-{scheme}-{n}x{k}-m{m}"
                    out = run_case(runtime, device, op, scheme, m, n, k, lowering, work, plugin)
                    if out is None:
                        continue
                    outcomes.append(out)
                    extra = f"  {_per_mac(out.counts, m * n * k)}" if out.counts else ""
                    print(f"{'ok  ' if out.ok else 'FAIL'} {device:9} {op:31} {scheme or '-':10} {out.rule:12} "
                          f"{out.kernel:14} M={m:<3} N={n} K={k}: {out.detail}{extra}", flush=True)
    pytorch_counts = []
    if counting and args.pytorch_root != "none":
        cases = [(kind, m, k, n) for n, k in shapes for m in ms for kind in ("qnnpack", "onednn", "int_mm")]
        for (kind, m, k, n), c in zip(cases, count_pytorch(Path(args.pytorch_root), plugin, cases, root / "pytorch")):
            pytorch_counts.append({"kind": kind, "m": m, "n": n, "k": k, "counts": c})
            print(f"pytorch   {kind:9} M={m:<3} N={n} K={k}: {_per_mac(c, m * n * k)}", flush=True)
    failed = [o for o in outcomes if not o.ok]
    covered = {(o.device, o.op, o.scheme, o.rule) for o in outcomes}
    print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed "
          f"({len(covered)} routing rules x schemes, {time.monotonic() - started:.0f} s; aarch64 code under "
          f"qemu -cpu {QEMU_CPU}, lowered for {CPU}, code generation: {codegen})")
    if args.json:
        Path(args.json).write_text(json.dumps({"ours": [dataclasses.asdict(o) for o in outcomes],
                                               "pytorch": pytorch_counts}, indent=1))
    if not args.work:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
