"""``torch.func`` and forward-mode AD through the fused CPU kernel.

The fused op's autograd kernel is C++: functorch cannot see through it (``grad``, ``jacrev`` fail), and forward mode
would drop the tangent. ``twiddle.ops._choose_kernel`` therefore runs the reference multiply under transforms,
except in three cases served here (real CPU tensors of one dtype, see :func:`fits`):

* Forward mode alone (one ``torch.func.jvp`` level, or a ``forward_ad.dual_level`` without ``torch.func``):
  :class:`_ForwardModeMultiply`, whose tangent rule is

      ẏ = M(t) ẋ + (∂M/∂t · ṫ) x,

  the first term the same fast multiply applied to the tangent (the map is linear in ``x``), the second the
  reference multiply's forward mode, computed only when the twiddles carry a tangent. Its reverse-mode rule returns
  :func:`twiddle.ops._higher_order.differentiable_gradients`.
* One ``torch.func.grad`` level with any ``vmap`` levels (per-sample gradients), parameters not tracked by autograd
  outside: :class:`_GradTransformMultiply`, forward and backward by the fused ops, which ``vmap`` batches through
  their rules (``twiddle.ops.fused_cpu``: the backward's gives each vmapped entry its own twiddle gradient, all
  entries in one call of the grouped backward op).
* ``torch.vmap`` alone where no gradient is needed: the fused op as it is, through its batching rule (not here).

The bias is added outside the wrappers, by torch.
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


_GRAD = torch._C._functorch.TransformType.Grad
_VMAP = torch._C._functorch.TransformType.Vmap


def single_grad_with_vmaps(*tensors: torch.Tensor | None) -> bool:
    """True when the active transforms are one ``torch.func.grad`` (or ``vjp``) level and any number of ``vmap``
    levels and nothing else (``vmap(grad(loss))``: per-sample gradients), and none of ``tensors`` is tracked by
    autograd outside the transforms (``grad(loss)(params, x)`` with parameters that require grad, as in MAML written
    with ``torch.func``, differentiates the gradients again from outside)."""
    stack = torch._C._functorch.get_interpreter_stack()
    if not stack or _forward_ad._current_level >= 0:
        return False
    kinds = [level.key() for level in stack]
    if kinds.count(_GRAD) != 1 or not all(k in (_GRAD, _VMAP) for k in kinds):
        return False
    return not torch.is_grad_enabled() or not any(t is not None and _base(t).requires_grad for t in tensors)


def _base(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor under every ``torch.func`` wrapper of ``t``."""
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


class _GradTransformMultiply(torch.autograd.Function):
    """The multiply under one ``torch.func.grad`` level (and any ``vmap`` levels): forward and backward by the fused
    op, which ``vmap`` batches through its rules (the backward's rule gives each vmapped entry its own twiddle
    gradient: per-sample gradients). Its gradients are not differentiable again: used only where no further
    transform could differentiate them (see :func:`single_grad_with_vmaps`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(twiddle, x, increasing_stride, transpose, conjugate, out, in_perm, out_perm):
        return _run(twiddle, x, increasing_stride, transpose, conjugate, out, in_perm, out_perm)

    @staticmethod
    def setup_context(ctx, inputs, output):
        twiddle, x, increasing_stride, transpose, conjugate, out, in_perm, out_perm = inputs
        ctx.save_for_backward(twiddle, x)
        ctx.perms = (in_perm, out_perm)
        ctx.flags = (increasing_stride, transpose, conjugate, out)

    @staticmethod
    def backward(ctx, grad):
        twiddle, x = ctx.saved_tensors
        in_perm, out_perm = ctx.perms
        increasing_stride, transpose, conjugate, out = ctx.flags
        g_twiddle, g_x, _ = torch.ops.twiddle.butterfly_multiply_backward(
            twiddle, x, grad, increasing_stride, transpose, conjugate, out, False, in_perm, out_perm
        )
        return g_twiddle, g_x, None, None, None, None, None, None


def grad_transform_multiply(twiddle, x, increasing_stride, m, out, transpose, conjugate, bias, in_perm, out_perm):
    """:func:`multiply`'s counterpart under :func:`single_grad_with_vmaps` (real CPU tensors of one dtype)."""
    x2 = x if x.ndim == 2 else x.reshape(-1, m)
    y = _GradTransformMultiply.apply(twiddle, x2, increasing_stride, transpose, conjugate, out, in_perm, out_perm)
    if x.ndim != 2:
        y = y.reshape(*x.shape[:-1], out)
    return y if bias is None else y + bias
