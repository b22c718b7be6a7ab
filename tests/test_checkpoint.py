"""Checkpoints of every public module: ``state_dict`` through ``torch.save`` and safetensors round trips restore the
same outputs; error messages of the safetensors helpers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from twiddle import (
    Butterfly,
    ButterflyAutoencoder,
    TruncatedButterfly,
    TruncatedButterflyLinear,
    fjlt,
    replace_linear,
    transforms,
)
from twiddle.checkpoint import load_safetensors, save_safetensors
from twiddle.factorize import PermutedButterfly
from twiddle.legacy import ChunkMean
from twiddle.permutations import FixedPermutation
from twiddle.sketch import make_sketch


def _seeded(build):
    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build(seed)

    return make


def _model(seed: int) -> nn.Module:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    return replace_linear(model, "butterfly")


# name -> (constructor taking a seed, input shape, input dtype)
MODULES = {
    "butterfly": (_seeded(lambda s: Butterfly(20, 40)), (3, 20), torch.float32),
    "butterfly-complex-bbt": (_seeded(lambda s: Butterfly(16, 16, complex=True, nblocks=2)), (3, 16), torch.complex64),
    "butterfly-nobias-float64": (_seeded(lambda s: Butterfly(8, 5, bias=False, dtype=torch.float64)), (2, 8),
                                 torch.float64),
    "truncated": (_seeded(lambda s: TruncatedButterfly(30, 7, seed=s)), (4, 30), torch.float32),
    "truncated-transpose": (_seeded(lambda s: TruncatedButterfly(30, 7, seed=s).transpose()), (4, 7), torch.float32),
    "fjlt": (_seeded(lambda s: fjlt(64, 10, seed=s)), (2, 64), torch.float32),
    "truncated-linear": (_seeded(lambda s: TruncatedButterflyLinear(64, 32, seed=s)), (2, 64), torch.float32),
    "autoencoder": (_seeded(lambda s: ButterflyAutoencoder(32, 12, 4, seed=s)), (5, 32), torch.float32),
    "sketch-butterfly": (_seeded(lambda s: make_sketch("butterfly", 32, 8, seed=s)), (32, 6), torch.float32),
    "sketch-sparse": (_seeded(lambda s: make_sketch("sparse", 32, 8, seed=s)), (32, 6), torch.float32),
    "sketch-gaussian": (_seeded(lambda s: make_sketch("gaussian", 32, 8, seed=s)), (32, 6), torch.float32),
    "fft": (_seeded(lambda s: transforms.fft(12, trainable=True)), (2, 12), torch.complex64),
    "dct": (_seeded(lambda s: transforms.dct(16, norm="ortho", trainable=True)), (2, 16), torch.float32),
    "hadamard": (_seeded(lambda s: transforms.hadamard(16, trainable=True)), (2, 16), torch.float32),
    "circulant": (_seeded(lambda s: transforms.circulant(torch.randn(10), trainable=True)), (2, 10), torch.float32),
    "fastfood": (_seeded(lambda s: transforms.fastfood(16, seed=s, trainable=True)), (2, 16), torch.float32),
    "conv2d": (_seeded(lambda s: transforms.conv2d_circular(torch.randn(2, 3, 3, 3), (8, 8), trainable=True)),
               (2, 3, 8, 8), torch.float32),
    "permutation": (_seeded(lambda s: FixedPermutation(torch.randperm(9))), (2, 9), torch.float32),
    "permuted-butterfly": (
        _seeded(lambda s: PermutedButterfly(torch.randperm(16), torch.randn(1, 1, 4, 8, 2, 2), real_output=False,
                                            then=[(torch.randperm(16), torch.randn(1, 1, 4, 8, 2, 2))])),
        (2, 16), torch.float32),
    "chunk-mean": (_seeded(lambda s: ChunkMean(16, 4, 3, torch.randn(3))), (2, 16), torch.float32),
    "replaced-model": (_seeded(_model), (3, 16), torch.float32),
}


def _input(shape, dtype):
    g = torch.Generator().manual_seed(123)
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype, generator=g)
    return torch.randn(shape, generator=g).to(dtype)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_round_trip_restores_outputs(name, fmt, tmp_path):
    make, shape, dtype = MODULES[name]
    source, target = make(0), make(1)
    x = _input(shape, dtype)
    want = source(x)
    if fmt == "torch":
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        buffer.seek(0)
        target.load_state_dict(torch.load(buffer, weights_only=True))
    else:
        save_safetensors(source, tmp_path / "m.safetensors", metadata={"note": "test"})
        assert load_safetensors(target, tmp_path / "m.safetensors") is target
    _assert_same_state(source, target)
    assert torch.equal(target(x), want)


def test_safetensors_metadata_names_the_class(tmp_path):
    from safetensors import safe_open

    save_safetensors(Butterfly(8, 8), tmp_path / "b.safetensors", metadata={"in_features": "8"})
    with safe_open(str(tmp_path / "b.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["class"] == "Butterfly" and meta["in_features"] == "8" and meta["format"] == "twiddle.module/1"


def test_factor_out_file_loads_and_runs(tmp_path):
    """The file ``twiddle factor --out`` writes rebuilds a module computing the target (DCT-II: a complex lift)."""
    from twiddle.cli import main
    from twiddle.factorize.targets import target_matrix

    path = tmp_path / "dct.safetensors"
    assert main(["factor", "dct", "-n", "16", "--out", str(path)]) == 0
    module = PermutedButterfly.load(path)
    m = torch.as_tensor(np.asarray(target_matrix("dct", 16)), dtype=torch.float64)
    x = torch.randn(3, 16, dtype=torch.float64)
    assert torch.allclose(module(x), x @ m.T, atol=1e-10)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda p: save_safetensors("not a module", p), TypeError, "nn.Module"),
        (lambda p: save_safetensors(Butterfly(4, 4), p, metadata={"a": 1}), TypeError, "strings"),
        (lambda p: load_safetensors(Butterfly(4, 4), p.parent / "missing.safetensors"), FileNotFoundError,
         "no safetensors"),
        (lambda p: load_safetensors(Butterfly(8, 8), p), ValueError, r"shape mismatches \['twiddle"),
        (lambda p: load_safetensors(Butterfly(4, 4, bias=False), p), ValueError, r"unexpected \['bias'\]"),
        (lambda p: load_safetensors(object(), p), TypeError, "nn.Module"),
    ],
)
def test_safetensors_errors(call, error, match, tmp_path):
    path = tmp_path / "b.safetensors"
    save_safetensors(Butterfly(4, 4), path)
    with pytest.raises(error, match=match):
        call(path)


def test_non_strict_load_ignores_extra_tensors(tmp_path):
    save_safetensors(Butterfly(4, 4), tmp_path / "b.safetensors")
    target = Butterfly(4, 4, bias=False)
    load_safetensors(target, tmp_path / "b.safetensors", strict=False)


def test_non_strict_load_leaves_missing_tensors_alone(tmp_path):
    save_safetensors(Butterfly(4, 4, bias=False), tmp_path / "b.safetensors")
    target = Butterfly(4, 4)
    bias = target.bias.detach().clone()
    load_safetensors(target, tmp_path / "b.safetensors", strict=False)
    assert torch.equal(target.bias, bias)
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        load_safetensors(Butterfly(4, 4), tmp_path / "b.safetensors")
