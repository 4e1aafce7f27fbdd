"""Atomic, pickle-free storage of arrays plus JSON metadata in one ``.npz`` file."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["CorruptFileError", "atomic_write", "load_arrays", "read_format", "save_arrays"]

_META_KEY = "__graphrerank_meta__"


class CorruptFileError(ValueError):
    """A saved file is unreadable, truncated, of another format or fails its checksum."""


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


def save_arrays(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> Path:
    """Write ``arrays`` and ``meta`` to ``path`` atomically.

    The file is first written to a temporary file in the same folder, flushed to disk, then
    renamed over ``path``: a crash leaves either the old file or the new one, never a torn one.
    A SHA-256 digest of the arrays is stored in the metadata and checked by :func:`load_arrays`.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    for key, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype == object:
            raise TypeError(f"array {key!r} must be a numeric numpy array, got {type(a).__name__}")
    meta = dict(meta, sha256=_digest(arrays))
    payload = dict(arrays)
    payload[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **payload))
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file atomically: ``write(f)`` fills a temporary file in the same folder, which
    is flushed to disk and renamed over ``path``; a crash leaves the old file or the new one,
    never a torn one, and the temporary file is removed on any error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_arrays(
    path: str | os.PathLike, *, format: str, version: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_arrays`, without pickle, and verify it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptFileError: the file is not a valid archive, has no or other metadata, was written
            for another format or a newer version, or its arrays fail the checksum.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no saved file at {str(path)!r}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise CorruptFileError(
                f"{str(path)!r} holds a single numpy array, not a graphrerank file (an .npz "
                "archive with metadata)"
            )
        with z:
            arrays = {k: z[k] for k in z.files}
    except CorruptFileError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # damaged zip or .npy headers fail in many ways inside numpy
        raise CorruptFileError(
            f"{str(path)!r} is not a readable graphrerank file: {type(err).__name__}: {err}"
        ) from None
    raw = arrays.pop(_META_KEY, None)
    if raw is None:
        raise CorruptFileError(f"{str(path)!r} has no graphrerank metadata")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{str(path)!r} has unreadable metadata: {err}") from None
    if meta.get("format") != format:
        raise CorruptFileError(f"{str(path)!r} holds a {meta.get('format')!r}, not a {format!r}")
    if not isinstance(meta.get("version"), int) or meta["version"] > version:
        raise CorruptFileError(
            f"{str(path)!r} was written by format version {meta.get('version')!r}; this "
            f"graphrerank reads versions up to {version}"
        )
    if meta.get("sha256") != _digest(arrays):
        raise CorruptFileError(f"{str(path)!r} failed its checksum: the file is corrupt")
    return arrays, meta


def read_format(path: str | os.PathLike) -> str | None:
    """The ``format`` a file written by :func:`save_arrays` declares, read from its metadata
    alone (nothing is verified: :func:`load_arrays` does that); ``None`` when there is no
    readable metadata."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            if _META_KEY not in z.files:
                return None
            meta = json.loads(z[_META_KEY].tobytes().decode())
    except MemoryError:
        raise
    except Exception:  # unreadable: load_arrays says why
        return None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return fmt if isinstance(fmt, str) else None
