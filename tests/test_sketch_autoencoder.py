"""Encoder–decoder with a truncated butterfly, and learned low-rank sketches (Ailon et al. 2021)."""

from __future__ import annotations

import pytest
import torch

from twiddle import ButterflyAutoencoder
from twiddle.autoencoder import fit_autoencoder, fjlt_pca_loss, pca_loss
from twiddle.experiments.ailon2021_sketch import planted
from twiddle.sketch import (
    ButterflySketch,
    GaussianSketch,
    SparseSketch,
    best_rank_k_error,
    count_sketch,
    low_rank_in_rowspace,
    make_sketch,
    sketch_error,
    sketch_low_rank,
    train_sketch,
)


def _planted(samples: int, n: int, rank: int, seed: int = 0) -> torch.Tensor:
    """Rank-``rank`` data of Frobenius norm 10 plus Gaussian noise of norm 1."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(samples, rank, generator=g) @ torch.randn(rank, n, generator=g)
    noise = torch.randn(samples, n, generator=g)
    return low / low.norm() * 10 + noise / noise.norm()


def test_autoencoder_reaches_the_pca_loss_within_one_percent():
    torch.manual_seed(0)
    x = _planted(256, 64, 4)
    k = 4
    model = ButterflyAutoencoder(64, 32, k)
    losses = fit_autoencoder(model, x, steps=4000, lr=1e-2, progress=False)
    delta_k = pca_loss(x, k)
    assert losses[-1] <= 1.01 * delta_k
    # phase one (B frozen at the FJLT) ends at the FJLT+PCA optimum: for fixed B every local minimum is global
    assert losses[1999] == pytest.approx(fjlt_pca_loss(x, k, 32), rel=5e-3)
    assert fjlt_pca_loss(x, k, 32) >= delta_k * (1 - 1e-9)


def test_autoencoder_freezing_and_shapes():
    model = ButterflyAutoencoder(100, 16, 3, m=7, seed=2)
    assert model(torch.randn(5, 100)).shape == (5, 7)
    model.freeze_butterfly()
    assert not any(p.requires_grad for p in model.butterfly.parameters())
    assert all(p.requires_grad for p in model.encoder.parameters())
    model.unfreeze_butterfly()
    assert all(p.requires_grad for p in model.butterfly.parameters())
    double = ButterflyAutoencoder(100, 16, 3, seed=2, dtype=torch.float64)  # factory kwargs, as nn.Linear
    assert all(p.dtype == torch.float64 for p in double.parameters())
    x = torch.randn(4, 100, dtype=torch.float64)
    assert double(x).dtype == torch.float64
    assert ButterflyAutoencoder(8, 4, 2, device="meta").encoder.weight.is_meta


def test_pca_loss_is_the_tail_of_the_spectrum():
    x = torch.randn(30, 10, dtype=torch.float64)
    s = torch.linalg.svdvals(x)
    assert pca_loss(x, 3) == pytest.approx(float(s[3:].pow(2).sum()))


def test_autoencoder_errors():
    with pytest.raises(ValueError, match="k must be at most ell"):
        ButterflyAutoencoder(64, 4, 8)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ButterflyAutoencoder(64, 4, 0)
    with pytest.raises(ValueError, match="must be at most n = 64"):
        ButterflyAutoencoder(64, 100, 4)
    with pytest.raises(ValueError, match="X must be a 2-D tensor"):
        pca_loss(torch.randn(3, 4, 5), 2)
    with pytest.raises(ValueError, match="same number of samples"):
        fit_autoencoder(ButterflyAutoencoder(8, 4, 2), torch.randn(5, 8), torch.randn(6, 8), steps=1)


# ------------------------------------------------------------------------------------------- sketches


def test_learned_butterfly_beats_learned_sparse_beats_random_sketches():
    n, d, k, ell = 64, 32, 4, 8
    data = planted(140, n, d, seed=0)  # a shared dominant subspace, 1/j spectrum
    train, test = data[:100], data[100:]
    errors = {}
    for kind in ("butterfly", "sparse", "countsketch", "gaussian"):
        sketch = make_sketch(kind, n, ell, seed=1)
        if kind in ("butterfly", "sparse"):
            losses = train_sketch(sketch, train, k, steps=200, lr=0.05, progress=False)
            assert losses[-1] < losses[0]
        errors[kind] = sketch_error(sketch, test, k)
    assert 0 <= errors["butterfly"] < errors["sparse"] < min(errors["countsketch"], errors["gaussian"])


def test_low_rank_in_rowspace_of_the_identity_sketch_is_the_svd_optimum():
    x = torch.randn(3, 20, 12, dtype=torch.float64)
    approx = low_rank_in_rowspace(x, x, 4)  # the row space of X itself: the answer is X_4
    torch.testing.assert_close((x - approx).flatten(-2).norm(dim=-1), best_rank_k_error(x, 4))
    assert torch.linalg.matrix_rank(approx[0]) == 4


def test_sketch_matrices_and_families():
    x = torch.randn(2, 32, 5)
    for sketch in (ButterflySketch(32, 8), SparseSketch(32, 8, nnz=2), count_sketch(32, 8), GaussianSketch(32, 8)):
        s = sketch.to_dense()
        assert s.shape == (8, 32)
        torch.testing.assert_close(sketch(x), s @ x, rtol=1e-5, atol=1e-5)
    sparse = SparseSketch(32, 8, nnz=3, seed=4)
    assert torch.all((sparse.to_dense() != 0).sum(0) == 3)  # nnz distinct rows per column
    assert not count_sketch(32, 8).values.requires_grad and SparseSketch(32, 8).values.requires_grad
    assert sketch_low_rank(GaussianSketch(32, 8), x, 3).shape == x.shape


def test_sketch_errors():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        sketch_low_rank(GaussianSketch(8, 4), torch.randn(8, 6), 0)
    with pytest.raises(ValueError, match="k must be at most 6"):
        sketch_low_rank(GaussianSketch(8, 4), torch.randn(8, 6), 7)
    with pytest.raises(ValueError, match="must have n = 8 rows"):
        GaussianSketch(8, 4)(torch.randn(7, 6))
    with pytest.raises(ValueError, match="must be at most n = 8"):
        ButterflySketch(8, 16)
    with pytest.raises(ValueError, match="nnz must be at most ell"):
        SparseSketch(8, 2, nnz=3)
    with pytest.raises(ValueError, match="seed must be an int"):
        GaussianSketch(8, 4, seed=0.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        make_sketch("dense", 8, 4)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_sketch(GaussianSketch(8, 4), torch.randn(3, 8, 6), 2, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"train must have shape \(N, n, d\)"):
        train_sketch(ButterflySketch(8, 4), torch.randn(8, 6), 2, steps=1, progress=False)
