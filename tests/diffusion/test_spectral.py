import numpy as np
import pytest
import torch

from graphrerank.diffusion import spectral_embedding, spectral_filter
from graphrerank.graph import knn_graph

from . import reference as ref


def _graph(n=90, k=8, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((3, 6))
    x = c[np.arange(n) % 3] + 0.8 * rng.standard_normal((n, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    g = knn_graph(
        torch.from_numpy(x), k, symmetrize="mutual", gamma=3.0, normalize="sym", backend="torch"
    )
    return x, g, ref.transition(ref.mutual_affinity(x, k, 3.0))


def test_filter_hand_worked():
    lam = torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64)
    torch.testing.assert_close(
        spectral_filter(lam, 0.99),
        torch.tensor([1.0, 0.01 / 0.505, 0.01 / 1.99], dtype=torch.float64),
    )


def test_near_full_rank_is_the_exact_solve_less_one_eigenpair(device):
    x, g, s = _graph()
    g = g.to(device)
    alpha = 0.99
    E, lam = spectral_embedding(g, rank=5000, alpha=alpha)
    assert E.shape == (90, 89) and lam.shape == (89,)  # capped at N - 1
    assert bool((lam[:-1] >= lam[1:]).all())
    w, u = np.linalg.eigh(s)  # ascending: the dropped pair is the smallest
    exact = (1 - alpha) * np.linalg.inv(np.eye(90) - alpha * s)
    dropped = (1 - alpha) / (1 - alpha * w[0]) * np.outer(u[:, 0], u[:, 0])
    np.testing.assert_allclose((E @ E.T).cpu().numpy(), exact - dropped, atol=1e-10)
    np.testing.assert_allclose(lam.cpu().numpy(), w[::-1][:89], atol=1e-12)


def test_low_rank_keeps_the_largest_eigenvalues():
    x, g, s = _graph()
    E, lam = spectral_embedding(g, rank=10, alpha=0.9)
    w, u = np.linalg.eigh(s)
    np.testing.assert_allclose(lam.numpy(), w[::-1][:10], atol=1e-12)
    top = u[:, ::-1][:, :10]
    expected = top @ np.diag(0.1 / (1 - 0.9 * w[::-1][:10])) @ top.T
    np.testing.assert_allclose((E @ E.T).numpy(), expected, atol=1e-10)


def test_scipy_lanczos_agrees_with_the_dense_solver():
    x, g, s = _graph(n=150)
    # a rank between well separated eigenvalues so that the subspace is well defined
    w = np.sort(np.linalg.eigvalsh(s))[::-1]
    r = 12 + int(np.argmax(w[12:40] - w[13:41]))
    dense, lam_d = spectral_embedding(g, rank=r, alpha=0.99, eigensolver="dense")
    lanczos, lam_s = spectral_embedding(g, rank=r, alpha=0.99, eigensolver="scipy")
    np.testing.assert_allclose(lam_s.numpy(), lam_d.numpy(), atol=1e-8)
    torch.testing.assert_close(lanczos @ lanczos.T, dense @ dense.T, atol=1e-7, rtol=0)


def test_float32_graph_gives_float32_embedding():
    x, g, s = _graph()
    g.edge_weight = g.edge_weight.float()
    E, lam = spectral_embedding(g, rank=20)
    assert E.dtype == torch.float32 and lam.dtype == torch.float64


def test_validation():
    x, g, s = _graph()
    with pytest.raises(ValueError, match="eigensolver must be one of"):
        spectral_embedding(g, eigensolver="lobpcg")
    with pytest.raises(ValueError, match="rank must be >= 1"):
        spectral_embedding(g, rank=0)
    with pytest.raises(ValueError, match="alpha must be < 1"):
        spectral_embedding(g, alpha=1.0)


def test_scipy_refuses_cuda_graphs():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x, g, s = _graph()
    with pytest.raises(ValueError, match="runs on the CPU"):
        spectral_embedding(g.to("cuda"), eigensolver="scipy")


@pytest.mark.parametrize(
    ("limit", "high", "rank", "expected"),
    [
        (200, 20_000, 5, "dense"),  # small graph: always dense
        (50, 20_000, 5, "scipy"),  # above the limit, low rank: Lanczos
        (50, 20_000, 30, "dense"),  # above the limit, rank >= N / 10: one dense decomposition
        (50, 100, 30, "scipy"),  # ... unless the graph is too large for a dense matrix
    ],
)
def test_auto_eigensolver_choice(monkeypatch, limit, high, rank, expected):
    import graphrerank.diffusion.spectral as spectral

    _, g, _ = _graph(n=150)
    monkeypatch.setattr(spectral, "DENSE_EIGEN_LIMIT", limit)
    monkeypatch.setattr(spectral, "DENSE_EIGEN_HIGH_RANK_LIMIT", high)
    calls = []
    real_eigh = torch.linalg.eigh

    def eigh(*args, **kwargs):
        calls.append("dense")
        return real_eigh(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    import scipy.sparse.linalg as spla

    real_eigsh = spla.eigsh

    def eigsh(*args, **kwargs):
        calls.append("scipy")
        return real_eigsh(*args, **kwargs)

    monkeypatch.setattr(spla, "eigsh", eigsh)
    spectral_embedding(g, rank=rank, alpha=0.99)
    assert calls == [expected]
