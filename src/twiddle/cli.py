"""The ``twiddle`` command line.

Subcommands: ``demo`` (a Butterfly layer beside nn.Linear). Results go to stdout; logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from . import __version__
from ._timing import median_seconds
from .butterfly import Butterfly


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _demo(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    n, batch = args.n, args.batch
    _log(
        f"twiddle {__version__}: Butterfly({n}, {n}) beside nn.Linear({n}, {n}), batch {batch}, float32, "
        f"{torch.get_num_threads()} threads"
    )
    linear = torch.nn.Linear(n, n)
    butterfly = Butterfly(n, n)
    x = torch.randn(batch, n)
    with torch.no_grad():
        max_err = (butterfly(x) - (x @ butterfly.to_dense().T + butterfly.bias)).abs().max().item()
        t_lin = median_seconds(lambda: linear(x))
        t_bfly = median_seconds(lambda: butterfly(x))
    xg = x.clone().requires_grad_(True)

    def fwd_bwd(module: torch.nn.Module) -> None:
        module(xg).sum().backward()

    t_lin_fb = median_seconds(lambda: fwd_bwd(linear))
    t_bfly_fb = median_seconds(lambda: fwd_bwd(butterfly))
    count = butterfly.parameter_count()
    rows = [
        ("layer", "parameters", "forward ms", "fwd+bwd ms"),
        (f"nn.Linear({n}, {n})", f"{count.dense}", f"{t_lin * 1e3:.3f}", f"{t_lin_fb * 1e3:.3f}"),
        (
            f"twiddle.Butterfly({n}, {n})",
            f"{count.structured}",
            f"{t_bfly * 1e3:.3f}",
            f"{t_bfly_fb * 1e3:.3f}",
        ),
    ]
    result = {
        "n": n,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "linear": {"params": count.dense, "forward_ms": t_lin * 1e3, "forward_backward_ms": t_lin_fb * 1e3},
        "butterfly": {
            "params": count.structured,
            "forward_ms": t_bfly * 1e3,
            "forward_backward_ms": t_bfly_fb * 1e3,
        },
        "max_abs_error_vs_dense": max_err,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"\nparameters: {count.ratio:.1f}x fewer than dense")
    print(f"forward(x) vs x @ to_dense().T + bias: max |difference| = {max_err:.2e} (float32)")
    print("(the butterfly runs on the pure-PyTorch reference multiply; the fused kernel is future work)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twiddle", description="Butterfly factorizations for PyTorch.")
    parser.add_argument("--version", action="version", version=f"twiddle {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a Butterfly layer beside nn.Linear: parameters, speed, exactness")
    demo.add_argument("-n", type=int, default=1024, help="layer width (default 1024)")
    demo.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "n", 1) <= 0:
        parser.error(f"-n must be a positive integer, got {args.n}")
    if getattr(args, "batch", 1) <= 0:
        parser.error(f"--batch must be a positive integer, got {args.batch}")
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
