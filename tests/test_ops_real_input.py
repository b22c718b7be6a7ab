"""A real input to a complex butterfly: the fused CPU kernel reads a real ``x`` of the twiddles' precision as
``x + 0i`` (no complex copy) and returns the real part of the input gradient, as autograd does for a promoted
input. Checked against the reference multiply of the promoted input, forward and backward, every tile width,
with and without an input permutation."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch

from twiddle._layout import twiddle_shape
from twiddle.ops import butterfly_multiply, butterfly_multiply_reference, fused_cpu

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler to build the kernel"
)

REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}
TOL = {torch.complex64: 1e-5, torch.complex128: 1e-12}


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    assert fused_cpu.available(), "the fused CPU kernel failed to build"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().norm() / b.abs().norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize(
    "dtype,n,shape,rows,permuted",
    list(
        itertools.product(
            [torch.complex64, torch.complex128],
            [2, 64],
            [(1, 1, False), (2, 2, False), (2, 2, True)],  # nblocks, nstacks, transpose
            [1, 6, 37],  # 4-, 8- and 16-lane tiles
            [False, True],
        )
    ),
)
def test_real_input_matches_promoted_reference(dtype, n, shape, rows, permuted):
    nblocks, nstacks, transpose = shape
    in_limit, out_limit = (nstacks * n, n) if transpose else (n, nstacks * n)
    m, out = max(1, in_limit - 1), max(1, out_limit - 1)
    t = torch.randn(twiddle_shape(nstacks, nblocks, n), dtype=torch.complex128) / 2**0.5
    x = torch.randn(rows, m, dtype=torch.float64)
    g = torch.randn(rows, out, dtype=torch.complex128)
    perm = torch.randperm(m) if permuted else None
    results = []
    for fused in (True, False):
        tt = t.to(dtype if fused else torch.complex128).requires_grad_(True)
        xx = x.to(REAL_OF[dtype] if fused else torch.float64).requires_grad_(True)
        if fused:
            y = fused_cpu.butterfly_multiply_op(tt, xx, None, True, transpose, True, out, perm)
        else:
            xin = xx if perm is None else xx[:, perm]
            y = butterfly_multiply_reference(tt, xin.to(torch.complex128), out_size=out, transpose=transpose,
                                             conjugate=True)
        (y * g.to(y.dtype).conj()).real.sum().backward()
        assert xx.grad.dtype == xx.dtype  # a real gradient for a real input
        results.append([y.detach().to(torch.complex128), xx.grad.to(torch.float64), tt.grad.to(torch.complex128)])
    for got, want in zip(*results, strict=True):
        assert rel(got, want) < TOL[dtype]


@pytest.mark.parametrize("transpose", [False, True])
def test_gradcheck_real_input(transpose):
    t = (torch.randn(twiddle_shape(2, 2, 8), dtype=torch.complex128) / 2**0.5).requires_grad_(True)
    m = 13 if transpose else 7
    x = torch.randn(3, m, dtype=torch.float64, requires_grad=True)

    def f(tw, xx):
        return fused_cpu.butterfly_multiply_op(tw, xx, None, True, transpose, False, 6, torch.randperm(m,
                                               generator=torch.Generator().manual_seed(0)))

    assert torch.autograd.gradcheck(f, (t, x))


def test_public_multiply_and_torch_ops_take_real_input_directly():
    """``butterfly_multiply`` hands a real x of the complex twiddles' precision to the kernel as it is (the same
    values as promoting it first); torch.ops (the path torch.compile traces) does too; a complex bias works."""
    n = 32
    t = torch.randn(twiddle_shape(1, 1, n), dtype=torch.complex64)
    x = torch.randn(2, 3, n)
    b = torch.randn(n, dtype=torch.complex64)
    want = butterfly_multiply_reference(t, x.to(torch.complex64)) + b
    torch.testing.assert_close(butterfly_multiply(t, x, bias=b), want, rtol=1e-5, atol=1e-5)
    tr, br = torch.view_as_real(t), torch.view_as_real(b)
    raw = torch.ops.twiddle.butterfly_multiply(tr, x[0], br, True, False, False, n)
    y_ops = torch.view_as_complex(raw)
    torch.testing.assert_close(y_ops, want[0], rtol=1e-5, atol=1e-5)
    # a real x of another precision is promoted (float64 x, complex64 twiddles -> complex128)
    y64 = butterfly_multiply(t, x.double())
    assert y64.dtype == torch.complex128


def test_torch_compile_real_input():
    torch._dynamo.reset()
    n = 16
    t = torch.randn(twiddle_shape(1, 1, n), dtype=torch.complex64)

    def f(x):
        return butterfly_multiply(t, x)

    x = torch.randn(4, n)
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x))
