"""ONNX export of models with butterfly layers, checked with onnxruntime against PyTorch (both exporters, a batch
size other than the traced one), and the clear refusal of complex modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from twiddle import Butterfly, TruncatedButterflyLinear, transforms

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mlp": nn.Sequential(Butterfly(64, 100, nblocks=2), nn.ReLU(), Butterfly(100, 10)),
        "truncated": TruncatedButterflyLinear(64, 32),
        "hadamard": transforms.hadamard(64),
    }


def _export(model: nn.Module, x: torch.Tensor, path, dynamo: bool) -> None:
    if dynamo:
        pytest.importorskip("onnxscript")
        torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["mlp", "truncated", "hadamard"])
def test_onnx_export_matches_pytorch(name, dynamo, tmp_path):
    model = _models()[name].eval()
    path = tmp_path / f"{name}.onnx"
    _export(model, torch.randn(4, 64), path, dynamo)
    session = ort.InferenceSession(str(path))
    x = torch.randn(7, 64)  # another batch size than the traced one
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_complex_modules_are_refused_with_a_clear_message(tmp_path):
    model = Butterfly(16, 16, complex=True)
    with pytest.raises(Exception, match="ONNX has no complex tensors"):
        torch.onnx.export(model, (torch.randn(2, 16, dtype=torch.complex64),), str(tmp_path / "c.onnx"), dynamo=False)


def test_kernel_choice_is_the_same_after_an_export(tmp_path):
    from twiddle.ops import kernel_for

    t, x = torch.randn(1, 1, 3, 4, 2, 2), torch.randn(2, 8)
    before = kernel_for(t, x)
    _export(Butterfly(8, 8).eval(), torch.randn(2, 8), tmp_path / "b.onnx", dynamo=False)
    assert kernel_for(t, x) == before
