import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from graphrerank.diffusion import (
    diffuse,
    diffusion_operator,
    query_entries,
    query_vector,
)
from graphrerank.graph import knn_graph, knn_search, to_torch_csr

from . import reference as ref


def _points(n=60, d=5, seed=0, clusters=4):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, d))
    x = c[np.arange(n) % clusters] + 0.6 * rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("how", ["mutual", "union", "min", "max"])
@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_operator_matches_dense_transcription(how, gamma, device):
    x = _points()
    g = knn_graph(
        torch.from_numpy(x).to(device),
        7,
        symmetrize=how,
        gamma=gamma,
        normalize="sym",
        backend="torch",
    )
    L = diffusion_operator(g, alpha=0.9)
    assert L.layout == torch.sparse_csr and L.device.type == device
    expected = np.eye(60) - 0.9 * ref.transition(ref.affinity(x, 7, gamma, how))
    np.testing.assert_allclose(L.to_dense().cpu().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_operator_hand_worked_with_isolated_node():
    # path 0 - 1 - 2 with weights 1 and 4; node 3 isolated
    a = np.zeros((4, 4))
    a[0, 1] = a[1, 0] = 1.0
    a[1, 2] = a[2, 1] = 4.0
    # degrees 1, 5, 4, 0 -> S01 = 1/sqrt(5), S12 = 4/sqrt(20)
    L = diffusion_operator(torch.from_numpy(a), alpha=0.5).to_dense()
    s01, s12 = 1 / np.sqrt(5), 4 / np.sqrt(20)
    expected = np.array(
        [[1, -0.5 * s01, 0, 0], [-0.5 * s01, 1, -0.5 * s12, 0], [0, -0.5 * s12, 1, 0], [0, 0, 0, 1]]
    )
    from graphrerank.graph import normalize_adjacency

    ei = torch.tensor([[1, 0, 2, 1], [0, 1, 1, 2]])
    w = torch.tensor([1.0, 1.0, 4.0, 4.0], dtype=torch.float64)
    s = normalize_adjacency(ei, w, 4, "sym")
    L2 = diffusion_operator(Data(edge_index=ei, edge_weight=s, num_nodes=4), alpha=0.5).to_dense()
    np.testing.assert_allclose(L2.numpy(), expected, rtol=1e-12)
    # the raw matrix is taken as S itself
    assert L[0, 1] == -0.5


def test_zero_degree_item_keeps_its_own_score(device):
    x = _points(n=40)
    # an outlier orthogonal to everything: no mutual neighbour, degree 0
    x = np.vstack([x, np.zeros((1, 5))])
    x = np.hstack([x, np.zeros((41, 1))])
    x[-1, -1] = 1.0
    xt = torch.from_numpy(x).to(device)
    g = knn_graph(xt, 5, symmetrize="mutual", gamma=3.0, normalize="sym", backend="torch")
    assert not (g.edge_index == 40).any()
    L = diffusion_operator(g, 0.99)
    y = torch.zeros(41, 2, dtype=torch.float64, device=device)
    y[40, 0] = 0.7
    y[3, 1] = 1.0
    f = diffuse(L, y, tol=1e-12, max_iter=500).solution
    assert f[40, 0] == pytest.approx(0.7)  # (I - aS) f = y with a zero row of S
    assert (f[:40, 0] == 0).all() and f[40, 1] == 0


def test_query_vector_hand_worked():
    # query 0 has two vectors, query 1 one; -1 is padding
    scores = torch.tensor([[0.9, 0.5, 0.2], [0.8, 0.5, -0.3], [0.6, -0.2, 0.1]])
    indices = torch.tensor([[0, 2, 3], [1, 2, 4], [4, 3, -1]])
    qid = torch.tensor([0, 0, 1])
    y = query_vector(scores, indices, 5, kq=2, gamma=2.0, query_index=qid)
    # query 0 sums: 0 -> 0.9, 1 -> 0.8, 2 -> 1.0, 3 -> 0.2, 4 -> -0.3; top 2: nodes 2 and 0
    # query 1: 4 -> 0.6, 3 -> -0.2; top 2 both, the negative clamped to 0
    expected = torch.zeros(5, 2)
    expected[2, 0], expected[0, 0] = 1.0, 0.81
    expected[4, 1] = 0.36
    torch.testing.assert_close(y, expected)
    q, node, value = query_entries(scores, indices, 5, kq=2, gamma=2.0, query_index=qid)
    assert q.tolist() == [0, 0, 1, 1] and node.tolist() == [2, 0, 4, 3]
    torch.testing.assert_close(value, torch.tensor([1.0, 0.81, 0.36, 0.0]))


def test_query_vector_matches_ymake_transcription(device):
    rng = np.random.default_rng(1)
    x = _points(n=50)
    qv = rng.standard_normal((3, 5))
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    xt, qt = torch.from_numpy(x).to(device), torch.from_numpy(qv).to(device)
    s, i = knn_search(qt, xt, 6, backend="torch")
    y = query_vector(
        s, i, 50, kq=6, gamma=3.0, query_index=torch.zeros(3, dtype=torch.long, device=device)
    )
    np.testing.assert_allclose(y[:, 0].cpu().numpy(), ref.ymake(x, qv, 6, 3.0), rtol=1e-12)


def test_query_vector_gamma_zero_keeps_only_positive_candidates():
    y = query_vector(torch.tensor([[0.5, -0.1]]), torch.tensor([[2, 0]]), 4, kq=3, gamma=0.0)
    assert y[:, 0].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_query_vector_validation():
    with pytest.raises(ValueError, match="scores and indices must both be"):
        query_vector(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="query_index must have shape"):
        query_vector(
            torch.zeros(2, 3),
            torch.zeros(2, 3, dtype=torch.long),
            4,
            query_index=torch.zeros(3, dtype=torch.long),
        )
    with pytest.raises(ValueError, match="kq must be >= 1"):
        query_vector(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), 4, kq=0)


@pytest.mark.parametrize("best", [True, False])
def test_diffuse_matches_matlab_pcg_transcription(best, device):
    x = _points(n=120, seed=2)
    g = knn_graph(
        torch.from_numpy(x), 10, symmetrize="mutual", gamma=3.0, normalize="sym", backend="torch"
    )
    L = diffusion_operator(g, 0.99)
    lap = np.eye(120) - 0.99 * ref.transition(ref.mutual_affinity(x, 10, 3.0))
    ys = np.stack([ref.ymake(x, x[j], 5, 3.0) for j in (0, 7, 50)], 1)
    out = diffuse(L.to(device), torch.from_numpy(ys).to(device), iterate="best" if best else "last")
    assert out.iterations.tolist() == [20, 20, 20] and not out.converged.any()
    for c in range(3):
        expected = ref.pcg(lap, ys[:, c], 1e-6, 20, best=best)
        np.testing.assert_allclose(
            out.solution[:, c].cpu().numpy(), expected, rtol=1e-9, atol=1e-12
        )


def test_best_and_last_iterates_differ_where_residual_is_not_monotone():
    x = _points(n=120, seed=2)
    g = knn_graph(
        torch.from_numpy(x), 10, symmetrize="mutual", gamma=3.0, normalize="sym", backend="torch"
    )
    L = diffusion_operator(g, 0.99)
    y = torch.from_numpy(np.stack([ref.ymake(x, x[j], 5, 3.0) for j in range(40)], 1))
    best = diffuse(L, y, iterate="best")
    last = diffuse(L, y, iterate="last")
    assert (best.residuals <= last.residuals + 1e-15).all()
    assert (best.residuals < last.residuals).any(), "CG residuals are not monotone at a=0.99"


def test_exact_solve_matches_dense_solve(device):
    x = _points(n=80)
    g = knn_graph(
        torch.from_numpy(x), 8, symmetrize="mutual", gamma=3.0, normalize="sym", backend="torch"
    )
    L = diffusion_operator(g, 0.99)
    y = torch.from_numpy(np.stack([ref.ymake(x, x[j], 4, 3.0) for j in (1, 2)], 1))
    f = diffuse(L.to(device), y.to(device), tol=1e-13, max_iter=2000).solution
    lap = np.eye(80) - 0.99 * ref.transition(ref.mutual_affinity(x, 8, 3.0))
    np.testing.assert_allclose(
        f.cpu().numpy(), np.linalg.solve(lap, y.numpy()), rtol=1e-8, atol=1e-10
    )


def test_operator_validation():
    g = Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2)
    with pytest.raises(ValueError, match="no edge_weight"):
        diffusion_operator(g)
    with pytest.raises(ValueError, match="alpha must be < 1"):
        diffusion_operator(torch.eye(2), alpha=1.0)
    with pytest.raises(ValueError, match="square"):
        diffusion_operator(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="iterate must be one of"):
        diffuse(torch.eye(2), torch.ones(2, 1), iterate="first")


def test_operator_accepts_a_csr_graph():
    x = torch.from_numpy(_points(n=30))
    g = knn_graph(x, 5, symmetrize="mutual", gamma=3.0, normalize="sym", backend="torch")
    torch.testing.assert_close(
        diffusion_operator(to_torch_csr(g), 0.5).to_dense(), diffusion_operator(g, 0.5).to_dense()
    )
