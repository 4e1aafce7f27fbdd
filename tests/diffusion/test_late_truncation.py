"""Offline diffusion with late truncation, checked against a dense float64 transcription."""

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from graphrerank.diffusion import (
    laplacian_alpha,
    late_truncation,
    offline_diffusion,
    offline_diffusion_scores,
    self_first,
)
from graphrerank.graph import mutual_knn_graph

# ------------------------------------------------------------------ dense float64 reference
# A straightforward transcription of Yang et al. (AAAI 2019) as the reference code computes it.


def ref_affinity(x, kd, gamma):
    s = x @ x.T
    n = len(x)
    order = np.argsort(-s, axis=1, kind="stable")[:, :kd]  # the kd list includes the item
    nb = [set(o.tolist()) - {i} for i, o in enumerate(order)]  # ... which is then dropped
    A = np.zeros((n, n))
    for i in range(n):
        for j in nb[i]:
            if i in nb[j]:  # mutual neighbours only
                A[i, j] = max(s[i, j], 0.0) ** gamma
    return A


def ref_laplacian(A, alpha):
    d = A.sum(1)
    dinv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)
    return np.eye(len(A)) - alpha * dinv[:, None] * A * dinv[None, :]


def ref_cg(M, b, tol, max_iter):
    """Textbook conjugate gradients from x = 0, relative residual test."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = r @ r
    for _ in range(max_iter):
        if np.sqrt(rr) <= tol * np.linalg.norm(b):
            break
        Ap = M @ p
        a = rr / (p @ Ap)
        x = x + a * p
        r = r - a * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def ref_lists(x, T):
    return np.argsort(-(x @ x.T), axis=1, kind="stable")[:, :T]


def ref_C(x, kd, T, alpha=0.99, gamma=3.0, tol=1e-6, max_iter=20, solve="cg"):
    L = ref_laplacian(ref_affinity(x, kd, gamma), alpha)
    lists = ref_lists(x, T)
    n = len(x)
    C = np.zeros((n, n))
    for i in range(n):
        ids = lists[i]
        assert ids[0] == i
        e0 = np.zeros(len(ids))
        e0[0] = 1.0
        sub = L[np.ix_(ids, ids)]  # sub-block of the globally normalised matrix
        C[i, ids] = ref_cg(sub, e0, tol, max_iter) if solve == "cg" else np.linalg.solve(sub, e0)
    return C


def clustered(n=60, d=8, clusters=5, spread=0.35, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    x = centers[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------ tests


def test_reference_cg_matches_scipy():
    x = clustered()
    L = ref_laplacian(ref_affinity(x, 10, 3.0), 0.99)
    ids = ref_lists(x, 25)[3]
    b = np.zeros(25)
    b[0] = 1
    ours = ref_cg(L[np.ix_(ids, ids)], b, 1e-6, 20)
    ref, _ = spla.cg(L[np.ix_(ids, ids)], b, rtol=1e-6, atol=0.0, maxiter=20)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(("kd", "T", "gamma"), [(10, 25, 3.0), (6, 60, 1.0), (15, 12, 2.0)])
def test_offline_matrix_matches_dense_transcription(kd, T, gamma, device):
    x = clustered()
    C = offline_diffusion(
        torch.from_numpy(x).to(device), kd=kd, truncation=T, gamma=gamma, backend="torch"
    )
    assert C.layout == torch.sparse_csr and C.device.type == device
    assert C.dtype == torch.float64
    ref = ref_C(x, kd, T, gamma=gamma)
    np.testing.assert_allclose(C.to_dense().cpu().numpy(), ref, rtol=1e-9, atol=1e-12)
    # at most T entries per row, columns sorted within each row
    crow = C.crow_indices().cpu()
    assert int((crow[1:] - crow[:-1]).max()) <= T
    col = C.col_indices().cpu().long()
    for i in range(len(x)):
        row = col[crow[i] : crow[i + 1]]
        assert bool((row[1:] > row[:-1]).all())


def test_converged_solves_equal_exact_sub_block_solves():
    x = clustered(seed=1)
    C = offline_diffusion(
        torch.from_numpy(x),
        kd=10,
        truncation=20,
        alpha=0.9,
        tol=1e-14,
        max_iter=500,
        backend="torch",
    )
    ref = ref_C(x, 10, 20, alpha=0.9, solve="exact")
    np.testing.assert_allclose(C.to_dense().numpy(), ref, rtol=1e-8, atol=1e-11)


def test_late_truncation_is_not_renormalised():
    """The sub-block comes from the globally normalised matrix: re-normalising the truncated
    graph (early truncation) gives another answer."""
    x = clustered(seed=2)
    kd, T = 10, 15
    A = ref_affinity(x, kd, 3.0)
    ids = ref_lists(x, T)[0]
    e0 = np.zeros(T)
    e0[0] = 1
    renorm = np.linalg.solve(ref_laplacian(A[np.ix_(ids, ids)], 0.99), e0)
    C = offline_diffusion(
        torch.from_numpy(x), kd=kd, truncation=T, tol=1e-14, max_iter=500, backend="torch"
    )
    ours = C.to_dense()[0, torch.from_numpy(ids)].numpy()
    glob = np.linalg.solve(ref_laplacian(A, 0.99)[np.ix_(ids, ids)], e0)
    np.testing.assert_allclose(ours, glob, rtol=1e-8)
    assert np.abs(ours - renorm).max() > 1e-3


def test_isolated_node_row_is_the_unit_vector():
    x = clustered(n=40, seed=3)
    far = np.zeros((1, 8))
    far[0, 0] = -1.0  # no mutual neighbour: its graph degree is 0
    x = np.vstack([x, far])
    A = ref_affinity(x, 5, 3.0)
    assert A[-1].sum() == 0
    C = offline_diffusion(torch.from_numpy(x), kd=5, truncation=10, backend="torch")
    row = C.to_dense()[-1]
    expected = torch.zeros(41, dtype=torch.float64)
    expected[-1] = 1.0
    torch.testing.assert_close(row, expected)


def test_block_size_does_not_change_the_result():
    x = torch.from_numpy(clustered(n=50, seed=4))
    g = mutual_knn_graph(
        x,
        8,
        gamma=3.0,
        candidates=__import__("graphrerank").graph.knn_search(x, x, 50, backend="torch"),
    )
    L = laplacian_alpha(g, 0.99)
    lists = self_first(
        __import__("graphrerank").graph.knn_search(x, x, 20, backend="torch").indices, 20
    )
    one = late_truncation(L, lists, block_size=1).to_dense()
    many = late_truncation(L, lists, block_size=7).to_dense()
    auto = late_truncation(L, lists).to_dense()
    torch.testing.assert_close(one, many, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(one, auto, rtol=1e-12, atol=1e-14)


def test_padded_lists_solve_the_smaller_sub_block():
    L = torch.tensor(
        [
            [1.0, -0.4, -0.3, 0.0],
            [-0.4, 1.0, -0.2, 0.0],
            [-0.3, -0.2, 1.0, -0.1],
            [0, 0, -0.1, 1.0],
        ],
        dtype=torch.float64,
    )
    lists = torch.tensor([[0, 2, -1], [1, 0, 2], [2, -1, 3], [3, 2, -1]])
    C = late_truncation(L.to_sparse_csr(), lists, tol=1e-14, max_iter=50).to_dense()
    for i, ids in enumerate(lists.tolist()):
        ids = [j for j in ids if j >= 0]
        sub = L[ids][:, ids]
        e = torch.zeros(len(ids), dtype=torch.float64)
        e[ids.index(i)] = 1
        expected = torch.zeros(4, dtype=torch.float64)
        expected[ids] = torch.linalg.solve(sub, e)
        torch.testing.assert_close(C[i], expected)


def test_progress_callback_and_bar(capsys):
    x = torch.from_numpy(clustered(n=30, seed=5))
    seen = []
    offline_diffusion(
        x, kd=5, truncation=10, block_size=8, progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(8, 30), (16, 30), (24, 30), (30, 30)]
    offline_diffusion(x, kd=5, truncation=10, progress=True)
    assert "offline diffusion" in capsys.readouterr().err
    offline_diffusion(x, kd=5, truncation=10, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress must be"):
        offline_diffusion(x, kd=5, truncation=10, progress="yes")


def test_online_scores_are_the_clamped_weighted_row_sum(device):
    x = clustered(n=40, seed=6)
    C = offline_diffusion(torch.from_numpy(x).to(device), kd=8, truncation=15, backend="torch")
    Cd = C.to_dense().cpu().numpy()
    scores = torch.tensor([[0.9, 0.5, -0.2], [0.7, 0.0, 0.3]], dtype=torch.float64)
    idx = torch.tensor([[3, 7, 11], [5, -1, 2]])
    F = offline_diffusion_scores(C, (scores.to(device), idx.to(device)), gamma=3.0)
    assert F.layout == torch.sparse_csr and F.shape == (2, 40)
    expected = np.stack(
        [
            0.9**3 * Cd[3] + 0.5**3 * Cd[7],  # the negative similarity gets weight 0
            0.7**3 * Cd[5] + 0.3**3 * Cd[2],  # -1 padding is ignored
        ]
    )
    np.testing.assert_allclose(F.to_dense().cpu().numpy(), expected, rtol=1e-12, atol=1e-15)


def test_self_first():
    idx = torch.tensor([[1, 0, 2, 3], [1, 2, 3, -1], [0, 1, 3, 1], [-1, -1, -1, -1]])
    out = self_first(idx, 3)
    assert out.tolist() == [[0, 1, 2], [1, 2, 3], [2, 0, 1], [3, -1, -1]]
    assert self_first(idx, 6).shape == (4, 6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kd": 0}, ValueError, "kd must be >= 1"),
        ({"kd": 31}, ValueError, "kd must be <= 30"),
        ({"truncation": 0}, ValueError, "truncation must be >= 1"),
        ({"alpha": 1.0}, ValueError, "alpha must be < 1"),
        ({"gamma": -1.0}, ValueError, "gamma must be >= 0"),
        ({"search": "hnsw"}, ValueError, "search must be one of"),
    ],
)
def test_offline_diffusion_rejects_bad_settings(kwargs, error, match):
    x = torch.from_numpy(clustered(n=30))
    with pytest.raises(error, match=match):
        offline_diffusion(x, **{"kd": 5, **kwargs})


def test_offline_diffusion_needs_normalised_input():
    x = torch.from_numpy(clustered(n=30)) * 2
    with pytest.raises(ValueError, match="x must be L2-normalised"):
        offline_diffusion(x)


def test_late_truncation_rejects_bad_input():
    L = torch.eye(3, dtype=torch.float64).to_sparse_csr()
    good = torch.tensor([[0, 1], [1, 0], [2, 1]])
    with pytest.raises(TypeError, match="sparse_csr"):
        late_truncation(torch.eye(3), good)
    with pytest.raises(ValueError, match=r"lists must be \(3, T\)"):
        late_truncation(L, good[:2])
    with pytest.raises(ValueError, match="node 1 is not"):
        late_truncation(L, torch.tensor([[0, 1], [0, 2], [2, 1]]))
    with pytest.raises(ValueError, match="node ids in"):
        late_truncation(L, torch.tensor([[0, 5], [1, 0], [2, 1]]))
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        late_truncation(L, good, block_size=0)
