"""Independent dense/sparse constructions of butterfly maps, used as ground truth by the tests.

Nothing here calls twiddle's multiply: every factor is built entry by entry from the layout definition
(block ``i`` of a stride-``s`` factor acts on ``p = 2(i - i % s) + i % s`` and ``p + s``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def block_positions(n: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(n // 2)
    p = 2 * (i - i % stride) + i % stride
    return p, p + stride


def factor_matrix_loop(t: np.ndarray, stride: int) -> np.ndarray:
    """Dense factor from ``t`` of shape (n/2, 2, 2), with a plain Python loop over blocks."""
    n = 2 * t.shape[0]
    F = np.zeros((n, n), dtype=t.dtype)
    for i in range(n // 2):
        p = 2 * (i - i % stride) + i % stride
        q = p + stride
        F[p, p], F[p, q], F[q, p], F[q, q] = t[i, 0, 0], t[i, 0, 1], t[i, 1, 0], t[i, 1, 1]
    return F


def factor_matrix_sparse(t: np.ndarray, stride: int) -> sp.csr_matrix:
    n = 2 * t.shape[0]
    p, q = block_positions(n, stride)
    rows = np.concatenate([p, p, q, q])
    cols = np.concatenate([p, q, p, q])
    vals = np.concatenate([t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1]])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def stack_factors(twiddle: np.ndarray, increasing_stride: bool, sparse: bool = True) -> list[list]:
    """For each stack, the factor matrices in application order (blocks alternate direction)."""
    nstacks, nblocks, log_n = twiddle.shape[:3]
    n = 1 << log_n
    build = factor_matrix_sparse if sparse else factor_matrix_loop
    out = []
    for k in range(nstacks):
        mats = []
        for b in range(nblocks):
            inc = increasing_stride if b % 2 == 0 else not increasing_stride
            for f in range(log_n):
                stride = 1 << (f if inc else log_n - 1 - f)
                mats.append(build(twiddle[k, b, f], stride))
        out.append(mats)
    del n
    return out


def full_matrix(twiddle: np.ndarray, increasing_stride: bool, in_size: int, out_size: int) -> np.ndarray:
    """The dense (out_size, in_size) map: pad input to n, stack the butterflies, keep the first outputs."""
    log_n = twiddle.shape[2]
    n = 1 << log_n
    rows = []
    for mats in stack_factors(twiddle, increasing_stride, sparse=False):
        M = np.eye(n, dtype=twiddle.dtype)
        for F in mats:
            M = F @ M
        rows.append(M)
    return np.concatenate(rows, axis=0)[:out_size, :in_size]


def apply_map(twiddle: np.ndarray, increasing_stride: bool, x: np.ndarray, out_size: int) -> np.ndarray:
    """``x`` (batch, m) -> (batch, out_size) through the sparse factors (any n)."""
    n = 1 << twiddle.shape[2]
    z = np.zeros((x.shape[0], n), dtype=np.result_type(x, twiddle))
    z[:, : x.shape[1]] = x
    outs = []
    for mats in stack_factors(twiddle, increasing_stride):
        y = z.T
        for F in mats:
            y = F @ y
        outs.append(y.T)
    return np.concatenate(outs, axis=1)[:, :out_size]


def apply_map_transpose(
    twiddle: np.ndarray, increasing_stride: bool, x: np.ndarray, out_size: int, conjugate: bool
) -> np.ndarray:
    """The transpose (conjugate transpose if asked) of the stacked map, through scipy's sparse transposes."""
    nstacks = twiddle.shape[0]
    n = 1 << twiddle.shape[2]
    z = np.zeros((x.shape[0], nstacks * n), dtype=np.result_type(x, twiddle))
    z[:, : x.shape[1]] = x
    total = np.zeros((x.shape[0], n), dtype=z.dtype)
    for k, mats in enumerate(stack_factors(twiddle, increasing_stride)):
        y = z[:, k * n : (k + 1) * n].T
        for F in reversed(mats):
            Ft = F.conj().T if conjugate else F.T
            y = Ft @ y
        total += y.T
    return total[:, :out_size]


def torch_dense_map(
    twiddle: torch.Tensor, increasing_stride: bool, in_size: int, out_size: int
) -> torch.Tensor:
    """Differentiable dense (out_size, in_size) matrix built from ``twiddle`` by index_put (for gradient tests)."""
    nstacks, nblocks, log_n = twiddle.shape[:3]
    n = 1 << log_n
    stacks = []
    for k in range(nstacks):
        M = torch.eye(n, dtype=twiddle.dtype)
        for b in range(nblocks):
            inc = increasing_stride if b % 2 == 0 else not increasing_stride
            for f in range(log_n):
                stride = 1 << (f if inc else log_n - 1 - f)
                p, q = (torch.as_tensor(a) for a in block_positions(n, stride))
                t = twiddle[k, b, f]
                F = torch.zeros(n, n, dtype=twiddle.dtype)
                F = F.index_put((p, p), t[:, 0, 0]).index_put((p, q), t[:, 0, 1])
                F = F.index_put((q, p), t[:, 1, 0]).index_put((q, q), t[:, 1, 1])
                M = F @ M
        stacks.append(M)
    return torch.cat(stacks, dim=0)[:out_size, :in_size]
