"""Launch plan of the fused kernel (:mod:`.kernel`): everything of a
``qlinear_kernel`` launch fixed by (prepared weight, tiles, variant, scheme, ReLU),
worked out once; the kernel module itself holds only Triton code (it is loaded
by path under other Triton versions: tests/test_triton_versions.py)."""

from __future__ import annotations

from opregistry.backends.common.launch import BoundLaunches, jit_function_class

from .kernel import SCAN_BLOCK_K_MAX, qlinear_kernel


# qlinear_kernel's parameters: those a launch passes at run time, then the
# constexprs, which a plan passes positionally too, in the kernel's own order
# (cheaper than keywords on every launch, compiled or interpreted).
_RUNTIME_ARGS = ("x_ptr", "w_ptr", "w_scale_ptr", "w_zp_ptr", "w_colsum_ptr", "bias_ptr", "out_ptr",
                 "M", "N", "K", "LAYOUT_BLOCKS_N", "stride_xm", "stride_xk", "stride_om",
                 "x_scale_arg", "x_inv_scale", "x_zp")
_PARAMS = tuple(qlinear_kernel.arg_names)
assert _PARAMS[:len(_RUNTIME_ARGS)] == _RUNTIME_ARGS, _PARAMS    # LaunchPlan passes these in this order
_CONSTEXPRS = _PARAMS[len(_RUNTIME_ARGS):]


class LaunchPlan:
    """Everything of a ``qlinear_kernel`` launch fixed by (prepared weight, tiles,
    kernel variant, activation scheme, ReLU), worked out once: the weight's
    pointers and sizes, the grid over N, the scan block and the constexprs. A
    call adds only what depends on the activation: M (its grid rows and
    ``EVEN_M``), X, its strides, the output and, for ``per_tensor`` /
    ``pytorch``, the activation qparams.

    ``weight`` is a :class:`~opregistry.backends.arm.layout.PreparedWeight`
    (with ``colsum`` when ``act`` is ``ACT_PYTORCH``).
    """

    __slots__ = ("block_m", "n", "k", "grid_n", "w_args", "sizes", "consts", "tails", "bound")

    def __init__(self, weight, *, block_m, block_n, block_k, use_dot, act, relu):
        n, k = weight.n, weight.k
        self.block_m = block_m
        self.n, self.k = n, k
        # Plain integer arithmetic: triton.cdiv & co. cost ~5 us each from Python.
        self.grid_n = -(-n // block_n)
        self.w_args = (weight.w_tiled, weight.scale, weight.zero_point, weight.colsum, weight.bias)
        self.sizes = (n, k, weight.layout_blocks_n)
        consts = dict(
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
            LAYOUT_K=weight.layout_k, LAYOUT_N=weight.layout_n,
            SCAN_BLOCK_K=min(SCAN_BLOCK_K_MAX, 1 << (k - 1).bit_length()),
            EVEN_K=k % block_k == 0, EVEN_N=n % block_n == 0,
            ACT=act, HAS_BIAS=weight.bias is not None, HAS_WZP=weight.zero_point is not None,
            RELU=relu, USE_DOT=use_dot,
        )
        # Indexed by ``m % block_m == 0``.
        self.consts = ({**consts, "EVEN_M": False}, {**consts, "EVEN_M": True})
        self.tails = tuple(tuple(c[name] for name in _CONSTEXPRS) for c in self.consts)
        self.bound = BoundLaunches()     # compiled mode: launches repeated through Triton's launcher

    def __call__(self, kernel, x2d, m, stride_xm, stride_xk, out, x_scale=1.0, x_inv_scale=1.0, x_zp=0):
        """Launch ``kernel`` (``qlinear_kernel`` compiled or interpreted) for ``x2d``
        (``[m, K]`` fp32, any strides) into ``out`` (``[m, N]`` fp32, row stride N)."""
        bm = self.block_m
        n, k, blocks_n = self.sizes
        grid = (-(-m // bm), self.grid_n)
        args = (x2d, *self.w_args, out, m, n, k, blocks_n, stride_xm, stride_xk, n, x_scale, x_inv_scale, x_zp)
        if isinstance(kernel, jit_function_class()):       # compiled (not interpreted, not a stub)
            key = (m, stride_xm, stride_xk, x2d.data_ptr() & 15, out.data_ptr() & 15)
            self.bound.run(key, ((kernel, grid, args, self.consts[m % bm == 0]),))
        else:
            kernel[grid](*args, *self.tails[m % bm == 0])
        return out


def launch(kernel, x2d, weight, out, *, block_m, block_n, block_k, use_dot, act, relu,
           x_scale=1.0, x_inv_scale=1.0, x_zp=0):
    """Launch ``kernel`` (``qlinear_kernel`` compiled or interpreted) over ``out``,
    planning the launch for this call only (the runtime keeps its plans: :class:`LaunchPlan`).

    ``x2d`` is ``[M, K]`` fp32 (any strides); ``out`` is ``[M, N]`` fp32, contiguous;
    ``weight`` is a :class:`~opregistry.backends.arm.layout.PreparedWeight`
    (with ``colsum`` when ``act`` is ``ACT_PYTORCH``). ``x_scale`` (and for
    ``pytorch`` ``x_inv_scale``, ``x_zp``) are the caller's activation qparams when
    ``act`` is not ``ACT_PER_ROW``.
    """
    if out.stride(0) != weight.n and out.shape[0] > 1:
        raise ValueError(f"launch: out must have row stride N={weight.n}, got {out.stride(0)}")
    plan = LaunchPlan(weight, block_m=block_m, block_n=block_n, block_k=block_k, use_dot=use_dot, act=act,
                      relu=relu)
    return plan(kernel, x2d, x2d.shape[0], x2d.stride(0), x2d.stride(1), out, x_scale, x_inv_scale, x_zp)
