"""What a factorization returns: the learned module (a fixed permutation, then a butterfly) and its quality."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._fusion import run_fused
from .._torchscript import NotScriptable
from ..butterfly import Butterfly
from ..ops import butterfly_multiply
from ..permutations import FixedPermutation

__all__ = ["PermutedButterfly", "FactorizationResult"]


class PermutedButterfly(NotScriptable, nn.Module):
    """``x ↦ B (P x)``: a fixed permutation ``P`` (``(P x)[i] = x[perm[i]]``) followed by a square butterfly ``B``,
    optionally followed by more such stages (``B₂ P₂ B P``: the 2019 paper's BPBP model), and optionally by a fixed
    permutation of the outputs (``Q B P``: a butterfly whose rows came in an order of their own).

    Args:
        perm: permutation of ``0..n-1``.
        twiddle: ``(1, 1, log2 n, n/2, 2, 2)`` twiddles of ``B`` (increasing stride).
        real_output: return the real part (a complex butterfly fitted to a real target, as in the 2019 paper).
        then: further ``(perm, twiddle)`` stages applied after this one, in order (kept in ``self.then``).
        in_features, out_features: the sizes of a factored ``out × in`` matrix that was zero-padded to ``n × n``
            (default ``n``): the input is zero-padded to ``n`` and the first ``out_features`` outputs are kept.
        out_perm: permutation of ``0..n-1`` applied to the outputs after every stage (``y[..., i] = z[...,
            out_perm[i]]``, before the first ``out_features`` are kept), kept in ``self.output_permutation``; None
            (default): none.

    Shapes: ``(..., in_features) -> (..., out_features)``; with ``real_output`` a complex input gives
    ``M x.real + i M x.imag`` (``M`` the real matrix), as the real transforms do; runs on the fast butterfly kernel,
    each stage one call
    (the kernel gathers ``x[..., perm]`` as it reads its input; see :mod:`twiddle._fusion`).
    """

    def __init__(self, perm: torch.Tensor, twiddle: torch.Tensor, real_output: bool = False, *,
                 then: Sequence[tuple[torch.Tensor, torch.Tensor]] = (), in_features: int | None = None,
                 out_features: int | None = None, out_perm: torch.Tensor | None = None) -> None:
        super().__init__()
        n = perm.numel()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n):
                raise ValueError(f"{name} must be an int in [1, n = {n}], got {value!r}")
        self.in_features = n if in_features is None else in_features
        self.out_features = n if out_features is None else out_features
        self.real_output = real_output
        self.permutation = FixedPermutation(perm)
        self.butterfly = Butterfly(
            n, n, bias=False, complex=twiddle.is_complex(), init=twiddle, dtype=twiddle.real.dtype
        )
        self.then = nn.ModuleList(PermutedButterfly(p, t) for p, t in then)
        for stage in self.then:
            if stage.size != n:
                raise ValueError(f"every stage must have size {n}, got {stage.size}")
        self.output_permutation = None if out_perm is None else FixedPermutation(out_perm)
        if self.output_permutation is not None and self.output_permutation.size != n:
            raise ValueError(f"out_perm must permute n = {n} outputs, got {self.output_permutation.size}")

    def __setstate__(self, state: dict) -> None:
        state.setdefault("output_permutation", None)  # modules pickled before output permutations existed
        super().__setstate__(state)

    @property
    def size(self) -> int:
        return self.permutation.size

    @property
    def complex(self) -> bool:
        """Whether any stage has complex twiddles."""
        return self.butterfly.complex or any(stage.complex for stage in self.then)

    def parameter_count(self) -> int:
        """Stored numbers of the butterflies (``2 n log2 n`` per stage, complex entries counted once)."""
        return self.butterfly.twiddle.numel() + sum(stage.parameter_count() for stage in self.then)

    def extra_repr(self) -> str:
        if (self.in_features, self.out_features) == (self.size, self.size):
            return f"n={self.size}"
        return f"in_features={self.in_features}, out_features={self.out_features}, n={self.size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.size
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"PermutedButterfly expected input with last dimension in_features={self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        if self.real_output and x.is_complex():
            # the matrix is the real part of the butterflies' product: applied to x.real and x.imag apart (taking
            # the real part of the product applied to a complex x would mix them)
            return torch.complex(self.forward(x.real), self.forward(x.imag))
        if self.in_features < n:
            x = nn.functional.pad(x, (0, n - self.in_features))
        # the permutation is gathered by the kernel as it reads x (twiddle._fusion), not copied first; an output
        # permutation right after the only butterfly is scattered by its store
        out = () if self.output_permutation is None else (self.output_permutation,)
        y = run_fused((self.permutation, self.butterfly, *(() if self.then else out)), x)
        for stage in self.then:
            y = stage(y)
        if self.then and out:
            y = self.output_permutation(y)
        y = y.real if self.real_output and y.is_complex() else y
        return y[..., : self.out_features].contiguous() if self.out_features < n else y

    def _stages(self) -> list[PermutedButterfly]:
        return [self, *self.then]

    def save(self, path: str | Path) -> None:
        """Save to a safetensors file (complex twiddles stored as their real view; the layout in the metadata)."""
        from safetensors.torch import save_file

        tensors = {}
        for i, stage in enumerate(self._stages()):
            tw = stage.butterfly.twiddle.detach()
            suffix = "" if i == 0 else f".{i}"
            tensors["perm" + suffix] = stage.permutation.perm.contiguous()
            tensors["twiddle" + suffix] = (torch.view_as_real(tw) if tw.is_complex() else tw).contiguous()
        complex_flags = "".join(str(int(stage.butterfly.complex)) for stage in self._stages())
        # format 2 adds the output permutation; files without one stay format 1, readable by earlier versions
        version = 1
        if self.output_permutation is not None:
            tensors["out_perm"] = self.output_permutation.perm.contiguous()
            version = 2
        metadata = {"format": f"twiddle.PermutedButterfly/{version}", "complex": complex_flags,
                    "real_output": str(int(self.real_output)), "n": str(self.size),
                    "stages": str(len(self._stages())), "in_features": str(self.in_features),
                    "out_features": str(self.out_features)}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> PermutedButterfly:
        """Load a module written by :meth:`save` (or by ``twiddle factor --out``)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") not in ("twiddle.PermutedButterfly/1", "twiddle.PermutedButterfly/2"):
                found = metadata.get("format")
                raise ValueError(f"{str(path)!r} is not a twiddle factorization file (format {found!r})")
            count = int(metadata.get("stages", "1"))
            stages = []
            for i in range(count):
                suffix = "" if i == 0 else f".{i}"
                perm, tw = f.get_tensor("perm" + suffix), f.get_tensor("twiddle" + suffix)
                if metadata["complex"][i] == "1":
                    tw = torch.view_as_complex(tw.contiguous())
                stages.append((perm, tw))
            out_perm = f.get_tensor("out_perm") if "out_perm" in f.keys() else None
        (perm, tw), *rest = stages
        n = perm.numel()  # files written before rectangular factorizations have no sizes: n x n
        return cls(perm, tw, real_output=metadata["real_output"] == "1", then=rest,
                   in_features=int(metadata.get("in_features", n)), out_features=int(metadata.get("out_features", n)),
                   out_perm=out_perm)

    def to_dense(self) -> torch.Tensor:
        """The ``out_features × in_features`` matrix ``M = (Q) … B₂ P₂ B P`` (its real part if ``real_output``; the
        top-left block of the ``n × n`` product for a padded factorization) with ``forward(x) == x @ M.T`` for real
        ``x``."""
        if not self.then:
            return self._dense_rows(0, self.out_features)
        # B P: column j of B moves to perm[j]; gathered as rows of Bᵀ (to_dense's transposed view: whole rows
        # copied, several times faster than a column gather at n = 1024)
        dense = self.butterfly.to_dense().mT[torch.argsort(self.permutation.perm)].mT
        for stage in self.then:
            inner = stage.to_dense()
            dense = inner.to(torch.promote_types(inner.dtype, dense.dtype)) @ dense.to(
                torch.promote_types(inner.dtype, dense.dtype))
        if self.output_permutation is not None:
            dense = dense[self.output_permutation.perm]
        dense = dense.real if self.real_output and dense.is_complex() else dense
        return dense[: self.out_features, : self.in_features]

    def _dense_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of :meth:`to_dense` for a single stage, in one kernel call: row i of ``Q B P`` is
        ``Pᵀ Bᵀ Qᵀ e_i``, so rows of the identity through ``Bᵀ``, read in ``Q``'s inverse order and stored in
        ``P``'s, are the matrix's rows, laid out by rows, with no gathered copy."""
        butterfly, q = self.butterfly, self.output_permutation
        twiddle = butterfly.twiddle
        unit = torch.zeros(stop - start, self.size, dtype=twiddle.dtype, device=twiddle.device)
        index = torch.arange(stop - start, device=twiddle.device)
        unit[index, index + start] = 1
        rows = butterfly_multiply(twiddle, unit, butterfly.increasing_stride, transpose=True,
                                  in_perm=None if q is None else torch.argsort(q.perm),
                                  out_perm=torch.argsort(self.permutation.perm))
        rows = rows.real if self.real_output and rows.is_complex() else rows
        return rows[:, : self.in_features]

    def _distance(self, matrix: torch.Tensor) -> float:
        """``‖to_dense() − matrix‖_F`` for an ``out_features × in_features`` ``matrix``. A single stage is formed
        and compared a block of rows at a time (about ``_ROWS_BYTES`` each): no ``n × n`` identity or product is
        allocated, and each block's difference is taken while it is in the caches (a search fits hundreds of
        candidates; complex128, n = 4096, each full-size temporary cost about 0.1 s, mostly fresh pages)."""
        if self.then:
            return float((self.to_dense() - matrix).norm())
        itemsize = torch.empty((), dtype=self.butterfly.twiddle.dtype).element_size()
        step = max(1, _ROWS_BYTES // (self.size * itemsize))
        total = 0.0
        for start in range(0, self.out_features, step):
            stop = min(start + step, self.out_features)
            total = math.hypot(total, float((self._dense_rows(start, stop) - matrix[start:stop]).norm()))
        return total


# bytes of the product a block of rows of PermutedButterfly._distance holds
_ROWS_BYTES = 1 << 20


@dataclass
class FactorizationResult:
    """A factorization ``M ≈ B P`` (or ``Q B``) and how good it is.

    Attributes:
        module: the :class:`PermutedButterfly` computing ``x ↦ B P x``.
        rmse: root mean square entry error ``‖B P − M‖_F / √(rows · cols)`` (``/ n`` for an ``n × n`` matrix).
        relative_error: ``‖B P − M‖_F / ‖M‖_F``.
        permutation: the permutation ``perm`` (``(P x)[i] = x[perm[i]]``).
        permutation_name: its name (``bitrev``, ``bp101``, …) or ``"given"``.
        seconds: wall-clock time of the factorization (all candidates included).
        method, order: how it was found.
        candidates: relative error of every candidate tried (``"lift:permutation"`` for lifted ones).
        lift: the complex lift whose real part was fitted (``"even"``, ``"odd-alt"``, …), or ``None``.
        output_permutation: for a fit ``M ≈ Q B`` (``permutation_name`` ``"recovered-rows"``: the rows read off the
            matrix; ``permutation`` is then the identity) or ``M ≈ Q B P`` (``"recovered-both"`` and
            ``"recovered-both-hybrid"``: both read off), ``Q`` as ``out_perm`` (``(Q z)[i] =
            z[out_perm[i]]``; also ``module.output_permutation``), and for a spectral fit whose eigenvectors
            needed a row permutation; None otherwise.
        untried: how many candidate permutations the hierarchical search left untried because its time budget
            ran out (0: it finished).
        model: ``"bp"`` (one butterfly after one permutation), the gradient method's ``"bpp"`` / ``"bpbp"``, or
            ``"bpbp"`` of the hierarchical method's spectral fit (``permutation_name`` ``"spectral:…"``: ``M = Q (B D)
            R B' R Qᵀ`` from the eigenvectors ``V = Q B P``, see :mod:`twiddle.factorize.spectral`; ``permutation``
            is then the first stage's; ``"spectral-circulant<N>:…"``: of the size-N circulant a Toeplitz matrix
            is a block of).
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
    model: str = "bp"
    output_permutation: torch.Tensor | None = None
    untried: int = 0

    @property
    def params(self) -> int:
        """Stored numbers of the butterflies (``2 n log2 n`` each, complex entries counted once)."""
        return self.module.parameter_count()

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "order": self.order,
            "n": self.module.size,
            "shape": [self.module.out_features, self.module.in_features],
            "rmse": self.rmse,
            "relative_error": self.relative_error,
            "seconds": self.seconds,
            "params": self.params,
            "permutation": self.permutation_name,
            "complex": self.module.complex,
            "stages": len(self.module.then) + 1,
            "lift": self.lift,
            "model": self.model,
            "output_permutation": self.output_permutation is not None,
            "candidates": self.candidates,
            "untried": self.untried,
        }

    def summary(self) -> str:
        n = self.module.size
        kind = "complex" if self.module.complex else "real"
        what = f"{kind} butterfly" if not self.module.then else \
            f"product of {len(self.module.then) + 1} {kind} butterflies"
        how = f"{self.method} factorization" + (f" ({self.order} order)" if self.method == "hierarchical" else "")
        real = " (real part)" if self.module.real_output else ""
        if self.lift is not None:
            real = f" (real part of the '{self.lift}' complex lift)"
        rows, cols = self.module.out_features, self.module.in_features
        shape = f"{n}×{n}" if (rows, cols) == (n, n) else f"{rows}×{cols} (zero-padded to {n}×{n})"
        if self.permutation_name.startswith("spectral"):
            read = "both permutations" if self.output_permutation is not None else "a column permutation"
            own = self.permutation_name.startswith("spectral:")
            of, c = ("its eigenvectors", "M") if own else (
                f"the eigenvectors of the {n}×{n} circulant it is a block of", "C")
            form = (f"a {what}{real} from {of} ({c} = V Λ V⁻¹, V a butterfly under {read} read off V: "
                    f"{c} = Q B Λ' B⁻¹ Qᵀ)")
            if not own:
                shape = f"{rows}×{cols} Toeplitz"
        elif self.output_permutation is None:
            form = f"a {what}{real} × permutation '{self.permutation_name}'"
        elif bool((self.permutation == torch.arange(self.permutation.numel())).all()):
            form = f"a permutation of its rows ('{self.permutation_name}') × {what}{real}"
        else:
            form = (f"a permutation of its rows × {what}{real} × a permutation of its columns "
                    f"('{self.permutation_name}')")
        lines = [
            f"{how} of a {shape} matrix into {form}",
            f"  relative error {self.relative_error:.3e}, RMSE {self.rmse:.3e}, {self.seconds:.3f} s",
            f"  {self.params} parameters ({rows * cols} dense, " + (
                f"{rows * cols / self.params:.1f}× fewer)" if self.params <= rows * cols
                else f"{self.params / (rows * cols):.1f}× more)"),
        ]
        if self.candidates:
            best = sorted(self.candidates.items(), key=lambda kv: kv[1])
            shown = ", ".join(f"{k} {v:.2e}" for k, v in best[:8])
            more = f" (+{len(best) - 8} more)" if len(best) > 8 else ""
            lines.append(f"  {len(best)} candidates tried, best first: {shown}{more}")
        if self.untried:
            lines.append(f"  {self.untried} candidates left untried: the time budget ran out")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
