"""The Butterfly layer: a drop-in replacement for ``nn.Linear`` with O(n log n) parameters and cost."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._dtypes import KeepsComplex
from ._layout import num_stacks, padded_size, pair_positions, twiddle_shape
from ._torchscript import NotScriptable
from ._validate import positive_int
from .ops import _multiply_checked, butterfly_multiply, prepare_kernel

__all__ = ["Butterfly", "ParameterCount", "INITS"]

_MISSING = object()  # a parameter that is not in a module's _parameters

INITS = ("randn", "ortho", "identity", "fjlt")

_COMPLEX_OF = {
    torch.float16: torch.complex32,
    torch.float32: torch.complex64,
    torch.float64: torch.complex128,
}


@dataclass(frozen=True)
class ParameterCount:
    """Stored numbers of a layer against a dense ``nn.Linear`` of the same shape (both with the same bias)."""

    structured: int
    dense: int

    @property
    def ratio(self) -> float:
        """``dense / structured``: how many times fewer numbers the structured layer stores (< 1: dense is smaller)."""
        return self.dense / self.structured

    @property
    def dense_is_smaller(self) -> bool:
        return self.dense < self.structured

    def __str__(self) -> str:
        note = " (dense is smaller)" if self.dense_is_smaller else ""
        return f"{self.structured} parameters vs {self.dense} dense: {self.ratio:.2f}x fewer{note}"


def _resolve_dtype(dtype: torch.dtype | None, complex: bool) -> torch.dtype:
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    if dtype.is_complex:
        if not complex:
            raise ValueError(f"dtype={dtype} is complex; pass complex=True for a complex butterfly")
        return dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point or complex dtype, got {dtype}")
    if complex:
        if dtype not in _COMPLEX_OF:
            raise ValueError(f"complex=True needs dtype float16, float32 or float64, got {dtype}")
        return _COMPLEX_OF[dtype]
    return dtype


class Butterfly(NotScriptable, KeepsComplex, nn.Module):
    r"""A butterfly linear layer, ``y = x Wᵀ + b`` with ``W`` a product of sparse butterfly factors.

    The input is zero-padded to ``n = 2**ceil(log2(in_features))``; ``nstacks = ceil(out_features / n)``
    butterflies (each ``nblocks`` chained blocks of ``log2 n`` factors of ``n/2`` 2×2 blocks) are applied to it,
    their outputs concatenated and the first ``out_features`` kept. Cost and storage: ``O(nstacks · nblocks ·
    n log n)`` instead of ``in · out``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias (initialized like ``nn.Linear``'s).
        complex: complex twiddles (and bias). Real inputs are promoted to complex.
        increasing_stride: the first block applies strides ``1, 2, …, n/2`` (else ``n/2, …, 1``); chained
            blocks alternate direction.
        nblocks: number of chained butterflies (2 gives the kaleidoscope ``B B*``).
        init: ``"randn"`` (Gaussian, scaled so the output variance matches ``nn.Linear``'s default init),
            ``"ortho"`` (each 2×2 block a Haar-random orthogonal/unitary matrix, so the square power-of-two
            butterfly is orthogonal/unitary), ``"identity"``, ``"fjlt"`` (every block ``[[1,1],[1,-1]]/√2``, a
            random ±1 diagonal folded into the first factor), or a tensor of shape
            ``(nstacks, nblocks, log2 n, n/2, 2, 2)`` (the 2019 reference layout) to copy.
        device, dtype: factory kwargs, as for ``nn.Linear``. ``dtype`` is the real dtype (its complex
            counterpart is used when ``complex=True``) or a complex dtype with ``complex=True``.

    Shapes: ``(..., in_features) -> (..., out_features)``.

    A complex input to a real butterfly raises TypeError (as ``nn.Linear`` does): silently promoting would send
    complex values into the real layers that usually follow. Apply it to ``x.real`` and ``x.imag``, or build the
    layer with ``complex=True``. Other dtype mismatches follow torch's promotion rules.
    """

    twiddle: nn.Parameter
    bias: nn.Parameter | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        complex: bool = False,
        increasing_stride: bool = True,
        nblocks: int = 1,
        init: str | torch.Tensor | np.ndarray = "randn",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.nblocks = positive_int(nblocks, "nblocks")
        if not isinstance(increasing_stride, bool):
            raise TypeError(f"increasing_stride must be a bool, got {increasing_stride!r}")
        self.complex = bool(complex)
        self.increasing_stride = increasing_stride
        self.n = padded_size(self.in_features)
        self.log_n = self.n.bit_length() - 1
        self.nstacks = num_stacks(self.out_features, self.n)
        param_dtype = _resolve_dtype(dtype, self.complex)
        shape = twiddle_shape(self.nstacks, self.nblocks, self.n)

        if isinstance(init, (torch.Tensor, np.ndarray)):
            init_tensor = torch.as_tensor(init)
            if tuple(init_tensor.shape) != shape:
                raise ValueError(
                    f"init tensor must have shape {shape} (nstacks, nblocks, log2 n, n/2, 2, 2) for "
                    f"Butterfly({in_features}, {out_features}, nblocks={nblocks}), got {tuple(init_tensor.shape)}"
                )
            if init_tensor.is_complex() and not self.complex:
                raise TypeError("init tensor is complex but complex=False; pass complex=True")
            self._init_tensor: torch.Tensor | None = init_tensor.detach().clone()
            self.init = "tensor"
        elif isinstance(init, str):
            if init not in INITS:
                raise ValueError(f"init must be one of {INITS} or a tensor of shape {shape}, got {init!r}")
            self._init_tensor = None
            self.init = init
        else:
            raise TypeError(f"init must be a string in {INITS} or a tensor, got {type(init).__name__}")

        self.twiddle = nn.Parameter(torch.empty(shape, device=device, dtype=param_dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, device=device, dtype=param_dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        prepare_kernel(self.twiddle.device)

    # ------------------------------------------------------------------ initialization
    def reset_parameters(self) -> None:
        """Re-draw the twiddles according to ``init`` and the bias as ``nn.Linear`` does."""
        with torch.no_grad():
            self.twiddle.copy_(self._initial_twiddle())
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                if self.complex:
                    real = torch.empty(self.out_features, device=self.bias.device).uniform_(-bound, bound)
                    imag = torch.empty(self.out_features, device=self.bias.device).uniform_(-bound, bound)
                    self.bias.copy_(torch.complex(real, imag) / math.sqrt(2))
                else:
                    nn.init.uniform_(self.bias, -bound, bound)

    def _initial_twiddle(self) -> torch.Tensor:
        shape = self.twiddle.shape
        device, dtype = self.twiddle.device, self.twiddle.dtype
        if self.init == "tensor":
            assert self._init_tensor is not None
            return self._init_tensor.to(device=device, dtype=dtype)
        if self.log_n == 0:
            return torch.empty(shape, device=device, dtype=dtype)
        real_dtype = torch.float64
        if self.init == "randn":
            # Each output is a sum over in_features * n**(nblocks-1) paths, each a product of
            # nblocks*log_n independent entries of variance sigma^2. Match nn.Linear's output variance, 1/3.
            paths = self.in_features * self.n ** (self.nblocks - 1)
            sigma = (3.0 * paths) ** (-1.0 / (2 * self.nblocks * self.log_n))
            t = torch.randn(shape, device=device, dtype=dtype if self.complex else real_dtype) * sigma
        elif self.init == "identity":
            t = torch.eye(2, dtype=real_dtype, device=device).expand(shape).clone()
        elif self.init == "ortho":
            t = _haar_2x2(shape, self.complex, device)
        elif self.init == "fjlt":
            t = _fjlt_twiddle(shape, self.n, self.increasing_stride, device)
        else:  # pragma: no cover - validated in __init__
            raise AssertionError(self.init)
        return t.to(dtype)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``x Wᵀ + b``."""
        twiddle, bias = self._twiddle_and_bias()
        self._check_input(x, twiddle)
        return _multiply_checked(
            twiddle, x, self.increasing_stride, self.in_features, self.out_features, False, False, bias
        )

    def _forward_permuted(
        self, x: torch.Tensor, perm: torch.Tensor | None, out_perm: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``forward(x[..., perm])[..., out_perm]`` (``out_perm`` only for a layer without bias) with the
        permutations applied by the kernel as it reads ``x`` and writes the result (no permuted copies). ``perm`` /
        ``out_perm``: checked permutations of ``0..in_features-1`` / ``0..out_features-1`` (:class:`FixedPermutation`
        buffers) on this layer's device, or None. Module hooks of this layer do not run; callers fuse only layers
        without any."""
        twiddle, bias = self._twiddle_and_bias()
        if out_perm is not None and bias is not None:
            raise ValueError("an output permutation is fused only into a butterfly without bias")
        self._check_input(x, twiddle)
        return _multiply_checked(
            twiddle, x, self.increasing_stride, self.in_features, self.out_features, False, False, bias, perm,
            out_perm,
        )

    def _twiddle_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The twiddle and bias as the forward uses them. Read from ``_parameters`` (``self.twiddle`` goes through
        ``nn.Module.__getattr__``, about 1 µs each, a tenth of a batch-1 call); where a parametrization, FSDP or
        a pre-hook has replaced one (it is then no longer in ``_parameters``), the attribute is read instead."""
        params = self._parameters
        twiddle = params.get("twiddle", _MISSING)
        if twiddle is _MISSING:
            twiddle = self.twiddle
        bias = params.get("bias", _MISSING)
        if bias is _MISSING:
            bias = self.bias
        return twiddle, bias

    #: the layer's name in input errors (a module that wraps a Butterfly sets its own, so errors name it)
    display_name = "Butterfly"

    def _check_input(self, x: torch.Tensor, twiddle: torch.Tensor) -> None:
        """Errors that name this layer for an input it cannot take (cheap checks: this runs on every call)."""
        name = self.display_name
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} expected a torch.Tensor input, got {type(x).__name__}")
        shape = x.shape
        if not shape or shape[-1] != self.in_features:
            raise ValueError(
                f"{name} expected input with last dimension in_features={self.in_features}, got shape {tuple(shape)}"
            )
        dtype = x.dtype
        if dtype.is_complex:
            if not self.complex:
                raise TypeError(
                    f"{name}(complex=False) got a complex input; build it with complex=True, or apply it to "
                    "x.real and x.imag separately"
                )
        elif not dtype.is_floating_point:
            raise TypeError(f"{name} expected a floating-point or complex input, got dtype {dtype}")
        if not (x.is_cpu and twiddle.is_cpu) and x.device != twiddle.device:
            raise ValueError(f"input is on {x.device} but the {name} layer is on {twiddle.device}")

    # ------------------------------------------------------------------ inspection
    def to_dense(self) -> torch.Tensor:
        """The dense ``(out_features, in_features)`` matrix ``W`` with ``forward(x) == x @ W.T + bias``."""
        eye = torch.eye(self.in_features, device=self.twiddle.device, dtype=self.twiddle.dtype)
        return butterfly_multiply(self.twiddle, eye, self.increasing_stride, out_size=self.out_features).T

    def parameter_count(self) -> ParameterCount:
        """Stored numbers of this layer against a dense ``nn.Linear(in_features, out_features)``."""
        structured = sum(p.numel() for p in self.parameters())
        dense = self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)
        return ParameterCount(structured=structured, dense=dense)

    def extra_repr(self) -> str:
        count = self.parameter_count()
        parts = [
            f"in_features={self.in_features}",
            f"out_features={self.out_features}",
            f"bias={self.bias is not None}",
            f"complex={self.complex}",
            f"increasing_stride={self.increasing_stride}",
            f"nblocks={self.nblocks}",
            f"n={self.n}",
            f"nstacks={self.nstacks}",
            f"init={self.init!r}",
            f"params={count.structured} (dense {count.dense}{', smaller' if count.dense_is_smaller else ''})",
        ]
        return ", ".join(parts)


def _haar_2x2(shape: torch.Size, complex: bool, device: torch.device) -> torch.Tensor:
    """Haar-random 2×2 orthogonal (or unitary) blocks: QR of a Gaussian with the phases of diag(R) removed."""
    dtype = torch.complex128 if complex else torch.float64
    g = torch.randn(shape, dtype=dtype, device=device)
    q, r = torch.linalg.qr(g)
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    phase = d / d.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return q * phase.unsqueeze(-2)


def _fjlt_twiddle(shape: torch.Size, n: int, increasing_stride: bool, device: torch.device) -> torch.Tensor:
    """Every block ``[[1, 1], [1, -1]]/√2``; a random ±1 diagonal (one per stack) folded into the first factor."""
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64, device=device) / math.sqrt(2)
    t = h.expand(shape).clone()
    signs = torch.randint(0, 2, (shape[0], n), device=device).to(torch.float64) * 2 - 1
    p, q = pair_positions(n, 1 if increasing_stride else n // 2)
    # F · D: column 0 of block i multiplies x[p], column 1 multiplies x[q] = x[p + stride].
    t[:, 0, 0, :, :, 0] *= signs[:, p.to(device)].unsqueeze(-1)
    t[:, 0, 0, :, :, 1] *= signs[:, q.to(device)].unsqueeze(-1)
    return t
