"""Registry core: enable/disable, scoping, plugins, status, autoload."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from opregistry import registry
from opregistry.registry.plugins import Plugins
from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC

from opregistry.testing import make_packed

EXAMPLE_DIR = Path(__file__).parent / "example_plugin"


@pytest.fixture(scope="module")
def packed():
    return make_packed(24, 40, per_channel=True)


@pytest.fixture(scope="module")
def x():
    return torch.randn(5, 40, generator=torch.Generator().manual_seed(1))


def native(x, packed):
    return torch.ops.quantized.linear_dynamic(x, packed, True)


def test_enable_runs_the_override_and_disable_restores_native_bit_exact(fresh_registry, x, packed):
    before = native(x, packed)
    fresh_registry.enable("reference")
    y = native(x, packed)
    st = fresh_registry.status()
    assert st["ops"][LINEAR_DYNAMIC]["calls"] == 1
    assert st["ops"][LINEAR_DYNAMIC]["backend"] == "reference"
    assert st["ops"][LINEAR_DYNAMIC]["dispatch_key"] == "CPU"
    assert not torch.equal(y, before)            # a different quantization scheme: observably the override
    fresh_registry.disable()
    assert torch.equal(native(x, packed), before)
    assert fresh_registry.status()["ops"] == {}


def test_enable_twice_is_idempotent(fresh_registry, x, packed):
    fresh_registry.enable("reference")
    lib = fresh_registry._installed[LINEAR_DYNAMIC].library
    fresh_registry.enable("reference")
    assert fresh_registry._installed[LINEAR_DYNAMIC].library is lib
    assert fresh_registry.installed_library_count() == 2


def test_hundred_cycles_leak_no_registrations(fresh_registry, x, packed):
    before = native(x, packed)
    for _ in range(100):
        fresh_registry.enable("reference")
        assert fresh_registry.installed_library_count() == 2
        fresh_registry.disable()
        assert fresh_registry.installed_library_count() == 0
    assert torch.equal(native(x, packed), before)


def test_context_manager_restores_on_exception(x, packed):
    before = native(x, packed)
    with pytest.raises(RuntimeError, match="boom"):
        with registry.enabled(backend="reference"):
            assert registry.status()["ops"][LINEAR_DYNAMIC]["backend"] == "reference"
            raise RuntimeError("boom")
    assert registry.status()["ops"] == {}
    assert torch.equal(native(x, packed), before)


def test_nested_context_restores_outer_backend(x, packed):
    registry.enable(backend="reference", ops={LINEAR_RELU_DYNAMIC: {"enabled": False}})
    with registry.enabled(backend="arm", execution="interpreter"):
        assert registry.status()["ops"][LINEAR_DYNAMIC]["backend"] == "arm"
        assert registry.status()["ops"][LINEAR_RELU_DYNAMIC]["backend"] == "arm"
    st = registry.status()["ops"]
    assert st[LINEAR_DYNAMIC]["backend"] == "reference"
    assert LINEAR_RELU_DYNAMIC not in st           # restored exactly, disabled op included


def test_second_backend_replaces_first_cleanly(fresh_registry, x, packed):
    fresh_registry.enable("reference")
    fresh_registry.enable("arm", execution="interpreter")
    assert {i["backend"] for i in fresh_registry.status()["ops"].values()} == {"arm"}
    assert fresh_registry.active_config("reference") is None   # its on_disable ran
    assert fresh_registry.installed_library_count() == 3        # arm: the two linear ops and aten::_int_mm
    fresh_registry.disable("arm")
    assert fresh_registry.installed_library_count() == 0


def test_backends_listing():
    rows = {r["name"]: r for r in registry.backends()}
    assert {"arm", "reference"} <= set(rows)
    ref = rows["reference"]
    assert ref["available"] and ref["distribution"] == "opregistry" and ref["version"]
    assert LINEAR_DYNAMIC in ref["ops"]
    arm = rows["arm"]
    if not arm["available"]:
        assert "interpreter" in arm["reason"]


def test_status_names_config_files(fresh_registry, tmp_path):
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text("ops:\n  quantized::linear_relu_dynamic:\n    enabled: false\n")
    fresh_registry.enable("reference", config=str(deploy))
    files = fresh_registry.status()["ops"][LINEAR_DYNAMIC]["config_files"]
    assert files[-1] == str(deploy) and files[1].endswith("reference/default.yaml")
    assert LINEAR_RELU_DYNAMIC not in fresh_registry.status()["ops"]


def test_unknown_backend_lists_installed(fresh_registry):
    with pytest.raises(registry.UnknownBackend, match=r"unknown backend .nope.; installed backends: arm, cuda, reference"):
        fresh_registry.enable("nope")


def _install_dist(site: Path, name: str, entry_points: str, module_src: dict[str, str]) -> None:
    """A throwaway installed distribution: dist-info + modules on sys.path."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    for mod, src in module_src.items():
        (site / f"{mod}.py").write_text(src)


def test_example_plugin_through_a_real_entry_point(tmp_path, monkeypatch, x, packed):
    _install_dist(tmp_path, "opregistry_example", "[opregistry.backends]\nexample = opregistry_example\n",
                  {"opregistry_example": (EXAMPLE_DIR / "opregistry_example.py").read_text()})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("OPREGISTRY_PLUGINS", raising=False)
    reg = registry.Registry()
    try:
        row = next(r for r in reg.backends() if r["name"] == "example")
        assert row["distribution"] == "opregistry_example" and row["version"] == "1.0"
        reg.enable("example")
        weight, bias = packed.unpack()
        expected = torch.nn.functional.linear(x, weight.dequantize(), bias)
        assert torch.equal(native(x, packed), expected)
    finally:
        reg.disable()


@pytest.mark.parametrize("allow, expect_example", [("", False), ("example", True), ("other,example", True),
                                                   ("other", False), (None, True)])
def test_allow_list(tmp_path, monkeypatch, allow, expect_example):
    _install_dist(tmp_path, "opregistry_example", "[opregistry.backends]\nexample = opregistry_example\n",
                  {"opregistry_example": (EXAMPLE_DIR / "opregistry_example.py").read_text()})
    monkeypatch.syspath_prepend(str(tmp_path))
    if allow is None:
        monkeypatch.delenv("OPREGISTRY_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("OPREGISTRY_PLUGINS", allow)
    names = {r["name"] for r in registry.Registry().backends()}
    assert {"arm", "reference"} <= names                  # built-ins always load
    assert ("example" in names) == expect_example


def test_broken_plugin_is_isolated_and_strict_raises(tmp_path, monkeypatch):
    _install_dist(tmp_path, "broken_dist", "[opregistry.backends]\nbroken = broken_plugin\n",
                  {"broken_plugin": "raise ImportError('missing native library')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("OPREGISTRY_PLUGINS", raising=False)
    with pytest.warns(registry.PluginWarning, match=r"plugin 'broken' from distribution 'broken_dist'.*missing native"):
        names = {r["name"] for r in registry.Registry().backends()}
    assert {"arm", "reference"} <= names and "broken" not in names
    with pytest.raises(registry.PluginError, match="broken_dist"):
        Plugins(strict=True).load_entry_points()


def test_misspelled_hook_is_rejected():
    mod = type(sys)("typo_plugin")
    exec(textwrap.dedent("""
        from opregistry.registry import hookimpl, BackendInfo
        @hookimpl
        def opregistry_backend_inf():
            return BackendInfo("typo", ())
    """), mod.__dict__)
    plugins = Plugins()
    with pytest.warns(registry.PluginWarning, match=r"typo.*opregistry_backend_inf"):
        assert not plugins.register(mod, name="typo")
    assert "typo" not in plugins.backends


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


AUTOLOAD_ORDERS = {
    "torch first": "import torch\nfrom opregistry import registry\n",
    "registry first": "from opregistry import registry\nimport torch\n",
    "a backend module first": "import opregistry.backends.arm.plugin\nimport torch\nfrom opregistry import registry\n",
}


@pytest.mark.parametrize("order", list(AUTOLOAD_ORDERS))
def test_torch_autoload_is_inert_by_default_and_enables_when_asked_in_any_import_order(order):
    code = AUTOLOAD_ORDERS[order] + "print(sorted(registry.status()['ops']))"
    inert = _run_python(code, OPREGISTRY_AUTOLOAD="")
    assert inert.returncode == 0 and inert.stdout.strip() == "[]", inert.stderr
    on = _run_python(code, OPREGISTRY_AUTOLOAD="reference")
    assert on.returncode == 0, on.stderr
    assert LINEAR_DYNAMIC in on.stdout, on.stderr
    assert "could not be enabled" not in on.stderr


@pytest.mark.parametrize("order", list(AUTOLOAD_ORDERS))
def test_torch_autoload_never_breaks_import_torch_and_speaks_in_environment_terms(order):
    code = AUTOLOAD_ORDERS[order] + "print(torch.ones(1).item())"
    bad = _run_python(code, OPREGISTRY_AUTOLOAD="no-such-backend")
    assert bad.returncode == 0 and bad.stdout.strip() == "1.0", bad.stderr
    assert "OPREGISTRY_AUTOLOAD=no-such-backend could not be enabled" in bad.stderr
    assert "unset it to turn autoload off" in bad.stderr and "OPREGISTRY_CONFIG" in bad.stderr


def test_re_enabling_with_another_config_swaps_the_runtime(fresh_registry):
    from torch.ao.nn.quantized.dynamic import Linear as DQLinear

    original = DQLinear.forward
    fresh_registry.enable("arm", execution="interpreter", weight_cache={"max_bytes": 1000})
    fresh_registry.enable("arm", execution="interpreter", weight_cache={"max_bytes": 2000})
    st = fresh_registry.status()["backends"]["arm"]
    assert st["weight_cache"]["max_bytes"] == 2000 and st["fast_path"]
    assert "__call__" in DQLinear.__dict__ and DQLinear.forward is original   # fast path installed
    fresh_registry.disable()
    assert DQLinear.forward is original and "__call__" not in DQLinear.__dict__


def test_plugin_calling_sys_exit_at_import_is_isolated(tmp_path, monkeypatch):
    _install_dist(tmp_path, "exiting_dist", "[opregistry.backends]\nexiting = exiting_plugin\n",
                  {"exiting_plugin": "import sys\nsys.exit(3)\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("OPREGISTRY_PLUGINS", raising=False)
    with pytest.warns(registry.PluginWarning, match=r"plugin 'exiting' from distribution 'exiting_dist'.*SystemExit"):
        names = {r["name"] for r in registry.Registry().backends()}
    assert "reference" in names and "exiting" not in names
