"""twiddle: butterfly factorizations for PyTorch.

Public names (see README "API at a glance"):

* :class:`Butterfly` — a drop-in ``nn.Linear`` replacement with O(n log n) parameters and cost.
* :mod:`twiddle.ops` — the butterfly multiply (functional form).
* :mod:`twiddle.permutations` — bit reversal, the BP permutations, :class:`~twiddle.permutations.FixedPermutation`.
* :mod:`twiddle.transforms` — exact fast transforms (FFT, DCT/DST, Hadamard, convolutions, …) as butterfly modules.
* :func:`factorize` — find ``M ≈ B P`` (butterfly times permutation) for a matrix.
"""

from . import ops, permutations, transforms
from .butterfly import Butterfly
from .factorize import factorize

__all__ = ["Butterfly", "factorize", "ops", "permutations", "transforms"]
__version__ = "0.1.0"
