"""The fused CPU kernel as one autograd-visible torch op (``torch.ops.twiddle.butterfly_multiply``).

The C++ op takes the twiddle in the user's layout ``(nstacks, nblocks, log_n, n/2, 2, 2)`` (complex twiddles
and data as real views with a trailing 2) and handles transpose, conjugate, padding, stacks and truncation
itself, and adds an optional bias in its final store, so autograd and ``torch.compile`` see a single op. Its
autograd kernel is C++ (no Python on the hot path). Backward recomputes activations inside the kernel and returns
both gradients in one pass. Under ``create_graph=True`` (double backward) it asks for
``torch.ops.twiddle.butterfly_multiply_backward_differentiable`` instead, registered here: the same gradients as
differentiable operations (:mod:`twiddle.ops._higher_order`: the input's by the fast multiply's adjoint, the
twiddles' by the reference's autograd), which autograd can differentiate again.
"""

from __future__ import annotations

import torch

from . import _cpu_build
from ._higher_order import differentiable_gradients
from .reference import _partial_handle

__all__ = ["available", "fused_butterfly_multiply", "fused_relaxed_permute", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
_registered = False
_op = None  # torch.ops.twiddle.butterfly_multiply.default, once the kernel is loaded
_eager = None  # the same op through the extension's pybind11 entry (csrc/eager_entry.cpp), where it loaded
_has_torch_function = torch.overrides.has_torch_function


def _register() -> None:
    """Fake (meta) implementations for torch.compile (the butterfly's autograd kernel is registered in C++)."""
    global _registered, _op, _eager
    if _registered:
        return
    _op = torch.ops.twiddle.butterfly_multiply.default
    _eager = getattr(_cpu_build.module(), "butterfly_multiply", None)

    @torch.library.register_fake("twiddle::butterfly_multiply")
    def _(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size, in_perm=None, out_perm=None):
        return x.new_empty((x.shape[0], out_size) + ((2,) if twiddle.dim() == 7 else ()))

    @torch.library.register_fake("twiddle::butterfly_multiply_backward")
    def _(twiddle, x, grad, increasing_stride, transpose, conjugate, out_size, bias_grad=False, in_perm=None,
          out_perm=None):
        return torch.empty_like(twiddle), torch.empty_like(x), grad.new_empty((out_size if bias_grad else 0,)
                                                                               + tuple(grad.shape[2:]))

    @torch.library.register_fake("twiddle::butterfly_multiply_backward_grouped")
    def _(twiddle, x, grad, increasing_stride, transpose, conjugate, out_size, group_rows, bias_grad=False,
          in_perm=None, out_perm=None):
        groups = x.shape[0] // group_rows
        return (twiddle.new_empty((groups, *twiddle.shape)), torch.empty_like(x),
                grad.new_empty((groups, out_size if bias_grad else 0) + tuple(grad.shape[2:])))

    torch.library.impl("twiddle::butterfly_multiply_backward_differentiable", "CompositeImplicitAutograd")(
        _differentiable_backward
    )
    torch.library.register_vmap("twiddle::butterfly_multiply", _batched_multiply)
    torch.library.register_vmap("twiddle::butterfly_multiply_backward", _batched_multiply_backward)
    torch.library.register_vmap("twiddle::butterfly_multiply_backward_grouped", _batched_backward_grouped)

    @torch.library.register_fake("twiddle::relaxed_permute")
    def _(x, probs):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("twiddle::relaxed_permute_backward")
    def _(x, probs, grad):
        return (torch.empty_like(x, memory_format=torch.contiguous_format),
                torch.empty_like(probs, memory_format=torch.contiguous_format))

    _registered = True


def _complex_view(t: torch.Tensor) -> torch.Tensor:
    """A real view with a trailing (re, im) pair as the complex tensor it holds (differentiable)."""
    if t.stride(-1) != 1 or any(st % 2 for st in t.stride()[:-1]):
        t = t.contiguous()
    return torch.view_as_complex(t)


def _differentiable_backward(twiddle, x, grad, increasing_stride, transpose, conjugate, out_size, bias_grad=False,
                             in_perm=None, out_perm=None, twiddle_grad=True, x_grad=True):
    """``twiddle::butterfly_multiply_backward_differentiable``: ``twiddle::butterfly_multiply_backward``'s results
    (same arguments: real views for complex tensors) as differentiable tensor operations
    (:func:`twiddle.ops._higher_order.differentiable_gradients`), which the C++ autograd kernel calls when the
    backward runs with ``create_graph=True``. ``twiddle_grad`` / ``x_grad``: whether that backward needs the
    gradient (an empty tensor stands for one it does not)."""
    complex_ = twiddle.dim() == 7
    grad = grad.to(x.dtype)
    tw = _complex_view(twiddle) if complex_ else twiddle
    xv = _complex_view(x) if x.dim() == 3 else x
    g = _complex_view(grad) if complex_ else grad
    g_twiddle, g_x = differentiable_gradients(tw, xv, g, increasing_stride, transpose, conjugate, out_size, in_perm,
                                              out_perm, need_twiddle=twiddle_grad, need_x=x_grad)
    # (the gradient of conjugated twiddles can come back as a lazily conjugated tensor)
    if g_twiddle is None:
        g_twiddle = twiddle.new_empty(0)
    elif complex_:
        g_twiddle = torch.view_as_real(g_twiddle.resolve_conj())
    if g_x is None:
        g_x = x.new_empty(0)
    elif g_x.is_complex():
        g_x = torch.view_as_real(g_x.resolve_conj())
    g_bias = grad.sum(0) if bias_grad else grad.new_zeros((0,) + tuple(grad.shape[2:]))
    return g_twiddle, g_x, g_bias


def _batched_multiply(info, in_dims, twiddle, x, bias, increasing_stride, transpose, conjugate, out_size, in_perm=None,
                      out_perm=None):
    """``torch.vmap``'s rule for ``twiddle::butterfly_multiply`` (the dispatcher runs the op this way only where no
    gradient is needed: see ``twiddle.ops._choose_kernel``). A batched ``x`` with everything else shared is one call
    on ``vmapped × batch`` rows; anything else batched (an ensemble's twiddles, say) is a call per vmapped entry."""
    op = torch.ops.twiddle.butterfly_multiply.default
    dims = tuple(in_dims) + (None,) * (9 - len(in_dims))  # one per argument, non-tensors included
    twiddle_dim, x_dim, bias_dim, in_dim, out_dim = dims[0], dims[1], dims[2], dims[7], dims[8]
    if x_dim is not None and twiddle_dim is None and bias_dim is None and in_dim is None and out_dim is None:
        rows = x.movedim(x_dim, 0)
        y = op(twiddle, rows.reshape(-1, *rows.shape[2:]), bias, increasing_stride, transpose, conjugate, out_size,
               in_perm, out_perm)
        return y.reshape(rows.shape[0], rows.shape[1], *y.shape[1:]), 0

    def entry(t, dim, i):
        return t if dim is None else t.select(dim, i)

    results = [
        op(entry(twiddle, twiddle_dim, i), entry(x, x_dim, i), entry(bias, bias_dim, i), increasing_stride, transpose,
           conjugate, out_size, entry(in_perm, in_dim, i), entry(out_perm, out_dim, i))
        for i in range(info.batch_size)
    ]
    return torch.stack(results), 0


def _batched_multiply_backward(info, in_dims, twiddle, x, grad, increasing_stride, transpose, conjugate, out_size,
                               bias_grad=False, in_perm=None, out_perm=None):
    """``torch.vmap``'s rule for ``twiddle::butterfly_multiply_backward``: every vmapped entry gets its own twiddle
    (and bias) gradient, as per-sample gradients (``vmap(grad)``) and ``jacrev`` need.

    With shared twiddles and permutations (the usual case) it is one call of
    ``twiddle::butterfly_multiply_backward_grouped`` on all entries' rows, each entry's rows a group whose
    gradients are those of a call on that entry alone; otherwise a call per entry."""
    dims = tuple(in_dims) + (None,) * (10 - len(in_dims))
    twiddle_dim, x_dim, grad_dim, in_dim, out_dim = dims[0], dims[1], dims[2], dims[8], dims[9]
    size = info.batch_size
    if twiddle_dim is None and in_dim is None and out_dim is None:
        xs = x.movedim(x_dim, 0) if x_dim is not None else x.expand(size, *x.shape)
        gs = grad.movedim(grad_dim, 0) if grad_dim is not None else grad.expand(size, *grad.shape)
        rows = xs.shape[1]
        if rows == 0:  # (no rows: zero gradients)
            return (twiddle.new_zeros((size, *twiddle.shape)), xs.new_zeros(xs.shape),
                    grad.new_zeros((size, out_size if bias_grad else 0) + tuple(gs.shape[3:]))), (0, 0, 0)
        g_twiddle, g_x, g_bias = torch.ops.twiddle.butterfly_multiply_backward_grouped.default(
            twiddle, xs.reshape(size * rows, *xs.shape[2:]), gs.reshape(size * rows, *gs.shape[2:]),
            increasing_stride, transpose, conjugate, out_size, rows, bias_grad, in_perm, out_perm)
        return (g_twiddle, g_x.reshape(size, rows, *g_x.shape[1:]), g_bias), (0, 0, 0)
    op = torch.ops.twiddle.butterfly_multiply_backward.default

    def entry(t, dim, i):
        return t if dim is None else t.select(dim, i)

    results = [
        op(entry(twiddle, dims[0], i), entry(x, dims[1], i), entry(grad, dims[2], i), increasing_stride, transpose,
           conjugate, out_size, bias_grad, entry(in_perm, dims[8], i), entry(out_perm, dims[9], i))
        for i in range(size)
    ]
    return tuple(torch.stack(parts) for parts in zip(*results, strict=True)), (0, 0, 0)


def _batched_backward_grouped(info, in_dims, twiddle, x, grad, increasing_stride, transpose, conjugate, out_size,
                              group_rows, bias_grad=False, in_perm=None, out_perm=None):
    """``torch.vmap``'s rule for ``twiddle::butterfly_multiply_backward_grouped`` (reached under nested vmaps): a
    call per vmapped entry."""
    op = torch.ops.twiddle.butterfly_multiply_backward_grouped.default
    dims = tuple(in_dims) + (None,) * (11 - len(in_dims))

    def entry(t, dim, i):
        return t if dim is None else t.select(dim, i)

    results = [
        op(entry(twiddle, dims[0], i), entry(x, dims[1], i), entry(grad, dims[2], i), increasing_stride, transpose,
           conjugate, out_size, group_rows, bias_grad, entry(in_perm, dims[9], i), entry(out_perm, dims[10], i))
        for i in range(info.batch_size)
    ]
    return tuple(torch.stack(parts) for parts in zip(*results, strict=True)), (0, 0, 0)


def butterfly_multiply_op(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    increasing_stride: bool,
    transpose: bool,
    conjugate: bool,
    out_size: int,
    in_perm: torch.Tensor | None = None,
    out_perm: torch.Tensor | None = None,
) -> torch.Tensor:
    """``torch.ops.twiddle.butterfly_multiply`` (the kernel loaded). ``twiddle``, ``x`` (2-D) and ``bias`` share
    one dtype of :data:`SUPPORTED_DTYPES`, except that with complex twiddles ``x`` may be real of the same
    precision (read as ``x + 0i``, no complex copy); complex tensors run on their real views. ``in_perm`` (int64, a
    permutation of ``0..x.shape[1]-1`` or None): the kernel reads ``x[:, in_perm]`` (gathered while it loads);
    ``out_perm`` (int64, a permutation of ``0..out_size-1`` or None): it returns ``z[:, out_perm] + bias``.

    Eager calls go through the extension's own entry (``csrc/eager_entry.cpp``: typed arguments, the same op
    through the same dispatcher, the complex views taken in C++; about 2 us less per real call than ``torch.ops``'
    schema binding, about 10 us less per complex one). ``torch.ops`` (its overload resolved when the kernel was
    loaded) serves torch.compile, which traces it, and arguments or modes with ``__torch_function__`` overrides,
    which the entry would not consult."""
    if (
        _eager is not None
        and not torch.compiler.is_compiling()
        and not _has_torch_function((twiddle, x, bias, in_perm, out_perm))
    ):
        return _eager(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size, in_perm, out_perm)
    if twiddle.is_complex():
        y = _op(
            torch.view_as_real(twiddle.resolve_conj()),
            torch.view_as_real(x.resolve_conj()) if x.is_complex() else x,
            None if bias is None else torch.view_as_real(bias.resolve_conj()),
            increasing_stride,
            transpose,
            conjugate,
            out_size,
            in_perm,
            out_perm,
        )
        return torch.view_as_complex(y)
    return _op(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size, in_perm, out_perm)


class _RelaxedPermute(torch.autograd.Function):
    """``torch.ops.twiddle.relaxed_permute`` with its fused backward; under ``create_graph=True`` the backward
    differentiates the PyTorch composition instead, so that its results can be differentiated again."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, probs)
        return torch.ops.twiddle.relaxed_permute(x, probs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, probs = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return torch.ops.twiddle.relaxed_permute_backward(x, probs, grad)
        from ..factorize.gradient import _relaxed_permute_reference  # (imported here: factorize imports ops)

        xi, pi = _partial_handle(x), _partial_handle(probs)
        return torch.autograd.grad(_relaxed_permute_reference(xi, pi), (xi, pi), grad, create_graph=True)


def fused_relaxed_permute(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The relaxed permutation (:func:`twiddle.factorize.gradient.relaxed_permute`) by the fused kernel: ``x``
    ``(T, B, n)`` real float32/float64 on the CPU, ``n`` a power of two >= 4, ``probs`` ``(T, levels, 3)`` (cast to
    ``x``'s dtype). Differentiable in both, to any order (see :class:`_RelaxedPermute`)."""
    return _RelaxedPermute.apply(x, probs.to(x.dtype))


def is_loaded() -> bool:
    """True when the kernel is already loaded (never builds; safe while torch.compile traces)."""
    return _registered


def available() -> bool:
    """True when the fused CPU kernel is built and registered (builds it on first call)."""
    if _registered:
        return True
    ok = _cpu_build.load()
    if ok:
        _register()
    return ok


def fused_butterfly_multiply(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    increasing_stride: bool,
    *,
    out_size: int,
    transpose: bool,
    conjugate: bool,
    bias: torch.Tensor | None = None,
    in_perm: torch.Tensor | None = None,
    out_perm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`twiddle.ops.butterfly_multiply`; arguments already validated, ``x`` 2-D, and
    ``twiddle``, ``x`` and ``bias`` (``(out_size,)`` or None) of one dtype in :data:`SUPPORTED_DTYPES`."""
    return butterfly_multiply_op(twiddle, x, bias, increasing_stride, transpose, conjugate, out_size, in_perm,
                                 out_perm)
