"""The ARM backend's op settings (``ops.<op>.*`` in its YAML tables)."""

from __future__ import annotations

from dataclasses import dataclass

from opregistry.registry import OpConfig, Section, parse_routing
from opregistry.registry.routing import RULE_KEYS

from opregistry.backends.common.opconfig import (TILE_KEYS, TiledRule, read_activation_scale, read_deterministic,
                                                 read_tiles)
from opregistry.backends.common.pytorch_kernel import PYTORCH_KERNEL

# `pytorch`: PyTorch's own kernel, captured when the op is enabled (no tiles; see
# backends/common/pytorch_kernel.py). `dot_prequant` / `gemv_prequant`: activations
# quantized once into int8, then an int8 GEMM on unmasked tiles (kernel_prequant.py;
# the linear ops only). `rowdot_prequant`: the same, with products summed along K on the
# K-contiguous weight layout, which LLVM turns into sdot / vpdpbusd (kernel_rowdot.py).
PREQUANT_KERNELS = ("dot_prequant", "gemv_prequant", "rowdot_prequant")
KERNELS = ("dot", "gemv", *PREQUANT_KERNELS, PYTORCH_KERNEL)
OP_KEYS = ("padding", "activation_scale", "fast_path", "deterministic", "weight_layout", "routing")
INT_MM = "aten::_int_mm"
# int8 operands: no activation scheme
INT_MM_KEYS = ("padding", "weight_layout", "operand_cache", "deterministic", "routing")
# gemv_prequant sums a K tile of int8 x int8 products in fp32: |x_q|, |w| <= 128, so the
# sum stays within 2**24 (every integer exact) up to this block_k.
EXACT_FP32_BLOCK_K = 1024
ROWDOT_BLOCK_K_MAX = 1024


@dataclass(frozen=True)
class ArmRule(TiledRule):
    pad_m: bool = False     # pad M with zero rows to a multiple of block_m (when the op allows padding)


@dataclass(frozen=True)
class WeightLayout:
    """Tiles of the cached weight: ``[K/block_k, N/block_n, block_k, block_n]``."""

    block_k: int = 32
    block_n: int = 64


@dataclass(frozen=True)
class ArmOpConfig(OpConfig):
    padding: bool = True            # allow rules with pad_m to pad M
    activation_scale: str = "per_row"
    fast_path: bool = True          # serve nn.quantized.dynamic.Linear without the dispatcher
    # Every arm kernel is deterministic (each output element is summed by one program, in a fixed
    # order; a kernel: pytorch rule calls PyTorch's deterministic CPU kernel): accepted, changes nothing.
    deterministic: bool = False
    weight_layout: WeightLayout = WeightLayout()
    routing: tuple[ArmRule, ...] = ()


@dataclass(frozen=True)
class ArmIntMmConfig(OpConfig):
    """``aten::_int_mm``: the same tiles, layout and routing as the linear ops."""

    padding: bool = True
    weight_layout: WeightLayout = WeightLayout()
    operand_cache: bool = False     # cache the second operand in the tiled layout (else read it in place)
    deterministic: bool = False     # as ArmOpConfig's: always deterministic (exact integer sums)
    routing: tuple[ArmRule, ...] = ()


def read_op_config(settings: Section, op: str = "") -> ArmOpConfig | ArmIntMmConfig:
    if op == INT_MM:
        settings.check_keys(INT_MM_KEYS, owner=f"the arm backend's {INT_MM}")
    else:
        settings.check_keys(OP_KEYS, owner="the arm backend")
    layout = WeightLayout()
    if "weight_layout" in settings:
        s = settings.sub("weight_layout")
        s.check_keys(("block_k", "block_n"))
        layout = WeightLayout(s.get_tile("block_k", layout.block_k), s.get_tile("block_n", layout.block_n))

    def read_rule(rule: Section, common: dict) -> ArmRule:
        if common["kernel"] == PYTORCH_KERNEL:
            rule.check_keys(RULE_KEYS, owner="a rule with kernel: pytorch (PyTorch's own kernel takes no tiles)")
            return ArmRule(**common)
        rule.check_keys(RULE_KEYS + TILE_KEYS + ("pad_m",), owner="an arm routing rule")
        if common["kernel"] not in KERNELS:
            raise rule.error("kernel", f"expected one of {', '.join(KERNELS)}, got {common['kernel']!r}")
        if common["kernel"] in PREQUANT_KERNELS and op == INT_MM:
            raise rule.error("kernel", f"{common['kernel']} quantizes float activations; {INT_MM} takes int8 "
                                       "operands (use dot or gemv)")
        tiles = read_tiles(rule)
        if common["kernel"] == "gemv_prequant" and tiles["block_k"] > EXACT_FP32_BLOCK_K:
            raise rule.error("block_k", f"gemv_prequant sums one K tile in fp32, exact up to {EXACT_FP32_BLOCK_K} "
                                        f"(got {tiles['block_k']})")
        if common["kernel"] == "rowdot_prequant" and tiles["block_k"] > ROWDOT_BLOCK_K_MAX:
            raise rule.error("block_k", f"rowdot_prequant takes block_k up to {ROWDOT_BLOCK_K_MAX} (got "
                                        f"{tiles['block_k']}): LLVM 19's x86 code generation crashed on 2048")
        # rowdot_prequant reads K-contiguous rows: any block_k (the rest of K goes in layout-sized steps).
        for tile in ("block_n",) if common["kernel"] == "rowdot_prequant" else ("block_k", "block_n"):
            if getattr(layout, tile) % tiles[tile]:
                layout_src = settings.source(f"weight_layout.{tile}")
                set_in = "" if layout_src == rule.source(tile) else f", set in {layout_src}"
                raise rule.error(tile, f"{tiles[tile]} must divide {settings.key('weight_layout')}.{tile}="
                                       f"{getattr(layout, tile)}{set_in} (each B tile is read from one cached "
                                       "weight tile)")
        return ArmRule(**common, **tiles, pad_m=rule.get_bool("pad_m", False))

    if op == INT_MM:
        return ArmIntMmConfig(padding=settings.get_bool("padding", True), weight_layout=layout,
                              operand_cache=settings.get_bool("operand_cache", False),
                              deterministic=read_deterministic(settings), routing=parse_routing(settings, read_rule))
    return ArmOpConfig(
        padding=settings.get_bool("padding", True),
        activation_scale=read_activation_scale(settings),
        fast_path=settings.get_bool("fast_path", True),
        deterministic=read_deterministic(settings),
        weight_layout=layout,
        routing=parse_routing(settings, read_rule),
    )


def tune_candidates(cfg: ArmOpConfig | ArmIntMmConfig, op: str) -> list[dict]:
    """The rules ``opregistry tune`` times for ``op`` (hook ``opregistry_tune_candidates``):
    the kernel shapes the packaged tables draw from, sized to ``cfg``'s weight
    layout (a rule's tiles must divide it), and PyTorch's own kernel."""
    lk, ln = cfg.weight_layout.block_k, cfg.weight_layout.block_n
    widths = sorted({ln, 64} if ln % 64 == 0 else {ln})

    def rule(kernel, bm, bn, bk):
        return {"kernel": kernel, "block_m": bm, "block_n": bn, "block_k": min(bk, lk),
                **({"pad_m": True} if bm > 1 else {})}

    if op == INT_MM:
        rules = [rule("gemv", 1, bn, 32) for bn in widths]
        rules += [rule("gemv", 4, ln, 32), rule("dot", 8, ln, 32), rule("dot", 64, 64 if ln % 64 == 0 else ln, 32)]
    else:
        rules = [rule("gemv_prequant", 1, bn, 16) for bn in widths]
        rules += [rule("gemv_prequant", 2, ln, 16), rule("gemv_prequant", 4, ln, 32),
                  rule("dot_prequant", 8, ln, 32), rule("dot_prequant", 64, 64 if ln % 64 == 0 else ln, 32)]
        # Dot products along K, one row per program; the K step is not bound by the layout. x86
        # (vpdpbusd) measured best at 8x1024 and 16x256, aarch64 (sdot) counted fewest instructions
        # at 8x128 (docs/BENCHMARKS.md).
        rules += [{"kernel": "rowdot_prequant", "block_m": 1, "block_n": min(bn, ln), "block_k": bk}
                  for bn, bk in ((8, 1024), (16, 256), (8, 128))]
    return rules + [{"kernel": PYTORCH_KERNEL}]

