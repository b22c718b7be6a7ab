"""Circulant and Toeplitz matrices and circular convolutions (1-D and 2-D, multi-channel) as butterflies.

A circulant of power-of-two size ``m`` is one kaleidoscope butterfly (``nblocks=2``: a decimation-in-frequency
DFT, the spectrum as a diagonal folded into the next factor, an inverse decimation-in-time DFT; the bit
reversals cancel). Any other size, and any Toeplitz matrix, is embedded in a circulant of power-of-two size
``m ≥ rows + cols - 1``: zero-pad the input, keep the first ``rows`` outputs. Multi-channel convolutions take the
DFT of every input channel once, mix channels frequency by frequency (``out × in`` numbers per frequency: a set
of diagonals), and invert once per output channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .._layout import ceil_log2, is_power_of_two
from .._validate import positive_int
from ..permutations import bitreversal_permutation
from ._fourier import (
    _CDTYPE,
    circulant_embedding,
    circulant_twiddle,
    complex_butterfly,
    dif_twiddle,
    dit_twiddle,
)
from ._modules import (
    Diagonal,
    Transform,
    _AddBias,
    _AlongDim,
    _ChannelMix,
    _RealPart,
    _Take,
    _ZeroPad,
    as_float64,
    as_pair,
    builds_on_cpu,
    check_shape2d,
    complex_dtype,
    real_dtype,
)

__all__ = ["circulant", "toeplitz", "conv1d_circular", "conv2d_circular"]


def _as_vector(values: object, name: str) -> torch.Tensor:
    """A 1-D, non-empty, finite tensor (real → float64, complex → complex128)."""
    t = as_float64(values, name)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {tuple(t.shape)}")
    return t


def _embedded_size(rows: int, cols: int) -> int:
    return 1 << ceil_log2(rows + cols - 1)


def _toeplitz_steps(first_column: torch.Tensor, first_row: torch.Tensor, dtype, device) -> list[nn.Module]:
    """Steps for ``y = T x`` with ``T[i, j] = t[i - j]`` (``len(first_column) × len(first_row)``): pad, one
    kaleidoscope butterfly of the embedding circulant, truncate."""
    rows, cols = first_column.numel(), first_row.numel()
    m = _embedded_size(rows, cols)
    twiddle = circulant_twiddle(circulant_embedding(first_column, first_row, m))
    if m == 1:
        return [Diagonal(first_column.to(device=device, dtype=complex_dtype(dtype)))]
    steps: list[nn.Module] = [] if m == cols else [_ZeroPad(m)]
    steps.append(complex_butterfly(twiddle, m, rows, False, dtype, device))
    return steps


def _circulant_steps(c: torch.Tensor, dtype: torch.dtype, device) -> list[nn.Module]:
    """``y = C x`` for the circulant with first column ``c``: one kaleidoscope butterfly (embedded in a
    power-of-two circulant when ``len(c)`` is not one; ``len(c) == 1`` goes through the embedding too, which
    makes it a scalar)."""
    n = c.numel()
    if n > 1 and is_power_of_two(n):
        return [complex_butterfly(circulant_twiddle(c), n, n, False, dtype, device)]
    return _toeplitz_steps(c, torch.cat([c[:1], c[1:].flip(0)]), dtype, device)


@builds_on_cpu
def circulant(
    col: torch.Tensor | np.ndarray | Sequence[float],
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The circulant matrix ``C[i, j] = col[(i - j) mod n]`` (``scipy.linalg.circulant(col)``) as a butterfly:
    ``y = C x`` is the circular convolution of ``x`` with ``col``.

    ``n`` a power of two: one kaleidoscope butterfly of size ``n`` (``4n log2 n`` complex twiddles). Other ``n``:
    the ``n × n`` circulant is a Toeplitz matrix, embedded in a power-of-two circulant of size
    ``m = 2^⌈log2(2n-1)⌉`` (input zero-padded, first ``n`` outputs kept).

    Args:
        col: first column (real or complex).
        trainable: learnable twiddles. dtype: real dtype of the module (default torch's). device: where.

    Shapes: ``(..., n) -> (..., n)``; real if ``col`` is real (a complex input is then transformed as
    ``C x.real + i·C x.imag``), complex otherwise.
    """
    c = _as_vector(col, "col")
    n = c.numel()
    dtype = real_dtype(dtype)
    steps = _circulant_steps(c, dtype, device)
    real = not c.is_complex()
    if real:
        steps.append(_RealPart())
    return Transform("circulant", steps, (n,), (n,), real=real, trainable=trainable)


@builds_on_cpu
def toeplitz(
    col: torch.Tensor | np.ndarray | Sequence[float],
    row: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The Toeplitz matrix with first column ``col`` and first row ``row`` (``scipy.linalg.toeplitz(col, row)``:
    ``row[0]`` is ignored, ``row=None`` means ``conj(col)``), ``len(col) × len(row)``, rectangular allowed.

    Embedded in a circulant of power-of-two size ``m = 2^⌈log2(rows + cols - 1)⌉``: zero-pad, one kaleidoscope
    butterfly (``4m log2 m`` complex twiddles), keep the first ``rows`` outputs.

    Shapes: ``(..., len(row)) -> (..., len(col))``; real if both are real, complex otherwise.
    """
    c = _as_vector(col, "col")
    r = c.conj() if row is None else _as_vector(row, "row")
    if c.is_complex() or r.is_complex():
        c, r = c.to(torch.complex128), r.to(torch.complex128)
    r = torch.cat([c[:1], r[1:]])
    steps = _toeplitz_steps(c, r, real_dtype(dtype), device)
    real = not c.is_complex()
    if real:
        steps.append(_RealPart())
    return Transform("toeplitz", steps, (r.numel(),), (c.numel(),), real=real, trainable=trainable)


# ---------------------------------------------------------------------------------------------- convolutions


def _conv_geometry(n: int, k: int, padding: object, dilation: int, axis: str) -> tuple[int, int]:
    """``(left_pad, out_len)`` of ``nn.Conv*d(padding=padding, dilation=dilation, padding_mode="circular")``
    along one axis of length ``n`` with kernel size ``k``."""
    span = dilation * (k - 1)
    if padding == "same":
        left, out_len = span // 2, n
        if span - left > n:
            raise ValueError(
                f"kernel of size {k} (dilation {dilation}) needs circular padding {span - left} > input size {n}"
                f"{axis}; circular padding cannot wrap more than once"
            )
        return left, out_len
    if padding == "valid":
        padding = 0
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding{axis} must be 'same', 'valid' or a non-negative int, got {padding!r}")
    if padding > n:
        raise ValueError(f"padding{axis}={padding} exceeds the input size {n}; circular padding wraps at most once")
    out_len = n + 2 * padding - span
    if out_len < 1:
        raise ValueError(
            f"kernel of size {k} (dilation {dilation}) does not fit the input of size {n} with padding {padding}"
            f"{axis}: output size would be {out_len}"
        )
    return padding, out_len


def _check_stride(stride: object, padding: object, name: str) -> int:
    """A positive int stride; padding ``"same"`` needs 1 (as ``nn.Conv1d`` / ``nn.Conv2d``)."""
    stride = positive_int(stride, name)
    if stride > 1 and padding == "same":
        raise ValueError(f"padding='same' needs {name} 1 (as in nn.Conv1d / nn.Conv2d), got {stride}")
    return stride


def _circular_column(weights: torch.Tensor, n: int, left: int, dilation: int) -> torch.Tensor:
    """``(..., k) -> (..., n)``: the first column of the circulant with ``y[t] = Σ_j w[j] x[(t + j·dil - left) mod
    n]``, i.e. ``c[(left - j·dil) mod n] += w[j]``."""
    k = weights.shape[-1]
    c = torch.zeros(*weights.shape[:-1], n, dtype=weights.dtype)
    index = torch.remainder(left - dilation * torch.arange(k), n)
    return c.index_add_(-1, index, weights)


def _embed_axis(c: torch.Tensor, n: int, m: int, axis: int) -> torch.Tensor:
    """Along ``axis``, embed a period-``n`` circulant column into one of size ``m ≥ 2n - 1`` (identity if ``m ==
    n``): lags ``0..n-1`` stay, lags ``-(n-1)..-1`` go to the end."""
    if m == n:
        return c
    c = c.movedim(axis, -1)
    out = torch.zeros(*c.shape[:-1], m, dtype=c.dtype)
    out[..., :n] = c
    out[..., m - n + 1 :] = c[..., 1:]
    return out.movedim(-1, axis)


def _spectral_size(n: int) -> int:
    return n if is_power_of_two(n) else _embedded_size(n, n)


def _check_weight(weight: object, dims: int, groups: object = 1) -> tuple[torch.Tensor, int]:
    """The weight as float64 and the groups (a positive int dividing the output channels)."""
    w = as_float64(weight, "weight", allow_complex=False)
    if w.dim() != dims + 2 or w.numel() == 0:
        layout = "(out_channels, in_channels / groups, kernel_size)" if dims == 1 else \
            "(out_channels, in_channels / groups, kh, kw)"
        raise ValueError(f"weight must have shape {layout}, got {tuple(w.shape)}")
    g = positive_int(groups, "groups")
    if w.shape[0] % g:
        raise ValueError(f"groups must divide out_channels = {w.shape[0]} (weight's first dimension), got {g}")
    return w, g


def _check_bias(bias: object, out_channels: int) -> torch.Tensor | None:
    if bias is None:
        return None
    b = as_float64(bias, "bias", allow_complex=False)
    if b.shape != (out_channels,):
        raise ValueError(f"bias must have shape ({out_channels},) (out_channels), got {tuple(b.shape)}")
    return b


@builds_on_cpu
def conv1d_circular(
    weight: torch.Tensor | np.ndarray,
    n: int,
    bias: torch.Tensor | np.ndarray | None = None,
    *,
    padding: int | str = "same",
    dilation: int = 1,
    stride: int = 1,
    groups: int = 1,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """A circular 1-D convolution on inputs of length ``n``, matching
    ``nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
    groups=groups, padding_mode="circular")`` with its ``weight`` and ``bias``.

    Single channel (``weight`` of shape ``(1, 1, k)``): one kaleidoscope butterfly. Several channels: one forward
    DFT butterfly per input channel, per-frequency channel mixing (``out × in × m`` complex numbers), one inverse
    DFT butterfly per output channel. The DFT size ``m`` is ``n`` for a power of two, else ``2^⌈log2(2n-1)⌉``
    (the circulant embedded in a larger one).

    Args:
        weight: ``(out_channels, in_channels / groups, kernel_size)``, real. n: input length.
        bias: ``(out_channels,)`` or None.
        padding: ``"same"`` (output length ``n``), ``"valid"`` or an int ``p ≤ n`` (output length
            ``n + 2p - dilation·(k-1)``).
        dilation: kernel dilation. stride: keep every ``stride``-th output (``padding="same"`` needs stride 1, as
            in PyTorch; output length ``⌈n_out / stride⌉``). groups: output channel ``o`` sees the input channels
            of its group only (depthwise: ``groups = in_channels = out_channels``, one product per channel and
            frequency). trainable: learnable twiddles, mixing weights and bias.

    Shapes: ``(..., in_channels, n) -> (..., out_channels, n_out)`` real.
    """
    n = positive_int(n, "n")
    w, groups = _check_weight(weight, 1, groups)
    out_ch, per_group, k = w.shape
    in_ch = per_group * groups
    b = _check_bias(bias, out_ch)
    stride = _check_stride(stride, padding, "stride")
    left, out_len = _conv_geometry(n, k, padding, positive_int(dilation, "dilation"), "")
    dtype = real_dtype(dtype)
    cols = _circular_column(w, n, left, dilation)  # (out, in, n)
    if out_ch == 1 and in_ch == 1:
        steps = _circulant_steps(cols[0, 0], dtype, device)
    else:
        m = _spectral_size(n)
        steps = _spectral_steps([m], [n], _embed_axis(cols, n, m, -1), dtype, device, groups)
    steps.append(_RealPart())
    if out_len != n or stride > 1:
        steps.append(_Take(torch.arange(0, out_len, stride) % n))
    if b is not None:
        steps.append(_AddBias(b.to(dtype), 1))
    n_out = len(range(0, out_len, stride))
    return Transform("conv1d_circular", steps, (in_ch, n), (out_ch, n_out), real=True, trainable=trainable)


def _spectral_steps(
    sizes: list[int], lengths: list[int], columns: torch.Tensor, dtype: torch.dtype, device, groups: int = 1
) -> list[nn.Module]:
    """Steps of a multi-channel circular convolution over the last ``len(sizes)`` dimensions.

    ``columns``: ``(out, in / groups, *sizes)``, the embedded circulant kernels (power-of-two ``sizes``);
    ``lengths``: the input lengths (≤ sizes). Forward DFTs in decimation-in-frequency order (bit-reversed
    spectrum), channel mixing on the bit-reversed spectrum ``/ prod(sizes)`` (within ``groups``), inverse
    decimation-in-time DFTs that take it back to natural order and keep the first ``lengths`` outputs.
    """
    dims = len(sizes)
    spectrum = torch.fft.fftn(columns.to(_CDTYPE), dim=tuple(range(2, 2 + dims)))
    for axis, m in enumerate(sizes):
        spectrum = spectrum.index_select(2 + axis, bitreversal_permutation(m))
    spectrum = spectrum / float(np.prod(sizes))
    steps: list[nn.Module] = []
    for axis, (m, length) in enumerate(zip(sizes, lengths, strict=True)):
        dim = axis - dims
        if m != length:
            steps.append(_AlongDim(_ZeroPad(m), dim))
    for axis, m in enumerate(sizes):
        dim = axis - dims
        t = dif_twiddle(ceil_log2(m), -1)[None, None]
        steps.append(_AlongDim(_butterfly_or_identity(t, m, m, False, dtype, device), dim))
    steps.append(_ChannelMix(spectrum.to(device=device, dtype=complex_dtype(dtype)), groups=groups))
    for axis, (m, length) in enumerate(zip(sizes, lengths, strict=True)):
        dim = axis - dims
        t = dit_twiddle(ceil_log2(m), +1)[None, None]
        steps.append(_AlongDim(_butterfly_or_identity(t, m, length, True, dtype, device), dim))
    return steps


def _butterfly_or_identity(twiddle, in_features, out_features, increasing, dtype, device) -> nn.Module:
    if in_features == 1:
        return nn.Identity()
    return complex_butterfly(twiddle, in_features, out_features, increasing, dtype, device)


@builds_on_cpu
def conv2d_circular(
    weight: torch.Tensor | np.ndarray,
    shape: int | tuple[int, int],
    bias: torch.Tensor | np.ndarray | None = None,
    *,
    padding: int | str | tuple[int, int] = "same",
    dilation: int | tuple[int, int] = 1,
    stride: int | tuple[int, int] = 1,
    groups: int = 1,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """A circular 2-D convolution on ``(height, width)`` inputs, matching ``nn.Conv2d(..., stride=stride,
    padding=padding, dilation=dilation, groups=groups, padding_mode="circular")`` with its ``weight`` and
    ``bias``.

    A 2-D DFT (butterflies along rows, then columns) per input channel, per-frequency channel mixing, an inverse
    2-D DFT per output channel. Each axis that is not a power of two is embedded in a circulant of size
    ``2^⌈log2(2·length-1)⌉``.

    Args:
        weight: ``(out_channels, in_channels / groups, kh, kw)``, real. shape: ``(height, width)`` or one int.
        bias: ``(out_channels,)`` or None. padding: ``"same"``, ``"valid"``, an int or a pair.
        dilation: an int or a pair. stride: an int or a pair (every ``stride``-th output along each axis;
            ``padding="same"`` needs 1). groups: as :func:`conv1d_circular`. trainable: learnable twiddles, mixing
            weights and bias.

    Shapes: ``(..., in_channels, height, width) -> (..., out_channels, height_out, width_out)`` real.
    """
    h, w_len = check_shape2d(shape)
    w, groups = _check_weight(weight, 2, groups)
    out_ch, per_group, kh, kw = w.shape
    in_ch = per_group * groups
    b = _check_bias(bias, out_ch)
    if isinstance(padding, str):
        pads = (padding, padding)
    else:
        pads = as_pair(padding, "padding")
    dh, dw = (positive_int(d, "dilation") for d in as_pair(dilation, "dilation"))
    sh, sw = (_check_stride(st, pad, "stride") for st, pad in zip(as_pair(stride, "stride"), pads, strict=True))
    left_h, out_h = _conv_geometry(h, kh, pads[0], dh, " (height)")
    left_w, out_w = _conv_geometry(w_len, kw, pads[1], dw, " (width)")
    dtype = real_dtype(dtype)
    # 2-D circulant kernel: c[(left_h - i·dh) mod H, (left_w - j·dw) mod W] += w[i, j]
    cols = _circular_column(w, w_len, left_w, dw)  # (out, in, kh, W)
    cols = _circular_column(cols.movedim(2, -1), h, left_h, dh).movedim(-1, 2)  # (out, in, H, W)
    mh, mw = _spectral_size(h), _spectral_size(w_len)
    cols = _embed_axis(_embed_axis(cols, h, mh, 2), w_len, mw, 3)
    steps = _spectral_steps([mh, mw], [h, w_len], cols, dtype, device, groups)
    steps.append(_RealPart())
    if out_h != h or sh > 1:
        steps.append(_AlongDim(_Take(torch.arange(0, out_h, sh) % h), -2))
    if out_w != w_len or sw > 1:
        steps.append(_Take(torch.arange(0, out_w, sw) % w_len))
    if b is not None:
        steps.append(_AddBias(b.to(dtype), 2))
    out_h, out_w = len(range(0, out_h, sh)), len(range(0, out_w, sw))
    return Transform(
        "conv2d_circular", steps, (in_ch, h, w_len), (out_ch, out_h, out_w), real=True, trainable=trainable
    )
