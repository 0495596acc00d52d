"""The shared module fast-path slot: one owner of the class patch."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DQLinear

from opregistry.backends.common.fastpath import DYNAMIC_LINEAR


@pytest.fixture
def layer():
    return DQLinear(8, 4)


@pytest.mark.parametrize("order", list(itertools.permutations(range(2))))
def test_handlers_stack_and_leave_in_any_order(layer, order):
    original = DQLinear.forward
    x = torch.randn(2, 8)
    native = layer(x)
    first = lambda m, x: torch.full((2, 4), 1.0)                                   # noqa: E731
    second = lambda m, x: torch.full((2, 4), 2.0) if x.shape[0] == 2 else NotImplemented  # noqa: E731
    handlers = [first, second]
    DYNAMIC_LINEAR.add(first)
    DYNAMIC_LINEAR.add(second)
    try:
        assert layer(x).eq(2.0).all()                       # newest first
        assert layer(torch.randn(3, 8)).eq(1.0).all()       # declined: falls through to the older one
    finally:
        for i in order:
            DYNAMIC_LINEAR.remove(handlers[i])
            if DYNAMIC_LINEAR._handlers:
                remaining = DYNAMIC_LINEAR._handlers[0]
                assert layer(x).eq(1.0 if remaining is first else 2.0).all()
    assert DQLinear.forward is original
    assert torch.equal(layer(x), native)
