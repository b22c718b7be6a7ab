"""Twiddle tensor layout: the one place that knows shapes, sizes and padding rules.

A butterfly on ``n = 2**log_n`` points is stored as a twiddle tensor of shape

    (nstacks, nblocks, log_n, n // 2, 2, 2)

(the layout of the 2019 reference code, so its checkpoints load unchanged):

* ``nstacks`` independent butterflies, all fed the same (zero-padded) input, whose outputs are concatenated;
  used when the output is wider than ``n``.
* ``nblocks`` butterflies chained one after the other, alternating stride direction
  (``nblocks=2`` is the "kaleidoscope" B·B*).
* ``log_n`` factors per block.  ``twiddle[k, b, f]`` is the ``f``-th factor *applied* in block ``b``; its stride
  is ``2**f`` when the block runs with increasing stride and ``2**(log_n - 1 - f)`` otherwise.
* ``n // 2`` 2×2 blocks per factor.  Block ``i`` of a factor with stride ``s`` acts on positions
  ``p = 2 * (i - i % s) + i % s`` and ``p + s``, mapping ``(x[p], x[p+s])`` to
  ``(t[0,0] x[p] + t[0,1] x[p+s], t[1,0] x[p] + t[1,1] x[p+s])``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "ceil_log2",
    "is_power_of_two",
    "padded_size",
    "num_stacks",
    "twiddle_shape",
    "factor_stride",
    "block_directions",
    "pair_positions",
    "check_twiddle",
]


def ceil_log2(m: int) -> int:
    """Smallest ``L >= 0`` with ``2**L >= m`` (``m >= 1``)."""
    if m < 1:
        raise ValueError(f"expected a positive size, got {m}")
    return (m - 1).bit_length()


def is_power_of_two(n: int) -> bool:
    """Whether ``n`` is ``2**k`` for some ``k >= 0``."""
    return n >= 1 and n & (n - 1) == 0


def padded_size(in_features: int) -> int:
    """The butterfly size ``n = 2**ceil(log2(in_features))`` that ``in_features`` inputs are zero-padded to."""
    return 1 << ceil_log2(in_features)


def num_stacks(out_features: int, n: int) -> int:
    """Number of size-``n`` butterflies stacked to produce ``out_features`` outputs: ``ceil(out / n)``."""
    return max(1, math.ceil(out_features / n))


def twiddle_shape(nstacks: int, nblocks: int, n: int) -> tuple[int, ...]:
    """Shape ``(nstacks, nblocks, log2 n, n // 2, 2, 2)`` of the twiddle tensor of a size-``n`` butterfly."""
    return (nstacks, nblocks, ceil_log2(n), n // 2, 2, 2)


def factor_stride(factor: int, log_n: int, increasing: bool) -> int:
    """Stride of the ``factor``-th applied factor of a block running in the given direction."""
    return 1 << (factor if increasing else log_n - 1 - factor)


def block_directions(nblocks: int, increasing_stride: bool) -> list[bool]:
    """Stride direction (True = increasing) of each chained block: they alternate, starting as given."""
    return [increasing_stride if b % 2 == 0 else not increasing_stride for b in range(nblocks)]


def pair_positions(n: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``(p, p + stride)`` touched by each of the ``n // 2`` blocks of a factor with this stride."""
    i = torch.arange(n // 2)
    p = 2 * (i - i % stride) + i % stride
    return p, p + stride


def check_twiddle(twiddle: torch.Tensor, name: str = "twiddle") -> tuple[int, int, int, int]:
    """Validate a twiddle tensor's shape; return ``(nstacks, nblocks, log_n, n)``.

    Raises ValueError naming ``name`` if the shape is not ``(nstacks, nblocks, log_n, 2**log_n // 2, 2, 2)``.
    """
    if not isinstance(twiddle, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(twiddle).__name__}")
    shape = tuple(twiddle.shape)
    if len(shape) != 6 or shape[-2:] != (2, 2):
        raise ValueError(f"{name} must have shape (nstacks, nblocks, log_n, n // 2, 2, 2), got {shape}")
    nstacks, nblocks, log_n, half = shape[:4]
    n = 1 << log_n
    if half != n // 2:
        raise ValueError(
            f"{name} has log_n={log_n} factors, so its 4th dimension must be n // 2 = {n // 2}, got {half}"
        )
    if nstacks < 1 or nblocks < 1:
        raise ValueError(f"{name} needs nstacks >= 1 and nblocks >= 1, got shape {shape}")
    return nstacks, nblocks, log_n, n
