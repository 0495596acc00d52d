"""Typed device configs: YAML layers, validation with file + key path, merging.

Layers, lowest to highest priority:

1. the backend's packaged device config (``configs/<backend>/<device>.yaml``),
2. the deployment file (``config=`` argument, or ``OPREGISTRY_CONFIG``),
3. keyword overrides passed to :func:`registry.enable`.

Mappings merge key by key; a list (a routing table) replaces the lower
layer's list whole. Files are read with ``yaml.safe_load`` only. Every error is
a :class:`~registry.errors.ConfigError` naming the source and the key path.

The registry's own schema is the top level (``backend``, ``device``,
``execution``, ``weight_cache``) and ``ops.<op>.enabled``. The rest of each
op's mapping belongs to the backend: the registry hands it over merged, with
the file of every key, through the ``opregistry_op_config`` hook
(:class:`~registry.schema.Section`), and stores what the backend returns.

Any other top-level key is an op setting given once for every op
(``activation_scale: pytorch``): :func:`spread_op_settings` writes it under
each of the backend's ops, just below that layer's own ``ops.<op>`` values, so
a per-op value in the same or a higher layer wins and a top-level value wins
over lower layers. An op whose backend does not know the key ignores it; a key
no op knows is an unknown key, reported with its top-level name and file.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError
from .schema import expect_choice, expect_int, kind

DEPLOYMENT_ENV = "OPREGISTRY_CONFIG"
OVERRIDES_SOURCE = "<keyword overrides>"

EXECUTION_MODES = ("auto", "compiled", "interpreter")
RENAMED_EXECUTION = {"native": "compiled"}   # old spelling -> new (accepted with a FutureWarning)


@dataclass(frozen=True)
class OpConfig:
    """One op's settings. The registry reads only ``enabled``; a backend returns
    a subclass with its own fields from ``opregistry_op_config``."""

    enabled: bool = True


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
        return self.ops.get(name, OpConfig(enabled=False))

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
        raise ConfigError(source, "", f"expected a mapping at the top level, got {kind(data)}")
    check_layer(data, source)
    return data, source


def check_layer(data: Mapping, source: str) -> None:
    """Structural check of one layer's core keys. Keys may be absent; an op's
    keys other than ``enabled``, and top-level op settings, are the backend's,
    checked after merging."""
    _check_mapping(data, source, "", None)
    if "enabled" in data:
        raise ConfigError(source, "enabled", "unknown key at the top level; 'enabled' is set per op "
                                             "(ops.<op>.enabled)")
    for key, value in data.items():
        if key in ("backend", "device"):
            _expect_str(value, source, key, allow_none=(key == "device"))
        elif key == "execution":
            expect_choice(value, source, key, EXECUTION_MODES, RENAMED_EXECUTION)
        elif key == "weight_cache":
            _check_mapping(value, source, key, ("max_bytes",))
            if "max_bytes" in value:
                expect_int(value["max_bytes"], source, "weight_cache.max_bytes", minimum=0)
        elif key == "ops":
            _check_mapping(value, source, key, None)
            for op_name, op in value.items():
                _check_mapping(op, source, f"ops.{op_name}", None)
                if "enabled" in op:
                    _expect_bool(op["enabled"], source, f"ops.{op_name}.enabled")


# ---------------------------------------------------------------------------
# Merging layers and building the typed config
# ---------------------------------------------------------------------------

def op_settings(data: Mapping) -> dict:
    """The top-level keys of a layer that are not the registry's: op settings for every op."""
    return {key: value for key, value in data.items() if key not in TOP_KEYS}


def spread_op_settings(data: Mapping, ops: tuple[str, ...]) -> dict:
    """``data``'s top-level op settings written under each op in ``ops`` (a layer
    of its own, merged just below ``data``), or ``{}`` when it has none."""
    wide = op_settings(data)
    return {"ops": {op: copy.deepcopy(wide) for op in ops}} if wide else {}


def merge_layers(layers: list[tuple[Mapping, str]], ops: tuple[str, ...] = ()) -> tuple[dict, dict, dict]:
    """Merge ``(data, source)`` layers, lowest priority first, each layer's
    top-level op settings spread under ``ops`` just below it.

    Return the merged mapping, the source of every key path, and the name under
    which the user wrote each key path (``ops.<op>.padding`` set by a top-level
    ``padding`` is named ``padding``; see :func:`display_path`)."""
    merged: dict = {}
    origins: dict[str, str] = {}
    written_as: dict[str, str] = {}
    for data, source in layers:
        spread = spread_op_settings(data, ops)
        if spread:
            _merge_into(merged, spread, source, origins, "", written_as, spread=True)
        _merge_into(merged, data, source, origins, "", written_as)
    return merged, origins, written_as


def display_path(path: str, written_as: Mapping[str, str]) -> str:
    """How the user wrote key path ``path``: the nearest recorded path at or above
    it (list items ``[i]`` included) decides; unrecorded paths read as they are."""
    probe = path
    while probe:
        if probe in written_as:
            return written_as[probe] + path[len(probe):]
        probe = probe[:probe.rindex("[")] if probe.endswith("]") else probe.rpartition(".")[0]
    return path


def build_config(merged: Mapping, origins: Mapping[str, str], sources: tuple[str, ...],
                 ops: Mapping[str, OpConfig]) -> Config:
    """The typed :class:`Config` from a merged mapping and the backend-built op settings."""
    if "backend" not in merged:
        raise ConfigError(sources[-1] if sources else "<config>", "backend", "missing")
    execution = merged.get("execution", "auto")
    return Config(
        backend=merged["backend"],
        device=merged.get("device"),
        execution=RENAMED_EXECUTION.get(execution, execution),
        weight_cache=WeightCacheConfig(**merged.get("weight_cache", {})),
        ops=dict(ops),
        sources=sources,
        origins=dict(origins),
    )


def _merge_into(dst: dict, src: Mapping, source: str, origins: dict, path: str, written_as: dict,
                spread: bool = False) -> None:
    for key, value in src.items():
        kp = f"{path}.{key}" if path else str(key)
        if not spread:
            written_as[kp] = kp
        elif kp.count(".") >= 2:                       # ops.<op>.<setting>...: written at the top level
            written_as[kp] = kp.split(".", 2)[2]
        if isinstance(value, Mapping):
            # A fresh dict per path: YAML aliases (``*linear``) must not make two
            # ops share one mapping that a later layer would change for both.
            if not isinstance(dst.get(key), dict):
                dst[key] = {}
                origins[kp] = source
            _merge_into(dst[key], value, source, origins, kp, written_as, spread)
        else:
            dst[key] = copy.deepcopy(value)
            origins[kp] = source


# ---------------------------------------------------------------------------
# Small validators
# ---------------------------------------------------------------------------

TOP_KEYS = ("backend", "device", "execution", "weight_cache", "ops")   # the registry's own


def _check_mapping(value: Any, source: str, path: str, allowed: tuple[str, ...] | None) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(source, path or "<top level>", f"expected a mapping, got {kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(source, path or "<top level>", f"keys must be strings, got {kind(key)}")
        if allowed is not None and key not in allowed:
            where = f"{path}.{key}" if path else key
            raise ConfigError(source, where, f"unknown key; expected one of: {', '.join(allowed)}")


def _expect_bool(value: Any, source: str, path: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(source, path, f"expected a boolean, got {kind(value)}")


def _expect_str(value: Any, source: str, path: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(source, path, f"expected a non-empty string, got {kind(value)}")
