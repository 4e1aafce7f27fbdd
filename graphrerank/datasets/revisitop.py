"""Revisited Oxford and Paris: ground truth, descriptor files and the benchmark descriptions.

The revisitop project (Radenović et al., "Revisiting Oxford and Paris", CVPR 2018) publishes
the ground truth of each benchmark as a pickled dict, ``gnd_roxford5k.pkl`` and
``gnd_rparis6k.pkl``. Unpickling an untrusted file can run any code, so
:func:`load_revisitop_gnd` reads it with a restricted unpickler that builds only plain Python
containers and numpy arrays and refuses every other global before it is called.

Descriptors are the user's own (graphrerank never downloads anything): :func:`load_features`
reads ``.npy``, ``.npz`` and MATLAB ``.mat`` files.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .._checks import check_in
from ._files import (
    as_float_matrix,
    existing_file,
    read_mat,
    read_npy,
    read_npz,
    str_array,
)

__all__ = [
    "REVISITOP_URL",
    "ROxford5k",
    "RParis6k",
    "RevisitopBenchmark",
    "RevisitopGroundTruth",
    "RevisitopR1M",
    "UnsafePickleError",
    "load_features",
    "load_revisitop_gnd",
]

#: Home page of the revisitop project (given as text; graphrerank downloads nothing).
REVISITOP_URL = "http://cmp.felk.cvut.cz/revisitop/"

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- restricted pickle
class UnsafePickleError(ValueError):
    """A pickle asked for a global that the restricted unpickler does not allow."""


def _latin1_encode(obj: str, encoding: str = "utf-8") -> bytes:
    # Pickle protocols 0-2 store the bytes of numpy arrays as ``_codecs.encode(text, "latin1")``.
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise UnsafePickleError(
            f"_codecs.encode is only allowed with the 'latin1' codec on text, got {encoding!r}"
        )
    return codecs.encode(obj, "latin1")


def _empty_bytes(*args: Any) -> bytes:
    # Pickle protocols 0-2 store an empty ``bytes`` (the buffer of an empty array) as ``bytes()``.
    if args:
        raise UnsafePickleError("builtins.bytes is only allowed without arguments")
    return b""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # The functions numpy's own pickles name, taken from numpy's reduce methods so that they
    # are found whatever the numpy version calls the module (numpy.core / numpy._core).
    a = np.zeros(1)
    reconstruct = a.__reduce__()[0]
    frombuffer = a.__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): _empty_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds builtin containers, numbers, strings and numpy arrays, and nothing else."""

    _allowed: ClassVar[dict[tuple[str, str], Any] | None] = None

    def find_class(self, module: str, name: str) -> Any:
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load the global {module}.{name}: a revisitop ground-truth file "
                "holds only lists, dicts, numbers, strings and numpy arrays, so this file is "
                "not one (it may be malicious); nothing in it was executed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a persistent id: not a plain data pickle")


def _restricted_loads(data: bytes) -> Any:
    # latin1 reads Python 2 pickles (their str and numpy buffers) byte for byte.
    return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


# --------------------------------------------------------------------------- ground truth
@dataclass(repr=False)
class RevisitopGroundTruth:
    """The ground truth of a revisitop benchmark.

    Attributes:
        imlist: ``(N,)`` numpy array of ``str``, the database image names.
        qimlist: ``(Q,)`` numpy array of ``str``, the query image names.
        gnd: one dict per query with numpy int64 arrays ``"easy"``, ``"hard"`` and ``"junk"``
            of 0-based indices into ``imlist`` (each of shape ``(n,)``), and ``"bbx"``, the
            ``(4,)`` float64 query box ``x1, y1, x2, y2``, or ``None``.
        name: the benchmark, e.g. ``"roxford5k"`` (from the file name ``gnd_roxford5k.pkl``).
    """

    imlist: np.ndarray
    qimlist: np.ndarray
    gnd: list[dict[str, np.ndarray | None]]
    name: str = "revisitop"

    @property
    def num_database(self) -> int:
        """Number of database images ``N`` (4993 for ROxford5k, 6322 for RParis6k)."""
        return len(self.imlist)

    @property
    def num_queries(self) -> int:
        """Number of queries ``Q`` (70 for both benchmarks)."""
        return len(self.qimlist)

    def __repr__(self) -> str:
        return (
            f"RevisitopGroundTruth(name={self.name!r}, num_database={self.num_database}, "
            f"num_queries={self.num_queries})"
        )


def _index_array(value: Any, n: int, where: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object:
        raise ValueError(f"{where} must be a list of integer indices, got Python objects")
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{where} must be a 1-D list of indices, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ValueError(f"{where} must hold integer indices, got non-integral values")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{where} must hold integer indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        raise ValueError(
            f"{where} holds index {int(arr[bad][0])}, outside the database of {n} images "
            "(indices are 0-based)"
        )
    return arr


def _bbx(value: Any, where: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind not in "fiu" or arr.size != 4:
        raise ValueError(f"{where} must be 4 numbers x1, y1, x2, y2, got {value!r}")
    arr = arr.astype(np.float64).reshape(4)
    if not np.isfinite(arr).all():
        raise ValueError(f"{where} must be finite, got {arr.tolist()}")
    return arr


def _ground_truth(data: Any, where: str, name: str) -> RevisitopGroundTruth:
    if not isinstance(data, dict):
        raise ValueError(f"{where} holds a {type(data).__name__}, not the revisitop dict")
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in data]
    if missing:
        raise ValueError(
            f"{where} lacks the key(s) {missing} of a revisitop ground truth "
            f"(found {sorted(map(str, data))})"
        )
    imlist = str_array(data["imlist"], f"{where}: imlist")
    qimlist = str_array(data["qimlist"], f"{where}: qimlist")
    entries = data["gnd"]
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"{where}: gnd must be a list of dicts, got {type(entries).__name__}")
    if len(entries) != len(qimlist):
        raise ValueError(
            f"{where}: gnd has {len(entries)} entries but qimlist names {len(qimlist)} queries"
        )
    n = len(imlist)
    gnd = []
    for i, entry in enumerate(entries):
        at = f"{where}: gnd[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{at} must be a dict, got {type(entry).__name__}")
        lacking = [k for k in ("easy", "hard", "junk") if k not in entry]
        if lacking:
            raise ValueError(f"{at} lacks the key(s) {lacking} (found {sorted(map(str, entry))})")
        item: dict[str, np.ndarray | None] = {
            k: _index_array(entry[k], n, f"{at}[{k!r}]") for k in ("easy", "hard", "junk")
        }
        item["bbx"] = _bbx(entry.get("bbx"), f"{at}['bbx']")
        gnd.append(item)
    return RevisitopGroundTruth(imlist=imlist, qimlist=qimlist, gnd=gnd, name=name)


def load_revisitop_gnd(path: PathLike) -> RevisitopGroundTruth:
    """Read a revisitop ground-truth pickle (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``).

    The file is read by a restricted unpickler: it builds dicts, lists, numbers, strings and
    numpy arrays, and refuses any global *before* calling it, so a crafted file cannot run
    code, except the few that numpy arrays need: numpy's own reconstruction functions
    (``numpy.core.multiarray._reconstruct``, ``scalar``, ``numpy.core.numeric._frombuffer``,
    under ``numpy.core`` or ``numpy._core``), ``numpy.ndarray``, ``numpy.dtype``, and for
    pickle protocols 0 to 2 ``_codecs.encode`` with the ``latin1`` codec and ``bytes()``. The structure is then checked: keys ``imlist``, ``qimlist`` and ``gnd``;
    one ``gnd`` entry per query with ``easy``, ``hard`` and ``junk`` 0-based indices below
    ``len(imlist)``, and an optional ``bbx``.

    Args:
        path: the ``.pkl`` file.

    Returns:
        The ground truth, with index lists as numpy int64 arrays.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the pickle names a global other than the allowed ones (a subclass
            of ValueError; the message names the refused global).
        ValueError: the file is truncated or not a pickle, or its content is not a revisitop
            ground truth (the message names the path and what is wrong).

    Example:
        >>> import pickle, tempfile, pathlib
        >>> from graphrerank.datasets import load_revisitop_gnd
        >>> data = {"imlist": ["a", "b", "c"], "qimlist": ["q"],
        ...         "gnd": [{"easy": [0], "hard": [2], "junk": [], "bbx": [1, 2, 30, 40]}]}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "gnd_toy.pkl"
        ...     _ = path.write_bytes(pickle.dumps(data))
        ...     gt = load_revisitop_gnd(path)
        >>> gt
        RevisitopGroundTruth(name='toy', num_database=3, num_queries=1)
        >>> gt.gnd[0]["easy"], gt.gnd[0]["junk"].dtype
        (array([0]), dtype('int64'))
    """
    path = existing_file(path, "revisitop ground-truth file")
    data = path.read_bytes()
    try:
        obj = _restricted_loads(data)
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{str(path)!r}: {err}") from None
    except Exception as err:  # any failure of a torn or foreign byte stream
        raise ValueError(
            f"{str(path)!r} could not be read as a revisitop ground-truth pickle (truncated "
            f"or corrupt?): {type(err).__name__}: {err}"
        ) from None
    name = path.stem.removeprefix("gnd_")
    return _ground_truth(obj, repr(str(path)), name)


# --------------------------------------------------------------------------- descriptor files
def _read_arrays(path: Path) -> tuple[dict[str, np.ndarray], str]:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return {"": read_npy(path)}, "npy"
    if suffix == ".npz":
        return read_npz(path), "npz"
    if suffix == ".mat":
        return read_mat(path), "mat"
    raise ValueError(
        f"{str(path)!r}: unsupported descriptor file type {path.suffix!r}; use .npy, .npz or .mat"
    )


def _pick(arrays: dict[str, Any], key: str | None, path: Path, kind: str) -> tuple[Any, str]:
    if kind == "npy":
        if key is not None:
            raise ValueError(f"key={key!r} was given, but {str(path)!r} is a single .npy array")
        return arrays[""], repr(str(path))
    if key is None:
        if len(arrays) != 1:
            raise ValueError(
                f"{str(path)!r} holds {len(arrays)} arrays {sorted(arrays)}; pass key= to "
                "choose one"
            )
        key = next(iter(arrays))
    elif key not in arrays:
        raise ValueError(f"{str(path)!r} has no array {key!r}; it holds {sorted(arrays)}")
    return arrays[key], f"{key!r} in {str(path)!r}"


def load_features(path: PathLike, *, key: str | None = None, layout: str | None = None) -> Tensor:
    """Read a descriptor matrix from a ``.npy``, ``.npz`` or MATLAB ``.mat`` file.

    Files are read without pickle (``allow_pickle=False``); ``.mat`` files with
    :func:`scipy.io.loadmat` (MATLAB v4 to v7; v7.3 files are HDF5 and are refused with an
    explanation).

    Args:
        path: the file; its suffix picks the reader.
        key: the array to read from a ``.npz`` archive or a ``.mat`` file; may be left out
            when the file holds exactly one.
        layout: ``"rows"``: the array is ``(N, D)``, one descriptor per row; ``"columns"``:
            it is ``(D, N)``, one descriptor per column (the revisitop / cirtorch ``.mat``
            convention) and is transposed on load. Default: ``"rows"`` for ``.npy`` / ``.npz``
            and ``"columns"`` for ``.mat``.

    Returns:
        ``(N, D)`` float32 tensor (numeric dtypes are cast; values are not normalised).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported suffix, unreadable or v7.3 file, a missing or ambiguous
            ``key``, or an array that is not 2-D, not real numeric, empty or not finite.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from graphrerank.datasets import load_features
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "db.npz"
        ...     np.savez(path, X=np.ones((4, 3)), Q=np.zeros((3, 2)))
        ...     x = load_features(path, key="Q", layout="columns")
        >>> x.shape, x.dtype
        (torch.Size([2, 3]), torch.float32)
    """
    path = existing_file(path, "descriptor file")
    if layout is not None:
        check_in(layout, "layout", ("rows", "columns"))
    arrays, kind = _read_arrays(path)
    arr, where = _pick(arrays, key, path, kind)
    if layout is None:
        layout = "columns" if kind == "mat" else "rows"
    return as_float_matrix(arr, where, transpose=layout == "columns")


def _as_features(x: Any, where: str) -> Tensor:
    if isinstance(x, (str, os.PathLike)):
        return load_features(x)
    if not isinstance(x, (Tensor, np.ndarray)):
        raise TypeError(
            f"{where} must be a file path, a torch.Tensor or a numpy array, got {type(x).__name__}"
        )
    return as_float_matrix(x, where)


# --------------------------------------------------------------------------- benchmarks
@dataclass(repr=False)
class RevisitopBenchmark:
    """Query and database descriptors of a revisitop benchmark with its ground truth.

    Attributes:
        queries: ``(Q, D)`` float32 query descriptors, in ``gnd.qimlist`` order.
        database: ``(N + M, D)`` float32: the ``N`` database images in ``gnd.imlist`` order,
            followed by ``M`` distractors (so the ground-truth indices stay valid).
        gnd: the ground truth.
        name: the benchmark, e.g. ``"roxford5k"`` or ``"roxford5k+r1m"``.
        num_distractors: ``M``.
    """

    queries: Tensor
    database: Tensor
    gnd: RevisitopGroundTruth
    name: str
    num_distractors: int = 0

    def __repr__(self) -> str:
        return (
            f"RevisitopBenchmark(name={self.name!r}, queries={self.queries.shape[0]}, "
            f"database={self.gnd.num_database}, distractors={self.num_distractors}, "
            f"dim={self.database.shape[1]})"
        )


def _feature_help(features: str, n: int, q: int) -> str:
    return (
        f"your own descriptors, either {features}.mat holding X (D, {n}) database and "
        f"Q (D, {q}) query descriptors (the revisitop/cirtorch layout, one per column), or "
        f"{features}_database.npy ({n}, D) and {features}_queries.npy ({q}, D) (one per row)"
    )


class _RevisitopDataset:
    """Shared code of :class:`ROxford5k` and :class:`RParis6k`."""

    name: ClassVar[str]
    num_database: ClassVar[int]
    num_queries: ClassVar[int] = 70

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)

    @property
    def gnd_file(self) -> str:
        """File name of the ground truth, e.g. ``gnd_roxford5k.pkl``."""
        return f"gnd_{self.name}.pkl"

    @property
    def gnd_url(self) -> str:
        """Where the revisitop project publishes the ground truth (text only)."""
        return f"{REVISITOP_URL}data/datasets/{self.name}/{self.gnd_file}"

    def _feature_paths(self, features: str) -> list[Path]:
        if features.endswith(".mat"):
            return [self.root / features]
        mat = self.root / f"{features}.mat"
        pair = [self.root / f"{features}_database.npy", self.root / f"{features}_queries.npy"]
        if mat.exists() or not any(p.exists() for p in pair):
            return [mat]
        return pair

    def required_files(self, features: str | None = None) -> list[Path]:
        """The files :meth:`load` reads: the ground truth and, given ``features``, descriptors.

        Args:
            features: the name of a descriptor set in ``root``: ``{features}.mat``, or the
                pair ``{features}_database.npy`` and ``{features}_queries.npy`` (listed when
                either of them exists); or a ``.mat`` file name.

        Returns:
            Paths inside ``root`` (or absolute paths given in ``features``).
        """
        files = [self.root / self.gnd_file]
        if features is not None:
            files += self._feature_paths(str(features))
        return files

    def missing_files(self, features: str | None = None) -> list[Path]:
        """The :meth:`required_files` that do not exist."""
        return [p for p in self.required_files(features) if not p.is_file()]

    def _missing_error(self, missing: list[Path], features: str | None) -> FileNotFoundError:
        lines = [f"{type(self).__name__}: missing in {str(self.root)!r}:"]
        lines += [f"  - {p}" for p in missing]
        lines.append("Place in the root folder:")
        lines.append(
            f"  {self.gnd_file}: the revisitop ground truth, published at {self.gnd_url} "
            f"(project page {REVISITOP_URL})"
        )
        if features is not None:
            lines.append(f"  {_feature_help(features, self.num_database, self.num_queries)}")
        lines.append("graphrerank never downloads anything.")
        return FileNotFoundError("\n".join(lines))

    def _read_features(self, features: Any) -> tuple[Tensor, Tensor]:
        if isinstance(features, (tuple, list)):
            if len(features) != 2:
                raise ValueError(
                    "features must be a name, a .mat file, or a (queries, database) pair"
                )
            return (
                _as_features(features[0], "features[0] (queries)"),
                _as_features(features[1], "features[1] (database)"),
            )
        paths = self._feature_paths(str(features))
        if len(paths) == 2:
            return load_features(paths[1]), load_features(paths[0])
        path = paths[0]
        arrays = read_mat(existing_file(path, "descriptor file"))
        lacking = [k for k in ("X", "Q") if k not in arrays]
        if lacking:
            raise ValueError(
                f"{str(path)!r} lacks the variable(s) {lacking}; expected X (D, N) database "
                f"and Q (D, Q) query descriptors, found {sorted(arrays)}"
            )
        where = repr(str(path))
        return (
            as_float_matrix(arrays["Q"], f"'Q' in {where}", transpose=True),
            as_float_matrix(arrays["X"], f"'X' in {where}", transpose=True),
        )

    def load(
        self,
        features: str | PathLike | Sequence[Any],
        *,
        distractors: PathLike | Tensor | np.ndarray | None = None,
    ) -> RevisitopBenchmark:
        """Read the ground truth and the descriptors, check that they agree.

        Args:
            features: the descriptors: a name ``NAME`` of files in ``root`` (``NAME.mat``
                with ``X`` ``(D, N)`` and ``Q`` ``(D, Q)``, or ``NAME_database.npy``
                ``(N, D)`` and ``NAME_queries.npy`` ``(Q, D)``), a ``.mat`` file name, or a
                ``(queries, database)`` pair of arrays, tensors or file paths.
            distractors: optional ``(M, D)`` distractor descriptors (e.g. from
                :meth:`RevisitopR1M.load`), as an array, a tensor or a file read by
                :func:`load_features`; appended after the database.

        Returns:
            The benchmark: float32 queries ``(Q, D)``, database ``(N + M, D)`` and ground truth.

        Raises:
            FileNotFoundError: files are missing; the message lists them and where the
                ground truth is published.
            ValueError: a file is unreadable, or the descriptor counts or dimensions do not
                match the ground truth.
        """
        name = None if isinstance(features, (tuple, list)) else str(features)
        missing = self.missing_files(name)
        if missing:
            raise self._missing_error(missing, name)
        gnd = load_revisitop_gnd(self.root / self.gnd_file)
        queries, database = self._read_features(features)
        for what, x, n in (
            ("database", database, gnd.num_database),
            ("queries", queries, gnd.num_queries),
        ):
            if x.shape[0] != n:
                hint = ""
                if x.shape[1] == n:
                    hint = (
                        " - the array looks transposed: .mat descriptors are read as (D, N) "
                        "columns, .npy as (N, D) rows"
                    )
                raise ValueError(
                    f"{type(self).__name__}: {what} descriptors have {x.shape[0]} rows but "
                    f"{self.gnd_file} lists {n} {what} images{hint}"
                )
        if queries.shape[1] != database.shape[1]:
            raise ValueError(
                f"queries have dimension {queries.shape[1]} but the database has "
                f"{database.shape[1]}"
            )
        num_distractors = 0
        bench_name = gnd.name
        if distractors is not None:
            extra = _as_features(distractors, "distractors")
            if extra.shape[1] != database.shape[1]:
                raise ValueError(
                    f"distractors have dimension {extra.shape[1]} but the database has "
                    f"{database.shape[1]}"
                )
            database = torch.cat([database, extra])
            num_distractors = int(extra.shape[0])
            bench_name = f"{gnd.name}+distractors"
        return RevisitopBenchmark(
            queries=queries,
            database=database,
            gnd=gnd,
            name=bench_name,
            num_distractors=num_distractors,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r})"


class ROxford5k(_RevisitopDataset):
    """Revisited Oxford5k (4993 database images, 70 queries): what to place in ``root``.

    ``root`` must hold:

    * ``gnd_roxford5k.pkl``, the ground truth published by the revisitop project at
      ``http://cmp.felk.cvut.cz/revisitop/data/datasets/roxford5k/gnd_roxford5k.pkl``;
    * your descriptors under a name ``NAME`` of your choice, either ``NAME.mat`` with
      ``X`` ``(D, 4993)`` database and ``Q`` ``(D, 70)`` query descriptors (the
      revisitop / cirtorch layout: one descriptor per column, images in ``imlist`` /
      ``qimlist`` order), or ``NAME_database.npy`` ``(4993, D)`` and ``NAME_queries.npy``
      ``(70, D)`` (one descriptor per row).

    Nothing is downloaded. The descriptor counts are checked against the ground truth.

    Args:
        root: the folder.

    Example:
        >>> import pickle, tempfile, pathlib
        >>> import numpy as np
        >>> from graphrerank.datasets import ROxford5k
        >>> gnd = {"imlist": ["a", "b", "c"], "qimlist": ["q1", "q2"],
        ...        "gnd": [{"easy": [0], "hard": [], "junk": [1]}] * 2}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     root = pathlib.Path(tmp)
        ...     ds = ROxford5k(root)
        ...     print([p.name for p in ds.missing_files("gem")])
        ...     _ = (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(gnd))
        ...     np.save(root / "gem_database.npy", np.eye(3, 4))
        ...     np.save(root / "gem_queries.npy", np.ones((2, 4)))
        ...     bench = ds.load("gem", distractors=np.zeros((5, 4)))
        ['gnd_roxford5k.pkl', 'gem.mat']
        >>> bench
        RevisitopBenchmark(name='roxford5k+distractors', queries=2, database=3, distractors=5, dim=4)
        >>> bench.database.shape
        torch.Size([8, 4])
    """

    name = "roxford5k"
    num_database = 4993


class RParis6k(_RevisitopDataset):
    """Revisited Paris6k (6322 database images, 70 queries): what to place in ``root``.

    ``root`` must hold:

    * ``gnd_rparis6k.pkl``, the ground truth published by the revisitop project at
      ``http://cmp.felk.cvut.cz/revisitop/data/datasets/rparis6k/gnd_rparis6k.pkl``;
    * your descriptors under a name ``NAME`` of your choice, either ``NAME.mat`` with
      ``X`` ``(D, 6322)`` database and ``Q`` ``(D, 70)`` query descriptors (one per
      column), or ``NAME_database.npy`` ``(6322, D)`` and ``NAME_queries.npy`` ``(70, D)``
      (one per row).

    Nothing is downloaded. See :class:`ROxford5k` for the methods.

    Args:
        root: the folder.

    Example:
        >>> from graphrerank.datasets import RParis6k
        >>> ds = RParis6k("/nonexistent")
        >>> [p.name for p in ds.required_files("resnet_gem")]
        ['gnd_rparis6k.pkl', 'resnet_gem.mat']
    """

    name = "rparis6k"
    num_database = 6322


class RevisitopR1M:
    """The revisitop 1M distractor set (R1M, 1,001,001 images): where its descriptors go.

    The images are published by the revisitop project
    (``http://ptak.felk.cvut.cz/revisitop/revisitop1m/``); extract descriptors with the same
    network as the benchmark's and place them in ``root`` under a name ``NAME``, either
    ``NAME.npy`` ``(M, D)`` (one per row) or ``NAME.mat`` with ``X`` ``(D, M)`` (one per
    column). :meth:`load` returns them for ``ROxford5k(...).load(..., distractors=...)``.

    Args:
        root: the folder.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from graphrerank.datasets import RevisitopR1M
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     np.save(pathlib.Path(tmp) / "gem.npy", np.ones((10, 4)))
        ...     x = RevisitopR1M(tmp).load("gem")
        >>> x.shape
        torch.Size([10, 4])
    """

    #: Number of images in the full distractor set.
    num_images: ClassVar[int] = 1_001_001
    url: ClassVar[str] = "http://ptak.felk.cvut.cz/revisitop/revisitop1m/"

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)

    def required_files(self, features: str = "features") -> list[Path]:
        """The descriptor file :meth:`load` reads: ``NAME.mat`` when it exists, else ``NAME.npy``.

        A name ending in ``.npy`` or ``.mat`` is taken as the file name itself.
        """
        features = str(features)
        if features.endswith((".npy", ".mat")):
            return [self.root / features]
        mat = self.root / f"{features}.mat"
        return [mat if mat.exists() else self.root / f"{features}.npy"]

    def missing_files(self, features: str = "features") -> list[Path]:
        """The :meth:`required_files` that do not exist."""
        return [p for p in self.required_files(features) if not p.is_file()]

    def load(self, features: str = "features") -> Tensor:
        """Read the distractor descriptors.

        Args:
            features: the name ``NAME`` of ``NAME.npy`` or ``NAME.mat`` in ``root``.

        Returns:
            ``(M, D)`` float32 descriptors (``M`` is not required to be the full 1,001,001).

        Raises:
            FileNotFoundError: the file is missing (the message says where the images are).
            ValueError: the file is unreadable or not a 2-D numeric array.
        """
        missing = self.missing_files(features)
        if missing:
            raise FileNotFoundError(
                f"RevisitopR1M: missing {', '.join(map(str, missing))}. Place there your own "
                f"descriptors of the R1M distractor images ({features}.npy (M, D), or "
                f"{features}.mat with X (D, M)); the images are published at {self.url}. "
                "graphrerank never downloads anything."
            )
        path = self.required_files(features)[0]
        return load_features(path, key="X" if path.suffix == ".mat" else None)

    def __repr__(self) -> str:
        return f"RevisitopR1M(root={str(self.root)!r})"
