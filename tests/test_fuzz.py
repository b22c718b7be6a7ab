"""Hypothesis fuzzing of the public modules against plain references (shapes, dtypes, options), numerical stability
of a large orthogonal butterfly, and determinism under fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import twiddle
from twiddle import Butterfly, TruncatedButterfly, TruncatedButterflyLinear, transforms

DTYPES = st.sampled_from([torch.float32, torch.float64])
TOL = {torch.float32: 2e-5, torch.float64: 1e-11}


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    a, b = a.detach().to(wide), b.detach().to(wide)
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@given(in_f=st.integers(1, 80), ell=st.integers(1, 80), seed=st.integers(0, 1000), prune=st.booleans(),
       dtype=DTYPES, lead=st.lists(st.integers(1, 3), max_size=2))
def test_truncated_butterfly_equals_its_dense_matrix(in_f, ell, seed, prune, dtype, lead):
    n = 1 << max(0, (in_f - 1).bit_length())
    ell = min(ell, n)
    module = TruncatedButterfly(in_f, ell, seed=seed, prune=prune, dtype=dtype)
    x = torch.randn(*lead, in_f, dtype=dtype)
    dense = module.to_dense()
    assert dense.shape == (ell, in_f)
    assert _rel(module(x), x @ dense.T) < TOL[dtype]
    y = torch.randn(*lead, ell, dtype=dtype)
    assert _rel(module.apply_transpose(y), y @ dense) < TOL[dtype]


@given(in_f=st.integers(2, 64), out_f=st.integers(1, 64), seed=st.integers(0, 100), bias=st.booleans())
def test_truncated_linear_is_j2t_w_j1(in_f, out_f, seed, bias):
    layer = TruncatedButterflyLinear(in_f, out_f, bias=bias, seed=seed, dtype=torch.float64)
    x = torch.randn(5, in_f, dtype=torch.float64)
    eye = torch.eye(in_f, dtype=torch.float64)
    dense = layer(eye).T - (layer.bias[:, None] if bias else 0)
    assert dense.shape == (out_f, in_f)
    assert _rel(layer(x), x @ dense.T + (layer.bias if bias else 0)) < 1e-11


@given(n=st.integers(1, 70), norm=st.sampled_from(["backward", "ortho", "forward"]),
       inverse=st.booleans(), lead=st.lists(st.integers(1, 3), max_size=2))
def test_fft_any_n_equals_torch_fft(n, norm, inverse, lead):
    module = (transforms.ifft if inverse else transforms.fft)(n, norm, dtype=torch.float64)
    x = torch.randn(*lead, n, dtype=torch.complex128)
    want = (torch.fft.ifft if inverse else torch.fft.fft)(x, norm=norm)
    assert _rel(module(x), want) < 1e-10


@given(n=st.integers(1, 70), kind=st.sampled_from(["dct", "dst"]), type_=st.sampled_from([1, 2, 3, 4]),
       norm=st.sampled_from([None, "ortho", "forward"]))
def test_dct_dst_any_n_equal_scipy(n, kind, type_, norm):
    if type_ == 1 and kind == "dct" and n < 2:
        return  # the type-1 DCT needs n >= 2 (as scipy)
    module = getattr(transforms, kind)(n, type_, norm, dtype=torch.float64)
    x = np.random.default_rng(n).standard_normal((3, n))
    want = getattr(scipy.fft, kind)(x, type=type_, norm=norm)
    assert _rel(module(torch.from_numpy(x)), torch.from_numpy(want)) < 1e-10


@given(n=st.integers(1, 50), seed=st.integers(0, 100))
def test_circulant_and_toeplitz_equal_scipy(n, seed):
    rng = np.random.default_rng(seed)
    col, row = rng.standard_normal(n), rng.standard_normal(n)
    row[0] = col[0]
    x = rng.standard_normal((2, n))
    for module, dense in ((transforms.circulant(col, dtype=torch.float64), scipy.linalg.circulant(col)),
                          (transforms.toeplitz(col, row, dtype=torch.float64), scipy.linalg.toeplitz(col, row))):
        assert _rel(module(torch.from_numpy(x)), torch.from_numpy(x @ dense.T)) < 1e-10


@given(log_n=st.integers(1, 7), seed=st.integers(0, 100), init=st.sampled_from(["ortho", "randn"]))
def test_factorize_recovers_random_butterflies_times_permutations(log_n, seed, init):
    """``M = B P`` with ``B`` an (increasing-stride) butterfly and ``P`` a random permutation, given."""
    n = 1 << log_n
    torch.manual_seed(seed)
    layer = Butterfly(n, n, bias=False, dtype=torch.float64, init=init)
    perm = torch.randperm(n)
    target = layer.to_dense()[:, torch.argsort(perm)]  # (B P) x = B (x[perm])
    result = twiddle.factorize(target, permutation=perm)
    assert result.relative_error < 1e-10


def test_orthogonal_butterfly_at_n_65536_stays_orthogonal_in_float32():
    n = 1 << 16
    torch.manual_seed(0)
    layer = Butterfly(n, n, bias=False, init="ortho")
    x = torch.randn(4, n)
    with torch.no_grad():
        y = layer(x)
        back = twiddle.ops.butterfly_multiply(layer.twiddle, y, transpose=True)  # Bᵀ B x
    norm_error = ((y.norm(dim=1) / x.norm(dim=1)) - 1).abs().max().item()
    round_trip = ((back - x).norm(dim=1) / x.norm(dim=1)).max().item()
    assert norm_error < 1e-5
    assert round_trip < 1e-5


def test_same_seed_same_everything():
    def run(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        model = torch.nn.Sequential(Butterfly(32, 32), torch.nn.ReLU(), TruncatedButterflyLinear(32, 8, seed=seed))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x = torch.randn(16, 32)
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()] + [model(x).detach()]

    first, second, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("name", ["dft", "hadamard"])
def test_factorization_is_deterministic(name):
    from twiddle.factorize.targets import target_matrix

    m = target_matrix(name, 64)
    a, b = twiddle.factorize(m), twiddle.factorize(m)
    assert torch.equal(a.module.butterfly.twiddle, b.module.butterfly.twiddle)
    assert torch.equal(a.permutation, b.permutation)


@settings(max_examples=40, deadline=None)
@given(log_n=st.integers(0, 5), nstacks=st.integers(1, 3), nblocks=st.integers(1, 3), transpose=st.booleans(),
       increasing=st.booleans(), complex_=st.booleans(), bias=st.booleans(), permuted=st.booleans(),
       data=st.data())
def test_higher_derivatives_and_forward_mode_equal_the_reference(log_n, nstacks, nblocks, transpose, increasing,
                                                                 complex_, bias, permuted, data):
    """Through the public multiply with the default (fused) kernel: first derivatives under create_graph=True
    equal the plain ones; a second derivative (a penalty on both first derivatives, differentiated) and a
    forward-mode tangent equal the reference kernel's."""
    import os

    import torch.autograd.forward_ad as fwAD

    from twiddle.ops import butterfly_multiply

    n = 1 << log_n
    dtype = torch.complex128 if complex_ else torch.float64
    in_limit, out_limit = (nstacks * n, n) if transpose else (n, nstacks * n)
    m = data.draw(st.integers(1, in_limit), label="m")
    out = data.draw(st.integers(1, out_limit), label="out")
    t = torch.randn(nstacks, nblocks, log_n, n // 2, 2, 2, dtype=dtype, requires_grad=True)
    x = torch.randn(3, m, dtype=dtype, requires_grad=True)
    b = torch.randn(out, dtype=dtype, requires_grad=True) if bias else None
    p, q = (torch.randperm(m), torch.randperm(out)) if permuted else (None, None)
    w, dt, dx = torch.randn(3, out, dtype=dtype), torch.randn_like(t), torch.randn_like(x)

    def f(tw, z):
        return butterfly_multiply(tw, z, increasing, out_size=out, transpose=transpose, conjugate=complex_,
                                  bias=b, in_perm=p, out_perm=q)

    def derivatives():
        y = f(t, x)
        unused = dict(allow_unused=True, materialize_grads=True)  # (n = 1: no factor uses the twiddles)
        plain = torch.autograd.grad(y, (t, x), w, retain_graph=True, **unused)
        graph = torch.autograd.grad(y, (t, x), w, create_graph=True, **unused)
        penalty = sum(g.abs().pow(2).sum() for g in graph)
        second = torch.autograd.grad(penalty, (t, x), **unused)
        with fwAD.dual_level():
            tangent = fwAD.unpack_dual(f(fwAD.make_dual(t, dt), fwAD.make_dual(x, dx))).tangent
        return plain, graph, second, tangent

    fast = derivatives()
    previous = os.environ.get("TWIDDLE_KERNEL")
    os.environ["TWIDDLE_KERNEL"] = "reference"
    try:
        reference = derivatives()
    finally:
        if previous is None:
            os.environ.pop("TWIDDLE_KERNEL")
        else:
            os.environ["TWIDDLE_KERNEL"] = previous
    for a, b_ in zip(fast[0], fast[1], strict=True):
        assert _rel(b_, a) < 1e-12
    for a, b_ in zip((*fast[1], *fast[2], fast[3]), (*reference[1], *reference[2], reference[3]), strict=True):
        assert _rel(a, b_) < 1e-10
