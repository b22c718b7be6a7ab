"""Truncated butterfly networks (Ailon, Leibovitz, Nair, UAI 2021) and the fast Johnson–Lindenstrauss transform.

A truncated butterfly ``J: R^in → R^ℓ`` is a butterfly on the input (zero-padded to ``n = 2^⌈log2 in⌉``) followed
by a fixed, seeded, uniformly random subset of ``ℓ ≤ n`` of its outputs. Only the weights on a path to a kept
output matter; there are at most ``2n log2 ℓ + 6n`` of them (:meth:`TruncatedButterfly.alive_mask`).

:class:`TruncatedButterflyLinear` replaces a dense ``W (out × in)`` by ``x ↦ J2ᵀ W̃ J1 x + b`` with ``J1: in → k1``
and ``J2: out → k2`` truncated butterflies and ``W̃`` dense ``k2 × k1`` (the paper's default ``k = ⌈log2 n⌉``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._layout import ceil_log2, factor_stride, padded_size, pair_positions
from ._torchscript import NotScriptable
from ._validate import positive_int, seed_int
from .butterfly import Butterfly
from .ops import butterfly_multiply
from .permutations import gather_last

__all__ = [
    "TruncatedButterfly",
    "TruncatedButterflyTranspose",
    "TruncatedButterflyLinear",
    "fjlt",
    "fjlt_failure_bound",
]

TRUNCATED_INITS = ("fjlt", "ortho", "randn")


class TruncatedButterfly(NotScriptable, nn.Module):
    r"""``x ↦ (B · pad(x))[kept]``: a butterfly then a fixed random subset of its outputs.

    Args:
        in_features: input size (zero-padded to ``n = 2^⌈log2 in_features⌉``).
        out_features: ``ℓ ≤ n``, how many outputs are kept.
        seed: draws the kept subset (uniform, without replacement; stored sorted in the ``kept`` buffer, so it
            survives ``state_dict`` save/load) and the random parts of the init.
        init: ``"fjlt"`` (the paper's: every block ``[[1, 1], [1, -1]]/√2``, a random ±1 diagonal folded into the
            first factor, the whole scaled by ``√(n/ℓ)`` so that ``E‖Jx‖² = ‖x‖²``: exactly the FJLT
            distribution), ``"ortho"`` (Haar-random orthogonal 2×2 blocks, same scaling), ``"randn"`` (Gaussian,
            the variance of :class:`~twiddle.Butterfly`'s ``randn``).
        prune: zero the weights that reach no kept output (they never affect the output and get zero gradient;
            pruning makes that explicit in the stored tensor). See :meth:`alive_mask`.
        device, dtype: factory kwargs (real dtypes).

    Shapes: ``(..., in_features) -> (..., out_features)``. :meth:`transpose` gives the adjoint ``ℓ → in``.
    """

    kept: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        seed: int = 0,
        init: str = "fjlt",
        prune: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.seed = seed_int(seed)
        self.n = padded_size(self.in_features)
        if self.out_features > self.n:
            raise ValueError(
                f"out_features (ℓ={self.out_features}) must be at most n = {self.n} (in_features={in_features} "
                f"padded to a power of two): a truncated butterfly keeps a subset of its n outputs"
            )
        if init not in TRUNCATED_INITS:
            raise ValueError(f"init must be one of {TRUNCATED_INITS}, got {init!r}")
        self.init = init
        self.pruned = bool(prune)
        self.register_buffer("kept", torch.empty(self.out_features, dtype=torch.long, device=device))
        with torch.random.fork_rng(devices=[]):  # (the global random state is left as it was)
            self.butterfly = Butterfly(self.in_features, self.n, bias=False, init=init, device=device, dtype=dtype)
        self.butterfly.display_name = "TruncatedButterfly"
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Set the kept subset and the twiddles to what the constructor draws from ``seed`` (the same values on
        every call, whatever the global random state; after ``to_empty()`` from the meta device too), pruned if
        the module was made with ``prune=True``."""
        gen = torch.Generator().manual_seed(self.seed)
        self.kept.copy_(torch.randperm(self.n, generator=gen)[: self.out_features].sort().values)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.butterfly.reset_parameters()
        if self.init != "randn" and self.butterfly.log_n > 0:  # (n = 1: nothing to scale, n / ℓ = 1)
            self.butterfly.twiddle[:, 0, 0] *= math.sqrt(self.n / self.out_features)
        if self.pruned and not self.twiddle.is_meta:  # (on the meta device there are no values to prune)
            self.prune_()

    @property
    def twiddle(self) -> nn.Parameter:
        """The butterfly's twiddle ``(1, 1, log2 n, n/2, 2, 2)``."""
        return self.butterfly.twiddle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gather_last(self.butterfly(x), self.kept)

    def apply_transpose(self, y: torch.Tensor) -> torch.Tensor:
        """``Jᵀ y``: ``(..., out_features) -> (..., in_features)`` (what :meth:`transpose`'s module computes)."""
        if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[-1] != self.out_features:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"the transpose of a TruncatedButterfly({self.in_features}, {self.out_features}) expects inputs "
                f"with last dimension {self.out_features}, got {got}"
            )
        full = y.new_zeros(*y.shape[:-1], self.n).index_copy(-1, self.kept, y)
        return butterfly_multiply(self.twiddle, full, True, out_size=self.in_features, transpose=True)

    def transpose(self) -> TruncatedButterflyTranspose:
        """The adjoint map ``ℓ → in_features`` as a module sharing this one's parameters:
        ``⟨J x, y⟩ = ⟨x, Jᵀ y⟩``."""
        return TruncatedButterflyTranspose(self)

    def to_dense(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` matrix ``J`` with ``forward(x) == x @ J.T``."""
        return self.butterfly.to_dense()[self.kept]

    def alive_mask(self) -> torch.Tensor:
        """Boolean mask shaped like :attr:`twiddle`: the entries on some path to a kept output.

        Walking back from the last factor, a block row is alive when its output position is alive, and a
        position is alive at a factor's input when some alive row of its block reads it (both positions of a
        block with an alive row). At most ``2n log2 ℓ + 6n`` entries are alive.
        """
        log_n = ceil_log2(self.n)
        mask = torch.zeros(self.twiddle.shape, dtype=torch.bool)
        alive = torch.zeros(self.n, dtype=torch.bool)
        alive[self.kept.cpu()] = True
        for f in reversed(range(log_n)):
            p, q = pair_positions(self.n, factor_stride(f, log_n, True))
            rows = torch.stack([alive[p], alive[q]], dim=-1)  # (n/2, 2): output row alive
            mask[0, 0, f] = rows.unsqueeze(-1).expand(-1, 2, 2)
            block_alive = rows.any(dim=-1)
            alive = torch.zeros(self.n, dtype=torch.bool)
            alive[p[block_alive]] = True
            alive[q[block_alive]] = True
        return mask.to(self.twiddle.device)

    def alive_parameters(self) -> int:
        """How many weights reach a kept output (the paper's bound: ``2n log2 ℓ + 6n``)."""
        return int(self.alive_mask().sum())

    def prune_(self) -> TruncatedButterfly:
        """Zero the weights that reach no kept output (in place; :meth:`reset_parameters` prunes again from then
        on); returns ``self``."""
        with torch.no_grad():
            self.twiddle.mul_(self.alive_mask().to(self.twiddle.dtype))
        self.pruned = True
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, n={self.n}, seed={self.seed}, "
            f"init={self.init!r}, alive_parameters={self.alive_parameters()}"
        )


class TruncatedButterflyTranspose(NotScriptable, nn.Module):
    """The adjoint ``Jᵀ: R^ℓ → R^in`` of a :class:`TruncatedButterfly` ``J``, sharing its parameters: scatter the
    ``ℓ`` values to the kept positions of an ``n``-vector, apply ``Bᵀ``, keep the first ``in_features``.

    Shapes: ``(..., ℓ) -> (..., in_features)``."""

    def __init__(self, source: TruncatedButterfly) -> None:
        super().__init__()
        self.source = source
        self.in_features = source.out_features
        self.out_features = source.in_features

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.source.apply_transpose(y)

    def to_dense(self) -> torch.Tensor:
        """The ``(in_features of J, ℓ)`` matrix ``Jᵀ``."""
        return self.source.to_dense().T

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def fjlt(
    n: int,
    k: int,
    *,
    seed: int = 0,
    trainable: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> TruncatedButterfly:
    r"""The fast Johnson–Lindenstrauss transform ``J = √(N/k) · S H D`` as a (fixed) truncated butterfly:
    ``D`` random signs, ``H`` the orthonormal Hadamard matrix of size ``N = 2^⌈log2 n⌉`` (input zero-padded),
    ``S`` a uniformly random choice of ``k`` of the ``N`` coordinates.

    ``E‖Jx‖² = ‖x‖²`` for every ``x``. Guarantee (for any fixed ``x``, over the draw of ``D`` and ``S``; Chebyshev
    for sampling without replacement after the Hadamard step spreads ``x``, whose squared entries are all
    ``≤ 2 ln(2N/δ)/N`` of ``‖x‖²`` with probability ``≥ 1 − δ``):

    ``P(|‖Jx‖² / ‖x‖² − 1| ≥ ε) ≤ δ + (2 ln(2N/δ) − 1) (N − k) / (k (N − 1) ε²)``.

    Args:
        n: input size. k: output size (``≤ N``). seed: the random signs and subset.
        trainable: learnable twiddles (the paper's starting point for a learned truncated butterfly).

    Shapes: ``(..., n) -> (..., k)``.
    """
    module = TruncatedButterfly(n, k, seed=seed, init="fjlt", device=device, dtype=dtype)
    module.requires_grad_(trainable)
    return module


def fjlt_failure_bound(n: int, k: int, eps: float, delta: float) -> float:
    """The right-hand side of :func:`fjlt`'s guarantee: an upper bound on ``P(|‖Jx‖²/‖x‖² − 1| ≥ ε)``."""
    big_n = padded_size(n)
    return delta + (2 * math.log(2 * big_n / delta) - 1) * (big_n - k) / (k * max(big_n - 1, 1) * eps**2)


class TruncatedButterflyLinear(NotScriptable, nn.Module):
    r"""A dense-layer replacement ``x ↦ J2ᵀ W̃ J1 x + b`` (Ailon et al. 2021), drop-in for ``nn.Linear``.

    ``J1: in_features → k_in`` and ``J2: out_features → k_out`` are :class:`TruncatedButterfly` networks (FJLT-
    initialized, learnable), ``W̃`` a dense ``k_out × k_in`` matrix (``nn.Linear``'s init), ``b`` a bias.
    Parameters: about ``2 n1 log2 n1 + 2 n2 log2 n2 + k_in·k_out + out`` instead of ``in·out + out``.

    Args:
        in_features, out_features: as ``nn.Linear``. bias: learn ``b``.
        k_in, k_out: the inner widths (default ``⌈log2 n⌉`` of each side, at least 1, the paper's choice).
        seed: seeds ``J1`` (``seed``) and ``J2`` (``seed + 1``). init: the truncated butterflies' init.

    Shapes: ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        k_in: int | None = None,
        k_out: int | None = None,
        seed: int = 0,
        init: str = "fjlt",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        seed = seed_int(seed)
        self.k_in = max(1, ceil_log2(self.in_features)) if k_in is None else positive_int(k_in, "k_in")
        self.k_out = max(1, ceil_log2(self.out_features)) if k_out is None else positive_int(k_out, "k_out")
        self.j_in = TruncatedButterfly(in_features, self.k_in, seed=seed, init=init, device=device, dtype=dtype)
        self.j_out = TruncatedButterfly(out_features, self.k_out, seed=seed + 1, init=init, device=device, dtype=dtype)
        self.inner = nn.Linear(self.k_in, self.k_out, bias=False, device=device, dtype=dtype)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self._reset_bias()

    def reset_parameters(self) -> None:
        """Re-initialize as the constructor does: ``J1`` and ``J2`` from their seeds, ``W̃`` and the bias as
        ``nn.Linear`` draws them (from the global random state)."""
        self.j_in.reset_parameters()
        self.j_out.reset_parameters()
        self.inner.reset_parameters()
        self._reset_bias()

    def _reset_bias(self) -> None:
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"TruncatedButterflyLinear expected input with last dimension {self.in_features}, got {got}"
            )
        y = self.j_out.apply_transpose(self.inner(self.j_in(x)))
        return y if self.bias is None else y + self.bias

    def to_dense(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` matrix ``J2ᵀ W̃ J1``."""
        return self.j_out.to_dense().T @ self.inner.weight @ self.j_in.to_dense()

    @torch.no_grad()
    def fit_dense_(self, weight: torch.Tensor) -> TruncatedButterflyLinear:
        """Set ``W̃`` to the least-squares fit ``argmin ‖J2ᵀ W̃ J1 − W‖_F = (J2ᵀ)⁺ W J1⁺`` for the current
        ``J1``, ``J2`` (in place); returns ``self``."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"weight must have shape ({self.out_features}, {self.in_features}), got {tuple(weight.shape)}"
            )
        j1 = self.j_in.to_dense().double()
        j2t = self.j_out.to_dense().T.double()
        w = weight.detach().to(device=j1.device, dtype=torch.float64)
        fit = torch.linalg.pinv(j2t) @ w @ torch.linalg.pinv(j1)
        self.inner.weight.copy_(fit.to(self.inner.weight.dtype))
        return self

    def extra_repr(self) -> str:
        structured = sum(p.numel() for p in self.parameters())
        dense = self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, k_in={self.k_in}, "
            f"k_out={self.k_out}, bias={self.bias is not None}, params={structured} (dense {dense})"
        )
