"""The fused CPU kernel as one autograd-visible torch op (``torch.ops.twiddle.butterfly_apply``).

The C++ op works on *prepared* twiddles (factors in application order, structure-of-arrays, complex split into
real and imaginary parts) and real views of the data. The preparation — flipping for the transpose, conjugating,
reshaping — is ordinary differentiable torch code, so autograd maps the op's twiddle gradient back to the user's
twiddle tensor. Backward recomputes activations inside the kernel; double backward is not supported.
"""

from __future__ import annotations

import torch

from .._layout import block_directions, factor_stride
from . import _cpu_build

__all__ = ["available", "fused_butterfly_multiply", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return

    @torch.library.register_fake("twiddle::butterfly_apply")
    def _(twiddle, x, strides, n, split_input, sum_output, out_size):
        shape = (x.shape[0], out_size) + ((2,) if twiddle.dim() == 5 else ())
        return x.new_empty(shape)

    @torch.library.register_fake("twiddle::butterfly_apply_backward")
    def _(twiddle, x, grad, strides, n, split_input, sum_output, out_size):
        return torch.empty_like(twiddle), torch.empty_like(x)

    def setup_context(ctx, inputs, output):
        twiddle, x, strides, n, split_input, sum_output, out_size = inputs
        ctx.save_for_backward(twiddle, x)
        ctx.args = (list(strides), n, split_input, sum_output, out_size)

    def backward(ctx, grad):
        twiddle, x = ctx.saved_tensors
        grad_twiddle, grad_x = torch.ops.twiddle.butterfly_apply_backward(twiddle, x, grad, *ctx.args)
        return grad_twiddle, grad_x, None, None, None, None, None

    torch.library.register_autograd("twiddle::butterfly_apply", backward, setup_context=setup_context)
    _registered = True


def available() -> bool:
    """True when the fused CPU kernel is built and registered (builds it on first call)."""
    ok = _cpu_build.load()
    if ok:
        _register()
    return ok


def _prepare(twiddle: torch.Tensor, increasing_stride: bool, transpose: bool) -> tuple[torch.Tensor, list[int]]:
    """Factors in application order as ``(nstacks, F, n/2, 2, 2)`` and their strides."""
    nstacks, nblocks, log_n, half = twiddle.shape[:4]
    directions = block_directions(nblocks, increasing_stride)
    if transpose:
        twiddle = twiddle.flip(1, 2).transpose(-1, -2)
        directions = block_directions(nblocks, not directions[-1])
    strides = [factor_stride(f, log_n, inc) for inc in directions for f in range(log_n)]
    return twiddle.reshape(nstacks, nblocks * log_n, half, 2, 2), strides


def _to_soa(seq: torch.Tensor) -> torch.Tensor:
    nstacks, F, half = seq.shape[:3]
    if seq.is_complex():
        # (nstacks, F, half, 2, 2) complex -> (nstacks, F, 4, 2, half) real
        return torch.view_as_real(seq.resolve_conj()).reshape(nstacks, F, half, 4, 2).permute(0, 1, 3, 4, 2).contiguous()
    return seq.reshape(nstacks, F, half, 4).transpose(-1, -2).contiguous()


def fused_butterfly_multiply(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    increasing_stride: bool,
    *,
    out_size: int,
    transpose: bool,
    conjugate: bool,
) -> torch.Tensor:
    """Same contract as :func:`twiddle.ops.butterfly_multiply` (arguments already validated, ``x`` is 2-D)."""
    n = 1 << twiddle.shape[2]
    dtype = torch.promote_types(x.dtype, twiddle.dtype)
    t = twiddle.to(dtype)
    if conjugate and t.is_complex():
        t = t.conj()
    seq, strides = _prepare(t, increasing_stride, transpose)
    tw = _to_soa(seq)
    xx = x.to(dtype)
    if dtype.is_complex:
        xx = torch.view_as_real(xx.resolve_conj().contiguous())
    y = torch.ops.twiddle.butterfly_apply(tw, xx, strides, n, transpose, transpose, out_size)
    return torch.view_as_complex(y) if dtype.is_complex else y
