"""Hook specifications for opregistry backend plugins.

A backend plugin is a module (or object) whose functions are marked with
:data:`hookimpl` and named after the specs below. Declare it in your
distribution's metadata under the entry-point group ``opregistry.backends``::

    [project.entry-points."opregistry.backends"]
    mybackend = "mypackage.opregistry_plugin"

Every hook except :func:`opregistry_backend_info` and
:func:`opregistry_register_commands` receives ``backend``: the registry calls
such a hook only on the plugin that declared that backend name, so a plugin
that serves a single backend may ignore the argument.
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
        ``reason`` a person can act on). Must be cheap and must not raise. Name
        a setting to change with :func:`registry.option` (``option("execution",
        "interpreter")``), as in error messages: it then reads as the Python
        keyword or the command-line option, wherever the reason is shown.
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
def opregistry_op_config(backend, op, settings):
    """Read the backend's settings for one op.

    The registry owns ``ops.<op>.enabled``; every other key of the op's merged
    mapping is the backend's. Called once per op the backend provides, whether
    or not a layer mentions it. The mapping also holds the op settings a layer
    gave once at the top level for every op (``activation_scale: pytorch``),
    below that layer's own ``ops.<op>`` values.

    :param settings: a :class:`registry.Section`: the merged mapping (without
        ``enabled``) with the file that set each key, and typed getters that
        raise :class:`registry.ConfigError` naming file and key path (a key set
        at the top level by the name it was written under). Call its
        ``check_keys`` with every key you know: a top-level setting that this
        op does not know is skipped for it, and one that no op knows is an
        unknown key.
    :return: an instance of a :class:`registry.OpConfig` subclass holding the
        backend's fields (``enabled`` is filled in by the registry). A plugin
        without this hook accepts no key but ``enabled``.
    """


@hookspec
def opregistry_validate_config(backend, config):
    """Check the backend-specific meaning of a merged :class:`registry.Config`.

    Called after every op's settings are built (``opregistry_op_config``), for
    checks that span keys or ops. Raise :class:`registry.ConfigError` naming
    the file and key path (``config.source_of(key)``).
    """


@hookspec
def opregistry_op_kernels(backend, config):
    """Build the kernels ``backend`` installs for ``config``.

    Called by :func:`registry.enable`. Raise :class:`registry.BackendUnavailable`
    when the requested execution mode cannot run here.

    :return: a dict mapping an op name (``"quantized::linear_dynamic"``) to an
        :class:`registry.OpKernel`; only enabled ops need to be present. An
        ``OpKernel`` may also serve more overloads of its op (``overloads``) and
        ask for the kernel it replaces (``receive_original``: PyTorch's own,
        captured by the registry when it first overrides the op, for calls the
        backend hands back; see :class:`registry.OpKernel`).
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


@hookspec
def opregistry_stub_kernels(backend):
    """Return a context manager under which ``backend``'s ops launch no kernel.

    For measuring host overhead (``opregistry bench``). While the context is
    active, the enabled backend's ops do all their per-call work (argument
    checks, routing, weight cache, output allocation) except the kernel launch
    itself: their outputs are allocated but not computed. Leaving the context
    restores the kernels. Called only while ``backend`` is enabled, from a
    single thread (other threads calling the ops meanwhile get uncomputed
    outputs too).

    :return: a context manager, or ``None`` when the backend has no kernel
        launch to stub (a tool then reports no host-overhead figure for it).
    """


@hookspec
def opregistry_tune_candidates(backend, op, config):
    """The kernels a tuner (``opregistry tune``) may choose between for ``op``.

    The tuner times each candidate as the only routing rule of ``op`` (over
    ``config``, the other settings unchanged), next to PyTorch's own op with
    nothing enabled, and writes a routing table that hands each range of M to
    the fastest.

    :param config: the merged :class:`registry.Config` being tuned; its op
        settings (a weight layout, say) decide which candidates are valid.
    :return: a list of routing rules as a config file writes them, without
        ``name`` and ``when`` (``{"kernel": "gemv", "block_m": 1, ...}``), each
        valid as the only rule of ``op``'s table under ``config``; or ``None``
        when the backend offers no choice for ``op``. Include the rule that
        hands calls back to PyTorch's kernel, if the backend has one: a range
        of M can only be routed to a candidate.
    """


@hookspec
def opregistry_register_commands(subparsers):
    """Add subcommands to the ``opregistry`` command line.

    Called on every loaded plugin, in load order (built-in plugins first),
    after the core commands (``list``, ``status``, ``check-config``) are added
    and before the arguments are parsed. A plugin may provide commands and no
    backend (its ``opregistry_backend_info`` returns nothing); unlike the
    backend hooks, this one receives no ``backend``.

    :param subparsers: the ``opregistry`` parser's subparsers action (what
        :meth:`argparse.ArgumentParser.add_subparsers` returned). Add a command
        with ``subparsers.add_parser(name, help=...)`` and give it
        ``set_defaults(func=run)``, where ``run(args)`` returns the exit status.
        A :class:`registry.RegistryError` raised by ``run`` is printed as
        ``opregistry NAME: error: ...`` and exits with status 1.

    A plugin whose hook raises is reported on stderr and the commands it added
    are removed; the core commands and the other plugins' commands still work.
    """
