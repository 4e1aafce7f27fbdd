import numpy as np
import pytest
import torch

from graphrerank.datasets import load_corel1k, load_corel1k_local
from graphrerank.testing import data_dir, requires_data

from ._helpers import cosine_class_map

COREL = "corel1k/corel1k_effnetlite_desc.npz"
LOCAL = "corel1k_local/corel1k_local.npz"


@requires_data(COREL)
def test_real_corel1k():
    ds = load_corel1k()
    assert ds.name == "corel1k"
    assert ds.database.shape == (1000, 1280)
    assert ds.database.dtype == torch.float32
    assert ds.database_labels.tolist() == [i // 100 for i in range(1000)]
    assert len(ds.class_names) == 10
    assert ds.class_names[0] == "africa_people"
    # Cast, not re-normalised: exactly the stored float16 values.
    with np.load(data_dir() / COREL) as z:
        stored = z["desc_lite2_max512_gem3"]
    np.testing.assert_array_equal(ds.database.numpy(), stored.astype(np.float32))
    other = load_corel1k(data_dir() / COREL, descriptor="desc_lite0_native_avg")
    assert other.database.shape == (1000, 1280)
    assert not torch.equal(other.database, ds.database)


@requires_data(COREL)
def test_real_corel1k_cosine_baseline():
    ds = load_corel1k()
    m, _ = cosine_class_map(ds.database.numpy(), ds.database_labels.numpy())
    assert m == pytest.approx(0.9205, abs=5e-4)  # the figure of the data README


@requires_data(COREL)
def test_unknown_descriptor():
    with pytest.raises(ValueError, match="desc_lite2_max512_gem3"):
        load_corel1k(descriptor="resnet")


@requires_data(LOCAL)
def test_real_corel1k_local():
    loc = load_corel1k_local()
    assert loc.local.shape == (1000, 64, 128)
    assert loc.local.dtype == torch.float32
    assert loc.positions.shape == (1000, 64, 2)
    assert loc.positions.dtype == torch.int64
    assert loc.labels.tolist() == [i // 100 for i in range(1000)]
    assert len(loc.class_names) == 10
    torch.testing.assert_close(loc.local.norm(dim=2), torch.ones(1000, 64), atol=5e-3, rtol=0)
    assert "per_image=64, dim=128" in repr(loc)


def test_default_path_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHRERANK_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="GRAPHRERANK_DATA"):
        load_corel1k()
    with pytest.raises(FileNotFoundError, match="corel1k_local"):
        load_corel1k_local()
    monkeypatch.setenv("GRAPHRERANK_DATA", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="no data folder"):
        load_corel1k()
    with pytest.raises(FileNotFoundError, match="x"):
        load_corel1k(tmp_path / "x.npz")


def fake(path, **arrays):
    base = {
        "desc_a": np.eye(4, 6, dtype=np.float16),
        "labels": np.array([0, 0, 1, 1], np.int16),
        "class_names": np.array(["u", "v"]),
        "local128": np.ones((4, 3, 5), np.float16),
        "local_pos": np.zeros((4, 3, 2), np.int16),
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def test_fake_files(tmp_path):
    ds = load_corel1k(fake(tmp_path / "a.npz"), descriptor="desc_a")
    assert ds.database.shape == (4, 6)
    assert list(ds.class_names) == ["u", "v"]
    loc = load_corel1k_local(tmp_path / "a.npz")
    assert loc.local.shape == (4, 3, 5)
    assert loc.labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"labels": np.array([0, 1])}, "'labels' has 2 entries"),
        ({"class_names": None}, r"lacks the array\(s\) \['class_names'\]"),
        ({"desc_a": np.ones((4, 2, 2))}, "2-D"),
    ],
)
def test_bad_global(tmp_path, arrays, match):
    with pytest.raises(ValueError, match=match):
        load_corel1k(fake(tmp_path / "b.npz", **arrays), descriptor="desc_a")


@pytest.mark.parametrize(
    ("arrays", "kind", "match"),
    [
        ({}, "local64", "kind must be one of"),
        ({}, "local_raw", r"lacks the array\(s\) \['local_raw'\]"),
        ({"local128": np.ones((4, 5))}, "local128", r"\(N, L, D\)"),
        ({"local_pos": np.zeros((4, 2, 2))}, "local128", "local_pos"),
        ({"local128": np.full((4, 3, 5), np.inf)}, "local128", "NaN or infinite"),
    ],
)
def test_bad_local(tmp_path, arrays, kind, match):
    with pytest.raises(ValueError, match=match):
        load_corel1k_local(fake(tmp_path / "c.npz", **arrays), kind=kind)
