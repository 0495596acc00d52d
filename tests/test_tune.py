"""``opregistry tune``: candidates from the backend's hook, timed against PyTorch's op, and the
deployment config it writes (loadable, routing each range of M to the measured winner)."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import ARM_EXECUTION
from opregistry import registry
from opregistry.demo import tune, workloads
from opregistry.registry.cli import main

LINEAR = "quantized::linear_dynamic"
LINEAR_RELU = "quantized::linear_relu_dynamic"
INT_MM = "aten::_int_mm"


@pytest.fixture(autouse=True)
def _nothing_enabled():
    registry.disable()
    yield
    registry.disable()


def _outputs(k: int, n: int, ms: list[int]) -> dict:
    """Every tuned op's output at each M, computed the way the tuner calls it."""
    out = {}
    for op, make in tune.WORKLOADS.items():
        calls = make(k, n, ms, 0)
        with torch.no_grad():
            out[op] = {m: calls[m]() for m in ms}
    return out


def test_tune_writes_a_loadable_config_that_routes_each_measured_m(tmp_path, capsys):
    """Through the whole command. Under the interpreter no candidate comes near PyTorch's op, so every
    range goes to PyTorch: a `kernel: pytorch` rule, or the op disabled (then nothing is faster)."""
    out = tmp_path / "tuned.yaml"
    ms = [1, 3]
    argv = ["tune", "--backend", "arm", "--execution", ARM_EXECUTION, "--shapes", "40x24", "--m", *map(str, ms),
            "--min-time", "0.005", "--rounds", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "<- chosen" in printed
    text = out.read_text()
    assert "# Tuned by `opregistry tune`" in text and "threads: 1" in text and torch.__version__ in text
    data = yaml.safe_load(text)
    assert data["backend"] == "arm" and data["execution"] == ARM_EXECUTION
    assert set(data["ops"]) == {LINEAR, LINEAR_RELU, INT_MM}

    cfg = registry.default_registry().build_config("arm", config=str(out))    # what enable() will load
    candidates = {op: registry.default_registry().plugins.call("arm", "opregistry_tune_candidates", op=op,
                                                               config=cfg) for op in data["ops"]}
    for op, settings in data["ops"].items():
        for rule in settings["routing"]:
            chosen = {k: v for k, v in rule.items() if k not in ("name", "when")}
            assert chosen in candidates[op], (op, rule)
            assert f"M={rule.get('when', {}).get('m_max', ms[-1])}: " in text
        if ARM_EXECUTION == "interpreter":
            assert (settings.get("enabled") is False
                    or all(rule["kernel"] == "pytorch" for rule in settings["routing"])), (op, settings)

    expected = _outputs(40, 24, [1, 2, 3, 5])
    with registry.enabled(backend="arm", config=str(out)):
        got = _outputs(40, 24, [1, 2, 3, 5])
        status = registry.status()["ops"]
    for op in expected:
        for m in expected[op]:
            if ARM_EXECUTION == "interpreter":      # PyTorch's own kernel: bit-exact
                assert torch.equal(got[op][m], expected[op][m]), (op, m)
            else:
                assert got[op][m].shape == expected[op][m].shape
        if ARM_EXECUTION == "interpreter" and op in status:      # not there: tuned off (enabled: false)
            assert status[op]["pytorch_kernel_calls"] == 4, (op, status[op])


def _result(times: dict, candidates: list[dict], shapes, ms) -> tune.OpResult:
    res = tune.OpResult(LINEAR, candidates)
    for (label, shape, m), ms_ in times.items():
        res.times[(label, shape, m)] = ms_ * 1e-3
    res.executions.add("interpreter")
    tune.choose(res, shapes, ms)
    return res


def test_choice_per_m_and_ranges_are_the_measured_winners(tmp_path):
    """The selection and the file, on made-up times: per M the best worst-case ratio over the shapes wins,
    neighbouring M with one winner share a rule, and the rule measured at M covers M down to the previous one."""
    a = {"kernel": "gemv_prequant", "block_m": 1, "block_n": 64, "block_k": 16}
    b = {"kernel": "dot_prequant", "block_m": 64, "block_n": 64, "block_k": 32, "pad_m": True}
    c = {"kernel": "gemv_prequant", "block_m": 4, "block_n": 64, "block_k": 32, "pad_m": True}
    p = {"kernel": "pytorch"}
    la, lb, lc, lp = (tune.describe_rule(r) for r in (a, b, c, p))
    s1, s2 = (64, 64), (64, 128)
    ms = [1, 2, 8, 64, 128]
    base = {1: 10, 2: 10, 8: 20, 64: 100, 128: 200}
    times = {}
    for shape in (s1, s2):
        for m in ms:
            times[(tune.PYTORCH, shape, m)] = base[m]
            times[(lp, shape, m)] = base[m] * 1.02
            times[(la, shape, m)] = 5 if m <= 2 else 10 * base[m]
            times[(lb, shape, m)] = base[m] / 2 if m >= 64 else 10 * base[m]
            # c: far ahead on one shape, behind PyTorch on the other: never the safer choice
            times[(lc, shape, m)] = base[m] / 10 if shape == s1 else base[m] * 1.5
    res = _result(times, [a, b, c, p], [s1, s2], ms)
    assert res.winners == {1: la, 2: la, 8: lp, 64: lb, 128: lb}

    s = tune.TuneSettings("arm", [s1, s2], ms, execution="interpreter")
    text = tune.render_config(s, registry.default_registry().build_config("arm", execution="interpreter"),
                              {LINEAR: res}, "opregistry tune ...")
    routing = yaml.safe_load(text)["ops"][LINEAR]["routing"]
    assert routing == [{"name": "m1-2", "when": {"m_max": 2}, **a},
                       {"name": "m3-8", "when": {"m_max": 8}, **p},
                       {"name": "m9+", **b}]
    assert "# M=64: dot_prequant 64x64x32 pad: 64x64 50 ms vs 100 ms (2.00x); 64x128 50 ms vs 100 ms (2.00x)" in text
    out = tmp_path / "t.yaml"
    tune.write(str(out), text, "arm")
    cfg = registry.default_registry().build_config("arm", config=str(out))
    router = cfg.op(LINEAR).routing
    route = {m: next(r.name for r in router if r.matches(m)) for m in (1, 2, 3, 8, 9, 64, 1000)}
    assert route == {1: "m1-2", 2: "m1-2", 3: "m3-8", 8: "m3-8", 9: "m9+", 64: "m9+", 1000: "m9+"}
    assert cfg.op(LINEAR).enabled and cfg.op(LINEAR_RELU).enabled    # untuned ops keep the table's settings


def test_an_op_that_pytorch_wins_everywhere_is_disabled():
    a = {"kernel": "gemv_prequant", "block_m": 1, "block_n": 64, "block_k": 16}
    p = {"kernel": "pytorch"}
    shape, ms = (64, 64), [1, 8]
    times = {}
    for m in ms:
        times[(tune.PYTORCH, shape, m)] = 10
        times[(tune.describe_rule(a), shape, m)] = 30
        times[(tune.describe_rule(p), shape, m)] = 10.5
    res = _result(times, [a, p], [shape], ms)
    s = tune.TuneSettings("arm", [shape], ms, execution="interpreter")
    text = tune.render_config(s, registry.default_registry().build_config("arm", execution="interpreter"),
                              {LINEAR: res}, "opregistry tune ...")
    settings = yaml.safe_load(text)["ops"][LINEAR]
    assert settings["enabled"] is False and settings["routing"] == [{"name": "m1+", **p}]


def test_a_candidate_that_fails_is_reported_and_not_chosen(monkeypatch, capsys, tmp_path):
    bad = {"kernel": "gemv_prequant", "block_m": 1, "block_n": 64, "block_k": 16}
    real = registry.default_registry().plugins.call

    def call(backend, hook, **kwargs):
        if hook == "opregistry_tune_candidates":
            return [bad, {"kernel": "pytorch"}]
        return real(backend, hook, **kwargs)

    monkeypatch.setattr(registry.default_registry().plugins, "call", call)
    monkeypatch.setattr(tune, "time_call", _failing_for(bad))
    s = tune.TuneSettings("arm", [(32, 16)], [1], ops=[LINEAR], execution=ARM_EXECUTION, rounds=1, min_time=0.001)
    _, results = tune.tune(s)
    res = results[LINEAR]
    assert res.winners == {1: "pytorch"}
    assert "RuntimeError: boom" in res.failures[tune.describe_rule(bad)]
    tune.report(s, results)
    assert "not chosen, it failed: gemv_prequant 1x64x16: RuntimeError: boom" in capsys.readouterr().out


def _failing_for(rule):
    def time_call(fn, min_time=0.2):
        cfg = registry.default_registry().active_config("arm")
        if cfg is not None and cfg.op(LINEAR).routing[0].kernel == rule["kernel"]:
            raise RuntimeError("boom")
        return workloads.time_call(fn, min_time)
    return time_call


def test_tune_errors_name_what_to_do(tmp_path, capsys):
    out = str(tmp_path / "x.yaml")
    common = ["--shapes", "8x8", "--m", "1", "--out", out]
    assert main(["tune", "--backend", "reference", *common]) == 1
    assert "offers no candidates to tune (hook opregistry_tune_candidates)" in capsys.readouterr().err
    assert main(["tune", "--backend", "arm", "--ops", "aten::mm", *common]) == 1
    assert "does not provide aten::mm; it provides: quantized::linear_dynamic" in capsys.readouterr().err
    assert main(["tune", "--backend", "arm", "--min-time", "0", *common]) == 1
    assert "--min-time must be positive" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_bench_takes_a_config_file_for_its_backend(tmp_path, capsys):
    path = tmp_path / "deploy.yaml"
    path.write_text("backend: arm\nops:\n  quantized::linear_dynamic:\n    routing:\n"
                    "      - {name: all, kernel: pytorch}\n")
    argv = ["bench", "--csv", "--shapes", "40x24", "--m", "2", "--min-time", "0", "--no-overhead",
            "--backend", "arm", "--execution", ARM_EXECUTION, "--include-interpreter", "--config", str(path)]
    assert main(argv) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert {row.split(",")[3] for row in rows} >= {"pytorch"} and len(rows) == 2
    assert main(["bench", "--shapes", "8x8", "--m", "1", "--config", str(path)]) == 1
    assert "a config file names one backend: give that backend too (--backend NAME)" in capsys.readouterr().err
