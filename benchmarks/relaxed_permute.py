"""Relaxed-permutation benchmark: the fused CPU kernel against the PyTorch composition it replaced, on the shapes
the gradient method uses (16 trials, 64 probe rows, float32, probabilities shared by the levels as in its default),
forward and forward+backward; then one Adam-step-sized forward+backward of the whole BPP model (two relaxed
permutations and a complex butterfly per trial) with each (the two differ only in the relaxed permutation: both use
the fused butterfly multiply). Prints a markdown table, writes JSON.

    python benchmarks/relaxed_permute.py                        # n = 64, 256, 1024 (about a minute on 2 cores)
    python benchmarks/relaxed_permute.py --sizes 1024 --out benchmarks/out
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

from twiddle._timing import median_seconds
from twiddle.factorize import gradient
from twiddle.ops import fused_cpu


def _relaxed_row(n: int, trials: int, rows: int, fn) -> tuple[float, float]:
    levels = len(gradient._levels(n))
    x = torch.randn(trials, rows, n, requires_grad=True)
    logits = (0.1 * torch.randn(trials, 1, 3)).requires_grad_(True)

    def forward() -> None:
        with torch.no_grad():
            fn(x, torch.sigmoid(logits.expand(trials, levels, 3)))

    def forward_backward() -> None:
        y = fn(x, torch.sigmoid(logits.expand(trials, levels, 3)))
        torch.autograd.grad(y.pow(2).sum(), [x, logits])

    return median_seconds(forward, max_seconds=3.0), median_seconds(forward_backward, max_seconds=3.0)


def _model_step(n: int, trials: int, rows: int, fused: bool) -> float:
    """Forward+backward of the BPP model's loss (the Adam step's work), with the fused or the PyTorch relaxed
    permutation."""
    levels = len(gradient._levels(n))
    gen = torch.Generator().manual_seed(0)
    shape = (trials, n.bit_length() - 1, n // 2, 2, 2)
    twiddle = torch.view_as_real(gradient._haar_unitary(shape, gen).to(torch.complex64)).clone().requires_grad_(True)
    logits = [(0.1 * torch.randn(trials, 1, 3, generator=gen)).requires_grad_(True) for _ in range(2)]
    x = torch.randn(trials, rows, n, generator=gen)

    def step() -> None:
        probs = [torch.sigmoid(lg.expand(trials, levels, 3)) for lg in logits]
        out = gradient._model_trials("bpp", [torch.view_as_complex(twiddle)], probs, x)
        torch.autograd.grad(out.real.pow(2).mean(), [twiddle, *logits])

    if fused:
        return median_seconds(step, max_seconds=5.0)
    # the gradient module alone sees no fused kernel: its relaxed permutations take the PyTorch composition, the
    # butterflies (dispatched by twiddle.ops) keep the fused multiply
    with mock.patch.object(gradient, "fused_cpu", SimpleNamespace(available=lambda: False)):
        return median_seconds(step, max_seconds=5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--rows", type=int, default=64, help="probe rows per trial")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not fused_cpu.available():
        raise SystemExit("the fused CPU kernel could not be built here; nothing to compare")
    rows = []
    for n in args.sizes:
        fused = _relaxed_row(n, args.trials, args.rows, gradient.relaxed_permute)
        reference = _relaxed_row(n, args.trials, args.rows, gradient._relaxed_permute_reference)
        step_fused = _model_step(n, args.trials, args.rows, fused=True)
        step_reference = _model_step(n, args.trials, args.rows, fused=False)
        rows.append({
            "n": n, "trials": args.trials, "rows": args.rows,
            "fused_forward_ms": 1e3 * fused[0], "fused_forward_backward_ms": 1e3 * fused[1],
            "pytorch_forward_ms": 1e3 * reference[0], "pytorch_forward_backward_ms": 1e3 * reference[1],
            "bpp_step_fused_ms": 1e3 * step_fused, "bpp_step_pytorch_ms": 1e3 * step_reference,
        })
        print(f"n={n} done", flush=True)
    lines = [
        f"float32, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.trials} trials x "
        f"{args.rows} rows",
        "",
        "| n | relaxed permutation fwd ms (fused / PyTorch) | fwd+bwd ms (fused / PyTorch) | speed-up fwd+bwd | "
        "BPP model fwd+bwd ms (fused / PyTorch) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['fused_forward_ms']:.2f} / {r['pytorch_forward_ms']:.2f} | "
            f"{r['fused_forward_backward_ms']:.2f} / {r['pytorch_forward_backward_ms']:.2f} | "
            f"{r['pytorch_forward_backward_ms'] / r['fused_forward_backward_ms']:.1f}x | "
            f"{r['bpp_step_fused_ms']:.1f} / {r['bpp_step_pytorch_ms']:.1f} | "
            f"{r['bpp_step_pytorch_ms'] / r['bpp_step_fused_ms']:.1f}x |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "relaxed_permute.md").write_text(table + "\n")
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}
    (args.out / "relaxed_permute.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out / 'relaxed_permute.json'}, relaxed_permute.md")


if __name__ == "__main__":
    main()
