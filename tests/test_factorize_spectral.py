"""The spectral fit: two butterflies in closed form for a matrix that a butterfly diagonalizes (M = V Λ V⁻¹)."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from twiddle.butterfly import Butterfly
from twiddle.cli import main
from twiddle.factorize import PermutedButterfly, factorize, target_matrix
from twiddle.factorize.spectral import (
    circulant_embedding,
    eigendecomposition,
    inverse_twiddle,
    is_toeplitz,
    scale_columns,
)
from twiddle.permutations import named_permutation


def _random_twiddle(n: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """Blocks ``I + 0.4 G`` (G Gaussian): random and invertible, none nearly singular."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, 1, n.bit_length() - 1, n // 2, 2, 2)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    if dtype.is_complex:
        noise = torch.complex(noise, torch.randn(shape, generator=g, dtype=torch.float64))
    return torch.eye(2, dtype=noise.dtype) + 0.4 * noise


def _dense(twiddle: torch.Tensor) -> torch.Tensor:
    n = 2 * twiddle.shape[3]
    return Butterfly(n, n, bias=False, complex=twiddle.is_complex(), init=twiddle,
                     dtype=twiddle.real.dtype).to_dense().detach()


@pytest.mark.parametrize("n", [2, 4, 8, 32, 128])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_inverse_twiddle_is_the_inverse_under_bit_reversal(n, dtype):
    tw = _random_twiddle(n, dtype, seed=n)
    b, b_prime = _dense(tw), _dense(inverse_twiddle(tw))
    rev = named_permutation("bitrev", n)
    inverse = b_prime[rev][:, rev]  # R B' R
    # an inverse's rounding grows with the condition number (up to 1e6 at n = 128 for these blocks)
    tol = 1e-14 * float(torch.linalg.cond(b))
    assert float((inverse @ b - torch.eye(n, dtype=b.dtype)).abs().max()) < tol
    assert float((inverse - torch.linalg.inv(b)).abs().max()) < tol * float(torch.linalg.inv(b).abs().max())


def test_inverse_twiddle_rejects_bad_shapes():
    with pytest.raises(ValueError, match="twiddle must have shape"):
        inverse_twiddle(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="not a butterfly"):
        inverse_twiddle(torch.zeros(1, 1, 2, 8, 2, 2))


def test_scale_columns_is_b_times_diag():
    n = 16
    tw = _random_twiddle(n)
    d = torch.complex(torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64))
    scaled = scale_columns(tw, d)
    assert scaled.dtype == torch.complex128
    assert torch.allclose(_dense(scaled), _dense(tw).to(torch.complex128) @ torch.diag(d), atol=1e-12)
    with pytest.raises(ValueError, match="scale must have shape"):
        scale_columns(tw, d[:4])


@pytest.mark.parametrize("kind", ["symmetric", "general", "hermitian"])
def test_eigendecomposition_reconstructs(kind):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(24, 24, generator=g, dtype=torch.float64)
    if kind == "symmetric":
        m = a + a.T
    elif kind == "general":
        m = a
    else:
        m = torch.complex(a, torch.randn(24, 24, generator=g, dtype=torch.float64))
        m = m + m.mH
    values, vectors = eigendecomposition(m)
    if kind == "symmetric":
        assert not vectors.is_complex()  # eigh: real orthogonal V
    rebuilt = vectors @ torch.diag(values.to(vectors.dtype) if vectors.is_complex() else values) @ torch.linalg.inv(
        vectors)
    assert torch.allclose(rebuilt.to(torch.complex128), m.to(torch.complex128), atol=1e-11)
    with pytest.raises(ValueError, match="square"):
        eigendecomposition(a[:, :5])
    values32, _ = eigendecomposition(m.to(torch.complex64 if m.is_complex() else torch.float32).requires_grad_())
    assert values32.dtype in (torch.float64, torch.complex128)  # computed in double precision, detached


@pytest.mark.parametrize("n", [2, 4, 16, 64, 256])
def test_convolution_is_exact_with_two_butterflies(n):
    m = target_matrix("convolution", n, seed=3)
    result = factorize(m, model="bpbp")
    assert result.model == "bpbp" and result.permutation_name.startswith("spectral:")
    assert result.relative_error < 1e-12
    assert len(result.module.then) == 1 and result.params == 2 * n * (n.bit_length() - 1) * 2
    x = torch.randn(5, n, dtype=torch.float64)
    assert torch.allclose(result.module(x), x @ m.T, atol=1e-11)
    assert "eigenvectors" in result.summary()


def test_complex_and_dyadic_convolutions():
    n = 64
    rng = np.random.default_rng(0)
    complex_circulant = torch.from_numpy(scipy.linalg.circulant(rng.standard_normal(n) + 1j * rng.standard_normal(n)))
    result = factorize(complex_circulant, model="bpbp")
    assert result.relative_error < 1e-12 and result.module.complex and not result.module.real_output
    # a dyadic convolution H diag(λ) H / n: real symmetric, eigh, real butterflies
    h = torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64))
    dyadic = h @ torch.diag(torch.from_numpy(rng.standard_normal(n))) @ h / n
    result = factorize(dyadic, model="bpbp")
    assert result.relative_error < 1e-12 and not result.module.complex


def test_a_permuted_similarity_reads_off_both_sides():
    """Q C Qᵀ (a circulant with its index set relabelled): the eigenvectors Q F⁻¹ P need both permutations."""
    n = 128
    c = target_matrix("convolution", n, seed=5)
    q = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    m = c[q][:, q]
    result = factorize(m, model="bpbp")
    assert result.relative_error < 1e-12
    assert result.permutation_name == "spectral:recovered-both" and result.output_permutation is not None
    x = torch.randn(3, n, dtype=torch.float64)
    assert torch.allclose(result.module(x), x @ m.T, atol=1e-11)


def test_a_matrix_no_butterfly_diagonalizes_falls_back_to_one_butterfly():
    n = 32
    m = target_matrix("dft", n)  # eigenvalues ±1, ±i: repeated, the spectral fit is not exact; B P is
    result = factorize(m, model="bpbp")
    assert result.model == "bp" and result.relative_error < 1e-12
    assert any(name.startswith("spectral:") for name in result.candidates)
    randn = target_matrix("randn", n)
    result = factorize(randn, model="bpbp")
    spectral = [v for k, v in result.candidates.items() if k.startswith("spectral:")]
    assert len(spectral) == 1 and result.relative_error <= min(result.candidates.values()) + 1e-15
    assert np.isfinite(result.relative_error)


def test_spectral_module_saves_and_loads(tmp_path):
    n = 32
    c = target_matrix("convolution", n, seed=1)
    q = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    result = factorize(c[q][:, q], model="bpbp")
    path = tmp_path / "conv.safetensors"
    result.module.save(path)
    loaded = PermutedButterfly.load(path)
    assert torch.allclose(loaded.to_dense(), result.module.to_dense(), atol=1e-14)


@pytest.mark.parametrize("kwargs, match", [
    ({"permutation": "bitrev"}, "permutation="),
    ({"model": "bpp"}, "permutation='bpp'"),
    ({"model": "bbp"}, "model must be one of"),
    ({"complex": False}, "complex=False"),
])
def test_spectral_bad_options(kwargs, match):
    m = target_matrix("convolution", 16)
    with pytest.raises(ValueError, match=match):
        factorize(m, **{"model": "bpbp", **kwargs})


def test_spectral_needs_a_square_power_of_two_or_a_toeplitz_matrix():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="square matrix whose size is a power of two.*or a Toeplitz"):
        factorize(torch.randn(12, 12, generator=g, dtype=torch.float64), model="bpbp")
    with pytest.raises(ValueError, match="neither"):
        factorize(torch.randn(16, 16, generator=g, dtype=torch.float64), model="bpbp", size=32)


def _toeplitz(rows: int, cols: int, seed: int = 0, symmetric: bool = False, complex: bool = False) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    draw = (lambda k: rng.standard_normal(k) + 1j * rng.standard_normal(k)) if complex else rng.standard_normal
    column = draw(rows)
    row = np.concatenate([column[:1], column[1:cols]]) if symmetric else np.concatenate([column[:1], draw(cols - 1)])
    if symmetric and cols > rows:
        row = np.concatenate([row, draw(cols - rows)])
    return torch.from_numpy(scipy.linalg.toeplitz(column, row))


def test_is_toeplitz_and_the_circulant_embedding():
    t = _toeplitz(5, 7)
    assert is_toeplitz(t) and is_toeplitz(t[:1]) and not is_toeplitz(torch.randn(4, 4, dtype=torch.float64))
    for size in (11, 16):
        c = circulant_embedding(t, size, generator=torch.Generator().manual_seed(0))
        assert torch.equal(c[:5, :7], t)
        assert torch.equal(c, torch.from_numpy(scipy.linalg.circulant(c[:, 0].numpy())))
    with pytest.raises(ValueError, match="circulant of size >= 11"):
        circulant_embedding(t, 10)
    with pytest.raises(ValueError, match="must be a Toeplitz matrix"):
        circulant_embedding(torch.randn(4, 4, dtype=torch.float64), 8)
    with pytest.raises(ValueError, match="2-D"):
        is_toeplitz(torch.zeros(3))


@pytest.mark.parametrize("shape, symmetric, complex", [((64, 64), False, False), ((64, 64), True, False),
                                                       ((50, 30), False, False), ((20, 45), False, True),
                                                       ((100, 100), True, False)])
def test_toeplitz_matrices_are_exact_through_a_circulant(shape, symmetric, complex):
    """A linear convolution's matrix (any shape, symmetric filters too) is a block of a circulant whose free
    entries are drawn at random: two butterflies of the circulant's size."""
    t = _toeplitz(*shape, seed=sum(shape), symmetric=symmetric, complex=complex)
    result = factorize(t, model="bpbp")
    assert result.model == "bpbp" and result.permutation_name.startswith("spectral-circulant")
    assert result.relative_error < 1e-11
    assert (result.module.out_features, result.module.in_features) == shape
    x = torch.randn(4, shape[1], dtype=torch.float64).to(t.dtype)
    assert torch.allclose(result.module(x), x @ t.T, atol=1e-10)


def test_symmetric_toeplitz_needs_the_larger_circulant():
    """n × n symmetric: the least circulant (2n) has one free entry, a symmetric c, repeated eigenvalues; the next
    (4n) has free entries enough."""
    t = _toeplitz(32, 32, seed=3, symmetric=True)
    result = factorize(t, model="bpbp")
    assert result.relative_error < 1e-11 and result.module.size == 128
    assert [v > 1e-6 for k, v in result.candidates.items() if k.startswith("spectral-circulant64:")] == [True]
    sized = factorize(t, model="bpbp", size=128)  # an explicit size is the one used
    assert sized.relative_error < 1e-11 and sized.module.size == 128


def test_cli_factor_bpbp(capsys):
    assert main(["factor", "convolution", "-n", "64", "--model", "bpbp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "bpbp" and out["stages"] == 2 and out["relative_error"] < 1e-12
