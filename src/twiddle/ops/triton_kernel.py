"""GPU butterfly multiply in Triton, in two variants (chosen by :func:`choose_variant`).

* ``unrolled`` (n <= :data:`UNROLLED_MAX_N`): one program handles ``BLOCK_B`` rows of one stack: it loads the
  zero-padded rows once, applies all ``nblocks * log_n`` factors in registers (each a reshape ``(B, n/2s, 2, s)``, a
  split into the two members of every pair, two multiply-adds, a join; the compiler exchanges values through shared
  memory) and writes the result once, adding the bias in that store. Fast, but the program is unrolled over the
  factors, so compiling it takes long at large n.
* ``loop``: a run-time loop over the factors; the tile lives in a per-program scratch buffer (global memory, in
  cache), each factor updates it in place ``CHUNK`` pairs at a time, and a barrier separates factors. One short
  compilation per n and bounded registers at any n; slower than ``unrolled`` where both compile quickly.

The twiddle is read in the user's layout; the transpose (reverse the factors, swap the off-diagonal entries) is
index arithmetic. Backwards recompute each tile's activations (keeping the inputs of every other factor in a
per-program scratch, the others recomputed on the way down) and walk tiles with a fixed number of programs, each
adding its twiddle gradients into its own slice (summed in a fixed order afterwards: deterministic). float64 and
complex128 are computed in float64, float32/float16/bfloat16 and complex64 in float32. Complex tensors are read
through their real views, every value carried as a (real part, imaginary part) pair of tiles; the kernels take
``CPLX`` (and ``CONJ``, conjugated twiddles) as compile-time flags, so a real call compiles to the same program as
without complex support. No Triton specialization on the batch size: one compilation per shape. Input and output
permutations (``in_perm`` / ``out_perm`` of :func:`twiddle.ops.butterfly_multiply`) are column maps read by the
loads of x and the incoming gradient and the stores of the result and x's gradient (``IN_MAP`` / ``OUT_MAP``,
compile-time flags: a call without them compiles to the program without them).

Host cost matters at small batches: calls that need no gradient launch the forward directly; other eager calls go
through a ``torch.autograd.Function`` (a custom op's dispatch costs several times more per call; under
``torch.compile`` the custom op ``twiddle::butterfly_multiply_triton`` is used so that graphs see one op), and
compiled kernels are launched directly (:func:`_launch`).

Without a GPU the same kernels run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors: that is
how CI checks their logic.
"""

from __future__ import annotations

import functools
import os
import weakref

import torch

from ._higher_order import differentiable_gradients

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

    # Complex values are carried as (real part, imaginary part) tensors of the compute dtype and read from / written
    # to the real view of complex storage (element e at 2e and 2e + 1). Real values use the same helpers with
    # CPLX = 0: the "imaginary part" is the real part again and is never used, so the compiler drops it, and the real
    # kernels are the same programs as without complex support. Offsets are in elements; pointers to the start of a
    # block of elements (a stack's twiddle, a scratch tile) are advanced by W = 1 + CPLX values per element.

    @triton.jit
    def _split_pairs2(xr, xi, BLOCK_B: tl.constexpr, N: tl.constexpr, S: tl.constexpr, CPLX: tl.constexpr):
        """:func:`_split_pairs` of a real or complex tile: (u_re, u_im, v_re, v_im)."""
        ur, vr = _split_pairs(xr, BLOCK_B, N, S)
        if CPLX:
            ui, vi = _split_pairs(xi, BLOCK_B, N, S)
        else:
            ui = ur
            vi = vr
        return ur, ui, vr, vi

    @triton.jit
    def _merge_pairs2(ur, ui, vr, vi, BLOCK_B: tl.constexpr, N: tl.constexpr, S: tl.constexpr,
                      CPLX: tl.constexpr):
        xr = _merge_pairs(ur, vr, BLOCK_B, N, S)
        if CPLX:
            xi = _merge_pairs(ui, vi, BLOCK_B, N, S)
        else:
            xi = xr
        return xr, xi

    @triton.jit
    def _mul_add(ar, ai, ur, ui, br, bi, vr, vi, CPLX: tl.constexpr):
        """``a u + b v`` (complex products when CPLX) as (re, im)."""
        if CPLX:
            yr = ar * ur - ai * ui + br * vr - bi * vi
            yi = ar * ui + ai * ur + br * vi + bi * vr
        else:
            yr = ar * ur + br * vr
            yi = yr
        return yr, yi

    @triton.jit
    def _row_sum_conj(gr, gi, ur, ui, CPLX: tl.constexpr):
        """``Σ_rows g · conj(u)`` over axis 0 (the gradient of a twiddle entry that multiplies ``u``)."""
        if CPLX:
            sr = tl.sum(gr * ur + gi * ui, axis=0)
            si = tl.sum(gi * ur - gr * ui, axis=0)
        else:
            sr = tl.sum(gr * ur, axis=0)
            si = sr
        return sr, si

    @triton.jit
    def _load_entry(t, off, COMPUTE: tl.constexpr, CPLX: tl.constexpr, CONJ: tl.constexpr):
        """Twiddle entries at element offsets ``off``, conjugated when CONJ."""
        if CPLX:
            re = tl.load(t + 2 * off).to(COMPUTE)
            im = tl.load(t + 2 * off + 1).to(COMPUTE)
            if CONJ:
                im = -im
        else:
            re = tl.load(t + off).to(COMPUTE)
            im = re
        return re, im

    @triton.jit
    def _add_to_entry(dt, off, keep, sr, si, CPLX: tl.constexpr, CONJ: tl.constexpr):
        """The new values of twiddle-gradient entries at ``off``: the stored value where ``keep`` (else 0) plus
        (sr, si), conjugated back when the applied twiddle was conjugated. Stored by :func:`_store_entry`."""
        if CPLX:
            nr = tl.load(dt + 2 * off, mask=keep, other=0.0) + sr
            if CONJ:
                ni = tl.load(dt + 2 * off + 1, mask=keep, other=0.0) - si
            else:
                ni = tl.load(dt + 2 * off + 1, mask=keep, other=0.0) + si
        else:
            nr = tl.load(dt + off, mask=keep, other=0.0) + sr
            ni = nr
        return nr, ni

    @triton.jit
    def _store_entry(dt, off, nr, ni, CPLX: tl.constexpr):
        if CPLX:
            tl.store(dt + 2 * off, nr)
            tl.store(dt + 2 * off + 1, ni)
        else:
            tl.store(dt + off, nr)

    @triton.jit
    def _load_values(ptr, off, CPLX: tl.constexpr):
        """Scratch values (already in the compute dtype) at 2-D element offsets ``off``: (re, im)."""
        if CPLX:
            re, im = tl.split(tl.load(ptr + (2 * off)[:, :, None] + tl.arange(0, 2)[None, None, :]))
        else:
            re = tl.load(ptr + off)
            im = re
        return re, im

    @triton.jit
    def _store_values(ptr, off, re, im, CPLX: tl.constexpr):
        if CPLX:
            tl.store(ptr + (2 * off)[:, :, None] + tl.arange(0, 2)[None, None, :], tl.join(re, im))
        else:
            tl.store(ptr + off, re)

    @triton.jit
    def _mapped_cols(map_ptr, cols, size, HAS_MAP: tl.constexpr):
        """Where the tile's columns ``cols`` lie in memory: ``map[cols]`` when HAS_MAP (``map``: int64, ``size``
        entries, a permutation; columns from ``size`` on are masked by every access that uses them), else ``cols``."""
        if HAS_MAP:
            mcols = tl.load(map_ptr + cols, mask=cols < size, other=0).to(tl.int32)
        else:
            mcols = cols
        return mcols

    @triton.jit
    def _load_tile(ptr, rows, cols, mcols, batch, ncols, ld, COMPUTE: tl.constexpr, CPLX: tl.constexpr):
        """Rows ``rows``, columns ``cols`` of a (batch, ncols) matrix with leading dimension ``ld``, zero outside,
        in the compute dtype: (re, im). Column ``cols[c]`` is read from memory column ``mcols[c]`` (``cols`` itself,
        or a permutation of it: :func:`_mapped_cols`)."""
        mask = (rows[:, None] < batch) & (cols[None, :] < ncols)
        off = rows[:, None] * ld + mcols[None, :]
        if CPLX:
            pair = tl.load(ptr + (2 * off)[:, :, None] + tl.arange(0, 2)[None, None, :], mask=mask[:, :, None],
                           other=0.0)
            re, im = tl.split(pair.to(COMPUTE))
        else:
            re = tl.load(ptr + off, mask=mask, other=0.0).to(COMPUTE)
            im = re
        return re, im

    @triton.jit
    def _store_tile(ptr, off, mask, re, im, CPLX: tl.constexpr):
        """Store (re, im) at 2-D element offsets ``off`` where ``mask``, converted to the pointer's dtype."""
        if CPLX:
            tl.store(ptr + (2 * off)[:, :, None] + tl.arange(0, 2)[None, None, :],
                     tl.join(re, im).to(ptr.dtype.element_ty), mask=mask[:, :, None])
        else:
            tl.store(ptr + off, re.to(ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _add_bias(yr, yi, bias_ptr, o_cols, o_mcols, out_cols, COMPUTE: tl.constexpr, CPLX: tl.constexpr):
        """Add the bias of the output columns the tile's columns ``o_cols`` are stored in (``o_mcols``)."""
        keep = o_cols < out_cols
        if CPLX:
            yr += tl.load(bias_ptr + 2 * o_mcols, mask=keep, other=0.0).to(COMPUTE)[None, :]
            yi += tl.load(bias_ptr + 2 * o_mcols + 1, mask=keep, other=0.0).to(COMPUTE)[None, :]
        else:
            yr += tl.load(bias_ptr + o_mcols, mask=keep, other=0.0).to(COMPUTE)[None, :]
            yi = yr
        return yr, yi

    @triton.jit
    def _add_entry_gradient(dt, off, acc, g, u):
        """Add ``Σ_rows g u`` to the (real) twiddle-gradient entries at ``off`` (``acc``: see
        :func:`_backward_step`)."""
        tl.store(dt + off, tl.load(dt + off, mask=off < acc, other=0.0) + tl.sum(g * u, axis=0))

    @triton.jit
    def _block_index(N: tl.constexpr, S: tl.constexpr):
        """The index of every block of a stride-S factor, (N/2S, S) (the layout the pairs are split into)."""
        return tl.arange(0, N // (2 * S))[:, None] * S + tl.arange(0, S)[None, :]

    @triton.jit
    def _block_entries(N: tl.constexpr, S: tl.constexpr, TRANSPOSE: tl.constexpr):
        """Element offsets of the applied entries t00, t01, t10, t11 of every block, each (N/2S, S)."""
        i = _block_index(N, S)
        eb: tl.constexpr = 1 + TRANSPOSE
        ec: tl.constexpr = 2 - TRANSPOSE
        return 4 * i, 4 * i + eb, 4 * i + ec, 4 * i + 3

    # Complex twiddles in the unrolled kernels: a block's 8 values (4 entries, real and imaginary parts) are read,
    # and its gradient read and written, by one memory operation each. Compiling the unrolled backward costs
    # superlinearly in its memory operations (Triton's coalescing pass): per-entry accesses made the complex kernel 4-8
    # times slower to compile than the real one.

    @triton.jit
    def _block_values(N: tl.constexpr, S: tl.constexpr):
        """Value offsets of every complex block's 8 values, (N/2S, S, 8)."""
        return (8 * _block_index(N, S))[:, :, None] + tl.arange(0, 8)[None, None, :]

    @triton.jit
    def _split_block_values(v, N: tl.constexpr, S: tl.constexpr, TRANSPOSE: tl.constexpr):
        """(N/2S, S, 8) block values -> the applied entries' (re, im) pairs a, b, c, d, each (1, N/2S, S)."""
        re, im = tl.split(tl.reshape(v, (N // (2 * S), S, 2, 2, 2)))  # (block, row i, column j, re/im)
        r0, r1 = tl.split(re)  # column 0: (t00, t10) along the last axis; column 1: (t01, t11)
        i0, i1 = tl.split(im)
        t00r, t10r = tl.split(r0)
        t01r, t11r = tl.split(r1)
        t00i, t10i = tl.split(i0)
        t01i, t11i = tl.split(i1)
        if TRANSPOSE:
            br = t10r
            bi = t10i
            cr = t01r
            ci = t01i
        else:
            br = t01r
            bi = t01i
            cr = t10r
            ci = t10i
        return (t00r[None, :, :], t00i[None, :, :], br[None, :, :], bi[None, :, :], cr[None, :, :], ci[None, :, :],
                t11r[None, :, :], t11i[None, :, :])

    @triton.jit
    def _join_block_values(ar, ai, br, bi, cr, ci, dr, di, N: tl.constexpr, S: tl.constexpr,
                           TRANSPOSE: tl.constexpr):
        """The inverse of :func:`_split_block_values` for (N/2S, S) parts: (N/2S, S, 8) values in memory order."""
        if TRANSPOSE:
            re = tl.join(tl.join(ar, br), tl.join(cr, dr))
            im = tl.join(tl.join(ai, bi), tl.join(ci, di))
        else:
            re = tl.join(tl.join(ar, cr), tl.join(br, dr))
            im = tl.join(tl.join(ai, ci), tl.join(bi, di))
        return tl.reshape(tl.join(re, im), (N // (2 * S), S, 8))

    @triton.jit
    def _load_block_entries(t, N: tl.constexpr, S: tl.constexpr, TRANSPOSE: tl.constexpr, COMPUTE: tl.constexpr,
                            CPLX: tl.constexpr, CONJ: tl.constexpr):
        """The applied entries a, b, c, d of every block of a factor of stride S (twiddle slice ``t``), each
        (re, im) of shape (1, N/2S, S); conjugated when CONJ."""
        if CPLX:
            ar, ai, br, bi, cr, ci, dr, di = _split_block_values(tl.load(t + _block_values(N, S)).to(COMPUTE), N, S,
                                                                 TRANSPOSE)
            if CONJ:
                ai = -ai
                bi = -bi
                ci = -ci
                di = -di
        else:
            oa, ob, oc, od = _block_entries(N, S, TRANSPOSE)
            ar = tl.load(t + oa).to(COMPUTE)[None, :, :]
            br = tl.load(t + ob).to(COMPUTE)[None, :, :]
            cr = tl.load(t + oc).to(COMPUTE)[None, :, :]
            dr = tl.load(t + od).to(COMPUTE)[None, :, :]
            ai = ar
            bi = br
            ci = cr
            di = dr
        return ar, ai, br, bi, cr, ci, dr, di

    @triton.jit
    def _add_block_gradients(dt, acc, g0r, g0i, g1r, g1i, u0r, u0i, u1r, u1i, N: tl.constexpr, S: tl.constexpr,
                             TRANSPOSE: tl.constexpr, CPLX: tl.constexpr, CONJ: tl.constexpr):
        """Add the tile's gradient of every block of a factor of stride S to ``dt``: ``Σ_rows g_p · conj(u_q)``
        for the applied entry (p, q), conjugated back when the applied twiddles were conjugated (``acc``: see
        :func:`_backward_step`)."""
        if CPLX:
            ar, ai = _row_sum_conj(g0r, g0i, u0r, u0i, CPLX)
            br, bi = _row_sum_conj(g0r, g0i, u1r, u1i, CPLX)
            cr, ci = _row_sum_conj(g1r, g1i, u0r, u0i, CPLX)
            dr, di = _row_sum_conj(g1r, g1i, u1r, u1i, CPLX)
            if CONJ:
                ai = -ai
                bi = -bi
                ci = -ci
                di = -di
            off = _block_values(N, S)
            new = _join_block_values(ar, ai, br, bi, cr, ci, dr, di, N, S, TRANSPOSE)
            tl.store(dt + off, tl.load(dt + off, mask=off < acc, other=0.0) + new)
        else:
            oa, ob, oc, od = _block_entries(N, S, TRANSPOSE)
            _add_entry_gradient(dt, oa, acc, g0r, u0r)
            _add_entry_gradient(dt, ob, acc, g0r, u1r)
            _add_entry_gradient(dt, oc, acc, g1r, u0r)
            _add_entry_gradient(dt, od, acc, g1r, u1r)

    @triton.jit
    def _forward_step(xr, xi, tw_k, j: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr,
                      INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr, N: tl.constexpr,
                      COMPUTE: tl.constexpr, CPLX: tl.constexpr, CONJ: tl.constexpr):
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
        ur, ui, vr, vi = _split_pairs2(xr, xi, BLOCK_B, N, S, CPLX)
        ar, ai, br, bi, cr, ci, dr, di = _load_block_entries(tw_k + raw * (N * 2) * (1 + CPLX), N, S, TRANSPOSE,
                                                             COMPUTE, CPLX, CONJ)
        y0r, y0i = _mul_add(ar, ai, ur, ui, br, bi, vr, vi, CPLX)
        y1r, y1i = _mul_add(cr, ci, ur, ui, dr, di, vr, vi, CPLX)
        return _merge_pairs2(y0r, y0i, y1r, y1i, BLOCK_B, N, S, CPLX)

    @triton.jit
    def _backward_step(gr, gi, ur, ui, tw_k, dtw, acc, j: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr,
                       INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr, N: tl.constexpr,
                       COMPUTE: tl.constexpr, CPLX: tl.constexpr, CONJ: tl.constexpr):
        """Backward through the j-th factor: add its twiddle gradient (summed over the tile's rows) to ``dtw`` and
        return the gradient w.r.t. its input. ``u`` is the factor's input; ``acc`` (a scalar, 0 or
        2^30): add to the entries of ``dtw`` whose offsets are below it (all or none), overwrite the others (on a
        program's first tile, so that ``dtw`` needs no zero fill). Complex: the input gradient is ``Fᴴ g`` and the
        twiddle gradient ``Σ g · conj(u)`` (torch's convention for complex autograd)."""
        jb: tl.constexpr = j // LOG_N
        jf: tl.constexpr = j % LOG_N
        b: tl.constexpr = (NBLOCKS - 1 - jb) * TRANSPOSE + jb * (1 - TRANSPOSE)
        f: tl.constexpr = (LOG_N - 1 - jf) * TRANSPOSE + jf * (1 - TRANSPOSE)
        inc: tl.constexpr = (INCREASING + b) % 2
        S: tl.constexpr = 1 << (f * inc + (LOG_N - 1 - f) * (1 - inc))
        raw: tl.constexpr = b * LOG_N + f
        u0r, u0i, u1r, u1i = _split_pairs2(ur, ui, BLOCK_B, N, S, CPLX)
        g0r, g0i, g1r, g1i = _split_pairs2(gr, gi, BLOCK_B, N, S, CPLX)
        ar, ai, br, bi, cr, ci, dr, di = _load_block_entries(tw_k + raw * (N * 2) * (1 + CPLX), N, S, TRANSPOSE,
                                                             COMPUTE, CPLX, CONJ)
        _add_block_gradients(dtw + raw * (N * 2) * (1 + CPLX), acc, g0r, g0i, g1r, g1i, u0r, u0i, u1r, u1i, N, S,
                             TRANSPOSE, CPLX, CONJ)
        h0r, h0i = _mul_add(ar, -ai, g0r, g0i, cr, -ci, g1r, g1i, CPLX)  # conj(a) g0 + conj(c) g1
        h1r, h1i = _mul_add(br, -bi, g0r, g0i, dr, -di, g1r, g1i, CPLX)
        return _merge_pairs2(h0r, h0i, h1r, h1i, BLOCK_B, N, S, CPLX)

    @triton.jit(do_not_specialize=["batch", "stack_out_stride"])  # one compilation for every batch size
    def _forward_kernel(x_ptr, tw_ptr, bias_ptr, out_ptr, in_map_ptr, out_map_ptr, batch, in_size, out_cols, ld_x,
                        ld_out, stack_out_stride, N: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr,
                        INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr,
                        HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr, CPLX: tl.constexpr, CONJ: tl.constexpr,
                        IN_MAP: tl.constexpr, OUT_MAP: tl.constexpr):
        """One tile through every factor. ``IN_MAP``: column c of the input is read from x's column
        ``in_map[c]``; ``OUT_MAP``: column c of the result is stored (with its bias) in column ``out_map[c]``."""
        pid = tl.program_id(0)
        k = tl.program_id(1)
        rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = tl.arange(0, N)
        in_cols = cols + k * N * TRANSPOSE
        xr, xi = _load_tile(x_ptr, rows, in_cols, _mapped_cols(in_map_ptr, in_cols, in_size, IN_MAP), batch, in_size,
                            ld_x, COMPUTE, CPLX)
        tw_k = tw_ptr + k * (NBLOCKS * LOG_N * N * 2) * (1 + CPLX)
        for j in tl.static_range(NBLOCKS * LOG_N):
            xr, xi = _forward_step(xr, xi, tw_k, j, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N, COMPUTE,
                                   CPLX, CONJ)
        # concat mode: stack k owns columns [k N, (k+1) N); sum mode: stack k writes its own slab (summed later)
        o_cols = cols + k * N * (1 - TRANSPOSE)
        o_mcols = _mapped_cols(out_map_ptr, o_cols, out_cols, OUT_MAP)
        if HAS_BIAS:
            xr, xi = _add_bias(xr, xi, bias_ptr, o_cols, o_mcols, out_cols, COMPUTE, CPLX)
        mask = (rows[:, None] < batch) & (o_cols[None, :] < out_cols)
        _store_tile(out_ptr, k * stack_out_stride * TRANSPOSE + rows[:, None] * ld_out + o_mcols[None, :], mask, xr,
                    xi, CPLX)

    @triton.jit
    def _backward_pair(gr, gi, acts, local, x_ptr, rows, in_cols, in_mcols, batch, in_size, ld_x, tw_k, dtw, acc,
                       j0: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr, INCREASING: tl.constexpr,
                       TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr, N: tl.constexpr, COMPUTE: tl.constexpr,
                       CPLX: tl.constexpr, CONJ: tl.constexpr):
        """Backward through factors j0 + 1 and j0 (j0 even; see :func:`_backward_kernel`): factor j0's input is
        read (from ``acts``, or the input tile when j0 = 0) and factor j0 + 1's recomputed from it."""
        if j0 == 0:
            u0r, u0i = _load_tile(x_ptr, rows, in_cols, in_mcols, batch, in_size, ld_x, COMPUTE, CPLX)
        else:
            u0r, u0i = _load_values(acts + (j0 // 2 - 1) * (BLOCK_B * N) * (1 + CPLX), local, CPLX)
        u1r, u1i = _forward_step(u0r, u0i, tw_k, j0, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N, COMPUTE,
                                 CPLX, CONJ)
        gr, gi = _backward_step(gr, gi, u1r, u1i, tw_k, dtw, acc, j0 + 1, LOG_N, NBLOCKS, INCREASING, TRANSPOSE,
                                BLOCK_B, N, COMPUTE, CPLX, CONJ)
        return _backward_step(gr, gi, u0r, u0i, tw_k, dtw, acc, j0, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B,
                              N, COMPUTE, CPLX, CONJ)

    @triton.jit(do_not_specialize=["batch", "stack_gx_stride", "n_tiles"])  # one compilation for every batch size
    def _backward_kernel(x_ptr, tw_ptr, g_ptr, gx_ptr, dtw_ptr, acts_ptr, in_map_ptr, out_map_ptr, batch, in_size,
                         out_cols, ld_x, ld_g, stack_gx_stride, n_tiles, N: tl.constexpr, LOG_N: tl.constexpr,
                         NBLOCKS: tl.constexpr, INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr,
                         BLOCK_B: tl.constexpr, COMPUTE: tl.constexpr, CPLX: tl.constexpr, CONJ: tl.constexpr,
                         SLOTS: tl.constexpr, IN_MAP: tl.constexpr, OUT_MAP: tl.constexpr):
        """Backward of the unrolled forward. The program walks tiles ``pid, pid + nprog, ...``: it recomputes a
        tile's activations and adds the tile's twiddle gradient to its own slice of ``dtw`` (summed over programs
        afterwards: deterministic).

        Only the inputs of the even factors 2, 4, ... are kept, in the program's slot of ``acts`` (``SLOTS`` =
        ``max(F // 2 - 1, 0)`` tiles: factor 0's input is the input tile, read again, and with F odd the last
        factor's input stays in registers): going down, the input of an odd factor j is
        recomputed from factor j - 1's in registers, which costs F / 2 factor applications and halves the
        scratch. Every element of ``acts`` and ``dtw`` is written and read back through the same pointer layout,
        hence by the same thread: no barrier is needed. ``IN_MAP`` / ``OUT_MAP``: as in :func:`_forward_kernel`
        (x read and its gradient stored through ``in_map``, the incoming gradient read through ``out_map``)."""
        pid = tl.program_id(0)
        k = tl.program_id(1)
        nprog = tl.num_programs(0)
        F: tl.constexpr = NBLOCKS * LOG_N
        TILE: tl.constexpr = BLOCK_B * N
        W: tl.constexpr = 1 + CPLX  # stored values per element
        cols = tl.arange(0, N)
        local = tl.arange(0, BLOCK_B)[:, None] * N + cols[None, :]
        acts = acts_ptr + (k * nprog + pid) * (SLOTS * TILE * W)  # slot i: the input of factor 2 (i + 1)
        in_cols = cols + k * N * TRANSPOSE
        g_cols = cols + k * N * (1 - TRANSPOSE)
        in_mcols = _mapped_cols(in_map_ptr, in_cols, in_size, IN_MAP)
        g_mcols = _mapped_cols(out_map_ptr, g_cols, out_cols, OUT_MAP)
        tw_k = tw_ptr + k * (F * N * 2 * W)
        dtw = dtw_ptr + (pid * tl.num_programs(1) + k) * (F * N * 2 * W)
        for tile_id in range(pid, n_tiles, nprog):
            acc = tl.where(tile_id == pid, 0, 1 << 30)  # the program's first tile overwrites its slice of dtw
            rows = tile_id * BLOCK_B + tl.arange(0, BLOCK_B)
            xr, xi = _load_tile(x_ptr, rows, in_cols, in_mcols, batch, in_size, ld_x, COMPUTE, CPLX)
            # the inputs of factors 1 .. F-1 (F odd: x ends as the last factor's input) or 1 .. F-2 (F even: factor
            # F-1's input is recomputed by the last pair)
            for j in tl.static_range(F - 2 + F % 2):
                xr, xi = _forward_step(xr, xi, tw_k, j, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N, COMPUTE,
                                       CPLX, CONJ)
                if j % 2 == 1 and j + 1 < F - F % 2:
                    _store_values(acts + (j // 2) * TILE * W, local, xr, xi, CPLX)
            gr, gi = _load_tile(g_ptr, rows, g_cols, g_mcols, batch, out_cols, ld_g, COMPUTE, CPLX)
            if F % 2 == 1:  # the last factor has an even index: its input is x, still in registers
                gr, gi = _backward_step(gr, gi, xr, xi, tw_k, dtw, acc, F - 1, LOG_N, NBLOCKS, INCREASING, TRANSPOSE,
                                        BLOCK_B, N, COMPUTE, CPLX, CONJ)
            for p in tl.static_range(F // 2):  # factors (j0 + 1, j0) from the top, j0 even
                gr, gi = _backward_pair(gr, gi, acts, local, x_ptr, rows, in_cols, in_mcols, batch, in_size, ld_x,
                                        tw_k, dtw, acc, 2 * (F // 2 - 1 - p), LOG_N, NBLOCKS, INCREASING, TRANSPOSE,
                                        BLOCK_B, N, COMPUTE, CPLX, CONJ)
            # shared input (plain multiply): stack k writes its own slab (summed later); split input: own columns
            mask = (rows[:, None] < batch) & (in_cols[None, :] < in_size)
            _store_tile(gx_ptr, k * stack_gx_stride * (1 - TRANSPOSE) + rows[:, None] * ld_x + in_mcols[None, :],
                        mask, gr, gi, CPLX)

    @triton.jit
    def _factor_geometry(j, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr, INCREASING: tl.constexpr,
                         TRANSPOSE: tl.constexpr):
        """Run-time geometry of the j-th applied factor: (raw factor index into the twiddle, log2 of its stride)."""
        jb = j // LOG_N
        jf = j % LOG_N
        b = (NBLOCKS - 1 - jb) * TRANSPOSE + jb * (1 - TRANSPOSE)
        f = (LOG_N - 1 - jf) * TRANSPOSE + jf * (1 - TRANSPOSE)
        inc = (INCREASING + b) % 2
        return b * LOG_N + f, f * inc + (LOG_N - 1 - f) * (1 - inc)

    @triton.jit
    def _pair_offsets(pairs, log_s):
        """Column of the first member of every pair (pair p of stride S = 2^log_s is columns i0, i0 + S)."""
        return ((pairs >> log_s) << (log_s + 1)) + (pairs & ((1 << log_s) - 1))

    @triton.jit
    def _loop_chunk(tw_f, start, log_s, N: tl.constexpr, BLOCK_B: tl.constexpr, CHUNK: tl.constexpr,
                    TRANSPOSE: tl.constexpr, COMPUTE: tl.constexpr, CPLX: tl.constexpr, CONJ: tl.constexpr):
        """Pairs ``start .. start + CHUNK`` of one factor (twiddle slice ``tw_f``, stride 2^log_s): their indices,
        the tile offsets of their first members in every row ``(BLOCK_B, CHUNK)``, and the applied entries
        a, b, c, d of their blocks, each (re, im) of shape ``(1, CHUNK)``."""
        pairs = start + tl.arange(0, CHUNK)
        off = tl.arange(0, BLOCK_B)[:, None] * N + _pair_offsets(pairs, log_s)[None, :]
        ar, ai = _load_entry(tw_f, 4 * pairs, COMPUTE, CPLX, CONJ)
        br, bi = _load_entry(tw_f, 4 * pairs + 1 + TRANSPOSE, COMPUTE, CPLX, CONJ)
        cr, ci = _load_entry(tw_f, 4 * pairs + 2 - TRANSPOSE, COMPUTE, CPLX, CONJ)
        dr, di = _load_entry(tw_f, 4 * pairs + 3, COMPUTE, CPLX, CONJ)
        return (pairs, off, ar[None, :], ai[None, :], br[None, :], bi[None, :], cr[None, :], ci[None, :],
                dr[None, :], di[None, :])

    @triton.jit
    def _loop_apply(src, dst, tw_f, log_s, N: tl.constexpr, BLOCK_B: tl.constexpr, CHUNK: tl.constexpr,
                    TRANSPOSE: tl.constexpr, COMPUTE: tl.constexpr, CPLX: tl.constexpr, CONJ: tl.constexpr):
        """Apply one factor (stride 2^log_s) to the (BLOCK_B, N) tile at ``src``, writing it at ``dst`` (may be
        ``src``: each element is read and written by the same thread), ``CHUNK`` pairs of every row at a time."""
        for start in range(0, N // 2, CHUNK):
            pairs, off, ar, ai, br, bi, cr, ci, dr, di = _loop_chunk(tw_f, start, log_s, N, BLOCK_B, CHUNK, TRANSPOSE,
                                                                     COMPUTE, CPLX, CONJ)
            ur, ui = _load_values(src, off, CPLX)
            vr, vi = _load_values(src, off + (1 << log_s), CPLX)
            yr, yi = _mul_add(ar, ai, ur, ui, br, bi, vr, vi, CPLX)
            _store_values(dst, off, yr, yi, CPLX)
            yr, yi = _mul_add(cr, ci, ur, ui, dr, di, vr, vi, CPLX)
            _store_values(dst, off + (1 << log_s), yr, yi, CPLX)

    @triton.jit
    def _loop_apply_backward(acts_j, grad, tw_f, dtw_f, acc, log_s, N: tl.constexpr, BLOCK_B: tl.constexpr,
                             CHUNK: tl.constexpr, TRANSPOSE: tl.constexpr, COMPUTE: tl.constexpr, CPLX: tl.constexpr,
                             CONJ: tl.constexpr):
        """Backward through one factor: add the tile's twiddle gradient to ``dtw_f`` and replace the gradient
        tile at ``grad`` by the gradient w.r.t. the factor's input (whose values are at ``acts_j``)."""
        for start in range(0, N // 2, CHUNK):
            pairs, off, ar, ai, br, bi, cr, ci, dr, di = _loop_chunk(tw_f, start, log_s, N, BLOCK_B, CHUNK, TRANSPOSE,
                                                                     COMPUTE, CPLX, CONJ)
            u0r, u0i = _load_values(acts_j, off, CPLX)
            u1r, u1i = _load_values(acts_j, off + (1 << log_s), CPLX)
            g0r, g0i = _load_values(grad, off, CPLX)
            g1r, g1i = _load_values(grad, off + (1 << log_s), CPLX)
            keep = pairs < acc  # add to dtw_f, or overwrite it on the program's first tile
            oa = 4 * pairs
            ob = 4 * pairs + 1 + TRANSPOSE
            oc = 4 * pairs + 2 - TRANSPOSE
            od = 4 * pairs + 3
            sr, si = _row_sum_conj(g0r, g0i, u0r, u0i, CPLX)
            dar, dai = _add_to_entry(dtw_f, oa, keep, sr, si, CPLX, CONJ)
            sr, si = _row_sum_conj(g0r, g0i, u1r, u1i, CPLX)
            dbr, dbi = _add_to_entry(dtw_f, ob, keep, sr, si, CPLX, CONJ)
            sr, si = _row_sum_conj(g1r, g1i, u0r, u0i, CPLX)
            dcr, dci = _add_to_entry(dtw_f, oc, keep, sr, si, CPLX, CONJ)
            sr, si = _row_sum_conj(g1r, g1i, u1r, u1i, CPLX)
            ddr, ddi = _add_to_entry(dtw_f, od, keep, sr, si, CPLX, CONJ)
            tl.debug_barrier()  # reduced values may be replicated over threads: every read before any write
            _store_entry(dtw_f, oa, dar, dai, CPLX)
            _store_entry(dtw_f, ob, dbr, dbi, CPLX)
            _store_entry(dtw_f, oc, dcr, dci, CPLX)
            _store_entry(dtw_f, od, ddr, ddi, CPLX)
            hr, hi = _mul_add(ar, -ai, g0r, g0i, cr, -ci, g1r, g1i, CPLX)  # conj(a) g0 + conj(c) g1
            _store_values(grad, off, hr, hi, CPLX)
            hr, hi = _mul_add(br, -bi, g0r, g0i, dr, -di, g1r, g1i, CPLX)
            _store_values(grad, off + (1 << log_s), hr, hi, CPLX)

    @triton.jit(do_not_specialize=["batch", "stack_out_stride", "n_tiles"])  # one compilation for every batch size
    def _loop_forward_kernel(x_ptr, tw_ptr, bias_ptr, out_ptr, work_ptr, in_map_ptr, out_map_ptr, batch, in_size,
                             out_cols, ld_x, ld_out, stack_out_stride, n_tiles, N: tl.constexpr, LOG_N: tl.constexpr,
                             NBLOCKS: tl.constexpr, INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr,
                             BLOCK_B: tl.constexpr, CHUNK: tl.constexpr, HAS_BIAS: tl.constexpr,
                             COMPUTE: tl.constexpr, CPLX: tl.constexpr, CONJ: tl.constexpr, IN_MAP: tl.constexpr,
                             OUT_MAP: tl.constexpr):
        """Forward with a run-time loop over the factors (one short compilation per (N, BLOCK_B), however many
        factors, and registers bounded by ``CHUNK``).

        The tile lives in this program's slot of ``work`` (global memory, cached on chip); each factor updates it
        in place and a barrier publishes it to the other threads. The program walks tiles ``pid, pid + nprog, ...``
        so that ``work`` stays small. ``IN_MAP`` / ``OUT_MAP``: as in :func:`_forward_kernel`."""
        pid = tl.program_id(0)
        k = tl.program_id(1)
        nprog = tl.num_programs(0)
        F: tl.constexpr = NBLOCKS * LOG_N
        W: tl.constexpr = 1 + CPLX  # stored values per element
        cols = tl.arange(0, N)
        local_rows = tl.arange(0, BLOCK_B)
        work = work_ptr + (k * nprog + pid) * (BLOCK_B * N * W)
        tile = local_rows[:, None] * N + cols[None, :]
        tw_k = tw_ptr + k * (F * N * 2 * W)
        in_cols = cols + k * N * TRANSPOSE
        o_cols = cols + k * N * (1 - TRANSPOSE)
        in_mcols = _mapped_cols(in_map_ptr, in_cols, in_size, IN_MAP)
        o_mcols = _mapped_cols(out_map_ptr, o_cols, out_cols, OUT_MAP)
        for tile_id in range(pid, n_tiles, nprog):
            rows = tile_id * BLOCK_B + local_rows
            xr, xi = _load_tile(x_ptr, rows, in_cols, in_mcols, batch, in_size, ld_x, COMPUTE, CPLX)
            _store_values(work, tile, xr, xi, CPLX)
            tl.debug_barrier()
            for j in range(F):
                raw, log_s = _factor_geometry(j, LOG_N, NBLOCKS, INCREASING, TRANSPOSE)
                _loop_apply(work, work, tw_k + raw * (N * 2 * W), log_s, N, BLOCK_B, CHUNK, TRANSPOSE, COMPUTE, CPLX,
                            CONJ)
                tl.debug_barrier()
            yr, yi = _load_values(work, tile, CPLX)
            if HAS_BIAS:
                yr, yi = _add_bias(yr, yi, bias_ptr, o_cols, o_mcols, out_cols, COMPUTE, CPLX)
            mask = (rows[:, None] < batch) & (o_cols[None, :] < out_cols)
            _store_tile(out_ptr, k * stack_out_stride * TRANSPOSE + rows[:, None] * ld_out + o_mcols[None, :], mask,
                        yr, yi, CPLX)
            tl.debug_barrier()  # the next tile overwrites work

    @triton.jit(do_not_specialize=["batch", "stack_gx_stride", "n_tiles"])  # one compilation for every batch size
    def _loop_backward_kernel(x_ptr, tw_ptr, g_ptr, gx_ptr, dtw_ptr, acts_ptr, in_map_ptr, out_map_ptr, batch,
                              in_size, out_cols, ld_x, ld_g, stack_gx_stride, n_tiles, N: tl.constexpr,
                              LOG_N: tl.constexpr, NBLOCKS: tl.constexpr, INCREASING: tl.constexpr,
                              TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr, CHUNK: tl.constexpr,
                              COMPUTE: tl.constexpr, CPLX: tl.constexpr, CONJ: tl.constexpr, IN_MAP: tl.constexpr,
                              OUT_MAP: tl.constexpr):
        """Backward with run-time factor loops. The program's slot of ``acts`` holds ``(F + 1) // 2 + 2`` tiles:
        the inputs of the even factors 0, 2, ... (recomputed), a spare tile into which an odd factor's input is
        recomputed from the factor below when the walk down reaches it (F / 2 extra factor applications for half
        the scratch), and, last, the running gradient. Twiddle gradients are accumulated over the program's tiles
        in its own slice of ``dtw`` (summed over programs afterwards: deterministic). ``IN_MAP`` / ``OUT_MAP``: as in
        :func:`_backward_kernel`."""
        pid = tl.program_id(0)
        k = tl.program_id(1)
        nprog = tl.num_programs(0)
        F: tl.constexpr = NBLOCKS * LOG_N
        W: tl.constexpr = 1 + CPLX  # stored values per element
        TILE: tl.constexpr = BLOCK_B * N * W
        EVEN: tl.constexpr = (F + 1) // 2  # tiles holding the inputs of the even factors
        cols = tl.arange(0, N)
        local_rows = tl.arange(0, BLOCK_B)
        acts = acts_ptr + (k * nprog + pid) * ((EVEN + 2) * TILE)
        spare = acts + EVEN * TILE
        grad = spare + TILE
        tile = local_rows[:, None] * N + cols[None, :]
        tw_k = tw_ptr + k * (F * N * 2 * W)
        dtw = dtw_ptr + (pid * tl.num_programs(1) + k) * (F * N * 2 * W)
        in_cols = cols + k * N * TRANSPOSE
        g_cols = cols + k * N * (1 - TRANSPOSE)
        in_mcols = _mapped_cols(in_map_ptr, in_cols, in_size, IN_MAP)
        g_mcols = _mapped_cols(out_map_ptr, g_cols, out_cols, OUT_MAP)
        for tile_id in range(pid, n_tiles, nprog):
            acc = tl.where(tile_id == pid, 0, 1 << 30)  # the program's first tile overwrites its slice of dtw
            rows = tile_id * BLOCK_B + local_rows
            xr, xi = _load_tile(x_ptr, rows, in_cols, in_mcols, batch, in_size, ld_x, COMPUTE, CPLX)
            _store_values(acts, tile, xr, xi, CPLX)
            gr, gi = _load_tile(g_ptr, rows, g_cols, g_mcols, batch, out_cols, ld_g, COMPUTE, CPLX)
            _store_values(grad, tile, gr, gi, CPLX)
            tl.debug_barrier()
            for j in range(0, F - 2, 2):  # the input of factor j + 2, through the spare tile
                raw, log_s = _factor_geometry(j, LOG_N, NBLOCKS, INCREASING, TRANSPOSE)
                _loop_apply(acts + (j // 2) * TILE, spare, tw_k + raw * (N * 2 * W), log_s, N, BLOCK_B, CHUNK,
                            TRANSPOSE, COMPUTE, CPLX, CONJ)
                tl.debug_barrier()
                raw, log_s = _factor_geometry(j + 1, LOG_N, NBLOCKS, INCREASING, TRANSPOSE)
                _loop_apply(spare, acts + (j // 2 + 1) * TILE, tw_k + raw * (N * 2 * W), log_s, N, BLOCK_B, CHUNK,
                            TRANSPOSE, COMPUTE, CPLX, CONJ)
                tl.debug_barrier()
            for jj in range(F):
                j = F - 1 - jj
                odd = j % 2
                if odd == 1:  # recompute this factor's input from the even factor below it
                    raw, log_s = _factor_geometry(j - 1, LOG_N, NBLOCKS, INCREASING, TRANSPOSE)
                    _loop_apply(acts + (j // 2) * TILE, spare, tw_k + raw * (N * 2 * W), log_s, N, BLOCK_B, CHUNK,
                                TRANSPOSE, COMPUTE, CPLX, CONJ)
                    tl.debug_barrier()
                inputs = acts + ((j // 2) * (1 - odd) + EVEN * odd) * TILE  # the spare tile for odd j
                raw, log_s = _factor_geometry(j, LOG_N, NBLOCKS, INCREASING, TRANSPOSE)
                _loop_apply_backward(inputs, grad, tw_k + raw * (N * 2 * W), dtw + raw * (N * 2 * W), acc, log_s, N,
                                     BLOCK_B, CHUNK, TRANSPOSE, COMPUTE, CPLX, CONJ)
                tl.debug_barrier()
            gxr, gxi = _load_values(grad, tile, CPLX)
            mask = (rows[:, None] < batch) & (in_cols[None, :] < in_size)
            _store_tile(gx_ptr, k * stack_gx_stride * (1 - TRANSPOSE) + rows[:, None] * ld_x + in_mcols[None, :],
                        mask, gxr, gxi, CPLX)
            tl.debug_barrier()  # the next tile overwrites acts


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype in (torch.float64, torch.complex128) else tl.float32


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The real dtype the kernels compute in (scratch buffers, partial twiddle gradients)."""
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32


def _block_rows(n: int, is_complex: bool = False) -> int:
    """Rows per program: keep a tile of about 8K real values (a complex element is two)."""
    return max(1, min(64, 8192 // max(2 * n if is_complex else n, 1)))


def _real_view(t: torch.Tensor | None) -> torch.Tensor | None:
    """What a kernel gets for a tensor: a complex tensor's real view ``(..., 2)`` (same memory, after resolving a
    lazy conjugation such as ``x.conj()``'s), else the tensor."""
    return torch.view_as_real(t.resolve_conj()) if t is not None and t.is_complex() else t


def _chunk(n: int, block_rows: int) -> int:
    """Pairs of every row that the loop kernels handle at once: about 1K pairs per step bounds their registers."""
    return max(1, min(n // 2, 1024 // block_rows))


def _shapes(twiddle: torch.Tensor) -> tuple[int, int, int, int]:
    nstacks, nblocks, log_n = twiddle.shape[:3]
    return nstacks, nblocks, log_n, 1 << log_n


VARIANTS = ("unrolled", "loop")
# The unrolled kernel is the faster one but compiles a program whose size grows with n log n: on an H100 host
# 8 s at n = 256, 20 s at 1024, about two minutes at 4096 (Triton caches it on disk afterwards). Above this size
# the loop kernel (2-4 s to compile at any n) is the default.
UNROLLED_MAX_N = 2048


def choose_variant(n: int, variant: str = "auto") -> str:
    """The kernel variant for size ``n``: ``variant`` if it names one, else ``TWIDDLE_TRITON_VARIANT`` if set to
    one, else ``unrolled`` up to :data:`UNROLLED_MAX_N` and ``loop`` above."""
    if variant == "auto":
        variant = os.environ.get("TWIDDLE_TRITON_VARIANT", "auto")
    if variant == "auto":
        return "unrolled" if n <= UNROLLED_MAX_N else "loop"
    if variant not in VARIANTS:
        raise ValueError(f"Triton kernel variant must be one of {VARIANTS} or 'auto', got {variant!r} "
                         "(argument variant or TWIDDLE_TRITON_VARIANT)")
    return variant


#: programs per multiprocessor of the backward kernels: each holds a scratch of recomputed activations and a
#: partial twiddle gradient, so fewer programs use less memory (and, at large batches, may lose some speed)
BACKWARD_PROGRAMS_PER_SM = 2


def _programs(n_tiles: int, device: torch.device, per_sm: int) -> int:
    """Programs for the kernels that walk tiles: enough to fill the GPU (``per_sm`` per multiprocessor), few
    enough that their scratch (a tile, or a tile per factor in the backward) stays small and in cache."""
    if device.type != "cuda":
        return max(1, min(n_tiles, 2))  # the interpreter: two programs, so that tile walking is exercised
    return max(1, min(n_tiles, per_sm * _sm_count(device.index)))


@functools.cache
def _sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(index if index is not None else torch.cuda.current_device()
                                            ).multi_processor_count


# (compiled kernel, its constexpr values in signature order) by (kernel, device, argument specialization,
# constexprs): see _launch
_LAUNCHERS: dict[tuple, tuple] = {}


def _specialization(arg: object) -> object:
    """What Triton specializes a kernel on for one argument: a tensor's dtype and 16-byte alignment, an integer's
    being 1, a multiple of 16, and its width (i32 or i64); None as is."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, int):
        return arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31
    return arg


def _launch(kernel, grid: tuple[int, int], args: tuple, meta: dict) -> None:
    """``kernel[grid](*args, **meta)``; once a specialization has been compiled, later calls launch the compiled
    kernel directly and skip Triton's per-call argument binding (tens of microseconds per call). ``args`` are the
    kernel's run-time arguments in signature order; ``meta`` its constexprs by name, in any order."""
    device = torch.cuda.current_device() if args[0].is_cuda else None
    key = (kernel, device, tuple(map(_specialization, args)), tuple(meta.items()))
    entry = _LAUNCHERS.get(key)
    if entry is not None:
        compiled, constexprs = entry
        compiled[(grid[0], grid[1], 1)](*args, *constexprs)  # a compiled kernel's launcher wants 3 dims
        return
    compiled = kernel[grid](*args, **meta)
    if hasattr(compiled, "packed_metadata"):  # a GPU compilation (the interpreter returns nothing to keep)
        # the compiled launcher takes every argument positionally: constexprs in the kernel's signature order
        _LAUNCHERS[key] = compiled, tuple(meta[name] for name in kernel.arg_names[len(args):])


def _constexprs(twiddle: torch.Tensor, increasing_stride: bool, transpose: bool, conjugate: bool, block_b: int,
                dtype: torch.dtype, **extra: int) -> dict:
    """The compile-time arguments every kernel takes (geometry, options, compute dtype, complex or not), plus
    ``extra``. The dict is shared between calls (cached): callers copy it before adding to it."""
    return _constexprs_cached(tuple(twiddle.shape[1:3]), bool(increasing_stride), bool(transpose), bool(conjugate),
                              block_b, dtype, tuple(extra.items()))


@functools.lru_cache(maxsize=256)
def _constexprs_cached(geometry: tuple[int, int], increasing_stride: bool, transpose: bool, conjugate: bool,
                       block_b: int, dtype: torch.dtype, extra: tuple) -> dict:
    nblocks, log_n = geometry
    is_complex = dtype.is_complex
    return dict(N=1 << log_n, LOG_N=log_n, NBLOCKS=nblocks, INCREASING=int(increasing_stride),
                TRANSPOSE=int(transpose), BLOCK_B=block_b, COMPUTE=_compute_dtype(dtype), CPLX=int(is_complex),
                CONJ=int(conjugate and is_complex), **dict(extra))


# out_perm -> its column map, kept for the permutation tensors that modules pass on every call (a transform's
# buffers), which would otherwise cost an argsort (a kernel launch and a sort) per call. An entry is used only while
# the same tensor object is alive (weak reference) and unmodified (version counter); inference tensors, which
# track no version, are not kept.
_OUT_MAPS: dict[tuple[int, int], tuple] = {}
_OUT_MAPS_LIMIT = 64


def _out_map(out_perm: torch.Tensor | None, columns: int) -> torch.Tensor | None:
    """Where the kernels store (or read the gradient of) each of their ``columns`` result columns under the output
    permutation ``out_perm`` (``y = z[..., out_perm]``): its inverse, extended by the identity over the columns
    past ``out_perm``'s (a transposed call's slabs are ``n`` wide and cut to ``out_size`` afterwards)."""
    if out_perm is None:
        return None
    key = (id(out_perm), columns)
    trackable = not out_perm.is_inference()
    if trackable:
        entry = _OUT_MAPS.get(key)
        if entry is not None and entry[0]() is out_perm and entry[1] == out_perm._version:
            return entry[2]
    inverse = torch.argsort(out_perm)
    if columns > inverse.numel():
        inverse = torch.cat([inverse, torch.arange(inverse.numel(), columns, device=inverse.device)])
    if trackable:
        if len(_OUT_MAPS) >= _OUT_MAPS_LIMIT:
            _OUT_MAPS.clear()
        _OUT_MAPS[key] = (weakref.ref(out_perm), out_perm._version, inverse)
    return inverse


def triton_forward(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool,
                   out_size: int, variant: str = "auto", bias: torch.Tensor | None = None,
                   conjugate: bool = False, in_perm: torch.Tensor | None = None,
                   out_perm: torch.Tensor | None = None) -> torch.Tensor:
    """Forward of the butterfly map (see :func:`twiddle.ops.butterfly_multiply`); ``x`` is ``(batch, m)``,
    ``bias`` ``(out_size,)`` or None (added in the kernel's final store unless ``transpose``), all of one dtype:
    real, or complex64/complex128 (``conjugate`` conjugates the twiddles; ignored for real ones). ``in_perm``
    (``(m,)``) / ``out_perm`` (``(out_size,)``): int64 permutations on x's device, or None; the result is
    ``B(x[:, in_perm])[:, out_perm] + bias``, the kernels reading x's columns and writing the result's in permuted
    order (no permuted copies).

    ``variant``: ``unrolled`` (every factor compiled in, the tile kept in registers) or ``loop`` (a run-time loop
    over the factors through an on-chip scratch tile); ``auto``: see :func:`choose_variant`."""
    nstacks, _, _, n = _shapes(twiddle)
    variant = choose_variant(n, variant)
    batch, m = x.shape
    is_complex = x.is_complex()
    tw = _real_view(twiddle.contiguous())
    xc = _real_view(x.contiguous())
    block_b = _block_rows(n, is_complex)
    n_tiles = -(-max(batch, 1) // block_b)  # ceil; triton.cdiv costs microseconds on the host
    fuse_bias = bias is not None and not transpose
    if transpose:
        target = torch.empty(nstacks, batch, n, device=x.device, dtype=x.dtype)
        ld_out, cols = n, n
    else:
        target = torch.empty(batch, out_size, device=x.device, dtype=x.dtype)
        ld_out, cols = out_size, out_size
    in_map = None if in_perm is None else in_perm.contiguous()
    out_map = _out_map(out_perm, cols)
    meta = _constexprs(twiddle, increasing_stride, transpose, conjugate, block_b, x.dtype, HAS_BIAS=int(fuse_bias),
                       IN_MAP=int(in_map is not None), OUT_MAP=int(out_map is not None))
    b = _real_view(bias.contiguous()) if fuse_bias else None
    out = _real_view(target)
    if batch > 0 and variant == "unrolled":
        _launch(_forward_kernel, (n_tiles, nstacks),
                (xc, tw, b, out, in_map, out_map, batch, m, cols, m, ld_out, batch * n), meta)
    elif batch > 0:
        nprog = _programs(n_tiles, x.device, per_sm=4)
        work = torch.empty(nstacks * nprog * block_b * n * (2 if is_complex else 1), device=x.device,
                           dtype=_wide(x.dtype))
        _launch(_loop_forward_kernel, (nprog, nstacks),
                (xc, tw, b, out, work, in_map, out_map, batch, m, cols, m, ld_out, batch * n, n_tiles),
                {**meta, "CHUNK": _chunk(n, block_b)})
    if transpose:
        y = (target[0] if nstacks == 1 else target.sum(0))[:, :out_size]
        return y if bias is None else y + bias
    return target


def triton_backward(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool,
                    transpose: bool, out_size: int, variant: str = "auto", conjugate: bool = False,
                    in_perm: torch.Tensor | None = None,
                    out_perm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (twiddle, x) of ``sum(grad * forward(twiddle, x))`` (complex: torch's convention, ``Σ grad ·
    conj(∂y)``); ``variant``, ``conjugate``, ``in_perm`` and ``out_perm`` as in :func:`triton_forward` (the
    incoming gradient is read, and x's gradient written, through the permutations)."""
    nstacks, nblocks, log_n, n = _shapes(twiddle)
    variant = choose_variant(n, variant)
    batch, m = x.shape
    F = nblocks * log_n
    is_complex = x.is_complex()
    per_element = 2 if is_complex else 1  # real values per element in the scratch buffers
    tw = _real_view(twiddle.contiguous())
    xc = _real_view(x.contiguous())
    g = grad.contiguous()
    if transpose and out_size < n:  # the kernel reads n columns of grad for every stack
        g = torch.nn.functional.pad(g, (0, n - out_size))
    block_b = _block_rows(n, is_complex)
    n_tiles = -(-max(batch, 1) // block_b)  # ceil; triton.cdiv costs microseconds on the host
    wide = _wide(x.dtype)
    gx_slabs = torch.empty((1 if transpose else nstacks), batch, m, device=x.device, dtype=x.dtype)
    if batch == 0:
        return torch.zeros_like(twiddle), gx_slabs.sum(0)
    in_map = None if in_perm is None else in_perm.contiguous()
    out_map = _out_map(out_perm, g.shape[1])
    meta = _constexprs(twiddle, increasing_stride, transpose, conjugate, block_b, x.dtype,
                       IN_MAP=int(in_map is not None), OUT_MAP=int(out_map is not None))
    nprog = _programs(n_tiles, x.device, per_sm=BACKWARD_PROGRAMS_PER_SM)
    # every program writes its whole slice (it has at least one tile): no zero fill
    partial = torch.empty(nprog, nstacks, *twiddle.shape[1:], *((2,) if is_complex else ()), device=x.device,
                          dtype=wide)
    args = (xc, tw, _real_view(g), _real_view(gx_slabs), partial)
    maps = (in_map, out_map)
    sizes = (batch, m, g.shape[1], m, g.shape[1], batch * m, n_tiles)
    if variant == "unrolled":
        slots = max(F // 2 - 1, 0)  # see _backward_kernel
        acts = torch.empty(nstacks * nprog * max(slots, 1) * block_b * n * per_element, device=x.device, dtype=wide)
        _launch(_backward_kernel, (nprog, nstacks), (*args, acts, *maps, *sizes), {**meta, "SLOTS": slots})
    else:
        # the even factors' inputs, a spare tile and the gradient: see _loop_backward_kernel
        acts = torch.empty(nstacks * nprog * ((F + 1) // 2 + 2) * block_b * n * per_element, device=x.device,
                           dtype=wide)
        _launch(_loop_backward_kernel, (nprog, nstacks), (*args, acts, *maps, *sizes),
                {**meta, "CHUNK": _chunk(n, block_b)})
    # skip the reductions over a single slab (a kernel launch each, which counts at small batches)
    gt = partial[0] if nprog == 1 else partial.sum(0)
    if is_complex:
        gt = torch.view_as_complex(gt)
    return gt.to(twiddle.dtype), gx_slabs[0] if gx_slabs.shape[0] == 1 else gx_slabs.sum(0)


def _differentiable_gradients(twiddle, x, grad, increasing_stride, transpose, out_size, conjugate, in_perm, out_perm,
                              needs):
    """The twiddle's and x's gradients (``needs``: the backward's ``needs_input_grad``; None where not needed) as
    differentiable tensor operations, for a backward under ``create_graph=True`` (the kernels' gradients are not
    differentiable): :func:`twiddle.ops._higher_order.differentiable_gradients`."""
    return differentiable_gradients(twiddle, x, grad, increasing_stride, transpose, conjugate, out_size, in_perm,
                                    out_perm, need_twiddle=needs[0], need_x=needs[1])


if HAVE_TRITON:

    @torch.library.custom_op("twiddle::butterfly_multiply_triton", mutates_args=())
    def _triton_op(twiddle: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, increasing_stride: bool,
                   transpose: bool, out_size: int, conjugate: bool, in_perm: torch.Tensor | None,
                   out_perm: torch.Tensor | None) -> torch.Tensor:
        return triton_forward(twiddle, x, increasing_stride, transpose, out_size, bias=bias, conjugate=conjugate,
                              in_perm=in_perm, out_perm=out_perm)

    @_triton_op.register_fake
    def _(twiddle, x, bias, increasing_stride, transpose, out_size, conjugate, in_perm, out_perm):
        return x.new_empty(x.shape[0], out_size)

    @torch.library.custom_op("twiddle::butterfly_multiply_triton_backward", mutates_args=())
    def _triton_backward_op(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool,
                            transpose: bool, out_size: int, conjugate: bool, in_perm: torch.Tensor | None,
                            out_perm: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return triton_backward(twiddle, x, grad, increasing_stride, transpose, out_size, conjugate=conjugate,
                               in_perm=in_perm, out_perm=out_perm)

    @_triton_backward_op.register_fake
    def _(twiddle, x, grad, increasing_stride, transpose, out_size, conjugate, in_perm, out_perm):
        return torch.empty_like(twiddle), torch.empty_like(x)

    def _setup(ctx, inputs, output):
        twiddle, x, bias, increasing_stride, transpose, out_size, conjugate, in_perm, out_perm = inputs
        ctx.save_for_backward(twiddle, x, in_perm, out_perm)
        ctx.flags = (increasing_stride, transpose, out_size, conjugate)
        ctx.has_bias = bias is not None

    def _backward(ctx, grad):
        twiddle, x, in_perm, out_perm = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients (see _differentiable_gradients)
            gt, gx = _differentiable_gradients(twiddle, x, grad, *ctx.flags, in_perm, out_perm, ctx.needs_input_grad)
        else:
            gt, gx = _triton_backward_op(twiddle, x, grad, *ctx.flags, in_perm, out_perm)
        return gt, gx, grad.sum(0) if ctx.has_bias else None, None, None, None, None, None, None

    _triton_op.register_autograd(_backward, setup_context=_setup)

    class _TritonMultiply(torch.autograd.Function):
        """The eager path: the same computation as ``_triton_op`` for a fifth of its per-call overhead (a custom
        op costs about 25 us per differentiable call on the host, this about 6)."""

        @staticmethod
        def forward(ctx, twiddle, x, bias, increasing_stride, transpose, out_size, conjugate, in_perm, out_perm):
            ctx.save_for_backward(twiddle, x, in_perm, out_perm)
            ctx.flags = (increasing_stride, transpose, out_size)
            ctx.conjugate = conjugate
            ctx.has_bias = bias is not None
            return triton_forward(twiddle, x, increasing_stride, transpose, out_size, bias=bias, conjugate=conjugate,
                                  in_perm=in_perm, out_perm=out_perm)

        @staticmethod
        def backward(ctx, grad):
            twiddle, x, in_perm, out_perm = ctx.saved_tensors
            if torch.is_grad_enabled():  # create_graph=True
                gt, gx = _differentiable_gradients(twiddle, x, grad, *ctx.flags, ctx.conjugate, in_perm, out_perm,
                                                   ctx.needs_input_grad)
            else:
                gt, gx = triton_backward(twiddle, x, grad, *ctx.flags, conjugate=ctx.conjugate, in_perm=in_perm,
                                         out_perm=out_perm)
            return gt, gx, grad.sum(0) if ctx.has_bias else None, None, None, None, None, None, None


def triton_butterfly_multiply(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, *, out_size: int,
                              transpose: bool, bias: torch.Tensor | None = None, conjugate: bool = False,
                              in_perm: torch.Tensor | None = None,
                              out_perm: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton path as one differentiable op; ``twiddle``, 2-D ``x`` and ``bias`` (``(out_size,)`` or None) of
    one dtype, real or complex64/complex128 (``conjugate``: conjugate the twiddles); ``in_perm`` / ``out_perm``
    checked int64 permutations of x's columns / the outputs, or None (``y = B(x[:, in_perm])[:, out_perm] + bias``,
    gathered and scattered by the kernels). Under ``torch.compile`` it is the custom op
    ``twiddle::butterfly_multiply_triton``."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed")
    if torch.compiler.is_compiling():
        return _triton_op(twiddle, x, bias, increasing_stride, transpose, out_size, conjugate, in_perm, out_perm)
    if torch.is_grad_enabled() and (twiddle.requires_grad or x.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _TritonMultiply.apply(twiddle, x, bias, increasing_stride, transpose, out_size, conjugate, in_perm,
                                     out_perm)
    # nothing to differentiate
    return triton_forward(twiddle, x, increasing_stride, transpose, out_size, bias=bias, conjugate=conjugate,
                          in_perm=in_perm, out_perm=out_perm)
