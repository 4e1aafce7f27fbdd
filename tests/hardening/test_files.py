"""Untrusted files: every loader either returns the data that was saved or raises the
documented error (:class:`~graphrerank._io.CorruptFileError`, or ``ValueError`` for the
readers of foreign formats), never ``MemoryError`` / ``TokenError`` / ``NotImplementedError``;
crafted files are refused before memory is spent; killed saves leave nothing behind at the
next save; paths that are not paths are a ``TypeError`` naming the argument.

The killed save runs in a subprocess (killed with SIGKILL mid-write).
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphrerank import _io
from graphrerank._io import (
    CorruptFileError,
    atomic_write,
    check_path,
    load_arrays,
    read_format,
    read_npy_file,
    read_npz_file,
    save_arrays,
)
from graphrerank.datasets import (
    UnsafePickleError,
    load_corel1k,
    load_corel1k_local,
    load_features,
    load_reid_result,
    load_revisitop_gnd,
    parse_reid_filename,
    save_revisitop_gnd,
    write_revisitop_pickle,
)
from graphrerank.graph import KNNIndex
from graphrerank.rerankers import KNN, Reranker

_FILE_SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _attempt(f, errors):
    """``(result, None)``, or ``(None, error)`` when ``f()`` raises one of ``errors``."""
    try:
        return f(), None
    except errors as err:
        return None, err


def _npy_bytes(header: str, data: bytes = b"", version: int = 1) -> bytes:
    """A ``.npy`` file with ``header`` (padded as numpy pads it) followed by ``data``."""
    size_bytes = 2 if version == 1 else 4
    pad = -(6 + 2 + size_bytes + len(header) + 1) % 64
    text = (header + " " * pad + "\n").encode("latin1")
    size = struct.pack("<H" if version == 1 else "<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + data


def _bomb_header() -> str:
    return "{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000,), }"


# ----------------------------------------------------------------------------- item 8
def test_npy_header_bomb_is_refused_before_allocation(tmp_path):
    """A 192-byte ``.npy`` whose header declares 800 GB of float64 was a MemoryError; it is a
    CorruptFileError naming the file, whether read alone, from a ``.npz`` archive or as a
    graphrerank file (sizes are checked before anything is allocated)."""
    bomb = _npy_bytes(_bomb_header(), b"\0" * 64)
    assert len(bomb) == 192
    (tmp_path / "bomb.npy").write_bytes(bomb)
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as z:
        z.writestr("X.npy", bomb)
        z.writestr("__graphrerank_meta__.npy", bomb)
    calls = [
        lambda: read_npy_file(tmp_path / "bomb.npy"),
        lambda: load_features(tmp_path / "bomb.npy"),
        lambda: load_features(tmp_path / "bomb.npz", key="X"),
        lambda: load_arrays(tmp_path / "bomb.npz", format="x", version=1),
        lambda: KNNIndex.load(tmp_path / "bomb.npz"),
        lambda: Reranker.load(tmp_path / "bomb.npz"),
    ]
    for f in calls:
        with pytest.raises(CorruptFileError, match="bomb.np") as err:
            f()
        assert "800000000000 bytes" in str(err.value)


def _billion_laughs() -> bytes:
    """A protocol-2 pickle of 30 levels of lists, each holding the previous level 10 times
    (a few hundred bytes; 10**30 objects when walked), under the ground-truth keys."""
    ops = [b"\x80\x02", b"]", b"q\x00", b"K\x01", b"a"]
    for lvl in range(1, 30):
        ops += [b"]", b"("] + [b"h" + bytes([lvl - 1])] * 10 + [b"e", b"q" + bytes([lvl])]
    keys = b"".join(
        b"X" + struct.pack("<I", len(k)) + k + b"h\x1d" for k in (b"imlist", b"qimlist", b"gnd")
    )
    return b"".join(ops) + b"}(" + keys + b"u."


def test_billion_laughs_ground_truth_is_refused_at_once(tmp_path):
    """The "billion laughs" ground-truth pickle was a MemoryError after more than 60 s; it is
    refused (UnsafePickleError, a ValueError naming the file) before anything walks it."""
    path = tmp_path / "gnd_laughs.pkl"
    data = _billion_laughs()
    path.write_bytes(data)
    assert len(data) < 1000
    t = time.perf_counter()
    with pytest.raises(UnsafePickleError, match="billion laughs") as err:
        load_revisitop_gnd(path)
    assert time.perf_counter() - t < 5
    assert "gnd_laughs.pkl" in str(err.value)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x80\x02]r\xff\xff\xff\x7f.", "memo index"),  # LONG_BINPUT 2**31 - 1
        (b"\x80\x02]q\x00h\x00a.", "cycle"),  # a list holding itself
        (b"\x80\x02" + b"]" * 200 + b"a" * 199 + b".", "deeper"),
    ],
    ids=["memo", "cycle", "deep"],
)
def test_crafted_pickles_are_refused(tmp_path, data, match):
    path = tmp_path / "gnd_crafted.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError, match=match) as err:
        load_revisitop_gnd(path)
    assert "gnd_crafted.pkl" in str(err.value)


def test_the_real_ground_truth_passes_the_limits():
    root = os.environ.get("GRAPHRERANK_DATA")
    path = Path(root or "/nonexistent") / "revisitop" / "gnd_rparis6k.pkl"
    if not path.is_file():
        pytest.skip("no revisitop data")
    gt = load_revisitop_gnd(path)
    assert gt.num_queries == 70 and gt.num_database == 6322


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '''<f8', 'fortran_order': False, 'shape': (3,), }",  # tokenizer error
        "{'descr': '<f8', 'fortran_order': False, 'shape': " + "(" * 3000 + "}",
        "\x00\x01garbage\xff not a dict at all",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (-3,), }",
        "{'descr': 'O', 'fortran_order': False, 'shape': (1,), }",
        "{'descr': '<f8', 'fortran_order': 'yes', 'shape': (1,), }",
    ],
    ids=["token", "nesting", "garbage", "negative", "object", "fortran"],
)
def test_damaged_npy_headers_are_corrupt_file_errors(tmp_path, header):
    """A random header was a TokenError from numpy's header parser."""
    path = tmp_path / "bad.npy"
    path.write_bytes(_npy_bytes(header, b"\0" * 64))
    with pytest.raises(CorruptFileError, match="bad.npy"):
        read_npy_file(path)
    with pytest.raises(ValueError, match="bad.npy"):
        load_features(path)


def test_oversized_header_is_refused_unparsed(tmp_path):
    path = tmp_path / "long.npy"
    path.write_bytes(_npy_bytes("{" + " " * 70_000 + "}", version=2))
    with pytest.raises(CorruptFileError, match="at most 10000"):
        read_npy_file(path)


def _flip_central_flags(data: bytes, bits: int) -> bytes:
    b = bytearray(data)
    i = b.rfind(b"PK\x01\x02")
    b[i + 8] |= bits
    return bytes(b)


@pytest.mark.parametrize("bits", [0x01, 0x20, 0x40], ids=["encrypted", "patched", "strong"])
def test_zip_flag_damage_is_a_corrupt_file_error(tmp_path, bits):
    """Zip flag damage was a NotImplementedError from zipfile."""
    good = save_arrays(tmp_path / "good.npz", {"a": np.arange(5.0)}, {"format": "t", "version": 1})
    bad = tmp_path / "flags.npz"
    bad.write_bytes(_flip_central_flags(good.read_bytes(), bits))
    with pytest.raises(CorruptFileError, match="flags.npz"):
        load_arrays(bad, format="t", version=1)
    with pytest.raises(ValueError, match="flags.npz"):
        load_features(bad, key="a")


def test_unknown_compression_and_inflated_sizes_are_refused(tmp_path):
    good = save_arrays(tmp_path / "g.npz", {"a": np.arange(5.0)}, {"format": "t", "version": 1})
    data = bytearray(good.read_bytes())
    i = data.rfind(b"PK\x01\x02")
    method = bytearray(data)
    method[i + 10 : i + 12] = struct.pack("<H", 14)
    (tmp_path / "m.npz").write_bytes(method)
    with pytest.raises(CorruptFileError, match="compression method 14"):
        read_npz_file(tmp_path / "m.npz")
    # a stored member claiming a larger uncompressed size than it stores
    size = bytearray(data)
    size[i + 24 : i + 28] = struct.pack("<I", 2**31)
    (tmp_path / "s.npz").write_bytes(size)
    with pytest.raises(CorruptFileError, match="s.npz"):
        read_npz_file(tmp_path / "s.npz")


def test_compressed_archives_still_read(tmp_path):
    a = np.arange(12.0).reshape(3, 4)
    np.savez_compressed(tmp_path / "c.npz", X=a, Y=np.asfortranarray(a))
    out = read_npz_file(tmp_path / "c.npz")
    assert np.array_equal(out["X"], a) and np.array_equal(out["Y"], a)
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    assert np.array_equal(read_npy_file(tmp_path / "f.npy"), a)
    assert torch.equal(load_features(tmp_path / "c.npz", key="X"), torch.from_numpy(a).float())


# ----------------------------------------------------------------------------- item 9
_SLOW_SAVE = """
import importlib.util, sys, time
import numpy as np
spec = importlib.util.spec_from_file_location("saving", sys.argv[2])  # no torch import
_io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(_io)
path = sys.argv[1]
def slow(f):
    np.savez(f, a=np.ones(1000))
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
_io.atomic_write(path, slow)
"""


def _temporaries(folder: Path, name: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f".{name}."))


def test_a_killed_save_is_cleaned_up_by_the_next_save(tmp_path):
    """A save killed while writing leaves its temporary file (70 of 160 kills did); the next
    save to the same path removes it. The old file survives the kill and always loads."""
    target = tmp_path / "index.npz"
    meta = {"format": "t", "version": 1}
    save_arrays(target, {"a": np.zeros(3)}, meta)
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, str(target), _io.__file__],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    try:
        assert child.stdout.readline().strip() == "writing"
        left = _temporaries(tmp_path, target.name)
        assert len(left) == 1 and f".{child.pid}-" in left[0].name
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert _temporaries(tmp_path, target.name) == left  # left behind by the kill
    arrays, _ = load_arrays(target, format="t", version=1)  # the old file is intact
    assert np.array_equal(arrays["a"], np.zeros(3))
    save_arrays(target, {"a": np.ones(2)}, meta)
    assert _temporaries(tmp_path, target.name) == []
    assert np.array_equal(load_arrays(target, format="t", version=1)[0]["a"], np.ones(2))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_only_stale_temporaries_of_the_same_target_are_removed(tmp_path):
    target = tmp_path / "r.npz"
    dead = tmp_path / f".r.npz.{_dead_pid()}-{'a' * 16}.tmp"
    live = tmp_path / f".r.npz.{os.getpid()}-{'b' * 16}.tmp"  # a save in progress
    old_style_recent = tmp_path / ".r.npz.abc_1234.tmp"  # an earlier version's, just made
    old_style_stale = tmp_path / ".r.npz.zz9_0000.tmp"
    other_target = tmp_path / f".s.npz.{_dead_pid()}-{'c' * 16}.tmp"
    not_ours = tmp_path / ".r.npz.backup.tmp"
    for p in (dead, live, old_style_recent, old_style_stale, other_target, not_ours):
        p.write_bytes(b"partial")
    past = time.time() - _io.STALE_AFTER_S - 60
    os.utime(old_style_stale, (past, past))
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert not dead.exists() and not old_style_stale.exists()
    assert live.exists() and old_style_recent.exists()
    assert other_target.exists() and not_ours.exists()
    # a live process's temporary goes once it is older than the limit
    os.utime(live, (past, past))
    atomic_write(target, lambda f: f.write(b"newer"))
    assert not live.exists()


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old" and _temporaries(tmp_path, "x.bin") == []


# ----------------------------------------------------------------------------- item 10
_NOT_PATHS = [None, 3, 2.5, b"/tmp/x.npz", ["a"]]


def _fitted_knn():
    return KNN(backend="torch").fit(torch.eye(3))


def _path_calls():
    gt = {"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [0], "hard": [], "junk": []}]}
    index = KNNIndex(backend="torch").add(torch.eye(3))
    return {
        "save_arrays": lambda p: save_arrays(p, {}, {}),
        "load_arrays": lambda p: load_arrays(p, format="t", version=1),
        "read_format": read_format,
        "atomic_write": lambda p: atomic_write(p, lambda f: None),
        "read_npy_file": read_npy_file,
        "read_npz_file": read_npz_file,
        "KNNIndex.save": index.save,
        "KNNIndex.load": KNNIndex.load,
        "Reranker.save": lambda p: _fitted_knn().save(p),
        "Reranker.load": Reranker.load,
        "KNN.load": KNN.load,
        "load_features": load_features,
        "load_revisitop_gnd": load_revisitop_gnd,
        "save_revisitop_gnd": lambda p: save_revisitop_gnd(gt, p),
        "write_revisitop_pickle": lambda p: write_revisitop_pickle(gt, p),
        "load_reid_result": load_reid_result,
        "load_corel1k": load_corel1k,
        "load_corel1k_local": load_corel1k_local,
    }


@pytest.mark.parametrize("call", sorted(_path_calls()))
@pytest.mark.parametrize("value", _NOT_PATHS, ids=lambda v: type(v).__name__)
def test_paths_that_are_not_paths_are_type_errors_naming_the_argument(call, value):
    """``None`` / int / bytes paths reached pathlib's own errors."""
    if value is None and call in ("load_corel1k", "load_corel1k_local"):
        pytest.skip("None means the default file here")
    with pytest.raises(TypeError, match=r"^path must be a"):
        _path_calls()[call](value)


def test_dataset_roots_and_names_that_are_not_paths():
    from graphrerank.datasets import Market1501, ROxford5k

    for value in _NOT_PATHS:
        with pytest.raises(TypeError, match="^root must be"):
            ROxford5k(value)
        with pytest.raises(TypeError, match="^root must be"):
            Market1501(value)
        with pytest.raises(TypeError, match="^name must be"):
            parse_reid_filename(value)


def test_check_path():
    assert check_path("a") == Path("a")
    with pytest.raises(ValueError, match="empty"):
        check_path("")
    with pytest.raises(ValueError, match="NUL"):
        check_path("a\x00b")
    with pytest.raises(TypeError, match="^where must be"):
        check_path(None, "where")


# ----------------------------------------------------------------------------- property suite
arrays_st = st.dictionaries(
    st.text("abcdefgh_", min_size=1, max_size=6),
    st.tuples(
        st.sampled_from(["<f4", "<f8", "<i8", "|u1", "|b1", "<f2", ">i4", "<c8"]),
        st.lists(st.integers(0, 4), min_size=0, max_size=3),
        st.booleans(),
    ),
    max_size=3,
)


def _make(spec, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for key, (dtype, shape, fortran) in spec.items():
        a = np.asarray((rng.standard_normal(shape) * 100).astype(np.dtype(dtype)))
        out[key] = np.asfortranarray(a) if fortran else a
    return out


damage_st = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("splice"), st.floats(0, 1), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("random"), st.binary(max_size=300)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=20)),
)


def _damage(data: bytes, how) -> bytes:
    kind = how[0]
    if kind == "truncate":
        return data[: int(how[1] * len(data))]
    if kind == "flip":
        i = int(how[1] * len(data))
        b = bytearray(data)
        b[i] ^= how[2]
        return bytes(b)
    if kind == "splice":
        i = int(how[1] * len(data))
        return data[:i] + how[2] + data[i + len(how[2]) :]
    if kind == "random":
        return how[1]
    return data + how[1]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
        for k in a
    )


@_FILE_SETTINGS
@given(spec=arrays_st, how=damage_st)
def test_damaged_graphrerank_files_load_equal_or_raise_corrupt(tmp_path, spec, how):
    arrays = _make(spec)
    meta = {"format": "t", "version": 1, "note": "x"}
    path = save_arrays(tmp_path / "f.npz", arrays, meta)
    original = path.read_bytes()
    damaged = _damage(original, how)
    path.write_bytes(damaged)
    out, err = _attempt(lambda: load_arrays(path, format="t", version=1), CorruptFileError)
    if err is not None:
        assert "f.npz" in str(err)
        assert damaged != original
        return
    back, got = out
    assert _same(back, arrays) and got["note"] == "x"
    if how[0] == "truncate":
        raise AssertionError("a truncated file loaded")
    assert read_format(path) == "t"


@_FILE_SETTINGS
@given(spec=arrays_st.filter(lambda s: len(s) == 1), how=damage_st)
def test_damaged_npy_and_npz_read_or_raise_corrupt(tmp_path, spec, how):
    (a,) = _make(spec).values()
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "a.npz", a=a)
    for name, read in (("a.npy", read_npy_file), ("a.npz", read_npz_file)):
        path = tmp_path / name
        original = path.read_bytes()
        path.write_bytes(_damage(original, how))
        out, err = _attempt(lambda: read(path), CorruptFileError)  # noqa: B023
        if err is not None:
            assert name in str(err)
            continue
        if how[0] == "truncate" and name == "a.npy" and a.nbytes:
            raise AssertionError("a truncated .npy read")
        got = out if name == "a.npy" else out.get("a", a)
        assert isinstance(got, np.ndarray)
        assert got.nbytes <= len(original)  # never more than the file could hold


header_st = st.fixed_dictionaries(
    {
        "descr": st.one_of(
            st.sampled_from(["<f8", "<f4", "|u1", "O", "<U3", "V8", "<m8[s]", "<f8x", "|S0"]),
            st.text(max_size=8),
        ),
        "fortran_order": st.one_of(st.booleans(), st.integers(-1, 2), st.text(max_size=3)),
        "shape": st.one_of(
            st.lists(st.integers(-2, 10**15), max_size=4).map(tuple),
            st.lists(st.integers(0, 3), max_size=3).map(tuple),
            st.text(max_size=6),
        ),
    }
)


@_FILE_SETTINGS
@given(
    header=st.one_of(header_st.map(repr), st.text(max_size=120)).filter(
        lambda h: all(ord(c) < 256 for c in h)
    ),
    data=st.binary(max_size=64),
)
def test_crafted_npy_headers_read_within_the_file_or_raise(tmp_path, header, data):
    path = tmp_path / "c.npy"
    path.write_bytes(_npy_bytes(header, data))
    out, err = _attempt(lambda: read_npy_file(path), CorruptFileError)
    if err is not None:
        assert "c.npy" in str(err)
        return
    assert out.nbytes <= len(data)


@_FILE_SETTINGS
@given(how=damage_st)
def test_damaged_index_and_reranker_files_load_equal_or_raise_corrupt(tmp_path, how):
    x = torch.nn.functional.normalize(torch.arange(24.0).reshape(6, 4) + 1, dim=1)
    index = KNNIndex(backend="torch").add(x)
    est = KNN(backend="torch").fit(x)
    for name, obj, load in (
        ("i.npz", index, KNNIndex.load),
        ("r.npz", est, Reranker.load),
    ):
        path = obj.save(tmp_path / name)
        path.write_bytes(_damage(path.read_bytes(), how))
        back, err = _attempt(lambda: load(path), CorruptFileError)  # noqa: B023
        if err is not None:
            assert name in str(err)
            continue
        if isinstance(back, KNNIndex):
            assert torch.equal(back.search(x, 3).indices, index.search(x, 3).indices)
        else:
            assert torch.equal(back.rerank(None, 3).indices, est.rerank(None, 3).indices)


_GT = {
    "imlist": ["a", "b", "c", "d"],
    "qimlist": ["q", "r"],
    "gnd": [
        {"easy": [0], "hard": [2], "junk": [], "bbx": [1.0, 2.0, 3.0, 4.0]},
        {"easy": [1, 3], "hard": [], "junk": [0]},
    ],
}


@_FILE_SETTINGS
@given(how=damage_st, protocol=st.sampled_from([0, 2, 4, 5]))
def test_damaged_ground_truth_files_load_equal_or_raise(tmp_path, how, protocol):
    good = load_revisitop_gnd(write_revisitop_pickle(_GT, tmp_path / "gnd_t.pkl"))
    for name in ("gnd_p.pkl", "gnd_n.npz"):
        path = tmp_path / name
        if name.endswith(".pkl"):
            path.write_bytes(pickle.dumps(_GT, protocol=protocol))
        else:
            save_revisitop_gnd(good, path)
        path.write_bytes(_damage(path.read_bytes(), how))
        t = time.perf_counter()
        # UnsafePickleError, CorruptFileError or the reader's own ValueError
        back, err = _attempt(lambda: load_revisitop_gnd(path), ValueError)  # noqa: B023
        if err is not None:
            assert name in str(err)
        else:
            if name.endswith(".npz"):
                assert back == good
            else:
                assert back.num_queries <= 10**6  # whatever a damaged pickle still says
        assert time.perf_counter() - t < 5


@_FILE_SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes_never_escape_the_readers(tmp_path, data):
    for name in ("r.npy", "r.npz", "gnd_r.pkl", "r.mat"):
        path = tmp_path / name
        path.write_bytes(data)
        for read in (load_features, load_revisitop_gnd, load_reid_result):
            _, err = _attempt(lambda: read(path), ValueError)  # noqa: B023
            assert err is None or name in str(err)
    (tmp_path / "z.npz").write_bytes(b"PK\x03\x04" + data)
    with pytest.raises(CorruptFileError):
        load_arrays(tmp_path / "z.npz", format="t", version=1)


def test_pickled_numpy_in_ground_truth_still_reads(tmp_path):
    gt = dict(_GT, gnd=[{k: np.asarray(v) for k, v in g.items()} for g in _GT["gnd"]])
    for protocol in (2, 4, 5):
        path = tmp_path / f"gnd_np{protocol}.pkl"
        path.write_bytes(pickle.dumps(gt, protocol=protocol))
        back = load_revisitop_gnd(path)
        assert back.gnd[1]["easy"].tolist() == [1, 3]


def test_bytes_io_is_not_a_path():
    with pytest.raises(TypeError, match="^path must be"):
        load_features(io.BytesIO(b""))
