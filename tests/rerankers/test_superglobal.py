"""SuperGlobal re-ranking against a dense float64 transcription of the official algorithm."""

import pytest
import torch
from torch.nn.functional import normalize

from graphrerank.graph import knn_search
from graphrerank.rerankers import KNN, SuperGlobal, superglobal_rerank


def ref_superglobal(q, x, M, K, beta, first):
    """MDescAug then RerankwMDA, one query at a time, as the official code computes them.

    ``first`` is the first-stage ranking (Q, m) (no padding). Returns the new ranking (Q, m)
    and the refined scores (a + b) / 2 of the shortlist in the new order (Q, min(M, m)).
    """
    out_i, out_f = [], []
    for i in range(q.shape[0]):
        sl = first[i, :M]
        xm = x[sl]
        g = xm @ xm.T
        order = torch.argsort(g, dim=1, descending=True)[:, : K + 1]  # itself first
        w = g.gather(1, order) * beta
        w[:, 0] = 1.0
        xt = (w[:, :, None] * xm[order]).sum(1) / w.sum(1, keepdim=True)  # not re-normalised
        a = xt @ q[i]
        pre = torch.argsort(a, descending=True)
        qt = xt[pre[: K + 1]].max(0).values  # the query itself is not included
        f = (a + xt @ qt) / 2
        new = torch.argsort(f, descending=True)
        out_i.append(torch.cat([sl[new], first[i, M:]]))
        out_f.append(f[new])
    return torch.stack(out_i), torch.stack(out_f)


def _data(n=120, d=12, nq=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(6, d, generator=g, dtype=torch.float64)
    x = centers[torch.arange(n) % 6] + 0.6 * torch.randn(n, d, generator=g, dtype=torch.float64)
    q = centers[torch.arange(nq) % 6] + 0.6 * torch.randn(nq, d, generator=g, dtype=torch.float64)
    return normalize(q, dim=1), normalize(x, dim=1)


def _first(q, x, m):
    s = q @ x.T
    return torch.argsort(s, dim=1, descending=True)[:, :m]


# ----------------------------------------------------------------------------- faithfulness


@pytest.mark.parametrize(("M", "K", "beta"), [(30, 4, 0.15), (120, 9, 0.15), (17, 2, 0.5)])
def test_explicit_queries_equal_the_reference(M, K, beta, device):
    q, x = _data()
    out = SuperGlobal(M=M, K=K, beta=beta, backend="torch").fit(x.to(device))
    out = out.rerank(q.to(device), k=120)
    idx, f = ref_superglobal(q, x, M, K, beta, _first(q, x, 120))
    assert torch.equal(out.indices.cpu(), idx)
    torch.testing.assert_close(out.scores[:, :M].cpu(), f)
    assert out.indices.device.type == device


@pytest.mark.parametrize("lists", [None, 6, 40, 120])
def test_all_vs_all_and_database_lists_equal_the_reference(lists, device):
    """The neighbours read from database kNN lists (with the exact fallback) change nothing."""
    _, x = _data(seed=1)
    sg = SuperGlobal(M=30, K=4, database_neighbors=lists, backend="torch").fit(x.to(device))
    idx, f = ref_superglobal(x, x, 30, 4, 0.15, _first(x, x, 120))
    out = sg.rerank(None, k=120)
    assert torch.equal(out.indices.cpu(), idx)
    torch.testing.assert_close(out.scores[:, :30].cpu(), f)
    explicit = sg.rerank(x.to(device), k=120)
    assert torch.equal(explicit.indices.cpu(), idx)


def test_the_list_path_falls_back_where_lists_are_short():
    """Lists of 3 hold fewer than K shortlisted items for most rows: the fallback decides."""
    q, x = _data(seed=2)
    sg = SuperGlobal(M=40, K=6, database_neighbors=3, backend="torch").fit(x)
    idx, _ = ref_superglobal(q, x, 40, 6, 0.15, _first(q, x, 120))
    assert torch.equal(sg.rerank(q, k=120).indices, idx)


def test_initial_ranking_is_refined_and_its_tail_kept():
    q, x = _data(seed=3)
    # a first stage that is not plain cosine: a noisy copy of the descriptors
    g = torch.Generator().manual_seed(9)
    noisy = normalize(x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype), dim=1)
    s, first = knn_search(q, noisy, 50, backend="torch")
    sg = SuperGlobal(M=25, K=4, backend="torch").fit(x)
    out = sg.rerank(q, k=50, initial=(s, first))
    idx, f = ref_superglobal(q, x, 25, 4, 0.15, first)
    assert torch.equal(out.indices, idx)
    torch.testing.assert_close(out.scores[:, :25], f)
    # the tail keeps the first-stage order and scores lowered by one constant per query
    assert torch.equal(out.indices[:, 25:], first[:, 25:])
    shift = s[:, 25:] - out.scores[:, 25:]
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    # k longer than the given ranking: padded
    longer = sg.rerank(q, k=60, initial=(s, first))
    assert (longer.indices[:, 50:] == -1).all() and torch.isinf(longer.scores[:, 50:]).all()
    # k shorter than M: the best of the refined shortlist
    assert torch.equal(sg.rerank(q, k=7, initial=(s, first)).indices, idx[:, :7])


def test_padding_in_the_initial_ranking_is_skipped():
    q, x = _data(seed=4)
    s, first = knn_search(q, x, 30, backend="torch")
    s, padded = s.clone(), first.clone()
    padded[:, 20:] = -1
    s[:, 20:] = float("-inf")
    out = SuperGlobal(M=25, K=4, backend="torch").fit(x).rerank(q, k=30, initial=(s, padded))
    idx, f = ref_superglobal(q, x, 25, 4, 0.15, first[:, :20])
    assert torch.equal(out.indices[:, :20], idx)
    torch.testing.assert_close(out.scores[:, :20], f)
    assert (out.indices[:, 20:] == -1).all() and torch.isinf(out.scores[:, 20:]).all()


def test_blocks_do_not_change_results():
    q, x = _data(seed=5)
    a = SuperGlobal(M=30, K=4, backend="torch").fit(x).rerank(q, k=40)
    b = SuperGlobal(M=30, K=4, backend="torch", block_bytes=1).fit(x).rerank(q, k=40)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.scores, b.scores)


def test_score_candidates_is_the_refined_score_of_each_pair():
    _, x = _data(seed=6)
    sg = SuperGlobal(M=20, K=4, backend="torch").fit(x)
    rows = torch.tensor([3, 50, 77])
    s, cand = knn_search(x[rows], x, 30, backend="torch")
    cand = cand.clone()
    cand[0, -1] = -1
    new = sg.as_rescorer()(rows, cand, s)
    assert new.shape == (3, 30) and torch.isinf(new[0, -1]) and new[0, -1] < 0
    idx, f = ref_superglobal(x[rows], x, 20, 4, 0.15, cand[:, :20])
    for b in range(3):
        pos = {int(c): p for p, c in enumerate(cand[b, :20])}
        expected = torch.empty(20, dtype=x.dtype)
        for p, c in enumerate(idx[b, :20]):
            expected[pos[int(c)]] = f[b, p]
        torch.testing.assert_close(new[b, :20], expected)
    # after the shortlist: first-stage order, every score below the shortlist's lowest
    tail = new[1:, 20:]
    assert (tail[:, :-1] >= tail[:, 1:]).all()
    assert (tail.max(1).values <= new[1:, :20].min(1).values).all()


def test_superglobal_changes_the_ranking_and_float32_backends_agree():
    q, x = _data(n=400, d=16, nq=20, seed=7)
    q, x = q.float(), x.float()
    plain = KNN(backend="torch").fit(x).rerank(q, k=50).indices
    a = SuperGlobal(M=60, backend="torch").fit(x).rerank(q, k=50)
    b = SuperGlobal(M=60).fit(x).rerank(q, k=50)
    assert not torch.equal(a.indices, plain)
    assert (a.indices == b.indices).float().mean() > 0.99
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-5)


def test_declarations_and_function_twin():
    q, x = _data(seed=8)
    sg = SuperGlobal(M=30, K=4, backend="torch").fit(x)
    assert sg.accepts_initial and not sg.transductive and not sg.needs_query_similarity
    assert sg.shortlist_size == 30
    ref = sg.rerank(q, k=9)
    assert torch.equal(sg.rerank(q, k=9, asymmetric=True).indices, ref.indices)
    twin = superglobal_rerank(q, x, 9, M=30, K=4, backend="torch")
    assert torch.equal(twin.indices, ref.indices) and torch.equal(twin.scores, ref.scores)


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"M": 0}, ValueError, "M must be >= 1"),
        ({"K": -1}, ValueError, "K must be >= 0"),
        ({"beta": -0.1}, ValueError, "beta must be >= 0"),
        ({"database_neighbors": 0}, ValueError, "database_neighbors must be >= 1"),
        ({"M": 2.0}, TypeError, "M must be an integer"),
    ],
)
def test_bad_settings(params, error, match):
    _, x = _data()
    with pytest.raises(error, match=match):
        SuperGlobal(**params).fit(x)


def test_bad_inputs():
    q, x = _data()
    with pytest.raises(ValueError, match="database must be L2-normalised"):
        SuperGlobal().fit(1.5 * x)
    sg = SuperGlobal(M=10, backend="torch").fit(x)
    with pytest.raises(ValueError, match="queries must be L2-normalised"):
        sg.rerank(2 * q, k=3)
    s, first = knn_search(q, x, 10, backend="torch")
    first = first.clone()
    first[2, 5] = first[2, 1]
    with pytest.raises(ValueError, match="initial repeats a database item in row 2"):
        sg.rerank(q, k=5, initial=(s, first))


@pytest.mark.parametrize("plan", ["gram", "dense", "dense-blocks"])
@pytest.mark.parametrize("block_bytes", [1, 4096, 256 * 2**20])
def test_every_neighbour_plan_equals_the_reference(plan, block_bytes, monkeypatch):
    """The product of the distinct shortlisted items with each other (whole, or item-major in
    blocks) and the per-query products (whole, or by blocks of rows using the symmetry: 30
    rows in 4 blocks of 7 or 8) give the same ranking as the reference."""
    import graphrerank.rerankers.superglobal as module

    monkeypatch.setattr(module, "_GRAM_READ_COST", -(10**9) if plan == "gram" else 10**9)
    if plan == "dense-blocks":
        monkeypatch.setattr(module, "_TRIANGLE_MIN_DIM", 1)
        monkeypatch.setattr(module, "_ROW_BLOCK", 7)
        plan = "dense"
    q, x = _data(seed=10)
    sg = SuperGlobal(M=30, K=4, backend="torch", block_bytes=block_bytes).fit(x)
    assert sg._plan(10, 30, knn_search(q, x, 30, backend="torch")[1], None) == plan
    idx, f = ref_superglobal(q, x, 30, 4, 0.15, _first(q, x, 60))
    out = sg.rerank(q, k=60)
    assert torch.equal(out.indices, idx)
    torch.testing.assert_close(out.scores[:, :30], f)
    # padding in the initial ranking and shortlists cut short
    s, first = knn_search(q, x, 30, backend="torch")
    s, padded = s.clone(), first.clone()
    padded[:, 20:] = -1
    s[:, 20:] = float("-inf")
    out = sg.rerank(q, k=30, initial=(s, padded))
    idx, f = ref_superglobal(q, x, 25, 4, 0.15, first[:, :20])
    assert torch.equal(out.indices[:, :20], idx)
    torch.testing.assert_close(out.scores[:, :20], f)
    # all-vs-all and the R-DiP re-scoring hook
    idx, _ = ref_superglobal(x, x, 30, 4, 0.15, _first(x, x, 60))
    assert torch.equal(sg.rerank(None, k=60).indices, idx)


def test_the_plan_follows_the_cost():
    """Many queries over a small database of long descriptors: one product of the shortlisted
    items; few queries, or short descriptors (cheap per-query products): each query's own."""
    many = torch.randint(0, 2000, (2000, 100))
    few = torch.randperm(2000)[:100][None, :]
    _, x = _data(n=2000, d=1024, seed=11)
    sg = SuperGlobal(M=100, K=4, backend="torch").fit(x)
    assert sg._plan(2000, 100, many, None) == "gram"
    assert sg._plan(1, 100, few, None) == "dense"
    _, x = _data(n=2000, d=32, seed=11)
    sg = SuperGlobal(M=100, K=4, backend="torch").fit(x)
    assert sg._plan(2000, 100, many, None) == "dense"


@pytest.mark.parametrize("plan", ["gram", "dense", "dense-blocks", "lists"])
def test_buffers_reused_across_uneven_blocks_with_ties_and_short_lists(plan, monkeypatch):
    """The per-block buffers (kept from block to block, the last block smaller) leave nothing
    of an earlier block behind: exact duplicates of database items (tied neighbours and tied
    final scores: the refined scores agree, the sets of items agree) and a shortlist shorter
    than K + 1 (K = 9 neighbours within 6 items) give the reference's scores."""
    import graphrerank.rerankers.superglobal as module

    monkeypatch.setattr(module, "_GRAM_READ_COST", -(10**9) if plan == "gram" else 10**9)
    if plan == "dense-blocks":  # the symmetric product in 4 blocks of 6 rows
        monkeypatch.setattr(module, "_TRIANGLE_MIN_DIM", 1)
        monkeypatch.setattr(module, "_ROW_BLOCK", 5)
        plan = "dense"
    q, x = _data(n=60, d=12, nq=7, seed=12)
    x = torch.cat([x, x[:20]])  # items 60..79 duplicate items 0..19
    lists = 30 if plan == "lists" else None
    for block_bytes in (1, 3 * 2**14, 256 * 2**20):
        sg = SuperGlobal(
            M=24, K=4, database_neighbors=lists, backend="torch", block_bytes=block_bytes
        ).fit(x)
        first = _first(q, x, 40)
        s = torch.gather(q @ x.T, 1, first)
        if plan != "lists":
            assert sg._plan(7, 24, first[:, :24], None) == plan
        out = sg.rerank(q, k=40, initial=(s, first))
        idx, f = ref_superglobal(q, x, 24, 4, 0.15, first)
        torch.testing.assert_close(out.scores[:, :24], f)
        assert torch.equal(out.indices[:, :24].sort(1).values, idx[:, :24].sort(1).values)
        # a shortlist of 6 with K = 9: every item's neighbours are the other 5
        sg = SuperGlobal(
            M=24, K=9, database_neighbors=lists, backend="torch", block_bytes=block_bytes
        ).fit(x)
        out = sg.rerank(q, k=6, initial=(s[:, :6], first[:, :6]))
        idx, f = ref_superglobal(q, x, 24, 5, 0.15, first[:, :6])
        torch.testing.assert_close(out.scores, f)
        assert torch.equal(out.indices.sort(1).values, idx.sort(1).values)
