"""Blocked scans and neighbour lists of ``graphrerank.graph.lists`` against dense numpy."""

import numpy as np
import pytest
import torch

from graphrerank.graph import KNNIndex, database_index
from graphrerank.graph import lists as lists_module
from graphrerank.graph.lists import (
    SHORTLIST_MARGIN,
    DistanceNodes,
    FeatureNodes,
    graph_lists,
    scan,
    self_first,
    truncation_lists,
)
from graphrerank.testing import requires_faiss

DTYPES = [torch.float32, torch.float64]
NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def points(seed, n, d=4, dtype=np.float64):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


def sq_dist(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def check_best(mat, values, indices, k, largest, exact_k=None, rtol=0.0):
    """``indices`` point at entries of ``mat`` equal to ``values``, unique per row, and the
    first ``exact_k`` (all by default) are each row's best ``k`` in order (ties in any
    order, so indices are compared through the values they point at)."""
    values = values.cpu().numpy().astype(np.float64)
    indices = indices.cpu().numpy()
    assert values.shape == indices.shape == (mat.shape[0], k)
    assert (indices >= 0).all() and (indices < mat.shape[1]).all()
    for row in indices:
        assert len(set(row.tolist())) == k
    np.testing.assert_allclose(np.take_along_axis(mat, indices, 1), values, rtol=rtol, atol=rtol)
    srt = -np.sort(-mat, axis=1) if largest else np.sort(mat, axis=1)
    e = k if exact_k is None else exact_k
    np.testing.assert_allclose(values[:, :e], srt[:, :e], rtol=rtol, atol=rtol)


# ----------------------------------------------------------------------------- scan
@pytest.mark.parametrize("budget", [1, 3, 17, 64, None])
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize(
    ("rows", "cols", "k", "col_k"),
    [(1, 9, 3, 1), (7, 1, 1, 4), (13, 11, 4, 3), (9, 20, 20, 9), (6, 5, 8, 10)],
)
def test_scan_equals_a_dense_sort(rows, cols, k, col_k, largest, budget, device):
    rng = np.random.default_rng(rows * 100 + cols)
    mat = rng.permutation(rows * cols).reshape(rows, cols).astype(np.float64)  # distinct
    t = torch.from_numpy(mat).to(device)
    seen = []

    def block(r0, r1, c0, c1):
        seen.append((r0, r1, c0, c1))
        return t[r0:r1, c0:c1]

    out = scan(
        block, rows, cols, k, largest=largest, col_k=col_k, extreme=True, device=t.device,
        dtype=t.dtype, budget=budget,
    )  # fmt: skip
    kk, ck = min(k, cols), min(col_k, rows)
    order = np.argsort(-mat if largest else mat, axis=1)[:, :kk]
    np.testing.assert_array_equal(out["row_indices"].cpu().numpy(), order)
    np.testing.assert_array_equal(
        out["row_values"].cpu().numpy(), np.take_along_axis(mat, order, 1)
    )
    np.testing.assert_array_equal(
        out["row_extreme"].cpu().numpy(), mat.min(1) if largest else mat.max(1)
    )
    corder = np.argsort(-mat.T if largest else mat.T, axis=1)[:, :ck]
    np.testing.assert_array_equal(out["col_indices"].cpu().numpy(), corder)
    np.testing.assert_array_equal(
        out["col_values"].cpu().numpy(), np.take_along_axis(mat.T, corder, 1)
    )
    np.testing.assert_array_equal(
        out["col_extreme"].cpu().numpy(), mat.min(0) if largest else mat.max(0)
    )
    # the blocks tile the matrix exactly once and respect the budget
    cover = np.zeros((rows, cols), dtype=int)
    for r0, r1, c0, c1 in seen:
        cover[r0:r1, c0:c1] += 1
        if budget is not None:
            assert (r1 - r0) * (c1 - c0) <= max(budget, 1)
    np.testing.assert_array_equal(cover, 1)
    if budget == 1:
        assert len(seen) == rows * cols


@pytest.mark.parametrize("budget", [2, 10, None])
@pytest.mark.parametrize("largest", [True, False])
def test_scan_with_ties_and_without_options(largest, budget, device):
    rng = np.random.default_rng(1)
    mat = rng.integers(0, 3, (8, 10)).astype(np.float64)  # many ties
    t = torch.from_numpy(mat).to(device)
    out = scan(
        lambda r0, r1, c0, c1: t[r0:r1, c0:c1], 8, 10, 4, largest=largest, device=t.device,
        dtype=t.dtype, budget=budget,
    )  # fmt: skip
    assert set(out) == {"row_values", "row_indices"}
    check_best(mat, out["row_values"], out["row_indices"], 4, largest)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scan_keeps_dtype(dtype, device):
    mat = torch.arange(12, dtype=dtype, device=device).view(3, 4)
    out = scan(
        lambda r0, r1, c0, c1: mat[r0:r1, c0:c1], 3, 4, 2, largest=True, extreme=True,
        device=mat.device, dtype=dtype, budget=2,
    )  # fmt: skip
    assert out["row_values"].dtype == dtype and out["row_indices"].dtype == torch.int64
    np.testing.assert_array_equal(out["row_indices"].cpu().numpy(), [[3, 2]] * 3)
    np.testing.assert_array_equal(out["row_extreme"].cpu().numpy(), [0, 4, 8])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("nq", [0, 1, 5])
def test_feature_nodes_pairs_and_blocks(nq, metric, dtype, device):
    npd = NP_DTYPE[dtype]
    q = points(1, nq, dtype=npd) if nq else None
    x = points(2, 9, dtype=npd)
    x[3] = x[5]  # duplicate database items: distance 0 off the diagonal
    allx = x if q is None else np.concatenate([q, x])
    m = allx.shape[0]
    ref = (
        sq_dist(allx, allx)
        if metric == "l2"
        else allx.astype(np.float64) @ allx.astype(np.float64).T
    )
    nodes = FeatureNodes(
        None if q is None else torch.from_numpy(q).to(device),
        torch.from_numpy(x).to(device),
        metric,
    )
    assert (nodes.nq, nodes.nd, nodes.m) == (nq, 9, m)
    rng = np.random.default_rng(3)
    rows = np.concatenate([np.arange(m), rng.integers(0, m, 60)])
    cols = np.concatenate([np.arange(m), rng.integers(0, m, 60)])  # the diagonal first
    out = nodes.pairs(torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device))
    assert out.dtype == dtype
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(out.cpu().numpy(), ref[rows, cols], rtol=tol, atol=tol)
    if metric == "l2":
        assert np.all(out.cpu().numpy()[:m] == 0)  # exactly 0 between a node and itself
        assert np.all(out.cpu().numpy() >= 0)
    # blocks of each part
    parts = {"q": slice(0, nq), "d": slice(nq, m)}
    for a in ("q", "d") if nq else ("d",):
        for b in ("q", "d") if nq else ("d",):
            sub = ref[parts[a], parts[b]]
            fn = nodes.block_fn(a, b)
            r, c = sub.shape
            blk = fn(1, r, 2, c) if r > 1 and c > 2 else fn(0, r, 0, c)
            want = sub[1:, 2:] if r > 1 and c > 2 else sub
            np.testing.assert_allclose(blk.cpu().numpy(), want, rtol=tol, atol=tol)
            if metric == "l2" and a == b:
                full = fn(0, r, 0, c).cpu().numpy()
                assert np.all(np.diag(full) == 0)


@pytest.mark.parametrize("nq", [0, 1, 4])
def test_distance_nodes_read_columns_and_square(nq, device):
    rng = np.random.default_rng(4)
    nd = 6
    # non-symmetric "distances": row i of the scores must be column i of the given blocks
    qq = rng.uniform(0, 2, (nq, nq)) if nq else None
    qd = rng.uniform(0, 2, (nq, nd)) if nq else None
    dd = rng.uniform(0, 2, (nd, nd))
    big = dd if not nq else np.block([[qq, qd], [qd.T, dd]])
    ref = big.T**2

    def t(a):
        return None if a is None else torch.from_numpy(a).to(device)

    nodes = DistanceNodes(t(qq), t(qd), t(dd))
    m = nq + nd
    assert (nodes.nq, nodes.nd, nodes.m) == (nq, nd, m)
    rows = rng.integers(0, m, 50)
    cols = rng.integers(0, m, 50)
    out = nodes.pairs(torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device))
    np.testing.assert_allclose(out.cpu().numpy(), ref[rows, cols], rtol=1e-14)
    parts = {"q": slice(0, nq), "d": slice(nq, m)}
    for a in ("q", "d") if nq else ("d",):
        for b in ("q", "d") if nq else ("d",):
            sub = ref[parts[a], parts[b]]
            blk = nodes.block_fn(a, b)(0, sub.shape[0], 0, sub.shape[1])
            np.testing.assert_allclose(blk.cpu().numpy(), sub, rtol=1e-14)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_feature_nodes_negative_blocks_and_nan_free_flag(metric):
    x = torch.from_numpy(points(3, 9, d=5))
    q = torch.from_numpy(points(4, 4, d=5))
    nodes = FeatureNodes(q, x, metric)
    for a, b in (("q", "q"), ("q", "d"), ("d", "d")):
        pos = nodes.block_fn(a, b)(0, 4, 1, 4)
        neg = nodes.block_fn(a, b, negative=True)(0, 4, 1, 4)
        # l2: exactly the negated distances (rounded alike); ip: the products as they are
        want = 0.0 - pos if metric == "l2" else pos
        assert torch.equal(neg, want)
        assert nodes.block_fn(a, b)._no_nan
    # squared norms past a quarter of the range: the blocks are searched for NaN again
    big = torch.zeros(2, 3, dtype=torch.float32)
    big[0, 0] = 1.5e19  # squared norm 2.25e38 (finite, > max / 4)
    assert not FeatureNodes(None, big, metric).block_fn("d", "d")._no_nan


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize(("ka", "kb", "length"), [(1, 1, 1), (5, 3, 8), (7, 21, 7), (4, 9, 2)])
def test_merge_sorted_equals_a_sort_of_both(ka, kb, length, largest):
    rng = np.random.default_rng(ka * 10 + kb)
    r = 6
    # integer values: many ties within and across the lists
    va = np.sort(rng.integers(0, 6, (r, ka)).astype(np.float64), axis=1)
    vb = np.sort(rng.integers(0, 6, (r, kb)).astype(np.float64), axis=1)
    if largest:
        va, vb = va[:, ::-1].copy(), vb[:, ::-1].copy()
    ia = np.arange(r * ka).reshape(r, ka)
    ib = r * ka + np.arange(r * kb).reshape(r, kb)
    lookup = np.empty(r * (ka + kb))
    lookup[ia.ravel()], lookup[ib.ravel()] = va.ravel(), vb.ravel()
    i, v = lists_module._merge_sorted(
        torch.from_numpy(ia), torch.from_numpy(va), torch.from_numpy(ib), torch.from_numpy(vb),
        length, largest,
    )  # fmt: skip
    both = np.concatenate([va, vb], 1)
    srt = -np.sort(-both, axis=1) if largest else np.sort(both, axis=1)
    np.testing.assert_array_equal(v.numpy(), srt[:, :length])
    np.testing.assert_array_equal(lookup[i.numpy()], v.numpy())
    for row in i.numpy():
        assert len(set(row.tolist())) == row.size


@pytest.fixture(params=["compiled", "torch"])
def selection(request, monkeypatch):
    """The running top-k of the symmetric and query-database scans: the numba kernel (where
    numba is installed) or the torch fallback."""
    import graphrerank.graph.knn as knn_module

    if request.param == "torch":
        monkeypatch.setattr(knn_module, "_KERNEL", [None])
    else:
        pytest.importorskip("numba")
    return request.param


# ----------------------------------------------------------------------------- graph_lists
@pytest.mark.parametrize("budget", [5, 40, None])
@pytest.mark.parametrize(("metric", "largest"), [("l2", False), ("ip", True)])
@pytest.mark.parametrize(
    ("nq", "nd", "graph_k", "length"),
    [(3, 12, 4, 7), (1, 10, 3, 10), (6, 8, 5, 5), (0, 11, 4, 6), (4, 9, 7, 13)],
)
def test_graph_lists_equal_dense_graph(
    nq, nd, graph_k, length, metric, largest, budget, device, selection
):
    q = points(10 + nq, nq) if nq else None
    x = points(20 + nd, nd)
    allx = x if q is None else np.concatenate([q, x])
    m = nq + nd
    mat = sq_dist(allx, allx) if metric == "l2" else allx @ allx.T
    if metric == "l2":
        np.fill_diagonal(mat, 0.0)
    nodes = FeatureNodes(
        None if q is None else torch.from_numpy(q).to(device),
        torch.from_numpy(x).to(device),
        metric,
    )
    length = min(length, m)
    k = 2
    out = graph_lists(
        nodes, graph_k=graph_k, length=length, k=k, largest=largest, extreme=largest is False,
        budget=budget,
    )  # fmt: skip
    width = out["indices"].shape[1]
    assert out["indices"].shape == out["values"].shape
    assert out["indices"].shape[0] == m
    assert min(graph_k, length) <= width <= length
    if nq == 0:
        assert width == length
    # query rows: exact over all nodes; database rows: the first graph_k exact, the rest
    # are true scores of distinct further nodes
    tol = 1e-12
    check_best(mat[:nq], out["values"][:nq], out["indices"][:nq], width, largest, rtol=tol)
    check_best(
        mat[nq:], out["values"][nq:], out["indices"][nq:], width, largest,
        exact_k=min(graph_k, width), rtol=tol,
    )  # fmt: skip
    if not largest:
        np.testing.assert_allclose(out["extreme"].cpu().numpy(), mat.max(1), rtol=tol)
    else:
        assert "extreme" not in out
    # shortlists: each query row's nearest database items, database positions
    kq = min(nd, max(k + SHORTLIST_MARGIN, length))
    qrows = mat[:nq, nq:] if nq else mat
    check_best(qrows, out["short_values"], out["short_indices"], kq, largest, rtol=tol)
    np.testing.assert_array_equal(out["query_ids"].cpu().numpy(), np.arange(nq or nd))


@pytest.mark.parametrize("nq", [0, 3])
def test_graph_lists_reuse_database_lists(nq, device):
    q = points(30, nq) if nq else None
    x = points(31, 10)
    qt = None if q is None else torch.from_numpy(q).to(device)
    nodes = FeatureNodes(qt, torch.from_numpy(x).to(device), "l2")
    kw = {"graph_k": 3, "length": 6, "k": 2, "largest": False, "extreme": True}
    own = scan(
        nodes.block_fn("d", "d"), 10, 10, 10, largest=False, extreme=True, device=nodes.device,
        dtype=nodes.dtype,
    )  # fmt: skip
    db = {"indices": own["row_indices"], "values": own["row_values"], "extreme": own["row_extreme"]}
    fresh = graph_lists(nodes, **kw)
    reused = graph_lists(nodes, database=db, **kw)
    for key in fresh:
        np.testing.assert_allclose(reused[key].cpu().numpy(), fresh[key].cpu().numpy(), rtol=1e-14)


# ----------------------------------------------------------------------------- truncation lists
def self_first_reference(indices, t):
    out = np.full((indices.shape[0], t), -1, dtype=np.int64)
    for i, row in enumerate(indices):
        seen, lst = {i}, [i]
        for j in row:
            if j >= 0 and j not in seen:
                seen.add(j)
                lst.append(j)
        lst = lst[:t]
        out[i, : len(lst)] = lst
    return out


def test_self_first_by_hand():
    idx = torch.tensor([[0, 2, 1], [0, 1, 2], [2, 2, -1], [-1, 1, 1]])
    expected = [[0, 2, 1, -1], [1, 0, 2, -1], [2, -1, -1, -1], [3, 1, -1, -1]]
    np.testing.assert_array_equal(self_first(idx, 4).numpy(), expected)
    np.testing.assert_array_equal(self_first(idx, 1).numpy(), [[0], [1], [2], [3]])


@pytest.mark.parametrize("t", [1, 2, 4, 6, 9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_self_first_equals_loop(seed, t, device):
    rng = np.random.default_rng(seed)
    n, m = 12, 6
    idx = rng.integers(-1, n, (n, m))  # padding anywhere, repeated ids, the node or not
    idx[0] = -1  # only padding
    idx[1, :] = 1  # only itself
    idx[2, -2:] = -1
    out = self_first(torch.from_numpy(idx).to(device), t)
    assert out.dtype == torch.int64 and tuple(out.shape) == (n, t)
    np.testing.assert_array_equal(out.cpu().numpy(), self_first_reference(idx, t))


def test_self_first_rejects_bad_truncation():
    with pytest.raises(ValueError, match="truncation"):
        self_first(torch.zeros(2, 2, dtype=torch.long), 0)


@pytest.mark.parametrize(("t", "kc"), [(1, 1), (3, 5), (8, 2), (20, 20)])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("self_search", [False, True])
def test_truncation_lists_equal_self_first_of_exact_knn(
    t, kc, metric, self_search, device, monkeypatch
):
    # self_search: one self_knn of all nodes in place of the index's search by chunks
    monkeypatch.setattr(lists_module, "_SELF_SEARCH_ROWS", 1 if self_search else 10**9)
    monkeypatch.setattr(lists_module, "_SELF_SEARCH_DIM", 0)
    rng = np.random.default_rng(t * 31 + kc)
    n = 15
    x = rng.normal(size=(n, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xt = torch.from_numpy(x).to(device)
    lists, cand = truncation_lists(xt, KNNIndex(metric=metric, backend="torch").add(xt), t, kc)
    score = x @ x.T if metric == "ip" else -sq_dist(x, x)
    if metric == "l2":
        np.fill_diagonal(score, 0.0)
    order = np.argsort(-score, axis=1, kind="stable")
    tt, kk = min(t, n), min(kc, n)
    assert lists.dtype == torch.int32
    np.testing.assert_array_equal(
        lists.cpu().numpy(), self_first_reference(order[:, : max(tt, kk)], tt)
    )
    np.testing.assert_array_equal(cand.indices.cpu().numpy(), order[:, :kk])
    np.testing.assert_allclose(
        cand.scores.cpu().numpy(),
        np.take_along_axis(score, order[:, :kk], 1),
        rtol=1e-10,
        atol=1e-12,
    )


def test_self_first_refuses_huge_truncation():
    idx = torch.tensor([[0, 1], [1, 0], [2, 0]])
    with pytest.raises(ValueError, match="truncation asks for N x T lists"):
        self_first(idx, 10**12)  # was an allocator error for N x 10**12
    np.testing.assert_array_equal(self_first(idx, 3).numpy(), [[0, 1, -1], [1, 0, -1], [2, 0, -1]])
    # longer than N: -1 padding beyond the N nodes
    np.testing.assert_array_equal(self_first(idx, 4).numpy()[:, 3], [-1, -1, -1])


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=requires_faiss)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_truncation_lists_self_search_with_duplicates(backend, dtype, monkeypatch):
    # exact duplicates: a node's copies tie with it, so the search may rank one of them first
    # (then the node is moved first); the same lists as the index's own search, int32 lists
    # and int64 candidates, scores in x's dtype
    g = torch.Generator().manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(90, 6, generator=g, dtype=torch.float64), dim=1)
    x[10:16] = x[3]
    x[40] = x[41]
    x = x.to(dtype)
    index = database_index(x, "exact", backend)
    monkeypatch.setattr(lists_module, "_SELF_SEARCH_DIM", 0)
    for t, kc in ((1, 1), (4, 9), (12, 3), (90, 90), (200, 7)):
        monkeypatch.setattr(lists_module, "_SELF_SEARCH_ROWS", 1)
        lists, cand = truncation_lists(x, index, t, kc)
        monkeypatch.setattr(lists_module, "_SELF_SEARCH_ROWS", 10**9)
        ref_lists, ref_cand = truncation_lists(x, index, t, kc)
        assert lists.dtype == torch.int32 and cand.indices.dtype == torch.int64
        assert cand.scores.dtype == dtype
        np.testing.assert_array_equal(lists[:, 0].numpy(), np.arange(90))
        tol = 1e-6 if backend == "faiss" or dtype == torch.float32 else 1e-12
        torch.testing.assert_close(cand.scores, ref_cand.scores, rtol=0, atol=tol)
        # the ids agree except in the order of tied copies: equal once each copy is named
        # by its group
        canon = torch.arange(90)
        canon[[3, *range(10, 16)]] = 3
        canon[[40, 41]] = 40
        assert torch.equal(canon[lists[:, 1:].long()], canon[ref_lists[:, 1:].long()])
        assert torch.equal(canon[cand.indices], canon[ref_cand.indices])


def test_graph_lists_with_a_failing_kernel_warn_and_fall_back(monkeypatch):
    import graphrerank.graph.knn as knn_module

    q, x = torch.from_numpy(points(5, 4)), torch.from_numpy(points(6, 15))
    nodes = FeatureNodes(q, x, "l2")
    kw = {"graph_k": 3, "length": 6, "k": 2, "largest": False, "extreme": True, "budget": 20}
    monkeypatch.setattr(knn_module, "_KERNEL", [None])
    want = graph_lists(nodes, **kw)

    def broken(*args):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(knn_module, "_KERNEL", [broken])
    with pytest.warns(RuntimeWarning, match="numba top-k selection kernel failed .*no compiler"):
        got = graph_lists(nodes, **kw)
    assert knn_module._KERNEL == [None]
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-14)
