"""A fixed permutation followed by a butterfly runs as one kernel call (twiddle._fusion): same values and gradients
as the two modules one after the other, and no fusion where that would skip something observable (hooks, a
subclass's own forward)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from twiddle import Butterfly, transforms
from twiddle._fusion import _fused_perm, run_fused
from twiddle.factorize.result import PermutedButterfly
from twiddle.permutations import FixedPermutation


def unfused(steps, x):
    for step in steps:
        x = step(x)
    return x


def count_kernel_inputs(monkeypatch, out=None):
    """Record the ``in_perm`` argument of every multiply the modules make (and its ``out_perm`` in ``out``)."""
    import twiddle.butterfly as butterfly_module

    seen = []
    real = butterfly_module._multiply_checked

    def spy(*args):
        seen.append(args[8] if len(args) > 8 else None)
        if out is not None:
            out.append(args[9] if len(args) > 9 else None)
        return real(*args)

    monkeypatch.setattr(butterfly_module, "_multiply_checked", spy)
    return seen


def without_fusion(fn, *args):
    """``fn(*args)`` with a (no-op) global module hook registered, which turns every fusion off."""
    handle = nn.modules.module.register_module_forward_hook(lambda mod, inputs, out: None)
    try:
        return fn(*args)
    finally:
        handle.remove()


@pytest.mark.parametrize(
    "make",
    [
        lambda: transforms.fft(64),
        lambda: transforms.ifft(64, norm="ortho"),
        lambda: transforms.dct(64, type=2),
        lambda: transforms.dst(64, type=3),
        lambda: transforms.hartley(32),
        lambda: transforms.fft2d((8, 16)),
        lambda: transforms.acdc(torch.randn(2, 16), torch.randn(2, 16)),
        lambda: transforms.dst(64, type=2),
        lambda: transforms.dct(32, type=3, norm="ortho"),
    ],
    ids=["fft", "ifft", "dct2", "dst3", "hartley", "fft2d", "acdc", "dst2", "dct3"],
)
@pytest.mark.parametrize("batch", [1, 5, 40])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64])
@pytest.mark.filterwarnings("ignore:.*holds single-precision values")  # built in float32, then .double(): fine here
def test_transform_pipeline_fuses_and_matches_unfused(make, batch, dtype, monkeypatch):
    module = make().double() if dtype == torch.float64 else make()
    x = torch.randn(batch, *module.in_shape, dtype=dtype)
    want = without_fusion(module, x)
    out_perms = []
    seen = count_kernel_inputs(monkeypatch, out_perms)
    got = module(x)
    assert any(p is not None for p in seen), "no permutation was fused"
    if module.name in ("dst-2", "dst-3", "dct-3"):  # these end with an output reordering
        assert any(p is not None for p in out_perms), "the output permutation was not fused"
    assert torch.equal(got, want)


@pytest.mark.parametrize("batch", [3, 37])
def test_fused_gradients_match_step_by_step(batch):
    torch.manual_seed(0)
    module = transforms.fft(128, trainable=True, dtype=torch.float64)
    x = torch.randn(batch, 128, dtype=torch.complex128, requires_grad=True)
    g = torch.randn(batch, 128, dtype=torch.complex128)
    grads = []
    for fused in (True, False):
        module.zero_grad()
        x.grad = None
        y = module.steps(x) if fused else unfused(module.steps, x)
        (y * g.conj()).real.sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in module.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_hooks_turn_fusion_off_and_still_run(monkeypatch):
    module = transforms.fft(32)
    x = torch.randn(4, 32, dtype=torch.complex64)
    want = unfused(module.steps, x)
    calls = []
    handle = module.steps[0].register_forward_hook(lambda mod, args, out: calls.append(out.shape))
    try:
        seen = count_kernel_inputs(monkeypatch)
        assert torch.equal(module(x), want)
        assert calls == [(4, 32)] and seen == [None]
    finally:
        handle.remove()
    calls.clear()
    handle = module.steps[1].register_forward_pre_hook(lambda mod, args: calls.append("pre"))
    try:
        assert torch.equal(module(x), want)
        assert calls == ["pre"]
    finally:
        handle.remove()
    global_calls = []
    handle = nn.modules.module.register_module_forward_hook(lambda mod, args, out: global_calls.append(type(mod)))
    try:
        module(x)
        assert FixedPermutation in global_calls and Butterfly in global_calls
    finally:
        handle.remove()
    seen.clear()
    module(x)
    assert seen and seen[-1] is not None  # fused again once the hooks are gone


def test_only_the_plain_classes_are_fused():
    class Logged(FixedPermutation):
        def forward(self, x):
            return super().forward(x) * 2

    layer = Butterfly(16, 16, bias=False)
    perm = torch.randperm(16)
    assert _fused_perm(FixedPermutation(perm), layer) is not None
    assert _fused_perm(Logged(perm), layer) is None
    assert _fused_perm(FixedPermutation(torch.randperm(8)), Butterfly(8, 16)) is not None
    assert _fused_perm(FixedPermutation(perm), Butterfly(8, 16)) is None  # sizes disagree: the layer's error
    x = torch.randn(3, 16)
    torch.testing.assert_close(run_fused((Logged(perm), layer), x), layer(x[:, perm] * 2))
    with pytest.raises(ValueError, match="in_features=8"):
        run_fused((FixedPermutation(perm), Butterfly(8, 16)), x)


def test_run_fused_handles_trailing_and_consecutive_permutations():
    p1, p2 = FixedPermutation(torch.randperm(8)), FixedPermutation(torch.randperm(8))
    layer = Butterfly(8, 8, bias=True)  # (an output permutation is not fused into a layer with bias)
    free = Butterfly(8, 8, bias=False)
    x = torch.randn(2, 8)
    for steps in ([p1], [p1, p2], [p1, p2, layer], [layer, p1], [p1, layer, p2, layer], [p1, nn.Identity(), layer],
                  [free, p1], [p1, free, p2], [p1, free, p2, free], [free, p1, p2], [free, free, p1],
                  [p1, free, FixedPermutation(torch.randperm(16))]):
        if getattr(steps[-1], "size", 8) == 16:  # a size mismatch raises the permutation's own error
            with pytest.raises(ValueError):
                run_fused(steps, x)
            continue
        torch.testing.assert_close(run_fused(steps, x), unfused(steps, x), rtol=0, atol=0)


@pytest.mark.parametrize("complex_", [False, True])
def test_permuted_butterfly_forward_is_fused(complex_, monkeypatch):
    n = 64
    dtype = torch.complex128 if complex_ else torch.float64
    twiddle = torch.randn(1, 1, 6, n // 2, 2, 2, dtype=dtype)
    module = PermutedButterfly(torch.randperm(n), twiddle, then=[(torch.randperm(n), twiddle.clone())])
    x = torch.randn(9, n, dtype=dtype)
    want = module.then[0].butterfly(module.then[0].permutation(module.butterfly(module.permutation(x))))
    seen = count_kernel_inputs(monkeypatch)
    torch.testing.assert_close(module(x), want, rtol=0, atol=0)
    assert len(seen) == 2 and all(p is not None for p in seen)
