"""A stand-in for a Triton kernel that launches nothing, for the runtimes'
``stub_kernels()`` (hook ``opregistry_stub_kernels``: host-overhead measurements)."""

from __future__ import annotations


def _no_launch(*args, **kwargs) -> None:
    return None


class StubKernel:
    """``StubKernel()[grid](*args, **kwargs)`` does nothing: the outputs the
    caller allocated stay uncomputed."""

    def __getitem__(self, grid):
        return _no_launch
