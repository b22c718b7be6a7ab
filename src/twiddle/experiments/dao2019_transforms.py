"""Dao et al. 2019, the RMSE table: how well a butterfly times a permutation fits each target, for n = 8…1024.

For every target (scaled by 1/√n, see :mod:`twiddle.factorize.targets`) and size, the table gives the RMSE found
by the closed-form hierarchical method (permutation searched among the 8 BP permutations and their products, with
complex lifts for real targets) and by the paper's gradient method (complex twiddles, learned relaxed
permutations, restarts batched, per-cell time budget; the paper's model per target: BPP for DCT/DST, BPBP for
convolution, BP otherwise), beside the paper's reported RMSE and the two baselines at the same parameter budget
(``2 n log2 n``): sparse (keep the largest entries) and low-rank (rank ``log2 n`` by SVD).

Departures from the paper: its search ran under HyperBand on 8 GPUs with up to 320 restarts; here 16 restarts
share a wall-clock budget per cell on the CPU, and the gradient method's polish starts from the closed-form
projection under each learned permutation (``polish="hierarchical"``, see :mod:`twiddle.factorize.gradient`;
BPBP has no closed form and uses the paper's L-BFGS polish, after a short L-BFGS screen of every distinct learned
permutation). The hierarchical method fits one butterfly, and for convolution (a product of two) its spectral
fit: two butterflies in closed form from the eigenvectors (see :mod:`twiddle.factorize.spectral`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from .._layout import is_power_of_two
from ..factorize import factorize, target_matrix
from . import register
from ._output import panels, write_results

TARGETS = ("dft", "dct", "dst", "convolution", "hadamard", "hartley", "legendre", "hilbert", "randn")
SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
QUICK_SIZES = (8, 16)

# the paper's model per target (gradient method)
PAPER_MODEL = {"dct": "bpp", "dst": "bpp", "convolution": "bpbp"}
# the hierarchical method's: BPP is among its one-butterfly candidates; BPBP is its spectral fit
_HIERARCHICAL_MODEL = {"convolution": "bpbp"}

# RMSE reported by the paper (its Table 1), n = 8 ... 1024
PAPER_RMSE = {
    "dft": (3.1e-6, 4.6e-6, 8.7e-6, 1.0e-5, 2.0e-5, 3.8e-5, 8.0e-5, 5.7e-5),
    "dct": (4.4e-6, 1.1e-5, 8.6e-6, 1.2e-5, 2.1e-5, 1.9e-5, 3.1e-5, 7.3e-5),
    "dst": (1.1e-6, 7.5e-6, 4.6e-5, 5.1e-5, 3.0e-5, 2.1e-5, 3.6e-5, 4.6e-5),
    "convolution": (4.0e-6, 2.5e-5, 6.4e-5, 7.6e-5, 5.9e-5, 7.8e-5, 6.3e-5, 1.9e-2),
    "hadamard": (8.8e-7, 7.8e-6, 1.3e-5, 3.9e-5, 3.5e-5, 4.5e-5, 6.1e-5, 3.6e-5),
    "hartley": (3.4e-6, 9.0e-6, 1.1e-5, 1.3e-5, 3.6e-5, 4.3e-5, 4.5e-5, 3.6e-5),
    "legendre": (3.4e-2, 2.9e-2, 2.4e-2, 1.4e-2, 7.9e-3, 4.5e-3, 2.6e-3, 1.6e-3),
    "hilbert": (6.4e-3, 5.9e-3, 4.2e-3, 2.7e-3, 1.6e-3, 1.1e-3, 6.5e-4, 3.7e-4),
    "randn": (1.4e-1, 1.6e-1, 1.4e-1, 1.1e-1, 8.4e-2, 6.1e-2, 4.4e-2, 3.1e-2),
}


def sparse_baseline_rmse(m: torch.Tensor, budget: int) -> float:
    """RMSE of keeping the ``budget`` largest-magnitude entries."""
    flat = m.reshape(-1)
    keep = torch.topk(flat.abs(), min(budget, flat.numel())).indices
    approx = torch.zeros_like(flat)
    approx[keep] = flat[keep]
    return float((approx - flat).abs().pow(2).mean().sqrt())


def lowrank_baseline_rmse(m: torch.Tensor, rank: int) -> float:
    """RMSE of the best rank-``rank`` approximation (truncated SVD)."""
    s = torch.linalg.svdvals(m)
    return float(s[rank:].pow(2).sum().sqrt() / m.shape[0])


@register("dao2019-transforms", "Dao et al. 2019 Table 1: RMSE of butterfly x permutation fits, n = 8..1024")
def main(*, quick: bool, out: Path, methods: tuple[str, ...] = ("hierarchical", "gradient"),
         sizes: tuple[int, ...] | None = None, targets: tuple[str, ...] = TARGETS, time_budget: float | None = None,
         seed: int = 0, resume: bool = False, **options) -> dict:
    """Run the table's cells (target-major) and write ``out/results.json`` and ``out/table.md`` after every cell
    (``"complete": false`` until the last), then the heatmap. ``resume=True`` keeps the cells an earlier run with
    the same methods, seed and budget left in ``out/results.json`` and runs only the others."""
    from tqdm import tqdm

    if options:
        raise ValueError(f"options {sorted(options)} do not apply to dao2019-transforms")
    sizes = tuple(sizes or (QUICK_SIZES if quick else SIZES))
    bad = [n for n in sizes if isinstance(n, bool) or not isinstance(n, int) or n < 2 or not is_power_of_two(n)]
    if bad:
        raise ValueError(f"sizes must be powers of two >= 2, got {bad}")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown targets {unknown}; the table's targets are {TARGETS}")
    targets = tuple(targets)
    budget = time_budget if time_budget is not None else (5.0 if quick else 600.0)
    cells = [(t, n) for t in targets for n in sizes]
    settings = {"experiment": "dao2019-transforms", "quick": quick, "methods": list(methods), "seed": seed,
                "time_budget_per_cell": budget}
    done = _finished_cells(out / "results.json", settings) if resume else {}
    rows = []
    for target, n in tqdm(cells, desc="dao2019-transforms", file=sys.stderr):
        if (target, n) in done:
            rows.append(done[(target, n)])
            continue
        m = target_matrix(target, n, seed=seed)
        params = 2 * n * int(math.log2(n))
        row = {
            "target": target,
            "n": n,
            "paper_rmse": PAPER_RMSE[target][SIZES.index(n)] if n in SIZES else None,
            "sparse_rmse": sparse_baseline_rmse(m, params),
            "lowrank_rmse": lowrank_baseline_rmse(m, int(math.log2(n))),
        }
        for method in methods:
            if method == "hierarchical":  # one butterfly (its BPP fits included), two for convolution (spectral)
                result = factorize(m, method="hierarchical", model=_HIERARCHICAL_MODEL.get(target, "bp"))
            else:
                result = factorize(m, method="gradient", time_budget=budget, seed=seed,
                                   model=PAPER_MODEL.get(target, "bp"))
            row[f"{method}_rmse"] = result.rmse
            row[f"{method}_seconds"] = result.seconds
            row[f"{method}_permutation"] = result.permutation_name
        rows.append(row)
        # a long run that stops early keeps what it finished (and --resume picks up from there)
        write_results(out, {**settings, "complete": False, "rows": rows}, _table(rows, methods))
    results = {**settings, "complete": True, "rows": rows}
    write_results(out, results, _table(rows, methods))
    _heatmap(rows, methods, sizes, targets, out / "rmse.png")
    return results


def _finished_cells(path: Path, settings: dict) -> dict[tuple[str, int], dict]:
    """The rows of an earlier run at ``path`` by (target, n); none if there is no file. A run with other settings
    is an error: its cells would not be comparable."""
    if not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text())
        rows = earlier["rows"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot resume from {path}: not a dao2019-transforms results file ({exc})") from None
    differ = {k: (earlier.get(k), v) for k, v in settings.items() if earlier.get(k) != v}
    if differ:
        detail = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in differ.items())
        raise ValueError(f"cannot resume from {path}: it was made with other settings ({detail}); "
                         "run with the same settings, another --out, or without --resume")
    return {(r["target"], r["n"]): r for r in rows}


def _table(rows: list[dict], methods: tuple[str, ...]) -> str:
    head = ["target", "n", "paper (gradient)"] + [f"ours: {m}" for m in methods] + ["sparse", "low-rank"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        paper = "" if r["paper_rmse"] is None else f"{r['paper_rmse']:.1e}"
        ours = [f"{r[f'{m}_rmse']:.1e} ({r[f'{m}_seconds']:.1f} s)" for m in methods]
        lines.append("| " + " | ".join([r["target"], str(r["n"]), paper, *ours, f"{r['sparse_rmse']:.1e}",
                                         f"{r['lowrank_rmse']:.1e}"]) + " |")
    note = ("\nRMSE = ‖B P − M‖_F / n with M scaled by 1/√n. The paper's column and our gradient column use the "
            "paper's model per target (BP; BPP for DCT/DST; BPBP for convolution); the hierarchical column fits one "
            "butterfly (BP or BPP permutations, complex lifts for real targets), and two for convolution (BPBP, "
            "in closed form from the eigenvectors).\n")
    return "\n".join(lines) + "\n" + note


def _heatmap(rows, methods, sizes, targets, path: Path) -> None:
    columns = ["paper"] + list(methods) + ["sparse", "lowrank"]
    index = {(r["target"], r["n"]): r for r in rows}
    with panels(path, len(columns), 3.2, 0.45 * len(targets) + 1.8, tight=False) as (fig, axes):
        for i, (ax, col) in enumerate(zip(axes, columns, strict=True)):
            key = "paper_rmse" if col == "paper" else f"{col}_rmse"
            grid = np.array([[index[(t, n)].get(key) or np.nan for n in sizes] for t in targets], dtype=float)
            image = ax.imshow(np.log10(np.maximum(grid, 1e-16)), vmin=-8, vmax=0, cmap="viridis_r", aspect="auto")
            ax.set_xticks(range(len(sizes)), [str(n) for n in sizes], fontsize=7)
            ax.set_yticks(range(len(targets)), targets if i == 0 else [], fontsize=8)
            ax.set_title(col, fontsize=9)
        fig.colorbar(image, ax=axes, label="log10 RMSE", shrink=0.8)
