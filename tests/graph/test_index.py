import numpy as np
import pytest
import torch

from graphrerank._io import CorruptFileError
from graphrerank.graph import KNNIndex, knn_search
from graphrerank.testing import requires_faiss


def _clustered(n=2000, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(40, d, generator=g)
    x = centers[torch.randint(0, 40, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def test_flat_torch_index_search_add_matches_knn_search(device):
    x = _clustered(300).to(device)
    index = KNNIndex(backend="torch").add(x[:200]).add(x[200:])
    assert len(index) == 300 and index.dim == 32
    out = index.search(x[:10], 5)
    ref = knn_search(x[:10], x, 5, backend="torch")
    assert torch.equal(out.indices, ref.indices)
    assert out.indices.device.type == device


@requires_faiss
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_faiss_equals_exact(metric):
    x = _clustered(500)
    out = KNNIndex(metric=metric, backend="faiss").add(x).search(x[:20], 10)
    ref = knn_search(x[:20], x, 10, metric=metric, backend="torch")
    assert torch.equal(out.indices, ref.indices)
    torch.testing.assert_close(out.scores, ref.scores, rtol=1e-4, atol=1e-4)


@requires_faiss
@pytest.mark.parametrize(
    ("kind", "kwargs", "min_recall"),
    [
        ("ivf", {"nlist": 16, "nprobe": 16}, 0.999),  # all cells visited: exact
        ("ivf", {"nlist": 32, "nprobe": 4}, 0.8),
        ("hnsw", {}, 0.9),
        ("ivfpq", {"nlist": 16, "nprobe": 16, "pq_m": 8, "pq_nbits": 5}, 0.2),
        (
            "ivfpq",
            {
                "nlist": 16,
                "nprobe": 16,
                "pq_m": 8,
                "pq_nbits": 5,
                "refine": True,
                "refine_factor": 8,
            },
            0.9,
        ),
    ],
)
def test_approximate_indexes_recall(kind, kwargs, min_recall):
    x = _clustered(2000)
    q = x[:100]
    exact = knn_search(q, x, 10, backend="torch").indices
    out = KNNIndex(kind=kind, **kwargs).add(x).search(q, 10)
    found = (out.indices[:, :, None] == exact[:, None, :]).any(1).float().mean().item()
    assert found >= min_recall, (kind, found)
    assert out.indices.dtype == torch.int64


@requires_faiss
def test_ivf_pads_with_minus_one_when_cells_are_too_small():
    x = _clustered(400)
    index = KNNIndex(kind="ivf", nlist=40, nprobe=1).add(x)
    out = index.search(x[:50], 200)
    pad = out.indices == -1
    assert pad.any(), "one probed cell of ~10 items cannot hold 200 results"
    assert torch.isinf(out.scores[pad]).all() and (out.scores[pad] < 0).all()


@pytest.mark.parametrize(
    ("backend", "kind"),
    [("torch", "flat"), ("faiss", "flat"), ("faiss", "ivf"), ("faiss", "hnsw"), ("faiss", "ivfpq")],
)
def test_save_load_round_trip(tmp_path, backend, kind):
    if backend == "faiss":
        pytest.importorskip("faiss")
    x = _clustered(600)
    extra = {"pq_nbits": 4} if kind == "ivfpq" else {}
    index = KNNIndex(backend=backend, kind=kind, nlist=8 if kind != "flat" else None, **extra).add(
        x
    )
    before = index.search(x[:7], 5)
    path = index.save(tmp_path / "index.npz")
    assert not list(tmp_path.glob("*.tmp")), "no temporary file left behind"
    loaded = KNNIndex.load(path)
    assert len(loaded) == 600 and loaded.kind == kind
    after = loaded.search(x[:7], 5)
    assert torch.equal(before.indices, after.indices)
    torch.testing.assert_close(before.scores, after.scores)
    loaded.add(x[:3])
    assert len(loaded) == 603


def test_load_refuses_corrupt_files(tmp_path):
    x = _clustered(100)
    path = KNNIndex(backend="torch").add(x).save(tmp_path / "i.npz")
    data = bytearray(path.read_bytes())
    # truncated file
    (tmp_path / "trunc.npz").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CorruptFileError, match="trunc.npz"):
        KNNIndex.load(tmp_path / "trunc.npz")
    # not an archive at all
    (tmp_path / "junk.npz").write_bytes(b"hello")
    with pytest.raises(CorruptFileError, match="junk.npz"):
        KNNIndex.load(tmp_path / "junk.npz")
    # changed vectors fail the checksum
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["vectors"] = arrays["vectors"] + 1
    np.savez(tmp_path / "tampered.npz", **arrays)
    with pytest.raises(CorruptFileError, match="checksum"):
        KNNIndex.load(tmp_path / "tampered.npz")
    # a file of another kind
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(CorruptFileError, match="no graphrerank metadata"):
        KNNIndex.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        KNNIndex.load(tmp_path / "missing.npz")


def test_load_never_unpickles(tmp_path):
    # an object array would need pickle: loading must refuse it rather than execute anything
    np.savez(tmp_path / "obj.npz", vectors=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CorruptFileError):
        KNNIndex.load(tmp_path / "obj.npz")


def test_bad_use_raises():
    with pytest.raises(ValueError, match="kind='hnsw' needs faiss"):
        KNNIndex(kind="hnsw", backend="torch")
    index = KNNIndex(backend="torch")
    with pytest.raises(ValueError, match="index is empty"):
        index.search(torch.zeros(1, 4), 1)
    index.add(torch.randn(10, 4))
    with pytest.raises(ValueError, match="dimension 5"):
        index.add(torch.randn(3, 5))
    with pytest.raises(ValueError, match="k=11 is larger"):
        index.search(torch.randn(2, 4), 11)
    with pytest.raises(ValueError, match="kind must be one of"):
        KNNIndex(kind="lsh")


# ----------------------------------------------------------------------------- hardening
@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=requires_faiss)])
def test_load_refuses_devices_it_cannot_search_on(tmp_path, backend):
    """``load(device="meta")`` returned an index that could not search; ``device="cuda"``
    with CPU faiss was an AttributeError."""
    x = _clustered(50, 8)
    path = KNNIndex(backend=backend).add(x).save(tmp_path / "i.npz")
    with pytest.raises(ValueError, match="device='meta' holds no data"):
        KNNIndex.load(path, device="meta")
    with pytest.raises(ValueError, match="device='nowhere' is not a device"):
        KNNIndex.load(path, device="nowhere")
    with pytest.raises(TypeError, match="device must be"):
        KNNIndex.load(path, device=0.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            KNNIndex.load(path, device="cuda")
    assert torch.equal(KNNIndex.load(path).search(x[:3], 2).indices[:, 0], torch.arange(3))


@requires_faiss
def test_faiss_index_onto_cuda_without_gpu_faiss_is_a_clear_error(tmp_path, monkeypatch):
    """As if torch had a GPU but faiss were the CPU build (the AttributeError case)."""
    import graphrerank.graph.index as mod

    path = KNNIndex(backend="faiss").add(_clustered(50, 8)).save(tmp_path / "f.npz")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(mod, "faiss_num_gpus", lambda: 0)
    with pytest.raises(ValueError, match="this faiss has no GPU support"):
        KNNIndex.load(path, device="cuda")
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        KNNIndex.load(path, device="cuda:3")


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=requires_faiss)])
def test_meta_tensors_are_refused_before_any_kernel(backend):
    x = _clustered(20, 4)
    m = x.to("meta")
    with pytest.raises(ValueError, match="queries is on the meta device"):
        knn_search(m, x, 2, backend=backend)
    with pytest.raises(ValueError, match="database is on the meta device"):
        knn_search(x, m, 2, backend=backend)
    with pytest.raises(ValueError, match="vectors is on the meta device"):
        KNNIndex(backend=backend).add(m)
    index = KNNIndex(backend=backend).add(x)
    with pytest.raises(ValueError, match="queries is on the meta device"):
        index.search(m, 2)


@requires_faiss
@pytest.mark.parametrize(
    ("n", "settings", "match"),
    [
        (100, {}, "needs at least 256 vectors, got 100; add more vectors, pass pq_nbits <= 6"),
        (100, {"nlist": 1}, "needs at least 256 vectors"),
        (10, {"nlist": 1, "pq_nbits": 4}, "needs at least 16 vectors, got 10"),
        (300, {"nlist": 1, "train_size": 10}, r"got 10 \(train_size=10\)"),
        (50, {"nlist": 100}, "needs at least nlist=100 vectors, got 50"),
        (300, {"nlist": 1, "pq_m": 3}, "pq_m=3 must divide the dimension 8"),
    ],
)
def test_ivfpq_training_preconditions_are_clear_errors(n, settings, match):
    """IVF-PQ on fewer than 256 vectors (8-bit codes) raised faiss' C++ error."""
    kind = "ivf" if settings.get("nlist") == 100 else "ivfpq"
    x = _clustered(n, 8)
    with pytest.raises(ValueError, match=match):
        KNNIndex(kind=kind, **settings).add(x)


@requires_faiss
def test_ivfpq_with_enough_vectors_for_its_codes_trains():
    x = _clustered(300, 8)
    for nbits in (4, 8):
        index = KNNIndex(kind="ivfpq", nlist=2, pq_nbits=nbits).add(x)
        out = index.search(x[:5], 3)
        assert out.indices.shape == (5, 3) and (out.indices >= 0).all()
    small = KNNIndex(kind="ivfpq", nlist=1, pq_nbits=4).add(x[:16])  # exactly 2**4
    assert len(small) == 16
