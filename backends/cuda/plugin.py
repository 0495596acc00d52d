"""Plugin hooks of the CUDA backend (Triton int8 kernels for NVIDIA GPUs)."""

from __future__ import annotations

from opregistry.registry import Availability, BackendInfo, BackendUnavailable, hookimpl
from opregistry.registry.errors import option

from opregistry.backends.common import LINEAR_OPS
from opregistry.backends.common.interpreter import interpreter_status
from opregistry.backends.common.packaged import packaged_config, require_routing
from opregistry.backends.common.packaged import packaged_devices as common_packaged_devices
from opregistry.backends.common.plugin import RuntimePlugin

from .config import read_op_config
from .device import DEFAULT_DEVICE, cuda_status, detect_device  # noqa: F401 - DEFAULT_DEVICE re-exported

NAME = "cuda"


def packaged_devices() -> list[str]:
    return common_packaged_devices(NAME)


class CudaPlugin(RuntimePlugin):
    """Hooks of the CUDA backend. The registry makes one instance, which owns the
    :class:`CudaRuntime` of the enabled config between enable and disable."""

    @hookimpl
    def opregistry_backend_info(self):
        return BackendInfo(NAME, LINEAR_OPS,
                           "Triton int8 tensor-core / GEMV dynamic-quantized linear for NVIDIA GPUs "
                           "(CUDA tensors; packed weights stay on the CPU)")

    @hookimpl
    def opregistry_backend_availability(self, backend):
        ok, detail = cuda_status()
        if ok:
            return Availability(True)
        return Availability(False, f"{detail}; {option('execution', 'interpreter')} runs the kernels on CPU tensors "
                                   "for validation only")

    @hookimpl
    def opregistry_packaged_config(self, backend, device):
        return packaged_config(NAME, device or detect_device())

    @hookimpl
    def opregistry_op_config(self, backend, op, settings):
        return read_op_config(settings)

    @hookimpl
    def opregistry_validate_config(self, backend, config):
        require_routing(config)

    def make_runtime(self, config):
        if config.execution == "interpreter":
            usable, detail = interpreter_status()
            if not usable:
                raise BackendUnavailable(f"cuda backend: {detail}")
        else:
            ok, detail = cuda_status()
            if not ok:
                raise BackendUnavailable(
                    f"cuda backend: {option('execution', config.execution)} needs a CUDA device: {detail}. "
                    "Run on a host with an NVIDIA GPU and a CUDA build of torch, or pass "
                    f"{option('execution', 'interpreter')} to run the same kernels through Triton's interpreter "
                    "on CPU tensors (slow; for validation).")
        from .runtime import CudaRuntime   # imports triton: only once it is known to be usable

        return CudaRuntime(config)
