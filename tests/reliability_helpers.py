"""What only the reliability tests share: warning filters, (packed, unpacked)
weights, configs for the ARM backend in the ARM tier's execution, a cost proxy.
The contract checks themselves are :mod:`opregistry.testing`.

Not a test module. Only the reliability tests import it.
"""

from __future__ import annotations

from conftest import ARM_EXECUTION
from opregistry import testing
from opregistry.backends.common import LINEAR_OPS, unpack_weight
from opregistry.testing import (EPILOGUE_ABS, EPILOGUE_REL, contract_tolerance, default_engine,  # noqa: F401
                                make_qweight, mismatches, quantized_engine, reference)
from opregistry.testing import engines as engines_for  # noqa: F401

# torch.quantize_per_* and friends warn (UserWarning) in 2.13; filter in tests only.
QUANT_CREATION_WARNING = "ignore:.*quantized tensor creation functions.*deprecated:UserWarning"
OVERRIDE_WARNING = "ignore:.*Overriding a previously registered kernel:UserWarning"



def make_packed(n: int, k: int, **kwargs):
    """``(packed, unpacked)`` of :func:`opregistry.testing.make_packed`."""
    packed = testing.make_packed(n, k, **kwargs)
    return packed, unpack_weight(packed)


def arm_overrides(device: str = "generic", padding: bool = True, activation_scale: str = "per_row",
                  max_bytes: int | None = None, **op_keys) -> dict:
    """Keyword overrides for ``registry.enable(backend="arm", ...)`` in the ARM tier's execution
    (the interpreter unless ``--arm-execution=compiled``: tests/conftest.py)."""
    op = {"padding": padding, "activation_scale": activation_scale, **op_keys}
    out = {"execution": ARM_EXECUTION, "device": device, "ops": {name: dict(op) for name in LINEAR_OPS}}
    if max_bytes is not None:
        out["weight_cache"] = {"max_bytes": max_bytes}
    return out


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def launch_cost(router, m: int, k: int, n: int) -> int:
    """Interpreter cost proxy of one call: programs x K steps (gemv counts double)."""
    if m == 0:
        return 0
    route = router.route(m)
    rule = route.rule
    steps = ceil_div(route.m_run, rule.block_m) * ceil_div(n, rule.block_n) * ceil_div(k, rule.block_k)
    return steps * (2 if rule.kernel == "gemv" else 1)

