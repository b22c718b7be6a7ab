"""Gradient factorization: the 2019 paper's algorithm (Dao et al., ICML 2019), restarts batched in one tensor.

Model ``BP``: a complex butterfly ``B`` (increasing stride) after a learnable relaxed permutation ``P``. The
relaxation has ``log2(n) - 1`` levels (blocks of size ``n, n/2, …, 4``; the 2-element level is the identity);
each level has three logits whose sigmoids ``p`` blend the identity with (1) separating even and odd entries,
(2) reversing the first half, (3) reversing the second half: ``x ← (1 - p) x + p · op(x)``. Thresholding the
logits at 0 gives a hard permutation.

Training (per the paper): loss = MSE of ``model(I)`` against the target (real targets compare the real part);
Adam with a log-uniform random learning rate per trial; every ``polish_every`` epochs the best trials' logits are
thresholded, the permutation frozen and the twiddles polished with L-BFGS; the search stops when a trial reaches
the target RMSE or the time budget runs out. All trials train together: every tensor has a leading trial
dimension, one Adam step updates every trial.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

__all__ = ["GradientConfig", "relaxed_permute", "hard_permutation", "fit_bp"]


@dataclass
class GradientConfig:
    """Settings of :func:`fit_bp` (defaults follow the paper where it gives them)."""

    trials: int = 16
    steps_per_epoch: int = 400
    max_epochs: int = 200
    polish_every: int = 5
    polish_top: int = 2
    polish_steps: int = 100  # L-BFGS iterations per polish
    lr_min: float = 1e-4
    lr_max: float = 0.5
    target_rmse: float = 1e-4
    time_budget: float = 600.0
    seed: int = 0
    # Adam steps see the target through `probes` fresh Gaussian vectors (an unbiased estimate of the MSE,
    # O(T probes n log n) a step) instead of the identity (O(T n^2 log n)); None: the identity, as in the paper,
    # which is what happens anyway while n <= probes. The L-BFGS polish always uses the identity.
    probes: int | None = 64


def _levels(n: int) -> list[int]:
    sizes, size = [], n
    while size >= 4:
        sizes.append(size)
        size //= 2
    return sizes


def relaxed_permute(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Apply the relaxed permutation. ``x``: ``(T, B, n)``; ``probs``: ``(T, levels, 3)`` in ``[0, 1]``."""
    T, B, n = x.shape
    for level, size in enumerate(_levels(n)):
        p = probs[:, level].reshape(T, 1, 1, 3, 1)
        xb = x.reshape(T, B, n // size, size)
        half = size // 2
        sep = torch.cat((xb[..., 0::2], xb[..., 1::2]), dim=-1)
        xb = xb + p[..., 0, :] * (sep - xb)
        rev_first = torch.cat((xb[..., :half].flip(-1), xb[..., half:]), dim=-1)
        xb = xb + p[..., 1, :] * (rev_first - xb)
        rev_second = torch.cat((xb[..., :half], xb[..., half:].flip(-1)), dim=-1)
        xb = xb + p[..., 2, :] * (rev_second - xb)
        x = xb.reshape(T, B, n)
    return x


def hard_permutation(logits: torch.Tensor, n: int) -> torch.Tensor:
    """Index permutations ``(T, n)`` (gather convention) of thresholded logits ``(T, levels, 3)``."""
    probs = (logits > 0).to(torch.float64)
    idx = torch.arange(n, dtype=torch.float64).expand(logits.shape[0], 1, n)
    return relaxed_permute(idx, probs).round().long().squeeze(1)


def _butterfly_trials(tw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x (T, B, n)`` through per-trial butterflies ``tw (T, L, n/2, 2, 2)`` (increasing stride)."""
    T, B, n = x.shape
    for f in range(tw.shape[1]):
        s = 1 << f
        g = n // (2 * s)
        xv = x.reshape(T, B, g, 2, s)
        t = tw[:, f].reshape(T, 1, g, s, 2, 2)
        x0, x1 = xv[:, :, :, 0, :], xv[:, :, :, 1, :]
        y0 = t[..., 0, 0] * x0 + t[..., 0, 1] * x1
        y1 = t[..., 1, 0] * x0 + t[..., 1, 1] * x1
        x = torch.stack((y0, y1), dim=3).reshape(T, B, n)
    return x


def _per_trial_mse(out: torch.Tensor, target_t: torch.Tensor, real_target: bool) -> torch.Tensor:
    diff = (out.real - target_t) if real_target else (out - target_t)
    return diff.abs().pow(2).mean(dim=(1, 2))


def _haar_unitary(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    g = torch.complex(torch.randn(shape, generator=generator, dtype=torch.float64),
                      torch.randn(shape, generator=generator, dtype=torch.float64))
    q, r = torch.linalg.qr(g)
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    return q * (d / d.abs()).unsqueeze(-2)


def _polish(tw: torch.Tensor, perm: torch.Tensor, target_t: torch.Tensor, real_target: bool, steps: int,
            deadline: float) -> tuple[torch.Tensor, float]:
    """L-BFGS on one trial's twiddles with its permutation frozen; returns (twiddles, mse)."""
    n = perm.numel()
    eye = torch.eye(n, dtype=torch.complex128)[:, perm].unsqueeze(0)  # rows e_j permuted: (P e_j)
    param = torch.view_as_real(tw.detach().clone()).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([param], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        out = _butterfly_trials(torch.view_as_complex(param).unsqueeze(0), eye)
        loss = _per_trial_mse(out, target_t.unsqueeze(0), real_target).sum()
        loss.backward()
        param.grad = param.grad.contiguous()  # L-BFGS flattens gradients with view()
        return loss

    if time.perf_counter() < deadline:
        opt.step(closure)
    with torch.no_grad():
        out = _butterfly_trials(torch.view_as_complex(param).unsqueeze(0), eye)
        mse = float(_per_trial_mse(out, target_t.unsqueeze(0), real_target))
    return torch.view_as_complex(param.detach()).clone(), mse


def fit_bp(target: torch.Tensor, config: GradientConfig, progress=None) -> dict:
    """Learn ``target ≈ B P`` by gradient descent. Returns a dict with ``twiddle`` ``(L, n/2, 2, 2)`` complex,
    ``perm``, ``mse``, ``epochs``, ``trials`` and the per-trial learning rates.

    ``progress`` (optional) is called as ``progress(epoch, best_rmse)`` after every epoch.
    """
    n = target.shape[0]
    L = n.bit_length() - 1
    T = config.trials
    real_target = not target.is_complex()
    target_t = target.T.to(torch.float64 if real_target else torch.complex128)  # model(I) = rows M e_j = M^T
    gen = torch.Generator().manual_seed(config.seed)
    deadline = time.perf_counter() + config.time_budget
    tw = _haar_unitary((T, L, n // 2, 2, 2), gen)
    tw_real = torch.view_as_real(tw).clone().requires_grad_(True)
    logits = (0.1 * torch.randn(T, max(len(_levels(n)), 0), 3, generator=gen, dtype=torch.float64))
    logits.requires_grad_(True)
    lr = torch.exp(torch.empty(T, dtype=torch.float64).uniform_(math.log(config.lr_min), math.log(config.lr_max),
                                                                generator=gen))
    params = [tw_real, logits]
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    use_probes = config.probes is not None and config.probes < n
    if use_probes:
        target_c = target.to(torch.complex128)
    else:
        eye = torch.eye(n, dtype=torch.complex128).expand(T, n, n)
    best = {"mse": math.inf, "twiddle": None, "perm": None}
    step = 0
    epoch = 0
    target_mse = config.target_rmse**2
    for epoch in range(1, config.max_epochs + 1):
        for _ in range(config.steps_per_epoch):
            step += 1
            probs = torch.sigmoid(logits)
            if use_probes:
                # rows x of X: model(x) vs M x; E|(BP - M) x|^2 / n^2 over x ~ N(0, I) is the MSE
                if real_target:
                    X = torch.randn(T, config.probes, n, generator=gen, dtype=torch.float64).to(torch.complex128)
                else:
                    X = torch.complex(torch.randn(T, config.probes, n, generator=gen, dtype=torch.float64),
                                      torch.randn(T, config.probes, n, generator=gen, dtype=torch.float64))
                    X = X / math.sqrt(2)
                want = X @ target_c.T
                out = _butterfly_trials(torch.view_as_complex(tw_real), relaxed_permute(X, probs))
                loss = _per_trial_mse(out, want.real if real_target else want, real_target) / n
            else:
                out = _butterfly_trials(torch.view_as_complex(tw_real), relaxed_permute(eye, probs))
                loss = _per_trial_mse(out, target_t, real_target)
            grads = torch.autograd.grad(loss.sum(), params)
            with torch.no_grad():
                for p, g, a, b in zip(params, grads, m1, m2, strict=True):
                    a.mul_(beta1).add_(g, alpha=1 - beta1)
                    b.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    shape = (T,) + (1,) * (p.dim() - 1)
                    update = (a / (1 - beta1**step)) / ((b / (1 - beta2**step)).sqrt() + eps)
                    p.sub_(lr.reshape(shape) * update)
            if time.perf_counter() > deadline:
                break
        if epoch % config.polish_every == 0 or time.perf_counter() > deadline:
            perms = hard_permutation(logits.detach(), n)
            ranked = torch.argsort(loss.detach())
            for t in ranked[: config.polish_top].tolist():
                polished, mse = _polish(torch.view_as_complex(tw_real.detach()[t]), perms[t], target_t, real_target,
                                        config.polish_steps, deadline)
                if mse < best["mse"]:
                    best = {"mse": mse, "twiddle": polished, "perm": perms[t].clone()}
        if progress is not None:
            progress(epoch, math.sqrt(best["mse"]) if best["mse"] < math.inf else float("nan"))
        if best["mse"] <= target_mse or time.perf_counter() > deadline:
            break
    if best["twiddle"] is None:  # no polish happened: harden the best trial as it is
        perms = hard_permutation(logits.detach(), n)
        t = int(torch.argmin(loss.detach()))
        best = {"mse": math.nan, "twiddle": torch.view_as_complex(tw_real.detach()[t]).clone(), "perm": perms[t]}
    best.update(epochs=epoch, trials=T, learning_rates=lr.tolist())
    return best
