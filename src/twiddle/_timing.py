"""Wall-clock timing helpers shared by the CLI demo and the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work: ``torch.cuda.synchronize`` on CUDA, nothing on CPU."""
    if torch.device(device).type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def run_seconds(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 5.0,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Wall-clock seconds of each of up to ``repeats`` runs of ``fn()`` after ``warmup`` untimed ones (stops early
    once ``max_seconds`` have passed and at least 3 runs are in).

    On a CUDA ``device`` every run ends with ``torch.cuda.synchronize`` so that the time covers the kernels it
    launched, not only their launch."""
    sync = synchronizer(device)
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds and len(times) >= 3:
            break
    return times


def median_seconds(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 5.0,
    device: torch.device | str = "cpu",
) -> float:
    """Median of :func:`run_seconds` (same arguments)."""
    return statistics.median(
        run_seconds(fn, warmup=warmup, repeats=repeats, max_seconds=max_seconds, device=device)
    )
