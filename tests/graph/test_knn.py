import numpy as np
import pytest
import torch

from graphrerank.graph import knn_search, resolve_backend
from graphrerank.graph.knn import _symmetric_select, self_knn
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


# ----------------------------------------------------------------------------- self_knn
@pytest.fixture(params=["compiled", "torch"])
def selection(request, monkeypatch):
    """The running top-k of _symmetric_select: the numba kernel (where numba is installed)
    or the torch fallback."""
    import graphrerank.graph.knn as knn_module

    if request.param == "torch":
        monkeypatch.setattr(knn_module, "_KERNEL", [None])
    else:
        pytest.importorskip("numba")
    return request.param


def _self_brute(x, k, metric):
    """Dense float64 scores and a full stable sort (the lower index first among ties)."""
    x = x.double()
    s = x @ x.T if metric == "ip" else -(x[:, None] - x[None]).pow(2).sum(-1)
    v, i = s.sort(dim=1, descending=True, stable=True)
    return s, v[:, :k], i[:, :k]


def _check_ranking(s, out, k, tol):
    """``out`` lists ``k`` distinct items per row, best first, whose scores are the row's
    ``k`` best of ``s`` (float64 reference), each score the item's own; item ids may differ
    from a reference sort only among (near-)ties."""
    idx = out.indices.cpu()
    n = s.shape[0]
    assert tuple(idx.shape) == tuple(out.scores.shape) == (n, k)
    assert idx.dtype == torch.int64
    assert all(len(set(r)) == k for r in idx.tolist())
    ref = s.sort(dim=1, descending=True).values[:, :k]
    got = out.scores.cpu().double()
    torch.testing.assert_close(got, ref, rtol=0, atol=tol)
    torch.testing.assert_close(s.gather(1, idx), got, rtol=0, atol=tol)
    assert bool((got[:, 1:] <= got[:, :-1]).all())


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize(
    ("n", "k", "block_bytes"),
    [(1, 1, None), (5, 5, None), (37, 7, 8 * 11 * 11), (50, 50, 8 * 9 * 20), (211, 13, 8 * 40 * 40),
     (211, 100, 8 * 16 * 64), (300, 1, 8 * 7 * 7), (97, 96, 8)],
)  # fmt: skip
def test_self_knn_equals_a_dense_sort(n, k, block_bytes, metric, selection):
    # float64 random data: no ties, so the ids equal a full sort's, with many pieces (N not a
    # multiple of the rows of a piece), k above and below a piece's width, N = 1, k = N
    _, x = _data(n=n, d=6, seed=n + k, dtype=torch.float64)
    s, ref_v, ref_i = _self_brute(x, k, metric)
    kw = {} if block_bytes is None else {"block_bytes": block_bytes}
    out = self_knn(x, k, metric=metric, **kw)
    assert out.scores.dtype == torch.float64
    assert torch.equal(out.indices, ref_i)
    torch.testing.assert_close(out.scores, ref_v, rtol=1e-12, atol=1e-12)
    if metric == "l2":  # a row with itself scores exactly 0, first
        assert bool((out.scores[:, 0] == 0).all()) and torch.equal(
            out.indices[:, 0], torch.arange(n)
        )


def test_self_knn_with_duplicates_and_ties(selection):
    # exact duplicates (the row itself and its copies tie at the top) and integer scores
    # with many ties: the k best scores are exact, the ids any of the tied ones
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (150, 4), generator=g).float()
    x[10:20] = x[5]
    for block_bytes in (4 * 8 * 8, 4 * 32 * 64, None):
        kw = {} if block_bytes is None else {"block_bytes": block_bytes}
        for metric in ("ip", "l2"):
            out = self_knn(x, 30, metric=metric, **kw)
            s, _, _ = _self_brute(x, 30, metric)
            _check_ranking(s, out, 30, 0.0)
        out = self_knn(x, 12, metric="l2", **kw)
        for r in [5, *range(10, 20)]:  # the 11 copies of x[5] are each other's best
            assert set(out.indices[r, :11].tolist()) == {5, *range(10, 20)}


def test_symmetric_select_extremes_and_smallest(selection):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(70, 70, generator=g, dtype=torch.float64)
    m = a + a.T

    def block(r0, r1, c0, c1):
        return m[r0:r1, c0:c1]

    for largest in (True, False):
        v, i, e = _symmetric_select(
            block, 70, 9, largest=largest, extreme=True, dtype=m.dtype, device=m.device,
            budget=10 * 30, rows=10,
        )  # fmt: skip
        ref_v, ref_i = m.sort(dim=1, descending=largest, stable=True)
        assert torch.equal(i, ref_i[:, :9])
        torch.testing.assert_close(v, ref_v[:, :9], rtol=0, atol=0)
        torch.testing.assert_close(e, m.amin(1) if largest else m.amax(1), rtol=0, atol=0)


def test_symmetric_select_reads_the_upper_triangle_once():
    m = torch.arange(40 * 40, dtype=torch.float64).reshape(40, 40)
    m = m + m.T
    seen = torch.zeros(40, 40, dtype=torch.int64)

    def block(r0, r1, c0, c1):
        seen[r0:r1, c0:c1] += 1
        return m[r0:r1, c0:c1]

    v, i, _ = _symmetric_select(
        block, 40, 5, largest=True, dtype=m.dtype, device=m.device, budget=6 * 12, rows=6
    )
    # each pair of row blocks is read once, on and above the diagonal only
    blk = torch.arange(40) // 6
    assert torch.equal(seen, (blk[None, :] >= blk[:, None]).long())
    assert torch.equal(i, m.sort(dim=1, descending=True, stable=True).indices[:, :5])


@requires_faiss
@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_self_knn_equals_faiss_up_to_ties(k, selection):
    import faiss

    g = torch.Generator().manual_seed(k)
    x = torch.nn.functional.normalize(torch.randn(2500, 32, generator=g), dim=1)
    out = self_knn(x, k)
    index = faiss.IndexFlatIP(32)
    index.add(x.numpy())
    d, i = index.search(x.numpy(), k)
    # both in float32, products summed in other orders: scores agree to rounding, and an id
    # in one list only scores as the k-th best (a float tie at the boundary)
    np.testing.assert_allclose(out.scores.numpy(), d, rtol=0, atol=2e-6)
    diff = out.indices.numpy() != i
    assert diff.mean() < 1e-3
    for r in np.flatnonzero(diff.any(1)):
        # (a row with the same ids in another order swaps near-equal scores: checked above)
        extra = np.setdiff1d(out.indices[r].numpy(), i[r])
        if extra.size == 0:
            continue
        s = x[r] @ x[extra].T
        assert bool((s - float(d[r, -1])).abs().max() < 2e-6)
    s, _, _ = _self_brute(x, k, "ip")
    _check_ranking(s, out, k, 2e-6)


def test_self_knn_keeps_dtype_and_checks_input():
    _, x = _data(n=30, d=4)
    assert self_knn(x, 3).scores.dtype == torch.float32
    assert self_knn(x.numpy().astype(np.float64), 3).scores.dtype == torch.float64
    assert self_knn(x.half(), 3).scores.dtype == torch.float32
    with pytest.raises(ValueError, match="k=31 is larger than x, which holds 30"):
        self_knn(x, 31)
    with pytest.raises(ValueError, match="k must be >= 1"):
        self_knn(x, 0)
    with pytest.raises(ValueError, match="metric must be one of"):
        self_knn(x, 1, metric="cos")
    with pytest.raises(TypeError, match="x must hold floating point"):
        self_knn(np.zeros((3, 2), np.int64), 1)
    with pytest.raises(ValueError, match="x has a row of squared norm .* too large"):
        self_knn(torch.full((4, 2), 3e19), 2)


def test_self_knn_on_the_device(device):
    _, x = _data(n=120, d=5, dtype=torch.float64)
    s, ref_v, ref_i = _self_brute(x, 9, "ip")
    out = self_knn(x.to(device), 9)
    assert out.indices.device.type == device
    assert torch.equal(out.indices.cpu(), ref_i)


def test_a_failing_kernel_warns_and_falls_back(monkeypatch):
    import graphrerank.graph.knn as knn_module

    def broken(*args):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(knn_module, "_KERNEL", [broken])
    _, x = _data(n=90, d=5, dtype=torch.float64)
    _, ref_v, ref_i = _self_brute(x, 7, "ip")
    with pytest.warns(RuntimeWarning, match="numba top-k selection kernel failed .*no compiler"):
        out = self_knn(x, 7, block_bytes=8 * 20 * 20)
    assert torch.equal(out.indices, ref_i)
    assert knn_module._KERNEL == [None]  # the torch selection from now on
