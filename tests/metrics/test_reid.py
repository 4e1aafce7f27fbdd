import math

import numpy as np
import pytest
import scipy.io
import torch

from graphrerank.metrics import rank_by_scores, reid_metrics
from graphrerank.testing import data_dir, requires_data

from .reference import loop_reid

# Gallery of 8 images: (id, camera).
G_IDS = torch.tensor([1, 1, 1, 2, 2, -1, 3, 1])
G_CAMS = torch.tensor([0, 1, 2, 0, 1, 1, 0, 0])
# Queries: A = (1, cam 0), B = (2, cam 0), C = (3, cam 0), D = (4, cam 5).
Q_IDS = torch.tensor([1, 2, 3, 4])
Q_CAMS = torch.tensor([0, 0, 0, 5])
INDICES = torch.tensor(
    [
        [0, 3, 1, 5, 7, 6, 2, 4],
        [3, 4, 0, 1, 2, 5, 6, 7],
        [6, 0, 1, 2, 3, 4, 5, 7],
        [0, 1, 2, 3, 4, 5, 6, 7],
    ]
)
# A: junk = g0, g7 (id 1, cam 0: same id and camera) and g5 (id -1); positives g1, g2 (P = 2).
#    Ranking without junk: [3, 1, 6, 2, 4] -> positives at 1-based ranks 2 and 4.
#    step AP = (1/2 + 2/4) / 2 = 1/2
#    trapezoid AP = ((0/1 + 1/2)/2 + (1/3 + 2/4)/2) / 2 = (1/4 + 5/12) / 2 = 1/3
#    first positive at 2; INP = 2 / 4 = 1/2
# B: junk = g3 (id 2, cam 0), g5 (id -1); positive g4 (P = 1).
#    Without junk: [4, 0, 1, 2, 6, 7] -> positive at rank 1: AP = 1 both ways, INP = 1
# C: its only gallery image g6 has the same camera -> junk, no positive: skipped.
# D: id 4 is not in the gallery: skipped.
# Over the 2 valid queries: step mAP = 3/4, trapezoid mAP = 2/3, Rank-1 = 1/2,
# Rank-2.. = 1, mINP = (1/2 + 1) / 2 = 3/4.


def test_market_rule_hand_worked():
    r = reid_metrics(INDICES, Q_IDS, Q_CAMS, G_IDS, G_CAMS, max_rank=4)
    assert r.num_queries == 2
    assert r.map == pytest.approx(3 / 4)
    assert r.rank1 == 0.5
    assert r.rank5 == 1.0
    assert r.rank10 == 1.0
    assert r.minp == pytest.approx(3 / 4)
    assert r.cmc.tolist() == [0.5, 1.0, 1.0, 1.0]
    assert r.cmc.dtype == torch.float64
    torch.testing.assert_close(
        r.ap, torch.tensor([0.5, 1.0, math.nan, math.nan], dtype=torch.float64), equal_nan=True
    )
    torch.testing.assert_close(
        r.inp, torch.tensor([0.5, 1.0, math.nan, math.nan], dtype=torch.float64), equal_nan=True
    )
    t = reid_metrics(INDICES, Q_IDS, Q_CAMS, G_IDS, G_CAMS, interpolation="trapezoid")
    assert t.map == pytest.approx(2 / 3)
    assert t.ap[0].item() == pytest.approx(1 / 3)
    assert t.cmc.shape == (50,)


def test_str():
    text = str(reid_metrics(INDICES, Q_IDS, Q_CAMS, G_IDS, G_CAMS))
    assert text == (
        "mAP 75.00 | mINP 75.00 | Rank-1 50.00 | Rank-5 100.00 | Rank-10 100.00 (2 queries)"
    )


def test_minp_hand_worked():
    # One query (id 5, cam 0) with 3 positives in cameras 1/2, one junk image g1 (same camera).
    g_ids = torch.tensor([5, 5, 5, 9, 9, 5, 9, 9])
    g_cams = torch.tensor([1, 0, 2, 1, 1, 2, 1, 1])
    # Ranking g0 (pos), g3, g1 (junk), g2 (pos), g4, g6, g5 (pos), g7
    # without junk: ranks 1 (g0), 2 (g3), 3 (g2), 4 (g4), 5 (g6), 6 (g5), 7 (g7)
    # INP = 3 / 6 = 1/2; step AP = (1/1 + 2/3 + 3/6) / 3 = 13/18
    indices = torch.tensor([[0, 3, 1, 2, 4, 6, 5, 7]])
    r = reid_metrics(indices, [5], [0], g_ids, g_cams)
    assert r.minp == pytest.approx(1 / 2)
    assert r.map == pytest.approx(13 / 18)
    # Truncated after 5 items: the last positive (g5) is never retrieved, so INP = 0;
    # AP keeps P = 3: (1 + 2/3) / 3 = 5/9.
    r = reid_metrics(indices[:, :5], [5], [0], g_ids, g_cams)
    assert r.minp == 0.0
    assert r.map == pytest.approx(5 / 9)


def test_padding_and_matlab_shapes():
    # (1, n) label arrays as loadmat returns them; -1 padding takes no rank.
    g_ids = np.array([[1, 2, 1]])
    g_cams = np.array([[1, 1, 0]])
    indices = np.array([[1, -1, 0, 2]])
    # Query (1, cam 0): g2 junk; g1 negative, padding, g0 positive -> rank 2: AP 1/2.
    r = reid_metrics(indices, np.array([[1]]), np.array([[0]]), g_ids, g_cams)
    assert r.map == 0.5
    assert r.cmc[:2].tolist() == [0.0, 1.0]


def test_no_valid_query_is_refused():
    with pytest.raises(ValueError, match="no query has a positive.*gallery_ids"):
        reid_metrics(torch.tensor([[0, 1]]), [3], [0], [1, 2], [1, 1], max_rank=2)


@pytest.mark.parametrize("interpolation", ["step", "trapezoid"])
@pytest.mark.parametrize("seed", range(3))
def test_matches_loop_reference(seed, interpolation):
    rng = np.random.default_rng(seed)
    nq, ng, k, max_rank = 30, 80, 60, 10
    g_ids = rng.integers(-1, 12, size=ng)
    g_cams = rng.integers(0, 3, size=ng)
    q_ids = rng.integers(0, 14, size=nq)  # ids 12 and 13 have no gallery image
    q_cams = rng.integers(0, 3, size=nq)
    indices = np.stack([rng.permutation(ng)[:k] for _ in range(nq)])  # truncated
    indices[0, 3:7] = -1
    r = reid_metrics(
        indices, q_ids, q_cams, g_ids, g_cams, max_rank=max_rank, interpolation=interpolation
    )
    outs = [
        loop_reid(list(indices[i]), q_ids[i], q_cams[i], g_ids, g_cams, max_rank, interpolation)
        for i in range(nq)
    ]
    valid = [o for o in outs if o is not None]
    assert r.num_queries == len(valid)
    assert r.map == pytest.approx(np.mean([o[0] for o in valid]), abs=1e-12)
    assert r.minp == pytest.approx(np.mean([o[2] for o in valid]), abs=1e-12)
    cmc = [np.mean([o[1] is not None and o[1] <= rr for o in valid]) for rr in range(1, 11)]
    np.testing.assert_allclose(r.cmc.numpy(), cmc, atol=1e-12)
    assert r.rank5 == pytest.approx(cmc[4])
    for i, o in enumerate(outs):
        if o is None:
            assert math.isnan(r.ap[i])
        else:
            assert r.ap[i].item() == pytest.approx(o[0], abs=1e-12)


def test_on_device(device):
    d = {"device": device}
    r = reid_metrics(
        INDICES.to(**d), Q_IDS.to(**d), Q_CAMS.to(**d), G_IDS.to(**d), G_CAMS.to(**d), max_rank=4
    )
    assert r.cmc.device.type == device
    assert r.map == pytest.approx(3 / 4)
    assert r.minp == pytest.approx(3 / 4)
    assert r.cmc.cpu().tolist() == [0.5, 1.0, 1.0, 1.0]
    # numpy labels follow the device of the ranking.
    labels = (Q_IDS.numpy(), Q_CAMS.numpy(), G_IDS.numpy(), G_CAMS.numpy())
    r = reid_metrics(INDICES.to(device), *labels, max_rank=4)
    assert r.cmc.device.type == device
    assert r.map == pytest.approx(3 / 4)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((INDICES, Q_IDS, Q_CAMS, G_IDS, G_CAMS), {"max_rank": 0}, ValueError, "max_rank.*0"),
        (
            (INDICES, Q_IDS, Q_CAMS, G_IDS, G_CAMS),
            {"interpolation": "area"},
            ValueError,
            "interpolation.*'area'",
        ),
        (
            (INDICES, Q_IDS[:3], Q_CAMS, G_IDS, G_CAMS),
            {},
            ValueError,
            r"query_ids has 3 entries but indices \(rows\) has 4",
        ),
        (
            (INDICES, Q_IDS, Q_CAMS, G_IDS, G_CAMS[:5]),
            {},
            ValueError,
            "gallery_cams has 5 entries but gallery_ids has 8",
        ),
        (
            (INDICES + 1, Q_IDS, Q_CAMS, G_IDS, G_CAMS),
            {},
            ValueError,
            "indices contains 8, out of range",
        ),
        (
            (INDICES, Q_IDS.double(), Q_CAMS, G_IDS, G_CAMS),
            {},
            TypeError,
            "query_ids must hold integer labels, got dtype torch.float64",
        ),
        (
            (INDICES, Q_IDS, Q_CAMS, G_IDS.reshape(2, 4), G_CAMS),
            {},
            ValueError,
            r"gallery_ids must be a 1-D.*\(2, 4\)",
        ),
        (
            (INDICES, Q_IDS, Q_CAMS, G_IDS[:0], G_CAMS[:0]),
            {},
            ValueError,
            "gallery_ids is empty",
        ),
    ],
)
def test_validation(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        reid_metrics(*args, **kwargs)


@requires_data("pku_sketch_reid/pytorch_result.mat")
def test_real_pku_sketch_file():
    m = scipy.io.loadmat(str(data_dir() / "pku_sketch_reid" / "pytorch_result.mat"))
    query = torch.from_numpy(m["query_f"])
    gallery = torch.from_numpy(m["gallery_f"])
    indices = rank_by_scores(query @ gallery.T)  # cosine: the features are L2-normalised
    labels = (m["query_label"], m["query_cam"], m["gallery_label"], m["gallery_cam"])
    # The data README's figures come from the step (non-interpolated) AP.
    step = reid_metrics(indices, *labels, interpolation="step")
    assert step.num_queries == 50
    assert 100 * step.map == pytest.approx(21.71, abs=0.01)
    assert 100 * step.rank1 == pytest.approx(14.0, abs=1e-9)
    assert 100 * step.rank5 == pytest.approx(36.0, abs=1e-9)
    assert 100 * step.rank10 == pytest.approx(48.0, abs=1e-9)
    # The trapezoid form does not reproduce it (17.80); CMC does not depend on the AP form.
    trap = reid_metrics(indices, *labels, interpolation="trapezoid")
    assert 100 * trap.map == pytest.approx(17.80, abs=0.01)
    assert torch.equal(trap.cmc, step.cmc)
