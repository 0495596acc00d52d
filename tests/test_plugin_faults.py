"""Faulty plugins are isolated: skipped with a :class:`registry.PluginWarning`
naming the plugin and its distribution (or :class:`registry.PluginError` with
``strict=True``), and the other backends keep working."""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest
import torch

from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_OPS
from opregistry.registry import (Availability, BackendInfo, OpKernel, PluginError, PluginWarning, Registry, UnknownBackend,
                      hookimpl)
from opregistry.registry.plugins import Plugins

from reliability_helpers import OVERRIDE_WARNING, QUANT_CREATION_WARNING, make_packed, reference

pytestmark = [pytest.mark.filterwarnings(QUANT_CREATION_WARNING), pytest.mark.filterwarnings(OVERRIDE_WARNING)]


# -- faulty plugins ------------------------------------------------------------

class ConstructorRaises:
    def __init__(self):
        raise RuntimeError("no device here")


class InfoRaises:
    @hookimpl
    def opregistry_backend_info(self):
        raise RuntimeError("info exploded")


class ClaimsReference:
    @hookimpl
    def opregistry_backend_info(self):
        return BackendInfo("reference", LINEAR_OPS, "an impostor")


class MisspelledHook:
    @hookimpl
    def opregistry_backend_info(self):
        return BackendInfo("misspelled", LINEAR_OPS)

    @hookimpl
    def opregistry_op_kernel(self, backend, config):       # spec: opregistry_op_kernels
        return {}


class WrongHookArgument:
    @hookimpl
    def opregistry_backend_info(self):
        return BackendInfo("wrongarg", LINEAR_OPS)

    @hookimpl
    def opregistry_op_kernels(self, backend, cfg):          # spec argument: config
        return {}


class InfoWrongType:
    @hookimpl
    def opregistry_backend_info(self):
        return {"name": "dict-backend"}


FAULTY = [
    (ConstructorRaises, "ctor", "no device here"),
    (InfoRaises, "inforaises", "info exploded"),
    (ClaimsReference, "impostor", "backend name 'reference' is already provided by plugin"),
    (MisspelledHook, "misspelled", "opregistry_op_kernel"),
    (WrongHookArgument, "wrongarg", "cfg"),
    (InfoWrongType, "wrongtype", "expected registry.BackendInfo"),
]


class Toy:
    """A working third-party backend (delegates to the reference maths), whose
    runtime hooks can be made to fail."""

    def __init__(self, fail: str = ""):
        self.fail = fail

    @hookimpl
    def opregistry_backend_info(self):
        return BackendInfo("toy", LINEAR_OPS, "test backend")

    @hookimpl
    def opregistry_backend_availability(self, backend):
        if self.fail == "availability":
            raise RuntimeError("availability exploded")
        return Availability(True)

    @hookimpl
    def opregistry_op_kernels(self, backend, config):
        if self.fail == "op_kernels":
            raise RuntimeError("kernel build exploded")
        from opregistry.backends.reference.ops import linear_dynamic
        return {LINEAR_DYNAMIC: OpKernel(linear_dynamic, "CPU")}

    @hookimpl
    def opregistry_backend_status(self, backend):
        if self.fail == "status":
            raise RuntimeError("status exploded")
        return {"ok": True}


def _builtin_backends() -> set[str]:
    """Backends of this distribution only (whatever built-ins it ships)."""
    plugins = Plugins(allow=())
    plugins.load_entry_points()
    return set(plugins.backends)


def _builtins() -> Plugins:
    plugins = Plugins()
    plugins.load_entry_points()
    return plugins


def _reference_still_serves(plugins: Plugins) -> None:
    reg = Registry(plugins)
    packed, w = make_packed(9, 14, per_channel=True, zero_points=True, seed=4)
    x = torch.randn(5, 14)
    with reg.enabled(backend="reference"):
        assert reg.status()["ops"][LINEAR_DYNAMIC]["backend"] == "reference"
        assert torch.equal(torch.ops.quantized.linear_dynamic(x, packed), reference(x, w))
    assert reg.installed_library_count() == 0


@pytest.mark.parametrize("plugin, name, reason", FAULTY, ids=[f[1] for f in FAULTY])
def test_faulty_plugin_is_skipped_with_warning(plugin, name, reason):
    plugins = _builtins()
    before = dict(plugins.backends)
    with pytest.warns(PluginWarning) as record:
        accepted = plugins.register(plugin, name=name, distribution="faulty-dist", version="0.1")
    assert accepted is False
    message = str(record[0].message)
    assert f"'{name}'" in message and "faulty-dist" in message and reason in message, message
    assert plugins.backends == before                            # built-ins untouched
    assert plugins.backends["reference"].plugin_name == "reference"
    assert [s.plugin_name for s in plugins.skipped] == [name]
    assert not any(p is not None and type(p) is plugin for p in plugins.pm.get_plugins())
    _reference_still_serves(plugins)


@pytest.mark.parametrize("plugin, name, reason", FAULTY, ids=[f[1] for f in FAULTY])
def test_faulty_plugin_strict_raises(plugin, name, reason):
    plugins = Plugins(strict=True)
    plugins.load_entry_points()
    with pytest.raises(PluginError, match=name) as info:
        plugins.register(plugin, name=name, distribution="faulty-dist")
    assert reason in str(info.value) and "faulty-dist" in str(info.value)
    assert set(plugins.backends) >= {"arm", "reference"}


def test_unknown_backend_lists_skipped_plugins():
    plugins = _builtins()
    with pytest.warns(PluginWarning):
        plugins.register(InfoRaises, name="inforaises", distribution="faulty-dist")
    with pytest.raises(UnknownBackend, match="skipped plugin 'inforaises'.*info exploded"):
        Registry(plugins).enable(backend="inforaises")


def test_runtime_hook_failures_are_contained():
    plugins = _builtins()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        assert plugins.register(Toy("availability"), name="toy") is True
    reg = Registry(plugins)
    rows = {row["name"]: row for row in reg.backends()}
    assert rows["toy"]["available"] is False and "availability exploded" in rows["toy"]["reason"]
    assert rows["reference"]["available"] is True


def test_op_kernels_failure_changes_nothing():
    plugins = _builtins()
    plugins.register(Toy("op_kernels"), name="toy")
    reg = Registry(plugins)
    reg.enable(backend="reference")
    try:
        before = reg.status()
        with pytest.raises(RuntimeError, match="kernel build exploded"):
            reg.enable(backend="toy")
        assert reg.status() == before
        assert reg.installed_library_count() == len(LINEAR_OPS)
    finally:
        reg.disable()
    _reference_still_serves(plugins)


def test_status_hook_failure_is_reported_not_raised():
    plugins = _builtins()
    plugins.register(Toy("status"), name="toy")
    reg = Registry(plugins)
    with reg.enabled(backend="toy"):
        status = reg.status()
    assert "status exploded" in status["backends"]["toy"]["error"]
    assert status["ops"][LINEAR_DYNAMIC]["backend"] == "toy"


# -- through real entry points -------------------------------------------------

DIST = "faulty-opregistry-plugins"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A throwaway distribution with three ``opregistry.backends`` entry points:
    one raising on import, one misspelled hook, one good."""
    root = tmp_path_factory.mktemp("site")
    info = root / "faulty_opregistry_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [opregistry.backends]
        boom = relfault_boom
        typo = relfault_typo
        good = relfault_good:GoodPlugin
        """))
    (root / "relfault_boom.py").write_text("raise ImportError('missing vendor SDK libfoo.so')\n")
    (root / "relfault_typo.py").write_text(textwrap.dedent("""\
        from opregistry.registry import BackendInfo, hookimpl
        @hookimpl
        def opregistry_backend_infos():
            return BackendInfo("typo", ("quantized::linear_dynamic",))
        """))
    (root / "relfault_good.py").write_text(textwrap.dedent("""\
        from opregistry.registry import BackendInfo, OpKernel, hookimpl
        class GoodPlugin:
            @hookimpl
            def opregistry_backend_info(self):
                return BackendInfo("good", ("quantized::linear_dynamic",), "third-party test backend")
            @hookimpl
            def opregistry_op_kernels(self, backend, config):
                from opregistry.backends.reference.ops import linear_dynamic
                return {"quantized::linear_dynamic": OpKernel(linear_dynamic, "CPU")}
        """))
    return root


@pytest.fixture
def on_path(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    yield site
    for mod in ("relfault_boom", "relfault_typo", "relfault_good"):
        sys.modules.pop(mod, None)


def test_entry_points_faults_isolated(on_path, monkeypatch):
    monkeypatch.delenv("OPREGISTRY_PLUGINS", raising=False)
    plugins = Plugins()
    with pytest.warns(PluginWarning) as record:
        plugins.load_entry_points()
    messages = [str(r.message) for r in record if issubclass(r.category, PluginWarning)]
    assert any("'boom'" in m and DIST in m and "missing vendor SDK libfoo.so" in m for m in messages), messages
    assert any("'typo'" in m and DIST in m and "opregistry_backend_infos" in m for m in messages), messages
    assert {"arm", "reference", "good"} <= set(plugins.backends)
    assert plugins.backends["good"].distribution == DIST and plugins.backends["good"].version == "1.0"
    assert {s.plugin_name for s in plugins.skipped} == {"boom", "typo"}
    _reference_still_serves(plugins)
    reg = Registry(plugins)
    packed, w = make_packed(6, 10, seed=5)
    x = torch.randn(2, 10)
    with reg.enabled(backend="good"):
        assert reg.status()["ops"][LINEAR_DYNAMIC]["backend"] == "good"
        assert torch.equal(torch.ops.quantized.linear_dynamic(x, packed), reference(x, w))


def test_entry_points_strict(on_path, monkeypatch):
    monkeypatch.delenv("OPREGISTRY_PLUGINS", raising=False)
    with pytest.raises(PluginError, match="'boom'.*missing vendor SDK"):
        Plugins(strict=True).load_entry_points()


def test_allow_list_empty_loads_only_builtins(on_path, monkeypatch):
    monkeypatch.setenv("OPREGISTRY_PLUGINS", "")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)      # nothing faulty is even imported
        reg = Registry()
        assert set(reg.plugins.backends) == _builtin_backends() >= {"arm", "reference"}
    assert "relfault_boom" not in sys.modules and "relfault_good" not in sys.modules


def test_allow_list_by_entry_point_name(on_path, monkeypatch):
    monkeypatch.setenv("OPREGISTRY_PLUGINS", "good")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        reg = Registry()
        assert set(reg.plugins.backends) == _builtin_backends() | {"good"}
    assert "relfault_boom" not in sys.modules


def test_allow_list_by_distribution_name(on_path, monkeypatch):
    monkeypatch.setenv("OPREGISTRY_PLUGINS", f" {DIST} , unrelated")
    with pytest.warns(PluginWarning) as record:
        reg = Registry()
        assert set(reg.plugins.backends) == _builtin_backends() | {"good"}
    assert {s.plugin_name for s in reg.plugins.skipped} == {"boom", "typo"}
    assert len(record) == 2
