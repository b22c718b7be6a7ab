"""Complex lifts of a real matrix: complex ``M̃`` with ``Re M̃ = M`` that may be a butterfly times a permutation
when ``M`` itself is not.

The 2019 paper fits real targets by the real part of a complex model. In closed form that means choosing the
imaginary part. The DCT-II shows which choice works: with ``θ_kj = π k (2j + 1) / 2n``,
``DCT[k, j] = cos θ_kj`` is the real part of ``exp(-i θ_kj)`` on even columns and of ``exp(+i θ_kj)`` on odd
columns, and that matrix is ``diag(exp(-iπk/2n)) · DFT_n · Q`` (Makhoul's algorithm) — an exact complex butterfly
times two BP permutations. So a lift is built row by row:

1. extend the row ``r`` (length n) to length 2n, half-sample symmetric (``[r, flip(r)]``, the DCT's natural
   extension) or antisymmetric (``[r, -flip(r)]``, the DST's);
2. take its analytic signal (keep the positive frequencies of its length-2n DFT, doubled; DC and Nyquist as they
   are) and the first n entries — ``cos θ ↦ exp(iθ)``, ``sin θ ↦ -i exp(iθ)``;
3. optionally conjugate the odd columns (``alt``).

A fifth lift comes from the Hartley transform: ``H[j, k] = cos θ + sin θ`` (``θ = 2π jk/n``) and
``H[j, -k] = cos θ - sin θ``, so ``H - i H[:, -k mod n] = (1 - i) exp(iθ)``, a scaled DFT: ``reflect`` is
``M - i M[:, -k mod n]``.

The real part of every lift is exactly ``M``. The hierarchical search (:func:`twiddle.factorize.factorize`)
tries them, computing each only when it gets to it, when a real matrix has no exact real factorization.
"""

from __future__ import annotations

import torch

__all__ = ["LIFTS", "complex_lift"]

LIFTS = ("even", "even-alt", "odd", "odd-alt", "reflect")


def complex_lift(m: torch.Tensor, kind: str) -> torch.Tensor:
    """The lift ``kind`` (one of :data:`LIFTS`) of a real ``(n, n)`` matrix, as complex128 with ``Re = m``."""
    if kind not in LIFTS:
        raise ValueError(f"lift must be one of {LIFTS}, got {kind!r}")
    if m.is_complex():
        raise TypeError("complex_lift takes a real matrix")
    m = m.to(torch.float64)
    n = m.shape[-1]
    if kind == "reflect":
        return torch.complex(m, -m[..., (-torch.arange(n)) % n])
    sign = 1.0 if kind.startswith("even") else -1.0
    extended = torch.cat((m, sign * m.flip(-1)), dim=-1)  # (n, 2n)
    spectrum = torch.fft.fft(extended, dim=-1)
    weights = torch.zeros(2 * n, dtype=torch.float64)
    weights[0] = 1.0
    weights[1:n] = 2.0
    weights[n] = 1.0
    analytic = torch.fft.ifft(spectrum * weights, dim=-1)[..., :n]
    lifted = torch.complex(m, analytic.imag)  # the real part is m exactly, not m + rounding
    if kind.endswith("alt"):
        lifted[..., 1::2] = lifted[..., 1::2].conj()
    return lifted

