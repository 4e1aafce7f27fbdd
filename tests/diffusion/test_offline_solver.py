"""The batched offline solver: blocks solved side by side in threads, row-layout CG, and the
online step's ranking shortcut, against dense float64 transcriptions and the exact path."""

import numpy as np
import pytest
import torch

import graphrerank.diffusion.offline as offline
from graphrerank.diffusion import conjugate_gradient, laplacian_alpha, late_truncation
from graphrerank.diffusion.cg import _cg_rows
from graphrerank.graph import mutual_knn_graph, rank_csr, truncation_lists
from graphrerank.graph.index import database_index
from graphrerank.rerankers import OfflineDiffusion
from graphrerank.rerankers.offline import _rank_rows


def _system(n=120, kd=8, T=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, 6, generator=g), dim=1)
    index = database_index(x, "exact", "torch")
    lists, cand = truncation_lists(x, index, T, kd)
    L = laplacian_alpha(mutual_knn_graph(x, kd, gamma=3.0, candidates=cand), 0.99)
    return x, L, lists


def _dense_cg(M, b, max_iter, tol=1e-6):
    """Textbook CG from x = 0 (float64), the reference's 20-step setting."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = r @ r
    for _ in range(max_iter):
        if np.sqrt(rr) <= tol * np.linalg.norm(b):
            break
        ap = M @ p
        a = rr / (p @ ap)
        x, r = x + a * p, r - a * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@pytest.fixture(autouse=True)
def _kernel_at_every_size(monkeypatch):
    """These systems are small: let the kernel solve them (the size gate is tested below)."""
    monkeypatch.setattr(offline, "_KERNEL_MIN_NODES", 0)


def test_small_systems_take_the_fallback_until_the_kernel_has_run(monkeypatch):
    pytest.importorskip("numba")
    x, L, lists = _system(n=40, kd=5, T=12, seed=8)
    ref = late_truncation(L, lists).to_dense()  # the kernel (gate at 0)
    calls = []

    def counted(*args):
        calls.append(1)
        return kernel(*args)

    kernel = offline._numba_kernel()
    monkeypatch.setattr(offline, "_KERNEL", [counted])
    monkeypatch.setattr(offline, "_KERNEL_MIN_NODES", 41)
    monkeypatch.setattr(offline, "_KERNEL_RAN", [])
    C = late_truncation(L, lists).to_dense()
    assert not calls  # 40 < 41 nodes, kernel not yet run: NumPy / SciPy
    torch.testing.assert_close(C, ref, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(offline, "_KERNEL_MIN_NODES", 40)
    late_truncation(L, lists)
    assert calls and offline._KERNEL_RAN == [True]
    calls.clear()
    monkeypatch.setattr(offline, "_KERNEL_MIN_NODES", 41)
    late_truncation(L, lists)
    assert calls  # once it has run, the kernel serves every size


@pytest.fixture(params=["compiled", "numpy"])
def solver(request, monkeypatch):
    """Run a test through the numba kernel and through its NumPy / SciPy fallback."""
    if request.param == "compiled":
        pytest.importorskip("numba")
        monkeypatch.setattr(offline, "_KERNEL", [])
        assert offline._numba_kernel() is not None
    else:
        monkeypatch.setattr(offline, "_KERNEL", [None])
    return request.param


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_threaded_blocks_match_dense_transcription(two_threads, solver):
    x, L, lists = _system()
    C = late_truncation(L, lists, block_size=7).to_dense().double().numpy()
    Ld = L.to_dense().double().numpy()
    for i in range(0, 120, 17):
        ids = lists[i][lists[i] >= 0].numpy()
        e = np.zeros(len(ids))
        e[0] = 1.0
        ref = _dense_cg(Ld[np.ix_(ids, ids)], e, 20)
        np.testing.assert_allclose(C[i, ids], ref, rtol=2e-4, atol=2e-6)
        outside = np.setdiff1d(np.arange(120), ids)
        assert not C[i, outside].any()


def test_thread_count_and_block_size_do_not_change_the_matrix(two_threads, solver):
    x, L, lists = _system(seed=1)
    threaded = late_truncation(L, lists, block_size=5).to_dense()
    torch.set_num_threads(1)
    single = late_truncation(L, lists, block_size=120).to_dense()
    torch.testing.assert_close(threaded, single, rtol=1e-5, atol=1e-7)


def test_progress_counts_every_node_once_with_threads(two_threads, solver):
    x, L, lists = _system(n=60)
    seen = []
    late_truncation(L, lists, block_size=4, progress=lambda done, total: seen.append(done))
    assert seen[-1] == 60 and seen == sorted(seen)


def _dense_rows(L, lists, max_iter=20, tol=1e-6):
    """Each row of C by dense float64 CG on its sub-block (list order, node first)."""
    n = L.shape[0]
    Ld = L.to_dense().double().numpy()
    out = np.zeros((n, n))
    for i in range(n):
        ids = lists[i][lists[i] >= 0].numpy()
        e = np.zeros(len(ids))
        e[list(ids).index(i)] = 1.0
        out[i, ids] = _dense_cg(Ld[np.ix_(ids, ids)], e, max_iter, tol)
    return out


def test_disconnected_lists_and_padding_match_dense_transcription(solver):
    # two clusters far apart: each list spans both, but a node's solution stays on its own
    # cluster (the compiled kernel iterates only there); -1 padding in some lists
    g = torch.Generator().manual_seed(5)
    centres = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0, 0]])
    x = centres.repeat_interleave(30, 0) + 0.2 * torch.randn(60, 6, generator=g)
    x = torch.nn.functional.normalize(x, dim=1)
    index = database_index(x, "exact", "torch")
    lists, cand = truncation_lists(x, index, 40, 6)
    lists = lists.long()
    lists[::7, 35:] = -1
    L = laplacian_alpha(mutual_knn_graph(x, 6, gamma=3.0, candidates=cand), 0.99)
    C = late_truncation(L, lists, block_size=9).to_dense().double().numpy()
    np.testing.assert_allclose(C, _dense_rows(L, lists), rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("max_iter", [0, 1, 3, 20])
def test_float64_laplacian_and_iteration_caps(solver, max_iter):
    x, L, lists = _system(n=50, kd=6, T=20, seed=2)
    L64 = torch.sparse_csr_tensor(L.crow_indices(), L.col_indices(), L.values().double(), L.shape)
    C = late_truncation(L64, lists, max_iter=max_iter, tol=1e-12)
    assert C.dtype == torch.float64
    np.testing.assert_allclose(
        C.to_dense().numpy(), _dense_rows(L64, lists, max_iter, 1e-12), rtol=1e-9, atol=1e-12
    )


def test_compiled_kernel_equals_numpy_fallback(monkeypatch):
    pytest.importorskip("numba")
    x, L, lists = _system(n=150, kd=10, T=40, seed=6)
    monkeypatch.setattr(offline, "_KERNEL", [None])
    fallback = late_truncation(L, lists, block_size=11)
    monkeypatch.setattr(offline, "_KERNEL", [])
    compiled = late_truncation(L, lists, block_size=11)
    torch.testing.assert_close(compiled.to_dense(), fallback.to_dense(), rtol=1e-5, atol=1e-6)


def test_kernel_falls_back_without_numba(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    monkeypatch.setattr(offline, "_KERNEL", [])
    assert offline._numba_kernel() is None
    x, L, lists = _system(n=40, kd=5, T=12, seed=8)
    C = late_truncation(L, lists).to_dense().double().numpy()
    np.testing.assert_allclose(C, _dense_rows(L, lists), rtol=2e-4, atol=2e-6)


def test_indefinite_sub_block_is_refused(solver):
    L = torch.tensor([[1.0, 2.0], [2.0, 1.0]]).to_sparse_csr()  # eigenvalues 3, -1
    with pytest.raises(ValueError, match="laplacian is not positive definite"):
        late_truncation(L, torch.tensor([[0, 1], [1, 0]]), max_iter=5)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_fit_lists_from_self_knn_equal_the_index_search(backend, monkeypatch):
    # the fit's truncation lists and graph from one all-vs-all self_knn (exact index on a
    # CPU) against the index's own search: the same lists, candidates and C (exact
    # duplicates, where the two may break a tie differently, are in tests/graph/test_lists.py)
    if backend == "faiss":
        pytest.importorskip("faiss")
    import graphrerank.graph.lists as lists_module

    g = torch.Generator().manual_seed(6)
    x = torch.nn.functional.normalize(torch.randn(80, 8, generator=g), dim=1)
    s = (x.double() @ x.double().T).sort(dim=1, descending=True).values
    assert float((s[:, :-1] - s[:, 1:]).min()) > 5e-6  # no float32 ties anywhere
    index = database_index(x, "exact", backend)
    monkeypatch.setattr(lists_module, "_SELF_SEARCH_DIM", 0)
    out = {}
    for rows in (1, 10**9):
        monkeypatch.setattr(lists_module, "_SELF_SEARCH_ROWS", rows)
        lists, cand = truncation_lists(x, index, 20, 6)
        C = offline.offline_diffusion(x, kd=6, truncation=20, index=index)
        out[rows] = lists, cand, C.to_dense()
    (la, ca, Ca), (lb, cb, Cb) = out[1], out[10**9]
    assert torch.equal(la, lb) and torch.equal(ca.indices, cb.indices)
    assert torch.equal(la[:, 0].long(), torch.arange(80))
    torch.testing.assert_close(ca.scores, cb.scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(Ca, Cb, rtol=1e-5, atol=1e-7)


def test_cg_rows_matches_conjugate_gradient_per_column():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(5, 40, 40, generator=g, dtype=torch.float64)
    A = a @ a.transpose(1, 2) + 4 * torch.eye(40, dtype=torch.float64)  # five SPD systems
    B = torch.rand(5, 40, generator=g, dtype=torch.float64)
    B[2] = 0  # a zero system is solved by x = 0 at once
    for max_iter in (1, 6, 20):
        X = _cg_rows(lambda P: torch.einsum("bij,bj->bi", A, P), B, 1e-6, max_iter)
        for j in range(5):
            ref = conjugate_gradient(A[j], B[j], tol=1e-6, max_iter=max_iter).solution
            torch.testing.assert_close(X[j], ref, rtol=1e-7, atol=1e-10)


def test_cg_rows_refuses_an_indefinite_system():
    A = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="laplacian is not positive definite"):
        _cg_rows(
            lambda P: P @ A,
            torch.tensor([[0.0, 1.0]], dtype=torch.float64),
            1e-6,
            5,
            name="laplacian",
        )


@pytest.mark.parametrize("ties", ["similarity", "index"])
@pytest.mark.parametrize("k", [5, 30, 90, 119])
def test_online_ranking_shortcut_equals_rank_csr(ties, k):
    x, _, _ = _system(n=120)
    q = torch.nn.functional.normalize(
        torch.randn(25, 6, generator=torch.Generator().manual_seed(4)), dim=1
    )
    m = OfflineDiffusion(kd=8, kq=4, truncation=30, ties=ties, backend="torch").fit(x)
    knn = m.index_.search(q, 4)
    from graphrerank.diffusion.offline import _query_rows

    F = _query_rows(m.C_, knn.scores, knn.indices, m.gamma)
    fast = _rank_rows(F, k, q, m.x_, m.index_, ties)
    ref = rank_csr(F, k, q, m.x_, m.index_, ties)
    assert torch.equal(fast.indices, ref.indices)
    assert torch.equal(fast.scores, ref.scores)


def test_online_ranking_shortcut_with_float_ties():
    # rows 0 and 2 have tied scores (ordered by first-stage similarity), row 1 none
    F = torch.tensor([[0.5, 0.5, 0.2, 0.0], [0.9, 0.4, 0.3, 0.1], [0.0, 0.3, 0.3, 0.3]])
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    x = torch.nn.functional.normalize(
        torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.2]]), dim=1
    )
    index = database_index(x, "exact", "torch")
    for ties in ("similarity", "index"):
        fast = _rank_rows(F.to_sparse_csr(), 2, q, x, index, ties)
        ref = rank_csr(F.to_sparse_csr(), 2, q, x, index, ties)
        assert torch.equal(fast.indices, ref.indices), ties
        assert torch.equal(fast.scores, ref.scores)


def test_a_kernel_that_fails_warns_and_falls_back(monkeypatch):
    def broken(*args):
        raise RuntimeError("cannot cache function: no locator available")

    x, L, lists = _system(n=40, kd=5, T=12, seed=9)
    monkeypatch.setattr(offline, "_KERNEL", [broken])
    with pytest.warns(RuntimeWarning, match="numba offline-diffusion kernel failed"):
        C = late_truncation(L, lists, block_size=7)
    assert offline._KERNEL == [None]  # the NumPy / SciPy path from now on
    np.testing.assert_allclose(
        C.to_dense().double().numpy(), _dense_rows(L, lists), rtol=2e-4, atol=2e-6
    )


@pytest.mark.parametrize("k", [3, 6, 8])
def test_short_rows_with_negative_and_stored_zero_scores_equal_rank_csr(k):
    # rows with fewer than k positive scores, stored zeros (-0.0 too) and negatives inside
    # the k best: one packed (score, similarity) top-k must rank them as rank_csr does
    F = torch.tensor(
        [
            [0.5, 0.0, -0.2, 0.0, 0.0, 0.3, -0.0, 0.0],
            [0.0, -0.1, 0.0, 0.0, -0.3, 0.0, 0.0, 0.2],
            [-0.5, -0.1, -0.2, -0.4, -0.3, -0.6, -0.7, -0.8],
        ]
    )
    g = torch.Generator().manual_seed(21)
    q = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    x = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1)
    index = database_index(x, "exact", "torch")
    # every entry stored, the zeros (and -0.0) included
    crow = torch.arange(0, 25, 8)
    csr = torch.sparse_csr_tensor(crow, torch.arange(8).repeat(3), F.reshape(-1), (3, 8))
    assert bool((csr.values() == 0).any())
    fast = _rank_rows(csr, k, q, x, index, "similarity")
    ref = rank_csr(csr, k, q, x, index, "similarity")
    assert torch.equal(fast.indices, ref.indices)
    assert torch.equal(fast.scores, ref.scores)
    # and by hand for the first row: positives by score, then the rest by similarity
    sim = (q @ x.T)[0]
    rest = [j for j in range(8) if F[0, j] <= 0]
    rest.sort(key=lambda j: (-float(F[0, j] + 0.0), -float(sim[j])))
    assert fast.indices[0].tolist() == [0, 5, *rest][:k]
