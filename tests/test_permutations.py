import pytest
import torch

from twiddle.permutations import (
    FixedPermutation,
    bitreversal_permutation,
    check_permutation,
    invert_permutation,
)


def test_bitreversal_known_values():
    assert bitreversal_permutation(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    assert bitreversal_permutation(1).tolist() == [0]
    assert bitreversal_permutation(2).tolist() == [0, 1]


@pytest.mark.parametrize("n", [1, 2, 4, 16, 1024])
def test_bitreversal_is_involution(n):
    p = bitreversal_permutation(n)
    assert torch.equal(p[p], torch.arange(n))
    for i in range(0, n, max(1, n // 16)):
        bits = format(i, f"0{max(1, n.bit_length() - 1)}b") if n > 1 else "0"
        assert p[i].item() == int(bits[::-1], 2)


@pytest.mark.parametrize("n", [0, 3, 12, -4])
def test_bitreversal_rejects_bad_n(n):
    with pytest.raises(ValueError, match="power of two"):
        bitreversal_permutation(n)


def test_fixed_permutation_forward_inverse_dense():
    perm = torch.randperm(10)
    module = FixedPermutation(perm)
    x = torch.randn(3, 4, 10, dtype=torch.float64)
    y = module(x)
    torch.testing.assert_close(y, x[..., perm])
    torch.testing.assert_close(module.inverse()(y), x)
    torch.testing.assert_close(y, x @ module.to_dense(torch.float64).T)
    assert torch.equal(invert_permutation(perm)[perm], torch.arange(10))
    other = FixedPermutation(torch.arange(10))
    other.load_state_dict(module.state_dict())
    assert torch.equal(other.perm, perm)


@pytest.mark.parametrize(
    "perm,match",
    [([0, 0, 1], "repeat"), ([0, 3, 1], "outside"), ([[0, 1]], "1-D"), ([], "1-D"), ([0.0, 1.0], "integers")],
)
def test_bad_permutations(perm, match):
    with pytest.raises(ValueError, match=match):
        check_permutation(perm)


def test_wrong_input_size():
    with pytest.raises(ValueError, match="last dimension 4"):
        FixedPermutation([1, 0, 3, 2])(torch.randn(5))
