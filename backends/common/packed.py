"""What every ``quantized::linear_dynamic`` backend shares: reading the packed
weight and checking the activation against it. No kernels live here."""

from __future__ import annotations

from dataclasses import dataclass

import torch

LINEAR_DYNAMIC = "quantized::linear_dynamic"
LINEAR_RELU_DYNAMIC = "quantized::linear_relu_dynamic"
LINEAR_OPS = (LINEAR_DYNAMIC, LINEAR_RELU_DYNAMIC)

_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)


@dataclass(frozen=True)
class UnpackedWeight:
    """A packed linear weight as plain tensors; ``w_int8`` is ``[N, K]`` int8."""

    w_int8: torch.Tensor
    scale: torch.Tensor        # [N] float32 (a per-tensor scale is broadcast)
    zero_point: torch.Tensor   # [N] int32
    bias: torch.Tensor | None  # [N] float32
    per_channel: bool

    @property
    def out_features(self) -> int:
        return self.w_int8.shape[0]

    @property
    def in_features(self) -> int:
        return self.w_int8.shape[1]


def unpack_weight(w_prepack, op: str = LINEAR_DYNAMIC) -> UnpackedWeight:
    """Read a ``LinearPackedParamsBase`` (slow under the x86 engine: ~19 ms per
    2048x2048 weight; backends cache the result)."""
    qweight, bias = w_prepack.unpack()
    if qweight.dtype != torch.qint8:
        raise TypeError(f"{op}: expected a qint8 packed weight, got {qweight.dtype}")
    n = qweight.shape[0]
    qscheme = qweight.qscheme()
    if qscheme in _PER_TENSOR:
        scale = torch.full((n,), qweight.q_scale(), dtype=torch.float32)
        zero_point = torch.full((n,), qweight.q_zero_point(), dtype=torch.int32)
    elif qscheme in _PER_CHANNEL:
        if qweight.q_per_channel_axis() != 0:
            raise ValueError(f"{op}: per-channel weight quantized along axis "
                             f"{qweight.q_per_channel_axis()}, expected axis 0 (output channels)")
        scale = qweight.q_per_channel_scales().to(torch.float32)
        zero_point = qweight.q_per_channel_zero_points().to(torch.int32)
    else:
        raise ValueError(f"{op}: unsupported weight qscheme {qscheme}")
    if bias is not None:
        bias = bias.detach().to(torch.float32)
    return UnpackedWeight(qweight.int_repr(), scale, zero_point, bias, qscheme in _PER_CHANNEL)


def check_activation(x: torch.Tensor, in_features: int, op: str = LINEAR_DYNAMIC) -> None:
    """Raise a clear error for an activation the op cannot take."""
    if x.dtype != torch.float32:
        raise TypeError(f"{op}: expected a float32 activation X, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{op}: X must have at least one dimension, got a 0-d tensor")
    if x.shape[-1] != in_features:
        raise ValueError(f"{op}: X has {x.shape[-1]} features in its last dimension "
                         f"(shape {list(x.shape)}), the packed weight expects {in_features}")
