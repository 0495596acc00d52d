"""CUDA backend: Triton int8 dynamic-quantized linear for NVIDIA GPUs (see docs/CUDA.md)."""
