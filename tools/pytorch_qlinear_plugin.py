"""pytest plugin: run PyTorch's own tests with an opregistry backend enabled.

Loaded by tools/run_pytorch_qlinear_test.py (``pytest -p pytorch_qlinear_plugin``).
Enables the backend named by ``OPREGISTRY_TEST_BACKEND`` (default ``arm``) with
``activation_scale: pytorch`` for both linear ops, before any test runs, and at
the end prints how many calls the backend served, failing the session if it
served none (a pass that never reached our kernel proves nothing).
"""

from __future__ import annotations

import os

from opregistry import registry

OPS = ("quantized::linear_dynamic", "quantized::linear_relu_dynamic")


def pytest_configure(config):
    backend = os.environ.get("OPREGISTRY_TEST_BACKEND", "arm")
    execution = os.environ.get("OPREGISTRY_TEST_EXECUTION", "interpreter")
    overrides = {"ops": {op: {"activation_scale": "pytorch"} for op in OPS}}
    if backend == "arm":
        overrides["execution"] = execution
    registry.enable(backend=backend, **overrides)
    config._opregistry_backend = backend


def pytest_sessionfinish(session, exitstatus):
    status = registry.status()
    served = {op: status["ops"].get(op, {}).get("calls", 0) for op in OPS}
    backend = session.config._opregistry_backend
    line = f"opregistry: backend {backend!r} (PyTorch activation scheme) served {served}"
    routing = status["backends"].get(backend, {}).get("routing")
    if routing:
        line += f"; routing {routing}"
    print("\n" + line)
    if sum(served.values()) == 0 and session.exitstatus == 0:
        print("opregistry: no call reached the backend; failing the run")
        session.exitstatus = 1
    registry.disable()
