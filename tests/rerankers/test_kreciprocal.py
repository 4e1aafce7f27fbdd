"""k-reciprocal re-ranking against a dense float64 transcription of the paper's formulas."""

import numpy as np
import pytest
import torch

from graphrerank.graph import lists
from graphrerank.rerankers import (
    KReciprocal,
    kreciprocal,
    kreciprocal_rerank,
    kreciprocal_rerank_distances,
)
from graphrerank.testing import assert_close


# ----------------------------------------------------------------------------- reference
def reference_kreciprocal(dist, num_queries, k1, k2, lambda_value):
    """Dense transcription of Zhong et al. (the authors' Python semantics), float64.

    ``dist`` is the full (M, M) Euclidean distance matrix, queries first; all M rows are
    queries when ``num_queries == M`` (all-vs-all). Returns the final distance of every query
    row against the gallery columns.
    """
    d = np.asarray(dist, dtype=np.float64) ** 2
    d = (d / d.max(axis=0)).T  # row i: column i over its maximum (rows when symmetric)
    m = d.shape[0]
    rank = np.argsort(d, axis=1, kind="stable")

    def recip(i, k):
        return [j for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    half = int(np.around(k1 / 2))
    v = np.zeros((m, m))
    for i in range(m):
        r = recip(i, k1)
        expanded = set(r)
        for c in r:
            rc = recip(c, half)
            if len(set(rc) & set(r)) > 2 / 3 * len(rc):
                expanded |= set(rc)
        idx = sorted(expanded)
        w = np.exp(-d[i, idx])
        v[i, idx] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(m)])
    all_vs_all = num_queries == m
    q = num_queries
    cols = np.arange(m) if all_vs_all else np.arange(q, m)
    out = np.empty((q, cols.size))
    for i in range(q):
        overlap = np.minimum(v[i][None, :], v[cols]).sum(1)
        jaccard = 1 - overlap / (2 - overlap)
        out[i] = (1 - lambda_value) * jaccard + lambda_value * d[i, cols]
    return out, d[:q][:, cols]


def reference_order(final, original):
    """Ascending final distance; ties (lambda = 0: no overlap) by the original distance."""
    return np.stack([np.lexsort((original[i], final[i])) for i in range(final.shape[0])])


def assert_same_ranking(out, final, order, k, original=None, atol=1e-9):
    """``out`` ranks like ``order`` (the reference's ranking of ``final``, lower is better):
    the same values in the same order, and the same items wherever the reference's value is
    not within ``atol`` of a neighbour's (two equal values summed in different orders may
    differ in the last bit). Runs of exactly equal scores are ordered by ``original``."""
    idx = out.indices.cpu().numpy()
    got = -out.scores.cpu().numpy()
    ref = np.take_along_axis(final, order[:, :k], 1)
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol)
    np.testing.assert_allclose(np.take_along_axis(final, idx, 1), got, rtol=0, atol=atol)
    full = np.take_along_axis(final, order, 1)
    gap = np.abs(np.diff(full, axis=1)) > atol
    lone = np.ones_like(full, dtype=bool)
    lone[:, 1:] &= gap
    lone[:, :-1] &= gap
    lone = lone[:, :k]
    assert (idx[lone] == order[:, :k][lone]).all()
    if original is not None:
        tied = got[:, 1:] == got[:, :-1]
        orig = np.take_along_axis(original, idx, 1)
        assert (orig[:, 1:][tied] >= orig[:, :-1][tied]).all()


def _clusters(n, d, seed, centres=4, spread=0.7):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    return c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d))


def _cdist(a, b):
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))


SETTINGS = [
    # k1, k2, lambda_value
    (20, 6, 0.3),  # the reference defaults
    (5, 3, 0.0),  # odd k1: k1/2 = 2.5 rounds to 2 (half to even); lambda 0: Jaccard only
    (7, 1, 0.5),  # k1/2 = 3.5 rounds to 4; k2 = 1: no local query expansion
    (9, 10, 1.0),  # k1/2 = 4.5 rounds to 4; k2 > k1 + 1; lambda 1: original distance only
    (1, 2, 0.3),  # smallest lists
]


@pytest.mark.parametrize(("k1", "k2", "lambda_value"), SETTINGS)
@pytest.mark.parametrize(("nq", "ng"), [(6, 40), (0, 45)])
def test_matches_dense_reference(device, k1, k2, lambda_value, nq, ng):
    x = _clusters(nq + ng, 6, seed=k1 + nq)
    m = nq + ng
    final, orig = reference_kreciprocal(_cdist(x, x), nq if nq else m, k1, k2, lambda_value)
    order = reference_order(final, orig)
    db = torch.from_numpy(x[nq:]).to(device)
    r = KReciprocal(k1=k1, k2=k2, lambda_value=lambda_value).fit(db)
    queries = torch.from_numpy(x[:nq]).to(device) if nq else None
    for k in (ng, 5):
        out = r.rerank(queries, k=k)
        assert out.indices.device.type == device
        assert_same_ranking(out, final, order, k, orig)


def test_all_vs_all_is_one_graph_not_two():
    """rerank(None) ranks inside one N-node graph; passing the database as queries makes the
    reference's 2N-node graph of duplicates (whose exact ties the reference orders
    arbitrarily), which gives another result."""
    x = _clusters(40, 5, seed=3)
    r = KReciprocal(k1=6, k2=3).fit(torch.from_numpy(x))
    one, d1 = reference_kreciprocal(_cdist(x, x), 40, 6, 3, 0.3)
    out_none = r.rerank(None, k=40)
    assert_same_ranking(out_none, one, reference_order(one, d1), 40)
    out_dup = r.rerank(torch.from_numpy(x), k=40)
    assert not torch.equal(out_none.indices, out_dup.indices)


def test_float32_agrees_with_float64_reference():
    x = _clusters(50, 8, seed=11)
    final, orig = reference_kreciprocal(_cdist(x, x), 10, 20, 6, 0.3)
    out = kreciprocal_rerank(
        torch.from_numpy(x[:10]).float(), torch.from_numpy(x[10:]).float(), k=40
    )
    assert out.scores.dtype == torch.float32
    got = -torch.from_numpy(np.take_along_axis(final, out.indices.numpy(), 1))
    # the values of the items we ranked are the reference's, and so is their order
    assert_close(out.scores.double(), got, rtol=1e-4, atol=1e-5)
    assert_close(out.scores.double(), torch.from_numpy(-np.sort(final, 1)), rtol=1e-4, atol=1e-5)


def test_short_lists_and_small_blocks(monkeypatch):
    """Short stored lists (second search, distances computed for pairs outside the lists) and
    tiny blocks (every chunked loop runs many times) change nothing."""
    monkeypatch.setattr(kreciprocal, "LIST_LENGTH", 3)
    monkeypatch.setattr(lists, "SHORTLIST_MARGIN", 0)
    monkeypatch.setattr(lists, "BLOCK_ELEMENTS", 400)
    x = _clusters(48, 4, seed=5)
    for nq, k in ((8, 40), (0, 4)):
        m = nq + 40 if nq else 48
        final, orig = reference_kreciprocal(_cdist(x[:m], x[:m]), nq if nq else m, 5, 3, 0.3)
        order = reference_order(final, orig)
        q = torch.from_numpy(x[:nq]) if nq else None
        out = KReciprocal(k1=5, k2=3).fit(torch.from_numpy(x[nq:m])).rerank(q, k=k)
        assert_same_ranking(out, final, order, k)


# ----------------------------------------------------------------------------- distance input
def test_distance_input_equals_feature_input(device):
    x = _clusters(46, 6, seed=2)
    q, g = torch.from_numpy(x[:6]).to(device), torch.from_numpy(x[6:]).to(device)
    feat = kreciprocal_rerank(q, g, k=40)
    dist = kreciprocal_rerank_distances(
        torch.cdist(q, g), torch.cdist(q, q), torch.cdist(g, g), k=40
    )
    assert torch.equal(feat.indices, dist.indices)
    assert_close(dist.scores, feat.scores)
    feat_all = kreciprocal_rerank(None, g, k=40)
    dist_all = kreciprocal_rerank_distances(None, None, torch.cdist(g, g).cpu().numpy(), k=40)
    assert torch.equal(feat_all.indices.cpu(), dist_all.indices)


def test_distance_input_reads_columns_as_the_reference_does():
    """For non-symmetric distances, row i of the reference's normalised matrix is column i."""
    rng = np.random.default_rng(7)
    x = _clusters(36, 4, seed=7)
    full = _cdist(x, x) * rng.uniform(0.8, 1.25, (36, 36))
    np.fill_diagonal(full, 0)
    qg, qq, gg = full[:6, 6:], full[:6, :6], full[6:, 6:]
    # the reference assembles [[q_q, q_g], [q_g^T, g_g]]
    final, orig = reference_kreciprocal(np.block([[qq, qg], [qg.T, gg]]), 6, 6, 3, 0.3)
    out = kreciprocal_rerank_distances(qg, qq, gg, k=30, k1=6, k2=3)
    assert_same_ranking(out, final, reference_order(final, orig), 30)


# ----------------------------------------------------------------------------- R-DiP hook
def test_score_candidates_is_minus_the_final_distance():
    x = _clusters(40, 5, seed=9)
    final, _ = reference_kreciprocal(_cdist(x, x), 40, 6, 3, 0.3)
    r = KReciprocal(k1=6, k2=3).fit(torch.from_numpy(x))
    rows = torch.tensor([0, 7, 39])
    cand = torch.tensor([[0, 5, 12, -1], [3, 7, 39, 20], [1, 2, 38, 39]])
    out = r.score_candidates(rows, cand, torch.zeros(3, 4))
    expected = -final[rows.numpy()[:, None], cand.clamp(min=0).numpy()]
    expected[0, 3] = -np.inf
    assert_close(out, torch.from_numpy(expected))


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"k1": 0}, ValueError, "k1 must be >= 1"),
        ({"k2": 0}, ValueError, "k2 must be >= 1"),
        ({"k1": 2.5}, TypeError, "k1 must be an integer"),
        ({"lambda_value": 1.5}, ValueError, "lambda_value must be <= 1"),
        ({"lambda_value": -0.1}, ValueError, "lambda_value must be >= 0"),
    ],
)
def test_bad_settings(params, error, match):
    x = torch.randn(10, 3)
    with pytest.raises(error, match=match):
        KReciprocal(**params).fit(x)
    with pytest.raises(error, match=match):
        kreciprocal_rerank_distances(None, None, torch.cdist(x, x), k=3, **params)


def test_bad_distance_matrices():
    x = torch.randn(12, 3, dtype=torch.float64)
    q = torch.randn(3, 3, dtype=torch.float64)
    qg, qq, gg = torch.cdist(q, x), torch.cdist(q, q), torch.cdist(x, x)
    cases = [
        ((qg, qq, gg[:, :5]), ValueError, "g_g_dist must be square"),
        ((qg[:, :5], qq, gg), ValueError, "q_g_dist has 5 columns but g_g_dist describes 12"),
        ((qg, qq[:2], gg), ValueError, r"q_q_dist must be square, got shape \(2, 3\)"),
        ((qg[:1], qq, gg), ValueError, "q_g_dist has 1 row.* q_q_dist describes 3 queries"),
        ((qg, qq[:2, :2], gg), ValueError, "q_g_dist has 3 row.* q_q_dist describes 2 queries"),
        ((qg.float() * 1e30, qq.float(), gg.float()), ValueError, "q_g_dist holds distances up"),
        (
            (qg, qq, gg.float() * 1e30),
            ValueError,
            "g_g_dist holds distances up to .*overflow torch.float32",
        ),
        ((qg, None, gg), ValueError, "give both q_g_dist and q_q_dist, or neither"),
        ((qg, qq, -gg), ValueError, "g_g_dist contains negative distances"),
        ((qg * np.nan, qq, gg), ValueError, "q_g_dist contains NaN"),
        ((qg, qq, gg.long()), TypeError, "g_g_dist must hold floating point"),
        ((qg, qq, gg[0]), ValueError, "g_g_dist must be a 2-D matrix"),
        ((qg, qq, gg[:0, :0]), ValueError, "g_g_dist is empty"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            kreciprocal_rerank_distances(*args, k=3)
    with pytest.raises(ValueError, match="k=13 is larger than the database"):
        kreciprocal_rerank_distances(qg, qq, gg, k=13)


def test_refuses_asymmetric_queries():
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match="same encoder"):
        KReciprocal(k1=4, k2=2).fit(x).rerank(x[:3], k=5, asymmetric=True)


def test_declarations():
    assert KReciprocal.transductive and KReciprocal.needs_query_similarity
    assert not KReciprocal.accepts_initial
    assert KReciprocal().get_params() == {
        "k1": 20,
        "k2": 6,
        "lambda_value": 0.3,
        "progress": None,
    }


def test_step_leaves_the_thread_count_as_it_was():
    before = torch.get_num_threads()
    x = torch.randn(30, 4, dtype=torch.float64)
    KReciprocal(k1=4, k2=2).fit(x).rerank(None, k=5)
    assert torch.get_num_threads() == before
