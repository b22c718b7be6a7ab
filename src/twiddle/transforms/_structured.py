"""Real structured transforms: Hadamard (Sylvester), the multilevel Haar wavelet, Fastfood and ACDC."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .._layout import ceil_log2, factor_stride, is_power_of_two, padded_size
from .._validate import positive_int, seed_int
from ..butterfly import Butterfly
from ..permutations import FixedPermutation
from ._modules import Diagonal, Pipeline, Transform, _Concat, _RealPart, _ZeroPad, as_float64, builds_on_cpu, real_dtype
from ._trig import _cosine_steps

__all__ = ["hadamard", "haar", "fastfood", "acdc"]


def _check_power_of_two(n: object, what: str) -> int:
    n = positive_int(n, "n")
    if not is_power_of_two(n):
        raise ValueError(f"n must be a power of two for {what}, got {n}")
    return n


def _hadamard_butterfly(n: int, scale: float, dtype: torch.dtype, device) -> Butterfly:
    """Every block ``scale · [[1, 1], [1, -1]]``: the Sylvester Hadamard matrix times ``scale^log2 n``."""
    block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) * scale
    twiddle = block.expand(1, 1, ceil_log2(n), n // 2, 2, 2).clone()
    return Butterfly(n, n, bias=False, init=twiddle, dtype=dtype, device=device)


@builds_on_cpu
def hadamard(
    n: int,
    normalized: bool = False,
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The Walsh–Hadamard transform in Sylvester order (``H_1 = [1]``, ``H_2m = [[H_m, H_m], [H_m, -H_m]]``,
    ``scipy.linalg.hadamard``): every 2×2 block of every factor is ``[[1, 1], [1, -1]]`` (``/√2`` when
    ``normalized``, which makes it orthogonal). ``n`` must be a power of two.

    Shapes: ``(..., n) -> (..., n)`` real."""
    n = _check_power_of_two(n, "the Sylvester Hadamard matrix")
    module = _hadamard_butterfly(n, 1 / math.sqrt(2) if normalized else 1.0, real_dtype(dtype), device)
    return Transform("hadamard", [module], (n,), (n,), real=True, trainable=trainable)


@builds_on_cpu
def haar(
    n: int,
    levels: int | None = None,
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """The orthonormal multilevel Haar wavelet transform (``pywt.wavedec(x, "haar", level=levels)``
    concatenated): outputs ``[a_J, d_J, d_{J-1}, …, d_1]`` with ``a = (x[2i] + x[2i+1])/√2`` and
    ``d = (x[2i] - x[2i+1])/√2`` at each level, applied again to the approximations.

    One increasing-stride butterfly: the stride-``2^j`` factor puts the Haar block on the pairs that hold level-
    ``j`` approximations and the identity elsewhere; a fixed permutation then lists the coefficients by level.
    ``n`` must be a power of two; ``levels`` defaults to ``log2 n`` (the full decomposition).

    Shapes: ``(..., n) -> (..., n)`` real (orthogonal)."""
    n = _check_power_of_two(n, "the Haar transform")
    log_n = ceil_log2(n)
    if levels is None:
        levels = log_n
    if isinstance(levels, bool) or not isinstance(levels, int) or not 0 <= levels <= log_n:
        raise ValueError(f"levels must be an int in [0, log2 n = {log_n}], got {levels!r}")
    eye = torch.eye(2, dtype=torch.float64)
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / math.sqrt(2)
    twiddle = eye.expand(1, 1, log_n, n // 2, 2, 2).clone()
    i = torch.arange(n // 2)
    for f in range(levels):
        s = factor_stride(f, log_n, True)
        twiddle[0, 0, f, i % s == 0] = h  # pairs (p, p + s) with p ≡ 0 mod 2s: the level-f approximations
    positions = torch.arange(n)
    order = [positions[positions % (1 << levels) == 0]]
    for j in range(levels, 0, -1):  # details of level j sit at positions ≡ 2^(j-1) mod 2^j
        order.append(positions[positions % (1 << j) == 1 << (j - 1)])
    steps: list[nn.Module] = [Butterfly(n, n, bias=False, init=twiddle, dtype=real_dtype(dtype), device=device)]
    perm = torch.cat(order)
    if not torch.equal(perm, positions):
        steps.append(FixedPermutation(perm))
    return Transform("haar", steps, (n,), (n,), real=True, trainable=trainable)


@builds_on_cpu
def fastfood(
    in_features: int,
    out_features: int | None = None,
    *,
    sigma: float = 1.0,
    seed: int = 0,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """Fastfood (Le, Sarlós, Smola 2013): ``V = (1 / (σ√n)) · S H G Π H B``, a fast stand-in for a Gaussian
    matrix with i.i.d. ``N(0, 1/σ²)`` entries (random features ``cos(V x)`` approximate a Gaussian kernel of
    width ``σ``).

    ``B``: random ±1 diagonal; ``H``: the Sylvester Hadamard butterfly; ``Π``: a random permutation; ``G``:
    Gaussian diagonal; ``S``: row lengths drawn from the χ distribution with ``n`` degrees of freedom, divided
    by ``‖G‖``, so each row of ``V`` has the length of a Gaussian row (row ``i`` has norm ``s_i / σ`` exactly).
    The input is zero-padded to ``n = 2^⌈log2 in_features⌉``; ``⌈out_features / n⌉`` independent blocks are
    stacked and the first ``out_features`` rows kept.

    Args:
        in_features: input size. out_features: output size (default ``in_features``).
        sigma: kernel width ``σ > 0``. seed: the random draws (an int; same seed, same matrix).
        trainable: learn the diagonals and the Hadamard twiddles (adaptive Fastfood).

    Shapes: ``(..., in_features) -> (..., out_features)`` real.
    """
    in_features = positive_int(in_features, "in_features")
    out_features = in_features if out_features is None else positive_int(out_features, "out_features")
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    seed = seed_int(seed)
    dtype = real_dtype(dtype)
    n = padded_size(in_features)
    gen = torch.Generator().manual_seed(seed)
    branches = []
    for _ in range(math.ceil(out_features / n)):
        signs = torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1
        perm = torch.randperm(n, generator=gen)
        gauss = torch.randn(n, generator=gen, dtype=torch.float64)
        lengths = torch.randn(n, n, generator=gen, dtype=torch.float64).norm(dim=1)  # χ_n draws
        scale = lengths / gauss.norm() / (sigma * math.sqrt(n))
        branches.append(
            Pipeline(
                Diagonal(signs.to(device=device, dtype=dtype)),
                _hadamard_butterfly(n, 1.0, dtype, device),
                FixedPermutation(perm.to(device)),
                Diagonal(gauss.to(device=device, dtype=dtype)),
                _hadamard_butterfly(n, 1.0, dtype, device),
                Diagonal(scale.to(device=device, dtype=dtype)),
            )
        )
    steps: list[nn.Module] = [] if n == in_features else [_ZeroPad(n)]
    steps.append(_Concat(branches, out_features))
    return Transform("fastfood", steps, (in_features,), (out_features,), real=True, trainable=trainable)


@builds_on_cpu
def acdc(
    a: torch.Tensor | np.ndarray,
    d: torch.Tensor | np.ndarray,
    *,
    trainable: bool | str = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transform:
    """ACDC (Moczulski et al. 2016): ``K`` layers, each ``x ↦ C⁻¹ D C A x`` with ``A``, ``D`` diagonals and ``C``
    the orthonormal DCT-II (``C⁻¹ = Cᵀ`` the orthonormal DCT-III), in the paper's order (the row-vector
    product ``x·A·C·D·C⁻¹``).

    Args:
        a, d: the diagonals, shape ``(n,)`` for one layer or ``(K, n)`` for ``K`` stacked layers (any ``n``).
        trainable: ``False`` (fixed), ``"diagonals"`` (learn ``A`` and ``D``, the DCTs fixed: the paper's
            model), or ``True`` (also the DCTs' butterfly twiddles).

    Shapes: ``(..., n) -> (..., n)`` real.
    """
    if trainable not in (False, True, "diagonals"):
        raise ValueError(f"trainable must be False, True or 'diagonals', got {trainable!r}")
    a_t, d_t = _as_layers(a, "a"), _as_layers(d, "d")
    if a_t.shape != d_t.shape:
        raise ValueError(
            f"a and d must have the same shape (K, n) or (n,), got {tuple(a_t.shape)} and {tuple(d_t.shape)}"
        )
    layers, n = a_t.shape
    dtype = real_dtype(dtype)
    steps: list[nn.Module] = []
    for k in range(layers):
        steps.append(Diagonal(a_t[k].to(device=device, dtype=dtype)))
        steps.append(Pipeline(*_cosine_steps(n, 2, "ortho", sine=False, dtype=dtype, device=device), _RealPart()))
        steps.append(Diagonal(d_t[k].to(device=device, dtype=dtype)))
        steps.append(Pipeline(*_cosine_steps(n, 3, "ortho", sine=False, dtype=dtype, device=device), _RealPart()))
    module = Transform("acdc", steps, (n,), (n,), real=True, trainable=trainable is True)
    if trainable == "diagonals":
        for step in module.steps:
            if isinstance(step, Diagonal):
                step.weight.requires_grad_(True)
    return module


def _as_layers(values: object, name: str) -> torch.Tensor:
    t = as_float64(values, name, allow_complex=False)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.numel() == 0:
        raise ValueError(f"{name} must have shape (n,) or (K, n), got {tuple(t.shape)}")
    return t
