"""ScoreMatrix: precomputed similarity / distance matrices, dense or sparse top-k, against
dense numpy, and the kNN graph built from one against the graph built from the vectors."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from graphrerank.graph import ScoreIndex, ScoreMatrix, knn_graph


def _points(n=30, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _top_m(dense: np.ndarray, m: int) -> np.ndarray:
    """Each row's m largest entries kept, the rest 0 (not stored by scipy)."""
    out = np.zeros_like(dense)
    idx = np.argsort(-dense, axis=1, kind="stable")[:, :m]
    rows = np.arange(dense.shape[0])[:, None]
    out[rows, idx] = dense[rows, idx]
    return out


def _sparse_top(dense: np.ndarray, m: int) -> sp.csr_matrix:
    """Each row's m largest entries stored exactly (negative values included)."""
    idx = np.argsort(-dense, axis=1, kind="stable")[:, :m]
    rows = np.repeat(np.arange(dense.shape[0]), m)
    vals = np.take_along_axis(dense, idx, 1).ravel()
    return sp.csr_matrix((vals, (rows, idx.ravel())), shape=dense.shape)


def _forms(dense: np.ndarray):
    """The same sparse matrix as scipy CSR, torch COO and torch CSR."""
    m = sp.csr_matrix(dense)
    t = torch.from_numpy(dense).to_sparse()
    return {"scipy": m, "torch_coo": t, "torch_csr": t.to_sparse_csr()}


def test_dense_topk_pairs_and_similarities():
    x = _points()
    s = (x @ x.T).numpy()
    m = ScoreMatrix(s)
    ref = np.argsort(-s, axis=1, kind="stable")[:, :5]
    top = m.topk(5)
    np.testing.assert_array_equal(top.indices.numpy(), ref)
    np.testing.assert_allclose(top.scores.numpy(), np.take_along_axis(s, ref, 1))
    r, c = torch.tensor([0, 3, 7]), torch.tensor([5, 3, 1])
    np.testing.assert_allclose(m.pairs(r, c).numpy(), s[[0, 3, 7], [5, 3, 1]])
    d = ScoreMatrix(np.clip(2 - 2 * s, 0, None), kind="distance")
    np.testing.assert_allclose(d.similarities().numpy(), -np.clip(2 - 2 * s, 0, None))
    np.testing.assert_array_equal(d.topk(5).indices.numpy(), ref)


@pytest.mark.parametrize("form", ["scipy", "torch_coo", "torch_csr"])
def test_sparse_forms_agree_with_dense(form):
    x = _points(n=25)
    s = (x @ x.T).numpy() + 2.0  # positive: scipy keeps every stored value
    kept = _top_m(s, 8)
    m = ScoreMatrix(_forms(kept)[form])
    assert m.is_sparse and m.shape == (25, 25)
    top = m.topk(6)
    ref = np.argsort(-s, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(top.indices.numpy(), ref)
    np.testing.assert_allclose(top.scores.numpy(), np.take_along_axis(s, ref, 1))
    # more than stored: padding
    wide = m.topk(10)
    assert (wide.indices[:, 8:] == -1).all() and torch.isinf(wide.scores[:, 8:]).all()
    dense = m.similarities().numpy()
    np.testing.assert_allclose(np.where(kept > 0, kept, -np.inf), dense)
    rng = np.random.default_rng(0)
    r, c = rng.integers(0, 25, 60), rng.integers(0, 25, 60)
    np.testing.assert_allclose(
        m.pairs(torch.from_numpy(r), torch.from_numpy(c)).numpy(), dense[r, c]
    )
    np.testing.assert_allclose(m.diagonal().numpy(), np.diagonal(dense))
    sub = m.index_select(0, torch.tensor([4, 0, 4]))
    np.testing.assert_allclose(sub.similarities().numpy(), dense[[4, 0, 4]])
    np.testing.assert_allclose(m[3:9].similarities().numpy(), dense[3:9])


def test_conversions_use_the_unit_sphere_identity():
    x = _points()
    s = x @ x.T
    d = torch.cdist(x, x)
    np.testing.assert_allclose(ScoreMatrix(s).as_distance().matrix.numpy(), d.numpy(), atol=1e-6)
    np.testing.assert_allclose(
        ScoreMatrix(d, kind="distance").as_similarity().matrix.numpy(), s.numpy(), atol=1e-12
    )
    with pytest.raises(ValueError, match="cosine-like"):
        ScoreMatrix(3 * s).as_distance()
    with pytest.raises(ValueError, match="unit vectors"):
        ScoreMatrix(3 * d, kind="distance").as_similarity()


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((torch.zeros(3),), {}, ValueError, "2-D"),
        ((torch.zeros(0, 3),), {}, ValueError, "empty"),
        ((torch.tensor([[1.0, float("nan")]]),), {}, ValueError, "NaN"),
        ((torch.ones(2, 2, dtype=torch.long),), {}, TypeError, "floating point"),
        ((-torch.ones(2, 2),), {"kind": "distance"}, ValueError, "negative"),
        ((torch.ones(2, 2),), {"kind": "cosine"}, ValueError, "kind must be one of"),
        ((torch.ones(2, 3),), {"query_scores": torch.ones(3, 3)}, ValueError, r"\(2, 2\)"),
        (("abc",), {}, TypeError, "scores"),
    ],
)
def test_bad_matrices(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        ScoreMatrix(*args, **kwargs)


def test_the_diagonal_tells_similarities_from_distances():
    x = _points()
    s = x @ x.T
    ScoreMatrix(s).check_database()
    ScoreMatrix(torch.cdist(x, x), kind="distance").check_database()
    with pytest.raises(ValueError, match="look like distances"):
        ScoreMatrix(torch.cdist(x, x)).check_database()
    with pytest.raises(ValueError, match="look like similaritys|look like similarities"):
        ScoreMatrix(s + 1, kind="distance").check_database()
    with pytest.raises(ValueError, match="square"):
        ScoreMatrix(s[:5]).check_database()


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("how", [None, "mutual", "min", "union"])
def test_knn_graph_from_a_score_matrix_equals_the_vector_graph(sparse, how):
    x = _points(n=40, seed=3)
    s = (x @ x.T).numpy()
    m = ScoreMatrix(_sparse_top(s, 12)) if sparse else ScoreMatrix(s)
    g_vec = knn_graph(x, 6, symmetrize=how, gamma=3.0, backend="torch")
    g_mat = knn_graph(m, 6, symmetrize=how, gamma=3.0)
    assert torch.equal(g_vec.edge_index, g_mat.edge_index)
    torch.testing.assert_close(g_vec.edge_weight, g_mat.edge_weight)


def test_score_index_searches_rows():
    m = ScoreMatrix(torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]]))
    idx = ScoreIndex(3)
    assert idx.search(m, 2).indices.tolist() == [[1, 2], [0, 2]]
    with pytest.raises(TypeError, match="ScoreMatrix"):
        idx.search(torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match="columns"):
        ScoreIndex(4).search(m, 1)
