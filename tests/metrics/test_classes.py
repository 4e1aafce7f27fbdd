import math

import numpy as np
import pytest
import torch

from graphrerank import KNN
from graphrerank.metrics import class_average_precision, class_map, recall_at_k
from graphrerank.testing import data_dir, requires_data

from .reference import loop_class_ap, loop_recall_at_k

LABELS = torch.tensor([0, 0, 0, 1, 1])
# All-vs-all rankings; each query's own entry is somewhere in its list.
INDICES = torch.tensor(
    [
        [0, 3, 1, 4, 2],
        [2, 1, 0, 3, 4],
        [3, 4, 0, 1, 2],
        [3, 4, 0, 1, 2],
        [0, 1, 4, 2, 3],
    ]
)
# Leave-one-out, step AP (r = 1-based rank once the query itself is removed):
#   q0: [3, 1, 4, 2], positives {1, 2} at r = 2, 4: (1/2 + 2/4) / 2 = 1/2
#   q1: [2, 0, 3, 4], positives {0, 2} at r = 1, 2: (1 + 1) / 2 = 1
#   q2: [3, 4, 0, 1], positives {0, 1} at r = 3, 4: (1/3 + 2/4) / 2 = 5/12
#   q3: [4, 0, 1, 2], positive {4} at r = 1: 1
#   q4: [0, 1, 2, 3], positive {3} at r = 4: 1/4
#   mAP = (6/12 + 12/12 + 5/12 + 12/12 + 3/12) / 5 = 38/60 = 19/30
LOO_AP = [1 / 2, 1.0, 5 / 12, 1.0, 1 / 4]
# Without leave-one-out the query is its own positive (P = 3 for class 0, 2 for class 1):
#   q0: [0, 3, 1, 4, 2]: positives at r = 1, 3, 5: (1 + 2/3 + 3/5) / 3 = 34/45
#   q4: [0, 1, 4, 2, 3]: positives at r = 3, 5: (1/3 + 2/5) / 2 = 11/30
# Recall@k with leave-one-out, first positive at r = 2, 1, 3, 1, 4:
#   R@1 = 2/5, R@2 = 3/5, R@3 = 4/5, R@4 = 1


def test_leave_one_out_hand_worked():
    ap = class_average_precision(INDICES, LABELS, leave_one_out=True)
    assert ap.dtype == torch.float64
    torch.testing.assert_close(ap, torch.tensor(LOO_AP, dtype=torch.float64))
    assert class_map(INDICES, LABELS, leave_one_out=True) == pytest.approx(19 / 30)


def test_leave_one_out_accepts_numpy_bool():
    ap = class_average_precision(INDICES.numpy(), LABELS.numpy(), leave_one_out=np.bool_(True))
    assert ap.tolist() == pytest.approx(LOO_AP)


def test_without_leave_one_out_counts_the_query():
    ap = class_average_precision(INDICES, LABELS)
    assert ap[0].item() == pytest.approx(34 / 45)
    assert ap[4].item() == pytest.approx(11 / 30)


def test_recall_at_k_hand_worked():
    got = recall_at_k(INDICES, LABELS, ks=(1, 2, 3, 4), leave_one_out=True)
    assert got == pytest.approx({1: 2 / 5, 2: 3 / 5, 3: 4 / 5, 4: 1.0})
    assert list(got) == [1, 2, 3, 4]
    # Without leave-one-out the query's own entry is a positive: first items 0, 2, 3, 3, 0
    # are positives for q0, q1 and q3 -> R@1 = 3/5.
    assert recall_at_k(INDICES, LABELS, ks=(1,)) == pytest.approx({1: 3 / 5})


def test_queries_without_positive_are_left_out():
    # Label 7 occurs once: under leave-one-out query 2 has no positive.
    labels = torch.tensor([0, 0, 7])
    indices = torch.tensor([[1, 0, 2], [0, 1, 2], [2, 0, 1]])
    ap = class_average_precision(indices, labels, leave_one_out=True)
    assert ap[:2].tolist() == [1.0, 1.0]
    assert math.isnan(ap[2])
    assert class_map(indices, labels, leave_one_out=True) == 1.0
    assert recall_at_k(indices, labels, ks=(1,), leave_one_out=True) == {1: 1.0}
    # No query with a positive: an error rather than a made-up score (or a NaN mean).
    absent = torch.tensor([5])
    with pytest.raises(ValueError, match="no query has a positive.*query_labels"):
        class_map(indices[2:], labels, absent)
    with pytest.raises(ValueError, match="no query has a positive.*query_labels"):
        recall_at_k(indices[2:], labels, absent, ks=(1,))


def test_separate_queries_truncated_and_padded():
    db = np.array([0, 1, 1, 2, 1])
    q = np.array([1, 2])
    # q0 (label 1, P = 3): [0, -1, 2, 3] -> padding dropped -> [0, 2, 3]: positive at r = 2
    #   step AP = (1/2) / 3 = 1/6 (two positives never retrieved)
    # q1 (label 2, P = 1): [3, 0, 1, -1]: r = 1 -> AP 1
    indices = np.array([[0, -1, 2, 3], [3, 0, 1, -1]])
    ap = class_average_precision(indices, db, q)
    assert ap.tolist() == pytest.approx([1 / 6, 1.0])
    assert class_map(indices, db, q) == pytest.approx((1 / 6 + 1) / 2)
    # trapezoid: q0 (0/1 + 1/2)/2 / 3 = 1/12
    trap = class_average_precision(indices, db, q, interpolation="trapezoid")
    assert trap.tolist() == pytest.approx([1 / 12, 1.0])
    assert recall_at_k(indices, db, q, ks=(1, 2)) == {1: 0.5, 2: 1.0}


@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("interpolation", ["step", "trapezoid"])
@pytest.mark.parametrize("seed", range(3))
def test_matches_loop_reference(seed, interpolation, leave_one_out):
    rng = np.random.default_rng(seed)
    n, k = 50, 35
    labels = rng.integers(0, 6, size=n)
    labels[-1] = 99  # a singleton class: no positive under leave-one-out
    indices = np.stack([rng.permutation(n)[:k] for _ in range(n)])  # all-vs-all, truncated
    indices[1, 2:6] = -1
    ap = class_average_precision(
        indices, labels, leave_one_out=leave_one_out, interpolation=interpolation
    )
    expected = [
        loop_class_ap(list(indices[i]), i, labels, labels[i], leave_one_out, interpolation)
        for i in range(n)
    ]
    np.testing.assert_allclose(ap.numpy(), expected, rtol=1e-12, atol=1e-15)
    ks = (1, 5, 20)
    got = recall_at_k(indices, labels, ks=ks, leave_one_out=leave_one_out)
    assert got == pytest.approx(loop_recall_at_k(indices, labels, labels, ks, leave_one_out))


def test_separate_queries_match_loop_reference():
    rng = np.random.default_rng(5)
    n, nq, k = 80, 30, 20
    db = rng.integers(0, 8, size=n)
    q = rng.integers(0, 10, size=nq)  # labels 8 and 9 have no database item
    indices = np.stack([rng.permutation(n)[:k] for _ in range(nq)])
    ap = class_average_precision(indices, db, q)
    expected = [loop_class_ap(list(indices[i]), i, db, q[i], False, "step") for i in range(nq)]
    np.testing.assert_allclose(ap.numpy(), expected, rtol=1e-12, atol=1e-15)
    assert class_map(indices, db, q) == pytest.approx(np.nanmean(expected))
    got = recall_at_k(indices, db, q, ks=(1, 10))
    assert got == pytest.approx(loop_recall_at_k(indices, db, q, (1, 10), False))


def test_large_database_needs_no_dense_matrix():
    # A (Q, N) matrix here would take 5000 x 2,000,000 bytes = 10 GB.
    n, nq, k = 2_000_000, 5000, 5
    gen = torch.Generator().manual_seed(0)
    db = torch.randint(0, 1000, (n,), generator=gen)
    q = torch.randint(0, 1000, (nq,), generator=gen)
    indices = torch.randint(0, n, (nq, k), generator=gen)
    ap = class_average_precision(indices, db, q)
    assert ap.shape == (nq,)
    hits = db[indices] == q[:, None]
    num_pos = torch.bincount(db, minlength=1000)[q]
    # Step AP with these hits, written out for 5 columns.
    found = hits.cumsum(1)
    rank = torch.arange(1, k + 1)
    expected = ((found / rank) * hits).sum(1) / num_pos
    torch.testing.assert_close(ap, expected.double())


def test_on_device(device):
    ap = class_average_precision(INDICES.to(device), LABELS.to(device), leave_one_out=True)
    assert ap.device.type == device
    torch.testing.assert_close(ap.cpu(), torch.tensor(LOO_AP, dtype=torch.float64))
    got = recall_at_k(INDICES.to(device), LABELS.to(device), ks=(1, 4), leave_one_out=True)
    assert got == pytest.approx({1: 2 / 5, 4: 1.0})
    # numpy labels follow the device of the ranking.
    ap = class_average_precision(INDICES.to(device), LABELS.numpy(), LABELS.numpy())
    assert ap.device.type == device


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((INDICES[:3], LABELS), {}, ValueError, "query_labels=None.*needs 5 rows.*got 3"),
        (
            (INDICES[:3], LABELS, LABELS[:3]),
            {"leave_one_out": True},
            ValueError,
            "leave_one_out=True.*needs 5 rows.*got 3",
        ),
        ((INDICES, LABELS, LABELS[:4]), {}, ValueError, "query_labels has 4 entries"),
        ((INDICES, LABELS[:4]), {}, ValueError, "indices contains 4, out of range.*4 item"),
        ((INDICES - 2, LABELS), {}, ValueError, "indices contains -2"),
        ((INDICES, LABELS.float()), {}, TypeError, "database_labels.*float32"),
        ((INDICES, LABELS), {"interpolation": "steps"}, ValueError, "interpolation.*'steps'"),
        ((INDICES, LABELS), {"leave_one_out": 1}, TypeError, "leave_one_out.*1"),
        ((INDICES[:, :0], LABELS), {}, ValueError, "indices is empty"),
        ((INDICES, LABELS[None, None]), {}, ValueError, r"database_labels.*\(1, 1, 5\)"),
    ],
)
def test_validation(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        class_average_precision(*args, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ks": (1, 6)}, "ks contains 6 but the rankings hold only 5"),
        ({"ks": (0,)}, "ks must be >= 1, got 0"),
        ({"ks": (2, 2)}, "ks must not repeat"),
    ],
)
def test_recall_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        recall_at_k(INDICES, LABELS, **kwargs)


# ---------------------------------------------------------------------- real data
@requires_data("corel1k/corel1k_effnetlite_desc.npz")
def test_real_corel1k_knn_baseline():
    data = np.load(data_dir() / "corel1k" / "corel1k_effnetlite_desc.npz")
    x, labels = data["desc_lite2_max512_gem3"], data["labels"]
    assert x.shape == (1000, 1280)
    indices = KNN().fit(x).rerank(None, k=1000).indices
    # The data README: leave-one-out cosine mAP 92.05.
    assert class_map(indices, labels, leave_one_out=True) == pytest.approx(0.9205, abs=1e-4)
    # Counting each image as its own first result would inflate it.
    assert class_map(indices, labels) > 0.921


def test_real_digits_knn_baseline():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x - x.mean(0)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    indices = KNN().fit(x).rerank(None, k=len(x)).indices
    # The data README: leave-one-out cosine mAP 67.68.
    assert class_map(indices, y, leave_one_out=True) == pytest.approx(0.6768, abs=1e-4)
