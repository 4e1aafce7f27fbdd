"""The CSR helpers of ``graphrerank.graph.sparse`` against SciPy and dense numpy references."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from graphrerank.graph.sparse import (
    compact_csr,
    coo_to_csr,
    csr,
    csr_add_transpose,
    csr_from_rows,
    csr_keep_largest,
    csr_map_values,
    csr_padded,
    csr_row_ids,
    csr_row_normalize,
    csr_rows,
    csr_transpose,
    overlap_cost,
    pair_overlap,
    pair_products,
    quiet_sparse_warnings,
    row_chunks,
)

DTYPES = [torch.float32, torch.float64]
ITYPES = [torch.int32, torch.int64]
NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def random_dense(seed, shape, density=0.4, empty_rows=(), values=None, dtype=np.float64):
    """A random (rows, cols) matrix with about ``density`` non-zeros, positive values
    (``values``: drawn from that set instead, for ties), and the given rows left empty."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density
    if values is None:
        vals = rng.uniform(0.1, 2.0, size=shape)
    else:
        vals = rng.choice(np.asarray(values, dtype=np.float64), size=shape)
    d = np.where(mask, vals, 0.0)
    for r in empty_rows:
        d[r] = 0.0
    return d.astype(dtype)


def to_torch(m, itype=torch.int64, dtype=torch.float64, device="cpu"):
    """A ``torch.sparse_csr`` tensor from a SciPy matrix (or a dense array), with the given
    index dtype, built from SciPy's parts (sorted columns)."""
    m = sp.csr_matrix(m)
    m.sort_indices()
    return csr(
        torch.from_numpy(m.indptr.astype(np.int64)).to(device, itype),
        torch.from_numpy(m.indices.astype(np.int64)).to(device, itype),
        torch.from_numpy(m.data.astype(np.float64)).to(device, dtype),
        m.shape,
    )


def dense(t):
    return t.to_dense().cpu().numpy().astype(np.float64)


SHAPES = [(1, 1), (1, 7), (6, 1), (5, 8), (12, 9)]


# ----------------------------------------------------------------------------- construction
@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_csr_from_parts_equals_scipy(shape, itype, device):
    d = random_dense(0, shape)
    m = sp.csr_matrix(d)
    t = to_torch(m, itype, device=device)
    assert t.layout == torch.sparse_csr
    assert t.device.type == device
    assert t.crow_indices().dtype == itype
    assert tuple(t.shape) == shape
    np.testing.assert_array_equal(dense(t), m.toarray())


@pytest.mark.parametrize("dtype", DTYPES)
def test_compact_csr_makes_int32_and_keeps_values(dtype, device):
    d = random_dense(1, (7, 5), empty_rows=(2,))
    t = to_torch(d, torch.int64, dtype, device)
    c = compact_csr(t)
    assert c.crow_indices().dtype == torch.int32
    assert c.col_indices().dtype == torch.int32
    assert c.values().dtype == dtype
    np.testing.assert_array_equal(dense(c), d.astype(NP_DTYPE[dtype]).astype(np.float64))
    t32 = to_torch(d, torch.int32, dtype, device)
    assert compact_csr(t32) is t32  # already compact: returned as is


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coo_to_csr_sums_duplicates_like_scipy(seed, dtype, device):
    rng = np.random.default_rng(seed)
    shape = (6, 9)
    e = 40  # many repeated (row, column) pairs on 54 cells
    rows = rng.integers(0, shape[0], e)
    cols = rng.integers(0, shape[1], e)
    vals = rng.uniform(0.5, 1.5, e)  # positive: no sum cancels to zero
    ref = sp.coo_matrix((vals, (rows, cols)), shape=shape).tocsr()  # sums duplicates
    ref.sum_duplicates()
    ref.sort_indices()
    idx = torch.from_numpy(np.stack([rows, cols])).to(device)
    out = coo_to_csr(idx, torch.from_numpy(vals).to(device, dtype), shape)
    assert out.layout == torch.sparse_csr
    assert out.crow_indices().dtype == torch.int32
    assert out.col_indices().dtype == torch.int32
    assert out.values().dtype == dtype
    np.testing.assert_array_equal(out.crow_indices().cpu().numpy(), ref.indptr)
    np.testing.assert_array_equal(out.col_indices().cpu().numpy(), ref.indices)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(out.values().cpu().numpy(), ref.data, rtol=tol)


def test_coo_to_csr_by_hand():
    idx = torch.tensor([[1, 0, 1, 1], [2, 1, 2, 0]])
    out = coo_to_csr(idx, torch.tensor([1.0, 2.0, 3.0, 4.0]), (2, 3))
    np.testing.assert_array_equal(dense(out), [[0, 2, 0], [4, 0, 4]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pad_offset", [0, 1, 7])
@pytest.mark.parametrize("shape", [(1, 4), (5, 6), (8, 3)])
def test_csr_from_rows_equals_dense_loop(shape, pad_offset, dtype, device):
    rng = np.random.default_rng(shape[0] * 10 + pad_offset)
    r, n_cols = shape
    width = n_cols + 2
    cols = np.full((r, width), n_cols + pad_offset, dtype=np.int64)
    vals = np.zeros((r, width))
    expected = np.zeros((r, n_cols))
    for i in range(r):
        m = 0 if i == r - 1 and r > 1 else int(rng.integers(0, n_cols + 1))  # last row empty
        c = np.sort(rng.choice(n_cols, m, replace=False))
        v = rng.uniform(0.1, 1.0, m)
        cols[i, :m], vals[i, :m] = c, v
        vals[i, m:] = rng.uniform(5, 9, width - m)  # values under the padding must be dropped
        expected[i, c] = v
    out = csr_from_rows(
        torch.from_numpy(cols).to(device), torch.from_numpy(vals).to(device, dtype), n_cols
    )
    assert out.layout == torch.sparse_csr
    assert tuple(out.shape) == (r, n_cols)
    assert out.values().dtype == dtype
    np.testing.assert_allclose(dense(out), expected.astype(NP_DTYPE[dtype]), rtol=0)


def test_csr_from_rows_all_padding():
    out = csr_from_rows(torch.full((3, 2), 4), torch.ones(3, 2), 4)
    assert out._nnz() == 0
    np.testing.assert_array_equal(dense(out), np.zeros((3, 4)))


@pytest.mark.parametrize("itype", ITYPES)
def test_csr_map_values_only_touches_stored_entries(itype, device):
    d = random_dense(3, (6, 7), empty_rows=(0, 4))
    out = csr_map_values(to_torch(d, itype, device=device), lambda v: v * v + 1)
    expected = np.where(d != 0, d * d + 1, 0.0)
    np.testing.assert_allclose(dense(out), expected, rtol=1e-12)
    assert out.crow_indices().dtype == itype


# ----------------------------------------------------------------------------- rows
@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_csr_row_ids_equals_numpy_repeat(shape, itype, device):
    d = random_dense(4, shape, empty_rows=(0,))
    m = sp.csr_matrix(d)
    ids = csr_row_ids(to_torch(m, itype, device=device))
    assert ids.dtype == torch.int64
    np.testing.assert_array_equal(
        ids.cpu().numpy(), np.repeat(np.arange(shape[0]), np.diff(m.indptr))
    )


def test_csr_row_ids_by_hand():
    t = to_torch(np.array([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0], [0.0, 3.0]]))
    np.testing.assert_array_equal(csr_row_ids(t).numpy(), [1, 1, 3])


@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("span", [(0, 0), (0, 1), (2, 5), (3, 9), (0, 9), (9, 9)])
def test_csr_rows_equals_dense_slice(span, itype, device):
    d = random_dense(5, (9, 6), empty_rows=(3, 4))
    start, stop = span
    out = csr_rows(to_torch(d, itype, device=device), start, stop)
    assert tuple(out.shape) == (stop - start, 6)
    assert out.crow_indices().dtype == itype
    assert int(out.crow_indices()[0]) == 0
    np.testing.assert_array_equal(dense(out), d[start:stop])


def padded_reference(m):
    m = sp.csr_matrix(m)
    counts = np.diff(m.indptr)
    width = max(1, int(counts.max())) if m.shape[0] else 1
    idx = np.full((m.shape[0], width), -1)
    val = np.zeros((m.shape[0], width))
    for i in range(m.shape[0]):
        lo, hi = m.indptr[i], m.indptr[i + 1]
        idx[i, : hi - lo] = m.indices[lo:hi]
        val[i, : hi - lo] = m.data[lo:hi]
    return idx, val


@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("shape", [*SHAPES, (4, 5)])
def test_csr_padded_equals_loop(shape, itype, device):
    d = random_dense(6, shape, empty_rows=(0,) if shape[0] > 1 else ())
    if shape == (4, 5):
        d[:] = 0.0  # no entries at all: one column of padding
    m = sp.csr_matrix(d)
    idx, val = csr_padded(to_torch(m, itype, device=device))
    ref_idx, ref_val = padded_reference(m)
    assert idx.dtype == torch.int64
    np.testing.assert_array_equal(idx.cpu().numpy(), ref_idx)
    np.testing.assert_array_equal(val.cpu().numpy(), ref_val)


def test_csr_padded_keeps_stored_zeros_and_empty_matrix():
    t = csr(torch.tensor([0, 2, 3]), torch.tensor([0, 2, 1]), torch.tensor([0.0, 5.0, 2.0]), (2, 3))
    idx, val = csr_padded(t)
    np.testing.assert_array_equal(idx.numpy(), [[0, 2], [1, -1]])
    np.testing.assert_array_equal(val.numpy(), [[0.0, 5.0], [2.0, 0.0]])
    empty = csr(
        torch.zeros(1, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0), (0, 3)
    )
    idx, val = csr_padded(empty)
    assert tuple(idx.shape) == (0, 1) and tuple(val.shape) == (0, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("shape", [*SHAPES, (3, 10)])
def test_csr_transpose_equals_scipy(shape, itype, dtype, device):
    d = random_dense(7, shape, empty_rows=(0,), dtype=NP_DTYPE[dtype])
    d[:, -1] = 0.0  # an empty column: an empty row of the transpose
    m = sp.csr_matrix(d)
    out = csr_transpose(to_torch(m, itype, dtype, device))
    ref = m.T.tocsr()
    ref.sort_indices()
    assert tuple(out.shape) == (shape[1], shape[0])
    assert out.crow_indices().dtype == itype
    assert out.col_indices().dtype == itype
    assert out.values().dtype == dtype
    # rows sorted: the CSR parts are SciPy's canonical ones
    np.testing.assert_array_equal(out.crow_indices().cpu().numpy(), ref.indptr)
    np.testing.assert_array_equal(out.col_indices().cpu().numpy(), ref.indices)
    np.testing.assert_array_equal(out.values().cpu().numpy(), ref.data)


@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("n", [1, 4, 9])
def test_csr_add_transpose_equals_dense(n, itype, device):
    d = random_dense(8, (n, n))
    out = csr_add_transpose(to_torch(d, itype, device=device))
    assert out.layout == torch.sparse_csr
    np.testing.assert_allclose(dense(out), d + d.T, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_csr_row_normalize_equals_dense(shape, itype, dtype, device):
    d = random_dense(9, shape, empty_rows=(0,), dtype=NP_DTYPE[dtype]).astype(np.float64)
    out = csr_row_normalize(to_torch(d, itype, dtype, device))
    norms = np.linalg.norm(d, axis=1, keepdims=True)
    expected = np.divide(d, norms, out=np.zeros_like(d), where=norms > 0)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    np.testing.assert_allclose(dense(out), expected, rtol=tol, atol=tol)
    assert np.all(dense(out)[0] == 0)  # the empty row stays zero (no NaN)
    assert out.crow_indices().dtype == itype


def test_csr_row_normalize_stored_zeros_row():
    t = csr(
        torch.tensor([0, 2, 3]), torch.tensor([0, 1, 1]), torch.tensor([0.0, 0.0, -2.0]), (2, 2)
    )
    out = dense(csr_row_normalize(t))
    np.testing.assert_array_equal(out, [[0.0, 0.0], [0.0, -1.0]])


def keep_largest_reference(d, p):
    out = np.zeros_like(d)
    for i, row in enumerate(d):
        cols = np.nonzero(row)[0]
        order = np.lexsort((cols, -row[cols]))  # value descending, then lower column
        keep = cols[order[:p]]
        out[i, keep] = row[keep]
    return out


@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("p", [1, 2, 3, 5, 20])
@pytest.mark.parametrize("seed", [0, 1])
def test_csr_keep_largest_with_ties_lower_column_first(seed, p, itype, device):
    # values from {1, 2, 3}: many ties within rows
    d = random_dense(seed, (10, 12), density=0.6, empty_rows=(4,), values=[1.0, 2.0, 3.0])
    out = csr_keep_largest(to_torch(d, itype, device=device), p)
    np.testing.assert_array_equal(dense(out), keep_largest_reference(d, p))
    counts = np.diff(out.crow_indices().cpu().numpy())
    np.testing.assert_array_equal(counts, np.minimum((d != 0).sum(1), p))
    assert out.crow_indices().dtype == itype
    assert out.col_indices().dtype == itype
    cols = out.col_indices().cpu().numpy()  # columns stay sorted within rows
    ptr = out.crow_indices().cpu().numpy()
    for i in range(d.shape[0]):
        assert np.all(np.diff(cols[ptr[i] : ptr[i + 1]]) > 0)


def test_csr_keep_largest_by_hand():
    t = to_torch(np.array([[2.0, 1.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 4.0, 6.0]]))
    np.testing.assert_array_equal(
        dense(csr_keep_largest(t, 2)), [[2, 0, 2, 0], [0, 0, 0, 0], [5, 0, 0, 6]]
    )


# ----------------------------------------------------------------------------- chunks
def chunks_reference(cost, max_cost, max_rows):
    """Greedy: a chunk grows while it has fewer than ``max_rows`` rows and its summed cost
    stays within ``max_cost``; its first row always belongs to it."""
    out, start, n = [], 0, len(cost)
    while start < n:
        stop, total = start + 1, cost[start]
        while stop < n and stop - start < max_rows and total + cost[stop] <= max_cost:
            total += cost[stop]
            stop += 1
        out.append((start, stop))
        start = stop
    return out


@pytest.mark.parametrize("max_rows", [1, 3, 100])
@pytest.mark.parametrize("max_cost", [0, 5, 12, 1000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_chunks_limits_and_cover(seed, max_cost, max_rows):
    rng = np.random.default_rng(seed)
    cost = rng.integers(0, 9, 40)
    cost[[5, 17]] = 30  # rows above any small budget form their own chunk
    chunks = row_chunks(torch.from_numpy(cost), max_cost, max_rows)
    assert chunks == chunks_reference(cost.tolist(), max_cost, max_rows)
    # every row exactly once, in order
    covered = [r for a, b in chunks for r in range(a, b)]
    assert covered == list(range(40))
    for a, b in chunks:
        assert 1 <= b - a <= max_rows
        assert b - a == 1 or cost[a:b].sum() <= max_cost


def test_row_chunks_edge_cases():
    assert row_chunks(torch.zeros(0), 10, 10) == []
    assert row_chunks(torch.tensor([3.0]), 1, 1) == [(0, 1)]
    assert row_chunks(torch.tensor([1, 1, 5, 1]), max_cost=2, max_rows=10) == [
        (0, 2),
        (2, 3),
        (3, 4),
    ]
    assert row_chunks(torch.ones(7), max_cost=100, max_rows=3) == [(0, 3), (3, 6), (6, 7)]


# ----------------------------------------------------------------------------- overlaps
def overlap_reference(a, b, op):
    if op == "min":
        return np.minimum(a[:, None, :], b[None, :, :]).sum(-1)
    return a @ b.T


@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["min", "mul"])
@pytest.mark.parametrize("shapes", [((1, 5), (1, 5)), ((6, 8), (9, 8)), ((10, 4), (3, 4))])
def test_pair_overlap_equals_dense(shapes, op, dtype, itype, device):
    (r, n_cols), (c, _) = shapes
    a = random_dense(10, (r, n_cols), empty_rows=(0,), dtype=NP_DTYPE[dtype]).astype(np.float64)
    b = random_dense(11, (c, n_cols), empty_rows=(c - 1,), dtype=NP_DTYPE[dtype]).astype(np.float64)
    start = np.random.default_rng(12).uniform(0, 1, (r, c))  # it accumulates
    out = torch.from_numpy(start.copy()).to(device, dtype)  # no memory shared with start
    inv = csr_transpose(to_torch(b, itype, dtype, device))
    pair_overlap(to_torch(a, itype, dtype, device), inv, op, out)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    expected = start + overlap_reference(a, b, op)
    np.testing.assert_allclose(out.cpu().numpy(), expected, rtol=tol, atol=tol)


def test_pair_overlap_row_block_and_no_shared_columns():
    a = random_dense(13, (8, 6))
    t = to_torch(a)
    inv = csr_transpose(t)
    out = torch.zeros(3, 8, dtype=torch.float64)
    pair_overlap(csr_rows(t, 2, 5), inv, "min", out)  # rows 2..4 against all rows
    np.testing.assert_allclose(out.numpy(), overlap_reference(a[2:5], a, "min"), rtol=1e-12)
    # nothing shared: untouched
    left = to_torch(np.array([[1.0, 0.0, 0.0]]))
    right = csr_transpose(to_torch(np.array([[0.0, 2.0, 3.0], [0.0, 0.0, 1.0]])))
    out = torch.full((1, 2), 7.0, dtype=torch.float64)
    pair_overlap(left, right, "mul", out)
    np.testing.assert_array_equal(out.numpy(), [[7.0, 7.0]])


def test_pair_overlap_by_hand():
    a = to_torch(np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]]))
    out = torch.zeros(2, 2, dtype=torch.float64)
    pair_overlap(a, csr_transpose(a), "min", out)
    np.testing.assert_allclose(out.numpy(), [[1.0, 0.2], [0.2, 1.0]], rtol=1e-15)


@pytest.mark.parametrize("itype", ITYPES)
def test_overlap_cost_counts_expanded_pairs(itype, device):
    a = random_dense(14, (7, 9), empty_rows=(3,))
    b = random_dense(15, (5, 9))
    cost = overlap_cost(
        to_torch(a, itype, device=device), csr_transpose(to_torch(b, itype, device=device))
    )
    col_nnz = (b != 0).sum(0)  # partners of an entry in column l
    expected = ((a != 0) * col_nnz[None, :]).sum(1)
    assert cost.dtype == torch.float64
    np.testing.assert_array_equal(cost.cpu().numpy(), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("budget", [1, 7, 30, 2**20])
@pytest.mark.parametrize("op", ["min", "mul"])
def test_pair_products_equals_dense(op, budget, dtype, device):
    rng = np.random.default_rng(16)
    v = random_dense(17, (12, 7), empty_rows=(2, 9), dtype=NP_DTYPE[dtype]).astype(np.float64)
    p = 50
    rows = rng.integers(0, 12, p)  # repeated rows, in no order
    cols = rng.integers(0, 12, p)
    rows[:3], cols[:3] = [2, 5, 9], [5, 2, 9]  # pairs with empty rows
    out = pair_products(
        to_torch(v, dtype=dtype, device=device),
        torch.from_numpy(rows).to(device),
        torch.from_numpy(cols).to(device),
        op,
        budget,
    )
    if op == "min":
        expected = np.minimum(v[rows], v[cols]).sum(1)
    else:
        expected = (v[rows] * v[cols]).sum(1)
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(out.cpu().numpy(), expected, rtol=tol, atol=tol)
    assert np.all(out.cpu().numpy()[:3] == 0)


def test_pair_products_no_pairs():
    v = to_torch(random_dense(18, (4, 3)))
    out = pair_products(
        v, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), "mul", 10
    )
    assert tuple(out.shape) == (0,)


# ----------------------------------------------------------------------------- warnings
def test_quiet_sparse_warnings_filters_only_its_messages():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_sparse_warnings():
            warnings.warn("Sparse CSR tensor support is in beta state", UserWarning, stacklevel=1)
            warnings.warn(
                "Sparse invariant checks are implicitly disabled", UserWarning, stacklevel=1
            )
            warnings.warn("something else", UserWarning, stacklevel=1)
        warnings.warn("Sparse CSR tensor support is in beta state", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "something else",
        "Sparse CSR tensor support is in beta state",  # the filter ends with the block
    ]
