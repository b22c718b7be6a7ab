"""The multiply's first derivatives as differentiable tensor operations: what the fast kernels' backward returns
when it runs under ``create_graph=True`` (gradient penalties, Hessian-vector products, second-order meta-learning).

For ``y = z[:, out_perm]`` with ``z = M x[:, in_perm]`` (``M`` the butterfly map with its padding, stacks,
truncation, transpose and conjugation), the input gradient is the adjoint applied to the incoming gradient ``g``:

    dL/dx = (Mᴴ g[:, out_perm⁻¹])[:, in_perm⁻¹],

which is the multiply again with ``transpose`` toggled, ``conjugate`` toggled for complex twiddles, and the
permutations inverted and swapped. That call runs on the fast kernel and is itself differentiable (its own
backward comes back here for third derivatives), so a penalty on the input gradient costs a few fast multiplies.
The twiddle gradient has no such closed form; it comes from the reference multiply's autograd
(:func:`twiddle.ops.reference.reference_multiply_vjp`), and only when the backward asks for it.
"""

from __future__ import annotations

import torch

from ..permutations import invert_permutation
from .reference import reference_multiply_vjp

__all__ = ["differentiable_gradients"]


def differentiable_gradients(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    grad: torch.Tensor,
    increasing_stride: bool,
    transpose: bool,
    conjugate: bool,
    out_size: int,
    in_perm: torch.Tensor | None,
    out_perm: torch.Tensor | None,
    *,
    need_twiddle: bool,
    need_x: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(dL/dtwiddle, dL/dx)`` for ``dL/dy = grad`` (each None where not asked for) as differentiable functions of
    ``twiddle``, ``x`` and ``grad``: 2-D ``x`` ``(batch, m)`` and ``grad`` ``(batch, out_size)``, complex tensors as
    complex (not real views), permutations checked int64 or None. A real ``x`` with complex twiddles gets the real
    part of its gradient, as torch's convention has it."""
    from . import _multiply_checked  # (the dispatcher imports the kernels, which import this module)

    g_x = None
    if need_x:
        adjoint_in = None if out_perm is None else invert_permutation(out_perm)
        adjoint_out = None if in_perm is None else invert_permutation(in_perm)
        g_x = _multiply_checked(twiddle, grad, increasing_stride, out_size, x.shape[-1], not transpose,
                                conjugate != twiddle.is_complex(), None, adjoint_in, adjoint_out)
        if g_x.is_complex() and not x.is_complex():
            g_x = g_x.real
    g_twiddle = None
    if need_twiddle:
        g_twiddle, _ = reference_multiply_vjp(twiddle, x, grad, increasing_stride, transpose, conjugate, out_size,
                                              in_perm, out_perm, need_x=False)
    return g_twiddle, g_x
