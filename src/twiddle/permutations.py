"""Permutations: bit reversal, inverses, and a fixed-permutation module.

Convention everywhere in twiddle: a permutation ``perm`` (a 1-D integer tensor holding ``0..n-1`` once each)
acts on a vector by gathering, ``y[i] = x[perm[i]]``; its matrix ``P`` has ``P[i, perm[i]] = 1`` so ``y = P x``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._layout import ceil_log2
from ._torchscript import NotScriptable

__all__ = [
    "bitreversal_permutation",
    "bp_permutation",
    "named_permutation",
    "PERMUTATION_NAMES",
    "invert_permutation",
    "check_permutation",
    "FixedPermutation",
    "gather_last",
]

# The 8 permutations of the BP model (Dao et al. 2019) with the choices shared across levels, by their 3-bit
# code (separate even/odd, reverse first half, reverse second half); bp000 is the identity, bp100 bit reversal.
PERMUTATION_NAMES = ("identity", "bitrev") + tuple(f"bp{a}{b}{c}" for a in "01" for b in "01" for c in "01")


def bitreversal_permutation(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The bit-reversal permutation of ``n = 2**L`` points: ``perm[i]`` is ``i`` with its ``L`` bits reversed.

    It is an involution (its own inverse). ``DFT_n = B · P_bitrev`` with ``B`` a butterfly (Cooley–Tukey).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"n must be a positive power of two, got {n!r}")
    log_n = ceil_log2(n)
    i = torch.arange(n, device=device)
    rev = torch.zeros_like(i)
    for bit in range(log_n):
        rev |= ((i >> bit) & 1) << (log_n - 1 - bit)
    return rev


def bp_permutation(n: int, separate: bool, reverse_first: bool, reverse_second: bool) -> torch.Tensor:
    """One of the 8 permutations of the 2019 paper's BP model (choices shared by every level).

    Level by level, from the whole vector down to blocks of 4 (the 2-element level is the identity), each block
    is (1) optionally split into its even then its odd entries, then (2) its first half and (3) its second half
    are optionally reversed. ``(True, False, False)`` is bit reversal. Gather convention: ``y = x[perm]``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"n must be a positive power of two, got {n!r}")
    perm = torch.arange(n)
    size = n
    while size >= 4:
        blocks = perm.view(-1, size)
        if separate:
            blocks = torch.cat((blocks[:, 0::2], blocks[:, 1::2]), dim=1)
        half = size // 2
        if reverse_first:
            blocks = torch.cat((blocks[:, :half].flip(1), blocks[:, half:]), dim=1)
        if reverse_second:
            blocks = torch.cat((blocks[:, :half], blocks[:, half:].flip(1)), dim=1)
        perm = blocks.reshape(n)
        size = half
    return perm.clone()


def named_permutation(name: str, n: int) -> torch.Tensor:
    """A permutation by name: ``identity``, ``bitrev`` or ``bpXYZ`` (see :func:`bp_permutation`)."""
    if name == "identity":
        return torch.arange(n)
    if name == "bitrev":
        return bitreversal_permutation(n)
    if name in PERMUTATION_NAMES and name.startswith("bp"):
        a, b, c = (ch == "1" for ch in name[2:])
        return bp_permutation(n, a, b, c)
    raise ValueError(f"unknown permutation {name!r}; expected one of {PERMUTATION_NAMES}")


def check_permutation(perm: torch.Tensor | Sequence[int], name: str = "perm") -> torch.Tensor:
    """Return ``perm`` as a 1-D int64 tensor, raising ValueError naming ``name`` unless it holds 0..n-1 once each."""
    if isinstance(perm, torch.Tensor) and perm.is_meta:
        raise ValueError(f"{name} is a meta tensor: it has no values (make it outside the meta-device context)")
    t = perm if isinstance(perm, torch.Tensor) else torch.as_tensor(perm, device="cpu")  # (whatever the default)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of indices, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    t = t.to(torch.long)
    n = t.numel()
    seen = torch.zeros(n, dtype=torch.bool, device=t.device)
    if bool(((t < 0) | (t >= n)).any()):
        raise ValueError(f"{name} must hold each of 0..{n - 1} exactly once; found values outside that range")
    seen[t] = True
    if not bool(seen.all()):
        raise ValueError(f"{name} must hold each of 0..{n - 1} exactly once; some indices repeat")
    return t


def invert_permutation(perm: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """The inverse permutation ``inv`` with ``inv[perm[i]] = i``."""
    p = check_permutation(perm)
    inv = torch.empty_like(p)
    inv[p] = torch.arange(p.numel(), device=p.device)
    return inv


def gather_last(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[..., index]`` for a 1-D ``index``: ``(..., n) -> (..., len(index))``.

    Uses ``torch.gather`` with a stride-0 expanded index, which torch vectorizes for every dtype
    (``index_select`` along the last dimension is 3-4x slower for float64 and complex tensors on CPU).
    """
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    out = torch.gather(flat, 1, index.expand(flat.shape[0], index.numel()))
    return out.reshape(*lead, index.numel())


class FixedPermutation(NotScriptable, nn.Module):
    """A fixed (non-learnable) permutation of the last dimension: ``y[..., i] = x[..., perm[i]]``.

    The permutation is a buffer, so it is saved in the state_dict and follows ``.to(device)``.

    Args:
        perm: a permutation of ``0..n-1`` (tensor or sequence).
    """

    perm: torch.Tensor

    def __init__(self, perm: torch.Tensor | Sequence[int]) -> None:
        super().__init__()
        checked = check_permutation(perm)
        self._initial = checked.to("cpu", copy=True)  # (not a buffer: for reset_parameters)
        self.register_buffer("perm", checked.clone())

    def reset_parameters(self) -> None:
        """Write the permutation given to the constructor back into ``perm`` (in place: also after ``to_empty``,
        which leaves a module's buffers uninitialized)."""
        with torch.no_grad():
            self.perm.copy_(self._initial)

    @property
    def size(self) -> int:
        """Number of points ``n`` it permutes."""
        return self.perm.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., n) -> (..., n)``, gathering ``x[..., perm]``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.size:
            raise ValueError(
                f"FixedPermutation expected x with last dimension {self.size}, got shape {tuple(x.shape)}"
            )
        return gather_last(x, self.perm)

    def inverse(self) -> FixedPermutation:
        """The inverse permutation as a new module."""
        return FixedPermutation(invert_permutation(self.perm))

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``n×n`` permutation matrix ``P`` with ``forward(x) == x @ P.T``."""
        n = self.size
        P = torch.zeros(n, n, dtype=dtype, device=self.perm.device)
        P[torch.arange(n, device=self.perm.device), self.perm] = 1
        return P

    def extra_repr(self) -> str:
        return f"size={self.size}"
