"""Butterfly multiply benchmark: prints a markdown table, writes JSON and a PNG.

    python benchmarks/multiply.py                    # n = 256..16384, batch 1/16/256 (a few minutes on 2 cores)
    python benchmarks/multiply.py --sizes 1024 --batches 256 --out benchmarks/out
    python benchmarks/multiply.py --device cuda --out benchmarks/results/cuda   # on a GPU (Triton kernel)

Methods, all in one run: nn.Linear, a Monarch-style two-bmm layer, torch.fft.fft (complex64), twiddle's
Butterfly (fused kernel where available), and the pure-PyTorch reference multiply; ``--methods ... butterfly-fft``
adds the DFT as a complex butterfly (``twiddle.transforms.fft``) on the FFT's complex64 input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twiddle import benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--methods", nargs="+", default=list(benchmark.DEFAULT_METHODS), choices=benchmark.METHODS)
    parser.add_argument("--memory-batch", type=int, default=4096, help="rows at which peak memory is measured")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    rows = benchmark.run(
        args.sizes, args.batches, args.methods, memory_batch=args.memory_batch, device=args.device,
        on_row=lambda r: print(f"{r.method} n={r.n} batch={r.batch}: fwd {r.forward_ms:.4f} ms, fwd+bwd "
                               f"{r.forward_backward_ms:.4f} ms, first call {r.first_call_s:.2f} s", flush=True),
    )
    table = benchmark.format_table(rows)
    header = f"float32, {benchmark.device_description(args.device)}"
    print(header + "\n")
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    benchmark.save_json(rows, args.out / "multiply.json", device=args.device)
    (args.out / "multiply.md").write_text(header + "\n\n" + table + "\n")
    benchmark.save_plot(rows, args.out / "multiply.png", batch=max(args.batches), device=args.device)
    print(f"\nwrote {args.out}/multiply.json, multiply.md, multiply.png")


if __name__ == "__main__":
    main()
