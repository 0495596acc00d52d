"""opregistry: a vendor-neutral operator registry for PyTorch.

Backends are plugins found through the ``opregistry.backends`` entry-point
group (see :mod:`registry.hookspecs`). Typical use::

    from opregistry import registry
    registry.enable(backend="arm", config="deploy.yaml")
    with registry.enabled(backend="reference"):
        y = model(x)
    registry.disable()
"""

from __future__ import annotations

from typing import Any

from .config import Config, OpConfig
from .routing import RoutingRule, check_routing, parse_routing
from .schema import Section
from .core import Registry, default_registry, reload_plugins
from .errors import BackendUnavailable, ConfigError, PluginError, RegistryError, UnknownBackend, option
from .hookspecs import hookimpl
from .plugins import PluginWarning
from .types import Availability, BackendInfo, CallCounter, OpKernel

from opregistry import __version__  # noqa: E402


def enable(backend: str | None = None, config: Any = None, **overrides) -> Config:
    """Install ``backend``'s kernels into PyTorch's dispatcher.

    :param config: a deployment YAML path or a dict, layered over the backend's
        packaged device config (default: ``$OPREGISTRY_CONFIG`` if set).
    :param overrides: top-level config keys (``execution="interpreter"``,
        ``ops={...}``) applied over both; a backend's op setting given here
        (``activation_scale="pytorch"``, ``deterministic=True``) applies to every
        op of the backend that has it, and ``ops`` entries still win.
    :return: the merged :class:`Config`.
    """
    return default_registry().enable(backend, config, **overrides)


def enabled(backend: str | None = None, config: Any = None, **overrides):
    """Context manager: enable for the block, then restore what was there."""
    return default_registry().enabled(backend, config, **overrides)


def disable(backend: str | None = None) -> None:
    """Remove the kernels of ``backend`` (of every backend when ``None``)."""
    default_registry().disable(backend)


def backends() -> list[dict[str, Any]]:
    """Installed backends: name, available, reason, ops, distribution, version."""
    return default_registry().backends()


def status() -> dict[str, Any]:
    """Which backend serves each op now, on which dispatch key, from which configs."""
    return default_registry().status()


__all__ = [
    "Availability", "BackendInfo", "BackendUnavailable", "CallCounter", "Config", "ConfigError", "OpConfig",
    "OpKernel", "PluginError", "PluginWarning", "Registry", "RegistryError", "RoutingRule", "Section",
    "backends", "check_routing", "parse_routing", "default_registry", "disable", "enable", "enabled", "hookimpl",
    "option", "reload_plugins", "status", "UnknownBackend",
]

# Last step of the import: a torch.backends autoload that fired while this
# package was importing torch (registry imported before torch) runs now.
_IMPORTED = True
from opregistry.autoload import run_pending  # noqa: E402

run_pending()
