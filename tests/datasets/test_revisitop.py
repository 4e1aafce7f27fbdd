import os
import pickle

import numpy as np
import pytest
import scipy.io
import torch

from graphrerank.datasets import (
    RevisitopR1M,
    ROxford5k,
    RParis6k,
    UnsafePickleError,
    load_features,
    load_revisitop_gnd,
)
from graphrerank.testing import data_dir, requires_data

ROXFORD = "revisitop/gnd_roxford5k.pkl"
RPARIS = "revisitop/gnd_rparis6k.pkl"


def toy_gnd(num_database=6, num_queries=2):
    return {
        "imlist": [f"db_{i}" for i in range(num_database)],
        "qimlist": [f"q_{i}" for i in range(num_queries)],
        "gnd": [
            {"bbx": [1.0, 2.0, 30.5, 40.0], "easy": [i % num_database], "hard": [], "junk": [0]}
            for i in range(num_queries)
        ],
    }


def write(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


# --------------------------------------------------------------------------- real files
@requires_data(ROXFORD)
def test_real_roxford5k():
    gt = load_revisitop_gnd(data_dir() / ROXFORD)
    assert gt.name == "roxford5k"
    assert (gt.num_database, gt.num_queries) == (4993, 70)
    assert len(gt.gnd) == 70
    assert sum(len(g["easy"]) == 0 for g in gt.gnd) == 2
    for g in gt.gnd:
        for key in ("easy", "hard", "junk"):
            assert g[key].dtype == np.int64
            assert g[key].ndim == 1
            assert g[key].size == 0 or (g[key].min() >= 0 and g[key].max() < 4993)
        assert g["bbx"].shape == (4,)
        assert len(g["easy"]) + len(g["hard"]) > 0
    assert gt.imlist.dtype.kind == "U"
    assert ROxford5k(data_dir() / "revisitop").missing_files() == []


@requires_data(RPARIS)
def test_real_rparis6k():
    gt = load_revisitop_gnd(data_dir() / RPARIS)
    assert gt.name == "rparis6k"
    assert (gt.num_database, gt.num_queries) == (6322, 70)
    assert all(len(g["easy"]) > 0 for g in gt.gnd)
    assert gt.gnd[0]["bbx"].dtype == np.float64
    assert RParis6k(data_dir() / "revisitop").missing_files() == []


# --------------------------------------------------------------------------- restricted pickle
class _EvalPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


class _SystemPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_payload_is_real(tmp_path):
    # The eval payload does create its file under plain pickle: the refusal below is meaningful.
    marker = tmp_path / "created"
    pickle.loads(pickle.dumps(_EvalPayload(marker)))
    assert marker.exists()


def test_refuses_eval_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    data = toy_gnd()
    data["gnd"][0]["easy"] = _EvalPayload(marker)  # hidden deep inside valid data
    path = write(tmp_path / "gnd_evil.pkl", data)
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval") as err:
        load_revisitop_gnd(path)
    assert "gnd_evil.pkl" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_refuses_os_system_without_running_it(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = write(tmp_path / "gnd_evil.pkl", _SystemPayload(marker), protocol)
    with pytest.raises(UnsafePickleError, match=r"\.system") as err:
        load_revisitop_gnd(path)
    assert isinstance(err.value, ValueError)
    assert not marker.exists()


def test_refuses_hand_written_global(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "gnd_evil.pkl"
    path.write_bytes(b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR.")
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        load_revisitop_gnd(path)
    assert not marker.exists()


def test_refuses_codecs_other_than_latin1(tmp_path):
    path = tmp_path / "gnd_codec.pkl"
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(UnsafePickleError, match="latin1"):
        load_revisitop_gnd(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_load(tmp_path, protocol):
    data = {
        "imlist": np.array([f"db_{i}" for i in range(5)]),
        "qimlist": ["q0", "q1"],
        "gnd": [
            {
                "easy": np.array([0, 3], dtype=np.int32),
                "hard": np.array([], dtype=np.int64),
                "junk": [np.int64(4)],
                "bbx": np.array([1, 2, 3, 4], dtype=np.float32),
            },
            {"easy": np.array([[1, 2]]), "hard": [4], "junk": []},
        ],
    }
    gt = load_revisitop_gnd(write(tmp_path / "gnd_np.pkl", data, protocol))
    assert (gt.num_database, gt.num_queries, gt.name) == (5, 2, "np")
    np.testing.assert_array_equal(gt.gnd[0]["easy"], [0, 3])
    np.testing.assert_array_equal(gt.gnd[1]["easy"], [1, 2])
    np.testing.assert_array_equal(gt.gnd[0]["junk"], [4])
    assert gt.gnd[0]["easy"].dtype == np.int64
    assert gt.gnd[0]["hard"].shape == (0,)
    np.testing.assert_array_equal(gt.gnd[0]["bbx"], [1.0, 2.0, 3.0, 4.0])
    assert gt.gnd[1]["bbx"] is None
    assert list(gt.imlist) == [f"db_{i}" for i in range(5)]


@pytest.mark.parametrize("cut", [0, 1, 10, -1])
def test_truncated_file(tmp_path, cut):
    raw = pickle.dumps(toy_gnd())
    path = tmp_path / "gnd_cut.pkl"
    path.write_bytes(raw[:cut] if cut >= 0 else raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        load_revisitop_gnd(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pkl"):
        load_revisitop_gnd(tmp_path / "nope.pkl")


def _edit(data, fn):
    fn(data)
    return data


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("gnd"), r"lacks the key\(s\) \['gnd'\]"),
        (lambda d: d["gnd"].pop(), "gnd has 1 entries but qimlist names 2"),
        (lambda d: d["gnd"][1].pop("junk"), r"gnd\[1\] lacks"),
        (lambda d: d["gnd"][0].update(easy=[6]), "index 6, outside the database of 6"),
        (lambda d: d["gnd"][0].update(easy=[-1]), "index -1"),
        (lambda d: d["gnd"][0].update(hard=[1.5]), "integer indices"),
        (lambda d: d["gnd"][0].update(hard=["a"]), "integer indices"),
        (lambda d: d["gnd"][0].update(bbx=[1, 2]), "4 numbers"),
        (lambda d: d.update(imlist=[1, 2]), r"imlist\[0\] must be a name"),
        (lambda d: d.update(gnd="x"), "list of dicts"),
        (lambda d: d["gnd"].__setitem__(0, [1]), r"gnd\[0\] must be a dict"),
    ],
)
def test_bad_structure(tmp_path, edit, match):
    path = write(tmp_path / "gnd_bad.pkl", _edit(toy_gnd(), edit))
    with pytest.raises(ValueError, match=match) as err:
        load_revisitop_gnd(path)
    assert "gnd_bad.pkl" in str(err.value)


def test_not_a_dict(tmp_path):
    with pytest.raises(ValueError, match="holds a list"):
        load_revisitop_gnd(write(tmp_path / "gnd_l.pkl", [1, 2]))


# --------------------------------------------------------------------------- load_features
def test_npy_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(7, 3))
    np.save(tmp_path / "a.npy", x)
    got = load_features(tmp_path / "a.npy")
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), x.astype(np.float32))
    got_t = load_features(str(tmp_path / "a.npy"), layout="columns")
    np.testing.assert_allclose(got_t.numpy(), x.T.astype(np.float32))
    assert got_t.is_contiguous()


def test_npy_integers_are_cast(tmp_path):
    np.save(tmp_path / "i.npy", np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert load_features(tmp_path / "i.npy").tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_npz_single_and_multi(tmp_path):
    x, y = np.ones((4, 2), np.float16), np.zeros((2, 5))
    np.savez(tmp_path / "one.npz", feats=x)
    assert load_features(tmp_path / "one.npz").shape == (4, 2)
    np.savez_compressed(tmp_path / "two.npz", X=x, Q=y)
    with pytest.raises(ValueError, match=r"holds 2 arrays \['Q', 'X'\]; pass key="):
        load_features(tmp_path / "two.npz")
    assert load_features(tmp_path / "two.npz", key="Q").shape == (2, 5)
    assert load_features(tmp_path / "two.npz", key="Q", layout="columns").shape == (5, 2)
    with pytest.raises(ValueError, match="key='Z': .* has no such array"):
        load_features(tmp_path / "two.npz", key="Z")


def test_mat_layouts(tmp_path):
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)  # (D, N)
    scipy.io.savemat(tmp_path / "f.mat", {"X": x, "Q": x[:, :2]})
    got = load_features(tmp_path / "f.mat", key="X")
    assert got.shape == (8, 3)
    np.testing.assert_array_equal(got.numpy(), x.T)
    np.testing.assert_array_equal(load_features(tmp_path / "f.mat", key="X", layout="rows"), x)
    with pytest.raises(ValueError, match="pass key="):
        load_features(tmp_path / "f.mat")


def test_mat_v73_refused(tmp_path):
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ")
    header += b"\x00" * 8 + b"\x00\x02" + b"IM"
    path = tmp_path / "v73.mat"
    path.write_bytes(header.ljust(512, b"\x00") + b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(ValueError, match=r"v7\.3 \(HDF5\)") as err:
        load_features(path)
    assert "v73.mat" in str(err.value)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.ones(5), "2-D"),
        (np.ones((2, 3, 4)), "2-D"),
        (np.ones((0, 3)), "empty"),
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([[True, False]]), "real numbers"),
        (np.array([["a", "b"]]), "real numbers"),
        (np.ones((2, 2), np.complex64), "real numbers"),
    ],
)
def test_bad_arrays(tmp_path, array, match):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=match) as err:
        load_features(tmp_path / "bad.npy")
    assert "bad.npy" in str(err.value)


def test_unreadable_files(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        load_features(tmp_path / "obj.npy")
    np.save(tmp_path / "cut.npy", np.ones((100, 10)))
    raw = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:300])
    with pytest.raises(ValueError, match=r"cut\.npy"):
        load_features(tmp_path / "cut.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(ValueError, match=r"not a \.npy file"):
        load_features(tmp_path / "text.npy")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"not a \.npz archive"):
        load_features(tmp_path / "text.npz")
    np.savez(tmp_path / "cut.npz", X=np.ones((100, 10)))
    raw = (tmp_path / "cut.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz"):
        load_features(tmp_path / "cut.npz")
    (tmp_path / "bad.mat").write_bytes(b"garbage" * 3)
    with pytest.raises(ValueError, match="not a readable MATLAB"):
        load_features(tmp_path / "bad.mat")
    (tmp_path / "x.txt").write_text("1 2")
    with pytest.raises(ValueError, match=r"unsupported descriptor file type '\.txt'"):
        load_features(tmp_path / "x.txt")


def test_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.npy"):
        load_features(tmp_path / "missing.npy")
    np.save(tmp_path / "a.npy", np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"single \.npy array"):
        load_features(tmp_path / "a.npy", key="X")
    with pytest.raises(ValueError, match="layout"):
        load_features(tmp_path / "a.npy", layout="cols")


# --------------------------------------------------------------------------- descriptions
def fake_root(root, *, num_database=6, num_queries=2, dim=4, gnd_name="gnd_roxford5k.pkl"):
    write(root / gnd_name, toy_gnd(num_database, num_queries))
    rng = np.random.default_rng(0)
    db = rng.normal(size=(num_database, dim)).astype(np.float32)
    q = rng.normal(size=(num_queries, dim)).astype(np.float32)
    return q, db


def test_missing_files_listed(tmp_path):
    ds = ROxford5k(tmp_path)
    assert [p.name for p in ds.required_files()] == ["gnd_roxford5k.pkl"]
    assert [p.name for p in ds.missing_files("gem")] == ["gnd_roxford5k.pkl", "gem.mat"]
    with pytest.raises(FileNotFoundError) as err:
        ds.load("gem")
    msg = str(err.value)
    for text in (
        str(tmp_path / "gnd_roxford5k.pkl"),
        str(tmp_path / "gem.mat"),
        "gem_database.npy (4993, D)",
        "gem_queries.npy (70, D)",
        "http://cmp.felk.cvut.cz/revisitop/data/datasets/roxford5k/gnd_roxford5k.pkl",
        "never downloads",
    ):
        assert text in msg
    write(tmp_path / "gnd_roxford5k.pkl", toy_gnd())
    np.save(tmp_path / "gem_database.npy", np.ones((6, 4)))
    assert [p.name for p in ds.missing_files("gem")] == ["gem_queries.npy"]
    with pytest.raises(FileNotFoundError, match=r"gem_queries\.npy"):
        ds.load("gem")


def test_fake_root_npy(tmp_path):
    q, db = fake_root(tmp_path)
    np.save(tmp_path / "gem_database.npy", db)
    np.save(tmp_path / "gem_queries.npy", q)
    bench = ROxford5k(tmp_path).load("gem")
    assert bench.name == "roxford5k"
    assert bench.num_distractors == 0
    np.testing.assert_array_equal(bench.database.numpy(), db)
    np.testing.assert_array_equal(bench.queries.numpy(), q)
    assert bench.gnd.num_database == 6
    assert "queries=2, database=6, distractors=0, dim=4" in repr(bench)


def test_fake_root_mat_and_distractors(tmp_path):
    q, db = fake_root(tmp_path)
    scipy.io.savemat(tmp_path / "net.mat", {"X": db.T, "Q": q.T})
    distractors = np.full((5, 4), 7.0)
    np.save(tmp_path / "r1m.npy", distractors)
    for d in (distractors, torch.from_numpy(distractors), tmp_path / "r1m.npy"):
        bench = ROxford5k(tmp_path).load("net", distractors=d)
        assert bench.database.shape == (11, 4)
        np.testing.assert_array_equal(bench.database[:6].numpy(), db)  # gnd indices stay valid
        np.testing.assert_array_equal(bench.database[6:].numpy(), distractors)
        np.testing.assert_array_equal(bench.queries.numpy(), q)
        assert bench.num_distractors == 5
    assert ROxford5k(tmp_path).load("net.mat").database.shape == (6, 4)
    with pytest.raises(ValueError, match="dimension 3"):
        ROxford5k(tmp_path).load("net", distractors=np.ones((2, 3)))


def test_pair_of_arrays(tmp_path):
    q, db = fake_root(tmp_path, gnd_name="gnd_rparis6k.pkl")
    bench = RParis6k(tmp_path).load((q, torch.from_numpy(db)))
    assert bench.name == "rparis6k"
    assert bench.database.shape == (6, 4)


def test_counts_checked(tmp_path):
    q, db = fake_root(tmp_path)
    np.save(tmp_path / "a_database.npy", db[:5])
    np.save(tmp_path / "a_queries.npy", q)
    with pytest.raises(
        ValueError, match=r"database descriptors have 5 rows but gnd_roxford5k\.pkl"
    ):
        ROxford5k(tmp_path).load("a")
    np.save(tmp_path / "b_database.npy", db)
    np.save(tmp_path / "b_queries.npy", q[:1])
    with pytest.raises(ValueError, match="queries descriptors have 1 rows"):
        ROxford5k(tmp_path).load("b")
    # A (D, N) array saved as .npy, i.e. read as rows: the message points at the layout.
    np.save(tmp_path / "c_database.npy", np.ones((4, 6)))
    np.save(tmp_path / "c_queries.npy", q)
    with pytest.raises(ValueError, match="looks transposed"):
        ROxford5k(tmp_path).load("c")
    np.save(tmp_path / "d_database.npy", db)
    np.save(tmp_path / "d_queries.npy", np.ones((2, 3)))
    with pytest.raises(ValueError, match="dimension 3"):
        ROxford5k(tmp_path).load("d")
    scipy.io.savemat(tmp_path / "e.mat", {"X": db.T})
    with pytest.raises(ValueError, match=r"lacks the variable\(s\) \['Q'\]"):
        ROxford5k(tmp_path).load("e")


def test_r1m(tmp_path):
    r1m = RevisitopR1M(tmp_path)
    with pytest.raises(FileNotFoundError, match="revisitop1m"):
        r1m.load("gem")
    np.save(tmp_path / "gem.npy", np.ones((3, 4)))
    assert r1m.missing_files("gem") == []
    assert r1m.load("gem").shape == (3, 4)
    scipy.io.savemat(tmp_path / "net.mat", {"X": np.ones((4, 9))})
    assert r1m.load("net").shape == (9, 4)
    assert r1m.load("net.mat").shape == (9, 4)
