"""Fast spectral ranking against dense float64 eigen-decompositions."""

import numpy as np
import pytest
import torch

from graphrerank.rerankers import Diffusion, FastSpectralRanking, fsr_rerank
from tests.diffusion import reference as ref


def _data(n=70, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((4, 6)) * 2
    x = c[np.arange(n) % 4] + 0.8 * rng.standard_normal((n, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:5] + 0.2 * rng.standard_normal((5, 6))
    return x, q / np.linalg.norm(q, axis=1, keepdims=True)


def _dense_fsr(x, queries, *, k, kq, rank, alpha=0.99):
    s = ref.transition(ref.mutual_affinity(x, k, 3.0))
    w, u = np.linalg.eigh(s)
    w, u = w[::-1][:rank], u[:, ::-1][:, :rank]
    m = u @ np.diag((1 - alpha) / (1 - alpha * w)) @ u.T
    return np.stack([m @ ref.ymake(x, np.atleast_2d(qv), kq, 3.0) for qv in queries])


def _scores_by_item(out, n):
    f = torch.empty(out.scores.shape[0], n, dtype=out.scores.dtype)
    f.scatter_(1, out.indices.cpu(), out.scores.cpu())
    return f.numpy()


@pytest.mark.parametrize("rank", [8, 69])
def test_scores_match_the_dense_eigen_decomposition(rank, device):
    x, q = _data()
    r = FastSpectralRanking(kd=8, kq=4, rank=rank, backend="torch")
    out = r.fit(torch.from_numpy(x).to(device)).rerank(torch.from_numpy(q).to(device), k=70)
    assert r.embedding_.shape == (70, rank) and out.scores.device.type == device
    expected = _dense_fsr(x, list(q), k=8, kq=4, rank=rank)
    np.testing.assert_allclose(_scores_by_item(out, 70), expected, atol=1e-12)
    assert bool((out.scores[:, :-1] >= out.scores[:, 1:]).all())


def test_near_full_rank_approaches_the_exact_solve():
    x, q = _data()
    xt, qt = torch.from_numpy(x), torch.from_numpy(q)
    fsr = FastSpectralRanking(kd=8, kq=4, backend="torch").fit(xt).rerank(qt, k=70)  # rank 69
    exact = Diffusion(kd=8, kq=4, tol=1e-14, max_iter=1000, backend="torch").fit(xt)
    exact = exact.rerank(qt, k=70)
    f_fsr = _scores_by_item(fsr, 70)
    f_exact = 0.01 * _scores_by_item(exact, 70)  # FSR is (1 - alpha) times the solve
    # only the smallest eigenpair is missing: its weight h = 0.01 / (1 - 0.99 l_min) <= 0.01
    assert np.abs(f_fsr - f_exact).max() < 0.01 * np.abs(f_exact).max()
    top = 10
    np.testing.assert_array_equal(fsr.indices[:, :top].numpy(), exact.indices[:, :top].numpy())


def test_regional_queries_and_all_vs_all():
    x, q = _data()
    r = FastSpectralRanking(kd=8, kq=4, rank=30, backend="torch").fit(torch.from_numpy(x))
    queries = [q[:2], q[2:3]]
    out = r.rerank([torch.from_numpy(v) for v in queries], k=70)
    expected = _dense_fsr(x, queries, k=8, kq=4, rank=30)
    np.testing.assert_allclose(_scores_by_item(out, 70), expected, atol=1e-12)
    every = r.rerank(None, k=70)
    np.testing.assert_allclose(
        _scores_by_item(every, 70), _dense_fsr(x, list(x), k=8, kq=4, rank=30), atol=1e-12
    )


def test_scipy_and_dense_eigensolvers_rank_alike():
    x, q = _data(n=120)
    xt, qt = torch.from_numpy(x), torch.from_numpy(q)
    dense = FastSpectralRanking(kd=8, kq=4, rank=40, eigensolver="dense", backend="torch")
    lanczos = FastSpectralRanking(kd=8, kq=4, rank=40, eigensolver="scipy", backend="torch")
    a = dense.fit(xt).rerank(qt, k=20)
    b = lanczos.fit(xt).rerank(qt, k=20)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-8, rtol=0)


def test_function_twin():
    x, q = _data()
    xt, qt = torch.from_numpy(x), torch.from_numpy(q)
    a = fsr_rerank(qt, xt, k=5, kd=8, kq=4, rank=20, backend="torch")
    b = FastSpectralRanking(kd=8, kq=4, rank=20, backend="torch").fit(xt).rerank(qt, k=5)
    assert torch.equal(a.indices, b.indices)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"rank": 0}, "rank must be >= 1"),
        ({"eigensolver": "arpack"}, "eigensolver must be one of"),
        ({"alpha": -0.1}, "alpha must be >= 0"),
        ({"ties": "none"}, "ties must be one of"),
    ],
)
def test_bad_settings(settings, match):
    x, _ = _data()
    with pytest.raises(ValueError, match=match):
        FastSpectralRanking(kd=8, **settings).fit(torch.from_numpy(x))


def test_unnormalised_database():
    x, _ = _data()
    with pytest.raises(ValueError, match="database must be L2-normalised"):
        FastSpectralRanking(kd=8).fit(torch.from_numpy(3 * x))
