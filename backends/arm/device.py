"""Host detection: which ARM core we run on, and whether Triton-CPU is here."""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass
from pathlib import Path

from opregistry.registry.errors import option

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


def triton_version() -> str | None:
    """The installed distribution's version (even when ``import triton`` fails), or None."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def triton_cpu_status() -> TritonCpuStatus:
    """What Triton this process has, and whether it can compile for the CPU. Never raises."""
    found = triton_version()
    if found is None:
        return TritonCpuStatus(False, False, "triton is not installed (compiled execution needs Triton-CPU, "
                                             "built from source: see docs/ARM.md)")
    try:
        import triton
        import triton.backends
        import triton.language  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return TritonCpuStatus(False, False, f"triton {found} is installed but cannot be imported: "
                                             f"{type(exc).__name__}: {exc}")
    names = sorted(triton.backends.backends)
    if "cpu" not in names:
        return TritonCpuStatus(False, False, f"triton {triton.__version__} has no CPU backend "
                                             f"(backends: {', '.join(names) or 'none'}): it is not Triton-CPU")
    try:
        backend = triton.runtime.driver.active.get_current_target().backend
    except Exception as exc:  # noqa: BLE001
        return TritonCpuStatus(True, False, f"Triton-CPU (triton {triton.__version__}) is installed but no "
                                            f"driver is active: {exc}")
    if backend != "cpu":
        return TritonCpuStatus(True, False, f"Triton-CPU (triton {triton.__version__}) is installed but the "
                                            f"active driver targets {backend!r}; set TRITON_CPU_BACKEND=1 before "
                                            "importing triton, or call triton.runtime.driver.set_active_to_cpu()")
    return TritonCpuStatus(True, True, f"Triton-CPU active (triton {triton.__version__})")


# -- which execution `auto` selects -------------------------------------------
# Triton-CPU also builds and runs on x86_64, but int8 arithmetic is lowered there
# generically (no VNNI): measured 1.2-8x slower than PyTorch's own fbgemm kernel on
# the same host with the table tuned for it (device: x86-proxy), 20-30x with the
# ARM tables' tl.dot prefill rules (docs/BENCHMARKS.md). A validation proxy for
# the ARM kernels, never a silent default.
AUTO_COMPILED_MACHINES = ("aarch64", "arm64")
_proxy_warned = False


def auto_selects_compiled(machine: str | None = None) -> bool:
    """Whether ``execution: auto`` may select compiled kernels on this host."""
    return (machine or platform.machine()) in AUTO_COMPILED_MACHINES


def proxy_note(machine: str | None = None) -> str:
    machine = machine or platform.machine()
    return (f"Triton-CPU on {machine} is a validation proxy for the ARM kernels, not a deployment: it lowers "
            "int8 arithmetic generically (no i8mm/VNNI), 1.2-8x slower than PyTorch's own quantized kernel on "
            "the same host with the table tuned for it (device: x86-proxy), 20-30x with the ARM tables' tl.dot "
            "rules (docs/BENCHMARKS.md)")


def compiled_unavailable_reason(mode: str, status: TritonCpuStatus | None = None,
                                machine: str | None = None) -> str | None:
    """Why ``execution=mode`` (``auto`` or ``compiled``) cannot run compiled kernels
    here, or ``None`` when it can. ``auto`` selects them only on aarch64."""
    status = status or triton_cpu_status()
    if not status.active:
        return (f"arm backend: {option('execution', mode)} needs Triton-CPU, which is not usable here: "
                f"{status.detail}. Install Triton-CPU (built from source: see docs/ARM.md) and set "
                f"TRITON_CPU_BACKEND=1, or pass {option('execution', 'interpreter')} to run the same kernels "
                "through Triton's interpreter (slow; for validation).")
    if mode == "auto" and not auto_selects_compiled(machine):
        return (f"arm backend: {option('execution', 'auto')} selects compiled kernels only on aarch64; here "
                f"{status.detail}, but {proxy_note(machine)}. Pass {option('execution', 'compiled')} to run them "
                f"anyway (with a warning), or {option('execution', 'interpreter')}.")
    return None


def warn_if_proxy(machine: str | None = None) -> None:
    """Once per process: compiled kernels asked for explicitly on a non-ARM host."""
    global _proxy_warned
    if not _proxy_warned and not auto_selects_compiled(machine):
        _proxy_warned = True
        import warnings

        warnings.warn(f"arm backend: execution='compiled' on {machine or platform.machine()}: {proxy_note(machine)}",
                      RuntimeWarning, stacklevel=3)
