"""graphrerank.plot: the numbers behind the pictures, and the pictures' contents."""

import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

import graphrerank as gr
from graphrerank import plot

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _reference_pr(indices, db_labels, q_labels, loo, levels):
    """Interpolated precision at recall i/(L-1), averaged over queries with positives, by a
    plain loop with exact fractions."""
    curves = []
    for qi, row in enumerate(indices):
        items = [int(j) for j in row if j >= 0 and not (loo and j == qi)]
        pos = int((db_labels == q_labels[qi]).sum()) - (1 if loo else 0)
        if pos == 0:
            continue
        tp, points = 0, []
        for rank, j in enumerate(items, 1):
            tp += int(db_labels[j] == q_labels[qi])
            points.append((Fraction(tp, pos), Fraction(tp, rank)))
        curve = []
        for i in range(levels):
            r = Fraction(i, levels - 1)
            ok = [p for rec, p in points if rec >= r]
            curve.append(float(max(ok)) if ok else 0.0)
        curves.append(curve)
    return np.mean(curves, 0)


def test_precision_recall_curve_hand_worked():
    labels = torch.tensor([0, 1, 0, 0])
    # one separate query of class 0: ranking 1 (neg), 2 (pos), 3 (pos), 0 (pos)
    # points (rec, prec): (0, 0), (1/3, 1/2), (2/3, 2/3), (1, 3/4)
    recall, precision = plot.precision_recall_curve(
        torch.tensor([[1, 2, 3, 0]]), labels, torch.tensor([0]), num_levels=4
    )
    assert recall.tolist() == [0.0, 1 / 3, 2 / 3, 1.0]
    torch.testing.assert_close(
        precision, torch.tensor([3 / 4, 3 / 4, 3 / 4, 3 / 4], dtype=torch.float64)
    )
    # truncated after two items: recall 2/3 and 1 are never reached
    _, precision = plot.precision_recall_curve(
        torch.tensor([[1, 2]]), labels, torch.tensor([0]), num_levels=4
    )
    torch.testing.assert_close(precision, torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("loo", [False, True])
@pytest.mark.parametrize("levels", [2, 11, 7])
def test_precision_recall_curve_matches_a_plain_loop(device, loo, levels):
    rng = np.random.default_rng(3)
    n, q, k = 30, 30 if loo else 12, 18
    db_labels = rng.integers(0, 4, n)
    q_labels = db_labels if loo else rng.integers(0, 5, q)  # class 4: no positives
    indices = np.stack([rng.permutation(n)[:k] for _ in range(q)])
    indices[rng.random(indices.shape) < 0.1] = -1  # padding
    expected = _reference_pr(indices, db_labels, q_labels, loo, levels)
    recall, precision = plot.precision_recall_curve(
        torch.as_tensor(indices, device=device),
        torch.as_tensor(db_labels, device=device),
        None if loo else torch.as_tensor(q_labels, device=device),
        leave_one_out=loo,
        num_levels=levels,
    )
    assert precision.device.type == torch.device(device).type
    np.testing.assert_allclose(precision.cpu().numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(recall.cpu().numpy(), np.linspace(0, 1, levels), atol=1e-15)


def test_precision_recall_curve_errors():
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="num_levels must be >= 2"):
        plot.precision_recall_curve(torch.tensor([[0, 1]]), labels, torch.tensor([0]), num_levels=1)
    with pytest.raises(TypeError, match="indices must hold integer"):
        plot.precision_recall_curve(torch.tensor([[0.0, 1.0]]), labels, torch.tensor([0]))
    with pytest.raises(ValueError, match="out of range"):
        plot.precision_recall_curve(torch.tensor([[0, 5]]), labels, torch.tensor([0]))
    with pytest.raises(ValueError, match="no query has a positive"):
        plot.precision_recall_curve(torch.tensor([[0, 1]]), labels, torch.tensor([7]))


# --------------------------------------------------------------------------- sweeps
def _toy():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    return x, torch.tensor([0, 0, 1, 1])


def test_parameter_sweep_runs_each_value_and_leaves_the_reranker_alone():
    x, y = _toy()
    model = gr.KNN(backend="torch")
    out = plot.parameter_sweep(model, "metric", ["l2", "ip"], x, labels=y)
    # l2: items 0 and 2 find the other class first (AP 1/2 each), ip ranks by projection (AP 1)
    assert out == [("l2", 0.75), ("ip", 1.0)]
    assert model.get_params() == {"metric": "ip", "backend": "torch"}
    assert not hasattr(model, "database_")
    # a class works too; separate queries and a custom score
    seen = []
    out = plot.parameter_sweep(
        gr.KNN,
        "metric",
        ["ip"],
        x,
        queries=torch.tensor([[0.1, 1.0]]),
        k=2,
        score=lambda idx: seen.append(idx.tolist()) or 0.5,
    )
    assert out == [("ip", 0.5)] and seen == [[[3, 2]]]


def test_parameter_sweep_errors():
    x, y = _toy()
    with pytest.raises(ValueError, match="KNN has no setting 'alpha'"):
        plot.parameter_sweep(gr.KNN(), "alpha", [1], x, labels=y)
    with pytest.raises(ValueError, match="values is empty"):
        plot.parameter_sweep(gr.KNN(), "metric", [], x, labels=y)
    with pytest.raises(ValueError, match="pass labels"):
        plot.parameter_sweep(gr.KNN(), "metric", ["ip"], x)
    with pytest.raises(TypeError, match="reranker must be a Reranker"):
        plot.parameter_sweep("KNN", "metric", ["ip"], x, labels=y)
    with pytest.raises(ValueError, match="metric must be one of"):
        plot.parameter_sweep(gr.KNN(), "metric", ["cos"], x, labels=y)


# --------------------------------------------------------------------------- figures
def test_map_vs_parameter_draws_each_curve_in_percent():
    fig = plot.map_vs_parameter(
        {"a": [(1, 0.5), (10, 0.6), (100, 0.55)], "b": [(1, 0.4), (10, 0.7)]},
        parameter="k",
        baseline=0.45,
    )
    (ax,) = fig.axes
    a, b, base = ax.lines
    assert a.get_xdata().tolist() == [1, 10, 100]
    assert a.get_ydata().tolist() == pytest.approx([50, 60, 55])
    assert b.get_ydata().tolist() == pytest.approx([40, 70])
    assert list(base.get_ydata()) == pytest.approx([45, 45])
    assert ax.get_xscale() == "log"  # 1..100 spans two decades
    assert [t.get_text() for t in ax.texts] == ["60.00", "70.00"]  # best of each curve
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "baseline"]
    assert ax.get_xlabel() == "k" and ax.get_ylabel() == "mAP (%)"


def test_map_vs_parameter_categories_linear_axis_and_given_axes():
    fig, ax = plt.subplots()
    out = plot.map_vs_parameter(
        [("mutual", 0.8), ("union", 0.7)], parameter="symmetrize", ax=ax, title="t"
    )
    assert out is fig
    assert ax.lines[0].get_xdata().tolist() == [0, 1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mutual", "union"]
    assert ax.get_title() == "t" and ax.get_legend() is None
    fig2 = plot.map_vs_parameter([(0.5, 0.1), (0.9, 0.2)])
    assert fig2.axes[0].get_xscale() == "linear"


@pytest.mark.parametrize(
    ("results", "match"), [([], "results is empty"), ([(1, "x")], "numeric mAP"), ([1], "pairs")]
)
def test_map_vs_parameter_errors(results, match):
    with pytest.raises(ValueError, match=match):
        plot.map_vs_parameter(results)


def test_precision_recall_figure_one_line_per_ranking_with_map_in_legend():
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]])
    bad = torch.tensor([[0, 2, 3, 1], [1, 2, 3, 0], [2, 0, 1, 3], [3, 0, 1, 2]])
    fig = plot.precision_recall({"good": good, "bad": bad}, labels, leave_one_out=True)
    (ax,) = fig.axes
    assert len(ax.lines) == 2
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["good (mAP 100.00)", "bad (mAP 33.33)"]
    _, expected = plot.precision_recall_curve(bad, labels, leave_one_out=True)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), expected.numpy())


def test_precision_recall_accepts_a_result_tuple():
    x, y = _toy()
    res = gr.KNN(backend="torch").fit(x).rerank(None, k=4)
    fig = plot.precision_recall(res, y, leave_one_out=True)
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "ranking (mAP 100.00)"


def _spine(ax):
    return to_rgba(ax.spines["left"].get_edgecolor())


def test_ranked_lists_marks_positives_and_skips_the_query_itself():
    rng = np.random.default_rng(0)
    images = torch.as_tensor(rng.random((6, 4, 4)), dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    before = torch.tensor([[0, 2, 1, 4, 3, 5]] * 6)
    before[3] = torch.tensor([3, 0, 2, 5, 1, 4])
    after = torch.tensor([[0, 1, 4, 2, 3, 5]] * 6)
    after[3] = torch.tensor([3, 2, 5, 0, 1, 4])
    fig = plot.ranked_lists(images, {"before": before, "after": after}, [0, 3], labels=labels, k=3)
    grid = np.array(fig.axes).reshape(4, 4)
    green, red, blue = to_rgba("tab:green"), to_rgba("tab:red"), to_rgba("tab:blue")
    expected = [
        [red, green, green],  # query 0 (class 0), before, itself skipped: 2, 1, 4
        [green, green, red],  # query 0, after: 1, 4, 2
        [red, green, green],  # query 3 (class 1), before: 0, 2, 5
        [green, green, red],  # query 3, after: 2, 5, 0
    ]
    for r in range(4):
        assert _spine(grid[r, 0]) == blue
        assert [_spine(ax) for ax in grid[r, 1:]] == expected[r]
    assert [grid[r, 0].get_ylabel() for r in range(4)] == ["before", "after"] * 2
    # the images shown are the ranked items'
    np.testing.assert_array_equal(grid[0, 1].images[0].get_array(), images[2].numpy())
    np.testing.assert_array_equal(grid[2, 0].images[0].get_array(), images[3].numpy())


def test_ranked_lists_separate_queries_padding_and_class_names():
    images = np.zeros((4, 3, 3, 3))  # colour
    ranking = torch.tensor([[2, 0, -1, -1]])
    fig = plot.ranked_lists(
        images,
        ranking,
        0,
        labels=[0, 1, 0, 1],
        query_labels=[0],
        query_images=np.ones((1, 3, 3, 3)),
        class_names=["cat", "dog"],
        k=3,
    )
    q, a, b, c = fig.axes
    assert q.get_xlabel() == "cat" and a.get_xlabel() == "cat" and b.get_xlabel() == "cat"
    assert _spine(a) == to_rgba("tab:green") and _spine(b) == to_rgba("tab:green")
    assert not c.axison  # padding: nothing retrieved
    np.testing.assert_array_equal(q.images[0].get_array(), np.ones((3, 3, 3)))
    # without labels the frames are neutral
    fig = plot.ranked_lists(images, ranking, [0], query_images=np.ones((1, 3, 3, 3)), k=1)
    assert _spine(fig.axes[1]) == to_rgba("0.6")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"queries": [5]}, "query row 5 is out of range"),
        ({"queries": []}, "queries is empty"),
        ({"k": 0}, "k must be >= 1"),
        ({"images": np.zeros((4, 3))}, "images must be"),
        ({"labels": [0, 1]}, "labels has 2 entries but images has 4"),
        ({"rankings": {}}, "rankings is empty"),
        ({"rankings": torch.zeros(2, 2)}, "integer database indices"),
        ({"rankings": {"a": torch.zeros(2, 2).long(), "b": torch.zeros(3, 2).long()}}, "one row"),
    ],
)
def test_ranked_lists_errors(kwargs, match):
    args = {
        "images": np.zeros((4, 3, 3)),
        "rankings": torch.tensor([[0, 1], [1, 0]]),
        "queries": [0],
    }
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        plot.ranked_lists(args.pop("images"), args.pop("rankings"), args.pop("queries"), **args)


def test_drawing_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'graphrerank\[examples\]'"):
        plot.map_vs_parameter([(1, 0.5)])
    # the computations need no matplotlib
    x, y = _toy()
    assert plot.parameter_sweep(gr.KNN(backend="torch"), "metric", ["ip"], x, labels=y)
