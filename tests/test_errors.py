"""Every public entry point rejects bad input with a message naming the argument and what was expected: one row
per message (shapes, sizes, dtypes, devices, non-finite values, unknown names). Module forwards propagate NaN/Inf
like ``nn.Linear``; data given to fitting and analysis functions is checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import twiddle
from twiddle import (
    Butterfly,
    ButterflyAutoencoder,
    TruncatedButterfly,
    TruncatedButterflyLinear,
    autoencoder,
    fjlt,
    ops,
    permutations,
    replace_linear,
    sketch,
    transforms,
)

NAN = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])

CASES = [
    # (id, call, exception type, message pattern)
    ("butterfly-size", lambda: Butterfly(0, 4), ValueError, "in_features must be a positive integer, got 0"),
    ("butterfly-size-type", lambda: Butterfly("a", 4), ValueError, "in_features must be a positive integer"),
    ("butterfly-nblocks", lambda: Butterfly(4, 4, nblocks=0), ValueError, "nblocks must be a positive integer"),
    ("butterfly-init", lambda: Butterfly(4, 4, init="xavier"), ValueError, "init must be one of"),
    ("butterfly-init-shape", lambda: Butterfly(4, 4, init=torch.zeros(3)), ValueError, "init tensor must have shape"),
    ("butterfly-dtype", lambda: Butterfly(4, 4, dtype=torch.int32), ValueError, "floating-point or complex dtype"),
    ("butterfly-width", lambda: Butterfly(4, 4)(torch.randn(2, 5)), ValueError, "last dimension in_features=4"),
    ("butterfly-scalar", lambda: Butterfly(4, 4)(torch.tensor(1.0)), ValueError, r"got shape \(\)"),
    ("butterfly-int-input", lambda: Butterfly(4, 4)(torch.ones(2, 4, dtype=torch.int64)), TypeError,
     "floating-point or complex input"),
    ("butterfly-list-input", lambda: Butterfly(4, 4)([1.0, 2.0, 3.0, 4.0]), TypeError, "torch.Tensor input"),
    ("butterfly-complex-input", lambda: Butterfly(4, 4)(torch.randn(2, 4, dtype=torch.complex64)), TypeError,
     "complex"),
    ("butterfly-device", lambda: Butterfly(4, 4)(torch.randn(2, 4, device="meta")), ValueError,
     "input is on meta but the Butterfly layer is on cpu"),
    ("multiply-twiddle-shape", lambda: ops.butterfly_multiply(torch.randn(3, 3), torch.randn(2, 4)), ValueError,
     r"twiddle must have shape \(nstacks, nblocks, log_n, n // 2, 2, 2\)"),
    ("multiply-width", lambda: ops.butterfly_multiply(torch.randn(1, 1, 2, 2, 2, 2), torch.randn(2, 5)),
     ValueError, "x has 5 features"),
    ("multiply-bias", lambda: ops.butterfly_multiply(torch.randn(1, 1, 2, 2, 2, 2), torch.randn(2, 4),
                                                     bias=torch.randn(3)), ValueError, "bias must be a tensor"),
    ("fft-n", lambda: transforms.fft(0), ValueError, "n must be a positive integer"),
    ("fft-norm", lambda: transforms.fft(8, norm="bad"), ValueError, "norm must be one of"),
    ("fft-input", lambda: transforms.fft(8)(torch.randn(2, 7)), ValueError, "last dimension is 8"),
    ("dct-type", lambda: transforms.dct(8, type=5), ValueError, r"type must be one of \(1, 2, 3, 4\)"),
    ("dct1-size", lambda: transforms.dct(1, type=1), ValueError, "n must be at least 2 for the type-1 DCT"),
    ("hadamard-n", lambda: transforms.hadamard(6), ValueError, "power of two"),
    ("circulant-empty", lambda: transforms.circulant([]), ValueError, "non-empty 1-D vector"),
    ("circulant-nan", lambda: transforms.circulant([1.0, float("nan")]), ValueError, "NaN or Inf"),
    ("conv1d-weight", lambda: transforms.conv1d_circular(torch.randn(3, 3), 8), ValueError,
     r"weight must have shape \(out_channels, in_channels / groups, kernel_size\)"),
    ("conv2d-shape", lambda: transforms.conv2d_circular(torch.randn(2, 3, 3, 3), (8,)), ValueError,
     "shape must be one value or a pair"),
    ("acdc-shapes", lambda: transforms.acdc(torch.randn(2, 4), torch.randn(2, 5)), ValueError,
     "a and d must have the same shape"),
    ("permutation-repeat", lambda: transforms.permutation_to_butterfly([0, 0, 1, 2]), ValueError,
     "exactly once; some indices repeat"),
    ("factorize-nan", lambda: twiddle.factorize(NAN), ValueError, "NaN or Inf"),
    ("factorize-2d", lambda: twiddle.factorize(torch.randn(2, 3, 4)), ValueError, "must be 2-D"),
    ("factorize-empty", lambda: twiddle.factorize(torch.randn(0, 0)), ValueError, "empty"),
    ("factorize-method", lambda: twiddle.factorize(torch.eye(4), method="magic"), ValueError, "method must be one of"),
    ("factorize-permutation", lambda: twiddle.factorize(torch.eye(4), permutation="nope"), ValueError,
     "permutation must be 'auto'"),
    ("factorize-size", lambda: twiddle.factorize(torch.eye(6), size=4), ValueError,
     r"size must be a power of two >= 8 \(the matrix is 6 × 6\), got 4"),
    ("factorized-input", lambda: twiddle.factorize(torch.eye(6)).module(torch.randn(2, 8)), ValueError,
     "PermutedButterfly expected input with last dimension in_features=6"),
    ("factorize-file", lambda: twiddle.factorize("/nonexistent/m.npy"), ValueError, "does not exist"),
    ("factorize-type", lambda: twiddle.factorize({"rows": 2}), TypeError,
     "torch.Tensor, a numpy array, a scipy.sparse matrix, a sequence of rows or a path"),
    ("factorize-file-kind", lambda: twiddle.factorize("m.json"), ValueError,
     r"matrix file must be one of \.npy, \.npz, \.mtx, \.csv, \.txt"),
    ("truncated-ell", lambda: TruncatedButterfly(8, 9), ValueError, "must be at most n = 8"),
    ("truncated-input", lambda: TruncatedButterfly(8, 4)(torch.randn(2, 7)), ValueError,
     "TruncatedButterfly expected input with last dimension in_features=8"),
    ("truncated-linear-k", lambda: TruncatedButterflyLinear(8, 4, k_in=0), ValueError, "k_in must be a positive"),
    ("fjlt-ell", lambda: fjlt(8, 0), ValueError, "out_features must be a positive integer"),
    ("replace-kind", lambda: replace_linear(nn.Linear(4, 4), "magic"), ValueError, "kind must be one of"),
    ("replace-model", lambda: replace_linear("x"), TypeError, "model must be an nn.Module"),
    ("autoencoder-k", lambda: ButterflyAutoencoder(8, 2, 4), ValueError, "k must be at most ell=2"),
    ("pca-k", lambda: autoencoder.pca_loss(torch.randn(4, 4), 0), ValueError, "k must be a positive integer"),
    ("pca-nan", lambda: autoencoder.pca_loss(torch.full((4, 4), float("nan")), 1), ValueError, "X contains NaN"),
    ("pca-shape", lambda: autoencoder.pca_loss(torch.randn(4), 1), ValueError, "2-D tensor"),
    ("sketch-kind", lambda: sketch.make_sketch("x", 8, 2), ValueError, "kind must be one of"),
    ("sketch-rows", lambda: sketch.sketch_error(sketch.make_sketch("gaussian", 8, 2), torch.randn(7, 3), 1),
     ValueError, "must have n = 8 rows"),
    ("sketch-nan", lambda: sketch.best_rank_k_error(torch.full((4, 3), float("inf")), 1), ValueError,
     "X contains NaN or Inf"),
    ("bitrev-n", lambda: permutations.bitreversal_permutation(6), ValueError, "positive power of two"),
    ("named-permutation", lambda: permutations.named_permutation("x", 8), ValueError, "unknown permutation 'x'"),
    ("fixed-permutation", lambda: permutations.FixedPermutation([0, 2]), ValueError, "exactly once"),
    ("fixed-permutation-input", lambda: permutations.FixedPermutation([1, 0])(torch.randn(3, 3)), ValueError,
     "last dimension 2"),
]


@pytest.mark.parametrize("call,error,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_message(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_layers_propagate_non_finite_values_like_linear():
    x = torch.full((1, 4), float("nan"))
    assert torch.isnan(Butterfly(4, 4)(x)).all() and torch.isnan(nn.Linear(4, 4)(x)).all()


def test_numpy_sizes_are_accepted():
    assert Butterfly(np.int64(8), np.int32(4)).out_features == 4
