import torch

from twiddle.benchmark import MonarchLinear


def test_monarch_is_a_linear_map_with_block_structure():
    torch.manual_seed(0)
    layer = MonarchLinear(16).double()
    x = torch.randn(5, 16, dtype=torch.float64)
    W = layer(torch.eye(16, dtype=torch.float64)).T  # columns = images of the basis vectors
    torch.testing.assert_close(layer(x), x @ W.T)
    # each output depends on every input (two mixing stages), with 2 * n * sqrt(n) parameters
    assert (W.abs() > 0).all()
    assert sum(p.numel() for p in layer.parameters()) == 2 * 16 * 4
