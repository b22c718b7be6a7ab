"""Exact fast transforms as butterflies (work in progress)."""

from ._conv import circulant, conv1d_circular, conv2d_circular, toeplitz
from ._dft import fft, fft2d, hartley, ifft, ifft2d
from ._modules import Diagonal, Transform
from ._trig import dct, dst, idct, idst

__all__ = ["fft", "ifft", "fft2d", "ifft2d", "hartley", "dct", "dst", "idct", "idst", "circulant", "toeplitz",
           "conv1d_circular", "conv2d_circular", "Diagonal", "Transform"]
