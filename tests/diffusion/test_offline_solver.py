"""The batched offline solver: blocks solved side by side in threads, row-layout CG, and the
online step's ranking shortcut, against dense float64 transcriptions and the exact path."""

import numpy as np
import pytest
import torch

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


def _dense_cg(M, b, max_iter):
    """Textbook CG from x = 0 (float64), the reference's 20-step setting."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = r @ r
    for _ in range(max_iter):
        if np.sqrt(rr) <= 1e-6 * np.linalg.norm(b):
            break
        ap = M @ p
        a = rr / (p @ ap)
        x, r = x + a * p, r - a * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_threaded_blocks_match_dense_transcription(two_threads):
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


def test_thread_count_and_block_size_do_not_change_the_matrix(two_threads):
    x, L, lists = _system(seed=1)
    threaded = late_truncation(L, lists, block_size=5).to_dense()
    torch.set_num_threads(1)
    single = late_truncation(L, lists, block_size=120).to_dense()
    torch.testing.assert_close(threaded, single, rtol=1e-5, atol=1e-7)


def test_progress_counts_every_node_once_with_threads(two_threads):
    x, L, lists = _system(n=60)
    seen = []
    late_truncation(L, lists, block_size=4, progress=lambda done, total: seen.append(done))
    assert seen[-1] == 60 and seen == sorted(seen)


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
