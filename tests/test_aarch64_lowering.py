"""The ARM kernels lowered for aarch64 by this host's Triton-CPU (backends/arm/aarch64.py), and, where the
cross tools and qemu are installed, linked and executed as aarch64 machine code (tools/aarch64/aot.py) and
compared with the reference backend. Compiled tier: needs an active Triton-CPU
(``TRITON_CPU_BACKEND=1 pytest --arm-execution=compiled``); skipped with the reason elsewhere."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

from conftest import ARM_EXECUTION

pytestmark = pytest.mark.skipif(ARM_EXECUTION != "compiled",
                                reason="lowers compiled kernels: the compiled tier (--arm-execution=compiled)")

AOT = Path(__file__).resolve().parents[1] / "tools" / "aarch64" / "aot.py"
X86_MNEMONICS = re.compile(r"^\s+(?:v?p(?:add|mul|shuf)|vmov|vfmadd|movq|%[re]?[a-d]x)\b", re.M)


def _aot():
    spec = importlib.util.spec_from_file_location("opregistry_aot", AOT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def aot():
    return _aot()


def _record_one_call(aot, device="generic", op="quantized::linear_dynamic", m=1):
    import torch
    from opregistry.testing import make_packed

    runtime = aot._runtime(device, op, "per_row")
    rec = aot.Recorder()
    packed = make_packed(20, 48, seed=3)
    x = torch.randn(m, 48)
    with rec.recording():
        y = runtime.runners[op].run(x, packed)
    return rec, x, packed, y


def test_lowered_kernels_are_aarch64_code_with_neon(aot):
    from opregistry.backends.arm.aarch64 import Aarch64Lowering

    rec, *_ = _record_one_call(aot)
    assert rec.launches, "the call launched no kernel"
    lowering = Aarch64Lowering()
    for launch in rec.launches:
        asm, name, params = lowering.lower(launch.ck.asm["ttcir"])
        assert name == launch.ck.metadata.name
        assert params[-6:] == ["i32"] * 6                 # program ids and grid sizes, as the launcher passes
        assert re.search(r"\bv\d+\.(?:4s|16b|8h|2d)\b", asm), f"{name}: no 128-bit NEON register in the code"
        assert not X86_MNEMONICS.search(asm), f"{name}: x86 instructions in aarch64 code"
        assert not re.search(r"\bSleef_", asm), f"{name}: AVX-512-sized vector-library calls"


@pytest.mark.skipif(not all(shutil.which(t) for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64-static")),
                    reason="needs gcc-aarch64-linux-gnu and qemu-user-static (Debian packages)")
@pytest.mark.parametrize("device, op, m", [("generic", "quantized::linear_dynamic", 1),
                                           ("generic", "quantized::linear_dynamic", 9),
                                           ("cix-p1", "quantized::linear_relu_dynamic", 2),
                                           ("generic", "aten::_int_mm", 3)])
def test_executed_under_qemu_within_the_bound(aot, tmp_path, device, op, m):
    from opregistry.backends.arm.aarch64 import Aarch64Lowering

    runtime = aot._runtime(device, op, None if op == "aten::_int_mm" else "per_row")
    outcome = aot.run_case(runtime, device, op, None if op == "aten::_int_mm" else "per_row", m, 37, 70,
                           Aarch64Lowering(), tmp_path, None)
    assert outcome is not None and outcome.ok, outcome
