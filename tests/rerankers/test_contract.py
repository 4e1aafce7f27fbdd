"""The contract every re-ranker in graphrerank.rerankers.RERANKERS must keep."""

import itertools

import numpy as np
import pytest
import torch

from graphrerank.rerankers import RERANKERS, NotFittedError

IDS = [cls.__name__ for cls in RERANKERS]


def _data(n=40, d=12, nq=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, d, generator=g, dtype=torch.float64)
    x = centers[torch.arange(n) % 4] + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    q = centers[torch.arange(nq) % 4] + 0.5 * torch.randn(nq, d, generator=g, dtype=torch.float64)
    norm = torch.nn.functional.normalize
    return norm(q, dim=1).to(dtype), norm(x, dim=1).to(dtype)


def _make(cls, **extra):
    return cls(**{**cls._test_params(), **extra})


@pytest.fixture(params=RERANKERS, ids=IDS)
def cls(request):
    return request.param


def test_settings_are_keyword_only_and_stored_verbatim(cls):
    import inspect

    sig = inspect.signature(cls.__init__)
    for p in list(sig.parameters.values())[1:]:
        if p.name in cls._positional_settings:
            assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, p.name
        else:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, (
                f"{cls.__name__}.{p.name} not keyword-only"
            )
        assert p.default is not inspect.Parameter.empty, f"{cls.__name__}.{p.name} has no default"
    r = cls()
    assert r.get_params() == cls.default_params()
    assert not [a for a in vars(r) if a.endswith("_")], "no fitted state before fit"


def test_get_set_params_round_trip_and_repr(cls):
    r = _make(cls)
    params = r.get_params()
    clone = cls(**params)
    assert clone.get_params() == params
    assert repr(r).startswith(cls.__name__ + "(")
    with pytest.raises(ValueError, match="has no setting 'not_a_setting'"):
        r.set_params(not_a_setting=1)


def test_rerank_before_fit_raises(cls):
    with pytest.raises(NotFittedError, match="call fit"):
        _make(cls).rerank(k=3)


def test_fit_returns_self_and_does_not_change_settings(cls):
    q, x = _data()
    r = _make(cls)
    before = r.get_params()
    assert r.fit(x) is r
    assert r.get_params() == before
    assert r.n_database_ == 40


def test_output_shapes_order_and_range(cls, device):
    q, x = _data()
    q, x = q.to(device), x.to(device)
    r = _make(cls).fit(x)
    out = r.rerank(q, k=10)
    assert out.scores.shape == (6, 10) and out.indices.shape == (6, 10)
    assert out.indices.dtype == torch.int64 and out.scores.is_floating_point()
    assert out.scores.device.type == device and out.indices.device.type == device
    assert ((out.indices >= -1) & (out.indices < 40)).all()
    valid = out.indices >= 0
    assert bool((out.scores[:, :-1] >= out.scores[:, 1:]).all()), "scores sorted best first"
    for row, ok in zip(out.indices, valid):
        ids = row[ok].tolist()
        assert len(ids) == len(set(ids)), "no item twice in one ranking"


def test_all_vs_all(cls):
    q, x = _data()
    out = _make(cls).fit(x).rerank(None, k=40)
    assert out.indices.shape == (40, 40)
    # a full ranking of every item holds every database item once
    assert (out.indices.sort(dim=1).values == torch.arange(40)).all()


def test_numpy_input_gives_cpu_tensors(cls):
    q, x = _data()
    out = _make(cls).fit(x.numpy()).rerank(q.numpy(), k=5)
    assert isinstance(out.scores, torch.Tensor) and out.scores.device.type == "cpu"
    ref = _make(cls).fit(x).rerank(q, k=5)
    assert torch.equal(out.indices, ref.indices)


def test_refit_discards_state(cls):
    q, x = _data()
    q2, x2 = _data(n=30, seed=1)
    r = _make(cls).fit(x).fit(x2)
    assert r.n_database_ == 30
    fresh = _make(cls).fit(x2)
    assert torch.equal(r.rerank(q2, k=5).indices, fresh.rerank(q2, k=5).indices)


def test_inductive_rerankers_are_batch_invariant(cls):
    """An inductive method gives each query the same list whatever batch it comes in."""
    q, x = _data()
    r = _make(cls).fit(x)
    full = r.rerank(q, k=8)
    one_by_one = [r.rerank(q[i : i + 1], k=8) for i in range(q.shape[0])]
    same = all(torch.equal(full.indices[i], o.indices[0]) for i, o in enumerate(one_by_one))
    if not r.transductive:
        assert same, f"{cls.__name__} declares itself inductive but depends on the query batch"


def test_asymmetric_declaration(cls):
    q, x = _data()
    r = _make(cls).fit(x)
    if r.needs_query_similarity:
        with pytest.raises(ValueError, match="same encoder"):
            r.rerank(q, k=3, asymmetric=True)
    else:
        assert r.rerank(q, k=3, asymmetric=True).indices.shape == (6, 3)


@pytest.mark.parametrize(
    ("queries", "k", "error", "match"),
    [
        (np.zeros((2, 11), np.float32), 3, ValueError, "dimension 11, expected 12"),
        (np.full((2, 12), np.nan, np.float32), 3, ValueError, "queries contains NaN"),
        (np.zeros((0, 12), np.float32), 3, ValueError, "queries is empty"),
        (np.zeros((2, 12), np.float32), 41, ValueError, "k=41 is larger than the database"),
        (np.zeros((2, 12), np.int32), 3, TypeError, "floating point"),
        (np.zeros(12, np.float32), 3, ValueError, "2-D"),
    ],
)
def test_bad_queries(cls, queries, k, error, match):
    _, x = _data()
    r = _make(cls).fit(x)
    with pytest.raises(error, match=match):
        r.rerank(queries, k=k)


def test_bad_database(cls):
    with pytest.raises(ValueError, match="database is empty"):
        _make(cls).fit(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="database contains NaN"):
        _make(cls).fit(np.full((5, 4), np.inf, np.float32))


def test_mixed_devices_raise(cls):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device and a CPU")
    q, x = _data()
    r = _make(cls).fit(x)
    with pytest.raises(ValueError, match="queries is on cuda"):
        r.rerank(q.cuda(), k=3)


def test_initial_ranking(cls):
    q, x = _data()
    r = _make(cls).fit(x)
    first = r.rerank(q, k=10) if not r.accepts_initial else None
    if first is None:
        from graphrerank.graph import knn_search

        first = knn_search(q, x, 20, backend="torch")
    if r.accepts_initial:
        out = r.rerank(q, k=10, initial=first)
        assert out.indices.shape == (6, 10)
        with pytest.raises(ValueError, match="initial must hold"):
            r.rerank(q, k=10, initial=(first[0][:2], first[1][:2]))
    else:
        with pytest.raises(ValueError, match="takes no initial ranking"):
            r.rerank(q, k=10, initial=first)


def test_score_candidates_shape_when_supported(cls):
    q, x = _data()
    r = _make(cls).fit(x)
    rows = torch.tensor([0, 5, 9])
    from graphrerank.graph import knn_search

    cand = knn_search(x[rows], x, 8, backend="torch")
    idx = cand.indices.clone()
    idx[0, -1] = -1
    try:
        out = r.as_rescorer()(rows, idx, cand.scores)
    except NotImplementedError:
        return
    assert out.shape == (3, 8)
    assert torch.isinf(out[0, -1]) and out[0, -1] < 0
    assert torch.isfinite(out[idx >= 0]).all()


@pytest.mark.parametrize(
    "name", ["Diffusion", "FastSpectralRanking", "KReciprocal", "GNNRerank", "SuperGlobal"]
)
def test_long_steps_report_progress(name):
    import graphrerank.rerankers as rr

    cls = getattr(rr, name)
    q, x = _data()
    seen = []
    r = _make(cls, progress=lambda done, total: seen.append((done, total))).fit(x)
    seen.clear()
    r.rerank(q, k=5)
    assert seen and seen[-1] == (6, 6)  # every query accounted for
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(seen))
    seen.clear()
    r.rerank(None, k=5)
    assert seen[-1] == (40, 40)
    with pytest.raises(TypeError, match="progress must be None, True, False or a callable"):
        _make(cls, progress=3).fit(x)
