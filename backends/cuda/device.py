"""Whether this host can run the CUDA backend, and which packaged table fits its GPU
(imports triton only when asked)."""

from __future__ import annotations

import torch

DEFAULT_DEVICE = "default"      # any CUDA GPU without a table of its own (sm_80 and newer)
HOPPER_DEFAULT = "sm90"         # a Hopper (compute capability 9.0) without a measured table
HBM3E_BYTES = 100 * 2**30       # Hopper parts with more memory than this have HBM3e (H200, GH200 144 GB)


def cuda_status() -> tuple[bool, str]:
    """``(available, reason)``: cheap, never raises."""
    try:
        if not torch.cuda.is_available():
            built = torch.version.cuda
            why = (f"torch {torch.__version__} was built without CUDA" if built is None
                   else f"torch {torch.__version__} (CUDA {built}) sees no CUDA device")
            return False, why
        import triton
        import triton.language  # noqa: F401 - a triton without its language module is not usable
    except Exception as exc:  # noqa: BLE001
        return False, f"triton is not usable: {type(exc).__name__}: {exc} (torch's CUDA wheels install the triton they need)"
    return True, (f"{torch.cuda.device_count()} CUDA device(s): {torch.cuda.get_device_name(0)}; "
                  f"triton {triton.__version__}")


def table_for(name: str, capability: tuple[int, int], total_memory: int = 0) -> str:
    """The packaged table for a GPU, from its name, compute capability and memory.

    * ``h200``: an H200 (HBM3e, 4.8 TB/s by the datasheet), or a GH200 with
      more than 100 GiB (its 144 GB part has HBM3e too);
    * ``h100``: an H100 (SXM, PCIe, NVL), or a GH200 with HBM3 (96 GB);
    * ``sm90``: any other compute capability 9.0 part (H800, H20, ...): the
      Hopper kernels with the H100 tiles;
    * ``default``: everything else (Ampere, Ada, Blackwell, ...).
    """
    upper = name.upper()
    if capability[0] == 9 and capability[1] == 0:
        if "GH200" in upper:                          # Grace Hopper: HBM3 (96 GB) or HBM3e (144 GB)
            return "h200" if total_memory > HBM3E_BYTES else "h100"
        if "H200" in upper:
            return "h200"
        if "H100" in upper:
            return "h100"
        return HOPPER_DEFAULT
    return DEFAULT_DEVICE


def detect_device(index: int | None = None) -> str:
    """The packaged table for the current (or given) CUDA device; ``default`` without one; never raises."""
    try:
        if not torch.cuda.is_available():
            return DEFAULT_DEVICE
        i = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(i)
        return table_for(props.name, (props.major, props.minor), props.total_memory)
    except Exception:  # noqa: BLE001
        return DEFAULT_DEVICE
