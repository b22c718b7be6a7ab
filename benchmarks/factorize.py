"""Hierarchical factorization benchmark: time and error for exact butterflies and the 2019 targets.

    python benchmarks/factorize.py                      # n = 256 ... 4096
    python benchmarks/factorize.py --sizes 1024 --out benchmarks/results

Prints a markdown table and writes factorize.json. Targets are the 2019 paper's, and ``shuffled-butterfly``: a
random butterfly (seed 0) with its columns in a random order, which no BP or BPP permutation fits and
``permutation="recover"`` (also tried by ``"auto"``) reads off the matrix, and ``rows-shuffled-butterfly``: the
same with its rows shuffled instead (``Q B``, read through the transpose), ``both-shuffled-butterfly``: both
(``Q B P``), and ``rows-shuffled-dct``: the DCT with its rows shuffled (exact only through a complex lift, as
``Re(Q B P)``), and ``convolution`` (a circulant) and ``toeplitz`` (a linear convolution's n × n matrix, n ≤ 1024:
through a circulant of size 2n) fitted by two butterflies (``model="bpbp"``: the spectral fit, from the
eigenvectors). ``--targets`` reruns some and keeps the other targets' rows of the JSON already in ``--out``. The
peer figure (pyfaust's
hierarchical factorization of the DFT) is 0.23 s at n = 1024 and about 9 s at n = 4096 on 2 cores (see
shared/DESIGN.md section 5).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import twiddle
from twiddle.factorize import factorize, target_matrix

CASES = (("dft", "bitrev"), ("hadamard", "identity"), ("dft", "auto"), ("dct", "auto"), ("randn", "auto"),
         ("shuffled-butterfly", "auto"), ("shuffled-butterfly", "recover"), ("rows-shuffled-butterfly", "recover"),
         ("both-shuffled-butterfly", "recover"), ("rows-shuffled-dct", "recover"), ("convolution", "auto"),
         ("toeplitz", "auto"))
# the targets fitted by two butterflies (the hierarchical method's spectral fit)
MODEL = {"convolution": "bpbp", "toeplitz": "bpbp"}
SHUFFLED = ("shuffled-butterfly", "rows-shuffled-butterfly", "both-shuffled-butterfly")


def _matrix(target: str, n: int) -> torch.Tensor:
    if target == "toeplitz":  # a linear convolution's matrix: a random filter of 2n - 1 taps (seed 0)
        taps = torch.randn(2 * n - 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / n ** 0.5
        return taps[(torch.arange(n).unsqueeze(1) - torch.arange(n).unsqueeze(0)) + n - 1]
    if target == "rows-shuffled-dct":
        return target_matrix("dct", n)[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    if target not in SHUFFLED:
        return target_matrix(target, n)
    torch.manual_seed(0)
    dense = twiddle.Butterfly(n, n, bias=False).double().to_dense().detach()
    shuffle = torch.randperm(n)
    if target == "shuffled-butterfly":
        return dense[:, shuffle]
    if target == "rows-shuffled-butterfly":
        return dense[shuffle]
    return dense[shuffle][:, torch.randperm(n)]


def _line(row: dict) -> str:
    perm = row["permutation"] + ("" if row.get("model", "bp") == "bp" else f", {row['model']}")
    return (f"| {row['n']} | {row['target']} | {perm} | {row['order']} | {row['seconds']:.3f} | "
            f"{row['relative_error']:.2e} | {row['found']} |")


def _merge(path: Path, rows: list[dict], targets: list[str]) -> list[dict]:
    """``rows`` with the rows of ``path`` (an earlier run's JSON) for the other targets, in the table's order."""
    kept = []
    if path.exists():
        kept = [row for row in json.loads(path.read_text())["rows"] if row["target"] not in targets]
    case_index = {case: i for i, case in enumerate(CASES)}
    return sorted(kept + rows, key=lambda row: (row["n"], case_index.get((row["target"], row["permutation"]),
                                                                          len(CASES))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--orders", nargs="+", default=["right", "balanced"])
    parser.add_argument("--targets", nargs="+", default=None, choices=sorted({target for target, _ in CASES}),
                        help="only these targets (default: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = []
    lines = ["| n | target | permutation | order | seconds | relative error | found permutation |",
             "|---|---|---|---|---|---|---|"]
    for n in args.sizes:
        for target, perm in CASES:
            if args.targets is not None and target not in args.targets:
                continue
            model = MODEL.get(target, "bp")
            if perm == "auto" and n > 1024 and (model == "bp" or target == "toeplitz"):
                continue  # 8 candidates: a multiple of the single-permutation time; Toeplitz: a 2n circulant
            matrix = _matrix(target, n)
            for order in args.orders:
                start = time.perf_counter()
                result = factorize(matrix, permutation=perm, order=order, model=model)
                seconds = time.perf_counter() - start
                rows.append({"n": n, "target": target, "permutation": perm, "model": model, "order": order,
                             "seconds": seconds, "relative_error": result.relative_error,
                             "found": result.permutation_name})
                lines.append(_line(rows[-1]))
                print(lines[-1], flush=True)
    if args.targets is not None:  # a partial run: the other targets' rows of the last full run are kept
        rows = _merge(args.out / "factorize.json", rows, args.targets)
        lines = lines[:2] + [_line(row) for row in rows]
    table = "\n".join(lines)
    print(f"\n{torch.get_num_threads()} threads\n\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "factorize.json").write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))
    (args.out / "factorize.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
