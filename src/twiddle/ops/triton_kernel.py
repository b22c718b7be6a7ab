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
adding its twiddle gradients into its own slice (summed in a fixed order afterwards: deterministic). Real dtypes
only: float64 is computed in float64, float32/float16/bfloat16 in float32; complex CUDA tensors use the reference
multiply. No Triton specialization on the batch size: one compilation per shape.

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
    def _backward_step(g, u, tw_k, dtw, acc, j: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr,
                       INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr, N: tl.constexpr,
                       COMPUTE: tl.constexpr):
        """Backward through the j-th factor: add its twiddle gradient (summed over the tile's rows) to ``dtw`` and
        return the gradient w.r.t. its input. ``u`` is the factor's input; ``acc`` (a scalar, 0 or
        2^30): add to the entries of ``dtw`` whose offsets are below it (all or none), overwrite the others (on a
        program's first tile, so that ``dtw`` needs no zero fill)."""
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
        tl.store(dt + oa, tl.load(dt + oa, mask=oa < acc, other=0.0) + tl.sum(g0 * u0, axis=0))
        tl.store(dt + ob, tl.load(dt + ob, mask=ob < acc, other=0.0) + tl.sum(g0 * u1, axis=0))
        tl.store(dt + oc, tl.load(dt + oc, mask=oc < acc, other=0.0) + tl.sum(g1 * u0, axis=0))
        tl.store(dt + od, tl.load(dt + od, mask=od < acc, other=0.0) + tl.sum(g1 * u1, axis=0))
        return _merge_pairs(a * g0 + c * g1, bb * g0 + d * g1, BLOCK_B, N, S)

    @triton.jit
    def _load_tile(ptr, rows, cols, batch, ncols, ld, COMPUTE: tl.constexpr):
        mask = (rows[:, None] < batch) & (cols[None, :] < ncols)
        return tl.load(ptr + rows[:, None] * ld + cols[None, :], mask=mask, other=0.0).to(COMPUTE)

    @triton.jit(do_not_specialize=["batch", "stack_out_stride"])  # one compilation for every batch size
    def _forward_kernel(x_ptr, tw_ptr, bias_ptr, out_ptr, batch, in_size, out_cols, ld_x, ld_out,
                        stack_out_stride, N: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr,
                        INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr,
                        HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr):
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
        if HAS_BIAS:
            x += tl.load(bias_ptr + o_cols, mask=o_cols < out_cols, other=0.0).to(COMPUTE)[None, :]
        mask = (rows[:, None] < batch) & (o_cols[None, :] < out_cols)
        tl.store(out_ptr + k * stack_out_stride * TRANSPOSE + rows[:, None] * ld_out + o_cols[None, :],
                 x.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_pair(g, acts, local, x_ptr, rows, in_cols, batch, in_size, ld_x, tw_k, dtw, acc, j0: tl.constexpr,
                       LOG_N: tl.constexpr, NBLOCKS: tl.constexpr, INCREASING: tl.constexpr,
                       TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr, N: tl.constexpr, COMPUTE: tl.constexpr):
        """Backward through factors j0 + 1 and j0 (j0 even; see :func:`_backward_kernel`): factor j0's input is
        read (from ``acts``, or the input tile when j0 = 0) and factor j0 + 1's recomputed from it."""
        if j0 == 0:
            u0 = _load_tile(x_ptr, rows, in_cols, batch, in_size, ld_x, COMPUTE)
        else:
            u0 = tl.load(acts + (j0 // 2 - 1) * (BLOCK_B * N) + local)
        u1 = _forward_step(u0, tw_k, j0, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N, COMPUTE)
        g = _backward_step(g, u1, tw_k, dtw, acc, j0 + 1, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N, COMPUTE)
        return _backward_step(g, u0, tw_k, dtw, acc, j0, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N, COMPUTE)

    @triton.jit(do_not_specialize=["batch", "stack_gx_stride", "n_tiles"])  # one compilation for every batch size
    def _backward_kernel(x_ptr, tw_ptr, g_ptr, gx_ptr, dtw_ptr, acts_ptr, batch, in_size, out_cols, ld_x, ld_g,
                         stack_gx_stride, n_tiles, N: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr,
                         INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr,
                         COMPUTE: tl.constexpr, SLOTS: tl.constexpr):
        """Backward of the unrolled forward. The program walks tiles ``pid, pid + nprog, ...``: it recomputes a
        tile's activations and adds the tile's twiddle gradient to its own slice of ``dtw`` (summed over programs
        afterwards: deterministic).

        Only the inputs of the even factors 2, 4, ... are kept, in the program's slot of ``acts`` (``SLOTS`` =
        ``max(F // 2 - 1, 0)`` tiles: factor 0's input is the input tile, read again, and with F odd the last
        factor's input stays in registers): going down, the input of an odd factor j is
        recomputed from factor j - 1's in registers, which costs F / 2 factor applications and halves the
        scratch. Every element of ``acts`` and ``dtw`` is written and read back through the same pointer layout,
        hence by the same thread: no barrier is needed."""
        pid = tl.program_id(0)
        k = tl.program_id(1)
        nprog = tl.num_programs(0)
        F: tl.constexpr = NBLOCKS * LOG_N
        TILE: tl.constexpr = BLOCK_B * N
        cols = tl.arange(0, N)
        local = tl.arange(0, BLOCK_B)[:, None] * N + cols[None, :]
        acts = acts_ptr + (k * nprog + pid) * (SLOTS * TILE)  # slot i: the input of factor 2 (i + 1)
        in_cols = cols + k * N * TRANSPOSE
        g_cols = cols + k * N * (1 - TRANSPOSE)
        tw_k = tw_ptr + k * (F * N * 2)
        dtw = dtw_ptr + (pid * tl.num_programs(1) + k) * (F * N * 2)
        for tile_id in range(pid, n_tiles, nprog):
            acc = tl.where(tile_id == pid, 0, 1 << 30)  # the program's first tile overwrites its slice of dtw
            rows = tile_id * BLOCK_B + tl.arange(0, BLOCK_B)
            x = _load_tile(x_ptr, rows, in_cols, batch, in_size, ld_x, COMPUTE)
            # the inputs of factors 1 .. F-1 (F odd: x ends as the last factor's input) or 1 .. F-2 (F even: factor
            # F-1's input is recomputed by the last pair)
            for j in tl.static_range(F - 2 + F % 2):
                x = _forward_step(x, tw_k, j, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N, COMPUTE)
                if j % 2 == 1 and j + 1 < F - F % 2:
                    tl.store(acts + (j // 2) * TILE + local, x)
            g = _load_tile(g_ptr, rows, g_cols, batch, out_cols, ld_g, COMPUTE)
            if F % 2 == 1:  # the last factor has an even index: its input is x, still in registers
                g = _backward_step(g, x, tw_k, dtw, acc, F - 1, LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N,
                                   COMPUTE)
            for p in tl.static_range(F // 2):  # factors (j0 + 1, j0) from the top, j0 even
                g = _backward_pair(g, acts, local, x_ptr, rows, in_cols, batch, in_size, ld_x, tw_k, dtw, acc,
                                   2 * (F // 2 - 1 - p), LOG_N, NBLOCKS, INCREASING, TRANSPOSE, BLOCK_B, N, COMPUTE)
            # shared input (plain multiply): stack k writes its own slab (summed later); split input: own columns
            mask = (rows[:, None] < batch) & (in_cols[None, :] < in_size)
            tl.store(gx_ptr + k * stack_gx_stride * (1 - TRANSPOSE) + rows[:, None] * ld_x + in_cols[None, :],
                     g.to(gx_ptr.dtype.element_ty), mask=mask)

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
                    TRANSPOSE: tl.constexpr, COMPUTE: tl.constexpr):
        """Pairs ``start .. start + CHUNK`` of one factor (twiddle slice ``tw_f``, stride 2^log_s): their indices,
        the tile offsets of their first members in every row ``(BLOCK_B, CHUNK)``, and the applied entries
        a, b, c, d of their blocks, each ``(1, CHUNK)``."""
        pairs = start + tl.arange(0, CHUNK)
        off = tl.arange(0, BLOCK_B)[:, None] * N + _pair_offsets(pairs, log_s)[None, :]
        t = tw_f + 4 * pairs
        a = tl.load(t).to(COMPUTE)[None, :]
        b = tl.load(t + 1 + TRANSPOSE).to(COMPUTE)[None, :]
        c = tl.load(t + 2 - TRANSPOSE).to(COMPUTE)[None, :]
        d = tl.load(t + 3).to(COMPUTE)[None, :]
        return pairs, off, a, b, c, d

    @triton.jit
    def _loop_apply(src, dst, tw_f, log_s, N: tl.constexpr, BLOCK_B: tl.constexpr, CHUNK: tl.constexpr,
                    TRANSPOSE: tl.constexpr, COMPUTE: tl.constexpr):
        """Apply one factor (stride 2^log_s) to the (BLOCK_B, N) tile at ``src``, writing it at ``dst`` (may be
        ``src``: each element is read and written by the same thread), ``CHUNK`` pairs of every row at a time."""
        for start in range(0, N // 2, CHUNK):
            pairs, off, a, b, c, d = _loop_chunk(tw_f, start, log_s, N, BLOCK_B, CHUNK, TRANSPOSE, COMPUTE)
            u = tl.load(src + off)
            v = tl.load(src + off + (1 << log_s))
            tl.store(dst + off, a * u + b * v)
            tl.store(dst + off + (1 << log_s), c * u + d * v)

    @triton.jit
    def _loop_apply_backward(acts_j, grad, tw_f, dtw_f, acc, log_s, N: tl.constexpr, BLOCK_B: tl.constexpr,
                             CHUNK: tl.constexpr, TRANSPOSE: tl.constexpr, COMPUTE: tl.constexpr):
        """Backward through one factor: add the tile's twiddle gradient to ``dtw_f`` and replace the gradient
        tile at ``grad`` by the gradient w.r.t. the factor's input (whose values are at ``acts_j``)."""
        for start in range(0, N // 2, CHUNK):
            pairs, off, a, b, c, d = _loop_chunk(tw_f, start, log_s, N, BLOCK_B, CHUNK, TRANSPOSE, COMPUTE)
            u0 = tl.load(acts_j + off)
            u1 = tl.load(acts_j + off + (1 << log_s))
            g0 = tl.load(grad + off)
            g1 = tl.load(grad + off + (1 << log_s))
            dt = dtw_f + 4 * pairs
            keep = pairs < acc  # add to dtw_f, or overwrite it on the program's first tile
            da = tl.load(dt, mask=keep, other=0.0) + tl.sum(g0 * u0, axis=0)
            db = tl.load(dt + 1 + TRANSPOSE, mask=keep, other=0.0) + tl.sum(g0 * u1, axis=0)
            dc = tl.load(dt + 2 - TRANSPOSE, mask=keep, other=0.0) + tl.sum(g1 * u0, axis=0)
            dd = tl.load(dt + 3, mask=keep, other=0.0) + tl.sum(g1 * u1, axis=0)
            tl.debug_barrier()  # reduced values may be replicated over threads: every read before any write
            tl.store(dt, da)
            tl.store(dt + 1 + TRANSPOSE, db)
            tl.store(dt + 2 - TRANSPOSE, dc)
            tl.store(dt + 3, dd)
            tl.store(grad + off, a * g0 + c * g1)
            tl.store(grad + off + (1 << log_s), b * g0 + d * g1)

    @triton.jit(do_not_specialize=["batch", "stack_out_stride", "n_tiles"])  # one compilation for every batch size
    def _loop_forward_kernel(x_ptr, tw_ptr, bias_ptr, out_ptr, work_ptr, batch, in_size, out_cols, ld_x, ld_out,
                             stack_out_stride, n_tiles, N: tl.constexpr, LOG_N: tl.constexpr, NBLOCKS: tl.constexpr,
                             INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_B: tl.constexpr,
                             CHUNK: tl.constexpr, HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr):
        """Forward with a run-time loop over the factors (one short compilation per (N, BLOCK_B), however many
        factors, and registers bounded by ``CHUNK``).

        The tile lives in this program's slot of ``work`` (global memory, cached on chip); each factor updates it
        in place and a barrier publishes it to the other threads. The program walks tiles ``pid, pid + nprog, ...``
        so that ``work`` stays small."""
        pid = tl.program_id(0)
        k = tl.program_id(1)
        nprog = tl.num_programs(0)
        F: tl.constexpr = NBLOCKS * LOG_N
        cols = tl.arange(0, N)
        local_rows = tl.arange(0, BLOCK_B)
        work = work_ptr + (k * nprog + pid) * (BLOCK_B * N)
        tile = local_rows[:, None] * N + cols[None, :]
        tw_k = tw_ptr + k * (F * N * 2)
        in_cols = cols + k * N * TRANSPOSE
        o_cols = cols + k * N * (1 - TRANSPOSE)
        for tile_id in range(pid, n_tiles, nprog):
            rows = tile_id * BLOCK_B + local_rows
            tl.store(work + tile, _load_tile(x_ptr, rows, in_cols, batch, in_size, ld_x, COMPUTE))
            tl.debug_barrier()
            for j in range(F):
                raw, log_s = _factor_geometry(j, LOG_N, NBLOCKS, INCREASING, TRANSPOSE)
                _loop_apply(work, work, tw_k + raw * (N * 2), log_s, N, BLOCK_B, CHUNK, TRANSPOSE, COMPUTE)
                tl.debug_barrier()
            y = tl.load(work + tile)
            if HAS_BIAS:
                y += tl.load(bias_ptr + o_cols, mask=o_cols < out_cols, other=0.0).to(COMPUTE)[None, :]
            mask = (rows[:, None] < batch) & (o_cols[None, :] < out_cols)
            tl.store(out_ptr + k * stack_out_stride * TRANSPOSE + rows[:, None] * ld_out + o_cols[None, :],
                     y.to(out_ptr.dtype.element_ty), mask=mask)
            tl.debug_barrier()  # the next tile overwrites work

    @triton.jit(do_not_specialize=["batch", "stack_gx_stride", "n_tiles"])  # one compilation for every batch size
    def _loop_backward_kernel(x_ptr, tw_ptr, g_ptr, gx_ptr, dtw_ptr, acts_ptr, batch, in_size, out_cols, ld_x,
                              ld_g, stack_gx_stride, n_tiles, N: tl.constexpr, LOG_N: tl.constexpr,
                              NBLOCKS: tl.constexpr, INCREASING: tl.constexpr, TRANSPOSE: tl.constexpr,
                              BLOCK_B: tl.constexpr, CHUNK: tl.constexpr, COMPUTE: tl.constexpr):
        """Backward with run-time factor loops. The program's slot of ``acts`` holds ``(F + 1) // 2 + 2`` tiles:
        the inputs of the even factors 0, 2, ... (recomputed), a spare tile into which an odd factor's input is
        recomputed from the factor below when the walk down reaches it (F / 2 extra factor applications for half
        the scratch), and, last, the running gradient. Twiddle gradients are accumulated over the program's tiles
        in its own slice of ``dtw`` (summed over programs afterwards: deterministic)."""
        pid = tl.program_id(0)
        k = tl.program_id(1)
        nprog = tl.num_programs(0)
        F: tl.constexpr = NBLOCKS * LOG_N
        TILE: tl.constexpr = BLOCK_B * N
        EVEN: tl.constexpr = (F + 1) // 2  # tiles holding the inputs of the even factors
        cols = tl.arange(0, N)
        local_rows = tl.arange(0, BLOCK_B)
        acts = acts_ptr + (k * nprog + pid) * ((EVEN + 2) * TILE)
        spare = acts + EVEN * TILE
        grad = spare + TILE
        tile = local_rows[:, None] * N + cols[None, :]
        tw_k = tw_ptr + k * (F * N * 2)
        dtw = dtw_ptr + (pid * tl.num_programs(1) + k) * (F * N * 2)
        in_cols = cols + k * N * TRANSPOSE
        g_cols = cols + k * N * (1 - TRANSPOSE)
        for tile_id in range(pid, n_tiles, nprog):
            acc = tl.where(tile_id == pid, 0, 1 << 30)  # the program's first tile overwrites its slice of dtw
            rows = tile_id * BLOCK_B + local_rows
            tl.store(acts + tile, _load_tile(x_ptr, rows, in_cols, batch, in_size, ld_x, COMPUTE))
            tl.store(grad + tile, _load_tile(g_ptr, rows, g_cols, batch, out_cols, ld_g, COMPUTE))
            tl.debug_barrier()
            for j in range(0, F - 2, 2):  # the input of factor j + 2, through the spare tile
                raw, log_s = _factor_geometry(j, LOG_N, NBLOCKS, INCREASING, TRANSPOSE)
                _loop_apply(acts + (j // 2) * TILE, spare, tw_k + raw * (N * 2), log_s, N, BLOCK_B, CHUNK,
                            TRANSPOSE, COMPUTE)
                tl.debug_barrier()
                raw, log_s = _factor_geometry(j + 1, LOG_N, NBLOCKS, INCREASING, TRANSPOSE)
                _loop_apply(spare, acts + (j // 2 + 1) * TILE, tw_k + raw * (N * 2), log_s, N, BLOCK_B, CHUNK,
                            TRANSPOSE, COMPUTE)
                tl.debug_barrier()
            for jj in range(F):
                j = F - 1 - jj
                odd = j % 2
                if odd == 1:  # recompute this factor's input from the even factor below it
                    raw, log_s = _factor_geometry(j - 1, LOG_N, NBLOCKS, INCREASING, TRANSPOSE)
                    _loop_apply(acts + (j // 2) * TILE, spare, tw_k + raw * (N * 2), log_s, N, BLOCK_B, CHUNK,
                                TRANSPOSE, COMPUTE)
                    tl.debug_barrier()
                inputs = acts + ((j // 2) * (1 - odd) + EVEN * odd) * TILE  # the spare tile for odd j
                raw, log_s = _factor_geometry(j, LOG_N, NBLOCKS, INCREASING, TRANSPOSE)
                _loop_apply_backward(inputs, grad, tw_k + raw * (N * 2), dtw + raw * (N * 2), acc, log_s, N, BLOCK_B,
                                     CHUNK, TRANSPOSE, COMPUTE)
                tl.debug_barrier()
            gx = tl.load(grad + tile)
            mask = (rows[:, None] < batch) & (in_cols[None, :] < in_size)
            tl.store(gx_ptr + k * stack_gx_stride * (1 - TRANSPOSE) + rows[:, None] * ld_x + in_cols[None, :],
                     gx.to(gx_ptr.dtype.element_ty), mask=mask)
            tl.debug_barrier()  # the next tile overwrites acts

def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block_rows(n: int) -> int:
    """Rows per program: keep a tile of about 8K values."""
    return max(1, min(64, 8192 // max(n, 1)))


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
        return max(1, min(n_tiles, 4))  # the interpreter: a few programs, so that tile walking is exercised
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


def _constexprs(twiddle: torch.Tensor, increasing_stride: bool, transpose: bool, block_b: int, dtype: torch.dtype,
                **extra: int) -> dict:
    """The compile-time arguments every kernel takes (geometry, options, compute dtype), plus ``extra``. The dict
    is shared between calls (cached): callers copy it before adding to it."""
    return _constexprs_cached(tuple(twiddle.shape[1:3]), bool(increasing_stride), bool(transpose), block_b, dtype,
                              tuple(extra.items()))


@functools.lru_cache(maxsize=256)
def _constexprs_cached(geometry: tuple[int, int], increasing_stride: bool, transpose: bool, block_b: int,
                       dtype: torch.dtype, extra: tuple) -> dict:
    nblocks, log_n = geometry
    return dict(N=1 << log_n, LOG_N=log_n, NBLOCKS=nblocks, INCREASING=int(increasing_stride),
                TRANSPOSE=int(transpose), BLOCK_B=block_b, COMPUTE=_compute_dtype(dtype), **dict(extra))


def triton_forward(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool,
                   out_size: int, variant: str = "auto", bias: torch.Tensor | None = None) -> torch.Tensor:
    """Forward of the butterfly map (see :func:`twiddle.ops.butterfly_multiply`); ``x`` is ``(batch, m)``,
    ``bias`` ``(out_size,)`` or None (added in the kernel's final store unless ``transpose``).

    ``variant``: ``unrolled`` (every factor compiled in, the tile kept in registers) or ``loop`` (a run-time loop
    over the factors through an on-chip scratch tile); ``auto``: see :func:`choose_variant`."""
    nstacks, _, _, n = _shapes(twiddle)
    variant = choose_variant(n, variant)
    batch, m = x.shape
    tw = twiddle.contiguous()
    xc = x.contiguous()
    block_b = _block_rows(n)
    n_tiles = -(-max(batch, 1) // block_b)  # ceil; triton.cdiv costs microseconds on the host
    fuse_bias = bias is not None and not transpose
    if transpose:
        target = torch.empty(nstacks, batch, n, device=x.device, dtype=x.dtype)
        ld_out, cols = n, n
    else:
        target = torch.empty(batch, out_size, device=x.device, dtype=x.dtype)
        ld_out, cols = out_size, out_size
    meta = _constexprs(twiddle, increasing_stride, transpose, block_b, x.dtype, HAS_BIAS=int(fuse_bias))
    b = bias.contiguous() if fuse_bias else None
    if batch > 0 and variant == "unrolled":
        _launch(_forward_kernel, (n_tiles, nstacks), (xc, tw, b, target, batch, m, cols, m, ld_out, batch * n),
                meta)
    elif batch > 0:
        nprog = _programs(n_tiles, x.device, per_sm=4)
        work = torch.empty(nstacks * nprog * block_b * n, device=x.device, dtype=_wide(x.dtype))
        _launch(_loop_forward_kernel, (nprog, nstacks),
                (xc, tw, b, target, work, batch, m, cols, m, ld_out, batch * n, n_tiles),
                {**meta, "CHUNK": _chunk(n, block_b)})
    if transpose:
        y = (target[0] if nstacks == 1 else target.sum(0))[:, :out_size]
        return y if bias is None else y + bias
    return target


def triton_backward(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool,
                    transpose: bool, out_size: int, variant: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (twiddle, x) of ``sum(grad * forward(twiddle, x))``; ``variant`` as in :func:`triton_forward`."""
    nstacks, nblocks, log_n, n = _shapes(twiddle)
    variant = choose_variant(n, variant)
    batch, m = x.shape
    F = nblocks * log_n
    tw = twiddle.contiguous()
    xc = x.contiguous()
    g = grad.contiguous()
    if transpose and out_size < n:  # the kernel reads n columns of grad for every stack
        g = torch.nn.functional.pad(g, (0, n - out_size))
    block_b = _block_rows(n)
    n_tiles = -(-max(batch, 1) // block_b)  # ceil; triton.cdiv costs microseconds on the host
    wide = _wide(x.dtype)
    gx_slabs = torch.empty((1 if transpose else nstacks), batch, m, device=x.device, dtype=x.dtype)
    if batch == 0:
        return torch.zeros_like(twiddle), gx_slabs.sum(0)
    meta = _constexprs(twiddle, increasing_stride, transpose, block_b, x.dtype)
    nprog = _programs(n_tiles, x.device, per_sm=BACKWARD_PROGRAMS_PER_SM)
    # every program writes its whole slice (it has at least one tile): no zero fill
    partial = torch.empty(nprog, nstacks, *twiddle.shape[1:], device=x.device, dtype=wide)
    args = (xc, tw, g, gx_slabs, partial)
    sizes = (batch, m, g.shape[1], m, g.shape[1], batch * m, n_tiles)
    if variant == "unrolled":
        slots = max(F // 2 - 1, 0)  # see _backward_kernel
        acts = torch.empty(nstacks * nprog * max(slots, 1) * block_b * n, device=x.device, dtype=wide)
        _launch(_backward_kernel, (nprog, nstacks), (*args, acts, *sizes), {**meta, "SLOTS": slots})
    else:
        # the even factors' inputs, a spare tile and the gradient: see _loop_backward_kernel
        acts = torch.empty(nstacks * nprog * ((F + 1) // 2 + 2) * block_b * n, device=x.device, dtype=wide)
        _launch(_loop_backward_kernel, (nprog, nstacks), (*args, acts, *sizes), {**meta, "CHUNK": _chunk(n, block_b)})
    # skip the reductions over a single slab (a kernel launch each, which counts at small batches)
    gt = partial[0] if nprog == 1 else partial.sum(0)
    return gt.to(twiddle.dtype), gx_slabs[0] if gx_slabs.shape[0] == 1 else gx_slabs.sum(0)


if HAVE_TRITON:

    @torch.library.custom_op("twiddle::butterfly_multiply_triton", mutates_args=())
    def _triton_op(twiddle: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, increasing_stride: bool,
                   transpose: bool, out_size: int) -> torch.Tensor:
        return triton_forward(twiddle, x, increasing_stride, transpose, out_size, bias=bias)

    @_triton_op.register_fake
    def _(twiddle, x, bias, increasing_stride, transpose, out_size):
        return x.new_empty(x.shape[0], out_size)

    @torch.library.custom_op("twiddle::butterfly_multiply_triton_backward", mutates_args=())
    def _triton_backward_op(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool,
                            transpose: bool, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return triton_backward(twiddle, x, grad, increasing_stride, transpose, out_size)

    @_triton_backward_op.register_fake
    def _(twiddle, x, grad, increasing_stride, transpose, out_size):
        return torch.empty_like(twiddle), torch.empty_like(x)

    def _setup(ctx, inputs, output):
        twiddle, x, bias, increasing_stride, transpose, out_size = inputs
        ctx.save_for_backward(twiddle, x)
        ctx.flags = (increasing_stride, transpose, out_size)
        ctx.has_bias = bias is not None

    def _backward(ctx, grad):
        twiddle, x = ctx.saved_tensors
        gt, gx = _triton_backward_op(twiddle, x, grad, *ctx.flags)
        return gt, gx, grad.sum(0) if ctx.has_bias else None, None, None, None

    _triton_op.register_autograd(_backward, setup_context=_setup)

    class _TritonMultiply(torch.autograd.Function):
        """The eager path: the same computation as ``_triton_op`` for a fifth of its per-call overhead (a custom
        op costs about 25 us per differentiable call on the host, this about 6)."""

        @staticmethod
        def forward(ctx, twiddle, x, bias, increasing_stride, transpose, out_size):
            ctx.save_for_backward(twiddle, x)
            ctx.flags = (increasing_stride, transpose, out_size)
            ctx.has_bias = bias is not None
            return triton_forward(twiddle, x, increasing_stride, transpose, out_size, bias=bias)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            twiddle, x = ctx.saved_tensors
            gt, gx = triton_backward(twiddle, x, grad, *ctx.flags)
            return gt, gx, grad.sum(0) if ctx.has_bias else None, None, None, None


def triton_butterfly_multiply(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, *, out_size: int,
                              transpose: bool, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton path as one differentiable op; real ``twiddle``, 2-D ``x`` and ``bias`` (``(out_size,)`` or
    None) of one dtype. Under ``torch.compile`` it is the custom op ``twiddle::butterfly_multiply_triton``."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed")
    if torch.compiler.is_compiling():
        return _triton_op(twiddle, x, bias, increasing_stride, transpose, out_size)
    if torch.is_grad_enabled() and (twiddle.requires_grad or x.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _TritonMultiply.apply(twiddle, x, bias, increasing_stride, transpose, out_size)
    return triton_forward(twiddle, x, increasing_stride, transpose, out_size, bias=bias)  # nothing to differentiate
