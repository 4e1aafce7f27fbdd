import numpy as np
import pytest
import torch

from graphrerank.graph import knn_search, resolve_backend
from graphrerank.testing import requires_faiss


def _data(nq=37, n=211, d=24, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(nq, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return q.to(dtype), x.to(dtype)


def _brute(q, x, k, metric):
    q, x = q.double(), x.double()
    s = q @ x.T if metric == "ip" else -torch.cdist(q, x).pow(2)
    scores, idx = s.sort(dim=1, descending=True, stable=True)
    return scores[:, :k], idx[:, :k]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_torch_backend_matches_brute_force(device, metric):
    q, x = _data()
    ref_s, ref_i = _brute(q, x, 10, metric)
    out = knn_search(q.to(device), x.to(device), 10, metric=metric, backend="torch")
    assert out.indices.device.type == device
    assert out.indices.dtype == torch.int64
    assert torch.equal(out.indices.cpu(), ref_i)
    torch.testing.assert_close(out.scores.cpu().double(), ref_s, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_torch_backend_blocks_give_the_same_result(metric):
    q, x = _data(nq=50, n=300)
    full = knn_search(q, x, 7, metric=metric, backend="torch")
    # tiny blocks force several query and database blocks and the top-k merge
    tiny = knn_search(q, x, 7, metric=metric, backend="torch", block_bytes=4 * 7 * 10)
    assert torch.equal(full.indices, tiny.indices)
    torch.testing.assert_close(full.scores, tiny.scores)


@requires_faiss
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_and_torch_agree_without_ties(metric):
    q, x = _data(nq=64, n=500, d=32, seed=3)
    a = knn_search(q, x, 20, metric=metric, backend="faiss")
    b = knn_search(q, x, 20, metric=metric, backend="torch")
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-4)
    ref_s, ref_i = _brute(q, x, 20, metric)
    assert torch.equal(a.indices, ref_i)


def test_l2_scores_are_negative_squared_distances():
    q = torch.tensor([[0.0, 0.0]])
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    out = knn_search(q, x, 2, metric="l2", backend="torch")
    assert out.indices.tolist() == [[1, 0]]
    assert out.scores.tolist() == [[-1.0, -25.0]]


def test_numpy_input_and_float64_kept():
    q, x = _data(dtype=torch.float64)
    out = knn_search(q.numpy(), x.numpy(), 3, backend="torch")
    assert isinstance(out.scores, torch.Tensor) and out.scores.dtype == torch.float64


def test_half_precision_is_upcast():
    q, x = _data()
    out = knn_search(q.half(), x.half(), 3, backend="torch")
    assert out.scores.dtype == torch.float32


@pytest.mark.parametrize(
    ("queries", "database", "k", "match"),
    [
        (np.zeros((2, 3), np.float32), np.zeros((5, 4), np.float32), 1, "dimension 4, expected 3"),
        (np.zeros(3, np.float32), np.zeros((5, 3), np.float32), 1, "2-D"),
        (np.zeros((2, 3), np.float32), np.zeros((0, 3), np.float32), 1, "database is empty"),
        (np.zeros((2, 3), np.float32), np.zeros((5, 3), np.float32), 6, "k=6 is larger"),
        (np.zeros((2, 3), np.float32), np.zeros((5, 3), np.float32), 0, "k must be >= 1"),
        (
            np.full((2, 3), np.nan, np.float32),
            np.zeros((5, 3), np.float32),
            1,
            "queries contains NaN",
        ),
    ],
)
def test_bad_input_raises_clear_errors(queries, database, k, match):
    with pytest.raises(ValueError, match=match):
        knn_search(queries, database, k, backend="torch")


def test_integer_input_is_refused():
    with pytest.raises(TypeError, match="queries must hold floating point"):
        knn_search(np.zeros((2, 3), np.int64), np.zeros((5, 3)), 1)


def test_bad_metric_and_backend():
    q, x = _data()
    with pytest.raises(ValueError, match="metric must be one of"):
        knn_search(q, x, 1, metric="cos")
    with pytest.raises(ValueError, match="backend must be one of"):
        knn_search(q, x, 1, backend="numpy")


def test_mixed_devices_raise():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device and a CPU")
    q, x = _data()
    with pytest.raises(ValueError, match="database is on cpu but queries is on cuda"):
        knn_search(q.cuda(), x, 1)


def test_auto_backend_on_cpu_uses_faiss_when_installed():
    from graphrerank._imports import has_faiss

    assert resolve_backend("auto", torch.device("cpu")) == ("faiss" if has_faiss() else "torch")
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
