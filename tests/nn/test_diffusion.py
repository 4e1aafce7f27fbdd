import numpy as np
import pytest
import torch

from graphrerank.diffusion import diffuse, diffusion_operator
from graphrerank.graph import knn_graph
from graphrerank.nn import DiffusionPropagation, adjacency


def _setup(device, n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1)
    graph = knn_graph(x, 9, symmetrize="mutual", gamma=3.0, normalize="sym", backend="torch")
    y = torch.zeros(n, 3, dtype=torch.float64)
    y[0, 0], y[5, 1], y[6, 1], y[50, 2] = 1.0, 0.5, 0.25, 2.0
    return graph.to(device), y.to(device)


def test_iteration_converges_to_one_minus_alpha_times_the_solve(device):
    graph, y = _setup(device)
    alpha = 0.6
    exact = diffuse(diffusion_operator(graph, alpha), y, tol=1e-14, max_iter=200).solution
    layer = DiffusionPropagation(alpha=alpha, num_iters=80)  # error ~ 0.6^80 ~ 2e-18
    f = layer(y, adjacency(graph))
    torch.testing.assert_close(f, (1 - alpha) * exact, rtol=1e-10, atol=1e-12)
    assert f.device.type == device


def test_iterates_follow_the_recursion_and_paths_agree(device):
    graph, y = _setup(device)
    S = adjacency(graph).to_dense()
    f = y.clone()
    for _ in range(3):
        f = 0.99 * S @ f + 0.01 * y
    layer = DiffusionPropagation(alpha=0.99, num_iters=3)
    torch.testing.assert_close(layer(y, adjacency(graph)), f)
    torch.testing.assert_close(layer(y, graph.edge_index, graph.edge_weight), f)


def test_reference_alpha_needs_many_iterations():
    graph, y = _setup("cpu")
    exact = 0.01 * diffuse(diffusion_operator(graph, 0.99), y, tol=1e-14, max_iter=300).solution
    err = [
        float((DiffusionPropagation(0.99, t)(y, adjacency(graph)) - exact).abs().max())
        for t in (5, 40, 160)
    ]
    # starting from y, the error has no part along eigenvalue 1 and shrinks like (0.99 l2)^t
    assert err[0] > err[1] > err[2] and err[2] < 1e-4 * err[0]


def test_vector_input_f0_and_zero_iterations():
    graph, y = _setup("cpu")
    adj = adjacency(graph)
    layer = DiffusionPropagation(alpha=0.5, num_iters=2)
    torch.testing.assert_close(layer(y[:, 1], adj), layer(y, adj)[:, 1])
    assert torch.equal(DiffusionPropagation(0.5, 0)(y, adj), y)
    f0 = torch.ones_like(y)
    S = adj.to_dense()
    expected = 0.5 * S @ (0.5 * S @ f0 + 0.5 * y) + 0.5 * y
    torch.testing.assert_close(layer(y, adj, f0=f0), expected)
    assert "alpha=0.5" in repr(layer)


def test_validation():
    with pytest.raises(ValueError, match="alpha must be < 1"):
        DiffusionPropagation(alpha=1.0)
    with pytest.raises(ValueError, match="num_iters must be >= 0"):
        DiffusionPropagation(num_iters=-1)
    graph, y = _setup("cpu")
    with pytest.raises(ValueError, match="f0 must have the shape"):
        DiffusionPropagation()(y, adjacency(graph), f0=torch.zeros(3))


def test_gradients_flow_to_the_query_vector():
    graph, y = _setup("cpu")
    y = y.clone().requires_grad_(True)
    DiffusionPropagation(0.9, 5)(y, adjacency(graph)).sum().backward()
    assert y.grad is not None and np.isfinite(y.grad.numpy()).all()
