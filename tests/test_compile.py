"""``torch.compile(fullgraph=True)`` on every public module family and on a model using them: no graph breaks
(fullgraph raises on one), the same outputs and gradients as eager. The graph is captured by Dynamo and run
through AOTAutograd (``aot_eager``); Inductor itself is exercised on the Butterfly layer in ``test_ops_fused.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from twiddle import Butterfly, ButterflyAutoencoder, TruncatedButterfly, TruncatedButterflyLinear, transforms
from twiddle.factorize import PermutedButterfly


def _model() -> nn.Module:
    return nn.Sequential(Butterfly(32, 64), nn.GELU(), TruncatedButterflyLinear(64, 16), nn.ReLU(),
                         Butterfly(16, 4, complex=False, nblocks=2))


MODULES = {
    "butterfly-complex": (lambda: Butterfly(20, 30, complex=True), (3, 20), torch.complex64),
    "truncated": (lambda: TruncatedButterfly(30, 7, seed=1), (4, 30), torch.float32),
    "truncated-transpose": (lambda: TruncatedButterfly(30, 7, seed=1).transpose(), (4, 7), torch.float32),
    "autoencoder": (lambda: ButterflyAutoencoder(32, 12, 4), (5, 32), torch.float32),
    "fft-any-n": (lambda: transforms.fft(12, trainable=True), (2, 12), torch.complex64),
    "dct": (lambda: transforms.dct(16, norm="ortho", trainable=True), (2, 16), torch.float32),
    "conv2d": (lambda: transforms.conv2d_circular(torch.randn(2, 3, 3, 3), (8, 8), trainable=True), (2, 3, 8, 8),
               torch.float32),
    "permuted-butterfly": (lambda: PermutedButterfly(torch.randperm(16), torch.randn(1, 1, 4, 8, 2, 2),
                                                     real_output=False), (2, 16), torch.float32),
    "model": (_model, (6, 32), torch.float32),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_compiled_module_matches_eager_without_graph_breaks(name):
    torch._dynamo.reset()
    make, shape, dtype = MODULES[name]
    torch.manual_seed(0)
    module = make()
    x = torch.randn(shape, dtype=dtype, requires_grad=True)

    def loss_and_grads(fn):
        module.zero_grad()
        x.grad = None
        y = fn(x)
        (y.abs() if y.is_complex() else y).square().sum().backward()
        grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        return y.detach(), grads, x.grad.clone()

    y_eager, g_eager, gx_eager = loss_and_grads(module)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    y, g, gx = loss_and_grads(compiled)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, gx_eager, rtol=1e-5, atol=1e-6)
    assert len(g) == len(g_eager)
    for a, b in zip(g, g_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
