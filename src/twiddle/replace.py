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


def _leave_fused_transformer_paths(model: nn.Module) -> None:
    """Keep torch's transformer encoder modules whose feed-forward layers were replaced on their module path.

    In eval mode without gradients, ``nn.TransformerEncoderLayer`` runs a fused kernel that reads
    ``linear1.weight`` and ``linear2.weight`` directly (an ``AttributeError`` for a butterfly layer), and
    ``nn.TransformerEncoder`` with a padding mask turns its input into a nested tensor for it. The fused path is
    taken only where the layer's ``activation_relu_or_gelu`` flag is set (its own forward computes ``activation``
    either way) and the encoder's ``use_nested_tensor`` is true: both are cleared where a layer was replaced.
    """
    def replaced(layer: nn.Module) -> bool:
        return not (isinstance(getattr(layer, "linear1", None), nn.Linear)
                    and isinstance(getattr(layer, "linear2", None), nn.Linear))

    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and replaced(module):
            module.activation_relu_or_gelu = 0
        elif isinstance(module, nn.TransformerEncoder) and any(replaced(layer) for layer in module.layers):
            module.use_nested_tensor = False


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
        filter: ``filter(qualified_name, linear) -> bool`` picks the layers to replace (default: all). A layer
            that sits at several places of the model (shared, as in tied blocks) is asked about once, under its
            first name, and is replaced at all of them by one shared layer.
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

    Only exact ``nn.Linear`` instances are replaced: subclasses (``nn.MultiheadAttention``'s ``out_proj``, whose
    weight the attention kernel reads directly; quantized or LoRA layers) stay. In ``nn.TransformerEncoderLayer``
    and ``nn.TransformerEncoder`` modules whose feed-forward layers are replaced, torch's fused inference path
    (which reads ``linear1.weight``) is switched off, so that they run in eval mode as in training.

    The new layers take the replaced layer's device, dtype and training mode (``eval()`` stays in force); their
    parameters are trainable whether or not the replaced layer's were (freeze them again with ``requires_grad_``
    where that is wanted). On the meta device (``with torch.device("meta")``) the new layers are made on meta as well;
    ``to_empty()`` and their ``reset_parameters()`` then initialize them. Parameter counts: compare
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
    # Every place a layer sits: a layer shared by several parents (tied blocks) gets one replacement, shared the
    # same way, or stays everywhere; the filter sees it under its first name.
    places: dict[int, list[str]] = {}
    targets: list[tuple[str, nn.Linear]] = []
    for name, module in model.named_modules(remove_duplicate=False):
        if type(module) is not nn.Linear:
            continue
        if id(module) not in places:
            places[id(module)] = []
            if filter is None or filter(name, module):
                targets.append((name, module))
        places[id(module)].append(name)
    if init_from_dense:  # refuse before replacing anything: a model is not left half replaced
        for name, linear in targets:
            if linear.weight.is_meta:
                raise ValueError(
                    f"init_from_dense needs the dense weights' values, but {name or 'the model'} is on the meta "
                    "device; load its weights first, or replace without init_from_dense and, after to_empty(), call "
                    "reset_parameters() on the new layers"
                )
    log: list[str] = []
    replacement_root: nn.Module | None = None
    replaced = 0
    for name, linear in targets:
        new = _build(linear, kind, layer_kwargs)
        old_params = sum(p.numel() for p in linear.parameters())
        new_params = sum(p.numel() for p in new.parameters())
        shared = places[id(linear)][1:]
        label = f"  {name or '<model>'}: Linear({linear.in_features}, {linear.out_features}) {old_params}" + (
            f" (also at {', '.join(shared)})" if shared else ""
        )
        if new_params * min_compression > old_params:
            log.append(f"{label} parameters kept ({type(new).__name__} would have {new_params})")
            continue
        if init_from_dense:
            _init_from_dense_(new, linear, polish_steps)
        new.train(linear.training)
        log.append(f"{label} -> {type(new).__name__} {new_params} parameters")
        replaced += 1
        if name == "":
            replacement_root = new
            continue
        for place in places[id(linear)]:
            parent_name, _, attr = place.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
    if replaced and replacement_root is None:
        _leave_fused_transformer_paths(model)
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
