"""Reproductions of the papers' experiments, one module each, registered by name.

Each experiment writes ``results.json``, ``table.md`` (what the paper reported beside what we measured) and a PNG
figure into ``OUT/NAME/``, shows progress on stderr, is seeded, and has a ``quick`` mode small enough for the
tests. Run them with ``twiddle reproduce NAME [--quick] [--out DIR]``; ``twiddle reproduce --list`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Experiment", "EXPERIMENTS", "register", "run"]


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    main: Callable[..., dict]


EXPERIMENTS: dict[str, Experiment] = {}


def register(name: str, description: str) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    def wrap(fn: Callable[..., dict]) -> Callable[..., dict]:
        EXPERIMENTS[name] = Experiment(name, description, fn)
        return fn

    return wrap


def run(name: str, *, quick: bool = False, out: Path = Path("results"), **options) -> dict:
    """Run experiment ``name``; returns its results (also written to ``out/name/``)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; available: {sorted(EXPERIMENTS)}")
    target = Path(out) / name
    target.mkdir(parents=True, exist_ok=True)
    return EXPERIMENTS[name].main(quick=quick, out=target, **options)


from . import (  # noqa: E402,F401  (they register themselves)
    ailon2021_autoencoder,
    ailon2021_replace,
    ailon2021_sketch,
    dao2019_compression,
    dao2019_transforms,
    speed,
)
