"""PyTorch's own aarch64 kernels, one call per case between two marks of tools/aarch64/count_insns.c, after a
warm-up call; run by tools/aarch64/aot.py (count mode) under ``qemu-aarch64 -plugin`` with the lane's arm64
Python, so that each case's count is one call and nothing of start-up or setup.

    python count_pytorch.py KIND:M:K:N ...      (KIND: qnnpack | onednn | int_mm)
"""

import os
import sys
import warnings

import torch

MARK_POLICY = 28528     # sched_get_priority_max with this invalid policy is the plugin's mark


def mark() -> None:
    try:
        os.sched_get_priority_max(MARK_POLICY)
    except OSError:
        pass            # EINVAL, as intended: the plugin saw the call


def make_call(kind: str, m: int, k: int, n: int):
    g = torch.Generator().manual_seed(0)
    if kind == "int_mm":
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
        b = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=g)
        return lambda: torch._int_mm(a, b)
    torch.backends.quantized.engine = kind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = torch._make_per_tensor_quantized_tensor(
            torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g), 0.01, 0)
        packed = torch.ops.quantized.linear_prepack(w, torch.randn(n, generator=g))
    x = torch.randn(m, k, generator=g)
    return lambda: torch.ops.quantized.linear_dynamic(x, packed, True)


def main() -> None:
    torch.set_num_threads(1)              # one thread: the plugin's counters are exact for one vCPU
    warnings.filterwarnings("ignore")
    for case in sys.argv[1:]:
        kind, *dims = case.split(":")
        call = make_call(kind, *map(int, dims))
        call()                            # warm-up: first-call allocations and packing happen here
        mark()
        call()
        mark()


if __name__ == "__main__":
    main()
