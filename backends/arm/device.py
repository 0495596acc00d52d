"""Host detection: which ARM core we run on, and whether Triton-CPU is here."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

# MIDR "CPU part" values (Arm Ltd. implementer 0x41) of cores we know by name.
CORE_NAMES = {
    0xD0C: "neoverse-n1", 0xD40: "neoverse-v1", 0xD49: "neoverse-n2", 0xD4F: "neoverse-v2",
    0xD80: "cortex-a520", 0xD81: "cortex-a720", 0xD87: "cortex-a725", 0xD8E: "neoverse-n3",
}
# Packaged routing tables by core. The CIX P1 table was validated on that SoC's
# Cortex-A720 cluster; other cores get the generic table until one is measured.
DEVICE_BY_CORE = {"cortex-a720": "cix-p1"}
GENERIC_DEVICE = "generic"


@dataclass(frozen=True)
class CpuInfo:
    machine: str
    cores: tuple[str, ...]       # distinct core names (or hex part numbers)
    features: frozenset[str]

    @property
    def is_arm64(self) -> bool:
        return self.machine in ("aarch64", "arm64")

    @property
    def has_i8mm(self) -> bool:
        return "i8mm" in self.features


def read_cpuinfo(text: str | None = None, machine: str | None = None) -> CpuInfo:
    """Parse ``/proc/cpuinfo`` (or ``text``); ``platform.machine()`` is the host check,
    since the LLVM triple reported by some Triton-CPU builds is wrong."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    cores, features = [], set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "cpu part":
            try:
                part = int(value, 16)
            except ValueError:
                continue
            name = CORE_NAMES.get(part, f"0x{part:03x}")
            if name not in cores:
                cores.append(name)
        elif key in ("features", "flags"):
            features.update(value.split())
    return CpuInfo(machine or platform.machine(), tuple(cores), frozenset(features))


def detect_device(info: CpuInfo | None = None) -> str:
    """Name of the packaged config for this host (``configs/arm/<name>.yaml``)."""
    info = info or read_cpuinfo()
    for core in info.cores:
        if core in DEVICE_BY_CORE:
            return DEVICE_BY_CORE[core]
    return GENERIC_DEVICE


@dataclass(frozen=True)
class TritonCpuStatus:
    installed: bool     # a "cpu" backend is registered with Triton
    active: bool        # the active driver targets the CPU
    detail: str


def triton_cpu_status() -> TritonCpuStatus:
    try:
        import triton
        import triton.backends
    except Exception as exc:  # noqa: BLE001
        return TritonCpuStatus(False, False, f"triton cannot be imported: {exc}")
    names = sorted(triton.backends.backends)
    if "cpu" not in names:
        return TritonCpuStatus(False, False, f"triton {triton.__version__} has no CPU backend "
                                             f"(backends: {', '.join(names) or 'none'})")
    try:
        backend = triton.runtime.driver.active.get_current_target().backend
    except Exception as exc:  # noqa: BLE001
        return TritonCpuStatus(True, False, f"Triton-CPU is installed but no driver is active: {exc}")
    if backend != "cpu":
        return TritonCpuStatus(True, False, f"Triton-CPU is installed but the active driver targets "
                                            f"{backend!r}; set TRITON_CPU_BACKEND=1 before importing "
                                            "triton, or call triton.runtime.driver.set_active_to_cpu()")
    return TritonCpuStatus(True, True, f"Triton-CPU active (triton {triton.__version__})")
