"""Regressions of the fuzz findings of the ``datasets`` layer and the file readers
(``benchmarks/fuzz_public_api.py``): every error names the argument that is wrong, and valid
inputs still work.

* damaged files: ``CorruptFileError`` / ``ValueError`` naming ``path='...'`` (the loaders'
  argument) in every reader, and ``key='...'`` for a missing ``.npz`` member;
* a flipped byte in a zip local header (which ``zipfile`` ignores) is detected;
* ``meta`` and sparse tensors in the ground-truth builders: a ``ValueError`` / ``TypeError``
  naming the argument; lengths checked where they must agree;
* NaN / inf descriptors in :class:`RetrievalDataset`;
* :func:`make_retrieval_dataset` sizes beyond the machine's memory and ``noise=inf``.
"""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from graphrerank._io import CorruptFileError, load_arrays, read_npz_file, save_arrays
from graphrerank.datasets import (
    RetrievalDataset,
    gnd_from_labels,
    gnd_from_status,
    load_corel1k,
    load_corel1k_local,
    load_features,
    load_reid_result,
    load_revisitop_gnd,
    make_retrieval_dataset,
    save_revisitop_gnd,
    subset_gnd,
    synthetic,
    write_revisitop_pickle,
)

N, Q, D = 12, 3, 8


def _names(err: BaseException, arg: str) -> bool:
    """Whether the message names ``arg`` as a whole word (as the fuzz harness checks)."""
    return re.search(rf"(?<![a-z0-9_]){re.escape(arg)}(?![a-z0-9_])", str(err).lower()) is not None


def _error_of(f):
    """The ``ValueError`` that ``f()`` raises, or ``None`` when it returns."""
    try:
        f()
    except ValueError as err:
        return err
    return None


# ----------------------------------------------------------------------------- files
def _gt():
    labels = np.arange(N) % 3
    return gnd_from_labels(labels, labels[:Q])


def _good_file(kind: str, folder: Path) -> Path:
    """A small valid file of each reader, written by the tools its users have."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    if kind == "features_npy":
        np.save(folder / "f.npy", x)
        return folder / "f.npy"
    if kind == "features_npz":
        np.savez(folder / "f.npz", x=x)
        return folder / "f.npz"
    if kind == "gnd_npz":
        return save_revisitop_gnd(_gt(), folder / "gnd.npz")
    if kind == "gnd_pkl":
        return write_revisitop_pickle(_gt(), folder / "gnd_toy.pkl")
    if kind == "reid_mat":
        ids = np.arange(N) % 4
        savemat(
            folder / "r.mat",
            {
                "query_f": x[:Q],
                "query_label": ids[None, :Q],
                "query_cam": np.ones((1, Q)),
                "gallery_f": x,
                "gallery_label": ids[None],
                "gallery_cam": 2 * np.ones((1, N)),
            },
        )
        return folder / "r.mat"
    if kind == "corel":
        np.savez(
            folder / "c.npz",
            desc_lite2_max512_gem3=x.astype(np.float16),
            labels=np.arange(N) % 2,
            class_names=np.array(["a", "b"]),
        )
        return folder / "c.npz"
    if kind == "corel_local":
        np.savez(
            folder / "cl.npz",
            local128=np.ones((N, 4, D), np.float16),
            local_pos=np.zeros((N, 4, 2), np.int16),
            labels=np.arange(N) % 2,
            class_names=np.array(["a", "b"]),
        )
        return folder / "cl.npz"
    raise AssertionError(kind)


_LOADERS = {
    "features_npy": load_features,
    "features_npz": load_features,
    "gnd_npz": load_revisitop_gnd,
    "gnd_pkl": load_revisitop_gnd,
    "reid_mat": load_reid_result,
    "corel": load_corel1k,
    "corel_local": load_corel1k_local,
}


def _flip(b: bytes) -> bytes:  # as the fuzz harness damages a file
    b = bytearray(b)
    b[len(b) // 3] ^= 0xFF
    b[len(b) // 2] ^= 0x55
    return bytes(b)


def _bomb(_: bytes) -> bytes:
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 100000), }"
    header += b" " * (118 - len(header)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


_DAMAGE = {
    "empty_file": lambda b: b"",
    "random_bytes": lambda b: np.random.default_rng(0).bytes(4096),
    "truncated": lambda b: b[: max(1, len(b) // 2)],
    "npy_header_bomb": _bomb,
    "text": lambda b: b"hello world\n" * 50,
    "flipped_byte": _flip,
}


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
@pytest.mark.parametrize("kind", sorted(_LOADERS))
def test_damaged_files_raise_an_error_naming_path(tmp_path, kind, damage):
    """The fuzz found 60 'unclear' errors: the message named the file but not ``path``."""
    good = _good_file(kind, tmp_path)
    load = _LOADERS[kind]
    load(good)  # the valid file reads
    bad = tmp_path / f"bad{good.suffix}"
    bad.write_bytes(_DAMAGE[damage](good.read_bytes()))
    if damage == "flipped_byte" and kind in ("features_npy", "reid_mat"):
        # a plain .npy data section and an uncompressed .mat file have no checksum: a flip
        # inside the data is read as it is (a NaN or inf it makes is still refused)
        err = _error_of(lambda: load(bad))
        assert err is None or _names(err, "path"), err
        return
    with pytest.raises(ValueError) as err:
        load(bad)
    assert _names(err.value, "path"), err.value
    assert f"path={str(bad)!r}" in str(err.value)
    if kind not in ("gnd_pkl", "reid_mat"):  # the numpy readers: the documented subclass
        assert isinstance(err.value, CorruptFileError)


def test_graphrerank_files_name_the_argument(tmp_path):
    """``load_arrays`` (and so ``KNNIndex.load`` / ``Reranker.load``) name the argument,
    ``path`` by default or the caller's ``name``."""
    good = save_arrays(tmp_path / "a.npz", {"a": np.arange(3.0)}, {"format": "t", "version": 1})
    for bad, match in (
        (tmp_path, "is a folder"),
        (tmp_path / "empty.npz", "is not a .npz archive"),
        (tmp_path / "one.npz", "single numpy array"),
    ):
        if bad.suffix:
            bad.write_bytes(b"" if "empty" in bad.name else _bomb(b""))
        with pytest.raises(CorruptFileError, match=match) as err:
            load_arrays(bad, format="t", version=1)
        assert str(err.value).startswith(f"path={str(bad)!r}")
        with pytest.raises(CorruptFileError) as err:
            load_arrays(bad, format="t", version=1, name="index_file")
        assert str(err.value).startswith(f"index_file={str(bad)!r}")
    with pytest.raises(CorruptFileError, match=r"^path='.*' holds a 't', not a 'u'"):
        load_arrays(good, format="u", version=1)
    assert load_arrays(good, format="t", version=1)[0]["a"].tolist() == [0.0, 1.0, 2.0]


def test_missing_npz_key_names_key(tmp_path):
    path = _good_file("features_npz", tmp_path)
    for key in ("bogus", ""):
        with pytest.raises(ValueError) as err:
            load_features(path, key=key)
        assert str(err.value).startswith(f"key={key!r}: path={str(path)!r}")
        assert "holds ['x']" in str(err.value)
    with pytest.raises(TypeError, match=r"^key must be the name of an array \(str\) or None"):
        load_features(path, key=3)
    assert load_features(path, key="x").shape == (N, D)
    corel = _good_file("corel", tmp_path)
    with pytest.raises(ValueError, match=r"^descriptor='desc_x': path=.* has no such array"):
        load_corel1k(corel, descriptor="desc_x")


def _local_header(data: bytes, member: int = 0) -> int:
    """Offset of the local header of the ``member``-th zip member."""
    at = -1
    for _ in range(member + 1):
        at = data.index(b"PK\x03\x04", at + 1)
    return at


@pytest.mark.parametrize(
    ("field", "offset", "fmt", "value"),
    [
        ("flags", 6, "<H", 0x55),
        ("compression method", 8, "<H", 0xFF08),
        ("CRC-32", 14, "<I", 0x12345678),
    ],
)
def test_damaged_local_zip_headers_are_detected(tmp_path, field, offset, fmt, value):
    """A flipped byte in a member's local header (the fuzz's ``flipped_byte`` of a saved
    ground truth) was ignored by ``zipfile`` and the file loaded: it is now a
    CorruptFileError naming the member and the field."""
    good = save_revisitop_gnd(_gt(), tmp_path / "gnd.npz")
    data = bytearray(good.read_bytes())
    at = _local_header(data, 2) + offset
    size = struct.calcsize(fmt)
    old = struct.unpack(fmt, data[at : at + size])[0]
    data[at : at + size] = struct.pack(fmt, old ^ value)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=f"disagrees with the zip directory on {field}"):
        load_revisitop_gnd(bad)
    with pytest.raises(CorruptFileError, match=r"^path='.*bad.npz' \(member "):
        read_npz_file(bad)


def test_foreign_zip_writers_still_read(tmp_path):
    """Valid archives keep reading: numpy (stored, deflated, non-ASCII member names) and a
    streamed zip whose members use data descriptors (CRC and sizes after the data)."""
    x = np.arange(12.0).reshape(3, 4)
    np.savez(tmp_path / "a.npz", x=x, **{"ä": np.ones(2)})
    np.savez_compressed(tmp_path / "b.npz", x=x)

    class Unseekable:
        def __init__(self):
            self.parts = []

        def write(self, b):
            self.parts.append(bytes(b))
            return len(b)

        def flush(self):
            pass

    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        out = Unseekable()
        with zipfile.ZipFile(out, "w", compression=method) as zf:
            with zf.open("x.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, x)
        (tmp_path / f"s{method}.npz").write_bytes(b"".join(out.parts))
        with zipfile.ZipFile(tmp_path / f"s{method}.npz") as zf:
            assert zf.infolist()[0].flag_bits & 0x08  # a data descriptor
    for name in ("a.npz", "b.npz", "s0.npz", "s8.npz"):
        assert np.array_equal(read_npz_file(tmp_path / name)["x"], x)


def test_default_corel_path_is_the_data_folder(tmp_path, monkeypatch):
    """``path=None`` is documented: the file in the ``GRAPHRERANK_DATA`` folder (the fuzz
    harness counted it as a silently accepted bad input)."""
    (tmp_path / "corel1k").mkdir()
    (tmp_path / "corel1k_local").mkdir()
    _good_file("corel", tmp_path).rename(tmp_path / "corel1k" / "corel1k_effnetlite_desc.npz")
    _good_file("corel_local", tmp_path).rename(tmp_path / "corel1k_local" / "corel1k_local.npz")
    monkeypatch.setenv("GRAPHRERANK_DATA", str(tmp_path))
    assert load_corel1k(None).num_items == N
    assert load_corel1k_local(None).local.shape == (N, 4, D)
    monkeypatch.setenv("GRAPHRERANK_DATA", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="GRAPHRERANK_DATA"):
        load_corel1k(None)
    with pytest.raises(FileNotFoundError, match="GRAPHRERANK_DATA"):
        load_corel1k_local()


# ----------------------------------------------------------------------------- ground truth
def _labels():
    return torch.arange(N) % 3


_BUILDERS = {
    "database_labels": lambda v: gnd_from_labels(v, _labels()[:Q]),
    "query_labels": lambda v: gnd_from_labels(_labels(), v),
    "status": lambda v: gnd_from_status(v),
    "database": lambda v: subset_gnd(_gt(), v),
    "queries": lambda v: subset_gnd(_gt(), torch.arange(N), queries=v),
}
_VALID = {
    "database_labels": _labels(),
    "query_labels": _labels()[:Q],
    "status": torch.eye(Q, N, dtype=torch.int64),
    "database": torch.arange(0, N, 2),
    "queries": torch.arange(2),
}


@pytest.mark.parametrize("arg", sorted(_BUILDERS))
def test_meta_and_sparse_tensors_are_refused_naming_the_argument(arg):
    """A meta tensor was an internal NotImplementedError, a sparse one a numpy TypeError."""
    call, valid = _BUILDERS[arg], _VALID[arg]
    call(valid)  # valid
    with pytest.raises(ValueError, match=rf"^{arg} is on the meta device") as err:
        call(valid.to("meta"))
    with pytest.raises(TypeError, match=rf"^{arg} must be a dense tensor") as err:
        call(valid.to_sparse())
    assert _names(err.value, arg)


def test_lengths_that_must_agree_are_checked():
    """Database and query labels are independent (any lengths; the fuzz counted them as
    silently accepted); the names, masks and selections are checked against what they
    index, and the message names both sides."""
    db = np.arange(N) % 3
    assert gnd_from_labels(db, db[: Q + 1]).num_queries == Q + 1
    assert gnd_from_labels(db[:-1], db[:Q]).num_database == N - 1
    with pytest.raises(ValueError, match=r"imlist has 3 names .* \(the entries of database_lab"):
        gnd_from_labels(db, db[:Q], imlist=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"qimlist has 2 names .* \(the entries of query_labels"):
        gnd_from_labels(db, db[:Q], qimlist=["a", "b"])
    with pytest.raises(ValueError, match=r"^junk must be an \(N,\)"):
        gnd_from_labels(db, db[:Q], junk=np.ones(N - 1, bool))
    status = np.eye(Q, N, dtype=int)
    assert gnd_from_status(np.vstack([status, status[:1]])).num_queries == Q + 1
    with pytest.raises(ValueError, match=r"qimlist has 3 names .* \(the rows of status\)"):
        gnd_from_status(np.vstack([status, status[:1]]), qimlist=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"imlist has 11 names .* \(the columns of status\)"):
        gnd_from_status(status, imlist=[str(i) for i in range(N - 1)])
    with pytest.raises(ValueError, match=r"^status\[1\] has"):
        gnd_from_status([status[0], status[1, 1:], status[2]])
    gt = _gt()
    assert subset_gnd(gt, torch.arange(1, N, 2)).num_database == N // 2  # any subset
    with pytest.raises(ValueError, match=r"^database\[0\] = 12 is outside the 12 database images"):
        subset_gnd(gt, [N])
    with pytest.raises(
        ValueError, match=r"^a boolean database mask needs one entry per database image"
    ):
        subset_gnd(gt, np.ones(N - 1, bool))
    with pytest.raises(ValueError, match=r"^a boolean queries mask needs one entry per query"):
        subset_gnd(gt, np.arange(N), queries=np.ones(Q + 1, bool))
    with pytest.raises(ValueError, match=r"^queries\[0\] = 3 is outside the 3 queries"):
        subset_gnd(gt, np.arange(N), queries=[Q])


# ----------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("arg", ["database", "queries"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_retrieval_dataset_refuses_non_finite_descriptors(arg, bad):
    x = {"database": torch.randn(N, D), "queries": torch.randn(Q, D)}
    RetrievalDataset(x["database"], queries=x["queries"])  # valid
    x[arg][1, 2] = bad
    with pytest.raises(ValueError, match=rf"^{arg} contains NaN or infinite values in 1 row"):
        RetrievalDataset(x["database"], queries=x["queries"])


@pytest.mark.parametrize("arg", ["database", "queries"])
def test_retrieval_dataset_refuses_meta_and_sparse(arg):
    x = {"database": torch.randn(N, D), "queries": torch.randn(Q, D)}
    with pytest.raises(ValueError, match=rf"^{arg} is on the meta device"):
        RetrievalDataset(**{**x, arg: x[arg].to("meta")})
    with pytest.raises(TypeError, match=rf"^{arg} must be a dense tensor"):
        RetrievalDataset(**{**x, arg: x[arg].to_sparse()})


@pytest.mark.parametrize("arg", ["num_items", "dim", "num_queries"])
def test_huge_synthetic_datasets_are_refused_before_allocating(arg):
    """``10**12`` items / dims / queries were an allocator RuntimeError; now a ValueError
    naming the argument and the bytes needed, raised before anything is allocated (an
    allocation would have raised the RuntimeError)."""
    kw = {"num_items": 40, "dim": 8, "num_classes": 4, "num_queries": 5}
    kw[arg] = 10**12
    with pytest.raises(ValueError, match=rf"{arg}={10**12}.* would need about [\d,]+ bytes"):
        make_retrieval_dataset(**kw)


def test_synthetic_memory_bound_is_the_physical_memory(monkeypatch):
    need = synthetic._bytes_needed(1000, 16, 10, 0, 4, 2**22 // 16)
    assert need >= 1000 * 16 * 4
    monkeypatch.setattr(synthetic, "_physical_memory", lambda: need - 1)
    with pytest.raises(ValueError, match="physical memory"):
        make_retrieval_dataset(1000, 16, 10)
    monkeypatch.setattr(synthetic, "_physical_memory", lambda: need)
    assert make_retrieval_dataset(1000, 16, 10).num_items == 1000
    monkeypatch.setattr(synthetic, "_physical_memory", lambda: None)  # unknown: no bound
    assert make_retrieval_dataset(10, 4, 2).num_items == 10


@pytest.mark.parametrize("noise", [float("inf"), float("nan"), 1e101, -1.0])
def test_synthetic_noise_must_be_finite_and_bounded(noise):
    with pytest.raises(ValueError, match="^noise must"):
        make_retrieval_dataset(40, 8, 4, noise=noise)


def test_synthetic_largest_noise_gives_unit_rows():
    ds = make_retrieval_dataset(40, 8, 4, noise=synthetic.MAX_NOISE, num_queries=3)
    for x in (ds.database, ds.queries):
        assert torch.isfinite(x).all()
        assert torch.allclose(x.norm(dim=1), torch.ones(len(x)), atol=1e-5)
