"""Encoder–decoder with a truncated-butterfly front end (Ailon, Leibovitz, Nair 2021) and its baselines.

Model ``Ŷ = D E B X`` (here with samples as rows: ``ŷ = D(E(B(x)))``): ``B`` a truncated butterfly ``n → ℓ``,
``E`` dense ``ℓ → k``, ``D`` dense ``k → m``; loss ``‖Y − Ŷ‖²_F``. For a fixed ``B`` every local minimum in
``(D, E)`` is global. The paper's two-phase schedule trains ``D, E`` with ``B`` frozen at an FJLT draw, then all
three. Baselines: PCA, ``Δ_k = ‖X − X_k‖²_F`` (the optimum for any rank-``k`` linear autoencoder), and FJLT+PCA,
the optimal ``D, E`` for ``B`` a fixed FJLT (closed form).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ._torchscript import NotScriptable
from ._validate import positive_int, require_finite
from .sketch import low_rank_in_rowspace
from .truncated import TruncatedButterfly, fjlt

__all__ = ["ButterflyAutoencoder", "pca_loss", "fjlt_pca_loss", "fit_autoencoder"]


class ButterflyAutoencoder(NotScriptable, nn.Module):
    """``x ↦ D E B x``: a truncated butterfly ``B: n → ℓ``, then dense ``E: ℓ → k`` and ``D: k → m`` (no biases).

    Args:
        n: input size. ell: ``ℓ``, the butterfly's kept outputs (``≤`` the padded ``n``). k: the bottleneck rank.
        m: output size (default ``n``: an autoencoder). seed: the butterfly's kept subset and FJLT draw.
        init: the butterfly's init (``"fjlt"``, the paper's). device, dtype: of the parameters (as ``nn.Linear``;
        the dense parts, like ``nn.Linear``, take inputs of their dtype only).

    Shapes: ``(..., n) -> (..., m)``.
    """

    def __init__(self, n: int, ell: int, k: int, m: int | None = None, *, seed: int = 0, init: str = "fjlt",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.n, self.ell, self.k = positive_int(n, "n"), positive_int(ell, "ell"), positive_int(k, "k")
        self.m = self.n if m is None else positive_int(m, "m")
        if self.k > self.ell:
            raise ValueError(f"k must be at most ell={self.ell} (the bottleneck after the butterfly), got {k}")
        factory = {"device": device, "dtype": dtype}
        self.butterfly = TruncatedButterfly(n, ell, seed=seed, init=init, **factory)
        self.encoder = nn.Linear(self.ell, self.k, bias=False, **factory)
        self.decoder = nn.Linear(self.k, self.m, bias=False, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(self.butterfly(x)))

    def freeze_butterfly(self) -> ButterflyAutoencoder:
        """Phase one of the paper's schedule: stop training ``B``."""
        self.butterfly.requires_grad_(False)
        return self

    def unfreeze_butterfly(self) -> ButterflyAutoencoder:
        """Phase two: train ``B`` together with ``D`` and ``E``."""
        self.butterfly.requires_grad_(True)
        return self


def _check_samples(x: object, name: str = "X") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor (samples, features), got {got}")
    return require_finite(x, name)


def pca_loss(x: torch.Tensor, k: int) -> float:
    """``Δ_k = ‖X − X_k‖²_F = Σ_{i>k} σ_i²`` for ``x`` of shape ``(samples, n)``: the loss of the best rank-``k``
    linear autoencoder."""
    x = _check_samples(x)
    s = torch.linalg.svdvals(x.double())
    return float(s[positive_int(k, "k") :].pow(2).sum())


def fjlt_pca_loss(x: torch.Tensor, k: int, ell: int, *, seed: int = 0) -> float:
    """The loss of FJLT+PCA: ``B`` a fixed FJLT ``n → ℓ`` and the optimal rank-``k`` ``D E`` for it, i.e.
    ``‖X − [X Q]_k Qᵀ‖²_F`` with ``Q`` a basis of the span of ``B``'s outputs over the samples (columns of
    ``X`` as in the paper)."""
    x = _check_samples(x).double()
    b = fjlt(x.shape[1], ell, seed=seed, dtype=torch.float64)
    with torch.no_grad():
        cols = x.T  # (n, samples): the paper's X
        approx = low_rank_in_rowspace(cols, b(x).T, positive_int(k, "k"))
    return float((cols - approx).pow(2).sum())


def fit_autoencoder(
    model: ButterflyAutoencoder,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    steps: int = 2000,
    lr: float = 1e-2,
    two_phase: bool = True,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` on ``‖Y − model(X)‖²_F`` (``y`` defaults to ``x``) with Adam, full batch.

    ``two_phase``: the first half of the steps with the butterfly frozen (at its FJLT init), the second half
    with everything trained. Each phase starts a fresh Adam with a cosine learning-rate decay from ``lr`` to 0.
    Returns the loss per step.
    """
    x = _check_samples(x)
    y = x if y is None else _check_samples(y, "Y")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"X and Y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    steps = positive_int(steps, "steps")
    phases = [(steps // 2, True), (steps - steps // 2, False)] if two_phase else [(steps, False)]
    losses: list[float] = []
    bar = tqdm(total=steps, desc="fit autoencoder", disable=not progress, leave=False)
    for count, frozen in phases:
        model.freeze_butterfly() if frozen else model.unfreeze_butterfly()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(count, 1))
        for _ in range(count):
            loss = (y - model(x)).pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4g}", phase="B frozen" if frozen else "all")
    bar.close()
    model.unfreeze_butterfly()
    return losses
