"""Backend plugin discovery: entry points, allow-list, failure isolation."""

from __future__ import annotations

import importlib.metadata as md
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownBackend
from .types import Availability, BackendInfo

ENTRY_POINT_GROUP = "opregistry.backends"
ALLOW_LIST_ENV = "OPREGISTRY_PLUGINS"
BUILTIN_DISTRIBUTION = "opregistry"


class PluginWarning(UserWarning):
    """A plugin was skipped; the message names it and its distribution."""


@dataclass(frozen=True)
class LoadedBackend:
    info: BackendInfo
    plugin: Any
    plugin_name: str
    distribution: str
    version: str


@dataclass(frozen=True)
class SkippedPlugin:
    plugin_name: str
    distribution: str
    reason: str


def allow_list_from_env() -> frozenset[str] | None:
    """``None`` (load every plugin) unless ``OPREGISTRY_PLUGINS`` is set.

    The value is a comma-separated list of entry-point or distribution names;
    an empty value loads only the built-in backends of this distribution.
    """
    raw = os.environ.get(ALLOW_LIST_ENV)
    if raw is None:
        return None
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _as_list(result) -> list:
    if result is None:
        return []
    return list(result) if isinstance(result, (list, tuple)) else [result]


class Plugins:
    """Owns one pluggy ``PluginManager`` and the table of backends it found.

    A plugin that fails to import, has a hook that does not match a spec
    (misspelled name, unknown argument), raises in ``opregistry_backend_info``,
    or claims a backend name already taken is skipped with a
    :class:`PluginWarning`; with ``strict=True`` a :class:`PluginError` is
    raised instead.
    """

    def __init__(self, strict: bool = False, allow: Iterable[str] | None = None):
        self.strict = strict
        self.allow = None if allow is None else frozenset(allow)
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.backends: dict[str, LoadedBackend] = {}
        self.skipped: list[SkippedPlugin] = []

    # -- loading -------------------------------------------------------
    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        # Built-ins first so that a third-party plugin cannot shadow them.
        eps = sorted(md.entry_points(group=group),
                     key=lambda ep: (_dist_name(ep) != BUILTIN_DISTRIBUTION, ep.name))
        for ep in eps:
            dist = _dist_name(ep)
            version = ep.dist.version if ep.dist is not None else ""
            if not self._allowed(ep.name, dist):
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - isolation is the point (sys.exit too)
                self._skip(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}", exc)
                continue
            self.register(plugin, name=ep.name, distribution=dist, version=version)

    def _allowed(self, name: str, dist: str) -> bool:
        if dist == BUILTIN_DISTRIBUTION or self.allow is None:
            return True
        return name in self.allow or dist in self.allow

    def register(self, plugin: Any, name: str, distribution: str = "", version: str = "") -> bool:
        """Register one plugin (a module, an object, or a class to instantiate);
        return whether it was accepted."""
        try:
            if isinstance(plugin, type):
                plugin = plugin()
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except Exception as exc:  # noqa: BLE001
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._skip(name, distribution, f"could not be registered: {type(exc).__name__}: {exc}", exc)
            return False
        try:
            infos = _as_list(self._call_impl(plugin, "opregistry_backend_info"))
            for info in infos:
                if not isinstance(info, BackendInfo):
                    raise TypeError(f"opregistry_backend_info returned {type(info).__name__}, "
                                    "expected registry.BackendInfo")
        except Exception as exc:  # noqa: BLE001
            self.pm.unregister(plugin)
            self._skip(name, distribution, f"opregistry_backend_info raised: {exc}", exc)
            return False
        taken = [i.name for i in infos if i.name in self.backends]
        if taken:
            self.pm.unregister(plugin)
            owner = self.backends[taken[0]]
            self._skip(name, distribution,
                       f"backend name {taken[0]!r} is already provided by plugin "
                       f"{owner.plugin_name!r} ({owner.distribution or 'unknown distribution'})")
            return False
        for info in infos:
            self.backends[info.name] = LoadedBackend(info, plugin, name, distribution, version)
        return True

    def _skip(self, name: str, dist: str, reason: str, exc: BaseException | None = None) -> None:
        self.skipped.append(SkippedPlugin(name, dist, reason))
        label = f"opregistry plugin {name!r} from distribution {dist or 'unknown'!r}"
        if self.strict:
            raise PluginError(f"{label}: {reason}") from exc
        warnings.warn(f"{label} skipped: {reason}", PluginWarning, stacklevel=3)

    # -- calling -------------------------------------------------------
    def _call_impl(self, plugin: Any, hook_name: str, **kwargs):
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            if impl.plugin is plugin:
                return impl.function(*[kwargs[a] for a in impl.argnames])
        return None

    def get(self, backend: str) -> LoadedBackend:
        try:
            return self.backends[backend]
        except KeyError:
            known = ", ".join(sorted(self.backends)) or "none"
            skipped = "".join(f"; skipped plugin {s.plugin_name!r} ({s.distribution or 'unknown'}): {s.reason}"
                              for s in self.skipped)
            raise UnknownBackend(f"unknown backend {backend!r}; installed backends: {known}{skipped}") from None

    def call(self, backend: str, hook_name: str, **kwargs):
        """Call ``hook_name`` on the plugin that owns ``backend`` only."""
        owner = self.get(backend)
        return self._call_impl(owner.plugin, hook_name, backend=backend, **kwargs)

    def availability(self, backend: str) -> Availability:
        try:
            result = self.call(backend, "opregistry_backend_availability")
        except Exception as exc:  # noqa: BLE001 - a status query must not raise
            return Availability(False, f"availability hook raised {type(exc).__name__}: {exc}")
        return result if result is not None else Availability(True)


def _dist_name(ep: md.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ""
