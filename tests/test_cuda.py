"""CUDA backend: config validation, registration, availability (any host);
kernel correctness through Triton's interpreter on CPU tensors (any host with
Triton >= 3.8); ahead-of-time compilation for sm_90 (any host whose Triton has
the NVIDIA backend); and the same correctness on a real GPU (skipped without one).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch

from opregistry import registry
from opregistry.registry import BackendUnavailable, ConfigError
from opregistry.registry.core import Registry
from opregistry.registry.plugins import Plugins

from opregistry.backends.cuda import kernels as K
from opregistry.backends.cuda.config import ATOMIC_KERNELS, DETERMINISTIC_KERNEL, CudaRule, validate_rule
from opregistry.backends.cuda.device import table_for
from opregistry.backends.cuda.plugin import CudaPlugin
from opregistry.backends.cuda.runtime import (KERNELS, CudaRuntime, cuda_status, deterministic_rule, prepass_shape,
                                              split_k_for)
from opregistry.backends.common import unpack_weight
from opregistry.backends.common.interpreter import interpreter_status
from opregistry.testing import check, contract_tolerance, make_packed
from opregistry.backends.reference import plugin as reference_plugin
from opregistry.backends.reference.ops import linear_dynamic as reference_linear

ROOT = Path(__file__).resolve().parents[1]
LINEAR = "quantized::linear_dynamic"
LINEAR_RELU = "quantized::linear_relu_dynamic"

CUDA_OK, CUDA_DETAIL = cuda_status()
needs_gpu = pytest.mark.skipif(not CUDA_OK, reason=f"no CUDA device: {CUDA_DETAIL}")


# Older interpreters fail with numpy 2.x; the GPU tests cover the same cases natively there.
INTERPRETER_OK, INTERPRETER_DETAIL = interpreter_status()
INTERPRETER_DETAIL = registry.errors.render(INTERPRETER_DETAIL)      # a reason shown to a Python user
needs_interpreter = pytest.mark.skipif(not INTERPRETER_OK, reason=INTERPRETER_DETAIL)

# Per-element bound vs the float64 reference (opregistry.testing): the integer sum is
# exact, so an element may differ only by fp32 rounding of the epilogue and of split-K /
# stream-K partial sums added in another order (relative GPU_EPILOGUE_REL of the
# magnitudes summed), plus one activation quantum where an input sits on a rounding tie.
GPU_EPILOGUE_REL = 1e-5


def _plugins() -> Plugins:
    p = Plugins(strict=True)
    p.register(CudaPlugin, name="cuda", distribution="opregistry")
    p.register(reference_plugin, name="reference", distribution="opregistry")
    return p


@pytest.fixture
def reg():
    r = Registry(_plugins())
    yield r
    r.disable()


def packed_weight(n, k, *, bias=True, per_channel=False, zero_point=False, seed=0):
    return make_packed(n, k, bias=bias, per_channel=per_channel, zero_points=zero_point, seed=seed)


def check_close(y, x, wp, label="", *, relu=False, mode="per_row"):
    """``y`` (the op on ``x``) against the reference, element by element."""
    assert y.dtype == torch.float32
    ok, worst, note = check(y, x, wp, relu=relu, mode=mode, rel=GPU_EPILOGUE_REL)
    assert ok, f"{label}: {note} (worst err/bound {worst:.3g})"


def test_per_element_bound_catches_one_wrong_element():
    """The bound is per element: one element off by 3 bounds fails while the whole tensor's norm would pass."""
    wp = packed_weight(64, 300, per_channel=True)
    x = torch.randn(4, 300)
    y = reference_linear(x, wp)
    assert check(y, x, wp, rel=GPU_EPILOGUE_REL)[0]
    bound = contract_tolerance(x, unpack_weight(wp), rel=GPU_EPILOGUE_REL)
    bad = y.clone()
    bad[2, 5] += float(3 * bound[2, 5])
    assert ((bad - y).norm() / y.norm()) < 1e-3
    ok, worst, note = check(bad, x, wp, rel=GPU_EPILOGUE_REL)
    assert not ok and worst > 2 and note.startswith("1 elements beyond tolerance")
    nan = y.clone()
    nan[0, 0] = float("nan")
    assert not check(nan, x, wp, rel=GPU_EPILOGUE_REL)[0]


# ---------------------------------------------------------------------------
# Packaging, registration, availability, config validation (any host)
# ---------------------------------------------------------------------------

def test_pyproject_declares_backend():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (meta["project"]["entry-points"]["opregistry.backends"]["cuda"]
            == "opregistry.backends.cuda.plugin:CudaPlugin")
    assert "opregistry.backends.cuda" in meta["tool"]["setuptools"]["packages"]


def test_backend_info_and_availability_reason(reg):
    rows = {r["name"]: r for r in reg.backends()}
    cuda = rows["cuda"]
    assert set(cuda["ops"]) == {LINEAR, LINEAR_RELU}
    assert cuda["available"] == CUDA_OK
    if not CUDA_OK:
        assert cuda["reason"] and "interpreter" in cuda["reason"]


@pytest.mark.skipif(CUDA_OK, reason="checks the error raised on a host without CUDA")
def test_enable_without_cuda_is_clear(reg):
    with pytest.raises(BackendUnavailable, match="needs a CUDA device"):
        reg.enable("cuda")
    assert reg.installed_library_count() == 0


PACKAGED = ["default", "sm90", "h100", "h200"]


@pytest.mark.parametrize("device", PACKAGED)
def test_packaged_configs_validate(reg, device):
    cfg = reg.build_config("cuda", device=device)
    assert cfg.device == device
    for op in (LINEAR, LINEAR_RELU):
        rules = cfg.op(op).routing + cfg.op(op).small_routing
        assert rules and all(r.kernel in KERNELS for r in rules)


@pytest.mark.parametrize("name, cc, mem, table", [
    ("NVIDIA H200", (9, 0), 141 * 2**30, "h200"),
    ("NVIDIA H200 NVL", (9, 0), 141 * 2**30, "h200"),
    ("NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30, "h100"),
    ("NVIDIA H100 PCIe", (9, 0), 80 * 2**30, "h100"),
    ("NVIDIA GH200 480GB", (9, 0), 96 * 2**30, "h100"),
    ("NVIDIA GH200 144G HBM3e", (9, 0), 144 * 2**30, "h200"),
    ("NVIDIA H800", (9, 0), 80 * 2**30, "sm90"),
    ("NVIDIA H20", (9, 0), 96 * 2**30, "sm90"),
    ("NVIDIA A100-SXM4-80GB", (8, 0), 80 * 2**30, "default"),
    ("NVIDIA B200", (10, 0), 180 * 2**30, "default"),
])
def test_device_table_by_name_and_capability(name, cc, mem, table):
    assert table_for(name, cc, mem) == table


def test_small_weights_table(reg):
    small = {"max_bytes": 1000, "routing": [
        {"name": "tiny", "when": {"m_max": 4}, "kernel": "dot_fused", "block_m": 16, "block_n": 16, "block_k": 64},
        {"name": "tiny-rest", "kernel": "dot", "block_m": 16, "block_n": 32, "block_k": 64}]}
    cfg = reg.build_config("cuda", device="default", ops={LINEAR: {"small_weights": small}})
    op = cfg.op(LINEAR)
    assert op.small_max_bytes == 1000 and [r.name for r in op.small_routing] == ["tiny", "tiny-rest"]
    with pytest.raises(ConfigError, match="small_weights.*expected both"):
        reg.build_config("cuda", device="default", ops={LINEAR: {"small_weights": {"max_bytes": 10}}})
    with pytest.raises(ConfigError, match="small_weights.routing"):
        reg.build_config("cuda", device="default", ops={LINEAR: {"small_weights": {
            "max_bytes": 10, "routing": [{"name": "a", "when": {"m_max": 4}, "kernel": "dot",
                                          "block_m": 16, "block_n": 16, "block_k": 32}]}}})


def test_unknown_device(reg):
    with pytest.raises(ConfigError, match="no packaged config for device 'tpu'"):
        reg.build_config("cuda", device="tpu")


def _rule(**kw):
    base = dict(name="r", kernel="dot", block_m=64, block_n=64, block_k=64)
    base.update(kw)
    return {k: v for k, v in base.items()}


@pytest.mark.parametrize("rule, message", [
    (_rule(kernel="tiled"), "expected one of dot"),
    (_rule(block_k=16), "block_k >= 32"),
    (_rule(block_m=8), "block_m >= 16"),
    (_rule(kernel="dot_splitk", block_n=8), "block_n >= 16"),
    (_rule(block_n=512), "at most 256"),
    (_rule(block_k=1024), "at most 512"),
    (_rule(num_warps=3), "num_warps"),
    (_rule(pad_m=True), "pad_m: unknown key for a cuda routing rule"),
    (_rule(block_m=256, block_n=256, block_k=256, num_stages=4), "shared memory"),
    (_rule(kernel="gemv_fused", block_m=4, block_n=64, block_k=512, num_warps=4), "registers"),
])
def test_rule_limits(reg, rule, message):
    ops = {LINEAR: {"routing": [rule]}}
    with pytest.raises(ConfigError, match=message) as info:
        reg.build_config("cuda", device="default", ops=ops)
    assert "<keyword overrides>" in str(info.value) and "routing[0]" in str(info.value)


def test_weight_layout_rejected(reg):
    with pytest.raises(ConfigError, match="weight_layout: unknown key for the cuda backend"):
        reg.build_config("cuda", device="default", ops={LINEAR: {"weight_layout": {"block_k": 32}}})


def test_gemv_small_tiles_allowed():
    validate_rule("<test>", "r", CudaRule("r", "gemv_fused", block_m=1, block_n=16, block_k=512, num_warps=4))
    validate_rule("<test>", "r", CudaRule("r", "gemv_fused", block_m=2, block_n=8, block_k=256, num_warps=4))


def test_fused_dot_shared_memory_counts_fp32_activations():
    validate_rule("<test>", "r", CudaRule("r", "dot_fused", block_m=16, block_n=64, block_k=256, num_stages=4))
    with pytest.raises(ConfigError, match="shared memory"):
        validate_rule("<test>", "r", CudaRule("r", "dot_fused", block_m=64, block_n=128, block_k=256,
                                              num_stages=3))


def test_split_k_heuristic():
    assert split_k_for(tiles=300, k_blocks=16, target_programs=264) == 1
    assert split_k_for(tiles=32, k_blocks=16, target_programs=264) == 9
    assert split_k_for(tiles=1, k_blocks=4, target_programs=264) == 4


# ---------------------------------------------------------------------------
# Kernel correctness through the interpreter (CPU tensors)
# ---------------------------------------------------------------------------

def _r(name, kernel, bm, bn, bk, **kw):
    return CudaRule(name, kernel, block_m=bm, block_n=bn, block_k=bk, **kw)


INTERP_RULES = [
    _r("gemv_fused", "gemv_fused", 1, 16, 64),
    _r("gemv_fused_m2", "gemv_fused", 2, 16, 32),
    _r("dot", "dot", 16, 32, 64),
    _r("dot_splitk", "dot_splitk", 16, 32, 64),
    _r("dot_streamk", "dot_streamk", 16, 32, 64),
    _r("dot_streamk_fused", "dot_streamk_fused", 16, 32, 64),   # the interpreter runs it as two launches
    _r("dot_fused", "dot_fused", 16, 16, 64),
]

# (m, n, k, weight kwargs): odd N/K, per-channel with zero points, no bias, M edge.
INTERP_CASES = [
    (1, 37, 70, {}),
    (3, 50, 129, {"per_channel": True, "zero_point": True}),
    (17, 33, 600, {"zero_point": True, "bias": False}),
]


@pytest.fixture(scope="module")
def interp_runtime():
    r = Registry(_plugins())
    return CudaRuntime(r.build_config("cuda", device="default", execution="interpreter"))


@needs_interpreter
@pytest.mark.parametrize("rule", INTERP_RULES, ids=lambda r: r.name)
@pytest.mark.parametrize("case", range(len(INTERP_CASES)))
@pytest.mark.parametrize("mode", ["per_row", "per_tensor"])
def test_interpreted_kernels_match_reference(interp_runtime, rule, case, mode):
    m, n, k, wkw = INTERP_CASES[case]
    wp = packed_weight(n, k, seed=case, **wkw)
    g = torch.Generator().manual_seed(100 + case)
    x = torch.randn(m, k, generator=g) * 3
    x[0, k // 2] = 0.5 * x[0].abs().max() / 127 * 255  # lands on a rounding tie after scaling
    if m > 2:
        x[1, 1] = float("nan")
        x[2].zero_()
    w = interp_runtime.weight(wp, x.device, LINEAR)
    for relu in (False, True):
        y = interp_runtime.linear(x, w, rule, mode == "per_row", relu)
        check_close(y, x, wp, f"{rule.name} case {case} {mode} relu={relu}", relu=relu, mode=mode)


@needs_interpreter
def test_interpreted_dispatcher_path_and_shapes(reg):
    """execution='interpreter' registers on the CPU key: the whole op path on CPU tensors."""
    cfg = reg.enable("cuda", device="default", execution="interpreter")
    assert reg.status()["ops"][LINEAR]["dispatch_key"] == "CPU"
    wp = packed_weight(40, 48, per_channel=True)
    g = torch.Generator().manual_seed(7)
    cases = {
        "m0": torch.randn(0, 48, generator=g),
        "3d": torch.randn(2, 3, 48, generator=g),
        "noncontig": torch.randn(48, 5, generator=g).t(),
        "m2": torch.randn(2, 48, generator=g),
        "m20": torch.randn(20, 48, generator=g),
    }
    for name, x in cases.items():
        for op, relu in ((torch.ops.quantized.linear_dynamic, False), (torch.ops.quantized.linear_relu_dynamic, True)):
            y = op(x, wp, True)
            check_close(y, x, wp, f"{name} relu={relu}", relu=relu)
    status = reg.status()["backends"]["cuda"]
    assert status["execution"] == "interpreter" and status["weight_cache"]["entries"] == 1
    assert cfg.backend == "cuda"
    with pytest.raises(TypeError, match="expected a float32 activation"):
        torch.ops.quantized.linear_dynamic(cases["m2"].double(), wp)
    with pytest.raises(ValueError, match="48"):
        torch.ops.quantized.linear_dynamic(torch.randn(2, 47), wp)
    reg.disable("cuda")
    assert reg.status()["ops"] == {}


# ---------------------------------------------------------------------------
# Ahead-of-time compilation for sm_90 (no GPU needed; Triton's NVIDIA backend + ptxas)
# ---------------------------------------------------------------------------

def _nvidia_compiler_available() -> bool:
    try:
        import triton.backends

        return "nvidia" in triton.backends.backends
    except Exception:  # noqa: BLE001
        return False


# What Triton specializes at launch on the GPU (pointers 16-byte aligned, these ints
# multiples of 16): without it the offline build would not pipeline (no cp.async).
_DIVISIBLE = {"Kp", "stride_qm", "stride_wn", "K_PER_SPLIT", "stride_om", "stride_xm"}


def compile_rule_sm90(rule: CudaRule, *, wzp=False, bias=True, relu=False, split=1, pdl=False, int_acc=False):
    """Compile the kernel a rule launches (and the prepass) for sm_90 with the installed Triton."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)

    def build(fn, types, consts, warps, stages):
        signature = {a: ("constexpr" if a in consts else types[a]) for a in fn.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
                 if a not in consts and (types[a].startswith("*") or a in _DIVISIBLE)}
        return triton.compile(ASTSource(fn, signature, consts, attrs), target=target,
                              options={"num_warps": warps, "num_stages": stages})

    warps, stages = rule.num_warps or 4, rule.num_stages or 3
    vec = {"w_scale_ptr": "*fp32", "w_zp_ptr": "*i32", "bias_ptr": "*fp32", "out_ptr": "*fp32"}
    none = {}
    if not wzp:
        none.update(w_zp_ptr=None, rowsum_ptr=None)
    if not bias:
        none.update(bias_ptr=None)
    flags = dict(HAS_WZP=wzp, HAS_BIAS=bias)
    dot_types = dict(xq_ptr="*i8", xs_ptr="*fp32", rowsum_ptr="*i32", w_ptr="*i8", M="i32", N="i32", Kp="i32",
                     K_PER_SPLIT="i32", stride_qm="i32", stride_wn="i32", stride_om="i32", **vec)
    tiles = dict(BLOCK_M=rule.block_m, BLOCK_N=rule.block_n, BLOCK_K=rule.block_k)
    if int_acc:
        dot_types["out_ptr"] = "*i32"                  # the output's bytes, as the host passes them
    if rule.kernel == "dot_streamk":
        return build(K.streamk_kernel, dot_types, dict(**tiles, **flags, **none, PDL=pdl, INT_ACC=int_acc),
                     warps, stages)
    if rule.kernel == "dot_streamk_fused":
        types = dict(x_ptr="*fp32", absmax_ptr="*fp32", xq_ptr="*i8", xs_ptr="*fp32", part_ptr="*fp32",
                     psum_ptr="*i32", sync_ptr="*i64", w_ptr="*i8", M="i32", N="i32", K="i32", Kp="i32",
                     CHUNK_K="i32", CHUNK_N="i32", CHUNKS="i32", stride_xm="i32", stride_xk="i32", stride_qm="i32",
                     stride_wn="i32", stride_om="i32", **vec)
        if not wzp:
            none.update(psum_ptr=none.pop("rowsum_ptr"))
        consts = dict(**tiles, QBLOCK=2048, CHUNKS_P2=1, PER_ROW=True, absmax_ptr=None, stride_xk=1, **flags, **none)
        return build(K.streamk_fused_kernel, types, consts, warps, stages)
    if rule.kernel in ("dot", "dot_splitk"):
        consts = dict(**tiles, GROUP_M=8, SPLIT_K=split, RELU=relu, **flags, **none, PDL=pdl, INT_ACC=int_acc)
        return build(K.dot_kernel, dot_types, consts, warps, stages)
    none.pop("rowsum_ptr", None)
    types = dict(x_ptr="*fp32", absmax_ptr="*fp32", w_ptr="*i8", M="i32", N="i32", K="i32", Kp="i32",
                 stride_xm="i32", stride_xk="i32", stride_wn="i32", stride_om="i32", **vec)
    consts = dict(**tiles, SCAN_BLOCK_K=512, PER_ROW=True, absmax_ptr=None, RELU=relu, **flags, **none)
    fn = K.fused_dot_kernel if rule.kernel == "dot_fused" else K.gemv_kernel
    return build(fn, types, consts, warps, stages)


def compile_quantize_sm90(block_k, qblock, scan_once, warps, pdl=False, in_regs=False):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = K.quantize_kernel
    types = dict(x_ptr="*fp32", xq_ptr="*i8", scale_ptr="*fp32", rowsum_ptr="*i32", absmax_ptr="*fp32",
                 out_ptr="*fp32", M="i32", K="i32", Kp="i32", N="i32", CHUNK_K="i32", CHUNK_N="i32", stride_xm="i32",
                 stride_xk="i32", stride_qm="i32", stride_om="i32")
    consts = dict(BLOCK_K=block_k, QBLOCK=qblock, SCAN_ONCE=scan_once, PER_ROW=True, WANT_ROWSUM=False,
                  ZERO_OUT=not in_regs, rowsum_ptr=None, absmax_ptr=None, stride_xk=1, PDL=pdl, ROW_IN_REGS=in_regs)
    signature = {a: ("constexpr" if a in consts else types[a]) for a in fn.arg_names}
    return triton.compile(ASTSource(fn, signature, consts), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps, "num_stages": 1})


@pytest.mark.skipif(not _nvidia_compiler_available(), reason="Triton has no NVIDIA backend here")
@pytest.mark.parametrize("device", PACKAGED)
def test_packaged_rules_compile_for_sm90(reg, device):
    cfg = reg.build_config("cuda", device=device)
    op = cfg.op(LINEAR)
    for rule in op.routing + op.small_routing:
        for kw in ({}, {"wzp": True, "relu": True, "bias": False}):
            compiled = compile_rule_sm90(rule, **kw)
            assert compiled.metadata.shared <= 227 * 1024, (rule.name, compiled.metadata.shared)
            ptx = compiled.asm["ptx"]
            if rule.kernel.startswith("dot"):
                assert "mma" in ptx, f"{rule.name}: no tensor-core instruction in the PTX"
                if (rule.num_stages or 3) > 1:
                    assert "cp.async" in ptx, f"{rule.name}: the K loop is not pipelined (no cp.async)"
    for block_k, qblock, scan_once, warps in ((32768, 2048, True, 16), (4096, 4096, True, 8), (4096, 4096, False, 8)):
        assert "ld.global" in compile_quantize_sm90(block_k, qblock, scan_once, warps).asm["ptx"]
    for block_k, warps in ((32768, 16), (4096, 8)):
        compiled = compile_quantize_sm90(block_k, block_k, True, warps, in_regs=True)
        assert "ld.global" in compiled.asm["ptx"] and "st.global" in compiled.asm["ptx"]


@pytest.mark.skipif(not (_nvidia_compiler_available() and K.HAS_GDC), reason="Triton has no NVIDIA backend or no gdc")
def test_pdl_variants_compile_with_grid_dependency_control():
    """With PDL the prepass signals its dependents early and the GEMMs wait for its results."""
    assert "griddepcontrol.launch_dependents" in compile_quantize_sm90(4096, 2048, True, 8, pdl=True).asm["ptx"]
    for rule in (_r("s", "dot_streamk", 16, 64, 256, num_stages=4), _r("d", "dot", 64, 128, 128, num_stages=4)):
        ptx = compile_rule_sm90(rule, pdl=True).asm["ptx"]
        assert "griddepcontrol.wait" in ptx, rule.name
        assert "griddepcontrol" not in compile_rule_sm90(rule).asm["ptx"], rule.name


@pytest.mark.skipif(not _nvidia_compiler_available(), reason="Triton has no NVIDIA backend here")
@pytest.mark.parametrize("per_row, wzp, chunks_p2", [(True, False, 16), (False, True, 16), (True, False, 1)])
def test_streamk_fused_compiles_with_its_handoff(per_row, wzp, chunks_p2):
    """One launch: chunks are published with a release add and awaited with volatile reads
    (the absmax handoff only with several chunks per row); the GEMM's loads come after the wait."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = K.streamk_fused_kernel
    types = dict(x_ptr="*fp32", absmax_ptr="*fp32", xq_ptr="*i8", xs_ptr="*fp32", part_ptr="*fp32",
                 psum_ptr="*i32", sync_ptr="*i64", w_ptr="*i8", w_scale_ptr="*fp32", w_zp_ptr="*i32",
                 bias_ptr="*fp32", out_ptr="*fp32", M="i32", N="i32", K="i32", Kp="i32", CHUNK_K="i32",
                 CHUNK_N="i32", CHUNKS="i32", stride_xm="i32", stride_xk="i32", stride_qm="i32",
                 stride_wn="i32", stride_om="i32")
    consts = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=256, QBLOCK=2048, CHUNKS_P2=chunks_p2, PER_ROW=per_row,
                  HAS_WZP=wzp, HAS_BIAS=True, stride_xk=1)
    if not wzp:
        consts.update(w_zp_ptr=None, psum_ptr=None)
    if per_row:
        consts.update(absmax_ptr=None)
    signature = {a: ("constexpr" if a in consts else types[a]) for a in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if a not in consts and (types[a].startswith("*") or a in _DIVISIBLE)}
    ptx = triton.compile(ASTSource(fn, signature, consts, attrs), target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": 4, "num_stages": 4}).asm["ptx"]
    # the spelling differs between Triton versions (red/atom, order of the qualifiers)
    releases = [a for a in re.findall(r"\b(?:red|atom)\.[\w.]*add\.u64", ptx) if "release" in a]
    assert len(releases) == (2 if per_row and chunks_p2 > 1 else 1), releases
    assert "ld.volatile.global.b64" in ptx and "mma.sync" in ptx and "cp.async" in ptx
    assert ptx.index("ld.volatile.global.b64") < ptx.index("cp.async")


def test_prepass_shapes():
    assert prepass_shape(1, 18944, 18944, False, True) == (32768, True, 2048, 10, False)   # decode: chunks of a row
    assert prepass_shape(16, 18944, 18944, False, True) == (32768, True, 2048, 8, False)  # ... ~128 programs
    assert prepass_shape(8192, 3584, 3584, True, False) == (4096, True, 4096, 1, True)    # row in registers
    assert prepass_shape(8192, 6144, 6144, False, False) == (8192, True, 8192, 1, True)
    assert prepass_shape(8192, 18944, 18944, False, False) == (4096, False, 4096, 1, False)  # two passes
    assert prepass_shape(512, 3584, 3584, False, True) == (4096, True, 4096, 1, False)    # split-K zeroes out
    assert prepass_shape(512, 40000, 40448, False, False)[1:] == (False, 4096, 1, False)  # loop over K tiles


# ---------------------------------------------------------------------------
# GPU (skipped without CUDA)
# ---------------------------------------------------------------------------

GPU_SHAPES = [  # (n, k): Qwen-like layers and odd sizes
    (2048, 2048), (1024, 2048), (6144, 2048), (2048, 6144), (1000, 333), (37, 70),
]
GPU_MS = [1, 2, 3, 8, 16, 17, 64, 100, 512, 2048]


@pytest.fixture
def gpu_reg(reg):
    if not CUDA_OK:
        pytest.skip(f"no CUDA device: {CUDA_DETAIL}")
    reg.enable("cuda")
    assert reg.status()["ops"][LINEAR]["dispatch_key"] == "CUDA"
    return reg


@needs_gpu
@pytest.mark.parametrize("n, k", GPU_SHAPES)
def test_gpu_matches_reference(gpu_reg, n, k):
    wp = packed_weight(n, k, seed=n + k)
    g = torch.Generator().manual_seed(k)
    for m in GPU_MS:
        if n * k > 4_000_000 and m > 512:
            continue  # keep the reference's float64 matmul on the CPU fast
        x = torch.randn(m, k, generator=g)
        for _ in range(2):   # the first call binds the launch plan, the second launches it directly
            y = torch.ops.quantized.linear_dynamic(x.cuda(), wp, True)
            assert y.is_cuda
            check_close(y, x, wp, f"{n}x{k} M={m}")


GPU_RULES = [
    _r("gemv_fused", "gemv_fused", 1, 16, 512),
    _r("gemv_fused_m2", "gemv_fused", 2, 16, 256), _r("dot_splitk", "dot_splitk", 16, 64, 256),
    _r("dot_streamk", "dot_streamk", 16, 64, 256, num_stages=4),
    _r("dot_streamk_64", "dot_streamk", 64, 128, 256, num_stages=3),
    _r("dot_streamk_fused", "dot_streamk_fused", 16, 64, 256, num_stages=4),
    _r("dot_streamk_fused_128", "dot_streamk_fused", 16, 128, 128, num_stages=4),
    _r("dot_64", "dot", 64, 128, 128, num_stages=4), _r("dot_128", "dot", 128, 128, 128, num_warps=8),
    _r("dot_128x256", "dot", 128, 256, 64, num_warps=8, num_stages=4),
    _r("dot_fused_16x16", "dot_fused", 16, 16, 256, num_stages=3),
    _r("dot_fused_16x64", "dot_fused", 16, 64, 128, num_stages=4),
    _r("dot_fused_64", "dot_fused", 64, 64, 128, num_stages=2),
]


@needs_gpu
@pytest.mark.parametrize("rule", GPU_RULES, ids=lambda r: r.name)
@pytest.mark.parametrize("wkw, mode, relu", [
    ({}, "per_row", False),
    ({"per_channel": True, "zero_point": True}, "per_tensor", True),
    ({"zero_point": True, "bias": False}, "per_row", True),
], ids=["per_tensor_w", "per_channel_zp", "zp_nobias"])
def test_gpu_every_kernel_variant(gpu_reg, rule, wkw, mode, relu):
    """Every variant, through the Triton launch (first call), the direct launch, and with PDL off."""
    rt = gpu_reg.plugins.get("cuda").plugin.runtime
    wp = packed_weight(300, 777, **wkw)
    w = rt.weight(wp, torch.device("cuda"), LINEAR)
    g = torch.Generator().manual_seed(3)
    for m in (1, 5, 130):
        x = torch.randn(m, 777, generator=g) * 2
        if m > 2:
            x[1, 4] = float("inf")
            x[2].zero_()
        for fast, pdl in ((True, True), (True, True), (False, False)):
            rt.fast_launch, rt.pdl = fast, pdl
            y = rt.linear(x.cuda(), w, rule, mode == "per_row", relu)
            check_close(y, x, wp, f"{rule.name} M={m} relu={relu} fast={fast} pdl={pdl}", relu=relu, mode=mode)
    rt.fast_launch = rt.pdl = True


@needs_gpu
def test_gpu_direct_launch_is_used_and_graph_safe(gpu_reg):
    """After the first call a plan launches its bound kernels directly; the same calls
    captured in a CUDA graph replay correctly on new inputs."""
    rt = gpu_reg.plugins.get("cuda").plugin.runtime
    wp = packed_weight(4096, 1024, per_channel=True)
    x = torch.randn(4, 1024, device="cuda")
    y0 = torch.ops.quantized.linear_dynamic(x, wp)
    w = rt.weight(wp, x.device, LINEAR)
    plans = list(w.plans.values())
    assert plans and all(launch.bound is not None for plan in plans for launch in plan.launches), \
        "the installed Triton's launcher convention was not recognised: direct launch off"
    y1 = torch.ops.quantized.linear_dynamic(x, wp)
    check_close(y1, x.cpu(), wp, "direct launch")
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.ops.quantized.linear_dynamic(static_x, wp)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        static_y = torch.ops.quantized.linear_dynamic(static_x, wp)
    for seed in range(3):
        new = torch.randn(4, 1024, generator=torch.Generator().manual_seed(seed))
        static_x.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        check_close(static_y.clone(), new, wp, f"graph replay {seed}")
    assert y0.shape == y1.shape


@needs_gpu
@pytest.mark.parametrize("wkw, mode", [({}, "per_row"), ({"per_channel": True, "zero_point": True}, "per_tensor")],
                         ids=["symmetric_per_row", "zp_per_tensor"])
def test_gpu_streamk_fused_repeated_graphs_and_streams(gpu_reg, wkw, mode):
    """The fused decode kernel's counters are never reset: many calls in a row, graph
    replays between eager calls, and a second stream must all stay right."""
    rt = gpu_reg.plugins.get("cuda").plugin.runtime
    rule = _r("fused", "dot_streamk_fused", 16, 64, 256, num_stages=4)
    k = 9000                                            # several chunks per row
    wp = packed_weight(1500, k, seed=4, **wkw)
    w = rt.weight(wp, torch.device("cuda"), LINEAR)
    g = torch.Generator().manual_seed(5)
    per_row = mode == "per_row"
    for m in (1, 3, 16):
        x = torch.randn(m, k, generator=g)
        if m == 3:
            x[1, 7] = float("nan")
        xc = x.cuda()
        plan_kinds = set()
        for i in range(12):
            y = rt.linear(xc, w, rule, per_row, i % 2 == 1)
            check_close(y, x, wp, f"fused M={m} call {i}", relu=i % 2 == 1, mode=mode)
        plan_kinds |= {p.kind for p in w.plans.values()}
        assert "dot_streamk_fused" in plan_kinds
        static_x = xc.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            rt.linear(static_x, w, rule, per_row, False)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                static_y = rt.linear(static_x, w, rule, per_row, False)
        torch.cuda.current_stream().wait_stream(side)
        for seed in range(4):
            new = torch.randn(m, k, generator=torch.Generator().manual_seed(seed))
            static_x.copy_(new)
            graph.replay()
            torch.cuda.synchronize()
            check_close(static_y.clone(), new, wp, f"fused graph replay {seed} M={m}", mode=mode)
            check_close(rt.linear(xc, w, rule, per_row, False), x, wp, f"fused eager after replay {seed}",
                        mode=mode)
        other = torch.cuda.Stream()
        with torch.cuda.stream(other):
            y = rt.linear(xc, w, rule, per_row, False)
        torch.cuda.synchronize()
        check_close(y, x, wp, f"fused on a second stream M={m}", mode=mode)


@needs_gpu
def test_gpu_stub_kernels_launch_nothing(gpu_reg):
    rt = gpu_reg.plugins.get("cuda").plugin.runtime
    wp = packed_weight(256, 512)
    x = torch.randn(2, 512, device="cuda")
    torch.ops.quantized.linear_dynamic(x, wp)
    with rt.stub_kernels():
        y = torch.ops.quantized.linear_dynamic(x, wp)
        assert y.shape == (2, 256)
    check_close(torch.ops.quantized.linear_dynamic(x, wp), x.cpu(), wp, "after the stub")


@needs_gpu
def test_gpu_shapes_relu_3d_noncontiguous_m0(gpu_reg):
    wp = packed_weight(96, 80, per_channel=True)
    g = torch.Generator().manual_seed(11)
    cases = {"m0": torch.randn(0, 80, generator=g), "3d": torch.randn(4, 5, 80, generator=g),
             "noncontig": torch.randn(80, 9, generator=g).t(), "nan": torch.randn(3, 80, generator=g)}
    cases["nan"][1, 2] = float("nan")
    for name, x in cases.items():
        xc = x.cuda() if name != "noncontig" else x.t().contiguous().cuda().t()
        for op, relu in ((torch.ops.quantized.linear_dynamic, False), (torch.ops.quantized.linear_relu_dynamic, True)):
            check_close(op(xc, wp, False), x, wp, f"{name} relu={relu}", relu=relu)


@needs_gpu
def test_gpu_quantize_dynamic_model(reg):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(6, 64)
    with reg.enabled("reference"):
        expected = qmodel(x)
    with pytest.raises(Exception, match="Could not run 'quantized::linear_dynamic'.*CUDA"):
        qmodel(x.cuda())
    with reg.enabled("cuda"):
        y = qmodel(x.cuda())
    # two layers: the first layer's fp32 rounding can move the second's quantization by a quantum
    torch.testing.assert_close(y.cpu(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@needs_gpu
def test_gpu_weight_cache_bounded_and_cleared(reg):
    reg.enable("cuda", weight_cache={"max_bytes": 3 * 512 * 256 + 4096})
    rt = reg.plugins.get("cuda").plugin.runtime
    weights = [packed_weight(200, 300, seed=i) for i in range(4)]
    x = torch.randn(2, 300, device="cuda")
    for wp in weights:
        torch.ops.quantized.linear_dynamic(x, wp)
    stats = rt.cache.stats()
    assert stats["bytes"] <= stats["max_bytes"] and stats["evictions"] >= 1
    reg.disable("cuda")
    assert rt.cache.stats()["entries"] == 0


def test_math_sanity():
    assert K.K_ALIGN % 256 == 0 and K.N_ALIGN % 16 == 0 and math.log2(K.K_ALIGN).is_integer()


# ---------------------------------------------------------------------------
# Deterministic mode: the config key `deterministic` and torch.use_deterministic_algorithms
# ---------------------------------------------------------------------------


@pytest.fixture
def torch_deterministic():
    """Turns torch's switch on for the test (``warn_only`` as the test passes it) and restores it."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())

    def on(warn_only=False):
        torch.use_deterministic_algorithms(True, warn_only=warn_only)

    yield on
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _same_bits(a, b) -> bool:
    """Equal element for element, NaN where the other has NaN (``torch.equal`` says NaN != NaN)."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def test_deterministic_forms_never_add_fp32_atomics():
    """Each kernel's deterministic form is a kernel that sums every output element in one program,
    or an atomic kernel that deterministic mode runs with int32 partials (INT_ACC)."""
    assert set(DETERMINISTIC_KERNEL) == set(KERNELS)
    for kernel, form in DETERMINISTIC_KERNEL.items():
        rule = _r("r", kernel, 16, 32, 64)
        assert deterministic_rule(rule).kernel == form
        assert (deterministic_rule(rule) is rule) == (form == kernel)
    assert DETERMINISTIC_KERNEL["dot_streamk_fused"] == "dot_streamk"   # its in-grid handoff has no INT_ACC form


@needs_interpreter
@pytest.mark.parametrize("rule", INTERP_RULES, ids=lambda r: r.name)
@pytest.mark.parametrize("wkw", [{}, {"per_channel": True, "zero_point": True}], ids=["per_tensor_w", "zp"])
def test_interpreted_deterministic_forms_equal_the_single_pass_kernel(interp_runtime, rule, wkw):
    """In deterministic mode every kernel gives the bits of the single-pass `dot` kernel with the same
    tiles (one program per output tile, K in order): the int32 partials of split-K / stream-K sum to
    exactly the single pass's int32, and the epilogue is the same arithmetic. Without it, the fp32
    partials of those kernels round differently (checked too, so the comparison can tell them apart)."""
    wp = packed_weight(50, 129 * 4, seed=3, **wkw)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 129 * 4, generator=g) * 3
    x[1, 1] = float("nan")
    w = interp_runtime.weight(wp, x.device, LINEAR)
    single = _r("single", "dot", rule.block_m if rule.kernel.startswith("dot") else 16, rule.block_n, 64)
    for relu in (False, True):
        expected = interp_runtime.linear(x, w, single, True, relu)
        y = interp_runtime.linear(x, w, deterministic_rule(rule), True, relu, True)
        assert _same_bits(y, expected), f"{rule.name} relu={relu}"
        check_close(y, x, wp, f"{rule.name} deterministic relu={relu}", relu=relu)
    if rule.kernel in ATOMIC_KERNELS:
        assert not _same_bits(interp_runtime.linear(x, w, rule, True, False), interp_runtime.linear(x, w, single,
                                                                                                   True, False))


@needs_interpreter
@pytest.mark.parametrize("how", ["config_key", "op_key", "torch_switch"])
def test_interpreted_deterministic_mode_routes_to_int32_partials(reg, torch_deterministic, how):
    """The config key (top level or per op) and torch's switch both select the deterministic form:
    the dispatcher and the module give the single-pass kernel's bits; without either, stream-K's."""
    table = {"ops": {op: {"routing": [dict(name="all-streamk", kernel="dot_streamk", block_m=16, block_n=32,
                                           block_k=64)]} for op in (LINEAR, LINEAR_RELU)}}
    overrides = {"device": "default", "execution": "interpreter"}
    if how == "config_key":
        overrides["deterministic"] = True
    elif how == "op_key":
        for op in table["ops"].values():
            op["deterministic"] = True
    else:
        torch_deterministic()
    cfg = reg.enable("cuda", table, **overrides)
    assert cfg.op(LINEAR).deterministic == (how != "torch_switch")
    rt = reg.plugins.get("cuda").plugin.runtime
    wp = packed_weight(40, 600, per_channel=True, zero_point=True, seed=2)
    x = torch.randn(5, 600, generator=torch.Generator().manual_seed(9))
    single = rt.linear(x, rt.weight(wp, x.device, LINEAR), _r("single", "dot", 16, 32, 64), True, False)
    from torch.ao.nn.quantized.dynamic import Linear as DQLinear
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = DQLinear(600, 40, dtype=torch.qint8)
    module._packed_params._packed_params = wp
    ys = [torch.ops.quantized.linear_dynamic(x, wp, True) for _ in range(3)] + [module(x)]
    assert all(_same_bits(y, single) for y in ys)
    paths = reg.status()["ops"][LINEAR]["calls_by_path"]
    assert paths == {"dispatcher": 3, "fast_path": 1}
    expect = "always" if how != "torch_switch" else "under torch.use_deterministic_algorithms"
    assert reg.status()["backends"]["cuda"]["deterministic"][LINEAR] == expect
    if how == "torch_switch":
        torch.use_deterministic_algorithms(False)
        assert not _same_bits(torch.ops.quantized.linear_dynamic(x, wp, True), single)


@needs_interpreter
def test_a_kernel_without_deterministic_form_is_refused_by_name(reg, torch_deterministic, monkeypatch):
    """Deterministic mode refuses a rule whose kernel has no deterministic form, naming the rule: at
    enable() for the config key, at the call (PyTorch's RuntimeError, or its warning with warn_only)
    for torch's switch."""
    monkeypatch.delitem(DETERMINISTIC_KERNEL, "dot_streamk")
    table = {"ops": {op: {"routing": [dict(name="sk", kernel="dot_streamk", block_m=16, block_n=32, block_k=64)]}
                     for op in (LINEAR, LINEAR_RELU)}}
    with pytest.raises(BackendUnavailable, match=r"routing rule 'sk' \(kernel 'dot_streamk'\).*does not have a "
                                                 r"deterministic implementation, but deterministic: true was set"):
        reg.enable("cuda", table, device="default", execution="interpreter", deterministic=True)
    assert reg.installed_library_count() == 0
    reg.enable("cuda", table, device="default", execution="interpreter")
    wp = packed_weight(40, 64)
    x = torch.randn(2, 64)
    torch_deterministic()
    with pytest.raises(RuntimeError, match=r"routing rule 'sk' .*does not have a deterministic implementation, "
                                           r"but you set 'torch.use_deterministic_algorithms\(True\)'"):
        torch.ops.quantized.linear_dynamic(x, wp)
    torch_deterministic(warn_only=True)
    with pytest.warns(UserWarning, match="routing rule 'sk'.*warn_only=True"):
        y = torch.ops.quantized.linear_dynamic(x, wp)
    check_close(y, x, wp, "warn_only runs the rule as it is")


@needs_gpu
@pytest.mark.parametrize("device", PACKAGED)
@pytest.mark.parametrize("how", ["config_key", "torch_switch"])
def test_gpu_every_packaged_rule_is_bitwise_reproducible(reg, torch_deterministic, device, how):
    """Every rule of every packaged table, in deterministic mode: 100 calls through the dispatcher give
    one result bit for bit, the module (fast path) gives the same, and it is within the bound."""
    from torch.ao.nn.quantized.dynamic import Linear as DQLinear

    cfg = reg.build_config("cuda", device=device)
    op = cfg.op(LINEAR)
    if how == "torch_switch":
        torch_deterministic()
    reg.enable("cuda", device=device, deterministic=how == "config_key")
    groups = [(op.small_routing, (2048, 2048))] if op.small_routing else []
    groups.append((op.routing, (4096, 4352) if op.small_routing else (2048, 2048)))   # 17 MiB: the main table
    for rules, (k, n) in groups:
        wp = packed_weight(n, k, per_channel=True, zero_point=True, seed=k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = DQLinear(k, n, dtype=torch.qint8)
        module._packed_params._packed_params = wp
        for rule in rules:
            m = next(m for m in range(1, 5000) if next(r for r in rules if r.matches(m)) is rule)
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).cuda() * 2
            with torch.no_grad():
                ys = [torch.ops.quantized.linear_dynamic(x, wp) for _ in range(100)]
                y_module = module(x)
            differ = sum(not torch.equal(y, ys[0]) for y in ys[1:])
            assert differ == 0, f"{device} {rule.name} ({rule.kernel}) M={m}: {differ}/99 calls differ"
            assert torch.equal(y_module, ys[0]), f"{device} {rule.name} M={m}: module != dispatcher"
            if m <= 64:
                check_close(ys[0].cpu(), x.cpu(), wp, f"{device} {rule.name} M={m}")


@pytest.mark.skipif(not _nvidia_compiler_available(), reason="Triton has no NVIDIA backend here")
@pytest.mark.parametrize("device", PACKAGED)
def test_packaged_deterministic_forms_compile_for_sm90(reg, device):
    """Every packaged rule's deterministic form builds for sm_90: its partial sums are integer atomics
    (no fp32 atomic add left), and the epilogue kernel that finishes them compiles."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    op = reg.build_config("cuda", device=device).op(LINEAR)
    for rule in {deterministic_rule(r) for r in op.routing + op.small_routing}:
        if rule.kernel not in ATOMIC_KERNELS:
            continue
        for wzp in (False, True):
            atomics = {m.group(0) for m in re.finditer(r"\b(?:atom|red)\.global\.[\w.]+",
                                                       compile_rule_sm90(rule, wzp=wzp, split=4, int_acc=True).asm["ptx"])}
            # e.g. red.global.gpu.relaxed.add.u32 (Triton 3.9), never ...add.f32
            assert atomics and all(re.search(r"\.add\.[us]32$", a) for a in atomics), (rule.name, atomics)
    fn = K.int_epilogue_kernel
    types = dict(acc_ptr="*i32", xs_ptr="*fp32", rowsum_ptr="*i32", w_scale_ptr="*fp32", w_zp_ptr="*i32",
                 bias_ptr="*fp32", out_ptr="*fp32", M="i32", N="i32", stride_om="i32")
    consts = dict(BLOCK_M=16, BLOCK_N=256, HAS_WZP=True, HAS_BIAS=True, RELU=True)
    signature = {a: ("constexpr" if a in consts else types[a]) for a in fn.arg_names}
    ptx = triton.compile(ASTSource(fn, signature, consts), target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": 4}).asm["ptx"]
    assert "ld.global" in ptx and "st.global" in ptx and not re.search(r"\b(?:atom|red)\.global", ptx)
