"""Launching a compiled Triton kernel again without ``JITFunction.run``.

``kernel[grid](*args, **consts)`` costs host time on every call before the
driver launch itself: binding and specializing every argument, computing the
cache key, looking up device and stream (~20-30 us in Triton 3.6 on an H200
host; ~45 us per launch in Triton-CPU's 3.0 ``legacy`` on a 2-core x86 host,
where the kernel of a decode-sized layer runs ~100 us). For a call whose
specialization is known to be the same as an earlier one (same M, same
strides, same pointer alignment: the runtimes key their bound launches so),
the compiled kernel can be launched directly through Triton's own launcher
object.

:func:`bind` makes the first launch through ``JITFunction.run`` (compiling if
needed) and records, at the driver's launcher, exactly what it passes there:
the compiled function, its metadata and the kernel arguments. The returned
:class:`BoundKernel` repeats that launch with new values for the leading
run-time arguments (pointers may be given as ints or tensors). Triton 3.0
hands the launcher the non-constexpr arguments only, later versions all of
them; both are recognised. When the installed Triton hands the launcher
something else (another convention, launch hooks set by a profiler), ``bind``
returns ``None`` after its launch and the caller keeps using
``JITFunction.run``: never a wrong launch, at worst the slow one.
"""

from __future__ import annotations

import functools
import threading

_HEADER = 9   # gridX, gridY, gridZ, stream, function, packed metadata, launch metadata, enter hook, exit hook
_record_lock = threading.Lock()
_recording = threading.local()


def _launcher_class():
    from triton.runtime import driver

    return driver.active.launcher_cls


def _install_recorder(cls) -> None:
    """Wrap ``cls.__call__`` once, process-wide: calls made by a thread that asked
    to record are recorded (then launched as usual); others pass straight through."""
    if getattr(cls, "_opregistry_recorder", False):
        return
    original = cls.__call__

    def __call__(self, *args, **kwargs):
        box = getattr(_recording, "box", None)
        if box is not None and not box:
            box.append((self, args, kwargs))
        return original(self, *args, **kwargs)

    cls.__call__ = __call__
    cls._opregistry_recorder = True


class BoundKernel:
    """One compiled kernel, one grid: ``bound(stream, *leading_args)``; ``stream``
    is the one of the binding launch (CPU launchers take it and ignore it)."""

    __slots__ = ("launcher", "grid", "stream", "function", "packed", "tail", "n_lead", "name")

    def __init__(self, launcher, grid, stream, function, packed, tail, n_lead, name):
        self.launcher, self.grid, self.stream, self.function, self.packed = launcher, grid, stream, function, packed
        self.tail, self.n_lead, self.name = tail, n_lead, name

    def __call__(self, stream, *lead):
        g = self.grid
        self.launcher(g[0], g[1], g[2], stream, self.function, self.packed, None, None, None, *lead, *self.tail)


def bind(jit_fn, grid: tuple[int, ...], args: tuple, kwargs: dict):
    """Launch ``jit_fn[grid](*args, **kwargs)`` now; return a :class:`BoundKernel` that
    launches the same compiled kernel with new leading ``args``, or ``None``.

    ``args`` are run-time (non-constexpr) arguments, in the kernel's order from its
    first parameter; ``kwargs`` the rest (constexprs, launch options)."""
    cls = _launcher_class()
    with _record_lock:
        _install_recorder(cls)
    box: list = []
    _recording.box = box
    try:
        jit_fn[grid](*args, **kwargs)
    finally:
        _recording.box = None
    if len(box) != 1:
        return None
    launcher, rec, rec_kw = box[0]
    params = getattr(jit_fn, "params", None)
    if params is None:
        return None
    runtime_params = sum(1 for p in params if not p.is_constexpr)
    if rec_kw or len(rec) - _HEADER not in (len(params), runtime_params) or len(args) > runtime_params:
        return None          # another launcher convention
    if any(p.is_constexpr for p in params[:len(args)]):
        return None
    if not (_no_hook(rec[7]) and _no_hook(rec[8])):
        return None          # launch hooks are set (a profiler): keep the JIT path
    g = tuple(grid) + (1,) * (3 - len(grid))
    if tuple(rec[0:3]) != g:
        return None
    kernel_args = rec[_HEADER:]
    if any(a is not b for a, b in zip(kernel_args[:len(args)], args)):
        return None          # the leading arguments are not passed through in order
    return BoundKernel(launcher, g, rec[3], rec[4], rec[5], tuple(kernel_args[len(args):]), len(args),
                       getattr(jit_fn, "__name__", "kernel"))


def _no_hook(hook) -> bool:
    """``None`` (Triton <= 3.4) or an empty ``HookChain`` (3.5+): nothing to call at launch."""
    return hook is None or (hasattr(hook, "calls") and not hook.calls)


@functools.cache
def jit_function_class():
    """Triton's ``JITFunction``: what a compiled-mode kernel is (an interpreted or a
    stubbed one is not)."""
    from triton.runtime.jit import JITFunction

    return JITFunction


class BoundLaunches:
    """The bound launches of one launch plan, by specialization key: what Triton
    specializes on that a call can change (M, strides, pointer alignment). An
    entry is a tuple of :class:`BoundKernel` (one per launch of the call) or
    ``None`` when a launch could not be bound (then Triton's own launch, every
    time). Bounded: cleared when ``limit`` keys are held."""

    __slots__ = ("entries", "limit", "direct")

    def __init__(self, limit: int = 64):
        self.entries: dict[tuple, tuple | None] = {}
        self.limit = limit
        self.direct = 0            # calls served by bound launches (tests, status)

    def run(self, key, launches) -> bool:
        """Launch ``launches`` (``(jit_fn, grid, args, constexprs)`` each) for ``key``:
        directly when bound, else through ``JITFunction.run`` (binding them the first
        time). Returns whether the launches were direct."""
        bound = self.entries.get(key)
        if bound is not None:
            for b, (_, _, args, _) in zip(bound, launches):
                b(b.stream, *args)
            self.direct += 1
            return True
        if key in self.entries:
            for jit_fn, grid, args, consts in launches:
                jit_fn[grid](*args, **consts)
            return False
        made = tuple(bind(jit_fn, grid, args, consts) for jit_fn, grid, args, consts in launches)
        if len(self.entries) >= self.limit:
            self.entries.clear()
        self.entries[key] = None if None in made else made
        return False
