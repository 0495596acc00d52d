"""Plugin hooks of the reference backend."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from opregistry.registry import Availability, BackendInfo, OpConfig, OpKernel, hookimpl

from opregistry.backends.common import LINEAR_DYNAMIC, LINEAR_OPS, LINEAR_RELU_DYNAMIC
from opregistry.backends.common.engines import warn_if_engine_cannot_pack
from opregistry.backends.common.opconfig import read_activation_scale, read_deterministic
from opregistry.backends.common.packaged import packaged_config

from .ops import linear_dynamic

NAME = "reference"


@hookimpl
def opregistry_backend_info():
    return BackendInfo(NAME, LINEAR_OPS,
                       "Plain-PyTorch semantics of the quantization contract: the test oracle and fallback")


@hookimpl
def opregistry_backend_availability(backend):
    return Availability(True)


@hookimpl
def opregistry_packaged_config(backend, device):
    return packaged_config(NAME, "default")


@dataclass(frozen=True)
class ReferenceOpConfig(OpConfig):
    activation_scale: str = "per_row"
    # Always deterministic (exact float64 sums of integers, elementwise rest): accepted, changes nothing.
    deterministic: bool = False


@hookimpl
def opregistry_op_config(backend, op, settings):
    settings.check_keys(("activation_scale", "deterministic"),
                        owner="the reference backend (it has no kernels to route)")
    return ReferenceOpConfig(activation_scale=read_activation_scale(settings),
                             deterministic=read_deterministic(settings))


@hookimpl
def opregistry_op_kernels(backend, config):
    warn_if_engine_cannot_pack()
    kernels = {}
    for op_name, relu in ((LINEAR_DYNAMIC, False), (LINEAR_RELU_DYNAMIC, True)):
        mode = config.op(op_name).activation_scale
        kernels[op_name] = OpKernel(partial(linear_dynamic, relu=relu, activation_scale=mode), "CPU")
    return kernels
