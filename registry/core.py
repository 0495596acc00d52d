"""The registry: builds configs, installs backend kernels into the dispatcher."""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .config import (DEPLOYMENT_ENV, OVERRIDES_SOURCE, TOP_KEYS, Config, OpConfig, build_config, check_layer,
                     display_path, load_yaml, merge_layers, op_settings)
from .schema import Section, kind
from .errors import BackendUnavailable, ConfigError, RegistryError, UnknownBackend, option, render
from .plugins import Plugins, allow_list_from_env
from .types import CallCounter, OpKernel


def _compiler_disable(fn):
    """``fn``, never traced by Dynamo. Where ``torch._dynamo`` cannot even be
    imported (a broken or stand-in triton), nothing can compile: ``fn`` as is."""
    try:
        return torch.compiler.disable(fn)
    except Exception:  # noqa: BLE001
        return fn


# PyTorch warns (once per process) when a kernel replaces a registered one.
# Replacing PyTorch's own kernel is what enable() is for, so exactly that
# message is silenced around our own registrations.
_OVERRIDE_WARNING = r"(?s).*Overriding a previously registered kernel"


@dataclass
class _Installed:
    """One (backend, op) registration; owning ``library`` keeps it alive."""

    backend: str
    op: str
    dispatch_key: str
    library: torch.library.Library
    config: Config
    calls: CallCounter = field(default_factory=CallCounter)
    # The kernel on (op, dispatch_key) before the registry's first override
    # (torch._C._SafeKernelFunction), kept when a backend replaces another;
    # None where torch.library.get_kernel is missing.
    original: Any = None
    backend_counts: Any = None       # OpKernel.call_counts: calls the dispatcher does not see


class Registry:
    """Owns the plugin table and every kernel registration it made.

    Thread-safe: enable/disable/status take one lock. Kernels themselves run
    without it.
    """

    def __init__(self, plugins: Plugins | None = None, *, strict: bool = False):
        self._plugins = plugins
        self._strict = strict
        self._lock = threading.RLock()
        self._installed: dict[str, _Installed] = {}      # op name -> registration
        self._configs: dict[str, Config] = {}            # enabled backend -> its config

    # -- plugins -------------------------------------------------------
    @property
    def plugins(self) -> Plugins:
        with self._lock:
            if self._plugins is None:
                plugins = Plugins(strict=self._strict, allow=allow_list_from_env())
                plugins.load_entry_points()
                self._plugins = plugins
            return self._plugins

    def backends(self, interface: str = "python") -> list[dict[str, Any]]:
        """Every installed backend with availability, ops and origin. A reason
        names settings as ``interface`` takes them (``"python"``, ``"cli"``, or
        ``"raw"`` for text rendered later; :func:`registry.errors.render`)."""
        rows = []
        for name, lb in sorted(self.plugins.backends.items()):
            avail = self.plugins.availability(name)
            rows.append({
                "name": name,
                "available": avail.available,
                "reason": render(avail.reason, interface),
                "ops": list(lb.info.ops),
                "description": lb.info.description,
                "plugin": lb.plugin_name,
                "distribution": lb.distribution,
                "version": lb.version,
                "enabled": name in self._configs,
            })
        return rows

    # -- configs -------------------------------------------------------
    def build_config(self, backend: str | None = None, config: Any = None, **overrides) -> Config:
        """Layer packaged config < deployment file < keyword overrides and validate."""
        layers: list[tuple[Mapping, str]] = []
        from_env = config is None and bool(os.environ.get(DEPLOYMENT_ENV))
        if from_env:
            config = os.environ[DEPLOYMENT_ENV]
        if isinstance(config, Mapping):
            check_layer(config, "<config dict>")
            layers.append((config, "<config dict>"))
        elif config is not None:
            layers.append(_load_deployment(config, from_env))
        if overrides:
            check_layer(overrides, OVERRIDES_SOURCE)
            layers.append((overrides, OVERRIDES_SOURCE))

        named = [(data["backend"], src) for data, src in layers if "backend" in data]
        requested = backend is not None
        if backend is None:
            if not named:
                raise ConfigError(layers[0][1] if layers else OVERRIDES_SOURCE, "backend",
                                  f"no backend given: pass {option('backend')} or set 'backend' in the config file")
            backend = named[-1][0]
        for name, src in named:
            if name != backend:
                raise ConfigError(src, "backend", f"this config is for backend {name!r}, "
                                                  f"but backend {backend!r} was requested")
        try:
            owner = self.plugins.get(backend)
        except UnknownBackend as exc:
            if requested:
                raise
            raise ConfigError(named[-1][1], "backend", exc.raw) from None

        device, device_src = next(((d["device"], src) for d, src in reversed(layers) if d.get("device")),
                                  (None, None))
        try:
            packaged = self.plugins.call(backend, "opregistry_packaged_config", device=device)
        except ConfigError as exc:
            if device_src is None or exc.key != "device":
                raise
            raise ConfigError(device_src, "device", exc.detail) from None
        if packaged is not None:
            data, src = load_yaml(packaged)
            layers.insert(0, (data, src))
        layers.insert(0, ({"backend": backend}, f"<{backend} defaults>"))

        merged, origins, written_as = merge_layers(layers, owner.info.ops)
        sources = tuple(src for _, src in layers)

        def source_of(key: str) -> str:
            while key:
                if key in origins:
                    return origins[key]
                key = key.rpartition(".")[0]
            return sources[-1]

        for op in merged.get("ops", {}):
            if op not in owner.info.ops:
                raise ConfigError(source_of(f"ops.{op}"), f"ops.{op}",
                                  f"unknown op for backend {backend!r}; it provides: {', '.join(owner.info.ops)}")
        sections = {op: Section({k: v for k, v in merged.get("ops", {}).get(op, {}).items() if k != "enabled"},
                                f"ops.{op}", source_of, lambda path: display_path(path, written_as), op_level=True)
                    for op in owner.info.ops}
        ops = {op: self._op_config(backend, op, merged.get("ops", {}).get(op, {}).get("enabled", True), section)
               for op, section in sections.items()}
        _check_op_settings(backend, op_settings(merged), sections, source_of)
        cfg = build_config(merged, origins, sources, ops)
        self.plugins.call(backend, "opregistry_validate_config", config=cfg)
        return cfg

    def _op_config(self, backend: str, op: str, enabled: bool, section: Section) -> OpConfig:
        """``enabled`` is the registry's; the backend's hook reads the rest."""
        built = self.plugins.call(backend, "opregistry_op_config", op=op, settings=section)
        if built is None:
            section.check_keys((), owner=f"backend {backend!r} (it takes only 'enabled' for {op})")
            return OpConfig(enabled=enabled)
        if not isinstance(built, OpConfig):
            raise TypeError(f"backend {backend!r}: opregistry_op_config returned {type(built).__name__}, "
                            "expected a registry.OpConfig (subclass)")
        return dataclasses.replace(built, enabled=enabled)

    # -- enable / disable ----------------------------------------------
    def enable(self, backend: str | None = None, config: Any = None, **overrides) -> Config:
        """Install ``backend``'s kernels for its enabled ops; return the config used."""
        cfg = self.build_config(backend, config, **overrides)
        self._install(cfg)
        return cfg

    def _install(self, cfg: Config) -> None:
        backend = cfg.backend
        with self._lock:
            if self._configs.get(backend) == cfg:
                return  # idempotent
            kernels: dict[str, OpKernel] = self.plugins.call(backend, "opregistry_op_kernels", config=cfg) or {}
            kernels = {op: kernel for op, kernel in kernels.items() if cfg.op(op).enabled}
            # Captured while our earlier registrations are still known; raises before anything changes.
            originals = {op: self._original(backend, op, kernel) for op, kernel in kernels.items()}
            if backend in self._configs:
                self._disable_one(backend)
            for op, kernel in kernels.items():
                previous = self._installed.get(op)
                self._installed[op] = self._register(backend, op, kernel, cfg, originals[op])
                # Destroy the replaced registration only after the new one is
                # active, so concurrent callers never see PyTorch's own kernel.
                if previous is not None:
                    previous.library._destroy()
                    if not any(i.backend == previous.backend for i in self._installed.values()):
                        self._forget(previous.backend)
            self._configs[backend] = cfg
            self.plugins.call(backend, "opregistry_on_enable", config=cfg)

    def _original(self, backend: str, op: str, kernel: OpKernel):
        """The kernel PyTorch runs for ``op`` on ``kernel.dispatch_key`` without us
        (see :class:`OpKernel` ``receive_original``)."""
        inst = self._installed.get(op)
        if inst is not None and inst.dispatch_key == kernel.dispatch_key:
            original = inst.original          # ours is on top: keep what was under it
        else:
            get_kernel = getattr(torch.library, "get_kernel", None)
            try:
                original = None if get_kernel is None else get_kernel(op, kernel.dispatch_key)
            except Exception as exc:  # noqa: BLE001 - only fatal for a kernel that asks for it
                if kernel.receive_original is not None:
                    raise BackendUnavailable(f"backend {backend!r} hands some calls of {op} back to the kernel it "
                                             f"replaces on {kernel.dispatch_key}, which torch.library.get_kernel "
                                             f"could not capture: {type(exc).__name__}: {exc}") from exc
                original = None
        if original is None and kernel.receive_original is not None:
            raise BackendUnavailable(
                f"backend {backend!r} hands some calls of {op} back to the kernel it replaces on "
                f"{kernel.dispatch_key} (PyTorch's own, as its config asks); capturing that kernel needs "
                f"torch.library.get_kernel (PyTorch 2.9 and later), and this is torch {torch.__version__}. "
                "Upgrade torch, or remove the config's rules that name PyTorch's kernel.")
        return original

    @staticmethod
    def _register(backend: str, op: str, kernel: OpKernel, cfg: Config, original=None) -> _Installed:
        ns, _, name = op.partition("::")
        lib = torch.library.Library(ns, "IMPL")
        inst = _Installed(backend, op, kernel.dispatch_key, lib, cfg, original=original,
                          backend_counts=kernel.call_counts)
        calls = inst.calls

        def counted(fn):
            # Never traced by Dynamo: under torch.compile an op whose arguments it
            # cannot trace (a packed-weight ScriptObject) is an opaque call that runs
            # the kernel eagerly; a backend's Python kernel is not graph material.
            @_compiler_disable
            def call(*args, **kwargs):
                calls.increment()
                return fn(*args, **kwargs)
            return call

        if kernel.receive_original is not None:
            # The keyset the dispatcher hands a kernel registered on this key for
            # plain tensors (torch 2.13: DispatchKeySet(CPU) for a CPU kernel).
            keyset = torch._C.DispatchKeySet(kernel.dispatch_key)
            kernel.receive_original(functools.partial(original.call_boxed, keyset))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_OVERRIDE_WARNING, category=UserWarning)
            lib.impl(name, counted(kernel.fn), kernel.dispatch_key, allow_override=True)
            for overload, fn in kernel.overloads.items():
                lib.impl(f"{name}.{overload}", counted(fn), kernel.dispatch_key, allow_override=True)
        return inst

    def disable(self, backend: str | None = None) -> None:
        """Remove ``backend``'s kernels (all backends when ``None``)."""
        with self._lock:
            for name in [backend] if backend is not None else list(self._configs):
                if name in self._configs:
                    self._disable_one(name)

    def _disable_one(self, backend: str) -> None:
        for op in [op for op, inst in self._installed.items() if inst.backend == backend]:
            self._installed.pop(op).library._destroy()
        self._forget(backend)

    def _forget(self, backend: str) -> None:
        if self._configs.pop(backend, None) is not None:
            self.plugins.call(backend, "opregistry_on_disable")

    @contextmanager
    def enabled(self, backend: str | None = None, config: Any = None, **overrides):
        """Enable for the ``with`` block, then restore exactly what was there."""
        with self._lock:
            before = dict(self._configs)
        try:
            yield self.enable(backend, config, **overrides)
        finally:
            with self._lock:
                for name, cfg in list(self._configs.items()):
                    if before.get(name) != cfg:
                        self._disable_one(name)
                for name, cfg in before.items():
                    if self._configs.get(name) != cfg:
                        self._install(cfg)

    # -- introspection -------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Which backend serves each op, on which key, from which configs."""
        with self._lock:
            ops = {
                op: {
                    "backend": inst.backend,
                    "dispatch_key": inst.dispatch_key,
                    "config_files": list(inst.config.sources),
                    "execution": inst.config.execution,
                    **_call_counts(inst),
                }
                for op, inst in sorted(self._installed.items())
            }
            backends = {}
            for name in sorted(self._configs):
                try:
                    backends[name] = self.plugins.call(name, "opregistry_backend_status") or {}
                except Exception as exc:  # noqa: BLE001 - status must not raise
                    backends[name] = {"error": f"{type(exc).__name__}: {exc}"}
            return {"ops": ops, "backends": backends}

    def active_config(self, backend: str) -> Config | None:
        return self._configs.get(backend)

    def installed_library_count(self) -> int:
        return len(self._installed)


def _call_counts(inst: _Installed) -> dict[str, Any]:
    """Every call the backend served: ``calls`` (the sum of ``calls_by_path``, the
    dispatcher's and the module fast path's) and ``pytorch_kernel_calls`` (those of
    them it handed to the kernel it replaces, PyTorch's own)."""
    dispatcher = inst.calls.value
    served: Mapping[str, int] = {}
    if inst.backend_counts is not None:
        try:
            served = inst.backend_counts() or {}
        except Exception:  # noqa: BLE001 - status must not raise; the dispatcher's count still holds
            served = {}
    fast = int(served.get("fast_path", 0))
    return {"calls": dispatcher + fast, "calls_by_path": {"dispatcher": dispatcher, "fast_path": fast},
            "pytorch_kernel_calls": int(served.get("original", 0))}


def _load_deployment(config: Any, from_env: bool) -> tuple[dict, str]:
    """The deployment layer named by ``config`` (a path), with errors that say what was given."""
    empty = isinstance(config, str) and not config
    if empty or not (isinstance(config, (str, os.PathLike)) or hasattr(config, "read_text")):
        shown = kind(config)
        given = ("an empty string" if empty else shown if shown == type(config).__name__
                 else f"{type(config).__name__} {shown}")
        raise ConfigError("config", "", f"expected the path of a YAML file (str or os.PathLike) or a mapping of "
                                        f"config keys, got {given}")
    try:
        return load_yaml(config)
    except ConfigError as exc:
        if from_env and not exc.key:          # the file itself: say where its name came from
            raise ConfigError(exc.source, "", f"{exc.detail} (named by ${DEPLOYMENT_ENV})") from None
        raise


def _check_op_settings(backend: str, given: Mapping, sections: Mapping[str, Section], source_of) -> None:
    """Every top-level op setting must be known to at least one op of ``backend``."""
    known = sorted({name for section in sections.values() for name in section.known})
    for key in given:
        if key not in known:
            settings = (f"or an op setting of backend {backend!r}: {', '.join(known)}" if known
                        else f"(backend {backend!r} takes no op settings)")
            raise ConfigError(source_of(key), key, f"unknown key; expected one of: {', '.join(TOP_KEYS)}, {settings}")


_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry behind ``registry.enable()`` and friends."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


def reload_plugins(strict: bool = False) -> Registry:
    """Disable everything and rediscover plugins (e.g. after ``OPREGISTRY_PLUGINS`` changed)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.disable()
        _default = Registry(strict=strict)
        return _default


__all__ = ["Registry", "RegistryError", "default_registry", "reload_plugins"]
