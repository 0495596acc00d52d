"""``torch.backends`` entry point: PyTorch calls :func:`autoload` at the end of
``import torch`` (unless ``TORCH_DEVICE_BACKEND_AUTOLOAD=0``).

Inert unless ``OPREGISTRY_AUTOLOAD=<backend>`` is set; then it enables that
backend (with ``OPREGISTRY_CONFIG`` if set). It lives outside the ``registry``
package so that importing it runs nothing, and it never raises: an exception
here would break ``import torch`` for every program in the environment.
"""

import logging
import os

ENV = "OPREGISTRY_AUTOLOAD"
log = logging.getLogger("opregistry.autoload")


def autoload() -> None:
    backend = os.environ.get(ENV, "").strip()
    if not backend:
        return
    try:
        import registry

        registry.enable(backend=backend)
        log.info("opregistry: enabled backend %r at import torch", backend)
    except Exception as exc:  # noqa: BLE001 - must never break `import torch`
        log.warning("opregistry: %s=%s could not be enabled: %s: %s", ENV, backend, type(exc).__name__, exc)
