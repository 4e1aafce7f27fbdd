import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from graphrerank.metrics import average_precision, hits_from_relevance, rank_by_scores
from graphrerank.testing import assert_close

from .reference import loop_ap

# Hand-worked cases: (hits row, num_positives, step AP, trapezoid AP).
HAND = [
    # Positives at 0-based ranks 0 and 2.
    # step:      (1/1 + 2/3) / 2 = 5/6
    # trapezoid: rank 0 -> (1 + 1)/2 = 1; rank 2 -> (1/2 + 2/3)/2 = 7/12; (1 + 7/12) / 2 = 19/24
    ([1, 0, 1, 0, 0], 2, 5 / 6, 19 / 24),
    # Junk before the first positive: removed, the row becomes [1, 0, 1] -> same as above.
    ([-1, 1, 0, 1], 2, 5 / 6, 19 / 24),
    # Junk between positives, and a third positive never retrieved (P = 3).
    # Junk removed: [0, 1, 1, 0]; positives at ranks 1 and 2.
    # step:      (1/2 + 2/3) / 3 = 7/18
    # trapezoid: rank 1 -> (0/1 + 1/2)/2 = 1/4; rank 2 -> (1/2 + 2/3)/2 = 7/12;
    #            (1/4 + 7/12) / 3 = (10/12) / 3 = 5/18
    ([0, 1, -1, -1, 1, 0], 3, 7 / 18, 5 / 18),
    # Truncated ranking that retrieved no positive: AP 0.
    ([0, 0, -1, 0], 4, 0.0, 0.0),
    # Only junk.
    ([-1, -1, -1, -1], 1, 0.0, 0.0),
    # A single positive at rank 3 of 4 (P = 1).
    # step: 1/4; trapezoid: (0/3 + 1/4)/2 = 1/8
    ([0, 0, 0, 1], 1, 1 / 4, 1 / 8),
    # Every item positive: AP 1 both ways (each before-precision j/r = 1 too).
    ([1, 1, 1, 1], 4, 1.0, 1.0),
]


def _hand(device="cpu"):
    """HAND as tensors; rows are padded at the end with junk (-1), which changes nothing."""
    width = max(len(row) for row, *_ in HAND)
    hits = torch.tensor([row + [-1] * (width - len(row)) for row, *_ in HAND], device=device)
    num_pos = torch.tensor([p for _, p, *_ in HAND], device=device)
    return hits, num_pos


@pytest.mark.parametrize("interpolation", ["step", "trapezoid"])
def test_hand_worked(interpolation):
    hits, num_pos = _hand()
    col = 2 if interpolation == "step" else 3
    expected = torch.tensor([case[col] for case in HAND], dtype=torch.float64)
    got = average_precision(hits, num_pos, interpolation=interpolation)
    assert got.dtype == torch.float64
    assert_close(got, expected)


def test_no_positive_gives_nan():
    hits = torch.tensor([[0, 0, 0], [1, 0, 0], [-1, 0, 0]])
    got = average_precision(hits, torch.tensor([0, 1, 0]), interpolation="step")
    assert math.isnan(got[0])
    assert math.isnan(got[2])
    assert got[1] == 1.0


def test_forms_differ_and_interpolation_is_required():
    hits = torch.tensor([[0, 1]])
    with pytest.raises(TypeError, match="interpolation"):
        average_precision(hits, torch.tensor([1]))
    assert average_precision(hits, [1], interpolation="step").item() == 0.5
    assert average_precision(hits, [1], interpolation="trapezoid").item() == 0.25


def test_bool_and_numpy_inputs():
    hits = np.array([[True, False, True]])
    got = average_precision(hits, np.array([2]), interpolation="step")
    assert_close(got, torch.tensor([(1 + 2 / 3) / 2], dtype=torch.float64))


@pytest.mark.parametrize("interpolation", ["step", "trapezoid"])
@pytest.mark.parametrize("seed", range(5))
def test_matches_loop_reference(interpolation, seed):
    rng = np.random.default_rng(seed)
    q, k = 40, 30
    hits = rng.choice([-1, 0, 1], size=(q, k), p=[0.2, 0.5, 0.3]).astype(np.int8)
    hits[0] = -1  # a row of junk only
    hits[1] = 0  # no positive retrieved
    # Some positives are missing from the (truncated) lists; some queries have none at all.
    num_pos = (hits == 1).sum(1) + rng.integers(0, 3, size=q)
    num_pos[1] = 0
    expected = [loop_ap(list(hits[i]), int(num_pos[i]), interpolation) for i in range(q)]
    got = average_precision(hits, num_pos, interpolation=interpolation)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_step_matches_sklearn_on_full_rankings(seed):
    rng = np.random.default_rng(seed)
    q, n = 20, 60
    y = (rng.random((q, n)) < rng.uniform(0.05, 0.5, size=(q, 1))).astype(np.int64)
    y[:, 0] = 1  # every query has a positive
    scores = rng.standard_normal((q, n))  # continuous: no ties
    indices = rank_by_scores(scores)
    hits = hits_from_relevance(indices, y)
    got = average_precision(hits, y.sum(1), interpolation="step")
    expected = [average_precision_score(y[i], scores[i]) for i in range(q)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_hits_from_relevance_padding_takes_no_rank():
    relevance = torch.tensor([[1, 0, -1, 0]], dtype=torch.int8)
    # Item 1 (negative), then padding, then item 0 (positive).
    hits = hits_from_relevance(torch.tensor([[1, -1, 0]]), relevance)
    assert hits.tolist() == [[0, -1, 1]]
    assert hits.dtype == torch.int8
    # The positive is second once padding is dropped: 1/2 (it would be 1/3 if padding counted).
    assert average_precision(hits, [1], interpolation="step").item() == 0.5


def test_hits_from_relevance_reads_junk_and_bool():
    relevance = np.array([[True, False, False], [False, False, True]])
    got = hits_from_relevance(np.array([[2, 0, 1], [2, 1, 0]]), relevance)
    assert got.tolist() == [[0, 1, 0], [1, 0, 0]]
    rel = torch.tensor([[0, -1, 1]])
    assert hits_from_relevance(torch.tensor([[1, 2]]), rel).tolist() == [[-1, 1]]


def test_rank_by_scores_descending_stable():
    scores = torch.tensor([[0.2, 0.9, 0.2, -float("inf"), 0.5]])
    assert rank_by_scores(scores).tolist() == [[1, 4, 0, 2, 3]]
    assert rank_by_scores(scores, k=2).tolist() == [[1, 4]]
    assert rank_by_scores(scores.numpy(), k=1).dtype == torch.int64


def test_on_device(device):
    hits, num_pos = _hand(device)
    for interpolation, col in (("step", 2), ("trapezoid", 3)):
        got = average_precision(hits, num_pos, interpolation=interpolation)
        assert got.device.type == device
        assert_close(got.cpu(), torch.tensor([c[col] for c in HAND], dtype=torch.float64))
    # Host inputs (list, numpy) follow the device of the tensor they are used with.
    got = average_precision(hits, [int(p) for p in num_pos], interpolation="step")
    assert got.device.type == device
    rel = np.array([[0, 1, -1]])
    assert hits_from_relevance(torch.tensor([[1, 2]], device=device), rel).device.type == device
    scores = torch.tensor([[0.1, 0.3, 0.2]], device=device)
    idx = rank_by_scores(scores)
    assert idx.device.type == device
    rel = torch.tensor([[0, 1, -1]], device=device)
    assert hits_from_relevance(idx, rel).cpu().tolist() == [[1, -1, 0]]


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("hits", "num_pos", "kwargs", "error", "match"),
    [
        ([[1, 0]], [1], {"interpolation": "linear"}, ValueError, "interpolation.*'linear'"),
        ([1, 0], [1], {}, ValueError, r"hits.*shape \(2,\)"),
        (np.zeros((0, 3), dtype=np.int64), np.zeros(0, np.int64), {}, ValueError, "hits is empty"),
        ([[1, 0]], [1, 2], {}, ValueError, r"num_positives.*shape \(2,\)"),
        ([[1, 2]], [1], {}, ValueError, "hits must hold only.*got 2"),
        ([[1, 1]], [1], {}, ValueError, r"num_positives\[0\]=1.*2 positives"),
        ([[0.5, 1.0]], [1], {}, TypeError, "hits.*float"),
        ([[1, 0]], [1.0], {}, TypeError, "num_positives.*float"),
        ("abc", [1], {}, TypeError, "hits"),
    ],
)
def test_average_precision_validation(hits, num_pos, kwargs, error, match):
    kwargs = {"interpolation": "step", **kwargs}
    if isinstance(hits, list):
        hits = np.array(hits)
    with pytest.raises(error, match=match):
        average_precision(hits, np.array(num_pos), **kwargs)


@pytest.mark.parametrize(
    ("indices", "relevance", "error", "match"),
    [
        ([[0, 3]], [[1, 0, 0]], ValueError, "indices contains 3, out of range.*3 item"),
        ([[0, -2]], [[1, 0, 0]], ValueError, "indices contains -2"),
        ([[0, 1]], [[1, 0, 0], [0, 0, 1]], ValueError, "indices has 1 rows.*relevance has 2"),
        ([[0, 1]], [[1, 0, 5]], ValueError, "relevance must hold only.*got 5"),
        ([[0.0, 1.0]], [[1, 0, 0]], TypeError, "indices.*float"),
        ([[0, 1]], [1, 0, 0], ValueError, r"relevance.*shape \(3,\)"),
        ([[0, 1]], [[1.0, 0.0, 0.0]], TypeError, "relevance.*float"),
        (np.zeros((1, 0), np.int64), [[1, 0, 0]], ValueError, "indices is empty"),
    ],
)
def test_hits_from_relevance_validation(indices, relevance, error, match):
    with pytest.raises(error, match=match):
        hits_from_relevance(np.array(indices), np.array(relevance))


@pytest.mark.parametrize(
    ("scores", "k", "error", "match"),
    [
        ([[0.1, float("nan")]], None, ValueError, "scores contains NaN"),
        ([[1, 2]], None, TypeError, "scores.*int"),
        ([0.1, 0.2], None, ValueError, r"scores.*shape \(2,\)"),
        ([[0.1, 0.2]], 3, ValueError, "k must be <= 2, got 3"),
        ([[0.1, 0.2]], 0, ValueError, "k must be >= 1, got 0"),
        ([[0.1, 0.2]], 1.5, TypeError, "k must be an integer, got 1.5"),
    ],
)
def test_rank_by_scores_validation(scores, k, error, match):
    with pytest.raises(error, match=match):
        rank_by_scores(np.array(scores), k)
