"""Typed device configs: YAML layers, validation with file + key path, merging.

Layers, lowest to highest priority:

1. the backend's packaged device config (``configs/<backend>/<device>.yaml``),
2. the deployment file (``config=`` argument, or ``OPREGISTRY_CONFIG``),
3. keyword overrides passed to :func:`registry.enable`.

Mappings merge key by key; a ``routing`` list replaces the lower layer's list
whole. Files are read with ``yaml.safe_load`` only. Every error is a
:class:`~registry.errors.ConfigError` naming the source and the key path.

The schema is plain dataclasses with a small validator rather than a
validation library: it is one schema of a dozen keys, and keeping the error
text under our control (file, key path, expected, got) is the point.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

DEPLOYMENT_ENV = "OPREGISTRY_CONFIG"
OVERRIDES_SOURCE = "<keyword overrides>"

EXECUTION_MODES = ("auto", "native", "interpreter")
ACTIVATION_SCALES = ("per_row", "per_tensor", "native")
CONDITION_KEYS = ("m", "m_multiple_of", "m_min", "m_max")
MAX_ROUTING_PERIOD = 1 << 16  # largest lcm of m_multiple_of values check_routing accepts


@dataclass(frozen=True)
class RoutingRule:
    """One row of a routing table: a condition on M and the kernel to use."""

    name: str
    kernel: str
    block_m: int
    block_n: int
    block_k: int
    m: int | None = None
    m_multiple_of: int | None = None
    m_min: int | None = None
    m_max: int | None = None
    pad_m: bool = False          # pad M with zero rows to a multiple of block_m (if the op allows)
    num_warps: int | None = None   # GPU backends only
    num_stages: int | None = None  # GPU backends only

    def matches(self, m: int) -> bool:
        return ((self.m is None or m == self.m)
                and (self.m_multiple_of is None or m % self.m_multiple_of == 0)
                and (self.m_min is None or m >= self.m_min)
                and (self.m_max is None or m <= self.m_max))


@dataclass(frozen=True)
class WeightLayout:
    """Tiles of the cached weight: ``[K/block_k, N/block_n, block_k, block_n]``."""

    block_k: int = 32
    block_n: int = 64


@dataclass(frozen=True)
class OpConfig:
    enabled: bool = True
    padding: bool = True
    activation_scale: str = "per_row"
    fast_path: bool = True
    weight_layout: WeightLayout = WeightLayout()
    routing: tuple[RoutingRule, ...] = ()


@dataclass(frozen=True)
class WeightCacheConfig:
    max_bytes: int = 1 << 30


@dataclass(frozen=True)
class Config:
    backend: str
    device: str | None = None
    execution: str = "auto"
    weight_cache: WeightCacheConfig = WeightCacheConfig()
    ops: Mapping[str, OpConfig] = field(default_factory=dict)
    sources: tuple[str, ...] = ()          # files / layers this config was built from
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def op(self, name: str) -> OpConfig:
        return self.ops.get(name, OpConfig())

    def source_of(self, key: str) -> str:
        """The layer that last set ``key`` (or its nearest parent)."""
        while key:
            if key in self.origins:
                return self.origins[key]
            key = key.rpartition(".")[0]
        return self.sources[-1] if self.sources else "<defaults>"


# ---------------------------------------------------------------------------
# Loading one layer
# ---------------------------------------------------------------------------

class _SafeLoaderNoDuplicates(yaml.SafeLoader):
    """``yaml.safe_load`` semantics, except that a key given twice in one mapping
    is an error (PyYAML silently keeps the last one). Merge keys (``<<``) may
    still be overridden."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                        f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | os.PathLike | Any) -> tuple[dict, str]:
    """Read one YAML file (a path or an importlib.resources traversable)."""
    source = str(path)
    try:
        text = (path if hasattr(path, "read_text") else Path(path)).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read file: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not UTF-8 text: {exc}") from None
    try:
        data = yaml.load(text, Loader=_SafeLoaderNoDuplicates)  # a yaml.SafeLoader: no arbitrary tags
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"invalid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a mapping at the top level, got {_kind(data)}")
    check_layer(data, source)
    return data, source


def check_layer(data: Mapping, source: str) -> None:
    """Structural check of one layer: known keys, right types. Keys may be absent."""
    _check_mapping(data, source, "", _TOP_KEYS)
    for key, value in data.items():
        if key in ("backend", "device"):
            _expect_str(value, source, key, allow_none=(key == "device"))
        elif key == "execution":
            _expect_choice(value, source, key, EXECUTION_MODES)
        elif key == "weight_cache":
            _check_mapping(value, source, key, ("max_bytes",))
            if "max_bytes" in value:
                _expect_int(value["max_bytes"], source, "weight_cache.max_bytes", minimum=0)
        elif key == "ops":
            _check_mapping(value, source, key, None)
            for op_name, op in value.items():
                _check_op(op, source, f"ops.{op_name}")


def _check_op(op: Any, source: str, path: str) -> None:
    _check_mapping(op, source, path, _OP_KEYS)
    for key, value in op.items():
        kp = f"{path}.{key}"
        if key in ("enabled", "padding", "fast_path"):
            _expect_bool(value, source, kp)
        elif key == "activation_scale":
            _expect_choice(value, source, kp, ACTIVATION_SCALES)
        elif key == "weight_layout":
            _check_mapping(value, source, kp, ("block_k", "block_n"))
            for tile in value:
                _expect_tile(value[tile], source, f"{kp}.{tile}")
        elif key == "routing":
            if not isinstance(value, list) or not value:
                raise ConfigError(source, kp, f"expected a non-empty list of rules, got {_kind(value)}")
            for i, rule in enumerate(value):
                _check_rule(rule, source, f"{kp}[{i}]")


def _check_rule(rule: Any, source: str, path: str) -> None:
    _check_mapping(rule, source, path, _RULE_KEYS)
    for required in ("kernel", "block_m", "block_n", "block_k"):
        if required not in rule:
            raise ConfigError(source, f"{path}.{required}", "missing (every rule names its kernel and tiles)")
    for key, value in rule.items():
        kp = f"{path}.{key}"
        if key in ("name", "kernel"):
            _expect_str(value, source, kp)
        elif key in ("block_m", "block_n", "block_k"):
            _expect_tile(value, source, kp)
        elif key == "pad_m":
            _expect_bool(value, source, kp)
        elif key in ("num_warps", "num_stages"):
            _expect_int(value, source, kp, minimum=1)
        elif key == "when":
            _check_mapping(value, source, kp, CONDITION_KEYS)
            for cond, v in value.items():
                _expect_int(v, source, f"{kp}.{cond}", minimum=1)


# ---------------------------------------------------------------------------
# Merging layers and building the typed config
# ---------------------------------------------------------------------------

def merge_layers(layers: list[tuple[Mapping, str]]) -> Config:
    """Merge ``(data, source)`` layers, lowest priority first, into a :class:`Config`."""
    merged: dict = {}
    origins: dict[str, str] = {}
    for data, source in layers:
        _merge_into(merged, data, source, origins, "")
    sources = tuple(src for _, src in layers)
    if "backend" not in merged:
        raise ConfigError(sources[-1] if sources else "<config>", "backend", "missing")
    ops = {}
    for op_name, op in merged.get("ops", {}).items():
        ops[op_name] = _build_op(op, origins, f"ops.{op_name}")
    cfg = Config(
        backend=merged["backend"],
        device=merged.get("device"),
        execution=merged.get("execution", "auto"),
        weight_cache=WeightCacheConfig(**merged.get("weight_cache", {})),
        ops=ops,
        sources=sources,
        origins=origins,
    )
    for op_name, op in cfg.ops.items():
        check_routing(op.routing, cfg.source_of(f"ops.{op_name}.routing"), f"ops.{op_name}.routing")
    return cfg


def _merge_into(dst: dict, src: Mapping, source: str, origins: dict, path: str) -> None:
    for key, value in src.items():
        kp = f"{path}.{key}" if path else str(key)
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge_into(dst[key], value, source, origins, kp)
        else:
            dst[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else copy.deepcopy(value)
            origins[kp] = source


def _build_op(op: Mapping, origins: Mapping, path: str) -> OpConfig:
    routing = tuple(
        RoutingRule(
            name=rule.get("name", f"rule{i}"),
            kernel=rule["kernel"], block_m=rule["block_m"], block_n=rule["block_n"],
            block_k=rule["block_k"], pad_m=rule.get("pad_m", False),
            num_warps=rule.get("num_warps"), num_stages=rule.get("num_stages"),
            **rule.get("when", {}),
        )
        for i, rule in enumerate(op.get("routing", ()))
    )
    return OpConfig(
        enabled=op.get("enabled", True),
        padding=op.get("padding", True),
        activation_scale=op.get("activation_scale", "per_row"),
        fast_path=op.get("fast_path", True),
        weight_layout=WeightLayout(**op.get("weight_layout", {})),
        routing=routing,
    )


def check_routing(rules: tuple[RoutingRule, ...], source: str, path: str) -> None:
    """Every M >= 1 must be routed, and every rule must be reachable.

    Conditions are equalities, bounds and divisibility. The bounds cut
    [1, inf) into segments; inside one segment the same rules are in range and
    matching repeats with period lcm(their multiples), so the first
    min(segment length, period) values of each segment decide both questions
    exactly, however large the bounds are.
    """
    if not rules:
        return
    names = [r.name for r in rules]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ConfigError(source, f"{path}[{i}].name", f"duplicate rule name {name!r}")
    spans = []  # (lo, hi) of each rule's bounds; hi None = unbounded
    for i, r in enumerate(rules):
        lows = [v for v in (r.m, r.m_min) if v is not None]
        highs = [v for v in (r.m, r.m_max) if v is not None]
        lo, hi = max(lows, default=1), min(highs, default=None)
        if hi is not None and lo > hi:
            raise ConfigError(source, f"{path}[{i}].when",
                              f"m={r.m}, m_min={r.m_min}, m_max={r.m_max}: the rule can never match")
        spans.append((lo, hi))
    cuts = sorted({1} | {lo for lo, _ in spans} | {hi + 1 for _, hi in spans if hi is not None})
    reached = [False] * len(rules)
    for j, start in enumerate(cuts):
        end = cuts[j + 1] - 1 if j + 1 < len(cuts) else None
        live = [i for i, (lo, hi) in enumerate(spans) if lo <= start and (hi is None or hi >= start)]
        period = math.lcm(*[rules[i].m_multiple_of or 1 for i in live] or [1])
        count = period if end is None else min(end - start + 1, period)
        if count > MAX_ROUTING_PERIOD:
            raise ConfigError(source, path, f"the m_multiple_of values of rules "
                                            f"{', '.join(repr(rules[i].name) for i in live)} have lcm {period}; "
                                            f"at most {MAX_ROUTING_PERIOD} is supported (use powers of two)")
        for m in range(start, start + count):
            for i in live:
                if rules[i].matches(m):
                    reached[i] = True
                    break
            else:
                raise ConfigError(source, path, f"no rule matches M={m}; end the table with a rule "
                                                "that has no 'when' condition")
    for i, ok in enumerate(reached):
        if not ok:
            raise ConfigError(source, f"{path}[{i}]",
                              f"rule {rules[i].name!r} is unreachable: earlier rules match every M it matches")


# ---------------------------------------------------------------------------
# Small validators
# ---------------------------------------------------------------------------

_TOP_KEYS = ("backend", "device", "execution", "weight_cache", "ops")
_OP_KEYS = ("enabled", "padding", "activation_scale", "fast_path", "weight_layout", "routing")
_RULE_KEYS = ("name", "when", "kernel", "block_m", "block_n", "block_k", "pad_m", "num_warps", "num_stages")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (str, bool, int, float)):
        return f"{value!r}"
    return type(value).__name__


def _check_mapping(value: Any, source: str, path: str, allowed: tuple[str, ...] | None) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(source, path or "<top level>", f"expected a mapping, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(source, path or "<top level>", f"keys must be strings, got {_kind(key)}")
        if allowed is not None and key not in allowed:
            where = f"{path}.{key}" if path else key
            raise ConfigError(source, where, f"unknown key; expected one of: {', '.join(allowed)}")


def _expect_bool(value: Any, source: str, path: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(source, path, f"expected a boolean, got {_kind(value)}")


def _expect_str(value: Any, source: str, path: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(source, path, f"expected a non-empty string, got {_kind(value)}")


def _expect_int(value: Any, source: str, path: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(source, path, f"expected an integer, got {_kind(value)}")
    if value < minimum:
        raise ConfigError(source, path, f"expected an integer >= {minimum}, got {value}")


def _expect_tile(value: Any, source: str, path: str) -> None:
    _expect_int(value, source, path, minimum=1)
    if value & (value - 1):
        raise ConfigError(source, path, f"expected a power of two (Triton tile sizes), got {value}")


def _expect_choice(value: Any, source: str, path: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(source, path, f"expected one of {', '.join(choices)}, got {_kind(value)}")
