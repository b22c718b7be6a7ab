"""Export of models with butterfly layers: ONNX checked with onnxruntime against PyTorch (both exporters, a batch
size other than the traced one) and the clear refusal of complex modules; torch.export (saved and loaded, dynamic
leading dimensions, gradients), AOTInductor (slow), torch.jit.trace (saved and loaded), and torch.jit.script's clear
refusal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from twiddle import Butterfly, TruncatedButterflyLinear, transforms
from twiddle.permutations import FixedPermutation


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mlp": nn.Sequential(Butterfly(64, 100, nblocks=2), nn.ReLU(), Butterfly(100, 10)),
        "truncated": TruncatedButterflyLinear(64, 32),
        "hadamard": transforms.hadamard(64),
    }


def _onnxruntime():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _export(model: nn.Module, x: torch.Tensor, path, dynamo: bool) -> None:
    if dynamo:
        pytest.importorskip("onnxscript")
        torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["mlp", "truncated", "hadamard"])
def test_onnx_export_matches_pytorch(name, dynamo, tmp_path):
    ort = _onnxruntime()
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
    _onnxruntime()
    model = Butterfly(16, 16, complex=True)
    with pytest.raises(Exception, match="ONNX has no complex tensors"):
        torch.onnx.export(model, (torch.randn(2, 16, dtype=torch.complex64),), str(tmp_path / "c.onnx"), dynamo=False)


def test_kernel_choice_is_the_same_after_an_export(tmp_path):
    from twiddle.ops import kernel_for

    _onnxruntime()
    t, x = torch.randn(1, 1, 3, 4, 2, 2), torch.randn(2, 8)
    before = kernel_for(t, x)
    _export(Butterfly(8, 8).eval(), torch.randn(2, 8), tmp_path / "b.onnx", dynamo=False)
    assert kernel_for(t, x) == before


# ------------------------------------------------------------------------------------------ torch.export, jit.trace
def _deployable() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Modules with an input whose two leading dimensions are free (real and complex, fused and composed)."""
    torch.manual_seed(0)
    real = torch.randn(2, 3, 64, dtype=torch.float64)
    return {
        "mlp": (nn.Sequential(Butterfly(64, 100, nblocks=2), nn.ReLU(), Butterfly(100, 10)).double(), real),
        "truncated": (TruncatedButterflyLinear(64, 32).double(), real),
        "dct": (transforms.dct(64, dtype=torch.float64), real),
        "complex": (
            Butterfly(64, 48, complex=True).to(torch.complex128),
            torch.randn(2, 3, 64, dtype=torch.complex128),
        ),
        "fft2d": (transforms.fft2d((8, 8), dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.complex128)),
    }


def _other_input(x: torch.Tensor) -> torch.Tensor:
    """An input of the same kind with other leading dimensions than the one the module was exported with."""
    return torch.randn(4, 5, *x.shape[2:], dtype=x.dtype)


def _assert_same_outputs_and_gradients(exported, model: nn.Module, x: torch.Tensor) -> None:
    got_x, want_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = exported(got_x), model(want_x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(want)
    (got * weights).real.sum().backward()
    (want * weights).real.sum().backward()
    torch.testing.assert_close(got_x.grad, want_x.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(_deployable()))
def test_torch_export_saves_loads_and_keeps_the_leading_dimensions_free(name, tmp_path):
    model, x = _deployable()[name]
    free = {0: torch.export.Dim("a"), 1: torch.export.Dim("b")}
    program = torch.export.export(model, (x,), dynamic_shapes=(free,))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "twiddle.butterfly_multiply.default" in ops  # the fused op, not the reference's decomposition
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2").module()
    _assert_same_outputs_and_gradients(loaded, model, _other_input(x))


@pytest.mark.parametrize("name", list(_deployable()))
def test_jit_trace_saves_loads_and_keeps_the_leading_dimensions_free(name, tmp_path):
    model, x = _deployable()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # input checks on shapes become constants
        traced = torch.jit.trace(model, (x,), check_trace=False)
    torch.jit.save(traced, str(tmp_path / "model.pt"))
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    _assert_same_outputs_and_gradients(loaded, model, _other_input(x))


@pytest.mark.parametrize(
    "model",
    [
        Butterfly(16, 16),
        nn.Sequential(nn.Linear(16, 16), nn.ReLU(), TruncatedButterflyLinear(16, 8)),
        transforms.hadamard(16),
        FixedPermutation(torch.arange(16).flip(0)),
    ],
    ids=["butterfly", "inside-sequential", "transform", "permutation"],
)
def test_jit_script_is_refused_with_the_alternatives(model):
    with pytest.raises(TypeError, match=r"torch.jit.script does not support twiddle's .*torch.jit.trace"):
        torch.jit.script(model)


@pytest.mark.slow
def test_aot_inductor_package_runs_the_fused_op(tmp_path):
    model, x = _deployable()["mlp"]
    model = model.float().eval()
    free = {0: torch.export.Dim("a"), 1: torch.export.Dim("b")}
    program = torch.export.export(model, (x.float(),), dynamic_shapes=(free,))
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "model.pt2"))
    compiled = torch._inductor.aoti_load_package(path)
    x2 = _other_input(x).float()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x2), model(x2), rtol=1e-5, atol=1e-5)


def test_saved_programs_load_in_a_fresh_process_that_imported_twiddle(tmp_path):
    """The fused op is registered by ``import twiddle`` (not by a first use): a new process that only imported it can
    load programs that call the op."""
    model, x = _deployable()["mlp"]
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "exported.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.save(torch.jit.trace(model, (x,), check_trace=False), str(tmp_path / "traced.pt"))
    with torch.no_grad():
        torch.save((x, model(x)), tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import torch
        import twiddle
        x, want = torch.load({str(tmp_path / "io.pt")!r})
        exported = torch.export.load({str(tmp_path / "exported.pt2")!r}).module()
        traced = torch.jit.load({str(tmp_path / "traced.pt")!r})
        torch.testing.assert_close(exported(x), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(traced(x), want, rtol=1e-12, atol=1e-12)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
