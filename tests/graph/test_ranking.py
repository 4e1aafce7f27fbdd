"""Tie-aware top-k selection of ``graphrerank.graph.ranking`` against numpy lexsorts."""

import numpy as np
import pytest
import torch

from graphrerank.graph import KNNIndex
from graphrerank.graph.ranking import (
    dense_ranking,
    lexsort_desc,
    rank_candidates,
    rank_csr,
    rank_dense,
    select_topk,
    top_k_with_ties,
    topk,
)
from graphrerank.graph.sparse import quiet_sparse_warnings

DTYPES = [torch.float32, torch.float64]
NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def ranked(score, secondary, k):
    """Per row: the ``k`` columns by ``score`` descending, then ``secondary`` descending."""
    order = np.stack([np.lexsort((-sec, -s)) for s, sec in zip(score, secondary)])[:, :k]
    return np.take_along_axis(score, order, 1), order


# ----------------------------------------------------------------------------- primitives
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [1, 2, 5, 9, 10])
def test_topk_equals_a_full_sort(k, largest, device):
    rng = np.random.default_rng(k)
    x = rng.permutation(40).reshape(4, 10).astype(np.float64)  # distinct values
    v, i = topk(torch.from_numpy(x).to(device), k, largest)
    order = np.argsort(-x if largest else x, axis=1)[:, :k]
    np.testing.assert_array_equal(i.cpu().numpy(), order)
    np.testing.assert_array_equal(v.cpu().numpy(), np.take_along_axis(x, order, 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lexsort_desc_equals_numpy(seed, device):
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 3, (5, 12)).astype(np.float64)  # many ties in the primary key
    s = rng.permutation(60).reshape(5, 12).astype(np.float64)  # distinct secondary keys
    out = lexsort_desc(torch.from_numpy(p).to(device), torch.from_numpy(s).to(device))
    expected = np.stack([np.lexsort((-b, -a)) for a, b in zip(p, s)])
    np.testing.assert_array_equal(out.cpu().numpy(), expected)


# ----------------------------------------------------------------------------- top_k_with_ties
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 4, 7, 15, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_with_ties_equals_lexsort(seed, k, dtype, device):
    rng = np.random.default_rng(seed)
    q, n = 9, 16
    scores = rng.integers(0, 4, (q, n)).astype(np.float64) / 4  # many ties
    scores[0] = rng.permutation(n) / n  # one row without ties
    scores[1] = 0.0  # one row all tied
    sec = rng.normal(size=(q, n))  # distinct secondary keys
    called = []

    def secondary(rows):
        called.append(rows.cpu().numpy())
        return torch.from_numpy(sec).to(device)[rows]

    s_t = torch.from_numpy(scores).to(device, dtype)
    vals, idx = top_k_with_ties(s_t, k, secondary)
    ev, ei = ranked(scores, sec, k)
    np.testing.assert_array_equal(idx.cpu().numpy(), ei)
    np.testing.assert_array_equal(vals.cpu().numpy().astype(np.float64), ev)
    assert vals.dtype == dtype and idx.dtype == torch.int64
    rows = np.concatenate(called) if called else np.zeros(0, dtype=np.int64)
    assert 0 not in rows  # a row without ties needs no secondary key
    if k < n:
        assert 1 in rows


def test_top_k_with_ties_only_boundary_rows_need_the_secondary_key():
    scores = torch.tensor([[3.0, 2.0, 1.0, 1.0], [3.0, 1.0, 1.0, 0.0], [4.0, 3.0, 2.0, 1.0]])
    called = []

    def secondary(rows):
        called.extend(rows.tolist())
        return torch.tensor([[0.0, 0.0, 1.0, 0.0]]).expand(rows.numel(), 4)

    vals, idx = top_k_with_ties(scores, 2, secondary)
    # row 0: top 2 = {3, 2}, no tie at the boundary; row 1: the boundary 1.0 is tied;
    # row 2: distinct. Row 1 breaks its tie by the secondary key: item 2 first
    assert called == [1]
    np.testing.assert_array_equal(idx.numpy(), [[0, 1], [0, 2], [0, 1]])
    np.testing.assert_array_equal(vals.numpy(), [[3, 2], [3, 1], [4, 3]])


def test_top_k_with_ties_without_secondary_is_plain_topk():
    rng = np.random.default_rng(3)
    x = rng.permutation(30).reshape(3, 10).astype(np.float64)
    vals, idx = top_k_with_ties(torch.from_numpy(x), 4, None)
    np.testing.assert_array_equal(idx.numpy(), np.argsort(-x, axis=1)[:, :4])


# ----------------------------------------------------------------------------- sparse scores
def candidates_case(seed, b, n, m, dtype, negative=False, tie_values=(0.5, 1.0, 2.0)):
    """Queries, database, padded candidates (unique per row, ``-1`` padding, some zero-valued
    and tied) and the dense (B, N) score matrix where non-candidates score 0."""
    rng = np.random.default_rng(seed)
    d = 6
    x = rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.normal(size=(b, d))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    x, q = x.astype(NP_DTYPE[dtype]), q.astype(NP_DTYPE[dtype])
    cand = np.full((b, m), -1, dtype=np.int64)
    val = np.zeros((b, m))
    dense = np.zeros((b, n))
    values = np.asarray(tie_values + ((-0.5, -1.0) if negative else ()))
    for r in range(b):
        cnt = [m, 0, 1, m // 2, m - 1][r % 5]  # full, empty and short rows
        cols = rng.choice(n, cnt, replace=False)
        v = rng.choice(values, cnt)
        if cnt > 2:
            v[0] = 0.0  # a stored zero: scores like every other item
        cand[r, :cnt], val[r, :cnt] = cols, v
        val[r, cnt:] = 9.0  # values under -1 padding are ignored
        dense[r, cols] = v
    val = val.astype(NP_DTYPE[dtype])
    dense = dense.astype(NP_DTYPE[dtype]).astype(np.float64)
    sim = q.astype(np.float64) @ x.astype(np.float64).T
    return q, x, cand, val, dense, sim


def to_t(a, device, dtype=None):
    return torch.from_numpy(a).to(device, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", ["similarity", "index"])
@pytest.mark.parametrize(
    ("n", "m", "k"),
    [(30, 8, 1), (30, 8, 3), (30, 8, 8), (30, 8, 12), (30, 8, 28), (30, 8, 30), (12, 12, 12)],
)
def test_rank_candidates_equals_dense_ranking(n, m, k, ties, dtype, device):
    b = 10
    q, x, cand, val, dense, sim = candidates_case(n + m + k, b, n, m, dtype)
    qt, xt = to_t(q, device), to_t(x, device)
    index = KNNIndex(metric="ip", backend="torch").add(xt)
    out = rank_candidates(to_t(cand, device), to_t(val, device), k, qt, xt, index, ties)
    sec = sim if ties == "similarity" else -np.arange(n)[None, :].repeat(b, 0).astype(np.float64)
    ev, ei = ranked(dense, sec, k)
    np.testing.assert_array_equal(out.indices.cpu().numpy(), ei)
    np.testing.assert_array_equal(out.scores.cpu().numpy().astype(np.float64), ev)
    assert out.scores.dtype == dtype
    assert tuple(out.indices.shape) == (b, k)


@pytest.mark.parametrize("ties", ["similarity", "index"])
@pytest.mark.parametrize("k", [2, 6, 20])
def test_rank_candidates_with_negative_scores(k, ties):
    n, m, b = 20, 10, 10
    q, x, cand, val, dense, sim = candidates_case(7, b, n, m, torch.float64, negative=True)
    qt, xt = to_t(q, "cpu"), to_t(x, "cpu")
    index = KNNIndex(metric="ip", backend="torch").add(xt)
    out = rank_candidates(to_t(cand, "cpu"), to_t(val, "cpu"), k, qt, xt, index, ties)
    sec = sim if ties == "similarity" else -np.arange(n)[None, :].repeat(b, 0).astype(np.float64)
    ev, ei = ranked(dense, sec, k)
    np.testing.assert_array_equal(out.indices.numpy(), ei)
    np.testing.assert_array_equal(out.scores.numpy(), ev)


def test_rank_candidates_fast_path_distinct_positive_scores():
    # every row has k distinct positive candidates: the plain top-k path
    rng = np.random.default_rng(5)
    n, b, m, k = 25, 4, 6, 4
    cand = np.stack([rng.choice(n, m, replace=False) for _ in range(b)])
    val = rng.uniform(0.1, 1.0, (b, m))
    dense = np.zeros((b, n))
    np.put_along_axis(dense, cand, val, 1)
    x = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(n, 3))), dim=1)
    q = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(b, 3))), dim=1)
    out = rank_candidates(
        torch.from_numpy(cand), torch.from_numpy(val), k, q, x, KNNIndex(backend="torch").add(x)
    )
    order = np.argsort(-dense, axis=1)[:, :k]
    np.testing.assert_array_equal(out.indices.numpy(), order)
    np.testing.assert_array_equal(out.scores.numpy(), np.take_along_axis(dense, order, 1))


def test_rank_candidates_by_hand():
    # database of 4; query similarities 0.4, 0.3, 0.2, 0.1 to items 0..3
    x = torch.eye(4, dtype=torch.float64)
    q = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    index = KNNIndex(backend="torch").add(x)
    cand = torch.tensor([[3, 2, -1]])
    val = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    out = rank_candidates(cand, val, 4, q, x, index, "similarity")
    # 2 and 3 tie at 1 (2 is more similar), then the zeros 0, 1 in first-stage order
    np.testing.assert_array_equal(out.indices.numpy(), [[2, 3, 0, 1]])
    np.testing.assert_array_equal(out.scores.numpy(), [[1.0, 1.0, 0.0, 0.0]])
    out = rank_candidates(cand, val, 3, q, x, index, "index")
    np.testing.assert_array_equal(out.indices.numpy(), [[2, 3, 0]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", ["similarity", "index"])
@pytest.mark.parametrize("k", [1, 5, 29, 30])
def test_rank_dense_equals_dense_ranking(k, ties, dtype, device):
    n, b = 30, 10
    q, x, _, _, dense, sim = candidates_case(k + 1, b, n, 12, dtype)
    out = rank_dense(to_t(dense, device, dtype), k, to_t(q, device), to_t(x, device), ties)
    sec = sim if ties == "similarity" else -np.arange(n)[None, :].repeat(b, 0).astype(np.float64)
    ev, ei = ranked(dense, sec, k)
    np.testing.assert_array_equal(out.indices.cpu().numpy(), ei)
    np.testing.assert_array_equal(out.scores.cpu().numpy().astype(np.float64), ev)


def test_dense_ranking_rule():
    assert dense_ranking(25, 100) and dense_ranking(30, 100)
    assert not dense_ranking(24, 100)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", ["similarity", "index"])
@pytest.mark.parametrize("k", [1, 4, 9, 10, 27, 40])  # sparse path (4k < N) and dense path
def test_rank_csr_equals_dense_ranking(k, ties, dtype, device):
    n, b = 40, 10
    q, x, _, _, dense, sim = candidates_case(k + 2, b, n, 9, dtype)
    with quiet_sparse_warnings():
        f = to_t(dense, device, dtype).to_sparse_csr()  # stored zeros are dropped
    xt = to_t(x, device)
    out = rank_csr(f, k, to_t(q, device), xt, KNNIndex(backend="torch").add(xt), ties)
    sec = sim if ties == "similarity" else -np.arange(n)[None, :].repeat(b, 0).astype(np.float64)
    ev, ei = ranked(dense, sec, k)
    np.testing.assert_array_equal(out.indices.cpu().numpy(), ei)
    np.testing.assert_array_equal(out.scores.cpu().numpy().astype(np.float64), ev)


# ----------------------------------------------------------------------------- select_topk
def bounded_case(seed, r, c, s, higher_base_is_better, overlap_values):
    rng = np.random.default_rng(seed)
    overlap = np.where(rng.random((r, c)) < 0.35, rng.choice(overlap_values, (r, c)), 0.0)
    base = rng.uniform(0.0, 1.0, (r, c))  # distinct: the tie-breaker is defined
    order = np.argsort(-base if higher_base_is_better else base, axis=1)[:, :s]
    return overlap, base, order, np.take_along_axis(base, order, 1)


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
@pytest.mark.parametrize(("k", "s"), [(1, 1), (1, 5), (3, 3), (4, 12), (10, 20), (5, 25)])
@pytest.mark.parametrize("seed", [0, 1])
def test_select_topk_gnn_score_equals_dense(seed, k, s, lam, device):
    r, c = 6, 25
    overlap, base, short_idx, short_base = bounded_case(seed, r, c, s, True, [0.2, 0.5, 1.0, 1.5])

    def score(p, cos):
        return (1 - lam) * p + lam * cos if lam else p

    def min_overlap(kth, cos):
        if lam == 1:
            return torch.full_like(kth, float("inf"))
        p = (kth - lam * cos) / (1 - lam)
        return p - 1e-6 * p.abs() - 1e-12

    base_t = to_t(base, device)
    full = (1 - lam) * overlap + lam * base if lam else overlap
    ev, ei = ranked(full, base, k)
    for uses_base in (True, False) if lam == 0 else (True,):
        asked = []

        def base_of(rr, cc, asked=asked):
            asked.append(torch.stack([rr, cc], 1).cpu())
            return base_t[rr, cc]

        sc, ix = select_topk(
            to_t(overlap.copy(), device), to_t(short_idx, device), to_t(short_base, device), k,
            score, base_of, min_overlap, higher_base_is_better=True, score_uses_base=uses_base,
        )  # fmt: skip
        np.testing.assert_array_equal(ix.cpu().numpy(), ei)
        np.testing.assert_allclose(sc.cpu().numpy(), ev, rtol=1e-14, atol=1e-15)
        if not uses_base:
            # only items outside the shortlist whose score another candidate of the row shares
            for rr, cc in torch.cat(asked).tolist() if asked else []:
                assert cc not in short_idx[rr]
                others = np.delete(full[rr], cc)
                assert np.any(others == full[rr, cc])


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
@pytest.mark.parametrize(("k", "s"), [(1, 3), (4, 4), (6, 15)])
@pytest.mark.parametrize("seed", [0, 1])
def test_select_topk_kreciprocal_score_equals_dense(seed, k, s, lam, device):
    # distances (lower base is better) and d* = (1 - lam) d_J + lam d, score = -d*
    r, c = 6, 25
    overlap, base, short_idx, short_base = bounded_case(seed, r, c, s, False, [0.1, 0.4, 0.9, 1.0])

    def score(p, dn):
        dj = 1 - p / (2 - p)
        return 0.0 - ((1 - lam) * dj + lam * dn)

    def min_overlap(kth, dn):
        if lam == 1:
            return torch.full_like(kth, float("inf"))
        u = (1 - (-kth - lam * dn) / (1 - lam)).clamp(min=0)
        return (2 * u / (1 + u)) * (1 - 1e-6) - 1e-12

    base_t = to_t(base, device)
    sc, ix = select_topk(
        to_t(overlap.copy(), device), to_t(short_idx, device), to_t(short_base, device), k,
        score, lambda rr, cc: base_t[rr, cc], min_overlap, higher_base_is_better=False,
    )  # fmt: skip
    full = 0.0 - ((1 - lam) * (1 - overlap / (2 - overlap)) + lam * base)
    ev, ei = ranked(full, -base, k)  # equal scores: the lower distance first
    np.testing.assert_array_equal(ix.cpu().numpy(), ei)
    np.testing.assert_allclose(sc.cpu().numpy(), ev, rtol=1e-14, atol=1e-15)
