"""The butterfly multiply: one public entry point that dispatches to the best available kernel.

Today the only kernel is the pure-PyTorch reference (:mod:`twiddle.ops.reference`); faster kernels plug in here
and are tested against it.
"""

from __future__ import annotations

import torch

from .reference import butterfly_multiply_reference

__all__ = ["butterfly_multiply", "butterfly_multiply_reference"]


def butterfly_multiply(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    increasing_stride: bool = True,
    *,
    out_size: int | None = None,
    transpose: bool = False,
    conjugate: bool = False,
) -> torch.Tensor:
    """Apply the butterfly map stored in ``twiddle`` to the last dimension of ``x``.

    Let ``(nstacks, nblocks, log_n, n // 2, 2, 2)`` be the twiddle shape (see :mod:`twiddle._layout`) and
    ``B_k = F_{k,last} ... F_{k,0}`` the product of the factors of stack ``k`` over all blocks.

    * ``transpose=False``: ``x`` is ``(..., m)`` with ``m <= n``. It is zero-padded to ``n``; every stack applies
      its butterfly; the results are concatenated to ``nstacks * n`` values and the first ``out_size``
      (default all) are returned: ``y = [B_0; ...; B_{nstacks-1}] · pad(x)``.
    * ``transpose=True``: the exact transpose of that map. ``x`` is ``(..., m)`` with ``m <= nstacks * n``,
      zero-padded to ``nstacks * n`` and split into stacks; ``y = Σ_k B_kᵀ x_k``, truncated to ``out_size``
      (default ``n``).
    * ``conjugate=True`` conjugates every twiddle (with ``transpose=True``: the Hermitian adjoint).

    Real ``x`` with complex twiddles (or the reverse) is promoted to the complex dtype, following torch's rules;
    any number of leading dimensions is allowed. Returns ``(..., out_size)``.
    """
    return butterfly_multiply_reference(
        twiddle, x, increasing_stride, out_size=out_size, transpose=transpose, conjugate=conjugate
    )
