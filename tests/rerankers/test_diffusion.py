"""Online diffusion re-rankers against dense float64 transcriptions of the reference code."""

import numpy as np
import pytest
import torch

from graphrerank.rerankers import (
    KNN,
    Diffusion,
    RegionalDiffusion,
    diffusion_rerank,
    regional_diffusion_rerank,
)
from tests.diffusion import reference as ref


def _clusters(n=60, d=6, clusters=4, spread=0.35, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, d)) * 2
    x = c[np.arange(n) % clusters] + spread * rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _queries(nq=5, d=6, seed=1, near=None):
    rng = np.random.default_rng(seed)
    q = (
        rng.standard_normal((nq, d))
        if near is None
        else near + 0.3 * rng.standard_normal(near.shape)
    )
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("how", ["mutual", "union", "min", "max"])
@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_rankings_match_the_dense_transcription(how, gamma, device):
    x = _clusters()
    q = _queries(near=x[:5])
    r = Diffusion(kd=6, kq=4, gamma=gamma, symmetrize=how, backend="torch")
    out = r.fit(torch.from_numpy(x).to(device)).rerank(torch.from_numpy(q).to(device), k=60)
    ranks, scores = ref.online_diffusion(x, list(q), k=6, kq=4, gamma=gamma, how=how)
    np.testing.assert_array_equal(out.indices.cpu().numpy(), ranks)
    expected = np.take_along_axis(scores, ranks, 1)
    np.testing.assert_allclose(out.scores.cpu().numpy(), expected, rtol=1e-9, atol=1e-12)
    assert out.scores.device.type == device


def test_unreached_items_score_zero_and_follow_the_first_stage_order():
    x = _clusters()
    out = Diffusion(kd=6, kq=4, backend="torch").fit(torch.from_numpy(x)).rerank(None, k=60)
    zero = out.scores == 0
    assert zero.sum() > 60 * 20, "the mutual graph of well separated clusters is disconnected"
    sim = torch.from_numpy(x @ x.T)
    for i in range(60):
        tied = out.indices[i][zero[i]]
        s = sim[i, tied]
        assert bool((s[:-1] >= s[1:]).all())
    by_index = Diffusion(kd=6, kq=4, ties="index", backend="torch").fit(torch.from_numpy(x))
    out2 = by_index.rerank(None, k=60)
    for i in range(60):
        tied = out2.indices[i][out2.scores[i] == 0]
        assert bool((tied[:-1] < tied[1:]).all())


@pytest.mark.parametrize("iterate", ["best", "last"])
def test_all_vs_all_matches_the_transcription(iterate):
    x = _clusters(n=50, spread=0.6, seed=3)
    out = Diffusion(kd=7, kq=3, iterate=iterate, backend="torch", batch_size=16)
    out = out.fit(torch.from_numpy(x)).rerank(None, k=50)
    ranks, _ = ref.online_diffusion(x, list(x), k=7, kq=3, best=iterate == "best")
    np.testing.assert_array_equal(out.indices.numpy(), ranks)


def test_exact_solve_setting():
    x = _clusters(n=50, spread=0.6, seed=3)
    q = _queries(near=x[:4])
    out = Diffusion(kd=7, kq=3, tol=1e-14, max_iter=1000, backend="torch")
    out = out.fit(torch.from_numpy(x)).rerank(torch.from_numpy(q), k=50)
    a = ref.mutual_affinity(x, 7, 3.0)
    lap = np.eye(50) - 0.99 * ref.transition(a)
    for i, qi in enumerate(q):
        f = np.linalg.solve(lap, ref.ymake(x, qi, 3, 3.0))
        np.testing.assert_allclose(out.scores[i].numpy(), np.sort(f)[::-1], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("ties", ["similarity", "index"])
def test_truncation_matches_the_per_query_transcription(ties, device):
    x = _clusters(n=70, spread=0.7, seed=4)
    q = _queries(near=x[:6])
    r = Diffusion(kd=8, kq=5, truncation=25, ties=ties, backend="torch", batch_size=4)
    out = r.fit(torch.from_numpy(x).to(device)).rerank(torch.from_numpy(q).to(device), k=70)
    ranks, scores = ref.online_diffusion(x, list(q), k=8, kq=5, truncation=25)
    # the reference (MATLAB) scatters the sub-graph's solution into zeros and sorts all
    # images: the items outside the sub-graph score 0
    scores = np.where(np.isneginf(scores), 0.0, scores)
    if ties == "index":  # equal scores (the zeros, inside or outside the sub-graph) by index
        idx = np.arange(scores.shape[1])
        ranks = np.stack([np.lexsort((idx, -row)) for row in scores])
    np.testing.assert_array_equal(out.indices.cpu().numpy(), ranks)
    got = out.scores.cpu().numpy()
    assert (got[:, 25:] == 0).all()  # was -inf (real items with non-finite scores)
    np.testing.assert_allclose(
        got[:, :25], np.take_along_axis(scores, ranks[:, :25], 1), rtol=1e-9, atol=1e-12
    )


def test_truncation_to_the_whole_database_is_plain_diffusion():
    x = _clusters(n=40, spread=0.7, seed=5)
    xt = torch.from_numpy(x)
    full = Diffusion(kd=6, kq=3, backend="torch").fit(xt).rerank(None, k=40)
    trunc = Diffusion(kd=6, kq=3, truncation=40, backend="torch").fit(xt).rerank(None, k=40)
    assert torch.equal(full.indices, trunc.indices)
    torch.testing.assert_close(full.scores, trunc.scores)


def test_short_lists_with_truncation():
    x = torch.from_numpy(_clusters(n=40, spread=0.7, seed=5))
    long = Diffusion(kd=6, kq=3, truncation=10, backend="torch").fit(x).rerank(x[:3], k=40)
    short = Diffusion(kd=6, kq=3, truncation=10, backend="torch").fit(x).rerank(x[:3], k=4)
    assert torch.equal(short.indices, long.indices[:, :4])


def test_regional_queries_match_the_transcription(device):
    x = _clusters(n=60, spread=0.6, seed=6)
    rng = np.random.default_rng(7)
    qs = [_queries(nq=r, seed=10 + r, near=x[[r] * r]) for r in (1, 3, 2)]
    ranks, scores = ref.online_diffusion(x, qs, k=6, kq=5)
    r = Diffusion(kd=6, kq=5, backend="torch").fit(torch.from_numpy(x).to(device))
    as_list = r.rerank([torch.from_numpy(v).to(device) for v in qs], k=60)
    np.testing.assert_array_equal(as_list.indices.cpu().numpy(), ranks)
    padded = np.zeros((3, 3, 6))
    mask = np.zeros((3, 3), dtype=bool)
    for i, v in enumerate(qs):
        padded[i, : len(v)] = v
        mask[i, : len(v)] = True
    padded[0, 2] = rng.standard_normal(6)  # masked out: ignored
    as_3d = r.rerank(
        torch.from_numpy(padded).to(device), k=60, query_mask=torch.from_numpy(mask).to(device)
    )
    assert torch.equal(as_3d.indices, as_list.indices)
    torch.testing.assert_close(as_3d.scores, as_list.scores)
    trunc = Diffusion(kd=6, kq=5, truncation=20, backend="torch").fit(torch.from_numpy(x))
    t_ranks, _ = ref.online_diffusion(x, qs, k=6, kq=5, truncation=20)
    got = trunc.rerank([torch.from_numpy(v) for v in qs], k=60)
    np.testing.assert_array_equal(got.indices.numpy(), t_ranks)


def _regional_reference(regions, ids, queries, *, k, kq, pooling, truncation=None):
    n_img = ids.max() + 1
    c = ref.gmp_weights(regions, ids) if pooling == "gmp" else np.ones(len(ids))
    pooled = np.zeros((n_img, regions.shape[1]))
    np.add.at(pooled, ids, regions * c[:, None])
    a = ref.mutual_affinity(regions, k, 3.0)
    out = []
    for qv in queries:
        first = pooled @ qv.sum(0)
        if truncation is None:
            lap = np.eye(len(ids)) - 0.99 * ref.transition(a)
            f = ref.pcg(lap, ref.ymake(regions, qv, kq, 3.0))
            score = np.zeros(n_img)
            np.add.at(score, ids, f * c)
            out.append(ref.order(score, first))
        else:
            top = np.argsort(-first, kind="stable")[:truncation]
            sub = np.concatenate([np.flatnonzero(ids == i) for i in top])
            lap = np.eye(len(sub)) - 0.99 * ref.transition(a[np.ix_(sub, sub)])
            f = ref.pcg(lap, ref.ymake(regions[sub], qv, kq, 3.0))
            score = np.zeros(n_img)
            np.add.at(score, ids[sub], f * c[sub])
            rest = np.argsort(-first, kind="stable")[truncation:]
            out.append(np.concatenate([top[ref.order(score[top], first[top])], rest]))
    return np.array(out)


def _regions(n_img=24, seed=8):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, n_img)
    ids = np.repeat(np.arange(n_img), counts)
    centers = rng.standard_normal((6, 6)) * 2
    v = centers[ids % 6] + 0.7 * rng.standard_normal((len(ids), 6))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    perm = rng.permutation(len(ids))  # regions need not be grouped by image
    return v[perm], ids[perm]


@pytest.mark.parametrize("pooling", ["gmp", "sum"])
@pytest.mark.parametrize("truncation", [None, 9])
def test_regional_database_matches_the_transcription(pooling, truncation, device):
    v, ids = _regions()
    queries = [v[ids == 0], v[ids == 5][:1], v[ids == 11]]
    expected = _regional_reference(
        v, ids, queries, k=7, kq=6, pooling=pooling, truncation=truncation
    )
    r = RegionalDiffusion(kd=7, kq=6, pooling=pooling, truncation=truncation, backend="torch")
    r.fit(torch.from_numpy(v).to(device), image_ids=torch.from_numpy(ids).to(device))
    assert r.n_database_ == 24
    out = r.rerank([torch.from_numpy(q).to(device) for q in queries], k=24)
    np.testing.assert_array_equal(out.indices.cpu().numpy(), expected)


def test_regional_all_vs_all_uses_each_image_regions():
    v, ids = _regions()
    r = RegionalDiffusion(kd=7, kq=6, backend="torch").fit(
        torch.from_numpy(v), image_ids=torch.from_numpy(ids)
    )
    out = r.rerank(None, k=24)
    assert out.indices.shape == (24, 24)
    expected = _regional_reference(
        v, ids, [v[ids == i] for i in range(24)], k=7, kq=6, pooling="gmp"
    )
    np.testing.assert_array_equal(out.indices.numpy(), expected)
    twin = regional_diffusion_rerank(
        None,
        torch.from_numpy(v),
        torch.from_numpy(ids),
        k=24,
        kd=7,
        kq=6,
        backend="torch",
    )
    assert torch.equal(twin.indices, out.indices)


def test_regional_without_ids_is_global_diffusion():
    x = torch.from_numpy(_clusters(n=40, spread=0.6, seed=9))
    a = RegionalDiffusion(kd=6, kq=4, backend="torch").fit(x).rerank(x[:5], k=40)
    b = Diffusion(kd=6, kq=4, backend="torch").fit(x).rerank(x[:5], k=40)
    assert torch.equal(a.indices, b.indices)


def test_function_twin_equals_the_class():
    x = torch.from_numpy(_clusters(n=40, spread=0.6, seed=9))
    q = torch.from_numpy(_queries(near=x[:3].numpy()))
    a = diffusion_rerank(q, x, k=10, kd=6, kq=4, backend="torch")
    b = Diffusion(kd=6, kq=4, backend="torch").fit(x).rerank(q, k=10)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)


def test_diffusion_improves_a_manifold_ranking():
    # points along two arcs that pass close to each other: diffusion follows the arcs
    t = np.linspace(0, 1.2, 40)
    arc1 = np.stack([np.cos(t), np.sin(t), 0.15 * np.ones(40)], 1)
    arc2 = np.stack([np.cos(t + 0.05), np.sin(t + 0.05), -0.15 * np.ones(40)], 1)
    x = np.vstack([arc1, arc2])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat([0, 1], 40)
    xt = torch.from_numpy(x)

    def precision(out, at=20):
        return float((labels[out.indices[:, :at].numpy()] == labels[:, None]).mean())

    base = precision(KNN(backend="torch").fit(xt).rerank(None, k=20))
    diff = precision(Diffusion(kd=5, kq=2, backend="torch").fit(xt).rerank(None, k=20))
    assert diff > base + 0.1


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"alpha": 1.0}, "alpha must be < 1"),
        ({"iterate": "first"}, "iterate must be one of"),
        ({"truncation": 0}, "truncation must be >= 1"),
        ({"ties": "random"}, "ties must be one of"),
        ({"symmetrize": "both"}, "symmetrize must be one of"),
        ({"kq": 0}, "kq must be >= 1"),
        ({"kd": 41}, "kd=41 is larger"),
        ({"kd": 5, "kq": 41}, "kq=41 is larger"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_bad_settings(settings, match):
    x = torch.from_numpy(_clusters(n=40))
    with pytest.raises(ValueError, match=match):
        Diffusion(**settings).fit(x)


def test_bad_inputs():
    x = torch.from_numpy(_clusters(n=40))
    with pytest.raises(ValueError, match="database must be L2-normalised"):
        Diffusion(kd=5).fit(2 * x)
    r = Diffusion(kd=5, kq=3, backend="torch").fit(x)
    with pytest.raises(ValueError, match="queries must be L2-normalised"):
        r.rerank(2 * x[:2], k=3)
    with pytest.raises(ValueError, match="queries must be L2-normalised"):
        r.rerank([2 * x[:2]], k=3)
    with pytest.raises(ValueError, match="query_mask is only used"):
        r.rerank(x[:2], k=3, query_mask=torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"query_mask must be a bool tensor of shape \(2, 3\)"):
        r.rerank(x[:6].reshape(2, 3, 6), k=3, query_mask=torch.ones(2, 2, dtype=torch.bool))
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="query 1 has no valid vector"):
        r.rerank(x[:6].reshape(2, 3, 6), k=3, query_mask=mask)
    with pytest.raises(ValueError, match="dimension 5, expected 6"):
        r.rerank(x[:6, :5].reshape(2, 3, 5), k=3)
    with pytest.raises(ValueError, match=r"queries\[1\] has descriptors of dimension 5"):
        r.rerank([x[:2], x[:2, :5]], k=3)
    with pytest.raises(ValueError, match="k=41 is larger"):
        r.rerank([x[:2]], k=41)
    with pytest.raises(ValueError, match="takes no initial ranking"):
        r.rerank([x[:2]], k=3, initial=(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.long)))


def test_bad_image_ids():
    x = torch.from_numpy(_clusters(n=12))
    r = RegionalDiffusion(kd=3, kq=3, backend="torch")
    with pytest.raises(ValueError, match=r"image_ids must have shape \(12,\)"):
        r.fit(x, image_ids=torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="image_ids must hold integers"):
        r.fit(x, image_ids=torch.zeros(12))
    with pytest.raises(ValueError, match="image_ids must be >= 0"):
        r.fit(x, image_ids=-torch.ones(12, dtype=torch.long))
    with pytest.raises(ValueError, match="image 1 has none"):
        r.fit(x, image_ids=torch.tensor([0] * 6 + [2] * 6))
    with pytest.raises(ValueError, match="pooling must be one of"):
        RegionalDiffusion(pooling="max").fit(x)
    with pytest.raises(ValueError, match="gmp_lambda must be > 0"):
        RegionalDiffusion(gmp_lambda=0.0).fit(x)
