"""The demo application's plugin: adds ``demo`` and ``bench`` to ``opregistry``.

It provides no backend (no ``opregistry_backend_info``), so ``opregistry list``
does not show it.
"""

from __future__ import annotations

from opregistry.registry.hookspecs import hookimpl


@hookimpl
def opregistry_register_commands(subparsers):
    from .cli import add_commands

    add_commands(subparsers)
