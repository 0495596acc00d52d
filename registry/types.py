"""Small value types shared between the registry and backend plugins."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class BackendInfo:
    """What a plugin declares about one backend."""

    name: str
    ops: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run on this host with its default config."""

    available: bool
    reason: str = ""


@dataclass(frozen=True)
class OpKernel:
    """One kernel to install for an op on a dispatch key.

    ``fn`` has the op's schema (for ``quantized::linear_dynamic``:
    ``fn(X, W_prepack, reduce_range=False)``).
    """

    fn: Callable
    dispatch_key: str = "CPU"


class CallCounter:
    """A call counter safe to bump from many threads without a lock
    (``next()`` on ``itertools.count`` is atomic in CPython)."""

    __slots__ = ("_count", "_offset")

    def __init__(self):
        self._count = itertools.count()
        self._offset = 0

    def increment(self) -> None:
        next(self._count)

    @property
    def value(self) -> int:
        # Reading consumes one number; remember it so it is not counted as a call.
        self._offset += 1
        return next(self._count) - self._offset + 1
