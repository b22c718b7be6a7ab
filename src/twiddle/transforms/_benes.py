"""Any permutation as an exact kaleidoscope butterfly ``B·B*`` (``nblocks=2``), by Beneš routing.

A Beneš network on ``n = 2^L`` points is a stage of 2×2 switches at stride ``n/2``, two Beneš networks on the two
halves, and another stage at stride ``n/2``. Unrolled, its strides are ``n/2, …, 2, 1, 2, …, n/2``: exactly a
decreasing-stride butterfly followed by an increasing one whose stride-1 factor is the identity. Every switch is
``[[1, 0], [0, 1]]`` or ``[[0, 1], [1, 0]]``; the looping algorithm sets them for any permutation (Beneš 1964,
Waksman 1968), in ``O(n log n)`` time.
"""

from __future__ import annotations

import torch

from .._layout import ceil_log2, padded_size
from ..butterfly import Butterfly
from ..permutations import check_permutation
from ._modules import Transform, builds_on_cpu, real_dtype

__all__ = ["permutation_to_butterfly", "benes_twiddle"]


def _block_index(p: int, stride: int) -> int:
    """Index of the 2×2 block of a stride-``stride`` factor whose pair starts at position ``p``."""
    return (p // (2 * stride)) * stride + p % stride


def benes_twiddle(perm: list[int]) -> torch.Tensor:
    """Twiddles ``(1, 2, L, n/2, 2, 2)`` (float64, entries 0/1) of ``Butterfly(n, n, nblocks=2,
    increasing_stride=False)`` with ``y[i] = x[perm[i]]``; ``n = len(perm)`` a power of two ≥ 2."""
    n = len(perm)
    log_n = ceil_log2(n)
    swap = torch.zeros(2, log_n, n // 2, dtype=torch.bool)  # which switches cross

    def route(local: list[int], offset: int) -> None:
        size = len(local)
        half = size // 2
        depth = log_n - ceil_log2(size)  # factor index of this size's first stage in block 0
        if size == 2:
            swap[0, log_n - 1, _block_index(offset, 1)] = local[0] == 1
            return
        dst = [0] * size
        for out, src in enumerate(local):
            dst[src] = out
        color = [-1] * size  # 0: routed through the upper half-network, 1: the lower
        for start in range(size):
            j = start
            while color[j] < 0:
                color[j] = 0
                partner = (j + half) % size  # the other input of j's input switch
                color[partner] = 1
                out = dst[partner]
                j = local[(out + half) % size]  # shares partner's output switch, so it takes the upper half
        upper, lower = [0] * half, [0] * half
        for a in range(half):  # input switches: cross when input a goes down
            swap[0, depth, _block_index(offset + a, half)] = color[a] == 1
        for b in range(half):  # output switches: cross when output b comes from the lower half
            src_top, src_bottom = local[b], local[b + half]
            swap[1, log_n - depth - 1, _block_index(offset + b, half)] = color[src_top] == 1
            up, down = (src_top, src_bottom) if color[src_top] == 0 else (src_bottom, src_top)
            upper[b], lower[b] = up % half, down % half
        route(upper, offset)
        route(lower, offset + half)

    route(list(perm), 0)
    straight = torch.eye(2, dtype=torch.float64)
    crossed = straight.flip(0)
    t = torch.where(swap[..., None, None], crossed, straight)
    return t.unsqueeze(0)


@builds_on_cpu
def permutation_to_butterfly(
    perm: torch.Tensor | list[int],
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """Any permutation ``y[i] = x[perm[i]]`` as one exact kaleidoscope butterfly (``nblocks=2``), the
    kaleidoscope paper's result, built by Beneš routing.

    ``n`` not a power of two: the permutation is extended by fixed points to ``2^⌈log2 n⌉`` (the butterfly pads
    and truncates). Every 2×2 block is the identity or a swap, so the result is exact in any precision; with
    ``trainable=True`` it is a starting point for learning.

    Shapes: ``(..., n) -> (..., n)`` real (a complex input is permuted as real and imaginary parts).
    """
    p = check_permutation(perm, "perm").cpu()
    n = p.numel()
    size = padded_size(n)
    full = torch.cat([p, torch.arange(n, size)]).tolist()
    if size == 1:
        twiddle = torch.empty(1, 2, 0, 0, 2, 2, dtype=torch.float64)
    else:
        twiddle = benes_twiddle(full)
    module = Butterfly(
        n, n, bias=False, increasing_stride=False, nblocks=2, init=twiddle, dtype=real_dtype(dtype), device=device
    )
    return Transform("permutation", [module], (n,), (n,), real=True, trainable=trainable)
