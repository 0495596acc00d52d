"""Shared fixtures. The helpers (packed weights, engines, the contract bound)
are :mod:`opregistry.testing`."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading

import pytest
import torch

from opregistry import registry
from opregistry.testing import engines

ENGINES = engines()   # this host's quantized engines that take symmetric weights

# -- The ARM tier: which execution every ARM test uses ------------------------
# CI runs the ARM kernels through Triton's interpreter. With a Triton-CPU build,
# `pytest --arm-execution=compiled` (or OPREGISTRY_TEST_ARM_EXECUTION=compiled)
# runs the same tests on compiled kernels; `-m arm_tier` selects just them.
# Tests read the mode from ARM_EXECUTION here (never a literal "interpreter").
ARM_EXECUTION_ENV = "OPREGISTRY_TEST_ARM_EXECUTION"
ARM_TIMEOUT_ENV = "OPREGISTRY_TEST_ARM_TIMEOUT"
ARM_EXECUTION = os.environ.get(ARM_EXECUTION_ENV, "interpreter")
# Modules whose ARM tests run in ARM_EXECUTION (their other tests ride along).
ARM_TIER_MODULES = frozenset({
    "test_arm", "test_pytorch_scheme", "test_fuzz", "test_special_values", "test_int_mm", "test_torchao",
    "test_cache_lifetime", "test_concurrency", "test_lifecycle", "test_bad_configs", "test_arm_prequant",
    "test_pytorch_rule", "test_arm_rowdot", "test_tune",
})
COMPILED_TIER_TIMEOUT_S = 600.0   # per test: kernel compiles included; a hang fails the run


def pytest_addoption(parser):
    group = parser.getgroup("opregistry")
    group.addoption("--arm-execution", choices=("interpreter", "compiled"), default=None,
                    help=f"execution of the ARM tests (default: ${ARM_EXECUTION_ENV} or 'interpreter'); "
                         "'compiled' needs Triton-CPU and skips the ARM tests with the reason when it is absent")
    group.addoption("--arm-timeout", type=float, default=None,
                    help=f"per-test limit in seconds for the ARM tier (default: ${ARM_TIMEOUT_ENV}, or "
                         f"{COMPILED_TIER_TIMEOUT_S:g} when compiled, none when interpreted); a test past it "
                         "dumps every thread's stack and ends the run with a failure")


def pytest_configure(config):
    global ARM_EXECUTION
    config.addinivalue_line("markers", "arm_tier: runs the ARM kernels in the tier's execution (--arm-execution)")
    config.addinivalue_line("markers", "aarch64_lane: in the emulated aarch64 lane's subset (AARCH64_LANE)")
    chosen = config.getoption("--arm-execution")
    if chosen:
        ARM_EXECUTION = chosen
        os.environ[ARM_EXECUTION_ENV] = chosen
    if ARM_EXECUTION not in ("interpreter", "compiled"):
        raise pytest.UsageError(f"${ARM_EXECUTION_ENV}: expected interpreter or compiled, got {ARM_EXECUTION!r}")
    if ARM_EXECUTION == "compiled":
        # Read when Triton builds its default driver (the tier asks for the CPU one).
        os.environ.setdefault("TRITON_CPU_BACKEND", "1")
    # Tests that pack through modules (set_weight_bias, quantize_dynamic) use torch's current engine. On aarch64
    # it may be one that cannot pack here (torch >= 2.11: x86) or that rejects zero points (torch 2.10: onednn);
    # run under this host's first engine that takes every weight the tests make. Tests of a given engine name it.
    usable = engines(zero_point_nonzero=True)
    if usable and torch.backends.quantized.engine not in usable:
        torch.backends.quantized.engine = usable[0]


def pytest_report_header(config):
    return [f"ARM tier: execution={ARM_EXECUTION}, per-test limit={_arm_timeout(config) or 'none'}",
            f"quantized engines usable here: {', '.join(engines())}; tests run under "
            f"{torch.backends.quantized.engine}"]


def _arm_timeout(config) -> float | None:
    value = config.getoption("--arm-timeout")
    if value is None and os.environ.get(ARM_TIMEOUT_ENV):
        value = float(os.environ[ARM_TIMEOUT_ENV])
    if value is None:
        value = COMPILED_TIER_TIMEOUT_S if ARM_EXECUTION == "compiled" else None
    return value or None


# -- The aarch64 lane's subset (tools/aarch64/lane.sh --subset, what CI runs emulated) -------------------
# Emulated tests run 6-9x slower than native, so the lane runs a named subset: the registry, packaging, the
# ARM backend in every activation scheme and every packaged table on small shapes, _int_mm, and PyTorch's
# scheme against every engine of the host (qnnpack and onednn on aarch64). Entries are node-id prefixes.
AARCH64_LANE = (
    "test_engines.py::",
    "test_config.py::",
    "test_reference.py::",
    "test_registry.py::test_enable_runs_the_override_and_disable_restores_native_bit_exact",
    "test_registry.py::test_enable_twice_is_idempotent",
    "test_registry.py::test_context_manager_restores_on_exception",
    "test_registry.py::test_second_backend_replaces_first_cleanly",
    "test_registry.py::test_backends_listing",
    "test_registry.py::test_unknown_backend_lists_installed",
    "test_registry.py::test_example_plugin_through_a_real_entry_point",
    "test_registry.py::test_broken_plugin_is_isolated_and_strict_raises",
    "test_packaging.py::test_runtime_requirements_accept_what_users_have",
    "test_packaging.py::test_triton_is_never_a_runtime_requirement",
    "test_packaging.py::test_the_only_import_name_is_opregistry",
    "test_arm.py::test_every_routing_rule_of_every_packaged_config",
    "test_arm.py::test_engines_and_schemes",
    "test_arm.py::test_bias_and_relu",
    "test_arm.py::test_per_tensor_activation_scale",
    "test_arm.py::test_through_dispatcher_and_fast_path",
    "test_arm.py::test_auto_selects_compiled_only_on_aarch64",
    "test_arm.py::test_device_detection",
    "test_int_mm.py::test_every_m_exact[1-generic]",
    "test_int_mm.py::test_every_m_exact[3-generic]",
    "test_int_mm.py::test_every_m_exact[65-generic]",
    "test_int_mm.py::test_every_m_exact[2-cix-p1]",
    "test_int_mm.py::test_every_m_exact[64-cix-p1]",
    "test_int_mm.py::test_int32_wraps_like_pytorch",
    "test_int_mm.py::test_rejects_what_pytorch_rejects",
    "test_pytorch_scheme.py::test_dispatcher_matches_pytorchs_op_on_every_engine",
    "test_pytorch_scheme.py::test_integer_grid_is_exact_through_the_dispatcher",
    "test_pytorch_scheme.py::test_pytorch_scheme_through_the_dispatcher",
    "test_pytorch_scheme.py::test_the_engine_that_packed_the_weight_decides",
)


def _in_aarch64_lane(item) -> bool:
    nodeid = item.nodeid.rpartition("tests/")[2]
    return nodeid.startswith(AARCH64_LANE)


def _is_arm_tier(item) -> bool:
    return item.module is not None and item.module.__name__.rpartition(".")[2] in ARM_TIER_MODULES


def pytest_collection_modifyitems(config, items):
    skip = None
    if ARM_EXECUTION == "compiled":
        from opregistry.backends.arm.device import triton_cpu_status

        status = triton_cpu_status()
        if not status.active:
            skip = pytest.mark.skip(reason=f"compiled ARM tier: {status.detail}")
    for item in items:
        if _in_aarch64_lane(item):
            item.add_marker(pytest.mark.aarch64_lane)
        if _is_arm_tier(item):
            item.add_marker(pytest.mark.arm_tier)
            if skip is not None:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The ARM tier's per-test limit. A kernel compile that never ends holds the
    process inside C++, where no Python-level timeout fires: faulthandler's C
    watchdog dumps the stacks and exits the run (a failure, not a stuck run)."""
    timeout = _arm_timeout(item.config) if _is_arm_tier(item) else None
    if not timeout:
        yield
        return
    # The terminal's stderr, not the test's captured one (which dies with the process).
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key

        fd = item.config.stash[fault_handler_stderr_fd_key]
    except (ImportError, KeyError):
        fd = sys.__stderr__.fileno()
    message = f"\n{item.nodeid}: exceeded the ARM tier's per-test limit of {timeout:g} s; stopping the run\n"
    notice = threading.Timer(timeout, lambda: os.write(fd, message.encode()))
    notice.daemon = True
    notice.start()
    faulthandler.dump_traceback_later(timeout + 5, exit=True, file=fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        notice.cancel()


@pytest.fixture
def fresh_registry():
    """A private Registry, disabled at the end whatever happened."""
    reg = registry.Registry()
    try:
        yield reg
    finally:
        reg.disable()


@pytest.fixture(autouse=True)
def _no_backend_left_enabled():
    yield
    registry.disable()
