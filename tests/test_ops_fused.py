"""The fused CPU kernel against the reference multiply: forward and backward, every option, both layouts.

The kernel has two code paths: a row layout with vector intrinsics (real float32: n >= 32 on machines with AVX-512;
n >= 16 and at most 8 rows on AVX2 + FMA) and a lane-tile layout for everything else; the float32 cases below
exercise the first where available (batches of 3 rows on either ISA, larger ones on AVX-512).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from twiddle._layout import twiddle_shape
from twiddle.ops import butterfly_multiply_reference, fused_cpu, kernel_for

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler to build the kernel"
)

TOL = {torch.float64: 1e-12, torch.complex128: 1e-12, torch.float32: 1e-5, torch.complex64: 1e-5}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().norm() / b.abs().norm().clamp_min(1e-300)).item()


def run_both(dtype, n, nblocks, nstacks, increasing, transpose, conjugate, batch=(5,), in_size=None, out_size=None):
    """Fused and reference results (forward, grad x, grad twiddle), the reference in float64 / complex128."""
    complex_ = dtype.is_complex
    wide = torch.complex128 if complex_ else torch.float64
    t = torch.randn(twiddle_shape(nstacks, nblocks, n), dtype=wide) / 2**0.5
    in_limit, out_limit = (nstacks * n, n) if transpose else (n, nstacks * n)
    m = in_limit if in_size is None else in_size
    out = out_limit if out_size is None else out_size
    x = torch.randn(*batch, m, dtype=wide)
    g = torch.randn(*batch, out, dtype=wide)
    results = []
    for fused, dt in ((True, dtype), (False, wide)):
        tt = t.to(dt).requires_grad_(True)
        xx = x.to(dt).requires_grad_(True)
        if fused:
            y = fused_cpu.fused_butterfly_multiply(
                tt, xx.reshape(-1, m), increasing, out_size=out, transpose=transpose, conjugate=conjugate
            ).reshape(*batch, out)
        else:
            y = butterfly_multiply_reference(tt, xx, increasing, out_size=out, transpose=transpose, conjugate=conjugate)
        (y * g.to(dt).conj()).real.sum().backward()
        tgrad = tt.grad if tt.grad is not None else torch.zeros_like(tt)  # n = 1: no factor uses the twiddle
        results.append((y.detach().to(wide), xx.grad.to(wide), tgrad.to(wide)))
    return results


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    assert fused_cpu.available(), "the fused CPU kernel failed to build"


GRID = list(
    itertools.product(
        [torch.float32, torch.float64, torch.complex64, torch.complex128],
        [1, 2, 4, 16, 32, 64, 256, 1024],  # n
        [1, 2, 3],  # nblocks
        [1, 2],  # nstacks
        [True, False],  # increasing
        [False, True],  # transpose
    )
)


@pytest.mark.parametrize("dtype,n,nblocks,nstacks,increasing,transpose", GRID)
@pytest.mark.parametrize("rows", [3, 19])  # float32 rows <= 8: the kernel reads the user's twiddle layout directly
def test_fused_matches_reference(dtype, n, nblocks, nstacks, increasing, transpose, rows):
    conjugate = dtype.is_complex and (n + nblocks) % 2 == 0
    in_limit, out_limit = (nstacks * n, n) if transpose else (n, nstacks * n)
    (y, gx, gt), (yr, gxr, gtr) = run_both(
        dtype, n, nblocks, nstacks, increasing, transpose, conjugate, batch=(rows,),
        in_size=max(1, in_limit - 3), out_size=max(1, out_limit - 2),
    )
    tol = TOL[dtype]
    assert rel(y, yr) < tol
    assert rel(gx, gxr) < tol
    assert rel(gt, gtr) < tol


def test_kernel_is_dispatched_for_cpu_tensors():
    t = torch.randn(twiddle_shape(1, 1, 64))
    assert kernel_for(t, torch.randn(3, 64)) == "fused-cpu"
    assert kernel_for(t.double(), torch.randn(3, 64, dtype=torch.complex128)) == "fused-cpu"


def test_kernel_env_switch_is_read_on_every_call(monkeypatch):
    t = torch.randn(twiddle_shape(1, 1, 64))
    x = torch.randn(3, 64)
    monkeypatch.setenv("TWIDDLE_KERNEL", "reference")
    assert kernel_for(t, x) == "reference"
    monkeypatch.setenv("TWIDDLE_KERNEL", "fused")
    assert kernel_for(t, x) == "fused-cpu"
    monkeypatch.setenv("TWIDDLE_KERNEL", "fast")
    with pytest.raises(ValueError, match="TWIDDLE_KERNEL must be auto, reference or fused, got 'fast'"):
        kernel_for(t, x)
    monkeypatch.delenv("TWIDDLE_KERNEL")
    assert kernel_for(t, x) == "fused-cpu"


@pytest.mark.parametrize("requires", ["none", "twiddle", "x", "bias"])
@pytest.mark.parametrize("no_grad", [False, True])
def test_autograd_node_only_where_a_gradient_is_needed(requires, no_grad):
    """Calls with nothing to differentiate skip the autograd node (a batch-1 speed-up): same values, no grad_fn;
    any one input that requires grad gets its gradient."""
    n = 64
    t = torch.randn(twiddle_shape(1, 1, n), dtype=torch.float64)
    x = torch.randn(3, n, dtype=torch.float64)
    b = torch.randn(n, dtype=torch.float64)
    inputs = {"twiddle": t, "x": x, "bias": b}
    if requires != "none":
        inputs[requires].requires_grad_(True)
    with torch.set_grad_enabled(not no_grad):
        y = torch.ops.twiddle.butterfly_multiply(t, x, b, True, False, False, n)
    expected = butterfly_multiply_reference(t.detach(), x.detach()) + b.detach()
    assert torch.allclose(y, expected, rtol=1e-12, atol=1e-12)
    assert (y.grad_fn is None) == (no_grad or requires == "none")
    if y.grad_fn is not None:
        y.sum().backward()
        for name, v in inputs.items():
            assert (v.grad is not None) == (name == requires)


def _ops_seen(mode_base, fn):
    """Names of the ops a torch-function or torch-dispatch mode sees while ``fn`` runs."""
    seen = []

    class Recorder(mode_base):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Recorder():
        fn()
    return seen


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_eager_entry_is_the_same_op(with_bias, grad):
    """The extension's eager entry (csrc/eager_entry.cpp) and torch.ops give the same bits, forward and backward."""
    assert fused_cpu.available() and fused_cpu._eager is not None
    n = 32
    t = torch.randn(twiddle_shape(2, 1, n), dtype=torch.float64, requires_grad=grad)
    x = torch.randn(5, n - 3, dtype=torch.float64, requires_grad=grad)
    b = torch.randn(2 * n - 1, dtype=torch.float64, requires_grad=grad) if with_bias else None
    args = (True, False, False, 2 * n - 1)
    y_eager = fused_cpu._eager(t, x, b, *args)
    y_ops = torch.ops.twiddle.butterfly_multiply(t, x, b, *args)
    assert torch.equal(y_eager, y_ops)
    assert (y_eager.grad_fn is not None) == grad
    if grad:
        g = torch.randn_like(y_ops)
        inputs = (t, x) if b is None else (t, x, b)
        for a, c in zip(torch.autograd.grad(y_eager, inputs, g), torch.autograd.grad(y_ops, inputs, g), strict=True):
            assert torch.equal(a, c)


def test_eager_entry_serves_plain_calls_and_torch_ops_the_overrides():
    """``butterfly_multiply_op`` takes the eager entry for plain tensors, and torch.ops where a __torch_function__ mode
    is active (the entry would not consult it); __torch_dispatch__ modes see the op either way."""
    n = 16
    t = torch.randn(twiddle_shape(1, 1, n))
    x = torch.randn(3, n)
    expected = butterfly_multiply_reference(t, x)
    calls = []
    eager = fused_cpu._eager
    try:
        fused_cpu._eager = lambda *a: calls.append(a) or eager(*a)
        y = fused_cpu.butterfly_multiply_op(t, x, None, True, False, False, n)
        assert len(calls) == 1 and torch.allclose(y, expected, atol=1e-5)
        seen = _ops_seen(torch.overrides.TorchFunctionMode,
                         lambda: fused_cpu.butterfly_multiply_op(t, x, None, True, False, False, n))
        assert len(calls) == 1 and any("butterfly_multiply" in name for name in seen)
        seen = _ops_seen(torch.utils._python_dispatch.TorchDispatchMode,
                         lambda: fused_cpu.butterfly_multiply_op(t, x, None, True, False, False, n))
        assert len(calls) == 2 and "twiddle.butterfly_multiply.default" in seen
    finally:
        fused_cpu._eager = eager


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_jit_trace_records_the_op_through_the_eager_entry():
    import twiddle

    layer = twiddle.Butterfly(16, 16)
    x = torch.randn(3, 16)
    with pytest.warns(torch.jit.TracerWarning):  # the module's Python input checks
        traced = torch.jit.trace(layer, x)
    assert any(node.kind() == "twiddle::butterfly_multiply" for node in traced.graph.nodes())
    x2 = torch.randn(5, 16)
    assert torch.allclose(traced(x2), layer(x2))


def test_eager_entry_releases_the_gil():
    """A long eager call lets another Python thread run (torch.ops does the same)."""
    import threading
    import time

    n = 4096
    t = torch.randn(twiddle_shape(1, 1, n))
    x = torch.randn(512, n)
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        thread = threading.Thread(target=count)
        thread.start()
        time.sleep(0.01)
        start = len(ticks)
        begin = time.perf_counter()
        for _ in range(5):
            fused_cpu._eager(t, x, None, True, False, False, n)
        elapsed = time.perf_counter() - begin
        during = len(ticks) - start
        stop.set()
        thread.join()
    finally:
        torch.set_num_threads(threads)
    # here: ~900 ticks in the ~50 ms of calls; a C call that holds the GIL for as long (sum(range(10**6)) five times)
    # lets through ~5, at the interpreter's switch points between the calls
    assert elapsed > 0.005 and during > 50, (elapsed, during)


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_computed_in_float32(low):
    from twiddle.ops import butterfly_multiply

    t = torch.randn(twiddle_shape(1, 1, 64)) / 2**0.5
    x = torch.randn(8, 64)
    y = butterfly_multiply(t.to(low), x.to(low))
    assert y.dtype == low
    ref = butterfly_multiply_reference(t.to(low).double(), x.to(low).double())
    assert rel(y.double(), ref) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_batch_backward_gives_zero_gradients(dtype):
    """The kernel writes the twiddle gradient without zero-filling it first, except when there are no rows."""
    assert fused_cpu.available()
    t = torch.randn(twiddle_shape(1, 1, 64), dtype=dtype)
    gt, gx, gb = torch.ops.twiddle.butterfly_multiply_backward(
        t, torch.randn(0, 64, dtype=dtype), torch.randn(0, 64, dtype=dtype), True, False, False, 64, True
    )
    assert gx.shape == (0, 64) and torch.equal(gt, torch.zeros_like(t))
    assert torch.equal(gb, torch.zeros(64, dtype=dtype))


def test_odd_leading_dims_noncontiguous_and_empty_batch():
    from twiddle.ops import butterfly_multiply

    t = torch.randn(twiddle_shape(2, 2, 128), dtype=torch.float64)
    x = torch.randn(3, 7, 5, 128, dtype=torch.float64).transpose(0, 2)  # non-contiguous, odd leading dims
    assert not x.is_contiguous()
    y = butterfly_multiply(t, x, out_size=200)
    torch.testing.assert_close(y, butterfly_multiply_reference(t, x, out_size=200), rtol=1e-12, atol=1e-12)
    empty = butterfly_multiply(t, torch.randn(0, 128, dtype=torch.float64))
    assert empty.shape == (0, 256)
    tw32 = torch.randn(twiddle_shape(1, 1, 64)).transpose(3, 3)
    xs = torch.randn(64, 40)[:, ::2].T  # strided rows
    torch.testing.assert_close(
        butterfly_multiply(tw32, xs), butterfly_multiply_reference(tw32, xs), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("permuted", [False, True])  # with input and output permutations (in_perm, out_perm)
def test_gradcheck(dtype, transpose, permuted):
    t = (torch.randn(twiddle_shape(2, 2, 8), dtype=dtype) / 2**0.5).requires_grad_(True)
    m = 13 if transpose else 7
    x = torch.randn(3, m, dtype=dtype, requires_grad=True)
    perm, out_perm = (torch.randperm(m), torch.randperm(6)) if permuted else (None, None)

    def f(tw, xx):
        return fused_cpu.fused_butterfly_multiply(tw, xx, True, out_size=6, transpose=transpose, conjugate=True,
                                                  in_perm=perm, out_perm=out_perm)

    assert torch.autograd.gradcheck(f, (t, x))


@pytest.mark.parametrize(
    "batch,dtype",
    [(300, torch.float32), (40, torch.float32), (6, torch.float32),  # lane tiles in 4 or 3 chunks; row groups
     (256, torch.float32),  # the float32 backward's 32-row tiles (AVX2), in 4 chunks
     (40, torch.float64), (6, torch.float64), (3, torch.float64)],  # 16-, 8- and 4-lane tiles
)
def test_same_result_with_one_and_two_threads(batch, dtype):
    t = torch.randn(twiddle_shape(2, 2, 1024), dtype=dtype)
    x = torch.randn(batch, 1024, dtype=dtype)
    b = torch.randn(2048, dtype=dtype)
    g = torch.randn(batch, 2048, dtype=dtype)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            tt, bb = t.clone().requires_grad_(True), b.clone().requires_grad_(True)
            y = fused_cpu.fused_butterfly_multiply(tt, x, True, out_size=2048, transpose=False, conjugate=False,
                                                   bias=bb)
            y.backward(g)
            outs.append((y.detach(), tt.grad, bb.grad))
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*outs, strict=True):  # output, and the deterministic reductions
        torch.testing.assert_close(one, two, rtol=0, atol=0)


@pytest.mark.parametrize(
    "dtype,n", [(torch.float64, 4), (torch.float64, 64), (torch.complex64, 64), (torch.complex128, 16),
                (torch.float32, 8),  # the lane layout at every batch (float32 rows need n >= 16)
                (torch.float64, 2048)]  # 8-row tiles for every batch of more than 4 rows
)
def test_a_row_gets_the_same_output_whatever_its_batch(dtype, n):
    """Batches of at most 4 and 8 rows use narrower lane tiles than larger ones; each lane's arithmetic is the
    same, so the first rows of a batch of 20 come out bit for bit as they do alone or in smaller batches."""
    t = torch.randn(twiddle_shape(2, 1, n), dtype=dtype)
    x = torch.randn(20, 2 * n, dtype=dtype)
    bias = torch.randn(n, dtype=dtype)

    def f(rows):
        return fused_cpu.fused_butterfly_multiply(t, rows, False, out_size=n, transpose=True, conjugate=False,
                                                  bias=bias)

    full = f(x)
    for b in (1, 3, 4, 5, 8, 13):
        assert torch.equal(f(x[:b]), full[:b])
    wide = torch.complex128 if dtype.is_complex else torch.float64
    reference = butterfly_multiply_reference(t.to(wide), x.to(wide), False, out_size=n, transpose=True) + bias.to(wide)
    assert rel(full.to(wide), reference) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float64])
@pytest.mark.parametrize("n,nstacks,nblocks,transpose,conjugate,increasing", [
    (64, 1, 1, False, False, True),  # the smallest size of the complex64 row path (complex128, float64: 16)
    (128, 2, 2, False, True, False),
    (1024, 1, 1, True, True, True),
    (256, 3, 1, True, False, False),
])
@pytest.mark.parametrize("extras", ["plain", "permuted+bias", "real input"])
def test_the_row_paths_for_one_row(dtype, n, nstacks, nblocks, transpose, conjugate, increasing, extras):
    """A single complex row runs the complex row path (split real / imaginary parts, 8 or 4 blocks per vector,
    strides below that in a transposed layout), a single float64 row the float64 row path (4 blocks per vector, the
    same layouts): against the reference in double precision, and bit for bit the row's output inside a larger batch
    (the lane tile)."""
    if extras == "real input" and not dtype.is_complex:
        pytest.skip("a real input to real twiddles is the plain case")
    torch.manual_seed(n + nstacks)
    if dtype != torch.complex64 and n == 64:
        n = 16  # (the complex128 and float64 paths' smallest size)
    t = torch.randn(twiddle_shape(nstacks, nblocks, n), dtype=dtype) / 2**0.5
    in_size, out_size = (nstacks * n - 5, n - 3) if transpose else (n - 5, nstacks * n - 3)
    real_input = extras == "real input"
    x = torch.randn(6, in_size, dtype=dtype.to_real() if real_input else dtype)
    in_perm = torch.randperm(in_size) if extras == "permuted+bias" else None
    out_perm = torch.randperm(out_size) if extras == "permuted+bias" else None
    bias = torch.randn(out_size, dtype=dtype) if extras == "permuted+bias" else None

    def run(rows):
        return fused_cpu.fused_butterfly_multiply(t, rows, increasing, out_size=out_size, transpose=transpose,
                                                  conjugate=conjugate, bias=bias, in_perm=in_perm, out_perm=out_perm)

    one = run(x[2:3])
    assert torch.equal(one, run(x)[2:3])
    xs = x[2:3].to(torch.complex128 if dtype.is_complex else torch.float64)
    xs = xs if in_perm is None else xs[:, in_perm]
    want = butterfly_multiply_reference(t.to(xs.dtype), xs, increasing, out_size=out_size, transpose=transpose,
                                        conjugate=conjugate)
    want = want if out_perm is None else want[:, out_perm]
    want = want if bias is None else want + bias
    assert rel(one.to(xs.dtype), want) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex64, torch.complex128])
@pytest.mark.parametrize("n,nstacks,nblocks,transpose,increasing", [
    (16, 1, 1, False, True),  # the float64 and complex128 row paths' smallest size
    (64, 1, 1, False, False),  # float32's and complex64's smallest
    (128, 2, 2, False, False),
    (1024, 1, 1, True, True),
    (256, 3, 1, True, False),
])
@pytest.mark.parametrize("extras", ["plain", "permuted+bias", "strided gradient", "real input"])
def test_the_row_paths_backward(dtype, n, nstacks, nblocks, transpose, increasing, extras):
    """A single row's backward runs a row path (float64, complex; float32 on AVX-512, on AVX2 the row code of
    small batches): every gradient against the reference's, the input gradient bit for bit the row's inside a
    larger batch (the lane tile; 12 rows for float32, whose batches of up to 8 rows take the row code), the twiddle
    gradient bit for bit that of a batch whose other rows are zero."""
    if dtype in (torch.complex64, torch.float32) and n < 64:
        pytest.skip("single-precision rows take the row path from n = 64")
    if extras == "real input" and not dtype.is_complex:
        pytest.skip("a real input to complex twiddles")
    torch.manual_seed(n + nstacks)
    conjugate = dtype.is_complex and not increasing
    t = torch.randn(twiddle_shape(nstacks, nblocks, n), dtype=dtype) / 2**0.5
    in_size, out_size = (nstacks * n - 5, n - 3) if transpose else (n - 5, nstacks * n - 3)
    batch = 12 if dtype == torch.float32 else 6
    x = torch.randn(batch, in_size, dtype=dtype.to_real() if extras == "real input" else dtype)
    in_perm = torch.randperm(in_size) if extras == "permuted+bias" else None
    out_perm = torch.randperm(out_size) if extras == "permuted+bias" else None
    bias = torch.randn(out_size, dtype=dtype) if extras == "permuted+bias" else None
    gy = torch.randn(1, out_size, 2, dtype=dtype)[..., 0] if extras == "strided gradient" else \
        torch.randn(1, out_size, dtype=dtype)
    wide = {torch.float64: torch.float64, torch.float32: torch.float64, torch.complex64: torch.complex128,
            torch.complex128: torch.complex128}

    def gradients(rows, grad, multiply=fused_cpu.fused_butterfly_multiply):
        reference = multiply is butterfly_multiply_reference
        cast = (lambda v: v.to(wide[v.dtype] if v.is_complex() else torch.float64)) if reference else (lambda v: v)
        tt, xx = cast(t).requires_grad_(), cast(rows).requires_grad_()
        bb = None if bias is None else cast(bias).requires_grad_()
        if not reference:
            y = multiply(tt, xx, increasing, out_size=out_size, transpose=transpose, conjugate=conjugate, bias=bb,
                         in_perm=in_perm, out_perm=out_perm)
        else:  # the reference, permutations and bias applied around it
            xs = xx if in_perm is None else xx[:, in_perm]
            y = multiply(tt, xs, increasing, out_size=out_size, transpose=transpose, conjugate=conjugate)
            y = y if out_perm is None else y[:, out_perm]
            y = y if bb is None else y + bb
        return torch.autograd.grad(y, [tt, xx] + ([bb] if bb is not None else []), cast(grad))

    one = gradients(x[2:3], gy)
    for got, want in zip(one, gradients(x[2:3], gy, butterfly_multiply_reference), strict=True):
        assert rel(got.to(want.dtype), want) < (1e-5 if dtype in (torch.complex64, torch.float32) else 1e-13)
    padded_gy = torch.zeros(batch, out_size, dtype=dtype)
    padded_gy[2] = gy[0]
    assert torch.equal(one[1], gradients(x, padded_gy)[1][2:3])
    only_row = torch.zeros_like(x)
    only_row[2] = x[2]
    assert torch.equal(one[0], gradients(only_row, padded_gy)[0])


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("transpose,increasing,nblocks", [(False, True, 1), (True, False, 2)])
@pytest.mark.parametrize("extras", ["plain", "permuted+bias", "strided gradient"])
def test_float32_small_batches_split_passes_over_threads(batch, transpose, increasing, nblocks, extras):
    """float32 batches of up to 8 rows (the row code on AVX2) read the twiddles and add their gradient in the
    user's layout, and with enough work (here 2 stacks at n = 4096) run each pass's positions on all threads (the
    backward; the forward for a single row): output and every gradient against the reference, and bit for bit
    those of one thread."""
    torch.manual_seed(batch)
    n, nstacks = 4096, 2
    t = torch.randn(twiddle_shape(nstacks, nblocks, n)) / 2**0.5
    in_size, out_size = (nstacks * n - 5, n - 3) if transpose else (n - 5, nstacks * n - 3)
    x = torch.randn(batch, in_size)
    in_perm = torch.randperm(in_size) if extras == "permuted+bias" else None
    out_perm = torch.randperm(out_size) if extras == "permuted+bias" else None
    bias = torch.randn(out_size) if extras == "permuted+bias" else None
    gy = torch.randn(batch, out_size, 2)[..., 0] if extras == "strided gradient" else torch.randn(batch, out_size)

    def gradients(dtype=torch.float32):
        tt, xx = t.to(dtype).requires_grad_(), x.to(dtype).requires_grad_()
        bb = None if bias is None else bias.to(dtype).requires_grad_()
        if dtype == torch.float32:
            y = fused_cpu.fused_butterfly_multiply(tt, xx, increasing, out_size=out_size, transpose=transpose,
                                                   conjugate=False, bias=bb, in_perm=in_perm, out_perm=out_perm)
        else:
            y = butterfly_multiply_reference(tt, xx if in_perm is None else xx[:, in_perm], increasing,
                                             out_size=out_size, transpose=transpose)
            y = y if out_perm is None else y[:, out_perm]
            y = y if bb is None else y + bb
        return (y.detach(),) + torch.autograd.grad(y, [tt, xx] + ([bb] if bb is not None else []), gy.to(dtype))

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gradients()
        torch.set_num_threads(2)
        two = gradients()
    finally:
        torch.set_num_threads(before)
    for a, b, want in zip(one, two, gradients(torch.float64), strict=True):
        assert torch.equal(a, b)
        assert rel(b.double(), want) < 1e-5


def _permuted_multiply(multiply, t, x, bias, increasing, out_size, transpose, conjugate, in_perm, out_perm):
    """The fused multiply with its permutations and bias applied inside, or (``multiply`` the reference) the same
    map with them applied by indexing and adding."""
    if multiply is fused_cpu.fused_butterfly_multiply:
        return multiply(t, x, increasing, out_size=out_size, transpose=transpose, conjugate=conjugate, bias=bias,
                        in_perm=in_perm, out_perm=out_perm)
    y = multiply(t, x if in_perm is None else x[:, in_perm], increasing, out_size=out_size, transpose=transpose,
                 conjugate=conjugate)
    y = y if out_perm is None else y[:, out_perm]
    return y if bias is None else y + bias


def _blocked_backward_bytes(threshold: int) -> int:
    """Sets the kernel's blocked-backward threshold (bytes of plain activations), returns the previous one."""
    from twiddle.ops import _cpu_build

    return _cpu_build.module()._set_blocked_backward_bytes(threshold)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
@pytest.mark.parametrize("n,nstacks,nblocks,transpose,increasing,batch", [
    (4, 1, 1, False, True, 20),  # C = m = 2
    (8, 2, 2, False, False, 37),  # C = 4, m = 2; BB*-style alternating phases
    (32, 1, 3, True, True, 6),  # 4-lane tiles; three blocks: phases chunk, column, chunk, ...
    (256, 3, 1, True, False, 9),  # 8-lane tiles (float64) or 16; stacks summed by the transpose
    (2048, 1, 2, False, True, 17),  # C = 64, m = 32
    (64, 2, 1, True, True, 128),  # float32 on AVX2: 32-row tiles
])
@pytest.mark.parametrize("extras", ["plain", "permuted+bias", "strided gradient", "real input"])
def test_the_blocked_backward_is_the_plain_one_bit_for_bit(dtype, n, nstacks, nblocks, transpose, increasing, batch,
                                                            extras):
    """Large calls' backward runs in cache-sized phases (chunks of C consecutive positions, columns of stride C),
    switched on here for every size: outputs and every gradient equal the plain lane tile's bit for bit, and match
    the reference."""
    if extras == "real input" and not dtype.is_complex:
        pytest.skip("a real input to complex twiddles")
    torch.manual_seed(n + batch)
    t = torch.randn(twiddle_shape(nstacks, nblocks, n), dtype=dtype) / 2**0.5
    in_size, out_size = (nstacks * n - 3, n - 1) if transpose else (n - 1, nstacks * n - 3)
    x_dtype = dtype.to_real() if extras == "real input" else dtype
    x = torch.randn(batch, in_size, dtype=x_dtype)
    permuted = extras == "permuted+bias"
    in_perm = torch.randperm(in_size) if permuted else None
    out_perm = torch.randperm(out_size) if permuted else None
    bias = torch.randn(out_size, dtype=dtype) if permuted else None
    gy = torch.randn(batch, out_size, 2, dtype=dtype)[..., 0] if extras == "strided gradient" else \
        torch.randn(batch, out_size, dtype=dtype)
    conjugate = dtype.is_complex

    def results(multiply=fused_cpu.fused_butterfly_multiply, wide=False):
        cast = (lambda v: v.to(torch.complex128 if v.is_complex() else torch.float64)) if wide else (lambda v: v)
        tt, xx = cast(t).requires_grad_(), cast(x).requires_grad_()
        bb = None if bias is None else cast(bias).requires_grad_()
        y = _permuted_multiply(multiply, tt, xx, bb, increasing, out_size, transpose, conjugate, in_perm, out_perm)
        return (y, *torch.autograd.grad(y, [tt, xx] + ([bb] if bb is not None else []), cast(gy)))

    before = _blocked_backward_bytes(1 << 62)
    try:
        plain = results()
        _blocked_backward_bytes(0)
        blocked = results()
    finally:
        _blocked_backward_bytes(before)
    for a, b in zip(plain, blocked, strict=True):
        assert torch.equal(a, b)
    for got, want in zip(blocked, results(butterfly_multiply_reference, wide=True), strict=True):
        assert rel(got.to(want.dtype), want) < TOL[dtype]


def test_the_blocked_backward_is_taken_by_default_for_large_calls_and_matches_the_reference():
    """float32 n = 16384, batch 64 on two threads keeps 30 MB of plain activations: the blocked backward runs by
    default (a threshold above it gives the plain backward, bit for bit the same), and the gradients match the
    float64 reference."""
    n, batch = 16384, 64
    torch.manual_seed(0)
    t = torch.randn(twiddle_shape(1, 1, n)) / 2**0.5
    x, gy = torch.randn(batch, n), torch.randn(batch, n)
    before_threads = torch.get_num_threads()

    def grads(dtype=torch.float32, multiply=fused_cpu.fused_butterfly_multiply):
        tt, xx = t.to(dtype).requires_grad_(), x.to(dtype).requires_grad_()
        if multiply is fused_cpu.fused_butterfly_multiply:
            y = multiply(tt, xx, True, out_size=n, transpose=False, conjugate=False)
        else:
            y = multiply(tt, xx, True, out_size=n)
        return torch.autograd.grad(y, [tt, xx], gy.to(dtype))

    try:
        torch.set_num_threads(2)
        default = grads()
        before = _blocked_backward_bytes(1 << 62)
        try:
            plain = grads()
        finally:
            _blocked_backward_bytes(before)
    finally:
        torch.set_num_threads(before_threads)
    for a, b in zip(default, plain, strict=True):
        assert torch.equal(a, b)
    for got, want in zip(default, grads(torch.float64, butterfly_multiply_reference), strict=True):
        assert rel(got.double(), want) < 1e-5


def test_reference_env_switch_disables_kernel():
    code = (
        "import torch, twiddle; from twiddle.ops import kernel_for; "
        "print(kernel_for(torch.zeros(1,1,3,4,2,2), torch.zeros(2,8)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"TWIDDLE_KERNEL": "reference",
                                                                          "PATH": ""}, check=True
    )
    assert out.stdout.strip() == "reference"


@given(
    dtype=st.sampled_from([torch.float32, torch.float64, torch.complex64, torch.complex128]),
    log_n=st.integers(0, 9),
    nblocks=st.integers(1, 3),
    nstacks=st.integers(1, 3),
    increasing=st.booleans(),
    transpose=st.booleans(),
    conjugate=st.booleans(),
    batch=st.lists(st.integers(1, 20), min_size=1, max_size=2),
    data=st.data(),
)
def test_hypothesis_fused_vs_reference(dtype, log_n, nblocks, nstacks, increasing, transpose, conjugate, batch, data):
    n = 1 << log_n
    in_limit, out_limit = (nstacks * n, n) if transpose else (n, nstacks * n)
    m = data.draw(st.integers(1, in_limit), label="in_size")
    out = data.draw(st.integers(1, out_limit), label="out_size")
    (y, gx, gt), (yr, gxr, gtr) = run_both(
        dtype, n, nblocks, nstacks, increasing, transpose, conjugate, batch=tuple(batch), in_size=m, out_size=out
    )
    tol = TOL[dtype]
    assert rel(y, yr) < tol and rel(gx, gxr) < tol and rel(gt, gtr) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
@pytest.mark.parametrize(
    "n,nstacks,transpose,truncate,batch",
    # truncated outputs go through the kernel's buffer; whole ones (with several row groups and a partial one)
    # are written, bias included, by the last pass directly
    [(64, 2, False, True, 6), (8, 3, True, True, 6), (1024, 1, False, True, 6), (256, 2, False, False, 37),
     (128, 3, True, False, 21), (256, 2, False, False, 5), (32, 1, True, False, 8)],
)
def test_fused_bias_and_its_gradient(dtype, n, nstacks, transpose, truncate, batch):
    from twiddle.ops import butterfly_multiply

    wide = torch.complex128 if dtype.is_complex else torch.float64
    t = torch.randn(twiddle_shape(nstacks, 2, n), dtype=wide) / 2**0.5
    m = nstacks * n if transpose else n
    out = n if transpose else nstacks * n
    if truncate:
        out -= 1 if transpose else 3
    x = torch.randn(batch, m, dtype=wide)
    b = torch.randn(out, dtype=wide)
    g = torch.randn(batch, out, dtype=wide)
    grads = []
    for dt, reference in ((dtype, False), (wide, True)):
        tt, xx, bb = (v.to(dt).requires_grad_(True) for v in (t, x, b))
        if reference:
            y = butterfly_multiply_reference(tt, xx, out_size=out, transpose=transpose) + bb
        else:
            y = butterfly_multiply(tt, xx, out_size=out, transpose=transpose, bias=bb)
        (y * g.to(dt).conj()).real.sum().backward()
        grads.append([v.to(wide) for v in (y.detach(), tt.grad, xx.grad, bb.grad)])
    for a, r in zip(*grads, strict=True):
        assert rel(a, r) < TOL[dtype]


def test_bias_shape_is_checked():
    from twiddle.ops import butterfly_multiply

    t = torch.randn(twiddle_shape(1, 1, 8))
    with pytest.raises(ValueError, match=r"bias must be a tensor of shape \(8,\)"):
        butterfly_multiply(t, torch.randn(2, 8), bias=torch.randn(7))


def test_torch_compile_fullgraph_sees_one_op():
    from twiddle import Butterfly

    torch._dynamo.reset()
    layer = Butterfly(100, 70, nblocks=2)
    x = torch.randn(5, 100, requires_grad=True)
    eager = layer(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    layer.zero_grad()
    x.grad = None
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for a, b in zip([p.grad for p in layer.parameters()] + [x.grad], grads, strict=True):
        torch.testing.assert_close(a, b)


def test_torch_compile_inductor_in_a_fresh_process():
    code = """
import torch, twiddle
torch.manual_seed(0)
layer = twiddle.Butterfly(100, 70, nblocks=2)
x = torch.randn(5, 100, requires_grad=True)
compiled = torch.compile(layer, fullgraph=True)
y = compiled(x)
y.sum().backward()
g = x.grad.clone(); x.grad = None
ye = layer(x); ye.sum().backward()
assert torch.allclose(y, ye, atol=1e-6) and torch.allclose(g, x.grad, atol=1e-5)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
@pytest.mark.parametrize("transpose", [False, True])
def test_backward_reads_strided_gradients_in_place(dtype, transpose):
    """y.sum() hands the backward an expanded (stride 0) gradient; a transposed view gives strided rows."""
    wide = torch.complex128 if dtype.is_complex else torch.float64
    t = torch.randn(twiddle_shape(2, 1, 64), dtype=wide) / 2**0.5
    m = 128 if transpose else 64
    out = 64 if transpose else 128
    x = torch.randn(9, m, dtype=wide)
    gview = torch.randn(out, 9, dtype=wide).T  # non-contiguous gradient
    for make_loss in (lambda y: y.real.sum(), lambda y: (y * gview.to(y.dtype)).real.sum()):
        grads = []
        for dt, fused in ((dtype, True), (wide, False)):
            tt = t.detach().to(dt).clone().requires_grad_(True)
            xx = x.detach().to(dt).clone().requires_grad_(True)
            f = fused_cpu.fused_butterfly_multiply if fused else butterfly_multiply_reference
            kwargs = dict(out_size=out, transpose=transpose, conjugate=False)
            y = f(tt, xx, True, **kwargs)
            make_loss(y).backward()
            grads.append((tt.grad.to(wide), xx.grad.to(wide)))
        for a, r in zip(*grads, strict=True):
            assert rel(a, r) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["broadcast rows", "wider rows", "broadcast entries", "strided columns"])
@pytest.mark.parametrize("truncated", [False, True])
def test_backward_op_matches_for_every_gradient_layout(dtype, layout, truncated):
    """The backward op reads unit-stride gradient rows in place whatever their row stride (0 included) and
    gathers the others: the same result as with a contiguous copy of the gradient (37 rows: two full lane tiles
    and a partial one; truncated: the last stack's tile is partly padding)."""
    assert fused_cpu.available()
    n, nstacks, batch = 64, 2, 37
    t = (torch.randn(twiddle_shape(nstacks, 1, n), dtype=torch.float64) / 2**0.5).to(dtype)
    x = torch.randn(batch, n, dtype=torch.float64).to(dtype)
    out = nstacks * n - (11 if truncated else 0)
    grads = {
        "broadcast rows": torch.randn(out, dtype=dtype).expand(batch, out),  # strides (0, 1)
        "wider rows": torch.randn(batch, out + 5, dtype=dtype)[:, 2 : 2 + out],  # strides (out + 5, 1)
        "broadcast entries": torch.tensor(1.5, dtype=dtype).expand(batch, out),  # strides (0, 0)
        "strided columns": torch.randn(batch, 2 * out, dtype=dtype)[:, ::2],  # strides (2 out, 2)
    }
    g = grads[layout]
    op = torch.ops.twiddle.butterfly_multiply_backward
    gt, gx, gb = op(t, x, g, True, False, False, out, True)
    gt_ref, gx_ref, gb_ref = op(t, x, g.contiguous(), True, False, False, out, True)
    assert torch.equal(gt, gt_ref) and torch.equal(gx, gx_ref)
    # the bias gradient: the column sums (rows that are all one row are counted by a multiply, so the bits may
    # differ from the contiguous copy's sum)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(gb, g.sum(0), rtol=tol, atol=tol) and torch.allclose(gb, gb_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "case",
    [
        dict(dtype=torch.float64),
        dict(dtype=torch.float64, transpose=True, nstacks=2, nblocks=2, out=7, bias=True),
        dict(dtype=torch.float64, perms=True, bias=True, increasing=False),
        dict(dtype=torch.float64, perms=True, transpose=True, nstacks=2, out=5),
        dict(dtype=torch.complex128, conjugate=True, bias=True, perms=True),
        dict(dtype=torch.complex128, transpose=True, nstacks=2, nblocks=2, conjugate=True),
        dict(dtype=torch.complex128, real_x=True, out=6),
    ],
    ids=["plain", "transpose-stacks-blocks-bias", "perms-bias", "perms-transpose", "complex-conj-perms",
         "complex-transpose", "complex-real-x"],
)
def test_double_backward_through_the_fused_op(case):
    """create_graph=True: the backward's gradients are differentiable (taken from the reference multiply's autograd
    for that call), so second derivatives match finite differences (gradgradcheck) in every mode."""
    dtype, n = case["dtype"], 8
    nstacks, nblocks, transpose = case.get("nstacks", 1), case.get("nblocks", 1), case.get("transpose", False)
    m = nstacks * n - 1 if transpose else n - 1
    out = case.get("out", n if transpose else nstacks * n)
    t = (torch.randn(twiddle_shape(nstacks, nblocks, n), dtype=dtype) / 2**0.5).requires_grad_()
    x = torch.randn(3, m, dtype=torch.float64 if case.get("real_x") else dtype, requires_grad=True)
    bias = torch.randn(out, dtype=dtype, requires_grad=True) if case.get("bias") else None
    perms = (torch.randperm(m), torch.randperm(out)) if case.get("perms") else (None, None)
    assert kernel_for(t, x) == "fused-cpu"

    def f(t, x, *bias):
        return fused_cpu.fused_butterfly_multiply(
            t, x, case.get("increasing", True), out_size=out, transpose=transpose,
            conjugate=case.get("conjugate", False), bias=bias[0] if bias else None, in_perm=perms[0],
            out_perm=perms[1],
        )

    inputs = (t, x) + ((bias,) if bias is not None else ())
    assert_differentiable_gradients(f, inputs)


def assert_differentiable_gradients(f, inputs):
    """The first derivatives under create_graph=True equal the kernel's (gradgradcheck alone would accept wrong
    ones: it checks the second derivatives of whatever function the first derivatives are), and their own
    derivatives match finite differences."""
    y = f(*inputs)
    w = torch.randn_like(y)
    plain = torch.autograd.grad(y, inputs, w, retain_graph=True)
    graph = torch.autograd.grad(y, inputs, w, create_graph=True)
    for a, b in zip(graph, plain, strict=True):
        assert rel(a.detach(), b) < 1e-12
    assert graph[0].requires_grad and graph[1].requires_grad  # (the bias's, the sum of w, is a constant)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_double_backward_with_tied_twiddles(dtype):
    """The same twiddles applied twice (the second call's input depends on them): the backward's gradients are
    partial derivatives along each argument, so second derivatives still match finite differences."""
    t = (torch.randn(twiddle_shape(1, 2, 8), dtype=dtype) / 2**0.5).requires_grad_()
    x = torch.randn(3, 8, dtype=dtype, requires_grad=True)
    perm = torch.randperm(8)

    def f(t, x):
        once = fused_cpu.fused_butterfly_multiply(t, x, True, out_size=8, transpose=False, conjugate=False,
                                                  in_perm=perm)
        return fused_cpu.fused_butterfly_multiply(t, once.tanh() if not dtype.is_complex else once * once, False,
                                                  out_size=8, transpose=True, conjugate=dtype.is_complex)

    assert_differentiable_gradients(f, (t, x))


def test_double_backward_matches_the_reference_and_keeps_first_derivatives_on_the_kernel(monkeypatch):
    """A gradient penalty (d/dθ of ‖∂L/∂x‖²), a Hessian-vector product and a third derivative through a Butterfly
    module equal the reference kernel's; a plain backward still returns the kernel's own gradients (no graph)."""
    from twiddle import Butterfly

    torch.manual_seed(0)
    layer = Butterfly(12, 10, nblocks=2, dtype=torch.float64)
    x = torch.randn(4, 12, dtype=torch.float64)

    def derivatives():
        xx = x.clone().requires_grad_()
        y = layer(xx)
        (gx,) = torch.autograd.grad(y.tanh().sum(), xx, create_graph=True)
        penalty = gx.pow(2).sum()
        g_params = torch.autograd.grad(penalty, list(layer.parameters()), create_graph=True)
        third = torch.autograd.grad(sum(g.pow(2).sum() for g in g_params), xx)[0]
        names = [name for name, _ in layer.named_parameters()]
        v = tuple(torch.randn_like(p) for p in layer.parameters())
        hvp = torch.autograd.functional.hvp(
            lambda *ps: torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x,)).sin().sum(),
            tuple(layer.parameters()), v)[1]
        return (*g_params, third, *hvp)

    torch.manual_seed(1)
    fused = derivatives()
    monkeypatch.setenv("TWIDDLE_KERNEL", "reference")
    torch.manual_seed(1)
    reference = derivatives()
    for a, b in zip(fused, reference, strict=True):
        assert rel(a, b) < 1e-12
    monkeypatch.setenv("TWIDDLE_KERNEL", "auto")
    xx = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(layer(xx).sum(), xx)
    assert gx.grad_fn is None and not gx.requires_grad


def test_falls_back_to_reference_with_one_warning_without_a_compiler(tmp_path):
    code = """
import warnings, torch
t = torch.randn(1, 1, 3, 4, 2, 2)
x = torch.randn(2, 8)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from twiddle.ops import butterfly_multiply, butterfly_multiply_reference, kernel_for  # the import tries the build
    y1 = butterfly_multiply(t, x)
    y2 = butterfly_multiply(t, x)
msgs = [str(w.message) for w in caught if "fused CPU butterfly kernel could not be built" in str(w.message)]
assert len(msgs) == 1, msgs
assert kernel_for(t, x) == "reference"
assert torch.allclose(y1, butterfly_multiply_reference(t, x))
print("ok")
"""
    env = {"PATH": str(tmp_path), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def _float32_case(n, nstacks, nblocks, transpose, batch, permuted, seed):
    """A float32 multiply's operands: twiddles, input rows (batch), the output size, and (permuted) random input and
    output permutations and a bias, else None."""
    torch.manual_seed(seed)
    t = torch.randn(twiddle_shape(nstacks, nblocks, n)) / 2**0.5
    in_size, out_size = (nstacks * n, n) if transpose else (n, nstacks * n)
    x = torch.randn(batch, in_size)
    in_perm = torch.randperm(in_size) if permuted else None
    out_perm = torch.randperm(out_size) if permuted else None
    bias = torch.randn(out_size) if permuted else None
    return t, x, out_size, in_perm, out_perm, bias


@pytest.mark.parametrize("n,nstacks,nblocks,transpose,increasing", [
    (2, 1, 1, False, True), (16, 2, 2, True, False), (1024, 1, 1, False, True), (2048, 1, 2, True, True),
])
@pytest.mark.parametrize("extras", ["plain", "permuted+bias", "expanded gradient"])
def test_float32_backward_of_batches_in_multiples_of_128(n, nstacks, nblocks, transpose, increasing, extras):
    """float32 batches that divide into groups of 128 rows take 32-row tiles in the backward (AVX2; 16 rows
    elsewhere): the input gradient equals, bit for bit, that of the same rows in a batch of one row less (16-row
    tiles) and of the last row alone, every gradient matches the float64 reference, and the twiddle and bias
    gradients differ from the 16-row tiles' only by the order of their sums."""
    batch = 128 if n > 16 else 256
    t, x, out_size, in_perm, out_perm, bias = _float32_case(n, nstacks, nblocks, transpose, batch,
                                                            extras == "permuted+bias", seed=n)
    gy = torch.ones(()).expand(batch, out_size) if extras == "expanded gradient" else torch.randn(batch, out_size)

    def gradients(rows, multiply=fused_cpu.fused_butterfly_multiply, wide=False):
        cast = (lambda v: v.double()) if wide else (lambda v: v)
        tt, xx = cast(t).requires_grad_(), cast(x[rows]).requires_grad_()
        bb = None if bias is None else cast(bias).requires_grad_()
        y = _permuted_multiply(multiply, tt, xx, bb, increasing, out_size, transpose, False, in_perm, out_perm)
        return torch.autograd.grad(y, [tt, xx] + ([bb] if bb is not None else []), cast(gy[rows]))

    whole = gradients(slice(None))
    head, tail = gradients(slice(0, batch - 1)), gradients(slice(batch - 1, None))
    assert torch.equal(whole[1], torch.cat([head[1], tail[1]]))
    for got, part, last in zip(whole[::2], head[::2], tail[::2], strict=True):  # twiddle (and bias) gradients
        assert rel(got, part + last) < 1e-6
    reference = gradients(slice(None), butterfly_multiply_reference, wide=True)
    for got, want in zip(whole, reference, strict=True):
        assert rel(got.double(), want) < TOL[torch.float32]


@pytest.mark.parametrize("n,nstacks,nblocks,transpose,increasing", [
    (1024, 1, 1, False, True), (2048, 1, 2, True, False), (1024, 2, 1, False, False),
])
@pytest.mark.parametrize("batch", [64, 96, 80])  # 80: not whole 32-row tiles, so 16-row tiles
@pytest.mark.parametrize("extras", ["plain", "permuted+bias"])
def test_float32_forward_rows_are_the_same_bits_in_any_tile_width(n, nstacks, nblocks, transpose, increasing, batch,
                                                                  extras):
    """float32 batches in whole 32-row tiles at n = 1024 and 2048 run the forward on 32-row tiles (AVX2; 16 rows
    elsewhere): every row comes out bit for bit as in a batch of 16 rows, and within float32 rounding of the float64
    reference."""
    t, x, out_size, in_perm, out_perm, bias = _float32_case(n, nstacks, nblocks, transpose, batch,
                                                            extras == "permuted+bias", seed=batch + n)

    def forward(rows, multiply=fused_cpu.fused_butterfly_multiply, cast=lambda v: v):
        return _permuted_multiply(multiply, cast(t), cast(x[rows]), None if bias is None else cast(bias),
                                  increasing, out_size, transpose, False, in_perm, out_perm)

    whole = forward(slice(None))
    assert torch.equal(whole, torch.cat([forward(slice(i, i + 16)) for i in range(0, batch, 16)]))
    reference = forward(slice(None), butterfly_multiply_reference, lambda v: v.double())
    assert rel(whole.double(), reference) < TOL[torch.float32]
