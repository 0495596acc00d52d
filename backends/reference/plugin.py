"""Plugin hooks of the reference backend."""

from __future__ import annotations

from functools import partial
from importlib.resources import files

from registry import Availability, BackendInfo, ConfigError, OpKernel, hookimpl

from backends.common import LINEAR_DYNAMIC, LINEAR_OPS, LINEAR_RELU_DYNAMIC

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
    return files("opregistry_configs") / NAME / "default.yaml"


@hookimpl
def opregistry_validate_config(backend, config):
    for op_name, op in config.ops.items():
        if op.routing:
            key = f"ops.{op_name}.routing"
            raise ConfigError(config.source_of(key), key, "the reference backend has no kernels to route; remove it")


@hookimpl
def opregistry_op_kernels(backend, config):
    kernels = {}
    for op_name, relu in ((LINEAR_DYNAMIC, False), (LINEAR_RELU_DYNAMIC, True)):
        mode = config.op(op_name).activation_scale
        kernels[op_name] = OpKernel(partial(linear_dynamic, relu=relu, activation_scale=mode), "CPU")
    return kernels
