"""Running a fixed permutation and the butterfly after it as one kernel call.

A :class:`~twiddle.permutations.FixedPermutation` followed by a :class:`~twiddle.Butterfly` (a transform's bit
reversal, a factorization's ``B P``) is computed as ``butterfly(x[..., perm])`` with the gather done by the kernel
as it reads ``x`` (``in_perm`` of :func:`twiddle.ops.butterfly_multiply`), instead of a permuted copy first. Same
values and gradients; the pair is fused only where that changes nothing observable: both modules use their
classes' own ``forward``, and neither has hooks to run, nor is any global module hook registered.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules import module as _module

from .butterfly import Butterfly
from .permutations import FixedPermutation

__all__ = ["permute_then_apply", "run_fused"]

_PERM_FORWARD = FixedPermutation.forward
_BUTTERFLY_FORWARD = Butterfly.forward

# torch's global module hooks (module-level dicts that registration fills in place); any of them set: never fuse
_GLOBAL_HOOK_DICTS = tuple(
    getattr(_module, name)
    for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_forward_hooks_always_called")
    if isinstance(getattr(_module, name, None), dict)
)


def _fused_perm(perm: nn.Module, layer: nn.Module) -> torch.Tensor | None:
    """The permutation to hand the kernel when ``layer(perm(x))`` may run as one permuted call, else None. Plain
    attribute and dict lookups: this runs on every call, and a batch-1 transform takes tens of microseconds (the
    buffer is read from ``_buffers``: ``perm.perm`` goes through ``nn.Module.__getattr__``, about 1 us)."""
    if type(perm).forward is not _PERM_FORWARD or type(layer).forward is not _BUTTERFLY_FORWARD:
        return None
    index = perm._buffers.get("perm")
    if index is None or index.shape[0] != layer.in_features:
        return None
    for m in (perm, layer):
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return None
    for hooks in _GLOBAL_HOOK_DICTS:
        if hooks:
            return None
    return index


def permute_then_apply(perm: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(perm(x))``, as one kernel call where the pair can be fused."""
    index = _fused_perm(perm, layer)
    if index is not None:
        return layer._forward_permuted(x, index)
    return layer(perm(x))


def run_fused(steps: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Apply ``steps`` in order (as ``nn.Sequential`` does), each fusable permutation-then-butterfly pair as one
    call."""
    pending = None  # a FixedPermutation waiting to see the step after it
    for step in steps:
        if pending is not None:
            index = _fused_perm(pending, step)
            pending, previous = None, pending
            if index is not None:
                x = step._forward_permuted(x, index)
                continue
            x = previous(x)
        if isinstance(step, FixedPermutation):
            pending = step
            continue
        x = step(x)
    return x if pending is None else pending(x)
