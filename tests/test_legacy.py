"""Loading checkpoints of the 2019 reference code: every layout against an independent dense transcription of how
that code applied its twiddles (factor matrices built entry by entry), and the error messages."""

from __future__ import annotations

import math

import pytest
import torch

from twiddle import Butterfly
from twiddle.legacy import ChunkMean, load_2019_butterfly, twiddle_from_2019


def _factor_matrix(blocks: torch.Tensor, n: int, stride: int) -> torch.Tensor:
    """Dense n×n factor of stride ``stride`` whose i-th 2×2 block is ``blocks[i]`` (complex or real)."""
    f = torch.zeros(n, n, dtype=blocks.dtype)
    for i in range(n // 2):
        p = 2 * (i - i % stride) + i % stride
        for r in range(2):
            for c in range(2):
                f[p + r * stride, p + c * stride] = blocks[i, r, c]
    return f


def _as_complex(t: torch.Tensor, complex_: bool) -> torch.Tensor:
    return torch.view_as_complex(t.contiguous()) if complex_ else t


def _dense_2019(twiddle: torch.Tensor, n: int, *, tied: bool, complex_: bool, increasing: bool,
                nblocks: int) -> list[torch.Tensor]:
    """The 2019 layer's butterflies as dense matrices, one per stack."""
    t = _as_complex(twiddle, complex_)
    m = n.bit_length() - 1
    mats = []
    for k in range(t.shape[0]):
        def factor(log_stride: int, index: int, k: int = k) -> torch.Tensor:
            s = 1 << log_stride
            if tied:
                blocks = torch.stack([t[k, s - 1 + (i % s)] for i in range(n // 2)])
            else:
                blocks = t[k, index]
            return _factor_matrix(blocks, n, s)

        total = torch.eye(n, dtype=t.dtype)
        if nblocks == 0:
            order = range(m) if increasing else reversed(range(m))
            for ls in order:
                total = factor(ls, ls) @ total
        else:
            for c in range(nblocks):
                for ls in reversed(range(m)):  # decreasing stride; factor f = m-1-ls is stored at chunk row f
                    total = factor(ls, c * 2 * m + (m - 1 - ls)) @ total
                for ls in range(m):  # increasing stride; stored at row m + ls
                    total = factor(ls, c * 2 * m + m + ls) @ total
        mats.append(total)
    return mats


def _forward_2019(state, x, *, in_size, out_size, tied, complex_, increasing, nblocks):
    twiddle = state["twiddle"]
    n = 1 << math.ceil(math.log2(in_size))
    mats = _dense_2019(twiddle, n, tied=tied, complex_=complex_, increasing=increasing, nblocks=nblocks)
    xp = torch.nn.functional.pad(x, (0, n - in_size)).to(mats[0].dtype)
    y = torch.cat([xp @ mat.T for mat in mats], -1)
    out_ext = 1 << math.ceil(math.log2(out_size))
    if n // out_ext >= 2:
        y = y.reshape(*y.shape[:-1], n // out_ext, out_ext).mean(-2)
    y = y[..., :out_size]
    if "bias" in state:
        y = y + _as_complex(state["bias"], complex_)
    return y


def _random_state(in_size, out_size, *, tied, complex_, nblocks, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 1 << math.ceil(math.log2(in_size))
    m = n.bit_length() - 1
    nstack = math.ceil(out_size / n)
    if tied:
        core = (nstack, n - 1)
    else:
        core = (nstack, m, n // 2) if nblocks == 0 else (nstack, nblocks * 2 * m, n // 2)
    shape = core + ((2, 2, 2) if complex_ else (2, 2))
    state = {"twiddle": torch.randn(shape, dtype=torch.float64, generator=g) / math.sqrt(2)}
    if bias:
        state["bias"] = torch.randn((out_size, 2) if complex_ else (out_size,), dtype=torch.float64, generator=g)
    return state


LAYOUTS = [
    # (in_size, out_size, tied, complex, increasing, nblocks)
    (16, 16, False, False, True, 0),
    (16, 16, False, False, False, 0),
    (13, 40, False, False, True, 0),
    (16, 16, True, False, True, 0),
    (16, 16, True, False, False, 0),
    (8, 20, True, True, True, 0),
    (16, 16, False, True, False, 0),
    (16, 16, False, False, True, 2),
    (8, 8, False, False, True, 1),
    (32, 5, False, False, True, 0),
    (32, 7, True, True, False, 0),
    (2, 2, False, False, True, 0),
]


@pytest.mark.parametrize("in_size,out_size,tied,complex_,increasing,nblocks", LAYOUTS)
def test_loaded_layer_reproduces_the_2019_layer(in_size, out_size, tied, complex_, increasing, nblocks):
    state = _random_state(in_size, out_size, tied=tied, complex_=complex_, nblocks=nblocks)
    module = load_2019_butterfly(state, in_size, increasing_stride=increasing)
    x = torch.randn(5, in_size, dtype=torch.complex128 if complex_ else torch.float64)
    want = _forward_2019(state, x, in_size=in_size, out_size=out_size, tied=tied, complex_=complex_,
                         increasing=increasing, nblocks=nblocks)
    got = module(x)
    assert got.shape == (5, out_size)
    assert torch.allclose(got, want, atol=1e-12, rtol=1e-12)


def test_averaging_layer_is_a_butterfly_then_chunk_mean():
    state = _random_state(32, 5, tied=False, complex_=False, nblocks=0)
    module = load_2019_butterfly(state, 32)
    assert isinstance(module, torch.nn.Sequential)
    assert isinstance(module[0], Butterfly) and isinstance(module[1], ChunkMean)


def test_loading_from_a_file_with_prefix_and_without_bias(tmp_path):
    state = _random_state(16, 16, tied=False, complex_=False, nblocks=0, bias=False)
    path = tmp_path / "old.pt"
    torch.save({"layer.twiddle": state["twiddle"], "head.weight": torch.zeros(3)}, path)
    module = load_2019_butterfly(path, 16, 16, prefix="layer.", dtype=torch.float32)
    assert module.bias is None and module.twiddle.dtype == torch.float32
    x = torch.randn(3, 16, dtype=torch.float64)
    want = _forward_2019(state, x, in_size=16, out_size=16, tied=False, complex_=False, increasing=True, nblocks=0)
    assert torch.allclose(module(x.float()).double(), want, atol=1e-5)


def test_conversion_shapes():
    t = torch.randn(2, 4, 8, 2, 2)  # untied, n = 16
    ours, inc = twiddle_from_2019(t, increasing_stride=False)
    assert ours.shape == (2, 1, 4, 8, 2, 2) and inc is False
    assert torch.equal(ours[:, 0, 0], t[:, 3])  # first applied = largest stride
    tied = torch.randn(1, 15, 2, 2)
    assert twiddle_from_2019(tied)[0].shape == (1, 1, 4, 8, 2, 2)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: twiddle_from_2019(torch.randn(1, 3, 5, 2, 2)), "expected one of"),
        (lambda: twiddle_from_2019(torch.randn(1, 4, 8, 3, 2)), "expected one of"),
        (lambda: twiddle_from_2019(torch.ones(1, 15, 2, 2, dtype=torch.int64)), "real floating"),
        (lambda: twiddle_from_2019([1, 2]), "must be a tensor"),
        (lambda: load_2019_butterfly({"w": torch.zeros(1)}, 4, 4), "no 'twiddle'"),
        (lambda: load_2019_butterfly(_random_state(16, 16, tied=False, complex_=False, nblocks=0), 40), "pads to 64"),
        (lambda: load_2019_butterfly(_random_state(16, 16, tied=False, complex_=False, nblocks=0, bias=False), 16),
         "pass out_size"),
        (lambda: load_2019_butterfly(_random_state(16, 16, tied=False, complex_=False, nblocks=0), 16, 12),
         "bias has 16 entries"),
        (lambda: load_2019_butterfly(_random_state(16, 40, tied=False, complex_=False, nblocks=0, bias=False), 16, 16),
         "stacks"),
        (lambda: load_2019_butterfly(42, 16), "state must be"),
        (lambda: load_2019_butterfly("/nonexistent/old.pt", 16), "no checkpoint"),
        (lambda: load_2019_butterfly(_random_state(16, 16, tied=False, complex_=False, nblocks=0), 0), "in_size"),
    ],
)
def test_errors_name_the_problem(call, match):
    with pytest.raises((ValueError, TypeError, KeyError, FileNotFoundError), match=match):
        call()
