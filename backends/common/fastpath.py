"""Module fast path: ``torch.ao.nn.quantized.dynamic.Linear`` straight to a kernel.

Through the dispatcher this op costs ~30 us per call on the host (boxing the
packed-params ScriptObject). While at least one backend has a handler here,
the class gets a ``__call__`` of its own that offers each eligible call to the
handlers, newest first; a handler returns the output or ``NotImplemented``
(wrong device, fp16 module, ...), and ``torch.nn.Module.__call__`` (hooks,
``forward``, the dispatcher) takes everything else.

What the class is, as TorchScript, ``torch.compile``, FX, ``copy``, pickling
and ``state_dict`` see it, does not change: ``forward`` is never touched (it is
what TorchScript compiles), no instance attribute is added, and the only
change to the class is one ``__call__`` entry in its ``__dict__`` while a
handler is registered, deleted when the last one leaves (whatever order the
backends are disabled in), so the class is then exactly as PyTorch made it.

A call takes the fast path only when ``torch.nn.Module.__call__`` would do
nothing but call ``forward(x)`` with a plain tensor: one positional argument
whose type is exactly ``torch.Tensor`` and that needs no grad, the module's
class exactly the patched class (``LinearReLU`` and other subclasses have
their own ``forward``) with no ``forward`` of its own, no module or global
forward/backward hooks, no ``module.compile()``, and no TorchScript tracing,
Dynamo / ``torch.compile`` tracing, ``__torch_function__`` mode (e.g. a
``torch.device`` context) or ``__torch_dispatch__`` mode (fake tensors,
FlopCounter, ...) active. Otherwise ``torch.nn.Module.__call__`` runs, looked up
at call time (so FX's patched ``Module.__call__`` sees the call), and the op
goes through the dispatcher, where the enabled backend serves it.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from torch.nn.modules import module as _nn_module

from opregistry.registry import CallCounter

Handler = Callable  # (module, x) -> Tensor | NotImplemented; x is a plain torch.Tensor


class FastPathSlot:
    def __init__(self, cls: type):
        self.cls = cls
        self._lock = threading.Lock()
        self._handlers: tuple[Handler, ...] = ()   # replaced whole, so readers need no lock
        self._call = None                           # our __call__ while it is installed

    def add(self, handler: Handler) -> None:
        with self._lock:
            if not self._handlers:
                if "__call__" in self.cls.__dict__:
                    raise RuntimeError(f"{self.cls.__qualname__} already defines __call__; "
                                       "the module fast path cannot be installed over it")
                self._call = _make_call(self)
                self.cls.__call__ = self._call
            self._handlers = (handler, *self._handlers)

    def remove(self, handler: Handler) -> None:
        with self._lock:
            handlers = tuple(h for h in self._handlers if h is not handler)
            if self._handlers and not handlers:
                self._handlers = ()
                if self.cls.__dict__.get("__call__") is self._call:
                    del self.cls.__call__
                self._call = None
            self._handlers = handlers

    def installed(self, handler: Handler) -> bool:
        return handler in self._handlers


def _make_call(slot: FastPathSlot):
    cls = slot.cls
    tensor = torch.Tensor
    is_compiling = torch.compiler.is_compiling
    tracing_state = torch._C._get_tracing_state
    function_mode = torch._C._is_torch_function_mode_enabled
    dispatch_modes = torch._C._len_torch_dispatch_stack
    # Module-level dicts of torch.nn.modules.module, mutated in place, never rebound.
    g_fwd, g_fwd_pre = _nn_module._global_forward_hooks, _nn_module._global_forward_pre_hooks
    g_bwd, g_bwd_pre = _nn_module._global_backward_hooks, _nn_module._global_backward_pre_hooks

    def __call__(self, *args, **kwargs):
        # is_compiling() first: under Dynamo it is the only thing traced here.
        if is_compiling() or kwargs or len(args) != 1 or type(self) is not cls:
            return torch.nn.Module.__call__(self, *args, **kwargs)
        x = args[0]
        d = self.__dict__     # one lookup for the per-module state below
        try:
            pytorchs_path = (
                type(x) is not tensor or x.requires_grad
                or d["_forward_hooks"] or d["_forward_pre_hooks"] or d["_backward_hooks"] or d["_backward_pre_hooks"]
                or g_fwd or g_fwd_pre or g_bwd or g_bwd_pre or "forward" in d or "_compiled_call_impl" in d
                or tracing_state() or dispatch_modes() or function_mode())
        except KeyError:      # a module built without nn.Module.__init__: PyTorch's own path decides
            pytorchs_path = True
        if pytorchs_path:
            return torch.nn.Module.__call__(self, *args, **kwargs)
        for handler in slot._handlers:
            y = handler(self, x)
            if y is not NotImplemented:
                return y
        return torch.nn.Module.__call__(self, x)

    __call__.__qualname__ = f"{cls.__qualname__}.__call__"
    __call__.__doc__ = "opregistry's module fast path (installed while a backend serves it); see " + __name__
    return __call__


DYNAMIC_LINEAR = FastPathSlot(DynamicQuantizedLinear)


def dynamic_linear_handler(run, device_type: str) -> Handler:
    """A handler for qint8 modules whose input is on ``device_type``;
    ``run(x, packed, owner, reduce_range)`` is the backend's runner (it keeps the
    prepared weight for ``packed``, the module's own packed-params object, as long
    as that object lives: see :meth:`WeightCache.get`). ``handler.calls`` counts
    the calls it served."""
    qint8 = torch.qint8
    calls = CallCounter()
    count = calls.increment

    def handler(module, x):
        params = module._modules["_packed_params"]
        if params.dtype != qint8 or x.device.type != device_type:
            return NotImplemented
        # PyTorch's forward passes reduce_range=True from module version 4 on.
        version = module.version
        y = run(x, params._packed_params, params, version is not None and version >= 4)
        count()
        return y

    handler.calls = calls
    return handler
