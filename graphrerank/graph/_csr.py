"""Small ``torch.sparse_csr`` helpers that work the same on CPU and CUDA (private)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = [
    "csr_add_transpose",
    "csr_from_rows",
    "csr_keep_largest",
    "csr_row_ids",
    "csr_row_normalize",
    "csr_rows",
    "csr_transpose",
    "sparse_csr",
]


def sparse_csr(crow: Tensor, col: Tensor, val: Tensor, shape: tuple[int, int]) -> Tensor:
    """A ``torch.sparse_csr`` tensor from its parts (no invariant checks)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)


def csr_from_rows(cols: Tensor, vals: Tensor, n_cols: int) -> Tensor:
    """CSR matrix from padded rows: ``cols`` :math:`(R, W)` sorted ascending per row with
    padding ``>= n_cols`` at the end of each row, ``vals`` the matching values."""
    keep = cols < n_cols
    counts = keep.sum(1)
    crow = torch.zeros(cols.shape[0] + 1, dtype=torch.long, device=cols.device)
    crow[1:] = counts.cumsum(0)
    return sparse_csr(crow, cols[keep], vals[keep], (cols.shape[0], n_cols))


def csr_row_ids(a: Tensor) -> Tensor:
    """The row of every stored entry of a CSR matrix."""
    crow = a.crow_indices()
    return torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), crow.diff())


def csr_rows(a: Tensor, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of a CSR matrix (a view of its parts)."""
    crow = a.crow_indices()
    lo, hi = int(crow[start]), int(crow[stop])
    return sparse_csr(
        crow[start : stop + 1] - lo,
        a.col_indices()[lo:hi],
        a.values()[lo:hi],
        (stop - start, a.shape[1]),
    )


def csr_transpose(a: Tensor) -> Tensor:
    """:math:`\\mathbf{A}^\\top` in CSR form (columns become rows, rows stay sorted)."""
    col = a.col_indices()
    order = torch.sort(col, stable=True).indices
    counts = torch.bincount(col, minlength=a.shape[1])
    crow = torch.zeros(a.shape[1] + 1, dtype=torch.long, device=col.device)
    crow[1:] = counts.cumsum(0)
    return sparse_csr(crow, csr_row_ids(a)[order], a.values()[order], (a.shape[1], a.shape[0]))


def csr_add_transpose(a: Tensor) -> Tensor:
    r""":math:`\mathbf{A} + \mathbf{A}^\top` of a square CSR matrix, in CSR form."""
    return (a + csr_transpose(a)).to_sparse_csr()


def csr_row_normalize(a: Tensor) -> Tensor:
    r"""Each row divided by its L2 norm (rows of zeros stay zero)."""
    val = a.values()
    rows = csr_row_ids(a)
    sq = torch.zeros(a.shape[0], dtype=val.dtype, device=val.device).index_add_(0, rows, val * val)
    norm = sq.sqrt().clamp_(min=torch.finfo(val.dtype).tiny)
    return sparse_csr(a.crow_indices(), a.col_indices(), val / norm[rows], tuple(a.shape))


def csr_keep_largest(a: Tensor, p: int) -> Tensor:
    """Keep the ``p`` largest entries of every row (ties: the lower column first)."""
    crow = a.crow_indices()
    counts = crow.diff()
    if counts.numel() == 0 or int(counts.max()) <= p:
        return a
    rows = csr_row_ids(a)
    val = a.values()
    by_value = torch.sort(val, descending=True, stable=True).indices
    order = by_value[torch.sort(rows[by_value], stable=True).indices]  # row, then value
    rank = torch.arange(rows.numel(), device=rows.device) - crow[rows]  # rows are sorted
    kept = order[rank < p].sort().values  # back to CSR order
    new_counts = counts.clamp(max=p)
    new_crow = torch.zeros_like(crow)
    new_crow[1:] = new_counts.cumsum(0)
    return sparse_csr(new_crow, a.col_indices()[kept], val[kept], tuple(a.shape))
