"""Property-based hardening of the lower layers (``graph``, ``nn``, ``diffusion``): every public
function, fed the input families of :mod:`tests.hardening.strategies`, gives a valid result
(output invariants checked, and against a dense float64 transcription where one is cheap) or a
``ValueError`` / ``TypeError`` naming the argument. Inputs that used to crash the process (corrupt
CSR matrices) run in a child process: see :func:`test_crash_prone_cases_in_a_subprocess`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch_geometric.data import Data

from graphrerank import diffusion as gd
from graphrerank import graph as gg
from graphrerank import nn as gnn
from graphrerank.graph import sparse as gs
from graphrerank.graph.lists import DistanceNodes, FeatureNodes, ScoreNodes
from graphrerank.graph.ranking import lexsort_desc, topk

from .strategies import (
    assert_csr,
    assert_ranking,
    common_variants,
    csr_matrices,
    dense_square,
    edge_indices,
    features,
    index_lists,
    junk,
    ks,
    node_counts,
    outcome,
    reals,
    valid_or_refused,
    variant,
    weights,
)

warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
ROOT = Path(__file__).resolve().parents[2]


def _t(a) -> torch.Tensor:
    """A test-side copy of an input that the library accepted, as a plain tensor."""
    if isinstance(a, torch.Tensor):
        return a.detach()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a)))


def _dense_edges(ei, w, n):
    """Dense ``A[dst, src]`` (float64) and the existence mask of the edges."""
    a = torch.zeros(n, n, dtype=torch.float64)
    p = torch.zeros(n, n, dtype=torch.bool)
    a[ei[1], ei[0]] = w.double()
    p[ei[1], ei[0]] = True
    return a, p


def _data(n, ei, w) -> Data:
    """A ``Data`` of the (possibly bad) parts; numpy parts become tensors, as PyG needs."""

    def t(a):
        return a if isinstance(a, torch.Tensor) else _t(a)

    return Data(edge_index=t(ei), edge_weight=t(w), num_nodes=n)


@st.composite
def graphs(draw, valid: bool = False):
    """``(n, edge_index, edge_weight)`` of a directed graph, any family."""
    n = draw(node_counts)
    ei = draw(edge_indices(n, valid=valid))
    e = ei.shape[1] if hasattr(ei, "shape") and len(ei.shape) == 2 else 1
    return n, ei, draw(weights(e, valid=valid))


# ----------------------------------------------------------------------------- graph.build
@given(graphs(), st.sampled_from(["mutual", "min", "union", "max", "sum", None]))
@valid_or_refused
def test_symmetrize(g, how):
    n, ei, w = g
    out_ei, out_w = outcome(
        gg.symmetrize, ei, w, n, how, names=["edge_index", "edge_weight", "num_nodes", "how"]
    )
    ei_t, w_t = _t(ei), _t(w)
    assert out_ei.dim() == 2 and out_ei.shape[0] == 2 and out_w.shape == (out_ei.shape[1],)
    assert bool((out_ei >= 0).all()) and bool((out_ei < n).all())
    keys = out_ei[1] * n + out_ei[0]
    assert bool((keys[1:] > keys[:-1]).all()), "edges not sorted by target, then source, unique"
    a, p = _dense_edges(ei_t.long(), w_t, n)
    if how == "union":
        want, mask = a + a.T, p | p.T
    elif how == "max":
        inf = torch.tensor(float("-inf"), dtype=torch.float64)
        want = torch.maximum(torch.where(p, a, inf), torch.where(p.T, a.T, inf))
        mask = p | p.T
    elif how == "mutual":
        want, mask = a, p & p.T
    else:
        want, mask = torch.minimum(a, a.T), p & p.T
    got, got_mask = _dense_edges(out_ei, out_w, n)
    assert torch.equal(got_mask, mask)
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-5, atol=1e-6)


@given(graphs(), st.sampled_from(["sym", "row", "col"]))
@valid_or_refused
def test_normalize_adjacency(g, how):
    n, ei, w = g
    out = outcome(
        gg.normalize_adjacency,
        ei,
        w,
        n,
        how,
        names=["edge_index", "edge_weight", "num_nodes", "how"],
    )
    ei_t = _t(ei).long()
    w_t = _t(w).double()
    a, _ = _dense_edges(ei_t, w_t, n)
    deg = a.sum(1)
    if how == "row":
        inv = torch.where(deg != 0, 1 / deg, 0)
        want = a * inv[:, None]
    else:
        inv = torch.where(deg > 0, deg.clamp(min=1e-300).rsqrt(), 0)
        want = inv[:, None] * a * inv[None, :]
    got, _ = _dense_edges(ei_t, out, n)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@given(features(), st.data())
@valid_or_refused
def test_knn_graph(x, data):
    n = len(x) if hasattr(x, "__len__") else 1
    k = data.draw(ks(n))
    sym = data.draw(st.sampled_from([None, "mutual", "min", "union", "max"]))
    norm = data.draw(st.sampled_from([None, "sym", "row"]))
    gamma = data.draw(st.sampled_from([None, 1.0, 3.0, -1.0, float("inf")]))
    g = outcome(
        gg.knn_graph,
        x,
        k,
        symmetrize=sym,
        normalize=norm,
        gamma=gamma,
        loop=data.draw(st.booleans()),
        backend="torch",
        names=["x", "k", "gamma", "too large"],
    )
    n = g.num_nodes
    assert bool((g.edge_index >= 0).all()) and bool((g.edge_index < n).all())
    assert g.edge_weight.shape == (g.edge_index.shape[1],)
    assert bool(torch.isfinite(g.edge_weight).all())
    assert not g.edge_weight.requires_grad


@given(features(valid=True), st.data())
@valid_or_refused
def test_knn_graph_candidates(x, data):
    n = len(x)
    idx = data.draw(index_lists(n))
    scores = variant(torch.rand(*np.shape(idx)), data.draw(common_variants))
    g = outcome(
        gg.knn_graph,
        x,
        data.draw(ks(n)),
        candidates=(scores, idx),
        backend="torch",
        names=["x", "k", "candidates", "too large"],
    )
    assert bool((g.edge_index >= 0).all()) and bool((g.edge_index < n).all())


@given(st.one_of(dense_square(), st.floats(), junk), reals(0, 3))
@valid_or_refused
def test_edge_weights(scores, gamma):
    out = outcome(gg.edge_weights, scores, gamma, names=["scores", "gamma"])
    s = _t(scores)
    if gamma is not None:
        torch.testing.assert_close(out, s.to(out.dtype).clamp(min=0) ** gamma, rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------------------------- graph.convert
@given(graphs())
@valid_or_refused
def test_to_torch_csr_adjacency_to_scipy(g):
    n, ei, w = g
    data = _data(n, ei, w)
    names = ["graph", "edge_index", "edge_weight"]
    for fn in (gg.to_torch_csr, gnn.adjacency):
        a = outcome(fn, data, names=names)
        assert_csr(a, (n, n))
        ei_t = data.edge_index.long()
        want, _ = _dense_edges(ei_t, data.edge_weight.detach(), n)
        torch.testing.assert_close(a.detach().to_dense().double(), want, rtol=1e-3, atol=1e-6)
    m = outcome(gg.to_scipy, data, names=names)
    assert m.shape == (n, n)
    back = gg.from_scipy(m)
    assert back.num_nodes == n


@given(dense_square(), st.sampled_from(["csr", "coo", "dense", "junk"]))
@valid_or_refused
def test_from_scipy(a, form):
    import scipy.sparse as sp

    meta = isinstance(a, torch.Tensor) and a.device.type == "meta"
    arr = None if meta else _t(a).numpy()
    if arr is None or arr.ndim != 2:
        m = arr if form != "junk" else "x"
    else:
        m = {"csr": sp.csr_matrix, "coo": sp.coo_matrix, "dense": np.asarray, "junk": str}[form](
            arr
        )
    g = outcome(gg.from_scipy, m, names=["matrix"])
    dense = np.asarray(sp.coo_matrix(m).todense(), dtype=np.float64)
    want, _ = _dense_edges(g.edge_index, g.edge_weight, g.num_nodes)
    np.testing.assert_allclose(want.numpy(), dense, rtol=1e-5)


# ----------------------------------------------------------------------------- graph.sparse
@given(csr_matrices(), st.integers(-1, 6))
@valid_or_refused
def test_sparse_helpers(a, p):
    dense = a.to_dense().double()
    n, m = a.shape
    t = gs.csr_transpose(a)
    assert_csr(t, (m, n))
    torch.testing.assert_close(t.to_dense().double(), dense.T)
    r = gs.csr_row_normalize(a)
    norms = dense.norm(dim=1, keepdim=True)
    torch.testing.assert_close(
        r.to_dense().double(), torch.where(norms > 0, dense / norms, 0), rtol=1e-5, atol=1e-6
    )
    idx, val = gs.csr_padded(a)
    assert idx.shape == val.shape and bool((idx >= -1).all()) and bool((idx < m).all())
    assert torch.equal(
        gs.csr_row_ids(a), torch.repeat_interleave(torch.arange(n), a.crow_indices().diff().long())
    )
    assert_csr(gs.compact_csr(a), (n, m))
    kl = outcome(gs.csr_keep_largest, a, p, names=["p"])
    assert_csr(kl, (n, m))
    assert bool((kl.crow_indices().diff() <= max(p, 0)).all())
    if n == m:
        s = gs.csr_add_transpose(a)
        torch.testing.assert_close(s.to_dense().double(), dense + dense.T)
    rows = outcome(gs.csr_rows, a, p, p + 1, names=["start", "stop"])
    torch.testing.assert_close(rows.to_dense().double(), dense[p : p + 1])


@given(node_counts, st.data())
@valid_or_refused
def test_csr_from_rows_and_coo(n, data):
    cols = data.draw(index_lists(n, rows=n))
    vals = torch.rand(*np.shape(cols)) if np.ndim(cols) else torch.rand(1)
    c = outcome(gs.csr_from_rows, cols, vals, n, names=["cols", "vals", "n_cols"])
    assert_csr(c, (n, n))
    ct = _t(cols).long()
    assert c._nnz() == int(((ct >= 0) & (ct < n)).sum())
    ei = data.draw(edge_indices(n))
    e = np.shape(ei)[1] if np.ndim(ei) == 2 else 1
    w = data.draw(weights(e))
    coo = outcome(gs.coo_to_csr, ei, w, (n, n), names=["indices", "values", "shape"])
    assert_csr(coo, (n, n))


@given(csr_matrices(), st.sampled_from(["min", "mul", "max"]), st.integers(0, 8), st.integers(0, 8))
@valid_or_refused
def test_overlaps(v, op, r, c):
    n = v.shape[0]
    rows = torch.tensor([r, min(r, n - 1)])
    cols = torch.tensor([c, 0])
    got = outcome(gs.pair_products, v, rows, cols, op, 64, names=["rows", "cols", "op"])
    d = v.to_dense().double()
    f = torch.minimum if op == "min" else torch.mul
    want = torch.stack([f(d[rr], d[cc]).sum() for rr, cc in zip(rows.tolist(), cols.tolist())])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    out = torch.zeros(n, n, dtype=v.dtype)
    gs.pair_overlap(v, gs.csr_transpose(v), op, out)
    torch.testing.assert_close(
        out.double(), f(d[:, None, :], d[None, :, :]).sum(-1), rtol=1e-5, atol=1e-6
    )


@given(
    st.one_of(st.lists(st.floats(0, 5), max_size=8).map(torch.tensor), junk), reals(0, 10), ks(4)
)
@valid_or_refused
def test_row_chunks(cost, max_cost, max_rows):
    chunks = outcome(
        gs.row_chunks, cost, max_cost, max_rows, names=["cost", "max_cost", "max_rows"]
    )
    n = len(cost)
    if n == 0:
        assert chunks == []
        return
    assert [s for s, _ in chunks] == [0] + [e for _, e in chunks[:-1]] and chunks[-1][1] == n
    assert all(1 <= e - s <= max_rows for s, e in chunks)


# ----------------------------------------------------------------------------- graph.ranking
@given(dense_square(), st.data())
@valid_or_refused
def test_top_k_with_ties_and_rank_dense(s, data):
    n = np.shape(s)[1] if np.ndim(s) == 2 else 1
    k = data.draw(ks(n))
    vals, idx = outcome(
        gg.top_k_with_ties,
        s,
        k,
        lambda rows: -torch.arange(n).float().expand(len(rows), n),
        names=["scores", "k"],
    )
    assert_ranking(vals, idx, n, k=k)
    res = outcome(gg.rank_dense, s, k, None, None, "index", names=["scores", "k"])
    assert_ranking(res.scores, res.indices, n, k=k)
    st_ = _t(s).float()
    # ties broken by the lower index: the stable descending sort
    want = torch.sort(st_, dim=1, descending=True, stable=True).indices[:, :k]
    assert torch.equal(res.indices, want) and torch.equal(idx, want)
    v2, i2 = outcome(topk, s, k, names=["x", "k"])
    torch.testing.assert_close(v2, vals)


@given(dense_square(), dense_square())
@valid_or_refused
def test_lexsort_desc(a, b):
    o = outcome(lexsort_desc, a, b, names=["primary", "secondary"])
    p, s = _t(a).double(), _t(b).double()
    for r in range(o.shape[0]):
        keys = list(zip(p[r].tolist(), s[r].tolist()))
        got = [keys[i] for i in o[r].tolist()]
        assert got == sorted(keys, reverse=True)


@given(node_counts, st.data())
@valid_or_refused
def test_rank_candidates(n, data):
    db = torch.nn.functional.normalize(torch.randn(n, 3), dim=1)
    q = torch.nn.functional.normalize(torch.randn(2, 3), dim=1)
    idx = data.draw(index_lists(n, rows=2))
    val = variant(torch.rand(*np.shape(idx)), data.draw(common_variants))
    k = data.draw(ks(n))
    index = gg.KNNIndex(backend="torch").add(db)
    res = outcome(
        gg.rank_candidates,
        idx,
        val,
        k,
        q,
        db,
        index,
        data.draw(st.sampled_from(["similarity", "index", "x"])),
        names=["cand_idx", "cand_val", "k", "ties"],
    )
    assert_ranking(res.scores, res.indices, n, rows=2, k=k)


# ----------------------------------------------------------------------------- graph.lists
@given(node_counts, st.data())
@valid_or_refused
def test_self_first(n, data):
    idx = data.draw(index_lists(n))
    t = data.draw(ks(n + 2))
    out = outcome(gg.self_first, idx, t, names=["indices", "truncation"])
    assert out.shape == (n, t)
    assert torch.equal(out[:, 0], torch.arange(n))
    assert_ranking(torch.zeros(out.shape).masked_fill(out < 0, float("-inf")), out, n)


@given(features(), st.sampled_from(["ip", "l2", "cos"]), st.data())
@valid_or_refused
def test_feature_nodes_and_scan(x, metric, data):
    nodes = outcome(FeatureNodes, None, x, metric, names=["database", "metric"])
    n = nodes.nd
    k = data.draw(ks(n))
    out = outcome(
        gg.scan,
        nodes.block_fn("d", "d"),
        n,
        n,
        k,
        largest=metric == "ip",
        device=nodes.device,
        dtype=nodes.dtype,
        names=["k"],
    )
    xd = nodes.db.double()
    full = xd @ xd.T if metric == "ip" else torch.cdist(xd, xd).square()
    sign = 1 if metric == "ip" else -1
    assert_ranking(sign * out["row_values"], out["row_indices"], n, k=min(k, n))
    want = (sign * full).sort(dim=1, descending=True).values[:, : min(k, n)]
    torch.testing.assert_close(
        (sign * out["row_values"]).double(),
        want,
        rtol=1e-3,
        atol=1e-3 * float(full.abs().max().clamp(min=1)),
    )
    r = torch.arange(n)
    p = outcome(nodes.pairs, r, r.flip(0), names=["rows", "cols"])
    torch.testing.assert_close(
        p.double(), full[r, r.flip(0)], rtol=1e-3, atol=1e-3 * float(full.abs().max().clamp(min=1))
    )


@given(dense_square(symmetric=True), st.booleans())
@valid_or_refused
def test_distance_nodes(dd, similarity):
    cls = ScoreNodes if similarity else DistanceNodes
    nodes = outcome(cls, None, None, dd, names=["dd"])
    n = nodes.nd
    lists = outcome(
        gg.graph_lists,
        nodes,
        graph_k=1,
        length=n,
        k=1,
        largest=similarity,
        extreme=not similarity,
        names=["graph_k"],
    )
    assert lists["indices"].shape[0] == n
    assert bool((lists["indices"] >= 0).all()) and bool((lists["indices"] < n).all())


@given(features(valid=True), st.data())
@valid_or_refused
def test_truncation_lists(x, data):
    x = torch.nn.functional.normalize(x, dim=1)
    n = x.shape[0]
    t, c = data.draw(ks(n + 1)), data.draw(ks(n))
    index = gg.KNNIndex(backend="torch").add(x)
    lists, cand = outcome(
        gg.truncation_lists, x, index, t, c, names=["truncation", "num_candidates"]
    )
    assert torch.equal(lists[:, 0].long(), torch.arange(n))
    assert_ranking(cand.scores, cand.indices, n)


# ----------------------------------------------------------------------------- graph.scores
@given(
    st.one_of(dense_square(), csr_matrices(), features()),
    st.sampled_from(["similarity", "distance", "x"]),
    st.data(),
)
@valid_or_refused
def test_score_matrix(m, kind, data):
    s = outcome(gg.ScoreMatrix, m, kind, names=["scores", "kind"])
    r, c = s.shape
    k = data.draw(ks(c))
    res = outcome(s.topk, k, names=["k"])
    assert_ranking(res.scores, res.indices, c, rows=r, k=k)
    rows = data.draw(st.lists(st.integers(-1, r), min_size=1, max_size=3))
    sub = outcome(s.index_select, 0, torch.tensor(rows), names=["rows"])
    assert sub.shape == (len(rows), c)
    p = outcome(
        s.pairs,
        torch.tensor(rows),
        torch.zeros(len(rows), dtype=torch.long),
        names=["rows", "cols"],
    )
    torch.testing.assert_close(p, s.similarities()[torch.tensor(rows), 0])


# ----------------------------------------------------------------------------- nn
@given(graphs(), st.booleans(), st.data())
@valid_or_refused
def test_weighted_and_diffusion_propagation(g, sparse, data_):
    n, ei, w = g
    data = _data(n, ei, w)
    feats = data_.draw(features(n=data_.draw(st.sampled_from([n, n, n + 1]))))
    if sparse:
        adj = outcome(gnn.adjacency, data, names=["graph", "edge_index", "edge_weight"])
        out = outcome(gnn.WeightedPropagation(), feats, adj, names=["x", "edge_index"])
    else:
        out = outcome(
            gnn.WeightedPropagation(),
            feats,
            data.edge_index,
            data.edge_weight,
            names=["x", "edge_index", "edge_weight"],
        )
    ft = _t(feats).double()
    if ft.numel() == 0:
        assert out.shape == ft.shape
        return
    a, _ = _dense_edges(data.edge_index.long(), data.edge_weight.detach(), ft.shape[0])
    torch.testing.assert_close(
        out.detach().double(), a @ ft, rtol=1e-3, atol=1e-4 * float(ft.abs().max().clamp(min=1))
    )
    y = outcome(
        gnn.DiffusionPropagation(alpha=0.5, num_iters=3),
        feats,
        data.edge_index,
        data.edge_weight,
        names=["y", "edge_index", "edge_weight"],
    )
    assert y.shape == out.shape


@given(node_counts, st.data())
@valid_or_refused
def test_expansion_and_bipartite(n, data):
    db = torch.nn.functional.normalize(torch.randn(n, 3), dim=1)
    q = data.draw(features(d=3))
    idx = data.draw(index_lists(n, rows=2))
    vals = variant(torch.rand(*np.shape(idx)), data.draw(common_variants))
    adj = outcome(gnn.bipartite_adjacency, idx, vals, n, names=["indices", "values", "num_sources"])
    assert_csr(adj, (2, n))
    out = outcome(gnn.ExpansionPropagation(alpha=1.0), (db, q), adj, names=["x", "adjacency"])
    assert out.shape == (np.shape(q)[0], 3)
    assert bool(torch.isfinite(out).all())


@given(node_counts, st.data())
@valid_or_refused
def test_gnn_rerank(n, data):
    nbr = data.draw(index_lists(n, self_first=True))
    sim = variant(torch.rand(*np.shape(nbr)), data.draw(common_variants))
    k1 = data.draw(ks(np.shape(nbr)[-1] if np.ndim(nbr) else 1))
    k2 = data.draw(ks(k1 if isinstance(k1, int) else 1))
    a, p = outcome(
        gnn.gnn_rerank_graph, nbr, sim, k1, k2, names=["neighbors", "similarities", "k1", "k2"]
    )
    assert_csr(a, (n, n))
    assert_csr(p, (n, n))
    nt = _t(nbr).long()
    assert a._nnz() == int((nt[:, :k1] >= 0).sum())
    out = outcome(gnn.GNNRerankConv(), a, p, names=["x", "adj_t"])
    assert_csr(out, (n, n))
    dense = gnn.GNNRerankConv()(a.to_dense(), p)
    torch.testing.assert_close(out.to_dense(), dense, rtol=1e-4, atol=1e-5)
    prop = outcome(
        gnn.gnn_propagate,
        nbr,
        sim,
        k1,
        k2,
        layers=data.draw(st.integers(-1, 2)),
        names=["layers", "k1", "k2"],
    )
    assert_csr(prop, (n, n))


@given(features(valid=True), st.data())
@valid_or_refused
def test_kreciprocal_encoding(x, data):
    nodes = FeatureNodes(None, x.double(), "l2")
    n = nodes.nd
    s = gg.scan(
        nodes.block_fn("d", "d"),
        n,
        n,
        n,
        largest=False,
        extreme=True,
        device=x.device,
        dtype=torch.float64,
    )
    k1, k2 = data.draw(ks(n)), data.draw(ks(n))
    v = outcome(
        gnn.kreciprocal_encoding,
        s["row_indices"],
        s["row_values"],
        s["row_extreme"],
        k1,
        k2,
        nodes.pairs,
        names=["k1", "k2", "neighbors"],
    )
    assert_csr(v, (n, n))
    sums = v.to_dense().sum(1).double()
    # Each row of V is a distribution over the item's k-reciprocal set, averaged over its k2
    # nearest neighbours. With tied (identical) points the ties are broken by index, so an
    # item may fall out of its own first k1 + 1 entries: its set is then empty and its row
    # zero (the reference code does the same), and the rows averaging it sum to less than 1.
    own = (s["row_indices"][:, : k1 + 1] == torch.arange(n)[:, None]).any(1)
    if bool(own.all()):
        torch.testing.assert_close(sums, torch.ones(n, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    else:
        assert bool((sums >= -1e-9).all() and (sums <= 1 + 1e-6).all()), sums
    mask = gnn.reciprocal_mask(s["row_indices"])
    assert mask.shape == (n, n) and bool(mask[:, 0].all())


# ----------------------------------------------------------------------------- diffusion
@st.composite
def spd_operators(draw):
    """A symmetric positive definite CSR :math:`I - \\alpha S` and its dense copy."""
    a = draw(dense_square(valid=True))
    n = a.shape[0]
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.clamp(min=1e-12).rsqrt(), 0)
    s = inv[:, None] * a * inv[None, :]
    L = torch.eye(n) - 0.9 * s
    return L.to_sparse_csr(), L.double()


@given(spd_operators(), st.data())
@valid_or_refused
def test_conjugate_gradient_and_diffuse(op, data):
    L, dense = op
    n = dense.shape[0]
    b = data.draw(st.one_of(features(n=n, d=2), features(n=n + 1, d=2), junk))
    res_tol = data.draw(reals(0, 1e-3))
    res = outcome(
        gd.conjugate_gradient,
        L,
        b,
        tol=res_tol,
        max_iter=200,
        names=["B", "A", "tol"],
    )
    bt = _t(b).double()
    # the reported residuals are the true ones, and a converged column meets tol (float32
    # rounding aside)
    sol = res.solution.double().reshape(bt.shape[0], -1)
    b2 = bt.reshape(bt.shape[0], -1)
    bn = b2.norm(dim=0)
    true = (b2 - dense @ sol).norm(dim=0) / torch.where(bn > 0, bn, 1)
    torch.testing.assert_close(res.residuals.double(), true, rtol=5e-2, atol=1e-4)
    tol = float(res_tol) if isinstance(res_tol, float) else 1e-6
    assert bool((true[res.converged] <= 2 * tol + 1e-4).all())
    r2 = outcome(gd.diffuse, L, b, max_iter=data.draw(ks(30)), names=["operator", "y", "max_iter"])
    assert r2.solution.shape == res.solution.shape


@given(graphs(), reals(0, 1))
@valid_or_refused
def test_diffusion_operator_and_laplacian(g, alpha):
    n, ei, w = g
    data = _data(n, ei, w)
    L = outcome(gd.diffusion_operator, data, alpha, names=["graph", "alpha"])
    assert_csr(L, (n, n))
    a, _ = _dense_edges(data.edge_index.long(), data.edge_weight.detach(), n)
    torch.testing.assert_close(
        L.to_dense().double(), torch.eye(n, dtype=torch.float64) - alpha * a, rtol=1e-4, atol=1e-5
    )
    L2 = outcome(gd.laplacian_alpha, data, alpha, names=["graph", "alpha"])
    assert_csr(L2, (n, n))
    L.to_dense() @ torch.ones(n, dtype=L.dtype)  # the first use of the result does not abort


@given(dense_square(), reals(0, 1), st.sampled_from(["dense", "scipy", "auto", "x"]), st.data())
@valid_or_refused
def test_spectral(s, alpha, solver, data):
    n = np.shape(s)[0] if np.ndim(s) else 1
    e, lam = outcome(
        gd.spectral_embedding,
        s if not isinstance(s, np.ndarray) else torch.from_numpy(np.ascontiguousarray(s)),
        data.draw(ks(n)),
        alpha=alpha,
        eigensolver=solver,
        names=["graph", "rank", "alpha", "eigensolver"],
    )
    assert e.shape[0] == n and e.shape[1] == lam.shape[0] and bool(torch.isfinite(e).all())
    assert bool((lam[1:] <= lam[:-1]).all())
    f = outcome(gd.spectral_filter, lam, alpha, names=["eigenvalues", "alpha"])
    assert bool(torch.isfinite(f).all())


@given(node_counts, st.data())
@valid_or_refused
def test_query_vector(n, data):
    idx = data.draw(index_lists(n, rows=3))
    sc = variant(torch.rand(*np.shape(idx)), data.draw(common_variants))
    kq = data.draw(ks(n))
    gamma = data.draw(reals(0, 3))
    y = outcome(
        gd.query_vector,
        sc,
        idx,
        n,
        kq=kq,
        gamma=gamma,
        names=["scores", "indices", "kq", "gamma", "num_nodes"],
    )
    assert y.shape == (n, 3) and bool(torch.isfinite(y).all()) and bool((y >= 0).all())
    assert bool(((y > 0).sum(0) <= kq).all())


@given(spd_operators(), st.data())
@valid_or_refused
def test_truncated_diffusion(op, data):
    L, dense = op
    n = dense.shape[0]
    affinity = data.draw(st.one_of(st.just(None), csr_matrices(n)))
    if affinity is None:
        affinity = (torch.eye(n) - L.to_dense()).clamp(min=0).to_sparse_csr()
    sub = data.draw(index_lists(n, rows=2))
    op2 = outcome(
        gd.truncated_operator,
        affinity,
        sub,
        alpha=data.draw(reals(0, 1)),
        names=["subsets", "affinity", "alpha"],
    )
    t = np.shape(sub)[1]
    assert_csr(op2, (2 * t, 2 * t))
    y = torch.zeros(t, 2)
    y[0] = 1
    res = outcome(gd.truncated_diffuse, affinity, sub, y, names=["subsets", "y", "affinity"])
    assert res.solution.shape == (t, 2) and bool(torch.isfinite(res.solution).all())


@given(st.integers(1, 8), st.data())
@valid_or_refused
def test_regional(m, data):
    v = data.draw(features(n=m, d=3))
    ids = variant(
        torch.from_numpy(np.sort(np.random.default_rng(m).integers(0, 3, m))),
        data.draw(common_variants),
    )
    w = outcome(
        gd.gmp_weights, v, ids, lam=data.draw(reals(0.1, 2)), names=["vectors", "image_ids", "lam"]
    )
    assert w.shape == (m,) and bool(torch.isfinite(w).all())
    pooled = outcome(
        gd.pool_regions,
        torch.ones(m),
        ids,
        data.draw(st.sampled_from([None, 1, 3, 5, -1])),
        w,
        names=["image_ids", "num_images", "weights"],
    )
    idt = _t(ids).long()
    want = torch.zeros(pooled.shape[0], dtype=torch.float64).index_add_(0, idt, w.double())
    torch.testing.assert_close(pooled.double(), want, rtol=1e-5, atol=1e-6)


@given(features(valid=True), st.data())
@valid_or_refused
def test_offline_diffusion(x, data):
    x = torch.nn.functional.normalize(x, dim=1)
    n = x.shape[0]
    C = outcome(
        gd.offline_diffusion,
        x,
        kd=data.draw(ks(n)),
        truncation=data.draw(ks(n)),
        backend="torch",
        names=["kd", "truncation"],
    )
    assert_csr(C, (n, n))
    idx = data.draw(index_lists(n + data.draw(st.integers(0, 2)), rows=2))
    sc = torch.rand(*np.shape(idx)) if np.ndim(idx) == 2 else torch.rand(2, 1)
    F = outcome(
        gd.offline_diffusion_scores, C, (sc, idx), data.draw(reals(0, 3)), names=["knn", "gamma"]
    )
    assert_csr(F, (2, n))
    lists = gg.self_first(torch.arange(n).expand(n, n).contiguous(), n)
    C2 = outcome(
        gd.late_truncation,
        gd.laplacian_alpha(gg.mutual_knn_graph(x, min(2, n), backend="torch"), 0.9),
        lists,
        names=[],
    )
    assert_csr(C2, (n, n))


# ----------------------------------------------------------------------------- crash-prone cases
@pytest.fixture(scope="module")
def crash_report():
    """Run :mod:`tests.hardening._crash_cases` in a child process (its inputs once crashed the
    process with SIGSEGV / abort) and return its per-case report."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.hardening._crash_cases"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode} (negative: killed by a signal)\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _case_names() -> list[str]:
    from ._crash_cases import CASES

    return list(CASES)


@pytest.mark.parametrize("case", _case_names())
def test_crash_prone_case(crash_report, case):
    """One case of the child process: the issue's crashes and silently wrong results
    (regressions), then generated corrupt CSR matrices into every sparse entry point."""
    assert case in crash_report, f"{case} did not run"
    assert crash_report[case] == "ok", crash_report[case]
