"""GPU paths on a real CUDA device: the Triton kernel against the reference multiply (forward and backward, every
option, n up to 4096), the modules and transforms on CUDA, torch.compile and low precision there.

Skipped where no GPU is present (CI); the Triton kernel's logic is also checked on CPU through Triton's
interpreter in ``test_ops_triton.py``. Run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.fft
import torch

import twiddle
from twiddle import Butterfly, TruncatedButterflyLinear, transforms
from twiddle.ops import butterfly_multiply, butterfly_multiply_reference, kernel_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

triton_kernel = pytest.importorskip("twiddle.ops.triton_kernel")
needs_triton = pytest.mark.skipif(not triton_kernel.HAVE_TRITON, reason="needs Triton")

CUDA = "cuda"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    a, b = a.detach().cpu().to(wide), b.detach().cpu().to(wide)
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _reference_with_grads(t, x, g, inc, tr, out, conj=False):
    tt, xx = t.clone().requires_grad_(), x.clone().requires_grad_()
    y = butterfly_multiply_reference(tt, xx, inc, out_size=out, transpose=tr, conjugate=conj)
    y.backward(g)
    return y.detach(), tt.grad, xx.grad


# every option at small n; two option sets at large n (each distinct geometry is one Triton compilation)
CASES = list(itertools.product([2, 16, 256], [1, 2], [1, 2], [True, False], [False, True])) + [
    (n, nblocks, nstacks, inc, tr) for n in (1024, 4096) for nblocks, nstacks, inc, tr in ((1, 1, True, False),
                                                                                             (2, 2, False, True))
]  # the default variant for each n: unrolled up to UNROLLED_MAX_N, loop above


@needs_triton
@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("n,nblocks,nstacks,inc,tr", CASES)
def test_triton_matches_reference_forward_and_backward(n, nblocks, nstacks, inc, tr, kind):
    gen = torch.Generator(device="cpu").manual_seed(n + 10 * nblocks + 100 * nstacks)
    log_n = n.bit_length() - 1
    wide, narrow = (torch.float64, torch.float32) if kind == "real" else (torch.complex128, torch.complex64)
    conj = kind == "complex" and inc != tr  # conjugated twiddles in half of the complex cases
    t = torch.randn(nstacks, nblocks, log_n, n // 2, 2, 2, dtype=wide, generator=gen) / 2**0.5
    m = max(1, nstacks * n - 3) if tr else max(1, n - 1)
    out = max(1, n - 1) if tr else max(1, nstacks * n - 2)
    x = torch.randn(37, m, dtype=wide, generator=gen)
    g = torch.randn(37, out, dtype=wide, generator=gen)
    t, x, g = t.to(CUDA), x.to(CUDA), g.to(CUDA)
    ref_y, ref_gt, ref_gx = _reference_with_grads(t, x, g, inc, tr, out, conj)
    for dtype, tol in ((wide, 1e-12), (narrow, 2e-5)):
        y = triton_kernel.triton_forward(t.to(dtype), x.to(dtype), inc, tr, out, conjugate=conj)
        gt, gx = triton_kernel.triton_backward(t.to(dtype), x.to(dtype), g.to(dtype), inc, tr, out, conjugate=conj)
        assert y.dtype == gt.dtype == gx.dtype == dtype
        assert _rel(y, ref_y) < tol
        assert _rel(gx, ref_gx) < tol
        assert _rel(gt, ref_gt) < tol


@needs_triton
@pytest.mark.parametrize("variant", ["loop", "unrolled"])
@pytest.mark.parametrize("n", [16, 256, 1024, 4096, 16384])
def test_both_variants_match_reference_with_bias(n, variant):
    """Both kernel variants at every size they serve (the unrolled one up to its compile-time limit), the bias
    fused into the forward's store, batches spanning more tiles than the tile-walking programs."""
    if variant == "unrolled" and n > triton_kernel.UNROLLED_MAX_N:
        pytest.skip("the unrolled kernel takes minutes to compile at this size")
    gen = torch.Generator(device="cpu").manual_seed(n)
    log_n = n.bit_length() - 1
    t = (torch.randn(2, 2, log_n, n // 2, 2, 2, dtype=torch.float64, generator=gen) / 2**0.5).to(CUDA)
    for batch, tr in ((5, False), (4100, True)):
        m, out = (2 * n - 3, n - 1) if tr else (n - 1, 2 * n - 2)
        x = torch.randn(batch, m, dtype=torch.float64, generator=gen).to(CUDA)
        g = torch.randn(batch, out, dtype=torch.float64, generator=gen).to(CUDA)
        bias = torch.randn(out, dtype=torch.float64, generator=gen).to(CUDA)
        ref_y, ref_gt, ref_gx = _reference_with_grads(t, x, g, False, tr, out)
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 3e-5)):
            y = triton_kernel.triton_forward(t.to(dtype), x.to(dtype), False, tr, out, variant, bias=bias.to(dtype))
            gt, gx = triton_kernel.triton_backward(t.to(dtype), x.to(dtype), g.to(dtype), False, tr, out, variant)
            assert _rel(y, ref_y + bias) < tol
            assert _rel(gx, ref_gx) < tol
            assert _rel(gt, ref_gt) < tol


@needs_triton
@pytest.mark.parametrize("variant", ["loop", "unrolled"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("tr", [False, True])
def test_permutations_read_and_written_by_the_kernels(tr, dtype, variant):
    """``in_perm`` / ``out_perm`` through the Triton kernels (x gathered on load, the output scattered on store,
    the gradients the other way) against the reference with the gathers around it; the public function too."""
    gen = torch.Generator(device="cpu").manual_seed(7)
    n, nstacks = 256, 2
    t = (torch.randn(nstacks, 1, 8, n // 2, 2, 2, dtype=dtype, generator=gen) / 2**0.5).to(CUDA)
    m, out = (nstacks * n - 3, n - 5) if tr else (n - 1, nstacks * n - 2)
    x = torch.randn(300, m, dtype=dtype, generator=gen).to(CUDA)
    g = torch.randn(300, out, dtype=dtype, generator=gen).to(CUDA)
    bias = torch.randn(out, dtype=dtype, generator=gen).to(CUDA)
    p, q = torch.randperm(m, generator=gen).to(CUDA), torch.randperm(out, generator=gen).to(CUDA)
    tt, xx, bb = (v.clone().requires_grad_() for v in (t, x, bias))
    want = butterfly_multiply_reference(tt, xx[:, p], True, out_size=out, transpose=tr)[:, q] + bb
    want.backward(g)
    y = triton_kernel.triton_forward(t, x, True, tr, out, variant, bias=bias, in_perm=p, out_perm=q)
    gt, gx = triton_kernel.triton_backward(t, x, g, True, tr, out, variant, in_perm=p, out_perm=q)
    assert _rel(y, want) < 1e-12 and _rel(gt, tt.grad) < 1e-12 and _rel(gx, xx.grad) < 1e-12
    t2, x2, b2 = (v.clone().requires_grad_() for v in (t, x, bias))
    y2 = butterfly_multiply(t2, x2, out_size=out, transpose=tr, bias=b2, in_perm=p, out_perm=q)
    y2.backward(g)
    for a, b in ((y2, want), (t2.grad, tt.grad), (x2.grad, xx.grad), (b2.grad, bb.grad)):
        assert _rel(a, b) < 1e-12


@needs_triton
def test_dispatch_uses_triton_for_real_and_complex():
    t = torch.randn(1, 1, 4, 8, 2, 2, device=CUDA)
    x = torch.randn(3, 16, device=CUDA)
    assert kernel_for(t, x) == "triton"
    assert kernel_for(t.to(torch.complex64), x) == "triton"


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck_on_cuda(dtype):
    t = torch.randn(2, 2, 3, 4, 2, 2, dtype=dtype, device=CUDA, requires_grad=True)
    x = torch.randn(5, 7, dtype=dtype, device=CUDA, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, x: butterfly_multiply(t, x, out_size=13), (t, x))
    if dtype.is_complex:  # the Hermitian adjoint: conjugated twiddles, transposed
        assert torch.autograd.gradcheck(
            lambda t, x: butterfly_multiply(t, x, out_size=7, transpose=True, conjugate=True), (t, x[:, :6]))
    # second derivatives (create_graph=True: the first ones come from the reference's autograd)
    perm = torch.randperm(13, device=CUDA)
    assert torch.autograd.gradgradcheck(lambda t, x: butterfly_multiply(t, x, out_size=13, out_perm=perm), (t, x))


@needs_triton
def test_backward_is_deterministic():
    t = torch.randn(1, 2, 10, 512, 2, 2, device=CUDA, requires_grad=True)
    x = torch.randn(300, 1024, device=CUDA)
    grads = []
    for _ in range(2):
        t.grad = None
        butterfly_multiply(t, x).square().sum().backward()
        grads.append(t.grad.clone())
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("in_f,out_f,nblocks", [(1024, 1024, 1), (100, 300, 2), (513, 17, 1)])
def test_butterfly_module_on_cuda_matches_cpu(in_f, out_f, nblocks, complex_):
    torch.manual_seed(0)
    cpu = Butterfly(in_f, out_f, nblocks=nblocks, complex=complex_, dtype=torch.float64)
    gpu = Butterfly(in_f, out_f, nblocks=nblocks, complex=complex_, dtype=torch.float64, device=CUDA)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(2, 9, in_f, dtype=torch.float64)
    xg = x.clone().to(CUDA).requires_grad_()
    xc = x.clone().requires_grad_()
    yc, yg = cpu(xc), gpu(xg)
    assert yg.device.type == torch.device(CUDA).type
    assert _rel(yg.cpu(), yc.detach()) < 1e-12
    w = torch.randn_like(yc.detach())
    (yc.real * w.real).sum().backward()
    (yg.real * w.real.to(CUDA)).sum().backward()
    assert _rel(xg.grad.cpu(), xc.grad) < 1e-12
    assert _rel(gpu.twiddle.grad.cpu(), cpu.twiddle.grad) < 1e-12
    assert _rel(gpu.bias.grad.cpu(), cpu.bias.grad) < 1e-12


def test_noncontiguous_and_empty_inputs_on_cuda():
    layer = Butterfly(64, 64, device=CUDA)
    x = torch.randn(64, 10, device=CUDA).T  # (10, 64), not contiguous
    assert not x.is_contiguous()
    assert torch.allclose(layer(x), layer(x.contiguous()), atol=1e-6)
    assert layer(torch.randn(0, 64, device=CUDA)).shape == (0, 64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_on_cuda(dtype):
    torch.manual_seed(0)
    layer = Butterfly(256, 256, init="ortho", device=CUDA)
    x = torch.randn(32, 256, device=CUDA)
    y32 = layer(x)
    y = layer.to(dtype)(x.to(dtype))
    assert y.dtype == dtype
    assert _rel(y.float(), y32) < 2e-2
    with torch.autocast("cuda", dtype=dtype):
        ya = layer.float()(x)
    assert _rel(ya.float(), y32) < 2e-2


def test_torch_compile_fullgraph_on_cuda():
    torch.manual_seed(0)
    model = torch.nn.Sequential(Butterfly(128, 128), torch.nn.ReLU(), Butterfly(128, 10)).to(CUDA)
    x = torch.randn(16, 128, device=CUDA)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    y = compiled(x)
    assert torch.allclose(y, eager, atol=1e-5)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_transforms_on_cuda_match_references():
    n = 128
    x = torch.randn(4, n, dtype=torch.float64)
    fft = transforms.fft(n, dtype=torch.float64).to(CUDA)
    assert _rel(fft(x.to(CUDA)).cpu(), torch.fft.fft(x)) < 1e-12
    dct = transforms.dct(n, dtype=torch.float64, norm="ortho").to(CUDA)
    want = torch.from_numpy(scipy.fft.dct(x.numpy(), type=2, norm="ortho"))
    assert _rel(dct(x.to(CUDA)).cpu(), want) < 1e-12
    had = transforms.hadamard(n, dtype=torch.float64).to(CUDA)
    assert _rel(had(x.to(CUDA)).cpu(), had.cpu()(x)) < 1e-12


def test_truncated_layer_and_factorization_on_cuda():
    torch.manual_seed(0)
    layer = TruncatedButterflyLinear(256, 64, dtype=torch.float64)
    x = torch.randn(8, 256, dtype=torch.float64)
    want = layer(x)
    assert _rel(layer.to(CUDA)(x.to(CUDA)).cpu(), want.detach()) < 1e-12
    m = np.asarray(transforms.hadamard(64, dtype=torch.float64).to_dense())
    result = twiddle.factorize(m)
    module = result.module.to(CUDA)
    xs = torch.randn(3, 64, dtype=torch.float64)
    assert _rel(module(xs.to(CUDA)).cpu(), result.module.cpu()(xs)) < 1e-12
