"""The pieces every transform is assembled from, and the container that holds them.

A transform is a short pipeline of :class:`~twiddle.Butterfly` modules, fixed permutations / selections and
diagonals, wrapped in :class:`Transform`, which checks the input shape, handles complex input to real
transforms, and offers ``to_dense()`` and ``stored_numbers()``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._dtypes import KeepsComplex, floating_target
from .._fusion import run_fused
from .._torchscript import NotScriptable
from .._validate import positive_int
from ..permutations import gather_last

__all__ = ["Transform", "Diagonal", "Pipeline", "builds_on_cpu"]

_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def real_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The real dtype a transform is built in: ``dtype`` (a real floating dtype) or torch's default."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype not in _COMPLEX_OF:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def complex_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The complex counterpart of :func:`real_dtype`."""
    return _COMPLEX_OF[real_dtype(dtype)]


def as_float64(values: object, name: str, *, allow_complex: bool = True) -> torch.Tensor:
    """``values`` (tensor, array or sequence) as a detached CPU float64 tensor (complex128 if complex), or
    ValueError naming ``name`` when it is complex and may not be, holds NaN/Inf, or is a meta tensor."""
    if isinstance(values, torch.Tensor) and values.is_meta:
        raise ValueError(f"{name} is a meta tensor: it has no values to build the transform from (make it outside "
                         "the meta-device context)")
    t = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if t.is_complex() and not allow_complex:
        raise ValueError(f"{name} must be real")
    t = t.to(torch.complex128 if t.is_complex() else torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _count_numbers(tensor: torch.Tensor) -> int:
    """Real numbers a tensor stores (a complex entry is two)."""
    return tensor.numel() * (2 if tensor.is_complex() else 1)


def as_pair(value: object, name: str) -> tuple:
    """``value`` as a pair: a 2-element tuple/list as given, anything else repeated twice (ValueError naming
    ``name`` for a sequence of another length)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be one value or a pair, got {value!r}")
        return tuple(value)
    return (value, value)


def check_shape2d(shape: object, name: str = "shape") -> tuple[int, int]:
    """``(height, width)`` from an int or a pair of positive ints."""
    h, w = as_pair(shape, name)
    return positive_int(h, f"{name}[0]"), positive_int(w, f"{name}[1]")


class Diagonal(nn.Module):
    """Elementwise scaling of the trailing dimensions: ``y = x * weight``.

    Args:
        values: the diagonal, shape ``(n,)`` (or any shape that broadcasts against the input's trailing dims).
        trainable: whether ``weight`` is learned.

    Shapes: ``(..., n) -> (..., n)``.
    """

    def __init__(self, values: torch.Tensor, *, trainable: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(values.detach().clone(), requires_grad=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}, dtype={self.weight.dtype}"


class Pipeline(nn.Sequential):
    """``nn.Sequential`` (same submodules, same state_dict keys) that runs a butterfly and the fixed permutations
    right before and after it as one kernel call, the permutations applied as the kernel reads its input and writes
    its output (:func:`twiddle._fusion.run_fused`; same values and gradients)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_fused(self._modules.values(), x)


class _ZeroPad(nn.Module):
    """Zero-pad the last dimension to ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, (0, self.size - x.shape[-1]))

    def extra_repr(self) -> str:
        return f"size={self.size}"


class _Take(nn.Module):
    """Gather ``x[..., index]`` along the last dimension (a fixed selection; entries may repeat)."""

    index: torch.Tensor

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.to(torch.long).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gather_last(x, self.index)

    def extra_repr(self) -> str:
        return f"size={self.index.numel()}"


class _RealPart(nn.Module):
    """``Re(x)`` (identity on real tensors)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.real if x.is_complex() else x


class _AlongDim(nn.Module):
    """Apply ``module`` (which acts on the last dimension) along dimension ``dim`` instead."""

    def __init__(self, module: nn.Module, dim: int) -> None:
        super().__init__()
        self.module = module
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dim == -1:
            return self.module(x)
        return self.module(x.movedim(self.dim, -1)).movedim(-1, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class _ChannelMix(nn.Module):
    """Per-frequency channel mixing: ``y[..., o, f] = Σ_c weight[o, c, f] · x[..., c, f]`` (``f`` may be several
    trailing dimensions). A multi-channel convolution is this between a forward and an inverse DFT. With ``groups``
    (as ``nn.Conv1d``): ``weight`` is ``(out, in / groups, *f)`` and output channel ``o`` mixes only the input
    channels of its group (depthwise: ``groups = in = out``, one product per channel and frequency)."""

    def __init__(self, weight: torch.Tensor, *, groups: int = 1, trainable: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=trainable)
        self.groups = groups

    def __setstate__(self, state: dict) -> None:
        state.setdefault("groups", 1)  # modules pickled before groups existed have none
        super().__setstate__(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        freq = "fgh"[: self.weight.dim() - 2]
        dtype = torch.promote_types(x.dtype, self.weight.dtype)
        g = self.groups
        if g == 1:  # (..., c, *f) x (o, c, *f) -> (..., o, *f), without materializing the (..., o, c, *f) product
            return torch.einsum(f"...c{freq},oc{freq}->...o{freq}", x.to(dtype), self.weight.to(dtype))
        nf = self.weight.dim() - 2
        lead, spatial = x.shape[: x.dim() - nf - 1], x.shape[x.dim() - nf:]
        xg = x.to(dtype).reshape(*lead, g, -1, *spatial)  # (..., g, c / g, *f)
        wg = self.weight.to(dtype).reshape(g, -1, *self.weight.shape[1:])  # (g, o / g, c / g, *f)
        y = torch.einsum(f"...kc{freq},koc{freq}->...ko{freq}", xg, wg)
        return y.reshape(*lead, -1, *spatial)

    def extra_repr(self) -> str:
        out_ch, per_group = self.weight.shape[:2]
        g = self.groups
        return (f"in_channels={per_group * g}, out_channels={out_ch}, "
                + (f"groups={g}, " if g > 1 else "") + f"frequencies={tuple(self.weight.shape[2:])}")


class _AddBias(nn.Module):
    """Add ``bias[o]`` to channel ``o`` of an ``(..., out_channels, *spatial)`` tensor."""

    def __init__(self, bias: torch.Tensor, spatial_dims: int, *, trainable: bool = False) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=trainable)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.reshape(-1, *([1] * self.spatial_dims))


class _Concat(nn.Module):
    """Run several pipelines on the same input, concatenate their outputs along the last dimension, keep the
    first ``out_features``."""

    def __init__(self, branches: Sequence[nn.Module], out_features: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([branch(x) for branch in self.branches], dim=-1)
        return y[..., : self.out_features]


def _frozen(value: object) -> object:
    """A copy of a constructor argument that later changes to the caller's tensor or array do not reach."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


def builds_on_cpu(constructor: Callable[..., Transform]) -> Callable[..., Transform]:
    """Decorator for the public constructors of :mod:`twiddle.transforms`.

    The values are computed on the CPU whatever torch's default device is (inside ``with torch.device("meta")`` or
    after ``torch.set_default_device``, where the constructors' arithmetic failed or ran on that device), then the
    module is moved to ``device`` (default: torch's default device, as for ``nn.Linear``; a module made on the
    meta device has no values until :meth:`Transform.reset_parameters` or ``load_state_dict``). The arguments are
    kept (copied) on the module, so that :meth:`Transform.reset_parameters` can compute the values again.
    """

    @functools.wraps(constructor)
    def build(*args, device: torch.device | str | None = None, **kwargs) -> Transform:
        target = torch.get_default_device() if device is None else torch.device(device)
        with torch.device("cpu"):
            module = constructor(*args, device="cpu", **kwargs)
        module._recipe = (build, tuple(_frozen(a) for a in args), {k: _frozen(v) for k, v in kwargs.items()})
        return module.to(target)

    return build


class Transform(NotScriptable, KeepsComplex, nn.Module):
    """A fixed linear transform assembled from butterflies, permutations and diagonals.

    Built by the constructors of :mod:`twiddle.transforms`; not usually instantiated directly.

    Attributes:
        name: what it computes (e.g. ``"dct-2"``).
        in_shape, out_shape: the trailing input/output dimensions it acts on; leading dimensions are batch.
        real: a real-to-real transform. A complex input is transformed as ``T(x.real) + i·T(x.imag)``, as
            ``scipy.fft.dct`` does.
        steps: the pipeline (a :class:`Pipeline`, an ``nn.Sequential``), applied in order.

    Shapes: ``(..., *in_shape) -> (..., *out_shape)``.
    """

    def __init__(
        self,
        name: str,
        steps: Sequence[nn.Module],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        *,
        real: bool,
        trainable: bool,
    ) -> None:
        super().__init__()
        self.name = name
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.real = real
        self.steps = Pipeline(*steps)
        for p in self.parameters():
            p.requires_grad_(trainable)
        self._single_precision: bool | None = None  # whether some stored values are single precision (cached)
        self._warned_precision = False
        self._low_precision: torch.dtype | None = None  # set by .half() / .to(torch.bfloat16) and the like
        self._converted_single = False  # complex64 values converted to complex128 (by .double() and the like)
        self._recipe: tuple | None = None  # (constructor, args, kwargs), set by @builds_on_cpu

    # attributes added after the first release, and their values for a module pickled before they existed
    _STATE_DEFAULTS = {"_single_precision": None, "_warned_precision": False, "_low_precision": None,
                       "_converted_single": False, "_recipe": None}

    def __setstate__(self, state: dict) -> None:
        for name, value in self._STATE_DEFAULTS.items():
            state.setdefault(name, value)
        super().__setstate__(state)

    def _apply(self, fn, recurse=True):  # .to(), .double(), ...: the stored precision may change
        self._single_precision = None
        target = floating_target(fn, torch.device("cpu"))
        if target is not None:  # converted to float16 / bfloat16: real results in that dtype (computed in float32)
            self._low_precision = target if target in (torch.float16, torch.bfloat16) else None
        if target == torch.float64 and any(t.dtype == torch.complex64 for t in (*self.parameters(), *self.buffers())):
            self._converted_single = True  # complex128 after the conversion, still single-precision accurate
        return super()._apply(fn, recurse)  # KeepsComplex: complex values stay complex

    def _check_precision(self, x: torch.Tensor) -> None:
        """Warn once when a double-precision input meets values stored in single precision: the result is then
        only single-precision accurate (~1e-7), not what ``torch.fft`` / ``scipy.fft`` give in float64."""
        if self._single_precision is None:
            self._single_precision = self._converted_single or any(
                t.dtype in (torch.float32, torch.complex64, torch.float16, torch.bfloat16)
                for t in (*self.parameters(), *self.buffers())
            )
        if self._single_precision:
            self._warned_precision = True
            warnings.warn(
                f"twiddle.transforms: {self.name} holds single-precision values (accurate to ~1e-7) and got a "
                f"{x.dtype} input, so its result is only single-precision accurate; build it with "
                "dtype=torch.float64 for double precision, or call reset_parameters() after .double() (converting "
                "it alone does not recompute the values)",
                stacklevel=5,  # the caller of the module (past forward and nn.Module's call machinery)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name} expected a torch.Tensor input, got {type(x).__name__}")
        k = len(self.in_shape)
        if x.dim() < k or tuple(x.shape[-k:]) != self.in_shape:
            dims = "dimension" if k == 1 else f"{k} dimensions"
            raise ValueError(
                f"{self.name} expected input whose last {dims} {'is' if k == 1 else 'are'} "
                f"{self.in_shape if k > 1 else self.in_shape[0]}, got shape {tuple(x.shape)}"
            )
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"{self.name} expected a floating-point or complex input, got dtype {x.dtype}")
        if x.dtype in (torch.float64, torch.complex128) and not self._warned_precision \
                and not torch.compiler.is_compiling():  # (eager only: a warning would break a fullgraph compile)
            self._check_precision(x)
        if self.real and x.is_complex():
            return torch.complex(self.steps(x.real), self.steps(x.imag))
        y = self.steps(x)
        low = self._low_precision
        if low is not None and x.dtype == low and not y.is_complex():
            y = y.to(low)  # a module converted to float16 / bfloat16 gives its input's dtype, as nn.Linear would
        return y

    def to_dense(self) -> torch.Tensor:
        """The matrix ``M`` (``prod(out_shape) × prod(in_shape)``) with ``forward(x).flatten() == M @ x.flatten()``
        for one sample (trailing dimensions flattened row-major)."""
        size = math.prod(self.in_shape)
        ref = next(iter(self.parameters()), None)
        if ref is None:
            ref = next(iter(self.buffers()))
        dtype = ref.real.dtype if ref.is_complex() else ref.dtype
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        eye = torch.eye(size, dtype=dtype, device=ref.device).reshape(size, *self.in_shape)
        with torch.no_grad():
            y = self.forward(eye)
        return y.reshape(size, -1).T

    def reset_parameters(self) -> None:
        """Compute the transform's values again from the arguments its constructor was given, and copy them into
        its parameters and buffers in place: the exact transform again after fine-tuning (``trainable=True``), and
        the values of a module made on the meta device once ``to_empty(device=...)`` has given it storage (the
        pattern of meta-device initialization: ``with torch.device("meta"): model = ...``, then
        ``model.to_empty(device=...)`` and ``reset_parameters()`` on every module that has one).

        The values are computed on the CPU in double precision if the module now holds double-precision values
        (so ``.double()`` followed by ``reset_parameters()`` gives a float64-accurate transform), else in the
        precision it was built in, and converted to each tensor's dtype and device.

        Raises RuntimeError for a ``Transform`` not made by a :mod:`twiddle.transforms` constructor.
        """
        recipe = self._recipe
        if recipe is None:
            raise RuntimeError(f"{self.name} was not made by a twiddle.transforms constructor: it has no recipe "
                               "to compute its values again")
        build, args, kwargs = recipe
        mine = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        double = any(t.dtype in (torch.float64, torch.complex128) for t in mine.values())
        fresh = build(*args, **{**kwargs, "device": "cpu", **({"dtype": torch.float64} if double else {})})
        theirs = {**dict(fresh.named_parameters()), **dict(fresh.named_buffers())}
        if mine.keys() != theirs.keys():  # (only if the module's structure was changed by hand)
            raise RuntimeError(f"{self.name}: its parameters and buffers no longer match its constructor's")
        with torch.no_grad():
            for name, tensor in mine.items():
                tensor.copy_(theirs[name])
        self._single_precision = None
        self._converted_single = self._converted_single and not double

    def stored_numbers(self) -> int:
        """Real numbers stored in parameters and buffers (complex entries count twice, indices once): grows like
        ``n log n`` for every transform here, against ``n²`` for a dense matrix."""
        return sum(_count_numbers(t) for t in self.parameters()) + sum(_count_numbers(t) for t in self.buffers())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_shape={self.in_shape}, out_shape={self.out_shape}, real={self.real}"
