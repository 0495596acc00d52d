"""Module fast path: ``torch.ao.nn.quantized.dynamic.Linear`` straight to the kernel.

Going through the dispatcher costs ~30 us per call for this op (boxing the
packed-params ScriptObject). While enabled, the class's ``forward`` is replaced
by one that calls the backend's runner directly; ``uninstall`` restores the
original. Modules with other dtypes (fp16) keep PyTorch's forward.
"""

from __future__ import annotations

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear


class ModuleFastPath:
    def __init__(self, runner):
        self.runner = runner
        self._original = None

    def install(self) -> None:
        if self._original is not None:
            return
        original = DynamicQuantizedLinear.forward
        run = self.runner.run

        def forward(module, x):
            params = module._packed_params
            if params.dtype != torch.qint8:
                return original(module, x)
            # PyTorch's forward passes reduce_range=True from module version 4 on.
            reduce_range = module.version is not None and module.version >= 4
            return run(x, params._packed_params, params, reduce_range)

        forward.__wrapped__ = original
        self._original = original
        DynamicQuantizedLinear.forward = forward

    def uninstall(self) -> None:
        if self._original is not None:
            DynamicQuantizedLinear.forward = self._original
            self._original = None
