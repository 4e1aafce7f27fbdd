"""GNN re-ranking against a dense float64 transcription of the official algorithm."""

import numpy as np
import pytest
import torch

from graphrerank.graph import lists
from graphrerank.rerankers import GNNRerank, gnn, gnn_rerank
from graphrerank.testing import assert_close


def reference_gnn(xq, xg, k1, k2, layers, lambda_value):
    """Dense transcription of Zhang et al.'s GPU code, float64. ``xq=None``: all-vs-all
    (one graph over the database, every item a query). Returns (scores, cosines)."""
    x = xg if xq is None else np.concatenate([xq, xg])
    x = np.asarray(x, dtype=np.float64)
    nq = x.shape[0] if xq is None else xq.shape[0]
    s = x @ x.T
    m = x.shape[0]
    rank = np.argsort(-s, axis=1, kind="stable")[:, :k1]
    w = np.take_along_axis(s, rank, 1) ** 2
    a = np.zeros((m, m))
    for i in range(m):
        a[i, rank[i]] = 1
    if k2 != 1:
        for _ in range(layers):
            a = a + a.T
            new = np.zeros_like(a)
            for i in range(m):
                for j in range(k2):
                    new[i] += w[i, j] * a[rank[i, j]]
            a = new / np.linalg.norm(new, axis=1, keepdims=True)
    gallery = slice(0, m) if xq is None else slice(nq, m)
    sim = a[:nq] @ a[gallery].T
    cos = x[:nq] @ x[gallery].T
    return (1 - lambda_value) * sim + lambda_value * cos, cos


def reference_order(scores, cos):
    """Descending score; ties (lambda = 0: no overlap) by descending cosine."""
    return np.stack([np.lexsort((-cos[i], -scores[i])) for i in range(scores.shape[0])])


def assert_same_ranking(out, scores, order, k, cos=None, atol=1e-9):
    """As in test_kreciprocal, for scores (higher is better)."""
    idx = out.indices.cpu().numpy()
    got = out.scores.cpu().numpy()
    np.testing.assert_allclose(got, np.take_along_axis(scores, order[:, :k], 1), atol=atol)
    np.testing.assert_allclose(np.take_along_axis(scores, idx, 1), got, rtol=0, atol=atol)
    full = np.take_along_axis(scores, order, 1)
    gap = np.abs(np.diff(full, axis=1)) > atol
    lone = np.ones_like(full, dtype=bool)
    lone[:, 1:] &= gap
    lone[:, :-1] &= gap
    lone = lone[:, :k]
    assert (idx[lone] == order[:, :k][lone]).all()
    if cos is not None:
        tied = got[:, 1:] == got[:, :-1]
        c = np.take_along_axis(cos, idx, 1)
        assert (c[:, 1:][tied] <= c[:, :-1][tied]).all()


def _sphere(n, d, seed, centres=4, spread=0.7):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


SETTINGS = [
    # k1, k2, layers, lambda_value
    (26, 7, 2, 0.0),  # the 2021 form
    (26, 7, 2, 0.3),  # the current reference
    (8, 3, 3, 1.0),
    (6, 1, 2, 0.5),  # k2 = 1: no propagation, no normalisation (overlap counts)
    (5, 5, 1, 0.2),  # k2 = k1
    (5, 3, 0, 0.3),  # no layers: the score is the overlap of the initial lists
]


FORMS = ["dense", "dense_kernel", "dense_blocks_torch", "sparse", "sparse_torch"]


@pytest.fixture(params=FORMS)
def form(request, monkeypatch):
    """Both forms of the re-ranking: dense (small graphs) and sparse (forced here); the dense
    form also with its score product by the compiled row-wise kernel (forced: small graphs
    take the GEMM), and with its symmetric score product in row blocks and the propagation
    of the devices other than the CPU (dense torch rows instead of SciPy CSR), both forced;
    the sparse form with the compiled kernel (numba importable) and with torch's products."""
    if request.param.startswith("sparse"):
        monkeypatch.setattr(gnn, "DENSE_ELEMENTS", 0)
    if request.param == "dense_kernel":
        pytest.importorskip("numba")
        monkeypatch.setattr(gnn, "_SPARSE_GRAM_COST", 0)
    if request.param in ("dense_blocks_torch", "sparse_torch"):
        monkeypatch.setattr(gnn, "_KERNEL", [None])  # as without numba
    if request.param == "dense_blocks_torch":
        from graphrerank.nn import gnn_rerank

        monkeypatch.setattr(gnn, "_GRAM_MIN_WORK", 0)
        monkeypatch.setattr(gnn_rerank, "_propagate_scipy", gnn_rerank._propagate_torch)
    return request.param


@pytest.mark.parametrize(("k1", "k2", "layers", "lambda_value"), SETTINGS)
@pytest.mark.parametrize(("nq", "ng"), [(6, 40), (0, 45)])
def test_matches_dense_reference(device, form, k1, k2, layers, lambda_value, nq, ng):
    x = _sphere(nq + ng, 6, seed=k1 + nq)
    scores, cos = reference_gnn(x[:nq] if nq else None, x[nq:], k1, k2, layers, lambda_value)
    order = reference_order(scores, cos)
    r = GNNRerank(k1=k1, k2=k2, layers=layers, lambda_value=lambda_value)
    r.fit(torch.from_numpy(x[nq:]).to(device))
    queries = torch.from_numpy(x[:nq]).to(device) if nq else None
    for k in (ng, 5):
        out = r.rerank(queries, k=k)
        assert out.indices.device.type == device
        assert_same_ranking(out, scores, order, k, cos)


def test_all_vs_all_is_one_graph_not_two(form):
    x = _sphere(40, 5, seed=3)
    r = GNNRerank(k1=8, k2=3, lambda_value=0.3).fit(torch.from_numpy(x))
    one, cos1 = reference_gnn(None, x, 8, 3, 2, 0.3)
    two, cos2 = reference_gnn(x, x, 8, 3, 2, 0.3)  # queries = database: 2N nodes
    out_none, out_dup = r.rerank(None, k=40), r.rerank(torch.from_numpy(x), k=40)
    assert_same_ranking(out_none, one, reference_order(one, cos1), 40)
    assert_same_ranking(out_dup, two, reference_order(two, cos2), 40)
    assert not torch.equal(out_none.indices, out_dup.indices)


def test_float32_agrees_with_float64_reference(form):
    x = _sphere(50, 8, seed=11)
    scores, _ = reference_gnn(x[:10], x[10:], 26, 7, 2, 0.3)
    q, g = torch.from_numpy(x[:10]).float(), torch.from_numpy(x[10:]).float()
    out = gnn_rerank(q, g, k=40, lambda_value=0.3)
    assert out.scores.dtype == torch.float32
    expected = torch.from_numpy(np.take_along_axis(scores, out.indices.numpy(), 1))
    assert_close(out.scores.double(), expected, rtol=1e-4, atol=1e-5)
    assert_close(out.scores.double(), torch.from_numpy(-np.sort(-scores, 1)), rtol=1e-4, atol=1e-5)


def test_short_lists_and_small_blocks(monkeypatch):
    monkeypatch.setattr(gnn, "DENSE_ELEMENTS", 0)  # the sparse form's blocks
    monkeypatch.setattr(gnn, "LIST_LENGTH", 3)
    monkeypatch.setattr(lists, "SHORTLIST_MARGIN", 0)
    monkeypatch.setattr(lists, "BLOCK_ELEMENTS", 97)
    x = _sphere(48, 4, seed=5)
    for nq, k, lam in ((8, 40, 0.3), (0, 48, 0.0), (8, 4, 0.0), (0, 4, 0.3)):
        m = nq + 40 if nq else 48
        scores, cos = reference_gnn(x[:nq] if nq else None, x[nq:m], 6, 3, 2, lam)
        q = torch.from_numpy(x[:nq]) if nq else None
        out = GNNRerank(k1=6, k2=3, lambda_value=lam).fit(torch.from_numpy(x[nq:m]))
        assert_same_ranking(out.rerank(q, k=k), scores, reference_order(scores, cos), k, cos)


def test_pruning_keeps_the_largest_entries():
    """max_nonzeros keeps the p largest entries of every row after each layer (no
    re-normalisation); with p above the densest row it changes nothing."""
    x = _sphere(60, 5, seed=1)
    k1, k2, p = 10, 4, 7
    s = x @ x.T
    rank = np.argsort(-s, axis=1, kind="stable")[:, :k1]
    w = np.take_along_axis(s, rank, 1) ** 2
    a = np.zeros((60, 60))
    np.put_along_axis(a, rank, 1.0, 1)
    for _ in range(2):
        a = a + a.T
        a = np.stack([(w[i, :k2, None] * a[rank[i, :k2]]).sum(0) for i in range(60)])
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        small = np.argsort(-a, axis=1, kind="stable")[:, p:]
        np.put_along_axis(a, small, 0.0, 1)
    tight = GNNRerank(k1=k1, k2=k2, max_nonzeros=p).fit(torch.from_numpy(x))
    assert_close(tight.propagated().to_dense(), torch.from_numpy(a))
    exact = GNNRerank(k1=k1, k2=k2).fit(torch.from_numpy(x))
    assert int(exact.propagated().crow_indices().diff().max()) > p
    loose = GNNRerank(k1=k1, k2=k2, max_nonzeros=60).fit(torch.from_numpy(x))
    assert torch.equal(exact.rerank(None, k=20).indices, loose.rerank(None, k=20).indices)


def test_score_candidates_is_the_gnn_score():
    x = _sphere(40, 5, seed=9)
    scores, _ = reference_gnn(None, x, 8, 3, 2, 0.3)
    r = GNNRerank(k1=8, k2=3, lambda_value=0.3).fit(torch.from_numpy(x))
    rows = torch.tensor([0, 7, 39])
    cand = torch.tensor([[0, 5, 12, -1], [3, 7, 39, 20], [1, 2, 38, 39]])
    out = r.score_candidates(rows, cand, torch.zeros(3, 4))
    expected = scores[rows.numpy()[:, None], cand.clamp(min=0).numpy()]
    expected[0, 3] = -np.inf
    assert_close(out, torch.from_numpy(expected))


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"k1": 0}, ValueError, "k1 must be >= 1"),
        ({"k2": 0}, ValueError, "k2 must be >= 1"),
        ({"k1": 5, "k2": 6}, ValueError, "k2 must be <= 5"),
        ({"layers": -1}, ValueError, "layers must be >= 0"),
        ({"lambda_value": 2}, ValueError, "lambda_value must be <= 1"),
        ({"max_nonzeros": 0}, ValueError, "max_nonzeros must be >= 1"),
        ({"layers": 1.5}, TypeError, "layers must be an integer"),
    ],
)
def test_bad_settings(params, error, match):
    x = torch.nn.functional.normalize(torch.randn(10, 3), dim=1)
    with pytest.raises(error, match=match):
        GNNRerank(**params).fit(x)


def test_needs_normalised_descriptors():
    x = torch.nn.functional.normalize(torch.randn(20, 4), dim=1)
    with pytest.raises(ValueError, match="database must be L2-normalised"):
        GNNRerank().fit(2 * x)
    r = GNNRerank(k1=5, k2=2).fit(x)
    with pytest.raises(ValueError, match="queries must be L2-normalised"):
        r.rerank(3 * x[:2], k=4)
    with pytest.raises(ValueError, match="same encoder"):
        r.rerank(x[:2], k=4, asymmetric=True)


def test_declarations():
    assert GNNRerank.transductive and GNNRerank.needs_query_similarity
    assert GNNRerank().get_params() == {
        "k1": 26,
        "k2": 7,
        "layers": 2,
        "lambda_value": 0.0,
        "max_nonzeros": None,
        "progress": None,
    }


@pytest.mark.parametrize("pairs_per_block", [0, 10**9])
@pytest.mark.parametrize("lambda_value", [0.3, 1.0])
def test_sparse_form_original_similarities_by_pairs_or_by_block(
    monkeypatch, pairs_per_block, lambda_value
):
    # the candidates' cosines from per-pair gathers or from one product per block: same ranking
    monkeypatch.setattr(gnn, "DENSE_ELEMENTS", 0)
    monkeypatch.setattr(gnn, "_PAIRS_PER_BLOCK", pairs_per_block)
    monkeypatch.setattr(lists, "SHORTLIST_MARGIN", 0)
    x = _sphere(70, 5, seed=9)
    scores, cos = reference_gnn(x[:10], x[10:], 8, 3, 2, lambda_value)
    out = GNNRerank(k1=8, k2=3, lambda_value=lambda_value).fit(torch.from_numpy(x[10:]))
    assert_same_ranking(out.rerank(torch.from_numpy(x[:10]), k=6), scores,
                        reference_order(scores, cos), 6, cos)  # fmt: skip


@pytest.mark.parametrize("nq", [0, 12])
def test_dense_and_sparse_forms_agree(monkeypatch, nq):
    x = torch.from_numpy(_sphere(nq + 300, 8, seed=4)).float()
    q = x[:nq] if nq else None
    for lam in (0.0, 0.3):
        dense = GNNRerank(lambda_value=lam).fit(x[nq:]).rerank(q, k=50)
        with monkeypatch.context() as mp:
            mp.setattr(gnn, "DENSE_ELEMENTS", 0)
            r = GNNRerank(lambda_value=lam).fit(x[nq:])
            sparse = r.rerank(q, k=50)
        assert_close(dense.scores, sparse.scores, rtol=1e-5, atol=1e-6)
        assert (dense.indices == sparse.indices).float().mean() > 0.99  # float32 near-ties


def test_dense_fit_scans_lazily():
    # small databases: fit keeps the descriptors; the lists are scanned when asked for
    x = torch.from_numpy(_sphere(60, 5, seed=2))
    r = GNNRerank(k1=8, k2=3).fit(x)
    assert not hasattr(r, "neighbors_")
    a = r.propagated()
    assert hasattr(r, "neighbors_") and tuple(a.shape) == (60, 60)


def test_csr_product_made_dense_by_one_scatter():
    # the sparse form's blocks: a CSR product (rows without entries included) made dense
    rng = np.random.default_rng(5)
    a = rng.random((7, 9)) * (rng.random((7, 9)) < 0.3)
    a[2] = 0
    b = rng.random((9, 11)) * (rng.random((9, 11)) < 0.3)
    prod = torch.from_numpy(a).to_sparse_csr() @ torch.from_numpy(b).to_sparse_csr()
    out = gnn._to_dense(prod)
    assert out.shape == (7, 11) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-12, atol=0)


def _random_csr(rng, m, n, density, dtype):
    import scipy.sparse as sp

    a = rng.random((m, n)) * (rng.random((m, n)) < density)
    a[1] = 0  # a row without entries
    a[:, 2] = 0  # a column without entries
    return a, sp.csr_matrix(a.astype(dtype))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_compiled_score_products_against_dense(monkeypatch, threads, dtype, lam):
    # the kernels directly: the symmetric product with the mixing written over C, and the
    # rows of a rectangular product, in row ranges on one or two threads
    pytest.importorskip("numba")
    monkeypatch.setattr(gnn, "_SPARSE_GRAM_COST", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(3)
        a, a_csr = _random_csr(rng, 37, 37, 0.2, dtype)
        c = rng.random((37, 37))
        c = c + c.T
        out = gnn._sparse_gram_mix(a_csr, torch.from_numpy(c.astype(dtype)), lam,
                                   gnn._numba_kernels())  # fmt: skip
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out.numpy(), (1 - lam) * a @ a.T + lam * c, rtol=tol, atol=tol)
        s = torch.from_numpy(c.astype(dtype))
        cross = gnn._sparse_cross_mix(a_csr, s, 5, lam, gnn._numba_kernels())
        expected = (1 - lam) * a[:5] @ a[5:].T + lam * c[:5, 5:]
        np.testing.assert_allclose(cross.numpy(), expected, rtol=tol, atol=tol)
        b, b_csr = _random_csr(rng, 37, 23, 0.3, dtype)
        rows = np.zeros((30, 23), dtype=dtype)
        gnn._sparse_rows_product(a_csr.indptr, a_csr.indices, a_csr.data,
                                 (b_csr.indptr, b_csr.indices, b_csr.data), rows, 1, 31, 2.0,
                                 gnn._numba_kernels()[2])  # fmt: skip
        np.testing.assert_allclose(rows, 2 * a[1:31] @ b, rtol=tol, atol=tol)
    finally:
        torch.set_num_threads(before)


def test_dense_form_takes_the_gemm_where_it_is_cheaper(monkeypatch):
    # a small graph's propagated rows are almost full: the sparse kernel is not used
    pytest.importorskip("numba")
    x = torch.from_numpy(_sphere(60, 5, seed=1))
    calls = []
    real = gnn._sparse_gram_mix
    monkeypatch.setattr(gnn, "_sparse_gram_mix", lambda *a: calls.append(real(*a)) or calls[-1])
    GNNRerank(k1=8, k2=3).fit(x).rerank(None, k=5)
    assert calls == [None]
    monkeypatch.setattr(gnn, "_SPARSE_GRAM_COST", 0)
    GNNRerank(k1=8, k2=3).fit(x).rerank(None, k=5)
    assert calls[-1] is not None


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("nq", [0, 6])
def test_kernel_failure_warns_and_falls_back(monkeypatch, dense, nq):
    # numba that cannot compile or load (no writable cache, an unsupported CPU): a warning,
    # then torch's products, the same ranking; later calls do not try again
    def boom(*args):
        raise RuntimeError("cannot cache (test)")

    kernels = [(boom, boom, boom)]
    monkeypatch.setattr(gnn, "_KERNEL", kernels)
    if dense:
        monkeypatch.setattr(gnn, "_SPARSE_GRAM_COST", 0)
    else:
        monkeypatch.setattr(gnn, "DENSE_ELEMENTS", 0)
    x = _sphere(nq + 40, 6, seed=8)
    scores, cos = reference_gnn(x[:nq] if nq else None, x[nq:], 8, 3, 2, 0.3)
    r = GNNRerank(k1=8, k2=3, lambda_value=0.3).fit(torch.from_numpy(x[nq:]))
    q = torch.from_numpy(x[:nq]) if nq else None
    with pytest.warns(RuntimeWarning, match="numba GNN score-product kernel failed.*cannot cache"):
        out = r.rerank(q, k=10)
    assert kernels == [None]
    assert_same_ranking(out, scores, reference_order(scores, cos), 10, cos)
