"""The assembly audit's instruction counts (``opregistry asm``) on known
assembly, and its retargeting of x86 LLVM IR to aarch64 with a real ``llc``."""

from __future__ import annotations

import pytest

from opregistry.backends.arm.asm_audit import AARCH64_COUNTS, X86_COUNTS, count, find_llc, retarget

AARCH64_ASM = """\
kernel:
\tsmmla\tv0.4s, v1.16b, v2.16b
\tusmmla\tv3.4s, v1.16b, v2.16b
\tsdot\tz0.s, z1.b, z2.b
\tfmla\tv4.4s, v5.4s, v6.s[1]
\tfmla\tz7.s, p0/m, z8.s, z9.s
\tscvtf\tv4.4s, v4.4s
\tsmull2\tv10.8h, v11.16b, v12.16b
\tldr\tq1, [x0, #16]
\tstr\tq0, [sp, #32]
\tldr\tq0, [sp, #32]
\tfmla\ts0, s1, s2
\tfmul\tv1.4s, v2.4s, v3.4s
\tret
"""

X86_ASM = """\
kernel:
\tvpdpbusd\t%zmm2, %zmm1, %zmm0
\tvpmulld\t%zmm2, %zmm1, %zmm0
\tvfmadd231ps\t%zmm2, %zmm1, %zmm0
\tvcvtdq2ps\t%zmm1, %zmm1
\tvmovups\t%zmm0, -64(%rsp)
\tretq
"""


def test_aarch64_counts():
    c = count(AARCH64_ASM, AARCH64_COUNTS)
    assert (c["smmla"], c["sdot"], c["widening_mul"]) == (2, 1, 1)
    assert (c["fp_mul"], c["scvtf"]) == (3, 1)        # the scalar fmla is not a vector multiply
    assert (c["spills"], c["reloads"]) == (1, 1)
    assert c["vector_loads"] == 2 and c["vector_stores"] == 1
    assert c["instructions"] == 13


def test_x86_counts():
    c = count(X86_ASM, X86_COUNTS)
    assert (c["vpdpbusd"], c["vpmulld"], c["vfmadd"], c["vcvtdq2ps"], c["spills"]) == (1, 1, 1, 1, 1)
    assert c["instructions"] == 6


X86_IR = """\
target datalayout = "e-m:e-p270:32:32-p271:32:32-p272:64:64-i64:64-i128:128-f80:128-n8:16:32:64-S128"
target triple = "x86_64-unknown-linux-gnu"

define <4 x float> @fma4(<4 x float> %a, <4 x float> %b, <4 x float> %c) #0 {
  %p = fmul fast <4 x float> %a, %b
  %s = fadd fast <4 x float> %p, %c
  ret <4 x float> %s
}

define <4 x i32> @dot4(<16 x i8> %a, <16 x i8> %b, <4 x i32> %acc) #0 {
  %ea = sext <16 x i8> %a to <16 x i32>
  %eb = sext <16 x i8> %b to <16 x i32>
  %m = mul <16 x i32> %ea, %eb
  %r = shufflevector <16 x i32> %m, <16 x i32> poison, <4 x i32> <i32 0, i32 1, i32 2, i32 3>
  %s = add <4 x i32> %r, %acc
  ret <4 x i32> %s
}

attributes #0 = { "target-cpu"="znver4" "target-features"="+avx512f" }
"""


@pytest.mark.skipif(find_llc() is None, reason="no llc on PATH (LLVM's llc-19: apt install llvm-19)")
def test_retarget_x86_ir_to_aarch64():
    asm, note = retarget(X86_IR, find_llc())
    assert asm is not None, note
    c = count(asm, AARCH64_COUNTS)
    assert c["fp_mul"] >= 1                     # the x86 triple, layout and CPU attributes were dropped
    assert "zmm" not in asm and "%rsp" not in asm


@pytest.mark.skipif(find_llc() is None, reason="no llc on PATH (LLVM's llc-19: apt install llvm-19)")
def test_retarget_reports_llc_errors():
    asm, note = retarget("define void @f() {\n  call void @llvm.x86.sse2.pause()\n  ret void\n}\n", find_llc())
    assert asm is None and note


def test_retarget_reports_an_llc_that_does_not_finish(tmp_path):
    slow = tmp_path / "llc"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    asm, note = retarget(X86_IR, str(slow), timeout=0.5)
    assert asm is None and "did not finish in 0.5 s" in note and "--llc-timeout" in note


@pytest.mark.parametrize("device", ["generic", "cix-p1", "x86-proxy"])
def test_each_rule_is_audited_with_an_m_it_routes(device):
    """The audit compiles a rule by calling the op with an M that the table sends to that rule (a decode rule
    with m_max: 3 takes the prefill rule's block_m of 2, say)."""
    from opregistry import registry
    from opregistry.backends.arm.asm_audit import _rule_input
    from opregistry.backends.common.routing import Router

    rules = registry.Registry().build_config("arm", device=device).op("quantized::linear_dynamic").routing
    router = Router(rules, padding=True)
    for rule in rules:
        x = _rule_input(router, rule, 8)
        assert router.route(x.shape[0]).rule.name == rule.name and x.shape[1] == 8
