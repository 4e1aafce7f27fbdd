"""Regression tests of the plot defects found by ``benchmarks/fuzz_public_api.py``.

Each input once gave an internal error (IndexError, MemoryError, a torch error), drew a figure
from invalid input, or raised a message that named no argument.
"""

import numpy as np
import pytest
import torch

import graphrerank as gr
from graphrerank import plot

mpl = pytest.importorskip("matplotlib")

import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


IMAGES = np.zeros((4, 3, 3))
RANKING = torch.tensor([[0, 1, 2], [1, 0, 3]])
LABELS = torch.tensor([0, 0, 1, 1])


def _ranked(**kwargs):
    args = {"images": IMAGES, "rankings": RANKING, "queries": [0], "k": 2}
    args.update(kwargs)
    return plot.ranked_lists(args.pop("images"), args.pop("rankings"), args.pop("queries"), **args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        # indices beyond the images (was: drawn from a wrapped-around index or IndexError)
        ({"rankings": torch.tensor([[0, 7], [1, 0]])}, ValueError, "rankings contains 7.*images"),
        ({"rankings": torch.tensor([[0, -5], [1, 0]])}, ValueError, "rankings contains -5"),
        # query rows that are not integers (was: "1" accepted, float -> "not iterable")
        ({"queries": "1"}, TypeError, "queries"),
        ({"queries": 1.5}, TypeError, "queries"),
        ({"queries": None}, TypeError, "queries"),
        ({"queries": [-1]}, ValueError, "queries: query row -1 is out of range"),
        # labels (was: fractional labels compared as floats; short query_labels: IndexError)
        ({"labels": [0.5, 0.0, 1.0, 1.0]}, TypeError, "labels must hold integer"),
        ({"query_labels": [0]}, ValueError, "query_labels has 1 entries but rankings"),
        ({"labels": [0, 1]}, ValueError, "labels has 2 entries but images has 4"),
        ({"labels": LABELS, "class_names": ["a"]}, ValueError, "class 1.*class_names"),
        # images (was: NaN drawn; meta/sparse: NotImplementedError / numpy TypeError)
        ({"images": np.full((4, 3, 3), np.nan)}, ValueError, "images contains NaN"),
        ({"images": torch.zeros(4, 3, 3, device="meta")}, ValueError, "images is on the meta"),
        ({"images": torch.zeros(4, 3, 3).to_sparse()}, TypeError, "images must be a dense"),
        ({"images": np.zeros((4, 3, 3), complex)}, TypeError, "images must hold real"),
        ({"images": np.zeros((4, 3, 3, 5))}, ValueError, "images must be"),
        # sizes (was: MemoryError inside matplotlib)
        ({"k": 10**12}, ValueError, "k must be <= 8"),
        ({"image_size": float("nan")}, ValueError, "image_size must not be NaN"),
        ({"image_size": 0.0}, ValueError, "image_size must be > 0"),
    ],
)
def test_ranked_lists_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        _ranked(**kwargs)


def test_ranked_lists_accepts_edge_inputs():
    # a 0-d tensor query row, bfloat16 and boolean images, numpy rankings
    fig = _ranked(queries=torch.tensor(1), images=torch.zeros(4, 3, 3, dtype=torch.bfloat16))
    assert len(fig.axes) == 3
    fig = _ranked(images=np.zeros((4, 3, 3), bool), rankings=RANKING.numpy())
    assert len(fig.axes) == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        # was: drawn with a NaN line / "0.5" converted silently
        ({"baseline": float("nan")}, ValueError, "baseline must not be NaN"),
        ({"baseline": "0.5"}, TypeError, "baseline must be a real number"),
        ({"baseline": float("inf")}, ValueError, "baseline must be a finite"),
        ({"logx": "yes"}, TypeError, "logx"),
        ({"title": 3}, TypeError, "title"),
    ],
)
def test_map_vs_parameter_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        plot.map_vs_parameter([(1, 0.5), (2, 0.6)], **kwargs)


@pytest.mark.parametrize(
    ("results", "error", "match"),
    [
        (None, TypeError, "results must be a sequence"),  # was: "'NoneType' is not iterable"
        (3, TypeError, "results must be a sequence"),
        ({"a": 3}, TypeError, r"results\['a'\] must be a sequence"),
        ([(1, float("nan"))], ValueError, "non-finite mAP"),
        ([(1, "0.5")], ValueError, "numeric mAP"),
    ],
)
def test_map_vs_parameter_bad_results(results, error, match):
    with pytest.raises(error, match=match):
        plot.map_vs_parameter(results)


def test_precision_recall_names_the_rankings():
    # Was: "query_labels has 4 entries but indices (rows) has 1" - no argument called indices.
    with pytest.raises(ValueError, match=r"rankings \(rows\)"):
        plot.precision_recall(RANKING[:1], LABELS, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"rankings\['b'\] contains 9"):
        plot.precision_recall(
            {"a": RANKING, "b": torch.tensor([[9, 0, 1], [0, 1, 2]])}, LABELS, [0, 1]
        )
    with pytest.raises(TypeError, match="rankings must be a ranking"):
        plot.precision_recall(None, LABELS)


def test_precision_recall_levels_are_bounded():
    # Was: RuntimeError from the allocator (num_levels=10**12).
    for fn in (plot.precision_recall_curve, plot.precision_recall):
        with pytest.raises(ValueError, match="num_levels must be <= 65536"):
            fn(RANKING, LABELS, torch.tensor([0, 1]), num_levels=10**12)


def test_precision_recall_curve_sparse_labels():
    # Was: NotImplementedError from a sparse kernel.
    with pytest.raises(TypeError, match="database_labels must be a dense"):
        plot.precision_recall_curve(RANKING, LABELS.to_sparse(), torch.tensor([0, 1]))


def _toy():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    return x, torch.tensor([0, 0, 1, 1])


def test_parameter_sweep_bad_input_names_the_argument():
    x, y = _toy()
    knn = gr.KNN(backend="torch")
    with pytest.raises(ValueError, match="parameter='bogus'"):
        plot.parameter_sweep(knn, "bogus", ["ip"], x, labels=y)
    with pytest.raises(TypeError, match="values must be a sequence"):  # was: "not iterable"
        plot.parameter_sweep(knn, "metric", None, x, labels=y)
    with pytest.raises(ValueError, match="labels has 3 entries but the fitted database has 4"):
        plot.parameter_sweep(knn, "metric", ["ip"], x, labels=y[:3])
    with pytest.raises(ValueError, match="score returned nan"):
        plot.parameter_sweep(knn, "metric", ["ip"], x, score=lambda idx: float("nan"))
    with pytest.raises(TypeError, match="score must return a number"):
        plot.parameter_sweep(knn, "metric", ["ip"], x, score=lambda idx: "high")
    with pytest.raises(ValueError, match="queries needs query_labels"):
        plot.parameter_sweep(knn, "metric", ["ip"], x, labels=y, queries=x[:2])
    # a score returning a 0-d tensor is read as a number
    got = plot.parameter_sweep(knn, "metric", ["ip"], x, score=lambda idx: torch.tensor(0.5))
    assert got == [("ip", 0.5)]


def test_ranked_lists_takes_class_names_as_a_numpy_array():
    # a dataset's names come as a numpy array of strings; titles name the classes
    fig = _ranked(labels=LABELS, class_names=np.array(["cat", "dog"]))
    names = [ax.get_xlabel() for ax in fig.axes]
    assert names[0] == "cat" and "dog" in names, names
    with pytest.raises(TypeError, match="class_names"):
        _ranked(labels=LABELS, class_names=np.array([["cat", "dog"]]))
