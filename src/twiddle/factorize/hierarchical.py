"""Hierarchical butterfly factorization in closed form (Zheng, Riccietti, Gribonval 2022; Le et al. 2024).

Write a butterfly as ``B = X_0 X_1 ... X_{L-1}`` (``X_{L-1}`` applied first, stride 1; ``X_0`` last, stride n/2).
The product of consecutive factors ``X_s ... X_e`` has support ``I_a ⊗ 1_{m×m} ⊗ I_d`` with ``a = 2^s``,
``m = 2^(e-s+1)``, ``d = n / 2^(e+1)``; it is stored as ``T[a, d, m, m]`` (entry ``(ia, r, id), (ia, c, id)`` at
``T[ia, id, r, c]``).

Splitting it into ``X_s..X_i`` (``m1 = 2^(i-s+1)``) and ``X_{i+1}..X_e`` (``m2 = m / m1``) is exact-optimal block
by block: with rows ``(r1, r2)`` and columns ``(c1, c2)``,
``T[ia, id, (r1, r2), (c1, c2)] = Lt[ia, (r2, id), r1, c1] · Rt[(ia, c1), id, r2, c2]``, so for each
``(ia, c1, r2, id)`` the ``m1 × m2`` matrix over ``(r1, c2)`` must be rank one. The leading singular triplets of
the blocks, one batched computation per split, give the best rank-one approximations (blocks with two columns or
two rows — every split of the right and left orders — in closed form, from their 2 × 2 Gram matrices; larger ones,
the balanced order's, by repeated squaring of their Gram matrices, with no LAPACK call); the left factor takes
``u``, the right ``σ v`` (or the reverse).

Orthonormalization (Le et al. 2024): the part that is final — a single factor — keeps the unit singular vector
and the singular value moves to the part still to be split, so the norms are pushed inward and the error of the
whole factorization stays within a constant of the best possible.

Orders: ``"balanced"`` splits every node in the middle (log2 L levels of splits); ``"left"`` peels one factor at a
time from the left (``X_0`` first), ``"right"`` from the right.
"""

from __future__ import annotations

import torch

from .result import PermutedButterfly

__all__ = ["ORDERS", "butterfly_fit_error", "hierarchical_twiddle", "split_node"]

ORDERS = ("balanced", "left", "right")


def _leading_eigenpair(g00: torch.Tensor, g11: torch.Tensor, g01: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, σ)``: the unit leading eigenvector ``(x, y)`` of every Hermitian 2 × 2 matrix
    ``G = [[g00, g01], [conj g01, g11]]`` (``g00``, ``g11`` real, ``g01`` of the blocks' dtype; all of one shape)
    and ``σ = √λ`` of its leading eigenvalue ``λ``, in closed form (``G`` a Gram matrix: ``σ`` the leading singular
    value of the matrix it is the Gram of).

    With ``h = (g00 − g11) / 2`` and ``r = √(h² + |g01|²)`` (so ``λ = (g00 + g11) / 2 + r``), ``(x, y) ∝ (h + r,
    conj g01)`` when ``h ≥ 0``, else ``(g01, r − h)``, the form whose leading entry has no cancellation. The
    eigenvector's error is that of the SVD's (``ε / (1 − σ₂² / σ₁²)``) and exact for rank-one blocks. Where
    ``G = 0`` the vector is ``(1, 0)`` and ``σ = 0``."""
    dtype = g01.dtype
    h = (g00 - g11) / 2
    r = torch.hypot(h, g01.abs())
    upper = h >= 0
    lead = torch.where(upper, h + r, r - h).to(dtype)  # λ − g11 or λ − g00: at least r
    x = torch.where(upper, lead, g01)
    y = torch.where(upper, g01.conj(), lead)
    norm = torch.hypot(x.abs(), y.abs())
    zero = norm == 0
    scale = torch.where(zero, 1.0, norm).to(dtype)
    sigma = ((g00 + g11) / 2 + r).sqrt()  # √λ: a sum of non-negative terms, no cancellation
    return torch.where(zero, 1.0, x / scale), torch.where(zero, 0.0, y / scale), sigma


def _two_column_triplet(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(u, σ, vᴴ)`` of the largest singular value of every matrix in ``blocks`` (..., p, 2), in closed form:
    ``v`` the leading eigenvector of the 2 × 2 Gram matrix ``BᴴB`` (:func:`_leading_eigenpair`), ``u = B v / σ``.
    One pass over the blocks replaces a LAPACK call per block. Where ``σ = 0`` (``B = 0``), ``u`` and ``v`` are 0,
    as the Gram fallback of :func:`_leading_triplet` gives. (The splits of the right and left orders, the blocks
    of a node with two columns or two rows, do not come here: :func:`_split_off_one_factor` reads them in place.)"""
    blocks = blocks.contiguous()  # one copy: the two products below then read it at full speed
    gram = blocks.mH @ blocks  # (..., 2, 2)
    x, y, sigma = _leading_eigenpair(gram[..., 0, 0].real, gram[..., 1, 1].real, gram[..., 0, 1])
    v = torch.stack([x, y], dim=-1)
    w = (blocks @ v.unsqueeze(-1)).squeeze(-1)  # B v = σ u
    nonzero = (sigma > 0).unsqueeze(-1)
    u = w / torch.where(nonzero, sigma.unsqueeze(-1), 1.0).to(w.dtype)
    return u, sigma, torch.where(nonzero, v.conj(), 0.0)  # a zero block: u = v = 0


_SQUARINGS = 10  # at most: the Gram raised to the power 2^10 (see _leading_right_vectors)
# 1 − ‖S‖²_F below this (S the trace-normalized power, in single precision, where it rounds at about 1e-7): the
# blocks are numerically rank one; one more squaring, then stop
_RANK_ONE = 1e-5
_POWER_STEPS = 3  # on the blocks themselves, in their own precision, after the squarings


def _leading_right_vectors(blocks: torch.Tensor) -> torch.Tensor:
    """A unit leading right singular vector ``v`` (..., q) of every matrix in ``blocks`` (..., p, q), up to a
    phase, without LAPACK. The Gram matrix ``G = BᴴB`` (each block scaled by its largest entry first, so that no
    Gram under- or overflows) is squared repeatedly in single precision, ``S ← S² / tr S²`` from ``S = G / tr G``,
    so that ``S ∝ G^(2^k) = Σ λᵢ^(2^k) vᵢ vᵢᴴ`` tends to ``v₁ v₁ᴴ``; ``v`` starts as the column of ``S`` with the
    largest diagonal entry, and three power steps on ``B`` itself, in its own precision (``u = B v / |B v|``,
    ``v = Bᴴ u / |Bᴴ u|``), take single precision's rounding out.

    The squarings stop once every ``S`` is numerically rank one (``1 − ‖S‖²_F = Σᵢ≠ⱼ μᵢ μⱼ`` over ``S``'s
    eigenvalues ``μ`` below ``1e-5``, then one more squaring) — at once for the rank-one blocks of an exact
    butterfly — or after 10 (``G^1024``). Where the two leading eigenvalues are close (``λ₂ = (1 − δ) λ₁``), the
    angle ``θ`` left to ``v₁`` (``tan θ`` that of the start times ``(1 − δ)^1027``) costs the rank-one fit
    ``(λ₁ − λ₂) sin²θ ≈ δ e^(−2054 δ) tan²θ₀ λ₁``, whose peak (``δ ≈ 1/2054``) is ``1.8e-4 tan²θ₀ λ₁`` against a
    residual of at least ``√λ₂``: measured over a sweep of gaps and blocks of 4-32 columns, at most a relative
    ``2.4e-4`` of the best residual (single precision's rounding of ``θ`` adds a relative ``ε₃₂² / δ``, below
    ``1e-7``); for every other block ``v`` is the SVD's to rounding. Batched products of the
    small q × q Gram matrices replace LAPACK's batched SVD, which is 5-10x slower (1024 blocks of 32 × 32, float64,
    2 cores: ``torch.linalg.svd`` 265 ms, ``eigh`` of the Grams 155 ms, this 30 ms) and fails to converge on rare
    blocks (``gesdd``: a complex 32 × 32 block of a shuffled butterfly at n = 1024, balanced order)."""
    batch, (p, q) = blocks.shape[:-2], blocks.shape[-2:]
    blocks = blocks.reshape(-1, p, q)  # one batch dimension: batched products over several run at half speed
    tiny = torch.finfo(blocks.real.dtype if blocks.is_complex() else blocks.dtype).tiny
    scaled = blocks / blocks.abs().flatten(-2).amax(-1).clamp_min(tiny)[..., None, None]
    gram = scaled.mH @ scaled
    S = (gram / _trace(gram).clamp_min(tiny)[..., None, None]).to(_single(blocks.dtype))
    single_tiny = torch.finfo(torch.float32).tiny
    nonzero = _trace(S) > 0.5  # a zero block's S is 0: left out of the test below
    for _ in range(_SQUARINGS):
        S = S @ S
        power = _trace(S)  # ‖S‖²_F of the S squared (Hermitian, trace 1)
        rank_one = bool((1 - power[nonzero] <= _RANK_ONE).all())
        S = S / power.clamp_min(single_tiny)[..., None, None]
        if rank_one:  # this last squaring took μ₂ / μ₁ from below about 1e-5 to about 1e-10
            break
    column = S.diagonal(dim1=-2, dim2=-1).real.argmax(-1)
    v = torch.take_along_dim(S, column[..., None, None], dim=-1).to(blocks.dtype)  # (..., q, 1)
    for _ in range(_POWER_STEPS):
        u = scaled @ (v / v.norm(dim=-2, keepdim=True).clamp_min(tiny))
        v = scaled.mH @ (u / u.norm(dim=-2, keepdim=True).clamp_min(tiny))
    return (v / v.norm(dim=-2, keepdim=True).clamp_min(tiny)).reshape(*batch, q)


def _single(dtype: torch.dtype) -> torch.dtype:
    """float32 for a real ``dtype``, complex64 for a complex one."""
    return torch.complex64 if dtype.is_complex else torch.float32


def _trace(matrices: torch.Tensor) -> torch.Tensor:
    """The real part of the trace of every matrix in ``matrices`` (..., q, q): (...)."""
    return matrices.diagonal(dim1=-2, dim2=-1).real.sum(-1)


def _leading_triplet(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(u, σ, vᴴ)`` of the largest singular value of every matrix in ``blocks`` (..., p, q): ``u`` (..., p), ``σ``
    (...), the row ``vᴴ`` (..., q).

    Blocks with two columns (or two rows, through ``Bᴴ``) take the closed form of :func:`_two_column_triplet`;
    larger ones the Gram squarings of :func:`_leading_right_vectors` on their smaller side (``Bᴴ`` when
    ``p < q``), then ``σ = |B v|`` and ``u = B v / σ``: the SVD's triplet, up to a phase, to rounding — within a
    relative ``3e-4`` of the best rank-one residual where the leading pair is nearly tied (where no rank-one split
    is exact anyway) — with no LAPACK call. A zero block gives ``u = v = 0`` and ``σ = 0``."""
    p, q = blocks.shape[-2:]
    if q == 2:
        return _two_column_triplet(blocks)
    if p == 2 or p < q:
        v, sigma, uh = _leading_triplet(blocks.mH)
        return uh.conj(), sigma, v.conj()
    v = _leading_right_vectors(blocks)
    w = (blocks @ v.unsqueeze(-1)).squeeze(-1)  # B v = σ u
    sigma = w.norm(dim=-1)
    nonzero = (sigma > 0).unsqueeze(-1)
    u = w / torch.where(nonzero, sigma.unsqueeze(-1), 1.0).to(w.dtype)
    return u, sigma, torch.where(nonzero, v.conj(), 0.0)


def split_node(T: torch.Tensor, m1: int, sigma_to: str, columns: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a node ``T (a, d, m, m)`` into ``left (a, m2 d, m1, m1)`` and ``right (a m1, d, m2, m2)``.

    ``sigma_to`` ("left" or "right") says which side receives the singular values. A split that takes off one
    factor (``m2 = 2`` or ``m1 = 2``: every split of the right and left orders) reads ``T`` in place
    (:func:`_split_off_one_factor`); the others gather the ``m1 × m2`` blocks and take their leading triplets.
    ``columns``: split the root ``T[..., columns]`` (``a = d = 1``) instead.
    """
    a, d, m, _ = T.shape
    m2 = m // m1
    if m2 == 2 or m1 == 2:
        return _split_off_one_factor(T, m1, sigma_to, columns)
    if columns is not None:
        T = T[..., columns]
    # axes (ia, id, r1, r2, c1, c2) -> (ia, c1, r2, id, r1, c2): a batch of m1 x m2 rank-one blocks
    blocks = T.reshape(a, d, m1, m2, m1, m2).permute(0, 4, 3, 1, 2, 5)
    u1, s1, v1 = _leading_triplet(blocks)  # (a, c1, r2, id, m1), (a, c1, r2, id), (..., m2)
    if sigma_to == "left":
        u1 = u1 * s1.unsqueeze(-1)
    else:
        v1 = v1 * s1.unsqueeze(-1)
    # left[ia, (r2, id), r1, c1] = u1[ia, c1, r2, id, r1]
    left = u1.permute(0, 2, 3, 4, 1).reshape(a, m2 * d, m1, m1)
    # right[(ia, c1), id, r2, c2] = v1[ia, c1, r2, id, c2]
    right = v1.permute(0, 1, 3, 2, 4).reshape(a * m1, d, m2, m2)
    return left, right


# bytes of a node that one step of _split_off_one_factor reads: its temporaries then stay in the caches (one pass
# over a 64 MB node, complex128 n = 2048, took 44 ms for a Gram entry; in 2 MB steps 12 ms)
_STEP_BYTES = 2 << 20


def _split_off_one_factor(T: torch.Tensor, m1: int, sigma_to: str, columns: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`split_node` where one side is a single factor (``m2 = 2``: blocks ``m1 × 2``; or ``m1 = 2``: blocks
    ``2 × m2``), without gathering the blocks.

    Viewed as ``X (ia, id, r1, r2, c1, c2)``, ``T`` holds block ``(ia, c1, r2, id)`` at ``X[ia, id, :, r2, c1, :]``.
    Its 2 × 2 Gram matrix is made of inner products of its two columns (``m2 = 2``, summed over ``r1``) or rows
    (``m1 = 2``, over ``c2``), reductions of ``T`` where it lies; :func:`_leading_eigenpair` gives each block's
    leading vector ``e`` on its two-long side and ``σ``; the long side, ``B e = σ u`` (``m2 = 2``) or
    ``eᴴ B = σ vᴴ`` (``m1 = 2``), is the two columns (rows) scaled and added, written straight into ``left``'s
    (``right``'s) layout. Both passes go over ``T`` in steps of about ``_STEP_BYTES``. This is the triplet of
    :func:`_two_column_triplet` (the same split to rounding) without its traffic: the gathered copy of ``T``, the
    batched products of tiny blocks, the permuted copy of the result (complex128, n = 2048, 2 cores, medians: the
    first split of the right order 183-195 -> 57-71 ms, the whole right-order factorization 250-289 -> 83-106 ms;
    float64 97-101 -> 34-42 ms).

    ``columns``: for the root (``a = d = 1``), split ``T[..., columns]`` instead, each step's rows gathered as they
    are read (a search fits the same matrix under hundreds of column orders: no permuted copy of it is made).

    A zero block gives zero vectors on both sides, as the general split does."""
    a, d, m, _ = T.shape
    m2 = m // m1
    rows = m1 if m2 == 2 else m2  # the axis 2 that the steps split: r1 (summed over) or r2
    step = max(1, _STEP_BYTES * rows // max(1, T.numel() * T.element_size()))
    spans = [slice(i, min(i + step, rows)) for i in range(0, rows, step)]
    read = _step_reader(T, m1, columns)
    if m2 == 2:  # G = BᴴB: Σ_r1 of the columns' products, (ia, id, r2, c1, c2) then (ia, id, r2, c1)
        lengths, g01 = 0, 0
        for i in spans:
            chunk = read(i)  # (ia, id, r1 in i, r2, c1, c2)
            lengths = lengths + torch.linalg.vecdot(chunk, chunk, dim=2).real
            g01 = g01 + torch.linalg.vecdot(chunk[..., 0], chunk[..., 1], dim=2)
        g00, g11 = lengths[..., 0], lengths[..., 1]
    else:  # G = BBᴴ: Σ_c2 of the rows' products, each step its own r2, (ia, id, r1, r2, c1) then (ia, id, r2, c1)
        parts = []
        for i in spans:
            chunk = read(i)  # (ia, id, r1, r2 in i, c1, c2)
            parts.append((torch.linalg.vecdot(chunk, chunk, dim=-1).real,
                          torch.linalg.vecdot(chunk[:, :, 1], chunk[:, :, 0], dim=-1)))
        lengths, g01 = torch.cat([p for p, _ in parts], 3), torch.cat([q for _, q in parts], 2)
        g00, g11 = lengths[:, :, 0], lengths[:, :, 1]
    x, y, sigma = _leading_eigenpair(g00, g11, g01)  # (ia, id, r2, c1) each
    nonzero = sigma > 0
    inverse = torch.where(nonzero, 1 / torch.where(nonzero, sigma, 1.0), 0.0).to(T.dtype)
    long_sigma = sigma_to == ("left" if m2 == 2 else "right")  # the long side keeps σ
    scale = torch.where(nonzero, 1.0 if long_sigma else sigma, 0.0).to(T.dtype)  # of the short side
    if m2 == 2:
        # left[ia, (r2, id), r1, c1] = (B v)[r1] of block (ia, c1, r2, id), through a view with axes (ia, id, r1,
        # r2, c1); right[(ia, c1), id, r2, c2] = vᴴ[c2] (times σ where σ goes right)
        out = T.new_empty(a, m2, d, m1, m1)
        view = out.permute(0, 2, 3, 1, 4)
        coefficients = [x.unsqueeze(2), y.unsqueeze(2), None if long_sigma else inverse.unsqueeze(2)]
        for i in spans:
            chunk = read(i)
            _combine(view[:, :, i], chunk[..., 0], chunk[..., 1], *coefficients)
        short = torch.stack([x.conj() * scale, y.conj() * scale], dim=-1)  # (ia, id, r2, c1, c2)
        return out.reshape(a, m2 * d, m1, m1), short.permute(0, 3, 1, 2, 4).reshape(a * m1, d, m2, m2)
    # right[(ia, c1), id, r2, c2] = (uᴴ B)[c2] = σ vᴴ of block (ia, c1, r2, id), through a view with axes (ia, id,
    # r2, c1, c2); left[ia, (r2, id), r1, c1] = u[r1] (times σ where σ goes left)
    out = T.new_empty(a, m1, d, m2, m2)
    view = out.permute(0, 2, 3, 1, 4)
    coefficients = [x.conj().unsqueeze(-1), y.conj().unsqueeze(-1), None if long_sigma else inverse.unsqueeze(-1)]
    for i in spans:
        chunk = read(i)
        _combine(view[:, :, i], chunk[:, :, 0], chunk[:, :, 1], *(c if c is None else c[:, :, i] for c in coefficients))
    short = torch.stack([x * scale, y * scale], dim=-1)  # (ia, id, r2, c1, r1)
    return short.permute(0, 2, 1, 4, 3).reshape(a, m2 * d, m1, m1), out.reshape(a * m1, d, m2, m2)


def _step_reader(T: torch.Tensor, m1: int, columns: torch.Tensor | None):
    """For :func:`_split_off_one_factor`: a function of a slice ``i`` that gives ``X[:, :, i]`` (``m2 = 2``) or
    ``X[:, :, :, i]`` (``m1 = 2``) of ``T (a, d, m, m)`` viewed as ``X (ia, id, r1, r2, c1, c2)``, its columns
    in the order ``columns`` where given (then ``a = d = 1``)."""
    a, d, m, _ = T.shape
    m2 = m // m1
    if columns is None:
        X = T.reshape(a, d, m1, m2, m1, m2)
        return (lambda i: X[:, :, i]) if m2 == 2 else (lambda i: X[:, :, :, i])
    if (a, d) != (1, 1):
        raise ValueError("columns is for the root node only")
    M = T[0, 0]
    if m2 == 2:  # rows 2 r1 + r2 for r1 in i: a block of whole rows
        return lambda i: M[2 * i.start: 2 * i.stop][:, columns].reshape(1, 1, -1, 2, m1, 2)
    # rows r1 m2 + r2 for r2 in i, r1 = 0, 1: two blocks of whole rows
    return lambda i: torch.stack([M[i], M[m2 + i.start: m2 + i.stop]])[:, :, columns].reshape(1, 1, 2, -1, 2, m2)


def _combine(out: torch.Tensor, first: torch.Tensor, second: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
             scale: torch.Tensor | None) -> None:
    """``out = (first · p + second · q) · scale`` in place (broadcasting; no scale where None)."""
    torch.mul(first, p, out=out)
    out.addcmul_(second, q)
    if scale is not None:
        out.mul_(scale)


def hierarchical_twiddle(target: torch.Tensor, order: str = "balanced", *, columns: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Butterfly factors of ``target`` (n × n, n a power of two) as a twiddle ``(1, 1, log2 n, n/2, 2, 2)``.

    The twiddle is in twiddle's layout for ``increasing_stride=True`` (factor ``f`` applied f-th, stride ``2^f``),
    so ``Butterfly(n, n, bias=False, init=twiddle).to_dense() ≈ target``.

    ``columns`` (a permutation of ``0..n-1``): factor ``target[:, columns]``, the same twiddle, without making that
    copy in the right and left orders (their first split reads the columns in that order as it goes).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    n = target.shape[-1]
    L = n.bit_length() - 1
    if L == 0:
        raise ValueError("n = 1 has no butterfly factors")
    leaves: dict[int, torch.Tensor] = {}

    # stack of nodes (s, e, T); T holds the product X_s..X_e
    def choose_split(s: int, e: int) -> int:
        if order == "balanced":
            return (s + e) // 2
        return s if order == "left" else e - 1

    if columns is not None and (order == "balanced" or L == 1):
        target, columns = target[:, columns], None
    nodes = [(0, L - 1, target.reshape(1, 1, n, n))]
    while nodes:
        s, e, T = nodes.pop()
        if s == e:
            leaves[s] = T
            continue
        i = choose_split(s, e)
        # the singular values go to the side that will be split further (left side if both or neither)
        left_final, right_final = i == s, i + 1 == e
        sigma_to = "right" if left_final and not right_final else "left"
        left, right = split_node(T, 2 ** (i - s + 1), sigma_to, columns if s == 0 and e == L - 1 else None)
        nodes.append((s, i, left))
        nodes.append((i + 1, e, right))
    # X_l: T[a = 2^l, d = n / 2^(l+1), 2, 2] acts with stride d on p = ia 2d + id, block index ia d + id;
    # applied as factor f = L - 1 - l (stride 2^f = d).
    factors = [leaves[L - 1 - f].reshape(n // 2, 2, 2) for f in range(L)]
    return torch.stack(factors).unsqueeze(0).unsqueeze(0)


def butterfly_fit_error(target: torch.Tensor, order: str = "right") -> float:
    """``‖B − target‖_F / ‖target‖_F`` for the closed-form butterfly ``B`` of ``target`` (n × n, n a power of two;
    :func:`hierarchical_twiddle` in ``order``): how far ``target`` is from a butterfly, as ``factorize`` measures
    its fits (0 for a zero ``target`` fitted exactly), by the same distance
    (:meth:`~twiddle.factorize.PermutedButterfly._distance`: ``B`` formed by the fast multiply a block of rows at a
    time, no ``n × n`` identity or product; the two-sided refinement calls this 50 times at n = 2048)."""
    n = target.shape[-1]
    with torch.no_grad():
        residual = PermutedButterfly(torch.arange(n), hierarchical_twiddle(target, order))._distance(target)
    scale = float(target.norm())
    return residual / scale if scale > 0 else residual
