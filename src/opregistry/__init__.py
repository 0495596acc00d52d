"""opregistry: a vendor-neutral operator registry for PyTorch.

The one installed import name. The repository keeps its folders at the root
(``registry/``, ``backends/``, ``configs/``, ``demo/``); the wheel installs them
as ``opregistry.registry``, ``opregistry.backends``, ... so that no user module
named ``registry`` or ``backends`` can shadow them. Typical use::

    from opregistry import registry
    registry.enable(backend="arm")

Importing this package imports nothing else (no torch): it is also the home of
the ``torch.backends`` autoload entry point.
"""

__version__ = "0.2.0"
