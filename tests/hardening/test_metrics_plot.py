"""Property tests of the metrics and the plot helpers over generated bad and edge inputs.

Every call must give a valid result or a ``ValueError`` / ``TypeError`` that names the argument.
A valid result must hold the invariants (scores in [0, 1], the curve non-increasing) and, where
every input was valid, equal the plain-Python transcription of the definition in
``tests/metrics/reference.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from graphrerank import metrics, plot

from ..metrics.reference import loop_class_ap, loop_recall_at_k, loop_reid, loop_revisited
from .strategies import common_variants, outcome, valid_or_refused, variant

#: Families of a ranking; only "valid" and "padded" must be accepted.
RANKING_KINDS = (
    "valid",
    "valid",
    "valid",
    "padded",
    "duplicate",
    "out_of_range",
    "below",
    "float",
    "bool",
    "ndim1",
    "ndim3",
    "empty",
    "strings",
)
#: Families of a label vector; "valid" and "row" ((1, n), as in MATLAB files) are accepted.
LABEL_KINDS = (
    "valid",
    "valid",
    "valid",
    "row",
    "float",
    "strings",
    "empty",
    "short",
    "long",
    "sparse",
    "ndim3",
)
ACCEPTED_RANKINGS = {"valid", "padded"}
ACCEPTED_LABELS = {"valid", "row", "long"}


@st.composite
def rankings(draw, q: int, n: int):
    """``((Q, K) ranking in some family and variant, kind, the plain int64 tensor)``."""
    k = draw(st.integers(1, n))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    base = torch.from_numpy(np.stack([rng.permutation(n)[:k] for _ in range(q)]))
    kind = draw(st.sampled_from(RANKING_KINDS))
    t = base.clone()
    if kind == "padded":
        t[:, k // 2 :] = -1
    elif kind == "duplicate":
        if k < 2:
            kind = "valid"
        else:
            t[:, 1] = t[:, 0]
    elif kind == "out_of_range":
        t[0, 0] = n + draw(st.integers(0, 3))
    elif kind == "below":
        t[0, -1] = -2 - draw(st.integers(0, 3))
    elif kind == "float":
        t = t.double()
    elif kind == "bool":
        t = t > 0
    elif kind == "ndim1":
        t = t[0]
    elif kind == "ndim3":
        t = t[None]
    elif kind == "empty":
        t = t[:, :0]
    elif kind == "strings":
        return np.full(tuple(t.shape), "a"), kind, None
    return variant(t, draw(common_variants)), kind, t


@st.composite
def label_vectors(draw, n: int, classes: int = 3):
    """``(labels in some family and variant, kind, the plain int64 tensor)``."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    base = torch.from_numpy(rng.integers(-1, classes, n))
    kind = draw(st.sampled_from(LABEL_KINDS))
    t = base
    if kind == "row":
        t = base[None]
    elif kind == "float":
        t = base.double() + 0.5
    elif kind == "strings":
        return np.array([str(v) for v in base.tolist()]), kind, None
    elif kind == "empty":
        t = base[:0]
    elif kind == "short":
        t = base[:-1]
    elif kind == "long":
        t = torch.cat([base, base[:1]])
    elif kind == "sparse":
        return base.to_sparse(), kind, None
    elif kind == "ndim3":
        t = base[None, None]
    return variant(t, draw(common_variants)), kind, t


def _accepted(kind: str, allowed: set[str]) -> None:
    assert kind in allowed, f"a result was returned for a {kind!r} input"


def _fraction(x: float) -> None:
    assert math.isfinite(x) and 0.0 <= x <= 1.0, x


@given(data=st.data())
@valid_or_refused
def test_class_metrics(data):
    n = data.draw(st.integers(1, 7), label="n")
    all_vs_all = data.draw(st.booleans(), label="all_vs_all")
    q = n if all_vs_all else data.draw(st.integers(1, 4), label="q")
    indices, ikind, plain_idx = data.draw(rankings(q, n), label="indices")
    db, dkind, plain_db = data.draw(label_vectors(n), label="database_labels")
    if all_vs_all:
        ql, qkind, plain_ql = None, "valid", plain_db
    else:
        ql, qkind, plain_ql = data.draw(label_vectors(q), label="query_labels")
    loo = all_vs_all and data.draw(st.booleans(), label="leave_one_out")
    which = data.draw(st.sampled_from(["map", "ap", "recall"]), label="metric")
    names = ["indices", "database_labels", "query_labels", "leave_one_out", "ks"]
    if which == "map":
        got = outcome(metrics.class_map, indices, db, ql, leave_one_out=loo, names=names)
    elif which == "ap":
        got = outcome(
            metrics.class_average_precision, indices, db, ql, leave_one_out=loo, names=names
        )
    else:
        got = outcome(metrics.recall_at_k, indices, db, ql, ks=(1,), leave_one_out=loo, names=names)
    _accepted(ikind, ACCEPTED_RANKINGS)
    _accepted(dkind, ACCEPTED_LABELS)
    _accepted(qkind, ACCEPTED_LABELS - {"long"})
    labels = plain_db.reshape(-1).tolist()[:n] if dkind != "long" else plain_db.tolist()
    qlabels = plain_ql.reshape(-1).tolist()
    rows = plain_idx.tolist()
    aps = [loop_class_ap(r, i, labels, qlabels[i], loo, "step") for i, r in enumerate(rows)]
    if which == "ap":
        want = torch.tensor(aps, dtype=torch.float64)
        torch.testing.assert_close(got.cpu(), want, equal_nan=True)
    elif which == "map":
        _fraction(got)
        assert got == pytest.approx(np.nanmean(aps))
    else:
        _fraction(got[1])
        assert got == pytest.approx(loop_recall_at_k(rows, labels, qlabels, (1,), loo))


GND_KINDS = ("valid", "valid", "valid", "junk_only", "out_of_range", "strings", "fraction", "float")


@st.composite
def ground_truths(draw, q: int, n: int):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(GND_KINDS))
    gnd = []
    for _ in range(q):
        p = rng.permutation(n)
        a, b = sorted(rng.integers(0, n + 1, 2))
        c = rng.integers(b, n + 1)
        gnd.append({"easy": p[:a], "hard": p[a:b], "junk": p[b:c]})
    if kind == "junk_only":
        gnd = [{"easy": [], "hard": [], "junk": np.arange(n)} for _ in range(q)]
    elif kind == "out_of_range":
        gnd[0]["easy"] = np.array([n + 2])
    elif kind == "strings":
        gnd[0]["hard"] = np.array(["x"])
    elif kind == "fraction":
        gnd[0]["junk"] = np.array([0.5])
    elif kind == "float":
        gnd = [{key: np.asarray(v, dtype=float) for key, v in g.items()} for g in gnd]
    return gnd, kind


@given(data=st.data())
@valid_or_refused
def test_revisited_map(data):
    n = data.draw(st.integers(1, 7), label="n")
    q = data.draw(st.integers(1, 3), label="q")
    indices, ikind, plain = data.draw(rankings(q, n), label="indices")
    gnd, gkind = data.draw(ground_truths(q, n), label="gnd")
    got = outcome(
        metrics.revisited_map,
        indices,
        gnd,
        kappas=(1, 2),
        num_database=n,
        names=["indices", "gnd", "num_database", "kappas"],
    )
    _accepted(ikind, ACCEPTED_RANKINGS)
    _accepted(gkind, {"valid", "float"})
    assert gkind != "junk_only"
    rows = [[v for v in r] for r in plain.tolist()]
    for protocol, (pos_keys, junk_keys) in metrics.PROTOCOLS.items():
        res = getattr(got, protocol)
        ref = []
        for g, r in zip(gnd, rows):
            positives = {int(v) for key in pos_keys for v in g[key]}
            junk = {int(v) for key in junk_keys for v in g[key]} | {-1}
            ref.append(loop_revisited(r, positives, junk, (1, 2)))
        valid = [x for x in ref if x is not None]
        assert res.num_queries == len(valid)
        if valid:
            _fraction(res.map)
            assert res.map == pytest.approx(np.mean([x[0] for x in valid]))
            for j, kappa in enumerate((1, 2)):
                _fraction(res.mp_at_k[kappa])
                assert res.mp_at_k[kappa] == pytest.approx(np.mean([x[1][j] for x in valid]))
        else:
            assert math.isnan(res.map)
    assert got.medium.num_queries > 0


@given(data=st.data())
@valid_or_refused
def test_reid_metrics(data):
    g = data.draw(st.integers(1, 7), label="g")
    q = data.draw(st.integers(1, 3), label="q")
    indices, ikind, plain = data.draw(rankings(q, g), label="indices")
    g_ids, gkind, plain_g = data.draw(label_vectors(g, 2), label="gallery_ids")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    q_ids = torch.from_numpy(rng.integers(0, 2, q))
    q_cams = torch.from_numpy(rng.integers(0, 2, q))
    g_cams = torch.from_numpy(rng.integers(0, 2, g))
    got = outcome(
        metrics.reid_metrics,
        indices,
        q_ids,
        q_cams,
        g_ids,
        g_cams,
        max_rank=3,
        names=["indices", "query_ids", "query_cams", "gallery_ids", "gallery_cams", "max_rank"],
    )
    _accepted(ikind, ACCEPTED_RANKINGS)
    _accepted(gkind, {"valid", "row"})
    ids, cams = plain_g.reshape(-1).tolist(), g_cams.tolist()
    ref = [
        loop_reid(r, int(i), int(c), ids, cams, 3, "step")
        for r, i, c in zip(plain.tolist(), q_ids, q_cams)
    ]
    valid = [x for x in ref if x is not None]
    assert got.num_queries == len(valid) > 0
    for value in (got.map, got.minp, got.rank1):
        _fraction(value)
    assert got.map == pytest.approx(np.mean([x[0] for x in valid]))


@given(data=st.data())
@valid_or_refused
def test_precision_recall_curve(data):
    n = data.draw(st.integers(1, 7), label="n")
    q = data.draw(st.integers(1, 3), label="q")
    indices, ikind, _ = data.draw(rankings(q, n), label="indices")
    db, dkind, _ = data.draw(label_vectors(n), label="database_labels")
    ql, qkind, _ = data.draw(label_vectors(q), label="query_labels")
    levels = data.draw(st.sampled_from([2, 3, 11, 0, 1, 2.5, "11", 10**9]), label="num_levels")
    recall, precision = outcome(
        plot.precision_recall_curve,
        indices,
        db,
        ql,
        num_levels=levels,
        names=["indices", "database_labels", "query_labels", "num_levels"],
    )
    _accepted(ikind, ACCEPTED_RANKINGS)
    _accepted(dkind, ACCEPTED_LABELS)
    _accepted(qkind, ACCEPTED_LABELS - {"long"})
    assert recall.shape == precision.shape == (levels,)
    assert bool(torch.isfinite(precision).all())
    assert float(precision.min()) >= 0 and float(precision.max()) <= 1
    assert bool((precision[1:] <= precision[:-1] + 1e-12).all())  # interpolated: non-increasing


@given(data=st.data())
@valid_or_refused
def test_ranked_lists(data):
    import matplotlib.pyplot as plt

    n = data.draw(st.integers(1, 5), label="n")
    q = data.draw(st.integers(1, 3), label="q")
    indices, ikind, _ = data.draw(rankings(q, n), label="rankings")
    images = data.draw(
        st.sampled_from(["grey", "colour", "nan", "ndim2", "complex", "meta"]), label="images"
    )
    imgs = {
        "grey": torch.rand(n, 3, 3),
        "colour": torch.rand(n, 3, 3, 3),
        "nan": torch.full((n, 3, 3), float("nan")),
        "ndim2": torch.rand(n, 3),
        "complex": torch.rand(n, 3, 3).to(torch.complex64),
        "meta": torch.rand(n, 3, 3, device="meta"),
    }[images]
    queries = data.draw(st.sampled_from([0, [0], q - 1, q, -1, "0", 0.5, None, []]), label="q")
    k = data.draw(st.sampled_from([1, 2, 0, -1, 2.0, 10**9]), label="k")
    labels, lkind, _ = data.draw(label_vectors(n), label="labels")
    try:
        fig = outcome(
            plot.ranked_lists,
            imgs,
            indices,
            queries,
            labels=labels,
            k=k,
            names=["images", "rankings", "queries", "labels", "k"],
        )
    finally:
        plt.close("all")
    _accepted(ikind, ACCEPTED_RANKINGS)
    _accepted(lkind, {"valid", "row"})
    assert images in ("grey", "colour")
    assert fig is not None


@given(
    results=st.one_of(
        st.lists(
            st.tuples(
                st.one_of(st.integers(1, 50), st.sampled_from(["a", "b"])),
                st.one_of(
                    st.floats(0, 1),
                    st.sampled_from([float("nan"), float("inf"), "0.5", None]),
                ),
            ),
            max_size=4,
        ),
        st.sampled_from([None, 3, "abc", {"x": None}]),
    ),
    baseline=st.sampled_from([None, 0.5, float("nan"), "0.5", float("inf")]),
)
@valid_or_refused
def test_map_vs_parameter(results, baseline):
    import matplotlib.pyplot as plt

    try:
        fig = outcome(
            plot.map_vs_parameter, results, baseline=baseline, names=["results", "baseline"]
        )
    finally:
        plt.close("all")
    assert isinstance(results, list) and results
    assert all(isinstance(m, float) and math.isfinite(m) for _, m in results)
    assert baseline is None or (isinstance(baseline, float) and math.isfinite(baseline))
    ys = fig.axes[0].lines[0].get_ydata().tolist()
    assert ys == pytest.approx([100 * m for _, m in results])
