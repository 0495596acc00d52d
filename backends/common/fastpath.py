"""Module fast path: ``torch.ao.nn.quantized.dynamic.Linear`` straight to a kernel.

Through the dispatcher this op costs ~30 us per call on the host (boxing the
packed-params ScriptObject). While at least one backend has a handler here,
the class's ``forward`` is replaced by one that offers each call to the
handlers, newest first; a handler returns the output or ``NotImplemented``
(wrong device, fp16 module, ...), and PyTorch's own ``forward`` takes what no
handler wants. The class attribute is process-wide, so this slot is too: it is
the one owner of the patch, and the original ``forward`` comes back when the
last handler leaves, whatever order backends are disabled in.
"""

from __future__ import annotations

import threading
from typing import Callable

from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

Handler = Callable  # (module, x) -> Tensor | NotImplemented


class FastPathSlot:
    def __init__(self, cls: type):
        self.cls = cls
        self._lock = threading.Lock()
        self._handlers: tuple[Handler, ...] = ()   # replaced whole, so readers need no lock
        self._original = None

    def add(self, handler: Handler) -> None:
        with self._lock:
            if not self._handlers:
                self._original = self.cls.forward
                self.cls.forward = self._make_forward(self._original)
            self._handlers = (handler, *self._handlers)

    def remove(self, handler: Handler) -> None:
        with self._lock:
            handlers = tuple(h for h in self._handlers if h is not handler)
            if self._handlers and not handlers:
                self.cls.forward = self._original
                self._original = None
            self._handlers = handlers

    def installed(self, handler: Handler) -> bool:
        return handler in self._handlers

    def _make_forward(self, original):
        slot = self

        def forward(module, x):
            for handler in slot._handlers:
                y = handler(module, x)
                if y is not NotImplemented:
                    return y
            return original(module, x)

        forward.__wrapped__ = original
        return forward


DYNAMIC_LINEAR = FastPathSlot(DynamicQuantizedLinear)


def dynamic_linear_handler(run, device_type: str) -> Handler:
    """A handler for qint8 modules whose input is on ``device_type``;
    ``run(x, packed, owner, reduce_range)`` is the backend's runner."""
    import torch

    qint8 = torch.qint8

    def handler(module, x):
        params = module._packed_params
        if params.dtype != qint8 or x.device.type != device_type:
            return NotImplemented
        # PyTorch's forward passes reduce_range=True from module version 4 on.
        version = module.version
        return run(x, params._packed_params, params, version is not None and version >= 4)

    return handler
