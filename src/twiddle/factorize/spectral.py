"""Two butterflies in closed form for a matrix that a butterfly diagonalizes: ``M = V Λ V⁻¹`` with ``V = Q B P``.

A circulant (a convolution) is ``F⁻¹ Λ F`` with ``F`` the DFT, a butterfly under the bit reversal; a dyadic
convolution is the same with the Hadamard matrix; any such ``M`` is a product of two butterflies (the 2019 paper's
BPBP model, which it learns by gradient descent). Given only ``M``, the factors follow in closed form:

1. Eigendecomposition ``M = V Λ V⁻¹`` (``eigh`` for a Hermitian ``M``, ``eig`` otherwise). Where the eigenvalues are
   distinct, each column of ``V`` is the eigenvector up to a scale, and in an order of LAPACK's: ``V = Q B P D₀``
   with ``D₀`` diagonal. A scaled butterfly is a butterfly (``B P D₀ = (B D₀') P``), so the permutations read off
   ``V`` (:mod:`twiddle.factorize.recover`) and the hierarchical fit give ``V = Q B P`` exactly.
2. ``M = Q B (P Λ Pᵀ) B⁻¹ Qᵀ``; ``P Λ Pᵀ = D`` is diagonal and is absorbed into the first factor of ``B``.
3. ``B⁻¹`` is the product of the inverted factors in the reverse order: a butterfly of decreasing stride, which the
   bit reversal ``R`` turns into one of increasing stride, ``B⁻¹ = R B' R`` (factor ``f`` of ``B'`` is factor
   ``L − 1 − f`` of ``B`` inverted block by block, its pairs moved by ``R``). No second fit, no matrix inverse.

So ``M = Q (B D) R B' R Qᵀ``: two stages, each a permutation and an increasing-stride butterfly, then ``Q``. The
error is that of the eigenvectors (``ε ‖M‖ / gap`` for an eigenvalue gap ``gap``): 1.2e-14 relative (RMSE 4e-16)
for a random circulant at n = 1024. Repeated eigenvalues (a circulant of a symmetric filter, ``λ_k = λ_{n−k}``)
leave each eigenspace's basis to LAPACK, generally not the butterfly's: the fit of ``V`` then tells, and this
factorization is not exact (a circulant is Toeplitz, though: see below).

A Toeplitz matrix (a linear, not circular, convolution; any shape) is the top-left block of a circulant of size
``N ≥ rows + cols − 1`` (:func:`circulant_embedding`); its free entries, drawn at random, keep the eigenvalues
apart even for a symmetric filter. The spectral fit of that circulant, with the input zero-padded to ``N`` and the
first ``rows`` outputs kept, is the Toeplitz matrix exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from ..permutations import named_permutation

__all__ = ["eigendecomposition", "inverse_twiddle", "scale_columns", "is_toeplitz", "circulant_embedding"]


def eigendecomposition(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(λ, V)`` with ``M = V diag(λ) V⁻¹`` for a square ``m`` (float64 or complex128).

    A Hermitian (real symmetric) ``m`` takes ``eigh``: real ``λ``, unitary (real orthogonal) ``V``. Otherwise
    LAPACK's ``geev`` through numpy: complex ``λ`` and unit-norm columns of ``V``; a real ``m`` whose eigenvalues are
    all real keeps real ``V``."""
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"the eigendecomposition needs a square matrix, got shape {tuple(m.shape)}")
    m = m.detach().to("cpu")
    m = m.to(torch.complex128 if m.is_complex() else torch.float64)
    scale = float(m.abs().max())
    if bool(((m - m.mH).abs() <= 1e-14 * max(scale, 1e-300)).all()):
        values, vectors = torch.linalg.eigh(m)
        return values.to(m.dtype) if m.is_complex() else values, vectors
    values, vectors = np.linalg.eig(m.numpy())
    return torch.from_numpy(values), torch.from_numpy(np.ascontiguousarray(vectors))


def _pair_indices(n: int, factor: int) -> torch.Tensor:
    """``(n/2,)`` the first index ``p`` of each pair ``(p, p + 2^factor)`` in twiddle's block order (block ``j`` of a
    factor of stride ``d``: ``p = (j // d) 2d + j % d``)."""
    d = 1 << factor
    j = torch.arange(n // 2)
    return (j // d) * 2 * d + j % d


def inverse_twiddle(twiddle: torch.Tensor) -> torch.Tensor:
    """The twiddle ``(1, 1, L, n/2, 2, 2)`` of ``B'`` with ``B⁻¹ = R B' R`` (``R`` the bit reversal), for the
    increasing-stride butterfly ``B`` of ``twiddle``.

    ``B = X_{L−1} ⋯ X_0`` (``X_f`` of stride ``2^f``, applied f-th), so ``B⁻¹ = X_0⁻¹ ⋯ X_{L−1}⁻¹`` and
    ``R B⁻¹ R = (R X_0⁻¹ R) ⋯ (R X_{L−1}⁻¹ R)``: ``R`` sends the pair ``(p, p + 2^f)`` to ``(r(p), r(p) + 2^{L−1−f})``
    (bit ``f`` of ``p`` is 0, and reversing moves it to bit ``L − 1 − f``), so ``R X_f⁻¹ R`` is a factor of stride
    ``2^{L−1−f}`` holding the inverted 2 × 2 blocks of ``X_f``, and factor ``f'`` of ``B'`` is ``R X_{L−1−f'}⁻¹ R``.
    Blocks are inverted with ``torch.linalg.pinv`` (the inverse for an invertible butterfly; a singular block, of a
    singular ``B``, gets its pseudo-inverse rather than Inf)."""
    if twiddle.dim() != 6 or twiddle.shape[:2] != (1, 1) or twiddle.shape[-2:] != (2, 2):
        raise ValueError(f"twiddle must have shape (1, 1, L, n/2, 2, 2), got {tuple(twiddle.shape)}")
    levels, half = twiddle.shape[2], twiddle.shape[3]
    n = 2 * half
    if n != 1 << levels:
        raise ValueError(f"twiddle has {levels} factors of {half} blocks: not a butterfly of size 2^{levels}")
    rev = named_permutation("bitrev", n)  # an involution: R[i, rev[i]] = 1
    inverted = torch.linalg.pinv(twiddle[0, 0])  # (L, n/2, 2, 2)
    out = torch.empty_like(inverted)
    for f_new in range(levels):
        f_old = levels - 1 - f_new
        # block j_old of X_{f_old} acts on (p, p + 2^f_old); under R it acts on (rev p, rev p + 2^f_new), which is
        # block j_new of the new factor: p_new = (j_new // d) 2d + j_new % d  ->  j_new = (p_new // 2d) d + p_new % d
        p_new = rev[_pair_indices(n, f_old)]
        d = 1 << f_new
        j_new = (p_new // (2 * d)) * d + p_new % d
        out[f_new, j_new] = inverted[f_old]
    return out.unsqueeze(0).unsqueeze(0)


def scale_columns(twiddle: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The twiddle of ``B diag(scale)``: the first factor (stride 1, pairs ``(2j, 2j + 1)``) with its two columns
    multiplied by ``scale[2j]`` and ``scale[2j + 1]``. ``scale`` ``(n,)``; the result has their promoted dtype."""
    n = 2 * twiddle.shape[3]
    if scale.shape != (n,):
        raise ValueError(f"scale must have shape ({n},), got {tuple(scale.shape)}")
    dtype = torch.promote_types(twiddle.dtype, scale.dtype)
    out = twiddle.to(dtype).clone()
    out[0, 0, 0] = out[0, 0, 0] * scale.to(dtype).reshape(n // 2, 1, 2)
    return out


def is_toeplitz(m: torch.Tensor, tol: float = 1e-12) -> bool:
    """Whether every diagonal of ``m`` (rows × cols) is constant, to ``tol`` times its largest entry."""
    if m.dim() != 2:
        raise ValueError(f"m must be 2-D, got shape {tuple(m.shape)}")
    scale = float(m.abs().max()) if m.numel() else 0.0
    return bool(((m[1:, 1:] - m[:-1, :-1]).abs() <= tol * scale).all())


def circulant_embedding(m: torch.Tensor, size: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """The ``size × size`` circulant ``C`` (``C[i, j] = c[(i − j) mod size]``) whose top-left block is the Toeplitz
    matrix ``m`` (rows × cols; ``size ≥ rows + cols − 1`` so that its diagonals do not meet).

    ``c[d mod size]`` is ``m``'s diagonal ``d`` for ``d = −(cols − 1) … rows − 1``; the ``size − rows − cols + 1``
    entries left over are free, and are drawn at random (Gaussian, scaled to the root mean square of the given
    ones; complex for a complex ``m``): left at zero, a symmetric ``m`` would give a symmetric ``c`` and eigenvalues
    in equal pairs ``λ_k = λ_{size−k}``, which the spectral fit cannot separate."""
    if not is_toeplitz(m):
        raise ValueError("m must be a Toeplitz matrix (every diagonal constant) to be a block of a circulant")
    rows, cols = m.shape
    if size < rows + cols - 1:
        raise ValueError(f"a {rows} × {cols} Toeplitz matrix needs a circulant of size >= {rows + cols - 1}, got "
                         f"{size}")
    c = m.new_zeros(size)
    c[:rows] = m[:, 0]  # diagonals d = 0 … rows − 1
    if cols > 1:
        c[size - cols + 1:] = m[0, 1:].flip(0)  # d = −j at size − j, j = 1 … cols − 1
    free = size - rows - cols + 1
    if free > 0:
        given = torch.cat([m[:, 0], m[0, 1:]])
        scale = float(given.abs().pow(2).mean().sqrt()) or 1.0
        noise = torch.randn(free, generator=generator, dtype=m.real.dtype)
        if m.is_complex():
            noise = torch.complex(noise, torch.randn(free, generator=generator, dtype=m.real.dtype)) / 2 ** 0.5
        c[rows:rows + free] = scale * noise
    index = (torch.arange(size).unsqueeze(1) - torch.arange(size).unsqueeze(0)) % size
    return c[index]
