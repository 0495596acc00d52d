"""``torch.backends`` entry point: PyTorch calls :func:`autoload` at the end of
``import torch`` (unless ``TORCH_DEVICE_BACKEND_AUTOLOAD=0``).

Inert unless ``OPREGISTRY_AUTOLOAD=<backend>`` is set; then it enables that
backend (with ``OPREGISTRY_CONFIG`` if set). It never raises: an exception here
would break ``import torch`` for every program in the environment.

Import order: ``opregistry.registry`` imports torch, so when a program imports
the registry first, this hook runs while the registry is still half-imported.
It then only records the request; the registry runs it as the last step of its
own import (:func:`run_pending`).
"""

from __future__ import annotations

import logging
import os
import sys

ENV = "OPREGISTRY_AUTOLOAD"
CONFIG_ENV = "OPREGISTRY_CONFIG"
REGISTRY_MODULE = "opregistry.registry"
log = logging.getLogger("opregistry.autoload")

_pending: list[str] = []


def autoload() -> None:
    backend = os.environ.get(ENV, "").strip()
    if not backend:
        return
    module = sys.modules.get(REGISTRY_MODULE)
    if module is not None and not getattr(module, "_IMPORTED", False):
        _pending.append(backend)     # the registry is mid-import; it calls run_pending() when done
        return
    _enable(backend)


def run_pending() -> None:
    """Called by ``opregistry.registry`` once it is fully imported."""
    while _pending:
        _enable(_pending.pop(0))


def _enable(backend: str) -> None:
    try:
        from opregistry import registry

        registry.enable(backend=backend)
        log.info("opregistry: enabled backend %r at import torch (%s=%s)", backend, ENV, backend)
    except Exception as exc:  # noqa: BLE001 - must never break `import torch`
        config = os.environ.get(CONFIG_ENV)
        config_note = (f"{CONFIG_ENV}={config}" if config else
                       f"{CONFIG_ENV} is unset (set it to a YAML file to change settings, e.g. 'execution: interpreter')")
        log.warning("opregistry: %s=%s could not be enabled: %s: %s. Autoload is configured by the environment: "
                    "%s names the backend (unset it to turn autoload off), %s.",
                    ENV, backend, type(exc).__name__, exc, ENV, config_note)
