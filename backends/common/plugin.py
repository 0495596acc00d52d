"""The lifecycle hooks every runtime-owning backend plugin shares.

``registry.enable`` calls ``opregistry_op_kernels`` (build a runtime for the
config, not serving yet), then disables any earlier config of the same backend
(``opregistry_on_disable`` closes the runtime serving until then), installs
the kernels and calls ``opregistry_on_enable``, from which the new runtime
serves. A subclass says how to build its runtime; the runtime offers
``config``, ``runners`` (op name -> runner with ``run``), ``dispatch_key``,
``device_type``, ``close()`` and ``status()``. The module fast path (when the
config allows it) is registered here for the serving runtime and removed with it.
Each op's :class:`registry.OpKernel` reports the calls the dispatcher does not
see (``call_counts``): the fast path's, and the calls a runner handed to
PyTorch's kernel (a runner's ``pytorch_kernel_calls()``, where it has one).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

from opregistry.registry import Config, OpKernel, hookimpl

from .fastpath import DYNAMIC_LINEAR, dynamic_linear_handler
from .packed import LINEAR_DYNAMIC


class RuntimePlugin(ABC):
    def __init__(self):
        self._lock = threading.Lock()
        self.runtime = None     # serving now
        self._pending = None    # built by op_kernels, serving from on_enable
        self._fast_path = None  # our handler in the module fast-path slot, while serving

    @abstractmethod
    def make_runtime(self, config: Config):
        """Build the runtime for ``config``; raise BackendUnavailable if it cannot run here."""

    @hookimpl
    def opregistry_op_kernels(self, backend, config):
        runtime = self.make_runtime(config)   # raises before anything is installed
        with self._lock:
            self._pending = runtime
        # A runner may offer more overloads and ask for the kernel it replaces (OpKernel fields).
        return {op: OpKernel(runner, runtime.dispatch_key, overloads=getattr(runner, "overloads", {}),
                             receive_original=getattr(runner, "receive_original", None),
                             call_counts=self._call_counts(op, runner))
                for op, runner in runtime.runners.items()}

    def _call_counts(self, op: str, runner):
        """``OpKernel.call_counts`` of ``op``: the module fast path's calls (linear_dynamic's
        handler, while it serves) and the runner's calls handed to PyTorch's kernel."""
        handed = getattr(runner, "pytorch_kernel_calls", None)

        def counts() -> dict[str, int]:
            fast = self._fast_path if op == LINEAR_DYNAMIC else None
            return {"fast_path": fast.calls.value if fast is not None else 0,
                    "original": handed() if handed is not None else 0}

        return counts

    @hookimpl
    def opregistry_on_enable(self, backend, config):
        with self._lock:
            self.runtime, self._pending = self._pending, None
            runner = self.runtime.runners.get(LINEAR_DYNAMIC) if self.runtime is not None else None
            if runner is not None and self.runtime.config.op(LINEAR_DYNAMIC).fast_path:
                # A runner may offer its own handler (module_handler()); otherwise the generic
                # one calls runner.run(x, packed, owner, reduce_range).
                make = getattr(runner, "module_handler", None)
                self._fast_path = (make() if make is not None
                                   else dynamic_linear_handler(runner.run, self.runtime.device_type))
                DYNAMIC_LINEAR.add(self._fast_path)

    @hookimpl
    def opregistry_on_disable(self, backend):
        with self._lock:
            if self._fast_path is not None:
                DYNAMIC_LINEAR.remove(self._fast_path)
                self._fast_path = None
            if self.runtime is not None:
                self.runtime.close()
                self.runtime = None

    @hookimpl
    def opregistry_backend_status(self, backend):
        with self._lock:
            if self.runtime is None:
                return {}
            # The fast path's calls are in registry.status()'s per-op counts (OpKernel.call_counts).
            return {**self.runtime.status(), "fast_path": self._fast_path is not None}

    @hookimpl
    def opregistry_stub_kernels(self, backend):
        with self._lock:
            runtime = self.runtime
        stub = getattr(runtime, "stub_kernels", None)
        return None if stub is None else stub()
