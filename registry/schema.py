"""Reading one op's settings with errors that name the file and the key path.

The registry owns only ``ops.<op>.enabled``; every other key of an op's
mapping belongs to the backend that serves the op. The registry merges the
layers, then hands the backend a :class:`Section` (through the
``opregistry_op_config`` hook): the merged mapping plus the file that set each
key, and typed getters that raise :class:`ConfigError` naming that file and
the full key path. A backend's schema is then a few lines of getters.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

from .errors import ConfigError


def kind(value: Any) -> str:
    """How a bad value is shown in an error message."""
    if value is None:
        return "null"
    if isinstance(value, (str, bool, int, float)):
        return f"{value!r}"
    return type(value).__name__


def _as_written(path: str) -> str:
    return path


class Section:
    """A mapping from a merged config (e.g. ``ops.quantized::linear_dynamic``)
    with the source of each key. Getters check the type, apply the default when
    the key is absent and raise :class:`ConfigError` (file, key path) otherwise.
    Call :meth:`check_keys` once with every key the schema knows.

    ``written_as`` maps a key path to the name the user wrote it under: an op's
    key set by a top-level op setting (``padding: false`` for every op) is
    reported as ``padding``, not ``ops.<op>.padding``. In an op's own mapping
    (``op_level``) such keys are *inherited*: :meth:`check_keys` skips those it
    does not know (another op of the backend may). It records what it knows in
    :attr:`known`."""

    def __init__(self, data: Mapping, path: str, source_of: Callable[[str], str],
                 written_as: Callable[[str], str] = _as_written, op_level: bool = False):
        self._written_as = written_as
        self._op_level = op_level
        self._source_of = source_of
        self.path = path
        if not isinstance(data, Mapping):
            raise ConfigError(self.source(), self.key(""), f"expected a mapping, got {kind(data)}")
        self.data = data
        self.known: tuple[str, ...] = ()

    # -- locating ----------------------------------------------------------
    def key(self, name: str) -> str:
        """The key path of ``name`` (of this mapping when empty) as the user wrote it."""
        full = f"{self.path}.{name}" if self.path and name else (name or self.path)
        return self._written_as(full)

    def source(self, name: str = "") -> str:
        return self._source_of(self.key(name))

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source(name), self.key(name), message)

    def sub(self, name: str, value: Any = None) -> "Section":
        """The nested mapping at ``name`` (or ``value``, e.g. one item of a list)."""
        path = f"{self.path}.{name}" if self.path else name
        return Section(self.data[name] if value is None else value, path, self._source_of, self._written_as)

    def inherited(self, name: str) -> bool:
        """Whether ``name`` is an op's key written once for every op (a top-level op setting)."""
        full = f"{self.path}.{name}" if self.path else name
        return self._op_level and self._written_as(full) != full

    def __contains__(self, name: str) -> bool:
        return name in self.data

    # -- structure ---------------------------------------------------------
    def check_keys(self, allowed: tuple[str, ...] | list[str], owner: str = "") -> None:
        self.known = tuple(allowed)
        for name in self.data:
            if not isinstance(name, str):
                raise self.error("", f"keys must be strings, got {kind(name)}")
            if name not in allowed and not self.inherited(name):
                who = f" for {owner}" if owner else ""
                raise self.error(name, f"unknown key{who}; expected one of: {', '.join(allowed)}")

    # -- typed getters -----------------------------------------------------
    def get_bool(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"expected a boolean, got {kind(value)}")
        return value

    def get_str(self, name: str, default: str | None = None) -> str | None:
        value = self.data.get(name, default)
        if value is default and default is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(name, f"expected a non-empty string, got {kind(value)}")
        return value

    def get_int(self, name: str, default: int | None = None, minimum: int = 0) -> int | None:
        value = self.data.get(name, default)
        if value is None and default is None:
            return None
        return expect_int(value, self.source(name), self.key(name), minimum)

    def get_tile(self, name: str, default: int | None = None) -> int | None:
        """A positive power of two (Triton tile sizes)."""
        value = self.get_int(name, default, minimum=1)
        if value is not None and value & (value - 1):
            raise self.error(name, f"expected a power of two (Triton tile sizes), got {value}")
        return value

    def get_choice(self, name: str, choices: tuple[str, ...], default: str,
                   renamed: Mapping[str, str] | None = None) -> str:
        """One of ``choices``; an old spelling in ``renamed`` is accepted with a
        FutureWarning that names the new one."""
        value = self.data.get(name, default)
        return expect_choice(value, self.source(name), self.key(name), choices, renamed)

    def get_list(self, name: str) -> list | None:
        value = self.data.get(name)
        if value is None and name not in self.data:
            return None
        if not isinstance(value, list) or not value:
            raise self.error(name, f"expected a non-empty list, got {kind(value)}")
        return value


def expect_int(value: Any, source: str, path: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(source, path, f"expected an integer, got {kind(value)}")
    if value < minimum:
        raise ConfigError(source, path, f"expected an integer >= {minimum}, got {value}")
    return value


def expect_choice(value: Any, source: str, path: str, choices: tuple[str, ...],
                  renamed: Mapping[str, str] | None = None) -> str:
    if renamed and isinstance(value, str) and value in renamed:
        new = renamed[value]
        warnings.warn(f"{source}: {path}: {value!r} is deprecated, write {new!r} (same meaning)",
                      FutureWarning, stacklevel=4)
        return new
    if value not in choices:
        raise ConfigError(source, path, f"expected one of {', '.join(choices)}, got {kind(value)}")
    return value
