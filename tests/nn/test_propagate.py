import torch

from graphrerank.graph import knn_graph, to_torch_csr
from graphrerank.nn import WeightedPropagation, adjacency


def test_fused_and_per_edge_paths_agree(device):
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(80, 6, generator=g), dim=1).to(device)
    graph = knn_graph(x, 6, symmetrize="union", gamma=2.0, normalize="sym", backend="torch")
    layer = WeightedPropagation()
    per_edge = layer(x, graph.edge_index, graph.edge_weight)
    fused = layer(x, adjacency(graph))
    dense = to_torch_csr(graph).to_dense() @ x
    torch.testing.assert_close(per_edge, dense)
    torch.testing.assert_close(fused, dense)
    assert fused.device.type == device


def test_adjacency_accepts_sparse_tensors():
    a = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    assert adjacency(a.to_sparse()).layout == torch.sparse_csr
    csr = a.to_sparse_csr()
    assert adjacency(csr) is csr
