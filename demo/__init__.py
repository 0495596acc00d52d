"""The demo / benchmark application: ``opregistry demo`` and ``opregistry bench``.

Not part of the registry's core: it is a built-in plugin (entry point ``demo``
in the ``opregistry.backends`` group) that provides no backend and adds its
commands through the ``opregistry_register_commands`` hook, as any third-party
plugin could. It reaches the backends only through the registry's public API
and documented hooks.

* :mod:`opregistry.demo.plugin`: the hook (imports nothing heavy);
* :mod:`opregistry.demo.cli`: arguments, runs and reports of both commands;
* :mod:`opregistry.demo.workloads`: models, implementations, measurements.
"""
