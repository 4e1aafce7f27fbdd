"""Score fusion, shortlist re-ordering with the rest kept, and the (lambda, gamma) search."""

import itertools

import numpy as np
import pytest
import torch

from graphrerank.models import fuse_scores, rerank_shortlist, tune_fusion


def test_fuse_scores_formula():
    s = torch.tensor([0.9, 0.2, -0.1], dtype=torch.float64)
    logit = torch.tensor([-1.0, 0.5, 3.0], dtype=torch.float64)
    lam, gam = 0.3, 2.0
    expected = [
        lam * a + (1 - lam) / (1 + np.exp(-gam * b)) for a, b in zip(s.tolist(), logit.tolist())
    ]
    np.testing.assert_allclose(fuse_scores(s, logit, lam, gam).numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(fuse_scores(s, logit, 1.0, 5.0), s)


def test_fuse_scores_keeps_padding_and_checks_settings():
    out = fuse_scores(torch.tensor([0.5, 0.5]), torch.tensor([0.0, float("-inf")]))
    assert out[1] == float("-inf")
    with pytest.raises(ValueError, match="lambda_value must be <= 1"):
        fuse_scores(torch.zeros(1), torch.zeros(1), 1.5)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        fuse_scores(torch.zeros(1), torch.zeros(1), 0.5, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        fuse_scores(torch.zeros(2), torch.zeros(3))


def test_rerank_shortlist_reorders_the_top_and_keeps_the_rest(device):
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4, 9, generator=g).sort(dim=1, descending=True).values.to(device)
    indices = torch.stack([torch.randperm(20, generator=g)[:9] for _ in range(4)]).to(device)
    logits = torch.randn(4, 5, generator=g).to(device)
    out = rerank_shortlist(scores, indices, logits, 0.4, 1.5)
    assert out.scores.device.type == device
    for q in range(4):
        fused = 0.4 * scores[q, :5] + 0.6 * torch.sigmoid(1.5 * logits[q])
        order = sorted(range(5), key=lambda j: -float(fused[j]))
        assert out.indices[q, :5].tolist() == indices[q, order].tolist()
        torch.testing.assert_close(out.scores[q, :5], fused[order])
        assert out.indices[q, 5:].tolist() == indices[q, 5:].tolist()  # the rest keeps its order
    assert bool((out.scores[:, :-1] >= out.scores[:, 1:]).all())


def test_rerank_shortlist_puts_padding_last():
    scores = torch.tensor([[0.9, float("-inf"), 0.5, 0.4]])
    indices = torch.tensor([[2, -1, 0, 1]])
    out = rerank_shortlist(scores, indices, torch.tensor([[1.0, 2.0, 3.0]]), 0.5, 1.0)
    assert out.indices.tolist() == [[2, 0, 1, -1]]  # fused 0.816, 0.726, then the rest
    assert out.scores[0, -1] == float("-inf")


def test_rerank_shortlist_bad_shapes():
    with pytest.raises(ValueError, match="logits must be"):
        rerank_shortlist(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one shape"):
        rerank_shortlist(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 2))


def _map_numpy(indices, labels):
    """Leave-one-out step AP over full rankings (independent transcription)."""
    aps = []
    for q, row in enumerate(indices):
        row = [j for j in row if j != q]
        hits = np.array([labels[j] == labels[q] for j in row], dtype=float)
        if hits.sum() == 0:
            continue
        prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append((prec * hits).sum() / hits.sum())
    return float(np.mean(aps))


def test_tune_fusion_finds_the_grid_optimum():
    g = torch.Generator().manual_seed(1)
    n = 12
    labels = torch.arange(n) % 3
    x = torch.nn.functional.normalize(torch.randn(n, 5, generator=g), dim=1)
    scores, indices = (x @ x.T).sort(dim=1, descending=True)
    # logits that know the labels, noisily
    same = (labels[indices[:, :6]] == labels[:, None]).float()
    logits = 2 * same - 1 + 0.8 * torch.randn(n, 6, generator=g)
    lambdas, gammas = [0.0, 0.3, 0.7, 1.0], [0.5, 2.0]
    best = tune_fusion(scores, indices, logits, labels, leave_one_out=True, lambdas=lambdas,
                       gammas=gammas)  # fmt: skip
    grid = {}
    for lam, gam in itertools.product(lambdas, gammas):
        fused = lam * scores[:, :6] + (1 - lam) * torch.sigmoid(gam * logits)
        order = fused.argsort(dim=1, descending=True, stable=True)
        ranking = torch.cat([indices[:, :6].gather(1, order), indices[:, 6:]], dim=1)
        grid[lam, gam] = _map_numpy(ranking.tolist(), labels.tolist())
    top = max(grid.values())
    assert best.map == pytest.approx(top, abs=1e-12)
    assert grid[best.lambda_value, best.gamma] == pytest.approx(top, abs=1e-12)
    np.testing.assert_allclose(best.grid.numpy().ravel(), list(grid.values()), atol=1e-12)
    assert best.map > grid[1.0, 0.5]  # the logits help here


def test_tune_fusion_bad_grids():
    z = torch.zeros(2, 2)
    i = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="at least one value"):
        tune_fusion(z, i, z, torch.tensor([0, 0]), lambdas=[])
    with pytest.raises(ValueError, match="lambdas must be <= 1"):
        tune_fusion(z, i, z, torch.tensor([0, 0]), lambdas=[2.0])
