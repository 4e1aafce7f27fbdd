import pytest
import torch
from torch.nn.functional import normalize

from graphrerank.graph import knn_graph, to_torch_csr
from graphrerank.nn import ExpansionPropagation, bipartite_adjacency


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def test_bipartite_adjacency_matches_a_dense_build(device):
    idx = torch.tensor([[3, 0, -1], [1, 2, 3], [-1, -1, -1]], device=device)
    val = torch.tensor([[0.5, 0.25, 9.0], [1.0, 2.0, 3.0], [7.0, 7.0, 7.0]], device=device)
    adj = bipartite_adjacency(idx, val, 4)
    assert adj.layout == torch.sparse_csr and adj.shape == (3, 4) and adj.device.type == device
    dense = torch.zeros(3, 4)
    dense[0, 3], dense[0, 0] = 0.5, 0.25
    dense[1, 1:] = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(adj.to_dense().cpu(), dense)


def test_bipartite_adjacency_refuses_repeats_and_bad_shapes():
    with pytest.raises(ValueError, match="must not repeat a source"):
        bipartite_adjacency(torch.tensor([[1, 1]]), torch.ones(1, 2), 3)
    with pytest.raises(ValueError, match="one shape"):
        bipartite_adjacency(torch.tensor([[1, 2]]), torch.ones(1, 3), 3)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 3.0])
def test_expansion_matches_the_formula_on_a_knn_graph(alpha, device):
    """x'_i = norm(x_i + sum_j max(s_ij, 0)^alpha x_j), by hand in float64."""
    x = _unit(30, 5, 0)
    graph = knn_graph(x, 4, k_includes_self=False, gamma=None, backend="torch")
    expected = x.clone()
    src, dst = graph.edge_index
    for s, t, w in zip(src.tolist(), dst.tolist(), graph.edge_weight.tolist()):
        expected[t] += max(w, 0.0) ** alpha * x[s]
    expected = normalize(expected, dim=1)
    layer = ExpansionPropagation(alpha=alpha)
    xd = x.to(device)
    fused = layer(xd, to_torch_csr(graph).to(device))
    per_edge = layer(xd, graph.edge_index.to(device), graph.edge_weight.to(device))
    torch.testing.assert_close(fused.cpu(), expected)
    torch.testing.assert_close(per_edge.cpu(), expected)
    assert fused.device.type == device


def test_bipartite_expansion_and_clamping():
    db = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    idx = torch.tensor([[1, 0, 2]])
    sims = q @ db.T  # 0.8, 0.6, -0.6
    adj = bipartite_adjacency(idx, sims.gather(1, idx), 3)
    # alpha = 3: the negative similarity counts 0
    v = q[0] + 0.8**3 * db[1] + 0.6**3 * db[0]
    out = ExpansionPropagation(alpha=3.0, normalize=None)((db, q), adj)
    torch.testing.assert_close(out[0], v)
    # alpha = 0: every neighbour weighs 1, the negative one too (plain AQE sum)
    out0 = ExpansionPropagation(alpha=0.0)((db, q), adj)
    torch.testing.assert_close(out0[0], normalize(q[0] + db.sum(0), dim=0))


def test_expansion_errors():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        ExpansionPropagation(alpha=-1.0)
    with pytest.raises(ValueError, match="normalize must be one of"):
        ExpansionPropagation(normalize="l1")
    x = _unit(4, 2, 0)
    adj = bipartite_adjacency(torch.tensor([[1], [0]]), torch.ones(2, 1, dtype=x.dtype), 4)
    with pytest.raises(ValueError, match=r"adjacency must be \(3, 4\)"):
        ExpansionPropagation()((x, x[:3]), adj)
    with pytest.raises(ValueError, match="edge_weight"):
        ExpansionPropagation()(x, torch.tensor([[0], [1]]))
