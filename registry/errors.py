"""Exceptions raised by the registry and its backends, and how their messages
name a setting the user can change.

A message that tells the user to pass a setting names it with :func:`option`;
the text then reads in the words of the interface it reaches: a Python caller
sees ``execution="interpreter"`` (``str(exc)``), a command-line user sees
``--execution interpreter`` (:meth:`RegistryError.cli_message`, which the
``opregistry`` command prints). Text that is not an exception (an availability
reason) goes through :func:`render` where it is shown.
"""

from __future__ import annotations

import re

# Private-use characters around "name" or "name=value": never typed by a user, never in a path.
_OPEN, _CLOSE = "\ue000", "\ue001"
_OPTION = re.compile(f"{_OPEN}([^{_CLOSE}=]+)(?:=([^{_CLOSE}]*))?{_CLOSE}")
INTERFACES = ("python", "cli", "raw")


def option(name: str, value: str | None = None) -> str:
    """A setting named in a message: ``option("execution", "interpreter")`` reads
    ``execution="interpreter"`` in Python and ``--execution interpreter`` on the
    command line; without ``value``, ``backend="NAME"`` / ``--backend NAME``."""
    return f"{_OPEN}{name}{'' if value is None else '=' + value}{_CLOSE}"


def render(text: str, interface: str = "python") -> str:
    """``text`` with every :func:`option` spelled for ``interface`` (``"python"``,
    ``"cli"``, or ``"raw"``: unchanged, for text that is rendered later)."""
    if interface == "raw":
        return text
    if interface not in INTERFACES:
        raise ValueError(f"interface: expected one of {', '.join(INTERFACES)}, got {interface!r}")

    def spell(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if interface == "cli":
            return f"--{name.replace('_', '-')} {value if value is not None else 'NAME'}"
        return f'{name}="{value if value is not None else "NAME"}"'

    return _OPTION.sub(spell, text)


class RegistryError(Exception):
    """Base class for opregistry errors. ``str(exc)`` names settings as a Python
    caller passes them, :meth:`cli_message` as the command line takes them."""

    @property
    def raw(self) -> str:
        """The message with its settings unrendered, for building another message."""
        return super().__str__()

    def __str__(self) -> str:
        return render(self.raw, "python")

    def cli_message(self) -> str:
        return render(self.raw, "cli")


class ConfigError(RegistryError, ValueError):
    """A config file or override is invalid.

    The message starts with the source (file name, or ``<keyword overrides>``)
    and the key path, and says what was expected.
    """

    def __init__(self, source: str, key: str, message: str):
        self.source = source
        self.key = key
        self.detail = message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class BackendUnavailable(RegistryError, RuntimeError):
    """The backend cannot run here with the requested settings."""


class PluginError(RegistryError):
    """A plugin failed to load or broke a rule (raised only with ``strict=True``)."""


class UnknownBackend(RegistryError, LookupError):
    """No installed plugin provides the requested backend name."""
