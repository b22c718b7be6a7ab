"""TorchScript's scripting frontend (``torch.jit.script``) and twiddle's modules.

Scripting compiles a module's Python source; twiddle's modules validate their inputs and dispatch between kernels
in Python that TorchScript cannot compile, and its errors from deep inside (``Unknown type annotation: 'nn.Parameter'``)
say nothing useful. TorchScript is in maintenance mode in PyTorch 2; every other route works: ``torch.jit.trace``
(the fused kernel is one ``twiddle::butterfly_multiply`` call in the traced graph), ``torch.export.export`` (and
AOTInductor), ``torch.compile`` and ONNX. ``torch.jit.script`` calls ``__prepare_scriptable__`` on every module of
the tree before it compiles anything, which is where the mixin below refuses with that advice.
"""

from __future__ import annotations

from typing import NoReturn


class NotScriptable:
    """Mixin for ``nn.Module`` classes: ``torch.jit.script`` raises a ``TypeError`` that names the alternatives."""

    def __prepare_scriptable__(self) -> NoReturn:
        name = type(self).__name__
        raise TypeError(
            f"torch.jit.script does not support twiddle's {name}: its forward runs Python that TorchScript cannot "
            "compile. Use torch.jit.trace(module, example_inputs) (the batch size stays free), "
            "torch.export.export(...), torch.compile(module) or torch.onnx.export(...) instead."
        )
