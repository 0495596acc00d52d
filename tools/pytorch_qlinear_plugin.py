"""pytest plugin: run PyTorch's own tests with an opregistry backend enabled.

Loaded by tools/run_pytorch_qlinear_test.py and tools/run_pytorch_quant_tests.py
(``pytest -p pytorch_qlinear_plugin``). Configured by environment variables:

* ``OPREGISTRY_TEST_BACKEND``: ``arm`` (default), ``reference``, or ``none``
  (nothing enabled: the baseline run);
* ``OPREGISTRY_TEST_EXECUTION``: the arm backend's execution (default ``interpreter``);
* ``OPREGISTRY_TEST_ACTIVATION_SCALE``: ``pytorch`` (default: PyTorch's own
  scheme, the drop-in mode), or ``per_row`` / ``per_tensor`` (a negative control:
  numeric tests that compare against PyTorch must then fail);
* ``OPREGISTRY_TEST_FAST_PATH``: ``1`` (default) or ``0``, the module fast path;
* ``OPREGISTRY_TEST_REPORT``: a file to write the outcome to (JSON: every test's
  outcome, and the calls served through the dispatcher and the module fast path).

The backend is enabled before any test runs. At the end the plugin prints how many
calls it served through each path, and fails the session if a backend was enabled
and served none (a pass that never reached our kernels proves nothing).
"""

from __future__ import annotations

import json
import os

from opregistry import registry

OPS = ("quantized::linear_dynamic", "quantized::linear_relu_dynamic")


def _settings() -> dict:
    return {
        "backend": os.environ.get("OPREGISTRY_TEST_BACKEND", "arm"),
        "execution": os.environ.get("OPREGISTRY_TEST_EXECUTION", "interpreter"),
        "activation_scale": os.environ.get("OPREGISTRY_TEST_ACTIVATION_SCALE", "pytorch"),
        "fast_path": os.environ.get("OPREGISTRY_TEST_FAST_PATH", "1") not in ("0", "false", "no"),
        "report": os.environ.get("OPREGISTRY_TEST_REPORT"),
    }


def pytest_configure(config):
    s = _settings()
    config._opregistry = s
    if s["backend"] == "none":
        return
    op = {"activation_scale": s["activation_scale"]}
    if s["backend"] != "reference":
        op["fast_path"] = s["fast_path"]
    overrides = {"ops": {name: dict(op) for name in OPS}}
    if s["backend"] == "arm":
        overrides["execution"] = s["execution"]
    registry.enable(backend=s["backend"], **overrides)


_outcomes: dict[str, str] = {}   # node id -> passed | failed | skipped


def pytest_runtest_logreport(report):
    # A failure or skip in any phase (setup, call, teardown) is the test's outcome.
    if report.when == "call" or report.outcome != "passed":
        if _outcomes.get(report.nodeid) in (None, "passed"):
            _outcomes[report.nodeid] = report.outcome


def served() -> dict:
    """Calls served per op: through the dispatcher, and through the module fast path."""
    status = registry.status()
    by_path = {op: status["ops"].get(op, {}).get("calls_by_path", {}) for op in OPS}
    dispatcher = {op: paths.get("dispatcher", 0) for op, paths in by_path.items()}
    fast = {op: paths["fast_path"] for op, paths in by_path.items() if paths.get("fast_path")}
    return {"dispatcher": dispatcher, "fast_path": fast, "routing": {
        name: b.get("routing") for name, b in status["backends"].items() if b.get("routing")}}


def pytest_sessionfinish(session, exitstatus):
    s = session.config._opregistry
    outcomes = _outcomes
    counts = {"dispatcher": {}, "fast_path": {}, "routing": {}} if s["backend"] == "none" else served()
    total = sum(counts["dispatcher"].values()) + sum(counts["fast_path"].values())
    if s["backend"] == "none":
        line = "opregistry: no backend enabled (baseline: PyTorch's own kernels)"
    else:
        line = (f"opregistry: backend {s['backend']!r} (activation_scale={s['activation_scale']}, "
                f"fast_path={'on' if s['fast_path'] else 'off'}) served {total} calls: "
                f"dispatcher {counts['dispatcher']}, module fast path {counts['fast_path']}")
    print("\n" + line)
    if s["report"]:
        tally = {k: sum(1 for v in outcomes.values() if v == k) for k in ("passed", "failed", "skipped")}
        with open(s["report"], "w") as f:
            json.dump({"settings": s, "outcomes": outcomes, "tally": tally, "served": counts,
                       "exitstatus": int(session.exitstatus)}, f, indent=1, sort_keys=True)
    if s["backend"] != "none":
        if total == 0 and session.exitstatus == 0:
            print("opregistry: no call reached the backend; failing the run")
            session.exitstatus = 1
        registry.disable()
