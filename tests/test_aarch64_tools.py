"""The aarch64 instruction counter (tools/aarch64/insn_class.h and the qemu plugin count_insns.c) against an
independent source of truth: binutils' own disassembly of the instructions it classifies, and exact counts of
a program whose executed instructions are known. Needs the host's gcc, binutils-aarch64-linux-gnu and qemu-user
(.ci/run installs them); skipped with the reason where they are missing."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools" / "aarch64"
AS, OBJDUMP, LD = "aarch64-linux-gnu-as", "aarch64-linux-gnu-objdump", "aarch64-linux-gnu-ld"
MARCH = "-march=armv8.6-a+sve2+i8mm+dotprod+fp16"

needs_binutils = pytest.mark.skipif(
    not all(shutil.which(t) for t in (AS, OBJDUMP, LD, "gcc")),
    reason="needs gcc and binutils-aarch64-linux-gnu (Debian packages; .ci/run installs them)")

# One of each family the counter must tell apart, and neighbours it must not count.
INSTRUCTIONS = """
smmla v0.4s, v1.16b, v2.16b
ummla v0.4s, v1.16b, v2.16b
usmmla v0.4s, v1.16b, v2.16b
sdot v0.4s, v1.16b, v2.16b
udot v0.2s, v1.8b, v2.8b
sdot v0.4s, v1.16b, v2.4b[3]
udot v3.4s, v4.16b, v5.4b[0]
usdot v0.4s, v1.16b, v2.16b
sudot v0.4s, v1.16b, v2.4b[1]
usdot v0.4s, v1.16b, v2.4b[2]
mul v0.4s, v1.4s, v2.4s
mul v0.16b, v1.16b, v2.16b
mla v0.8h, v1.8h, v2.8h
mls v0.4s, v1.4s, v2.4s
mul v0.4s, v1.4s, v2.s[1]
mla v0.4s, v1.4s, v2.s[1]
mls v0.8h, v1.8h, v2.h[3]
smull v0.8h, v1.8b, v2.8b
smull2 v0.8h, v1.16b, v2.16b
umull v0.4s, v1.4h, v2.4h
smlal v0.4s, v1.4h, v2.4h
smlal2 v0.4s, v1.8h, v2.8h
umlal v0.2d, v1.2s, v2.2s
smlsl v0.4s, v1.4h, v2.4h
smull v0.4s, v1.4h, v2.h[1]
smlal2 v0.4s, v1.8h, v2.h[7]
sqdmulh v0.4s, v1.4s, v2.4s
sqrdmulh v0.4s, v1.4s, v2.s[0]
fmul v0.4s, v1.4s, v2.4s
fmla v0.4s, v1.4s, v2.4s
fmls v0.2d, v1.2d, v2.2d
fmla v0.4s, v1.4s, v2.s[1]
fmul v0.4s, v1.4s, v2.s[1]
fmulx v0.4s, v1.4s, v2.4s
fmla v0.8h, v1.8h, v2.8h
fmul v0.8h, v1.8h, v2.8h
fmla v0.8h, v1.8h, v2.h[2]
fadd v0.4s, v1.4s, v2.4s
add v0.4s, v1.4s, v2.4s
addv s0, v1.4s
saddlp v0.8h, v1.16b
sshll v0.8h, v1.8b, #0
scvtf v0.4s, v1.4s
fcvtns v0.4s, v1.4s
frintm v0.4s, v1.4s
fmaxnm v0.4s, v1.4s, v2.4s
fmul s0, s1, s2
fmadd s0, s1, s2, s3
fmul s0, s1, v2.s[1]
mul x0, x1, x2
madd w0, w1, w2, w3
umulh x0, x1, x2
add x0, x1, x2
ldr q0, [x0]
ldr x1, [x0, #8]
ldrb w1, [x0], #1
ldrsb x1, [x0]
ldrsw x1, [x0, #4]
ldp q0, q1, [x0]
ldp x1, x2, [x0, #16]!
ldnp q0, q1, [x0]
ld1 {v0.16b}, [x0]
ld1 {v0.16b, v1.16b}, [x0], #32
ld4 {v0.4s, v1.4s, v2.4s, v3.4s}, [x0]
ld1r {v0.4s}, [x0]
ld1 {v0.s}[1], [x0]
ldur q0, [x0, #-16]
ldr w1, [x0, x2, lsl #2]
ldr s0, [x0, x2, lsl #2]
ldxr x1, [x0]
ldar x1, [x0]
ldadd x1, x2, [x0]
prfm pldl1keep, [x0]
ldr x1, .
str q0, [x0]
str x1, [x0, #8]
strb w1, [x0], #1
strh w1, [x0, x2]
stp q0, q1, [x0]
stp x1, x2, [sp, #-16]!
stnp q0, q1, [x0]
st1 {v0.16b}, [x0]
st1 {v0.4s, v1.4s}, [x0], #32
st1 {v0.s}[1], [x0]
stur q0, [x0, #-16]
str d0, [x0, x2, lsl #3]
stxr w3, x1, [x0]
stlr x1, [x0]
ld1b {z0.b}, p0/z, [x0]
ld1w {z0.s}, p0/z, [x0, x1, lsl #2]
ld1rw {z0.s}, p0/z, [x0]
ld1sb {z0.s}, p0/z, [x0]
ldr z0, [x0]
ldr p0, [x0]
st1w {z0.s}, p0, [x0]
st1b {z0.b}, p0, [x0, x1]
str z0, [x0]
sdot z0.s, z1.b, z2.b
udot z0.s, z1.b, z2.b[1]
sdot z0.d, z1.h, z2.h
smmla z0.s, z1.b, z2.b
ummla z0.s, z1.b, z2.b
usmmla z0.s, z1.b, z2.b
usdot z0.s, z1.b, z2.b
mul z0.s, p0/m, z0.s, z1.s
mla z0.s, p0/m, z1.s, z2.s
mls z0.h, p0/m, z1.h, z2.h
mad z0.s, p0/m, z1.s, z2.s
smulh z0.s, p0/m, z0.s, z1.s
mul z0.s, z1.s, z2.s
mul z0.s, z1.s, z2.s[1]
fmla z0.s, p0/m, z1.s, z2.s
fmls z0.s, p0/m, z1.s, z2.s
fmad z0.s, p0/m, z1.s, z2.s
fmul z0.s, p0/m, z0.s, z1.s
fmul z0.s, z1.s, z2.s
fmla z0.s, z1.s, z2.s[1]
fmul z0.s, z1.s, z2.s[1]
fadd z0.s, z1.s, z2.s
add z0.s, z1.s, z2.s
sunpklo z0.h, z1.b
whilelo p0.s, x0, x1
"""

DOT = {"sdot", "udot", "usdot", "sudot"}
MMLA = {"smmla", "ummla", "usmmla"}
IMUL = {"mul", "mla", "mls", "mad", "msb", "smulh", "umulh", "smull", "smull2", "umull", "umull2", "smlal",
        "smlal2", "umlal", "umlal2", "smlsl", "smlsl2", "umlsl", "umlsl2", "sqdmulh", "sqrdmulh", "pmul"}
FMUL = {"fmul", "fmla", "fmls", "fmulx", "fmad", "fmsb", "fnmla", "fnmls", "fnmad", "fnmsb"}
LOAD_ATOMIC = {"ldadd", "swp", "cas", "prfm"}


def expected_class(mnemonic: str, operands: str) -> str:
    """The class binutils' disassembly implies: what the counter must say."""
    vector = re.search(r"\b[vz]\d+\.", operands) is not None
    if mnemonic in MMLA:
        return "smmla"
    if mnemonic in DOT:
        return "sdot"
    if mnemonic in IMUL and vector:
        return "vimul"
    if mnemonic in FMUL and vector and re.match(r"[vz]\d+\.", operands):   # destination is a vector
        return "vfmul"
    if mnemonic.startswith("ld") or mnemonic in LOAD_ATOMIC:
        return "load"
    if mnemonic.startswith("st"):
        return "store"
    return "other"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classify")
    src = tmp / "classify.c"
    src.write_text('#include <stdio.h>\n#include "insn_class.h"\nint main(void){unsigned w;'
                   'while(scanf("%x",&w)==1)puts(insn_class_name[classify_insn(w)]);return 0;}\n')
    exe = tmp / "classify"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-I", str(TOOLS), "-o", str(exe), str(src)], check=True)
    return exe


def disassemble(asm: str, tmp: Path) -> list[tuple[str, str, str]]:
    """``(hex word, mnemonic, operands)`` of every instruction binutils assembled from ``asm``."""
    (tmp / "t.s").write_text(".text\n.globl _start\n_start:\n" + asm)
    subprocess.run([AS, MARCH, "-o", str(tmp / "t.o"), str(tmp / "t.s")], check=True)
    dump = subprocess.run([OBJDUMP, "-d", str(tmp / "t.o")], check=True, capture_output=True, text=True).stdout
    rows = []
    for line in dump.splitlines():
        match = re.match(r"\s*[0-9a-f]+:\s+([0-9a-f]{8})\s+(\S+)\s*(.*)", line)
        if match:
            rows.append((match.group(1), match.group(2), match.group(3).split("//")[0].strip()))
    return rows


@needs_binutils
def test_every_instruction_is_classified_as_binutils_reads_it(classifier, tmp_path):
    rows = disassemble(INSTRUCTIONS, tmp_path)
    assert len(rows) == len(INSTRUCTIONS.strip().splitlines())
    words = "\n".join(word for word, _, _ in rows)
    got = subprocess.run([str(classifier)], input=words, check=True, capture_output=True, text=True).stdout.split()
    wrong = [f"{word} {mnem} {ops}: counted as {g}, binutils says {expected_class(mnem, ops)}"
             for (word, mnem, ops), g in zip(rows, got) if g != expected_class(mnem, ops)]
    assert not wrong, "\n".join(wrong)
    assert {expected_class(m, o) for _, m, o in rows} == {"smmla", "sdot", "vimul", "vfmul", "load", "store",
                                                           "other"}


LOOP = """
    mov x9, #{n}
    adr x0, data
1:  smmla v0.4s, v1.16b, v2.16b
    sdot v3.4s, v1.16b, v2.16b
    sdot z4.s, z1.b, z2.b
    fmla v5.4s, v1.4s, v2.4s
    mul v6.4s, v1.4s, v2.4s
    ldr q7, [x0]
    str q7, [x0]
    subs x9, x9, #1
    b.ne 1b
    mov x0, #0
    mov x8, #93
    svc #0
.data
data: .space 64
"""


@needs_binutils
@pytest.mark.skipif(shutil.which("qemu-aarch64") is None, reason="needs qemu-user's qemu-aarch64 (Debian package)")
def test_the_plugin_counts_executed_instructions_exactly(tmp_path):
    plugin = tmp_path / "count_insns.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", str(plugin), str(TOOLS / "count_insns.c")],
                   check=True)
    counts = {}
    for n in (10, 25):
        (tmp_path / f"loop{n}.s").write_text(".text\n.globl _start\n_start:\n" + LOOP.format(n=n))
        subprocess.run([AS, MARCH, "-o", str(tmp_path / f"loop{n}.o"), str(tmp_path / f"loop{n}.s")], check=True)
        subprocess.run([LD, "-o", str(tmp_path / f"loop{n}"), str(tmp_path / f"loop{n}.o")], check=True)
        out = tmp_path / f"counts{n}.txt"
        subprocess.run(["qemu-aarch64", "-cpu", "max,sme=off", "-plugin", f"{plugin},out={out}",
                        str(tmp_path / f"loop{n}")], check=True)
        counts[n] = dict(kv.split("=") for kv in out.read_text().split())
    per_iteration = {k: (int(counts[25][k]) - int(counts[10][k])) / 15 for k in counts[10]}
    assert per_iteration == {"total": 9, "smmla": 1, "sdot": 2, "vimul": 1, "vfmul": 1, "load": 1, "store": 1}
    assert int(counts[10]["total"]) == 2 + 9 * 10 + 3   # setup, the loop, the exit
