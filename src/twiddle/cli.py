"""The ``twiddle`` command line.

Subcommands: ``demo`` (a Butterfly layer beside nn.Linear), ``bench`` (the multiply benchmark), ``factor``
(find a butterfly factorization of a named target or a matrix file: .npy, .npz, .mtx, .csv, .txt).
Results go to stdout; logs and progress bars to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from . import __version__
from ._timing import median_seconds
from .butterfly import Butterfly
from .ops import kernel_for


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
        "kernel": kernel_for(butterfly.twiddle, x),
    }
    if not args.skip_factorize:
        result["factorize"] = _demo_factorize(batch)
    if args.json:
        print(json.dumps(result))
        return 0
    print("1. A Butterfly layer as a drop-in for nn.Linear\n")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"\nparameters: {count.ratio:.1f}x fewer than dense")
    print(f"forward(x) vs x @ to_dense().T + bias: max |difference| = {max_err:.2e} (float32)")
    print(f"butterfly kernel: {kernel_for(butterfly.twiddle, x)}")
    if "factorize" in result:
        f = result["factorize"]
        print("\n2. Finding fast algorithms\n")
        h = f["hierarchical_dft1024"]
        print(f"DFT-1024, hierarchical (closed form): relative error {h['relative_error']:.1e} in {h['seconds']:.2f} s,"
              f" permutation {h['permutation']}")
        g = f["gradient_dft32"]
        print(f"DFT-32, gradient (the 2019 paper, permutation learned): RMSE {g['rmse']:.1e} in {g['seconds']:.1f} s;"
              f" learned permutation is {'a' if g['permutation_is_exact'] else 'NOT a'} valid FFT ordering")
        sp = f["speed_dft1024"]
        print(f"DFT-1024 as the factored module, batch {batch}, complex64: {sp['module_ms']:.3f} ms; "
              f"dense matmul {sp['dense_ms']:.3f} ms; torch.fft.fft {sp['fft_ms']:.3f} ms")
    return 0


def _demo_factorize(batch: int) -> dict:
    from .factorize import PermutedButterfly, factorize, target_matrix

    _log("factoring DFT-1024 in closed form, then learning DFT-32 by gradient descent ...")
    dft = target_matrix("dft", 1024)
    h = factorize(dft, permutation="auto")
    g = factorize(target_matrix("dft", 32), method="gradient", time_budget=120, seed=0)
    # a learned permutation is "exact" when the closed form finds an exact butterfly under it
    exact = factorize(target_matrix("dft", 32), permutation=g.permutation).relative_error < 1e-10
    module = PermutedButterfly(h.permutation, h.module.butterfly.twiddle.detach().to(torch.complex64))
    x = torch.randn(batch, 1024, dtype=torch.complex64)
    dense = dft.to(torch.complex64)
    with torch.no_grad():
        t_mod = median_seconds(lambda: module(x))
        t_dense = median_seconds(lambda: x @ dense.T)
        t_fft = median_seconds(lambda: torch.fft.fft(x, norm="ortho"))
    return {
        "hierarchical_dft1024": {"relative_error": h.relative_error, "seconds": h.seconds,
                                 "permutation": h.permutation_name},
        "gradient_dft32": {"rmse": g.rmse, "seconds": g.seconds, "permutation_is_exact": exact},
        "speed_dft1024": {"module_ms": t_mod * 1e3, "dense_ms": t_dense * 1e3, "fft_ms": t_fft * 1e3},
    }


def _bench(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from . import benchmark

    for name in ("sizes", "batches"):
        bad = [v for v in getattr(args, name) if v <= 0]
        if bad:
            raise SystemExit(f"twiddle bench: --{name} must be positive integers, got {bad}")
    try:
        rows = benchmark.run(args.sizes, args.batches, args.methods, memory_batch=args.memory_batch,
                             device=args.device)
    except ValueError as err:  # e.g. --device cuda where CUDA is not available
        raise SystemExit(f"twiddle bench: {err}") from err
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        benchmark.save_json(rows, args.out / "multiply.json", device=args.device)
        benchmark.save_plot(rows, args.out / "multiply.png", batch=max(args.batches), device=args.device)
        _log(f"wrote {args.out}/multiply.json and multiply.png")
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "device": benchmark.device_description(args.device),
                          "rows": [asdict(r) for r in rows]}))
    else:
        print(benchmark.format_table(rows))
    return 0


def _factor(args: argparse.Namespace) -> int:
    from .factorize import MATRIX_FILE_SUFFIXES, TARGETS, factorize, target_matrix

    if args.target.lower().endswith(MATRIX_FILE_SUFFIXES):
        matrix, name = args.target, args.target
    elif args.target in TARGETS:
        if args.n is None:
            raise SystemExit(f"twiddle factor: -n is required for the target {args.target!r}")
        matrix, name = target_matrix(args.target, args.n, seed=args.seed), args.target
    else:
        raise SystemExit(f"twiddle factor: unknown target {args.target!r}; expected one of {TARGETS} or a "
                         f"{'/'.join(MATRIX_FILE_SUFFIXES)} file")
    try:
        extra = {"progress": not args.json, "model": args.model, "time_budget": args.time_budget}
        if args.method == "gradient":
            extra.update(trials=args.trials, seed=args.seed, polish=args.polish, polish_start=args.polish_start)
        result = factorize(matrix, method=args.method, permutation=args.permutation, order=args.order,
                           size=args.size, **extra)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"twiddle factor: {exc}") from None
    info = {"target": name, **result.to_dict()}
    if args.out is not None:
        result.module.save(args.out)
        info["out"] = str(args.out)
        _log(f"saved the module to {args.out} (load with twiddle.factorize.PermutedButterfly.load)")
    if args.json:
        print(json.dumps(info))
    else:
        print(result.summary())
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from . import experiments

    if args.list or args.name is None:
        for exp in experiments.EXPERIMENTS.values():
            print(f"{exp.name}: {exp.description}")
        return 0
    options = {}
    if args.method:
        options["methods"] = tuple(args.method)
    if args.time_budget is not None:
        options["time_budget"] = args.time_budget
    if args.sizes:
        options["sizes"] = tuple(args.sizes)
    if args.targets:
        options["targets"] = tuple(args.targets)
    if args.resume:
        options["resume"] = True
    options["seed"] = args.seed
    if args.data is not None:
        options["data"] = args.data
    try:
        results = experiments.run(args.name, quick=args.quick, out=args.out, **options)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"twiddle reproduce: {exc}") from None
    table = (args.out / args.name / "table.md").read_text()
    print(json.dumps(results) if args.json else table)
    _log(f"wrote {args.out / args.name}/results.json, table.md and a PNG")
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
    demo.add_argument("--skip-factorize", action="store_true", help="only the layer comparison")
    demo.set_defaults(func=_demo)

    from .benchmark import DEFAULT_METHODS as BENCH_DEFAULT_METHODS
    from .benchmark import METHODS as BENCH_METHODS
    from .factorize import METHODS as FACTOR_METHODS
    from .factorize.gradient import MODELS as GRADIENT_MODELS
    from .factorize.gradient import POLISH_STARTS, POLISHES
    from .factorize.hierarchical import ORDERS
    from .permutations import PERMUTATION_NAMES

    bench = sub.add_parser("bench", help="butterfly multiply against nn.Linear, Monarch, torch.fft: ms and ratios")
    bench.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    bench.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256])
    bench.add_argument("--methods", nargs="+", default=list(BENCH_DEFAULT_METHODS), choices=BENCH_METHODS)
    bench.add_argument("--memory-batch", type=int, default=4096, help="rows for the peak-memory measurement")
    bench.add_argument("--out", type=Path, default=None, help="also write multiply.json and multiply.png here")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    bench.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    bench.set_defaults(func=_bench)

    factor = sub.add_parser("factor", help="butterfly factorization of a target matrix or a matrix file")
    factor.add_argument("target", help="dft, idft, dct, dst, hadamard, hartley, convolution, legendre, hilbert, "
                        "randn, or a matrix file: .npy, .npz (one array or scipy.sparse), .mtx, .csv, .txt (any "
                        "shape: zero-padded to a power of two)")
    factor.add_argument("-n", type=int, default=None, help="size of a named target")
    factor.add_argument("--size", type=int, default=None,
                        help="size of the butterfly (a power of two; default the least that holds the matrix)")
    factor.add_argument("--method", default="hierarchical", choices=FACTOR_METHODS)
    factor.add_argument("--permutation", default="auto", choices=("auto", "bp", "bpp", "recover") + PERMUTATION_NAMES,
                        help="auto: the 8 BP permutations, the permutations read off the matrix (recover: exact for "
                             "B P with any P, for Q B with any row permutation Q, and for Q B P), then the BP products "
                             "(BPP), "
                             "stopping at the first exact one")
    factor.add_argument("--order", default="right", choices=ORDERS)
    factor.add_argument("--seed", type=int, default=0,
                        help="seed of the random targets (convolution, randn) and of the gradient method")
    factor.add_argument("--trials", type=int, default=16, help="gradient method: restarts trained together")
    factor.add_argument("--time-budget", type=float, default=600.0,
                        help="seconds at most: the gradient method's training; the hierarchical search tries no "
                        "further candidate permutation after it")
    factor.add_argument("--model", default="bp", choices=GRADIENT_MODELS,
                        help="B P, B P P, or B P B P (two butterflies). The gradient method learns any; the "
                        "hierarchical method takes bp and bpbp (in closed form from the eigenvectors: exact for "
                        "convolutions, any matrix a butterfly diagonalizes, and Toeplitz matrices of any shape)")
    factor.add_argument("--polish", default="hierarchical", choices=POLISHES,
                        help="gradient method: closed form then L-BFGS under the learned permutation, or the "
                        "paper's L-BFGS alone")
    factor.add_argument("--polish-start", default="auto", choices=POLISH_STARTS,
                        help="gradient method: where the L-BFGS polish starts (auto: alternating closed-form fits "
                        "for bpbp, the trained twiddles otherwise)")
    factor.add_argument("--out", type=Path, default=None, help="save the learned module (safetensors)")
    factor.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    factor.set_defaults(func=_factor)

    reproduce = sub.add_parser("reproduce", help="reproduce a paper experiment (twiddle reproduce --list)")
    reproduce.add_argument("name", nargs="?", help="experiment name")
    reproduce.add_argument("--list", action="store_true", help="list the experiments")
    reproduce.add_argument("--quick", action="store_true", help="small sizes, seconds instead of hours")
    reproduce.add_argument("--out", type=Path, default=Path("results"), help="results go to OUT/NAME/")
    reproduce.add_argument("--data", type=Path, default=None,
                           help="folder with local data sets (cifar-10-batches-py/; for ailon2021-sketch also "
                                "hs-sod/ and techtc300/); default $TWIDDLE_DATA")
    reproduce.add_argument("--method", action="append", choices=FACTOR_METHODS,
                           help="factorization method(s) to run")
    reproduce.add_argument("--time-budget", type=float, default=None, help="seconds per gradient-method cell")
    reproduce.add_argument("--sizes", type=int, nargs="+", default=None,
                           help="dao2019-transforms: the sizes n to run (default 8…1024; --quick 8 16)")
    reproduce.add_argument("--targets", nargs="+", default=None,
                           help="dao2019-transforms: the targets to run (default: every target of the table)")
    reproduce.add_argument("--resume", action="store_true",
                           help="dao2019-transforms: keep the cells already in OUT/NAME/results.json (same methods, "
                                "seed and budget) and run only the rest; results are written after every cell")
    reproduce.add_argument("--seed", type=int, default=0)
    reproduce.add_argument("--json", action="store_true", help="print the results as one JSON object")
    reproduce.set_defaults(func=_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    n = getattr(args, "n", 1)
    if n is not None and n <= 0:
        parser.error(f"-n must be a positive integer, got {n}")
    if getattr(args, "batch", 1) <= 0:
        parser.error(f"--batch must be a positive integer, got {args.batch}")
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # stdout went to a reader that stopped early (`twiddle factor ... | head`): no traceback, and no second
        # error when Python flushes stdout at exit; 141 is a shell's status for a command killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
