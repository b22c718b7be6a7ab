"""Sketch-and-solve low-rank approximation with learned sketches (Ailon, Leibovitz, Nair 2021, §learned sketches).

For a data matrix ``X`` (``n × d``) and a sketch ``S`` (``ℓ × n``), ``B_k(X)`` is the best rank-``k`` approximation
of ``X`` whose rows lie in the row space of ``S X``: with ``Q`` an orthonormal basis of that row space
(``d × ℓ``), ``B_k(X) = [X Q]_k Qᵀ`` (``[·]_k``: truncated SVD). It is differentiable in ``S``, so ``S`` can be
learned on a training set by minimizing ``Σ_i ‖X_i − B_k(X_i)‖_F``. The test error is
``Err = E‖X − B_k(X)‖_F − E‖X − X_k‖_F`` (0 for a perfect sketch).

Sketch families (modules mapping ``(..., n, d) -> (..., ℓ, d)``, i.e. ``X ↦ S X``):
:class:`ButterflySketch` (a learned truncated butterfly), :class:`SparseSketch` (``nnz`` nonzeros per column at
fixed random rows; learned values, or fixed random signs = CountSketch via :func:`count_sketch`),
:class:`GaussianSketch` (fixed i.i.d. ``N(0, 1/ℓ)``).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from tqdm.auto import tqdm

from ._torchscript import NotScriptable
from ._validate import positive_int, require_finite, seed_int
from .truncated import TruncatedButterfly

__all__ = [
    "low_rank_in_rowspace",
    "sketch_low_rank",
    "best_rank_k_error",
    "sketch_error",
    "train_sketch",
    "ButterflySketch",
    "SparseSketch",
    "GaussianSketch",
    "count_sketch",
    "SKETCH_KINDS",
    "make_sketch",
]

SKETCH_KINDS = ("butterfly", "sparse", "countsketch", "gaussian")


def _check_data(x: object, n: int | None = None, name: str = "X", *, finite: bool = True) -> torch.Tensor:
    """``x`` as ``(..., n, d)`` data; ``finite`` also rejects NaN/Inf (off in module forwards, like nn.Linear)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (..., n, d), got {tuple(x.shape)}")
    if n is not None and x.shape[-2] != n:
        raise ValueError(f"{name} must have n = {n} rows (shape (..., {n}, d)), got {tuple(x.shape)}")
    return require_finite(x, name) if finite else x


def _check_k(k: object, limit: int) -> int:
    k = positive_int(k, "k")
    if k > limit:
        raise ValueError(f"k must be at most {limit} (the smaller side of X), got {k}")
    return k


def _jitter(t: torch.Tensor) -> torch.Tensor:
    """``t`` plus a fixed pseudo-random perturbation of relative size ``1e-6`` (same for every call)."""
    noise = torch.randn(t.shape[-2:], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scale = 1e-6 * t.detach().abs().mean().clamp_min(torch.finfo(t.dtype).tiny)
    return t + scale * noise.to(device=t.device, dtype=t.dtype)


def low_rank_in_rowspace(x: torch.Tensor, z: torch.Tensor, k: int) -> torch.Tensor:
    """Best rank-``k`` approximation of ``x`` (``(..., n, d)``) with rows in the row space of ``z``
    (``(..., ℓ, d)``): ``[x Q]_k Qᵀ`` with ``Q`` an orthonormal basis of ``z``'s row space. Differentiable.

    Rank-deficient inputs (a sketch with a zero row, images of low rank) make the QR's and the SVD's gradients
    undefined (zero or repeated singular values). ``z`` and ``x Q`` get a fixed perturbation of relative size
    ``1e-6`` so that they stay defined; the approximation moves by about that much.
    """
    q, _ = torch.linalg.qr(_jitter(z).transpose(-1, -2))
    xq = x @ q  # (..., n, min(d, ℓ))
    u, s, vh = torch.linalg.svd(_jitter(xq), full_matrices=False)
    k = min(k, s.shape[-1])
    return (u[..., :k] * s[..., None, :k]) @ vh[..., :k, :] @ q.transpose(-1, -2)


def sketch_low_rank(sketch: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """``B_k(X)``: the best rank-``k`` approximation of ``x`` (``(..., n, d)``) inside the row space of
    ``sketch(x)``."""
    x = _check_data(x)
    return low_rank_in_rowspace(x, sketch(x), _check_k(k, min(x.shape[-2:])))


def best_rank_k_error(x: torch.Tensor, k: int) -> torch.Tensor:
    """``‖X − X_k‖_F`` for each matrix of the batch ``(..., n, d)`` (the SVD optimum)."""
    x = _check_data(x)
    s = torch.linalg.svdvals(x)
    return s[..., _check_k(k, min(x.shape[-2:])) :].pow(2).sum(-1).sqrt()


def sketch_error(sketch: nn.Module, x: torch.Tensor, k: int) -> float:
    """The paper's test error ``Err = mean ‖X − B_k(X)‖_F − mean ‖X − X_k‖_F`` over the batch ``(N, n, d)``."""
    with torch.no_grad():
        approx = sketch_low_rank(sketch, x, k)
        return float((x - approx).flatten(-2).norm(dim=-1).mean() - best_rank_k_error(x, k).mean())


def train_sketch(
    sketch: nn.Module,
    train: torch.Tensor,
    k: int,
    *,
    steps: int = 500,
    lr: float = 1e-2,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Learn ``sketch``'s parameters by Adam on ``mean_i ‖X_i − B_k(X_i)‖_F`` over ``train`` (``(N, n, d)``),
    ``steps`` steps of mini-batches of ``batch_size`` (default all). Gradients are clipped to norm 10; a step
    whose gradient is not finite (near-equal singular values) is skipped, with a warning at the end. Returns the
    loss per step; shows a progress bar when ``progress``."""
    train = _check_data(train)
    if train.dim() != 3:
        raise ValueError(f"train must have shape (N, n, d), got {tuple(train.shape)}")
    steps = positive_int(steps, "steps")
    params = [p for p in sketch.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the sketch has no trainable parameters (a fixed sketch needs no training)")
    optimizer = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed_int(seed))
    size = train.shape[0] if batch_size is None else positive_int(batch_size, "batch_size")
    losses: list[float] = []
    skipped = 0
    bar = tqdm(range(steps), desc="train sketch", disable=not progress, leave=False)
    for _ in bar:
        batch = train if size >= train.shape[0] else train[torch.randperm(train.shape[0], generator=gen)[:size]]
        loss = (batch - sketch_low_rank(sketch, batch, k)).flatten(-2).norm(dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        # near-equal singular values make the SVD's gradient blow up; skip such steps instead of corrupting S
        if all(p.grad is None or torch.isfinite(p.grad).all() for p in params):
            torch.nn.utils.clip_grad_norm_(params, max_norm=10.0)
            optimizer.step()
        else:
            skipped += 1
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", skipped=skipped)
    if skipped:
        warnings.warn(f"train_sketch skipped {skipped} of {steps} steps with non-finite gradients", stacklevel=2)
    return losses


class ButterflySketch(NotScriptable, nn.Module):
    """``S X`` with ``S`` a learnable truncated butterfly ``n → ℓ`` (FJLT-initialized) applied to each column of
    ``X``. Shapes: ``(..., n, d) -> (..., ℓ, d)``."""

    def __init__(self, n: int, ell: int, *, seed: int = 0, init: str = "fjlt") -> None:
        super().__init__()
        self.n, self.ell = n, ell
        self.butterfly = TruncatedButterfly(n, ell, seed=seed, init=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_data(x, self.n, finite=False)
        return self.butterfly(x.transpose(-1, -2)).transpose(-1, -2)

    def to_dense(self) -> torch.Tensor:
        """The ``ℓ × n`` sketch matrix."""
        return self.butterfly.to_dense()


class SparseSketch(NotScriptable, nn.Module):
    """``S X`` with ``S`` (``ℓ × n``) holding ``nnz`` nonzeros per column at fixed, seeded, distinct random rows.

    Args:
        n, ell: sketch shape. nnz: nonzeros per column (1 is the paper's "learned sparse" baseline; more gives
            the "learned N nonzeros per column" family). learned: learn the values (else they stay at their
            initial random signs ``±1/√nnz`` — with ``nnz=1`` that is CountSketch). seed: rows and signs.

    Shapes: ``(..., n, d) -> (..., ℓ, d)``.
    """

    rows: torch.Tensor

    def __init__(self, n: int, ell: int, *, nnz: int = 1, learned: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.n, self.ell = positive_int(n, "n"), positive_int(ell, "ell")
        self.nnz = positive_int(nnz, "nnz")
        if self.nnz > self.ell:
            raise ValueError(f"nnz must be at most ell={self.ell} (distinct rows per column), got {nnz}")
        self.seed = seed_int(seed)
        self.register_buffer("rows", torch.empty(self.nnz, self.n, dtype=torch.long))  # (nnz, n)
        self.values = nn.Parameter(torch.empty(self.nnz, self.n), requires_grad=learned)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the rows and signs from ``seed`` again (computed on the CPU, copied in place: also fills a sketch
        made on the meta device once ``to_empty`` has given it storage)."""
        gen = torch.Generator().manual_seed(self.seed)
        with torch.device("cpu"):
            rows = torch.stack([torch.randperm(self.ell, generator=gen)[: self.nnz] for _ in range(self.n)], dim=1)
            signs = torch.randint(0, 2, (self.nnz, self.n), generator=gen).float() * 2 - 1
        with torch.no_grad():
            self.rows.copy_(rows)
            self.values.copy_(signs / math.sqrt(self.nnz))

    def to_dense(self) -> torch.Tensor:
        """The ``ℓ × n`` sketch matrix."""
        cols = torch.arange(self.n, device=self.rows.device).expand(self.nnz, -1)
        s = self.values.new_zeros(self.ell, self.n)
        return s.index_put((self.rows.reshape(-1), cols.reshape(-1)), self.values.reshape(-1), accumulate=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_data(x, self.n, finite=False)
        return self.to_dense().to(x.dtype) @ x


def count_sketch(n: int, ell: int, *, seed: int = 0) -> SparseSketch:
    """A random CountSketch: one ±1 per column at a random row, fixed."""
    return SparseSketch(n, ell, nnz=1, learned=False, seed=seed)


class GaussianSketch(NotScriptable, nn.Module):
    """``S X`` with ``S`` a fixed ``ℓ × n`` matrix of i.i.d. ``N(0, 1/ℓ)`` entries (seeded).
    Shapes: ``(..., n, d) -> (..., ℓ, d)``."""

    matrix: torch.Tensor

    def __init__(self, n: int, ell: int, *, seed: int = 0) -> None:
        super().__init__()
        self.n, self.ell = positive_int(n, "n"), positive_int(ell, "ell")
        self.seed = seed_int(seed)
        self.register_buffer("matrix", torch.empty(self.ell, self.n))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the matrix from ``seed`` again (on the CPU, copied in place; as
        :meth:`SparseSketch.reset_parameters`)."""
        gen = torch.Generator().manual_seed(self.seed)
        with torch.device("cpu"):
            matrix = torch.randn(self.ell, self.n, generator=gen) / math.sqrt(self.ell)
        with torch.no_grad():
            self.matrix.copy_(matrix)

    def to_dense(self) -> torch.Tensor:
        return self.matrix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_data(x, self.n, finite=False)
        return self.matrix.to(x.dtype) @ x


def make_sketch(kind: str, n: int, ell: int, *, seed: int = 0, nnz: int = 1) -> nn.Module:
    """A sketch of the given family: ``"butterfly"`` (learned), ``"sparse"`` (learned values, ``nnz`` per
    column), ``"countsketch"`` (random, fixed), ``"gaussian"`` (random, fixed)."""
    if kind == "butterfly":
        return ButterflySketch(n, ell, seed=seed)
    if kind == "sparse":
        return SparseSketch(n, ell, nnz=nnz, learned=True, seed=seed)
    if kind == "countsketch":
        return count_sketch(n, ell, seed=seed)
    if kind == "gaussian":
        return GaussianSketch(n, ell, seed=seed)
    raise ValueError(f"kind must be one of {SKETCH_KINDS}, got {kind!r}")
