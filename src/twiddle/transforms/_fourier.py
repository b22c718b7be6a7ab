"""Closed-form twiddles for the DFT (Cooley–Tukey, both orders), circulants (the kaleidoscope ``B·B*``), and
Bluestein's chirp-z DFT for any ``n``; and the builder that turns "permute, scale, DFT, scale, permute" into
butterfly steps.

Conventions: twiddles are built in complex128 in the order they are *applied* (see :mod:`twiddle._layout`) and
cast once when the :class:`~twiddle.Butterfly` is made. ``sign = -1`` is the forward DFT ``exp(-2πi jk/n)``,
``sign = +1`` the unnormalized inverse.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._layout import ceil_log2, factor_stride, is_power_of_two, pair_positions
from ..butterfly import Butterfly
from ..permutations import FixedPermutation, bitreversal_permutation
from ._modules import Diagonal, _Take, _ZeroPad, complex_dtype

__all__: list[str] = []

_CDTYPE = torch.complex128


def _root(k: torch.Tensor, period: int, sign: int) -> torch.Tensor:
    """``exp(sign · 2πi k / period)`` in complex128, with ``k`` reduced mod ``period`` first (exact angles)."""
    angle = (2 * math.pi / period) * torch.remainder(k, period).to(torch.float64)
    return torch.polar(torch.ones_like(angle), sign * angle)


def _cooley_tukey(log_n: int, sign: int, in_time: bool) -> torch.Tensor:
    n = 1 << log_n
    t = torch.ones(log_n, n // 2, 2, 2, dtype=_CDTYPE)
    i = torch.arange(n // 2)
    for f in range(log_n):
        s = factor_stride(f, log_n, in_time)
        w = _root(i % s, 2 * s, sign)
        # time: [[1, w], [1, -w]] (twiddle, then sum/difference); frequency: [[1, 1], [w, -w]] (the transpose)
        if in_time:
            t[f, :, 0, 1] = w
        else:
            t[f, :, 1, 0] = w
        t[f, :, 1, 1] = -w
    return t


def dit_twiddle(log_n: int, sign: int) -> torch.Tensor:
    """Decimation in time: increasing strides, bit-reversed input, natural-order output. ``(log_n, n/2, 2, 2)``.

    The factor with stride ``s`` merges DFTs of size ``s`` into size ``2s``: block ``i`` (``k = i mod s``) is
    ``[[1, w^k], [1, -w^k]]`` with ``w = exp(sign·2πi/(2s))``. ``DFT_n = B · P_bitrev``.
    """
    return _cooley_tukey(log_n, sign, True)


def dif_twiddle(log_n: int, sign: int) -> torch.Tensor:
    """Decimation in frequency: decreasing strides, natural-order input, bit-reversed output.
    ``(log_n, n/2, 2, 2)``; the factor with stride ``s`` has blocks ``[[1, 1], [w^k, -w^k]]`` (``k = i mod s``,
    ``w = exp(sign·2πi/(2s))``). ``DFT_n = P_bitrev · B`` (it is the transpose of :func:`dit_twiddle`)."""
    return _cooley_tukey(log_n, sign, False)


def fold_input_diagonal(factor: torch.Tensor, stride: int, diag: torch.Tensor) -> None:
    """In place: ``factor ← factor · diag(diag)`` (scale the inputs of the first applied factor).

    ``factor``: ``(n/2, 2, 2)``; ``diag``: ``(n,)``. Column 0 of block ``i`` multiplies ``x[p]``, column 1
    ``x[p + stride]``."""
    p, q = pair_positions(2 * factor.shape[0], stride)
    factor[:, :, 0] *= diag[p].unsqueeze(-1)
    factor[:, :, 1] *= diag[q].unsqueeze(-1)


def fold_output_diagonal(factor: torch.Tensor, stride: int, diag: torch.Tensor) -> None:
    """In place: ``factor ← diag(diag) · factor`` (scale the outputs of the last applied factor)."""
    p, q = pair_positions(2 * factor.shape[0], stride)
    factor[:, 0, :] *= diag[p].unsqueeze(-1)
    factor[:, 1, :] *= diag[q].unsqueeze(-1)


def circulant_twiddle(column: torch.Tensor) -> torch.Tensor:
    """The kaleidoscope butterfly ``C = B_2 · B_1`` of the circulant matrix with first column ``column``.

    ``column``: ``(m,)`` with ``m`` a power of two. ``C = F⁻¹ diag(F c) F``; with ``F = P · B_dif`` and
    ``F⁻¹ = (1/m) · conj(B_dit) · P`` the bit reversals meet in the middle and cancel into a reordered diagonal:
    ``C = (1/m) conj(B_dit) · diag((F c)[bitrev]) · B_dif``. Returns ``(1, 2, log m, m/2, 2, 2)`` for
    ``Butterfly(..., nblocks=2, increasing_stride=False)`` (block 0 decreasing, block 1 increasing); the
    diagonal is folded into the first factor of block 1.
    """
    m = column.numel()
    log_m = ceil_log2(m)
    t = torch.empty(1, 2, log_m, m // 2, 2, 2, dtype=_CDTYPE)
    if log_m == 0:  # 1×1
        return t
    t[0, 0] = dif_twiddle(log_m, -1)
    t[0, 1] = dit_twiddle(log_m, +1)
    spectrum = torch.fft.fft(column.to(_CDTYPE))[bitreversal_permutation(m)] / m
    fold_input_diagonal(t[0, 1, 0], factor_stride(0, log_m, True), spectrum)
    return t


def circulant_embedding(first_column: torch.Tensor, first_row: torch.Tensor, size: int) -> torch.Tensor:
    """First column of a ``size × size`` circulant whose top-left ``len(first_column) × len(first_row)`` block
    is the Toeplitz matrix ``T[i, j] = t[i - j]`` (``t[d] = first_column[d]``, ``t[-d] = first_row[d]``).
    Needs ``size >= len(first_column) + len(first_row) - 1``."""
    rows, cols = first_column.numel(), first_row.numel()
    c = torch.zeros(size, dtype=torch.promote_types(first_column.dtype, first_row.dtype))
    c[:rows] = first_column
    if cols > 1:
        c[size - cols + 1 :] = first_row[1:].flip(0)
    return c


def complex_butterfly(
    twiddle: torch.Tensor,
    in_features: int,
    out_features: int,
    increasing_stride: bool,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> Butterfly:
    """A bias-free complex :class:`~twiddle.Butterfly` initialized with ``twiddle`` (its ``nblocks`` from the
    shape)."""
    return Butterfly(
        in_features,
        out_features,
        bias=False,
        complex=True,
        increasing_stride=increasing_stride,
        nblocks=twiddle.shape[1],
        init=twiddle,
        dtype=dtype,
        device=device,
    )


def dft_steps(
    n: int,
    sign: int,
    *,
    in_size: int | None = None,
    out_size: int | None = None,
    in_perm: torch.Tensor | None = None,
    in_diag: torch.Tensor | None = None,
    out_diag: torch.Tensor | None = None,
    out_perm: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> list[nn.Module]:
    """Steps computing ``y = (out_diag ⊙ DFT_n(in_diag ⊙ pad_n(x[in_perm])))[:out_size][out_perm]`` for any ``n``.

    ``x`` has ``in_size`` (≤ n) entries, ``in_perm`` permutes them (gather), ``pad_n`` zero-pads to ``n``;
    ``in_diag`` (``(n,)``) and ``out_diag`` (``(out_size,)``) are complex diagonals folded into the outer
    butterfly factors (free). ``DFT_n`` is ``exp(sign·2πi jk/n)``, unnormalized.

    * ``n`` a power of two: one bit-reversal gather (merged with ``in_perm``) and one Cooley–Tukey butterfly.
    * otherwise Bluestein: ``DFT_n = diag(a) · T · diag(a)`` with the chirp ``a_j = exp(sign·πi j²/n)`` and the
      symmetric Toeplitz ``T[k, j] = conj(a_{k-j})``; ``T`` sits inside a circulant of size
      ``m = 2^⌈log2(2n-1)⌉``, one kaleidoscope butterfly (``nblocks=2``) of size ``m``. The chirps fold into its
      outer factors. Cost: ``2 · (m/n) ≈ 4–8×`` the parameters and time of a power-of-two size.
    """
    in_size = n if in_size is None else in_size
    out_size = n if out_size is None else out_size
    ones = torch.ones(n, dtype=_CDTYPE)
    in_d = ones if in_diag is None else in_diag.to(_CDTYPE)
    out_d = ones[:out_size] if out_diag is None else out_diag.to(_CDTYPE)
    perm = torch.arange(in_size) if in_perm is None else in_perm.to(torch.long)
    steps: list[nn.Module] = []

    if is_power_of_two(n):
        log_n = ceil_log2(n)
        br = bitreversal_permutation(n)
        if in_size == n:
            gather = perm[br]
        else:
            if not torch.equal(perm, torch.arange(in_size)):
                steps.append(FixedPermutation(perm))
            steps.append(_ZeroPad(n))
            gather = br
        if not torch.equal(gather, torch.arange(n)):
            steps.append(FixedPermutation(gather))
        t = dit_twiddle(log_n, sign).unsqueeze(0).unsqueeze(0)
        if log_n > 0:
            fold_input_diagonal(t[0, 0, 0], factor_stride(0, log_n, True), in_d[br])
            full_out = torch.ones(n, dtype=_CDTYPE)
            full_out[:out_size] = out_d
            fold_output_diagonal(t[0, 0, -1], factor_stride(log_n - 1, log_n, True), full_out)
            steps.append(complex_butterfly(t, n, out_size, True, dtype, device))
        else:  # n == 1: the DFT is the identity; keep the scaling
            steps.append(_butterfly_scalar(in_d[0] * out_d[0], dtype, device))
    else:
        m = 1 << ceil_log2(2 * n - 1)
        log_m = ceil_log2(m)
        j = torch.arange(n)
        chirp = _root(j * j, 2 * n, sign)  # exp(sign·πi j²/n)
        t = circulant_twiddle(circulant_embedding(chirp.conj(), chirp.conj(), m))
        pre = torch.ones(m, dtype=_CDTYPE)
        pre[:n] = chirp * in_d
        post = torch.ones(m, dtype=_CDTYPE)
        post[:out_size] = chirp[:out_size] * out_d
        fold_input_diagonal(t[0, 0, 0], factor_stride(0, log_m, False), pre)
        fold_output_diagonal(t[0, 1, -1], factor_stride(log_m - 1, log_m, True), post)
        if not torch.equal(perm, torch.arange(in_size)):
            steps.append(FixedPermutation(perm))
        steps.append(_ZeroPad(m))
        steps.append(complex_butterfly(t, m, out_size, False, dtype, device))

    if out_perm is not None and not torch.equal(out_perm.to(torch.long), torch.arange(out_size)):
        steps.append(_Take(out_perm) if out_perm.numel() != out_size else FixedPermutation(out_perm))
    return steps


def _butterfly_scalar(value: torch.Tensor, dtype: torch.dtype | None, device: torch.device | str | None) -> nn.Module:
    """The 1×1 case: a complex Diagonal holding one number."""
    return Diagonal(value.reshape(1).to(device=device, dtype=complex_dtype(dtype)))
