import numpy as np
import pytest
import torch

from graphrerank.diffusion import truncated_diffuse, truncated_normalized, truncated_operator
from graphrerank.graph import knn_graph, to_torch_csr

from . import reference as ref


def _setup(n=70, k=8, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((5, 6))
    x = c[np.arange(n) % 5] + 0.7 * rng.standard_normal((n, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    g = knn_graph(torch.from_numpy(x), k, symmetrize="mutual", gamma=3.0, backend="torch")
    return x, to_torch_csr(g), ref.mutual_affinity(x, k, 3.0)


def test_blocks_are_renormalised_sub_graphs(device):
    x, A, a = _setup()
    rng = np.random.default_rng(3)
    subsets = np.stack([rng.permutation(70)[:25] for _ in range(3)])
    subsets[2, 20:] = -1  # a padded block
    L = truncated_operator(A.to(device), torch.from_numpy(subsets).to(device), alpha=0.9)
    assert L.shape == (75, 75) and L.device.type == device
    dense = L.to_dense().cpu().numpy()
    expected = np.eye(75)
    for b, sub in enumerate(subsets):
        valid = sub[sub >= 0]
        blk = np.eye(25)
        m = len(valid)
        blk[:m, :m] -= 0.9 * ref.transition(a[np.ix_(valid, valid)])
        expected[b * 25 : (b + 1) * 25, b * 25 : (b + 1) * 25] = blk
    np.testing.assert_allclose(dense, expected, rtol=1e-12, atol=1e-14)
    S = truncated_normalized(A.to(device), torch.from_numpy(subsets).to(device)).to_dense().cpu()
    np.testing.assert_allclose(np.eye(75) - 0.9 * S.numpy(), expected, rtol=1e-12, atol=1e-14)


def test_hand_worked_block():
    # star 0 - {1, 2}; the subset {1, 0} keeps edge 0-1 only and re-normalises it to 1
    A = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).to_sparse_csr()
    L = truncated_operator(A, torch.tensor([[1, 0], [2, -1]]), alpha=0.5).to_dense()
    expected = torch.tensor([[1.0, -0.5, 0, 0], [-0.5, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    torch.testing.assert_close(L, expected)


def test_more_subsets_than_nodes():
    # subsets is (B, T), one row per query: B is free (the fuzz harness's "length+1" and
    # "length-1" of subsets are valid calls); 5 queries on the 3-node star 0 - {1, 2}
    A = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).to_sparse_csr()
    subsets = torch.tensor([[1, 0], [2, -1], [0, 2], [1, 2], [0, 1]])
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # an edge re-normalised on its own
    blocks = [swap, torch.zeros(2, 2), swap, torch.zeros(2, 2), swap]  # {1, 2}: no edge
    S = truncated_normalized(A, subsets).to_dense()
    torch.testing.assert_close(S, torch.block_diag(*blocks))
    L = truncated_operator(A, subsets, alpha=0.5).to_dense()
    torch.testing.assert_close(L, torch.eye(10) - 0.5 * torch.block_diag(*blocks))


@pytest.mark.parametrize("best", [True, False])
def test_solve_matches_per_query_transcription(best, device):
    x, A, a = _setup()
    queries = [0, 13, 41, 69]
    t = 30
    subsets, ys = [], []
    for q in queries:
        first = x @ x[q]
        sub = np.argsort(-first, kind="stable")[:t]
        subsets.append(sub)
        ys.append(ref.ymake(x[sub], x[q], 5, 3.0))
    out = truncated_diffuse(
        A.to(device),
        torch.from_numpy(np.stack(subsets)).to(device),
        torch.from_numpy(np.stack(ys, 1)).to(device),
        alpha=0.99,
        iterate="best" if best else "last",
    )
    assert out.solution.shape == (t, 4)
    for b, sub in enumerate(subsets):
        lap = np.eye(t) - 0.99 * ref.transition(a[np.ix_(sub, sub)])
        expected = ref.pcg(lap, ys[b], 1e-6, 20, best=best)
        np.testing.assert_allclose(
            out.solution[:, b].cpu().numpy(), expected, rtol=1e-9, atol=1e-12
        )


def test_queries_stop_independently():
    # a query whose block is a single isolated node converges at once; others go on
    x, A, a = _setup()
    sub = torch.tensor([[0, 1, 2, 3, 4, 5], [7, -1, -1, -1, -1, -1]])
    y = torch.zeros(6, 2, dtype=torch.float64)
    y[0, 0] = 1.0
    y[0, 1] = 0.5
    out = truncated_diffuse(A, sub, y, alpha=0.99, tol=1e-10, max_iter=50)
    assert out.iterations[1] == 1 and out.converged.all()
    assert out.solution[0, 1] == pytest.approx(0.5)
    assert (out.solution[1:, 1] == 0).all()


def test_validation():
    x, A, a = _setup()
    with pytest.raises(ValueError, match="subsets must be a"):
        truncated_operator(A, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="y must have shape"):
        truncated_diffuse(
            A, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.float64)
        )
    with pytest.raises(ValueError, match="one dtype"):  # subsets distinct within a row
        truncated_diffuse(A, torch.arange(6).view(2, 3), torch.zeros(3, 2))
