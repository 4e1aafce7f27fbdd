"""graphrerank.tuning: the search finds what is best by construction, never loses to the first
stage, splits by class, shares the first-stage scores, and refuses bad grids by name."""

import math
import warnings

import pytest
import torch

import graphrerank as gr
from graphrerank import tuning
from graphrerank._params import Int, setting
from graphrerank.graph import index as index_module
from graphrerank.graph import knn as knn_module
from graphrerank.metrics import class_map, reid_metrics, revisited_map
from graphrerank.rerankers import (
    KNN,
    AlphaQueryExpansion,
    DatabaseAugmentation,
    Diffusion,
    GNNRerank,
    KReciprocal,
    Pipeline,
    Reranker,
)
from graphrerank.tuning import (
    Protocol,
    class_protocol,
    reid_protocol,
    revisitop_protocol,
    split_by_class,
    tune,
)
from graphrerank.typing import RerankResult


def _clustered(n=48, classes=4, d=8, noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(classes, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % classes
    x = c[y] + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1), y


class Oracle(Reranker):
    """Ranks same-class items first when ``good == 3`` (mAP 1 by construction) and the cosine
    ranking reversed (the worst ranking) for any other value."""

    good: int = setting(0, Int(0))
    data = None  # set by the test: (all descriptors, their classes)

    def _fit(self, database):
        x, y = type(self).data  # the classes of the rows fitted (a subset in halving rounds)
        self.labels_ = y[(database[:, None, :] == x[None]).all(-1).double().argmax(1)]

    def _rerank(self, queries, k, initial=None):
        x = self.database_
        s = x @ x.T
        if self.good == 3:
            y = self.labels_
            s = s + 10.0 * (y[:, None] == y[None, :]).to(s.dtype)
        else:
            s = -s
        val, idx = s.topk(k, dim=1)
        return RerankResult(val, idx)


@pytest.fixture
def oracle():
    x, y = _clustered()
    Oracle.data = (x, y)
    yield x, y
    Oracle.data = None


# --------------------------------------------------------------------------- the search
def test_the_best_setting_is_found(oracle):
    x, y = oracle
    res = tune(Oracle(), {"good": [0, 3, 5]}, x, labels=y)
    assert res.best_params_ == {"good": 3}
    assert res.best_score_ == 1.0
    assert isinstance(res.best_estimator(), Oracle) and res.best_estimator().good == 3
    # every row's score is the class mAP of that ranking, computed here independently
    base = class_map(KNN(backend="torch").fit(x).rerank(None, 48).indices, y, leave_one_out=True)
    worst = class_map((-(x @ x.T)).topk(48, dim=1).indices, y, leave_one_out=True)
    by_setting = {None if r["params"] is None else r["params"]["good"]: r["score"]
                  for r in res.results_}  # fmt: skip
    assert by_setting[None] == pytest.approx(base, abs=1e-9)
    assert by_setting[0] == pytest.approx(worst, abs=1e-9)
    assert by_setting[5] == pytest.approx(worst, abs=1e-9)
    assert res.baseline_score_ == pytest.approx(base, abs=1e-9)
    assert res.given_score_ == pytest.approx(worst, abs=1e-9)  # given: good=0
    assert worst < base < 1.0


def test_when_every_setting_hurts_the_baseline_is_returned(oracle):
    x, y = oracle
    res = tune(Oracle(good=5), {"good": [0, 1, 2, 4]}, x, labels=y)
    assert res.best_params_ is None
    assert res.best_score_ == res.baseline_score_
    assert type(res.best_estimator()) is KNN
    assert res.gain == 0.0
    assert "baseline (KNN)" in res.table()
    # the given settings (good=5) are in the search space too
    assert any(r["given"] and r["params"] == {"good": 5} for r in res.results_)


def test_the_baseline_wins_ties():
    x, y = _clustered()
    # KNN with the same metric is the baseline itself: a tie, which the baseline wins
    res = tune(KNN(backend="torch"), {"metric": ["ip"]}, x, labels=y)
    assert res.best_params_ is None
    scores = {r["score"] for r in res.results_}
    assert len(scores) == 1


def test_tuned_never_below_baseline_on_real_digits():
    ds = gr.datasets.load_digits_retrieval()
    half, _ = class_protocol(ds.database, ds.database_labels).split(0.5, seed=1)
    res = tune(Diffusion(backend="torch"), {"kd": [5, 10, 50], "kq": [3, 10]}, half)
    assert res.best_score_ >= res.baseline_score_
    assert res.best_score_ == max(r["score"] for r in res.results_)
    assert len(res.results_) == 1 + 6 + 0  # baseline + grid (the given kd=50, kq=10 is in it)


def test_random_search_is_seeded_and_halving_keeps_the_best(oracle):
    x, y = oracle
    grid = {"good": [0, 1, 2, 3, 4, 5, 6, 7, 8]}
    a = tune(Oracle(), grid, x, labels=y, search="random", n_iter=4, seed=3)
    b = tune(Oracle(), grid, x, labels=y, search="random", n_iter=4, seed=3)
    ra = [r["params"] for r in a.results_]
    assert ra == [r["params"] for r in b.results_]
    assert len(ra) in (5, 6)  # baseline + 4 draws (+ the given good=0 when not drawn)
    h = tune(Oracle(), grid, x, labels=y, search="halving", factor=3)
    rounds = sorted({r["round"] for r in h.results_})
    assert rounds == [0, 1]  # ceil(log_3(9)) = 2 rounds
    first = [r for r in h.results_ if r["round"] == 0]
    last = [r for r in h.results_ if r["round"] == 1]
    assert first[0]["items"] < last[0]["items"] == 48
    assert len(last) == 1 + 3  # baseline and the best third (the given good=0 among them)
    assert any(r["given"] for r in last)
    assert h.best_params_ == {"good": 3} and h.best_score_ == 1.0


def test_pipeline_stage_settings(oracle):
    x, y = oracle
    pipe = Pipeline(
        [DatabaseAugmentation(k=2, backend="torch"), AlphaQueryExpansion(backend="torch")]
    )
    res = tune(pipe, {"0.k": [2, 4], "AlphaQueryExpansion.alpha": [1.0, 3.0]}, x, labels=y)
    assert len(res.results_) == 1 + 4  # baseline and grid (the given k=2, alpha=3.0 is in it)
    assert [r["given"] for r in res.results_].count(True) == 1
    est = res.best_estimator()
    if res.best_params_ is not None:
        assert est.stages[0].k == res.best_params_["0.k"]
        assert est.stages[1].alpha == res.best_params_["AlphaQueryExpansion.alpha"]
    assert pipe.stages[0].k == 2  # the given pipeline is not modified
    assert not any(r["shared"] for r in res.results_ if r["params"] is not None)


def test_shared_scores_give_the_rankings_of_the_descriptors():
    x, y = _clustered(n=60, classes=5)
    for model, grid in (
        (KReciprocal(), {"k1": [4, 8], "k2": [2, 3]}),
        (Diffusion(backend="torch"), {"kd": [5, 10], "kq": [3]}),
    ):
        a = tune(model, grid, x, labels=y, share=True)
        b = tune(model, grid, x, labels=y, share=False)
        assert all(r["shared"] for r in a.results_)
        assert not any(r["shared"] for r in b.results_)
        for ra, rb in zip(a.results_, b.results_):
            assert ra["params"] == rb["params"]
            assert ra["score"] == pytest.approx(rb["score"], abs=1e-6)


def test_the_first_stage_runs_once(monkeypatch):
    x, y = _clustered(n=60, classes=5)
    calls = {"search": 0, "shared": 0}
    for mod, name in (
        (index_module.KNNIndex, "search"),
        (knn_module, "_torch_knn"),
        (knn_module, "_faiss_knn"),
    ):
        real = getattr(mod, name)

        def spy(*a, _real=real, **kw):
            calls["search"] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(mod, name, spy)
    real_init = tuning._SharedScores.__init__

    def init_spy(self, *a, **kw):
        calls["shared"] += 1
        real_init(self, *a, **kw)

    monkeypatch.setattr(tuning._SharedScores, "__init__", init_spy)
    grid = {"kd": [4, 6, 8, 10], "kq": [2, 3]}
    tune(Diffusion(backend="torch"), grid, x, labels=y)
    assert calls == {"search": 0, "shared": 1}  # 9 runs, one first-stage computation
    calls.update(search=0, shared=0)
    tune(Diffusion(backend="torch"), grid, x, labels=y, share=False)
    assert calls["shared"] == 0 and calls["search"] >= 9  # each run searched again


# --------------------------------------------------------------------------- protocols
def test_split_by_class_is_disjoint_complete_and_seeded():
    y = torch.tensor([5, 5, 1, 1, 1, 7, 2, 2, 9, 9, 9, 9])
    a, b = split_by_class(y, 0.5, seed=0)
    assert sorted(a.tolist() + b.tolist()) == list(range(12))
    assert not set(y[a].tolist()) & set(y[b].tolist())
    assert len(set(y[a].tolist())) == round(0.5 * 5)
    a2, b2 = split_by_class(y, 0.5, seed=0)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    seen = {tuple(split_by_class(y, 0.5, seed=s)[0].tolist()) for s in range(10)}
    assert len(seen) > 1
    a3, _ = split_by_class(y, 0.2, seed=0)
    assert len(set(y[a3].tolist())) == 1
    with pytest.raises(ValueError, match="fraction"):
        split_by_class(y, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        split_by_class(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        split_by_class(torch.zeros(4))


def test_reid_protocol_split_by_identity():
    g = torch.Generator().manual_seed(0)
    feats = gr.datasets.ReIDFeatures(
        query_features=torch.randn(6, 4, generator=g),
        query_ids=torch.tensor([1, 2, 3, 4, 5, 6]),
        query_cams=torch.zeros(6, dtype=torch.long),
        gallery_features=torch.randn(14, 4, generator=g),
        gallery_ids=torch.tensor([1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 0, -1]),
        gallery_cams=torch.ones(14, dtype=torch.long),
    )
    p = reid_protocol(feats)
    a, b = p.split(0.5, seed=2)
    assert not set(a.query_labels.tolist()) & set(b.query_labels.tolist())
    for part in (a, b):
        ids = set(part.query_labels.tolist())
        assert set(part.labels.tolist()) == ids | {0, -1}  # distractors and junk in both
        assert part.database.shape[0] == 2 * len(ids) + 2
    idx = (p.queries @ p.database.T).topk(14, dim=1).indices
    want = reid_metrics(idx, feats.query_ids, feats.query_cams, feats.gallery_ids,
                        feats.gallery_cams, max_rank=14).map  # fmt: skip
    assert p.score(idx) == pytest.approx(want)


def test_revisitop_landmarks_join_queries_sharing_a_positive():
    gnd = [
        {"easy": [0, 1], "hard": [], "junk": []},
        {"easy": [1], "hard": [2], "junk": [5]},  # shares 1 with query 0
        {"easy": [3], "hard": [], "junk": []},
        {"easy": [], "hard": [4], "junk": []},
    ]
    g = torch.Generator().manual_seed(0)
    db, q = torch.randn(6, 3, generator=g), torch.randn(4, 3, generator=g)
    p = revisitop_protocol(db, q, gnd)
    land = p._landmarks()
    assert land[0] == land[1] and len({int(v) for v in land}) == 3
    a, b = p.split(0.5, seed=0)
    assert a.num_queries + b.num_queries == 4
    assert a.num_database == b.num_database == 6
    idx = (q @ db.T).topk(6, dim=1).indices
    assert p.score(idx) == pytest.approx(revisited_map(idx, gnd, num_database=6).medium.map)
    hard = revisitop_protocol(db, q, gnd, protocol="hard")
    assert hard.score(idx) == pytest.approx(revisited_map(idx, gnd, num_database=6).hard.map)
    with pytest.raises(ValueError, match="protocol"):
        revisitop_protocol(db, q, gnd, protocol="extreme")


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({}, "param_grid is empty"),
        ({"k1": []}, r"param_grid\['k1'\] is empty"),
        ({"k9": [1]}, "no setting 'k9'"),
        ({"k1": [0, 5]}, r"param_grid\['k1'\]: the value 0 is invalid"),
        ({"lambda_value": [2.0]}, r"param_grid\['lambda_value'\]: the value 2.0"),
        ({"3.k": [1]}, "names no stage"),
    ],
)
def test_bad_grids_are_named(grid, match):
    x, y = _clustered()
    with pytest.raises(ValueError, match=match):
        tune(KReciprocal(), grid, x, labels=y)


def test_bad_arguments():
    x, y = _clustered()
    with pytest.raises(ValueError, match="search"):
        tune(KReciprocal(), {"k1": [5]}, x, labels=y, search="bayes")
    with pytest.raises(ValueError, match="labels="):
        tune(KReciprocal(), {"k1": [5]}, x)
    with pytest.raises(TypeError, match="Reranker"):
        tune(KReciprocal, {"k1": [5]}, x, labels=y)
    with pytest.raises(TypeError, match="list of values"):
        tune(KReciprocal(), {"k1": 5}, x, labels=y)
    with pytest.raises(ValueError, match="one of the two"):
        tune(KReciprocal(), {"k1": [5]}, x, labels=y, param_distributions={"k1": [5]})


def test_combinations_refused_as_a_whole_are_skipped():
    x, y = _clustered()
    res = tune(GNNRerank(), {"k1": [3, 8], "k2": [2, 6]}, x, labels=y)
    assert [p for p, _ in res.skipped_] == [{"k1": 3, "k2": 6}]
    assert "k2" in res.skipped_[0][1]
    assert not any(r["params"] == {"k1": 3, "k2": 6} for r in res.results_)


def test_margin_keeps_the_baseline_unless_the_gain_stands_out(oracle):
    # paired per-query gains d = (0.5, 0, 0): mean 1/6, sample std sqrt(1/12), SE = 1/6
    ap = torch.tensor([1.0, 0.5, 0.5, float("nan")], dtype=torch.float64)
    base = torch.tensor([0.5, 0.5, 0.5, 0.2], dtype=torch.float64)
    assert tuning._margin("se", ap, base) == pytest.approx(1 / 6)
    assert tuning._margin("2se", ap, base) == pytest.approx(2 / 6)
    assert tuning._margin(0.25, ap, base) == 0.25
    x, y = oracle
    res = tune(Oracle(), {"good": [0, 3]}, x, labels=y, margin="se")
    assert res.best_params_ == {"good": 3}  # a gain to mAP 1 stands out
    row = next(r for r in res.results_ if r["params"] == {"good": 3})
    assert 0 < row["margin"] < row["score"] - res.baseline_score_
    res = tune(Oracle(), {"good": [0, 3]}, x, labels=y, margin=1.0)
    assert res.best_params_ is None  # no gain can be larger than 1
    for bad in (-0.1, "xse", "-1se", "half"):
        with pytest.raises(ValueError, match="margin"):
            tune(Oracle(), {"good": [0, 3]}, x, labels=y, margin=bad)


def test_margin_standard_errors_are_clustered_by_group():
    # gains d = (1, 1, -1, -1): per query SE = sqrt(4/3) / 2; two groups of two queries:
    # sums of (d - mean) per group (2, -2), sqrt(2/1 * 8) / 4 = 1
    ap = torch.tensor([1.0, 1.0, 0.0, 0.0, float("nan")], dtype=torch.float64)
    base = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    assert tuning._margin("se", ap, base) == pytest.approx(math.sqrt(4 / 3) / 2)
    groups = torch.tensor([7, 7, 3, 3, 3])
    assert tuning._margin("se", ap, base, groups) == pytest.approx(1.0)
    assert tuning._margin("2se", ap, base, groups) == pytest.approx(2.0)
    # one query per group: the per-query standard error
    one_each = torch.tensor([0, 1, 2, 3, 4])
    assert tuning._margin("se", ap, base, one_each) == pytest.approx(math.sqrt(4 / 3) / 2)
    assert tuning._margin("se", ap, base, torch.tensor([1, 1, 1, 1, 1])) == math.inf


class Boost(Reranker):
    """Cosine plus ``b`` times "same class", plus a seeded jitter of amplitude 0.03 for
    ``variant > 0``: variant 0 is ``b = 0.3``, variant 1 ``b = 0.31`` (a gain of about 0.003
    mAP, inside the noise of its per-query gains), variant 2 ``b = 0.33`` (about 0.016, beyond
    two standard errors)."""

    variant: int = setting(0, Int(0))
    data = None

    def _fit(self, database):
        x, y = type(self).data
        self.labels_ = y[(database[:, None, :] == x[None]).all(-1).double().argmax(1)]

    def _rerank(self, queries, k, initial=None):
        x = self.database_
        y = self.labels_
        b = (0.3, 0.31, 0.33)[self.variant]
        s = x @ x.T + b * (y[:, None] == y[None, :]).to(x.dtype)
        if self.variant:
            g = torch.Generator().manual_seed(2)
            s = s + 0.03 * torch.randn(s.shape, generator=g, dtype=s.dtype)
        val, idx = s.topk(k, dim=1)
        return RerankResult(val, idx)


def test_the_given_settings_are_replaced_only_by_a_gain_beyond_the_margin():
    x, y = _clustered(noise=1.5)
    Boost.data = (x, y)
    try:
        given = Boost()  # far above the baseline (mAP 0.81 against 0.54)
        res = tune(given, {"variant": [0, 1]}, x, labels=y, margin=0.0)
        assert res.best_params_ == {"variant": 1}  # any gain wins
        assert 0 < res.best_score_ - res.given_score_ < 0.01
        assert res.given_score_ > res.baseline_score_ + 0.2
        res = tune(given, {"variant": [0, 1]}, x, labels=y, margin="2se")
        assert res.best_params_ == {"variant": 0}  # within the noise: the given stay
        assert res.best_score_ == res.given_score_
        res = tune(given, {"variant": [0, 2]}, x, labels=y, margin="2se")
        assert res.best_params_ == {"variant": 2}  # beyond two standard errors: replaced
    finally:
        Boost.data = None


class Loud(Oracle):
    """The oracle, warning at every fit with ``good == 3``."""

    def _fit(self, database):
        super()._fit(database)
        if self.good == 3:
            warnings.warn("good=3 is suspicious", UserWarning, stacklevel=2)


def test_warnings_of_a_setting_stay_with_its_row(oracle):
    x, y = oracle
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes the search
        res = tune(Loud(), {"good": [0, 3]}, x, labels=y)
    said = {r["params"]["good"]: r["warnings"] for r in res.results_ if r["params"]}
    assert said == {0: [], 3: ["UserWarning: good=3 is suspicious"]}


def test_plot_draws_score_against_a_setting(oracle):
    pytest.importorskip("matplotlib")
    x, y = oracle
    res = tune(Oracle(), {"good": [0, 3, 5]}, x, labels=y)
    fig = res.plot("good")
    (ax,) = fig.axes
    xs, ys = ax.lines[0].get_data()
    assert list(xs) == [0, 3, 5]
    assert [round(v, 6) for v in ys] == [round(100 * r["score"], 6) for r in res.results_[1:]]
    with pytest.raises(ValueError, match="not in the grid"):
        res.plot("bad")
    assert math.isfinite(res.best_score_)
    assert isinstance(class_protocol(x, y), Protocol)


def test_half_precision_unit_vectors_share_their_distances():
    # unit vectors stored in float16 (as the Corel-1k descriptors) have cosines a hair above 1
    x, y = _clustered(n=40, classes=4, d=16, seed=3)
    x = x.half().float()
    assert float((x @ x.T).max()) > 1.0
    res = tune(KReciprocal(), {"k1": [4, 8], "k2": [2]}, x, labels=y)
    assert all(r["error"] is None and r["shared"] for r in res.results_)
    alone = tune(KReciprocal(), {"k1": [4, 8], "k2": [2]}, x, labels=y, share=False)
    for a, b in zip(res.results_, alone.results_):
        assert a["score"] == pytest.approx(b["score"], abs=1e-3)
