"""Hierarchical factorization: exact recovery of butterflies, noisy recovery, permutation search, bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from twiddle import Butterfly
from twiddle.factorize import LIFTS, TARGETS, PermutedButterfly, complex_lift, factorize, load_matrix, target_matrix
from twiddle.factorize.hierarchical import ORDERS, _leading_triplet, hierarchical_twiddle, split_node
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
    result = factorize(M, permutation="bp")  # all 8, no early stop
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


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_every_matrix_input_kind_gives_the_same_matrix(tmp_path):
    import scipy.io
    import scipy.sparse

    dense = np.array([[1.0, 0.0, 2.5], [0.0, -3.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.5]])
    sparse = scipy.sparse.csr_matrix(dense)
    expected = torch.from_numpy(dense)
    np.save(tmp_path / "m.npy", dense)
    np.savez(tmp_path / "one.npz", matrix=dense)
    scipy.sparse.save_npz(tmp_path / "sparse.npz", sparse)
    scipy.io.mmwrite(tmp_path / "sparse.mtx", sparse)
    scipy.io.mmwrite(tmp_path / "dense.mtx", dense)
    np.savetxt(tmp_path / "m.csv", dense, delimiter=",")
    np.savetxt(tmp_path / "m.txt", dense)
    kinds = {
        "list": dense.tolist(), "tuple": tuple(map(tuple, dense.tolist())), "numpy": dense,
        "numpy float32": dense.astype(np.float32), "numpy int": (2 * dense).astype(np.int64) / 2,
        "scipy csr": sparse, "scipy coo array": scipy.sparse.coo_array(dense), "torch sparse coo": expected.to_sparse(),
        "torch sparse csr": expected.to_sparse_csr(), "torch float32": expected.float(),
        "requires grad": expected.clone().requires_grad_(),
        **{name: tmp_path / name for name in ("m.npy", "one.npz", "sparse.npz", "sparse.mtx", "dense.mtx", "m.csv")},
        "m.txt as str": str(tmp_path / "m.txt"),
    }
    for name, value in kinds.items():
        loaded = load_matrix(value)
        assert loaded.dtype == torch.float64 and loaded.layout == torch.strided, name
        torch.testing.assert_close(loaded, expected, rtol=0, atol=0, msg=name)
    complex_matrix = dense + 1j * dense[::-1]
    scipy.sparse.save_npz(tmp_path / "complex.npz", scipy.sparse.csc_matrix(complex_matrix))
    assert torch.equal(load_matrix(tmp_path / "complex.npz"), torch.from_numpy(complex_matrix))
    # a sparse matrix is factored as its dense self
    M = random_butterfly_matrix(16, seed=3) * (torch.rand(16, 16) < 0.5)
    assert factorize(scipy.sparse.csr_matrix(M.numpy()), complex=False).relative_error == pytest.approx(
        factorize(M, complex=False).relative_error, abs=1e-15)


def test_bad_matrix_inputs_are_named(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.eye(2), b=np.eye(2))
    (tmp_path / "words.csv").write_text("1,2\n3,x\n")
    cases = [
        (tmp_path / "two.npz", ValueError, "must hold one array"),
        (tmp_path / "words.csv", ValueError, "is not a table of numbers"),
        (tmp_path / "missing.mtx", ValueError, "does not exist"),
        ([[1.0, 2.0], [3.0]], ValueError, "same length"),
        ([["a", "b"]], TypeError, "must hold numbers"),
        ([[object()]], TypeError, "must hold numbers"),
        (torch.ones(2, 2, dtype=torch.bool), TypeError, "must hold numbers"),
        ([[1.0, float("nan")], [0.0, 1.0]], ValueError, "NaN"),
    ]
    for value, kind, match in cases:
        with pytest.raises(kind, match=match):
            load_matrix(value)


@pytest.mark.parametrize("shape", [(64, 64), (40, 50)])
def test_a_real_matrix_found_through_a_lift_maps_complex_inputs_linearly(shape):
    """The module of a real matrix fitted by the real part of a complex butterfly (a lift) applies the real matrix to
    complex inputs too: M x.real + i M x.imag, not the real part of the complex product (which mixed them)."""
    M = target_matrix("dct", 64)[: shape[0], : shape[1]]
    result = factorize(M, size=64)
    assert result.module.real_output
    dense = result.module.to_dense()  # the real matrix the module computes (M itself where the fit is exact)
    assert not dense.is_complex() and dense.shape == shape
    if shape == (64, 64):
        torch.testing.assert_close(dense, M, rtol=0, atol=1e-12)
    x = torch.randn(3, shape[1], dtype=torch.complex128)
    torch.testing.assert_close(result.module(x), x @ dense.T.to(x.dtype), rtol=0, atol=1e-12)
    real = torch.randn(3, shape[1], dtype=torch.float64)
    torch.testing.assert_close(result.module(real), real @ dense.T, rtol=0, atol=1e-12)


def test_result_fields_module_and_summary():
    result = factorize(target_matrix("dft", 16))
    assert result.params == 4 * 8 * 4
    assert result.seconds > 0 and result.method == "hierarchical"
    assert result.rmse == pytest.approx(result.relative_error * target_matrix("dft", 16).norm().item() / 16)
    text = result.summary()
    assert "relative error" in text and "candidates tried" in text
    d = result.to_dict()
    assert {"rmse", "relative_error", "seconds", "params", "permutation", "n", "method"} <= set(d)
    dense = result.module.to_dense()
    x = torch.randn(5, 16, dtype=torch.complex128)
    torch.testing.assert_close(result.module(x), x @ dense.T)


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("real_output", [False, True])
@pytest.mark.parametrize("out_perm", [False, True])
@pytest.mark.parametrize("shape", [(16, 16), (11, 13)])
@pytest.mark.parametrize("stages", [1, 2])
def test_permuted_butterfly_to_dense_is_the_map_it_computes(monkeypatch, complex_, real_output, out_perm, shape,
                                                            stages):
    """``to_dense`` (one kernel call through the transposed butterfly for a single stage, the identity's rows read
    and stored in the permutations' inverse orders) is the matrix ``forward`` applies: input permutation, output
    permutation, real part, padding and BPBP stages, in float64 to rounding. The search's distance to a matrix,
    formed a few rows at a time, is the distance to ``to_dense``."""
    g = torch.Generator().manual_seed(3)
    rows, cols = shape
    n = 16

    def twiddle_():
        t = torch.randn(1, 1, 4, n // 2, 2, 2, dtype=torch.float64, generator=g)
        return torch.complex(t, torch.randn(t.shape, dtype=torch.float64, generator=g)) if complex_ else t

    then = [(torch.randperm(n, generator=g), twiddle_()) for _ in range(stages - 1)]
    module = PermutedButterfly(torch.randperm(n, generator=g), twiddle_(), real_output=real_output, then=then,
                               in_features=cols, out_features=rows,
                               out_perm=torch.randperm(n, generator=g) if out_perm else None)
    dense = module.to_dense().detach()
    assert dense.shape == (rows, cols)
    assert dense.is_complex() == (complex_ and not real_output)
    with torch.no_grad():
        columns = module(torch.eye(cols, dtype=torch.float64).to(dense.dtype)).mT  # column j: M e_j
    torch.testing.assert_close(dense, columns, rtol=1e-13, atol=1e-13)
    other = torch.randn(rows, cols, dtype=torch.float64, generator=g)
    monkeypatch.setattr(sys.modules[PermutedButterfly.__module__], "_ROWS_BYTES", 3 * n * 16)  # 3 or 6 rows a block
    for matrix in (other, dense.real if dense.is_complex() else dense):
        assert abs(module._distance(matrix) - float((dense - matrix).norm())) <= 1e-13 * float(dense.norm())


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
    (torch.ones(4), "2-D"),
    (torch.ones(0, 0), "empty"),
    (torch.ones(3, 0), "empty"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "NaN or Inf"),
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
    with pytest.raises(ValueError, match="4 entries but the butterfly is 8 × 8"):
        factorize(M, permutation=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="order"):
        factorize(M, order="diagonal")
    with pytest.raises(ValueError, match="complex"):
        factorize(torch.eye(8, dtype=torch.complex128), complex=False)
    with pytest.raises(ValueError, match="does not exist"):
        factorize(str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match=r"must be one of \.npy, \.npz, \.mtx, \.csv, \.txt"):
        load_matrix("matrix.json")
    with pytest.raises(TypeError, match="numpy array, a scipy.sparse matrix"):
        factorize({"a": 1})
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


# ---- complex lifts: real targets fitted by the real part of a complex butterfly ----

@pytest.mark.parametrize("kind", LIFTS)
def test_every_lift_has_the_matrix_as_real_part(kind):
    M = torch.randn(16, 16, dtype=torch.float64)
    lifted = complex_lift(M, kind)
    assert lifted.dtype == torch.complex128
    assert torch.equal(lifted.real, M)
    assert lifted.imag.abs().max() > 0.1


def test_the_even_lift_of_a_cosine_row_is_its_analytic_signal():
    n = 32
    j = torch.arange(n, dtype=torch.float64)
    theta = torch.pi * 3 * (2 * j + 1) / (2 * n)
    lifted = complex_lift(torch.cos(theta).expand(n, n), "even")
    torch.testing.assert_close(lifted[0], torch.exp(1j * theta), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["dct", "dst", "hartley"])
@pytest.mark.parametrize("n", [4, 8, 32, 128, 512])
def test_real_transforms_are_exact_through_a_complex_lift(name, n):
    M = target_matrix(name, n)
    result = factorize(M)
    assert result.relative_error < 1e-12
    x = torch.randn(5, n, dtype=torch.float64)
    y = result.module(x)
    assert not y.is_complex()
    torch.testing.assert_close(y, x @ M.T, rtol=1e-11, atol=1e-12)
    if n >= 16:  # tiny DCT/DST/Hartley matrices are real butterflies times permutations already
        assert result.lift in LIFTS
        assert result.module.real_output and result.module.butterfly.complex


def test_real_only_search_and_named_search_modes():
    M = target_matrix("dct", 64)
    real_only = factorize(M, complex=False)
    assert real_only.lift is None and real_only.relative_error > 0.1 and not real_only.module.real_output
    bpp = factorize(M, permutation="bpp")
    assert bpp.relative_error < 1e-12 and ">" in bpp.permutation_name
    assert all(">" in key.split(":")[-1] for key in bpp.candidates)
    assert factorize(M).to_dict()["lift"] == "even-alt"


def test_lifts_are_skipped_when_the_real_fit_is_exact():
    result = factorize(target_matrix("hadamard", 64), permutation="bp")
    assert result.lift is None and not any(":" in key for key in result.candidates)


def test_lift_bad_input():
    with pytest.raises(ValueError, match="lift must be one of"):
        complex_lift(torch.eye(4, dtype=torch.float64), "hilbert")
    with pytest.raises(TypeError, match="real matrix"):
        complex_lift(torch.eye(4, dtype=torch.complex128), "even")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dct", "dst", "hartley"])
def test_real_transforms_through_a_lift_at_1024(name):
    assert factorize(target_matrix(name, 1024)).relative_error < 1e-12


# ------------------------------------------------------------------------------------ any shape (zero padding)


@pytest.mark.parametrize("rows,cols", [(100, 128), (128, 100), (100, 77), (64, 128)])
def test_a_block_of_a_butterfly_is_recovered_exactly_from_its_zero_padding(rows, cols):
    """Masking rows or columns of B P gives a butterfly again, so the zero-padded block of an exact BP matrix
    (here the 128-point DFT, bit-reversed) is factored exactly, and the module maps cols inputs to rows outputs."""
    M = target_matrix("dft", 128)[:rows, :cols]
    result = factorize(M)
    module = result.module
    assert result.relative_error < 1e-12 and result.rmse < 1e-13
    assert (module.in_features, module.out_features, module.size) == (cols, rows, 128)
    x = torch.randn(3, 2, cols, dtype=torch.float64).to(torch.complex128)
    y = module(x)
    assert y.shape == (3, 2, rows) and y.is_contiguous()
    torch.testing.assert_close(y, x @ M.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module.to_dense(), M, rtol=1e-12, atol=1e-12)
    info = result.to_dict()
    assert info["shape"] == [rows, cols] and info["n"] == 128
    assert f"{rows}×{cols} (zero-padded to 128×128)" in result.summary()


def test_a_block_is_fitted_as_its_zero_padding_with_the_error_measured_on_the_block():
    """The block's best fit is the padded matrix's restricted to it; the closed form is not exactly optimal, and
    what it puts outside the block does not count: the block's error is at most the padded matrix's. Real
    matrices with lifts, a given permutation, real twiddles only."""
    torch.manual_seed(0)
    M = torch.randn(20, 27, dtype=torch.float64)
    padded = torch.zeros(32, 32, dtype=torch.float64)
    padded[:20, :27] = M
    for options in ({}, {"permutation": "bitrev"}, {"complex": False}):
        block, square = factorize(M, **options), factorize(padded, **options)
        assert block.permutation_name == square.permutation_name
        assert block.relative_error <= square.relative_error + 1e-12
        torch.testing.assert_close(block.module.to_dense(), square.module.to_dense()[:20, :27])
        err = float((block.module.to_dense() - M).norm())
        assert block.relative_error == pytest.approx(err / float(M.norm()), rel=1e-12)
        assert block.rmse == pytest.approx(err / (20 * 27) ** 0.5, rel=1e-12)


def test_size_asks_for_a_larger_butterfly_and_small_shapes_work():
    M = target_matrix("dft", 128)[:64, :64]  # a 64 x 64 matrix: not a 64-point butterfly, a block of a 128-point one
    assert factorize(M).relative_error > 0.1
    result = factorize(M, size=128)
    assert result.relative_error < 1e-12 and result.module.size == 128
    one = factorize(torch.tensor([[3.0]]))  # 1 x 1: a 2-point butterfly
    assert one.module.size == 2 and one.relative_error < 1e-15
    torch.testing.assert_close(one.module(torch.tensor([[2.0]], dtype=torch.float64)),
                               torch.tensor([[6.0]], dtype=torch.float64))


def test_a_padded_module_saves_and_loads_with_its_sizes(tmp_path):
    module = factorize(torch.randn(12, 30, dtype=torch.float64), permutation="bp").module
    module.save(tmp_path / "m.safetensors")
    loaded = PermutedButterfly.load(tmp_path / "m.safetensors")
    assert (loaded.in_features, loaded.out_features) == (30, 12)
    x = torch.randn(4, 30, dtype=torch.float64)
    torch.testing.assert_close(loaded(x), module(x), rtol=0, atol=0)
    assert "in_features=30, out_features=12, n=32" in repr(loaded)


def test_the_gradient_method_fits_a_block_through_its_zero_padding():
    M = target_matrix("dft", 8)[:6, :5]  # a block of the 8-point DFT: an exact padded BP fit exists
    result = factorize(M, method="gradient", time_budget=60)
    assert (result.module.in_features, result.module.out_features) == (5, 6)
    assert result.rmse < 1e-4
    x = torch.randn(2, 5, dtype=torch.float64).to(torch.complex128)
    torch.testing.assert_close(result.module(x), x @ M.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("shape", [(37, 2), (2, 37), (2, 2), (32, 32), (24, 8), (8, 24), (5, 3), (3, 1), (1, 5)])
def test_leading_triplet_matches_the_svd(dtype, shape):
    """Every block's leading singular triplet, with no LAPACK call: a closed form for two columns (or rows), Gram
    squarings for larger blocks. The same σ₁ and the same best rank-one error as the SVD, unit singular vectors, on
    generic blocks, exact rank-one blocks, noisy rank-one blocks, equal singular values (an orthonormal block), tiny
    and huge scales, and zero blocks (u = v = 0)."""
    g = torch.Generator().manual_seed(1)
    p, q = shape
    generic = torch.randn(64, p, q, dtype=dtype, generator=g)
    rank_one = torch.randn(64, p, 1, dtype=dtype, generator=g) @ torch.randn(64, 1, q, dtype=dtype, generator=g)
    noisy = rank_one + 1e-3 * torch.randn(64, p, q, dtype=dtype, generator=g)
    one_column = generic.clone()
    one_column[..., :, 0] = 0 if q == 2 else one_column[..., :, 0]
    equal = torch.linalg.qr(torch.randn(64, max(p, q), min(p, q), dtype=dtype, generator=g)).Q  # σ's all 1
    equal = equal if p >= q else equal.mH
    blocks = torch.cat([generic, rank_one, noisy, one_column, equal, generic * 1e-150, generic * 1e150])
    u, s, vh = _leading_triplet(blocks)
    svals = torch.linalg.svdvals(blocks)
    assert torch.allclose(s, svals[:, 0], rtol=1e-13, atol=0)
    assert torch.allclose(u.norm(dim=-1), torch.ones(len(blocks), dtype=torch.float64), atol=1e-13)
    assert torch.allclose(vh.norm(dim=-1), torch.ones(len(blocks), dtype=torch.float64), atol=1e-13)
    residual = (blocks - s[:, None, None] * u[:, :, None] * vh[:, None, :]).flatten(1).norm(dim=1)
    best = svals[:, 1:].norm(dim=1)  # the Eckart–Young error
    scale = svals[:, 0]
    assert torch.all((residual - best).abs() <= 1e-13 * scale), float(((residual - best).abs() / scale).max())
    # the noisy rank-one blocks: the residual is the noise's, fitted as well as the SVD fits it
    assert torch.all((residual - best)[128:192].abs() <= 1e-9 * best[128:192] + 1e-13 * scale[128:192])
    u0, s0, vh0 = _leading_triplet(torch.zeros(3, p, q, dtype=dtype))
    assert not s0.any() and not u0.any() and not vh0.any()


@pytest.mark.parametrize("q", [4, 16, 32])
@pytest.mark.parametrize("tail", [0.0, 0.5])
def test_leading_triplet_of_nearly_tied_blocks_is_within_its_bound(q, tail):
    """Where σ₁ and σ₂ are nearly tied, the Gram squarings leave v at an angle to v₁ whose cost to the rank-one
    fit is bounded (``hierarchical._leading_right_vectors``: a relative 2.4e-4 of the best residual at most where
    measured); swept over the gap δ = 1 − σ₂² / σ₁² across the range where that cost peaks (δ near 1/2000), for
    blocks of rank two (``tail`` 0) and of full rank."""
    g = torch.Generator().manual_seed(0)
    deltas = torch.logspace(-7, -0.5, 200, dtype=torch.float64)
    count = len(deltas)
    basis_u = torch.linalg.qr(torch.randn(count, 2 * q, q, dtype=torch.float64, generator=g)).Q
    basis_v = torch.linalg.qr(torch.randn(count, q, q, dtype=torch.float64, generator=g)).Q
    rest = torch.rand(count, q - 2, dtype=torch.float64, generator=g) * tail
    sigma = torch.cat([torch.ones(count, 1, dtype=torch.float64), (1 - deltas).sqrt().unsqueeze(1), rest], 1)
    blocks = basis_u @ torch.diag_embed(sigma) @ basis_v.mT
    u, s, vh = _leading_triplet(blocks)
    residual = (blocks - s[:, None, None] * u[:, :, None] * vh[:, None, :]).flatten(1).norm(dim=1)
    best = sigma[:, 1:].norm(dim=1)
    assert torch.all(residual >= best * (1 - 1e-13))
    assert torch.all(residual <= best * (1 + 3e-4)), float((residual / best - 1).max())


def _gathered_split(T: torch.Tensor, m1: int, sigma_to: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The split of a node by its gathered blocks' leading triplets (split_node's general path, written out)."""
    a, d, m, _ = T.shape
    m2 = m // m1
    blocks = T.reshape(a, d, m1, m2, m1, m2).permute(0, 4, 3, 1, 2, 5)  # (ia, c1, r2, id, r1, c2)
    u, s, vh = _leading_triplet(blocks)
    if sigma_to == "left":
        u = u * s.unsqueeze(-1)
    else:
        vh = vh * s.unsqueeze(-1)
    return u.permute(0, 2, 3, 4, 1).reshape(a, m2 * d, m1, m1), vh.permute(0, 1, 3, 2, 4).reshape(a * m1, d, m2, m2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float32])
@pytest.mark.parametrize("steps", ["one", "many"])
def test_one_factor_splits_read_in_place_equal_the_gathered_split(monkeypatch, dtype, steps):
    """The splits of the right and left orders (one side a single factor: blocks m1 × 2 or 2 × m2) read the node
    in place, in steps of rows, instead of gathering its blocks: the same left and right parts as the gathered
    blocks' closed-form triplets, on generic nodes with zero blocks, transposed (strided) nodes and exact
    butterflies' nodes, for σ on either side; one step or a step per row, the same. A matrix factored with its
    columns read in a given order (no permuted copy) gives the twiddle of the permuted copy, in every order."""
    module = sys.modules[hierarchical_twiddle.__module__]  # twiddle.factorize is also the function's name
    monkeypatch.setattr(module, "_STEP_BYTES", 1 << 30 if steps == "one" else 1)
    g = torch.Generator().manual_seed(3)
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    cases = 0
    for a, d, m in [(1, 1, 4), (2, 4, 8), (1, 1, 64), (4, 2, 16), (1, 8, 2), (3, 1, 32)]:
        for m1 in sorted({2, m // 2}):
            for sigma_to in ("left", "right"):
                T = torch.randn(a, d, m, m, dtype=dtype, generator=g)
                T[0, 0, :, : m // m1] = 0  # zero blocks
                for node in (T, T.mT.contiguous().mT):
                    left, right = split_node(node, m1, sigma_to)
                    want_left, want_right = _gathered_split(T, m1, sigma_to)
                    assert left.shape == want_left.shape and right.shape == want_right.shape
                    scale = float(T.abs().max())
                    assert float((left - want_left).abs().max()) <= tol * scale
                    assert float((right - want_right).abs().max()) <= tol * scale
                    cases += 1
    assert cases == 44
    # an exact butterfly, complex: every order reproduces it through these splits
    target = random_butterfly_matrix(64, complex=True).to(dtype) if dtype.is_complex else \
        random_butterfly_matrix(64).to(dtype)
    for order in ("right", "left"):
        twiddle = hierarchical_twiddle(target, order)
        dense = Butterfly(64, 64, bias=False, complex=dtype.is_complex, init=twiddle, dtype=twiddle.real.dtype
                          if dtype.is_complex else dtype).to_dense().detach()
        assert float((dense - target).norm() / target.norm()) < 10 * tol, order
    generic = torch.randn(64, 64, dtype=dtype, generator=g)
    perm = torch.randperm(64, generator=g)
    for matrix in (generic, target):
        for order in ORDERS:
            got = hierarchical_twiddle(matrix, order, columns=perm)
            want = hierarchical_twiddle(matrix[:, perm], order)
            assert float((got - want).abs().max()) <= 100 * tol * float(want.abs().max()), order
    assert torch.equal(hierarchical_twiddle(generic[:2, :2], "right", columns=torch.tensor([1, 0])),
                       hierarchical_twiddle(generic[:2, :2][:, [1, 0]], "right"))


def test_the_split_calls_no_svd(monkeypatch):
    """LAPACK's gesdd fails to converge on rare well-scaled blocks (seen: a complex 32 × 32 block of a shuffled
    butterfly at n = 1024, balanced order): the splits call no SVD, and every order is exact without one."""
    torch.manual_seed(0)
    layer = Butterfly(64, 64, bias=False, complex=True).double()
    target = layer.to_dense().detach()
    want = hierarchical_twiddle(target, "balanced")

    def no_svd(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", no_svd)
    for order in ("balanced", "left", "right"):
        got = hierarchical_twiddle(target, order)
        dense = Butterfly(64, 64, bias=False, complex=True, init=got, dtype=torch.float64).to_dense().detach()
        assert float((dense - target).norm() / target.norm()) < 1e-12, order
    assert got.shape == want.shape
    zero = hierarchical_twiddle(torch.zeros(8, 8, dtype=torch.float64), "right")
    assert torch.isfinite(zero).all() and not zero.any()


def test_the_hierarchical_search_shows_progress_when_asked(capsys):
    """``progress=True`` (the CLI's default without --json) puts a bar over the candidates on stderr; stdout stays
    clean and the result is the same as without it."""
    target = target_matrix("dct", 16)
    quiet = factorize(target)
    assert capsys.readouterr().err == ""
    shown = factorize(target, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "hierarchical (right) n=16" in captured.err and "candidate" in captured.err and "best=" in captured.err
    assert shown.permutation_name == quiet.permutation_name and shown.relative_error == quiet.relative_error


# ------------------------------------------------------------------------------------ time budget of the search


def test_the_closed_form_search_stops_at_its_time_budget_and_says_so():
    """A budget that has run out after the first candidate leaves the rest untried: the best fit so far comes back
    (a valid fit: its error is the module's), with a warning and ``result.untried``; the summary and to_dict say
    so too."""
    M = torch.randn(32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"time budget \(1e-09 s\) ran out with \d+ candidate permutations"):
        result = factorize(M, time_budget=1e-9)
    assert result.untried > 200  # 8 BP x 7 matrices, read-offs, 36 BPP x 7: one tried
    assert len(result.candidates) <= 1
    with torch.no_grad():
        dense = result.module(torch.eye(32, dtype=torch.float64)).T
    assert result.relative_error == pytest.approx(float((dense - M).norm() / M.norm()), rel=1e-9)
    assert "left untried" in result.summary() and result.to_dict()["untried"] == result.untried


def test_a_search_within_its_budget_tries_every_candidate(recwarn):
    M = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = factorize(M)
    assert result.untried == 0 and len(result.candidates) > 200
    assert not [w for w in recwarn if "time budget" in str(w.message)]
    assert "untried" not in result.summary()


def test_the_spectral_search_honours_the_time_budget():
    """model="bpbp" on a matrix no butterfly diagonalizes falls back to the one-butterfly search: budget applies."""
    M = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="time budget"):
        result = factorize(M, model="bpbp", time_budget=1e-9)
    assert result.untried > 0


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), "10", True])
def test_time_budget_must_be_a_positive_number_for_every_method(budget):
    for method in ("hierarchical", "gradient"):
        with pytest.raises(ValueError, match="time_budget must be a positive number"):
            factorize(torch.eye(4), method=method, time_budget=budget)
