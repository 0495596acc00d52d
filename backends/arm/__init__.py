"""ARM backend: Triton-CPU int8 kernels for ``quantized::linear_dynamic``."""
