"""Find a fast algorithm for a matrix: ``M ≈ B P`` with ``B`` a butterfly and ``P`` a permutation.

:func:`factorize` is the entry point; :mod:`~twiddle.factorize.targets` has the 2019 paper's target matrices,
:mod:`~twiddle.factorize.hierarchical` the closed-form algorithm and :mod:`~twiddle.factorize.recover` the
closed-form recovery of any column permutation, row permutation, or both (:func:`recover_permutation`,
:func:`recover_both_permutations`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._validate import positive_int
from ..ops import prepare_kernel
from ..permutations import PERMUTATION_NAMES, check_permutation, named_permutation
from .gradient import GradientConfig, fit_bp
from .hierarchical import ORDERS, hierarchical_twiddle
from .lift import LIFTS, complex_lift
from .recover import (
    read_off_order,
    recover_both_permutations,
    recover_permutation,
    recover_two_sided,
    refine_two_sided,
)
from .result import FactorizationResult, PermutedButterfly
from .spectral import circulant_embedding, eigendecomposition, inverse_twiddle, is_toeplitz, scale_columns
from .targets import TARGETS, target_matrix

__all__ = ["factorize", "load_matrix", "MATRIX_FILE_SUFFIXES", "FactorizationResult", "PermutedButterfly", "TARGETS",
           "target_matrix", "LIFTS", "complex_lift", "EXACT_TOLERANCE", "GradientConfig", "recover_permutation",
           "recover_both_permutations"]

METHODS = ("hierarchical", "gradient")
# the hierarchical method's models: one butterfly (and its permutations), or two from the eigenvectors (spectral)
_HIERARCHICAL_MODELS = ("bp", "bpbp")
# "auto" tries every distinct named permutation (identity = bp000 and bitrev = bp100 are among the 8)
_AUTO_CANDIDATES = tuple(name for name in PERMUTATION_NAMES if name.startswith("bp"))
_ALIASES = {"bp000": "identity", "bp100": "bitrev"}
# the hierarchical search stops at the first candidate whose relative error is this small (an exact factorization)
EXACT_TOLERANCE = 1e-10


MATRIX_FILE_SUFFIXES = (".npy", ".npz", ".mtx", ".csv", ".txt")


def _read_matrix_file(path: Path) -> np.ndarray:
    """The matrix in ``path``: ``.npy``; ``.npz`` holding one array or a ``scipy.sparse.save_npz`` matrix;
    ``.mtx`` (Matrix Market, dense or sparse); ``.csv`` (comma-separated) or ``.txt`` (whitespace-separated)."""
    suffix = path.suffix.lower()
    if suffix not in MATRIX_FILE_SUFFIXES:
        raise ValueError(f"matrix file must be one of {', '.join(MATRIX_FILE_SUFFIXES)}, got {str(path)!r}")
    if not path.exists():
        raise ValueError(f"matrix file {str(path)!r} does not exist")
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if "format" in names and "shape" in names:  # written by scipy.sparse.save_npz
                import scipy.sparse

                return scipy.sparse.load_npz(path).toarray()
            if len(names) != 1:
                raise ValueError(f"matrix file {str(path)!r} must hold one array (or a scipy.sparse.save_npz "
                                 f"matrix), found {len(names)}: {names[:8]}")
            return archive[names[0]]
    if suffix == ".mtx":
        import scipy.io
        import scipy.sparse

        read = scipy.io.mmread(path)
        return read.toarray() if scipy.sparse.issparse(read) else np.asarray(read)
    try:
        return np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"matrix file {str(path)!r} is not a table of numbers: {exc}") from None


def load_matrix(matrix) -> torch.Tensor:
    """A finite, non-empty matrix (2-D, any shape) as a float64/complex128 CPU tensor.

    ``matrix`` may be a tensor (strided or sparse, any device; detached), a numpy array, a ``scipy.sparse`` matrix
    or array, nested sequences of numbers, or a path to a file (``.npy``; ``.npz`` with one array or a
    ``scipy.sparse.save_npz`` matrix; ``.mtx`` Matrix Market; ``.csv``; whitespace-separated ``.txt``). Sparse
    inputs are made dense: the factorization works on all ``n²`` entries.

    Raises ValueError naming what is wrong (file, shape, emptiness, NaN/Inf) and TypeError for values that are
    not numbers.
    """
    if isinstance(matrix, (str, Path)):
        matrix = _read_matrix_file(Path(matrix))
    import scipy.sparse

    if scipy.sparse.issparse(matrix):
        matrix = matrix.toarray()
    if isinstance(matrix, (list, tuple)):
        try:
            matrix = np.asarray(matrix)
        except ValueError as exc:  # ragged rows
            raise ValueError(f"matrix rows must all have the same length: {exc}") from None
        if matrix.dtype == object:
            raise TypeError("matrix must hold numbers, got a sequence of other objects")
    if isinstance(matrix, np.ndarray):
        if not (np.issubdtype(matrix.dtype, np.number)) or np.issubdtype(matrix.dtype, np.bool_):
            raise TypeError(f"matrix must hold numbers, got numpy dtype {matrix.dtype}")
        matrix = torch.from_numpy(np.ascontiguousarray(matrix))
    if not isinstance(matrix, torch.Tensor):
        raise TypeError("matrix must be a torch.Tensor, a numpy array, a scipy.sparse matrix, a sequence of rows or "
                        f"a path to a {'/'.join(MATRIX_FILE_SUFFIXES)} file, got {type(matrix).__name__}")
    if matrix.layout != torch.strided:
        matrix = matrix.detach().to_dense()
    if matrix.dtype == torch.bool:
        raise TypeError("matrix must hold numbers, got dtype torch.bool")
    if matrix.dim() != 2:
        raise ValueError(f"matrix must be 2-D (rows × columns), got shape {tuple(matrix.shape)}")
    if matrix.numel() == 0:
        raise ValueError("matrix is empty")
    m = matrix.detach().to("cpu")
    m = m.to(torch.complex128) if m.is_complex() else m.to(torch.float64)
    if not bool(torch.isfinite(m).all()):
        raise ValueError("matrix contains NaN or Inf entries")
    return m


def _bpp_compositions(n: int) -> list[_Candidate]:
    """The distinct products of two BP permutations that are not BP permutations themselves.

    ``"bpA>bpB"`` gathers with ``bpA`` first, then with ``bpB``: ``perm = pA[pB]``.
    """
    singles = {tuple(named_permutation(name, n).tolist()) for name in _AUTO_CANDIDATES}
    seen: set[tuple[int, ...]] = set(singles)
    out = []
    for first in _AUTO_CANDIDATES:
        p1 = named_permutation(first, n)
        for second in _AUTO_CANDIDATES:
            perm = p1[named_permutation(second, n)]
            key = tuple(perm.tolist())
            if key not in seen:
                seen.add(key)
                out.append((f"{first}>{second}", perm, "all"))
    return out


# A candidate: (name, permutation, for which matrices: "all" — the matrix and its complex lifts —, "plain" — the
# matrix only —, or "lifts"). A permutation None is read off each matrix it is tried on: of its columns
# (recover_order; name _RECOVERED) or of its rows (recover_row_order, fitting M = Q B; name _RECOVERED_ROWS; on the
# matrix only: a real matrix exact through a lift is Re(B P) with a column permutation, the DCT's bp001>bp100, so
# with its rows shuffled it is Re(Q B P), both sides: _RECOVERED_BOTH, which reads off both at once, on the matrix
# and its lifts).
_Candidate = tuple[str, "torch.Tensor | None", str]
_RECOVERED = "recovered"
_RECOVERED_ROWS = "recovered-rows"
_RECOVERED_BOTH = "recovered-both"  # rows and columns at once, M = Q B P (recover_two_sided)
# a read-off order whose fit is this close (relative error) is refined by the hybrid order where it was not clean
_HYBRID_BELOW = 0.25
# the same for the two-sided read-off, whose first order is further off with noise (1 % noise, n = 64: 0.26 where the
# refined orders fit to 0.010); a random matrix's fits are near 0.9
_BOTH_HYBRID_BELOW = 0.5


def _permutation_stages(permutation: str | torch.Tensor | Sequence[int], n: int) -> list[list[_Candidate]]:
    """Candidate permutations in stages: the search stops after the first stage that has an exact fit.

    ``"auto"``: the BP permutations, the recovered one on the matrix itself (one candidate, exact for any ``B P``),
    the BPP products, then the recovered one on the complex lifts; a real matrix's transforms keep the fits they
    had before recovery existed (the DCT, exact through a lift under a BPP permutation, finds that one first)."""
    if isinstance(permutation, str):
        if permutation in ("auto", "bp"):
            bp = [(_ALIASES.get(name, name), named_permutation(name, n), "all") for name in _AUTO_CANDIDATES]
            if permutation == "bp":
                return [bp]
            return [bp, [(_RECOVERED, None, "plain"), (_RECOVERED_ROWS, None, "plain"),
                         (_RECOVERED_BOTH, None, "plain")], _bpp_compositions(n),
                    [(_RECOVERED, None, "lifts"), (_RECOVERED_BOTH, None, "lifts")]]
        if permutation == "bpp":
            return [_bpp_compositions(n)]
        if permutation == "recover":
            return [[(_RECOVERED, None, "all"), (_RECOVERED_ROWS, None, "plain"), (_RECOVERED_BOTH, None, "all")]]
        if permutation not in PERMUTATION_NAMES:
            raise ValueError(f"permutation must be 'auto', 'bp', 'bpp', 'recover', one of {PERMUTATION_NAMES} or an "
                             f"index sequence, got {permutation!r}")
        return [[(permutation, named_permutation(permutation, n), "all")]]
    perm = check_permutation(permutation, name="permutation")
    if perm.numel() != n:
        raise ValueError(f"permutation has {perm.numel()} entries but the butterfly is {n} × {n} (the matrix "
                         "zero-padded to a power of two)")
    return [[("given", perm, "all")]]


def _padded_size(rows: int, cols: int) -> int:
    """The least power of two >= 2 that holds a rows × cols matrix."""
    return max(2, 1 << (max(rows, cols) - 1).bit_length())


def _butterfly_size(m: torch.Tensor, size: int | None) -> int:
    """The butterfly size for matrix ``m``: ``size`` (checked: a power of two that holds ``m``), or by default the
    least power of two >= 2 that holds it."""
    n = _padded_size(*m.shape)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < n or size & (size - 1):
            raise ValueError(f"size must be a power of two >= {n} (the matrix is {m.shape[0]} × {m.shape[1]}), "
                             f"got {size!r}")
        n = size
    return n


def _pad(m: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """``m`` (rows × cols) zero-padded to ``n × n`` (default: the least power of two >= 2 that holds it).

    This loses nothing: for any butterfly ``B``, masking rows or columns of ``B P`` (multiplying by a diagonal
    0/1 matrix on the left, or on the right, where ``P`` moves it onto ``B``'s columns) gives a butterfly again
    (the mask is absorbed into the last or first factor), so the best ``B P`` for the padded matrix is, restricted
    to the block, the best for ``m``, with the same error."""
    rows, cols = m.shape
    n = _padded_size(rows, cols) if n is None else n
    if (rows, cols) == (n, n):
        return m
    padded = m.new_zeros(n, n)
    padded[:rows, :cols] = m
    return padded


def _fit_errors(module: PermutedButterfly, m: torch.Tensor, norm: float) -> tuple[float, float]:
    """``(relative, absolute)`` Frobenius error of ``module``'s matrix against ``m`` (``norm = ‖m‖_F``; the absolute
    error where ``m`` is zero)."""
    with torch.no_grad():
        err = module._distance(m)
    return (err / norm if norm > 0 else err), err


def _result(m: torch.Tensor, module: PermutedButterfly, rel: float, err: float, name: str, start: float, method: str,
            order: str, candidates: dict[str, float], lift: str | None = None, model: str = "bp", untried: int = 0
            ) -> FactorizationResult:
    """The :class:`FactorizationResult` of a fit ``module`` of ``m`` (candidates listed only where there were
    several; the permutations are the module's)."""
    return FactorizationResult(
        module=module,
        rmse=err / (m.shape[0] * m.shape[1]) ** 0.5,
        relative_error=rel,
        permutation=module.permutation.perm.clone(),
        permutation_name=name,
        seconds=time.perf_counter() - start,
        method=method,
        order=order,
        candidates=candidates if len(candidates) > 1 else {},
        lift=lift,
        model=model,
        output_permutation=None if module.output_permutation is None else module.output_permutation.perm.clone(),
        untried=untried,
    )


def _hierarchical_search(m: torch.Tensor, stages: list[list[_Candidate]], order: str,
                         complex: bool | None, stop_early: bool,
                         lifts: dict[str, torch.Tensor] | None = None,
                         size: int | None = None, progress: bool = False,
                         deadline: float | None = None) -> tuple[tuple, dict[str, float], int]:
    """Closed-form fits of ``m`` (rows × cols; zero-padded to ``n × n``, see :func:`_pad`) under each candidate
    permutation of ``n`` (and, for real ``m`` unless ``complex`` is False, of its complex lifts). Returns
    ``(rel, err, name, perm, module, lift)`` of the best (errors on ``m``), every candidate's relative error, and
    the number of candidates left untried because ``deadline`` (a ``time.perf_counter()`` value) had passed: it is
    checked before each candidate after the first (and between the rounds of a two-sided refinement), so a search
    overruns it by one candidate's fit at most. Lifts are skipped once an exact fit is found; ``stop_early`` stops
    at the first exact fit.

    The lifts (of the padded matrix) are computed when first needed and kept in ``lifts`` (pass the same dict to
    reuse them across calls on the same ``m``). ``progress``: a bar on stderr over the candidates (it stops short
    where an exact fit ends the search)."""
    lifts = {} if lifts is None else lifts
    rows, cols = m.shape
    padded = _pad(m, size)

    def lifted(kind: str) -> torch.Tensor:
        if kind not in lifts:
            lifts[kind] = complex_lift(padded, kind)
        return lifts[kind]

    # the matrices to factor: M itself, then its complex lifts, whose real part is M
    kinds: list[str | None] = [None]
    if not m.is_complex() and complex is not False:
        kinds += list(LIFTS)
    plain = padded.to(torch.complex128) if complex else padded
    norm = float(m.norm())
    best = None
    errors: dict[str, float] = {}
    candidates = [(lift, name, perm) for stage in stages for lift in kinds for name, perm, which in stage
                  if which == "all" or (which == "plain") == (lift is None)]
    bar = _candidate_bar(len(candidates), padded.shape[0], order) if progress else None

    def fit(found: str, lift: str | None, perm: torch.Tensor, out_perm: torch.Tensor | None,
            target: torch.Tensor) -> float:
        """Fit B to ``target[:, perm]`` (``target``: the matrix with its rows in ``out_perm``'s inverse order; the
        columns are read in ``perm``'s as the fit goes, no permuted copy), record its relative error on ``m``."""
        nonlocal best
        module = PermutedButterfly(perm, hierarchical_twiddle(target, order, columns=perm),
                                   real_output=lift is not None, in_features=cols, out_features=rows,
                                   out_perm=out_perm)
        rel, err = _fit_errors(module, m, norm)
        key = found if lift is None else f"{lift}:{found}"
        errors[key] = min(rel, errors.get(key, math.inf))  # a name fitted more than once: its best
        if best is None or rel < best[0]:
            best = (rel, err, found, perm, module, lift)
        return rel

    untried = 0
    for index, (lift, name, perm) in enumerate(candidates):
        exact = best is not None and best[0] <= EXACT_TOLERANCE
        if exact and stop_early:
            break
        if best is not None and deadline is not None and time.perf_counter() > deadline:
            untried = len(candidates) - index
            break
        if bar is not None:
            bar.update(1)
            if best is not None:
                bar.set_postfix(best=f"{best[0]:.2e}", refresh=False)
        # lifts only for matrices with no exact real factorization; read-off orders (each O(n³)) only until one fits
        if exact and (lift is not None or perm is None):
            continue
        work = plain if lift is None else lifted(lift)
        if perm is not None:
            fit(name, lift, perm, None, work)
            continue
        if name == _RECOVERED_BOTH:  # M = Q B P: B is M with its rows and its columns in the read-off orders
            columns_, rows_, clean = recover_two_sided(work)
            rel = fit(name, lift, columns_, torch.argsort(rows_), work[rows_])
            # noisy (not clean), near a fit, on the matrix only (as the one-sided hybrid below): each side re-read
            # with the other fixed, every round fitted
            if not clean and lift is None and rel < _BOTH_HYBRID_BELOW:
                for cols_r, rows_r in refine_two_sided(work, columns_, rows_, deadline=deadline):
                    fit(name + "-hybrid", lift, cols_r, torch.argsort(rows_r), work[rows_r])
            continue
        # a read-off order: of the columns (B should equal M Pᵀ, whose column i is column perm[i] of M), or of the
        # rows (M = Q B: B is M with its rows in the read-off order, Q puts them back)
        side = "rows" if name == _RECOVERED_ROWS else "columns"
        for hybrid in (False, True):
            order_, clean = read_off_order(work, side=side, hybrid=hybrid)
            if side == "rows":
                rel = fit(name + "-hybrid" * hybrid, lift, torch.arange(work.shape[1]), torch.argsort(order_),
                          work[order_])
            else:
                rel = fit(name + "-hybrid" * hybrid, lift, order_, None, work)
            # The hybrid order differs only where a split was not clean (noise). It is fitted on the matrix, not its
            # six lifts (it costs about as much again), and only near a fit (rel below _HYBRID_BELOW): it mends
            # the deep levels of a nearly right order; a matrix far from any B P gains nothing from it.
            if hybrid or clean or lift is not None or rel >= _HYBRID_BELOW:
                break
    if bar is not None:
        bar.set_postfix(best=f"{best[0]:.2e}")
        bar.close()
    assert best is not None
    return best, errors, untried


def _candidate_bar(total: int, n: int, order: str):
    """A tqdm bar on stderr over the hierarchical search's candidates."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=f"hierarchical ({order}) n={n}", unit="candidate", file=sys.stderr)


def _spectral_fit(target: torch.Tensor, m: torch.Tensor, order: str, complex: bool | None,
                  label: str = "spectral") -> tuple[float, float, str, PermutedButterfly]:
    """``C = Q (B D) R B' R Qᵀ`` from the eigenvectors ``V = Q B P`` of ``target`` (N × N, N a power of two; see
    :mod:`twiddle.factorize.spectral`), as a module for ``m``, the top-left block of ``target`` (``target`` itself,
    or a Toeplitz ``m`` in its circulant embedding): the input zero-padded to N, the first rows of the output kept.
    Returns ``(rel, err, name, module)``: errors on ``m``, ``name`` ``"<label>:<how V was read off>"``.
    ``complex=False`` refuses complex eigenvectors."""
    values, vectors = eigendecomposition(target)
    if complex is False and (vectors.is_complex() or values.is_complex()):
        raise ValueError("complex=False was asked for, but the matrix's eigendecomposition is complex (only a real "
                         "symmetric matrix, or one whose eigenvalues are all real, has real eigenvectors)")
    # V's columns come in LAPACK's order: read off (columns, then both sides), no named permutation to try
    stages = [[(_RECOVERED, None, "plain"), (_RECOVERED_BOTH, None, "plain")]]
    best, _, _ = _hierarchical_search(vectors, stages, order, complex=False, stop_early=True)
    _, _, how, columns, fitted, _ = best
    n = target.shape[0]
    twiddle = fitted.butterfly.twiddle.detach()
    if twiddle.is_complex() or values.is_complex() or complex:
        twiddle = twiddle.to(torch.complex128)
    out_perm = None if fitted.output_permutation is None else fitted.output_permutation.perm
    rows_back = torch.arange(n) if out_perm is None else torch.argsort(out_perm)  # Qᵀ x: x[argsort(q)]
    rev = named_permutation("bitrev", n)
    # V = Q B P: C = Q B (P Λ Pᵀ) B⁻¹ Qᵀ, with P Λ Pᵀ = diag(λ[columns]) (B is V with its columns in that order)
    module = PermutedButterfly(rows_back[rev], inverse_twiddle(twiddle),
                               real_output=not m.is_complex() and twiddle.is_complex(),
                               then=[(rev, scale_columns(twiddle, values[columns]))], out_perm=out_perm,
                               in_features=m.shape[1], out_features=m.shape[0])
    rel, err = _fit_errors(module, m, float(m.norm()))
    return rel, err, f"{label}:{how}", module


def _toeplitz_sizes(rows: int, cols: int, size: int | None) -> list[int]:
    """Circulant sizes to embed a rows × cols Toeplitz matrix in: ``size`` if given (and large enough), else the
    least power of two >= rows + cols - 1 and, should that not be exact (too few free entries to separate the
    eigenvalues of a symmetric filter), twice it."""
    least = _padded_size(rows + cols - 1, 1)
    if size is not None:
        return [size] if size >= rows + cols - 1 else []
    return [least, 2 * least]


def _factorize_spectral(m: torch.Tensor, permutation, order: str, complex: bool | None, n: int, size: int | None,
                        seed: int, start: float, progress: bool, time_budget: float) -> FactorizationResult:
    """The hierarchical method's ``model="bpbp"``: the spectral fit of ``m`` (square, of the butterfly's size) or of
    the circulant embedding of a Toeplitz ``m``, and where neither is exact the one-butterfly search of
    ``permutation`` too; the best fit."""
    if not (isinstance(permutation, str) and permutation in ("auto", "recover")):
        raise ValueError("model='bpbp' (hierarchical) reads its permutations off the eigenvectors; pass permutation="
                         f"'auto' or 'recover', got {permutation!r}")
    rows, cols = m.shape
    square = (rows, cols) == (n, n)
    toeplitz = is_toeplitz(m)
    if not square and not toeplitz:
        raise ValueError(f"model='bpbp' (hierarchical) factors a square matrix whose size is a power of two (its "
                         f"eigenvectors; zero-padding would add a repeated eigenvalue 0) or a Toeplitz matrix (in a "
                         f"circulant), got a {rows} × {cols} matrix that is neither, for a butterfly of size {n}")
    errors: dict[str, float] = {}
    best = None

    def consider(fit: tuple[float, float, str, PermutedButterfly]) -> None:
        nonlocal best
        errors[fit[2]] = fit[0]
        if best is None or fit[0] < best[0] or not np.isfinite(best[0]):  # a badly fitted V: nearly singular blocks
            best = fit

    if square:
        consider(_spectral_fit(m, m, order, complex))
    if toeplitz:
        generator = torch.Generator().manual_seed(seed)
        for embed in _toeplitz_sizes(rows, cols, size):
            if best is not None and best[0] <= EXACT_TOLERANCE:
                break
            consider(_spectral_fit(circulant_embedding(m, embed, generator=generator), m, order, complex,
                                   label=f"spectral-circulant{embed}"))
    model, lift, untried = "bpbp", None, 0
    deadline = start + time_budget
    if best is None or not best[0] <= EXACT_TOLERANCE:  # not diagonalized by a butterfly: one may do
        (rel1, err1, name1, _, module1, lift1), single, untried = _hierarchical_search(
            m, _permutation_stages(permutation, n), order, complex, True, size=n, progress=progress,
            deadline=deadline)
        errors.update(single)
        if best is None or rel1 < best[0] or not np.isfinite(best[0]):
            best, model, lift = (rel1, err1, name1, module1), "bp", lift1
    rel, err, name, module = best
    return _result(m, module, rel, err, name, start, "hierarchical", order, errors, lift, model, untried=untried)


def _factorize_gradient(m: torch.Tensor, permutation, config: GradientConfig, progress: bool,
                        start: float, size: int) -> FactorizationResult:
    if not (isinstance(permutation, str) and permutation == "auto"):
        raise ValueError("the gradient method learns its permutation; pass permutation='auto'")
    bar = None
    callback = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=config.max_epochs, desc=f"gradient {config.model.upper()} n={m.shape[0]}", file=sys.stderr)

        def callback(epoch: int, rmse: float) -> None:
            bar.update(1)
            bar.set_postfix(best_rmse=f"{rmse:.2e}")

    padded = _pad(m, size)
    try:
        fit = fit_bp(padded, config, progress=callback)
    finally:
        if bar is not None:
            bar.close()
    rows, cols = m.shape
    (perm, tw), *rest = [(p, t.reshape(1, 1, *t.shape)) for p, t in zip(fit["perms"], fit["twiddles"], strict=True)]
    module = PermutedButterfly(perm, tw, real_output=not m.is_complex(), then=rest, in_features=cols,
                               out_features=rows)
    rel, err = _fit_errors(module, m, float(m.norm()))
    return _result(m, module, rel, err, "learned", start, "gradient", "n/a", {}, model=config.model)


def factorize(
    matrix: torch.Tensor | np.ndarray | str | Path,
    method: str = "hierarchical",
    permutation: str | torch.Tensor | Sequence[int] = "auto",
    *,
    order: str = "right",
    complex: bool | None = None,
    trials: int = 16,
    time_budget: float = 600.0,
    seed: int = 0,
    target_rmse: float = 1e-4,
    model: str = "bp",
    polish: str = "hierarchical",
    progress: bool = False,
    size: int | None = None,
    **gradient_options,
) -> FactorizationResult:
    """Factor ``matrix`` as ``M ≈ B P`` (or ``Q B``, with ``permutation="auto"`` or ``"recover"``).

    Args:
        matrix: tensor (sparse layouts too), numpy array, ``scipy.sparse`` matrix, sequence of rows, or a path
            to a ``.npy``/``.npz``/``.mtx``/``.csv``/``.txt`` file (see :func:`load_matrix`); real or complex;
            any shape ``rows × cols``. A matrix that is not ``n × n`` with ``n`` a power of two is zero-padded
            to the least such ``n`` that holds it, which loses nothing (masking rows or columns of a butterfly
            gives a butterfly: the best fit of the padded matrix is the best fit of the block, with the same
            error); the module then takes ``cols`` inputs (padding them) and returns ``rows`` outputs, and the
            errors are those of the block.
        method: ``"hierarchical"`` — the closed-form algorithm (one batched rank-one SVD per split; exact, to
            rounding, when ``M P⁻¹`` is a butterfly); or ``"gradient"`` — the 2019 paper's training of a complex BP
            model with a learned relaxed permutation (see :mod:`twiddle.factorize.gradient`); real targets are
            fitted by the real part of the complex model, as in the paper.
        permutation: of the padded size ``n``: ``"auto"`` (hierarchical: try the 8 BP permutations — identity and
            bit reversal among them —, then the permutations read off the matrix (:func:`recover_permutation`:
            exact for ``B P`` with any column permutation ``P``, for ``Q B`` with any row permutation ``Q``, and
            for ``Q B P`` (:func:`recover_both_permutations`), fitted with ``Q`` in ``module.output_permutation``
            and ``result.output_permutation``), then the products of two BP permutations (the paper's BPP model),
            then the read-off permutations of the complex lifts (columns; both sides); keep the best, stop at the
            first exact one — relative error ≤ ``EXACT_TOLERANCE``), ``"bp"`` (the 8 only), ``"bpp"`` (the
            products only; these two try every candidate), ``"recover"`` (the read-off permutations only: columns,
            rows, both, of the matrix and (columns, both) of its lifts, stopping at the first exact one: for a
            matrix known to be ``B P``, ``Q B`` or ``Q B P``, the fastest; on a noisy matrix a one-sided read-off
            that is not exact is also tried in its hybrid order, ``"recovered-hybrid"``, and a two-sided one
            refined side by side, ``"recovered-both-hybrid"``), a name (``identity``,
            ``bitrev``, ``bp000``…``bp111``), or an explicit permutation ``perm`` with ``(P x)[i] = x[perm[i]]``.
        order: ``"right"`` (default: peel one factor at a time from the right; the fastest, as its SVDs are of
            thin ``m × 2`` blocks), ``"left"``, or ``"balanced"`` (see :mod:`twiddle.factorize.hierarchical`).
        complex: ``None`` (default): a complex matrix gets complex twiddles; a real one real twiddles and, if
            those are not exact, complex twiddles on its complex lifts (:mod:`twiddle.factorize.lift`: a complex
            matrix whose real part is ``M``; the module then returns the real part — this makes the DCT and DST
            exact). ``False``: real twiddles only. ``True``: complex twiddles, lifts included.
            The gradient method always uses complex twiddles.
        trials, time_budget, seed, target_rmse: the gradient method's restarts (trained together), wall-clock
            budget in seconds, seed and stopping RMSE; ``seed`` also draws the free entries of the hierarchical
            ``model="bpbp"`` circulant embedding of a Toeplitz matrix. The hierarchical search honours
            ``time_budget`` too: once it has passed, no further candidate permutation is tried (the one under way
            finishes), the best fit so far is returned with a warning, and ``result.untried`` counts the
            candidates left. At the default 600 s this never happens up to n = 1024 (a random 1024 × 1024
            matrix, every candidate: 18–31 s on 2 cores); at n = 4096 it does (a random matrix: 51 of the 277
            candidates in 179 s with ``time_budget=120``).
        progress: a progress bar on stderr: the gradient method's epochs, or the hierarchical search's candidate
            permutations (and lifts) with the best error so far.
        model: ``"bp"`` (default), ``"bpp"`` (``B P₂ P₁``) or ``"bpbp"`` (``B₂ P₂ B₁ P₁``: two butterflies; the
            result's module then has a second stage in ``module.then``). The gradient method learns any of the
            three. The hierarchical method takes ``"bp"`` (its BPP fits are ``permutation="bpp"``, also part of
            ``"auto"``) and ``"bpbp"``: the spectral fit (:mod:`twiddle.factorize.spectral`), in closed form from
            the eigendecomposition ``M = V Λ V⁻¹`` when ``V`` is a butterfly under permutations read off it
            (``M = Q B Λ' B⁻¹ Qᵀ``: circulants — convolutions —, dyadic convolutions, any matrix a butterfly
            diagonalizes, with distinct eigenvalues); a Toeplitz matrix (a linear convolution, any shape; a
            circulant of a symmetric filter, whose eigenvalues repeat) is fitted through a circulant it is a block
            of (``twiddle.factorize.spectral.circulant_embedding``: size ``size`` if given, else the least power of
            two >= rows + cols - 1 and then twice it; free entries drawn with ``seed``); where none of that is
            exact, the one-butterfly search of ``permutation`` (``"auto"`` or ``"recover"``) runs too and the best
            fit is returned (``result.model`` says which). Other matrices need a square power-of-two size.
        polish: the gradient method's polish, ``"hierarchical"`` (closed-form projection under each learned
            permutation, then L-BFGS) or ``"lbfgs"`` (the paper's; always used for ``bpbp``); see
            :mod:`twiddle.factorize.gradient`.
        size: the butterfly's size ``n`` (a power of two; default the least that holds the matrix). A block of a
            larger butterfly need not be a smaller butterfly: the top-left 64 × 64 block of the 128-point DFT is
            exact at ``size=128``, not at 64.
        **gradient_options: further settings of the gradient method, the fields of
            :class:`~twiddle.factorize.gradient.GradientConfig` (``polish_start``, ``compare``, ``screen_steps``,
            ``logit_std``, ``probes``, ``steps_per_epoch``, ``lr_min``/``lr_max``, …).

    Returns:
        A :class:`FactorizationResult` (``.module``, ``.rmse``, ``.relative_error``, ``.permutation``,
        ``.lift``, ``.seconds``, ``.summary()``). Computation is in float64/complex128; ``module`` holds float64
        parameters (``.float()`` converts).

    Empty matrices, matrices with NaN or Inf entries and arrays that are not 2-D are refused with a ValueError.
    """
    prepare_kernel()  # a first use builds the fused kernel (once per machine): not part of ``.seconds``
    start = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if not (isinstance(time_budget, numbers.Real) and not isinstance(time_budget, bool) and time_budget > 0):
        raise ValueError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    time_budget = float(time_budget)
    m = load_matrix(matrix)
    n = _butterfly_size(m, size)
    if method == "gradient":
        trials = positive_int(trials, "trials")
        fields = {f.name for f in dataclasses.fields(GradientConfig)}
        named = {"trials", "time_budget", "seed", "target_rmse", "model", "polish"}
        unknown = sorted(set(gradient_options) - (fields - named))
        if unknown:
            raise ValueError(f"unknown gradient options {unknown}; GradientConfig takes {sorted(fields - named)}")
        config = GradientConfig(trials=trials, time_budget=float(time_budget), seed=int(seed),
                                target_rmse=target_rmse, model=model, polish=polish, **gradient_options)
        return _factorize_gradient(m, permutation, config, progress, start, n)
    if gradient_options:
        raise ValueError(f"options {sorted(gradient_options)} apply to the gradient method only")
    if m.is_complex() and complex is False:
        raise ValueError("complex=False was asked for, but the matrix is complex")
    if model not in _HIERARCHICAL_MODELS:
        hint = " (the BPP fits are permutation='bpp', also tried by 'auto')" if model == "bpp" else ""
        raise ValueError(f"model must be one of {_HIERARCHICAL_MODELS} for the hierarchical method{hint}, got "
                         f"{model!r}")
    if model == "bpbp":
        result = _factorize_spectral(m, permutation, order, complex, n, size, seed, start, progress, time_budget)
    else:
        stop_early = isinstance(permutation, str) and permutation in ("auto", "recover")
        best, errors, untried = _hierarchical_search(m, _permutation_stages(permutation, n), order, complex,
                                                     stop_early, size=n, progress=progress,
                                                     deadline=start + time_budget)
        rel, err, name, _, module, lift = best
        result = _result(m, module, rel, err, name, start, method, order, errors, lift, untried=untried)
    if result.untried:
        warnings.warn(f"factorize: the time budget ({time_budget:g} s) ran out with {result.untried} candidate "
                      f"permutations untried; returning the best fit found (relative error "
                      f"{result.relative_error:.3e}). Pass a larger time_budget to try them all.", stacklevel=2)
    return result

