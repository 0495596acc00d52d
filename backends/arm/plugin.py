"""Plugin hooks of the ARM backend (Triton-CPU int8 kernels)."""

from __future__ import annotations

from opregistry.registry import Availability, BackendInfo, BackendUnavailable, hookimpl
from opregistry.registry.errors import option

from opregistry.backends.common import LINEAR_OPS
from opregistry.backends.common.engines import warn_if_engine_cannot_pack
from opregistry.backends.common.interpreter import interpreter_status
from opregistry.backends.common.packaged import packaged_config, require_routing
from opregistry.backends.common.packaged import packaged_devices as common_packaged_devices
from opregistry.backends.common.plugin import RuntimePlugin

from .device import (compiled_unavailable_reason, detect_device, read_cpuinfo, triton_cpu_status,
                     warn_if_proxy)
from .config import INT_MM, read_op_config, tune_candidates

NAME = "arm"


def packaged_devices() -> list[str]:
    return common_packaged_devices(NAME)


class ArmPlugin(RuntimePlugin):
    """Hooks of the ARM backend. The registry makes one instance, which owns the
    :class:`ArmRuntime` of the enabled config between enable and disable."""

    @hookimpl
    def opregistry_backend_info(self):
        return BackendInfo(NAME, LINEAR_OPS + (INT_MM,),
                           "Triton-CPU int8 (i8mm) dynamic-quantized linear and aten::_int_mm for ARM64; "
                           "runs anywhere through Triton's interpreter for validation")

    @hookimpl
    def opregistry_backend_availability(self, backend):
        status = triton_cpu_status()
        reason = compiled_unavailable_reason("auto", status)
        if reason is None:
            return Availability(True)
        usable, detail = interpreter_status()
        fallback = (f"{option('execution', 'interpreter')} runs the kernels for validation only" if usable
                    else f"nor can it run interpreted: {detail}")
        if status.active:       # Triton-CPU here, but auto does not select it on this host
            return Availability(False, f"{reason.removeprefix('arm backend: ')} {fallback}")
        return Availability(False, f"{status.detail}; {fallback}")

    @hookimpl
    def opregistry_packaged_config(self, backend, device):
        return packaged_config(NAME, device or detect_device(read_cpuinfo()))

    @hookimpl
    def opregistry_register_commands(self, subparsers):
        from .cli import add_commands   # `opregistry warmup`, `opregistry asm`

        add_commands(subparsers)

    @hookimpl
    def opregistry_op_config(self, backend, op, settings):
        return read_op_config(settings, op)

    @hookimpl
    def opregistry_validate_config(self, backend, config):
        require_routing(config)

    @hookimpl
    def opregistry_tune_candidates(self, backend, op, config):
        return tune_candidates(config.op(op), op)

    def make_runtime(self, config):
        _check_execution(config.execution)
        warn_if_engine_cannot_pack()
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
    reason = compiled_unavailable_reason(mode)
    if reason is not None:
        raise BackendUnavailable(reason)
    warn_if_proxy()
