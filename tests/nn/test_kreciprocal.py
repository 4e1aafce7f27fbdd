"""The k-reciprocal encoding of ``graphrerank.nn.kreciprocal`` against a dense float64
transcription of its docstring formulas (Zhong et al. 2017)."""

import numpy as np
import pytest
import torch

from graphrerank.nn.kreciprocal import kreciprocal_encoding, reciprocal_mask, round_half

DTYPES = [torch.float32, torch.float64]


# ----------------------------------------------------------------------------- helpers
def test_round_half_rounds_halves_to_even():
    assert round_half(5) == 2
    assert round_half(10) == 5
    assert [round_half(k) for k in range(1, 12)] == [int(np.round(k / 2)) for k in range(1, 12)]
    assert [round_half(k) for k in (1, 2, 3, 7, 20)] == [0, 1, 2, 4, 10]


def reciprocal_brute(lists):
    m, w = lists.shape
    out = np.zeros((m, w), dtype=bool)
    for i in range(m):
        for t in range(w):
            j = lists[i, t]
            out[i, t] = any(lists[j, s] == i for s in range(w))
    return out


def test_reciprocal_mask_by_hand():
    lists = torch.tensor([[0, 1], [1, 2], [2, 1]])
    np.testing.assert_array_equal(
        reciprocal_mask(lists).numpy(), [[True, False], [True, True], [True, True]]
    )


@pytest.mark.parametrize("self_first", [True, False])
@pytest.mark.parametrize(("m", "w"), [(1, 1), (2, 1), (6, 2), (12, 4), (20, 7), (9, 9)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reciprocal_mask_equals_double_loop(seed, m, w, self_first, device):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(m):
        others = rng.permutation([j for j in range(m) if j != i])
        row = np.concatenate([[i], others]) if self_first else rng.permutation(m)
        rows.append(row[:w])
    lists = np.stack(rows).astype(np.int64)
    out = reciprocal_mask(torch.from_numpy(lists).to(device))
    assert out.dtype == torch.bool and tuple(out.shape) == (m, w)
    np.testing.assert_array_equal(out.cpu().numpy(), reciprocal_brute(lists))


# ----------------------------------------------------------------------------- encoding
def encoding_reference(nbr, dist_full, k1, k2):
    """Dense float64 transcription of the docstring: lists ``nbr`` (node first), raw squared
    distances ``dist_full`` (M, M)."""
    m = nbr.shape[0]
    row_max = dist_full.max(1)

    def nset(i, k):  # N(i, k): the first k + 1 entries, itself included
        return set(nbr[i, : k + 1].tolist())

    def rset(i, k):
        return {j for j in nset(i, k) if i in nset(j, k)}

    kh = int(np.round(k1 / 2))  # numpy rounds halves to even
    v = np.zeros((m, m))
    for i in range(m):
        r1 = rset(i, k1)
        star = set(r1)
        for c in r1:
            rc = rset(c, kh)
            if len(rc & r1) > 2 / 3 * len(rc):
                star |= rc
        cols = np.array(sorted(star))
        d = dist_full[i, cols] / row_max[i] if row_max[i] > 0 else np.zeros(len(cols))
        w = np.exp(-d)
        v[i, cols] = w / w.sum()
    if k2 == 1:
        return v
    out = np.zeros_like(v)
    for i in range(m):
        out[i] = v[nbr[i, :k2]].mean(0)  # N(i, k2 - 1): the first k2 entries
    return out


def clustered_points(seed, n=24, d=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(3, d))
    x = centres[rng.integers(0, 3, n)] + rng.normal(scale=1.0, size=(n, d))
    return x


def lists_of(x):
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, 0.0)
    order = np.argsort(dist, axis=1, kind="stable")
    assert np.all(order[:, 0] == np.arange(len(x)))  # the node itself first
    return dist, order


@pytest.mark.parametrize("short_lists", [False, True])
@pytest.mark.parametrize(
    ("k1", "k2"), [(1, 1), (2, 1), (3, 2), (5, 1), (5, 3), (6, 4), (10, 6), (23, 24)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kreciprocal_encoding_equals_dense_formulas(seed, k1, k2, short_lists, device):
    x = clustered_points(seed)
    m = len(x)
    dist, order = lists_of(x)
    width = min(m, k1 + 1) if short_lists else m  # short: distances beyond come from pairs
    nbr = order[:, : max(width, min(k2, m))]
    nd = np.take_along_axis(dist, nbr, 1)
    dist_t = torch.from_numpy(dist).to(device)
    asked = []

    def pair_distances(rows, cols):
        asked.append(len(rows))
        return dist_t[rows, cols]

    v = kreciprocal_encoding(
        torch.from_numpy(nbr).to(device), torch.from_numpy(nd).to(device),
        torch.from_numpy(dist.max(1)).to(device), k1, k2, pair_distances,
    )  # fmt: skip
    assert v.layout == torch.sparse_csr and tuple(v.shape) == (m, m)
    out = v.to_dense().cpu().numpy()
    expected = encoding_reference(order, dist, k1, k2)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(out > 0, expected > 0)
    in_list = np.zeros((m, m), dtype=bool)
    np.put_along_axis(in_list, nbr, True, 1)
    if k2 == 1:  # R*(i) reaches beyond i's list exactly when distances must be computed
        assert bool(asked) == bool(((expected > 0) & ~in_list).any())
    if not short_lists:
        assert not asked  # every distance is in the lists


@pytest.mark.parametrize("budget", [1, 50, 10**6])
def test_kreciprocal_encoding_any_block_size(budget, device):
    x = clustered_points(5, n=18)
    dist, order = lists_of(x)
    nd = np.take_along_axis(dist, order, 1)
    dist_t = torch.from_numpy(dist).to(device)
    v = kreciprocal_encoding(
        torch.from_numpy(order).to(device), torch.from_numpy(nd).to(device),
        torch.from_numpy(dist.max(1)).to(device), 4, 3, lambda r, c: dist_t[r, c], budget,
    )  # fmt: skip
    np.testing.assert_allclose(
        v.to_dense().cpu().numpy(), encoding_reference(order, dist, 4, 3), rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_kreciprocal_encoding_float32_and_float64(dtype, device):
    x = clustered_points(7, n=16)
    dist, order = lists_of(x)
    nd = np.take_along_axis(dist, order, 1)
    dist_t = torch.from_numpy(dist).to(device, dtype)
    v = kreciprocal_encoding(
        torch.from_numpy(order).to(device), torch.from_numpy(nd).to(device, dtype),
        torch.from_numpy(dist.max(1)).to(device, dtype), 3, 2, lambda r, c: dist_t[r, c],
    )  # fmt: skip
    assert v.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(
        v.to_dense().cpu().numpy(), encoding_reference(order, dist, 3, 2), rtol=tol, atol=1e-7
    )


def test_kreciprocal_encoding_two_thirds_rule_by_hand():
    # 1-D points 0, 1, 2.5, 10, 11 and k1 = 2 (k~ = 1): R(0, 2) = {0, 1, 2}; R(2, 1) = {2}
    # ({2} & R(0) = 1 > 2/3), R(1, 1) = {0, 1}: R*(0) = {0, 1, 2}.
    x = np.array([[0.0], [1.0], [2.5], [10.0], [11.0]])
    dist, order = lists_of(x)
    nd = np.take_along_axis(dist, order, 1)
    v = kreciprocal_encoding(
        torch.from_numpy(order), torch.from_numpy(nd), torch.from_numpy(dist.max(1)), 2, 1,
        lambda r, c: torch.from_numpy(dist)[r, c],
    )  # fmt: skip
    out = v.to_dense().numpy()
    np.testing.assert_array_equal(out > 0, [[1, 1, 1, 0, 0]] * 3 + [[0, 0, 0, 1, 1]] * 2)
    w = np.exp(-np.array([0.0, 1.0, 6.25]) / 121.0)
    np.testing.assert_allclose(out[0, :3], w / w.sum(), rtol=1e-14)


def test_kreciprocal_encoding_zero_row_max():
    # all points equal: every distance (and row maximum) is 0, weights are uniform
    order = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])
    zeros = torch.zeros(3, 3, dtype=torch.float64)
    v = kreciprocal_encoding(
        torch.from_numpy(order), zeros, torch.zeros(3, dtype=torch.float64), 2, 1,
        lambda r, c: torch.zeros(len(r), dtype=torch.float64),
    )  # fmt: skip
    np.testing.assert_allclose(v.to_dense().numpy(), np.full((3, 3), 1 / 3), rtol=1e-15)


def test_reciprocal_mask_names_bad_lists():
    lists = torch.tensor([[0, 1], [1, 0], [2, 1]])
    with pytest.raises(TypeError, match="lists"):
        reciprocal_mask(None)
    with pytest.raises(ValueError, match="lists"):
        reciprocal_mask(lists[1:])  # a row short: ids out of range


def test_reciprocal_mask_any_block_size():
    rng = np.random.default_rng(3)
    lists = np.stack(
        [np.concatenate([[i], rng.permutation(np.delete(np.arange(15), i))[:4]]) for i in range(15)]
    )
    for budget in (1, 7, 10**6):
        out = reciprocal_mask(torch.from_numpy(lists), budget)
        np.testing.assert_array_equal(out.numpy(), reciprocal_brute(lists))
