"""Save and load any twiddle module (or a model containing them) as safetensors.

``state_dict`` with ``torch.save`` works as for any module; safetensors is the format to share weights in (no
pickle, memory-mapped). Complex twiddles are stored as complex tensors (safetensors ≥ 0.4 has C64/C128), tensors
that share memory (a :class:`~twiddle.TruncatedButterflyTranspose` and its source) are stored once.

Factorization results have their own self-describing format (:meth:`twiddle.factorize.PermutedButterfly.save`,
written by ``twiddle factor --out``), which rebuilds the module without knowing its constructor arguments.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

__all__ = ["save_safetensors", "load_safetensors"]

_FORMAT = "twiddle.module/1"


def save_safetensors(module: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``module``'s parameters and buffers to ``path`` (safetensors), with its class name in the metadata.

    ``metadata``: extra string key/values to store (e.g. the constructor arguments you will need to rebuild it).
    """
    from safetensors.torch import save_model

    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    extra = dict(metadata or {})
    bad = {k: v for k, v in extra.items() if not (isinstance(k, str) and isinstance(v, str))}
    if bad:
        raise TypeError(f"metadata keys and values must be strings, got {bad}")
    extra.update({"format": _FORMAT, "class": type(module).__qualname__})
    save_model(module, str(path), metadata=extra)


def load_safetensors(module: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load weights written by :func:`save_safetensors` into ``module`` (built with the same arguments); returns it.

    With ``strict`` every parameter/buffer must match by name and shape; a mismatch raises ValueError listing the
    missing, unexpected and mis-shaped names.
    """
    from safetensors import safe_open

    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no safetensors file at {path}")
    with safe_open(str(path), framework="pt") as f:
        saved = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    own = module.state_dict(keep_vars=False)
    # tensors that share memory were written once under one of their names
    aliases = {k: _aliased(own, k, saved) for k in own if k not in saved}
    missing = [k for k, alias in aliases.items() if alias is None]
    unexpected = [k for k in saved if k not in own]
    shapes = [f"{k}: file {tuple(saved[k].shape)}, module {tuple(own[k].shape)}" for k in own
              if k in saved and saved[k].shape != own[k].shape]
    if shapes or (strict and (missing or unexpected)):
        raise ValueError(f"{path} does not fit {type(module).__name__}: missing {missing}, unexpected "
                         f"{unexpected}, shape mismatches {shapes}")
    saved.update({k: saved[alias] for k, alias in aliases.items() if alias is not None})
    module.load_state_dict({k: v for k, v in saved.items() if k in own}, strict=strict)
    return module


def _aliased(own: dict, key: str, saved: dict) -> str | None:
    """Name in ``saved`` of a tensor of ``own`` that shares ``own[key]``'s memory, if any."""
    target = own[key]
    for other, tensor in own.items():
        if other != key and other in saved and tensor.data_ptr() == target.data_ptr() \
                and tensor.shape == target.shape:
            return other
    return None
