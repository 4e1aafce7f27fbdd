r"""Sparse algebra on ``torch.sparse_csr`` tensors, the same on the CPU and CUDA.

The one toolbox every layer above uses for CSR matrices: construction (from parts, from padded
rows, from COO entries), row slices and row ids, transposes, row normalisation, keeping the
largest entries of each row, padded (ELL) views, and the overlap products of the transductive
re-rankers (:math:`\sum_l \operatorname{op}(a_{il}, b_{jl})` over the pairs of rows that share a
column, through an inverted index). Index dtypes are kept (int32 indices make sparse products
read less memory). Every matrix that comes in is checked (index bounds, row pointers, sorted
columns, shape: :func:`~graphrerank._checks.check_csr`) before a kernel reads it; matrices the
library builds itself skip the check.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .._checks import (
    CSR,
    Array,
    Index,
    Int,
    OneOf,
    Real,
    Ref,
    check_csr_parts,
    check_tensor,
    checked,
    trust_csr,
)

__all__ = [
    "compact_csr",
    "coo_to_csr",
    "csr",
    "csr_add_transpose",
    "csr_from_rows",
    "csr_keep_largest",
    "csr_map_values",
    "csr_padded",
    "csr_row_ids",
    "csr_row_normalize",
    "csr_rows",
    "csr_transpose",
    "overlap_cost",
    "pair_overlap",
    "pair_products",
    "quiet_sparse_warnings",
    "row_chunks",
]


def _cumsum0(x: Tensor) -> Tensor:
    """``[0, x[0], x[0] + x[1], ...]``: the row pointers of a CSR from its row counts."""
    out = x.new_zeros(x.numel() + 1)
    torch.cumsum(x, 0, out=out[1:])
    return out


@contextmanager
def quiet_sparse_warnings() -> Iterator[None]:
    """Silence torch's "Sparse CSR tensor support is in beta" and invariant-check warnings
    (the one place the library filters them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
        yield


# ----------------------------------------------------------------------------- construction
def csr(
    crow: Tensor,
    col: Tensor,
    val: Tensor,
    shape: tuple[int, int] | torch.Size,
    *,
    dtype: torch.dtype | None = None,
    check: bool = True,
    sorted: bool = False,
    name: str = "matrix",
) -> Tensor:
    """A ``torch.sparse_csr`` tensor from its parts.

    The parts are checked (:func:`~graphrerank._checks.check_csr_parts`: row pointers from 0
    to the number of entries, non-decreasing; columns in range; with ``sorted=True`` also
    sorted and unique within each row) unless ``check=False``, which is for parts the library
    has just built itself (``sorted`` then states that its columns are sorted).

    Raises:
        ValueError: the parts break a CSR invariant (the message names ``name``).
    """
    if check:
        check_csr_parts(crow, col, val, tuple(shape), name, sorted=sorted)
    with quiet_sparse_warnings():
        out = torch.sparse_csr_tensor(
            crow, col, val, tuple(shape), dtype=dtype, check_invariants=False
        )
    return trust_csr(out, sorted=sorted)


@checked(a=CSR())
def compact_csr(a: Tensor) -> Tensor:
    """The CSR matrix with int32 row pointers and column indices where they fit (sparse
    products read less memory: about 1.7x faster on a CPU)."""
    if a.crow_indices().dtype == torch.int32 or max(a._nnz(), *a.shape) >= 2**31:
        return a
    return csr(a.crow_indices().int(), a.col_indices().int(), a.values(), a.shape, check=False)


def _shape2(shape, name: str = "shape") -> tuple[int, int]:
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 2:
        raise ValueError(f"{name} must be a pair (rows, columns), got {shape!r}")
    return Int(low=0)(shape[0], f"{name}[0]", {}), Int(low=0)(shape[1], f"{name}[1]", {})


def coo_to_csr(indices: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A compact CSR matrix (:func:`compact_csr`) from COO ``indices`` :math:`(2, E)`
    ``[row, column]`` and ``values``; duplicates are summed.

    Raises:
        ValueError: an index outside ``shape``, or shapes that disagree.
    """
    shape = _shape2(shape)
    indices = check_tensor(indices, "indices", kind="int", shape=(2, None))
    values = check_tensor(values, "values", shape=(indices.shape[1],))
    for d, name in ((0, "row"), (1, "column")):
        Index(high=shape[d])(indices[d], f"indices ({name}s)", {})
    with quiet_sparse_warnings():
        coo = torch.sparse_coo_tensor(indices, values, tuple(shape)).coalesce()
        return compact_csr(coo.to_sparse_csr())


@checked(
    n_cols=Int(low=0),
    cols=Array(kind="int", ndim=2),
    vals=Array(shape=Ref("cols", fn=lambda c: tuple(c.shape))),
)
def csr_from_rows(cols: Tensor, vals: Tensor, n_cols: int) -> Tensor:
    """CSR matrix from padded rows: ``cols`` :math:`(R, W)` sorted ascending per row, padding
    ``-1`` or ``>= n_cols`` (dropped), ``vals`` the matching values.

    Raises:
        ValueError: ids below ``-1``, or columns not sorted and unique within a row.

    Example:
        >>> csr_from_rows(torch.tensor([[0, 2], [1, 9]]), torch.tensor([[1.0, 2.0], [3.0, 0.0]]), 3).to_dense()
        tensor([[1., 0., 2.],
                [0., 3., 0.]])
    """
    if cols.numel() and int(cols.min()) < -1:
        raise ValueError(f"cols holds the id {int(cols.min())}; padding is -1 or >= n_cols")
    keep = (cols >= 0) & (cols < n_cols)
    crow = _cumsum0(keep.sum(1))
    return csr(crow, cols[keep], vals[keep], (cols.shape[0], n_cols), sorted=True, name="cols")


@checked(a=CSR())
def csr_map_values(a: Tensor, fn) -> Tensor:
    """The CSR matrix with ``fn`` applied to its stored values (same pattern)."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    v = fn(a.values())
    if not isinstance(v, Tensor) or v.shape != a.values().shape:
        raise ValueError(
            f"fn must return a tensor of shape {tuple(a.values().shape)}, got "
            f"{getattr(v, 'shape', type(v).__name__)}"
        )
    return csr(a.crow_indices(), a.col_indices(), v, a.shape, check=False)


# ----------------------------------------------------------------------------- rows
@checked(a=CSR())
def csr_row_ids(a: Tensor) -> Tensor:
    """The row of every stored entry of a CSR matrix (int64).

    Example:
        >>> csr_row_ids(torch.tensor([[1.0, 2.0], [0.0, 3.0]]).to_sparse_csr())
        tensor([0, 0, 1])
    """
    crow = a.crow_indices().long()
    counts = crow[1:] - crow[:-1]
    return torch.repeat_interleave(
        torch.arange(counts.numel(), device=crow.device),
        counts,
        output_size=a.col_indices().numel(),
    )


@checked(
    a=CSR(),
    start=Int(low=0, high=Ref("a", dim=0)),
    stop=Int(low=Ref("start"), high=Ref("a", dim=0)),
)
def csr_rows(a: Tensor, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of a CSR matrix (a view of its parts, no copy of the other rows)."""
    crow = a.crow_indices()
    lo, hi = int(crow[start]), int(crow[stop])
    return csr(
        crow[start : stop + 1] - crow[start],
        a.col_indices()[lo:hi],
        a.values()[lo:hi],
        (stop - start, a.shape[1]),
        check=False,
    )


@checked(a=CSR())
def csr_padded(a: Tensor) -> tuple[Tensor, Tensor]:
    """A CSR matrix as padded rows ``(indices, values)`` of shape ``(rows, max row nnz)``,
    ``-1`` padding with value 0 (stored zeros are kept).

    Example:
        >>> csr_padded(torch.tensor([[1.0, 2.0], [0.0, 3.0]]).to_sparse_csr())
        (tensor([[ 0,  1],
                [ 1, -1]]), tensor([[1., 2.],
                [3., 0.]]))
    """
    crow = a.crow_indices().long()
    counts = crow[1:] - crow[:-1]
    b = a.shape[0]
    m = max(1, int(counts.max())) if b else 1
    nnz = a.col_indices().numel()
    rows = torch.repeat_interleave(torch.arange(b, device=crow.device), counts, output_size=nnz)
    dest = torch.arange(nnz, device=crow.device) + (rows * m - crow[:-1].index_select(0, rows))
    idx = torch.full((b, m), -1, dtype=torch.long, device=crow.device)
    val = torch.zeros(b, m, dtype=a.values().dtype, device=crow.device)
    idx.view(-1).index_copy_(0, dest, a.col_indices().long())
    val.view(-1).index_copy_(0, dest, a.values())
    return idx, val


@checked(a=CSR())
def csr_transpose(a: Tensor) -> Tensor:
    r""":math:`\mathbf{A}^\top` in CSR form (columns become rows, rows stay sorted; the index
    dtype of ``a`` is kept).

    Example:
        >>> csr_transpose(torch.tensor([[1.0, 2.0], [0.0, 3.0]]).to_sparse_csr()).to_dense()
        tensor([[1., 0.],
                [2., 3.]])
    """
    col = a.col_indices()
    itype = a.crow_indices().dtype
    order = torch.sort(col, stable=True).indices
    crow = _cumsum0(torch.bincount(col, minlength=a.shape[1]))
    rows = csr_row_ids(a)[order]
    return csr(
        crow.to(itype), rows.to(itype), a.values()[order], (a.shape[1], a.shape[0]), check=False
    )


@checked(a=CSR(square=True))
def csr_add_transpose(a: Tensor) -> Tensor:
    r""":math:`\mathbf{A} + \mathbf{A}^\top` of a square CSR matrix, in CSR form."""
    with quiet_sparse_warnings():
        return trust_csr((a + csr_transpose(a)).to_sparse_csr())


@checked(a=CSR())
def csr_row_normalize(a: Tensor) -> Tensor:
    r"""Each row divided by its L2 norm (rows of zeros stay zero).

    Example:
        >>> csr_row_normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]).to_sparse_csr()).to_dense()
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    val = a.values()
    rows = csr_row_ids(a)
    sq = torch.zeros(a.shape[0], dtype=val.dtype, device=val.device).index_add_(0, rows, val * val)
    norm = sq.sqrt().clamp_(min=torch.finfo(val.dtype).tiny)
    return csr(a.crow_indices(), a.col_indices(), val / norm[rows], a.shape, check=False)


@checked(a=CSR(), p=Int(low=0))
def csr_keep_largest(a: Tensor, p: int) -> Tensor:
    """Keep the ``p`` largest entries of every row (ties: the lower column first).

    Example:
        >>> csr_keep_largest(torch.tensor([[1.0, 3.0, 2.0]]).to_sparse_csr(), 2).to_dense()
        tensor([[0., 3., 2.]])
    """
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
    new_crow = _cumsum0(counts.clamp(max=p)).to(crow.dtype)
    return csr(new_crow, a.col_indices()[kept], val[kept], a.shape, check=False)


@checked(
    cost=Array(kind="number", ndim=1, finite=True),
    max_cost=Real(low=0, finite=False),
    max_rows=Int(low=1),
)
def row_chunks(cost: Tensor, max_cost: float, max_rows: int) -> list[tuple[int, int]]:
    """Split rows into consecutive chunks of at most ``max_rows`` rows whose summed ``cost``
    stays under ``max_cost`` (a single row above it forms its own chunk).

    Example:
        >>> row_chunks(torch.tensor([1, 1, 5, 1]), max_cost=2, max_rows=10)
        [(0, 2), (2, 3), (3, 4)]
    """
    n = cost.shape[0]
    csum = torch.cumsum(cost.to(torch.float64), 0).tolist()
    chunks, start, base = [], 0, 0.0
    while start < n:
        stop = start + 1
        limit = min(n, start + max_rows)
        # grow while under budget (binary search over the cumulative cost)
        lo, hi = stop, limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if csum[mid - 1] - base <= max_cost:
                lo = mid
            else:
                hi = mid - 1
        stop = max(stop, lo)
        chunks.append((start, stop))
        base = csum[stop - 1]
        start = stop
    return chunks


# ----------------------------------------------------------------------------- overlaps
def _expand(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For entries with ``counts[e]`` partners: (entry of each pair, rank of the pair)."""
    rep = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    return rep, torch.arange(rep.numel(), device=counts.device) - first[rep]


@checked(
    rows_a=CSR(),
    inv_b=CSR(shape=(Ref("rows_a", dim=1), None)),
    op=OneOf(("min", "mul")),
)
def pair_overlap(rows_a: Tensor, inv_b: Tensor, op: str, out: Tensor) -> None:
    r"""Accumulate :math:`\mathrm{out}_{ij} \mathrel{+}= \sum_l \operatorname{op}(a_{il}, b_{jl})`.

    ``rows_a`` is a CSR :math:`(R, L)` block of rows, ``inv_b`` the CSR :math:`(L, C)` inverted
    index of the other rows (:math:`b^\top`, e.g. :func:`csr_transpose`), ``out`` a dense
    :math:`(R, C)` accumulator and ``op`` ``"min"`` or ``"mul"``. Only pairs that share a
    non-zero column are touched: every entry :math:`a_{il}` meets the whole list of column
    :math:`l`.

    Example:
        >>> a = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]]).to_sparse_csr()
        >>> out = torch.zeros(2, 2)
        >>> pair_overlap(a, csr_transpose(a), "min", out)
        >>> out
        tensor([[1.0000, 0.2000],
                [0.2000, 1.0000]])
    """
    want = (rows_a.shape[0], inv_b.shape[1])
    dtype = rows_a.values().dtype
    if not isinstance(out, Tensor) or out.layout != torch.strided or tuple(out.shape) != want:
        raise ValueError(
            f"out must be a dense {want} accumulator, got {getattr(out, 'shape', type(out).__name__)}"
        )
    if out.dtype != dtype or inv_b.values().dtype != dtype or not out.is_contiguous():
        raise TypeError(
            f"out and inv_b must share rows_a's dtype {dtype} (out contiguous), got "
            f"{out.dtype} and {inv_b.values().dtype}"
        )
    col = rows_a.col_indices()
    icrow = inv_b.crow_indices()
    start = icrow[col]
    counts = icrow[col + 1] - start
    total = int(counts.sum())
    if total == 0:
        return
    # position in the inverted index of every (entry, partner) pair
    offset = start - (torch.cumsum(counts, 0) - counts)
    pos = torch.arange(total, device=col.device)
    pos += torch.repeat_interleave(offset, counts, output_size=total)
    b = inv_b.values()[pos]
    key = inv_b.col_indices()[pos].long()
    del pos
    key += torch.repeat_interleave(csr_row_ids(rows_a) * out.shape[1], counts, output_size=total)
    a = torch.repeat_interleave(rows_a.values(), counts, output_size=total)
    contrib = torch.minimum(a, b, out=a) if op == "min" else a.mul_(b)
    out.view(-1).index_add_(0, key, contrib)


@checked(rows_a=CSR(), inv_b=CSR(shape=(Ref("rows_a", dim=1), None)))
def overlap_cost(rows_a: Tensor, inv_b: Tensor) -> Tensor:
    """Number of (entry, partner) pairs :func:`pair_overlap` expands, per row of ``rows_a``."""
    icrow = inv_b.crow_indices()
    col = rows_a.col_indices()
    per_entry = (icrow[col + 1] - icrow[col]).to(torch.float64)
    cost = torch.zeros(rows_a.shape[0], dtype=torch.float64, device=col.device)
    cost.index_add_(0, csr_row_ids(rows_a), per_entry)
    return cost


@checked(
    v=CSR(),
    rows=Index(ndim=1, high=Ref("v", dim=0)),
    cols=Index(shape=Ref("rows", fn=lambda r: tuple(r.shape)), high=Ref("v", dim=0)),
    op=OneOf(("min", "mul")),
    budget=Int(low=1),
)
def pair_products(v: Tensor, rows: Tensor, cols: Tensor, op: str, budget: int) -> Tensor:
    r""":math:`\sum_l \operatorname{op}(V_{r l}, V_{c l})` for the row pairs
    ``(rows[p], cols[p])`` of the CSR matrix ``v`` (``op``: ``"min"`` or ``"mul"``), with
    dense blocks of at most ``budget`` entries.

    Example:
        >>> v = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]]).to_sparse_csr()
        >>> pair_products(v, torch.tensor([0, 1]), torch.tensor([1, 1]), "mul", 2**20)
        tensor([0.1000, 0.6800])
    """
    n = v.shape[1]
    out = torch.zeros(rows.shape[0], dtype=v.dtype, device=v.device)
    crow, col, val = v.crow_indices().long(), v.col_indices().long(), v.values()
    uniq, inv = torch.unique(rows, return_inverse=True)
    step = max(1, budget // n)
    for a in range(0, uniq.numel(), step):
        urows = uniq[a : a + step]
        dense = torch.zeros(urows.numel(), n, dtype=v.dtype, device=v.device)
        e, rk = _expand(crow[urows + 1] - crow[urows])
        pos = crow[urows][e] + rk
        dense[e, col[pos]] = val[pos]
        sel = ((inv >= a) & (inv < a + urows.numel())).nonzero().flatten()
        c = cols[sel]
        e, rk = _expand(crow[c + 1] - crow[c])
        pos = crow[c][e] + rk
        mine = dense[inv[sel][e] - a, col[pos]]
        contrib = torch.minimum(mine, val[pos]) if op == "min" else mine * val[pos]
        out.index_add_(0, sel[e], contrib)
    return out
