"""Plugin hooks of the CUDA backend (Triton int8 kernels for NVIDIA GPUs)."""

from __future__ import annotations

from importlib.resources import files

from opregistry.registry import Availability, BackendInfo, BackendUnavailable, ConfigError, hookimpl

from opregistry.backends.common import LINEAR_OPS
from opregistry.backends.common.interpreter import interpreter_status
from opregistry.backends.common.plugin import RuntimePlugin

from .config import read_op_config
from .device import DEFAULT_DEVICE, cuda_status, detect_device  # noqa: F401 - DEFAULT_DEVICE re-exported

NAME = "cuda"
_CONFIG_DIR = files("opregistry.configs") / NAME


def packaged_devices() -> list[str]:
    return sorted(p.name[:-5] for p in _CONFIG_DIR.iterdir() if p.name.endswith(".yaml"))


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
        return Availability(False, f"{detail}; execution='interpreter' runs the kernels on CPU tensors "
                                   "for validation only")

    @hookimpl
    def opregistry_packaged_config(self, backend, device):
        name = device or detect_device()
        path = _CONFIG_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError("<cuda configs>", "device",
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
        if config.execution == "interpreter":
            usable, detail = interpreter_status()
            if not usable:
                raise BackendUnavailable(f"cuda backend: {detail}")
        else:
            ok, detail = cuda_status()
            if not ok:
                raise BackendUnavailable(
                    f"cuda backend: execution={config.execution!r} needs a CUDA device: {detail}. "
                    "Run on a host with an NVIDIA GPU and a CUDA build of torch, or pass execution='interpreter' "
                    "to run the same kernels through Triton's interpreter on CPU tensors (slow; for validation).")
        from .runtime import CudaRuntime   # imports triton: only once it is known to be usable

        return CudaRuntime(config)
