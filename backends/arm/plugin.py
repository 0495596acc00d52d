"""Plugin hooks of the ARM backend (Triton-CPU int8 kernels)."""

from __future__ import annotations

import threading
from importlib.resources import files

from registry import Availability, BackendInfo, ConfigError, OpKernel, hookimpl

from backends.common import LINEAR_OPS

from .device import detect_device, read_cpuinfo, triton_cpu_status
from .runtime import KERNELS, ArmRuntime

NAME = "arm"
_CONFIG_DIR = files("opregistry_configs") / NAME


def packaged_devices() -> list[str]:
    return sorted(p.name[:-5] for p in _CONFIG_DIR.iterdir() if p.name.endswith(".yaml"))


class ArmPlugin:
    """Hooks of the ARM backend. The registry makes one instance, which owns the
    :class:`ArmRuntime` of the enabled config between enable and disable."""

    def __init__(self):
        self._lock = threading.Lock()
        self.runtime: ArmRuntime | None = None

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
        return Availability(False, f"{status.detail}; execution='interpreter' runs the kernels for validation only")

    @hookimpl
    def opregistry_packaged_config(self, backend, device):
        name = device or detect_device(read_cpuinfo())
        path = _CONFIG_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError("<arm configs>", "device",
                              f"no packaged config for device {name!r}; available: {', '.join(packaged_devices())}")
        return path

    @hookimpl
    def opregistry_validate_config(self, backend, config):
        for op_name, op in config.ops.items():
            _validate_op(config, op_name, op)

    @hookimpl
    def opregistry_op_kernels(self, backend, config):
        runtime = ArmRuntime(config)  # raises BackendUnavailable before anything is installed
        with self._lock:
            if self.runtime is not None:
                self.runtime.close()
            self.runtime = runtime
        return {op: OpKernel(runner, "CPU") for op, runner in runtime.runners.items()}

    @hookimpl
    def opregistry_on_enable(self, backend, config):
        with self._lock:
            if self.runtime is not None:
                self.runtime.enable_fast_path()

    @hookimpl
    def opregistry_on_disable(self, backend):
        with self._lock:
            if self.runtime is not None:
                self.runtime.close()
                self.runtime = None

    @hookimpl
    def opregistry_backend_status(self, backend):
        with self._lock:
            return self.runtime.status() if self.runtime is not None else {}


def _validate_op(config, op_name, op) -> None:
    base = f"ops.{op_name}"
    if op.activation_scale not in ("per_row", "per_tensor"):
        key = f"{base}.activation_scale"
        raise ConfigError(config.source_of(key), key,
                          f"the arm backend supports per_row and per_tensor, got {op.activation_scale!r}")
    if op.enabled and not op.routing:
        key = f"{base}.routing"
        raise ConfigError(config.source_of(key), key, "missing: an enabled op needs a routing table")
    layout = op.weight_layout
    src = config.source_of(f"{base}.routing")
    for i, rule in enumerate(op.routing):
        key = f"{base}.routing[{i}]"
        if rule.kernel not in KERNELS:
            raise ConfigError(src, f"{key}.kernel", f"expected one of {', '.join(KERNELS)}, got {rule.kernel!r}")
        if layout.block_k % rule.block_k:
            raise ConfigError(src, f"{key}.block_k",
                              f"{rule.block_k} must divide weight_layout.block_k={layout.block_k} "
                              "(each B tile is read from one cached weight tile)")
        if layout.block_n % rule.block_n:
            raise ConfigError(src, f"{key}.block_n",
                              f"{rule.block_n} must divide weight_layout.block_n={layout.block_n}")
        for gpu_only in ("num_warps", "num_stages"):
            if getattr(rule, gpu_only) is not None:
                raise ConfigError(src, f"{key}.{gpu_only}", "not used by the arm backend (GPU backends only)")
