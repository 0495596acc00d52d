"""The ARM kernel source through a real Triton compiler, offline.

CI has no ARM host and no GPU, but Triton's wheel carries its NVIDIA code
generator (ptxas included): compiling the kernel for sm_90 proves the source
type-checks and lowers under the real compiler, not only the interpreter.
(Running it on an H100 is tools/gpu_check_arm.py; see docs/ARM.md.)
"""

from __future__ import annotations

import pytest
import triton

from opregistry.backends.arm.kernel import ACT_PYTORCH, ACT_PER_ROW, ACT_PER_TENSOR, qlinear_kernel

if "nvidia" not in triton.backends.backends:
    pytest.skip("this Triton build has no NVIDIA code generator to compile with", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

POINTERS = {"x_ptr": "*fp32", "w_ptr": "*i8", "w_scale_ptr": "*fp32", "w_zp_ptr": "*i32", "w_colsum_ptr": "*i32",
            "bias_ptr": "*fp32", "out_ptr": "*fp32"}
SCALARS = {"M": "i32", "N": "i32", "K": "i32", "LAYOUT_BLOCKS_N": "i32", "stride_xm": "i32", "stride_xk": "i32",
           "stride_om": "i32", "x_scale_arg": "fp32", "x_inv_scale": "fp32", "x_zp": "i32"}


def compile_variant(block_m, block_k, use_dot, act, with_zp_and_bias):
    constexprs = dict(BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=block_k, LAYOUT_K=32, LAYOUT_N=64, SCAN_BLOCK_K=128,
                      EVEN_M=False, EVEN_K=False, EVEN_N=False, ACT=act, HAS_BIAS=with_zp_and_bias,
                      HAS_WZP=with_zp_and_bias, RELU=True, USE_DOT=use_dot)
    signature = {**POINTERS, **SCALARS, **{c: "constexpr" for c in constexprs}}
    absent = ([] if with_zp_and_bias else ["w_zp_ptr", "bias_ptr"]) + ([] if act == ACT_PYTORCH else ["w_colsum_ptr"])
    for name in absent:
        signature[name] = "constexpr"
        constexprs[name] = None
    return triton.compile(ASTSource(qlinear_kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32))


@pytest.mark.parametrize("block_m, block_k, use_dot, act, with_zp_and_bias", [
    (16, 32, True, ACT_PER_ROW, True),        # tensor-core int8 dot, fused per-row quantization
    (64, 32, True, ACT_PER_TENSOR, False),    # prefill tile, per-tensor scale, symmetric weight
    (16, 32, True, ACT_PYTORCH, True),         # PyTorch's asymmetric uint8 activations
    (1, 32, False, ACT_PER_ROW, True),        # dot-free decode variant
])
def test_kernel_compiles_for_sm90(block_m, block_k, use_dot, act, with_zp_and_bias):
    kernel = compile_variant(block_m, block_k, use_dot, act, with_zp_and_bias)
    ptx = kernel.asm["ptx"]
    assert ".entry qlinear_kernel" in ptx
    assert ("mma" in ptx) == use_dot             # int8 tl.dot lowers to tensor-core MMA


def compile_prequant(kernel_name, constexprs, types, absent):
    from opregistry.backends.arm import kernel_prequant

    fn = getattr(kernel_prequant, kernel_name)
    signature = {**types, **{c: "constexpr" for c in constexprs}}
    constexprs = dict(constexprs)
    for name in absent:
        signature[name] = "constexpr"
        constexprs[name] = None
    return triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32))


QUANT_TYPES = {"x_ptr": "*fp32", "xq_ptr": "*i8", "scale_ptr": "*fp32", "rowsum_ptr": "*i32", "M": "i32", "K": "i32",
               "K_PAD": "i32", "stride_xm": "i32", "stride_xk": "i32", "stride_qm": "i32", "x_scale_arg": "fp32",
               "x_inv_scale": "fp32", "x_zp": "i32"}
QGEMM_TYPES = {"xq_ptr": "*i8", "scale_ptr": "*fp32", "rowsum_ptr": "*i32", "w_ptr": "*i8", "w_scale_ptr": "*fp32",
               "w_zp_ptr": "*i32", "w_colsum_ptr": "*i32", "bias_ptr": "*fp32", "out_ptr": "*fp32", "M": "i32",
               "N": "i32", "K_PAD": "i32", "LAYOUT_BLOCKS_N": "i32", "stride_qm": "i32", "stride_om": "i32",
               "x_zp": "i32"}


@pytest.mark.parametrize("act", [ACT_PER_ROW, ACT_PYTORCH])
def test_prequant_kernels_compile_for_sm90(act):
    """dot_prequant: the quantization pass, and a GEMM whose int8 A tile is a plain load."""
    quant = compile_prequant("quantize_rows_kernel", dict(QBLOCK_M=1, QBLOCK_K=64, ACT=act, HAS_ROWSUM=True), QUANT_TYPES, [])
    assert ".entry quantize_rows_kernel" in quant.asm["ptx"]
    gemm = compile_prequant("qgemm_kernel", dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=32, LAYOUT_K=32, LAYOUT_N=64,
                                                 EVEN_M=False, EVEN_N=False, ACT=act, HAS_BIAS=True, HAS_WZP=True,
                                                 RELU=True, USE_DOT=True),
                            QGEMM_TYPES, [] if act == ACT_PYTORCH else ["w_colsum_ptr"])
    assert "mma" in gemm.asm["ptx"]
