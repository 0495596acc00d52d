"""A complete third-party backend plugin, as small as one can be.

It serves ``quantized::linear_dynamic`` by dequantizing the weight and doing a
float matmul (no activation quantization at all). A distribution makes it
discoverable with one entry point::

    [project.entry-points."opregistry.backends"]
    example = "opregistry_example"
"""

import torch

from opregistry.registry import Availability, BackendInfo, OpKernel, hookimpl

OP = "quantized::linear_dynamic"


@hookimpl
def opregistry_backend_info():
    return BackendInfo("example", (OP,), "float matmul on the dequantized weight")


@hookimpl
def opregistry_backend_availability(backend):
    return Availability(True)


def linear_dynamic(x, w_prepack, reduce_range=False):
    weight, bias = w_prepack.unpack()
    return torch.nn.functional.linear(x, weight.dequantize(), bias)


@hookimpl
def opregistry_op_kernels(backend, config):
    return {OP: OpKernel(linear_dynamic, "CPU")}
