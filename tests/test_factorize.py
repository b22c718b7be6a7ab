"""Hierarchical factorization: exact recovery of butterflies, noisy recovery, permutation search, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twiddle import Butterfly
from twiddle.factorize import TARGETS, factorize, load_matrix, target_matrix
from twiddle.factorize.hierarchical import ORDERS, hierarchical_twiddle
from twiddle.permutations import PERMUTATION_NAMES, bitreversal_permutation, named_permutation

SIZES = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def random_butterfly_matrix(n: int, complex: bool = False, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    layer = Butterfly(n, n, bias=False, complex=complex, init="ortho", dtype=torch.float64)
    return layer.to_dense().detach()


@pytest.mark.parametrize("n", SIZES)
def test_dft_is_recovered_exactly_with_bit_reversal(n):
    result = factorize(target_matrix("dft", n), permutation="bitrev")
    assert result.relative_error < 1e-12
    assert torch.equal(result.permutation, bitreversal_permutation(n))
    x = torch.randn(3, n, dtype=torch.complex128)
    torch.testing.assert_close(result.module(x), torch.fft.fft(x, norm="ortho"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", SIZES)
def test_hadamard_is_recovered_exactly(n):
    result = factorize(target_matrix("hadamard", n), permutation="identity")
    assert result.relative_error < 1e-12
    assert not result.module.butterfly.complex


@pytest.mark.parametrize("n", [4, 16, 64, 256, 1024])
@pytest.mark.parametrize("name", [p for p in PERMUTATION_NAMES if p.startswith("bp")])
def test_random_butterfly_times_each_bp_permutation(n, name):
    perm = named_permutation(name, n)
    B = random_butterfly_matrix(n, seed=n)
    M = B[:, torch.argsort(perm)]  # M = B P with (P x)[i] = x[perm[i]]
    result = factorize(M, permutation=name)
    assert result.relative_error < 1e-12


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("complex", [False, True])
def test_every_order_is_exact(order, complex):
    M = random_butterfly_matrix(64, complex=complex, seed=3)
    result = factorize(M, permutation="identity", order=order)
    assert result.relative_error < 1e-12
    assert result.order == order


def test_auto_finds_the_permutation():
    n = 128
    perm = named_permutation("bp110", n)
    M = random_butterfly_matrix(n, seed=5)[:, torch.argsort(perm)]
    result = factorize(M)
    assert result.relative_error < 1e-12
    # the reversal choices only flip bits within the butterfly's pairs, so every even/odd-separating
    # permutation works; the non-separating ones (identity among them) cannot
    assert result.permutation_name in ("bitrev", "bp101", "bp110", "bp111")
    assert set(result.candidates) == {"identity", "bitrev", "bp001", "bp010", "bp011", "bp101", "bp110", "bp111"}
    assert result.candidates["identity"] > 1e-2


@pytest.mark.parametrize("order", ORDERS)
def test_noisy_butterfly_error_within_the_noise(order):
    n = 256
    M = random_butterfly_matrix(n, seed=7)
    noise = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    noise *= 0.01 * M.norm() / noise.norm()
    result = factorize(M + noise, permutation="identity", order=order)
    assert result.relative_error * (M + noise).norm() <= 1.05 * noise.norm()


def test_explicit_permutation_and_numpy_and_npy_file(tmp_path):
    n = 32
    perm = torch.randperm(n)
    M = random_butterfly_matrix(n, seed=2)[:, torch.argsort(perm)]
    result = factorize(M.numpy(), permutation=perm)
    assert result.relative_error < 1e-12 and result.permutation_name == "given"
    path = tmp_path / "m.npy"
    np.save(path, M.numpy())
    assert factorize(str(path), permutation=perm.tolist()).relative_error < 1e-12


def test_result_fields_module_and_summary():
    result = factorize(target_matrix("dft", 16))
    assert result.params == 4 * 8 * 4
    assert result.seconds > 0 and result.method == "hierarchical"
    assert result.rmse == pytest.approx(result.relative_error * target_matrix("dft", 16).norm().item() / 16)
    text = result.summary()
    assert "relative error" in text and "permutations tried" in text
    d = result.to_dict()
    assert {"rmse", "relative_error", "seconds", "params", "permutation", "n", "method"} <= set(d)
    dense = result.module.to_dense()
    x = torch.randn(5, 16, dtype=torch.complex128)
    torch.testing.assert_close(result.module(x), x @ dense.T)


def test_hierarchical_core_layout_matches_butterfly():
    M = random_butterfly_matrix(16, seed=9)
    tw = hierarchical_twiddle(M)
    assert tw.shape == (1, 1, 4, 8, 2, 2)
    torch.testing.assert_close(Butterfly(16, 16, bias=False, init=tw, dtype=torch.float64).to_dense(), M)


@pytest.mark.parametrize("name", TARGETS)
def test_targets_shapes_and_scaling(name):
    M = target_matrix(name, 16)
    assert M.shape == (16, 16)
    assert torch.isfinite(M).all()
    if name in ("dft", "idft", "hadamard", "hartley"):  # orthogonal / unitary after the 1/sqrt(n) scaling
        torch.testing.assert_close(M @ M.conj().T, torch.eye(16, dtype=M.dtype), atol=1e-12, rtol=0)


def test_dct_target_matches_scipy():
    import scipy.fft

    x = np.random.default_rng(0).standard_normal(32)
    np.testing.assert_allclose(target_matrix("dct", 32).numpy() @ x, scipy.fft.dct(x, type=2) / np.sqrt(32))


@pytest.mark.parametrize("matrix,match", [
    (torch.ones(4, 8), "square"),
    (torch.ones(0, 0), "empty"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "NaN or Inf"),
    (torch.ones(6, 6), "power of two"),
    (torch.ones(1, 1), "power of two"),
])
def test_bad_matrices(matrix, match):
    with pytest.raises(ValueError, match=match):
        factorize(matrix)


def test_bad_arguments(tmp_path):
    M = torch.eye(8)
    with pytest.raises(ValueError, match="method"):
        factorize(M, method="magic")
    with pytest.raises(ValueError, match="permutation must be"):
        factorize(M, permutation="shuffle")
    with pytest.raises(ValueError, match="4 entries but the matrix is 8"):
        factorize(M, permutation=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="order"):
        factorize(M, order="diagonal")
    with pytest.raises(ValueError, match="complex"):
        factorize(torch.eye(8, dtype=torch.complex128), complex=False)
    with pytest.raises(ValueError, match="does not exist"):
        factorize(str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match=".npy"):
        load_matrix("matrix.txt")
    with pytest.raises(TypeError, match="numpy array"):
        factorize([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="unknown target"):
        target_matrix("fourier", 8)


@pytest.mark.parametrize("complex_", [False, True])
def test_save_load_round_trip(tmp_path, complex_):
    from twiddle.factorize import PermutedButterfly

    M = random_butterfly_matrix(16, complex=complex_, seed=4)
    result = factorize(M)
    path = tmp_path / "m.safetensors"
    result.module.save(path)
    loaded = PermutedButterfly.load(path)
    torch.testing.assert_close(loaded.to_dense(), result.module.to_dense(), rtol=0, atol=0)
    assert torch.equal(loaded.permutation.perm, result.permutation)


def test_load_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    from twiddle.factorize import PermutedButterfly

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a twiddle factorization file"):
        PermutedButterfly.load(path)
