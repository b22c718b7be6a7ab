"""The multiply benchmark: butterfly against nn.Linear, a Monarch-style layer, torch.fft and the reference.

Used by ``benchmarks/multiply.py`` and ``twiddle bench``. Every method maps ``(batch, n) -> (batch, n)`` in
float32 (the FFT in complex64) and is timed in the same process, forward and forward+backward (gradients for
the input and the weights), median wall-clock over repeats. Ratios come from one run. The default methods are
:data:`DEFAULT_METHODS`; ``butterfly-fft`` (the DFT as a fixed complex butterfly, ``twiddle.transforms.fft``, on
complex64 input: the complex kernels against torch.fft on the same data) is asked for by name.

On CPU, peak memory of forward+backward is measured in a fresh subprocess per method as the peak resident set
during one forward+backward at a large batch (Linux: ``VmHWM`` after resetting it through
``/proc/self/clear_refs``) minus the resident set before it: it counts the output, the gradients and every
temporary (weights and input excluded: they exist before), and is reported as a multiple of the input's size.
On CUDA (``device="cuda"``) the same quantity is read from the caching allocator's peak
(``torch.cuda.max_memory_allocated``) in the benchmark's own process, and times end with a synchronize.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import transforms
from ._timing import median_seconds, synchronizer
from .butterfly import Butterfly
from .ops import butterfly_multiply_reference, kernel_for

__all__ = [
    "MonarchLinear",
    "METHODS",
    "DEFAULT_METHODS",
    "BenchRow",
    "run",
    "format_table",
    "save_json",
    "save_plot",
    "device_description",
]


class MonarchLinear(nn.Module):
    """Monarch-style structured layer (two block-diagonal ``bmm`` with a transpose between): n = m * m,
    ``m`` blocks of ``m x m``; ``2 n sqrt(n)`` parameters. The baseline of the benchmark."""

    def __init__(self, n: int) -> None:
        super().__init__()
        m = math.isqrt(n)
        if m * m != n:
            raise ValueError(f"MonarchLinear needs a perfect-square n, got {n}")
        self.m = m
        self.w1 = nn.Parameter(torch.randn(m, m, m) / math.sqrt(m))
        self.w2 = nn.Parameter(torch.randn(m, m, m) / math.sqrt(m))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, m = x.shape[0], self.m
        y = torch.bmm(x.reshape(b, m, m).transpose(0, 1), self.w1)  # (m, b, m): block i on chunk i
        y = torch.bmm(y.transpose(0, 2).reshape(m, b, m), self.w2)  # mix across blocks
        return y.transpose(0, 1).reshape(b, m * m)


def _make(
    method: str, n: int, device: torch.device | str = "cpu"
) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor], torch.dtype]:
    """(function, parameters, input dtype) of one method, its parameters on ``device``."""
    if method == "linear":
        layer = nn.Linear(n, n, device=device)
        return layer, list(layer.parameters()), torch.float32
    if method == "monarch":
        layer = MonarchLinear(n).to(device)
        return layer, list(layer.parameters()), torch.float32
    if method == "fft":
        return torch.fft.fft, [], torch.complex64
    if method == "butterfly":
        layer = Butterfly(n, n, device=device)
        return layer, list(layer.parameters()), torch.float32
    if method == "reference":
        layer = Butterfly(n, n, device=device)
        return (
            lambda x: butterfly_multiply_reference(layer.twiddle, x) + layer.bias,
            list(layer.parameters()),
            torch.float32,
        )
    if method == "butterfly-fft":
        return transforms.fft(n, device=device), [], torch.complex64
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


#: every method the benchmark knows
METHODS = ("linear", "monarch", "fft", "butterfly", "reference", "butterfly-fft")
#: what a plain run times
DEFAULT_METHODS = ("linear", "monarch", "fft", "butterfly", "reference")


@dataclass
class BenchRow:
    method: str
    n: int
    batch: int
    forward_ms: float
    forward_backward_ms: float
    peak_extra_memory_x_input: float | None = None
    kernel: str = ""
    first_call_s: float | None = None


def _forward_backward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    """One forward and a backward of the output's sum (its real part for complex outputs)."""
    y = fn(x)
    (y.real if y.is_complex() else y).sum().backward()


def _time_method(method: str, n: int, batch: int, max_seconds: float, device: str = "cpu") -> BenchRow:
    fn, params, dtype = _make(method, n, device)
    x = torch.randn(batch, n, dtype=dtype, device=device)
    xg = x.clone().requires_grad_(True)

    def fwd_bwd() -> None:
        _forward_backward(fn, xg)
        xg.grad = None
        for p in params:
            p.grad = None

    # the first forward+backward of a fresh shape: on a GPU this includes compiling the Triton kernels (cached
    # on disk for later processes); on CPU the fused kernel is already built when the layer is constructed
    sync = synchronizer(device)
    start = time.perf_counter()
    fwd_bwd()
    sync()
    first = time.perf_counter() - start
    # up to 200 runs within max_seconds: microsecond calls get a median that a few slow runs on a shared machine
    # do not move; slow ones stop after max_seconds (at least 3 runs)
    with torch.no_grad():
        fwd = median_seconds(lambda: fn(x), repeats=200, max_seconds=max_seconds, device=device)
    fb = median_seconds(fwd_bwd, repeats=200, max_seconds=max_seconds, device=device)
    kernel = ""
    if method == "butterfly":
        kernel = kernel_for(params[0], x)
    elif method == "butterfly-fft":
        kernel = kernel_for(next(m.twiddle for m in fn.modules() if isinstance(m, Butterfly)), x)
    return BenchRow(method, n, batch, fwd * 1e3, fb * 1e3, None, kernel, first)


_MEMORY_SCRIPT = """
import resource, sys, torch
from twiddle.benchmark import _make

def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)

method, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fn, params, dtype = _make(method, n)
def step(b):
    x = torch.randn(b, n, dtype=dtype, requires_grad=True)
    y = fn(x)
    (y.real if y.is_complex() else y).sum().backward()
step(2)  # load kernels, start threads
x = torch.randn(batch, n, dtype=dtype, requires_grad=True)
before = rss("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current resident set
    f.write("5")
y = fn(x)
(y.real if y.is_complex() else y).sum().backward()
peak = rss("VmHWM:")
print((peak - before) / (x.numel() * x.element_size()))
"""


def _cuda_peak_extra_memory(method: str, n: int, batch: int, device: str) -> float:
    """Growth of the CUDA allocator's peak during one forward+backward, in multiples of the input's size."""
    fn, _, dtype = _make(method, n, device)
    for rows in (2, batch):  # the first call loads kernels; the second is measured
        x = torch.randn(rows, n, dtype=dtype, device=device, requires_grad=True)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _forward_backward(fn, x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    return (peak - before) / (x.numel() * x.element_size())


def peak_extra_memory(method: str, n: int, batch: int, device: str = "cpu") -> float:
    """Growth of the peak memory during one forward+backward, in multiples of the input's size."""
    if torch.device(device).type == "cuda":
        return _cuda_peak_extra_memory(method, n, batch, device)
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, method, str(n), str(batch)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def run(
    sizes: Iterable[int] = (256, 1024, 4096, 16384),
    batches: Iterable[int] = (1, 16, 256),
    methods: Iterable[str] = DEFAULT_METHODS,
    *,
    memory_batch: int | None = 4096,
    max_seconds: float = 2.0,
    progress: bool = True,
    device: str = "cpu",
    on_row: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """Time every method at every (n, batch) on ``device``. Peak memory is measured at ``memory_batch`` rows
    (large, so that the growth of the resident set is well above the process's noise; None: skip) and attached
    to the row of the largest batch. ``on_row`` is called with every row as soon as it is measured."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available")
    from tqdm import tqdm

    sizes, batches, methods = list(sizes), list(batches), list(methods)
    jobs = [(n, b, m) for n in sizes for b in batches for m in methods]
    rows: list[BenchRow] = []
    for n, b, m in tqdm(jobs, desc="twiddle bench", disable=not progress, file=sys.stderr):
        row = _time_method(m, n, b, max_seconds, device)
        if memory_batch is not None and b == max(batches):
            row.peak_extra_memory_x_input = peak_extra_memory(m, n, memory_batch, device)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def format_table(rows: list[BenchRow]) -> str:
    """Markdown table: ms, and ratios against nn.Linear (speed-up) and torch.fft (slow-down) from the same run."""
    index = {(r.method, r.n, r.batch): r for r in rows}
    lines = [
        "| n | batch | method | forward ms | fwd+bwd ms | speed-up vs Linear (fwd / fwd+bwd) | time / FFT (fwd) "
        "| peak extra mem, fwd+bwd (x input) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lin = index.get(("linear", r.n, r.batch))
        fft = index.get(("fft", r.n, r.batch))
        speed = ""
        if lin:
            speed = f"{lin.forward_ms / r.forward_ms:.1f}x / {lin.forward_backward_ms / r.forward_backward_ms:.1f}x"
        vs_fft = f"{r.forward_ms / fft.forward_ms:.2f}" if fft else ""
        mem = "" if r.peak_extra_memory_x_input is None else f"{r.peak_extra_memory_x_input:.2f}"
        lines.append(
            f"| {r.n} | {r.batch} | {r.method} | {r.forward_ms:.3f} | {r.forward_backward_ms:.3f} | {speed} "
            f"| {vs_fft} | {mem} |"
        )
    return "\n".join(lines)


def device_description(device: str = "cpu") -> str:
    """One line naming where the benchmark ran: the GPU's name, or the CPU thread count."""
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def save_json(rows: list[BenchRow], path: Path, device: str = "cpu") -> None:
    meta = {
        "device": device_description(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": "float32 (fft, butterfly-fft: complex64)",
    }
    path.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))


def save_plot(rows: list[BenchRow], path: Path, batch: int = 256, device: str = "cpu") -> None:
    """Forward and forward+backward time against n (log-log) for every method at one batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, field, title in zip(axes, ("forward_ms", "forward_backward_ms"), ("forward", "forward + backward"),
                                strict=True):
        for method in dict.fromkeys(r.method for r in rows):
            pts = sorted((r.n, getattr(r, field)) for r in rows if r.method == method and r.batch == batch)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("n")
        ax.set_ylabel("ms")
        where = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else (
            f"{torch.get_num_threads()} threads"
        )
        ax.set_title(f"{title}, batch {batch}, float32, {where}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
