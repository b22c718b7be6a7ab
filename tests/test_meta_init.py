"""Meta-device initialization of every public module family: made inside ``with torch.device("meta")`` (or under
``torch.set_default_device("meta")``), given storage by ``to_empty``, then filled by ``reset_parameters`` on every
module that has one, as large-model code does; and ``Transform.reset_parameters`` on its own (fine-tuned values
back to the exact transform, a converted module recomputed in double precision)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from torch import nn

from twiddle import Butterfly, ButterflyAutoencoder, TruncatedButterfly, TruncatedButterflyLinear, fjlt, transforms
from twiddle.permutations import FixedPermutation
from twiddle.sketch import make_sketch
from twiddle.transforms import Transform

_G = torch.Generator().manual_seed(7)
COL = torch.randn(12, generator=_G)
WEIGHT1 = torch.randn(2, 3, 3, generator=_G)
BIAS1 = torch.randn(2, generator=_G)
WEIGHT2 = torch.randn(2, 1, 3, 3, generator=_G)
A16, D16 = torch.randn(16, generator=_G), torch.randn(16, generator=_G)

TRANSFORMS = {
    "fft": lambda **k: transforms.fft(16, **k),
    "ifft-bluestein": lambda **k: transforms.ifft(12, norm="ortho", **k),
    "fft2d": lambda **k: transforms.fft2d((4, 8), **k),
    "ifft2d": lambda **k: transforms.ifft2d(8, **k),
    "hartley": lambda **k: transforms.hartley(10, **k),
    "dct2": lambda **k: transforms.dct(16, **k),
    "dst1": lambda **k: transforms.dst(9, type=1, **k),
    "idct3": lambda **k: transforms.idct(12, type=3, norm="ortho", **k),
    "idst": lambda **k: transforms.idst(8, **k),
    "circulant": lambda **k: transforms.circulant(COL, **k),
    "toeplitz": lambda **k: transforms.toeplitz(np.arange(5.0), np.arange(7.0), **k),
    "conv1d": lambda **k: transforms.conv1d_circular(WEIGHT1, 16, BIAS1, **k),
    "conv2d": lambda **k: transforms.conv2d_circular(WEIGHT2, (8, 8), **k),
    "hadamard": lambda **k: transforms.hadamard(16, normalized=True, **k),
    "haar": lambda **k: transforms.haar(16, **k),
    "fastfood": lambda **k: transforms.fastfood(16, 8, seed=3, **k),
    "acdc": lambda **k: transforms.acdc(A16, D16, **k),
    "permutation": lambda **k: transforms.permutation_to_butterfly([3, 1, 0, 2, 5, 4], **k),
}

OTHERS = {
    "butterfly": lambda: Butterfly(20, 40),
    "butterfly-complex-fjlt": lambda: Butterfly(16, 16, complex=True, init="ortho"),
    "truncated": lambda: TruncatedButterfly(30, 7, seed=2),
    "truncated-linear": lambda: TruncatedButterflyLinear(64, 32, seed=1),
    "fjlt": lambda: fjlt(64, 10, seed=3),
    "autoencoder": lambda: ButterflyAutoencoder(32, 12, 4, seed=1),
    "sketch-butterfly": lambda: make_sketch("butterfly", 32, 8, seed=1),
    "sketch-sparse": lambda: make_sketch("sparse", 32, 8, seed=1, nnz=2),
    "sketch-count": lambda: make_sketch("countsketch", 32, 8, seed=1),
    "sketch-gaussian": lambda: make_sketch("gaussian", 32, 8, seed=1),
    "fixed-permutation": lambda: FixedPermutation([2, 0, 3, 1]),
}


def _reset_all(module: nn.Module) -> None:
    """The usual meta-init step: reset_parameters on every module that has one (children first)."""
    module.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _assert_same_tensors(a: nn.Module, b: nn.Module) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for name, t in ta.items():
        assert t.device == tb[name].device and t.dtype == tb[name].dtype, name
        assert torch.equal(t, tb[name]), name


@pytest.mark.parametrize("name", [*TRANSFORMS, *OTHERS])
@pytest.mark.parametrize("how", ["context", "default-device"])
def test_meta_then_to_empty_then_reset_gives_the_module(name, how):
    build = TRANSFORMS[name] if name in TRANSFORMS else OTHERS[name]
    torch.manual_seed(0)
    reference = build()
    torch.manual_seed(1)
    _reset_all(reference)  # the same random draws as the meta module's reset below
    if how == "context":
        with torch.device("meta"):
            module = build()
    else:
        torch.set_default_device("meta")
        try:
            module = build()
        finally:
            torch.set_default_device(None)
    assert all(t.device.type == "meta" for t in _tensors(module).values() if name != "fixed-permutation")
    module.to_empty(device="cpu")
    torch.manual_seed(1)
    _reset_all(module)
    _assert_same_tensors(module, reference)


def test_a_model_made_on_meta_computes_like_one_made_on_the_cpu():
    def model() -> nn.Module:
        return nn.Sequential(transforms.dct(32, norm="ortho"), Butterfly(32, 16), nn.ReLU(), nn.Linear(16, 4))

    torch.manual_seed(0)
    reference = model()
    with torch.device("meta"):
        meta = model()
    meta.to_empty(device="cpu")
    meta.load_state_dict(reference.state_dict())
    x = torch.randn(5, 32)
    torch.testing.assert_close(meta(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transforms_are_built_on_the_default_device_unless_told(name):
    with torch.device("meta"):
        assert all(t.is_meta for t in _tensors(TRANSFORMS[name]()).values())
        here = TRANSFORMS[name](device="cpu")  # an explicit device wins, and gets the values
    torch.testing.assert_close(here.to_dense(), TRANSFORMS[name]().to_dense(), rtol=0, atol=0)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_reset_undoes_fine_tuning_and_recomputes_in_double_after_double(name):
    build = TRANSFORMS[name]
    exact = build().to_dense()
    tuned = build(trainable=True)
    with torch.no_grad():
        for p in tuned.parameters():
            if p.is_floating_point() or p.is_complex():
                p.add_(0.5)
    assert not torch.equal(tuned.to_dense(), exact)
    tuned.reset_parameters()
    torch.testing.assert_close(tuned.to_dense(), exact, rtol=0, atol=0)
    assert all(p.requires_grad for p in tuned.parameters() if p.is_floating_point() or p.is_complex())
    converted = build().double()  # float32-accurate values in float64 storage
    converted.reset_parameters()  # computed again, in float64
    torch.testing.assert_close(converted.to_dense(), build(dtype=torch.float64).to_dense(), rtol=0, atol=0)


def test_reset_after_double_removes_the_single_precision_warning():
    dct = transforms.dct(16).double()
    x = torch.randn(3, 16, dtype=torch.float64)
    with pytest.warns(UserWarning, match="single-precision"):
        dct(x)
    dct = transforms.dct(16).double()
    dct.reset_parameters()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = dct(x)
    np.testing.assert_allclose(y.numpy(), scipy.fft.dct(x.numpy(), axis=-1), rtol=0, atol=1e-12)


def test_reset_survives_pickling_and_a_changed_argument():
    import pickle

    col = COL.clone()
    circ = transforms.circulant(col, trainable=True)
    exact = circ.to_dense()
    col.mul_(2)  # the caller's tensor changes: the module kept its own copy
    copy = pickle.loads(pickle.dumps(circ))
    with torch.no_grad():
        next(copy.parameters()).zero_()
    copy.reset_parameters()
    torch.testing.assert_close(copy.to_dense(), exact, rtol=0, atol=0)


def test_errors_of_meta_arguments_and_of_a_transform_without_a_recipe():
    with torch.device("meta"):
        with pytest.raises(ValueError, match="col is a meta tensor"):
            transforms.circulant(torch.randn(8))
        with pytest.raises(ValueError, match="perm is a meta tensor"):
            FixedPermutation(torch.arange(4))
    bare = Transform("mine", [Butterfly(4, 4)], (4,), (4,), real=True, trainable=False)
    with pytest.raises(RuntimeError, match="not made by a twiddle.transforms constructor"):
        bare.reset_parameters()
