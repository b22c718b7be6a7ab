"""twiddle: butterfly factorizations for PyTorch.

Public names (see README "API at a glance"):

* :class:`Butterfly` — a drop-in ``nn.Linear`` replacement with O(n log n) parameters and cost.
* :mod:`twiddle.ops` — the butterfly multiply (functional form).
* :mod:`twiddle.permutations` — bit reversal, inverses, :class:`~twiddle.permutations.FixedPermutation`.
"""

from . import ops, permutations
from .butterfly import Butterfly

__all__ = ["Butterfly", "ops", "permutations"]
__version__ = "0.1.0"
