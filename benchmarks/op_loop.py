"""Best-of-N timings of the fused CPU op and the Butterfly module, for machines whose timings swing from call to
call: the minimum of many calls says what the code costs, the median what a run met. float32, 2-D input.

For each (n, batch): the op's forward as the library calls it (``fused_cpu.butterfly_multiply_op``: the extension's
eager entry) and through ``torch.ops.twiddle.butterfly_multiply``, its backward op, and (no_grad) the ``Butterfly``
module's forward and ``nn.Linear``'s. Prints a markdown table, writes JSON.

    python benchmarks/op_loop.py                                   # n = 16…4096 at batch 1, n = 1024 and 4096 at 256
    python benchmarks/op_loop.py --cases 1024x1 1024x256 --calls 500 --out benchmarks/out
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

import twiddle
from twiddle._timing import run_seconds
from twiddle.ops import fused_cpu


def _times_us(fn, calls: int) -> tuple[float, float]:
    """(best, median) of ``calls`` timed calls after a warm-up, in microseconds."""
    times = run_seconds(fn, warmup=max(5, calls // 20), repeats=calls, max_seconds=math.inf)
    return 1e6 * min(times), 1e6 * statistics.median(times)


def measure(n: int, batch: int, calls: int) -> dict:
    log_n = n.bit_length() - 1
    twiddle_t = torch.randn(1, 1, log_n, n // 2, 2, 2)
    x = torch.randn(batch, n)
    grad = torch.randn(batch, n)
    layer = twiddle.Butterfly(n, n)
    linear = torch.nn.Linear(n, n)
    op = torch.ops.twiddle
    row = {"n": n, "batch": batch, "calls": calls}
    with torch.no_grad():
        cases = {
            "op_forward": lambda: fused_cpu.butterfly_multiply_op(twiddle_t, x, None, True, False, False, n),
            "torch_ops_forward": lambda: op.butterfly_multiply(twiddle_t, x, None, True, False, False, n),
            "op_backward": lambda: op.butterfly_multiply_backward(twiddle_t, x, grad, True, False, False, n),
            "module_forward": lambda: layer(x),
            "linear_forward": lambda: linear(x),
        }
        for name, fn in cases.items():
            row[f"{name}_best_us"], row[f"{name}_median_us"] = _times_us(fn, calls)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["16x1", "256x1", "1024x1", "4096x1", "1024x256", "4096x256"],
                        help="NxBATCH pairs")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not fused_cpu.available():
        raise SystemExit("the fused CPU kernel could not be built here; nothing to time")
    torch.set_num_threads(args.threads)
    rows = []
    for case in args.cases:
        n, batch = (int(v) for v in case.lower().split("x"))
        calls = args.calls if n * batch <= 1 << 16 else max(20, args.calls // 10)  # big cases: fewer calls
        rows.append(measure(n, batch, calls))
    lines = [
        f"float32, CPU, {args.threads} threads, torch {torch.__version__}; best / median of the calls, µs",
        "",
        "| n | batch | op forward | op forward via torch.ops | op backward | Butterfly module forward (no_grad) "
        "| nn.Linear forward |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[f'{k}_best_us']:.1f} / {r[f'{k}_median_us']:.1f}"
                 for k in ("op_forward", "torch_ops_forward", "op_backward", "module_forward", "linear_forward")]
        lines.append(f"| {r['n']} | {r['batch']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "op_loop.md").write_text(table + "\n")
    meta = {"threads": args.threads, "torch": torch.__version__}
    (args.out / "op_loop.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out / 'op_loop.json'}, op_loop.md")


if __name__ == "__main__":
    main()
