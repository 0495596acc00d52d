"""Hook specifications for opregistry backend plugins.

A backend plugin is a module (or object) whose functions are marked with
:data:`hookimpl` and named after the specs below. Declare it in your
distribution's metadata under the entry-point group ``opregistry.backends``::

    [project.entry-points."opregistry.backends"]
    mybackend = "mypackage.opregistry_plugin"

Every hook except :func:`opregistry_backend_info` receives ``backend``: the
registry calls a hook only on the plugin that declared that backend name, so a
plugin that serves a single backend may ignore the argument.
"""

from __future__ import annotations

import pluggy

PROJECT = "opregistry"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def opregistry_backend_info():
    """Describe the backend(s) this plugin provides.

    :return: a :class:`registry.BackendInfo` or a list of them. The names must
        be unique across all installed plugins; a second plugin claiming a name
        already taken is skipped with a warning.
    """


@hookspec
def opregistry_backend_availability(backend):
    """Tell whether ``backend`` can run on this host with its default config.

    :return: a :class:`registry.Availability` (``available`` and, when not, a
        ``reason`` a person can act on). Must be cheap and must not raise.
    """


@hookspec
def opregistry_packaged_config(backend, device):
    """Return the path of the packaged YAML config for ``backend``.

    :param device: the ``device`` named by the deployment config or keyword
        overrides, or ``None`` to detect the host.
    :return: a :class:`pathlib.Path` (or ``importlib.resources`` traversable),
        or ``None`` when the backend ships no config.
    """


@hookspec
def opregistry_validate_config(backend, config):
    """Check the backend-specific meaning of a merged :class:`registry.Config`.

    Generic structure (types, unknown keys, routing coverage) is checked by the
    registry; this hook checks what only the backend knows (kernel names, tile
    limits). Raise :class:`registry.ConfigError` naming the file and key path.
    """


@hookspec
def opregistry_op_kernels(backend, config):
    """Build the kernels ``backend`` installs for ``config``.

    Called by :func:`registry.enable`. Raise :class:`registry.BackendUnavailable`
    when the requested execution mode cannot run here.

    :return: a dict mapping an op name (``"quantized::linear_dynamic"``) to an
        :class:`registry.OpKernel`; only enabled ops need to be present.
    """


@hookspec
def opregistry_on_enable(backend, config):
    """Called after the backend's kernels are installed (e.g. to patch a
    module fast path)."""


@hookspec
def opregistry_on_disable(backend):
    """Called after the backend's kernels are removed: drop caches, undo patches."""


@hookspec
def opregistry_backend_status(backend):
    """Return a JSON-able dict of runtime state (cache stats, routing counts)
    for :func:`registry.status`."""
