"""The 2019 paper's target matrices (Dao et al., "Learning Fast Algorithms for Linear Transforms Using Butterfly
Factorizations"), each an n × n matrix ``M`` with ``y = M x`` the transform, scaled by ``1/√n`` as in the paper."""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
import scipy.linalg
import torch

from .._validate import positive_int

__all__ = ["TARGETS", "target_matrix"]

TARGETS = ("dft", "idft", "dct", "dst", "hadamard", "hartley", "convolution", "legendre", "hilbert", "randn")


def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def target_matrix(name: str, n: int, *, seed: int = 0) -> torch.Tensor:
    """The named target at size ``n`` (float64, or complex128 for ``dft``/``idft``).

    * ``dft`` / ``idft``: ``exp(∓2πi jk/n) / √n`` (unitary).
    * ``dct`` / ``dst``: scipy's unnormalized type-II transforms as matrices (``M x = scipy.fft.dct(x)``), ``/ √n``.
    * ``hadamard``: Sylvester order, ``/ √n`` (orthogonal). ``hartley``: ``cos + sin`` of ``2π jk/n``, ``/ √n``.
    * ``convolution``: circulant of a Gaussian vector drawn with ``seed``, ``/ √n``.
    * ``legendre``: Legendre polynomials of degrees ``0…n-1`` at the ``n`` interior points of a uniform grid on
      ``[-1, 1]``, ``/ √n``. ``hilbert``: the Hilbert matrix divided by its 2-norm. ``randn``: Gaussian, ``/ √n``.
    """
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; expected one of {TARGETS} or a matrix file (.npy, .npz, .mtx, "
                         ".csv, .txt)")
    n = positive_int(n, "n")
    eye = np.eye(n)
    scale = 1.0 / math.sqrt(n)
    rng = np.random.default_rng(seed)
    if name == "dft":
        m = np.fft.fft(eye, axis=0) * scale
    elif name == "idft":
        m = np.fft.ifft(eye, axis=0) * n * scale
    elif name == "dct":
        m = scipy.fft.dct(eye, type=2, axis=0) * scale
    elif name == "dst":
        m = scipy.fft.dst(eye, type=2, axis=0) * scale
    elif name == "hadamard":
        if n & (n - 1):
            raise ValueError(f"the Sylvester Hadamard matrix needs n a power of two, got {n}")
        m = _hadamard(n) * scale
    elif name == "hartley":
        jk = np.outer(np.arange(n), np.arange(n)) * (2 * np.pi / n)
        m = (np.cos(jk) + np.sin(jk)) * scale
    elif name == "convolution":
        m = scipy.linalg.circulant(rng.standard_normal(n)) * scale
    elif name == "legendre":
        points = np.linspace(-1.0, 1.0, n + 2)[1:-1]
        m = np.polynomial.legendre.legvander(points, n - 1) * scale
    elif name == "hilbert":
        h = scipy.linalg.hilbert(n)
        m = h / np.linalg.norm(h, 2)
    else:  # randn
        m = rng.standard_normal((n, n)) * scale
    return torch.from_numpy(np.ascontiguousarray(m))
