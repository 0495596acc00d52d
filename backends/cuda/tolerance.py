"""The per-element error bound of the CUDA kernels against the reference contract.

The integer sum is exact (int32), so an output element can differ from the
float64 reference only by

* fp32 rounding of the epilogue (``acc * (s_x * s_w) + b``, and the order of
  fp32 partial sums of split-K / stream-K): relative ``REL`` of the magnitudes
  summed, ``s_x[m] * s_w[n] * sum_k |q[m, k]| |W[n, k] - zw[n]| + |b[n]|``;
* one activation quantum for a rounding tie decided the other way
  (``s_x[m] * s_w[n] * max_k |W[n, k] - zw[n]|``).

NaN must sit exactly where the reference has NaN. Used by tests/test_cuda.py and
tools/bench_cuda.py; needs only torch (float64 on the CPU).
"""

from __future__ import annotations

import torch

from opregistry.backends.common import unpack_weight

REL = 1e-5


def contract_bound(x: torch.Tensor, w_prepack, activation_scale: str = "per_row") -> torch.Tensor:
    """``[*, N]`` float64 bound for the op's output on ``x`` (CPU)."""
    w = unpack_weight(w_prepack)
    x2d = x.detach().reshape(-1, x.shape[-1]).double().cpu()
    finite = torch.where(torch.isfinite(x2d), x2d, torch.zeros((), dtype=torch.float64))
    if activation_scale == "per_row":
        absmax = finite.abs().amax(dim=1, keepdim=True) if x2d.shape[1] else x2d.new_zeros(x2d.shape[0], 1)
    else:
        absmax = finite.abs().amax().reshape(1, 1).expand(x2d.shape[0], 1) if x2d.numel() else \
            x2d.new_zeros(x2d.shape[0], 1)
    s_x = torch.where(absmax == 0, torch.ones_like(absmax), absmax / 127.0)            # [M, 1]
    wc = (w.w_int8.to(torch.float64) - w.zero_point.to(torch.float64)[:, None]).abs()  # [N, K]
    s_w = w.scale.to(torch.float64)[None, :]                                            # [1, N]
    q_abs = (finite.abs() / s_x).round().clamp(max=127.0)                               # |q| (ties either way)
    summed = s_x * s_w * (q_abs @ wc.t())
    if w.bias is not None:
        summed = summed + w.bias.to(torch.float64).abs()[None, :]
    quantum = s_x * s_w * (wc.amax(dim=1)[None, :] if wc.shape[1] else wc.new_zeros(1, wc.shape[0]))
    bound = REL * summed + quantum + 1e-30
    return bound.reshape(*x.shape[:-1], w.w_int8.shape[0])


def check_per_element(y: torch.Tensor, y_ref: torch.Tensor, bound: torch.Tensor) -> tuple[bool, float, str]:
    """``(ok, worst err / bound, note)``: same NaN pattern, ``|y - y_ref| <= bound`` everywhere else."""
    y = y.detach().cpu()
    if y.shape != y_ref.shape:
        return False, float("inf"), f"shape {tuple(y.shape)} != {tuple(y_ref.shape)}"
    nan, nan_ref = torch.isnan(y), torch.isnan(y_ref)
    if not torch.equal(nan, nan_ref):
        return False, float("inf"), f"NaN pattern differs ({int((nan != nan_ref).sum())} elements)"
    keep = ~nan_ref
    if not keep.any():
        return True, 0.0, ""
    err = (y[keep].double() - y_ref[keep].double()).abs()
    ratio = err / bound[keep]
    worst = float(ratio.max())
    if not worst <= 1.0:
        i = int(ratio.argmax())
        return False, worst, (f"{int((ratio > 1).sum())} elements over the bound; worst |err| "
                              f"{float(err[i]):.3e} > bound {float(bound[keep][i]):.3e}")
    return True, worst, ""
