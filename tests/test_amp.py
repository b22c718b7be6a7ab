"""Mixed precision on CPU: autocast (bfloat16) through models with butterfly layers, and bfloat16/float16 layers.

Documented bounds (README "Production use"): butterfly layers compute in float32 whatever the input precision and
round once on output, so a bfloat16 layer is within 2^-8 relative per output entry of the float32 result on the
same (rounded) inputs; under autocast they return float32 (cheap O(n log n) work gains nothing from bf16), and a
whole model's output stays within 2% of its float32 output.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from twiddle import Butterfly, TruncatedButterflyLinear, transforms


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_autocast_bfloat16_model_forward_and_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), Butterfly(128, 128), nn.ReLU(),
                          TruncatedButterflyLinear(128, 32), nn.Linear(32, 10))
    x = torch.randn(16, 64)
    want = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model[:3](x)
        got = model(x)
    assert hidden.dtype == torch.float32  # butterfly layers compute and return float32 under autocast
    assert got.dtype == torch.bfloat16  # the last nn.Linear is autocast's
    assert _rel(got, want) < 2e-2
    got.float().square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("complex_", [False, True])
def test_low_precision_layer_rounds_once(dtype, complex_):
    if complex_ and dtype == torch.bfloat16:
        pytest.skip("torch has no complex bfloat16")
    torch.manual_seed(0)
    layer = Butterfly(256, 256, init="ortho", complex=complex_)
    x = torch.randn(32, 256, dtype=layer.twiddle.dtype).to(
        {torch.bfloat16: torch.bfloat16, torch.float16: torch.complex32 if complex_ else torch.float16}[dtype])
    want = layer(x.to(layer.twiddle.dtype))  # float32 on the same rounded input
    low = layer.to(dtype)
    # twiddles rounded too: compare against float32 with the rounded twiddles
    reference = Butterfly(256, 256, init=low.twiddle.detach().to(want.dtype), complex=complex_, bias=False)
    with torch.no_grad():
        want = reference(x.to(want.dtype)) + low.bias.to(want.dtype)
    got = low(x)
    assert got.dtype == x.dtype
    eps = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    assert ((got.to(want.dtype) - want).abs() <= 2 * eps * want.abs() + 1e-6).all()


def test_autocast_leaves_transforms_exact():
    x = torch.randn(8, 64)
    for module in (transforms.dct(64, norm="ortho"), transforms.hadamard(64, normalized=True)):
        want = module(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = module(x)
        assert got.dtype == want.dtype and torch.equal(got, want)
