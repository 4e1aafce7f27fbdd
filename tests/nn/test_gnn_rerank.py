"""The GNN re-ranking propagation layer, sparse and dense."""

import torch

from graphrerank.nn import GNNRerankConv, WeightedPropagation, gnn_rerank_graph
from graphrerank.testing import assert_close


def _lists(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, 5, generator=g, dtype=torch.float64), dim=1)
    s, i = (x @ x.T).topk(8, dim=1)
    return i, s


def test_graph_by_hand():
    nbr = torch.tensor([[0, 2], [1, 0], [2, 1]])
    sim = torch.tensor([[1.0, 0.5], [1.0, 0.3], [1.0, 0.2]], dtype=torch.float64)
    a, p = gnn_rerank_graph(nbr, sim, k1=2, k2=2)
    assert a.layout == torch.sparse_csr and p.layout == torch.sparse_csr
    assert_close(a.to_dense(), torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 1]]).double())
    expected = torch.tensor([[1, 0, 0.25], [0.09, 1, 0], [0, 0.04, 1]], dtype=torch.float64)
    assert_close(p.to_dense(), expected)
    _, p1 = gnn_rerank_graph(nbr, sim, k1=2, k2=1)
    assert_close(p1.to_dense(), torch.eye(3, dtype=torch.float64))


def test_one_layer_by_hand():
    nbr = torch.tensor([[0, 2], [1, 0], [2, 1]])
    sim = torch.tensor([[1.0, 0.5], [1.0, 0.3], [1.0, 0.2]], dtype=torch.float64)
    a, p = gnn_rerank_graph(nbr, sim, k1=2, k2=2)
    # A + A^T = [[2, 1, 1], [1, 2, 1], [1, 1, 2]]; row 0 <- row 0 + 0.25 row 2 = [2.25, 1.25, 1.5]
    out = GNNRerankConv()(a, p).to_dense()
    row0 = torch.tensor([2.25, 1.25, 1.5], dtype=torch.float64)
    assert_close(out[0], row0 / row0.norm())
    row2 = torch.tensor([1.04, 1.08, 2.04], dtype=torch.float64)  # row 2 + 0.04 row 1
    assert_close(out[2], row2 / row2.norm())


def test_sparse_equals_dense_and_is_a_message_passing_layer(device):
    nbr, sim = _lists()
    a, p = gnn_rerank_graph(nbr.to(device), sim.to(device), k1=8, k2=4)
    conv = GNNRerankConv()
    assert isinstance(conv, WeightedPropagation)
    sparse, dense = a, a.to_dense()
    for _ in range(3):
        sparse, dense = conv(sparse, p), conv(dense, p)
        assert sparse.layout == torch.sparse_csr and sparse.device.type == device
        assert_close(sparse.to_dense(), dense)
    rows = sparse.to_dense().norm(dim=1)
    assert_close(rows, torch.ones_like(rows))
