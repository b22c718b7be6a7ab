"""Forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``) through the fast kernels.

The fused CPU op's autograd kernel is C++ and has no tangent rule, so under forward mode it would drop the tangent.
While forward mode is the only transform active (one ``torch.func.jvp`` level, or a ``forward_ad.dual_level``
without ``torch.func``), a real multiply on the CPU goes through :class:`_ForwardModeMultiply` instead (complex
ones and CUDA tensors run the reference, see :func:`fits`), whose tangent rule is

    ẏ = M(t) ẋ + (∂M/∂t · ṫ) x,

the first term the same fast multiply applied to the tangent (the map is linear in ``x``), the second the
reference multiply's forward mode, computed only when the twiddles carry a tangent (``torch.func.jacfwd`` of the
parameters, say). The bias is added outside, by torch. Its reverse-mode rule returns
:func:`twiddle.ops._higher_order.differentiable_gradients`. Every other transform runs the reference multiply.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad

from . import fused_cpu
from ._higher_order import differentiable_gradients
from .reference import _partial_handle, reference_multiply_permuted

__all__ = ["forward_mode_only", "fits", "multiply"]


_JVP = torch._C._functorch.TransformType.Jvp


def forward_mode_only() -> bool:
    """True when the active transforms are forward-mode AD and nothing else."""
    stack = torch._C._functorch.get_interpreter_stack()
    if not stack:
        return _forward_ad._current_level >= 0
    return len(stack) == 1 and stack[0].key() == _JVP  # (torch.func.jvp enters a dual level of its own)


def fits(kernel: str, twiddle: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the wrapper serves these tensors: the fused CPU kernel, real float32/float64, one dtype (no
    promotion or low-precision casts). Complex tensors and the Triton path run the reference: a reverse pass through
    a tangent computed here tripped an internal assertion of torch's forward-mode views (torch 2.13) for complex
    tensors, and for the Triton op's own backward on transposed calls (seen in Triton's interpreter)."""
    return kernel == "fused-cpu" and x.dtype == twiddle.dtype and twiddle.dtype in (torch.float32, torch.float64)


def _run(twiddle, x, increasing_stride, transpose, conjugate, out, in_perm, out_perm):
    """The fused CPU kernel's forward, no autograd: ``(batch, m) -> (batch, out)``."""
    return fused_cpu.butterfly_multiply_op(twiddle, x, None, increasing_stride, transpose, conjugate, out, in_perm,
                                           out_perm)


def _along_twiddles(twiddle, d_twiddle, x, increasing_stride, transpose, conjugate, out, in_perm, out_perm):
    """``(∂M/∂t · d_twiddle) x`` by the reference multiply: the derivative along the twiddles, ``x`` fixed. Under
    ``torch.func.jvp`` by a nested ``torch.func.jvp``; under ``forward_ad``, which cannot nest, as two reverse-mode
    products: ``u ↦ Jᵀu`` is linear, and its gradient along ``d_twiddle`` with respect to ``u`` is ``J d_twiddle``."""

    def apply(t):
        return reference_multiply_permuted(t, x, increasing_stride, out, transpose, conjugate, in_perm, out_perm)

    if twiddle.numel() == 0:  # (n = 1: no factor, nothing depends on the twiddles)
        return x.new_zeros(x.shape[0], out, dtype=torch.promote_types(twiddle.dtype, x.dtype))
    if torch._C._functorch.get_interpreter_stack():
        return torch.func.jvp(apply, (twiddle,), (d_twiddle,))[1]
    # (the products stay differentiable in the twiddles, x and the tangent, for a reverse-mode pass through it)
    with torch.enable_grad():
        t = _partial_handle(twiddle)
        y = apply(t)
        u = torch.zeros_like(y, requires_grad=True)
        (transposed,) = torch.autograd.grad(y, t, u, create_graph=True)
        (along,) = torch.autograd.grad(transposed, u, d_twiddle, create_graph=torch.is_grad_enabled())
    return along


class _ForwardModeMultiply(torch.autograd.Function):
    """``y = M(twiddle) x[:, in_perm]`` then ``[:, out_perm]`` by the fused CPU kernel, with a tangent rule (see the
    module docstring); 2-D ``x``."""

    @staticmethod
    def forward(twiddle, x, increasing_stride, transpose, conjugate, out, in_perm, out_perm):
        return _run(twiddle, x, increasing_stride, transpose, conjugate, out, in_perm, out_perm)

    @staticmethod
    def setup_context(ctx, inputs, output):
        twiddle, x, increasing_stride, transpose, conjugate, out, in_perm, out_perm = inputs
        ctx.set_materialize_grads(False)  # (an input without a tangent gets None in jvp, not zeros)
        ctx.save_for_forward(twiddle, x)
        ctx.save_for_backward(twiddle, x)
        ctx.perms = (in_perm, out_perm)
        ctx.flags = (increasing_stride, transpose, conjugate, out)

    @staticmethod
    def jvp(ctx, d_twiddle, d_x, *_):
        twiddle, x = ctx.saved_tensors
        in_perm, out_perm = ctx.perms
        increasing_stride, transpose, conjugate, out = ctx.flags
        tangent = None
        if d_x is not None:
            tangent = _run(twiddle, d_x, increasing_stride, transpose, conjugate, out, in_perm, out_perm)
        if d_twiddle is not None:
            part = _along_twiddles(twiddle, d_twiddle, x, increasing_stride, transpose, conjugate, out, in_perm,
                                   out_perm)
            tangent = part if tangent is None else tangent + part
        if tangent is None:
            dtype = torch.promote_types(twiddle.dtype, x.dtype)
            tangent = x.new_zeros(x.shape[0], out, dtype=dtype)
        return tangent

    @staticmethod
    def backward(ctx, grad):
        twiddle, x = ctx.saved_tensors
        in_perm, out_perm = ctx.perms
        increasing_stride, transpose, conjugate, out = ctx.flags
        g_twiddle, g_x = differentiable_gradients(
            twiddle, x, grad, increasing_stride, transpose, conjugate, out, in_perm, out_perm,
            need_twiddle=ctx.needs_input_grad[0], need_x=ctx.needs_input_grad[1],
        )
        return g_twiddle, g_x, None, None, None, None, None, None


def multiply(twiddle, x, increasing_stride, m, out, transpose, conjugate, bias, in_perm, out_perm):
    """:func:`twiddle.ops._multiply_checked` for a call under forward-mode AD alone: ``x`` ``(..., m)`` ->
    ``(..., out)`` by the fused CPU kernel (for tensors where :func:`fits` holds), with tangents."""
    x2 = x if x.ndim == 2 else x.reshape(-1, m)
    y = _ForwardModeMultiply.apply(twiddle, x2, increasing_stride, transpose, conjugate, out, in_perm, out_perm)
    if x.ndim != 2:
        y = y.reshape(*x.shape[:-1], out)
    return y if bias is None else y + bias
