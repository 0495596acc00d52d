"""Exceptions raised by the registry and its backends."""


class RegistryError(Exception):
    """Base class for opregistry errors."""


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
