"""Triton kernels of the CUDA backend (int8 dynamic-quantized linear).

This module imports only ``triton`` so that the kernels can be compiled
ahead of time for ``sm_90`` on a host without a GPU (or torch).

Weight layout: plain ``[Np, Kp]`` int8, row-major (K contiguous: the K-major B
operand that int8 tensor-core instructions want, and full 16-byte coalescing
for the GEMV), zero-padded once at preparation to ``Np % N_ALIGN == 0`` and
``Kp % K_ALIGN == 0``. Every tile therefore divides the padded weight and all
weight loads are unmasked; per-channel vectors (scale, zero point, bias) are
padded to ``Np`` too. Only the activation's K edge (fused kernels) and the
output's M/N edges are masked; out-of-range activation rows are clamped to a
valid row (``rm % M``) and never stored.

Kernels, one purpose each:

* :func:`quantize_kernel`: activation prepass, one program per row (and chunk): per-row
  (or per-tensor) absmax, symmetric int8 quantization (round half to even,
  IEEE division like PyTorch), writes ``Xq [M, Kp]`` int8 (zero padded),
  ``scale [M]`` fp32 (NaN marks a row with non-finite input) and optionally
  ``rowsum [M]`` int32 (for the weight zero-point correction); a row may be
  quantized by several programs (chunks of K) for small M; optionally zeroes
  the output rows for the GEMMs that accumulate with atomics.
* :func:`dot_kernel`: int8 ``tl.dot`` tensor-core GEMM on ``Xq`` with a fused
  epilogue (zero point, scales, bias, ReLU, NaN rows); grouped tile order for
  L2 reuse; optional split-K (``SPLIT_K > 1``) accumulating fp32 partial
  results with atomics into an output zeroed by the prepass (ReLU is then
  applied after).
* :func:`streamk_kernel`: decode GEMM for small M: equal contiguous ranges of
  the (tile, K block) space per program, one wave of programs, fp32 partials
  added with atomics (output zeroed by the prepass).
* :func:`streamk_fused_kernel`: the prepass and :func:`streamk_kernel` in one
  launch (the activation handed over inside the grid), for host-bound layers.
* :func:`gemv_kernel`: CUDA-core int8 GEMV for tiny M, weights read once with
  16-byte loads along K; quantizes the fp32 activation inside the kernel (one
  launch per call, no prepass).
* :func:`fused_dot_kernel`: one launch, tensor cores: quantization inside the
  GEMM (each N tile quantizes its rows again), for small layers at small M.
* :func:`int_epilogue_kernel`: the epilogue of the deterministic split-K and
  stream-K variants (``INT_ACC``): those add their raw int32 partial sums with
  atomics into the output's bytes (integer addition: the same sum in any
  order), and this kernel turns each sum into the fp32 result in place.

``PDL`` (sm_90): the prepass lets the GEMM after it launch early
(``gdc_launch_dependents``) and the GEMM waits for its results (``gdc_wait``)
when launched with ``launch_pdl``.
"""

from __future__ import annotations

import triton
import triton.language as tl

QMAX = tl.constexpr(127.0)  # a constexpr instance: compiled kernels may read only such globals
from .layout import K_ALIGN, N_ALIGN  # noqa: E402,F401

try:  # programmatic dependent launch (sm_90): Triton >= 3.3 has these
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: E402
    HAS_GDC = True
except Exception:  # noqa: BLE001
    HAS_GDC = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@triton.jit
def _scale_from_absmax(absmax):
    """Per-row scale; NaN when the row holds NaN/Inf (absmax is +inf then)."""
    s = tl.where(absmax == 0.0, 1.0, tl.math.div_rn(absmax, QMAX))
    return tl.where(absmax < float("inf"), s, float("nan"))


@triton.jit
def _quantize(a, scale):
    """round_half_even(a / scale) clamped to [-127, 127], as fp32 integers.

    Written with floor so that the CUDA build and the interpreter agree
    exactly; the division is IEEE round-to-nearest like ``torch.div``.
    """
    v = tl.math.div_rn(a, scale)
    fl = tl.floor(v)
    frac = v - fl                                      # exact for |v| < 2**23
    odd = (fl - 2.0 * tl.floor(fl * 0.5)) != 0.0
    r = fl + ((frac > 0.5) | ((frac == 0.5) & odd)).to(tl.float32)
    return tl.minimum(tl.maximum(r, -QMAX), QMAX)


@triton.jit
def _absmax_abs(a):
    """|a| with NaN mapped to +inf, so a bad row is caught whatever max does with NaN."""
    return tl.where(a == a, tl.abs(a), float("inf"))


@triton.jit
def quantize_kernel(
    x_ptr, xq_ptr, scale_ptr, rowsum_ptr, absmax_ptr, out_ptr,
    K, Kp, N, CHUNK_K, CHUNK_N, stride_xm, stride_xk, stride_qm, stride_om,
    BLOCK_K: tl.constexpr, QBLOCK: tl.constexpr, SCAN_ONCE: tl.constexpr, PER_ROW: tl.constexpr,
    WANT_ROWSUM: tl.constexpr, ZERO_OUT: tl.constexpr, PDL: tl.constexpr = False, ROW_IN_REGS: tl.constexpr = False,
):
    """Grid ``(M, chunks)``: program ``(row, c)`` finds the row's absmax over all of K
    (``SCAN_ONCE``: one load of the whole row, all of it in flight), then quantizes
    only its chunk ``[c * CHUNK_K, (c + 1) * CHUNK_K)`` of ``Xq``; several chunks per
    row spread a decode row's divisions over several SMs. ``ZERO_OUT`` also zeroes
    ``out[row, c * CHUNK_N : (c + 1) * CHUNK_N]`` for the GEMMs that accumulate with
    atomics (saves a memset launch). ``WANT_ROWSUM`` needs one chunk per row.
    ``ROW_IN_REGS`` (one chunk, ``BLOCK_K >= Kp``, no ``ZERO_OUT``): the row is read once
    and quantized from registers (at prefill sizes a second read of a row comes from HBM:
    the rows in flight are far larger than L2).
    ``PDL``: let the GEMM launched after it (programmatic dependent launch) start
    its programs now; it waits for this grid's results with ``gdc_wait``."""
    if PDL:
        gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    x_row = x_ptr + row * stride_xm
    if ROW_IN_REGS:
        rk = tl.arange(0, BLOCK_K)
        a = tl.load(x_row + rk * stride_xk, mask=rk < K, other=0.0)
        if PER_ROW:
            absmax = tl.max(_absmax_abs(a), axis=0)
        else:
            absmax = tl.load(absmax_ptr)
        scale = _scale_from_absmax(absmax)
        ok = scale == scale
        q = _quantize(tl.where(ok, a, 0.0), tl.where(ok, scale, 1.0))
        tl.store(xq_ptr + row * stride_qm + rk, q.to(tl.int8), mask=rk < Kp)
        tl.store(scale_ptr + row, scale)
        if WANT_ROWSUM:
            tl.store(rowsum_ptr + row, tl.sum(q.to(tl.int32), axis=0))
    else:
        if PER_ROW:
            rk = tl.arange(0, BLOCK_K)
            if SCAN_ONCE:
                absmax = tl.max(_absmax_abs(tl.load(x_row + rk * stride_xk, mask=rk < K, other=0.0)), axis=0)
            else:
                amax = tl.zeros([BLOCK_K], dtype=tl.float32)
                for k0 in range(0, K, BLOCK_K):
                    ks = k0 + rk
                    amax = tl.maximum(amax, _absmax_abs(tl.load(x_row + ks * stride_xk, mask=ks < K, other=0.0)))
                absmax = tl.max(amax, axis=0)
        else:
            absmax = tl.load(absmax_ptr)                   # per-tensor absmax computed by the caller
        scale = _scale_from_absmax(absmax)
        ok = scale == scale
        safe = tl.where(ok, scale, 1.0)
        rq = tl.arange(0, QBLOCK)
        k_lo = c * CHUNK_K
        k_hi = tl.minimum(k_lo + CHUNK_K, Kp)
        rsum = tl.zeros([QBLOCK], dtype=tl.int32)
        for k0 in range(k_lo, k_hi, QBLOCK):
            ks = k0 + rq
            a = tl.load(x_row + ks * stride_xk, mask=ks < K, other=0.0)
            q = _quantize(tl.where(ok, a, 0.0), safe)      # NaN/Inf kept out of the int cast
            tl.store(xq_ptr + row * stride_qm + ks, q.to(tl.int8), mask=ks < k_hi)
            if WANT_ROWSUM:
                rsum += q.to(tl.int32)
        if c == 0:
            tl.store(scale_ptr + row, scale)
            if WANT_ROWSUM:
                tl.store(rowsum_ptr + row, tl.sum(rsum, axis=0))
        if ZERO_OUT:
            n_lo = c * CHUNK_N
            n_hi = tl.minimum(n_lo + CHUNK_N, N)
            zero = tl.zeros([QBLOCK], dtype=tl.float32)
            for n0 in range(n_lo, n_hi, QBLOCK):
                tl.store(out_ptr + row * stride_om + n0 + rq, zero, mask=(n0 + rq) < n_hi)


@triton.jit
def _epilogue(acc, xs, rowsum, rn, w_scale_ptr, w_zp_ptr, bias_ptr, first,
              HAS_WZP: tl.constexpr, HAS_BIAS: tl.constexpr):
    """int32 acc [BM, BN] -> fp32: zero-point correction, scales, bias.

    ``first`` is False on split-K partials other than the first, which must
    not repeat the correction and the bias. NaN in ``xs`` makes the row NaN.
    """
    if HAS_WZP:
        corr = rowsum[:, None] * tl.load(w_zp_ptr + rn)[None, :]   # int32 wraps like acc: exact in the end
        acc = acc - tl.where(first, corr, 0)
    y = acc.to(tl.float32) * (xs[:, None] * tl.load(w_scale_ptr + rn)[None, :])
    if HAS_BIAS:
        y = y + tl.where(first, tl.load(bias_ptr + rn), 0.0)[None, :]
    return y


@triton.jit
def dot_kernel(
    xq_ptr, xs_ptr, rowsum_ptr, w_ptr, w_scale_ptr, w_zp_ptr, bias_ptr, out_ptr,
    M, N, Kp, K_PER_SPLIT, stride_qm, stride_wn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_WZP: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    PDL: tl.constexpr = False, INT_ACC: tl.constexpr = False,
):
    """``INT_ACC`` (with ``SPLIT_K > 1``): add the raw int32 partial sums into ``out_ptr``
    (the output's bytes as int32, zeroed by the prepass) for :func:`int_epilogue_kernel`:
    bitwise reproducible, where fp32 partials added with atomics are not."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    if PDL:
        gdc_wait()                                     # the prepass's Xq / scales are complete
    # Grouped ordering: GROUP_M row-tiles share each weight column-tile while it is in L2.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_m
    pid_n = (pid % in_group) // group_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)      # < Np: the weight is padded to N_ALIGN
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    rm_safe = rm % M                                   # clamp: unmasked A loads, rows never stored
    a_ptrs = xq_ptr + rm_safe.to(tl.int64)[:, None] * stride_qm + rk[None, :]
    b_ptrs = w_ptr + rn.to(tl.int64)[:, None] * stride_wn + rk[None, :]

    k_start = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, Kp)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(k_start, k_end, BLOCK_K):
        a = tl.load(a_ptrs + k0)
        b = tl.load(b_ptrs + k0)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)   # out_dtype must match acc (Triton 3.6 asserts)

    out = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    mask = m_ok[:, None] & (rn < N)[None, :]
    if INT_ACC:
        tl.atomic_add(out, acc, mask=mask, sem="relaxed")
    else:
        xs = tl.load(xs_ptr + rm_safe)
        if HAS_WZP:
            rowsum = tl.load(rowsum_ptr + rm_safe)
        else:
            rowsum = xs                                    # unused
        y = _epilogue(acc, xs, rowsum, rn, w_scale_ptr, w_zp_ptr, bias_ptr, pid_k == 0, HAS_WZP, HAS_BIAS)
        if SPLIT_K == 1:
            if RELU:
                y = tl.maximum(y, 0.0)
            y = tl.where((xs == xs)[:, None], y, float("nan"))
            tl.store(out, y, mask=mask)
        else:
            # NaN rows: xs is NaN, so every partial is NaN and so is the sum.
            tl.atomic_add(out, y, mask=mask, sem="relaxed")


@triton.jit
def streamk_kernel(
    xq_ptr, xs_ptr, rowsum_ptr, w_ptr, w_scale_ptr, w_zp_ptr, bias_ptr, out_ptr,
    M, N, Kp, stride_qm, stride_wn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_WZP: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr = False, INT_ACC: tl.constexpr = False,
):
    """Decode GEMM (small M): the (tile, K block) iteration space is cut into equal
    contiguous ranges, one per program (a grid of exactly the resident programs), so
    every SM streams the same number of weight bytes, with no tail wave. A program
    walks its range as one flat, software-pipelined loop over units (no pipeline
    drain where its range crosses from one tile to the next) and adds each tile's
    fp32 partial into ``out`` (zeroed by the prepass) with atomics; the partial that
    holds K block 0 carries the zero-point correction and the bias. ``PDL``: launched
    as a programmatic dependent of the prepass, it waits here for the prepass's
    results (the launch and the programs' start overlap the prepass). ``INT_ACC``: the
    raw int32 partials are added instead (``out_ptr`` is the output's bytes as int32),
    for :func:`int_epilogue_kernel`: the same bits on every call."""
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    k_blocks = Kp // BLOCK_K
    tiles_m = tl.cdiv(M, BLOCK_M)
    total = tl.cdiv(N, BLOCK_N) * tiles_m * k_blocks
    u0 = (pid * total) // num_programs
    u1 = ((pid + 1) * total) // num_programs
    if PDL:
        gdc_wait()
    rk = tl.arange(0, BLOCK_K)
    t0 = u0 // k_blocks
    first_kb = u0 - t0 * k_blocks                        # the first partial starts mid-tile unless 0
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for u in range(u0, u1):
        t = u // k_blocks
        kb = u - t * k_blocks
        pid_m = t % tiles_m                              # M tiles of one N tile are neighbours: weights shared in L2
        pid_n = t // tiles_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)    # < Np: the weight is padded to N_ALIGN
        rm_safe = rm % M                                # clamp: unmasked A loads, rows never stored
        a = tl.load(xq_ptr + rm_safe.to(tl.int64)[:, None] * stride_qm + (kb * BLOCK_K + rk)[None, :])
        b = tl.load(w_ptr + rn.to(tl.int64)[:, None] * stride_wn + (kb * BLOCK_K + rk)[None, :])
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
        if (kb == k_blocks - 1) | (u == u1 - 1):        # the tile's last unit in this range: flush
            out = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
            if INT_ACC:
                tl.atomic_add(out, acc, mask=(rm < M)[:, None] & (rn < N)[None, :], sem="relaxed")
            else:
                xs = tl.load(xs_ptr + rm_safe)
                if HAS_WZP:
                    rowsum = tl.load(rowsum_ptr + rm_safe)
                else:
                    rowsum = xs                              # unused
                first = (t != t0) | (first_kb == 0)
                y = _epilogue(acc, xs, rowsum, rn, w_scale_ptr, w_zp_ptr, bias_ptr, first, HAS_WZP, HAS_BIAS)
                # NaN rows: xs is NaN, so every partial is NaN and so is the sum.
                tl.atomic_add(out, y, mask=(rm < M)[:, None] & (rn < N)[None, :], sem="relaxed")
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)


@triton.jit
def int_epilogue_kernel(
    acc_ptr, xs_ptr, rowsum_ptr, w_scale_ptr, w_zp_ptr, bias_ptr, out_ptr, M, N, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WZP: tl.constexpr, HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
):
    """Grid ``(cdiv(M, BLOCK_M), cdiv(N, BLOCK_N))``, ``BLOCK_N`` dividing ``N_ALIGN``: the
    whole-K int32 sums at ``acc_ptr`` (the output's bytes, added up by an ``INT_ACC`` GEMM)
    become the fp32 result at ``out_ptr`` (the same bytes; each element is read before it
    is written, by the same thread): zero-point correction, scales, bias, ReLU, NaN rows,
    the arithmetic of the single-pass kernels' epilogue."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)     # < Np: vectors padded to N_ALIGN
    rm_safe = rm % M
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    offs = rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    acc = tl.load(acc_ptr + offs, mask=mask, other=0)
    xs = tl.load(xs_ptr + rm_safe)
    if HAS_WZP:
        rowsum = tl.load(rowsum_ptr + rm_safe)
    else:
        rowsum = xs                                    # unused
    y = _epilogue(acc, xs, rowsum, rn, w_scale_ptr, w_zp_ptr, bias_ptr, True, HAS_WZP, HAS_BIAS)
    if RELU:
        y = tl.maximum(y, 0.0)
    y = tl.where((xs == xs)[:, None], y, float("nan"))
    tl.store(out_ptr + offs, y, mask=mask)


@triton.jit
def _fence_gpu():
    """``fence.acq_rel.gpu`` in every thread: orders this thread's global accesses around a handoff."""
    tl.inline_asm_elementwise("fence.acq_rel.gpu;\n\tmov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _signal(counter_ptr):
    """Publish this program's global writes: every thread fences, the program syncs, one add (release)."""
    _fence_gpu()
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


@triton.jit
def _wait_for(counter_ptr, target):
    """Spin until ``*counter_ptr >= target`` (plain volatile reads: no serialized atomics), then fence."""
    v = tl.load(counter_ptr, volatile=True)
    while v < target:
        v = tl.load(counter_ptr, volatile=True)
    _fence_gpu()
    tl.debug_barrier()


@triton.jit
def streamk_fused_kernel(
    x_ptr, absmax_ptr, xq_ptr, xs_ptr, part_ptr, psum_ptr, sync_ptr,
    w_ptr, w_scale_ptr, w_zp_ptr, bias_ptr, out_ptr,
    M, N, K, Kp, CHUNK_K, CHUNK_N, CHUNKS, stride_xm, stride_xk, stride_qm, stride_wn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, QBLOCK: tl.constexpr,
    CHUNKS_P2: tl.constexpr, PER_ROW: tl.constexpr, HAS_WZP: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Decode in one launch: the prepass and the stream-K GEMM of :func:`streamk_kernel`,
    the activation handed from the first programs to all of them inside the grid.

    Programs ``p < Q = M * CHUNKS`` each own one chunk of one activation row: they load
    it once (kept in registers), publish its absmax and wait until every chunk's absmax
    is published (skipped with one chunk per row, ``CHUNKS_P2 == 1``: the row's absmax
    is then local), quantize their chunk with the row's scale into ``Xq`` (and zero
    their slice of ``out``), and publish again; all programs wait for that and run the
    stream-K loop. One launch instead of two: for layers whose decode calls are bound
    by the host's launches. Every program of the grid must be resident at once (the
    runtime launches it cooperatively, one wave).

    ``sync_ptr``: int64 ``[arrivals, absmax published, chunks quantized]``, never reset:
    each call adds exactly ``P``, ``Q`` and ``Q``, so a program's arrival ticket gives
    its call's number and the counts to wait for (graph replays included).
    ``part_ptr`` / ``psum_ptr``: per-chunk absmax and (``HAS_WZP``) sum of q."""
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    q_programs = M * CHUNKS
    call = tl.atomic_add(sync_ptr, 1, sem="relaxed", scope="gpu") // num_programs
    k_blocks = Kp // BLOCK_K
    tiles_m = tl.cdiv(M, BLOCK_M)
    total = tl.cdiv(N, BLOCK_N) * tiles_m * k_blocks
    u0 = (pid * total) // num_programs
    u1 = ((pid + 1) * total) // num_programs
    if pid < q_programs:
        row = pid // CHUNKS
        c = pid - row * CHUNKS
        x_row = x_ptr + row.to(tl.int64) * stride_xm
        ks = c * CHUNK_K + tl.arange(0, QBLOCK)
        k_hi = tl.minimum(c * CHUNK_K + CHUNK_K, Kp)
        a = tl.load(x_row + ks * stride_xk, mask=(ks < K) & (ks < k_hi), other=0.0)
        if PER_ROW:
            absmax = tl.max(_absmax_abs(a), axis=0)
            if CHUNKS_P2 > 1:                            # the row's absmax: every chunk's, published
                tl.store(part_ptr + pid, absmax)
                _signal(sync_ptr + 1)
                _wait_for(sync_ptr + 1, (call + 1) * q_programs)
                rc = tl.arange(0, CHUNKS_P2)
                absmax = tl.max(tl.load(part_ptr + row * CHUNKS + rc, mask=rc < CHUNKS, other=0.0,
                                        cache_modifier=".cg"), axis=0)
        else:
            absmax = tl.load(absmax_ptr)
        scale = _scale_from_absmax(absmax)
        ok = scale == scale
        q = _quantize(tl.where(ok, a, 0.0), tl.where(ok, scale, 1.0))
        tl.store(xq_ptr + row.to(tl.int64) * stride_qm + ks, q.to(tl.int8), mask=ks < k_hi)
        if HAS_WZP:
            tl.store(psum_ptr + pid, tl.sum(q.to(tl.int32), axis=0))
        if c == 0:
            tl.store(xs_ptr + row, scale)
        n_lo = c * CHUNK_N
        n_hi = tl.minimum(n_lo + CHUNK_N, N)
        rq = tl.arange(0, QBLOCK)
        zero = tl.zeros([QBLOCK], dtype=tl.float32)
        for n0 in range(n_lo, n_hi, QBLOCK):
            tl.store(out_ptr + row.to(tl.int64) * stride_om + n0 + rq, zero, mask=(n0 + rq) < n_hi)
        _signal(sync_ptr + 2)
    _wait_for(sync_ptr + 2, (call + 1) * q_programs)

    rk = tl.arange(0, BLOCK_K)
    t0 = u0 // k_blocks
    first_kb = u0 - t0 * k_blocks
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for u in range(u0, u1):
        t = u // k_blocks
        kb = u - t * k_blocks
        pid_m = t % tiles_m
        pid_n = t // tiles_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rm_safe = rm % M
        a = tl.load(xq_ptr + rm_safe.to(tl.int64)[:, None] * stride_qm + (kb * BLOCK_K + rk)[None, :])
        b = tl.load(w_ptr + rn.to(tl.int64)[:, None] * stride_wn + (kb * BLOCK_K + rk)[None, :])
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
        if (kb == k_blocks - 1) | (u == u1 - 1):
            xs = tl.load(xs_ptr + rm_safe, cache_modifier=".cg")
            if HAS_WZP:
                rc = tl.arange(0, CHUNKS_P2)
                rowsum = tl.sum(tl.load(psum_ptr + rm_safe[:, None] * CHUNKS + rc[None, :],
                                        mask=(rc < CHUNKS)[None, :], other=0, cache_modifier=".cg"), axis=1)
            else:
                rowsum = xs                              # unused
            first = (t != t0) | (first_kb == 0)
            y = _epilogue(acc, xs, rowsum, rn, w_scale_ptr, w_zp_ptr, bias_ptr, first, HAS_WZP, HAS_BIAS)
            out = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
            tl.atomic_add(out, y, mask=(rm < M)[:, None] & (rn < N)[None, :], sem="relaxed")
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)


@triton.jit
def _row_scales(x_rows, absmax_ptr, K, stride_xk, BLOCK_M: tl.constexpr, SCAN_BLOCK_K: tl.constexpr,
                PER_ROW: tl.constexpr):
    """Activation scales of a program's rows: one pass over each fp32 row
    (``PER_ROW``), or the caller's tensor absmax; NaN for a row with NaN/Inf."""
    if PER_ROW:
        rs = tl.arange(0, SCAN_BLOCK_K)
        amax = tl.zeros([BLOCK_M, SCAN_BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, SCAN_BLOCK_K):
            a = tl.load(x_rows + (k0 + rs)[None, :] * stride_xk, mask=((k0 + rs) < K)[None, :], other=0.0)
            amax = tl.maximum(amax, _absmax_abs(a))
        absmax = tl.max(amax, axis=1)
    else:
        absmax = tl.zeros([BLOCK_M], dtype=tl.float32) + tl.load(absmax_ptr)
    return _scale_from_absmax(absmax)


@triton.jit
def gemv_kernel(
    x_ptr, absmax_ptr, w_ptr, w_scale_ptr, w_zp_ptr, bias_ptr, out_ptr,
    M, N, K, Kp, stride_xm, stride_xk, stride_wn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCAN_BLOCK_K: tl.constexpr,
    PER_ROW: tl.constexpr, HAS_WZP: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
):
    """One launch per call: each program finds its rows' absmax, quantizes the fp32
    activation on the fly and multiplies with ``[BN, BK]`` weight tiles on CUDA cores."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    rm_safe = (rm % M).to(tl.int64)
    w_ptrs = w_ptr + rn.to(tl.int64)[:, None] * stride_wn + rk[None, :]
    x_rows = x_ptr + rm_safe[:, None] * stride_xm
    xs = _row_scales(x_rows, absmax_ptr, K, stride_xk, BLOCK_M, SCAN_BLOCK_K, PER_ROW)
    ok = xs == xs
    safe = tl.where(ok, xs, 1.0)

    # Accumulate elementwise in registers over the whole K loop; reduce once at the end.
    if BLOCK_M == 1:
        acc2 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
    else:
        acc3 = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.int32)
    rsum = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.int32)
    for k0 in range(0, Kp, BLOCK_K):
        w = tl.load(w_ptrs + k0).to(tl.int32)                       # [BN, BK], unmasked, 16-byte rows
        ks = k0 + rk
        a = tl.load(x_rows + ks[None, :] * stride_xk, mask=(ks < K)[None, :], other=0.0)
        q = _quantize(tl.where(ok[:, None], a, 0.0), safe[:, None]).to(tl.int32)   # [BM, BK]
        if HAS_WZP:
            rsum += q
        if BLOCK_M == 1:
            acc2 += w * q
        else:
            acc3 += q[:, None, :] * w[None, :, :]
    if BLOCK_M == 1:
        acc = tl.sum(acc2, axis=1)[None, :]
    else:
        acc = tl.sum(acc3, axis=2)

    if HAS_WZP:
        rowsum = tl.sum(rsum, axis=1)
    else:
        rowsum = xs
    y = _epilogue(acc, xs, rowsum, rn, w_scale_ptr, w_zp_ptr, bias_ptr, True, HAS_WZP, HAS_BIAS)
    if RELU:
        y = tl.maximum(y, 0.0)
    y = tl.where((xs == xs)[:, None], y, float("nan"))
    out = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    tl.store(out, y, mask=m_ok[:, None] & (rn < N)[None, :])


@triton.jit
def fused_dot_kernel(
    x_ptr, absmax_ptr, w_ptr, w_scale_ptr, w_zp_ptr, bias_ptr, out_ptr,
    M, N, K, Kp, stride_xm, stride_xk, stride_wn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCAN_BLOCK_K: tl.constexpr,
    PER_ROW: tl.constexpr, HAS_WZP: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
):
    """One launch per call, tensor cores: program ``(n, m)`` finds its ``BLOCK_M`` rows'
    absmax (one pass over the fp32 rows, from L2 after the first program), then
    quantizes each ``[BLOCK_M, BLOCK_K]`` activation tile in registers with the
    prepass's arithmetic and multiplies it with the ``[BLOCK_N, BLOCK_K]`` weight
    tile (int8 ``tl.dot``); fused epilogue. No prepass, no workspace, no atomics:
    for small layers, where the host's launches, not the GPU, bound a decode call.
    Every N tile re-quantizes its rows (``N / BLOCK_N`` times the prepass's divisions)."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)       # < Np: the weight is padded to N_ALIGN
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    rm_safe = (rm % M).to(tl.int64)                    # clamp: rows past M are never stored
    x_rows = x_ptr + rm_safe[:, None] * stride_xm
    xs = _row_scales(x_rows, absmax_ptr, K, stride_xk, BLOCK_M, SCAN_BLOCK_K, PER_ROW)
    ok = xs == xs
    safe = tl.where(ok, xs, 1.0)
    w_ptrs = w_ptr + rn.to(tl.int64)[:, None] * stride_wn + rk[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    rsum = tl.zeros([BLOCK_M], dtype=tl.int32)
    for k0 in range(0, Kp, BLOCK_K):
        ks = k0 + rk
        a = tl.load(x_rows + ks[None, :] * stride_xk, mask=(ks < K)[None, :], other=0.0)
        q = _quantize(tl.where(ok[:, None], a, 0.0), safe[:, None])
        if HAS_WZP:
            rsum += tl.sum(q.to(tl.int32), axis=1)
        b = tl.load(w_ptrs + k0)
        acc = tl.dot(q.to(tl.int8), tl.trans(b), acc, out_dtype=tl.int32)
    if HAS_WZP:
        rowsum = rsum
    else:
        rowsum = xs                                    # unused
    y = _epilogue(acc, xs, rowsum, rn, w_scale_ptr, w_zp_ptr, bias_ptr, True, HAS_WZP, HAS_BIAS)
    if RELU:
        y = tl.maximum(y, 0.0)
    y = tl.where((xs == xs)[:, None], y, float("nan"))
    out = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    tl.store(out, y, mask=m_ok[:, None] & (rn < N)[None, :])
