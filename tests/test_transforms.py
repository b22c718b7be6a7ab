"""twiddle.transforms against scipy.fft / torch.fft / scipy.linalg / nn.Conv, float64 (rel. error <= 1e-10) and
float32 (<= 1e-5), at sizes that are and are not powers of two."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch
from torch import nn

from twiddle import Butterfly, transforms
from twiddle.permutations import FixedPermutation
from twiddle.transforms import Diagonal, Transform

SIZES = [1, 2, 3, 5, 8, 13, 64, 100, 1000, 1024, 4096]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def rel_error(y: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> float:
    y, ref = np.asarray(y, dtype=np.complex128), np.asarray(ref, dtype=np.complex128)
    scale = np.linalg.norm(ref)
    return float(np.linalg.norm(y - ref) / (scale if scale > 0 else 1.0))


def check_both_dtypes(build, x64: np.ndarray, reference: np.ndarray) -> None:
    for dtype in (torch.float64, torch.float32):
        module = build(dtype)
        x = torch.from_numpy(x64)
        x = x.to(torch.complex64 if dtype == torch.float32 else torch.complex128) if x.is_complex() else x.to(dtype)
        y = module(x).detach()
        err = rel_error(y.numpy(), reference)
        assert err <= TOL[dtype], f"{module.name} {dtype}: relative error {err:.2e}"


# ------------------------------------------------------------------------------------------- 1-D transforms


def _real_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3, n))


def _complex_batch(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, n)) + 1j * rng.standard_normal((3, n))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("norm", ["backward", "ortho", "forward"])
@pytest.mark.parametrize("inverse", [False, True])
def test_fft_matches_torch_fft(n, norm, inverse):
    x = _complex_batch(n)
    ref_fn = torch.fft.ifft if inverse else torch.fft.fft
    ref = ref_fn(torch.from_numpy(x), norm=norm).numpy()
    ctor = transforms.ifft if inverse else transforms.fft
    check_both_dtypes(lambda dtype: ctor(n, norm, dtype=dtype), x, ref)


@pytest.mark.parametrize("n", [5, 64])
def test_fft_of_real_input_is_promoted(n):
    x = torch.randn(2, n, dtype=torch.float64)
    y = transforms.fft(n, dtype=torch.float64)(x)
    assert y.dtype == torch.complex128
    assert rel_error(y, torch.fft.fft(x)) < 1e-12


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("norm", ["backward", "ortho"])
def test_hartley_matches_definition(n, norm):
    x = _real_batch(n)
    f = np.fft.fft(x, norm=norm)
    check_both_dtypes(lambda dtype: transforms.hartley(n, norm, dtype=dtype), x, f.real - f.imag)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["dct", "dst", "idct", "idst"])
@pytest.mark.parametrize("type", [1, 2, 3, 4])
def test_trig_transforms_match_scipy(n, kind, type):
    if type == 1 and kind in ("dct", "idct") and n < 2:
        pytest.skip("the type-1 DCT needs n >= 2 (as scipy)")
    x = _real_batch(n, seed=type)
    ref_fn = getattr(scipy.fft, kind)
    ctor = getattr(transforms, kind)
    for norm in (None, "ortho", "forward"):
        ref = ref_fn(x, type=type, norm=norm)
        check_both_dtypes(lambda dtype, norm=norm: ctor(n, type, norm, dtype=dtype), x, ref)


def test_dct_of_complex_input_transforms_real_and_imaginary_parts():
    x = _complex_batch(12)
    y = transforms.dct(12, 2, "ortho", dtype=torch.float64)(torch.from_numpy(x))
    assert y.is_complex()
    assert rel_error(y, scipy.fft.dct(x, type=2, norm="ortho")) < 1e-12


@pytest.mark.parametrize("n", [8, 13])
def test_ortho_transforms_are_orthogonal(n):
    for module in (
        transforms.dct(n, 2, "ortho", dtype=torch.float64),
        transforms.dst(n, 4, "ortho", dtype=torch.float64),
        transforms.hartley(n, "ortho", dtype=torch.float64),
    ):
        m = module.to_dense()
        assert torch.allclose(m @ m.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


# ------------------------------------------------------------------------------------------- 2-D DFT


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (8, 16), (5, 7), (13, 4), (3, 100)])
@pytest.mark.parametrize("norm", ["backward", "ortho", "forward"])
def test_fft2d_matches_torch(shape, norm):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *shape)) + 1j * rng.standard_normal((2, *shape))
    xt = torch.from_numpy(x)
    check_both_dtypes(lambda dtype: transforms.fft2d(shape, norm, dtype=dtype), x, torch.fft.fft2(xt, norm=norm))
    check_both_dtypes(lambda dtype: transforms.ifft2d(shape, norm, dtype=dtype), x, torch.fft.ifft2(xt, norm=norm))


# ------------------------------------------------------------------------------------------- structured matrices


@pytest.mark.parametrize("n", SIZES)
def test_circulant_matches_scipy(n):
    rng = np.random.default_rng(n)
    col = rng.standard_normal(n)
    x = _real_batch(n)
    check_both_dtypes(lambda dtype: transforms.circulant(col, dtype=dtype), x, x @ scipy.linalg.circulant(col).T)
    ccol = col + 1j * rng.standard_normal(n)
    xc = _complex_batch(n)
    check_both_dtypes(lambda dtype: transforms.circulant(ccol, dtype=dtype), xc, xc @ scipy.linalg.circulant(ccol).T)


@pytest.mark.parametrize(
    ("rows", "cols"),
    [(1, 1), (1, 5), (5, 1), (3, 3), (8, 8), (13, 64), (100, 7), (1000, 1000), (1024, 1024), (4096, 4096)],
)
def test_toeplitz_matches_scipy(rows, cols):
    rng = np.random.default_rng(rows * 7 + cols)
    col, row = rng.standard_normal(rows), rng.standard_normal(cols)
    x = _real_batch(cols)
    check_both_dtypes(
        lambda dtype: transforms.toeplitz(col, row, dtype=dtype), x, x @ scipy.linalg.toeplitz(col, row).T
    )


def test_toeplitz_without_row_is_hermitian_like_scipy():
    rng = np.random.default_rng(0)
    col = rng.standard_normal(9) + 1j * rng.standard_normal(9)
    dense = transforms.toeplitz(col, dtype=torch.float64).to_dense().numpy()
    np.testing.assert_allclose(dense, scipy.linalg.toeplitz(col), atol=1e-13)


CONV1D_CASES = [
    # (n, in_channels, out_channels, kernel, padding, dilation)
    (1, 1, 1, 1, "same", 1),
    (2, 1, 1, 2, "same", 1),
    (3, 2, 1, 3, 1, 1),
    (5, 1, 2, 4, 5, 1),
    (8, 1, 1, 3, "same", 1),
    (13, 2, 3, 4, "same", 1),
    (64, 4, 4, 7, "same", 1),
    (100, 3, 2, 5, 2, 2),
    (1000, 1, 1, 9, "same", 1),
    (1024, 2, 2, 3, "valid", 1),
    (4096, 1, 1, 5, "same", 3),
]


def _matches_nn_conv(spatial, cin, cout, kernel, **options):
    """conv1d_circular / conv2d_circular (by the length of ``spatial``) against ``nn.Conv1d`` / ``nn.Conv2d`` with
    circular padding and the same options (padding, dilation, stride, groups), float64 and float32."""
    conv_class, build = (nn.Conv1d, transforms.conv1d_circular) if len(spatial) == 1 else \
        (nn.Conv2d, transforms.conv2d_circular)
    conv = conv_class(cin, cout, kernel, padding_mode="circular", dtype=torch.float64, **options)
    x = torch.randn(2, cin, *spatial, dtype=torch.float64)
    with torch.no_grad():
        ref = conv(x).numpy()
    size = spatial[0] if len(spatial) == 1 else spatial
    check_both_dtypes(lambda dtype: build(conv.weight, size, conv.bias, dtype=dtype, **options), x.numpy(), ref)


@pytest.mark.parametrize(("n", "cin", "cout", "k", "padding", "dilation"), CONV1D_CASES)
def test_conv1d_circular_matches_nn_conv1d(n, cin, cout, k, padding, dilation):
    _matches_nn_conv((n,), cin, cout, k, padding=padding, dilation=dilation)


@pytest.mark.parametrize(
    ("shape", "cin", "cout", "kernel", "padding", "dilation"),
    [
        ((1, 1), 1, 1, (1, 1), "same", 1),
        ((8, 8), 1, 1, (3, 3), "same", 1),
        ((5, 7), 2, 3, (3, 2), "same", 1),
        ((6, 4), 2, 2, (3, 3), 1, 1),
        ((16, 9), 3, 2, (5, 3), (2, 0), (1, 2)),
        ((13, 32), 2, 4, (4, 4), "valid", 1),
    ],
)
def test_conv2d_circular_matches_nn_conv2d(shape, cin, cout, kernel, padding, dilation):
    _matches_nn_conv(shape, cin, cout, kernel, padding=padding, dilation=dilation)


def test_conv1d_accepts_unbatched_input_like_nn_conv1d():
    conv = nn.Conv1d(2, 3, 3, padding="same", padding_mode="circular", dtype=torch.float64)
    module = transforms.conv1d_circular(conv.weight, 10, conv.bias, dtype=torch.float64)
    x = torch.randn(2, 10, dtype=torch.float64)
    assert torch.allclose(module(x), conv(x), atol=1e-12)


@pytest.mark.parametrize(("n", "cin", "cout", "k", "padding", "dilation", "stride"), [
    (16, 1, 1, 3, 1, 1, 2),
    (13, 2, 3, 4, "valid", 1, 3),
    (100, 3, 2, 5, 2, 2, 4),
    (64, 2, 2, 3, 0, 1, 64),  # one output
    (9, 1, 2, 9, 4, 1, 2),
])
def test_strided_conv1d_circular_matches_nn_conv1d(n, cin, cout, k, padding, dilation, stride):
    _matches_nn_conv((n,), cin, cout, k, padding=padding, dilation=dilation, stride=stride)


@pytest.mark.parametrize(("shape", "kernel", "padding", "dilation", "stride"), [
    ((8, 8), (3, 3), 1, 1, 2),
    ((16, 9), (5, 3), (2, 0), (1, 2), (3, 2)),
    ((13, 32), (4, 4), "valid", 1, (1, 5)),
])
def test_strided_conv2d_circular_matches_nn_conv2d(shape, kernel, padding, dilation, stride):
    _matches_nn_conv(shape, 2, 3, kernel, padding=padding, dilation=dilation, stride=stride)


@pytest.mark.parametrize(("n", "cin", "cout", "groups", "padding", "stride"), [
    (16, 4, 6, 2, "same", 1),
    (13, 3, 3, 3, "same", 1),  # depthwise, a Bluestein-size input
    (32, 4, 8, 4, 2, 2),
    (10, 6, 2, 2, "valid", 1),
])
def test_grouped_conv1d_circular_matches_nn_conv1d(n, cin, cout, groups, padding, stride):
    _matches_nn_conv((n,), cin, cout, 3, padding=padding, stride=stride, groups=groups)


@pytest.mark.parametrize(("shape", "cin", "cout", "groups"), [((8, 8), 4, 4, 4), ((6, 9), 4, 6, 2)])
def test_grouped_conv2d_circular_matches_nn_conv2d(shape, cin, cout, groups):
    _matches_nn_conv(shape, cin, cout, (3, 3), padding="same", groups=groups)


def test_grouped_conv_errors_and_trainable_mixing():
    with pytest.raises(ValueError, match="groups must divide out_channels = 3"):
        transforms.conv1d_circular(torch.randn(3, 1, 3), 8, groups=2)
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        transforms.conv1d_circular(torch.randn(3, 1, 3), 8, groups=0)
    depthwise = transforms.conv1d_circular(torch.randn(4, 1, 5), 16, groups=4, trainable=True)
    x = torch.randn(3, 4, 16, requires_grad=True)
    depthwise(x).square().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in depthwise.parameters() if p.requires_grad)
    assert "groups=4" in repr(depthwise)


def test_strided_same_padding_is_refused_as_in_pytorch():
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        transforms.conv1d_circular(torch.randn(1, 1, 3), 8, stride=2)
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        transforms.conv2d_circular(torch.randn(1, 1, 3, 3), 8, padding=("same", "same"), stride=(1, 2))
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        transforms.conv1d_circular(torch.randn(1, 1, 3), 8, padding=1, stride=0)


# ------------------------------------------------------------------------------------------- other transforms


@pytest.mark.parametrize("n", [1, 2, 8, 64, 1024, 4096])
@pytest.mark.parametrize("normalized", [False, True])
def test_hadamard_matches_scipy(n, normalized):
    x = _real_batch(n)
    h = scipy.linalg.hadamard(n) / (math.sqrt(n) if normalized else 1.0)
    check_both_dtypes(lambda dtype: transforms.hadamard(n, normalized, dtype=dtype), x, x @ h.T)


def _haar_reference(n: int, levels: int) -> np.ndarray:
    """Rows of the orthonormal Haar analysis matrix, built level by level from the identity."""
    approx, details = np.eye(n), []
    for _ in range(levels):
        details.insert(0, (approx[0::2] - approx[1::2]) / math.sqrt(2))
        approx = (approx[0::2] + approx[1::2]) / math.sqrt(2)
    return np.vstack([approx, *details])


@pytest.mark.parametrize("n", [1, 2, 8, 64, 1024, 4096])
def test_haar_matches_level_by_level_construction(n):
    log_n = n.bit_length() - 1
    x = _real_batch(n)
    for levels in sorted({0, min(1, log_n), log_n}):
        check_both_dtypes(
            lambda dtype, levels=levels: transforms.haar(n, levels, dtype=dtype), x, x @ _haar_reference(n, levels).T
        )


def test_haar_is_orthogonal():
    m = transforms.haar(32, dtype=torch.float64).to_dense()
    assert torch.allclose(m @ m.T, torch.eye(32, dtype=torch.float64), atol=1e-13)


@pytest.mark.parametrize("n", SIZES)
def test_permutation_to_butterfly_is_exact(n):
    perm = torch.randperm(n)
    module = transforms.permutation_to_butterfly(perm, dtype=torch.float32)
    (butterfly,) = [m for m in module.modules() if isinstance(m, Butterfly)]
    assert butterfly.nblocks == 2
    x = torch.randn(3, n)
    assert torch.equal(module(x), x[:, perm])  # 0/1 twiddles: exact even in float32


def test_permutation_to_butterfly_handles_structured_permutations():
    from twiddle.permutations import bitreversal_permutation

    for perm in (torch.arange(64).flip(0), bitreversal_permutation(64), torch.roll(torch.arange(64), 5)):
        x = torch.randn(2, 64)
        assert torch.equal(transforms.permutation_to_butterfly(perm)(x), x[:, perm])


def test_fastfood_matches_its_factors_and_row_lengths():
    module = transforms.fastfood(100, 300, sigma=2.0, seed=3, dtype=torch.float64)
    v = module.to_dense()
    assert v.shape == (300, 100)
    # rebuild V = S H G Π H B / (σ√n) for the first block from its stored factors
    branch = module.steps[1].branches[0]
    signs, h1, perm, gauss, h2, scale = branch
    n = 128
    h = torch.from_numpy(scipy.linalg.hadamard(n)).double()
    p = perm.to_dense(torch.float64)
    dense = torch.diag(scale.weight) @ h @ torch.diag(gauss.weight) @ p @ h @ torch.diag(signs.weight)
    assert torch.allclose(v[:n], dense[:, :100], atol=1e-10)
    # each row of a block has length s_i / σ, where S = s / ‖G‖ / (σ√n) stores the χ_n draws s_i
    expected = scale.weight * gauss.weight.norm() * math.sqrt(n)
    assert torch.allclose(dense.norm(dim=1), expected, rtol=1e-12)
    # and the entries look like N(0, 1/σ²) draws: mean square 1/4 for σ = 2
    assert abs(v.pow(2).mean().item() * 4.0 - 1.0) < 0.1
    assert torch.equal(transforms.fastfood(100, 300, sigma=2.0, seed=3, dtype=torch.float64).to_dense(), v)
    assert not torch.equal(transforms.fastfood(100, 300, sigma=2.0, seed=4, dtype=torch.float64).to_dense(), v)


def test_acdc_matches_dense_product():
    rng = np.random.default_rng(0)
    n, layers = 10, 3
    a, d = rng.standard_normal((layers, n)), rng.standard_normal((layers, n))
    c = scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)
    ref = np.eye(n)
    for k in range(layers):
        ref = c.T @ np.diag(d[k]) @ c @ np.diag(a[k]) @ ref
    module = transforms.acdc(a, d, dtype=torch.float64)
    np.testing.assert_allclose(module.to_dense().numpy(), ref, atol=1e-12)
    one = transforms.acdc(a[0], d[0], dtype=torch.float64).to_dense().numpy()
    np.testing.assert_allclose(one, c.T @ np.diag(d[0]) @ c @ np.diag(a[0]), atol=1e-12)


def test_acdc_trainable_diagonals_only():
    module = transforms.acdc(np.ones(8), np.ones(8), trainable="diagonals")
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert len(trainable) == 2 and all(p.shape == (8,) for p in trainable)
    everything = transforms.acdc(np.ones(8), np.ones(8), trainable=True)
    assert all(p.requires_grad for p in everything.parameters())


# ------------------------------------------------------------------------------------------- structure & training


def _all_constructors(n: int) -> dict[str, Transform]:
    rng = np.random.default_rng(0)
    return {
        "fft": transforms.fft(n),
        "ifft": transforms.ifft(n),
        "hartley": transforms.hartley(n),
        "dct": transforms.dct(n),
        "dst": transforms.dst(n, 4),
        "circulant": transforms.circulant(rng.standard_normal(n)),
        "toeplitz": transforms.toeplitz(rng.standard_normal(n), rng.standard_normal(n)),
        "conv1d": transforms.conv1d_circular(torch.randn(2, 2, 3), n),
        "permutation": transforms.permutation_to_butterfly(torch.randperm(n)),
    }


def test_modules_are_made_of_butterflies_permutations_and_diagonals():
    from twiddle.transforms import _modules

    allowed = (
        Butterfly,
        FixedPermutation,
        Diagonal,
        _modules._ChannelMix,
        _modules._ZeroPad,
        _modules._Take,
        _modules._RealPart,
        _modules._AlongDim,
        _modules._AddBias,
        _modules._Concat,
        Transform,
        nn.Sequential,
        nn.ModuleList,
        nn.Identity,
    )
    for name, module in _all_constructors(100).items():
        for sub in module.modules():
            assert isinstance(sub, allowed), f"{name} contains {type(sub).__name__}"


@pytest.mark.parametrize(
    "kind", ["fft", "ifft", "hartley", "dct", "dst", "circulant", "toeplitz", "conv1d", "permutation"]
)
def test_stored_numbers_grow_like_n_log_n(kind):
    counts = {n: _all_constructors(n)[kind].stored_numbers() for n in (256, 4096)}
    ratio = counts[4096] / counts[256]
    n_log_n = (4096 * 12) / (256 * 8)  # 24
    assert ratio < 1.25 * n_log_n, f"{kind}: stored numbers grew {ratio:.1f}x for 16x n (n log n: {n_log_n})"
    assert counts[4096] < 4096**2 / 10


@pytest.mark.parametrize("kind", ["fft", "dct", "circulant", "conv1d", "hadamard"])
def test_gradients_flow_when_trainable(kind):
    n = 16
    build = {
        "fft": lambda t: transforms.fft(n, trainable=t),
        "dct": lambda t: transforms.dct(n, trainable=t),
        "circulant": lambda t: transforms.circulant(np.arange(n, dtype=float), trainable=t),
        "conv1d": lambda t: transforms.conv1d_circular(torch.randn(2, 2, 3), n, torch.zeros(2), trainable=t),
        "hadamard": lambda t: transforms.hadamard(n, trainable=t),
    }[kind]
    fixed = build(False)
    assert all(not p.requires_grad for p in fixed.parameters())
    module = build(True)
    params = list(module.parameters())
    assert params and all(p.requires_grad for p in params)
    x = torch.randn(4, *module.in_shape)
    y = module(x)
    (y.abs() ** 2 if y.is_complex() else y**2).sum().backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # the input gradient flows through a fixed transform too
    x = torch.randn(4, *fixed.in_shape, requires_grad=True)
    out = fixed(x)
    (out.abs() ** 2 if out.is_complex() else out**2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_state_dict_round_trip():
    module = transforms.dct(100, trainable=True)
    copy = transforms.dct(100)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01)
    copy.load_state_dict(module.state_dict())
    x = torch.randn(2, 100)
    assert torch.equal(copy(x), module(x))


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: transforms.fft(0), "n must be a positive integer"),
        (lambda: transforms.fft(-3), "n must be a positive integer"),
        (lambda: transforms.fft(8.0), "n must be a positive integer"),
        (lambda: transforms.fft(8, "sideways"), "norm must be one of"),
        (lambda: transforms.fft(8, dtype=torch.int32), "dtype must be"),
        (lambda: transforms.dct(8, type=0), "type must be one of"),
        (lambda: transforms.dst(8, type=5), "type must be one of"),
        (lambda: transforms.dct(8, norm="backwards"), "norm must be one of"),
        (lambda: transforms.fft2d((4,)), "shape must be"),
        (lambda: transforms.fft2d((4, 0)), r"shape\[1\] must be a positive integer"),
        (lambda: transforms.hadamard(12), "power of two"),
        (lambda: transforms.haar(12), "power of two"),
        (lambda: transforms.haar(8, levels=4), "levels must be"),
        (lambda: transforms.circulant([]), "col must be a non-empty 1-D vector"),
        (lambda: transforms.circulant(np.ones((2, 2))), "col must be a non-empty 1-D vector"),
        (lambda: transforms.circulant([1.0, float("nan")]), "col contains NaN"),
        (lambda: transforms.toeplitz([1.0, 2.0], np.ones((2, 2))), "row must be"),
        (lambda: transforms.conv1d_circular(torch.ones(2, 3), 8), "weight must have shape"),
        (lambda: transforms.conv1d_circular(torch.ones(1, 1, 9), 4, padding=0), "does not fit"),
        (lambda: transforms.conv1d_circular(torch.ones(1, 1, 3), 4, padding=5), "exceeds the input size"),
        (lambda: transforms.conv1d_circular(torch.ones(1, 1, 3), 4, padding=-1), "padding must be"),
        (lambda: transforms.conv1d_circular(torch.ones(1, 1, 12), 4), "cannot wrap more than once"),
        (lambda: transforms.conv1d_circular(torch.ones(2, 1, 3), 8, torch.ones(3)), "bias must have shape"),
        (lambda: transforms.conv1d_circular(torch.ones(1, 1, 3), 0), "n must be a positive integer"),
        (lambda: transforms.conv1d_circular(torch.ones(1, 1, 3), 8, dilation=0), "dilation must be"),
        (lambda: transforms.conv2d_circular(torch.ones(1, 1, 3), (8, 8)), "weight must have shape"),
        (lambda: transforms.conv2d_circular(torch.ones(1, 1, 9, 3), (4, 8), padding=0), r"does not fit.*height"),
        (lambda: transforms.fastfood(0), "in_features must be a positive integer"),
        (lambda: transforms.fastfood(8, sigma=0.0), "sigma must be"),
        (lambda: transforms.fastfood(8, seed=1.5), "seed must be an int"),
        (lambda: transforms.acdc(np.ones(4), np.ones(5)), "same shape"),
        (lambda: transforms.acdc(np.ones(4), np.ones(4), trainable="twiddles"), "trainable must be"),
        (lambda: transforms.permutation_to_butterfly([0, 0, 1]), "perm"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_wrong_input_shapes_are_named():
    with pytest.raises(ValueError, match="fft expected input whose last dimension is 8"):
        transforms.fft(8)(torch.randn(3, 7))
    conv = transforms.conv1d_circular(torch.ones(2, 3, 3), 8)
    with pytest.raises(ValueError, match=r"last 2 dimensions are \(3, 8\)"):
        conv(torch.randn(4, 2, 8))
    with pytest.raises(TypeError, match="floating-point or complex"):
        transforms.dct(8)(torch.arange(8))


def test_transform_compiles_without_graph_breaks():
    module = transforms.dct(100, 2, "ortho")
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 100)
    assert torch.allclose(compiled(x), module(x), atol=1e-6)


def test_a_double_input_to_a_single_precision_transform_warns_once():
    """A transform built in float32 holds float32-accurate twiddles: a float64 input gets ~1e-7 accuracy, not what
    torch.fft / scipy.fft give. That was silent; now one warning per module says so and how to fix it."""
    import warnings

    x = torch.randn(3, 48, dtype=torch.float64)
    single = transforms.fft(48)
    with pytest.warns(UserWarning, match=r"fft holds single-precision values .* dtype=torch.float64"):
        y = single(x)
    assert float((y - torch.fft.fft(x)).abs().max()) > 1e-9  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single(x)  # once per module
        single(x.float())  # single-precision input: nothing to say
        double = transforms.dct(48, dtype=torch.float64)
        torch.testing.assert_close(double(x), torch.as_tensor(scipy.fft.dct(x.numpy(), type=2)), rtol=1e-12,
                                   atol=1e-12)
    converted = transforms.fft(48).double()  # complex128 now, but the values are still float32-accurate
    assert all(t.dtype != torch.complex64 for t in (*converted.parameters(), *converted.buffers()))
    with pytest.warns(UserWarning, match="single-precision"):
        converted(x)
    real_only = transforms.hadamard(64).double()  # real values: converted exactly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        real_only(torch.randn(2, 64, dtype=torch.float64))


@pytest.mark.parametrize(
    "make",
    [lambda: transforms.dct(24, norm="ortho"), lambda: transforms.fft(16),
     lambda: transforms.circulant(torch.linspace(-1.0, 2.0, 8)), lambda: transforms.hartley(32)],
    ids=["dct", "fft", "circulant", "hartley"],
)
def test_dtype_conversions_keep_the_complex_twiddles_complex(make):
    """nn.Module.to(dtype) casts complex tensors to a real dtype by discarding their imaginary parts: a transform
    (complex twiddles inside) computed garbage after .to(torch.float64) or .to(torch.float16). Conversions now keep
    them complex; half-precision modules return half-precision real results, as a converted nn.Linear does."""
    import warnings

    module = make()
    x = torch.randn(3, *module.in_shape, dtype=torch.complex64 if module.name == "fft" else torch.float32)
    want = module(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the single-precision notice for a float64 input
        for convert in (lambda m: m.to(torch.float64), lambda m: m.double()):
            converted = convert(make())
            assert not any(t.dtype in (torch.float32, torch.complex64)
                           for t in (*converted.parameters(), *converted.buffers()))
            got = converted(x.to(torch.complex128 if x.is_complex() else torch.float64))
            assert got.dtype == (torch.complex128 if want.is_complex() else torch.float64)
            torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-5, atol=1e-5)
    if x.is_complex():
        return
    for convert, low in ((lambda m: m.to(torch.float16), torch.float16), (lambda m: m.half(), torch.float16),
                         (lambda m: m.to(torch.bfloat16), torch.bfloat16)):
        converted = convert(make())
        got = converted(x.to(low))
        assert got.dtype == low
        scale = float(want.abs().max())
        torch.testing.assert_close(got.float(), want, rtol=0, atol=scale * (2e-2 if low == torch.bfloat16 else 4e-3))
        back = converted.float()  # and back to single precision: float32 results again (of the rounded values)
        assert back(x).dtype == torch.float32
        torch.testing.assert_close(back(x), want, rtol=0, atol=scale * (2e-2 if low == torch.bfloat16 else 4e-3))
    model = torch.nn.Sequential(make(), torch.nn.Linear(module.out_shape[-1], 4)).half()
    assert model(x.half()).dtype == torch.float16  # was: "mat1 and mat2 must have the same dtype"


def test_a_channel_mix_pickled_before_groups_existed_loads_as_one_group():
    import io
    import pickle

    from twiddle.transforms._modules import _ChannelMix

    mix = _ChannelMix(torch.randn(3, 2, 8, dtype=torch.complex128))
    x = torch.randn(4, 2, 8, dtype=torch.complex128)
    want = mix(x)
    del mix.__dict__["groups"]  # as a module saved by an earlier version
    buffer = io.BytesIO()
    pickle.dump(mix, buffer)
    buffer.seek(0)
    loaded = pickle.load(buffer)
    assert loaded.groups == 1 and torch.equal(loaded(x), want)
    assert "groups" not in repr(loaded)


def test_a_transform_pickled_before_its_later_attributes_existed_loads_with_their_defaults():
    """Attributes added to Transform over time (precision bookkeeping, the constructor's recipe) are filled by
    ``__setstate__`` for modules saved without them: the module runs, warns about precision as a new one does, and
    ``reset_parameters`` says plainly that it has no recipe."""
    import io
    import pickle

    from twiddle.transforms._modules import Transform

    module = transforms.dct(16)
    x = torch.randn(3, 16)
    want = module(x)
    for name in Transform._STATE_DEFAULTS:
        del module.__dict__[name]  # as a module saved by an earlier version
    buffer = io.BytesIO()
    pickle.dump(module, buffer)
    buffer.seek(0)
    loaded = pickle.load(buffer)
    assert torch.equal(loaded(x), want)
    assert loaded._recipe is None and loaded._low_precision is None
    with pytest.warns(UserWarning, match="single-precision"):
        loaded(x.double())
    with pytest.raises(RuntimeError, match="no recipe"):
        loaded.reset_parameters()
