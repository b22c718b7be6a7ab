"""The butterfly multiply: one public entry point that dispatches to the best available kernel.

Kernels:

* ``reference`` — pure PyTorch (:mod:`twiddle.ops.reference`), the specification; any device and dtype.
* ``fused-cpu`` — the fused C++ kernel (:mod:`twiddle.ops.fused_cpu`), built by the first import; CPU tensors of
  dtype float32/float64/complex64/complex128 (float16/bfloat16 are computed in float32, complex32 in
  complex64, and cast back).
* ``triton`` — the Triton GPU kernels (:mod:`twiddle.ops.triton_kernel`; unrolled up to n = 2048, a factor loop
  above, ``TWIDDLE_TRITON_VARIANT`` forces one) for CUDA tensors when Triton is installed: real dtypes as for
  ``fused-cpu``, complex64/complex128 (complex32 in complex64) through their real views.

Choose with the environment variable ``TWIDDLE_KERNEL`` = ``auto`` (default: fused where it applies),
``reference`` (never build or use the fused kernel) or ``fused`` (error where the fused kernel cannot run; the
gradient factorization's relaxed permutation, which has a CPU kernel only, falls back to PyTorch instead).
"""

from __future__ import annotations

import os

import torch
import torch.autograd.forward_ad as _forward_ad

from ..permutations import check_permutation
from . import _functorch, fused_cpu
from .reference import butterfly_multiply_reference, check_multiply_args, reference_multiply_permuted

__all__ = ["butterfly_multiply", "butterfly_multiply_reference", "kernel_for", "prepare_kernel", "transform_active"]

# computed in single precision and rounded once on output
_LOW_PRECISION = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.complex32: torch.complex64}
# the dtypes the fused CPU kernel computes in directly
_NATIVE = frozenset(fused_cpu.SUPPORTED_DTYPES)
# a complex dtype's real counterpart: the fused kernel reads a real x of that dtype with complex twiddles as x + 0i
_REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def _have_triton() -> bool:
    from . import triton_kernel  # imported lazily: only CUDA tensors need it

    return triton_kernel.HAVE_TRITON


def prepare_kernel(device: torch.device | str = "cpu") -> None:
    """Build/load the fast kernel for ``device`` now (outside any torch.compile region), registering its ops.

    ``import twiddle`` does this for the CPU (``twiddle::butterfly_multiply`` and its backward ops). Call it with
    ``"cuda"`` before loading a program saved on a GPU (``torch.export.load``, AOTInductor, ``torch.jit.load``) in a
    process that has not run a butterfly on a GPU yet: it registers the Triton ops
    (``twiddle::butterfly_multiply_triton``) such a program calls. Modules call it as they are built. Nothing
    happens under ``TWIDDLE_KERNEL=reference``.
    """
    if os.environ.get("TWIDDLE_KERNEL", "auto") == "reference":
        return
    kind = torch.device(device).type
    if kind == "cpu":
        fused_cpu.available()
    elif kind == "cuda":
        _have_triton()  # importing the Triton module defines its custom ops


# TWIDDLE_KERNEL is read on every call (so that it can change at run time). os.environ.get encodes the key and
# decodes the value (about a microsecond, a visible share of a batch-1 call); where os.environ keeps its values in
# a plain dict of encoded keys (CPython), read that dict and decode only values that are not one of the modes.
_ENVIRON_DATA = getattr(os.environ, "_data", None)
_ENCODED_MODES: dict[object, str] = {}
try:
    _KERNEL_KEY = os.environ.encodekey("TWIDDLE_KERNEL")  # type: ignore[attr-defined]
    _ENCODED_MODES = {os.environ.encodevalue(m): m for m in ("auto", "reference", "fused")}  # type: ignore[attr-defined]
except AttributeError:  # not CPython's os._Environ
    _ENVIRON_DATA = None


def _kernel_mode() -> str:
    """The value of ``TWIDDLE_KERNEL`` (default ``auto``), unvalidated."""
    if type(_ENVIRON_DATA) is dict:
        raw = _ENVIRON_DATA.get(_KERNEL_KEY)
        if raw is None:
            return "auto"
        mode = _ENCODED_MODES.get(raw)
        if mode is not None:
            return mode
    return os.environ.get("TWIDDLE_KERNEL", "auto")


_functorch_level = torch._C._functorch.maybe_current_level


def transform_active() -> bool:
    """True while a ``torch.func`` transform (``grad``, ``vmap``, ``jvp``, ``jacrev``, ``hessian``, ...) or
    forward-mode AD (``torch.autograd.forward_ad.dual_level``) is active. The fast kernels' C++ autograd is opaque
    to these transforms (they would fail, or, for a forward-mode tangent, drop it), so the multiply then runs the
    reference, whose tensor operations every transform understands. Two exceptions run the fused CPU kernel:
    forward-mode AD alone (one ``torch.func.jvp`` level, or a ``dual_level``) on real tensors, through a wrapper
    with a tangent rule (:mod:`twiddle.ops._functorch`), and ``torch.vmap`` alone where no gradient is needed,
    through the op's batching rule."""
    return _functorch_level() is not None or _forward_ad._current_level >= 0


def kernel_for(twiddle: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> str:
    """Name of the kernel :func:`butterfly_multiply` would use for these tensors: ``fused-cpu``, ``triton`` or
    ``reference`` (the reference while a ``torch.func`` transform is active, with the exceptions that
    :func:`transform_active` lists; ``bias`` counts there: whether it needs a gradient)."""
    return _choose_kernel(twiddle, x, bias)[0]


def _choose_kernel(twiddle: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[str, str]:
    """``(kernel, wrapper)``: :func:`kernel_for`'s answer, and the ``torch.func`` wrapper the call must go through
    (:mod:`twiddle.ops._functorch`), or ``""``: ``"forward"`` where only forward-mode AD is active, ``"grad"`` under
    one ``torch.func.grad`` level and ``vmap`` levels (per-sample gradients); under ``torch.vmap`` alone, where no
    gradient is needed, the fused CPU op runs as it is, through its batching rule."""
    mode = _kernel_mode()
    if mode not in ("auto", "reference", "fused"):
        raise ValueError(f"TWIDDLE_KERNEL must be auto, reference or fused, got {mode!r}")
    # ONNX export traces the model (torch.jit tracing, or torch.export under the dynamo exporter); the export
    # flag itself is slower to read, so it is read only while tracing
    compiling = torch.compiler.is_compiling()
    # (checked while torch.compile traces too: outside transforms it folds away; inside one, dynamo breaks the graph
    # here and the transform's body runs eagerly, where this routing applies; a fused kernel traced into a compiled
    # jvp would drop the tangent)
    if transform_active():
        if mode != "reference" and _functorch.forward_mode_only():
            fast = _fast_kernel(twiddle, x, compiling)
            if fast is not None and _functorch.fits(fast, twiddle, x):
                return fast, "forward"
        elif mode != "reference" and _vmap_without_gradients(twiddle, x, bias):
            if _fast_kernel(twiddle, x, compiling) == "fused-cpu":
                return "fused-cpu", ""
        elif mode != "reference" and _functorch.single_grad_with_vmaps(twiddle, x, bias):
            fast = _fast_kernel(twiddle, x, compiling)
            if fast is not None and _functorch.fits(fast, twiddle, x):
                return fast, "grad"
        if mode == "fused":
            raise RuntimeError(
                "TWIDDLE_KERNEL=fused but a torch.func transform is active that the fused kernels do not support "
                "here (they serve forward-mode AD alone on real CPU tensors, and vmap alone where no gradient is "
                "needed; the multiply runs the reference kernel there under TWIDDLE_KERNEL=auto)"
            )
        return "reference", ""
    if (compiling or torch.jit.is_tracing()) and torch.onnx.is_in_onnx_export():
        # ONNX has no butterfly operator: export the reference multiply's plain tensor operations
        if x.is_complex() or twiddle.is_complex():
            raise TypeError(
                "ONNX has no complex tensors: a module with complex twiddles (complex=True, fft/ifft/dct/dst/"
                "hartley/circulant transforms, complex factorizations) cannot be exported; real butterflies can"
            )
        return "reference", ""
    if mode == "reference":
        return "reference", ""
    fast = _fast_kernel(twiddle, x, compiling)
    if fast is not None:
        return fast, ""
    if mode == "fused":
        raise RuntimeError(
            f"TWIDDLE_KERNEL=fused but the fused kernel cannot run here (device {x.device}, dtype "
            f"{torch.promote_types(x.dtype, twiddle.dtype)}, kernel loaded: {fused_cpu.is_loaded()})"
        )
    return "reference", ""


_VMAP = torch._C._functorch.TransformType.Vmap


def _vmap_without_gradients(twiddle: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """True when every active transform is ``torch.vmap`` and nothing here needs a gradient (the fused op's C++
    autograd kernel cannot run on vmap's tensors; its batching rule serves the rest)."""
    stack = torch._C._functorch.get_interpreter_stack()
    if _forward_ad._current_level >= 0 or not all(level.key() == _VMAP for level in stack):
        return False
    return not torch.is_grad_enabled() or not (
        twiddle.requires_grad or x.requires_grad or (bias is not None and bias.requires_grad)
    )


def _fast_kernel(twiddle: torch.Tensor, x: torch.Tensor, compiling: bool) -> str | None:
    """``fused-cpu`` or ``triton`` where one serves these tensors' device and dtype, else None."""
    if x.is_cpu and twiddle.is_cpu:  # the common case first: this runs on every call of every layer
        dtype = x.dtype if x.dtype == twiddle.dtype else torch.promote_types(x.dtype, twiddle.dtype)
        fits = dtype in fused_cpu.SUPPORTED_DTYPES or dtype in _LOW_PRECISION
        # While torch.compile traces, never build or take locks: use the kernel only if it is already loaded
        # (modules load it when they are constructed, see Butterfly).
        if fits and (fused_cpu.is_loaded() if compiling else fused_cpu.available()):
            return "fused-cpu"
    elif x.is_cuda and twiddle.is_cuda and _have_triton():
        return "triton"
    return None


def butterfly_multiply(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    increasing_stride: bool = True,
    *,
    out_size: int | None = None,
    transpose: bool = False,
    conjugate: bool = False,
    bias: torch.Tensor | None = None,
    in_perm: torch.Tensor | None = None,
    out_perm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply the butterfly map stored in ``twiddle`` to the last dimension of ``x`` (and add ``bias``).

    Let ``(nstacks, nblocks, log_n, n // 2, 2, 2)`` be the twiddle shape (see :mod:`twiddle._layout`) and
    ``B_k = F_{k,last} ... F_{k,0}`` the product of the factors of stack ``k`` over all blocks.

    * ``transpose=False``: ``x`` is ``(..., m)`` with ``m <= n``. It is zero-padded to ``n``; every stack applies
      its butterfly; the results are concatenated to ``nstacks * n`` values and the first ``out_size``
      (default all) are returned: ``y = [B_0; ...; B_{nstacks-1}] · pad(x)``.
    * ``transpose=True``: the exact transpose of that map. ``x`` is ``(..., m)`` with ``m <= nstacks * n``,
      zero-padded to ``nstacks * n`` and split into stacks; ``y = Σ_k B_kᵀ x_k``, truncated to ``out_size``
      (default ``n``).
    * ``conjugate=True`` conjugates every twiddle (with ``transpose=True``: the Hermitian adjoint).
    * ``bias`` (``(out_size,)``) is added to every output row (fused into the kernel's final store).
    * ``in_perm`` (``(m,)`` integer tensor on ``x``'s device, a permutation of ``0..m-1``): ``x`` is read as
      ``x[..., in_perm]`` (``y = B · P x``, the BP model; a transform's bit reversal). The fused CPU and Triton
      kernels gather while they load and scatter the input gradient while they store, so no permuted copy of ``x``
      is made; the reference gathers first.
    * ``out_perm`` (``(out_size,)``, a permutation of ``0..out_size-1``): the result is ``z[..., out_perm] + bias``
      for the butterfly's output ``z`` (``y = P B x``; a transform's output reordering), scattered by the fast
      kernels' store; the reference gathers afterwards.

    Real ``x`` with complex twiddles (or the reverse) is promoted to the complex dtype, following torch's rules;
    any number of leading dimensions is allowed. Returns ``(..., out_size)``. Differentiable in ``twiddle``, ``x``
    and ``bias`` to any order: under ``create_graph=True`` the fast kernels' backward returns differentiable
    gradients (x's by the adjoint multiply on the fast kernel, the twiddles' through the reference; see
    :mod:`twiddle.ops._higher_order`). While a ``torch.func`` transform or forward-mode AD is active the reference
    runs (:func:`transform_active`).
    """
    _, m, out = check_multiply_args(twiddle, x, transpose, out_size)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (out,):
            got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias must be a tensor of shape ({out},) (one value per output), got {got}")
    in_perm = _checked_permutation(in_perm, "in_perm", m, f"x's {m} features", x.device)
    out_perm = _checked_permutation(out_perm, "out_perm", out, f"the {out} outputs", x.device)
    return _multiply_checked(twiddle, x, increasing_stride, m, out, transpose, conjugate, bias, in_perm, out_perm)


def _checked_permutation(
    perm: torch.Tensor | None, name: str, size: int, what: str, device: torch.device
) -> torch.Tensor | None:
    """``perm`` as an int64 permutation of ``0..size-1`` on ``device`` (None stays None), or an error naming it."""
    if perm is None:
        return None
    if not isinstance(perm, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (int64 indices) or None, got {type(perm).__name__}")
    if perm.device != device:
        raise ValueError(f"{name} is on {perm.device} but x is on {device}")
    if perm.dim() != 1 or perm.numel() != size:
        raise ValueError(f"{name} must be a 1-D permutation of {what}, got shape {tuple(perm.shape)}")
    if torch.compiler.is_compiling():  # values are data: checked when the graph runs
        if perm.dtype.is_floating_point or perm.is_complex() or perm.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers, got dtype {perm.dtype}")
        perm = perm.to(torch.long)
        if device.type != "cpu":  # (the fused CPU op checks its permutations itself)
            _assert_permutation_async(perm, name)
        return perm
    return check_permutation(perm, name)


def _assert_permutation_async(perm: torch.Tensor, name: str) -> None:
    """Assert, without waiting for the device, that the int64 ``perm`` holds each of ``0..n-1`` once: inside a
    compiled graph on a GPU, where reading the answer back would stall every call; a failure is a device-side
    assertion naming ``name`` (the Triton kernels would otherwise read and write outside the tensors)."""
    n = perm.numel()
    in_range = ((perm >= 0) & (perm < n)).all()
    counts = torch.zeros(n, dtype=torch.int32, device=perm.device).index_add_(
        0, perm.clamp(0, n - 1), torch.ones(n, dtype=torch.int32, device=perm.device)
    )
    torch._assert_async(in_range & (counts == 1).all(), f"{name} must hold each of 0..{n - 1} exactly once")


def _multiply_checked(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    increasing_stride: bool,
    m: int,
    out: int,
    transpose: bool,
    conjugate: bool,
    bias: torch.Tensor | None,
    in_perm: torch.Tensor | None = None,
    out_perm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch with arguments already validated (modules that own their twiddles call this directly): ``x`` is
    ``(..., m)``, the result ``(..., out)``; ``in_perm`` / ``out_perm`` checked int64 permutations of ``0..m-1`` /
    ``0..out-1`` on ``x``'s device, or None."""
    kernel, wrapper = _choose_kernel(twiddle, x, bias)
    if wrapper:
        run = _functorch.grad_transform_multiply if wrapper == "grad" else _functorch.multiply
        return run(twiddle, x, increasing_stride, m, out, transpose, conjugate, bias, in_perm, out_perm)
    if kernel == "fused-cpu":
        # the common case, checked first with cheap identity tests: one dtype the kernel runs natively (complex
        # ones as real views, taken by the extension's entry), a 2-D input; everything else (promotion, low
        # precision, reshapes) takes the general path below
        tdtype = twiddle.dtype
        if (
            (x.dtype is tdtype or x.dtype is _REAL_OF.get(tdtype))  # (a real x with complex twiddles: read as x + 0i)
            and tdtype in _NATIVE
            and (bias is None or bias.dtype is tdtype)
            and x.ndim == 2
        ):
            return fused_cpu.butterfly_multiply_op(
                twiddle, x, bias, increasing_stride, transpose, conjugate, out, in_perm, out_perm
            )
    elif kernel == "reference":
        y = reference_multiply_permuted(twiddle, x, increasing_stride, out, transpose, conjugate, in_perm, out_perm)
        return y if bias is None else y + bias
    # one dtype throughout (the common case) needs no promotion; a 2-D input no reshape
    if x.dtype == twiddle.dtype and (bias is None or bias.dtype == x.dtype):
        dtype = x.dtype
    else:
        dtype = torch.promote_types(x.dtype, twiddle.dtype)
        if bias is not None:
            dtype = torch.promote_types(dtype, bias.dtype)
    compute = _LOW_PRECISION.get(dtype, dtype)
    tw = twiddle if twiddle.dtype == compute else twiddle.to(compute)
    x2 = x if x.ndim == 2 else x.reshape(-1, m)
    if x2.dtype != compute and not (kernel == "fused-cpu" and x2.dtype == _REAL_OF.get(compute)):
        x2 = x2.to(compute)  # (the fused kernel reads a real x of the complex compute precision as it is)
    b = bias if bias is None or bias.dtype == compute else bias.to(compute)
    if kernel == "triton":
        from .triton_kernel import triton_butterfly_multiply

        y = triton_butterfly_multiply(tw, x2, increasing_stride, out_size=out, transpose=transpose, bias=b,
                                      conjugate=conjugate, in_perm=in_perm, out_perm=out_perm)
    else:
        y = fused_cpu.fused_butterfly_multiply(
            tw, x2, increasing_stride, out_size=out, transpose=transpose, conjugate=conjugate, bias=b, in_perm=in_perm,
            out_perm=out_perm,
        )
    y = y if y.dtype == dtype else y.to(dtype)
    return y if x.ndim == 2 else y.reshape(*x.shape[:-1], out)
