"""What a factorization returns: the learned module (a fixed permutation, then a butterfly) and its quality."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..butterfly import Butterfly
from ..permutations import FixedPermutation

__all__ = ["PermutedButterfly", "FactorizationResult"]


class PermutedButterfly(nn.Module):
    """``x ↦ B (P x)``: a fixed permutation ``P`` (``(P x)[i] = x[perm[i]]``) followed by a square butterfly ``B``.

    Args:
        perm: permutation of ``0..n-1``.
        twiddle: ``(1, 1, log2 n, n/2, 2, 2)`` twiddles of ``B`` (increasing stride).

        real_output: return the real part (a complex butterfly fitted to a real target, as in the 2019 paper).

    Shapes: ``(..., n) -> (..., n)``; runs on the fast butterfly kernel.
    """

    def __init__(self, perm: torch.Tensor, twiddle: torch.Tensor, real_output: bool = False) -> None:
        super().__init__()
        n = perm.numel()
        self.real_output = real_output
        self.permutation = FixedPermutation(perm)
        self.butterfly = Butterfly(
            n, n, bias=False, complex=twiddle.is_complex(), init=twiddle, dtype=twiddle.real.dtype
        )

    @property
    def size(self) -> int:
        return self.permutation.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.butterfly(self.permutation(x))
        return y.real if self.real_output and y.is_complex() else y

    def save(self, path: str | Path) -> None:
        """Save to a safetensors file (complex twiddles stored as their real view; the layout in the metadata)."""
        from safetensors.torch import save_file

        tw = self.butterfly.twiddle.detach()
        tensors = {
            "perm": self.permutation.perm.contiguous(),
            "twiddle": (torch.view_as_real(tw) if tw.is_complex() else tw).contiguous(),
        }
        metadata = {"format": "twiddle.PermutedButterfly/1", "complex": str(int(tw.is_complex())),
                    "real_output": str(int(self.real_output)), "n": str(self.size)}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> PermutedButterfly:
        """Load a module written by :meth:`save` (or by ``twiddle factor --out``)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != "twiddle.PermutedButterfly/1":
                found = metadata.get("format")
                raise ValueError(f"{str(path)!r} is not a twiddle factorization file (format {found!r})")
            perm, tw = f.get_tensor("perm"), f.get_tensor("twiddle")
        if metadata["complex"] == "1":
            tw = torch.view_as_complex(tw.contiguous())
        return cls(perm, tw, real_output=metadata["real_output"] == "1")

    def to_dense(self) -> torch.Tensor:
        """The ``n × n`` matrix ``M = B P`` (its real part if ``real_output``) with ``forward(x) == x @ M.T``
        for real ``x``."""
        dense = self.butterfly.to_dense()[:, torch.argsort(self.permutation.perm)]
        return dense.real if self.real_output and dense.is_complex() else dense


@dataclass
class FactorizationResult:
    """A factorization ``M ≈ B P`` and how good it is.

    Attributes:
        module: the :class:`PermutedButterfly` computing ``x ↦ B P x``.
        rmse: root mean square entry error ``‖B P − M‖_F / n``.
        relative_error: ``‖B P − M‖_F / ‖M‖_F``.
        permutation: the permutation ``perm`` (``(P x)[i] = x[perm[i]]``).
        permutation_name: its name (``bitrev``, ``bp101``, …) or ``"given"``.
        seconds: wall-clock time of the factorization (all candidates included).
        method, order: how it was found.
        candidates: relative error of every candidate tried (``"lift:permutation"`` for lifted ones).
        lift: the complex lift whose real part was fitted (``"even"``, ``"odd-alt"``, …), or ``None``.
    """

    module: PermutedButterfly
    rmse: float
    relative_error: float
    permutation: torch.Tensor
    permutation_name: str
    seconds: float
    method: str
    order: str
    candidates: dict[str, float] = field(default_factory=dict)
    lift: str | None = None

    @property
    def params(self) -> int:
        """Stored numbers of the butterfly (``2 n log2 n``, complex entries counted once)."""
        return self.module.butterfly.twiddle.numel()

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "order": self.order,
            "n": self.module.size,
            "rmse": self.rmse,
            "relative_error": self.relative_error,
            "seconds": self.seconds,
            "params": self.params,
            "permutation": self.permutation_name,
            "complex": self.module.butterfly.complex,
            "lift": self.lift,
            "candidates": self.candidates,
        }

    def summary(self) -> str:
        n = self.module.size
        kind = "complex" if self.module.butterfly.complex else "real"
        how = f"{self.method} factorization" + (f" ({self.order} order)" if self.method == "hierarchical" else "")
        real = " (real part)" if self.module.real_output else ""
        if self.lift is not None:
            real = f" (real part of the '{self.lift}' complex lift)"
        lines = [
            f"{how} of a {n}×{n} matrix into a {kind} butterfly{real} × permutation '{self.permutation_name}'",
            f"  relative error {self.relative_error:.3e}, RMSE {self.rmse:.3e}, {self.seconds:.3f} s",
            f"  {self.params} parameters ({n * n} dense, {n * n / self.params:.1f}× fewer)",
        ]
        if self.candidates:
            best = sorted(self.candidates.items(), key=lambda kv: kv[1])
            shown = ", ".join(f"{k} {v:.2e}" for k, v in best[:8])
            more = f" (+{len(best) - 8} more)" if len(best) > 8 else ""
            lines.append(f"  {len(best)} candidates tried, best first: {shown}{more}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
