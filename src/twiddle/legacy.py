"""Load butterflies saved by the 2019 reference code (the ``butterfly`` package of Dao et al., ICML 2019).

That code stored a ``Butterfly(in_size, out_size, complex, tied_weight, increasing_stride, nblocks)`` layer's
``twiddle`` in one of these layouts (``m = log2 n``, ``n`` the input size padded to a power of two; complex
numbers as a trailing dimension of 2, real and imaginary parts):

* untied (``tied_weight=False``): ``(nstack, m, n/2, 2, 2)`` (complex: ``(..., 2, 2, 2)``), indexed by
  **log-stride**: ``twiddle[k, log2 s]`` is the factor of stride ``s`` whichever order the factors are applied in;
* tied (``tied_weight=True``, the default there): ``(nstack, n - 1, 2, 2)`` (complex ``(..., 2, 2, 2)``), one 2×2
  block per position inside a stride, ``twiddle[k, s - 1 + j]`` shared by every group of the stride-``s`` factor;
* ``nblocks > 0`` (real, untied): ``(nstack, nblocks · 2m, n/2, 2, 2)``: each chunk of ``2m`` factors is a
  decreasing-stride butterfly (factor ``f`` applied ``f``-th) followed by an increasing-stride one.

Within a factor, block ``i`` maps ``(x[p], x[p+s])`` with ``p = 2(i - i mod s) + i mod s`` exactly as in
:mod:`twiddle._layout`, so conversion is a reindexing of factors. The layer's bias (``(out_size,)``, complex
``(out_size, 2)``) is kept. When ``out_size`` padded to a power of two is at most half of ``n``, the 2019 layer
*averaged* the ``n / out_size`` chunks of its output instead of truncating; the converted module does the same
(a :class:`ChunkMean` after the butterfly). The later ``torch_butterfly`` package (2020) already uses twiddle's own
layout ``(nstacks, nblocks, log2 n, n/2, 2, 2)``: pass such a tensor to ``Butterfly(..., init=tensor)``.

The ``param="ortho"`` and ``param="svd"`` parameterizations of the 2019 code are not read: convert them to the
regular one first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ._layout import is_power_of_two, padded_size
from ._validate import positive_int
from .butterfly import Butterfly

__all__ = ["ChunkMean", "load_2019_butterfly", "twiddle_from_2019"]


def twiddle_from_2019(twiddle: torch.Tensor, increasing_stride: bool = True) -> tuple[torch.Tensor, bool]:
    """Convert a 2019 ``twiddle`` (any layout above, inferred from its shape) to twiddle's layout.

    Returns ``(tensor, increasing_stride)``: the tensor has shape ``(nstack, nblocks, log2 n, n/2, 2, 2)`` (complex
    dtype for complex twiddles), and the direction of its first block (the 2019 BB* layout starts decreasing,
    whatever ``increasing_stride`` says; the 2019 code ignored that flag there too).
    """
    if not isinstance(twiddle, torch.Tensor):
        raise TypeError(f"twiddle must be a tensor, got {type(twiddle).__name__}")
    if not (twiddle.is_floating_point()):
        raise TypeError(f"a 2019 twiddle is a real floating tensor (complex as a trailing 2), got {twiddle.dtype}")
    shape = tuple(twiddle.shape)
    expected = ("(nstack, n-1, 2, 2), (nstack, n-1, 2, 2, 2), (nstack, log2 n, n/2, 2, 2), "
                "(nstack, log2 n, n/2, 2, 2, 2) or (nstack, nblocks*2*log2 n, n/2, 2, 2)")
    tied_complex = len(shape) == 5 and shape[2:] == (2, 2, 2) and is_power_of_two(shape[1] + 1) and shape[1] > 0
    if len(shape) == 4 and shape[2:] == (2, 2) and is_power_of_two(shape[1] + 1):
        return _by_log_stride(_untie(twiddle), increasing_stride), increasing_stride
    if tied_complex:
        return _by_log_stride(_untie(torch.view_as_complex(twiddle.contiguous())), increasing_stride), increasing_stride
    if len(shape) in (5, 6) and shape[-2:] == (2, 2) and is_power_of_two(shape[2]):
        complex_ = len(shape) == 6
        if complex_:
            if shape[-1] != 2:
                raise ValueError(f"2019 twiddle of shape {shape}: expected one of {expected}")
            t = torch.view_as_complex(twiddle.contiguous())
        else:
            t = twiddle
        n = 2 * t.shape[2]
        m = n.bit_length() - 1
        factors = t.shape[1]
        if factors == m:  # one butterfly, stored by log-stride
            return _by_log_stride(t, increasing_stride), increasing_stride
        if not complex_ and m > 0 and factors % (2 * m) == 0:  # BB* chunks: decreasing then increasing
            nblocks = factors // m
            return t.reshape(t.shape[0], nblocks, m, *t.shape[2:]).contiguous(), False
    raise ValueError(f"2019 twiddle of shape {shape}: expected one of {expected}")


def _by_log_stride(t: torch.Tensor, increasing_stride: bool) -> torch.Tensor:
    """``(nstack, m, n/2, 2, 2)`` indexed by log-stride -> ``(nstack, 1, m, n/2, 2, 2)`` in application order."""
    return (t if increasing_stride else t.flip(1)).unsqueeze(1).contiguous()


def _untie(tied: torch.Tensor) -> torch.Tensor:
    """Tied ``(nstack, n-1, 2, 2)`` (stride ``s`` at rows ``s-1 .. 2s-2``) -> untied ``(nstack, m, n/2, 2, 2)``,
    indexed by log-stride."""
    n = tied.shape[1] + 1
    m = n.bit_length() - 1
    factors = []
    for f in range(m):
        s = 1 << f
        per_position = tied[:, s - 1 : 2 * s - 1]  # (nstack, s, 2, 2): block j of every group
        factors.append(per_position.repeat(1, n // (2 * s), 1, 1))  # block i = g*s + j -> position j
    return torch.stack(factors, 1)


class ChunkMean(nn.Module):
    """The 2019 layer's output reduction: ``(..., n) -> (..., out_features)``, the mean of the ``n / chunk``
    consecutive chunks of ``chunk`` values, its first ``out_features`` entries, plus ``bias``."""

    def __init__(self, n: int, chunk: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        if n % chunk or out_features > chunk:
            raise ValueError(f"ChunkMean needs chunk | n and out_features <= chunk, got n={n}, chunk={chunk}, "
                             f"out_features={out_features}")
        self.n, self.chunk, self.out_features = n, chunk, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(*x.shape[:-1], self.n // self.chunk, self.chunk).mean(-2)[..., : self.out_features]
        return y if self.bias is None else y + self.bias


def load_2019_butterfly(
    state: Mapping[str, torch.Tensor] | str | Path,
    in_size: int,
    out_size: int | None = None,
    *,
    increasing_stride: bool = True,
    prefix: str = "",
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Rebuild a 2019 reference-code ``Butterfly`` layer as a twiddle module with the same outputs.

    Args:
        state: the layer's ``state_dict`` (or a model's, with ``prefix``), or a path to a ``torch.save``'d one.
        in_size: the layer's ``in_size`` (the twiddle only tells its padded size).
        out_size: the layer's ``out_size``; default: the bias's length (required when the layer had no bias).
        increasing_stride: the layer's ``increasing_stride`` (not stored in the checkpoint).
        prefix: key prefix of the layer in ``state`` (e.g. ``"features.3."``).
        dtype: real dtype of the result (default: the checkpoint's).

    Returns a :class:`~twiddle.Butterfly` (complex when the checkpoint is), or, for a layer that averaged its
    output chunks (see the module docstring), ``nn.Sequential(Butterfly(in_size, n, bias=False), ChunkMean)``.
    Shapes: ``(..., in_size) -> (..., out_size)``; complex layers take and return complex tensors (the 2019 code's
    trailing real/imaginary dimension becomes a complex dtype).
    """
    if isinstance(state, (str, Path)):
        path = Path(state)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a state_dict (a mapping of names to tensors) or a path, got "
                        f"{type(state).__name__}")
    key = prefix + "twiddle"
    if key not in state:
        found = sorted(k for k in state if k.endswith("twiddle"))
        raise KeyError(f"no {key!r} in the checkpoint; twiddle keys found: {found or 'none'}")
    in_size = positive_int(in_size, "in_size")
    twiddle, first_increasing = twiddle_from_2019(state[key], increasing_stride)
    complex_ = twiddle.is_complex()
    nstack, nblocks, n = twiddle.shape[0], twiddle.shape[1], 2 * twiddle.shape[3]
    if padded_size(in_size) != n:
        raise ValueError(f"in_size={in_size} pads to {padded_size(in_size)}, but the checkpoint's butterfly has "
                         f"n={n}")
    bias = state.get(prefix + "bias")
    if bias is not None and complex_:
        if bias.shape[-1:] != (2,):
            raise ValueError(f"a complex 2019 layer's bias has shape (out_size, 2), got {tuple(bias.shape)}")
        bias = torch.view_as_complex(bias.contiguous())
    if out_size is None:
        if bias is None:
            raise ValueError("the checkpoint has no bias: pass out_size")
        out_size = bias.shape[0]
    out_size = positive_int(out_size, "out_size")
    if bias is not None and bias.shape != (out_size,):
        raise ValueError(f"bias has {bias.shape[0]} entries but out_size={out_size}")
    if math.ceil(out_size / n) != nstack:
        raise ValueError(f"out_size={out_size} needs {math.ceil(out_size / n)} stacks of n={n}, the checkpoint has "
                         f"{nstack}")
    real_dtype = dtype or (twiddle.real.dtype if complex_ else twiddle.dtype)
    averaged = n // padded_size(out_size) >= 2
    layer = Butterfly(in_size, n if averaged else out_size, bias=bias is not None and not averaged, complex=complex_,
                      increasing_stride=first_increasing, nblocks=nblocks, init=twiddle, dtype=real_dtype)
    if not averaged:
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        return layer
    if bias is not None:
        bias = bias.to(layer.twiddle.dtype)
    return nn.Sequential(layer, ChunkMean(n, padded_size(out_size), out_size, bias))
