"""Padding of the CUDA backend's cached weights (no imports: the config schema,
the weight preparation and the kernels all read it, with or without triton)."""

K_ALIGN = 512   # padded K of cached weights and of Xq rows; every block_k must divide it
N_ALIGN = 256   # padded N of cached weights; every block_n must divide it
