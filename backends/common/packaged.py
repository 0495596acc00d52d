"""The packaged device configs of a backend (``configs/<backend>/<device>.yaml``)
and the check every routed backend makes of a merged config."""

from __future__ import annotations

from importlib.resources import files

from opregistry.registry import Config, ConfigError


def packaged_devices(backend: str) -> list[str]:
    """Device names with a packaged table for ``backend``."""
    return sorted(p.name[:-5] for p in (files("opregistry.configs") / backend).iterdir() if p.name.endswith(".yaml"))


def packaged_config(backend: str, device: str):
    """The packaged YAML of ``device``, or a :class:`ConfigError` listing the ones there are."""
    path = files("opregistry.configs") / backend / f"{device}.yaml"
    if not path.is_file():
        raise ConfigError(f"<{backend} configs>", "device",
                          f"no packaged config for device {device!r}; available: "
                          f"{', '.join(packaged_devices(backend))}")
    return path


def require_routing(config: Config) -> None:
    """An enabled op needs a routing table (its kernels are chosen by M)."""
    for op_name, op in config.ops.items():
        if op.enabled and not getattr(op, "routing", ()):
            key = f"ops.{op_name}.routing"
            raise ConfigError(config.source_of(key), key, "missing: an enabled op needs a routing table")
