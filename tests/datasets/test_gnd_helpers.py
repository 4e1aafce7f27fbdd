"""Building, subsetting and writing revisitop ground truths (gnd_from_*, subset_gnd, save)."""

import math
import os
import pickle
import pickletools
import zipfile

import numpy as np
import pytest
import torch

from graphrerank._io import save_arrays
from graphrerank.datasets import (
    CorruptFileError,
    GndStatus,
    RevisitopGroundTruth,
    gnd_from_labels,
    gnd_from_status,
    load_revisitop_gnd,
    save_revisitop_gnd,
    status_from_gnd,
    subset_gnd,
    write_revisitop_pickle,
)
from graphrerank.metrics import revisited_map
from graphrerank.testing import data_dir, requires_data

ROXFORD = "revisitop/gnd_roxford5k.pkl"
RPARIS = "revisitop/gnd_rparis6k.pkl"

E, H, J, N = int(GndStatus.EASY), int(GndStatus.HARD), int(GndStatus.JUNK), 0

# 3 queries x 6 database images, worked by hand.
STATUS = np.array(
    [
        [E, N, H, J, N, E],  # easy {0, 5}, hard {2}, junk {3}
        [N, N, N, N, H, J],  # hard only: no easy positive
        [J, E, N, N, N, N],  # easy {1}, junk {0}
    ]
)
EXPECTED = [
    {"easy": [0, 5], "hard": [2], "junk": [3]},
    {"easy": [], "hard": [4], "junk": [5]},
    {"easy": [1], "hard": [], "junk": [0]},
]


def _lists(gt):
    return [{k: g[k].tolist() for k in ("easy", "hard", "junk")} for g in gt.gnd]


def oracle(gt):
    """Each query's easy, then hard, then junk, then the negatives: AP 1 in every protocol."""
    rows = []
    for g in gt.gnd:
        listed = np.concatenate([g["easy"], g["hard"], g["junk"]])
        rest = np.setdiff1d(np.arange(gt.num_database), listed)
        rows.append(np.concatenate([listed, rest]))
    return torch.from_numpy(np.stack(rows))


def score(indices, gt):
    return revisited_map(indices, gt.gnd, num_database=gt.num_database)


def assert_oracle_is_perfect(gt):
    best = score(oracle(gt), gt)
    worst = score(oracle(gt).flip(1), gt)
    for protocol in ("easy", "medium", "hard"):
        if best[protocol].num_queries:
            assert best[protocol].map == 1.0, protocol
            assert worst[protocol].map < 1.0, protocol
        else:
            assert math.isnan(best[protocol].map)
    assert worst.medium.map < best.medium.map


# --------------------------------------------------------------------------- status codes
def test_status_codes():
    assert [(s.name, int(s)) for s in GndStatus] == [
        ("NEGATIVE", 0),
        ("EASY", 1),
        ("HARD", 2),
        ("JUNK", -1),
    ]


def test_from_status_hand_worked():
    gt = gnd_from_status(STATUS)
    assert isinstance(gt, RevisitopGroundTruth)
    assert _lists(gt) == EXPECTED
    assert (gt.num_queries, gt.num_database, gt.name) == (3, 6, "custom")
    assert gt.imlist.tolist() == ["0", "1", "2", "3", "4", "5"]
    assert gt.qimlist.tolist() == ["0", "1", "2"]
    assert all(g["bbx"] is None for g in gt.gnd)
    assert all(g[k].dtype == np.int64 for g in gt.gnd for k in ("easy", "hard", "junk"))


@pytest.mark.parametrize(
    "convert",
    [
        torch.from_numpy,
        lambda s: torch.from_numpy(s).to(torch.int8),
        lambda s: s.astype(np.float32),
        lambda s: s.tolist(),
        lambda s: list(s),  # a list of (N,) numpy rows
        lambda s: [torch.from_numpy(r) for r in s],
        lambda s: [[GndStatus(int(v)) for v in r] for r in s],
    ],
)
def test_from_status_accepts_numpy_torch_and_lists(convert):
    assert gnd_from_status(convert(STATUS)) == gnd_from_status(STATUS)


def test_from_status_bool_is_easy():
    gt = gnd_from_status(np.array([[True, False, True]]))
    assert _lists(gt) == [{"easy": [0, 2], "hard": [], "junk": []}]


def test_from_status_names_boxes_name():
    gt = gnd_from_status(
        STATUS,
        imlist=[f"im{i}" for i in range(6)],
        qimlist=("qa", "qb", "qc"),
        bbx=[[0, 0, 10, 20], None, np.array([1.5, 2, 3, 4])],
        name="mine",
    )
    assert gt.imlist.tolist() == [f"im{i}" for i in range(6)]
    assert gt.qimlist.tolist() == ["qa", "qb", "qc"]
    assert gt.gnd[0]["bbx"].dtype == np.float64
    np.testing.assert_array_equal(gt.gnd[0]["bbx"], [0, 0, 10, 20])
    assert gt.gnd[1]["bbx"] is None
    assert gt.name == "mine"
    boxes = gnd_from_status(STATUS, bbx=torch.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(boxes.gnd[2]["bbx"], [8, 9, 10, 11])


def test_from_status_works_with_revisited_map():
    gt = gnd_from_status(STATUS)
    # Query 1 has no easy positive, query 2 no hard one: left out of those protocols.
    best = score(oracle(gt), gt)
    assert (best.easy.num_queries, best.medium.num_queries, best.hard.num_queries) == (2, 3, 2)
    assert_oracle_is_perfect(gt)
    # The whole-dict form is accepted by the metric as well.
    assert revisited_map(oracle(gt), gt.to_dict()).medium.map == 1.0
    # A hand-worked ranking: query 0 (Medium) ranks negative 1 then positive 0.
    ranking = torch.tensor([[1, 0, 2, 5, 3, 4], [4, 0, 1, 2, 3, 5], [1, 0, 2, 3, 4, 5]])
    ap = score(ranking, gt).medium.ap
    # q0 positives {0, 2, 5} at ranks 2, 3, 4 (no junk before): (0.5*(0+1/2) + ... )
    p = [(0 / 1 + 1 / 2) / 2, (1 / 2 + 2 / 3) / 2, (2 / 3 + 3 / 4) / 2]
    assert ap[0].item() == pytest.approx(sum(p) / 3)
    assert ap[1].item() == 1.0 and ap[2].item() == 1.0


@pytest.mark.parametrize(
    ("status", "error", "match"),
    [
        (np.zeros(4, dtype=int), ValueError, r"2-D .*status\[None\]"),
        (np.zeros((2, 3, 4), dtype=int), ValueError, r"2-D.*\(2, 3, 4\)"),
        (np.zeros((0, 4), dtype=int), ValueError, "no queries"),
        (np.zeros((2, 0), dtype=int), ValueError, "no database images"),
        ([], ValueError, "no queries"),
        ([1, 0, 2], ValueError, r"flat list.*\[status\]"),
        ([np.array([1, 0]), np.array([1, 0, 0])], ValueError, r"status\[1\] has 3 entries"),
        ([np.array([[1, 0]])], ValueError, r"status\[0\] must be a 1-D"),
        (np.array([[1, 0, 5]]), ValueError, r"status\[0, 2\] is 5, not a status code"),
        (np.array([[1, 0], [0, -2]]), ValueError, r"status\[1, 1\] is -2.*JUNK=-1"),
        (np.array([[1.0, 0.5]]), ValueError, "whole numbers, got 0.5"),
        (np.array([[1.0, np.nan]]), ValueError, "whole numbers"),
        (np.array([["a", "b"]]), TypeError, "integers"),
        ("status", TypeError, "numpy array, a torch.Tensor or a list, got str"),
        (np.zeros((2, 3), dtype=int), ValueError, "no query has a positive"),
        (np.full((2, 3), J), ValueError, "no query has a positive"),
    ],
)
def test_from_status_errors(status, error, match):
    with pytest.raises(error, match=match):
        gnd_from_status(status)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"imlist": ["a", "b"]}, ValueError, "imlist has 2 names but there are 6 database"),
        ({"imlist": list("abcdea")}, ValueError, r"imlist names 'a' twice \(at positions 0 and 5"),
        ({"imlist": [1, 2, 3, 4, 5, 6]}, ValueError, r"imlist\[0\] must be a name"),
        ({"imlist": torch.arange(6)}, TypeError, "imlist must be a list of names"),
        ({"qimlist": ["q"]}, ValueError, "qimlist has 1 names but there are 3 queries"),
        ({"bbx": [[0, 0, 1, 1]]}, ValueError, "bbx has 1 entries but there are 3 queries"),
        ({"bbx": np.zeros((3, 3))}, ValueError, r"bbx must have shape \(3, 4\)"),
        ({"bbx": [[0, 0, 1, 1], None, [0, 0, 1]]}, ValueError, r"bbx\[2\] must be 4 numbers"),
        ({"bbx": [[0, 0, 1, 1], None, [0, 0, 1, np.inf]]}, ValueError, r"bbx\[2\] must be finite"),
        ({"bbx": "box"}, TypeError, "bbx must be None"),
        ({"name": 3}, TypeError, "name must be a str"),
        ({"name": ""}, ValueError, "name must not be empty"),
    ],
)
def test_from_status_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        gnd_from_status(STATUS, **kwargs)


def test_duplicate_query_names_are_allowed():
    gt = gnd_from_status(STATUS, qimlist=["q", "q", "r"])
    assert gt.qimlist.tolist() == ["q", "q", "r"]


# --------------------------------------------------------------------------- labels
def test_from_labels_hand_worked():
    db = np.array([3, 1, 3, 2, 3, 1])
    queries = np.array([3, 1, 7])  # label 7 is in no database image
    gt = gnd_from_labels(db, queries, qimlist=["a", "b", "c"])
    assert _lists(gt) == [
        {"easy": [0, 2, 4], "hard": [], "junk": []},
        {"easy": [1, 5], "hard": [], "junk": []},
        {"easy": [], "hard": [], "junk": []},  # kept, the metric skips it
    ]
    assert score(oracle(gt), gt).medium.num_queries == 2
    assert_oracle_is_perfect(gt)


def test_from_labels_hard_and_junk_masks():
    db = np.array([0, 0, 1, 1, 0])
    hard = np.array([False, True, True, False, False])  # image 2 is of label 1
    gt = gnd_from_labels(db, [0, 1], hard=hard)
    assert _lists(gt) == [
        {"easy": [0, 4], "hard": [1], "junk": []},
        {"easy": [3], "hard": [2], "junk": []},
    ]
    # per-query masks; junk wins over a hard or easy positive, and may mark a negative
    junk = np.zeros((2, 5), dtype=bool)
    junk[0, [1, 2]] = True
    junk[1, 3] = True
    gt = gnd_from_labels(db, [0, 1], hard=np.stack([hard, hard]), junk=junk)
    assert _lists(gt) == [
        {"easy": [0, 4], "hard": [], "junk": [1, 2]},
        {"easy": [], "hard": [2], "junk": [3]},
    ]
    assert_oracle_is_perfect(gt)


def test_from_labels_leave_one_out():
    labels = torch.tensor([0, 0, 1, 1, 0])
    gt = gnd_from_labels(labels, labels, junk=torch.eye(5, dtype=torch.bool))
    assert _lists(gt)[0] == {"easy": [1, 4], "hard": [], "junk": [0]}
    assert _lists(gt)[3] == {"easy": [2], "hard": [], "junk": [3]}
    # the query's own image is junk: ranking it anywhere changes nothing
    ranking = oracle(gt)
    assert score(ranking, gt).medium.map == 1.0


@pytest.mark.parametrize(
    ("db", "q"),
    [
        (["cat", "dog", "cat"], ["dog", "cat"]),
        (np.array([b"cat", b"dog", b"cat"]), np.array(["dog", "cat"])),
        (np.array([2.0, 5.0, 2.0]), [5, 2]),
        (np.array([[2, 5, 2]]), torch.tensor([5, 2])),  # MATLAB-style (1, N)
    ],
)
def test_from_labels_kinds(db, q):
    gt = gnd_from_labels(db, q)
    assert _lists(gt) == [
        {"easy": [1], "hard": [], "junk": []},
        {"easy": [0, 2], "hard": [], "junk": []},
    ]


def test_from_labels_matches_from_status():
    rng = np.random.default_rng(0)
    db, q = rng.integers(0, 4, 40), rng.integers(0, 4, 7)
    hard, junk = rng.random(40) < 0.3, rng.random((7, 40)) < 0.1
    status = np.where(q[:, None] == db, np.where(hard, H, E), N)
    status[junk] = J
    assert gnd_from_labels(db, q, hard=hard, junk=junk) == gnd_from_status(status)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (([0, 1], ["a"]), {}, TypeError, "database_labels hold integers but query_labels hold"),
        (([[0, 1], [1, 0]], [0]), {}, ValueError, r"database_labels must be a 1-D .*\(2, 2\)"),
        (([], [0]), {}, ValueError, "database_labels is empty"),
        (([0, 1], []), {}, ValueError, "query_labels is empty"),
        (([True, False], [True]), {}, TypeError, "database_labels must hold integer or str"),
        (([0.5, 1.0], [1]), {}, ValueError, "database_labels must hold whole numbers"),
        (([0, 1], [1]), {"hard": [True]}, ValueError, r"hard must be an \(N,\) = \(2,\) mask"),
        (([0, 1], [1]), {"junk": np.ones((2, 2), bool)}, ValueError, r"\(Q, N\) = \(1, 2\)"),
        (([0, 1], [1]), {"hard": [0, 2]}, ValueError, "hard must be a boolean mask.*2"),
        (([0, 1], [1]), {"junk": ["a", "b"]}, TypeError, "junk must be a boolean mask"),
        (([0, 1], [1]), {"imlist": ["a"]}, ValueError, "imlist has 1 names but there are 2"),
        (([0, 1], [1, 0]), {"qimlist": ["a"]}, ValueError, "qimlist has 1 names but there are 2"),
        (([0, 1], [5]), {}, ValueError, "no query has a positive .* in the labels"),
        (([0, 1], [1]), {"junk": [False, True]}, ValueError, "no query has a positive"),
        ((None, [1]), {}, TypeError, "database_labels must be a numpy array"),
    ],
)
def test_from_labels_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        gnd_from_labels(*args, **kwargs)


# --------------------------------------------------------------------------- status_from_gnd
def test_status_round_trip():
    gt = gnd_from_status(STATUS, imlist=list("abcdef"))
    status = status_from_gnd(gt)
    assert status.dtype == np.int8
    np.testing.assert_array_equal(status, STATUS)
    assert gnd_from_status(status, imlist=list("abcdef")) == gt


def test_status_from_gnd_refuses_an_image_in_two_lists():
    gt = {"imlist": ["a", "b"], "qimlist": ["q"], "gnd": [{"easy": [0], "hard": [], "junk": [0]}]}
    with pytest.raises(ValueError, match=r"gnd\[0\] lists image 0 both as 'easy' and as 'junk'"):
        status_from_gnd(gt)
    with pytest.raises(TypeError, match="RevisitopGroundTruth"):
        status_from_gnd([{"easy": [0], "hard": [], "junk": []}])


# --------------------------------------------------------------------------- subsets
def test_subset_hand_worked():
    gt = gnd_from_status(STATUS, imlist=list("abcdef"), qimlist=["q0", "q1", "q2"])
    sub = subset_gnd(gt, [5, 2, 3, 0])  # a, c, d, f in a new order
    assert sub.imlist.tolist() == ["f", "c", "d", "a"]
    assert sub.qimlist.tolist() == ["q0", "q1", "q2"]
    assert _lists(sub) == [
        {"easy": [3, 0], "hard": [1], "junk": [2]},  # original order 0, 5 -> 3, 0
        {"easy": [], "hard": [], "junk": [0]},  # lost its positive 4: kept
        {"easy": [], "hard": [], "junk": [3]},  # lost its positive 1: kept
    ]
    assert sub.name == gt.name
    # the same selection by names and by mask (a mask keeps the original order)
    assert subset_gnd(gt, ["f", "c", "d", "a"]) == sub
    mask = subset_gnd(gt, np.array([True, False, True, True, False, True]))
    assert mask.imlist.tolist() == ["a", "c", "d", "f"]
    assert subset_gnd(gt, torch.tensor([5, 2, 3, 0])) == sub


def test_subset_queries_and_empty_policies():
    gt = gnd_from_status(STATUS, qimlist=["q0", "q1", "q2"])
    sub, db_idx, q_idx = subset_gnd(gt, [0, 2, 4], queries=["q2", "q1"], return_indices=True)
    assert sub.qimlist.tolist() == ["q2", "q1"]
    assert _lists(sub) == [
        {"easy": [], "hard": [], "junk": [0]},
        {"easy": [], "hard": [2], "junk": []},
    ]
    np.testing.assert_array_equal(db_idx, [0, 2, 4])
    np.testing.assert_array_equal(q_idx, [2, 1])
    # "keep": the emptied query stays and the metric leaves it out
    assert score(oracle(sub), sub).medium.num_queries == 1
    assert math.isnan(score(oracle(sub), sub).medium.ap[0].item())
    # "drop": it goes, and the kept query positions are returned
    dropped, _, q_kept = subset_gnd(
        gt, [0, 2, 4], queries=[2, 1], empty_queries="drop", return_indices=True
    )
    assert dropped.qimlist.tolist() == ["q1"]
    np.testing.assert_array_equal(q_kept, [1])
    assert_oracle_is_perfect(dropped)
    with pytest.raises(ValueError, match=r"1 queries have no positive left.*2 \('q2'\)"):
        subset_gnd(gt, [0, 2, 4], queries=[2, 1], empty_queries="raise")
    assert subset_gnd(gt, [0, 2, 4], queries=[1], empty_queries="raise").num_queries == 1


def test_subset_with_no_positive_left_is_refused():
    gt = gnd_from_status(STATUS)
    for policy in ("keep", "drop", "raise"):
        with pytest.raises(ValueError, match="leaves none of the 3 selected queries a positive"):
            subset_gnd(gt, [3], empty_queries=policy)


def test_subset_identity_and_boxes():
    gt = gnd_from_status(STATUS, bbx=[[0, 0, 1, 1], None, [1, 2, 3, 4]], name="n")
    assert subset_gnd(gt, range(6)) == gt
    assert subset_gnd(gt, np.ones(6, dtype=bool), queries=[0, 1, 2]) == gt
    sub = subset_gnd(gt, [0, 1], queries=[2, 0])
    np.testing.assert_array_equal(sub.gnd[0]["bbx"], [1, 2, 3, 4])
    np.testing.assert_array_equal(sub.gnd[1]["bbx"], [0, 0, 1, 1])


def test_subset_accepts_the_pickled_dict():
    data = {"imlist": ["a", "b", "c"], "qimlist": ["q"], "gnd": [{"easy": [2], "hard": [0]}]}
    data["gnd"][0]["junk"] = []
    sub = subset_gnd(data, ["c"])
    assert _lists(sub) == [{"easy": [0], "hard": [], "junk": []}]


@pytest.mark.parametrize(
    ("database", "kwargs", "error", "match"),
    [
        (
            [0, 2, 0],
            {},
            ValueError,
            r"selects database image 0 \('0'\) twice, at positions 0 and 2",
        ),
        (["1", "1"], {}, ValueError, "database image 1 .* twice"),
        ([0, 6], {}, ValueError, r"database\[1\] = 6 is outside the 6 database images"),
        ([-1], {}, ValueError, r"database\[0\] = -1 .*negative ones are not allowed"),
        ([], {}, ValueError, "database is empty"),
        (np.zeros(6, bool), {}, ValueError, "selects no database image"),
        (np.ones(5, bool), {}, ValueError, r"boolean database mask needs one entry per .* \(6\)"),
        (["zz"], {}, ValueError, r"database\[0\] = 'zz' is not the name of any database image"),
        ([[0, 1]], {}, ValueError, "database must be a 1-D"),
        ([0.5], {}, ValueError, "whole numbers"),
        ("0", {}, TypeError, "got a single str"),
        ({0, 1}, {}, TypeError, "got set"),
        ([0], {"queries": [0, 0]}, ValueError, "selects query 0 .* twice"),
        ([0], {"queries": [3]}, ValueError, r"queries\[0\] = 3 is outside the 3 queries"),
        ([0], {"queries": []}, ValueError, "queries is empty"),
        ([0], {"empty_queries": "skip"}, ValueError, r"empty_queries must be one of"),
        ([0], {"return_indices": 1}, TypeError, "return_indices must be True or False"),
    ],
)
def test_subset_errors(database, kwargs, error, match):
    gt = gnd_from_status(STATUS)
    with pytest.raises(error, match=match):
        subset_gnd(gt, database, **kwargs)


def test_subset_ambiguous_names_and_bad_gt():
    gt = RevisitopGroundTruth(
        imlist=np.array(["a", "a", "b"]),
        qimlist=np.array(["q"]),
        gnd=[{"easy": np.array([0, 2]), "hard": np.array([1]), "junk": np.array([]), "bbx": None}],
    )
    with pytest.raises(ValueError, match="'a' is ambiguous: 2 database images have that name"):
        subset_gnd(gt, ["a"])
    assert _lists(subset_gnd(gt, [1, 2])) == [{"easy": [1], "hard": [0], "junk": []}]
    with pytest.raises(TypeError, match="gt must be a RevisitopGroundTruth"):
        subset_gnd([1, 2], [0])
    bad = RevisitopGroundTruth(gt.imlist, gt.qimlist, [{"easy": [7], "hard": [], "junk": []}])
    with pytest.raises(ValueError, match="index 7, outside the database of 3"):
        subset_gnd(bad, [0])


def test_subset_equals_junking_the_removed_images():
    """Scoring a subset == scoring the full set with the removed images marked junk."""
    rng = np.random.default_rng(1)
    db = rng.integers(0, 5, 60)
    gt = gnd_from_labels(db, rng.integers(0, 5, 8), hard=rng.random(60) < 0.3)
    _check_subset_against_junk(gt, rng)


def _check_subset_against_junk(gt, rng, size=None):
    n = gt.num_database
    keep = rng.permutation(n)[: size or n // 2]
    sub = subset_gnd(gt, keep)
    # a random full ranking, and the same ranking restricted to the subset, renumbered
    full = np.stack([rng.permutation(n) for _ in range(gt.num_queries)])
    position = np.full(n, -1)
    position[keep] = np.arange(keep.size)
    restricted = np.stack([position[row][position[row] >= 0] for row in full])
    removed = np.setdiff1d(np.arange(n), keep)
    # a positive also listed as junk stays a positive for the metric: remove it from both
    junked = [
        dict(
            g,
            easy=np.setdiff1d(g["easy"], removed),
            hard=np.setdiff1d(g["hard"], removed),
            junk=np.union1d(g["junk"], removed),
        )
        for g in gt.gnd
    ]
    a = revisited_map(torch.from_numpy(full), junked, num_database=n)
    b = score(torch.from_numpy(restricted), sub)
    for protocol in ("easy", "medium", "hard"):
        torch.testing.assert_close(a[protocol].ap, b[protocol].ap, equal_nan=True)
        assert a[protocol].num_queries == b[protocol].num_queries
    assert_oracle_is_perfect(sub)


# --------------------------------------------------------------------------- writing
def _rich_gt():
    return gnd_from_status(
        STATUS,
        imlist=["a", "b", "ü-é", "d d", "e", "f"],
        qimlist=["q0", "q0", "q2"],
        bbx=[[0.5, 1, 2, 3], None, [4, 5, 6, 7]],
        name="rich",
    )


def test_npz_round_trip(tmp_path):
    gt = _rich_gt()
    path = save_revisitop_gnd(gt, tmp_path / "gnd_rich.npz")
    assert path == tmp_path / "gnd_rich.npz"
    back = load_revisitop_gnd(path)
    assert back == gt
    assert back.name == "rich"
    assert back.gnd[1]["bbx"] is None
    assert back.gnd[0]["easy"].dtype == np.int64
    assert sorted(os.listdir(tmp_path)) == ["gnd_rich.npz"]  # no temporary file left
    # the stored name wins over the file name; the file holds no pickle
    renamed = tmp_path / "other.npz"
    os.replace(path, renamed)
    assert load_revisitop_gnd(renamed).name == "rich"
    with np.load(renamed, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    # saving again replaces the file atomically
    save_revisitop_gnd(subset_gnd(gt, [0, 1]), renamed)
    assert load_revisitop_gnd(renamed).num_database == 2


def test_npz_suffix_and_pkl_refused(tmp_path):
    gt = _rich_gt()
    path = save_revisitop_gnd(gt, tmp_path / "mine")
    assert path.name == "mine.npz"
    assert load_revisitop_gnd(path) == gt
    with pytest.raises(ValueError, match=r"ends in \.pkl.*write_revisitop_pickle"):
        save_revisitop_gnd(gt, tmp_path / "gnd_x.pkl")
    with pytest.raises(TypeError, match="gt must be a RevisitopGroundTruth"):
        save_revisitop_gnd("gnd", tmp_path / "x.npz")


def test_pickle_round_trip(tmp_path):
    gt = _rich_gt()
    path = write_revisitop_pickle(gt, tmp_path / "gnd_rich.pkl")
    raw = path.read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2
    opcodes = {op.name for op, _, _ in pickletools.genops(raw)}
    assert not opcodes & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ"}
    plain = pickle.loads(raw)
    assert plain == gt.to_dict()
    assert plain["gnd"][0] == {"easy": [0, 5], "hard": [2], "junk": [3], "bbx": [0.5, 1, 2, 3]}
    assert "bbx" not in plain["gnd"][1]
    assert load_revisitop_gnd(path) == gt  # name "rich" from gnd_rich.pkl
    assert sorted(os.listdir(tmp_path)) == ["gnd_rich.pkl"]
    with pytest.raises(ValueError, match=r"must end in \.pkl"):
        write_revisitop_pickle(gt, tmp_path / "gnd_rich.npz")


def test_to_dict_is_plain():
    d = _rich_gt().to_dict()
    assert type(d["gnd"][0]["easy"][0]) is int
    assert type(d["gnd"][0]["bbx"][0]) is float
    assert type(d["imlist"][0]) is str


def test_equality():
    gt = _rich_gt()
    assert gt == _rich_gt()
    assert gt != gnd_from_status(STATUS)
    other = _rich_gt()
    other.gnd[2]["junk"] = np.array([1])
    assert gt != other
    other = _rich_gt()
    other.gnd[1]["bbx"] = np.zeros(4)
    assert gt != other
    other = _rich_gt()
    other.name = "x"
    assert gt != other
    assert gt != "rich"


# --------------------------------------------------------------------------- corrupt files
@pytest.fixture
def saved(tmp_path):
    return save_revisitop_gnd(_rich_gt(), tmp_path / "gnd_rich.npz")


@pytest.mark.parametrize("cut", [0, 3, 100, 0.5, -22, -1])
def test_truncated_npz(saved, cut):
    raw = saved.read_bytes()
    n = int(len(raw) * cut) if isinstance(cut, float) else cut
    saved.write_bytes(raw[:n])
    with pytest.raises(CorruptFileError) as err:
        load_revisitop_gnd(saved)
    assert isinstance(err.value, ValueError)


def test_flipped_bytes_npz(saved):
    raw = saved.read_bytes()
    # flip one byte at many places: every altered file is refused, none loads silently
    for at in range(0, len(raw), max(1, len(raw) // 97)):
        damaged = bytearray(raw)
        damaged[at] ^= 0x5A
        saved.write_bytes(bytes(damaged))
        try:
            back = load_revisitop_gnd(saved)
        except CorruptFileError:
            continue
        # a flip in zip padding/comments the reader ignores must leave the content intact
        assert back == _rich_gt(), at


def test_foreign_npz_files(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, imlist=np.array(["a"]))
    with pytest.raises(CorruptFileError, match="no graphrerank metadata"):
        load_revisitop_gnd(plain)
    other = save_arrays(tmp_path / "index.npz", {"x": np.zeros(3)}, {"format": "x", "version": 1})
    with pytest.raises(CorruptFileError, match="not a 'graphrerank.revisitop_gnd'"):
        load_revisitop_gnd(other)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(CorruptFileError):
        load_revisitop_gnd(garbage)
    with pytest.raises(FileNotFoundError):
        load_revisitop_gnd(tmp_path / "missing.npz")


def _resave(saved, tmp_path, edit, meta_edit=None):
    """Rewrite a valid file with edited arrays and a valid checksum (a crafted file)."""
    with np.load(saved, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("__")}
    meta = {
        "format": "graphrerank.revisitop_gnd",
        "version": 1,
        "name": "rich",
        "num_database": 6,
        "num_queries": 3,
    }
    edit(arrays)
    if meta_edit:
        meta_edit(meta)
    return save_arrays(tmp_path / "crafted.npz", arrays, meta)


@pytest.mark.parametrize(
    ("edit", "meta_edit", "match"),
    [
        (lambda a: a.pop("easy"), None, "lacks a valid 'easy' array"),
        (lambda a: a.update(easy=a["easy"].astype(float)), None, "lacks a valid 'easy'"),
        (lambda a: a.update(hard_offsets=np.array([0, 2, 0, 2])), None, "'hard' offsets"),
        (lambda a: a.update(junk_offsets=np.array([0, 1, 2])), None, "'junk' offsets"),
        (lambda a: a.update(easy=np.array([0, 9, 1])), None, "index 9, outside the database"),
        (lambda a: a.update(bbx=np.zeros((2, 4))), None, "boxes do not match"),
        (lambda a: a.update(imlist=np.array(["a"])), None, "counts do not match the metadata"),
        (lambda a: None, lambda m: m.update(name=7), "no valid benchmark name"),
        (lambda a: None, lambda m: m.update(version=2), "reads versions up to 1"),
    ],
)
def test_inconsistent_npz(saved, tmp_path, edit, meta_edit, match):
    path = _resave(saved, tmp_path, edit, meta_edit)
    with pytest.raises(CorruptFileError, match=match):
        load_revisitop_gnd(path)


def test_unchanged_resave_loads(saved, tmp_path):
    assert load_revisitop_gnd(_resave(saved, tmp_path, lambda a: None)) == _rich_gt()


def test_zip_content_is_detected_whatever_the_suffix(saved, tmp_path):
    moved = tmp_path / "gnd_rich.pkl"
    os.replace(saved, moved)
    assert zipfile.is_zipfile(moved)
    assert load_revisitop_gnd(moved) == _rich_gt()  # read as npz, never unpickled


# --------------------------------------------------------------------------- real files
@requires_data(ROXFORD)
def test_real_status_and_file_round_trips(tmp_path):
    gt = load_revisitop_gnd(data_dir() / ROXFORD)
    assert_oracle_is_perfect(gt)
    status = status_from_gnd(gt)
    assert (status == GndStatus.JUNK).sum() == sum(g["junk"].size for g in gt.gnd)
    rebuilt = gnd_from_status(
        status,
        imlist=gt.imlist,
        qimlist=gt.qimlist,
        bbx=[g["bbx"] for g in gt.gnd],
        name=gt.name,
    )
    assert rebuilt == gt
    assert load_revisitop_gnd(save_revisitop_gnd(gt, tmp_path / "r.npz")) == gt
    assert load_revisitop_gnd(write_revisitop_pickle(gt, tmp_path / "gnd_roxford5k.pkl")) == gt
    assert subset_gnd(gt, np.arange(gt.num_database)) == gt
    assert subset_gnd(gt, gt.imlist, queries=gt.qimlist) == gt


@pytest.mark.parametrize(
    "relative",
    [
        pytest.param(ROXFORD, marks=requires_data(ROXFORD), id="roxford5k"),
        pytest.param(RPARIS, marks=requires_data(RPARIS), id="rparis6k"),
    ],
)
def test_real_subset(tmp_path, relative):
    gt = load_revisitop_gnd(data_dir() / relative)
    rng = np.random.default_rng(7)
    keep = np.sort(rng.choice(gt.num_database, 1000, replace=False))
    sub = subset_gnd(gt, keep)
    assert (sub.num_database, sub.num_queries) == (1000, 70)
    kept_names = set(gt.imlist[keep].tolist())
    for old, new in zip(gt.gnd, sub.gnd):
        for key in ("easy", "hard", "junk"):
            expected = [n for n in gt.imlist[old[key]].tolist() if n in kept_names]
            assert sub.imlist[new[key]].tolist() == expected
        np.testing.assert_array_equal(old["bbx"], new["bbx"])
    assert load_revisitop_gnd(save_revisitop_gnd(sub, tmp_path / "sub.npz")) == sub
    _check_subset_against_junk(gt, rng, size=1500)
    # without the positives of queries 0 and 1, those queries are empty: dropped on request
    gone = np.concatenate([gt.gnd[q][k] for q in (0, 1) for k in ("easy", "hard")])
    rest = np.setdiff1d(np.arange(gt.num_database), gone)
    small, db_idx, q_idx = subset_gnd(gt, rest, empty_queries="drop", return_indices=True)
    np.testing.assert_array_equal(db_idx, rest)
    assert 0 not in q_idx and 1 not in q_idx
    assert 0 < small.num_queries <= 68
    assert subset_gnd(gt, rest).num_queries == 70  # kept by default
    assert small.qimlist.tolist() == gt.qimlist[q_idx].tolist()
    assert all(g["easy"].size + g["hard"].size for g in small.gnd)
    assert_oracle_is_perfect(small)
