"""AQE, alpha-QE and DBA against a dense float64 transcription of the papers' formulas."""

import pytest
import torch
from torch.nn.functional import normalize

from graphrerank.rerankers import (
    KNN,
    AlphaQueryExpansion,
    AverageQueryExpansion,
    DatabaseAugmentation,
    alpha_query_expansion,
    average_query_expansion,
    database_augmentation,
)

# ----------------------------------------------------------------------------- references


def ref_query_expansion(q, x, k, alpha, iterations):
    """q' = norm(q + sum_{j <= k} max(q.x_(j), 0)^alpha x_(j)), repeated; alpha=0: AQE."""
    for _ in range(iterations):
        s = q @ x.T
        nn = torch.argsort(s, dim=1, descending=True)[:, :k]
        w = s.gather(1, nn).clamp(min=0) ** alpha
        q = normalize(q + (w[:, :, None] * x[nn]).sum(1), dim=1)
    return q


def ref_database_augmentation(x, k, alpha, iterations):
    """x_i' = norm(x_i + sum over the k nearest *other* items of max(s, 0)^alpha x_j)."""
    for _ in range(iterations):
        s = x @ x.T
        s_other = s.clone().fill_diagonal_(float("-inf"))
        nn = torch.argsort(s_other, dim=1, descending=True)[:, :k]
        w = s.gather(1, nn).clamp(min=0) ** alpha
        x = normalize(x + (w[:, :, None] * x[nn]).sum(1), dim=1)
    return x


def ref_rank(q, x, k):
    s = q @ x.T
    idx = torch.argsort(s, dim=1, descending=True)[:, :k]
    return s.gather(1, idx), idx


def assert_same_ranking(indices, q, x):
    """``indices`` orders the database as the reference scores ``q @ x.T`` do.

    Plain DBA gives items with the same neighbourhood the same descriptor, so exact ties
    occur; tied items may come in either order, nothing else may differ.
    """
    s = q @ x.T
    k = indices.shape[1]
    ref_s, ref_i = ref_rank(q, x, x.shape[0])  # the full list: ties across the cut-off too
    got = s.gather(1, indices.cpu())
    torch.testing.assert_close(got, ref_s[:, :k], rtol=0, atol=1e-12)
    gaps = (ref_s[:, :-1] - ref_s[:, 1:]).abs() < 1e-12
    tied = torch.zeros_like(ref_i, dtype=torch.bool)
    tied[:, :-1] |= gaps
    tied[:, 1:] |= gaps
    assert not ((indices.cpu() != ref_i[:, :k]) & ~tied[:, :k]).any()


def _data(n=80, d=10, nq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(5, d, generator=g, dtype=torch.float64)
    x = centers[torch.arange(n) % 5] + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    q = centers[torch.arange(nq) % 5] + 0.7 * torch.randn(nq, d, generator=g, dtype=torch.float64)
    return normalize(q, dim=1), normalize(x, dim=1)


# ----------------------------------------------------------------------------- faithfulness


@pytest.mark.parametrize(("k", "alpha", "iterations"), [(5, 3.0, 1), (3, 1.0, 2), (8, 0.5, 3)])
def test_alpha_qe_equals_the_formula(k, alpha, iterations, device):
    q, x = _data()
    r = AlphaQueryExpansion(k=k, alpha=alpha, iterations=iterations, backend="torch")
    out = r.fit(x.to(device)).rerank(q.to(device), k=80)
    exp_q = ref_query_expansion(q, x, k, alpha, iterations)
    s, idx = ref_rank(exp_q, x, 80)
    assert torch.equal(out.indices.cpu(), idx)
    torch.testing.assert_close(out.scores.cpu(), s)
    torch.testing.assert_close(r.transform_queries(q.to(device)).cpu(), exp_q)
    assert out.indices.device.type == device


@pytest.mark.parametrize("iterations", [1, 2])
def test_aqe_equals_the_formula(iterations, device):
    q, x = _data(seed=1)
    out = AverageQueryExpansion(k=4, iterations=iterations, backend="torch")
    out = out.fit(x.to(device)).rerank(q.to(device), k=30)
    s, idx = ref_rank(ref_query_expansion(q, x, 4, 0.0, iterations), x, 30)
    assert torch.equal(out.indices.cpu(), idx)
    torch.testing.assert_close(out.scores.cpu(), s)


@pytest.mark.parametrize(("k", "alpha", "iterations"), [(5, 0.0, 1), (4, 3.0, 1), (3, 0.0, 2)])
def test_dba_equals_the_formula(k, alpha, iterations, device):
    q, x = _data(seed=2)
    r = DatabaseAugmentation(k=k, alpha=alpha, iterations=iterations, backend="torch")
    r.fit(x.to(device))
    aug = ref_database_augmentation(x, k, alpha, iterations)
    torch.testing.assert_close(r.transform_database().cpu(), aug)
    # queries are not augmented; they search the augmented database
    s, _ = ref_rank(q, aug, 40)
    out = r.rerank(q.to(device), k=40)
    assert_same_ranking(out.indices, q, aug)
    torch.testing.assert_close(out.scores.cpu(), s)
    assert r.transform_queries(q) is q


def test_all_vs_all_semantics():
    """rerank(None): item i queries the database as an explicit query would."""
    _, x = _data(seed=3)
    qe = AlphaQueryExpansion(k=5, backend="torch").fit(x)
    assert torch.equal(qe.rerank(None, k=80).indices, qe.rerank(x, k=80).indices)
    # the own entry is its first neighbour: weight 1 + 1 on x_i
    s = x @ x.T
    nn = torch.argsort(s, dim=1, descending=True)[:, :5]
    assert (nn[:, 0] == torch.arange(80)).all()
    torch.testing.assert_close(qe.transform_queries(None), ref_query_expansion(x, x, 5, 3.0, 1))
    # DBA: the original item i queries the augmented database
    dba = DatabaseAugmentation(k=5, backend="torch").fit(x)
    assert_same_ranking(dba.rerank(None, k=80).indices, x, ref_database_augmentation(x, 5, 0, 1))


def test_faiss_backend_agrees_in_float32():
    q, x = _data(n=300, d=16, nq=20, seed=4)
    q, x = q.float(), x.float()
    for cls in (AlphaQueryExpansion, DatabaseAugmentation):
        a = cls(backend="torch").fit(x).rerank(q, k=10)
        b = cls(backend="auto").fit(x).rerank(q, k=10)
        assert (a.indices == b.indices).float().mean() > 0.99
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-5)


def test_expansion_changes_the_ranking():
    """The methods are not the identity: they re-order plain search on clustered data."""
    q, x = _data(seed=5)
    plain = KNN(backend="torch").fit(x).rerank(q, k=80).indices
    for r in (AverageQueryExpansion(), AlphaQueryExpansion(), DatabaseAugmentation()):
        out = r.set_params(backend="torch").fit(x).rerank(q, k=80).indices
        assert not torch.equal(out, plain), type(r).__name__


def test_function_twins_equal_the_classes():
    q, x = _data(seed=6)
    pairs = [
        (average_query_expansion, AverageQueryExpansion, {}),
        (alpha_query_expansion, AlphaQueryExpansion, {"alpha": 2.0}),
        (database_augmentation, DatabaseAugmentation, {"alpha": 3.0}),
    ]
    for fn, cls, extra in pairs:
        a = fn(q, x, 7, num_neighbors=4, iterations=2, backend="torch", **extra)
        b = cls(k=4, iterations=2, backend="torch", **extra).fit(x).rerank(q, 7)
        assert torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)
        assert fn(None, x, 3, backend="torch").indices.shape == (80, 3)


def test_asymmetric_queries_are_accepted():
    q, x = _data(seed=7)
    for cls in (AverageQueryExpansion, AlphaQueryExpansion, DatabaseAugmentation):
        r = cls(backend="torch").fit(x)
        assert not r.needs_query_similarity and not r.transductive
        a = r.rerank(q, k=5, asymmetric=True)
        assert torch.equal(a.indices, r.rerank(q, k=5).indices)


# ----------------------------------------------------------------------------- validation


def test_unnormalised_descriptors_are_refused():
    q, x = _data()
    for cls in (AverageQueryExpansion, AlphaQueryExpansion, DatabaseAugmentation):
        with pytest.raises(ValueError, match=r"database must be L2-normalised.*row \d+ has norm 2"):
            cls().fit(2 * x)
    r = AlphaQueryExpansion().fit(x)
    with pytest.raises(ValueError, match="queries must be L2-normalised") as err:
        r.rerank(3 * q, k=3)
    assert "normalize=True" not in str(err.value), "these classes have no such option"
    with pytest.raises(ValueError, match="queries must be L2-normalised"):
        r.transform_queries(3 * q)


@pytest.mark.parametrize(
    ("cls", "params", "error", "match"),
    [
        (AlphaQueryExpansion, {"k": 0}, ValueError, "k must be >= 1"),
        (AlphaQueryExpansion, {"k": 81}, ValueError, "k=81 is larger than the database"),
        (AlphaQueryExpansion, {"alpha": -1.0}, ValueError, "alpha must be >= 0"),
        (AverageQueryExpansion, {"iterations": 0}, ValueError, "iterations must be >= 1"),
        (AverageQueryExpansion, {"k": 2.5}, TypeError, "k must be an integer"),
        (DatabaseAugmentation, {"k": 80}, ValueError, "k=80 is too large for a database of 80"),
        (DatabaseAugmentation, {"alpha": "3"}, TypeError, "alpha must be a real number"),
        (DatabaseAugmentation, {"backend": "numpy"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_settings(cls, params, error, match):
    _, x = _data()
    with pytest.raises(error, match=match):
        cls(**params).fit(x)


def test_transform_before_fit_raises():
    from graphrerank.rerankers import NotFittedError

    with pytest.raises(NotFittedError, match="call fit"):
        AlphaQueryExpansion().transform_queries(None)
    with pytest.raises(NotFittedError, match="call fit"):
        DatabaseAugmentation().transform_database()


def test_normalisation_is_checked_in_blocks_of_rows():
    from graphrerank._checks import check_normalized

    x = torch.zeros(5, 2**22)  # blocks of 2 rows: the last row sits in the third block
    x[:, 0] = 1.0
    assert check_normalized(x, "x") is x
    x[4, 1] = 1.0
    with pytest.raises(ValueError, match=r"row 4 has norm 1.41421.*or pass normalize=True"):
        check_normalized(x, "x")
