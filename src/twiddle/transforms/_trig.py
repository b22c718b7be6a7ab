"""DCT and DST of types 1 to 4 (and their inverses) for any size, matching ``scipy.fft``.

Every one is ``Re`` of a complex DFT with permutations and diagonals around it (the diagonals fold into the
butterfly's outer factors). With ``g`` Makhoul's reordering (even indices ascending, then odd descending),
``σ = (-1)^k`` and ``R`` the reversal, for real ``x`` (unnormalized, as ``scipy.fft``):

* DCT-II: ``y = Re(D ⊙ DFT_N(x[g]))`` with ``D[k] = 2·exp(-iπk/(2N))``.
* DCT-III (the transpose of DCT-II with the first column halved): ``y = Re(DFT_N(D ⊙ w ⊙ x))[g⁻¹]``,
  ``w = (1/2, 1, …, 1)``.
* DCT-IV: ``y = Re(2·exp(-iπ(2k+1)/(4N)) ⊙ DFT_2N(pad(exp(-iπj/(2N)) ⊙ x))[:N])`` — a DFT of twice the size,
  so it costs about twice a DCT-II.
* DST-II ``= R · DCT-II · diag(σ)``, DST-III ``= diag(σ) · DCT-III · R``, DST-IV ``= diag(σ) · DCT-IV · R``.
"""

from __future__ import annotations

import math

import torch

from .._validate import positive_int
from ._fourier import _CDTYPE, dft_steps
from ._modules import Transform, _RealPart, builds_on_cpu, real_dtype

__all__ = ["dct", "dst", "idct", "idst"]

TYPES = (1, 2, 3, 4)
NORMS = (None, "backward", "ortho", "forward")
_INVERSE_TYPE = {1: 1, 2: 3, 3: 2, 4: 4}


def _makhoul_order(n: int) -> torch.Tensor:
    """``g``: ``x[g]`` lists the even-indexed entries ascending, then the odd-indexed ones descending."""
    g = torch.empty(n, dtype=torch.long)
    half = (n + 1) // 2
    g[:half] = torch.arange(0, n, 2)
    odd = torch.arange(1, n, 2)
    g[n - 1 - torch.arange(odd.numel())] = odd
    return g


def _check(n: object, type: object, norm: object, *, sine: bool = False) -> int:
    n = positive_int(n, "n")
    if type not in TYPES:
        raise ValueError(f"type must be one of {TYPES}, got {type!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if type == 1 and not sine and n < 2:
        raise ValueError(f"n must be at least 2 for the type-1 DCT (as in scipy.fft), got {n}")
    return n


def _type1_steps(n: int, norm: str | None, *, sine: bool, dtype, device) -> list[torch.nn.Module]:
    """DCT-I / DST-I as the real part of one DFT of size ``N = 2(n - 1)`` / ``2(n + 1)`` of the zero-padded input.

    DCT-I: ``y_k = Σ_j c_j x_j cos(π jk / (n - 1))``, ``c = (1, 2, …, 2, 1)``: the real part of ``DFT_N(c ⊙ x)``.
    DST-I: ``y_k = 2 Σ_j x_j sin(π (j + 1)(k + 1) / (n + 1))``: the real part of ``i·DFT_N(2 x)`` at ``k + 1``,
    the index shift done by a modulation of the input and a phase on the output (``(j+1)(k+1) = jk + j + k + 1``).
    """
    if sine:
        size = 2 * (n + 1)
        j = torch.arange(size, dtype=torch.float64)
        kf = torch.arange(n, dtype=torch.float64)
        in_diag = 2 * _unit(-2 * math.pi * j / size)
        out_diag = 1j * _unit(-2 * math.pi * (kf + 1) / size)
        scale = {"ortho": 1 / math.sqrt(size), "forward": 1 / size}.get(norm, 1.0)
        out_diag = out_diag * scale
    else:
        size = 2 * (n - 1)
        in_diag = torch.full((size,), 2.0, dtype=torch.float64)
        in_diag[0] = in_diag[n - 1] = 1.0
        out_diag = torch.ones(n, dtype=torch.float64)
        if norm == "ortho":  # scipy: x_0, x_{n-1} times √2, y_0, y_{n-1} over √2, all over √(2(n-1))
            in_diag[0] = in_diag[n - 1] = math.sqrt(2.0)
            out_diag[0] = out_diag[n - 1] = 1 / math.sqrt(2.0)
            out_diag = out_diag / math.sqrt(size)
        elif norm == "forward":
            out_diag = out_diag / size
    return dft_steps(size, -1, in_size=n, out_size=n, in_diag=in_diag, out_diag=out_diag, dtype=dtype, device=device)


def _ortho_weights(n: int, type: int) -> torch.Tensor:
    """Output scaling (type 2) or input scaling (type 3) of scipy's orthogonalized DCT; all ``√(1/(2N))`` for
    type 4."""
    w = torch.full((n,), math.sqrt(1 / (2 * n)), dtype=torch.float64)
    if type in (2, 3):
        w[0] = math.sqrt(1 / (4 * n))
    return w


def _unit(angle: torch.Tensor) -> torch.Tensor:
    """``exp(i·angle)`` in complex128."""
    return torch.polar(torch.ones_like(angle), angle)


def _cosine_steps(n: int, type: int, norm: str | None, *, sine: bool, dtype, device) -> list[torch.nn.Module]:
    """The DCT (``sine=False``) or DST of the given type, before the real part is taken."""
    if type == 1:
        return _type1_steps(n, norm, sine=sine, dtype=dtype, device=device)
    k = torch.arange(n)
    kf = k.to(torch.float64)
    sigma = (1 - 2 * (k % 2)).to(_CDTYPE)
    reverse = k.flip(0)
    if norm == "ortho":
        scale = _ortho_weights(n, type).to(_CDTYPE)
    else:
        scale = torch.full((n,), 1 / (2 * n) if norm == "forward" else 1.0, dtype=_CDTYPE)
    if type == 2:
        g = _makhoul_order(n)
        out_diag = 2 * _unit(-math.pi * kf / (2 * n)) * scale
        in_diag = sigma[g] if sine else None
        return dft_steps(
            n,
            -1,
            in_perm=g,
            in_diag=in_diag,
            out_diag=out_diag,
            out_perm=reverse if sine else None,
            dtype=dtype,
            device=device,
        )
    if type == 3:
        g = _makhoul_order(n)
        weight = scale if norm == "ortho" else scale * torch.tensor([0.5] + [1.0] * (n - 1), dtype=_CDTYPE)
        in_diag = 2 * _unit(-math.pi * kf / (2 * n)) * weight
        ginv = torch.argsort(g)
        return dft_steps(
            n,
            -1,
            in_perm=reverse if sine else None,
            in_diag=in_diag,
            out_diag=sigma[g] if sine else None,
            out_perm=ginv,
            dtype=dtype,
            device=device,
        )
    # type 4: a DFT of size 2N on the zero-padded input
    j = torch.arange(2 * n, dtype=torch.float64)
    in_diag = _unit(-math.pi * j / (2 * n))
    out_diag = 2 * _unit(-math.pi * (2 * kf + 1) / (4 * n)) * scale
    if sine:
        out_diag = out_diag * sigma
    return dft_steps(
        2 * n,
        -1,
        in_size=n,
        out_size=n,
        in_perm=reverse if sine else None,
        in_diag=in_diag,
        out_diag=out_diag,
        dtype=dtype,
        device=device,
    )


def _build(name: str, n: int, type: int, norm: str | None, sine: bool, trainable: bool, dtype, device) -> Transform:
    steps = _cosine_steps(n, type, norm, sine=sine, dtype=real_dtype(dtype), device=device) + [_RealPart()]
    return Transform(f"{name}-{type}", steps, (n,), (n,), real=True, trainable=trainable)


@builds_on_cpu
def dct(
    n: int,
    type: int = 2,
    norm: str | None = None,
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The discrete cosine transform of type 1, 2, 3 or 4 on ``n`` points, matching
    ``scipy.fft.dct(x, type=type, norm=norm)`` (``norm``: ``None``/``"backward"``, ``"ortho"``, ``"forward"``).

    Any ``n ≥ 1``. Structure: a permutation, one complex butterfly (Cooley–Tukey for ``n`` a power of two,
    Bluestein otherwise; see :func:`twiddle.transforms.fft`) with the DCT's diagonals folded into its outer
    factors, and the real part. Type 4 uses a DFT of size ``2n`` (about twice the cost of type 2), type 1 one of
    size ``2(n - 1)`` on the zero-padded input (``n ≥ 2``).
    A complex input is transformed as ``C(x.real) + i·C(x.imag)``, like scipy.

    Shapes: ``(..., n) -> (..., n)`` real."""
    n = _check(n, type, norm)
    return _build("dct", n, type, norm, False, trainable, dtype, device)


@builds_on_cpu
def dst(
    n: int,
    type: int = 2,
    norm: str | None = None,
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The discrete sine transform of type 1, 2, 3 or 4, matching ``scipy.fft.dst(x, type=type, norm=norm)``.
    Types 2-4 are built from the DCT of the same type with sign flips and a reversal (free: folded into the diagonals
    and permutations), type 1 from a DFT of size ``2(n + 1)``. Arguments and shapes as :func:`dct`."""
    n = _check(n, type, norm, sine=True)
    return _build("dst", n, type, norm, True, trainable, dtype, device)


def _inverse_norm(norm: str | None) -> str | None:
    return {None: "forward", "backward": "forward", "forward": "backward", "ortho": "ortho"}[norm]


@builds_on_cpu
def idct(
    n: int,
    type: int = 2,
    norm: str | None = None,
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The inverse of :func:`dct` with the same ``type`` and ``norm``, matching ``scipy.fft.idct``: the DCT of
    the inverse type (1↔1, 2↔3, 4↔4) with the normalization moved to this direction."""
    n = _check(n, type, norm)
    module = _build("dct", n, _INVERSE_TYPE[type], _inverse_norm(norm), False, trainable, dtype, device)
    module.name = f"idct-{type}"
    return module


@builds_on_cpu
def idst(
    n: int,
    type: int = 2,
    norm: str | None = None,
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The inverse of :func:`dst`, matching ``scipy.fft.idst``. Arguments and shapes as :func:`idct`."""
    n = _check(n, type, norm, sine=True)
    module = _build("dst", n, _INVERSE_TYPE[type], _inverse_norm(norm), True, trainable, dtype, device)
    module.name = f"idst-{type}"
    return module
