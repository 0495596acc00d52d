"""Run a ``@triton.jit`` kernel through Triton's interpreter, whatever
``TRITON_INTERPRET`` was when Triton was imported: how both Triton backends
validate their kernels on hosts without their compiler.

Two things in Triton's interpreter need help when it is used per kernel in a
process that may also run compiled kernels:

* ``InterpretedFunction`` interprets the kernel body, but the Triton standard
  library (``tl.zeros``, ``tl.sum``, ...) was compiled-mode ``@jit`` at import
  and refuses to be called from Python. During a launch those nested calls are
  routed to the interpreter too.
* The interpreter patches ``triton.language`` while it runs and (3.0, 3.9)
  does not always put it back, which breaks compiled kernels launched later.
  Each launch snapshots those namespaces and restores them afterwards.

The patching is process-wide, so launches are serialised by one lock.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from opregistry.registry.errors import option

_MISSING = object()


# Oldest triton whose interpreter runs these kernels with numpy 2.x: 3.7.1 and 3.9
# measured to work (2026-11-30). Older ones do not, measured with numpy 2.4:
# 3.6 fails on `range(0, tl.cdiv(K, BK))` ("only 0-dimensional arrays can be
# converted"); 3.0 (PyPI's, and Triton-CPU `legacy`, which shares its interpreter)
# fails the same way and, past that, loses every store (outputs stay zero; with
# numpy 1.26 stores work) and PyPI 3.0's tl.dot asserts tiles of >= 16 rows.
MIN_TRITON = (3, 7)
OLDER_INTERPRETERS = ("Triton < 3.7's interpreter does not run these kernels with numpy 2.x (3.0, including "
                      "Triton-CPU legacy's: scalar loop bounds fail, stores are lost)")


def interpreter_status() -> tuple[bool, str]:
    """``(usable, detail)`` of Triton's interpreter here. Cheap; never raises."""
    import importlib.metadata

    try:
        found = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return False, (f"{option('execution', 'interpreter')} needs triton >= {'.'.join(map(str, MIN_TRITON))} "
                       "and none is installed: pip install 'opregistry[interpreter]' (on a CPU-only torch)")
    try:
        numbers = tuple(int(part) for part in found.split("+")[0].split(".")[:2])
    except ValueError:
        numbers = (0, 0)
    if numbers < MIN_TRITON:
        return False, (f"{option('execution', 'interpreter')} needs triton >= {'.'.join(map(str, MIN_TRITON))}, "
                       f"found triton {found} (a Triton-CPU build or an older PyPI release; {OLDER_INTERPRETERS}); "
                       f"use {option('execution', 'compiled')} with Triton-CPU, or run the interpreter in another "
                       "environment: pip install 'opregistry[interpreter]'")
    try:
        from triton.runtime.interpreter import InterpretedFunction  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return False, f"triton {found} is installed but its interpreter cannot be imported: {type(exc).__name__}: {exc}"
    return True, f"Triton interpreter (triton {found})"


class InterpretedKernel:
    """``InterpretedKernel(jit_fn)[grid](*args, **kwargs)`` runs ``jit_fn`` interpreted.
    Check :func:`interpreter_status` first: this raises ImportError without triton."""

    _lock = threading.Lock()
    _device_fns: dict = {}  # id(JITFunction) -> InterpretedFunction; stdlib functions live forever

    def __init__(self, jit_fn):
        from triton.runtime.interpreter import InterpretedFunction

        self._fn = InterpretedFunction(getattr(jit_fn, "fn", jit_fn))

    @classmethod
    @contextmanager
    def _nested_jit_calls_interpreted(cls):
        from triton.runtime import interpreter
        from triton.runtime.jit import JITFunction

        def call(jit_fn, *args, **kwargs):
            fn = cls._device_fns.get(id(jit_fn))
            if fn is None:
                fn = cls._device_fns[id(jit_fn)] = interpreter.InterpretedFunction(jit_fn.fn)
            if not hasattr(fn, "rewrite"):       # older Triton: __call__ patches and runs
                return fn(*args, **kwargs)
            interpreter._patch_lang(jit_fn.fn)   # undone by the launch's snapshot
            return fn.rewrite()(*args, **kwargs)

        original = JITFunction.__call__
        JITFunction.__call__ = call
        try:
            yield
        finally:
            JITFunction.__call__ = original

    def __getitem__(self, grid):
        launcher = self._fn[grid]

        def run(*args, **kwargs):
            with self._lock:
                saved = _snapshot_language()
                try:
                    with self._nested_jit_calls_interpreted():
                        return launcher(*args, **kwargs)
                finally:
                    _restore_language(saved)

        return run


def _language_namespaces():
    import triton.language as tl

    objs = [tl, getattr(tl, "core", None), getattr(tl, "math", None), getattr(tl, "tensor", None),
            getattr(getattr(tl, "core", None), "tensor_descriptor_base", None)]
    return [o for o in dict.fromkeys(objs) if o is not None]


def _snapshot_language():
    return [(obj, dict(vars(obj))) for obj in _language_namespaces()]


def _restore_language(saved) -> None:
    for obj, before in saved:
        now = vars(obj)   # names the interpreter added are left: its cached helpers refer to them
        for name, value in before.items():
            if now.get(name, _MISSING) is not value:
                setattr(obj, name, value)
