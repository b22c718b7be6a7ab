"""A closed-form start for the two-butterfly model ``M ≈ B₂ P₂ B₁ P₁`` (``bpbp``) under frozen permutations.

Alternating projections with ``B₁`` kept unitary (every 2×2 block a unitary matrix), so that ``U = P₂ B₁ P₁`` is
unitary:

* ``B₂`` step: ``‖M − B₂ U‖_F = ‖M U* − B₂‖_F`` for a unitary ``U``, so the best ``B₂`` is the butterfly nearest
  to ``M U*`` — the hierarchical factorization of ``M U*`` (:mod:`twiddle.factorize.hierarchical`, closed form,
  exact when ``M U*`` is a butterfly).
* ``B₁`` step: the unitary ``W`` minimizing ``‖M − B₂ W‖_F`` is the polar factor of ``B₂* M`` (orthogonal
  Procrustes); ``B₁`` is the hierarchical factorization of ``P₂ᵀ W P₁ᵀ`` with each 2×2 block replaced by its own
  polar factor.

An exact fit with a unitary ``B₁`` is a fixed point (``M = B₂ U`` makes ``polar(B₂* M) = polar(B₂* B₂ U) = U``).
Nothing here is specific to a circulant: the steps use only the target and the two permutations.

Why: a random start of the gradient polish (L-BFGS, then Gauss–Newton) under the right permutation pair ends in a
local minimum more often as n grows (convolution, both permutations the bit reversal: 2 of 6 random starts at
n = 64, both tried at n = 128 and 256). From 30 alternating steps the same polish reached RMSE < 1e-10 at n = 128
(3 of 3 starts) and n = 256 (2 of 2). The error also ranks permutation pairs after a few steps (convolution
n = 64, 12 steps: the 16 pairs that can be exact at 6e-3–1.2e-2, the other 48 at 8e-2–1e-1).
"""

from __future__ import annotations

import math
import time

import torch

from ..ops import butterfly_multiply
from .hierarchical import hierarchical_twiddle

__all__ = ["AlternatingFit"]


def _dense(twiddle: torch.Tensor) -> torch.Tensor:
    """The dense ``(n, n)`` matrix of one butterfly ``(L, n/2, 2, 2)`` (increasing stride)."""
    n = twiddle.shape[1] * 2
    eye = torch.eye(n, dtype=twiddle.dtype)
    return butterfly_multiply(twiddle[None, None], eye).T  # the op maps rows: eye @ Bᵀ


def _polar(a: torch.Tensor) -> torch.Tensor:
    """The unitary polar factor of (a batch of) square matrices: ``u vh`` of the SVD."""
    u, _, vh = torch.linalg.svd(a)
    return u @ vh


def _unitary_butterfly(target: torch.Tensor) -> torch.Tensor:
    """The hierarchical fit of ``target`` with every 2×2 block made unitary: twiddles ``(L, n/2, 2, 2)``."""
    return _polar(hierarchical_twiddle(target)[0, 0])


class AlternatingFit:
    """The alternating iteration for ``target ≈ B₂ P₂ B₁ P₁`` (``target``: ``(n, n)`` complex128; ``perms``:
    ``[p₁, p₂]``, index permutations in the gather convention, ``(P x)_i = x[p[i]]``).

    ``step()`` runs one ``B₂`` step and one ``B₁`` step; ``twiddles`` are ``[B₁, B₂]`` (the order they act, as
    :func:`twiddle.factorize.gradient._model_trials` takes them) from the last ``B₂`` step and the ``B₁`` it used,
    and ``mse`` is their mean squared error against ``target``.
    """

    def __init__(self, target: torch.Tensor, perms: list[torch.Tensor], generator: torch.Generator) -> None:
        from .gradient import _haar_unitary  # gradient imports this module

        self.target = target.to(torch.complex128)
        self.p1, self.p2 = perms
        self.inv1, self.inv2 = torch.argsort(self.p1), torch.argsort(self.p2)
        n = self.target.shape[0]
        L = n.bit_length() - 1
        self.twiddle1 = _haar_unitary((L, n // 2, 2, 2), generator)
        self.twiddles: list[torch.Tensor] = []
        self.mse = math.inf
        self.history: list[float] = []

    def step(self) -> float:
        b1 = self.twiddle1
        # U = P₂ B₁ P₁: rows gathered by p₂, columns scattered by p₁ ((A P)[:, p[i]] = A[:, i])
        u = _dense(b1)[self.p2][:, self.inv1]
        x = self.target @ u.mH
        b2 = hierarchical_twiddle(x)[0, 0]
        dense_b2 = _dense(b2)
        n = x.shape[0]
        self.mse = float((x - dense_b2).abs().pow(2).sum()) / n**2  # = ‖M − B₂ U‖² / n², U unitary
        self.twiddles = [b1, b2]
        self.history.append(self.mse)
        w = _polar(dense_b2.mH @ self.target)
        # B₁ ≈ P₂ᵀ W P₁ᵀ: (P₂ᵀ A) = A[inv₂], (A P₁ᵀ) = A[:, p₁]
        self.twiddle1 = _unitary_butterfly(w[self.inv2][:, self.p1])
        return self.mse

    def run(self, steps: int, deadline: float = math.inf) -> float:
        """Up to ``steps`` more steps (fewer at ``deadline``, a ``time.perf_counter()`` time); the MSE."""
        for _ in range(steps):
            if time.perf_counter() > deadline and self.twiddles:
                break
            self.step()
        return self.mse
