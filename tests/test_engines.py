"""Which quantized engines the project (tests, tools, demo) uses on this host, and what a user whose
default engine cannot pack weights is told. Runs on x86 and in the aarch64 lane."""

from __future__ import annotations

import platform

import pytest
import torch

from opregistry import registry
from opregistry.backends.common import engines as eng
from opregistry.testing import default_engine, engines, make_packed, quantized_engine


@pytest.fixture
def fresh_probe():
    caches = (eng.engine_problem, eng._warn_once)   # the cached originals, even if a test patches them
    for cached in caches:
        cached.cache_clear()
    yield
    for cached in caches:
        cached.cache_clear()


def test_every_usable_engine_packs_and_runs_like_the_probe_says():
    usable = engines()
    assert usable, f"no usable engine among {torch.backends.quantized.supported_engines}"
    for name in usable:
        zp = name not in eng.SYMMETRIC_ONLY
        packed = make_packed(8, 16, zero_points=zp, engine=name)
        with quantized_engine(name):
            y = torch.ops.quantized.linear_dynamic(torch.randn(3, 16), packed)
        assert y.shape == (3, 8) and torch.isfinite(y).all()
    for name in set(torch.backends.quantized.supported_engines) - set(usable) - {"none"}:
        assert eng.engine_problem(name) is not None


def test_host_engines_follow_the_cpu():
    usable = engines()
    if eng.host_is_x86():
        assert usable[0] in ("x86", "fbgemm"), usable
    else:
        assert not {"x86", "fbgemm"} & set(usable), usable
    assert default_engine(zero_points=True) in engines(zero_point_nonzero=True)
    assert "onednn" not in engines(zero_point_nonzero=True)


def test_x86_engines_are_never_used_on_another_cpu(monkeypatch, fresh_probe):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    for name in eng.X86_ONLY:
        problem = eng.engine_problem(name)
        assert problem is not None
        if name in torch.backends.quantized.supported_engines:    # built in, yet never used off x86
            assert "x86 CPU" in problem and "aarch64" in problem, problem
    assert not {"x86", "fbgemm"} & set(engines())


def test_advice_names_the_engine_the_host_and_the_fix(monkeypatch, fresh_probe):
    current = torch.backends.quantized.engine
    monkeypatch.setattr(eng, "engine_problem", lambda name: "its kernels need an x86 CPU" if name == current else None)
    advice = eng.current_engine_advice()
    assert advice is not None
    assert f"torch.backends.quantized.engine is {current!r}" in advice
    assert "quantize_dynamic" in advice and "torch.backends.quantized.engine = " in advice
    fix = advice.split("torch.backends.quantized.engine = ")[1].split()[0].strip("'")
    assert fix != current and fix in eng.PREFERENCE


def test_enable_warns_once_when_the_engine_cannot_pack(monkeypatch, fresh_probe):
    current = torch.backends.quantized.engine
    monkeypatch.setattr(eng, "engine_problem", lambda name: "broken here" if name == current else None)
    with pytest.warns(UserWarning, match="cannot pack linear weights"):
        with registry.enabled(backend="reference"):
            pass


def test_no_warning_when_the_engine_packs(recwarn, fresh_probe):
    with quantized_engine(default_engine()):
        with registry.enabled(backend="reference"):
            pass
    assert not [w for w in recwarn if "cannot pack" in str(w.message)]


def test_demo_switches_to_a_usable_engine_and_says_so(monkeypatch, fresh_probe, capsys):
    from opregistry.demo.workloads import use_a_usable_engine

    current, probe = torch.backends.quantized.engine, eng.engine_problem
    monkeypatch.setattr(eng, "engine_problem", lambda name: "broken here" if name == current else probe(name))
    if not eng.usable_engines():
        pytest.skip(f"no engine of this torch besides {current!r} packs weights here")
    with quantized_engine(current):
        use_a_usable_engine()
        switched = torch.backends.quantized.engine
    out = capsys.readouterr().out
    assert switched != current and switched in eng.PREFERENCE
    assert f"{current!r} cannot pack weights" in out and f"torch.backends.quantized.engine = {switched!r}" in out
