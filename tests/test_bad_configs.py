"""Malformed configs are rejected with :class:`registry.ConfigError` naming the
file and the key path, and a failed ``enable`` changes nothing.

The corpus is ``tests/bad_configs/*.yaml``; each file starts with a comment
``# expect: <fragment>``: the key path (or, for YAML syntax errors, the line;
for files that cannot be parsed at all, what is wrong) that the error message
must contain. Each file is enabled (backend taken from the file) on a registry
that already serves ``quantized::linear_dynamic`` with a known backend; after
the failure the dispatcher, ``status()`` and ``installed_library_count()`` must
be as before.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_OPS
from opregistry.registry import BackendUnavailable, ConfigError, Registry

from reliability_helpers import OVERRIDE_WARNING, QUANT_CREATION_WARNING, arm_overrides, make_packed, reference

pytestmark = [pytest.mark.filterwarnings(QUANT_CREATION_WARNING), pytest.mark.filterwarnings(OVERRIDE_WARNING)]

CORPUS_DIR = Path(__file__).parent / "bad_configs"
CORPUS = sorted(CORPUS_DIR.glob("*.yaml"))
EXPECT = re.compile(rb"^# expect: (.+)$", re.M)


def expected_fragment(path: Path) -> str:
    found = EXPECT.search(path.read_bytes())
    assert found, f"{path.name}: missing '# expect: <fragment>' header"
    return found.group(1).decode().strip()


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 30


def _snapshot(reg: Registry) -> dict:
    status = reg.status()
    for op in status["ops"].values():
        op.pop("calls")
    backends = status["backends"]
    for b in backends.values():
        b.pop("routing", None)          # call counts
        b.get("weight_cache", {}).pop("hits", None)
    return {"status": status, "libraries": reg.installed_library_count(),
            "configs": {name: reg.active_config(name) for name in ("arm", "reference")}}


@pytest.fixture(params=["reference", "arm"])
def serving(request):
    """A registry serving both linear ops with ``reference`` or ``arm`` (interpreter)."""
    reg = Registry()
    if request.param == "arm":
        reg.enable(backend="arm", **arm_overrides("generic"))
    else:
        reg.enable(backend="reference")
    packed, w = make_packed(20, 12, per_channel=True, zero_points=True, seed=11)
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(0))
    y = torch.ops.quantized.linear_dynamic(x, packed)
    try:
        yield reg, request.param, (x, packed, w, y)
    finally:
        reg.disable()


def _assert_unchanged(reg: Registry, before: dict, backend: str, probe) -> None:
    x, packed, w, y_before = probe
    assert _snapshot(reg) == before
    calls = reg.status()["ops"][LINEAR_DYNAMIC]["calls"]
    y = torch.ops.quantized.linear_dynamic(x, packed)
    assert torch.equal(y, y_before), "the same backend must still serve the op"
    assert reg.status()["ops"][LINEAR_DYNAMIC]["calls"] == calls + 1
    assert reg.status()["ops"][LINEAR_DYNAMIC]["backend"] == backend


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_config_rejected(path, serving):
    reg, backend, probe = serving
    fragment = expected_fragment(path)
    before = _snapshot(reg)
    with pytest.raises(ConfigError) as info:
        reg.enable(config=path)
    message = str(info.value)
    assert str(path) in message, f"the message must name the file: {message}"
    assert fragment in message, f"expected {fragment!r} in: {message}"
    _assert_unchanged(reg, before, backend, probe)


@pytest.mark.parametrize("path", CORPUS[:5], ids=[p.stem for p in CORPUS[:5]])
def test_bad_config_rejected_through_env(path, serving, monkeypatch):
    """``OPREGISTRY_CONFIG`` names a bad file: same error, same file name."""
    reg, backend, probe = serving
    monkeypatch.setenv("OPREGISTRY_CONFIG", str(path))
    before = _snapshot(reg)
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        reg.enable(backend=None if "backend" in expected_fragment(path) else "arm")
    _assert_unchanged(reg, before, backend, probe)


def test_missing_file(serving, tmp_path):
    reg, backend, probe = serving
    before = _snapshot(reg)
    missing = tmp_path / "no-such-dir" / "deploy.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: file not found")):
        reg.enable(backend="arm", config=missing)
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: cannot read file")):
        reg.enable(backend="arm", config=tmp_path)           # a directory
    _assert_unchanged(reg, before, backend, probe)


@pytest.mark.parametrize("overrides, fragment", [
    ({"ops": {LINEAR_DYNAMIC: {"padding": "yes"}}}, f"<keyword overrides>: ops.{LINEAR_DYNAMIC}.padding"),
    ({"weight_cache": {"max_bytes": 1.5}}, "<keyword overrides>: weight_cache.max_bytes"),
    ({"execution": None}, "<keyword overrides>: execution"),
    ({"tiles": 8}, "<keyword overrides>: tiles"),
])
def test_bad_keyword_overrides(serving, overrides, fragment):
    reg, backend, probe = serving
    before = _snapshot(reg)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        reg.enable(backend="arm", **overrides)
    _assert_unchanged(reg, before, backend, probe)


def test_bad_config_dict(serving):
    reg, backend, probe = serving
    before = _snapshot(reg)
    with pytest.raises(ConfigError, match=re.escape(f"<config dict>: ops.{LINEAR_DYNAMIC}.routing[0].block_k")):
        reg.enable(backend="arm", config={"ops": {LINEAR_DYNAMIC: {"routing": [
            {"kernel": "dot", "block_m": 8, "block_n": 64, "block_k": 3}]}}})
    _assert_unchanged(reg, before, backend, probe)


def test_backend_unavailable_changes_nothing(serving, monkeypatch):
    """A valid config whose execution mode cannot run here fails before anything is installed."""
    from opregistry.backends.arm import device as arm_device
    from opregistry.backends.arm import plugin as arm_plugin

    absent = lambda: arm_device.TritonCpuStatus(False, False, "triton is not installed")  # noqa: E731
    for module in (arm_device, arm_plugin):                   # as on a host without Triton-CPU
        monkeypatch.setattr(module, "triton_cpu_status", absent)
    reg, backend, probe = serving
    before = _snapshot(reg)
    with pytest.raises(BackendUnavailable, match="interpreter"):   # a config unlike the serving one (not a no-op)
        reg.enable(backend="arm", execution="compiled", weight_cache={"max_bytes": 12345})
    _assert_unchanged(reg, before, backend, probe)


def test_layout_error_names_the_file_that_set_the_layout():
    path = CORPUS_DIR / "layout_breaks_packaged_rules.yaml"
    with pytest.raises(ConfigError) as info:
        Registry().build_config(None, path)
    assert "generic.yaml" in str(info.value) or "cix-p1.yaml" in str(info.value)   # the rules' file
    assert f"set in {path}" in str(info.value)                                     # the layout's file


@pytest.mark.parametrize("when", [{"m_min": 10**9}, {"m_max": 10**12}, {"m": 2**40}, {"m_multiple_of": 65536}])
def test_huge_routing_bounds_load_quickly(when):
    """Coverage/reachability is decided per segment, not by walking every M."""
    rule = {"kernel": "dot", "block_m": 8, "block_n": 64, "block_k": 32}
    routing = [{"name": "big", "when": when, **rule}, {"name": "all", **rule}]
    start = time.perf_counter()
    cfg = Registry().build_config("arm", {"ops": {op: {"routing": routing} for op in LINEAR_OPS}},
                                  execution="interpreter")
    assert time.perf_counter() - start < 5.0
    assert [r.name for r in cfg.op(LINEAR_DYNAMIC).routing] == ["big", "all"]


def test_packaged_configs_still_load():
    from opregistry.backends.arm.plugin import packaged_devices

    reg = Registry()
    for device in packaged_devices():
        assert reg.build_config("arm", None, execution="interpreter", device=device).device == device
    assert reg.build_config("reference").backend == "reference"


def test_rejected_file_then_good_file(serving, tmp_path):
    """After a rejection the registry accepts a good config normally."""
    reg, backend, probe = serving
    x, packed, w, _ = probe
    with pytest.raises(ConfigError):
        reg.enable(config=CORPUS_DIR / "routing_no_catch_all.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("backend: reference\nops:\n  quantized::linear_dynamic: {activation_scale: per_tensor}\n")
    reg.enable(config=good)
    assert reg.status()["ops"][LINEAR_DYNAMIC]["backend"] == "reference"
    assert torch.equal(torch.ops.quantized.linear_dynamic(x, packed), reference(x, w, False, "per_tensor"))
