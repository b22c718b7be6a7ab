"""The multiply's input and output permutations (``in_perm``, ``out_perm``): the fused CPU kernel gathers
``x[..., in_perm]`` while it loads (and scatters the input gradient while it stores), and stores ``z[..., out_perm]``
(gathering the incoming gradient back as it loads it); every case is checked against the reference multiply with
the gathers done around it, forward and backward, in both kernel layouts (float32 rows of at most 8 on AVX2, lane
tiles of 4, 8 or 16 otherwise: 4-row tiles permute in place, larger ones through a spare tile). gradcheck with the
permutations is in test_ops_fused.py."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from twiddle._layout import twiddle_shape
from twiddle.ops import butterfly_multiply, butterfly_multiply_reference, fused_cpu

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler to build the kernel"
)

TOL = {torch.float64: 1e-12, torch.complex128: 1e-12, torch.float32: 1e-5, torch.complex64: 1e-5}


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    assert fused_cpu.available(), "the fused CPU kernel failed to build"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().norm() / b.abs().norm().clamp_min(1e-300)).item()


def fused_and_reference(dtype, n, nblocks, nstacks, increasing, transpose, rows, in_size, out_size, bias=False,
                        permute=("in", "out")):
    """(output, grad x, grad twiddle[, grad bias]) of the fused multiply with ``in_perm`` and/or ``out_perm`` (as
    ``permute`` names them) and of the reference ``(B · x[:, in_perm])[:, out_perm] + bias`` (in float64 /
    complex128)."""
    wide = torch.complex128 if dtype.is_complex else torch.float64
    t = torch.randn(twiddle_shape(nstacks, nblocks, n), dtype=wide) / 2**0.5
    x = torch.randn(rows, in_size, dtype=wide)
    g = torch.randn(rows, out_size, dtype=wide)
    b = torch.randn(out_size, dtype=wide)
    perm = torch.randperm(in_size) if "in" in permute else None
    out_perm = torch.randperm(out_size) if "out" in permute else None
    results = []
    for fused, dt in ((True, dtype), (False, wide)):
        tt = t.to(dt).requires_grad_(True)
        xx = x.to(dt).requires_grad_(True)
        bb = b.to(dt).requires_grad_(True) if bias else None
        if fused:
            y = fused_cpu.fused_butterfly_multiply(tt, xx, increasing, out_size=out_size, transpose=transpose,
                                                   conjugate=dtype.is_complex, bias=bb, in_perm=perm,
                                                   out_perm=out_perm)
        else:
            y = butterfly_multiply_reference(tt, xx if perm is None else xx[:, perm], increasing, out_size=out_size,
                                             transpose=transpose, conjugate=dtype.is_complex)
            y = y if out_perm is None else y[:, out_perm]
            y = y if bb is None else y + bb
        (y * g.to(dt).conj()).real.sum().backward()
        tgrad = tt.grad if tt.grad is not None else torch.zeros_like(tt)
        out = [y.detach().to(wide), xx.grad.to(wide), tgrad.to(wide)]
        if bias:
            out.append(bb.grad.to(wide))
        results.append(out)
    return results


PERMUTE = [("in",), ("out",), ("in", "out")]
GRID = [
    (*case, PERMUTE[i % 3])  # which permutations, rotating over the cases
    for i, case in enumerate(
        c for c in itertools.product(
        [torch.float32, torch.float64, torch.complex64, torch.complex128],
        [2, 16, 1024],  # n
        [(1, 1, False), (2, 2, False), (2, 2, True)],  # nblocks, nstacks, transpose (a split input)
        # rows: float32 rows (AVX2) or 4-lane tiles; 8-lane tiles; 16-lane tiles and a partial one. padded: x has
        # fewer features than the butterfly takes
        [(3, True), (6, False), (35, False), (35, True)],
        )
        if c[1] < 1024 or c[2] == (1, 1, False)  # n = 1024 (the slowest references) with one stack and block only
    )
]


@pytest.mark.parametrize("dtype,n,shape,rows_padded,permute", GRID)
def test_permuted_multiply_matches_gathered_reference(dtype, n, shape, rows_padded, permute):
    nblocks, nstacks, transpose = shape
    rows, padded = rows_padded
    in_limit, out_limit = (nstacks * n, n) if transpose else (n, nstacks * n)
    in_size = max(1, in_limit - 3) if padded else in_limit
    results = fused_and_reference(dtype, n, nblocks, nstacks, increasing=(n + rows) % 2 == 0, transpose=transpose,
                                  rows=rows, in_size=in_size, out_size=max(1, out_limit - 1), bias=rows != 6,
                                  permute=permute)
    for got, want in zip(*results, strict=True):
        assert rel(got, want) < TOL[dtype]


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from([torch.float32, torch.float64, torch.complex64]),
    log_n=st.integers(0, 7),
    nblocks=st.integers(1, 3),
    nstacks=st.integers(1, 3),
    transpose=st.booleans(),
    rows=st.integers(1, 40),
    bias=st.booleans(),
    permute=st.sampled_from(PERMUTE),
    data=st.data(),
)
def test_hypothesis_permuted_multiply(dtype, log_n, nblocks, nstacks, transpose, rows, bias, permute, data):
    n = 1 << log_n
    in_limit, out_limit = (nstacks * n, n) if transpose else (n, nstacks * n)
    in_size = data.draw(st.integers(1, in_limit))
    out_size = data.draw(st.integers(1, out_limit))
    increasing = data.draw(st.booleans())
    results = fused_and_reference(dtype, n, nblocks, nstacks, increasing, transpose, rows, in_size, out_size, bias,
                                  permute)
    for got, want in zip(*results, strict=True):
        assert rel(got, want) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_public_multiply_with_permutations_on_every_kernel(dtype, monkeypatch):
    """``butterfly_multiply(..., in_perm=p, out_perm=q, bias=b)`` is ``butterfly_multiply(x[..., p])[..., q] + b``
    with leading dimensions, on the fused kernel and on the reference (``TWIDDLE_KERNEL=reference``), gradients
    included."""
    n = 64
    t = torch.randn(twiddle_shape(1, 2, n), dtype=dtype)
    x = torch.randn(2, 3, n - 5, dtype=dtype)
    b = torch.randn(n - 2, dtype=dtype)
    perm, out_perm = torch.randperm(n - 5), torch.randperm(n - 2)

    def reference(xx):
        return butterfly_multiply_reference(t, xx[..., perm], out_size=n - 2)[..., out_perm] + b

    want = reference(x)
    for mode in ("auto", "reference"):
        monkeypatch.setenv("TWIDDLE_KERNEL", mode)
        xx = x.clone().requires_grad_(True)
        y = butterfly_multiply(t, xx, out_size=n - 2, bias=b, in_perm=perm, out_perm=out_perm)
        torch.testing.assert_close(y, want, rtol=TOL[dtype], atol=TOL[dtype])
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))  # (the sum alone ignores out_perm)
        (y.real * weights).sum().backward()
        xr = x.clone().requires_grad_(True)
        (reference(xr).real * weights).sum().backward()
        assert rel(xx.grad, xr.grad) < TOL[dtype]


@pytest.mark.parametrize(
    "perm,error,match",
    [
        (torch.tensor([0, 1, 1, 3]), ValueError, "some indices repeat"),
        (torch.tensor([0, 1, 2, 4]), ValueError, "outside that range"),
        (torch.tensor([0, 1, 2]), ValueError, r"in_perm must be a 1-D permutation of x's 4 features, got shape \(3,\)"),
        (torch.tensor([[0, 1, 2, 3]]), ValueError, "in_perm must be a 1-D permutation"),
        (torch.tensor([0.0, 1, 2, 3]), ValueError, "in_perm must hold integers"),
        ([0, 1, 2, 3], TypeError, "in_perm must be a torch.Tensor"),
    ],
)
@pytest.mark.parametrize("name", ["in_perm", "out_perm"])
def test_public_multiply_rejects_bad_permutations(perm, error, match, name):
    t = torch.randn(twiddle_shape(1, 1, 4))
    if name == "out_perm":
        match = match.replace("in_perm", "out_perm").replace("x's 4 features", "the 4 outputs")
    with pytest.raises(error, match=match):
        butterfly_multiply(t, torch.randn(2, 4), **{name: perm})


@pytest.mark.parametrize(
    "perm,match",
    [
        (torch.tensor([0, 1, 1, 3]), r"entry 2 is 1 \(repeated\)"),
        (torch.tensor([0, 1, 2, 7]), r"entry 3 is 7 \(out of range\)"),
        (torch.tensor([0, 1, 2, -1]), r"entry 3 is -1 \(out of range\)"),
        (torch.tensor([0, 1, 2]), "expected 4 entries"),
        (torch.tensor([0, 1, 2, 3], dtype=torch.int32), "expected a 1-D int64 CPU tensor"),
    ],
)
@pytest.mark.parametrize("entry", ["eager", "torch.ops"])
@pytest.mark.parametrize("name", ["in_perm", "out_perm"])
def test_raw_op_checks_the_permutation(perm, match, entry, name):
    """The op itself refuses an index that would read or write outside its tensors, or leave columns unwritten."""
    t = torch.randn(twiddle_shape(1, 1, 4))
    x = torch.randn(2, 4)
    op = fused_cpu._eager if entry == "eager" else torch.ops.twiddle.butterfly_multiply
    perms = (perm, None) if name == "in_perm" else (None, perm)
    with pytest.raises(RuntimeError, match=f"{name}: .*{match}"):
        op(t, x, None, True, False, False, 4, *perms)
    with pytest.raises(RuntimeError, match=f"{name}: .*{match}"):
        torch.ops.twiddle.butterfly_multiply_backward(t, x, torch.randn(2, 4), True, False, False, 4, False, *perms)


@pytest.mark.parametrize("compiled", [False, True])
def test_asynchronous_permutation_check(compiled):
    """Inside a compiled graph on a GPU the public function's permutations are checked by a device-side assertion
    (the Triton kernels do not check them); its logic on CPU tensors, eager and compiled."""
    from twiddle.ops import _assert_permutation_async

    def check(p):
        _assert_permutation_async(p, "in_perm")
        return p + 0

    fn = torch.compile(check, fullgraph=True, backend="aot_eager") if compiled else check
    good = torch.randperm(6)
    torch.testing.assert_close(fn(good), good)
    for bad in ([0, 1, 1, 3, 4, 5], [0, 1, 2, 3, 4, 6], [-1, 1, 2, 3, 4, 5]):
        with pytest.raises(RuntimeError, match=r"in_perm must hold each of 0..5 exactly once"):
            fn(torch.tensor(bad))


class _PassThrough(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("with_bias", [False, True])
def test_eager_entry_and_torch_ops_agree_bit_for_bit(dtype, with_bias):
    """The eager entry (complex views taken in C++) and the torch.ops path (views taken in Python) run the same op:
    same outputs and gradients, bit for bit, with input and output permutations and a (complex) bias."""
    n = 32
    t = torch.randn(twiddle_shape(2, 1, n), dtype=dtype, requires_grad=True)
    x = torch.randn(5, n - 3, dtype=dtype, requires_grad=True)
    b = torch.randn(2 * n - 1, dtype=dtype, requires_grad=True) if with_bias else None
    perms = torch.randperm(n - 3), torch.randperm(2 * n - 1)
    outs = []
    for use_eager in (True, False):
        if use_eager:
            y = fused_cpu.butterfly_multiply_op(t, x, b, True, False, False, 2 * n - 1, *perms)
        else:
            with _PassThrough():  # a mode: butterfly_multiply_op takes torch.ops
                y = fused_cpu.butterfly_multiply_op(t, x, b, True, False, False, 2 * n - 1, *perms)
        inputs = (t, x) if b is None else (t, x, b)
        g = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
        outs.append((y.detach(), *torch.autograd.grad(y, inputs, g)))
    for a, c in zip(*outs, strict=True):
        assert torch.equal(a, c)


def test_complex_conjugate_views_are_resolved():
    """Complex inputs that are lazy conjugate views (``x.conj()``) are read as their values by the eager entry."""
    n = 16
    t = torch.randn(twiddle_shape(1, 1, n), dtype=torch.complex128)
    x = torch.randn(3, n, dtype=torch.complex128)
    b = torch.randn(n, dtype=torch.complex128)
    y = fused_cpu.butterfly_multiply_op(t.conj(), x.conj(), b.conj(), True, False, False, n)
    want = butterfly_multiply_reference(t.conj().resolve_conj(), x.conj().resolve_conj()) + b.conj()
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def test_same_result_with_one_and_two_threads():
    n, rows = 1024, 300
    t = torch.randn(twiddle_shape(1, 1, n))
    x = torch.randn(rows, n)
    g = torch.randn(rows, n)
    b = torch.randn(n)
    perm, out_perm = torch.randperm(n), torch.randperm(n)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            tt, xx, bb = t.clone().requires_grad_(True), x.clone().requires_grad_(True), b.clone().requires_grad_(True)
            y = fused_cpu.fused_butterfly_multiply(tt, xx, True, out_size=n, transpose=False, conjugate=False,
                                                   bias=bb, in_perm=perm, out_perm=out_perm)
            y.backward(g)
            outs.append((y.detach(), tt.grad, xx.grad, bb.grad))
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*outs, strict=True):
        assert torch.equal(one, two)


def test_torch_compile_fullgraph_with_permutations():
    torch._dynamo.reset()
    n = 64
    t = torch.randn(twiddle_shape(1, 1, n), dtype=torch.complex64, requires_grad=True)
    perm, out_perm = torch.randperm(n), torch.randperm(n)

    def f(x):
        return butterfly_multiply(t, x, in_perm=perm, out_perm=out_perm)

    x = torch.randn(4, n, dtype=torch.complex64)
    eager = f(x)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), eager)
    (gc,) = torch.autograd.grad(compiled(x).real.sum(), t)
    (ge,) = torch.autograd.grad(f(x).real.sum(), t)
    torch.testing.assert_close(gc, ge)


@pytest.mark.parametrize("real_input", [False, True])
def test_triton_dispatch_hands_the_permutations_to_the_kernel(real_input, monkeypatch):
    """The CUDA path's dispatch logic, on CPU: ``_multiply_checked`` promotes a real x to the twiddles' dtype,
    flattens the leading dimensions and hands x unpermuted, with both permutations and the bias, to the Triton
    kernels (which read and write through the permutations; their logic is checked in the interpreter by
    tests/test_ops_triton.py). The kernel is stood in for by the reference with the gathers around it."""
    import twiddle.ops as ops
    from twiddle.ops import triton_kernel

    received = []

    def stand_in(tw, x2, increasing, *, out_size, transpose, bias, conjugate, in_perm, out_perm):
        received.append((x2, in_perm, out_perm, bias))
        y = butterfly_multiply_reference(tw, x2[:, in_perm], increasing, out_size=out_size, transpose=transpose,
                                         conjugate=conjugate)
        return y[:, out_perm] + bias

    monkeypatch.setattr(ops, "_choose_kernel", lambda twiddle, x, bias=None: ("triton", ""))
    monkeypatch.setattr(triton_kernel, "triton_butterfly_multiply", stand_in)
    n = 16
    t = torch.randn(twiddle_shape(1, 1, n), dtype=torch.complex128)
    x = torch.randn(2, 3, n, dtype=torch.float64 if real_input else torch.complex128)
    perm, out_perm = torch.randperm(n), torch.randperm(n)
    b = torch.randn(n, dtype=torch.complex128)
    y = butterfly_multiply(t, x, bias=b, in_perm=perm, out_perm=out_perm)
    ((x2, p2, q2, b2),) = received
    assert x2.dtype == torch.complex128 and x2.shape == (6, n)
    torch.testing.assert_close(x2, x.reshape(6, n).to(torch.complex128), rtol=0, atol=0)
    assert torch.equal(p2, perm) and torch.equal(q2, out_perm) and b2 is b
    want = butterfly_multiply_reference(t, x[..., perm].to(torch.complex128))[..., out_perm] + b
    torch.testing.assert_close(y, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("layout", ["broadcast rows", "strided columns"])
@pytest.mark.parametrize("rows", [3, 35])
def test_output_permutation_with_strided_incoming_gradients(dtype, layout, rows):
    """The backward reads a non-contiguous incoming gradient in place; under out_perm it gathers each position's
    column from it directly (the spare tile serves contiguous gradients only)."""
    n = 64
    t = torch.randn(twiddle_shape(1, 1, n), dtype=dtype)
    x = torch.randn(rows, n, dtype=dtype)
    out_perm = torch.randperm(n)
    if layout == "broadcast rows":
        grad = torch.randn(n, dtype=dtype).expand(rows, n)
    else:
        grad = torch.randn(rows, 2 * n, dtype=dtype)[:, ::2]
    assert not grad.is_contiguous()
    results = []
    for fused in (True, False):
        tt, xx = t.clone().requires_grad_(True), x.clone().requires_grad_(True)
        if fused:
            y = fused_cpu.fused_butterfly_multiply(tt, xx, True, out_size=n, transpose=False, conjugate=False,
                                                   out_perm=out_perm)
        else:
            y = butterfly_multiply_reference(tt, xx)[:, out_perm]
        y.backward(grad)
        results.append((tt.grad, xx.grad))
    for got, want in zip(*results, strict=True):
        assert rel(got, want) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128])
@pytest.mark.parametrize("rows", [5, 20])
def test_twiddle_gradient_with_permutations_on_reused_per_thread_buffers(dtype, rows):
    """The kernel keeps per-thread scratch buffers from call to call, one slot per use; the twiddle gradient's
    per-chunk sums once shared a slot with the permuted loads' spare tile, which overwrote them (a wrong twiddle
    gradient with permutations on lane tiles). Repeated calls, against the reference."""
    torch.manual_seed(0)
    t = torch.randn(2, 2, 3, 4, 2, 2, dtype=dtype)
    m, out = 7, 13
    for _ in range(3):
        x = torch.randn(rows, m, dtype=dtype)
        g = torch.randn(rows, out, dtype=dtype)
        p, q = torch.randperm(m), torch.randperm(out)
        grads = []
        for fused in (True, False):
            tt = t.clone().requires_grad_()
            if fused:
                y = fused_cpu.fused_butterfly_multiply(tt, x, True, out_size=out, transpose=False, conjugate=False,
                                                       in_perm=p, out_perm=q)
            else:
                y = butterfly_multiply_reference(tt, x[:, p], out_size=out)[:, q]
            grads.append(torch.autograd.grad((y * g.conj()).real.sum(), tt)[0])
        assert rel(grads[0], grads[1]) < TOL[dtype]
