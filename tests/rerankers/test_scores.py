"""Re-rankers on precomputed score matrices: the same rankings as on the descriptors the
matrices come from, dense and sparse top-k, and clear refusals where a method needs vectors."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from graphrerank.graph import ScoreMatrix
from graphrerank.rerankers import (
    KNN,
    RERANKERS,
    Diffusion,
    FastSpectralRanking,
    GNNRerank,
    KReciprocal,
    OfflineDiffusion,
    RDiP,
    Reranker,
)


def _clustered(n=60, nq=7, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(5, d, generator=g, dtype=torch.float64)
    x = c[torch.arange(n) % 5] + 0.6 * torch.randn(n, d, generator=g, dtype=torch.float64)
    q = c[torch.arange(nq) % 5] + 0.6 * torch.randn(nq, d, generator=g, dtype=torch.float64)
    norm = torch.nn.functional.normalize
    return norm(q, dim=1), norm(x, dim=1)


#: (class, settings, score kind): cosine similarities x x^T, or Euclidean distances.
CASES = [
    (KNN, {"backend": "torch"}, "similarity"),
    (KNN, {"metric": "l2", "backend": "torch"}, "distance"),
    (Diffusion, {"kd": 8, "kq": 4, "backend": "torch"}, "similarity"),
    (Diffusion, {"kd": 8, "kq": 4, "truncation": 25, "backend": "torch"}, "similarity"),
    (FastSpectralRanking, {"kd": 8, "kq": 4, "rank": 30, "backend": "torch"}, "similarity"),
    (OfflineDiffusion, {"kd": 8, "kq": 4, "truncation": 25, "backend": "torch"}, "similarity"),
    (
        RDiP,
        {"rescorer": None, "km": 12, "kd": 8, "kq": 4, "truncation": 25, "backend": "torch"},
        "similarity",
    ),
    (KReciprocal, {"k1": 6, "k2": 3}, "distance"),
    (GNNRerank, {"k1": 8, "k2": 3}, "similarity"),
    (GNNRerank, {"k1": 8, "k2": 3, "lambda_value": 0.3}, "similarity"),
]
IDS = [f"{c.__name__}-{k}-{i}" for i, (c, _, k) in enumerate(CASES)]


def _scores(q, x, kind):
    if kind == "similarity":
        return ScoreMatrix(x @ x.T), ScoreMatrix(q @ x.T, query_scores=q @ q.T)
    db = ScoreMatrix(torch.cdist(x, x), kind="distance")
    return db, ScoreMatrix(torch.cdist(q, x), kind="distance", query_scores=torch.cdist(q, q))


@pytest.mark.parametrize(("cls", "settings", "kind"), CASES, ids=IDS)
def test_rankings_equal_the_descriptor_path(cls, settings, kind):
    q, x = _clustered()
    db, queries = _scores(q, x, kind)
    on_vectors = cls(**settings).fit(x)
    on_scores = cls(**settings).fit(db)
    assert on_scores.n_database_ == 60
    for a, b in (
        (on_vectors.rerank(q, k=30), on_scores.rerank(queries, k=30)),
        (on_vectors.rerank(None, k=30), on_scores.rerank(None, k=30)),
    ):
        assert torch.equal(a.indices, b.indices)
        if not (cls is KNN and kind == "distance"):  # KNN: -d of the matrix, -d^2 of l2
            torch.testing.assert_close(a.scores, b.scores)


def _sparse_top(dense: torch.Tensor, m: int) -> sp.csr_matrix:
    d = dense.numpy()
    idx = np.argsort(-d, axis=1, kind="stable")[:, :m]
    rows = np.repeat(np.arange(d.shape[0]), m)
    vals = np.take_along_axis(d, idx, 1).ravel()
    return sp.csr_matrix((vals, (rows, idx.ravel())), shape=d.shape)


@pytest.mark.parametrize(
    ("cls", "settings"),
    [
        (KNN, {"backend": "torch"}),
        (Diffusion, {"kd": 8, "kq": 4, "backend": "torch"}),
        (OfflineDiffusion, {"kd": 8, "kq": 4, "truncation": 25, "backend": "torch"}),
    ],
    ids=["KNN", "Diffusion", "OfflineDiffusion"],
)
def test_sparse_top_k_matrices(cls, settings):
    """A sparse matrix that stores every row's top-m gives the dense results wherever those
    depend only on the stored entries: the same lists for KNN, the same scores for the items
    diffusion reaches."""
    q, x = _clustered()
    dense = cls(**settings).fit(ScoreMatrix(x @ x.T))
    m = 30
    sparse = cls(**settings).fit(ScoreMatrix(_sparse_top(x @ x.T, m)))
    a = dense.rerank(ScoreMatrix(q @ x.T), k=20)
    b = sparse.rerank(ScoreMatrix(_sparse_top(q @ x.T, m)), k=20)
    reached = a.scores > 0
    assert bool(reached.any())
    assert torch.equal(a.indices[reached], b.indices[reached])
    torch.testing.assert_close(a.scores[reached], b.scores[reached])


def test_rdip_takes_a_matrix_of_re_scores():
    _, x = _clustered()
    m = (x @ x.T).clamp(min=0) ** 2  # some precomputed re-score, e.g. a chamfer matrix

    def by_hand(rows, cand, scores):
        return m[rows[:, None], cand.clamp(min=0)].masked_fill(cand < 0, float("-inf"))

    settings = {"km": 12, "kd": 8, "kq": 4, "truncation": 25, "backend": "torch"}
    a = RDiP(rescorer=ScoreMatrix(m), **settings).fit(x).rerank(None, k=30)
    b = RDiP(rescorer=by_hand, **settings).fit(x).rerank(None, k=30)
    assert torch.equal(a.indices, b.indices)
    with pytest.raises(ValueError, match="must be \\(60, 60\\)"):
        RDiP(rescorer=ScoreMatrix(m[:10, :10]), **settings).fit(x)


def test_methods_that_need_descriptors_refuse_a_matrix():
    _, x = _clustered()
    s = ScoreMatrix(x @ x.T)
    takes = {c for c in RERANKERS if c.accepts_scores}
    assert takes == {
        KNN,
        Diffusion,
        FastSpectralRanking,
        OfflineDiffusion,
        RDiP,
        KReciprocal,
        GNNRerank,
    }
    for cls in RERANKERS:
        if cls in takes:
            continue
        with pytest.raises(TypeError, match="ScoreMatrix"):
            cls(**cls._test_params()).fit(s)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda x, q: KReciprocal().fit(ScoreMatrix(x @ x.T)), ValueError, "kind='distance'"),
        (
            lambda x, q: GNNRerank().fit(ScoreMatrix(torch.cdist(x, x), kind="distance")),
            ValueError,
            "kind='similarity'",
        ),
        (
            lambda x, q: Diffusion(kd=8, kq=4).fit(ScoreMatrix(torch.cdist(x, x), kind="distance")),
            ValueError,
            "as_similarity",
        ),
        (
            lambda x, q: KReciprocal(k1=6, k2=3).fit(
                ScoreMatrix(_sparse_top(torch.cdist(x, x), 60), kind="distance")
            ),
            ValueError,
            "dense",
        ),
        (
            lambda x, q: (
                KReciprocal(k1=6, k2=3)
                .fit(ScoreMatrix(torch.cdist(x, x), kind="distance"))
                .rerank(ScoreMatrix(torch.cdist(q, x), kind="distance"), k=5)
            ),
            ValueError,
            "query_scores",
        ),
        (
            lambda x, q: KNN().fit(ScoreMatrix(x @ x.T)).rerank(q, k=5),
            TypeError,
            "fitted on a ScoreMatrix",
        ),
        (
            lambda x, q: KNN().fit(x).rerank(ScoreMatrix(q @ x.T), k=5),
            TypeError,
            "fitted on descriptors",
        ),
        (
            lambda x, q: KNN().fit(ScoreMatrix(x @ x.T)).rerank(ScoreMatrix(q @ x[:50].T), k=5),
            ValueError,
            "columns",
        ),
        (
            lambda x, q: (
                KNN()
                .fit(ScoreMatrix(x @ x.T))
                .rerank(ScoreMatrix(torch.cdist(q, x), kind="distance"), k=5)
            ),
            ValueError,
            "one kind",
        ),
        (
            lambda x, q: (
                OfflineDiffusion(kd=8, kq=4, truncation=20, transductive=True)
                .fit(ScoreMatrix(x @ x.T))
                .rerank(None, k=5)
            ),
            ValueError,
            "transductive",
        ),
        (lambda x, q: KNN().fit(ScoreMatrix(torch.cdist(x, x))), ValueError, "look like distances"),
    ],
)
def test_clear_errors(make, error, match):
    q, x = _clustered()
    with pytest.raises(error, match=match):
        make(x, q)


@pytest.mark.parametrize(("cls", "settings", "kind"), CASES[:7], ids=IDS[:7])
def test_score_fitted_rerankers_save_and_load(cls, settings, kind, tmp_path):
    q, x = _clustered()
    db, queries = _scores(q, x, kind)
    r = cls(**settings).fit(db)
    back = Reranker.load(r.save(tmp_path / "r"))
    assert isinstance(back.database_, ScoreMatrix)
    assert torch.equal(back.rerank(queries, k=10).indices, r.rerank(queries, k=10).indices)
