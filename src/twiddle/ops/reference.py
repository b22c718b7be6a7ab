"""Reference butterfly multiply in pure PyTorch: the specification every faster kernel is tested against.

Autograd provides the backward.  The loop runs over factors only (``nblocks * log_n`` iterations); each factor
is one vectorized elementwise update over the whole batch, every stack and every 2×2 block.
"""

from __future__ import annotations

import torch

from .._layout import block_directions, check_twiddle, factor_stride
from ..permutations import gather_last

__all__ = [
    "butterfly_multiply_reference",
    "reference_multiply_checked",
    "reference_multiply_permuted",
    "reference_multiply_vjp",
    "apply_factor",
    "check_multiply_args",
]


def apply_factor(x: torch.Tensor, factor: torch.Tensor, stride: int) -> torch.Tensor:
    """Apply one butterfly factor.

    Args:
        x: ``(batch, nstacks, n)``.
        factor: ``(nstacks, n // 2, 2, 2)``; block ``i`` acts on positions ``p = 2(i - i % s) + i % s`` and ``p + s``.
        stride: ``s``, a power of two below ``n``.

    Returns:
        ``(batch, nstacks, n)``: ``y[p] = t00 x[p] + t01 x[p+s]``, ``y[p+s] = t10 x[p] + t11 x[p+s]``.
    """
    batch, nstacks, n = x.shape
    groups = n // (2 * stride)
    # position p = 2*s*g + h*s + r  <->  view index (g, h, r); block index i = s*g + r.
    # (unbind, not indexing: the backward of an index allocates and zero-fills a tensor of the whole input's size
    # per index, while unbind's stacks the pieces in one go: the reference's backward, and its double backward
    # above all, spent most of their time filling zeros)
    x0, x1 = x.reshape(batch, nstacks, groups, 2, stride).unbind(3)
    # each entry contiguous (a copy of n / 2 numbers): broadcasting a stride-4 view against the batch was a slow
    # path of the elementwise kernels, forward and backward
    t00, t01, t10, t11 = factor.reshape(nstacks, groups, stride, 4).permute(3, 0, 1, 2).contiguous().unbind(0)
    y0 = t00 * x0 + t01 * x1
    y1 = t10 * x0 + t11 * x1
    return torch.stack((y0, y1), dim=3).reshape(batch, nstacks, n)


def _run_blocks(x: torch.Tensor, twiddle: torch.Tensor, increasing_stride: bool) -> torch.Tensor:
    nblocks, log_n = twiddle.shape[1], twiddle.shape[2]
    for block, increasing in enumerate(block_directions(nblocks, increasing_stride)):
        for f in range(log_n):
            x = apply_factor(x, twiddle[:, block, f], factor_stride(f, log_n, increasing))
    return x


def check_multiply_args(
    twiddle: torch.Tensor, x: torch.Tensor, transpose: bool, out_size: int | None
) -> tuple[torch.Size, int, int]:
    """Validate the multiply's arguments; return ``(lead_shape, m, out_size)``: the leading dimensions of ``x``,
    its number of features and the output size (``out_size`` or its default)."""
    nstacks, _, _, n = check_twiddle(twiddle)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (the feature dimension), got a scalar")
    lead, m = x.shape[:-1], x.shape[-1]
    in_limit = nstacks * n if transpose else n
    out_limit = n if transpose else nstacks * n
    if m > in_limit:
        raise ValueError(
            f"x has {m} features in its last dimension but this butterfly takes at most {in_limit}"
            f" (n={n}, nstacks={nstacks}, transpose={transpose})"
        )
    out = out_limit if out_size is None else int(out_size)
    if not 1 <= out <= out_limit:
        raise ValueError(f"out_size must be in [1, {out_limit}], got {out_size}")
    if x.device != twiddle.device:
        raise ValueError(f"x is on {x.device} but twiddle is on {twiddle.device}; move them to the same device")
    return lead, m, out


def butterfly_multiply_reference(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    increasing_stride: bool = True,
    *,
    out_size: int | None = None,
    transpose: bool = False,
    conjugate: bool = False,
) -> torch.Tensor:
    """Multiply ``x`` by the butterfly map stored in ``twiddle`` (see :func:`twiddle.ops.butterfly_multiply`)."""
    lead, m, out = check_multiply_args(twiddle, x, transpose, out_size)
    return reference_multiply_checked(twiddle, x, increasing_stride, lead, m, out, transpose, conjugate)


def reference_multiply_checked(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    increasing_stride: bool,
    lead: torch.Size,
    m: int,
    out: int,
    transpose: bool,
    conjugate: bool,
) -> torch.Tensor:
    """:func:`butterfly_multiply_reference` with its arguments already validated (``lead``, ``m``, ``out`` as
    returned by :func:`check_multiply_args`)."""
    nstacks, nblocks, log_n = twiddle.shape[:3]
    n = 1 << log_n
    in_limit = nstacks * n if transpose else n
    dtype = torch.promote_types(x.dtype, twiddle.dtype)
    t = twiddle.to(dtype)
    if conjugate and t.is_complex():
        t = t.conj()
    x = x.to(dtype).reshape(-1, m)
    batch = x.shape[0]
    if m < in_limit:
        x = torch.cat((x, x.new_zeros(batch, in_limit - m)), dim=-1)

    if not transpose:
        y = _run_blocks(x.unsqueeze(1).expand(batch, nstacks, n), t, increasing_stride)
        y = y.reshape(batch, nstacks * n)
    else:
        # (B_{k-1} ... B_0)^T = B_0^T ... B_{k-1}^T: reverse blocks and factors, transpose each 2x2 block.
        # The reversed last block runs against its original direction; alternation then continues.
        last_increasing = block_directions(nblocks, increasing_stride)[-1]
        t_rev = t.flip(1, 2).transpose(-1, -2)
        y = _run_blocks(x.reshape(batch, nstacks, n), t_rev, not last_increasing).sum(dim=1)
    return y[:, :out].reshape(*lead, out)


def reference_multiply_permuted(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    increasing_stride: bool,
    out: int,
    transpose: bool,
    conjugate: bool,
    in_perm: torch.Tensor | None = None,
    out_perm: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B · x[..., in_perm])[..., out_perm]`` by the reference (arguments validated; ``x`` ``(..., m)``, the result
    ``(..., out)``): the input and output permutations gathered around :func:`reference_multiply_checked`."""
    if in_perm is not None:
        x = gather_last(x, in_perm)
    y = reference_multiply_checked(twiddle, x, increasing_stride, x.shape[:-1], x.shape[-1], out, transpose,
                                   conjugate)
    return y if out_perm is None else gather_last(y, out_perm)


def reference_multiply_vjp(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    grad: torch.Tensor,
    increasing_stride: bool,
    transpose: bool,
    conjugate: bool,
    out_size: int,
    in_perm: torch.Tensor | None = None,
    out_perm: torch.Tensor | None = None,
    *,
    need_twiddle: bool = True,
    need_x: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The multiply's first derivatives as a differentiable function of ``twiddle``, ``x`` and ``grad``, from the
    reference's autograd (``create_graph=True``), so that autograd can differentiate them again.

    For ``y = z[:, out_perm]`` with ``z`` the butterfly applied to ``x[:, in_perm]`` (2-D ``x`` ``(batch, m)``,
    ``grad`` ``(batch, out_size)``, arguments validated), returns ``(dL/dtwiddle, dL/dx)`` for ``dL/dy = grad``,
    each None where not asked for. A real ``x`` with complex twiddles gets a real gradient."""
    wanted = [need_twiddle, need_x]
    if not any(wanted):
        return None, None
    with torch.enable_grad():
        t, xi = _partial_handle(twiddle), _partial_handle(x)
        y = reference_multiply_permuted(t, xi, increasing_stride, out_size, transpose, conjugate, in_perm, out_perm)
        inputs = [v for v, w in zip((t, xi), wanted, strict=True) if w]
        # (n = 1: no factor uses the twiddles, whose gradient is then zero)
        grads = iter(torch.autograd.grad(y, inputs, grad, create_graph=True, allow_unused=True,
                                         materialize_grads=True))
    return tuple(next(grads) if w else None for w in wanted)  # type: ignore[return-value]


def _partial_handle(t: torch.Tensor) -> torch.Tensor:
    """A new tensor equal to ``t`` to take a gradient with respect to: a partial derivative, along this argument
    only (``t`` itself would give the total derivative where another argument depends on ``t``, as an incoming
    gradient does on the twiddles), still connected to ``t`` for higher derivatives; where ``t`` needs no
    derivative, a detached leaf."""
    return t.view_as(t) if t.requires_grad else t.detach().requires_grad_()
