"""The DFT family: ``fft``, ``ifft``, ``fft2d``, ``ifft2d``, ``hartley``, for any size."""

from __future__ import annotations

import math

import torch

from .._validate import positive_int
from ._fourier import dft_steps
from ._modules import Pipeline, Transform, _AlongDim, _RealPart, builds_on_cpu, check_shape2d, real_dtype

__all__ = ["fft", "ifft", "fft2d", "ifft2d", "hartley"]

NORMS = ("backward", "ortho", "forward")


def _norm_scale(n: int, norm: str, inverse: bool) -> float:
    """The factor torch.fft applies for ``norm`` (``ifft`` with ``backward`` divides by ``n``)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "ortho":
        return 1 / math.sqrt(n)
    return 1 / n if (norm == "forward") != inverse else 1.0


def _dft_sequence(n: int, inverse: bool, norm: str, dtype: torch.dtype | None, device) -> Pipeline:
    scale = _norm_scale(n, norm, inverse)
    out_diag = torch.full((n,), scale, dtype=torch.complex128)
    return Pipeline(*dft_steps(n, +1 if inverse else -1, out_diag=out_diag, dtype=dtype, device=device))


@builds_on_cpu
def fft(
    n: int,
    norm: str = "backward",
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The DFT ``y[k] = s · Σ_j x[j] exp(-2πi jk/n)`` as butterflies, matching ``torch.fft.fft(x, norm=norm)``.

    ``s`` is 1 (``norm="backward"``), ``1/√n`` (``"ortho"``) or ``1/n`` (``"forward"``). Any ``n ≥ 1``: a power of
    two is a bit-reversal permutation and one Cooley–Tukey butterfly (``2n log2 n`` complex twiddles); any other
    ``n`` is Bluestein's chirp-z, one kaleidoscope butterfly (``nblocks=2``) of size ``m = 2^⌈log2(2n-1)⌉``
    (``4m log2 m`` twiddles, about 4–8× the power-of-two cost in parameters and time).

    Args:
        n: transform size.
        norm: ``"backward"``, ``"ortho"`` or ``"forward"``, as in ``torch.fft``.
        trainable: make the twiddles learnable parameters (they are fixed by default).
        dtype: real dtype (``float32`` default → complex64 twiddles; ``float64`` → complex128).
        device: where to build it.

    Shapes: ``(..., n) -> (..., n)`` complex (real input is promoted).
    """
    n = positive_int(n, "n")
    steps = _dft_sequence(n, False, norm, real_dtype(dtype), device)
    return Transform("fft", list(steps), (n,), (n,), real=False, trainable=trainable)


@builds_on_cpu
def ifft(
    n: int,
    norm: str = "backward",
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The inverse DFT ``y[k] = s · Σ_j x[j] exp(+2πi jk/n)``, matching ``torch.fft.ifft(x, norm=norm)`` (``s`` is
    ``1/n`` for ``"backward"``, ``1/√n`` for ``"ortho"``, 1 for ``"forward"``). Structure and cost as :func:`fft`.

    Shapes: ``(..., n) -> (..., n)`` complex."""
    n = positive_int(n, "n")
    steps = _dft_sequence(n, True, norm, real_dtype(dtype), device)
    return Transform("ifft", list(steps), (n,), (n,), real=False, trainable=trainable)


def _fft2d(shape: object, norm: str, inverse: bool, trainable: bool, dtype, device) -> Transform:
    h, w = check_shape2d(shape)
    dtype = real_dtype(dtype)
    steps = [
        _AlongDim(_dft_sequence(w, inverse, norm, dtype, device), -1),
        _AlongDim(_dft_sequence(h, inverse, norm, dtype, device), -2),
    ]
    return Transform("ifft2d" if inverse else "fft2d", steps, (h, w), (h, w), real=False, trainable=trainable)


@builds_on_cpu
def fft2d(
    shape: int | tuple[int, int],
    norm: str = "backward",
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The 2-D DFT over the last two dimensions, matching ``torch.fft.fft2(x, norm=norm)``: a 1-D :func:`fft`
    along the rows, then along the columns. ``shape`` is ``(height, width)`` (any sizes) or one int for a square.

    Shapes: ``(..., height, width) -> (..., height, width)`` complex."""
    return _fft2d(shape, norm, False, trainable, dtype, device)


@builds_on_cpu
def ifft2d(
    shape: int | tuple[int, int],
    norm: str = "backward",
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The 2-D inverse DFT, matching ``torch.fft.ifft2(x, norm=norm)``. Shapes as :func:`fft2d`."""
    return _fft2d(shape, norm, True, trainable, dtype, device)


@builds_on_cpu
def hartley(
    n: int,
    norm: str = "backward",
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The discrete Hartley transform ``y[k] = s · Σ_j x[j] (cos(2π jk/n) + sin(2π jk/n))``, real to real.

    Computed as ``Re((1 + i) · DFT x)`` (for real ``x``, ``Re(F x) − Im(F x)``): the ``(1 + i)`` folds into the
    last butterfly factor. ``norm`` scales like :func:`fft` (``"ortho"`` makes it orthogonal and its own
    inverse). A complex input is transformed as ``H(x.real) + i·H(x.imag)``.

    Shapes: ``(..., n) -> (..., n)`` real."""
    n = positive_int(n, "n")
    scale = _norm_scale(n, norm, False)
    out_diag = torch.full((n,), complex(scale, scale), dtype=torch.complex128)
    steps = dft_steps(n, -1, out_diag=out_diag, dtype=real_dtype(dtype), device=device) + [_RealPart()]
    return Transform("hartley", steps, (n,), (n,), real=True, trainable=trainable)
