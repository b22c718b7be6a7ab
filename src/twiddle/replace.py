"""Swap the ``nn.Linear`` layers of any model for butterfly layers, in place."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

from .butterfly import Butterfly
from .factorize.hierarchical import hierarchical_twiddle
from .truncated import TruncatedButterflyLinear

__all__ = ["replace_linear", "REPLACEMENT_KINDS"]

REPLACEMENT_KINDS = ("butterfly", "truncated")


def _fit_butterfly_(layer: Butterfly, weight: torch.Tensor, polish_steps: int) -> None:
    """Initialize ``layer`` so that ``layer.to_dense() ≈ weight``: the hierarchical projection of each zero-padded
    ``n × n`` stack (single-block real butterflies), then ``polish_steps`` L-BFGS iterations of least squares on
    ``‖to_dense() − weight‖²_F``."""
    n, nstacks = layer.n, layer.nstacks
    with torch.no_grad():
        if layer.nblocks == 1 and not layer.complex:
            padded = torch.zeros(nstacks * n, n, dtype=torch.float64, device=weight.device)
            padded[: layer.out_features, : layer.in_features] = weight.double()
            stacks = [hierarchical_twiddle(padded[s * n : (s + 1) * n], order="right")[0] for s in range(nstacks)]
            layer.twiddle.copy_(torch.stack(stacks).to(layer.twiddle.dtype))
    if polish_steps <= 0:
        return
    target = weight.detach().to(layer.twiddle.dtype)
    optimizer = torch.optim.LBFGS([layer.twiddle], max_iter=polish_steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (layer.to_dense() - target).abs().pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    layer.twiddle.grad = None


def _build(linear: nn.Linear, kind: str, layer_kwargs: dict) -> nn.Module:
    """The replacement for ``linear``, freshly initialized, on its device and in its dtype."""
    factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
    cls = Butterfly if kind == "butterfly" else TruncatedButterflyLinear
    return cls(linear.in_features, linear.out_features, linear.bias is not None, **factory, **layer_kwargs)


def _init_from_dense_(layer: nn.Module, linear: nn.Linear, polish_steps: int) -> None:
    """Fit ``layer`` (from :func:`_build`) to ``linear``'s weight and copy its bias."""
    if isinstance(layer, Butterfly):
        _fit_butterfly_(layer, linear.weight, polish_steps)
    else:
        layer.fit_dense_(linear.weight)
    if linear.bias is not None:
        with torch.no_grad():
            layer.bias.copy_(linear.bias.to(layer.bias.dtype))


def replace_linear(
    model: nn.Module,
    kind: str = "butterfly",
    *,
    filter: Callable[[str, nn.Linear], bool] | None = None,
    init_from_dense: bool = False,
    polish_steps: int = 20,
    min_compression: float = 1.0,
    verbose: bool = False,
    **layer_kwargs: object,
) -> nn.Module:
    """Replace ``nn.Linear`` layers of ``model`` in place; returns the model (or the replacement, when ``model``
    itself is an ``nn.Linear``).

    Args:
        model: any module.
        kind: ``"butterfly"`` (:class:`~twiddle.Butterfly`) or ``"truncated"``
            (:class:`~twiddle.TruncatedButterflyLinear`, the ``J2ᵀ W̃ J1`` layer).
        filter: ``filter(qualified_name, linear) -> bool`` picks the layers to replace (default: all).
        init_from_dense: start from the dense weights instead of a fresh init. ``butterfly``: the hierarchical
            projection of the (zero-padded) weight, then ``polish_steps`` L-BFGS iterations of least squares
            (only the least squares for ``nblocks > 1`` or complex layers). ``truncated``: ``W̃`` is the
            closed-form least-squares fit for the FJLT-initialized ``J1``, ``J2``. The bias is copied.
        polish_steps: L-BFGS iterations of the least-squares polish (``butterfly`` only; 0 to skip).
        min_compression: replace a selected layer only where its replacement has at most ``1 / min_compression``
            of its parameters (bias included). The default 1 keeps layers that a butterfly would make larger,
            such as a narrow classifier head (``Linear(512, 10)``: 5,130 parameters, its butterfly, a 512-point
            butterfly cut to 10 outputs, 9,226); 0 replaces every selected layer.
        verbose: print each replacement (and each layer kept by ``min_compression``) and the parameter totals
            before and after to stderr.
        **layer_kwargs: passed to the new layers (e.g. ``nblocks=2``, ``init="ortho"``; ``k_in``, ``seed``).

    The new layers take the replaced layer's device and dtype. Parameter counts: compare
    ``sum(p.numel() for p in model.parameters())`` before and after, or pass ``verbose=True``.
    """
    if kind not in REPLACEMENT_KINDS:
        raise ValueError(f"kind must be one of {REPLACEMENT_KINDS}, got {kind!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if filter is not None and not callable(filter):
        raise TypeError("filter must be a callable (name, module) -> bool")
    if isinstance(min_compression, bool) or not isinstance(min_compression, (int, float)) or not (
        min_compression >= 0
    ):
        raise ValueError(f"min_compression must be a number >= 0, got {min_compression!r}")
    before = sum(p.numel() for p in model.parameters())
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and (filter is None or filter(name, module))
    ]
    log: list[str] = []
    replacement_root: nn.Module | None = None
    replaced = 0
    for name, linear in targets:
        new = _build(linear, kind, layer_kwargs)
        old_params = sum(p.numel() for p in linear.parameters())
        new_params = sum(p.numel() for p in new.parameters())
        label = f"  {name or '<model>'}: Linear({linear.in_features}, {linear.out_features}) {old_params}"
        if new_params * min_compression > old_params:
            log.append(f"{label} parameters kept ({type(new).__name__} would have {new_params})")
            continue
        if init_from_dense:
            _init_from_dense_(new, linear, polish_steps)
        log.append(f"{label} -> {type(new).__name__} {new_params} parameters")
        replaced += 1
        if name == "":
            replacement_root = new
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
    result = replacement_root if replacement_root is not None else model
    if verbose:
        after = sum(p.numel() for p in result.parameters())
        kept = len(targets) - replaced
        print(f"replace_linear: {replaced} layer(s) replaced by {kind}"
              + (f", {kept} kept by min_compression={min_compression}" if kept else ""), file=sys.stderr)
        for line in log:
            print(line, file=sys.stderr)
        print(f"  parameters: {before} -> {after} ({before / max(after, 1):.2f}x fewer)", file=sys.stderr)
    return result
