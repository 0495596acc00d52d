"""Plugin hooks of the ARM backend (Triton-CPU int8 kernels)."""

from __future__ import annotations

from importlib.resources import files

from registry import Availability, BackendInfo, ConfigError, hookimpl

from backends.common import LINEAR_OPS
from backends.common.plugin import RuntimePlugin

from .device import detect_device, read_cpuinfo, triton_cpu_status
from .runtime import KERNELS, ArmRuntime

NAME = "arm"
_CONFIG_DIR = files("opregistry_configs") / NAME


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

    def make_runtime(self, config):
        return ArmRuntime(config)


def _validate_op(config, op_name, op) -> None:
    base = f"ops.{op_name}"
    if op.enabled and not op.routing:
        key = f"{base}.routing"
        raise ConfigError(config.source_of(key), key, "missing: an enabled op needs a routing table")
    layout = op.weight_layout
    src = config.source_of(f"{base}.routing")
    for i, rule in enumerate(op.routing):
        key = f"{base}.routing[{i}]"
        if rule.kernel not in KERNELS:
            raise ConfigError(src, f"{key}.kernel", f"expected one of {', '.join(KERNELS)}, got {rule.kernel!r}")
        for tile in ("block_k", "block_n"):
            if getattr(layout, tile) % getattr(rule, tile):
                layout_src = config.source_of(f"{base}.weight_layout.{tile}")
                set_in = "" if layout_src == src else f", set in {layout_src}"
                raise ConfigError(src, f"{key}.{tile}",
                                  f"{getattr(rule, tile)} must divide {base}.weight_layout.{tile}="
                                  f"{getattr(layout, tile)}{set_in} (each B tile is read from one cached "
                                  "weight tile)")
        for gpu_only in ("num_warps", "num_stages"):
            if getattr(rule, gpu_only) is not None:
                raise ConfigError(src, f"{key}.{gpu_only}", "not used by the arm backend (GPU backends only)")
