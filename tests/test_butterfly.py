"""The Butterfly layer: drop-in nn.Linear behaviour, inits, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from twiddle import Butterfly
from twiddle._layout import twiddle_shape

SHAPES = [(7, 15), (15, 7), (1000, 10), (3, 5), (1024, 4096), (16, 16), (1, 1), (1, 3), (5, 1)]


@pytest.mark.parametrize("in_f,out_f", SHAPES)
@pytest.mark.parametrize("complex", [False, True])
@pytest.mark.parametrize("nblocks", [1, 2, 3])
def test_forward_equals_dense(in_f, out_f, complex, nblocks):
    if in_f * out_f > 10**6 and nblocks > 1:
        pytest.skip("large shape checked with nblocks=1")
    layer = Butterfly(in_f, out_f, complex=complex, nblocks=nblocks, dtype=torch.float64)
    x = torch.randn(4, 2, in_f, dtype=torch.float64)
    W = layer.to_dense()
    assert W.shape == (out_f, in_f)
    expected = x.to(W.dtype) @ W.T + layer.bias
    y = layer(x)
    assert y.shape == (4, 2, out_f)
    assert y.dtype == (torch.complex128 if complex else torch.float64)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("nblocks", [1, 2])
def test_no_bias_and_decreasing(increasing, nblocks):
    layer = Butterfly(12, 20, bias=False, increasing_stride=increasing, nblocks=nblocks, dtype=torch.float64)
    assert layer.bias is None
    x = torch.randn(3, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 8, 64, 256])
@pytest.mark.parametrize("complex", [False, True])
@pytest.mark.parametrize("nblocks", [1, 2])
def test_ortho_is_orthogonal(n, complex, nblocks):
    W = Butterfly(
        n, n, bias=False, init="ortho", complex=complex, nblocks=nblocks, dtype=torch.float64
    ).to_dense()
    torch.testing.assert_close(W @ W.conj().T, torch.eye(n, dtype=W.dtype), rtol=0, atol=1e-12)


def test_ortho_draws_rotations_and_reflections():
    t = Butterfly(256, 256, init="ortho", dtype=torch.float64).twiddle.detach()
    det = torch.linalg.det(t)
    assert (det > 0).any() and (det < 0).any()
    torch.testing.assert_close(det.abs(), torch.ones_like(det))


@pytest.mark.parametrize("n,nblocks,increasing", [(1, 1, True), (8, 1, True), (64, 2, False), (100, 3, True)])
def test_identity_init(n, nblocks, increasing):
    layer = Butterfly(n, n, bias=False, init="identity", nblocks=nblocks, increasing_stride=increasing)
    torch.testing.assert_close(layer.to_dense(), torch.eye(n))


@pytest.mark.parametrize("increasing", [True, False])
def test_fjlt_init_is_scaled_hadamard_times_signs(increasing):
    n = 32
    W = Butterfly(n, n, bias=False, init="fjlt", increasing_stride=increasing, dtype=torch.float64).to_dense()
    H = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(5):
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    # W = H D / sqrt(n) with D a random sign diagonal
    D = (H.T @ W) / math.sqrt(n)
    torch.testing.assert_close(D, torch.diag(torch.diagonal(D)), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.diagonal(D).abs(), torch.ones(n, dtype=torch.float64))


def test_randn_matches_linear_output_variance_in_expectation():
    # E[sum_j W_ij^2] = 1/3 for nn.Linear's default init; the butterfly's matches it in expectation.
    for nblocks in (1, 2):
        v = [
            Butterfly(64, 64, nblocks=nblocks, bias=False, dtype=torch.float64)
            .to_dense()
            .pow(2)
            .sum(1)
            .mean()
            for _ in range(200)
        ]
        assert abs(torch.stack(v).mean().item() - 1 / 3) < 0.06


def test_bias_init_like_linear():
    layer = Butterfly(100, 300)
    bound = 1 / math.sqrt(100)
    assert layer.bias.abs().max() <= bound
    assert layer.bias.std() > bound / 3


def test_tensor_init_and_reset():
    shape = twiddle_shape(2, 2, 8)
    t = torch.randn(shape, dtype=torch.float64)
    layer = Butterfly(8, 16, nblocks=2, init=t, dtype=torch.float64)
    torch.testing.assert_close(layer.twiddle.detach(), t)
    with torch.no_grad():
        layer.twiddle.zero_()
    layer.reset_parameters()
    torch.testing.assert_close(layer.twiddle.detach(), t)
    layer2 = Butterfly(8, 16, nblocks=2, init=t.numpy())
    assert layer2.twiddle.dtype == torch.float32
    assert layer.init == "tensor"


def test_complex_dtype_and_real_input_promotion():
    layer = Butterfly(8, 8, complex=True)
    assert layer.twiddle.dtype == torch.complex64
    y = layer(torch.randn(2, 8))
    assert y.dtype == torch.complex64
    assert Butterfly(8, 8, complex=True, dtype=torch.complex128).twiddle.dtype == torch.complex128


def test_parameter_count_and_repr():
    layer = Butterfly(1024, 1024)
    count = layer.parameter_count()
    assert count.structured == 1 * 1 * 10 * 512 * 4 + 1024
    assert count.dense == 1024 * 1024 + 1024
    assert count.ratio > 40 and not count.dense_is_smaller
    small = Butterfly(1000, 10).parameter_count()
    assert small.dense_is_smaller and "dense is smaller" in str(small)
    text = repr(layer)
    assert "in_features=1024" in text and "params=21504" in text


def test_trains_like_linear():
    torch.manual_seed(1)
    target = nn.Linear(16, 16)
    layer = Butterfly(16, 16, nblocks=2)
    opt = torch.optim.Adam(layer.parameters(), lr=0.02)
    x = torch.randn(256, 16)
    with torch.no_grad():
        y = target(x)
    first = None
    for _ in range(200):
        loss = (layer(x) - y).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_state_dict_round_trip():
    a = Butterfly(20, 40, nblocks=2)
    b = Butterfly(20, 40, nblocks=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 20)
    torch.testing.assert_close(a(x), b(x))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(in_features=0, out_features=4), ValueError, "in_features must be a positive integer"),
        (dict(in_features=4, out_features=-1), ValueError, "out_features must be a positive integer"),
        (dict(in_features=4.0, out_features=4), ValueError, "in_features"),
        (dict(in_features=True, out_features=4), ValueError, "in_features"),
        (dict(in_features=4, out_features=4, nblocks=0), ValueError, "nblocks"),
        (dict(in_features=4, out_features=4, init="xavier"), ValueError, "init must be one of"),
        (
            dict(in_features=4, out_features=4, init=torch.zeros(1, 1, 2, 2, 2)),
            ValueError,
            r"init tensor must have shape",
        ),
        (dict(in_features=4, out_features=4, init=3), TypeError, "init must be"),
        (
            dict(in_features=4, out_features=4, init=torch.zeros(1, 1, 2, 2, 2, 2, dtype=torch.complex64)),
            TypeError,
            "complex",
        ),
        (dict(in_features=4, out_features=4, dtype=torch.complex64), ValueError, "complex=True"),
        (dict(in_features=4, out_features=4, dtype=torch.int32), ValueError, "dtype"),
        (dict(in_features=4, out_features=4, increasing_stride="yes"), TypeError, "increasing_stride"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Butterfly(**kwargs)


def test_forward_errors():
    layer = Butterfly(8, 4)
    with pytest.raises(ValueError, match="in_features=8, got shape \\(2, 7\\)"):
        layer(torch.randn(2, 7))
    with pytest.raises(ValueError, match="in_features=8"):
        layer(torch.tensor(1.0))
    with pytest.raises(TypeError, match="complex=True"):
        layer(torch.randn(2, 8, dtype=torch.complex64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer(np.ones((2, 8)))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 8, dtype=torch.long))


@given(
    in_f=st.integers(1, 70),
    out_f=st.integers(1, 140),
    nblocks=st.integers(1, 3),
    complex=st.booleans(),
    increasing=st.booleans(),
    bias=st.booleans(),
    init=st.sampled_from(["randn", "ortho", "identity", "fjlt"]),
    lead=st.lists(st.integers(1, 3), max_size=2),
)
def test_hypothesis_layer_equals_dense(in_f, out_f, nblocks, complex, increasing, bias, init, lead):
    layer = Butterfly(
        in_f,
        out_f,
        bias=bias,
        complex=complex,
        nblocks=nblocks,
        increasing_stride=increasing,
        init=init,
        dtype=torch.float64,
    )
    x = torch.randn(*lead, in_f, dtype=torch.float64)
    expected = x.to(layer.twiddle.dtype) @ layer.to_dense().T
    if bias:
        expected = expected + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


def test_forward_sees_parametrized_and_swapped_parameters():
    """The forward reads its twiddle and bias from ``_parameters`` (fast) and falls back to the attribute where a
    parametrization replaced them; ``torch.func.functional_call`` swaps them in ``_parameters``."""
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    layer = Butterfly(16, 16, bias=True)
    x = torch.randn(3, 16)

    class Double(torch.nn.Module):
        def forward(self, t):
            return 2 * t

    dense_twiddle = layer.to_dense()
    bias = layer.bias.detach().clone()
    parametrize.register_parametrization(layer, "bias", Double())
    torch.testing.assert_close(layer(x), x @ dense_twiddle.T + 2 * bias)
    parametrize.register_parametrization(layer, "twiddle", Double())  # each of log2(16) = 4 factors doubled
    torch.testing.assert_close(layer(x), 16 * (x @ dense_twiddle.T) + 2 * bias)

    plain = Butterfly(16, 16, bias=True)
    swapped = {"twiddle": torch.zeros_like(plain.twiddle), "bias": torch.ones(16)}
    torch.testing.assert_close(torch.func.functional_call(plain, swapped, (x,)), torch.ones(3, 16))


def test_dtype_conversions_keep_complex_twiddles_complex():
    """nn.Module.to(torch.float64) would cast complex twiddles to float64 by dropping their imaginary parts (garbage
    results, one ComplexWarning from torch); a Butterfly keeps them complex, in the precision asked for."""
    torch.manual_seed(0)
    layer = Butterfly(16, 12, complex=True)
    x = torch.randn(3, 16, dtype=torch.complex64)
    want = layer(x)
    for convert in (lambda m: m.to(torch.float64), lambda m: m.double()):
        converted = convert(Butterfly(16, 12, complex=True).requires_grad_(False))
        converted.load_state_dict(layer.state_dict())
        assert converted.twiddle.dtype == converted.bias.dtype == torch.complex128
        torch.testing.assert_close(converted(x.to(torch.complex128)), want.to(torch.complex128), rtol=1e-5, atol=1e-5)
    half = Butterfly(16, 12, complex=True)
    half.load_state_dict(layer.state_dict())
    half = half.to(torch.float16)
    assert half.twiddle.dtype == half.bias.dtype == torch.complex32  # rounded, still complex
    got = half(x.to(torch.complex32))
    assert got.dtype == torch.complex32
    torch.testing.assert_close(got.to(torch.complex64), want, rtol=0, atol=4e-3 * float(want.abs().max()))
    assert Butterfly(16, 12, complex=True).to(torch.bfloat16).twiddle.dtype == torch.complex64  # no complex bfloat16
    real = Butterfly(16, 12).to(torch.float64)  # real layers convert as nn.Linear does
    assert real.twiddle.dtype == real.bias.dtype == torch.float64
