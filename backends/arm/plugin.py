"""Plugin hooks of the ARM backend (Triton-CPU int8 kernels)."""

from __future__ import annotations

from importlib.resources import files

from opregistry.registry import Availability, BackendInfo, BackendUnavailable, ConfigError, hookimpl

from opregistry.backends.common import LINEAR_OPS
from opregistry.backends.common.interpreter import interpreter_status
from opregistry.backends.common.plugin import RuntimePlugin

from .device import detect_device, read_cpuinfo, triton_cpu_status
from .config import read_op_config

NAME = "arm"
_CONFIG_DIR = files("opregistry.configs") / NAME


def packaged_devices() -> list[str]:
    return sorted(p.name[:-5] for p in _CONFIG_DIR.iterdir() if p.name.endswith(".yaml"))


class ArmPlugin(RuntimePlugin):
    """Hooks of the ARM backend. The registry makes one instance, which owns the
    :class:`ArmRuntime` of the enabled config between enable and disable."""

    @hookimpl
    def opregistry_backend_info(self):
        return BackendInfo(NAME, LINEAR_OPS,
                           "Triton-CPU int8 (i8mm) dynamic-quantized linear for ARM64; "
                           "runs anywhere through Triton's interpreter for validation")

    @hookimpl
    def opregistry_backend_availability(self, backend):
        status = triton_cpu_status()
        if status.active:
            return Availability(True)
        usable, detail = interpreter_status()
        fallback = ("execution='interpreter' runs the kernels for validation only" if usable
                    else f"nor can it run interpreted: {detail}")
        return Availability(False, f"{status.detail}; {fallback}")

    @hookimpl
    def opregistry_packaged_config(self, backend, device):
        name = device or detect_device(read_cpuinfo())
        path = _CONFIG_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError("<arm configs>", "device",
                              f"no packaged config for device {name!r}; available: {', '.join(packaged_devices())}")
        return path

    @hookimpl
    def opregistry_op_config(self, backend, op, settings):
        return read_op_config(settings)

    @hookimpl
    def opregistry_validate_config(self, backend, config):
        for op_name, op in config.ops.items():
            if op.enabled and not op.routing:
                key = f"ops.{op_name}.routing"
                raise ConfigError(config.source_of(key), key, "missing: an enabled op needs a routing table")

    def make_runtime(self, config):
        _check_execution(config.execution)
        from .runtime import ArmRuntime   # imports triton: only once it is known to be usable

        return ArmRuntime(config)


def _check_execution(mode: str) -> None:
    """Raise :class:`BackendUnavailable` saying what was found and what to do,
    before anything imports triton."""
    if mode == "interpreter":
        usable, detail = interpreter_status()
        if not usable:
            raise BackendUnavailable(f"arm backend: {detail}")
        return
    status = triton_cpu_status()
    if not status.active:
        raise BackendUnavailable(
            f"arm backend: execution={mode!r} needs Triton-CPU, which is not usable here: {status.detail}. "
            "Install Triton-CPU (built from source: see docs/ARM.md) and set TRITON_CPU_BACKEND=1, "
            "or pass execution='interpreter' to run the same kernels through Triton's interpreter "
            "(slow; for validation).")
