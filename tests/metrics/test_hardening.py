"""Regression tests of the metrics' defects found by ``benchmarks/fuzz_public_api.py``.

Each input once gave an internal error (a torch / numpy exception), a silently wrong result
(NaN, an AP above 1) or a message that named no argument; each must now give a valid result or
a ``ValueError`` / ``TypeError`` naming the argument.
"""

import math

import numpy as np
import pytest
import torch

from graphrerank.metrics import (
    average_precision,
    class_average_precision,
    class_map,
    hits_from_relevance,
    rank_by_scores,
    ranks_from_cirtorch,
    recall_at_k,
    reid_metrics,
    relevance_from_gnd,
    revisited_map,
)

LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
INDICES = torch.tensor([[1, 2, 3], [0, 4, 5], [3, 0, 1]])
Q_LABELS = torch.tensor([0, 0, 1])
GND = [
    {"easy": [0], "hard": [2], "junk": [3]},
    {"easy": [], "hard": [1], "junk": []},
]
RANKED = torch.tensor([[3, 2, 0, 1], [0, 1, 2, 3]])


# ------------------------------------------------------------------ no positive: no NaN mean
def test_revisited_map_junk_only_ground_truth_is_refused():
    # Was: every protocol's mAP NaN, returned as a result.
    junk_only = [{"easy": [], "hard": [], "junk": [0, 1, 2, 3]} for _ in range(2)]
    with pytest.raises(ValueError, match="gnd has no positive"):
        revisited_map(RANKED, junk_only)


def test_revisited_map_protocol_without_positive_is_marked():
    # Only hard images: Easy has no query (NaN, flagged by num_queries == 0); Medium and Hard
    # are scored. Query 0: [3 (junk), 2, 0, 1] -> positive 2 first: AP 1. Query 1: positive 1
    # second: trapezoid AP (0/1 + 1/2) / 2 = 1/4. mAP = (1 + 1/4) / 2.
    hard_only = [{"easy": [], "hard": [2], "junk": [3]}, {"easy": [], "hard": [1], "junk": []}]
    r = revisited_map(RANKED, hard_only, kappas=(1,))
    assert r.easy.num_queries == 0 and math.isnan(r.easy.map)
    assert r.medium.num_queries == r.hard.num_queries == 2
    assert r.medium.map == r.hard.map == 0.625


def test_class_map_and_recall_without_positive_are_refused():
    absent = torch.tensor([7, 8, 9])
    with pytest.raises(ValueError, match="no query has a positive"):
        class_map(INDICES, LABELS, absent)
    with pytest.raises(ValueError, match="no query has a positive"):
        recall_at_k(INDICES, LABELS, absent, ks=(1,))
    # per-query AP keeps its documented NaN mark
    assert class_average_precision(INDICES, LABELS, absent).isnan().all()


def test_reid_without_valid_query_is_refused():
    with pytest.raises(ValueError, match="no query has a positive.*gallery_ids"):
        reid_metrics(torch.tensor([[0, 1]]), [3], [0], [1, 2], [1, 1], max_rank=2)


# ------------------------------------------------------------------ repeated indices
def test_repeated_index_is_refused():
    # Was: revisited AP 1.09 (a positive counted twice).
    with pytest.raises(ValueError, match="indices repeats index 2 in row 0"):
        revisited_map(torch.tensor([[2, 2, 0, 1], [0, 1, 2, 3]]), GND)
    with pytest.raises(ValueError, match="indices repeats index 1"):
        class_map(torch.tensor([[1, 1, 3], [0, 4, 5], [3, 0, 1]]), LABELS, Q_LABELS)
    with pytest.raises(ValueError, match="indices repeats index 0"):
        reid_metrics(torch.tensor([[0, 0]]), [1], [0], [1, 2], [1, 1])
    # -1 padding may repeat
    padded = torch.tensor([[1, -1, -1], [0, 4, -1], [3, -1, -1]])
    assert class_map(padded, LABELS, Q_LABELS) == pytest.approx((1 + 1 + 1) / 3 * (1 / 2))


# ------------------------------------------------------------------ inputs torch cannot read
@pytest.mark.parametrize(
    "bad",
    [
        np.array(["a", "b", "a", "b", "c", "c"]),
        LABELS.to_sparse(),
        LABELS.to("meta"),
    ],
    ids=["strings", "sparse", "meta"],
)
def test_unreadable_labels_name_the_argument(bad):
    # Was: TypeError from torch.from_numpy / NotImplementedError from a sparse kernel /
    # RuntimeError on meta.
    with pytest.raises((TypeError, ValueError), match="database_labels"):
        class_map(INDICES, bad, Q_LABELS)


@pytest.mark.parametrize(
    ("fn", "name"),
    [
        (lambda x: average_precision(x, torch.tensor([1, 1, 1]), interpolation="step"), "hits"),
        (lambda x: rank_by_scores(x.float()), "scores"),
        (lambda x: ranks_from_cirtorch(x), "ranks"),
        (lambda x: hits_from_relevance(torch.tensor([[0]] * 3), x), "relevance"),
        (lambda x: class_map(x, LABELS, Q_LABELS), "indices"),
    ],
)
def test_sparse_and_meta_arrays_are_refused(fn, name):
    x = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0]])
    for bad in (x.to_sparse(), x.to("meta")):
        with pytest.raises((TypeError, ValueError), match=name):
            fn(bad)


def test_negative_strides_are_read():
    # numpy views with negative strides (reversed arrays) are valid input.
    labels = np.array([2, 2, 1, 1, 0, 0])[::-1]
    indices = np.array([[1, 2, 3], [0, 4, 5], [3, 0, 1]])[::-1][::-1]
    assert class_map(indices, labels, Q_LABELS.numpy()) == class_map(INDICES, LABELS, Q_LABELS)


def test_negative_num_positives_is_refused():
    with pytest.raises(ValueError, match=r"num_positives must be >= 0.*num_positives\[1\]=-1"):
        average_precision(
            torch.tensor([[0, 0], [0, 0]]), torch.tensor([1, -1]), interpolation="step"
        )


def test_cirtorch_ranks_below_padding_are_refused():
    with pytest.raises(ValueError, match="ranks contains -5"):
        ranks_from_cirtorch(np.array([[0, 1], [-5, 0]]))


# ------------------------------------------------------------------ sizes
def test_huge_sizes_are_refused_before_allocating():
    # Was: RuntimeError from the allocator (a 4 TB dense matrix / an 8 TB CMC curve).
    with pytest.raises(ValueError, match="num_database"):
        relevance_from_gnd(GND, 10**12, "medium")
    with pytest.raises(ValueError, match="max_rank"):
        reid_metrics(torch.tensor([[0, 1]]), [1], [0], [1, 2], [1, 1], max_rank=10**12)


def test_revisited_map_needs_no_dense_matrix():
    # A huge declared database is fine: only the listed images and the ranked items are looked
    # at. Same scores as with the exact size.
    big = revisited_map(RANKED, GND, kappas=(1, 2), num_database=10**12)
    exact = revisited_map(RANKED, GND, kappas=(1, 2), num_database=4)
    assert big.medium.map == exact.medium.map == 0.625
    torch.testing.assert_close(big.hard.ap, exact.hard.ap, equal_nan=True)


def test_out_of_range_message_names_the_database_argument():
    # Was: "out of range for a database of 2 item(s)" when database_labels was too short.
    with pytest.raises(ValueError, match="out of range for database_labels of 2"):
        class_map(INDICES, LABELS[:2], Q_LABELS)


def test_gnd_entries_that_are_not_indices_are_refused():
    with pytest.raises(TypeError, match=r"gnd\[0\]\['easy'\] must hold integer"):
        revisited_map(RANKED, [{"easy": ["a"], "hard": [], "junk": []}, GND[1]])
    with pytest.raises(TypeError, match=r"gnd\[0\]\['easy'\] must hold integer"):
        revisited_map(RANKED, [{"easy": [0.5], "hard": [], "junk": []}, GND[1]])
    with pytest.raises(TypeError, match=r"gnd\[0\]\['easy'\] must hold integer"):
        revisited_map(RANKED, [{"easy": [float("nan")], "hard": [], "junk": []}, GND[1]])
