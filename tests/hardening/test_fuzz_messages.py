"""Regressions of the fuzz harness's (``benchmarks/fuzz_public_api.py``) findings in the kNN,
lower and re-ranker layers: messages that named the wrong argument (or none), a faiss abort, raw
faiss and allocator errors, a hang, NaN / infinite results and inputs accepted silently. Each
error is asserted by type and by the argument(s) its message names; each corrected result
against a hand-worked or dense value."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from graphrerank import diffusion as gd
from graphrerank import graph as gg
from graphrerank import nn as gnn
from graphrerank import rerankers as R
from graphrerank._checks import check_allocation, check_index, check_int, check_tensor
from graphrerank.graph.ranking import lexsort_desc

X = torch.nn.functional.normalize(
    torch.randn(24, 8, generator=torch.Generator().manual_seed(0)), dim=1
)
Q = torch.nn.functional.normalize(X[:3] + 0.01, dim=1)


# ----------------------------------------------------------------------------- _checks
def test_check_helpers_name_where_a_bound_comes_from():
    with pytest.raises(ValueError, match=r"kd must be <= 2 \(the number of rows of x\), got 5"):
        check_int(5, "kd", high=2, high_of="the number of rows of x")
    with pytest.raises(ValueError, match=r"km must be >= 7 \(the setting kd\), got 3"):
        check_int(3, "km", low=7, low_of="the setting kd")
    assert type(check_int(np.int64(3), "k")) is int
    with pytest.raises(ValueError, match="out of range for num_nodes=0"):
        check_index(torch.tensor([1]), "edge_index", high=0, of="num_nodes={high}")
    with pytest.raises(ValueError, match=r"scores contains \+inf"):
        check_tensor(torch.tensor([1.0, float("inf")]), "scores", posinf=False)
    assert check_tensor(torch.tensor([float("-inf")]), "scores", posinf=False).numel() == 1
    with pytest.raises(ValueError, match="num_images asks for image scores"):
        check_allocation(10**13, torch.float32, "cpu", "num_images", "image scores")
    assert check_allocation(10, torch.bool, "cpu", "n", "a mask") == 10


# ----------------------------------------------------------------------------- kNN layer
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_knn_index_names_the_vectors_it_holds(backend):
    index = gg.KNNIndex(backend=backend).add(X[:2])
    with pytest.raises(ValueError, match=r"k=5 is larger than the index.*rows of vectors"):
        index.search(Q, 5)  # was: "larger than the database" (no argument of this call)
    with pytest.raises(ValueError, match="queries has descriptors of dimension 7.*vectors"):
        index.search(Q[:, :7], 1)  # was: "the dimension of the fitted database"


def test_database_index_names_x():
    index = gg.database_index(X[:2], "exact", backend="torch")
    with pytest.raises(ValueError, match=r"k=3 is larger than the index.*rows of x"):
        index.search(X[:2], 3)
    with pytest.raises(ValueError, match="x has a row of squared norm"):
        gg.database_index(X * 1e30, "exact")  # was: infinite scores for real items


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_search_names_queries_and_database(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    with pytest.raises(ValueError, match=r"database has descriptors of dimension 7.*of queries"):
        gg.knn_search(Q, X[:, :7], 2, backend=backend)
    with pytest.raises(ValueError, match="scores of queries against database overflow"):
        gg.knn_search(Q * 1e30, X * 1e30, 2, backend=backend)  # was: inf scores, any order
    # a large magnitude on one side only is finite, and stays a valid search
    out = gg.knn_search(Q * 1e30, X, 2, backend=backend)
    assert torch.isfinite(out.scores).all()
    assert out.indices.tolist() == gg.knn_search(Q, X, 2, backend="torch").indices.tolist()


def test_knn_search_unchecked_takes_a_numpy_k():
    pytest.importorskip("faiss")
    out = gg.knn_search(Q, X, np.int64(3), backend="faiss", check_input=False)
    assert out.indices.shape == (3, 3)  # was: a SWIG TypeError inside faiss


def test_ivfpq_settings_and_vectors_are_named_before_faiss_sees_them():
    pytest.importorskip("faiss")
    with pytest.raises(ValueError, match="nlist must be <= 2147483647"):
        gg.KNNIndex(kind="ivfpq", nlist=10**12)  # was: RuntimeError "C++ exception stoi"
    x9 = torch.randn(64, 9, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="pq_m=2 must divide the dimension 9 of vectors"):
        gg.KNNIndex(kind="ivfpq", nlist=2, pq_m=2, pq_nbits=4).train(x9)


def test_ivfpq_on_huge_vectors_is_refused_not_an_abort():
    pytest.importorskip("faiss")
    # was: faiss' k-means aborted the process (SIGABRT); run in a child process in case
    code = (
        "import torch\n"
        "from graphrerank.graph import KNNIndex\n"
        "x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 1e30\n"
        "ix = KNNIndex(kind='ivfpq', nlist=2, pq_m=2, pq_nbits=4)\n"
        "try:\n"
        "    ix.train(x)\n"
        "except ValueError as err:\n"
        "    print('refused:', err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: vectors has a row of squared norm" in proc.stdout


@pytest.mark.parametrize("fn", [gg.knn_graph, gg.mutual_knn_graph])
def test_knn_graph_names_x(fn):
    with pytest.raises(ValueError, match=r"k=5 is too large for x with 2 row\(s\)"):
        fn(X[:2], 5, backend="torch")
    with pytest.raises(ValueError, match="x has a row of squared norm"):
        fn(X * 1e30, 3, backend="torch")


# ----------------------------------------------------------------------------- graph
def test_rank_dense_promotes_dtypes_and_refuses_non_finite_inputs():
    scores = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.2]])
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0]]), dim=1)
    db = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    want = gg.rank_dense(scores, 3, q, db, "similarity")
    # row 0: 0 and 1 tie at 0.5 and item 0 is nearer the query; row 1: 0 and 2 tie at 0.2
    # and item 2 (cos 0.77) is nearer than item 0 (cos 0.10)
    assert want.indices.tolist() == [[0, 1, 2], [1, 2, 0]]
    for qq, dd in [(q.double(), db), (q, db.double()), (q.tolist(), db), (q, db.tolist())]:
        got = gg.rank_dense(scores, 3, qq, dd, "similarity")  # was: a matmul dtype error
        assert got.indices.tolist() == want.indices.tolist()
    bad = scores.clone()
    bad[0, 2] = float("inf")
    with pytest.raises(ValueError, match="scores contains NaN or infinite"):
        gg.rank_dense(bad, 3, q, db, "similarity")  # was: a real item scored inf
    for arg, value in [("queries", q.clone()), ("database", db.clone())]:
        for v in (float("nan"), float("inf")):
            value[0, 0] = v
            kw = {"queries": q, "database": db, arg: value}
            with pytest.raises(ValueError, match=f"{arg} contains NaN or infinite"):
                gg.rank_dense(scores, 3, kw["queries"], kw["database"], "similarity")


def test_top_k_with_ties_refuses_plus_inf_and_keeps_minus_inf_padding():
    s = torch.tensor([[0.2, float("inf"), 0.1]])
    with pytest.raises(ValueError, match=r"scores contains \+inf"):
        gg.top_k_with_ties(s, 2, None)
    vals, idx = gg.top_k_with_ties(torch.tensor([[0.2, float("-inf"), 0.1]]), 2, None)
    assert idx.tolist() == [[0, 2]] and vals[0].tolist() == pytest.approx([0.2, 0.1])


def test_edge_weights_takes_edge_or_list_scores_only():
    assert gg.edge_weights(torch.tensor([0.5, -1.0]), 2.0).tolist() == [0.25, 0.0]
    assert gg.edge_weights(torch.tensor([[0.5], [2.0]]), 1.0).shape == (2, 1)
    with pytest.raises(ValueError, match="scores must be 1-D or 2-D"):
        gg.edge_weights(torch.zeros(1, 2, 3), 1.0)  # was: accepted
    with pytest.raises(ValueError, match="scores must be 1-D or 2-D"):
        gg.edge_weights(torch.tensor(0.5), 1.0)


EI = torch.tensor([[1, 0, 2], [0, 1, 0]])  # 1 -> 0, 0 -> 1, 2 -> 0
W = torch.tensor([0.5, 0.3, 0.2])


@pytest.mark.parametrize(("fn", "how"), [(gg.symmetrize, "min"), (gg.normalize_adjacency, "sym")])
def test_edge_functions_name_num_nodes(fn, how):
    with pytest.raises(ValueError, match="edge_index holds the id 2, out of range for num_nodes=0"):
        fn(EI, W, 0, how)


def test_huge_num_nodes_costs_nothing_and_changes_nothing():
    # was: an allocation of num_nodes degrees (4 TB) for normalize_adjacency
    sym = gg.normalize_adjacency(EI, W, 10**12, "sym")
    # degrees (into each target): d0 = 0.5 + 0.2, d1 = 0.3, d2 = 0 (no edge into 2)
    d = torch.tensor([0.7, 0.3, 0.0])
    inv = torch.where(d > 0, d.rsqrt(), torch.zeros(()))
    want = inv[EI[1]] * W * inv[EI[0]]
    torch.testing.assert_close(sym, want)
    torch.testing.assert_close(gg.normalize_adjacency(EI, W, 3, "sym"), want)
    row = gg.normalize_adjacency(EI * 10**10, W, 10**12, "row")  # a few huge node ids
    torch.testing.assert_close(row, torch.tensor([0.5 / 0.7, 1.0, 0.2 / 0.7]))
    for how in ("mutual", "min", "union", "max"):
        small = gg.symmetrize(EI, W, 3, how)
        for ei, n, scale in [(EI, 10**12, 1), (EI * 10**10, 10**12, 10**10)]:
            big = gg.symmetrize(ei, W, n, how)
            assert big[0].tolist() == (small[0] * scale).tolist()
            torch.testing.assert_close(big[1], small[1])
    assert gg.symmetrize(EI, W, 3, "union")[1].tolist() == pytest.approx([0.8, 0.2, 0.8, 0.2])


def test_score_matrix_database_message_names_scores():
    with pytest.raises(ValueError, match=r"x must be a square.*its scores have shape \(2, 24\)"):
        gg.knn_graph(gg.ScoreMatrix(Q[:2] @ X.T), 2)


# ----------------------------------------------------------------------------- diffusion
def test_gmp_weights_ids_lie_among_the_regions():
    v = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"image_ids holds the id 5, out of range for vectors"):
        gd.gmp_weights(v, torch.tensor([0, 0, 5]))  # was: accepted
    with pytest.raises(ValueError, match=r"one id per row of vectors \(2 row\(s\)\)"):
        gd.gmp_weights(v[:2], torch.tensor([0, 0, 1]))
    # three orthogonal regions of one image: (V^T V + I) b = 1 gives b = 1/2 each
    assert gd.gmp_weights(v, torch.tensor([0, 0, 0])).tolist() == [0.5, 0.5, 0.5]


def test_pool_regions_names_scores_and_num_images():
    f, ids = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="num_images asks for image scores"):
        gd.pool_regions(f, ids, num_images=10**13)  # was: an allocator RuntimeError
    with pytest.raises(ValueError, match="out of range for num_images=0"):
        gd.pool_regions(f, ids, num_images=0)
    with pytest.raises(ValueError, match=r"one id per row of scores \(2 row\(s\)\)"):
        gd.pool_regions(f[:2], ids)
    assert gd.pool_regions(f, ids, num_images=3).tolist() == [5.0, 2.0, 0.0]


def test_query_vector_names_num_nodes_and_scores():
    s, i = torch.tensor([[0.9, 0.5]]), torch.tensor([[0, 2]])
    with pytest.raises(ValueError, match="num_nodes asks for query vectors"):
        gd.query_vector(s, i, 10**13, kq=2)  # was: an allocator RuntimeError
    for fn in (gd.query_vector, gd.query_entries):
        with pytest.raises(ValueError, match=r"scores \*\* gamma overflows"):
            fn(s * 1e30, i, 3, kq=2, gamma=3.0)  # was: a message naming gamma only
    y = gd.query_vector(s, i, 3, kq=2, gamma=1.0)
    assert y[:, 0].tolist() == pytest.approx([0.9, 0.0, 0.5])


def test_spectral_filter_takes_finite_eigenvalue_vectors():
    for bad, match in [
        (torch.tensor(0.5), "eigenvalues must be 1-D"),
        (torch.ones(2, 3), "eigenvalues must be 1-D"),
        (torch.tensor([0.5, float("inf")]), "eigenvalues contains NaN or infinite"),
        (torch.tensor([2.0]), "eigenvalues holds 2.0, where the filter"),  # 1 - 0.5 * 2 = 0
    ]:
        with pytest.raises(ValueError, match=match):
            gd.spectral_filter(bad, 0.5)
    torch.testing.assert_close(
        gd.spectral_filter(torch.tensor([1.0, 0.0, -1.0]), 0.5), torch.tensor([1.0, 0.5, 1 / 3])
    )


# ----------------------------------------------------------------------------- nn
def _graph(n=4):
    ei = torch.tensor([[1, 2, 3, 0], [0, 1, 2, 3]])
    return ei, torch.full((4,), 0.5)


def test_diffusion_propagation_is_bounded_and_refuses_overflow():
    with pytest.raises(ValueError, match="num_iters must be <= 1000"):
        gnn.DiffusionPropagation(num_iters=10**12)  # was: a hang
    assert gnn.DiffusionPropagation(num_iters=1000).num_iters == 1000
    ei, w = _graph()
    y = torch.eye(4)[:, :2]
    with pytest.raises(ValueError, match="edge_weight"):
        gnn.DiffusionPropagation(alpha=0.9, num_iters=50)(y, ei, w * 1e30)  # was: NaN
    with pytest.raises(ValueError, match=r"edge_index holds the id 3, out of range for y with 2"):
        gnn.DiffusionPropagation()(y[:2], ei, w)


def test_expansion_and_weighted_propagation_name_x():
    ei, w = _graph()
    x = torch.eye(4)
    with pytest.raises(ValueError, match="edge_weight"):
        gnn.ExpansionPropagation(alpha=3.0)(x, ei, w * 1e30)  # was: NaN
    for layer in (gnn.ExpansionPropagation(), gnn.WeightedPropagation()):
        with pytest.raises(ValueError, match=r"out of range for x with 2 row\(s\)"):
            layer(x[:2], ei, w)
    # the weighted sum by hand: node 0 receives 0.5 * x1, node 1 0.5 * x2, ...
    out = gnn.WeightedPropagation()(x, ei, w)
    torch.testing.assert_close(out, 0.5 * x[[1, 2, 3, 0]])


def test_bipartite_adjacency_names_num_sources():
    with pytest.raises(ValueError, match="out of range for num_sources=0"):
        gnn.bipartite_adjacency(torch.tensor([[1]]), torch.tensor([[0.5]]), 0)


# ----------------------------------------------------------------------------- re-rankers
def _dense_truncated(est, q, db, t, k):
    """The reference's early truncation by hand: solve on the query's top-t sub-graph,
    scatter into zeros, rank every item by (score, first-stage similarity)."""
    from graphrerank.diffusion import truncated_diffuse

    first = q @ db.T
    top = first.topk(t, dim=1).indices
    y = torch.zeros(t, q.shape[0], dtype=db.dtype)
    s = first.gather(1, top[:, : est.kq])
    y[: est.kq] = s.clamp(min=0).pow(est.gamma).T
    f = truncated_diffuse(
        est.affinity_, top, y, alpha=est.alpha, tol=est.tol, max_iter=est.max_iter
    ).solution.T
    full = torch.zeros_like(first).scatter_(1, top, f)
    order = lexsort_desc(full, first)[:, :k]
    return full.gather(1, order), order


@pytest.mark.parametrize("t", [3, 5])
def test_diffusion_truncation_below_k_ranks_every_item(t):
    est = R.Diffusion(kd=6, kq=3, truncation=t, backend="torch").fit(X)
    out = est.rerank(Q, 10)
    # was: real indices with -inf scores after the first t
    assert torch.isfinite(out.scores).all()
    want_s, want_i = _dense_truncated(est, Q, X, t, 10)
    assert out.indices.tolist() == want_i.tolist()
    torch.testing.assert_close(out.scores, want_s)
    assert (out.scores[:, t:] == 0).all()


def test_diffusion_truncation_below_k_with_index_ties():
    est = R.Diffusion(kd=6, kq=3, truncation=3, ties="index", backend="torch").fit(X)
    out = est.rerank(Q, 12)
    assert torch.isfinite(out.scores).all()
    for row, s in zip(out.indices, out.scores):
        assert row.unique().numel() == 12
        zeros = row[s == 0]  # ties among the zero scores: lowest database index first
        assert zeros.tolist() == sorted(zeros.tolist())


def test_regional_diffusion_truncation_below_k_is_finite():
    ids = torch.arange(24) // 2
    est = R.RegionalDiffusion(kd=6, kq=4, truncation=3, backend="torch").fit(X, image_ids=ids)
    out = est.rerank(Q, 8)
    assert torch.isfinite(out.scores).all()
    assert all(r.unique().numel() == 8 for r in out.indices)


@pytest.mark.parametrize(
    "call",
    [
        lambda kq: R.diffusion_rerank(Q, X, k=4, kd=5, kq=kq),
        lambda kq: R.fsr_rerank(Q, X, k=4, kd=5, kq=kq, rank=8),
        lambda kq: R.regional_diffusion_rerank(Q, X, torch.arange(24) // 2, k=4, kd=5, kq=kq),
    ],
)
def test_one_call_diffusion_takes_a_numpy_kq(call):
    pytest.importorskip("faiss")
    got = call(np.int64(3))  # was: a SWIG TypeError inside faiss
    assert got.indices.tolist() == call(3).indices.tolist()


def test_rdip_names_kd_when_km_is_below_it():
    with pytest.raises(ValueError, match=r"km must be >= 1000000000000 \(the setting kd\)"):
        R.RDiP(kd=10**12).fit(X)


def test_whitening_names_the_database():
    with pytest.raises(ValueError, match="database has no variance"):
        R.Whitening().fit(X[:1].expand(24, -1).clone())


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (R.alpha_query_expansion, "num_neighbors=29 is larger than the database"),
        (R.average_query_expansion, "num_neighbors=29 is larger than the database"),
        (R.database_augmentation, "num_neighbors=29 is too large for a database"),
    ],
)
def test_one_call_expansion_names_num_neighbors(fn, match):
    with pytest.raises(ValueError, match=match):
        fn(Q, X, k=3, num_neighbors=29)
    assert fn(Q, X, k=3, num_neighbors=2).indices.shape == (3, 3)


# ----------------------------------------------------------- the last three unclear messages
def test_gnn_propagate_overflow_names_similarities():
    from graphrerank.graph import knn_search
    from graphrerank.nn import gnn_propagate

    x = torch.nn.functional.normalize(
        torch.randn(24, 8, generator=torch.Generator().manual_seed(0)), dim=1
    )
    s, i = knn_search(x, x, 6, backend="torch")
    gnn_propagate(i, s, k1=6, k2=3)  # cosines: fine
    with pytest.raises(ValueError, match=r"similarities overflow the propagation.*1e\+30"):
        gnn_propagate(i, s * 1e30, k1=6, k2=3)


def test_rerank_shortlist_names_num_items():
    from graphrerank.models import rerank_shortlist

    scores, indices = torch.tensor([[0.9, 0.5]]), torch.tensor([[3, 1]])
    with pytest.raises(ValueError, match=r"num_items=0"):
        rerank_shortlist(scores, indices, torch.zeros(1, 2), num_items=0)


def test_mine_shortlists_overflow_names_global_descriptors():
    from graphrerank.models import mine_shortlists

    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert mine_shortlists(x, torch.tensor([0, 1, 3]), 2, backend="torch").shape == (3, 2)
    with pytest.raises(ValueError, match="global_descriptors"):
        mine_shortlists(x * 1e30, torch.tensor([0, 1, 3]), 2, backend="torch")


def test_whitening_power_overflow_names_power():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    R.Whitening(power=0.5).fit(x).rerank(None, 5)  # fine
    with pytest.raises(ValueError, match=r"power=1e\+30 overflows"):
        R.Whitening(power=1e30).fit(x * 10).rerank(None, 5)


def test_cg_with_tol_zero_stops_at_the_dtype_epsilon():
    # tol = 0 used to run past convergence into p^T A p = 0 and report "not positive definite"
    a = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x = gd.conjugate_gradient(a.to_sparse_csr(), b, tol=0.0, max_iter=50).solution
    torch.testing.assert_close(x, torch.linalg.solve(a, b))


def test_spectral_embedding_of_an_empty_graph_with_lanczos():
    # the long hypothesis profile: ARPACK stopped on a zero Krylov vector (an internal error)
    e, lam = gd.spectral_embedding(torch.zeros(3, 3), 1, alpha=0.0, eigensolver="scipy")
    e_dense, lam_dense = gd.spectral_embedding(torch.zeros(3, 3), 1, alpha=0.0, eigensolver="dense")
    assert lam.tolist() == lam_dense.tolist() == [0.0]
    assert e.shape == e_dense.shape == (3, 1) and bool(torch.isfinite(e).all())
