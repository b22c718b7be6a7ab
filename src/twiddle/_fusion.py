"""Running fixed permutations and the butterfly between them as one kernel call.

A :class:`~twiddle.permutations.FixedPermutation` followed by a :class:`~twiddle.Butterfly` (a transform's bit
reversal, a factorization's ``B P``) is computed as ``butterfly(x[..., perm])`` with the gather done by the kernel
as it reads ``x`` (``in_perm`` of :func:`twiddle.ops.butterfly_multiply`), instead of a permuted copy first; a
permutation right after a bias-free butterfly (a DST's reversal, a DCT-III's reordering) is done by the kernel's
store (``out_perm``). Same values and gradients; fused only where that changes nothing observable: the modules use
their classes' own ``forward``, none has hooks to run, and no global module hook is registered.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules import module as _module

from .butterfly import Butterfly
from .permutations import FixedPermutation

__all__ = ["run_fused"]

_PERM_FORWARD = FixedPermutation.forward
_BUTTERFLY_FORWARD = Butterfly.forward

# torch's global module hooks (module-level dicts that registration fills in place); any of them set: never fuse
_GLOBAL_HOOK_DICTS = tuple(
    getattr(_module, name)
    for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_forward_hooks_always_called")
    if isinstance(getattr(_module, name, None), dict)
)


def _plain_perm(perm: nn.Module, size: int) -> torch.Tensor | None:
    """``perm``'s index tensor when it is a plain, hook-free :class:`FixedPermutation` of ``size`` points (read from
    ``_buffers``: ``perm.perm`` goes through ``nn.Module.__getattr__``, about 1 us), else None."""
    if type(perm).forward is not _PERM_FORWARD:
        return None
    index = perm._buffers.get("perm")
    if index is None or index.shape[0] != size or _has_hooks(perm):
        return None
    return index


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _plain_butterfly(layer: nn.Module) -> bool:
    """Whether ``layer`` is a hook-free :class:`~twiddle.Butterfly` with its class's own forward, and no global
    module hook is registered (plain attribute and dict lookups: this runs on every call)."""
    if type(layer).forward is not _BUTTERFLY_FORWARD or _has_hooks(layer):
        return False
    for hooks in _GLOBAL_HOOK_DICTS:
        if hooks:
            return False
    return True


def _fused_perm(perm: nn.Module, layer: nn.Module) -> torch.Tensor | None:
    """The permutation to hand the kernel when ``layer(perm(x))`` may run as one permuted call, else None."""
    if not _plain_butterfly(layer):
        return None
    return _plain_perm(perm, layer.in_features)


def _fused_out_perm(layer: nn.Module, perm: nn.Module) -> torch.Tensor | None:
    """The output permutation to hand the kernel when ``perm(layer(x))`` may run as one call (a plain butterfly
    without bias: a bias would have to be permuted too), else None."""
    if not _plain_butterfly(layer) or layer.bias is not None:
        return None
    return _plain_perm(perm, layer.out_features)


def run_fused(steps: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Apply ``steps`` in order (as ``nn.Sequential`` does), a butterfly and the fixed permutations right before
    and after it as one call where they can be fused."""
    steps = list(steps)
    i, count = 0, len(steps)
    while i < count:
        step = steps[i]
        layer, in_index = None, None
        if isinstance(step, FixedPermutation) and i + 1 < count:
            in_index = _fused_perm(step, steps[i + 1])
            if in_index is not None:
                layer = steps[i + 1]
                i += 1
        elif _plain_butterfly(step):
            layer = step
        if layer is None:
            x = step(x)
            i += 1
            continue
        out_index = _fused_out_perm(layer, steps[i + 1]) if i + 1 < count else None
        if out_index is not None:
            i += 1
        x = layer._forward_permuted(x, in_index, out_index) if in_index is not None or out_index is not None \
            else layer(x)
        i += 1
    return x
