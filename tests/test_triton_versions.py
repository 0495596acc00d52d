"""The ARM kernels' source under the oldest Triton language users have.

Triton-CPU's upstream ``legacy`` branch is Triton 3.0; the ARM forks are 3.3-3.7;
CI runs 3.9. A construct that 3.9 accepts can break 3.0 (on 3.0 ``tl.where(mask,
q_int8, 0)`` is int32, and ``tl.dot`` then fails "Both operands must be same
type"). This test lowers every kernel variant a routing table can select to
Triton IR with PyPI's ``triton==3.0.0``, in a subprocess that sees only that
Triton (installed once with ``pip install --target`` into pytest's cache
directory, ~0.2 GB, ~10 s; reused by later runs). The kernel files are loaded
by path: the subprocess imports nothing of opregistry.

PyPI's 3.0 front end asserts ``tl.dot`` tiles of >= 16 rows (a GPU limit; the
CPU backend's ``min_dot_size`` is its own), so ``dot`` variants are lowered with
16-row tiles and ``gemv`` ones with the decode tiles.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = "3.0.0"

LOWER = r'''
import importlib.util, itertools, json, sys
import triton
from triton._C.libtriton import ir
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource

assert triton.__version__ == sys.argv[1], triton.__version__
backend = CUDABackend(GPUTarget("cuda", 90, 32))
options = backend.parse_options({})
codegen = backend.get_codegen_implementation()


def load(path):
    spec = importlib.util.spec_from_file_location("kernel_under_test_" + str(abs(hash(path))), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def lower(fn, types, consts):
    names = fn.arg_names
    constants = {names.index(n): v for n, v in consts.items()}
    signature = {i: types[n] for i, n in enumerate(names) if n not in consts}
    ctx = ir.context()
    ir.load_dialects(ctx)
    backend.load_dialects(ctx)
    mod = ASTSource(fn, signature, constants).make_ir(options, codegen, ctx)
    return str(backend.make_ttir(mod, {}, options))


cases = json.loads(sys.argv[2])
out = []
for case in cases:
    fn = getattr(load(case["file"]), case["kernel"])
    consts = dict(case["consts"])
    for name in case.get("none", ()):
        consts[name] = None
    try:
        ttir = lower(fn, case["types"], consts)
        out.append({"id": case["id"], "ok": True, "dot": "tt.dot" in ttir})
    except Exception as exc:
        msg = str(exc)
        cause = exc.__cause__ or exc.__context__
        if cause is not None:
            msg += " | " + type(cause).__name__ + ": " + str(cause)
        out.append({"id": case["id"], "ok": False, "error": type(exc).__name__ + ": " + msg[-600:]})
print("RESULTS" + json.dumps(out))
'''

QLINEAR_TYPES = {
    "x_ptr": "*fp32", "w_ptr": "*i8", "w_scale_ptr": "*fp32", "w_zp_ptr": "*i32", "w_colsum_ptr": "*i32",
    "bias_ptr": "*fp32", "out_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "LAYOUT_BLOCKS_N": "i32",
    "stride_xm": "i32", "stride_xk": "i32", "stride_om": "i32", "x_scale_arg": "fp32", "x_inv_scale": "fp32",
    "x_zp": "i32",
}


def _qlinear_cases() -> list[dict]:
    cases = []
    tiles = [(16, 64, 32, True), (64, 64, 32, True), (1, 64, 32, False), (4, 64, 32, False), (1, 64, 4, False)]
    for (bm, bn, bk, dot) in tiles:
        for act in (0, 1, 2):                    # per_row, per_tensor, pytorch
            for even in (False, True):
                for extras in (False, True):     # weight zero points + bias + ReLU
                    consts = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, LAYOUT_K=32, LAYOUT_N=64, SCAN_BLOCK_K=128,
                                  EVEN_M=even, EVEN_K=even, EVEN_N=even, ACT=act, HAS_BIAS=extras,
                                  HAS_WZP=extras, RELU=extras, USE_DOT=dot)
                    none = ([] if extras else ["w_zp_ptr", "bias_ptr"]) + ([] if act == 2 else ["w_colsum_ptr"])
                    cases.append({"id": f"qlinear-{bm}x{bn}x{bk}-{'dot' if dot else 'gemv'}-act{act}-"
                                        f"{'even' if even else 'masked'}-{'extras' if extras else 'plain'}",
                                  "file": str(ROOT / "backends/arm/kernel.py"), "kernel": "qlinear_kernel",
                                  "types": QLINEAR_TYPES, "consts": consts, "none": none, "dot": dot})
    return cases


QUANT_TYPES = {"x_ptr": "*fp32", "xq_ptr": "*i8", "scale_ptr": "*fp32", "rowsum_ptr": "*i32", "M": "i32",
               "K": "i32", "K_PAD": "i32", "stride_xm": "i32", "stride_xk": "i32", "stride_qm": "i32",
               "x_scale_arg": "fp32", "x_inv_scale": "fp32", "x_zp": "i32"}
QGEMM_TYPES = {"xq_ptr": "*i8", "scale_ptr": "*fp32", "rowsum_ptr": "*i32", "w_ptr": "*i8", "w_scale_ptr": "*fp32",
               "w_zp_ptr": "*i32", "w_colsum_ptr": "*i32", "bias_ptr": "*fp32", "out_ptr": "*fp32", "M": "i32",
               "N": "i32", "K_PAD": "i32", "LAYOUT_BLOCKS_N": "i32", "stride_qm": "i32", "stride_om": "i32",
               "x_zp": "i32"}


def _prequant_cases() -> list[dict]:
    """The dot_prequant / gemv_prequant kernels (backends/arm/kernel_prequant.py)."""
    path = str(ROOT / "backends/arm/kernel_prequant.py")
    cases = []
    for act in (0, 1, 2):
        for rowsum, rows in ((False, 1), (True, 1), (True, 8)):     # rows per program: compiled 1
            cases.append({"id": f"quantize-act{act}-{'rowsum' if rowsum else 'plain'}-rows{rows}", "file": path,
                          "kernel": "quantize_rows_kernel", "types": QUANT_TYPES,
                          "consts": dict(QBLOCK_M=rows, QBLOCK_K=64, ACT=act, HAS_ROWSUM=rowsum),
                          "none": [] if rowsum else ["rowsum_ptr"], "dot": False})
        for (bm, dot) in ((16, True), (64, True), (4, False), (1, False)):
            for even in (False, True):
                for extras in (False, True):
                    consts = dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=32, LAYOUT_K=32, LAYOUT_N=64, EVEN_M=even,
                                  EVEN_N=even, ACT=act, HAS_BIAS=extras, HAS_WZP=extras, RELU=extras, USE_DOT=dot)
                    none = ([] if extras else ["rowsum_ptr", "w_zp_ptr", "bias_ptr"]) + \
                        ([] if act == 2 else ["w_colsum_ptr"])
                    cases.append({"id": f"qgemm-{bm}x64x32-{'dot' if dot else 'gemv'}-act{act}-"
                                        f"{'even' if even else 'masked'}-{'extras' if extras else 'plain'}",
                                  "file": path, "kernel": "qgemm_kernel", "types": QGEMM_TYPES, "consts": consts,
                                  "none": none, "dot": dot})
    return cases


INT_MM_TYPES = {"a_ptr": "*i8", "b_ptr": "*i8", "b_colsum_ptr": "*i32", "c_ptr": "*i32", "M": "i32", "N": "i32",
                "K": "i32", "LAYOUT_BLOCKS_N": "i32", "stride_am": "i32", "stride_ak": "i32", "stride_bk": "i32",
                "stride_bn": "i32", "stride_cm": "i32"}


def _int_mm_cases() -> list[dict]:
    """The aten::_int_mm kernel (backends/arm/int_mm_kernel.py): tl.dot, dot-free fp32, dot-free int32."""
    cases = []
    for (bm, bk, dot, fp32) in ((16, 32, True, False), (1, 32, False, True), (4, 32, False, True),
                                (1, 32, False, False)):
        for even in (False, True):
            for unsigned, tiled, k_contiguous in ((False, True, False), (True, False, False), (True, False, True)):
                types = {**INT_MM_TYPES, "a_ptr": "*u8" if unsigned else "*i8"}
                consts = dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=bk, LAYOUT_K=32, LAYOUT_N=64, EVEN_M=even,
                              EVEN_K=even, EVEN_N=even, A_UNSIGNED=unsigned, B_TILED=tiled,
                              B_K_CONTIGUOUS=k_contiguous, USE_DOT=dot, GEMV_FP32=fp32)
                b_form = "tiled" if tiled else "kmajor" if k_contiguous else "strided"
                cases.append({"id": f"int_mm-{bm}x64x{bk}-{'dot' if dot else 'fp32' if fp32 else 'int32'}-"
                                    f"{'even' if even else 'masked'}-{'u8' if unsigned else 'i8'}-{b_form}",
                              "file": str(ROOT / "backends/arm/int_mm_kernel.py"), "kernel": "int_mm_kernel",
                              "types": types, "consts": consts, "none": [] if unsigned else ["b_colsum_ptr"],
                              "dot": dot})
    return cases


@pytest.fixture(scope="module")
def triton_30(request, tmp_path_factory) -> Path:
    """A directory holding only PyPI's triton 3.0.0 (cached across runs)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        # The wheel holds a compiled libtriton; PyPI's aarch64 triton wheels start at 3.5.0.
        pytest.skip(f"PyPI has no triton {VERSION} wheel for {platform.machine()}; this lowering is checked on x86_64")
    cache = getattr(request.config, "cache", None)
    base = cache.mkdir(f"triton-{VERSION}") if cache is not None else tmp_path_factory.mktemp(f"triton-{VERSION}")
    target = Path(base) / "site"
    marker = target / f"triton-{VERSION}.dist-info" / "METADATA"
    if not marker.exists():
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile",
                               "--disable-pip-version-check", "--target", str(target), f"triton=={VERSION}"],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"pip install triton=={VERSION} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return target


def test_every_kernel_variant_lowers_under_triton_3_0(triton_30):
    cases = _qlinear_cases() + _prequant_cases() + _int_mm_cases()
    env = {**os.environ, "PYTHONPATH": str(triton_30), "PYTHONNOUSERSITE": "1"}
    env.pop("TRITON_INTERPRET", None)
    payload = [{k: v for k, v in c.items() if k != "dot"} for c in cases]
    done = subprocess.run([sys.executable, "-c", LOWER, VERSION, json.dumps(payload)], capture_output=True,
                          text=True, env=env, cwd=str(triton_30), timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS")]
    assert done.returncode == 0 and lines, f"lowering under triton {VERSION} crashed:\n{done.stderr[-3000:]}"
    results = {r["id"]: r for r in json.loads(lines[-1][len("RESULTS"):])}
    failed = {i: r["error"] for i, r in results.items() if not r["ok"]}
    assert not failed, f"{len(failed)} of {len(cases)} variants do not lower under triton {VERSION}:\n" + \
        "\n".join(f"{i}: {e}" for i, e in failed.items())
    for case in cases:
        assert results[case["id"]]["dot"] == case["dot"], case["id"]   # tl.dot exactly where asked for
    assert len(results) == len(cases) >= 100
