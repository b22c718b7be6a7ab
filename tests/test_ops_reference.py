"""The reference multiply against independently built dense/sparse factor matrices (float64, rtol 1e-10)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dense_reference import (
    apply_map,
    apply_map_transpose,
    factor_matrix_loop,
    factor_matrix_sparse,
    full_matrix,
    torch_dense_map,
)
from twiddle._layout import twiddle_shape
from twiddle.ops import butterfly_multiply

RTOL = 1e-10


def random_twiddle(nstacks: int, nblocks: int, n: int, complex: bool, requires_grad: bool = False):
    shape = twiddle_shape(nstacks, nblocks, n)
    dtype = torch.complex128 if complex else torch.float64
    t = torch.randn(shape, dtype=dtype) / np.sqrt(2)  # keep products O(1) even for many factors
    return t.requires_grad_(requires_grad)


def rel_err(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def test_sparse_factor_builder_matches_loop():
    rng = np.random.default_rng(0)
    for n in (2, 4, 8, 16):
        for stride in (1 << k for k in range(n.bit_length() - 1)):
            t = rng.standard_normal((n // 2, 2, 2))
            np.testing.assert_array_equal(
                factor_matrix_sparse(t, stride).toarray(), factor_matrix_loop(t, stride)
            )


SMALL_GRID = list(
    itertools.product(
        [1, 2, 4, 8, 16, 32, 64],  # n
        [True, False],  # increasing_stride
        [1, 2, 3],  # nblocks
        [1, 3],  # nstacks
        [False, True],  # complex
    )
)


@pytest.mark.parametrize("n,increasing,nblocks,nstacks,complex", SMALL_GRID)
def test_small_against_dense_product(n, increasing, nblocks, nstacks, complex):
    t = random_twiddle(nstacks, nblocks, n, complex)
    tn = t.numpy()
    for in_size, out_size in {(n, nstacks * n), (max(1, n - 3), max(1, nstacks * n - 5)), (1, 1)}:
        M = full_matrix(tn, increasing, in_size, out_size)
        x = torch.randn(5, in_size, dtype=torch.float64)
        y = butterfly_multiply(t, x, increasing, out_size=out_size)
        assert y.shape == (5, out_size)
        assert rel_err(y, x.numpy() @ M.T) < RTOL
        # transpose and conjugate transpose are the exact (Hermitian) adjoints
        z = torch.randn(4, out_size, dtype=torch.float64)
        yt = butterfly_multiply(t, z, increasing, out_size=in_size, transpose=True)
        assert rel_err(yt, z.numpy() @ M) < RTOL
        yh = butterfly_multiply(t, z, increasing, out_size=in_size, transpose=True, conjugate=True)
        assert rel_err(yh, z.numpy() @ M.conj()) < RTOL
        yc = butterfly_multiply(t, x, increasing, out_size=out_size, conjugate=True)
        assert rel_err(yc, x.numpy() @ M.conj().T) < RTOL


LARGE = [128, 256, 512, 1024, 2048, 4096]


@pytest.mark.parametrize("n", LARGE)
@pytest.mark.parametrize(
    "increasing,nblocks,nstacks,complex",
    [(True, 1, 1, False), (False, 2, 2, True), (True, 3, 1, True), (False, 1, 2, False)],
)
def test_large_against_sparse_factors(n, increasing, nblocks, nstacks, complex):
    t = random_twiddle(nstacks, nblocks, n, complex)
    tn = t.numpy()
    in_size, out_size = n - 7, nstacks * n - 3
    x = torch.randn(3, in_size, dtype=torch.float64)
    y = butterfly_multiply(t, x, increasing, out_size=out_size)
    assert rel_err(y, apply_map(tn, increasing, x.numpy(), out_size)) < RTOL
    z = torch.randn(3, out_size, dtype=torch.complex128 if complex else torch.float64)
    for conj in (False, True):
        yt = butterfly_multiply(t, z, increasing, out_size=in_size, transpose=True, conjugate=conj)
        assert rel_err(yt, apply_map_transpose(tn, increasing, z.numpy(), in_size, conj)) < RTOL


@pytest.mark.parametrize(
    "n,increasing,nblocks,nstacks,complex",
    [
        (8, True, 1, 1, False),
        (16, False, 2, 2, True),
        (32, True, 3, 1, False),
        (64, False, 1, 3, True),
        (4, True, 2, 1, True),
    ],
)
@pytest.mark.parametrize("transpose", [False, True])
def test_gradients_against_dense_autograd(n, increasing, nblocks, nstacks, complex, transpose):
    t1 = random_twiddle(nstacks, nblocks, n, complex, requires_grad=True)
    t2 = t1.detach().clone().requires_grad_(True)
    in_size, out_size = max(1, n - 1), nstacks * n - 2
    dtype = torch.complex128 if complex else torch.float64
    if transpose:
        in_size, out_size = out_size, in_size
    x1 = torch.randn(2, 3, in_size, dtype=dtype, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(2, 3, out_size, dtype=dtype)
    y1 = butterfly_multiply(t1, x1, increasing, out_size=out_size, transpose=transpose)
    if transpose:
        M = torch_dense_map(t2, increasing, out_size, in_size).T
    else:
        M = torch_dense_map(t2, increasing, in_size, out_size)
    y2 = x2 @ M.T
    assert rel_err(y1.detach(), y2.detach()) < RTOL
    (y1 * g.conj()).real.sum().backward()
    (y2 * g.conj()).real.sum().backward()
    assert rel_err(x1.grad, x2.grad) < RTOL
    assert rel_err(t1.grad, t2.grad) < RTOL


@pytest.mark.parametrize(
    "n,nblocks,nstacks,complex,transpose",
    [
        (1, 1, 2, False, False),
        (2, 2, 1, True, True),
        (4, 1, 2, False, True),
        (8, 2, 1, True, False),
        (8, 1, 1, False, False),
    ],
)
def test_gradcheck(n, nblocks, nstacks, complex, transpose):
    t = random_twiddle(nstacks, nblocks, n, complex, requires_grad=True)
    m = nstacks * n if transpose else n
    x = torch.randn(3, m, dtype=torch.complex128 if complex else torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda tw, xx: butterfly_multiply(tw, xx, False, transpose=transpose), (t, x)
    )


def test_leading_dimensions_and_noncontiguous():
    t = random_twiddle(2, 1, 16, False)
    x = torch.randn(4, 3, 5, 16, dtype=torch.float64)
    y = butterfly_multiply(t, x)
    assert y.shape == (4, 3, 5, 32)
    flat = butterfly_multiply(t, x.reshape(-1, 16)).reshape(4, 3, 5, 32)
    torch.testing.assert_close(y, flat, rtol=0, atol=0)
    xt = torch.randn(16, 7, dtype=torch.float64).T  # non-contiguous
    torch.testing.assert_close(
        butterfly_multiply(t, xt), butterfly_multiply(t, xt.contiguous()), rtol=0, atol=0
    )
    one = butterfly_multiply(t, torch.randn(16, dtype=torch.float64))  # no batch dimension
    assert one.shape == (32,)


def test_dtype_promotion_and_low_precision():
    t = random_twiddle(1, 1, 32, False)
    x = torch.randn(4, 32, dtype=torch.float64)
    ref = butterfly_multiply(t, x)
    # real input, complex twiddle -> complex
    y = butterfly_multiply(t.to(torch.complex128), x)
    assert y.dtype == torch.complex128
    torch.testing.assert_close(y.real, ref)
    for low in (torch.float16, torch.bfloat16):
        y = butterfly_multiply(t.to(low), x.to(low))
        assert y.dtype == low
        assert rel_err(y.double(), ref) < 5e-2


def test_bad_arguments():
    t = random_twiddle(1, 1, 8, False)
    with pytest.raises(ValueError, match="at most 8"):
        butterfly_multiply(t, torch.randn(2, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="out_size"):
        butterfly_multiply(t, torch.randn(2, 8, dtype=torch.float64), out_size=9)
    with pytest.raises(ValueError, match="twiddle must have shape"):
        butterfly_multiply(torch.randn(1, 1, 3, 4, 2), torch.randn(2, 8))
    with pytest.raises(ValueError, match="n // 2"):
        butterfly_multiply(torch.randn(1, 1, 3, 5, 2, 2), torch.randn(2, 8))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        butterfly_multiply(t, np.ones((2, 8)))


@given(
    log_n=st.integers(0, 7),
    nblocks=st.integers(1, 3),
    nstacks=st.integers(1, 3),
    increasing=st.booleans(),
    complex=st.booleans(),
    transpose=st.booleans(),
    conjugate=st.booleans(),
    lead=st.lists(st.integers(1, 3), max_size=3),
    data=st.data(),
)
def test_hypothesis_random_options(
    log_n, nblocks, nstacks, increasing, complex, transpose, conjugate, lead, data
):
    n = 1 << log_n
    t = random_twiddle(nstacks, nblocks, n, complex)
    in_limit, out_limit = (nstacks * n, n) if transpose else (n, nstacks * n)
    m = data.draw(st.integers(1, in_limit), label="m")
    out = data.draw(st.integers(1, out_limit), label="out")
    x = torch.randn(*lead, m, dtype=torch.float64)
    y = butterfly_multiply(t, x, increasing, out_size=out, transpose=transpose, conjugate=conjugate)
    assert y.shape == (*lead, out)
    x2 = x.reshape(-1, m).numpy()
    tn = t.numpy()
    if transpose:
        expected = apply_map_transpose(tn, increasing, x2, out, conjugate)
    else:
        expected = apply_map(tn.conj() if conjugate else tn, increasing, x2, out)
    assert rel_err(y.reshape(-1, out), expected) < RTOL
