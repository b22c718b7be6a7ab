"""Matrix data sets of the learned-sketch experiment (Ailon et al. 2021), read from a local directory.

Nothing is downloaded. Under ``--data DIR`` (or ``$TWIDDLE_DATA``) the experiment looks for

* ``hs-sod/``: the HS-SOD hyperspectral images, one cube per ``.mat`` (MATLAB v5/v7; v7.3 needs ``h5py``) or
  ``.npy`` file. The largest 3-D numeric array of a file is the cube; its smallest axis is the spectral one, and
  every band is one matrix, oriented with the longer side as rows (1024 × 768 for HS-SOD's images).
* ``techtc300/``: the TechTC-300 collection, one data set per ``vectors.dat`` file (SVMlight-style lines
  ``label id:value id:value ...``, ids from 1, ``#`` comments), anywhere below that folder. Each data set is one
  matrix, features × documents.
* CIFAR-10 in its python-pickle release (see :mod:`twiddle.experiments._data`): each image, converted to gray
  levels, is one 32 × 32 matrix.

Matrices of unequal shapes are zero-padded at the bottom/right to a common shape (zero rows and columns change
neither the best rank-k approximation's error nor a sketch's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["HS_SOD_FOLDER", "TECHTC_FOLDER", "load_hs_sod", "load_techtc", "cifar10_matrices", "pad_stack"]

HS_SOD_FOLDER = "hs-sod"
TECHTC_FOLDER = "techtc300"


def pad_stack(matrices: list[np.ndarray]) -> torch.Tensor:
    """Stack 2-D arrays into ``(count, max rows, max cols)`` float32, zero-padding each at the bottom/right."""
    if not matrices:
        raise ValueError("pad_stack needs at least one matrix")
    rows = max(m.shape[0] for m in matrices)
    cols = max(m.shape[1] for m in matrices)
    out = torch.zeros(len(matrices), rows, cols)
    for i, m in enumerate(matrices):
        out[i, : m.shape[0], : m.shape[1]] = torch.from_numpy(np.asarray(m, dtype=np.float32))
    return out


def _draw(items: list, count: int | None, seed: int) -> list:
    if count is None or count >= len(items):
        return items
    pick = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:count]
    return [items[i] for i in sorted(pick.tolist())]


def _read_cube(path: Path) -> np.ndarray:
    """The largest 3-D numeric array in a ``.npy`` or ``.mat`` file."""
    if path.suffix == ".npy":
        arrays = [np.load(path)]
    else:
        import scipy.io

        try:
            arrays = list(scipy.io.loadmat(path).values())
        except NotImplementedError:  # MATLAB v7.3 files are HDF5
            try:
                import h5py
            except ImportError as exc:
                raise RuntimeError(f"{path} is a MATLAB v7.3 (HDF5) file: reading it needs h5py "
                                   "(pip install h5py)") from exc
            with h5py.File(path, "r") as f:
                arrays = [np.asarray(f[key]) for key in f if isinstance(f[key], h5py.Dataset)]
    cubes = [a for a in arrays if isinstance(a, np.ndarray) and a.ndim == 3 and np.issubdtype(a.dtype, np.number)]
    if not cubes:
        raise ValueError(f"{path} holds no 3-D numeric array (expected a hyperspectral cube H × W × bands)")
    return max(cubes, key=lambda a: a.size)


def load_hs_sod(folder: str | Path, count: int | None = None, seed: int = 0) -> torch.Tensor:
    """Band matrices of the hyperspectral cubes in ``folder`` (``.mat``/``.npy``), ``(count, rows, cols)``.

    ``count`` matrices are drawn with ``seed`` from all bands of all cubes (all of them when None). Raises
    FileNotFoundError when the folder has no cube file."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.suffix in (".mat", ".npy")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"HS-SOD not found in {str(folder)!r}: put the data set's hyperspectral cubes (.mat, or .npy arrays "
            f"H × W × bands) in a folder named {HS_SOD_FOLDER}/ under --data DIR or $TWIDDLE_DATA")
    bands: list[np.ndarray] = []
    for path in files:
        cube = _read_cube(path)
        cube = np.moveaxis(cube, int(np.argmin(cube.shape)), 0)  # spectral axis first
        for band in cube:
            bands.append(band if band.shape[0] >= band.shape[1] else band.T)
    return pad_stack(_draw(bands, count, seed))


def _read_vectors(path: Path) -> np.ndarray:
    """One TechTC data set: documents from an SVMlight-style file, returned as features × documents."""
    docs: list[dict[int, float]] = []
    width = 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        entries: dict[int, float] = {}
        for token in line.split()[1:]:  # the first token is the label
            try:
                key, value = token.split(":")
                index = int(key)
                entries[index - 1] = float(value)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: expected 'id:value' with an integer id >= 1, got "
                                 f"{token!r}") from exc
            if index < 1:
                raise ValueError(f"{path}:{number}: feature ids start at 1, got {index}")
            width = max(width, index)
        docs.append(entries)
    if not docs:
        raise ValueError(f"{path} holds no document vectors")
    matrix = np.zeros((width, len(docs)), dtype=np.float32)
    for j, entries in enumerate(docs):
        for i, value in entries.items():
            matrix[i, j] = value
    return matrix


def load_techtc(folder: str | Path, count: int | None = None, seed: int = 0) -> torch.Tensor:
    """TechTC-300 data sets below ``folder`` (every ``vectors.dat``) as features × documents matrices, padded to a
    common shape, ``(count, features, documents)``; ``count`` drawn with ``seed`` (all when None)."""
    folder = Path(folder)
    files = sorted(folder.rglob("vectors.dat")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"TechTC-300 not found in {str(folder)!r}: put the collection's data set folders (each with its "
            f"vectors.dat) in a folder named {TECHTC_FOLDER}/ under --data DIR or $TWIDDLE_DATA")
    return pad_stack([_read_vectors(path) for path in _draw(files, count, seed)])


def cifar10_matrices(folder: str | Path, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` CIFAR-10 training images (python-pickle release in ``folder``) as 32 × 32 gray-level matrices in
    [0, 1], drawn with ``seed``."""
    from ._data import _CIFAR_TRAIN, _read_batch, _require_cifar10_files

    _require_cifar10_files(Path(folder))
    images = np.concatenate([_read_batch(Path(folder) / name)[0] for name in _CIFAR_TRAIN])
    picked = images[_draw(list(range(len(images))), count, seed)]  # convert only the drawn images
    return torch.from_numpy(picked.astype(np.float32).mean(axis=1) / 255.0)
