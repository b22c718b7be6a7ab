"""GPU butterfly multiply in Triton: every factor of a batch tile applied in registers/shared memory.

One program handles ``BLOCK_B`` rows of one stack: it loads the zero-padded rows once, applies all
``nblocks * log_n`` factors (each a reshape ``(B, n/2s, 2, s)``, a split into the two members of every pair, two
multiply-adds, a join) and writes the result once. The twiddle is read in the user's layout; the transpose
(reverse the factors, swap the off-diagonal entries) is compile-time index arithmetic.

The backward recomputes the tile's activations, keeping each factor's input in a scratch buffer for the
duration of the backward call only, and writes per-program partial twiddle gradients that are summed in a fixed
order (deterministic). Real dtypes only: float64 is computed in float64, float32/float16/bfloat16 in float32;
complex CUDA tensors use the reference multiply.

Without a GPU the same kernels run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors: that is
how CI checks their logic.
"""

from __future__ import annotations

import torch

try:  # Triton is optional: without it CUDA tensors use the reference multiply.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is missing
    triton = None
    tl = None

__all__ = ["HAVE_TRITON", "triton_forward", "triton_backward", "triton_butterfly_multiply"]

HAVE_TRITON = triton is not None


if HAVE_TRITON:

    @triton.jit
    def _split_pairs(x, BLOCK_B: tl.constexpr, N: tl.constexpr, S: tl.constexpr):
        """(B, N) -> the first and second members of the stride-S pairs, each (B, N/2S, S)."""
        xr = tl.permute(tl.reshape(x, (BLOCK_B, N // (2 * S), 2, S)), (0, 1, 3, 2))
        return tl.split(xr)

    @triton.jit
    def _merge_pairs(u, v, BLOCK_B: tl.constexpr, N: tl.constexpr, S: tl.constexpr):
        return tl.reshape(tl.permute(tl.join(u, v), (0, 1, 3, 2)), (BLOCK_B, N))

    @triton.jit
    def _block_entries(N: tl.constexpr, S: tl.constexpr, TRANSPOSE: tl.constexpr):
        """Raw offsets of the applied entries t00, t01, t10, t11 of every block, each (N/2S, S)."""
        i = tl.arange(0, N // (2 * S))[:, None] * S + tl.arange(0, S)[None, :]
        eb: tl.constexpr = 1 + TRANSPOSE
        ec: tl.constexpr = 2 - TRANSPOSE
        return 4 * i, 4 * i + eb, 4 * i + ec, 4 * i + 3

    @triton.jit
    def _load_entries(t, oa, ob, oc, od, COMPUTE: tl.constexpr):
        """The four applied entries of every block at offsets from :func:`_block_entries`, each (1, N/2S, S)."""
        a = tl.load(t + oa).to(COMPUTE)[None, :, :]
        b = tl.load(t + ob).to(COMPUTE)[None, :, :]
        c = tl.load(t + oc).to(COMPUTE)[None, :, :]
        d = tl.load(t + od).to(COMPUTE)[None, :, :]
        return a, b, c, d

    @triton.jit
    def _forward_step(x, tw_k, j: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr,
                      INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr, N: tl.constexpr,
                      COMPUTE: tl.constexpr):
        """Apply the j-th factor (all geometry compile-time; a helper so that every j gets its own scope).

        The geometry lines are repeated in :func:`_backward_step`: a Triton helper cannot return constexprs, and
        the stride must be one (it shapes the reshapes)."""
        jb: tl.constexpr = j // LOG_N
        jf: tl.constexpr = j % LOG_N
        b: tl.constexpr = (NBLOCKS - 1 - jb) * TRANSPOSE + jb * (1 - TRANSPOSE)
        f: tl.constexpr = (LOG_N - 1 - jf) * TRANSPOSE + jf * (1 - TRANSPOSE)
        inc: tl.constexpr = (INCREASING + b) % 2
        S: tl.constexpr = 1 << (f * inc + (LOG_N - 1 - f) * (1 - inc))
        raw: tl.constexpr = b * LOG_N + f
        u, v = _split_pairs(x, BLOCK_B, N, S)
        oa, ob, oc, od = _block_entries(N, S, TRANSPOSE)
        a, bb, c, d = _load_entries(tw_k + raw * (N * 2), oa, ob, oc, od, COMPUTE)
        return _merge_pairs(a * u + bb * v, c * u + d * v, BLOCK_B, N, S)

    @triton.jit
    def _backward_step(g, u, tw_k, dtw, j: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr,
                       INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr, N: tl.constexpr,
                       COMPUTE: tl.constexpr):
        """Backward through the j-th factor: store its twiddle gradient (summed over the tile's rows) and return
        the gradient w.r.t. its input. ``u`` is the factor's input."""
        jb: tl.constexpr = j // LOG_N
        jf: tl.constexpr = j % LOG_N
        b: tl.constexpr = (NBLOCKS - 1 - jb) * TRANSPOSE + jb * (1 - TRANSPOSE)
        f: tl.constexpr = (LOG_N - 1 - jf) * TRANSPOSE + jf * (1 - TRANSPOSE)
        inc: tl.constexpr = (INCREASING + b) % 2
        S: tl.constexpr = 1 << (f * inc + (LOG_N - 1 - f) * (1 - inc))
        raw: tl.constexpr = b * LOG_N + f
        dt = dtw + raw * (N * 2)
        u0, u1 = _split_pairs(u, BLOCK_B, N, S)
        g0, g1 = _split_pairs(g, BLOCK_B, N, S)
        oa, ob, oc, od = _block_entries(N, S, TRANSPOSE)
        a, bb, c, d = _load_entries(tw_k + raw * (N * 2), oa, ob, oc, od, COMPUTE)
        tl.store(dt + oa, tl.sum(g0 * u0, axis=0))
        tl.store(dt + ob, tl.sum(g0 * u1, axis=0))
        tl.store(dt + oc, tl.sum(g1 * u0, axis=0))
        tl.store(dt + od, tl.sum(g1 * u1, axis=0))
        return _merge_pairs(a * g0 + c * g1, bb * g0 + d * g1, BLOCK_B, N, S)

    @triton.jit
    def _load_tile(ptr, rows, cols, batch, ncols, ld, COMPUTE: tl.constexpr):
        mask = (rows[:, None] < batch) & (cols[None, :] < ncols)
        return tl.load(ptr + rows[:, None] * ld + cols[None, :], mask=mask, other=0.0).to(COMPUTE)

    @triton.jit
    def _forward_kernel(x_ptr, tw_ptr, out_ptr, batch, in_size, out_cols, ld_x, ld_out, stack_out_stride,
                        N: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr, INCREASING: tl.constexpr,
                        TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr, COMPUTE: tl.constexpr):
        pid = tl.program_id(0)
        k = tl.program_id(1)
        rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = tl.arange(0, N)
        in_cols = cols + k * N * TRANSPOSE
        x = _load_tile(x_ptr, rows, in_cols, batch, in_size, ld_x, COMPUTE)
        tw_k = tw_ptr + k * (NBLOCKS * LOG_N * N * 2)
        for j in tl.static_range(NBLOCKS * LOG_N):
            x = _forward_step(x, tw_k, j, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N, COMPUTE)
        # concat mode: stack k owns columns [k N, (k+1) N); sum mode: stack k writes its own slab (summed later)
        o_cols = cols + k * N * (1 - TRANSPOSE)
        mask = (rows[:, None] < batch) & (o_cols[None, :] < out_cols)
        tl.store(out_ptr + k * stack_out_stride * TRANSPOSE + rows[:, None] * ld_out + o_cols[None, :],
                 x.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_kernel(x_ptr, tw_ptr, g_ptr, gx_ptr, dtw_ptr, acts_ptr, batch, in_size, out_cols, ld_x, ld_g,
                         stack_gx_stride, N: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr,
                         INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr,
                         COMPUTE: tl.constexpr):
        pid = tl.program_id(0)
        k = tl.program_id(1)
        nprog = tl.num_programs(0)
        F: tl.constexpr = NBLOCKS * LOG_N
        rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = tl.arange(0, N)
        local = tl.arange(0, BLOCK_B)[:, None] * N + cols[None, :]
        acts = acts_ptr + (k * nprog + pid) * (F * BLOCK_B * N)
        in_cols = cols + k * N * TRANSPOSE
        x = _load_tile(x_ptr, rows, in_cols, batch, in_size, ld_x, COMPUTE)
        tw_k = tw_ptr + k * (F * N * 2)
        for j in tl.static_range(F):
            tl.store(acts + j * (BLOCK_B * N) + local, x)
            x = _forward_step(x, tw_k, j, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N, COMPUTE)
        g_cols = cols + k * N * (1 - TRANSPOSE)
        g = _load_tile(g_ptr, rows, g_cols, batch, out_cols, ld_g, COMPUTE)
        dtw = dtw_ptr + (pid * tl.num_programs(1) + k) * (F * N * 2)
        for jj in tl.static_range(F):
            u = tl.load(acts + (F - 1 - jj) * (BLOCK_B * N) + local)
            g = _backward_step(g, u, tw_k, dtw, F - 1 - jj, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N,
                               COMPUTE)
        # shared input (plain multiply): stack k writes its own slab (summed later); split input: own columns
        mask = (rows[:, None] < batch) & (in_cols[None, :] < in_size)
        tl.store(gx_ptr + k * stack_gx_stride * (1 - TRANSPOSE) + rows[:, None] * ld_x + in_cols[None, :],
                 g.to(gx_ptr.dtype.element_ty), mask=mask)


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_rows(n: int) -> int:
    """Rows per program: keep a tile of about 8K values."""
    return max(1, min(64, 8192 // max(n, 1)))


def _shapes(twiddle: torch.Tensor) -> tuple[int, int, int, int]:
    nstacks, nblocks, log_n = twiddle.shape[:3]
    return nstacks, nblocks, log_n, 1 << log_n


def triton_forward(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool,
                   out_size: int) -> torch.Tensor:
    """Forward of the butterfly map (see :func:`twiddle.ops.butterfly_multiply`); ``x`` is ``(batch, m)``."""
    nstacks, nblocks, log_n, n = _shapes(twiddle)
    batch, m = x.shape
    tw = twiddle.contiguous()
    xc = x.contiguous()
    block_b = _block_rows(n)
    grid = (triton.cdiv(max(batch, 1), block_b), nstacks)
    if transpose:
        slabs = torch.empty(nstacks, batch, n, device=x.device, dtype=x.dtype)
        target, ld_out, cols = slabs, n, n
    else:
        target = torch.empty(batch, out_size, device=x.device, dtype=x.dtype)
        ld_out, cols = out_size, out_size
    if batch > 0:
        _forward_kernel[grid](xc, tw, target, batch, m, cols, m, ld_out, batch * n, N=n, LOG_N=log_n,
                              NBLOCKS=nblocks, INCREASING=int(increasing_stride), TRANSPOSE=int(transpose),
                              BLOCK_B=block_b, COMPUTE=_compute_dtype(x.dtype))
    if transpose:
        return target.sum(0)[:, :out_size]
    return target


def triton_backward(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool,
                    transpose: bool, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (twiddle, x) of ``sum(grad * forward(twiddle, x))``."""
    nstacks, nblocks, log_n, n = _shapes(twiddle)
    batch, m = x.shape
    F = nblocks * log_n
    tw = twiddle.contiguous()
    xc = x.contiguous()
    g = grad.contiguous()
    if transpose and out_size < n:  # the kernel reads n columns of grad for every stack
        g = torch.nn.functional.pad(g, (0, n - out_size))
    block_b = _block_rows(n)
    nprog = triton.cdiv(max(batch, 1), block_b)
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    acts = torch.empty(nstacks * nprog * max(F, 1) * block_b * n, device=x.device, dtype=wide)
    partial = torch.zeros(nprog, nstacks, *twiddle.shape[1:], device=x.device, dtype=wide)
    gx_slabs = torch.empty((1 if transpose else nstacks), batch, m, device=x.device, dtype=x.dtype)
    if batch > 0:
        _backward_kernel[(nprog, nstacks)](xc, tw, g, gx_slabs, partial, acts, batch, m, g.shape[1], m, g.shape[1],
                                           batch * m, N=n, LOG_N=log_n, NBLOCKS=nblocks,
                                           INCREASING=int(increasing_stride), TRANSPOSE=int(transpose),
                                           BLOCK_B=block_b, COMPUTE=_compute_dtype(x.dtype))
    else:
        gx_slabs.zero_()
    return partial.sum(0).to(twiddle.dtype), gx_slabs.sum(0)


if HAVE_TRITON:

    @torch.library.custom_op("twiddle::butterfly_multiply_triton", mutates_args=())
    def _triton_op(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool,
                   out_size: int) -> torch.Tensor:
        return triton_forward(twiddle, x, increasing_stride, transpose, out_size)

    @_triton_op.register_fake
    def _(twiddle, x, increasing_stride, transpose, out_size):
        return x.new_empty(x.shape[0], out_size)

    @torch.library.custom_op("twiddle::butterfly_multiply_triton_backward", mutates_args=())
    def _triton_backward_op(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool,
                            transpose: bool, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return triton_backward(twiddle, x, grad, increasing_stride, transpose, out_size)

    @_triton_backward_op.register_fake
    def _(twiddle, x, grad, increasing_stride, transpose, out_size):
        return torch.empty_like(twiddle), torch.empty_like(x)

    def _setup(ctx, inputs, output):
        twiddle, x, increasing_stride, transpose, out_size = inputs
        ctx.save_for_backward(twiddle, x)
        ctx.flags = (increasing_stride, transpose, out_size)

    def _backward(ctx, grad):
        twiddle, x = ctx.saved_tensors
        gt, gx = _triton_backward_op(twiddle, x, grad, *ctx.flags)
        return gt, gx, None, None, None

    _triton_op.register_autograd(_backward, setup_context=_setup)


def triton_butterfly_multiply(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, *, out_size: int,
                              transpose: bool) -> torch.Tensor:
    """The Triton path as one differentiable op; real ``twiddle`` and 2-D ``x`` of one dtype."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed")
    return _triton_op(twiddle, x, increasing_stride, transpose, out_size)
