"""twiddle: butterfly factorizations for PyTorch.

Public names (see README "API at a glance"):

* :class:`Butterfly` — a drop-in ``nn.Linear`` replacement with O(n log n) parameters and cost.
* :mod:`twiddle.ops` — the butterfly multiply (functional form).
* :mod:`twiddle.permutations` — bit reversal, the BP permutations, :class:`~twiddle.permutations.FixedPermutation`.
* :mod:`twiddle.transforms` — exact fast transforms (FFT, DCT/DST, Hadamard, convolutions, …) as butterfly modules.
* :func:`factorize` — find ``M ≈ B P`` (butterfly times permutation) for a matrix.
* Fixed-structure networks (Ailon et al. 2021): :class:`TruncatedButterfly`, :func:`fjlt`,
  :class:`TruncatedButterflyLinear` (the ``J2ᵀ W̃ J1`` layer), :func:`replace_linear`,
  :class:`ButterflyAutoencoder` (:mod:`twiddle.autoencoder`), learned sketches (:mod:`twiddle.sketch`).
* :mod:`twiddle.checkpoint` — safetensors save/load of any module; :mod:`twiddle.legacy` — layers saved by the
  2019 reference code.
"""

from . import autoencoder, checkpoint, legacy, ops, permutations, sketch, transforms
from .autoencoder import ButterflyAutoencoder
from .butterfly import Butterfly
from .factorize import factorize
from .replace import replace_linear
from .truncated import TruncatedButterfly, TruncatedButterflyLinear, TruncatedButterflyTranspose, fjlt

__all__ = [
    "Butterfly",
    "ButterflyAutoencoder",
    "TruncatedButterfly",
    "TruncatedButterflyLinear",
    "TruncatedButterflyTranspose",
    "autoencoder",
    "checkpoint",
    "factorize",
    "fjlt",
    "legacy",
    "ops",
    "permutations",
    "replace_linear",
    "sketch",
    "transforms",
]
__version__ = "0.1.0"

# Register the fused CPU kernel's ops now (loading its cached build takes ~0.1 s; the first import on a machine
# builds it, as a first use would): programs saved with them (torch.export, AOTInductor, torch.jit.trace) then load
# in any process that has imported twiddle.
ops.prepare_kernel()
