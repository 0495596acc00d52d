"""Op settings that more than one backend reads: the activation scheme, the
module fast path switch, deterministic mode, and routing rules with Triton tiles."""

from __future__ import annotations

from dataclasses import dataclass

from opregistry.registry import RoutingRule, Section

ACTIVATION_SCALES = ("per_row", "per_tensor", "pytorch")
RENAMED_ACTIVATION_SCALES = {"native": "pytorch"}   # old spelling, accepted with a FutureWarning
TILE_KEYS = ("block_m", "block_n", "block_k")


def read_activation_scale(settings: Section, supported: tuple[str, ...] = ACTIVATION_SCALES) -> str:
    """``activation_scale``: ``per_row`` (default), ``per_tensor`` or ``pytorch``
    (PyTorch's own activation scheme), restricted to what the backend supports."""
    return settings.get_choice("activation_scale", supported, "per_row", RENAMED_ACTIVATION_SCALES)


def read_deterministic(settings: Section) -> bool:
    """``deterministic``: bitwise identical results for identical inputs, call after call and
    between the module fast path and the dispatcher (default ``false``; every backend is also
    deterministic while ``torch.use_deterministic_algorithms(True)`` is in effect). A backend
    whose kernels are all deterministic accepts it and changes nothing."""
    return settings.get_bool("deterministic", False)


@dataclass(frozen=True)
class TiledRule(RoutingRule):
    """A routing rule that runs a Triton kernel with ``block_m x block_n x block_k`` tiles."""

    block_m: int = 1
    block_n: int = 1
    block_k: int = 1

    @property
    def tiles(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.block_k}"


def read_tiles(rule: Section) -> dict[str, int]:
    """The three tile sizes of a rule, each required and a power of two."""
    for key in TILE_KEYS:
        if key not in rule:
            raise rule.error(key, "missing (every rule names its kernel and tiles)")
    return {key: rule.get_tile(key) for key in TILE_KEYS}
