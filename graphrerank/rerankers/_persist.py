"""Saving and loading fitted re-rankers: one safe format for every method and pipeline.

A fitted re-ranker is written as a tree of JSON metadata plus numeric arrays in one ``.npz``
file (:func:`graphrerank._io.save_arrays`: atomic, checksummed, no pickle):

* a node per re-ranker: its class name (only graphrerank's own re-rankers, or the class
  :meth:`~graphrerank.rerankers.Reranker.load` is called on, are ever instantiated), its
  settings, and its fitted state (every attribute ending with ``_``);
* values: plain JSON, tuples, lists and dicts of them, dense tensors and numpy arrays (stored
  as arrays), ``torch.sparse_csr`` tensors (their three index / value arrays), a
  :class:`~graphrerank.graph.KNNIndex` (its vectors, or faiss' own serialisation), and nested
  re-rankers (a pipeline's stages, R-DiP's re-scorer) with their own state;
* a tensor referenced twice (the database and a method's normalised copy of it, a pipeline
  stage's database and the previous stage's output) is stored once and comes back as one
  tensor, so identities the methods rely on survive a round trip;
* the root's database: its shape, dtype and SHA-256 fingerprint always, the array itself
  unless ``include_database=False`` (then :meth:`load` needs it and checks the fingerprint).

Settings that are not plain values (a callable re-scorer or progress callback) are not stored;
:meth:`load` names them and takes them again as keyword arguments.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_features
from .._io import CorruptFileError, check_path, load_arrays, read_format, save_arrays
from .._version import __version__
from ..graph import KNNIndex, ScoreIndex, ScoreMatrix
from ..graph.sparse import csr
from .base import _user_stacklevel

if TYPE_CHECKING:
    from .base import Reranker

__all__ = ["FORMAT", "VERSION", "checked_database", "fingerprint", "load_reranker", "save_reranker"]

FORMAT = "graphrerank.Reranker"
VERSION = 1

#: Placeholder array key of a root database that is not stored in the file.
_DATABASE = "__database__"


def checked_database(database: Any, fp: dict[str, Any], where: str) -> Tensor:
    """``database`` validated and checked against a file's stored shape, dtype and
    fingerprint ``fp`` (``where`` names the file).

    Raises:
        ValueError: another shape or dtype, or another content (fingerprint mismatch).
    """
    db = check_features(database, "database")
    if list(db.shape) != fp.get("shape") or str(db.dtype) != fp.get("dtype"):
        raise ValueError(
            f"database {tuple(db.shape)} {db.dtype} is not the database of {where} "
            f"({tuple(fp.get('shape', ()))} {fp.get('dtype')})"
        )
    if fingerprint(db) != fp.get("sha256"):
        raise ValueError(
            f"database differs from the one {where} was computed from (fingerprint "
            "mismatch); fit the re-ranker on this database instead"
        )
    return db


def fingerprint(x: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (the database a file belongs to)."""
    a = np.ascontiguousarray(x.detach().cpu().numpy())
    h = hashlib.sha256()
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


class _Unsaved(Exception):
    """A value with no stored form (a callable, an arbitrary object)."""


class _Writer:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self._keys: dict[int, str] = {}
        self._objects: dict[int, str] = {}
        self._keep: list[Any] = []  # keeps ids unique while writing

    def _add(self, obj: Any, array: np.ndarray) -> str:
        key = self._keys.get(id(obj))
        if key is None:
            key = f"a{len(self.arrays)}"
            self.arrays[key] = array
            self._keys[id(obj)] = key
            self._keep.append(obj)
        return key

    def alias(self, obj: Any, key: str) -> None:
        self._keys[id(obj)] = key
        self._keep.append(obj)

    def tensor(self, t: Tensor) -> str:
        if t.dtype == torch.bfloat16:
            raise _Unsaved("bfloat16 tensors have no numpy form")
        return self._add(t, t.detach().cpu().numpy())

    def value(self, v: Any) -> Any:
        from .base import Reranker

        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, Tensor):
            if v.layout == torch.sparse_csr:
                return {
                    "__csr__": [
                        self.tensor(v.crow_indices()),
                        self.tensor(v.col_indices()),
                        self.tensor(v.values()),
                    ],
                    "shape": list(v.shape),
                }
            if v.layout != torch.strided:
                raise _Unsaved(f"a tensor of layout {v.layout}")
            return {"__tensor__": self.tensor(v)}
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                raise _Unsaved("an array of Python objects")
            return {"__ndarray__": self._add(v, v)}
        if isinstance(v, ScoreMatrix):  # one object however often referenced
            ref = self._objects.get(id(v))
            if ref is not None:
                return {"__ref__": ref}
            ref = self._objects[id(v)] = f"o{len(self._objects)}"
            self._keep.append(v)
            return {
                "__scores__": v.kind,
                "id": ref,
                "matrix": self.value(v.matrix),
                "query_scores": self.value(v.query_scores),
            }
        if isinstance(v, ScoreIndex):
            return {"__scoreindex__": v.num_items}
        if isinstance(v, KNNIndex):
            arrays, meta = v._state()
            enc = {
                k: self.tensor(a) if isinstance(a, Tensor) else self._add(a, a)
                for k, a in arrays.items()
            }
            return {"__knnindex__": meta, "arrays": enc}
        if isinstance(v, Reranker):
            return {"__reranker__": self.node(v)}
        if isinstance(v, tuple):
            return {"__tuple__": [self.value(x) for x in v]}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return {"__dict__": {k: self.value(x) for k, x in v.items()}}
        raise _Unsaved(type(v).__name__)

    def node(self, r: Reranker) -> dict[str, Any]:
        params, omitted = {}, []
        for name, v in r.get_params().items():
            try:
                params[name] = self.value(v)
            except _Unsaved:
                omitted.append(name)
        out: dict[str, Any] = {"class": type(r).__name__, "params": params, "omitted": omitted}
        if hasattr(r, "database_"):
            state = {}
            for name in r._fitted_attributes():
                if name in r._derived_state:
                    continue
                try:
                    state[name] = self.value(getattr(r, name))
                except _Unsaved as err:
                    raise TypeError(
                        f"{type(r).__name__} cannot be saved: its fitted attribute {name!r} is "
                        f"{err}, which has no stored form"
                    ) from None
            out["state"] = state
        return out


class _Reader:
    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        device: torch.device,
        where: str,
        classes: dict[str, type],
        database: tuple[str, Tensor] | None,
    ) -> None:
        self.arrays, self.device, self.where, self.classes = arrays, device, where, classes
        self._tensors: dict[str, Tensor] = {}
        self._objects: dict[str, Any] = {}
        if database is not None:  # the caller's database stands for the stored one
            self._tensors[database[0]] = database[1]

    def bad(self, what: str) -> CorruptFileError:
        return CorruptFileError(f"{self.where}: {what}")

    def tensor(self, key: Any) -> Tensor:
        if not isinstance(key, str):
            raise self.bad(f"invalid array reference {key!r}")
        t = self._tensors.get(key)
        if t is None:
            if key == _DATABASE:
                raise self.bad("no database stored: pass the database to load()")
            a = self.arrays.get(key)
            if a is None:
                raise self.bad(f"array {key!r} is missing")
            t = torch.from_numpy(a).to(self.device)
            self._tensors[key] = t
        return t

    def value(self, j: Any) -> Any:
        if j is None or isinstance(j, (bool, int, float, str)):
            return j
        if isinstance(j, list):
            return [self.value(x) for x in j]
        if not isinstance(j, dict):
            raise self.bad(f"unreadable value {j!r}")
        if "__tensor__" in j:
            return self.tensor(j["__tensor__"])
        if "__csr__" in j:
            try:
                crow, col, val = (self.tensor(k) for k in j["__csr__"])
                shape = tuple(int(s) for s in j["shape"])
            except (TypeError, ValueError) as err:
                raise self.bad(f"invalid sparse matrix: {err}") from None
            n = shape[0]
            if (
                len(shape) != 2
                or crow.shape != (n + 1,)
                or col.shape != val.shape
                or int(crow[-1]) != col.numel()
                or bool((crow.diff() < 0).any())
                or (col.numel() and (int(col.min()) < 0 or int(col.max()) >= shape[1]))
            ):
                raise self.bad("a stored sparse matrix is inconsistent")
            return csr(crow, col, val, shape)
        if "__ndarray__" in j:
            a = self.arrays.get(j["__ndarray__"])
            if a is None:
                raise self.bad(f"array {j['__ndarray__']!r} is missing")
            return a
        if "__ref__" in j:
            obj = self._objects.get(j["__ref__"])
            if obj is None:
                raise self.bad(f"a reference to an unknown object {j['__ref__']!r}")
            return obj
        if "__scores__" in j:
            out = object.__new__(ScoreMatrix)
            out.kind, out.matrix = j["__scores__"], self.value(j.get("matrix"))
            out.query_scores = self.value(j.get("query_scores"))
            if out.kind not in ("similarity", "distance") or not isinstance(out.matrix, Tensor):
                raise self.bad("a stored score matrix is inconsistent")
            self._objects[str(j.get("id"))] = out
            return out
        if "__scoreindex__" in j:
            return ScoreIndex(int(j["__scoreindex__"]))
        if "__knnindex__" in j:
            refs = j.get("arrays", {})
            arrays = {}
            for name, key in refs.items():
                arrays[name] = self.tensor(key) if name == "vectors" else self.arrays.get(key)
            return KNNIndex._from_state(arrays, j["__knnindex__"], self.device, self.where)
        if "__reranker__" in j:
            return self.node(j["__reranker__"])
        if "__tuple__" in j:
            return tuple(self.value(x) for x in j["__tuple__"])
        if "__dict__" in j:
            return {k: self.value(x) for k, x in j["__dict__"].items()}
        raise self.bad(f"unreadable value {j!r}")

    def node(self, n: Any, settings: dict[str, Any] | None = None) -> Reranker:
        try:
            name, params, omitted = n["class"], dict(n["params"]), list(n.get("omitted", []))
        except (KeyError, TypeError) as err:
            raise self.bad(f"invalid metadata: {err}") from None
        cls = self.classes.get(name)
        if cls is None:
            raise self.bad(
                f"holds a {name!r} re-ranker, which is not one of graphrerank's; load it with "
                f"{name}.load(...)"
            )
        params = {k: self.value(v) for k, v in params.items()}
        settings = settings or {}
        missing = [o for o in omitted if o not in settings]
        if missing:
            warnings.warn(
                f"{name} settings {missing} were not stored (they are not plain values) and take "
                "their defaults; pass them to load(...) if the method needs them",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )
        params.update(settings)
        try:
            r = cls(**params)
        except TypeError as err:
            raise self.bad(f"invalid settings: {err}") from None
        r.validate_params()
        state = n.get("state")
        if state is not None:
            if not isinstance(state, dict) or "database_" not in state:
                raise self.bad(f"the fitted state of {name} has no database")
            for attr, v in state.items():
                if not (isinstance(attr, str) and attr.endswith("_")):
                    raise self.bad(f"invalid fitted attribute {attr!r}")
                setattr(r, attr, self.value(v))
            r._after_load()
        return r


def _classes(extra: type) -> dict[str, type]:
    from . import RERANKERS, RERANKERS_WITH_LOCAL, Reranker

    out = {c.__name__: c for c in (*RERANKERS, *RERANKERS_WITH_LOCAL)}
    if extra is not Reranker:
        out[extra.__name__] = extra
    return out


def save_reranker(r: Reranker, path: str | os.PathLike, *, include_database: bool = True) -> Path:
    """Write the fitted re-ranker ``r`` to ``path`` (see the module docstring)."""
    path = check_path(path)
    r._check_fitted()
    w = _Writer()
    db = r.database_
    if isinstance(db, ScoreMatrix):  # scores are stored with the state
        include_database = True
        db = db.matrix if not db.is_sparse else db.matrix.values()
        key = None
    elif include_database:
        key = w.tensor(db)
    else:
        key = _DATABASE
        w.alias(db, key)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "graphrerank": __version__,
        "root": w.node(r),
        "database": {
            "shape": list(db.shape),
            "dtype": str(db.dtype),
            "sha256": fingerprint(db),
            "stored": include_database,
            "key": key,
        },
    }
    return save_arrays(path, w.arrays, meta)


def load_reranker(
    cls: type,
    path: str | os.PathLike,
    database: Any = None,
    *,
    device: str | torch.device | None = None,
    settings: dict[str, Any],
) -> Reranker:
    """A fitted re-ranker from :func:`save_reranker`'s file (see ``Reranker.load``); files of
    the offline-diffusion and learned re-rankers' own formats are read by their loaders."""
    from .base import Reranker

    path = check_path(path)
    fmt = read_format(path) if path.exists() else None
    if fmt is not None and fmt != FORMAT:
        from .learned import FORMAT as LEARNED_FORMAT
        from .learned import LocalDescriptorReranker
        from .offline import LEGACY_FORMAT, load_legacy

        if fmt == LEGACY_FORMAT:
            return load_legacy(cls, path, database, settings)
        if fmt == LEARNED_FORMAT and cls in (Reranker, LocalDescriptorReranker):
            return LocalDescriptorReranker.load(path, device="cpu" if device is None else device)
    arrays, meta = load_arrays(path, format=FORMAT, version=VERSION)
    where = repr(str(path))
    try:
        root, fp = meta["root"], meta["database"]
        stored_class = root["class"]
    except (KeyError, TypeError) as err:
        raise CorruptFileError(f"{where} has invalid metadata: {err}") from None
    classes = _classes(cls)
    if cls is not Reranker:
        target = classes.get(stored_class)
        if target is None or not issubclass(target, cls):
            raise CorruptFileError(
                f"{where} holds a {stored_class!r} result, not a {cls.__name__!r}"
            )
    db = None
    if database is not None:
        db = checked_database(database, fp, where)
        if device is not None and torch.device(device) != db.device:
            raise ValueError(f"device={device!r} but the database is on {db.device}")
        dev = db.device
    else:
        if not fp.get("stored"):
            raise ValueError(
                f"{where} was saved without its database (include_database=False): pass the "
                "database, load(path, database) (graphrerank load --database FILE)"
            )
        dev = torch.device("cpu" if device is None else device)
    key = fp.get("key")
    if key is None:  # fitted on scores: stored with the state
        if database is not None:
            raise ValueError(
                f"{where} holds a re-ranker fitted on a ScoreMatrix (stored in the file); "
                "load it without a database"
            )
        return _Reader(arrays, dev, where, classes, None).node(root, settings)
    if not isinstance(key, str) or (fp.get("stored") and key not in arrays):
        raise CorruptFileError(f"{where}: the stored database is missing")
    reader = _Reader(arrays, dev, where, classes, None if db is None else (key, db))
    return reader.node(root, settings)
