"""Plugin hooks of the CUDA backend (Triton int8 kernels for NVIDIA GPUs)."""

from __future__ import annotations

from importlib.resources import files

from registry import Availability, BackendInfo, ConfigError, hookimpl

from backends.common import LINEAR_OPS
from backends.common.plugin import RuntimePlugin

from .kernels import K_ALIGN, N_ALIGN
from .runtime import DOT_KERNELS, GEMV_KERNELS, KERNELS, CudaRuntime, cuda_status

NAME = "cuda"
_CONFIG_DIR = files("opregistry_configs") / NAME
DEFAULT_DEVICE = "default"

# GPU limits the config is checked against (conservative for sm_80/sm_90).
DOT_MIN = {"block_m": 16, "block_n": 16, "block_k": 32}     # int8 tl.dot: K >= 32; M, N >= 16 for mma tiles
MAX_TILE = {"block_m": 256, "block_n": N_ALIGN, "block_k": K_ALIGN}
SHARED_MEMORY_BYTES = 227 * 1024                             # per block, H100 (A100: 163 KiB)
GEMV_MAX_ACC_PER_THREAD = 128                                # int32 accumulators per thread (registers)
NUM_WARPS = (1, 2, 4, 8, 16)
MAX_STAGES = 8


def packaged_devices() -> list[str]:
    return sorted(p.name[:-5] for p in _CONFIG_DIR.iterdir() if p.name.endswith(".yaml"))


def detect_device() -> str:
    """``h100`` on an H100, else ``default``; never raises."""
    try:
        import torch

        if torch.cuda.is_available() and "H100" in torch.cuda.get_device_name(0):
            return "h100"
    except Exception:  # noqa: BLE001
        pass
    return DEFAULT_DEVICE


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
    def opregistry_validate_config(self, backend, config):
        for op_name, op in config.ops.items():
            validate_op(config, op_name, op)

    def make_runtime(self, config):
        return CudaRuntime(config)



def validate_op(config, op_name, op) -> None:
    base = f"ops.{op_name}"
    if op.activation_scale not in ("per_row", "per_tensor"):
        key = f"{base}.activation_scale"
        raise ConfigError(config.source_of(key), key,
                          f"the cuda backend supports per_row and per_tensor, got {op.activation_scale!r}")
    layout_keys = [k for k in config.origins if k == f"{base}.weight_layout" or k.startswith(f"{base}.weight_layout.")]
    if layout_keys:
        key = f"{base}.weight_layout"
        raise ConfigError(config.source_of(layout_keys[0]), key,
                          "not used by the cuda backend: its weights are a plain [N, K] int8 layout "
                          f"padded to N%{N_ALIGN} and K%{K_ALIGN}")
    if op.enabled and not op.routing:
        key = f"{base}.routing"
        raise ConfigError(config.source_of(key), key, "missing: an enabled op needs a routing table")
    src = config.source_of(f"{base}.routing")
    for i, rule in enumerate(op.routing):
        validate_rule(src, f"{base}.routing[{i}]", rule)


def validate_rule(src: str, key: str, rule) -> None:
    """GPU limits of one routing rule; raises :class:`ConfigError` naming file and key path."""
    if rule.kernel not in KERNELS:
        raise ConfigError(src, f"{key}.kernel", f"expected one of {', '.join(KERNELS)}, got {rule.kernel!r}")
    tiles = {"block_m": rule.block_m, "block_n": rule.block_n, "block_k": rule.block_k}
    for name, value in tiles.items():
        if value > MAX_TILE[name]:
            raise ConfigError(src, f"{key}.{name}",
                              f"expected at most {MAX_TILE[name]} (the cached weight is padded to that), got {value}")
    if rule.kernel in DOT_KERNELS:
        for name, value in tiles.items():
            if value < DOT_MIN[name]:
                raise ConfigError(src, f"{key}.{name}",
                                  f"kernel {rule.kernel!r} uses int8 tl.dot, which needs {name} >= "
                                  f"{DOT_MIN[name]} on NVIDIA GPUs, got {value}")
    if rule.num_warps is not None and rule.num_warps not in NUM_WARPS:
        raise ConfigError(src, f"{key}.num_warps", f"expected one of {NUM_WARPS}, got {rule.num_warps}")
    if rule.num_stages is not None and rule.num_stages > MAX_STAGES:
        raise ConfigError(src, f"{key}.num_stages", f"expected at most {MAX_STAGES}, got {rule.num_stages}")
    if rule.pad_m:
        raise ConfigError(src, f"{key}.pad_m", "not used by the cuda backend: its kernels mask the M edge")
    warps = rule.num_warps or 4
    if rule.kernel in DOT_KERNELS:
        stages = rule.num_stages or 3
        smem = (rule.block_m + rule.block_n) * rule.block_k * stages   # what Triton 3.6 allocates for wgmma tiles
        if smem > SHARED_MEMORY_BYTES:
            raise ConfigError(src, key,
                              f"int8 tiles {rule.block_m}x{rule.block_n}x{rule.block_k} with num_stages={stages} "
                              f"need ~{smem} bytes of shared memory, more than the {SHARED_MEMORY_BYTES} a block "
                              "can have: lower num_stages or the tiles")
    else:
        per_thread = rule.block_m * rule.block_n * rule.block_k // (32 * warps)
        if per_thread > GEMV_MAX_ACC_PER_THREAD:
            raise ConfigError(src, key,
                              f"kernel {rule.kernel!r} keeps block_m x block_n x block_k int32 accumulators in "
                              f"registers: {rule.block_m}x{rule.block_n}x{rule.block_k} over {warps} warps is "
                              f"{per_thread} per thread, more than {GEMV_MAX_ACC_PER_THREAD}: lower the tiles "
                              "or raise num_warps")
