"""Exact fast transforms as butterflies, for any size.

Every constructor returns a :class:`Transform`: an ``nn.Module`` made only of :class:`~twiddle.Butterfly`
modules, fixed permutations / selections and diagonals, so it runs in ``O(n log n)`` and can be fine-tuned
(``trainable=True``; the twiddles are fixed by default). Sizes that are not powers of two use Bluestein's
chirp-z (DFT family) or a power-of-two circulant embedding (circulant, Toeplitz, convolutions).

* DFT family: :func:`fft`, :func:`ifft` (``norm`` as ``torch.fft``), :func:`fft2d`, :func:`ifft2d`,
  :func:`hartley`.
* Real trigonometric: :func:`dct`, :func:`dst` (types 1 to 4; ``norm`` as ``scipy.fft``), :func:`idct`,
  :func:`idst`.
* Structured matrices: :func:`circulant`, :func:`toeplitz`, :func:`conv1d_circular`, :func:`conv2d_circular`.
* Others: :func:`hadamard`, :func:`haar`, :func:`fastfood`, :func:`acdc`, :func:`permutation_to_butterfly`.

Precision is chosen at construction: ``dtype=torch.float64`` computes the twiddles in double precision (complex128
for the complex ones; float64 transforms match scipy.fft to about 1e-15). Converting a module afterwards
(``.double()``, ``.to(torch.float64)``) converts the stored float32-accurate values, it does not recompute them
(errors stay near 1e-7, and a double-precision input gets a warning once): build the transform in the precision you
want, or call ``reset_parameters()`` after ``.double()``, which computes the values again in float64. Conversions
keep complex twiddles complex (``.to(torch.float64)`` gives them complex128, where plain PyTorch would discard their
imaginary parts); ``.half()`` makes them complex32 (computed in complex64), ``.to(torch.bfloat16)`` keeps them
complex64 (there is no complex bfloat16), and real results then come back in the input's half precision, as from a
converted ``nn.Linear``.

Values are computed on the CPU whatever torch's default device is, then the module moves to ``device`` (default:
torch's default device, so ``with torch.device("meta")`` gives a meta module); every transform keeps its
constructor's arguments, and :meth:`Transform.reset_parameters` computes its values again from them (after
``to_empty``, after fine-tuning, after ``.double()``).
"""

from ._benes import permutation_to_butterfly
from ._conv import circulant, conv1d_circular, conv2d_circular, toeplitz
from ._dft import fft, fft2d, hartley, ifft, ifft2d
from ._modules import Diagonal, Transform
from ._structured import acdc, fastfood, haar, hadamard
from ._trig import dct, dst, idct, idst

__all__ = [
    "fft",
    "ifft",
    "fft2d",
    "ifft2d",
    "hartley",
    "dct",
    "dst",
    "idct",
    "idst",
    "circulant",
    "toeplitz",
    "conv1d_circular",
    "conv2d_circular",
    "hadamard",
    "haar",
    "fastfood",
    "acdc",
    "permutation_to_butterfly",
    "Diagonal",
    "Transform",
]
