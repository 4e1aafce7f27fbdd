"""LocalDescriptorReranker: the shared re-ranker contract (with local descriptors) and its own
behaviour: shortlist fusion, initial rankings, memory, persistence, tuning, R-DiP hook."""

import inspect

import numpy as np
import pytest
import torch

from graphrerank._io import CorruptFileError
from graphrerank.graph import knn_graph, knn_search
from graphrerank.models import LocalMatcher, fuse_scores
from graphrerank.rerankers import (
    RERANKERS,
    RERANKERS_WITH_LOCAL,
    LocalDescriptorReranker,
    NotFittedError,
    local_descriptor_rerank,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n=40, d=12, nq=6, lq=4, ld=3, dl=8, seed=0):
    """Global descriptors as in the shared contract test, plus local descriptors per item."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, d, generator=g, dtype=torch.float64)
    x = centers[torch.arange(n) % 4] + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    q = centers[torch.arange(nq) % 4] + 0.5 * torch.randn(nq, d, generator=g, dtype=torch.float64)
    lcent = torch.randn(4, max(lq, ld), dl, generator=g)
    xl = lcent[torch.arange(n) % 4, :ld] + 0.7 * torch.randn(n, ld, dl, generator=g)
    ql = lcent[torch.arange(nq) % 4, :lq] + 0.7 * torch.randn(nq, lq, dl, generator=g)
    norm = torch.nn.functional.normalize
    return norm(q, dim=1).float(), norm(x, dim=1).float(), ql, xl


def _matcher(**kw):
    torch.manual_seed(0)
    return LocalMatcher(8, hidden=8, heads=2, num_layers=1, ffn=8, k_intra=1, k_cross=2, **kw)


VARIANTS = {
    "chamfer": {},
    "pairwise": {"model": "matcher", "mode": "pairwise"},
    "listwise": {"model": "matcher", "mode": "listwise", "window": 4, "stride": 2},
    "asymmetric-binary": {"model": "matcher", "db_descriptors": 2, "db_storage": "binary"},
}


@pytest.fixture(params=list(VARIANTS), ids=list(VARIANTS))
def make(request):
    def build(**extra):
        settings = {**LocalDescriptorReranker._test_params(), **VARIANTS[request.param], **extra}
        if settings.get("model") == "matcher":
            settings["model"] = _matcher()
        return LocalDescriptorReranker(**settings)

    return build


# ---------------------------------------------------------------- the shared contract
def test_registered_apart_from_the_global_only_rerankers():
    assert LocalDescriptorReranker in RERANKERS_WITH_LOCAL
    assert LocalDescriptorReranker not in RERANKERS


def test_settings_are_keyword_only_and_stored_verbatim():
    cls = LocalDescriptorReranker
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty
    r = cls()
    assert r.get_params() == cls.default_params()
    assert not [a for a in vars(r) if a.endswith("_")]


def test_get_set_params_round_trip_and_repr(make):
    r = make()
    params = r.get_params()
    assert LocalDescriptorReranker(**params).get_params() == params
    assert repr(r).startswith("LocalDescriptorReranker(")
    with pytest.raises(ValueError, match="has no setting 'not_a_setting'"):
        r.set_params(not_a_setting=1)


def test_rerank_before_fit_raises(make):
    with pytest.raises(NotFittedError, match="call fit"):
        make().rerank(k=3)


def test_fit_returns_self_and_keeps_settings(make):
    _, x, _, xl = _data()
    r = make()
    before = r.get_params()
    assert r.fit(x, local=xl) is r
    assert r.get_params() == before and r.n_database_ == 40


def test_output_shapes_order_and_range(make, device):
    q, x, ql, xl = (t.to(device) for t in _data())
    r = make()
    if r.model is not None:
        r.model.to(device)
    out = r.fit(x, local=xl).rerank(q, k=10, local=ql)
    assert out.scores.shape == (6, 10) and out.indices.shape == (6, 10)
    assert out.indices.dtype == torch.int64 and out.scores.device.type == device
    assert ((out.indices >= 0) & (out.indices < 40)).all()
    assert bool((out.scores[:, :-1] >= out.scores[:, 1:]).all())
    for row in out.indices.tolist():
        assert len(set(row)) == len(row)


def test_all_vs_all(make):
    _, x, _, xl = _data()
    out = make().fit(x, local=xl).rerank(None, k=40)
    assert (out.indices.sort(dim=1).values == torch.arange(40)).all()


def test_numpy_input_gives_cpu_tensors(make):
    q, x, ql, xl = _data()
    out = make().fit(x.numpy(), local=xl.numpy()).rerank(q.numpy(), k=5, local=ql.numpy())
    ref = make().fit(x, local=xl).rerank(q, k=5, local=ql)
    assert isinstance(out.scores, torch.Tensor) and torch.equal(out.indices, ref.indices)


def test_refit_discards_state(make):
    _, x, _, xl = _data()
    q2, x2, ql2, xl2 = _data(n=30, seed=1)
    r = make().fit(x, local=xl).fit(x2, local=xl2)
    assert r.n_database_ == 30
    fresh = make().fit(x2, local=xl2)
    assert torch.equal(
        r.rerank(q2, k=5, local=ql2).indices, fresh.rerank(q2, k=5, local=ql2).indices
    )


def test_inductive_batch_invariance(make):
    q, x, ql, xl = _data()
    r = make().fit(x, local=xl)
    assert not r.transductive
    full = r.rerank(q, k=8, local=ql)
    for i in range(6):
        one = r.rerank(q[i : i + 1], k=8, local=ql[i : i + 1])
        assert torch.equal(full.indices[i], one.indices[0])


def test_asymmetric_queries_are_allowed(make):
    q, x, ql, xl = _data()
    r = make().fit(x, local=xl)
    assert not r.needs_query_similarity
    assert r.rerank(q, k=3, local=ql, asymmetric=True).indices.shape == (6, 3)


@pytest.mark.parametrize(
    ("queries", "local", "k", "error", "match"),
    [
        (np.zeros((2, 11), np.float32), None, 3, ValueError, "dimension 11, expected 12"),
        (np.full((2, 12), np.nan, np.float32), None, 3, ValueError, "queries contains NaN"),
        (np.zeros((0, 12), np.float32), None, 3, ValueError, "queries is empty"),
        (np.ones((2, 12), np.float32), None, 41, ValueError, "k=41 is larger than the database"),
        (np.zeros((2, 12), np.int32), None, 3, TypeError, "floating point"),
        (np.zeros(12, np.float32), None, 3, ValueError, "2-D"),
        (np.ones((2, 12), np.float32), "missing", 3, TypeError, "local descriptors"),
        (np.ones((2, 12), np.float32), np.ones((3, 4, 8), np.float32), 3, ValueError,
         "local holds 3 image"),
        (np.ones((2, 12), np.float32), np.ones((2, 4, 7), np.float32), 3, ValueError,
         "dimension 7, expected 8"),
        (np.ones((2, 12), np.float32), np.ones((2, 8), np.float32), 3, ValueError, "3-D"),
        (np.ones((2, 12), np.float32), np.full((2, 4, 8), np.nan, np.float32), 3, ValueError,
         "local contains NaN"),
        (np.ones((2, 12), np.float32), np.ones((2, 4, 8), np.int64), 3, TypeError,
         "floating point"),
    ],
)  # fmt: skip
def test_bad_queries(make, queries, local, k, error, match):
    _, x, _, xl = _data()
    r = make().fit(x, local=xl)
    if local is None:
        local = np.ones((max(queries.shape[0], 1) if queries.ndim == 2 else 1, 4, 8), np.float32)
    elif isinstance(local, str):
        local = None
    with pytest.raises(error, match=match):
        r.rerank(queries, k=k, local=local)


def test_bad_database(make):
    _, x, _, xl = _data()
    with pytest.raises(ValueError, match="database is empty"):
        make().fit(np.zeros((0, 4), np.float32), local=np.zeros((0, 3, 8), np.float32))
    with pytest.raises(ValueError, match="database contains NaN"):
        make().fit(np.full((5, 4), np.inf, np.float32), local=np.ones((5, 3, 8), np.float32))
    with pytest.raises(TypeError, match=r"fit\(database, local=...\)"):
        make().fit(x)
    with pytest.raises(ValueError, match="local holds 39 image"):
        make().fit(x, local=xl[:39])


def test_bad_settings():
    _, x, _, xl = _data()
    cases = [
        ({"top_m": 0}, ValueError, "top_m must be >= 1"),
        ({"mode": "both"}, ValueError, "mode must be one of"),
        ({"lambda_value": 1.5}, ValueError, "lambda_value must be <= 1"),
        ({"gamma": 0}, ValueError, "gamma must be > 0"),
        ({"db_storage": "int8"}, ValueError, "db_storage must be one of"),
        ({"db_descriptors": 4}, ValueError, "db_descriptors=4 but local holds 3"),
        ({"model": torch.nn.Linear(2, 2)}, TypeError, "LocalMatcher"),
        ({"model": LocalMatcher(5)}, ValueError, "dimension 8, expected 5"),
        ({"model": LocalMatcher(8, use_positions=True)}, ValueError, "uses descriptor positions"),
    ]
    for settings, error, match in cases:
        with pytest.raises(error, match=match):
            LocalDescriptorReranker(**settings).fit(x, local=xl)


def test_mixed_devices_raise():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device and a CPU")
    q, x, ql, xl = _data()
    r = LocalDescriptorReranker().fit(x, local=xl)
    with pytest.raises(ValueError, match="queries is on cuda"):
        r.rerank(q.cuda(), k=3, local=ql.cuda())
    with pytest.raises(ValueError, match="local is on cuda"):
        r.rerank(q, k=3, local=ql.cuda())
    with pytest.raises(ValueError, match="model is on cpu"):
        LocalDescriptorReranker(model=_matcher()).fit(x.cuda(), local=xl.cuda())


# ---------------------------------------------------------------- its own behaviour
def _chamfer(a, b):
    a = a.double() / a.double().norm(dim=-1, keepdim=True)
    b = b.double() / b.double().norm(dim=-1, keepdim=True)
    return float((a @ b.T).max(dim=1).values.mean())


def test_fusion_of_the_shortlist_and_the_rest_kept():
    """Dense transcription: global top-M re-ordered by lambda s + (1 - lambda) sigmoid(gamma c)."""
    q, x, ql, xl = _data()
    lam, gam, m = 0.3, 4.0, 12
    r = LocalDescriptorReranker(top_m=m, lambda_value=lam, gamma=gam).fit(x, local=xl)
    out = r.rerank(q, k=30, local=ql)
    sims = q.double() @ x.double().T
    for i in range(6):
        first = sims[i].argsort(descending=True).tolist()
        top = first[:m]
        fused = {j: lam * float(sims[i, j]) + (1 - lam) / (1 + np.exp(-gam * _chamfer(ql[i], xl[j])))
                 for j in top}  # fmt: skip
        expected = sorted(top, key=lambda j: -fused[j]) + first[m:30]
        assert out.indices[i].tolist() == expected
        np.testing.assert_allclose(out.scores[i, :m].numpy(), sorted(fused.values(), reverse=True),
                                   rtol=1e-5)  # fmt: skip


def test_lambda_one_keeps_the_first_stage():
    q, x, ql, xl = _data()
    out = LocalDescriptorReranker(model=_matcher(), lambda_value=1.0).fit(x, local=xl)
    ref = knn_search(q, x, 15, backend="torch")
    assert torch.equal(out.rerank(q, k=15, local=ql).indices, ref.indices)


def test_initial_ranking_is_reranked_and_padded():
    q, x, ql, xl = _data()
    r = LocalDescriptorReranker(top_m=4, lambda_value=0.0).fit(x, local=xl)
    g = torch.Generator().manual_seed(5)
    idx = torch.stack([torch.randperm(40, generator=g)[:6] for _ in range(6)])
    initial = (torch.linspace(1, 0, 6).expand(6, 6).contiguous(), idx)
    out = r.rerank(q, k=8, local=ql, initial=initial)
    for i in range(6):
        top = idx[i, :4].tolist()
        chamfer = {j: _chamfer(ql[i], xl[j]) for j in top}
        assert out.indices[i, :4].tolist() == sorted(top, key=lambda j: -chamfer[j])
        assert out.indices[i, 4:6].tolist() == idx[i, 4:].tolist()
    assert out.indices[:, 6:].eq(-1).all() and torch.isinf(out.scores[:, 6:]).all()
    with pytest.raises(ValueError, match="initial must hold"):
        r.rerank(q, k=3, local=ql, initial=(initial[0][:2], initial[1][:2]))


def test_all_vs_all_uses_stored_or_given_query_descriptors():
    _, x, _, xl = _data()
    r = LocalDescriptorReranker(db_descriptors=2, lambda_value=0.0, top_m=40).fit(x, local=xl)
    stored = r.rerank(None, k=40)
    given = r.rerank(None, k=40, local=xl)
    for i in (0, 7):

        def key(j, ql):
            return -_chamfer(ql, xl[j, :2])

        assert stored.indices[i].tolist() == sorted(range(40), key=lambda j: key(j, xl[i, :2]))
        assert given.indices[i].tolist() == sorted(range(40), key=lambda j: key(j, xl[i]))


def test_query_descriptors_are_truncated():
    q, x, ql, xl = _data()
    a = LocalDescriptorReranker(query_descriptors=2, lambda_value=0.0).fit(x, local=xl)
    b = LocalDescriptorReranker(lambda_value=0.0).fit(x, local=xl)
    assert torch.equal(a.rerank(q, 10, local=ql).indices, b.rerank(q, 10, local=ql[:, :2]).indices)


@pytest.mark.parametrize(
    ("n", "storage", "expected"), [(None, "float32", 96), (2, "float16", 32), (2, "binary", 2)]
)
def test_bytes_per_image(n, storage, expected):
    _, x, _, xl = _data()
    r = LocalDescriptorReranker(db_descriptors=n, db_storage=storage).fit(x, local=xl)
    assert r.bytes_per_image_ == expected
    assert r.local_.data[0].numel() * r.local_.data.element_size() == expected


def test_function_twin():
    q, x, ql, xl = _data()
    settings = {"model": _matcher(), "top_m": 7, "lambda_value": 0.2}
    out = local_descriptor_rerank(q, x, 9, local=ql, database_local=xl, **settings)
    ref = LocalDescriptorReranker(**settings).fit(x, local=xl).rerank(q, 9, local=ql)
    assert torch.equal(out.indices, ref.indices) and torch.equal(out.scores, ref.scores)
    fr = LocalDescriptorReranker(**settings).fit_rerank(x, q, 9, local=ql, database_local=xl)
    assert torch.equal(fr.indices, ref.indices)


def test_save_load_round_trip(tmp_path, make):
    q, x, ql, xl = _data()
    r = make(lambda_value=0.25).fit(x, local=xl)
    path = r.save(tmp_path / "r")
    loaded = LocalDescriptorReranker.load(path)
    assert {k: v for k, v in loaded.get_params().items() if k != "model"} == {
        k: v for k, v in r.get_params().items() if k != "model"
    }
    a, b = r.rerank(q, 10, local=ql), loaded.rerank(q, 10, local=ql)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)
    assert loaded.bytes_per_image_ == r.bytes_per_image_
    bad = tmp_path / "bad.npz"
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(x.numpy().tobytes()[:64])  # inside the stored database
    assert at > 0
    raw[at + 32] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError):
        LocalDescriptorReranker.load(bad)


def test_tune_fusion_in_one_call():
    _, x, _, xl = _data(n=32)
    labels = torch.arange(32) % 4
    r = LocalDescriptorReranker(top_m=10).fit(x, local=xl)
    best = r.tune_fusion(labels, lambdas=[0.0, 0.5, 1.0], gammas=[1.0, 10.0])
    assert (r.lambda_value, r.gamma) == (best.lambda_value, best.gamma)
    from graphrerank.metrics import class_map

    got = class_map(r.rerank(None, k=32).indices, labels, leave_one_out=True)
    assert got == pytest.approx(best.map, abs=1e-12)
    assert best.map == pytest.approx(float(best.grid.max()), abs=1e-12)
    with pytest.raises(ValueError, match="needs query_labels"):
        r.tune_fusion(labels, x[:3], local=xl[:3])


def test_rdip_edge_rescorer():
    _, x, _, xl = _data()
    r = LocalDescriptorReranker(model=_matcher(), lambda_value=0.4, gamma=2.0).fit(x, local=xl)
    rows = torch.tensor([0, 5, 9])
    cand = knn_search(x[rows], x, 8, backend="torch")
    idx = cand.indices.clone()
    idx[0, -1] = -1
    out = r.as_rescorer()(rows, idx, cand.scores)
    assert out.shape == (3, 8) and torch.isinf(out[0, -1]) and out[0, -1] < 0
    # the same fused score as re-ranking item 5 as a query (its own entry scored alone)
    logits = r.model.eval().score(xl[5:6].expand(8, -1, -1), xl[idx[1]].unsqueeze(1))
    torch.testing.assert_close(out[1], fuse_scores(cand.scores[1], logits.view(-1), 0.4, 2.0))
    graph = knn_graph(x, 5, rescore=r.as_rescorer(), num_candidates=10, backend="torch")
    assert graph.edge_index.shape[1] == 40 * 4


def test_model_with_global_nodes_reads_the_global_descriptors(tmp_path):
    q, x, ql, xl = _data()
    torch.manual_seed(0)
    model = LocalMatcher(8, hidden=8, heads=2, num_layers=1, ffn=8, k_intra=1, k_cross=2,
                         global_dim=12)  # fmt: skip
    r = LocalDescriptorReranker(model=model, lambda_value=0.0, top_m=8).fit(x, local=xl)
    out = r.rerank(q, 8, local=ql)
    idx = knn_search(q, x, 8, backend="torch").indices
    logits = model.eval().score(ql.repeat_interleave(8, 0), xl[idx.reshape(-1)].unsqueeze(1),
                                None, None, q.repeat_interleave(8, 0), x[idx.reshape(-1)].unsqueeze(1))  # fmt: skip
    expected = idx.gather(1, logits.view(6, 8).argsort(dim=1, descending=True))
    assert torch.equal(out.indices, expected)
    loaded = LocalDescriptorReranker.load(r.save(tmp_path / "g"))
    assert torch.equal(loaded.rerank(q, 8, local=ql).indices, out.indices)
    with pytest.raises(ValueError, match="the model takes 12"):
        LocalDescriptorReranker(model=model).fit(x[:, :10], local=xl)


def test_shortlist_logits_are_what_rerank_fuses():
    from graphrerank.models import rerank_shortlist

    q, x, ql, xl = _data()
    r = LocalDescriptorReranker(model=_matcher(), top_m=9, lambda_value=0.35, gamma=3.0)
    r.fit(x, local=xl)
    sl = r.shortlist_logits(q, 5, local=ql)
    assert sl.scores.shape == (6, 9) and sl.logits.shape == (6, 9)
    out = r.rerank(q, 5, local=ql)
    ref = rerank_shortlist(*sl, 0.35, 3.0)
    assert torch.equal(out.indices, ref.indices[:, :5]) and torch.equal(
        out.scores, ref.scores[:, :5]
    )


def test_learned_scores_rebuild_the_rdip_graph():
    """R-DiP with the adapter equals R-DiP with the fused score written out by hand."""
    from graphrerank.rerankers import RDiP

    _, x, _, xl = _data()
    lam, gam = 0.5, 4.0
    learned = LocalDescriptorReranker(lambda_value=lam, gamma=gam).fit(x, local=xl)

    def by_hand(rows, candidates, scores):
        out = torch.full(candidates.shape, float("-inf"))
        for b, i in enumerate(rows.tolist()):
            for j, c in enumerate(candidates[b].tolist()):
                if c >= 0:
                    s = float(x[i].double() @ x[c].double())
                    out[b, j] = lam * s + (1 - lam) / (1 + np.exp(-gam * _chamfer(xl[i], xl[c])))
        return out

    settings = {"km": 12, "kd": 6, "kq": 5, "truncation": 40}
    got = RDiP(rescorer=learned.as_rescorer(), **settings).fit(x).rerank(None, k=40)
    ref = RDiP(rescorer=by_hand, **settings).fit(x).rerank(None, k=40)
    assert torch.equal(got.indices, ref.indices)
    torch.testing.assert_close(got.scores, ref.scores, rtol=1e-4, atol=1e-6)
    plain = RDiP(rescorer=None, **settings).fit(x).rerank(None, k=40)
    assert not torch.equal(got.indices, plain.indices)
