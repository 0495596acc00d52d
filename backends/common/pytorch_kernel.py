"""Routing rules that hand M back to PyTorch's own kernel (``kernel: pytorch``).

A runner whose routing table has such a rule sets ``receive_original`` on its
:class:`registry.OpKernel` to :meth:`PytorchKernel.receive`: the registry then
hands over the kernel that served the op before the registry overrode it,
captured at enable time, which the runner calls directly (never through the
dispatcher again, so it cannot re-enter the runner). The output for those M is
PyTorch's, bit for bit. See :class:`registry.OpKernel`.
"""

from __future__ import annotations

from typing import Callable

from opregistry.registry import RoutingRule

PYTORCH_KERNEL = "pytorch"   # the `kernel:` value of a rule that names PyTorch's own kernel


class PytorchKernel:
    """PyTorch's own kernel of one op, for the rules of its table that name it."""

    def __init__(self, op: str, rules: tuple[RoutingRule, ...]):
        self.op = op
        self.rules = tuple(r.name for r in rules if r.kernel == PYTORCH_KERNEL)
        self._call: Callable | None = None

    @property
    def wanted(self) -> bool:
        """Whether some rule routes to PyTorch's kernel (then ask the registry for it)."""
        return bool(self.rules)

    @property
    def receive_original(self) -> Callable[[Callable], None] | None:
        """The value for :class:`registry.OpKernel` ``receive_original``."""
        return self.receive if self.rules else None

    def receive(self, call: Callable) -> None:
        self._call = call

    def __call__(self, *args, **kwargs):
        if self._call is None:
            raise RuntimeError(
                f"{self.op}: routing rule {self.rules[0]!r} names PyTorch's own kernel, which the registry hands "
                "over when it installs this op (registry.enable); this runner was not installed by the registry")
        return self._call(*args, **kwargs)
