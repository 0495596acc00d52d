"""Which of PyTorch's quantized engines can pack and run linear weights on this host.

``torch.backends.quantized.supported_engines`` lists the engines torch was built with, not the ones that work
here: PyPI's torch >= 2.11 for aarch64 lists ``x86`` and ``fbgemm`` too and makes ``x86`` the default engine,
whose kernels need an x86 CPU (``quantize_dynamic`` then fails with "unknown architecure"). torch 2.10's
aarch64 wheel lists ``qnnpack`` and ``onednn`` and defaults to ``onednn``. oneDNN packs symmetric weights only.
So an engine counts as usable when a tiny prepack + ``linear_dynamic`` succeeds under it (probed once per
process), and the x86-only engines are never tried on other CPUs.
"""

from __future__ import annotations

import functools
import platform
import warnings
from contextlib import contextmanager

import torch

# Preference when something must be picked: PyTorch's own x86 default first, then the ARM engines
# (qnnpack takes weights with zero points, onednn does not).
PREFERENCE = ("x86", "fbgemm", "qnnpack", "onednn")
X86_ONLY = ("x86", "fbgemm")
SYMMETRIC_ONLY = ("onednn",)


def host_is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@contextmanager
def quantized_engine(name: str):
    """``torch.backends.quantized.engine = name`` for the block."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@functools.cache
def engine_problem(name: str) -> str | None:
    """``None`` when engine ``name`` packs and runs a linear weight on this host, else why not."""
    if name not in torch.backends.quantized.supported_engines:
        return f"not built into this torch ({torch.__version__})"
    if name in X86_ONLY and not host_is_x86():
        return f"its kernels need an x86 CPU; this host is {platform.machine()}"
    try:
        with quantized_engine(name), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = torch._make_per_tensor_quantized_tensor(torch.ones(4, 4, dtype=torch.int8), 0.1, 0)
            packed = torch.ops.quantized.linear_prepack(w, None)
            torch.ops.quantized.linear_dynamic(torch.ones(1, 4), packed)
    except Exception as e:  # noqa: BLE001 - any failure means the engine cannot serve here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"packing a weight under it fails here: {first}"
    return None


def usable_engines(zero_points: bool = False) -> list[str]:
    """Engines that pack and run linear weights here, in :data:`PREFERENCE` order; with
    ``zero_points``, only those that take weights with non-zero zero points."""
    return [e for e in PREFERENCE
            if engine_problem(e) is None and not (zero_points and e in SYMMETRIC_ONLY)]


def current_engine_advice() -> str | None:
    """When torch's current quantized engine cannot pack weights here: what to do, in words a user can act on."""
    current = torch.backends.quantized.engine
    problem = engine_problem(current) if current not in ("none", "") else "no engine is selected"
    if problem is None:
        return None
    usable = usable_engines()
    fix = (f"set torch.backends.quantized.engine = {usable[0]!r} before quantizing the model"
           + (f" (usable here: {', '.join(usable)}; onednn takes symmetric weights only)"
              if len(usable) > 1 else "")
           if usable else "no quantized engine of this torch can pack weights on this host")
    return (f"torch.backends.quantized.engine is {current!r}, which cannot pack linear weights on this "
            f"{platform.machine()} host ({problem}): torch.ao.quantization.quantize_dynamic and "
            f"torch.ops.quantized.linear_prepack will fail; {fix}")


def warn_if_engine_cannot_pack() -> None:
    """Warn once per (engine) when the current engine cannot pack weights here."""
    advice = current_engine_advice()
    if advice is not None:
        _warn_once(advice)


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)
