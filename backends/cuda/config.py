"""The CUDA backend's op settings (``ops.<op>.*`` in its YAML tables) and the
GPU limits each routing rule is checked against."""

from __future__ import annotations

from dataclasses import dataclass

from opregistry.registry import ConfigError, OpConfig, Section, parse_routing
from opregistry.registry.routing import RULE_KEYS

from opregistry.backends.common.opconfig import (TILE_KEYS, TiledRule, read_activation_scale, read_deterministic,
                                                 read_tiles)

from .layout import K_ALIGN, N_ALIGN

# Kernel names a routing rule may use (config key ``kernel``).
DOT_KERNELS = ("dot", "dot_splitk", "dot_streamk", "dot_streamk_fused", "dot_fused")
GEMV_KERNELS = ("gemv_fused",)
KERNELS = DOT_KERNELS + GEMV_KERNELS
OP_KEYS = ("activation_scale", "fast_path", "deterministic", "routing", "small_weights")

# What each kernel runs in deterministic mode (config key ``deterministic``, or
# torch.use_deterministic_algorithms(True)): the same kernel where it is already
# bitwise reproducible (every output element summed by one program in a fixed
# order); for the kernels that add fp32 partial sums with atomics (their order
# varies, so do the last bits), the INT_ACC form: int32 partials, whose sum is
# the same in any order, and one epilogue pass (docs/CUDA.md, "Determinism").
# A kernel missing here has no deterministic form: deterministic mode refuses it.
DETERMINISTIC_KERNEL = {
    "dot": "dot",
    "gemv_fused": "gemv_fused",
    "dot_fused": "dot_fused",
    "dot_splitk": "dot_splitk",                 # INT_ACC where it splits K
    "dot_streamk": "dot_streamk",               # INT_ACC
    "dot_streamk_fused": "dot_streamk",         # the two-launch stream-K, INT_ACC
}
ATOMIC_KERNELS = ("dot_splitk", "dot_streamk", "dot_streamk_fused")   # fp32 partials added with atomics
SMALL_WEIGHT_KEYS = ("max_bytes", "routing")

# GPU limits the config is checked against (conservative for sm_80/sm_90).
DOT_MIN = {"block_m": 16, "block_n": 16, "block_k": 32}     # int8 tl.dot: K >= 32; M, N >= 16 for mma tiles
MAX_TILE = {"block_m": 256, "block_n": N_ALIGN, "block_k": K_ALIGN}
SHARED_MEMORY_BYTES = 227 * 1024                             # per block, H100 (A100: 163 KiB)
GEMV_MAX_ACC_PER_THREAD = 128                                # int32 accumulators per thread (registers)
NUM_WARPS = (1, 2, 4, 8, 16)
MAX_STAGES = 8



@dataclass(frozen=True)
class CudaRule(TiledRule):
    num_warps: int | None = None
    num_stages: int | None = None


@dataclass(frozen=True)
class CudaOpConfig(OpConfig):
    """``routing`` serves every weight; ``small_routing`` (optional, config key
    ``small_weights: {max_bytes, routing}``) serves weights of at most
    ``small_max_bytes`` int8 bytes (N x K) instead: small layers are bound by the
    host's launches at small M, large ones by HBM."""

    activation_scale: str = "per_row"
    fast_path: bool = True
    deterministic: bool = False     # bitwise reproducible kernels only (also under torch's switch)
    routing: tuple[CudaRule, ...] = ()
    small_max_bytes: int = 0
    small_routing: tuple[CudaRule, ...] = ()


def read_op_config(settings: Section) -> CudaOpConfig:
    settings.check_keys(OP_KEYS, owner="the cuda backend (its weights are a plain [N, K] int8 layout, "
                                       f"padded to N%{N_ALIGN} and K%{K_ALIGN}; its kernels mask the M edge)")

    def read_rule(rule: Section, common: dict) -> CudaRule:
        rule.check_keys(RULE_KEYS + TILE_KEYS + ("num_warps", "num_stages"), owner="a cuda routing rule")
        parsed = CudaRule(**common, **read_tiles(rule), num_warps=rule.get_int("num_warps", minimum=1),
                          num_stages=rule.get_int("num_stages", minimum=1))
        validate_rule(rule.source(), rule.path, parsed)
        return parsed

    small_max_bytes, small_routing = 0, ()
    if "small_weights" in settings:
        small = settings.sub("small_weights")
        small.check_keys(SMALL_WEIGHT_KEYS, owner="small_weights (a routing table for weights of at most "
                                                  "max_bytes int8 bytes)")
        if "max_bytes" not in small or "routing" not in small:
            raise small.error("", "expected both max_bytes and routing")
        small_max_bytes = small.get_int("max_bytes", minimum=1)
        small_routing = parse_routing(small, read_rule)
    return CudaOpConfig(
        activation_scale=read_activation_scale(settings, ("per_row", "per_tensor")),
        fast_path=settings.get_bool("fast_path", True),
        deterministic=read_deterministic(settings),
        routing=parse_routing(settings, read_rule),
        small_max_bytes=small_max_bytes,
        small_routing=small_routing,
    )


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
    warps = rule.num_warps or 4
    if rule.kernel in DOT_KERNELS:
        stages = rule.num_stages or 3
        a_bytes = 4 if rule.kernel == "dot_fused" else 1             # dot_fused stages the fp32 activation
        smem = (a_bytes * rule.block_m + rule.block_n) * rule.block_k * stages   # Triton 3.6, wgmma tiles
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
