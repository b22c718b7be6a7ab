"""Reading the permutation of a noisy ``M = B P`` off the matrix: top-down against hybrid order.

    python benchmarks/recover_noise.py                          # n = 256, noise 0.1 %, 1 %, 3 %, six seeds
    python benchmarks/recover_noise.py --sizes 1024 4096 --seeds 1 --noise 0.01
    python benchmarks/recover_noise.py --sides both             # M = Q B P: recover_both_permutations

For each seed: a random butterfly (``Butterfly(n, n)``, torch seed 100 + seed), its columns shuffled (generator seed
``seed``), plus Gaussian noise of ``noise`` times the matrix's standard deviation (generator seed 50 + seed). Each
order is fitted in closed form (``factorize(M, permutation=order)``) and its error reported as a multiple of the
fit under the true permutation; ``search`` is what ``factorize(M, permutation="recover")`` keeps. Prints a markdown
table (median and worst ratio over the seeds, mean seconds of each read-off) and writes recover_noise.json.

``--sides both`` shuffles the rows too (generator seed ``1000 + seed``) and reads both orders off with
``recover_both_permutations`` (``method`` top-down or hybrid), each fitted as ``M[rows][:, perm]``; the table and
JSON are then recover_noise_both.md / .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

import twiddle
from twiddle.factorize import factorize, recover_both_permutations, recover_permutation


def _noisy_product(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, true permutation): M = B[:, shuffle] + noise, with M[:, argsort(shuffle)] ≈ B."""
    torch.manual_seed(100 + seed)
    dense = twiddle.Butterfly(n, n, bias=False).double().to_dense().detach()
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    clean = dense[:, shuffle]
    gaussian = torch.randn(clean.shape, generator=torch.Generator().manual_seed(50 + seed), dtype=clean.dtype)
    return clean + noise * clean.std() * gaussian, torch.argsort(shuffle)


def _error(matrix: torch.Tensor, perm: torch.Tensor, rows: torch.Tensor | None = None) -> float:
    """Relative error of the closed-form butterfly of ``matrix`` under the orders (``matrix[rows][:, perm]``)."""
    if rows is None:
        return factorize(matrix, permutation=perm, complex=False).relative_error
    n = matrix.shape[1]
    return factorize(matrix[rows][:, perm], permutation=torch.arange(n), complex=False).relative_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--noise", type=float, nargs="+", default=[1e-3, 1e-2, 3e-2])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--search", action=argparse.BooleanOptionalAction, default=True,
                        help="also run factorize(M, permutation='recover') (default: yes)")
    parser.add_argument("--sides", choices=["columns", "both"], default="columns",
                        help="shuffle the columns only (M = B P) or the rows too (M = Q B P)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = []
    cases = [(n, noise, seed) for n in args.sizes for noise in args.noise for seed in range(args.seeds)]
    for n, noise, seed in tqdm(cases, desc="noisy recover", unit="case"):
        matrix, truth = _noisy_product(n, noise, seed)
        true_rows = None
        if args.sides == "both":
            shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + seed))
            matrix, true_rows = matrix[shuffle], torch.argsort(shuffle)
        row = {"n": n, "noise": noise, "seed": seed, "truth_error": _error(matrix, truth, true_rows)}
        for method in ("top-down", "hybrid"):
            start = time.perf_counter()
            if args.sides == "both":
                rows_, order = recover_both_permutations(matrix, method=method)
            else:
                rows_, order = None, recover_permutation(matrix, method=method)
            row[f"{method}_seconds"] = time.perf_counter() - start
            row[f"{method}_error"] = _error(matrix, order, rows_)
        if args.search:
            result = factorize(matrix, permutation="recover", complex=False)
            row["search_error"], row["search_found"] = result.relative_error, result.permutation_name
        rows.append(row)
    lines = ["| n | noise | seeds | truth error (median) | top-down / truth (median, worst) | "
             "hybrid / truth (median, worst) | search / truth (median, worst) | top-down s | hybrid s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in args.sizes:
        for noise in args.noise:
            group = [r for r in rows if r["n"] == n and r["noise"] == noise]

            def ratios(key: str, group=group) -> str:
                if key not in group[0]:
                    return "-"
                values = [r[key] / r["truth_error"] for r in group]
                return f"{statistics.median(values):.2f}, {max(values):.2f}"

            lines.append(
                f"| {n} | {noise:g} | {len(group)} | {statistics.median(r['truth_error'] for r in group):.2e} "
                f"| {ratios('top-down_error')} | {ratios('hybrid_error')} | {ratios('search_error')} "
                f"| {statistics.mean(r['top-down_seconds'] for r in group):.2f} "
                f"| {statistics.mean(r['hybrid_seconds'] for r in group):.2f} |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    name = "recover_noise" + ("_both" if args.sides == "both" else "")
    (args.out / f"{name}.json").write_text(json.dumps({"threads": torch.get_num_threads(), "sides": args.sides,
                                                       "rows": rows}, indent=1))
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
