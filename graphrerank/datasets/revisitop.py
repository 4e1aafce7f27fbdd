"""Revisited Oxford and Paris: ground truth, descriptor files and the benchmark descriptions.

The revisitop project (Radenović et al., "Revisiting Oxford and Paris", CVPR 2018) publishes
the ground truth of each benchmark as a pickled dict, ``gnd_roxford5k.pkl`` and
``gnd_rparis6k.pkl``. Unpickling an untrusted file can run any code, so
:func:`load_revisitop_gnd` reads it with a restricted unpickler that builds only plain Python
containers and numpy arrays and refuses every other global before it is called.

Descriptors are the user's own (graphrerank never downloads anything): :func:`load_features`
reads ``.npy``, ``.npz`` and MATLAB ``.mat`` files.

A ground truth of one's own images is built with :func:`gnd_from_status` (a status per query and
image, :class:`GndStatus`) or :func:`gnd_from_labels` (same label = positive), cut down to a
subset of images or queries with :func:`subset_gnd`, and written without pickle with
:func:`save_revisitop_gnd` (a checksummed ``.npz`` that :func:`load_revisitop_gnd` reads back);
:func:`write_revisitop_pickle` writes the original ``gnd_*.pkl`` layout for the official
revisitop evaluation scripts.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import pickletools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from numbers import Number
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .._checks import as_tensor, check_in
from .._io import CorruptFileError, atomic_write, check_path, load_arrays, save_arrays
from .._version import __version__
from ._files import (
    as_float_matrix,
    existing_file,
    path_label,
    read_mat,
    read_npy,
    read_npz,
    str_array,
)

__all__ = [
    "REVISITOP_URL",
    "CorruptFileError",
    "GndStatus",
    "ROxford5k",
    "RParis6k",
    "RevisitopBenchmark",
    "RevisitopGroundTruth",
    "RevisitopR1M",
    "UnsafePickleError",
    "gnd_from_labels",
    "gnd_from_status",
    "load_features",
    "load_revisitop_gnd",
    "save_revisitop_gnd",
    "status_from_gnd",
    "subset_gnd",
    "write_revisitop_pickle",
]

#: Home page of the revisitop project (given as text; graphrerank downloads nothing).
REVISITOP_URL = "http://cmp.felk.cvut.cz/revisitop/"

PathLike = str | os.PathLike

#: The three per-query index lists of a revisitop ground truth.
_KEYS = ("easy", "hard", "junk")


# --------------------------------------------------------------------------- restricted pickle
class UnsafePickleError(ValueError):
    """A pickle asked for a global that the restricted unpickler does not allow, or is crafted
    to exhaust memory or time (memo indices beyond its length, shared containers that expand
    to more objects than the file could hold, cycles, nesting deeper than 64 levels)."""


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


#: Most objects a ground-truth pickle may expand to, counting an object each time it is
#: referenced (a plain pickle's count is below its size in bytes; a "billion laughs" file of
#: nested shared lists is refused before anything walks it), and the deepest nesting.
_PICKLE_EXPANSION = 4
_PICKLE_MIN_OBJECTS = 100_000
_PICKLE_MAX_DEPTH = 64
_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _scan_pickle(data: bytes) -> None:
    """Refuse a pickle whose memo indices exceed its own length before the unpickler sizes
    its memo table from them (a 4-byte ``LONG_BINPUT`` index would allocate gigabytes)."""
    ops = 0
    for op, arg, _ in pickletools.genops(data):
        ops += 1
        if op.name in _MEMO_OPS and not (isinstance(arg, int) and 0 <= arg <= ops):
            raise UnsafePickleError(
                f"memo index {arg!r} at opcode {ops} is larger than the pickle: a crafted file"
            )


def _check_expansion(obj: Any, limit: int) -> None:
    """Walk the unpickled object graph once (shared objects once), computing how many objects
    it expands to when every reference is followed; refuse more than ``limit``, cycles, and
    nesting deeper than :data:`_PICKLE_MAX_DEPTH`, before anything iterates over it."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    keep: list[Any] = []  # ids stay unique while walking

    def children(o: Any) -> list[Any] | None:
        if isinstance(o, (list, tuple)):
            return list(o)
        if isinstance(o, dict):
            return [v for kv in o.items() for v in kv]
        if isinstance(o, np.ndarray) and o.dtype == object:
            return list(o.reshape(-1))
        return None

    stack: list[tuple[Any, list[Any] | None, int]] = [(obj, children(obj), 0)]
    active.add(id(obj))
    keep.append(obj)
    while stack:
        o, kids, depth = stack[-1]
        if kids:
            c = kids.pop()
            if id(c) in sizes:
                continue
            if id(c) in active:
                raise UnsafePickleError("the pickle holds a cycle: not a ground truth")
            ck = children(c)
            if ck is None:
                sizes[id(c)] = 1
                continue
            if depth + 1 > _PICKLE_MAX_DEPTH:
                raise UnsafePickleError(
                    f"the pickle nests containers deeper than {_PICKLE_MAX_DEPTH} levels"
                )
            active.add(id(c))
            keep.append(c)
            stack.append((c, ck, depth + 1))
            continue
        stack.pop()
        active.discard(id(o))
        own = children(o) or []
        total = 1 + sum(sizes.get(id(c), 1) for c in own)
        if total > limit:
            raise UnsafePickleError(
                f"the pickle expands to more than {limit} objects (shared containers nested "
                "within each other, a 'billion laughs' file): not a ground truth"
            )
        sizes[id(o)] = total


def _restricted_loads(data: bytes) -> Any:
    _scan_pickle(data)
    # latin1 reads Python 2 pickles (their str and numpy buffers) byte for byte.
    obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    _check_expansion(obj, max(_PICKLE_MIN_OBJECTS, _PICKLE_EXPANSION * len(data)))
    return obj


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

    Two ground truths are equal (``==``) when they have the same name, the same image and
    query names in the same order, and for every query the same ``easy``, ``hard`` and
    ``junk`` indices in the same order and the same box (or both none).
    """

    imlist: np.ndarray
    qimlist: np.ndarray
    gnd: list[dict[str, np.ndarray | None]]
    name: str = "revisitop"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RevisitopGroundTruth):
            return NotImplemented
        if self.name != other.name or len(self.gnd) != len(other.gnd):
            return False
        if not (
            np.array_equal(np.asarray(self.imlist), np.asarray(other.imlist))
            and np.array_equal(np.asarray(self.qimlist), np.asarray(other.qimlist))
        ):
            return False
        for a, b in zip(self.gnd, other.gnd):
            for key in _KEYS:
                if not np.array_equal(np.asarray(a.get(key)), np.asarray(b.get(key))):
                    return False
            box_a, box_b = a.get("bbx"), b.get("bbx")
            if (box_a is None) != (box_b is None):
                return False
            if box_a is not None and not np.array_equal(box_a, box_b):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """The revisitop dict of plain Python lists: what a ``gnd_*.pkl`` file holds.

        ``{"imlist": [str], "qimlist": [str], "gnd": [{"easy": [int], "hard": [int],
        "junk": [int], "bbx": [x1, y1, x2, y2]}]}``; ``"bbx"`` is left out for a query
        without a box. :func:`~graphrerank.metrics.revisited_map` accepts this dict as its
        ``gnd`` argument, as it accepts the list :attr:`gnd`.

        Example:
            >>> from graphrerank.datasets import gnd_from_status
            >>> gt = gnd_from_status([[1, 0, -1]], imlist=["a", "b", "c"], qimlist=["q"])
            >>> gt.to_dict()
            {'imlist': ['a', 'b', 'c'], 'qimlist': ['q'], 'gnd': [{'easy': [0], 'hard': [], 'junk': [2]}]}
        """
        gnd = []
        for entry in self.gnd:
            item: dict[str, Any] = {
                key: [int(i) for i in np.asarray(entry[key]).reshape(-1)] for key in _KEYS
            }
            if entry.get("bbx") is not None:
                item["bbx"] = [float(v) for v in np.asarray(entry["bbx"]).reshape(-1)]
            gnd.append(item)
        return {
            "imlist": [str(v) for v in self.imlist],
            "qimlist": [str(v) for v in self.qimlist],
            "gnd": gnd,
        }

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
    """Read a revisitop ground truth: a ``gnd_*.pkl`` pickle or a file of :func:`save_revisitop_gnd`.

    A ``.npz`` file (or any zip archive) is read as the pickle-free, checksummed format that
    :func:`save_revisitop_gnd` writes: no pickle is involved, and a truncated, altered or
    foreign file raises :class:`CorruptFileError`. Its benchmark name is the one stored in it.

    Any other file is taken as a revisitop pickle (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``)
    and read by a restricted unpickler: it builds dicts, lists, numbers, strings and
    numpy arrays, and refuses any global *before* calling it, so a crafted file cannot run
    code, except the few that numpy arrays need: numpy's own reconstruction functions
    (``numpy.core.multiarray._reconstruct``, ``scalar``, ``numpy.core.numeric._frombuffer``,
    under ``numpy.core`` or ``numpy._core``), ``numpy.ndarray``, ``numpy.dtype``, and for
    pickle protocols 0 to 2 ``_codecs.encode`` with the ``latin1`` codec and ``bytes()``. The
    structure is then checked: keys ``imlist``, ``qimlist`` and ``gnd``;
    one ``gnd`` entry per query with ``easy``, ``hard`` and ``junk`` 0-based indices below
    ``len(imlist)``, and an optional ``bbx``. The name is the file name without ``gnd_``.

    Args:
        path: the ``.pkl`` or ``.npz`` file.

    Returns:
        The ground truth, with index lists as numpy int64 arrays.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the pickle names a global other than the allowed ones (a subclass
            of ValueError; the message names the refused global), or is crafted to exhaust
            memory or time (a "billion laughs" of shared nested lists, a huge memo index):
            refused before it is expanded.
        CorruptFileError: a ``.npz`` file is truncated, fails its checksum, was written by
            something else or holds an inconsistent ground truth (a subclass of ValueError).
        ValueError: the pickle is truncated or not a pickle, or its content is not a revisitop
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
    where = path_label(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if path.suffix.lower() == ".npz" or head in _ZIP_MAGIC:
        return _load_gnd_npz(path)
    data = path.read_bytes()
    try:
        obj = _restricted_loads(data)
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{where}: {err}") from None
    except Exception as err:  # any failure of a torn or foreign byte stream
        raise ValueError(
            f"{where} could not be read as a revisitop ground-truth pickle (truncated "
            f"or corrupt?): {type(err).__name__}: {err}"
        ) from None
    name = path.stem.removeprefix("gnd_")
    return _ground_truth(obj, where, name)


# --------------------------------------------------------------------------- building
class GndStatus(IntEnum):
    """The status of one database image for one query, as :func:`gnd_from_status` reads it.

    The codes follow the relevance convention of
    :func:`~graphrerank.metrics.relevance_from_gnd` (1 positive, 0 negative, -1 junk) and add
    2 for hard positives, so a relevance matrix can be passed as a status matrix as it is
    (all its positives are then easy). A boolean matrix is read as ``True`` = easy,
    ``False`` = negative.

    Example:
        >>> from graphrerank.datasets import GndStatus
        >>> [(s.name, int(s)) for s in GndStatus]
        [('NEGATIVE', 0), ('EASY', 1), ('HARD', 2), ('JUNK', -1)]
        >>> GndStatus(2)
        <GndStatus.HARD: 2>
    """

    #: Not relevant to the query: a miss wherever it is ranked.
    NEGATIVE = 0
    #: An easy positive: relevant under the Easy and Medium protocols, ignored under Hard.
    EASY = 1
    #: A hard positive: relevant under the Medium and Hard protocols, ignored under Easy.
    HARD = 2
    #: Ignored by every protocol (removed from the ranking before scoring).
    JUNK = -1


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_STATUS_TEXT = ", ".join(f"{s.name}={int(s)}" for s in GndStatus)


def _to_numpy(value: Any, where: str) -> np.ndarray:
    """A numpy array of a numpy array, a dense tensor (any device but ``meta``, which holds
    no data) or a (nested) list."""
    if isinstance(value, Tensor):
        as_tensor(value, where)  # refuses a meta tensor, naming the argument
        if value.layout != torch.strided:
            raise TypeError(
                f"{where} must be a dense tensor, got layout {value.layout}; pass "
                f"{where}.to_dense()"
            )
        t = value.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    if isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, (list, tuple, range)):
        try:
            arr = np.asarray(value)
        except ValueError as err:
            raise ValueError(f"{where} could not be read as an array (ragged?): {err}") from None
    else:
        raise TypeError(
            f"{where} must be a numpy array, a torch.Tensor or a list, got {type(value).__name__}"
        )
    if arr.dtype == object:
        raise TypeError(f"{where} must hold numbers, got an array of Python objects")
    return arr


def _whole_numbers(arr: np.ndarray, where: str) -> np.ndarray:
    """``arr`` as int64; floats must be finite whole numbers."""
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{where} must hold whole numbers, got {arr[at].item()!r} at position "
                f"{at[0] if len(at) == 1 else at}"
            )
        return arr.astype(np.int64)
    raise TypeError(f"{where} must hold integers, got dtype {arr.dtype}")


def _status_matrix(status: Any) -> np.ndarray:
    """``(Q, N)`` int8 status codes from a matrix or a list of per-query rows."""
    if isinstance(status, (list, tuple)) and not any(
        isinstance(r, (Number, np.generic)) for r in status
    ):
        if not status:
            raise ValueError("status is empty: it has no queries")
        rows = [_to_numpy(r, f"status[{i}]") for i, r in enumerate(status)]
        for i, r in enumerate(rows):
            if r.ndim != 1:
                raise ValueError(
                    f"status[{i}] must be a 1-D (N,) array over the database images, got shape "
                    f"{r.shape}"
                )
            if r.shape != rows[0].shape:
                raise ValueError(
                    f"status[{i}] has {r.shape[0]} entries but status[0] has {rows[0].shape[0]}: "
                    "every query needs one status per database image"
                )
        dtypes = {r.dtype for r in rows}
        arr = np.stack(rows) if len(dtypes) == 1 else np.stack([r.astype(np.float64) for r in rows])
    else:
        if isinstance(status, (list, tuple)):
            raise ValueError(
                "status must be a (Q, N) matrix or a list of (N,) arrays, got a flat list of "
                "numbers; for a single query pass [status]"
            )
        arr = _to_numpy(status, "status")
        if arr.ndim != 2:
            raise ValueError(
                f"status must be a 2-D (num_queries, num_database) array, got shape {arr.shape}"
                + ("; for a single query pass status[None]" if arr.ndim == 1 else "")
            )
    if arr.shape[0] == 0:
        raise ValueError(f"status is empty: shape {arr.shape} has no queries")
    if arr.shape[1] == 0:
        raise ValueError(f"status is empty: shape {arr.shape} has no database images")
    if arr.dtype.kind == "b":
        return arr.astype(np.int8)
    codes = _whole_numbers(arr, "status")
    bad = ~np.isin(codes, [int(s) for s in GndStatus])
    if bad.any():
        q, n = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"status[{q}, {n}] is {int(codes[q, n])}, not a status code ({_STATUS_TEXT}; "
            f"see GndStatus); {int(bad.sum())} entries are unknown codes"
        )
    return codes.astype(np.int8)


def _entry_of_codes(row: np.ndarray) -> dict[str, np.ndarray | None]:
    return {
        "easy": np.flatnonzero(row == GndStatus.EASY).astype(np.int64),
        "hard": np.flatnonzero(row == GndStatus.HARD).astype(np.int64),
        "junk": np.flatnonzero(row == GndStatus.JUNK).astype(np.int64),
    }


def _names(
    values: Any, count: int, where: str, what: str, *, unique: bool, counted: str = ""
) -> np.ndarray:
    """Image names: given (checked) or ``"0" .. str(count - 1)``; ``counted`` says where
    ``count`` comes from (e.g. ``"the rows of status"``), for the message of a wrong count."""
    if values is None:
        return np.asarray([str(i) for i in range(count)], dtype=str)
    if isinstance(values, Tensor):
        raise TypeError(f"{where} must be a list of names (str), got a torch.Tensor")
    names = str_array(values, where)
    if len(names) != count:
        raise ValueError(
            f"{where} has {len(names)} names but there are {count} {what}"
            + (f" ({counted})" if counted else "")
        )
    if unique:
        uniq, first, counts = np.unique(names, return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1][0]
            at = np.flatnonzero(names == dup)[:2].tolist()
            raise ValueError(
                f"{where} names {str(dup)!r} twice (at positions {at[0]} and {at[1]}); each "
                "image needs a name of its own"
            )
    return names


def _bboxes(bbx: Any, count: int) -> list[np.ndarray | None]:
    """One box (or ``None``) per query from ``None``, a ``(Q, 4)`` array or a list."""
    if bbx is None:
        return [None] * count
    if isinstance(bbx, (Tensor, np.ndarray)):
        arr = _to_numpy(bbx, "bbx")
        if arr.shape != (count, 4):
            raise ValueError(
                f"bbx must have shape ({count}, 4), one x1, y1, x2, y2 box per query, got shape "
                f"{arr.shape}"
            )
        return [_bbx(arr[i], f"bbx[{i}]") for i in range(count)]
    if isinstance(bbx, (list, tuple)):
        if len(bbx) != count:
            raise ValueError(
                f"bbx has {len(bbx)} entries but there are {count} queries (give one box or "
                "None per query)"
            )
        return [
            _bbx(b.detach().cpu().numpy() if isinstance(b, Tensor) else b, f"bbx[{i}]")
            for i, b in enumerate(bbx)
        ]
    raise TypeError(
        f"bbx must be None, a (Q, 4) array or a list of boxes, got {type(bbx).__name__}"
    )


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError("name must not be empty")
    return name


def _has_positive(entry: Mapping[str, Any]) -> bool:
    return bool(np.asarray(entry["easy"]).size + np.asarray(entry["hard"]).size)


def _finish(
    gnd: list[dict[str, np.ndarray | None]],
    num_database: int,
    imlist: Any,
    qimlist: Any,
    bbx: Any,
    name: Any,
    source: str,
    counted: tuple[str, str] = ("", ""),
) -> RevisitopGroundTruth:
    name = _check_name(name)
    images = _names(
        imlist, num_database, "imlist", "database images", unique=True, counted=counted[0]
    )
    queries = _names(qimlist, len(gnd), "qimlist", "queries", unique=False, counted=counted[1])
    for entry, box in zip(gnd, _bboxes(bbx, len(gnd))):
        entry["bbx"] = box
    if not any(_has_positive(e) for e in gnd):
        raise ValueError(
            f"no query has a positive (an easy or hard image) in {source}: the revisited "
            "mAP would be undefined"
        )
    return RevisitopGroundTruth(imlist=images, qimlist=queries, gnd=gnd, name=name)


def gnd_from_status(
    status: Any,
    *,
    imlist: Sequence[str] | None = None,
    qimlist: Sequence[str] | None = None,
    bbx: Any = None,
    name: str = "custom",
) -> RevisitopGroundTruth:
    """Build a revisitop ground truth from the status of every database image for every query.

    ``status[q, n]`` is a :class:`GndStatus` code: ``1`` easy, ``2`` hard, ``-1`` junk,
    ``0`` negative (a boolean matrix reads as ``True`` = easy). Query ``q`` gets the sorted
    indices ``n`` of each kind as ``easy``, ``hard`` and ``junk``. A query without any
    positive is kept (:func:`~graphrerank.metrics.revisited_map` leaves it out of its means),
    but at least one query must have one.

    Args:
        status: ``(Q, N)`` integer, whole-float or boolean numpy array or torch tensor, or a
            list of ``Q`` such ``(N,)`` rows.
        imlist: ``N`` database image names; default ``"0"``, ``"1"``, ... ``str(N - 1)``.
            Names must be distinct.
        qimlist: ``Q`` query names; default ``"0"`` ... ``str(Q - 1)``.
        bbx: query boxes ``x1, y1, x2, y2``: ``None`` (no boxes), a ``(Q, 4)`` array, or a
            list with a box or ``None`` for each query.
        name: the benchmark name (stored in the file by :func:`save_revisitop_gnd`).

    Returns:
        The ground truth; ``revisited_map(indices, gt.gnd, num_database=gt.num_database)``
        scores a ranking against it.

    Raises:
        TypeError: ``status`` of another type or dtype or a sparse tensor, names that are not
            ``str``.
        ValueError: ``status`` not 2-D, empty, ragged, on the ``meta`` device, with an unknown
            code (the message gives the position and value) or with no positive at all; names
            of another count than the columns (``imlist``) or rows (``qimlist``) of
            ``status``, or repeated in ``imlist``; malformed boxes.

    Example:
        >>> from graphrerank.datasets import gnd_from_status, GndStatus as S
        >>> gt = gnd_from_status([[S.EASY, S.NEGATIVE, S.HARD, S.JUNK],
        ...                       [S.NEGATIVE, S.EASY, S.EASY, S.NEGATIVE]])
        >>> gt
        RevisitopGroundTruth(name='custom', num_database=4, num_queries=2)
        >>> gt.gnd[0]
        {'easy': array([0]), 'hard': array([2]), 'junk': array([3]), 'bbx': None}
        >>> gt.imlist.tolist(), gt.gnd[1]["easy"]
        (['0', '1', '2', '3'], array([1, 2]))
    """
    codes = _status_matrix(status)
    gnd = [_entry_of_codes(row) for row in codes]
    counted = ("the columns of status", "the rows of status")
    return _finish(gnd, codes.shape[1], imlist, qimlist, bbx, name, "status", counted)


def _labels(value: Any, where: str) -> np.ndarray:
    arr = _to_numpy(value, where)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{where} must be a 1-D array of labels, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{where} is empty: it has no labels")
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8")
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind == "b":
        raise TypeError(f"{where} must hold integer or str labels, got dtype bool")
    return _whole_numbers(arr, where)


def _mask(value: Any, q: int, n: int, where: str) -> np.ndarray | None:
    """A ``(1, N)`` or ``(Q, N)`` boolean mask, or ``None``."""
    if value is None:
        return None
    arr = _to_numpy(value, where)
    if arr.dtype.kind != "b":
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{where} must be a boolean mask, got dtype {arr.dtype}")
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            raise ValueError(
                f"{where} must be a boolean mask (or 0/1), got the value "
                f"{arr[tuple(np.argwhere(bad)[0])].item()!r}"
            )
        arr = arr != 0
    if arr.shape == (n,):
        return arr[None, :]
    if arr.shape == (q, n):
        return arr
    raise ValueError(
        f"{where} must be an (N,) = ({n},) mask over the database images or a (Q, N) = "
        f"({q}, {n}) mask per query, got shape {arr.shape}"
    )


def gnd_from_labels(
    database_labels: Any,
    query_labels: Any,
    *,
    hard: Any = None,
    junk: Any = None,
    imlist: Sequence[str] | None = None,
    qimlist: Sequence[str] | None = None,
    bbx: Any = None,
    name: str = "custom",
) -> RevisitopGroundTruth:
    """Build a revisitop ground truth from labels: positives are the images of the same label.

    For query ``q`` and database image ``n``, in this order of precedence:

    * ``junk[q, n]`` (or ``junk[n]``) set: junk, whatever the labels (e.g. the query's own
      image when the queries are part of the database: ``junk=np.eye(N, dtype=bool)`` for
      leave-one-out);
    * same label and ``hard[q, n]`` (or ``hard[n]``) set: a hard positive;
    * same label: an easy positive;
    * otherwise a negative (``hard`` set on an image of another label changes nothing).

    A query whose label no database image has is kept without positive (the metric leaves it
    out of its means), but at least one query must have a positive.

    Args:
        database_labels: ``(N,)`` labels of the database images: integers (whole floats are
            accepted) or strings; numpy, torch or a list.
        query_labels: ``(Q,)`` labels of the queries, of the same kind.
        hard: optional boolean mask, ``(N,)`` (the same for every query) or ``(Q, N)``.
        junk: optional boolean mask, ``(N,)`` or ``(Q, N)``.
        imlist: ``N`` database image names; default ``"0"`` ... ``str(N - 1)``.
        qimlist: ``Q`` query names; default ``"0"`` ... ``str(Q - 1)``.
        bbx: query boxes, as in :func:`gnd_from_status`.
        name: the benchmark name.

    Returns:
        The ground truth, indices sorted within each list.

    Raises:
        TypeError: labels that are neither integers nor strings, or one of each kind, or sparse
            tensors; masks that are not boolean.
        ValueError: labels not 1-D, empty or on the ``meta`` device, masks of the wrong shape,
            no positive at all, names of another count than the labels they name. (The
            database and query labels are independent: any two lengths.)

    Example:
        >>> import numpy as np
        >>> from graphrerank.datasets import gnd_from_labels
        >>> labels = np.array([0, 0, 1, 1, 0])
        >>> gt = gnd_from_labels(labels, labels, hard=[False, True, False, False, False],
        ...                      junk=np.eye(5, dtype=bool))  # leave-one-out
        >>> gt.gnd[0]
        {'easy': array([4]), 'hard': array([1]), 'junk': array([0]), 'bbx': None}
        >>> gt.gnd[2]
        {'easy': array([3]), 'hard': array([], dtype=int64), 'junk': array([2]), 'bbx': None}
    """
    db = _labels(database_labels, "database_labels")
    ql = _labels(query_labels, "query_labels")
    if (db.dtype.kind == "U") != (ql.dtype.kind == "U"):
        kind = {True: "strings", False: "integers"}
        raise TypeError(
            f"database_labels hold {kind[db.dtype.kind == 'U']} but query_labels hold "
            f"{kind[ql.dtype.kind == 'U']}: give labels of one kind"
        )
    n, q = db.shape[0], ql.shape[0]
    hard_mask = _mask(hard, q, n, "hard")
    junk_mask = _mask(junk, q, n, "junk")
    gnd = []
    for i in range(q):
        same = db == ql[i]
        row = same.astype(np.int8)
        if hard_mask is not None:
            row[same & hard_mask[i if hard_mask.shape[0] > 1 else 0]] = GndStatus.HARD
        if junk_mask is not None:
            row[junk_mask[i if junk_mask.shape[0] > 1 else 0]] = GndStatus.JUNK
        gnd.append(_entry_of_codes(row))
    counted = ("the entries of database_labels", "the entries of query_labels")
    return _finish(gnd, n, imlist, qimlist, bbx, name, "the labels", counted)


def _checked_gt(gt: Any, where: str = "gt") -> RevisitopGroundTruth:
    """A validated copy (index lists as int64 arrays) of a ground truth or a revisitop dict."""
    if isinstance(gt, RevisitopGroundTruth):
        name = _check_name(gt.name)
        data = {"imlist": gt.imlist, "qimlist": gt.qimlist, "gnd": list(gt.gnd)}
        return _ground_truth(data, where, name)
    if isinstance(gt, Mapping):
        return _ground_truth(dict(gt), where, "revisitop")
    raise TypeError(
        f"{where} must be a RevisitopGroundTruth (from load_revisitop_gnd or gnd_from_*) or a "
        f"revisitop dict, got {type(gt).__name__}"
    )


def status_from_gnd(gt: RevisitopGroundTruth | Mapping[str, Any]) -> np.ndarray:
    """The :class:`GndStatus` of every database image for every query: ``(Q, N)`` int8.

    The inverse of :func:`gnd_from_status` (up to the order of indices within a list).

    Args:
        gt: a ground truth, or the revisitop dict of a ``gnd_*.pkl`` file.

    Returns:
        ``(Q, N)`` int8 array of codes ``1`` easy, ``2`` hard, ``-1`` junk, ``0`` negative.

    Raises:
        TypeError: ``gt`` is neither a ground truth nor a dict.
        ValueError: a malformed ground truth, or an image in two lists of one query (it would
            need two codes).

    Example:
        >>> from graphrerank.datasets import status_from_gnd
        >>> gt = {"imlist": ["a", "b", "c"], "qimlist": ["q"],
        ...       "gnd": [{"easy": [2], "hard": [0], "junk": []}]}
        >>> status_from_gnd(gt)
        array([[2, 0, 1]], dtype=int8)
    """
    gt = _checked_gt(gt)
    out = np.zeros((gt.num_queries, gt.num_database), dtype=np.int8)
    codes = {"easy": GndStatus.EASY, "hard": GndStatus.HARD, "junk": GndStatus.JUNK}
    for i, entry in enumerate(gt.gnd):
        row = out[i]
        for key, code in codes.items():
            idx = entry[key]
            prev = row[idx]
            clash = (prev != GndStatus.NEGATIVE) & (prev != code)
            if clash.any():
                j = int(idx[clash][0])
                other = GndStatus(int(prev[clash][0])).name.lower()
                raise ValueError(
                    f"gt: gnd[{i}] lists image {j} both as {other!r} and as {key!r}; a status "
                    "matrix gives each image one status"
                )
            row[idx] = code
    return out


# --------------------------------------------------------------------------- subsets
def _selection(value: Any, names: np.ndarray, where: str, what: str) -> np.ndarray:
    """0-based int64 positions from indices, names or a boolean mask (checked, no repeats)."""
    n = len(names)
    whats = "queries" if what == "query" else f"{what}s"
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{where} must be a list of {what} indices or names, got a single str")
    arr = _to_numpy(value, where)
    if arr.ndim != 1:
        raise ValueError(
            f"{where} must be a 1-D list of {what} indices, names or a boolean mask, got shape "
            f"{arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{where} is empty: select at least one {what}")
    if arr.dtype.kind == "b":
        if arr.shape != (n,):
            raise ValueError(
                f"a boolean {where} mask needs one entry per {what} ({n}), got {arr.shape[0]}"
            )
        idx = np.flatnonzero(arr).astype(np.int64)
        if idx.size == 0:
            raise ValueError(f"{where} selects no {what}: the mask is all False")
        return idx
    if arr.dtype.kind in "US":
        if arr.dtype.kind == "S":
            arr = np.char.decode(arr, "utf-8")
        lookup: dict[str, list[int]] = {}
        for i, name in enumerate(names.tolist()):
            lookup.setdefault(name, []).append(i)
        idx = np.empty(arr.size, dtype=np.int64)
        for j, name in enumerate(arr.tolist()):
            found = lookup.get(name)
            if found is None:
                raise ValueError(f"{where}[{j}] = {name!r} is not the name of any {what}")
            if len(found) > 1:
                raise ValueError(
                    f"{where}[{j}] = {name!r} is ambiguous: {len(found)} {whats} have that name "
                    f"(positions {found[:3]}); select by index instead"
                )
            idx[j] = found[0]
    else:
        idx = _whole_numbers(arr, where)
        bad = (idx < 0) | (idx >= n)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{where}[{j}] = {int(idx[j])} is outside the {n} {whats} (0-based indices, "
                "negative ones are not allowed)"
            )
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[counts > 1][0])
        at = np.flatnonzero(idx == dup)[:2].tolist()
        raise ValueError(
            f"{where} selects {what} {dup} ({str(names[dup])!r}) twice, at positions {at[0]} "
            f"and {at[1]}; a subset lists each {what} once"
        )
    return idx


def subset_gnd(
    gt: RevisitopGroundTruth | Mapping[str, Any],
    database: Any,
    *,
    queries: Any = None,
    empty_queries: str = "keep",
    return_indices: bool = False,
) -> RevisitopGroundTruth | tuple[RevisitopGroundTruth, np.ndarray, np.ndarray]:
    """Cut a ground truth down to some database images (and optionally some queries).

    The new database is ``database`` in the order given: image ``database[j]`` of ``gt``
    becomes image ``j``. Every ``easy``, ``hard`` and ``junk`` list keeps the images of the
    subset, renumbered, in their original order, and loses the others; ``imlist`` and
    ``qimlist`` are cut the same way, boxes and the name are kept. Selecting every image in
    its order gives back an equal ground truth.

    A query can lose all its positives (easy and hard). ``empty_queries`` says what happens
    to it:

    * ``"keep"`` (default): it stays, so the queries still match the rows of the query
      descriptors; :func:`~graphrerank.metrics.revisited_map` gives it NaN AP and leaves it
      out of every mean, as it leaves out a query without easy positive from the Easy
      protocol;
    * ``"drop"``: it is removed (``return_indices=True`` tells which queries remain);
    * ``"raise"``: a ValueError names the queries.

    If no query keeps a positive, a ValueError is raised whatever ``empty_queries`` says.

    Args:
        gt: a ground truth, or the revisitop dict of a ``gnd_*.pkl`` file.
        database: the images to keep: 0-based indices into ``gt.imlist``, names from it, or
            an ``(N,)`` boolean mask (then in their original order). No repeats.
        queries: the queries to keep, in the same forms over ``gt.qimlist``; default all.
        empty_queries: ``"keep"``, ``"drop"`` or ``"raise"``.
        return_indices: also return the positions in ``gt`` of the kept database images and
            queries, to cut the descriptors the same way.

    Returns:
        The new ground truth, or ``(gt, database_indices, query_indices)`` (int64 arrays)
        with ``return_indices=True``.

    Raises:
        TypeError: ``gt`` is not a ground truth, a selection of another type or a sparse
            tensor.
        ValueError: an empty selection, an index out of range, an unknown or ambiguous name, a
            repeated image or query, a mask of the wrong length, a ``meta`` tensor, an unknown
            ``empty_queries``, or no positive left.

    Example:
        >>> from graphrerank.datasets import gnd_from_status, subset_gnd
        >>> gt = gnd_from_status([[1, 0, 2, -1], [0, 1, 0, 0]], imlist=["a", "b", "c", "d"])
        >>> sub = subset_gnd(gt, ["d", "c", "a"])
        >>> sub.imlist.tolist(), sub.gnd[0]
        (['d', 'c', 'a'], {'easy': array([2]), 'hard': array([1]), 'junk': array([0]), 'bbx': None})
        >>> sub.gnd[1]["easy"]  # its only positive, "b", is gone: kept without positive
        array([], dtype=int64)
        >>> sub, db_idx, q_idx = subset_gnd(gt, [0, 2], empty_queries="drop", return_indices=True)
        >>> sub.num_queries, db_idx, q_idx
        (1, array([0, 2]), array([0]))
        >>> subset_gnd(gt, [0, 1, 2, 3]) == gt
        True
    """
    gt = _checked_gt(gt)
    check_in(empty_queries, "empty_queries", ("keep", "drop", "raise"))
    if not isinstance(return_indices, bool):
        raise TypeError(f"return_indices must be True or False, got {return_indices!r}")
    db_idx = _selection(database, gt.imlist, "database", "database image")
    if queries is None:
        q_idx = np.arange(gt.num_queries, dtype=np.int64)
    else:
        q_idx = _selection(queries, gt.qimlist, "queries", "query")
    position = np.full(gt.num_database, -1, dtype=np.int64)
    position[db_idx] = np.arange(db_idx.size)
    entries = []
    for q in q_idx:
        old = gt.gnd[q]
        new: dict[str, np.ndarray | None] = {}
        for key in _KEYS:
            mapped = position[old[key]]
            new[key] = mapped[mapped >= 0]
        new["bbx"] = None if old["bbx"] is None else old["bbx"].copy()
        entries.append(new)
    empty = [i for i, e in enumerate(entries) if not _has_positive(e)]
    if len(empty) == len(entries):
        raise ValueError(
            f"the subset of {db_idx.size} database images leaves none of the "
            f"{len(entries)} selected queries a positive (easy or hard image)"
        )
    if empty and empty_queries == "raise":
        shown = ", ".join(f"{int(q_idx[i])} ({str(gt.qimlist[q_idx[i]])!r})" for i in empty[:5])
        raise ValueError(
            f"{len(empty)} queries have no positive left in the subset: {shown}"
            + (", ..." if len(empty) > 5 else "")
            + "; pass empty_queries='keep' or 'drop'"
        )
    if empty and empty_queries == "drop":
        keep = np.setdiff1d(np.arange(len(entries)), empty)
        entries = [entries[i] for i in keep]
        q_idx = q_idx[keep]
    result = RevisitopGroundTruth(
        imlist=gt.imlist[db_idx], qimlist=gt.qimlist[q_idx], gnd=entries, name=gt.name
    )
    if return_indices:
        return result, db_idx, q_idx
    return result


# --------------------------------------------------------------------------- writing
_GND_FORMAT = "graphrerank.revisitop_gnd"
_GND_VERSION = 1
#: Pickle protocol of :func:`write_revisitop_pickle`: readable by Python 2.3+ and 3.
_PICKLE_PROTOCOL = 2
#: Opcodes that build objects other than plain containers; never in our pickles.
_OBJECT_OPCODES = frozenset(
    {
        "GLOBAL",
        "STACK_GLOBAL",
        "REDUCE",
        "BUILD",
        "INST",
        "OBJ",
        "NEWOBJ",
        "NEWOBJ_EX",
        "PERSID",
        "BINPERSID",
        "EXT1",
        "EXT2",
        "EXT4",
    }
)


def save_revisitop_gnd(gt: RevisitopGroundTruth | Mapping[str, Any], path: PathLike) -> Path:
    """Write a ground truth to a pickle-free ``.npz`` file that :func:`load_revisitop_gnd` reads.

    The file holds numpy arrays only (names as unicode arrays, each index list kind
    concatenated with its offsets per query, boxes with a has-box mask) and JSON metadata
    (format, version, name); it is written to a temporary file, flushed and renamed over
    ``path`` (a crash leaves the old file or the new one) and carries a SHA-256 checksum of
    the arrays. Reading it back gives an equal ground truth (``==``), name included.

    Args:
        gt: a ground truth, or the revisitop dict of a ``gnd_*.pkl`` file.
        path: the file; ``.npz`` is appended when it has another suffix. A ``.pkl`` suffix is
            refused (see :func:`write_revisitop_pickle`).

    Returns:
        The path written.

    Raises:
        TypeError: ``gt`` is not a ground truth.
        ValueError: a malformed ground truth, or a ``.pkl`` path.

    Example:
        >>> import tempfile, pathlib
        >>> from graphrerank.datasets import gnd_from_labels, load_revisitop_gnd, save_revisitop_gnd
        >>> gt = gnd_from_labels([0, 1, 1, 0], [1, 0], name="mine", bbx=[None, [0, 0, 5, 5]])
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_revisitop_gnd(gt, pathlib.Path(tmp) / "gnd_mine.npz")
        ...     back = load_revisitop_gnd(path)
        >>> back == gt, back.name, back.gnd[1]["bbx"]
        (True, 'mine', array([0., 0., 5., 5.]))
    """
    gt = _checked_gt(gt)
    path = check_path(path)
    if path.suffix.lower() == ".pkl":
        raise ValueError(
            f"path {str(path)!r} ends in .pkl, but save_revisitop_gnd writes the pickle-free "
            ".npz format; use write_revisitop_pickle for the revisitop pickle layout"
        )
    arrays: dict[str, np.ndarray] = {
        "imlist": np.asarray(gt.imlist.tolist(), dtype=str),
        "qimlist": np.asarray(gt.qimlist.tolist(), dtype=str),
    }
    for key in _KEYS:
        parts = [np.asarray(e[key], dtype=np.int64) for e in gt.gnd]
        sizes = np.asarray([p.size for p in parts], dtype=np.int64)
        arrays[key] = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        arrays[f"{key}_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    arrays["has_bbx"] = np.asarray([e["bbx"] is not None for e in gt.gnd], dtype=bool)
    arrays["bbx"] = np.asarray(
        [np.zeros(4) if e["bbx"] is None else e["bbx"] for e in gt.gnd], dtype=np.float64
    ).reshape(-1, 4)
    meta = {
        "format": _GND_FORMAT,
        "version": _GND_VERSION,
        "graphrerank": __version__,
        "name": gt.name,
        "num_database": gt.num_database,
        "num_queries": gt.num_queries,
    }
    return save_arrays(path, arrays, meta)


def _load_gnd_npz(path: Path) -> RevisitopGroundTruth:
    where = path_label(path)
    try:
        arrays, meta = load_arrays(path, format=_GND_FORMAT, version=_GND_VERSION)
    except (CorruptFileError, FileNotFoundError, MemoryError):
        raise
    except Exception as err:  # whatever else a torn archive raises
        raise CorruptFileError(
            f"{where} is not a readable ground-truth file (truncated or corrupt?): "
            f"{type(err).__name__}: {err}"
        ) from None

    def array(key: str, kinds: str, ndim: int) -> np.ndarray:
        a = arrays.get(key)
        if a is None or a.dtype.kind not in kinds or a.ndim != ndim:
            raise CorruptFileError(f"{where} lacks a valid {key!r} array")
        return a

    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise CorruptFileError(f"{where} has no valid benchmark name in its metadata")
    imlist, qimlist = array("imlist", "U", 1), array("qimlist", "U", 1)
    q = qimlist.shape[0]
    if meta.get("num_database") != imlist.shape[0] or meta.get("num_queries") != q:
        raise CorruptFileError(f"{where}: the image counts do not match the metadata")
    has_bbx, bbx = array("has_bbx", "b", 1), array("bbx", "f", 2)
    if has_bbx.shape != (q,) or bbx.shape != (q, 4):
        raise CorruptFileError(f"{where}: the boxes do not match the {q} queries")
    gnd: list[dict[str, Any]] = [{} for _ in range(q)]
    for key in _KEYS:
        flat, offsets = array(key, "iu", 1), array(f"{key}_offsets", "iu", 1)
        if (
            offsets.shape != (q + 1,)
            or offsets[0] != 0
            or offsets[-1] != flat.shape[0]
            or (np.diff(offsets) < 0).any()
        ):
            raise CorruptFileError(f"{where}: the {key!r} offsets are inconsistent")
        for i in range(q):
            gnd[i][key] = flat[offsets[i] : offsets[i + 1]]
    for i in range(q):
        gnd[i]["bbx"] = bbx[i] if has_bbx[i] else None
    try:
        return _ground_truth({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, where, name)
    except ValueError as err:
        raise CorruptFileError(f"{err} (an inconsistent ground-truth file)") from None


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_revisitop_pickle(gt: RevisitopGroundTruth | Mapping[str, Any], path: PathLike) -> Path:
    """Write a ground truth in the original ``gnd_*.pkl`` layout, for the revisitop scripts.

    For the official revisitop / cirtorch evaluation code, which reads ``gnd_NAME.pkl`` with
    ``pickle.load``. Prefer :func:`save_revisitop_gnd` for everything else: graphrerank never
    needs pickle for its own files.

    The file is a pickle (protocol 2, readable by Python 2 and 3) of
    :meth:`RevisitopGroundTruth.to_dict`: a dict of plain lists of ``str``, ``int`` and
    ``float`` only (no numpy arrays), with 0-based indices, ``"bbx"`` left out for a query
    without a box (the official scripts crop every query by its box, so give boxes there).
    The bytes are checked to hold no opcode that imports or builds an object (no global at
    all), and written atomically (temporary file, then rename). :func:`load_revisitop_gnd`
    reads it back equal, the name coming from the file name ``gnd_NAME.pkl``.

    Args:
        gt: a ground truth, or the revisitop dict of a ``gnd_*.pkl`` file.
        path: the file; it must end in ``.pkl``.

    Returns:
        The path written.

    Raises:
        TypeError: ``gt`` is not a ground truth.
        ValueError: a malformed ground truth, or a path not ending in ``.pkl``.

    Example:
        >>> import pickle, tempfile, pathlib
        >>> from graphrerank.datasets import gnd_from_status, load_revisitop_gnd
        >>> from graphrerank.datasets import write_revisitop_pickle
        >>> gt = gnd_from_status([[1, 0, 2]], bbx=[[0, 0, 9, 9]], name="toy")
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = write_revisitop_pickle(gt, pathlib.Path(tmp) / "gnd_toy.pkl")
        ...     plain = pickle.loads(path.read_bytes())  # what the official scripts see
        ...     back = load_revisitop_gnd(path)
        >>> plain["gnd"]
        [{'easy': [0], 'hard': [2], 'junk': [], 'bbx': [0.0, 0.0, 9.0, 9.0]}]
        >>> back == gt
        True
    """
    gt = _checked_gt(gt)
    path = check_path(path)
    if path.suffix != ".pkl":
        raise ValueError(
            f"path {str(path)!r} must end in .pkl (the revisitop scripts read gnd_NAME.pkl); "
            "for graphrerank's own pickle-free format use save_revisitop_gnd"
        )
    data = pickle.dumps(gt.to_dict(), protocol=_PICKLE_PROTOCOL)
    used = {op.name for op, _, _ in pickletools.genops(data)} & _OBJECT_OPCODES
    if used:  # cannot happen for plain lists and dicts; a guard for future edits
        raise ValueError(f"refusing to write a pickle with object opcodes {sorted(used)}")
    _atomic_write(path, data)
    return path


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
        f"{path_label(path)}: unsupported descriptor file type {path.suffix!r}; use .npy, .npz "
        "or .mat"
    )


def _pick(arrays: dict[str, Any], key: str | None, path: Path, kind: str) -> tuple[Any, str]:
    where = path_label(path)
    if kind == "npy":
        if key is not None:
            raise ValueError(f"key={key!r} was given, but {where} is a single .npy array")
        return arrays[""], where
    if key is None:
        if len(arrays) != 1:
            raise ValueError(
                f"{where} holds {len(arrays)} arrays {sorted(arrays)}; pass key= to choose one"
            )
        key = next(iter(arrays))
    elif key not in arrays:
        raise ValueError(f"key={key!r}: {where} has no such array; it holds {sorted(arrays)}")
    return arrays[key], f"{key!r} in {where}"


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
        TypeError: ``key`` is neither a str nor ``None``, ``path`` not a path.
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported suffix, unreadable or v7.3 file (a ``.npy`` / ``.npz`` one is
            a :class:`CorruptFileError`), a missing or ambiguous ``key``, or an array that is
            not 2-D, not real numeric, empty or not finite; the message names the argument
            (``path='...'``, ``key='...'``). A plain ``.npy`` or ``.mat`` file has no checksum:
            damage inside its data is read as it is.

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
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be the name of an array (str) or None, got {key!r}")
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
        self.root = check_path(root, "root")

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
        arrays = read_mat(existing_file(path, "descriptor file", "features"), "features")
        where = path_label(path, "features")
        lacking = [k for k in ("X", "Q") if k not in arrays]
        if lacking:
            raise ValueError(
                f"{where} lacks the variable(s) {lacking}; expected X (D, N) database "
                f"and Q (D, Q) query descriptors, found {sorted(arrays)}"
            )
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
        self.root = check_path(root, "root")

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
