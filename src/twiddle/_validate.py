"""Argument checks shared by every public constructor: one message per kind of mistake."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["positive_int", "seed_int", "require_finite"]


def positive_int(value: object, name: str) -> int:
    """``value`` as an ``int >= 1`` (Python or NumPy integer, not bool), or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def nonnegative_int(value: object, name: str) -> int:
    """``value`` as an ``int >= 0`` (Python or NumPy integer, not bool), or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def seed_int(seed: object) -> int:
    """``seed`` as an ``int`` (Python or NumPy integer, not bool), or ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return int(seed)


def require_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` unchanged, or ValueError if it holds NaN or Inf (for data given to fitting and analysis functions;
    layers propagate non-finite values as ``nn.Linear`` does)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf entries")
    return x
