import numpy as np
import pytest
import scipy.sparse
import torch

from graphrerank.datasets import make_retrieval_dataset

from ._helpers import cosine_class_map, loo_class_map


def test_shapes_norms_labels():
    ds = make_retrieval_dataset(1000, 16, 7)
    assert ds.name == "synthetic"
    assert ds.all_vs_all
    assert ds.database.shape == (1000, 16)
    assert ds.database.dtype == torch.float32
    torch.testing.assert_close(ds.database.norm(dim=1), torch.ones(1000), atol=1e-6, rtol=0)
    assert ds.database_labels.dtype == torch.int64
    counts = torch.bincount(ds.database_labels)
    assert counts.numel() == 7
    assert counts.max() - counts.min() <= 1  # balanced
    assert ds.database_labels[:20].tolist() != sorted(ds.database_labels[:20].tolist())


def test_queries_and_dtype():
    ds = make_retrieval_dataset(600, 32, 3, num_queries=50, dtype=torch.float64, seed=3)
    assert ds.queries.shape == (50, 32)
    assert ds.queries.dtype == torch.float64
    assert ds.query_labels.shape == (50,)
    torch.testing.assert_close(ds.queries.norm(dim=1), torch.ones(50, dtype=torch.float64))
    # Queries lie on the curves of their class: their nearest database item shares it.
    nearest = (ds.queries @ ds.database.T).argmax(dim=1)
    assert (ds.database_labels[nearest] == ds.query_labels).float().mean() > 0.9
    # Queries are new points, not copies of database items.
    assert (ds.queries @ ds.database.T).max() < 1 - 1e-6


def test_deterministic_per_seed():
    a = make_retrieval_dataset(500, 8, 5, num_queries=10, seed=7)
    b = make_retrieval_dataset(500, 8, 5, num_queries=10, seed=7)
    c = make_retrieval_dataset(500, 8, 5, num_queries=10, seed=8)
    assert torch.equal(a.database, b.database)
    assert torch.equal(a.database_labels, b.database_labels)
    assert torch.equal(a.queries, b.queries)
    assert not torch.equal(a.database, c.database)
    assert not torch.equal(a.database_labels, c.database_labels)


def test_chunking_does_not_change_values():
    # 9000 rows cover three random blocks of 4096; chunks cut them at odd places.
    full = make_retrieval_dataset(9000, 12, 30, num_queries=5000, seed=2, chunk_size=10**6)
    for chunk in (1000, 4097, 7):
        if chunk == 7:
            part = make_retrieval_dataset(300, 12, 30, seed=2, chunk_size=chunk)
            ref = make_retrieval_dataset(300, 12, 30, seed=2, chunk_size=300)
            assert torch.equal(part.database, ref.database)
            continue
        part = make_retrieval_dataset(9000, 12, 30, num_queries=5000, seed=2, chunk_size=chunk)
        assert torch.equal(part.database, full.database)
        assert torch.equal(part.queries, full.queries)
    assert torch.equal(make_retrieval_dataset(9000, 12, 30, seed=2).database, full.database)


def _diffusion_scores(x: np.ndarray, k: int = 10, alpha: float = 0.9, steps: int = 20):
    """Scores of a plain diffusion over the mutual kNN graph (a stand-in graph re-ranker)."""
    n = len(x)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    idx = np.argpartition(-s, k, axis=1)[:, :k]
    w = np.maximum(np.take_along_axis(s, idx, axis=1), 0) ** 3
    graph = scipy.sparse.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), (n, n))
    graph = graph.minimum(graph.T)
    d = np.asarray(graph.sum(axis=1)).ravel()
    d_inv = scipy.sparse.diags(1 / np.sqrt(np.maximum(d, 1e-12)))
    walk = d_inv @ graph @ d_inv
    f = np.eye(n)
    for _ in range(steps):
        f = alpha * (walk @ f) + (1 - alpha) * np.eye(n)
    return f + f.T


def test_manifold_structure():
    ds = make_retrieval_dataset(2000, 64, 20, seed=0)
    x, labels = ds.database.double().numpy(), ds.database_labels.numpy()
    cos_map, nn_acc = cosine_class_map(x, labels)
    assert nn_acc > 0.9
    assert cos_map < 0.8
    # Far points of one curve are less similar than points of other classes ...
    s = x @ x.T
    same = labels[:, None] == labels[None, :]
    assert s[same].min() < np.percentile(s[~same], 50)
    # ... and following the kNN graph recovers much of the gap.
    diff_map, _ = loo_class_map(_diffusion_scores(x), labels)
    assert diff_map > cos_map + 0.2


def test_noise_controls_difficulty():
    clean = make_retrieval_dataset(1000, 32, 10, noise=0.0, seed=1)
    noisy = make_retrieval_dataset(1000, 32, 10, noise=3.0, seed=1)
    m_clean, nn_clean = cosine_class_map(clean.database.numpy(), clean.database_labels.numpy())
    m_noisy, nn_noisy = cosine_class_map(noisy.database.numpy(), noisy.database_labels.numpy())
    assert nn_clean == 1.0
    assert nn_noisy < nn_clean
    assert m_noisy < m_clean < 0.8


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_items": 0}, ValueError, "num_items"),
        ({"dim": 3}, ValueError, "dim"),
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"num_items": 5, "num_classes": 6}, ValueError, "num_classes must be <= 5"),
        ({"num_queries": -1}, ValueError, "num_queries"),
        ({"noise": -0.1}, ValueError, "noise"),
        ({"noise": float("nan")}, ValueError, "noise"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"dtype": torch.int64}, TypeError, "dtype"),
        ({"dtype": "float32"}, TypeError, "dtype"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    args = {"num_items": 100, "dim": 8, "num_classes": 4} | kwargs
    with pytest.raises(error, match=match):
        make_retrieval_dataset(**args)


# ------------------------------------------------------------------ make_local_descriptors
def test_make_local_descriptors_shapes_and_construction():
    from graphrerank.datasets import make_local_descriptors

    g, local, labels = make_local_descriptors(3, 5, parts=6, length=8, dim=7, seed=1)
    assert g.shape == (15, 7) and local.shape == (15, 8, 7) and labels.shape == (15,)
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    torch.testing.assert_close(g.norm(dim=1), torch.ones(15))
    # the global descriptor is the noisy mean of the local ones: far closer to that mean's
    # direction than to the other images' (the noise is large by design)
    mean = torch.nn.functional.normalize(local.mean(1), dim=1)
    own, all_ = (g * mean).sum(1).mean(), (g @ mean.T).mean()
    assert own > all_ + 0.3, (own, all_)
    # the last length // 2 descriptors are clutter: drawn from 40 vectors shared by all
    clutter = local[:, 4:].reshape(-1, 7)
    assert torch.unique(clutter, dim=0).shape[0] <= 40
    g2, local2, _ = make_local_descriptors(3, 5, parts=6, length=8, dim=7, seed=1)
    assert torch.equal(local, local2) and torch.equal(g, g2)
    assert not torch.equal(local, make_local_descriptors(3, 5, parts=6, length=8, dim=7)[1])


def test_make_local_descriptors_refuses_bad_sizes():
    from graphrerank.datasets import make_local_descriptors

    with pytest.raises(ValueError, match="parts=3 is too few for length=8"):
        make_local_descriptors(parts=3, length=8)
    with pytest.raises(ValueError, match="num_classes"):
        make_local_descriptors(0)
    with pytest.raises(ValueError, match="too large"):
        make_local_descriptors(1000, 1000, length=100, dim=1000, parts=100)


# ------------------------------------------------------------------ RetrievalDataset.head
def test_head_keeps_the_first_items_with_their_labels_and_images():
    from graphrerank.datasets import RetrievalDataset

    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    ds = RetrievalDataset(x, torch.tensor([0, 1, 0, 1, 2, 2]), images=torch.zeros(6, 2, 2),
                          class_names=["a", "b", "c"], name="toy")  # fmt: skip
    h = ds.head(4)
    assert torch.equal(h.database, x[:4]) and h.database_labels.tolist() == [0, 1, 0, 1]
    assert h.images.shape == (4, 2, 2) and list(h.class_names) == ["a", "b", "c"]
    assert h.name == "toy" and h.all_vs_all
    assert ds.head(100).num_items == 6  # at most all of them
    q = RetrievalDataset(
        x, torch.zeros(6, dtype=torch.long), x[:2], torch.zeros(2, dtype=torch.long)
    )
    assert torch.equal(q.head(3).queries, x[:2])  # the queries are kept
    with pytest.raises(ValueError, match="n must be >= 1"):
        ds.head(0)


def test_fast_mode_reads_the_environment(monkeypatch):
    from graphrerank.testing import fast_mode

    for value, expected in (("", False), ("0", False), ("1", True), ("yes", True)):
        monkeypatch.setenv("GRAPHRERANK_FAST", value)
        assert fast_mode() is expected
    monkeypatch.delenv("GRAPHRERANK_FAST")
    assert fast_mode() is False
