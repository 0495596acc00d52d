"""The lifecycle hooks every runtime-owning backend plugin shares.

``registry.enable`` calls ``opregistry_op_kernels`` (build a runtime for the
config, not serving yet), then disables any earlier config of the same backend
(``opregistry_on_disable`` closes the runtime serving until then), installs
the kernels and calls ``opregistry_on_enable``, from which the new runtime
serves. A subclass says how to build its runtime; the runtime offers
``runners`` (op name -> callable), ``dispatch_key``, ``enable_fast_path()``,
``close()`` and ``status()``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

from registry import Config, OpKernel, hookimpl


class RuntimePlugin(ABC):
    def __init__(self):
        self._lock = threading.Lock()
        self.runtime = None     # serving now
        self._pending = None    # built by op_kernels, serving from on_enable

    @abstractmethod
    def make_runtime(self, config: Config):
        """Build the runtime for ``config``; raise BackendUnavailable if it cannot run here."""

    @hookimpl
    def opregistry_op_kernels(self, backend, config):
        runtime = self.make_runtime(config)   # raises before anything is installed
        with self._lock:
            self._pending = runtime
        return {op: OpKernel(runner, runtime.dispatch_key) for op, runner in runtime.runners.items()}

    @hookimpl
    def opregistry_on_enable(self, backend, config):
        with self._lock:
            self.runtime, self._pending = self._pending, None
            if self.runtime is not None:
                self.runtime.enable_fast_path()

    @hookimpl
    def opregistry_on_disable(self, backend):
        with self._lock:
            if self.runtime is not None:
                self.runtime.close()
                self.runtime = None

    @hookimpl
    def opregistry_backend_status(self, backend):
        with self._lock:
            return self.runtime.status() if self.runtime is not None else {}
