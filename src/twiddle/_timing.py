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


def median_seconds(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 5.0,
    device: torch.device | str = "cpu",
) -> float:
    """Median wall-clock time of ``fn()`` over up to ``repeats`` runs (stops early after ``max_seconds``).

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
    return statistics.median(times)
