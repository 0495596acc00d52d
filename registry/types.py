"""Small value types shared between the registry and backend plugins."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Mapping


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

    ``overloads``: other overloads of the same op served by the same
    registration, by overload name, each with that overload's schema (for
    ``aten::_int_mm``: ``{"out": fn_out}`` with ``fn_out(self, mat2, *, out)``:
    what ``torch.compile``'d code calls). Installed on the same dispatch key,
    removed with ``fn`` and counted with it in :func:`registry.status`.

    ``receive_original``: set it when ``fn`` may hand calls back to the kernel
    it replaces (e.g. a routing rule that gives some M to PyTorch's own
    kernel). Before ``fn`` can be called, the registry calls
    ``receive_original(original)`` once; ``original(*args, **kwargs)`` runs the
    kernel that served (op's default overload, ``dispatch_key``) before the
    registry first overrode it (PyTorch's own, captured with
    ``torch.library.get_kernel`` at that moment and kept when a backend
    replaces another), called directly, never through the dispatcher, so it
    cannot re-enter ``fn``. It needs ``torch.library.get_kernel`` (PyTorch 2.9
    and later): on an older torch, ``enable()`` raises
    :class:`registry.BackendUnavailable` naming the torch version, before
    changing anything.

    ``call_counts``: set it when the backend serves calls of the op that the
    dispatcher never sees, or hands calls to the original kernel. It returns
    ``{"fast_path": n, "original": n}`` (either key may be absent):
    ``fast_path`` the calls it served without the dispatcher (a module fast
    path), ``original`` the calls, by either path, it handed to the kernel
    received through ``receive_original``. :func:`registry.status` adds
    ``fast_path`` to the dispatcher's count, which the registry keeps itself.
    """

    fn: Callable
    dispatch_key: str = "CPU"
    overloads: Mapping[str, Callable] = field(default_factory=dict, hash=False)
    receive_original: Callable[[Callable], None] | None = None
    call_counts: Callable[[], Mapping[str, int]] | None = None


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
