"""The online step of offline diffusion on dense batches: one lexicographic (score,
first-stage similarity) ranking per row against a float64 ranking written out by hand, and
against the sparse path (rank_csr / _rank_rows) it replaces, end to end."""

import numpy as np
import pytest
import torch

import graphrerank.rerankers.offline as mod
from graphrerank.diffusion.offline import _query_rows
from graphrerank.graph import rank_csr
from graphrerank.graph.index import database_index
from graphrerank.rerankers import OfflineDiffusion
from graphrerank.typing import RerankResult


def _lex(impl):
    def rank(F, sims, k):
        b = F.shape[0]
        out = RerankResult(torch.empty(b, k), torch.empty(b, k, dtype=torch.long))
        impl(F, sims, k, out)
        return out

    return rank


LEX = {"numpy": _lex(mod._lex_top_numpy), "torch": _lex(mod._lex_top_torch)}


def by_hand(F, sims, k):
    """Each row sorted by (score, similarity), both descending, in float64 (-0.0 == 0.0)."""
    f, s = F.double().numpy(), sims.double().numpy()
    order = [np.lexsort((-s[i], -f[i]))[:k] for i in range(len(f))]
    return np.array(order)


def scores_and_sims(b=6, n=40, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    F = torch.rand(b, n, generator=g).round(decimals=1)  # equal scores in every row
    F[torch.rand(b, n, generator=g) < 0.6] = 0
    F[0, :6] = -0.0  # -0.0 ranks as a zero among zeros
    F[1] = -F[1]  # no positive score: the zeros first, then the negatives
    F[2, :3] = torch.tensor([-0.3, -0.1, -0.2])
    F[3] = torch.rand(n, generator=g) + 0.5  # all positive: more than k of them
    return F, q @ x.T, q, x


@pytest.mark.parametrize("how", ["numpy", "torch"])
@pytest.mark.parametrize("k", [1, 7, 25, 39, 40])
@pytest.mark.parametrize("entries", [None, 80])  # one block / 2 rows a block
def test_lexicographic_ranking_matches_the_hand_ranking(how, k, entries, monkeypatch):
    if entries:
        monkeypatch.setattr(mod, "_KEY_ENTRIES", entries)
    F, sims, _, _ = scores_and_sims()
    want = by_hand(F, sims, k)
    got = LEX[how](F.clone(), sims.clone(), k)
    np.testing.assert_array_equal(got.indices.numpy(), want)
    expected = F.gather(1, torch.from_numpy(want)) + 0.0  # stored -0.0 comes back as 0.0
    assert torch.equal(got.scores, expected)
    assert not bool(torch.signbit(got.scores[got.scores == 0]).any())
    assert got.scores.dtype == torch.float32 and got.indices.dtype == torch.long


def test_hand_worked_lexicographic_ranking():
    # row 0: two equal scores 0.5 (similarity orders them), stored -0.0 and unstored zeros by
    # similarity, the negative last; row 1: no positive score
    F = torch.tensor([[0.5, 0.0, 0.5, -0.0, -0.25, 0.0], [0.0, -0.5, 0.0, -0.25, -0.0, 0.0]])
    sims = torch.tensor([[0.1, 0.9, 0.3, 0.95, 0.99, -0.5], [0.2, 0.9, -0.1, 0.1, 0.3, 0.25]])
    for how, fn in LEX.items():
        out = fn(F.clone(), sims.clone(), 6)
        assert out.indices.tolist() == [[2, 0, 3, 1, 5, 4], [4, 5, 0, 2, 3, 1]], how
        assert out.scores.tolist() == [
            [0.5, 0.5, 0.0, 0.0, 0.0, -0.25],
            [0.0, 0.0, 0.0, 0.0, -0.25, -0.5],
        ]


@pytest.mark.parametrize("k", [3, 6, 8])
def test_lexicographic_ranking_equals_rank_csr_on_stored_zeros_and_negatives(k):
    # the rows of test_short_rows_with_negative_and_stored_zero_scores_equal_rank_csr
    F = torch.tensor(
        [
            [0.5, 0.0, -0.2, 0.0, 0.0, 0.3, -0.0, 0.0],
            [0.0, -0.1, 0.0, 0.0, -0.3, 0.0, 0.0, 0.2],
            [-0.5, -0.1, -0.2, -0.4, -0.3, -0.6, -0.7, -0.8],
        ]
    )
    g = torch.Generator().manual_seed(21)
    q = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    x = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1)
    index = database_index(x, "exact", "torch")
    csr = torch.sparse_csr_tensor(torch.arange(0, 25, 8), torch.arange(8).repeat(3), F.reshape(-1))
    ref = rank_csr(csr, k, q, x, index, "similarity")
    for how, fn in LEX.items():
        out = fn(F.clone(), q @ x.T, k)
        assert torch.equal(out.indices, ref.indices), how
        assert torch.equal(out.scores, ref.scores + 0.0), how


def test_dense_query_rows_equal_the_sparse_ones():
    g = torch.Generator().manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(90, 6, generator=g), dim=1)
    m = OfflineDiffusion(kd=6, kq=4, truncation=25, backend="torch").fit(x)
    q = torch.nn.functional.normalize(torch.randn(11, 6, generator=g), dim=1)
    knn = m.index_.search(q, 4)
    sparse = _query_rows(m.C_, knn.scores, knn.indices, m.gamma)
    dense = _query_rows(m.C_, knn.scores, knn.indices, m.gamma, dense=True)
    assert dense.layout == torch.strided and dense.dtype == torch.float32
    assert torch.equal(dense, sparse.to_dense())


def _float32_clusters(n=150, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, d, generator=g) * 2
    x = centres[torch.randint(0, 6, (n,), generator=g)] + torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


@pytest.mark.parametrize("k", [5, 40, 120, 150])
@pytest.mark.parametrize("store", [False, True])
def test_dense_online_step_equals_the_sparse_path(k, store, tmp_path, monkeypatch):
    x, q = _float32_clusters(), _float32_clusters(n=30, seed=1)
    settings = {"kd": 8, "kq": 5, "truncation": 30, "backend": "torch"}
    if store:
        settings["store"] = str(tmp_path / "store")
    m = OfflineDiffusion(**settings).fit(x)
    calls = []
    real = mod._rank_lexicographic

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(mod, "_rank_lexicographic", spy)
    monkeypatch.setattr(mod, "_RANK_ENTRIES", 2000)  # batches of 13 queries
    new = m.rerank(q, k)
    assert calls  # the dense path ran
    monkeypatch.setattr(mod, "_ranks_densely", lambda *args: False)
    old = m.rerank(q, k)
    assert len(calls) == 3  # (not called again)
    assert torch.equal(new.indices, old.indices)
    assert torch.equal(new.scores, old.scores)
    # a query ranked alone gets the same list
    one = m.rerank(q[3:4], k)
    assert torch.equal(one.indices, old.indices[3:4])


def test_dense_path_is_skipped_without_float32_scores():
    C = torch.eye(3, dtype=torch.float64).to_sparse_csr()
    assert not mod._ranks_densely(C, torch.float32, 2, 3)
    assert not mod._ranks_densely(C.to(torch.float32), torch.float64, 2, 3)
    assert not mod._ranks_densely(C.to(torch.float32), torch.float32, 4, 3)
    assert mod._ranks_densely(C.to(torch.float32), torch.float32, 3, 3)


def test_rank_lexicographic_allocates_or_fills_its_output():
    F, sims, _, _ = scores_and_sims()
    want = by_hand(F, sims, 9)
    got = mod._rank_lexicographic(F.clone(), sims.clone(), 9)
    np.testing.assert_array_equal(got.indices.numpy(), want)
    out = RerankResult(torch.empty(12, 9), torch.empty(12, 9, dtype=torch.long))
    part = RerankResult(out.scores[3:9], out.indices[3:9])  # rows of a larger result
    assert mod._rank_lexicographic(F.clone(), sims.clone(), 9, part) is part
    np.testing.assert_array_equal(out.indices[3:9].numpy(), want)
    assert torch.equal(out.scores[3:9], got.scores)
