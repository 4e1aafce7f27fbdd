import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from graphrerank.diffusion import conjugate_gradient
from graphrerank.graph import knn_graph, to_scipy, to_torch_csr


def _system(n=150, alpha=0.99, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, 10, generator=g, dtype=torch.float64), dim=1)
    graph = knn_graph(x, 10, symmetrize="mutual", gamma=3.0, normalize="sym", backend="torch")
    S = to_scipy(graph)
    L = (sp.eye(n) - alpha * S).tocsr()
    A = torch.eye(n, dtype=torch.float64) - alpha * to_torch_csr(graph).to_dense()
    return L, A.to(dtype), g


@pytest.mark.parametrize("max_iter", [1, 5, 20])
def test_matches_scipy_cg_column_by_column(max_iter):
    L, A, g = _system()
    B = torch.rand(150, 7, generator=g, dtype=torch.float64)
    B[:, 3] = 0  # a zero column is solved by x = 0 at once
    out = conjugate_gradient(A.to_sparse_csr(), B, tol=1e-6, max_iter=max_iter)
    for j in range(7):
        ref, _ = spla.cg(L, B[:, j].numpy(), rtol=1e-6, atol=0.0, maxiter=max_iter)
        np.testing.assert_allclose(out.solution[:, j].numpy(), ref, rtol=1e-9, atol=1e-12)
    assert out.iterations[3] == 0
    assert out.converged[3]


def test_reference_setting_does_not_converge_at_alpha_099():
    L, A, g = _system(n=400, alpha=0.99)
    B = torch.zeros(400, 3, dtype=torch.float64)
    B[torch.arange(3), torch.arange(3)] = 1.0
    out = conjugate_gradient(A.to_sparse_csr(), B, tol=1e-6, max_iter=20)
    assert (out.iterations == 20).all()
    assert not out.converged.any(), "20 steps cannot reach 1e-6 at condition ~199"
    exact = torch.linalg.solve(A, B)
    assert (out.solution - exact).abs().max() > 1e-6


def test_converges_to_dense_solve(device):
    L, A, g = _system(alpha=0.9)
    B = torch.rand(150, 4, generator=g, dtype=torch.float64)
    out = conjugate_gradient(A.to_sparse_csr().to(device), B.to(device), tol=1e-12, max_iter=500)
    assert out.converged.all()
    assert (out.residuals <= 1e-11).all()
    torch.testing.assert_close(out.solution.cpu(), torch.linalg.solve(A, B), rtol=1e-9, atol=1e-10)
    assert out.solution.device.type == device


def test_float32_dense_and_callable_operators():
    L, A, g = _system(alpha=0.9)
    B = torch.rand(150, 3, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(A, B)
    A32, B32 = A.float(), B.float()
    dense = conjugate_gradient(A32, B32, tol=1e-6, max_iter=300)
    call = conjugate_gradient(lambda X: A32 @ X, B32, tol=1e-6, max_iter=300)
    assert dense.solution.dtype == torch.float32
    torch.testing.assert_close(dense.solution, call.solution)
    torch.testing.assert_close(dense.solution.double(), exact, rtol=1e-4, atol=1e-5)


def test_vector_rhs_and_x0():
    L, A, g = _system(alpha=0.5)
    b = torch.rand(150, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(A, b)
    out = conjugate_gradient(A, b, x0=exact, tol=1e-10, max_iter=50)
    assert out.solution.shape == (150,)
    assert out.iterations.tolist() == [0], "an exact initial guess needs no iteration"


def test_return_best_keeps_lowest_residual_iterate():
    L, A, g = _system(n=300, alpha=0.99, seed=2)
    B = torch.rand(300, 5, generator=g, dtype=torch.float64)
    last = conjugate_gradient(A, B, tol=1e-10, max_iter=20)
    best = conjugate_gradient(A, B, tol=1e-10, max_iter=20, return_best=True)
    # keep the iterate of least recursive residual: recompute every iterate to check
    for j in range(5):
        rs = []
        for it in range(1, 21):
            xi = conjugate_gradient(A, B[:, j], tol=1e-10, max_iter=it).solution
            rs.append((xi, torch.linalg.vector_norm(B[:, j] - A @ xi)))
        want = min(rs, key=lambda t: t[1])[0]
        torch.testing.assert_close(best.solution[:, j], want, rtol=1e-6, atol=1e-9)
    assert (best.residuals <= last.residuals + 1e-12).all()


def test_errors():
    A = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"square \(4, 4\)"):
        conjugate_gradient(A, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        conjugate_gradient(A, torch.ones(3))
    with pytest.raises(TypeError, match="floating point"):
        conjugate_gradient(A, torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="not positive definite"):
        conjugate_gradient(-A, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_iter must be >= 0"):
        conjugate_gradient(A, torch.ones(3, dtype=torch.float64), max_iter=-1)


@pytest.mark.parametrize("return_best", [False, True])
@pytest.mark.parametrize("max_iter", [3, 20])
def test_single_column_path_matches_the_block_path_and_scipy(return_best, max_iter):
    L, A, g = _system(alpha=0.99)
    B = torch.rand(150, 3, generator=g, dtype=torch.float64)
    block = conjugate_gradient(A.to_sparse_csr(), B, max_iter=max_iter, return_best=return_best)
    for j in range(3):
        one = conjugate_gradient(
            A.to_sparse_csr(), B[:, j], max_iter=max_iter, return_best=return_best
        )
        torch.testing.assert_close(one.solution, block.solution[:, j], rtol=1e-10, atol=1e-13)
        assert one.iterations.tolist() == [int(block.iterations[j])]
        assert one.converged.tolist() == [bool(block.converged[j])]
        if not return_best:
            ref, _ = spla.cg(L, B[:, j].numpy(), rtol=1e-6, atol=0.0, maxiter=max_iter)
            np.testing.assert_allclose(one.solution.numpy(), ref, rtol=1e-9, atol=1e-12)
    # a converging column stops early on both paths
    easy = conjugate_gradient(A.to_sparse_csr(), B[:, :1], tol=1e-3, max_iter=500)
    assert easy.converged.all() and 0 < int(easy.iterations[0]) < 500


@pytest.mark.parametrize("n", [1, 3])
def test_tiny_right_hand_sides_are_solved_not_reported_converged_at_zero(n):
    # squared norms of 1e-25 underflow in float32: the column must still be solved
    A = (torch.eye(n) * 2.0).to_sparse_csr()
    B = torch.full((n, 2), 1e-25)
    B[:, 1] = 3e-30
    out = conjugate_gradient(A, B, tol=1e-6, max_iter=20)
    torch.testing.assert_close(out.solution, B / 2, rtol=1e-5, atol=0)
    assert out.converged.all()
    assert (out.residuals <= 1e-5).all()
    v = conjugate_gradient(A, torch.full((n,), 1e-25), tol=1e-6, max_iter=20)
    torch.testing.assert_close(v.solution, torch.full((n,), 5e-26), rtol=1e-5, atol=0)
