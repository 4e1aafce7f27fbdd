import numpy as np
import pytest
import scipy.io
import torch

from graphrerank.datasets import Market1501, load_reid_result, parse_reid_filename
from graphrerank.testing import data_dir, requires_data

PKU = "pku_sketch_reid/pytorch_result.mat"


@requires_data(PKU)
def test_real_pku_result():
    res = load_reid_result(data_dir() / PKU)
    assert res.query_features.shape == (50, 512)
    assert res.gallery_features.shape == (100, 512)
    assert res.query_features.dtype == torch.float32
    for t in (res.query_ids, res.query_cams, res.gallery_ids, res.gallery_cams):
        assert t.dtype == torch.int64
        assert t.dim() == 1
    assert res.query_ids.tolist() == list(range(151, 201))
    ids, counts = torch.unique(res.gallery_ids, return_counts=True)
    assert ids.tolist() == list(range(151, 201))
    assert set(counts.tolist()) == {2}
    assert set(res.query_cams.tolist()) == {0}
    assert set(res.gallery_cams.tolist()) <= {3, 4, 5, 6}
    torch.testing.assert_close(res.query_features.norm(dim=1), torch.ones(50), atol=1e-4, rtol=0)


def result_arrays(q=3, g=5, dim=4):
    rng = np.random.default_rng(0)
    return {
        "query_f": rng.normal(size=(q, dim)).astype(np.float32),
        "query_label": np.arange(q).reshape(1, q),
        "query_cam": np.ones((1, q), np.int64),
        "gallery_f": rng.normal(size=(g, dim)).astype(np.float32),
        "gallery_label": (np.arange(g) % q).reshape(1, g),
        "gallery_cam": np.full((1, g), 2),
    }


def test_result_round_trip(tmp_path):
    arrays = result_arrays()
    scipy.io.savemat(tmp_path / "r.mat", arrays)
    res = load_reid_result(tmp_path / "r.mat")
    np.testing.assert_array_equal(res.query_features.numpy(), arrays["query_f"])
    np.testing.assert_array_equal(res.gallery_ids.numpy(), arrays["gallery_label"].ravel())
    assert res.gallery_cams.shape == (5,)
    assert repr(res) == "ReIDFeatures(name='r', queries=3, gallery=5, dim=4)"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"gallery_cam": None}, r"lacks the variable\(s\) \['gallery_cam'\]"),
        ({"query_label": np.arange(2).reshape(1, 2)}, "'query_label' has 2 entries"),
        ({"gallery_cam": np.ones((1, 4))}, "'gallery_cam' has 4 entries"),
        ({"gallery_f": np.ones((5, 6), np.float32)}, "dimension"),
        ({"query_f": np.ones((3, 2, 2))}, "2-D"),
        ({"query_label": np.full((1, 3), 0.5)}, "whole numbers"),
        ({"query_cam": np.ones((3, 2))}, "vector"),
    ],
)
def test_result_errors(tmp_path, change, match):
    arrays = result_arrays()
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    scipy.io.savemat(tmp_path / "bad.mat", arrays)
    with pytest.raises(ValueError, match=match) as err:
        load_reid_result(tmp_path / "bad.mat")
    assert "bad.mat" in str(err.value)


def test_result_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        load_reid_result(tmp_path / "nothing.mat")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("0002_c1s1_000451_03.jpg", (2, 1)),
        ("-1_c3s2_000101_01.jpg", (-1, 3)),
        ("0000_c6s4_002202_07.jpg", (0, 6)),
        ("1501_c5s3_065987_01.png", (1501, 5)),
        ("some/folder/0010_c2s1_000001_00.jpg", (10, 2)),
    ],
)
def test_parse_reid_filename(name, expected):
    assert parse_reid_filename(name) == expected


@pytest.mark.parametrize("name", ["Thumbs.db", "0002_x1s1_000451_03.jpg", "c1_0002.jpg", "abc"])
def test_parse_reid_filename_invalid(name):
    with pytest.raises(ValueError, match="not a re-ID image name"):
        parse_reid_filename(name)


QUERY = ["0002_c1s1_000451_03.jpg", "0001_c2s1_000001_00.jpg", "0007_c6s2_000002_01.jpg"]
GALLERY = [
    "0001_c1s1_000100_02.jpg",
    "-1_c1s1_000401_03.jpg",
    "0000_c3s1_000010_01.jpg",
    "0002_c2s1_000001_00.jpg",
    "0007_c5s1_000011_04.jpg",
]


def market_root(root):
    for folder, names in (("query", QUERY), ("bounding_box_test", GALLERY)):
        (root / folder).mkdir()
        for n in names:
            (root / folder / n).touch()
    (root / "bounding_box_test" / "Thumbs.db").touch()  # not an image: ignored
    return root


def test_market_folder(tmp_path):
    market = Market1501(market_root(tmp_path))
    assert market.missing_files() == []
    assert list(market.query_names()) == sorted(QUERY)
    assert list(market.gallery_names()) == sorted(GALLERY)
    q = np.arange(12, dtype=np.float32).reshape(3, 4)
    g = np.ones((5, 4))
    np.save(tmp_path / "q.npy", q)
    for query_features, gallery_features in ((q, g), ("q.npy", torch.from_numpy(g))):
        data = market.load(query_features, gallery_features)
        assert data.query_ids.tolist() == [1, 2, 7]  # sorted names: 0001, 0002, 0007
        assert data.query_cams.tolist() == [2, 1, 6]
        assert data.gallery_ids.tolist() == [-1, 0, 1, 2, 7]
        assert data.gallery_cams.tolist() == [1, 3, 1, 2, 5]
        np.testing.assert_array_equal(data.query_features.numpy(), q)
        assert data.gallery_features.dtype == torch.float32
        assert data.name == "market1501"
    with pytest.raises(ValueError, match="gallery_features have 4 rows but the folder holds 5"):
        market.load(q, g[:4])
    with pytest.raises(ValueError, match="gallery_features are needed"):
        market.load(q)


def test_market_result_file(tmp_path):
    market = Market1501(market_root(tmp_path))
    arrays = result_arrays(q=3, g=5)
    arrays["query_label"] = np.array([[1, 2, 7]])
    arrays["query_cam"] = np.array([[2, 1, 6]])
    arrays["gallery_label"] = np.array([[-1, 0, 1, 2, 7]])
    arrays["gallery_cam"] = np.array([[1, 3, 1, 2, 5]])
    scipy.io.savemat(tmp_path / "result.mat", arrays)
    data = market.load(result="result.mat")
    np.testing.assert_array_equal(data.gallery_features.numpy(), arrays["gallery_f"])
    arrays["gallery_label"] = np.array([[0, -1, 1, 2, 7]])  # another order
    scipy.io.savemat(tmp_path / "shuffled.mat", arrays)
    with pytest.raises(ValueError, match="gallery ids or cameras"):
        market.load(result=tmp_path / "shuffled.mat")
    with pytest.raises(ValueError, match="either result="):
        market.load(np.ones((3, 4)), result="result.mat")


def test_market_missing(tmp_path):
    market = Market1501(tmp_path)
    assert [p.name for p in market.missing_files()] == ["query", "bounding_box_test"]
    with pytest.raises(FileNotFoundError, match="bounding_box_test"):
        market.load(np.ones((1, 2)), np.ones((1, 2)))
    (tmp_path / "query").mkdir()
    (tmp_path / "bounding_box_test").mkdir()
    (tmp_path / "query" / "0001_c1s1_000001_00.jpg").touch()
    with pytest.raises(ValueError, match="holds no images"):
        market.load(np.ones((1, 2)), np.ones((1, 2)))


def test_market_bad_name(tmp_path):
    market_root(tmp_path)
    (tmp_path / "query" / "holiday.jpg").touch()
    with pytest.raises(ValueError, match=r"holiday\.jpg"):
        Market1501(tmp_path).load(np.ones((4, 2)), np.ones((5, 2)))
