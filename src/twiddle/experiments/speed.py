"""The speed figure: butterfly multiply against a dense layer and the FFT over n (Dao et al. 2019's speed plot).

Two settings, each timed in one process (medians, :mod:`twiddle.benchmark`): the paper's — single-thread inference
of one vector (batch 1, 1 thread) — and a training-sized one — batch 256, forward and forward+backward, with every
thread. Methods: ``nn.Linear`` (dense), ``twiddle.Butterfly`` (fused kernel) and ``torch.fft.fft`` (complex64);
the Monarch-style layer, which needs square n, is in ``make bench``. The paper's single-thread speed-ups of the
butterfly over dense GEMV are printed beside ours.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import benchmark
from . import register
from ._output import panels, write_results

SIZES = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
QUICK_SIZES = (64, 256)
METHODS = ("linear", "butterfly", "fft")
# The paper's single-thread inference speed-up of BP over dense (one vector); FFT over dense at 1024: 22x
PAPER_SPEEDUP = {64: 0.19, 512: 1.56, 1024: 4.4, 2048: 10.6, 4096: 66.0, 8192: 172.0}


@register("speed", "Dao et al. 2019 speed figure: butterfly vs dense (nn.Linear) vs torch.fft over n, 1 thread batch 1 "
          "and all threads batch 256")
def main(*, quick: bool, out: Path, seed: int = 0, **options) -> dict:
    if options:
        raise ValueError(f"options {sorted(options)} do not apply to speed")
    torch.manual_seed(seed)
    sizes = QUICK_SIZES if quick else SIZES
    max_seconds = 0.2 if quick else 2.0
    threads = torch.get_num_threads()
    settings = []
    try:
        torch.set_num_threads(1)
        single = benchmark.run(sizes, (1,), METHODS, memory_batch=None, max_seconds=max_seconds)
    finally:
        torch.set_num_threads(threads)
    settings.append({"name": "1 thread, batch 1", "threads": 1, "batch": 1, "rows": single})
    batched = benchmark.run(sizes, (256,), METHODS, memory_batch=None, max_seconds=max_seconds)
    settings.append({"name": f"{threads} threads, batch 256", "threads": threads, "batch": 256, "rows": batched})
    results = {"experiment": "speed", "quick": quick, "seed": seed, "settings": [
        {**s, "rows": [r.__dict__ for r in s["rows"]]} for s in settings], "paper_speedup": PAPER_SPEEDUP}
    write_results(out, results, _table(results["settings"]))
    _plot(results["settings"], out / "speed.png")
    return results


def _table(settings: list[dict]) -> str:
    lines = ["| setting | n | Linear fwd ms | Butterfly fwd ms | FFT fwd ms | Butterfly vs Linear | paper (1 thread) "
             "| Butterfly / FFT | Linear fwd+bwd / Butterfly fwd+bwd |", "|" + "---|" * 9]
    for s in settings:
        index = {(r["method"], r["n"]): r for r in s["rows"]}
        for n in sorted({r["n"] for r in s["rows"]}):
            lin, bf, fft = index[("linear", n)], index[("butterfly", n)], index[("fft", n)]
            paper = f"{PAPER_SPEEDUP[n]}×" if n in PAPER_SPEEDUP and s["batch"] == 1 else ""
            lines.append(
                f"| {s['name']} | {n} | {lin['forward_ms']:.4f} | {bf['forward_ms']:.4f} | {fft['forward_ms']:.4f} "
                f"| {lin['forward_ms'] / bf['forward_ms']:.1f}× | {paper} | {bf['forward_ms'] / fft['forward_ms']:.2f} "
                f"| {lin['forward_backward_ms'] / bf['forward_backward_ms']:.1f}× |")
    note = ("\nThe paper: single-thread CPU inference of one vector, butterfly vs dense GEMV, 0.19× at n = 64 to 172× "
            "at 8192 (FFT: 22× at 1024). Ratios are from one run on this machine.\n")
    return "\n".join(lines) + "\n" + note


def _plot(settings: list[dict], path: Path) -> None:
    with panels(path, len(settings), 5.4, 4) as (_, axes):
        for ax, s in zip(axes, settings, strict=True):
            for method in METHODS:
                pts = sorted((r["n"], r["forward_ms"]) for r in s["rows"] if r["method"] == method)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("n")
            ax.set_ylabel("forward ms")
            ax.set_title(s["name"])
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
