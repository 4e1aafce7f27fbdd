r"""A chunked on-disk store of the offline diffusion matrix :math:`\mathbf{C}`.

The offline step of offline diffusion (:func:`~graphrerank.diffusion.offline_diffusion`) gives
one row of :math:`\mathbf{C}` per database item, at most :math:`T` entries each. At a million
items that is :math:`10^9` entries; this store keeps them on disk in shards of consecutive
rows, so that a precompute can be split into independent chunks (one process, or the tasks of
a Dask cluster, :mod:`graphrerank.diffusion.distributed`), resumed after a crash, and searched
by a later process without loading the matrix.

Layout of a store folder:

* ``manifest.json``: format, shape, chunking, the settings and data fingerprint the rows were
  computed with, and for every finished shard its file name and SHA-256 digest;
* ``c-00000.npy`` ...: the rows ``[i * chunk_rows, (i + 1) * chunk_rows)`` of
  :math:`\mathbf{C}` as a padded :math:`(\text{rows}, T)` array of ``(col, val)`` records
  (``col = -1`` for padding, columns ascending), plain ``.npy`` files that numpy opens
  memory-mapped;
* ``lists-00000.npy`` / ``cand-00000.npy``: the truncation lists and graph candidates of the
  same rows (the kNN step's output, kept so that a resumed run does not search again).

Every shard is written to a temporary file, flushed to disk and renamed (a killed writer never
leaves a torn shard), and the manifest is rewritten the same way after each shard. A shard whose
digest does not match (bit rot, a file replaced by hand) is found by :meth:`OfflineStore.missing`
and computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import CorruptFileError, atomic_write
from ..graph.sparse import csr
from ..typing import KNNResult

__all__ = ["FORMAT", "KINDS", "OfflineStore", "array_fingerprint"]

#: ``format`` of the manifest.
FORMAT = "graphrerank.OfflineStore"
_VERSION = 1
_MANIFEST = "manifest.json"
#: Shard kinds: rows of C, truncation lists, graph candidates.
KINDS = ("c", "lists", "cand")
_HASH_BLOCK = 2**24


def array_fingerprint(x: Tensor | np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (identifies the data a store was made of).

    Example:
        >>> array_fingerprint(torch.zeros(2, 3)) == array_fingerprint(np.zeros((2, 3), "float32"))
        True
    """
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    flat = a.reshape(-1).view(np.uint8) if a.size else np.empty(0, np.uint8)
    for s in range(0, flat.size, _HASH_BLOCK):
        h.update(memoryview(flat[s : s + _HASH_BLOCK]))
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


class _Hashing:
    """A write-only file wrapper that hashes what passes through (``np.save`` writes to it)."""

    def __init__(self, f: Any) -> None:
        self.f, self.h = f, hashlib.sha256()

    def write(self, b: bytes) -> int:
        self.h.update(b)
        return self.f.write(b)


def c_dtype(index_dtype: np.dtype | str, value_dtype: np.dtype | str) -> np.dtype:
    """The record type of a ``c`` shard: ``(col, val)``."""
    return np.dtype([("col", np.dtype(index_dtype)), ("val", np.dtype(value_dtype))])


class OfflineStore:
    r"""The offline matrix :math:`\mathbf{C}` in shards of rows on disk (see the module text).

    Create (or resume) a store with :meth:`create`, open a finished one with :meth:`open`.
    Shards are written by :meth:`write_shard` (safe to call from worker processes: it touches
    only the shard file) and recorded by the one process that owns the manifest
    (:meth:`record`).

    Args:
        path: The store folder.
        manifest: Its parsed ``manifest.json``.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> st = OfflineStore.create(d, n=3, truncation=2, chunk_rows=2, settings={"kd": 2})
        >>> st.missing("c")
        [0, 1]
        >>> rec = np.zeros((2, 2), st.record_dtype)
        >>> rec["col"], rec["val"] = [[0, 1], [1, -1]], [[1.0, 0.5], [2.0, 0.0]]
        >>> st.record("c", 0, st.write_shard("c", 0, rec))
        >>> rec = np.zeros((1, 2), st.record_dtype)
        >>> rec["col"], rec["val"] = [[2, -1]], [[3.0, 0.0]]
        >>> st.record("c", 1, st.write_shard("c", 1, rec))
        >>> OfflineStore.open(d).to_csr().to_dense()
        tensor([[1.0000, 0.5000, 0.0000],
                [0.0000, 2.0000, 0.0000],
                [0.0000, 0.0000, 3.0000]])
    """

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.n = int(manifest["n"])
        self.truncation = int(manifest["truncation"])
        self.chunk_rows = int(manifest["chunk_rows"])
        self.index_dtype = np.dtype(manifest["index_dtype"])
        self.value_dtype = np.dtype(manifest["value_dtype"])
        self.record_dtype = c_dtype(self.index_dtype, self.value_dtype)
        self._maps: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        done = len(self.manifest["shards"]["c"])
        return (
            f"OfflineStore({str(self.path)!r}, n={self.n}, truncation={self.truncation}, "
            f"shards={done}/{self.n_chunks})"
        )

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int]:
        """``(N, N)``."""
        return (self.n, self.n)

    @property
    def n_chunks(self) -> int:
        """Number of row shards."""
        return -(-self.n // self.chunk_rows) if self.n else 0

    def bounds(self, i: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of shard ``i``."""
        s = i * self.chunk_rows
        return s, min(self.n, s + self.chunk_rows)

    @property
    def settings(self) -> dict[str, Any]:
        """The settings (and data fingerprint) the store was created with."""
        return dict(self.manifest["settings"])

    @property
    def complete(self) -> bool:
        """Whether every row shard of :math:`\\mathbf{C}` is recorded."""
        return len(self.manifest["shards"]["c"]) == self.n_chunks

    def shard_path(self, kind: str, i: int) -> Path:
        """The file of shard ``i`` of ``kind`` (``"c"``, ``"lists"`` or ``"cand"``)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return self.path / f"{kind}-{i:05d}.npy"

    # ------------------------------------------------------------------ creating
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        n: int,
        truncation: int,
        chunk_rows: int,
        settings: Mapping[str, Any],
        value_dtype: str = "float32",
    ) -> OfflineStore:
        """A new store at ``path``, or the one already there when it was created with the
        same shape, chunking and ``settings`` (a resumed run).

        Leftover temporary files of killed writers are removed.

        Raises:
            ValueError: ``path`` holds a store of other data or settings, or is a file.
            CorruptFileError: ``path`` holds an unreadable manifest.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"store must be a folder, but {str(path)!r} is a file")
        index_dtype = "int32" if n < 2**31 - 1 else "int64"
        settings = json.loads(json.dumps(dict(settings)))  # JSON-normalised
        want = {
            "format": FORMAT,
            "version": _VERSION,
            "n": int(n),
            "truncation": int(truncation),
            "chunk_rows": int(chunk_rows),
            "index_dtype": index_dtype,
            "value_dtype": str(np.dtype(value_dtype)),
            "settings": settings,
        }
        if (path / _MANIFEST).exists():
            store = cls.open(path, complete=False)
            have = {k: store.manifest.get(k) for k in want}
            if have != want:
                diff = sorted(k for k in want if have[k] != want[k])
                if diff == ["settings"]:
                    keys = sorted(
                        k
                        for k in set(have["settings"]) | set(settings)
                        if have["settings"].get(k) != settings.get(k)
                    )
                    diff = [f"settings {', '.join(keys)}"]
                raise ValueError(
                    f"the store at {str(path)!r} was made with other {', '.join(diff)}: "
                    "remove it or pass another store path"
                )
            store._remove_temporaries()
            return store
        path.mkdir(parents=True, exist_ok=True)
        manifest = dict(want, shards={k: {} for k in KINDS})
        store = cls(path, manifest)
        store._remove_temporaries()
        store._write_manifest()
        return store

    def _remove_temporaries(self) -> None:
        for p in self.path.glob(".*.tmp"):
            try:
                p.unlink()
            except FileNotFoundError:  # pragma: no cover - removed concurrently
                pass

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=1, sort_keys=True).encode()
        atomic_write(self.path / _MANIFEST, lambda f: f.write(text))

    def write_shard(self, kind: str, i: int, array: np.ndarray) -> str:
        """Write shard ``i`` of ``kind`` atomically and return its SHA-256 (not yet recorded:
        see :meth:`record`)."""
        s, e = self.bounds(i)
        if array.shape[0] != e - s:
            raise ValueError(f"shard {i} holds rows [{s}, {e}), got {array.shape[0]} rows")
        out: list[str] = []

        def write(f: Any) -> None:
            w = _Hashing(f)
            np.save(w, np.ascontiguousarray(array), allow_pickle=False)
            out.append(w.h.hexdigest())

        atomic_write(self.shard_path(kind, i), write)
        return out[0]

    def record(self, kind: str, i: int, sha256: str) -> None:
        """Record shard ``i`` of ``kind`` with its digest in the manifest (atomically)."""
        self.manifest["shards"][kind][str(i)] = {
            "file": self.shard_path(kind, i).name,
            "sha256": sha256,
        }
        self._maps.pop(i, None)
        self._write_manifest()

    def check_shard(self, kind: str, i: int) -> bool:
        """Whether shard ``i`` of ``kind`` is recorded, present and matches its digest."""
        entry = self.manifest["shards"][kind].get(str(i))
        p = self.shard_path(kind, i)
        return entry is not None and p.is_file() and _file_sha256(p) == entry["sha256"]

    def missing(self, kind: str, *, verify: bool = True) -> list[int]:
        """Shards of ``kind`` still to compute: not recorded, absent, or (``verify``) failing
        their digest (those are dropped from the manifest)."""
        todo, dropped = [], False
        for i in range(self.n_chunks):
            entry = self.manifest["shards"][kind].get(str(i))
            ok = entry is not None and self.shard_path(kind, i).is_file()
            if ok and verify:
                ok = self.check_shard(kind, i)
            if not ok:
                todo.append(i)
                if entry is not None:
                    del self.manifest["shards"][kind][str(i)]
                    dropped = True
        if dropped:
            self._write_manifest()
        return todo

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(
        cls, path: str | os.PathLike, *, verify: bool = False, complete: bool = True
    ) -> OfflineStore:
        """Open the store at ``path`` (shards are memory-mapped on first use).

        Args:
            path: The store folder.
            verify: Check every shard's digest now (reads the whole store once).
            complete: Require every row shard of :math:`\\mathbf{C}` to be recorded.

        Raises:
            FileNotFoundError: no store at ``path``.
            CorruptFileError: unreadable manifest, a missing or (``verify``) damaged shard,
                or an unfinished store with ``complete=True``.
        """
        path = Path(path)
        mp = path / _MANIFEST
        if not mp.is_file():
            raise FileNotFoundError(f"no offline store at {str(path)!r} (no {_MANIFEST})")
        try:
            manifest = json.loads(mp.read_text())
            if manifest.get("format") != FORMAT:
                raise CorruptFileError(
                    f"{str(path)!r} holds a {manifest.get('format')!r}, not a {FORMAT!r}"
                )
            if not isinstance(manifest.get("version"), int) or manifest["version"] > _VERSION:
                raise CorruptFileError(
                    f"{str(path)!r} was written by store version {manifest.get('version')!r}; "
                    f"this graphrerank reads versions up to {_VERSION}"
                )
            store = cls(path, manifest)
            if set(manifest["shards"]) != set(KINDS):
                raise KeyError("shards")
        except CorruptFileError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CorruptFileError(f"{str(path)!r} has an unreadable manifest: {err!r}") from None
        if complete:
            if not store.complete:
                done = len(manifest["shards"]["c"])
                raise CorruptFileError(
                    f"the store at {str(path)!r} is unfinished ({done} of {store.n_chunks} "
                    "shards): run the precompute again with this store to finish it"
                )
            for i in range(store.n_chunks):
                p = store.shard_path("c", i)
                if not p.is_file() or (verify and not store.check_shard("c", i)):
                    raise CorruptFileError(
                        f"shard {p.name} of the store at {str(path)!r} is missing or damaged: "
                        "run the precompute again with this store to redo it"
                    )
        return store

    def shard(self, i: int) -> np.ndarray:
        """Shard ``i`` of :math:`\\mathbf{C}`, memory-mapped: ``(rows, T)`` ``(col, val)``
        records."""
        m = self._maps.get(i)
        if m is None:
            p = self.shard_path("c", i)
            s, e = self.bounds(i)
            try:
                m = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise CorruptFileError(f"{str(p)!r} is not a readable shard: {err}") from None
            if m.dtype != self.record_dtype or m.shape != (e - s, self.truncation):
                raise CorruptFileError(
                    f"{str(p)!r} holds {m.dtype} {m.shape}, expected {self.record_dtype} "
                    f"{(e - s, self.truncation)}"
                )
            self._maps[i] = m
        return m

    def read_shard(self, kind: str, i: int) -> np.ndarray:
        """Shard ``i`` of ``kind`` (memory-mapped)."""
        if kind == "c":
            return self.shard(i)
        return np.load(self.shard_path(kind, i), mmap_mode="r", allow_pickle=False)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``rows`` of :math:`\\mathbf{C}` in the padded layout: ``(cols, vals)``, each
        ``(len(rows), T)``, ``cols = -1`` for padding. Only those rows are read from disk."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise ValueError(f"rows must be in [0, {self.n - 1}]")
        cols = np.empty((rows.size, self.truncation), self.index_dtype)
        vals = np.empty((rows.size, self.truncation), self.value_dtype)
        shard_of = rows // self.chunk_rows
        order = np.argsort(shard_of, kind="stable")
        sorted_shards = shard_of[order]
        cuts = np.flatnonzero(np.diff(sorted_shards)) + 1
        for part in np.split(order, cuts) if rows.size else []:
            i = int(shard_of[part[0]])
            local = rows[part] - i * self.chunk_rows
            rec = self.shard(i)[local]
            cols[part], vals[part] = rec["col"], rec["val"]
        return cols, vals

    def to_csr(self, device: str | torch.device = "cpu") -> Tensor:
        """The whole :math:`\\mathbf{C}` as an :math:`(N, N)` ``torch.sparse_csr`` tensor
        (loads it: for small stores and tests)."""
        cols, vals = self.gather(np.arange(self.n))
        return _padded_csr(cols, vals, self.n).to(device)

    def scores(self, knn: KNNResult | tuple[Tensor, Tensor], gamma: float) -> Tensor:
        r"""The online step against the store: :math:`\mathbf{f}_q = \sum_j \max(s_{qj},
        0)^\gamma\, \mathbf{C}_{j,:}` over each query's nearest database items, reading only
        those rows (the counterpart of
        :func:`~graphrerank.diffusion.offline_diffusion_scores`).

        Returns:
            :math:`\mathbf{F}`, a :math:`(Q, N)` ``torch.sparse_csr`` tensor on the device of
            the kNN result.
        """
        scores, idx = knn
        q, kq = idx.shape
        w = scores.clamp(min=0).pow(gamma).to(_torch_dtype(self.value_dtype))
        w = w.masked_fill(idx < 0, 0)
        order = idx.argsort(dim=1)
        idx, w = idx.gather(1, order), w.gather(1, order)
        keep = (idx >= 0) & (w != 0)
        rows = idx[keep].cpu().numpy()
        cols, vals = self.gather(rows)
        sub = _padded_csr(cols, vals, self.n).to(idx.device)  # (P, N): the rows read
        p = rows.shape[0]
        itype = sub.crow_indices().dtype
        crow = torch.zeros(q + 1, dtype=itype, device=idx.device)
        crow[1:] = keep.sum(1).cumsum(0)
        Y = csr(crow, torch.arange(p, dtype=itype, device=idx.device), w[keep], (q, p))
        return Y @ sub


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype)).dtype


def _padded_csr(cols: np.ndarray, vals: np.ndarray, n: int) -> Tensor:
    """A CSR tensor of padded rows (``cols = -1`` for padding; columns ascending)."""
    valid = cols >= 0
    itype = torch.int32 if cols.dtype == np.int32 else torch.int64
    crow = torch.zeros(cols.shape[0] + 1, dtype=itype)
    crow[1:] = torch.from_numpy(valid.sum(1)).cumsum(0)
    return csr(
        crow,
        torch.from_numpy(np.ascontiguousarray(cols[valid])),
        torch.from_numpy(np.ascontiguousarray(vals[valid])),
        (cols.shape[0], n),
    )
