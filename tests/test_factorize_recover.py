"""The permutation of M = B P read off M in closed form (twiddle.factorize.recover)."""

from __future__ import annotations

import pytest
import torch

import twiddle
from twiddle.factorize import (
    LIFTS,
    complex_lift,
    factorize,
    recover_both_permutations,
    recover_permutation,
    target_matrix,
)
from twiddle.factorize.recover import _bottom_up_units, _mutual_best_pairs, _two_colouring, read_off_order


def _butterfly(n: int, *, complex: bool = False, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    layer = twiddle.Butterfly(n, n, bias=False, complex=complex).double()
    return layer.to_dense().detach()


def _is_permutation(perm: torch.Tensor, n: int) -> bool:
    return perm.dtype == torch.long and torch.equal(perm.sort().values, torch.arange(n))


@pytest.mark.parametrize("n", [2, 4, 8, 64, 512])
@pytest.mark.parametrize("complex", [False, True])
def test_a_butterfly_with_any_column_permutation_is_recovered_exactly(n, complex):
    B = _butterfly(n, complex=complex, seed=n)
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    M = B[:, shuffle]
    perm = recover_permutation(M)
    assert _is_permutation(perm, n)
    result = factorize(M, permutation=perm)
    assert result.relative_error < 1e-12
    # "auto" finds it too, as one candidate after the BP permutations (none of which fits a random shuffle)
    auto = factorize(M)
    assert auto.relative_error < 1e-12
    if n >= 8:
        assert auto.permutation_name == "recovered" and auto.lift is None
    x = torch.randn(3, n, dtype=M.dtype)
    torch.testing.assert_close(auto.module(x), x @ M.T, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", ["dft", "hadamard"])
def test_transforms_with_shuffled_columns(name):
    n = 128
    M = target_matrix(name, n)[:, torch.randperm(n, generator=torch.Generator().manual_seed(2))]
    assert factorize(M, permutation="recover").relative_error < 1e-12


def test_sparse_matrices_take_a_balanced_two_colouring():
    """A permutation matrix's columns conflict only in pairs (most pairs of columns share no row): many splits are
    valid, and the balanced colouring picks one that keeps every pair apart."""
    n = 64
    P = torch.eye(n, dtype=torch.float64)[:, torch.randperm(n, generator=torch.Generator().manual_seed(3))]
    assert factorize(P, permutation="recover").relative_error < 1e-14
    # a butterfly with zeroed twiddles: blocks of zeros and a few nonzero columns
    B = _butterfly(n, seed=4)
    B[:, ::3] = 0
    assert factorize(B[:, torch.randperm(n)], permutation="recover").relative_error < 1e-12


def test_a_real_matrix_exact_only_through_a_complex_lift():
    """The DCT is the real part of a complex B P: "recover" reads the permutation off its lifts (a lift depends on
    the column order, so a real matrix's columns must come in the order its lift needs; the lift's own columns can
    come in any order)."""
    n = 64
    result = factorize(target_matrix("dct", n), permutation="recover")
    assert result.relative_error < 1e-12 and result.lift is not None
    assert result.permutation_name == "recovered"
    tried = {"recovered", "recovered-rows", "recovered-hybrid", "recovered-rows-hybrid", "recovered-both"}
    assert set(result.candidates) <= tried | {f"{lift}:{name}" for lift in LIFTS for name in tried}
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    lifted = complex_lift(target_matrix("dct", n), result.lift)[:, shuffle]
    assert factorize(lifted, permutation=recover_permutation(lifted)).relative_error < 1e-12


def test_padded_blocks_and_the_size_argument():
    B = _butterfly(256, seed=6)
    block = B[:200, :150][:, torch.randperm(150, generator=torch.Generator().manual_seed(7))]
    result = factorize(block, permutation="recover")
    assert result.relative_error < 1e-12 and result.module.in_features == 150
    assert _is_permutation(recover_permutation(block), 256)
    assert _is_permutation(recover_permutation(block, size=512), 512)


@pytest.mark.parametrize("noise", [1e-6, 1e-4, 1e-3])
def test_noisy_products_fit_to_the_noise_level(noise):
    """With noise there is no clean split: each block falls back to a balanced two-means on the conflict scores.
    The fit under the recovered permutation is within 1.5x of the fit under the true one (at 1% noise it is not
    always: 1.0-1.7x over six seeds at n = 256 with the hybrid order, below)."""
    n = 256
    B = _butterfly(n, seed=8)
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(9))
    M = B[:, shuffle]
    noisy = M + noise * M.std() * torch.randn(M.shape, generator=torch.Generator().manual_seed(10), dtype=M.dtype)
    truth = factorize(noisy, permutation=torch.argsort(shuffle)).relative_error
    got = factorize(noisy, permutation="recover").relative_error
    assert truth < 2 * noise and got < 1.5 * truth


def test_the_hybrid_order_rescues_a_noisy_case_the_top_down_order_misses():
    """1% noise, n = 64: a deep split of the top-down order goes wrong (10x the true permutation's error); the
    hybrid order, its lowest levels paired from the bottom over many more rows, fits as well as the truth."""
    n, noise, seed = 64, 1e-2, 3
    torch.manual_seed(100 + seed)
    B = twiddle.Butterfly(n, n, bias=False).double().to_dense().detach()
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    M = B[:, shuffle]
    noisy = M + noise * M.std() * torch.randn(M.shape, generator=torch.Generator().manual_seed(50 + seed),
                                              dtype=M.dtype)
    truth = factorize(noisy, permutation=torch.argsort(shuffle), complex=False).relative_error
    result = factorize(noisy, permutation="recover", complex=False)
    assert result.candidates["recovered"] > 3 * truth
    assert result.permutation_name == "recovered-hybrid" and result.relative_error < 1.05 * truth
    assert _is_permutation(result.permutation, n)


def test_exact_products_get_the_top_down_order_only():
    n = 128
    B = _butterfly(n, seed=12)
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(13))
    M = B[:, shuffle]
    for side, matrix in (("columns", M), ("rows", B[shuffle])):
        for hybrid in (False, True):
            order, clean = read_off_order(matrix, side=side, hybrid=hybrid)
            assert clean
            fitted = matrix[:, order] if side == "columns" else matrix[order]
            assert factorize(fitted, permutation="identity").relative_error < 1e-12
    result = factorize(M, permutation="recover")
    assert result.permutation_name == "recovered" and "recovered-hybrid" not in result.candidates
    hybrid = recover_permutation(M, method="hybrid")
    assert factorize(M, permutation=hybrid).relative_error < 1e-12


@pytest.mark.parametrize("complex", [False, True])
def test_bottom_up_units_are_the_inputs_of_sub_butterflies(complex):
    """On an exact B P, each group of 2^k columns paired from the bottom is the set of inputs of one sub-butterfly
    of the first k factors: columns {2^k g, ..., 2^k g + 2^k - 1} of B."""
    n, levels = 64, 3
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(14))
    M = _butterfly(n, complex=complex, seed=15)[:, shuffle]
    units = _bottom_up_units(M, levels)
    assert units.shape == (n >> levels, 1 << levels)
    groups = {frozenset((shuffle[u] >> levels).tolist()) for u in units}  # column j of M is column shuffle[j] of B
    assert all(len(g) == 1 for g in groups) and len(groups) == n >> levels


def test_mutual_best_pairs_is_a_perfect_matching():
    import numpy as np

    rng = np.random.default_rng(16)
    for m in [2, 6, 32]:
        scores = rng.random((m, m))
        scores = scores + scores.T
        pairs = _mutual_best_pairs(scores)
        assert pairs.shape == (m // 2, 2)
        assert sorted(pairs.reshape(-1).tolist()) == list(range(m))
    # ties in a cycle (each item's first best partner prefers another) and NaN scores still end in a matching
    cycle = np.array([[0, 1, 2, 1], [1, 0, 1, 2], [2, 1, 0, 1], [1, 2, 1, 0]], dtype=float)
    assert sorted(_mutual_best_pairs(cycle).reshape(-1).tolist()) == [0, 1, 2, 3]
    assert sorted(_mutual_best_pairs(np.zeros((6, 6))).reshape(-1).tolist()) == list(range(6))
    assert sorted(_mutual_best_pairs(np.full((4, 4), np.nan)).reshape(-1).tolist()) == [0, 1, 2, 3]
    # items that are each other's nearest are paired
    scores = np.array([[0, 5, 1, 9], [5, 0, 9, 2], [1, 9, 0, 9], [2, 2, 9, 0]], dtype=float)
    assert sorted(map(sorted, _mutual_best_pairs(scores).tolist())) == [[0, 2], [1, 3]]


def test_a_matrix_that_is_no_butterfly_still_gets_a_permutation():
    M = torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    assert _is_permutation(recover_permutation(M), 64)
    assert factorize(M, permutation="recover").relative_error > 0.1


def test_two_colouring():
    conflict = torch.zeros(6, 6, dtype=torch.bool)
    for a, b in [(0, 1), (1, 2), (3, 4)]:  # a path 0-1-2 (sides {0, 2} / {1}), an edge 3-4, 5 alone
        conflict[a, b] = conflict[b, a] = True
    mask = _two_colouring(conflict.numpy(), 3)
    assert mask is not None and mask.sum() == 3
    for a, b in [(0, 1), (1, 2), (3, 4)]:
        assert mask[a] != mask[b]
    conflict[0, 2] = conflict[2, 0] = True  # a triangle: no clean split
    assert _two_colouring(conflict.numpy(), 3) is None
    star = torch.zeros(4, 4, dtype=torch.bool)
    star[0, 1:] = star[1:, 0] = True  # sides {0} / {1, 2, 3}: no split into 2 + 2
    assert _two_colouring(star.numpy(), 2) is None


def test_bad_arguments():
    M = _butterfly(8)
    with pytest.raises(ValueError, match="size must be a power of two"):
        recover_permutation(M, size=12)
    with pytest.raises(ValueError, match="tol must be a non-negative"):
        recover_permutation(M, tol=-1.0)
    with pytest.raises(ValueError, match="method must be 'top-down' or 'hybrid'"):
        recover_permutation(M, method="bottom-up")
    with pytest.raises(ValueError, match="matrix contains NaN"):
        recover_permutation(torch.full((4, 4), float("nan")))
    with pytest.raises(ValueError, match="'recover'"):
        factorize(M, permutation="recovery")


@pytest.mark.parametrize("n", [2, 4, 8, 64, 512])
@pytest.mark.parametrize("complex", [False, True])
def test_a_butterfly_with_any_row_permutation_is_recovered_exactly(n, complex):
    """M = Q B: the rows' order is read off the transpose (Bᵀ is a butterfly with its positions' bits reversed on
    both sides), and the fit is Q B with Q the module's output permutation."""
    B = _butterfly(n, complex=complex, seed=n + 1)
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    M = B[shuffle]
    rows = recover_permutation(M, side="rows")
    assert _is_permutation(rows, n)
    assert factorize(M[rows], permutation="identity").relative_error < 1e-12
    result = factorize(M, permutation="recover")
    assert result.relative_error < 1e-12
    x = torch.randn(3, n, dtype=M.dtype)
    torch.testing.assert_close(result.module(x), x @ M.T, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(result.module.to_dense(), M, rtol=1e-11, atol=1e-12)
    if n >= 8:  # (smaller ones are fitted by a column permutation as well)
        assert result.permutation_name == "recovered-rows" and result.output_permutation is not None
        assert torch.equal(result.permutation, torch.arange(n))
        assert torch.equal(result.module.output_permutation.perm, result.output_permutation)
        assert "permutation of its rows" in result.summary() and result.to_dict()["output_permutation"]
        auto = factorize(M)
        assert auto.relative_error < 1e-12 and auto.permutation_name == "recovered-rows"


def test_recover_tries_columns_first_and_stops_at_an_exact_fit():
    M = _butterfly(64, seed=3)[:, torch.randperm(64, generator=torch.Generator().manual_seed(4))]
    result = factorize(M, permutation="recover")
    assert result.permutation_name == "recovered" and result.output_permutation is None
    assert result.candidates == {}  # one candidate tried: the rows' one was not needed
    with pytest.raises(ValueError, match="side must be 'columns' or 'rows'"):
        recover_permutation(M, side="both")


def test_row_recovery_of_padded_blocks():
    """A padded block with its rows shuffled is recovered by the rows' read-off alone."""
    B = _butterfly(256, seed=7)
    block = B[:200, :150][torch.randperm(200, generator=torch.Generator().manual_seed(8))]
    result = factorize(block, permutation="recover")
    assert result.relative_error < 1e-12 and result.permutation_name == "recovered-rows"
    assert (result.module.in_features, result.module.out_features) == (150, 200)
    x = torch.randn(4, 150, dtype=torch.float64)
    torch.testing.assert_close(result.module(x), x @ block.T, rtol=1e-11, atol=1e-12)


def test_permuted_butterfly_with_an_output_permutation_saves_loads_and_pickles(tmp_path):
    """The output permutation through every path: forward (fused into the butterfly's store, or after further
    stages), to_dense, gradients, safetensors (format 2 only when there is one), and pickles from before it."""
    import io
    import pickle

    from twiddle.factorize import PermutedButterfly

    n = 16
    g = torch.Generator().manual_seed(12)
    perm, out = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
    tw = torch.randn(1, 1, 4, n // 2, 2, 2, dtype=torch.complex128, generator=g)
    tw2 = torch.randn(1, 1, 4, n // 2, 2, 2, dtype=torch.complex128, generator=g)
    for then in ((), ((torch.randperm(n, generator=g), tw2),)):
        module = PermutedButterfly(perm, tw, real_output=True, then=then, in_features=13, out_features=11,
                                   out_perm=out)
        plain = PermutedButterfly(perm, tw, real_output=True, then=then)
        full = plain.to_dense()[out]  # Q applied to the unpadded product
        torch.testing.assert_close(module.to_dense(), full[:11, :13], rtol=1e-12, atol=1e-12)
        x = torch.randn(5, 13, dtype=torch.float64, requires_grad=True)
        y = module(x)
        torch.testing.assert_close(y, x @ full[:11, :13].T, rtol=1e-11, atol=1e-12)
        y.square().sum().backward()
        want = torch.autograd.grad((x @ full[:11, :13].T).square().sum(), x)[0]
        torch.testing.assert_close(x.grad, want, rtol=1e-11, atol=1e-12)
        path = tmp_path / f"m{len(then)}.safetensors"
        module.save(path)
        loaded = PermutedButterfly.load(path)
        assert torch.equal(loaded.output_permutation.perm, out)
        torch.testing.assert_close(loaded(x.detach()), y.detach(), rtol=0, atol=0)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "twiddle.PermutedButterfly/2"
    plain.save(tmp_path / "plain.safetensors")
    with safe_open(str(tmp_path / "plain.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "twiddle.PermutedButterfly/1" and "out_perm" not in f.keys()
    with pytest.raises(ValueError, match="out_perm must permute n = 16"):
        PermutedButterfly(perm, tw, out_perm=torch.arange(8))
    old = PermutedButterfly(perm, tw)
    del old.__dict__["output_permutation"]  # as a module pickled before output permutations existed
    buffer = io.BytesIO()
    pickle.dump(old, buffer)
    buffer.seek(0)
    revived = pickle.load(buffer)
    assert revived.output_permutation is None
    torch.testing.assert_close(revived.to_dense(), PermutedButterfly(perm, tw).to_dense(), rtol=0, atol=0)


def _shuffle_both(M: torch.Tensor, seed: int) -> torch.Tensor:
    n = M.shape[0]
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cols = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    return M[rows][:, cols]


@pytest.mark.parametrize("n", [2, 4, 8, 64, 256])
@pytest.mark.parametrize("complex", [False, True])
def test_a_butterfly_with_both_sides_permuted_is_recovered_exactly(n, complex):
    M = _shuffle_both(_butterfly(n, complex=complex, seed=20 + n), seed=n)
    rows, perm = recover_both_permutations(M)
    assert _is_permutation(rows, n) and _is_permutation(perm, n)
    assert factorize(M[rows][:, perm], permutation="identity").relative_error < 1e-12
    auto = factorize(M)
    assert auto.relative_error < 1e-12
    if n >= 8:  # smaller ones have exact fits among the BP permutations' neighbours (every 2 x 2 is a butterfly)
        assert auto.permutation_name == "recovered-both" and auto.output_permutation is not None
        assert "a permutation of its columns" in auto.summary()
    x = torch.randn(3, n, dtype=M.dtype)
    torch.testing.assert_close(auto.module(x), x @ M.T, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", ["dft", "hadamard"])
def test_symmetric_transforms_with_both_sides_permuted(name):
    """Many rows of the DFT and Hadamard matrices agree with the anchor on half the columns: any of them fixes a
    valid split."""
    M = _shuffle_both(target_matrix(name, 128), seed=21)
    result = factorize(M, permutation="recover")
    assert result.relative_error < 1e-12 and result.permutation_name == "recovered-both"


def test_the_dct_with_shuffled_rows_is_exact_through_a_lift():
    """The lifts act on each row alone, so the lift of Q M is Q times the lift of M: the DCT's lift is B P, and with
    its rows shuffled Q B P, read off both sides."""
    n = 128
    D = target_matrix("dct", n)[torch.randperm(n, generator=torch.Generator().manual_seed(22))]
    result = factorize(D, permutation="recover")
    assert result.relative_error < 1e-12
    assert result.permutation_name == "recovered-both" and result.lift is not None
    x = torch.randn(4, n, dtype=torch.float64)
    torch.testing.assert_close(result.module(x), x @ D.T, rtol=1e-11, atol=1e-12)


def test_both_sides_of_a_padded_block():
    n, rows, cols = 64, 50, 40
    M = _shuffle_both(_butterfly(n, seed=23), seed=24)[:rows, :cols]
    out_order, perm = recover_both_permutations(M)
    assert out_order.shape == (n,) and perm.shape == (n,)
    result = factorize(M, permutation="recover")
    assert result.relative_error < 1e-12
    x = torch.randn(2, cols, dtype=torch.float64)
    torch.testing.assert_close(result.module(x), x @ M.T, rtol=1e-11, atol=1e-12)


def test_one_sided_matrices_do_not_pay_for_the_two_sided_read_off():
    n = 64
    M = _butterfly(n, seed=25)[:, torch.randperm(n, generator=torch.Generator().manual_seed(26))]
    result = factorize(M)
    assert result.permutation_name == "recovered" and "recovered-both" not in result.candidates
    with pytest.raises(ValueError, match="tol must be a non-negative"):
        recover_both_permutations(M, tol=-1.0)


def _noisy_both(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M, rows, perm): a random butterfly with both sides shuffled plus Gaussian noise; M[rows][:, perm] ≈ B."""
    torch.manual_seed(100 + seed)
    B = twiddle.Butterfly(n, n, bias=False).double().to_dense().detach()
    gen = torch.Generator().manual_seed(seed)
    q, p = torch.randperm(n, generator=gen), torch.randperm(n, generator=gen)
    clean = B[q][:, p]
    noisy = clean + noise * clean.std() * torch.randn(clean.shape, generator=torch.Generator().manual_seed(50 + seed),
                                                      dtype=clean.dtype)
    return noisy, torch.argsort(q), torch.argsort(p)


def test_the_noisy_row_pairing_finds_the_true_pairs():
    """1% noise, no row agrees exactly with any other: the top level's pairs (rows p and p + n/2 of B) are still
    found, from the partner nearest parallel on half the columns and halves and pairs refined in turn."""
    from twiddle.factorize.recover import CONFLICT_TOLERANCE, _row_pairing

    n = 64
    M, rows, _ = _noisy_both(n, 1e-2, seed=0)
    first, second, exact, _ = _row_pairing(M.unsqueeze(0), CONFLICT_TOLERANCE)
    position = torch.argsort(rows)  # row i of M is row position[i] of B
    assert not exact
    assert torch.equal(position[first] % (n // 2), position[second] % (n // 2))


@pytest.mark.parametrize("n,seed", [(64, 0), (256, 2)])
def test_noisy_two_sided_products_are_refined_side_by_side(n, seed):
    """1% noise: the two-sided read-off alone fits several times worse than the true orders; method='hybrid'
    (each side re-read with the other fixed) and factorize's search come to within 1.4x of them."""
    M, rows, perm = _noisy_both(n, 1e-2, seed)

    def error(r, p):
        return factorize(M[r][:, p], permutation="identity", complex=False).relative_error

    truth = error(rows, perm)
    plain = recover_both_permutations(M)
    hybrid = recover_both_permutations(M, method="hybrid")
    assert all(_is_permutation(order, n) for order in (*plain, *hybrid))
    assert error(*plain) > 3 * truth
    assert error(*hybrid) < 1.4 * truth
    result = factorize(M, permutation="recover", complex=False)
    assert result.permutation_name == "recovered-both-hybrid" and result.relative_error < 1.4 * truth
    assert result.candidates["recovered-both-hybrid"] == result.relative_error


def test_the_hybrid_two_sided_method_changes_nothing_on_exact_products():
    M = _shuffle_both(_butterfly(64, seed=30), seed=31)
    assert all(torch.equal(a, b) for a, b in zip(recover_both_permutations(M),
                                                 recover_both_permutations(M, method="hybrid"), strict=True))
    with pytest.raises(ValueError, match="method must be 'top-down' or 'hybrid'"):
        recover_both_permutations(M, method="refined")


def test_butterfly_fit_error_measures_the_closed_form_fit():
    from twiddle.factorize.hierarchical import butterfly_fit_error

    B = _butterfly(32, seed=40)
    assert butterfly_fit_error(B) < 1e-13
    M = torch.randn(32, 32, dtype=torch.float64)
    assert butterfly_fit_error(M) == pytest.approx(factorize(M, permutation="identity", complex=False).relative_error,
                                                   rel=1e-12)
    assert butterfly_fit_error(torch.zeros(8, 8, dtype=torch.float64)) == 0.0


def test_the_two_sided_read_off_gives_up_on_a_matrix_with_no_such_structure():
    """A Gaussian matrix's top-level row pairing scores near 1 (no pair of rows is nearly parallel on half the
    columns): the read-off returns the identity orders, not clean, without reading the lower levels. A shuffled
    butterfly with 30 % noise still scores well below the threshold and gets its orders read."""
    from twiddle.factorize.recover import _UNSTRUCTURED, CONFLICT_TOLERANCE, _row_pairing, recover_two_sided

    n = 128
    M = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    columns, rows, clean = recover_two_sided(M)
    assert not clean and torch.equal(columns, torch.arange(n)) and torch.equal(rows, torch.arange(n))
    assert _row_pairing(M.unsqueeze(0), CONFLICT_TOLERANCE)[3] > _UNSTRUCTURED
    noisy, _, _ = _noisy_both(n, 0.3, seed=1)
    assert _row_pairing(noisy.unsqueeze(0), CONFLICT_TOLERANCE)[3] < _UNSTRUCTURED
    columns, rows, clean = recover_two_sided(noisy)
    assert not clean and not torch.equal(rows, torch.arange(n))


def test_refine_two_sided_stops_after_a_round_once_its_deadline_has_passed():
    import time

    from twiddle.factorize.recover import recover_two_sided, refine_two_sided

    M, _, _ = _noisy_both(64, 1e-2, seed=0)
    columns, rows, clean = recover_two_sided(M)
    assert not clean
    assert len(refine_two_sided(M, columns, rows)) > 1  # the case needs several rounds without a deadline
    assert len(refine_two_sided(M, columns, rows, deadline=time.perf_counter() - 1)) == 1
