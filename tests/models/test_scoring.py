"""Shortlist scoring: chamfer matching, pairwise and list-wise graphs, windows and merging."""

import itertools

import pytest
import torch

from graphrerank.models import (
    LocalMatcher,
    chamfer_similarity,
    compress_local,
    score_shortlist,
    sliding_windows,
)


def _chamfer_dense(q, x):
    q = q.double() / q.double().norm(dim=-1, keepdim=True)
    x = x.double() / x.double().norm(dim=-1, keepdim=True)
    return max_mean(q @ x.T)


def max_mean(s):
    return float(s.max(dim=1).values.mean())


def test_chamfer_matches_the_formula(device):
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(3, 5, 7, generator=g), torch.randn(3, 4, 6, 7, generator=g)
    out = chamfer_similarity(q.to(device), c.to(device)).cpu()
    for b in range(3):
        for w in range(4):
            assert float(out[b, w]) == pytest.approx(_chamfer_dense(q[b], c[b, w]), abs=1e-6)


@pytest.mark.parametrize(
    ("n", "w", "s"), [(10, 4, 3), (100, 100, 50), (400, 100, 50), (7, 3, 1), (5, 9, 2)]
)
def test_sliding_windows_cover_everything_with_the_stride(n, w, s):
    wins = sliding_windows(n, w, s)
    covered = torch.zeros(n, dtype=torch.long)
    for a, b in wins:
        assert b - a == min(w, n)
        covered[a:b] += 1
    assert covered.min() >= 1
    starts = [a for a, _ in wins]
    assert all(b - a == s for a, b in itertools.pairwise(starts[:-1]))
    assert wins[-1][1] == n


def test_score_shortlist_without_model_is_chamfer_and_skips_padding():
    g = torch.Generator().manual_seed(1)
    q, db = torch.randn(2, 4, 5, generator=g), torch.randn(6, 3, 5, generator=g)
    short = torch.tensor([[5, 0, -1], [2, 3, 4]])
    out = score_shortlist(None, q, db, short, batch_size=2)
    assert out[0, 2] == float("-inf")
    for r in range(2):
        for c in range(3):
            if short[r, c] >= 0:
                ref = _chamfer_dense(q[r], db[short[r, c]])
                assert float(out[r, c]) == pytest.approx(ref, abs=1e-6)


def test_score_shortlist_reads_stored_descriptors():
    g = torch.Generator().manual_seed(2)
    q, db = torch.randn(2, 4, 16, generator=g), torch.randn(5, 6, 16, generator=g)
    short = torch.tensor([[0, 1, 2], [4, 3, 2]])
    stored = compress_local(db, num_descriptors=2, storage="binary")
    out = score_shortlist(None, q, stored, short)
    signs = torch.where(db[:, :2] >= 0, 1.0, -1.0)
    ref = score_shortlist(None, q, signs, short)
    torch.testing.assert_close(out, ref)


class _ListProbe(LocalMatcher):
    """A stand-in whose logit depends on the whole list: v_c + sum of the list's v."""

    def score(self, query, candidates, *extras):
        v = candidates[..., 0, 0]  # (B, W)
        return v + v.sum(dim=1, keepdim=True)


def test_listwise_windows_are_merged_by_their_mean():
    db = torch.arange(8, dtype=torch.float32).view(8, 1, 1).expand(8, 1, 2).contiguous()
    q = torch.zeros(1, 1, 2)
    short = torch.tensor([[0, 1, 2, 3, 4, 5]])
    probe = _ListProbe(2)
    out = score_shortlist(probe, q, db, short, mode="listwise", window=3, stride=2)
    # windows (0,3), (2,5), (3,6): sums 3, 9, 12
    expected = torch.tensor(
        [[0 + 3, 1 + 3, (2 + 3 + 2 + 9) / 2, (3 + 9 + 3 + 12) / 2, (4 + 9 + 4 + 12) / 2, 5 + 12]]
    )
    torch.testing.assert_close(out, expected)
    # pairwise: every candidate alone
    pair = score_shortlist(probe, q, db, short, mode="pairwise")
    torch.testing.assert_close(pair, 2 * short.float())


def test_listwise_scores_own_entry_alone_and_groups_queries_by_length():
    db = torch.arange(8, dtype=torch.float32).view(8, 1, 1).expand(8, 1, 2).contiguous()
    q = torch.zeros(3, 1, 2)
    short = torch.tensor([[0, 1, 2, 3], [4, 5, -1, 6], [7, 6, 5, 4]])
    probe = _ListProbe(2)
    out = score_shortlist(probe, q, db, short, mode="listwise", window=8, stride=4,
                          own_index=torch.tensor([0, 5, -1]))  # fmt: skip
    expected = torch.tensor(
        [
            [0.0, 1 + 6, 2 + 6, 3 + 6],  # 0 alone; list {1, 2, 3}
            [4 + 10, 10.0, float("-inf"), 6 + 10],  # 5 alone; list {4, 6}
            [7 + 22, 6 + 22, 5 + 22, 4 + 22],  # no own entry
        ]
    )
    torch.testing.assert_close(out, expected)


def _model(d=6, **kw):
    torch.manual_seed(0)
    return LocalMatcher(d, hidden=16, heads=2, num_layers=2, ffn=16, k_intra=2, k_cross=2, **kw)


def test_pairwise_equals_listwise_with_a_window_of_one(device):
    g = torch.Generator().manual_seed(3)
    q, db = torch.randn(3, 5, 6, generator=g), torch.randn(10, 4, 6, generator=g)
    short = torch.stack([torch.randperm(10, generator=g)[:6] for _ in range(3)])
    model = _model().to(device)
    q, db, short = q.to(device), db.to(device), short.to(device)
    pair = score_shortlist(model, q, db, short, mode="pairwise", batch_size=4)
    one = score_shortlist(model, q, db, short, mode="listwise", window=1, stride=1)
    torch.testing.assert_close(pair, one, rtol=1e-5, atol=1e-6)
    many = score_shortlist(model, q, db, short, mode="listwise", window=6)
    assert not torch.allclose(pair, many, atol=1e-4)  # lists give candidates a context


def test_score_shortlist_restores_training_mode():
    model = _model().train()
    score_shortlist(model, torch.randn(1, 3, 6), torch.randn(4, 3, 6), torch.tensor([[0, 1]]))
    assert model.training


def test_score_shortlist_bad_settings():
    q, db, short = torch.randn(1, 3, 6), torch.randn(4, 3, 6), torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="mode must be one of"):
        score_shortlist(None, q, db, short, mode="both")
    with pytest.raises(ValueError, match="window must be >= 1"):
        score_shortlist(None, q, db, short, window=0)


def test_a_cached_database_is_not_rescanned_but_its_non_finite_states_are_refused():
    from graphrerank.models import LocalMatcher

    torch.manual_seed(4)
    model = LocalMatcher(8, hidden=16, heads=2, num_layers=1, ffn=16).eval()
    g = torch.Generator().manual_seed(5)
    q, db = torch.randn(2, 4, 8, generator=g), torch.randn(6, 4, 8, generator=g)
    short = torch.tensor([[0, 3, -1], [5, 1, 2]])
    with torch.no_grad():
        enc = model.encode(db, role=1)
    want = score_shortlist(model, q, db, short)
    # the states are what is read: the same logits with the cached database
    torch.testing.assert_close(score_shortlist(model, q, db, short, database_encoded=enc), want)
    # without a cache the shortlisted descriptors are checked ...
    bad = db.clone()
    bad[3, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="database_local contains NaN"):
        score_shortlist(model, q, bad, short)
    # ... with one, non-finite states of a shortlisted image are refused by name
    nan_states = enc._replace(h=enc.h.clone())
    nan_states.h[5] = float("nan")
    with pytest.raises(ValueError, match="database_encoded holds NaN"):
        score_shortlist(model, q, db, short, database_encoded=nan_states)
    # while a non-finite state outside the shortlist changes nothing
    other = enc._replace(h=enc.h.clone())
    other.h[4] = float("nan")
    torch.testing.assert_close(score_shortlist(model, q, db, short, database_encoded=other), want)
