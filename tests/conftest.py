"""Shared fixtures. The helpers (packed weights, engines, the contract bound)
are :mod:`opregistry.testing`."""

from __future__ import annotations

import pytest

from opregistry import registry
from opregistry.testing import engines

ENGINES = engines()   # this host's quantized engines that take symmetric weights


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
