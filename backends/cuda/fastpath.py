"""Module fast path: ``torch.ao.nn.quantized.dynamic.Linear`` on CUDA tensors straight to the kernel.

The dispatcher costs tens of microseconds per call for this op (boxing the
packed-params ScriptObject), comparable to a decode-size kernel. While
enabled, the class's ``forward`` is wrapped: an activation on this backend's
device type with a qint8 module goes to the runner; anything else goes to the
``forward`` that was there before (PyTorch's, or another backend's wrapper).
Uninstalling restores it when ours is still the installed one, and otherwise
turns ours into a pass-through, so wrappers may be removed in any order.
"""

from __future__ import annotations

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear


class ModuleFastPath:
    def __init__(self, runner, device_type: str):
        self.runner = runner
        self.device_type = device_type
        self._previous = None
        self._forward = None
        self._active = False

    def install(self) -> None:
        if self._forward is not None:
            return
        previous = DynamicQuantizedLinear.forward
        run, device_type, state = self.runner.run, self.device_type, self

        def forward(module, x):
            params = module._packed_params
            if state._active and x.device.type == device_type and params.dtype == torch.qint8:
                return run(x, params._packed_params, params)
            return previous(module, x)

        forward.__wrapped__ = previous
        self._previous, self._forward, self._active = previous, forward, True
        DynamicQuantizedLinear.forward = forward

    def uninstall(self) -> None:
        if self._forward is None:
            return
        self._active = False
        if DynamicQuantizedLinear.forward is self._forward:
            DynamicQuantizedLinear.forward = self._previous
        self._forward = None
        self._previous = None
