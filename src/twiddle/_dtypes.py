"""Dtype conversions of modules that hold complex tensors.

``nn.Module.to(dtype)`` converts complex parameters and buffers to ``dtype`` as well, and to a real dtype that
discards their imaginary parts: ``transforms.dct(n).to(torch.float64)`` (a real transform computed with complex
twiddles inside) and ``Butterfly(n, n, complex=True).to(torch.float64)`` computed garbage after it, with at most a
``ComplexWarning`` from deep inside torch. twiddle's modules convert through :func:`keep_complex` instead: a complex
tensor gets the complex dtype of the real precision asked for (``float64 -> complex128``, ``float32 -> complex64``,
``float16 -> complex32``, which the kernels compute in complex64; ``bfloat16``, which has no complex counterpart,
``-> complex64``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_COMPLEX_OF = {
    torch.float64: torch.complex128,
    torch.float32: torch.complex64,
    torch.float16: torch.complex32,
    torch.bfloat16: torch.complex64,
}

Convert = Callable[[torch.Tensor], torch.Tensor]


def floating_target(fn: Convert, device: torch.device) -> torch.dtype | None:
    """The dtype ``fn`` (the function ``nn.Module._apply`` maps over tensors) gives floating-point tensors, or None
    where it keeps their dtype (``.cuda()``, ``.to(device)``, ``share_memory_()``). Found by applying it to two empty
    probes of different dtypes."""
    single = fn(torch.empty(0, dtype=torch.float32, device=device))
    half = fn(torch.empty(0, dtype=torch.float16, device=device))
    if single.dtype == torch.float32 and half.dtype == torch.float16:
        return None
    return single.dtype if single.dtype == half.dtype and single.dtype.is_floating_point else None


def keep_complex(fn: Convert) -> Convert:
    """``fn`` for real tensors; complex tensors keep a complex dtype (of the precision ``fn`` converts to) and go to
    the device ``fn`` moves tensors to."""

    def convert(t: torch.Tensor) -> torch.Tensor:
        if not t.is_complex():
            return fn(t)
        target = floating_target(fn, t.device)
        if target is None or target not in _COMPLEX_OF:
            return fn(t)
        device = fn(torch.empty(0, dtype=t.real.dtype, device=t.device)).device
        return t.to(device=device, dtype=_COMPLEX_OF[target])

    return convert


class KeepsComplex:
    """Mixin for ``nn.Module`` classes holding complex tensors (directly or in submodules): ``.to(dtype)``,
    ``.half()`` and the like convert them through :func:`keep_complex`."""

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        return super()._apply(keep_complex(fn), recurse)  # type: ignore[misc]
