"""Atomic, pickle-free storage of arrays plus JSON metadata in one ``.npz`` file, and the
size-checked readers of untrusted ``.npy`` / ``.npz`` files.

Every file read is treated as untrusted: a header is parsed only up to
:data:`MAX_HEADER_BYTES`, the size an array header declares is checked against the bytes the
file holds *before* anything is allocated, a compressed member may not claim more than
deflate can expand to, each member's local zip header must agree with the central
directory, and every failure is a :class:`CorruptFileError` naming the argument and the file
(``path='/data/x.npz' is not a .npz archive ...``; the readers take the argument's name as
``name=``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import secrets
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "MAX_HEADER_BYTES",
    "CorruptFileError",
    "atomic_write",
    "check_path",
    "load_arrays",
    "path_label",
    "read_format",
    "read_npy_file",
    "read_npz_file",
    "save_arrays",
]

_META_KEY = "__graphrerank_meta__"

#: Largest ``.npy`` header read (numpy's own limit): a longer one is refused unparsed.
MAX_HEADER_BYTES = 10_000

# deflate expands at most about 1032:1; a member claiming more is refused before reading.
_DEFLATE_RATIO = 1100
_NPY_MAGIC = b"\x93NUMPY"


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


def check_path(path: Any, name: str = "path") -> Path:
    """``path`` as a :class:`~pathlib.Path`, or a ``TypeError`` naming the argument when it is
    not a ``str`` / ``os.PathLike`` of text (``None``, a number, ``bytes``), a ``ValueError``
    when it is empty or holds a NUL character.

    Example:
        >>> check_path("a/b.npz")
        PosixPath('a/b.npz')
        >>> check_path(None)
        Traceback (most recent call last):
        ...
        TypeError: path must be a file path (str or os.PathLike), got NoneType None
    """
    if not isinstance(path, (str, os.PathLike)):
        shown = repr(path)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise TypeError(
            f"{name} must be a file path (str or os.PathLike), got {type(path).__name__} {shown}"
        )
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError(
            f"{name} must be a text path (str or os.PathLike of str), got {type(p).__name__}; "
            "decode it, e.g. os.fsdecode(path)"
        )
    if not p:
        raise ValueError(f"{name} is an empty path")
    if "\x00" in p:
        raise ValueError(f"{name} contains a NUL character: {p!r}")
    return Path(p)


def save_arrays(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> Path:
    """Write ``arrays`` and ``meta`` to ``path`` atomically.

    The file is first written to a temporary file in the same folder, flushed to disk, then
    renamed over ``path``: a crash leaves either the old file or the new one, never a torn one.
    A SHA-256 digest of the arrays is stored in the metadata and checked by :func:`load_arrays`.

    Raises:
        TypeError: ``path`` is not a text path, or an array is not a numeric numpy array.
    """
    path = check_path(path)
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


#: Age after which a temporary file of an interrupted save is removed even when the process
#: named in it may still run (its id reused; another machine on a shared folder).
STALE_AFTER_S = 24 * 3600
# Temporary files of atomic_write: ".{name}.{pid}-{random}.tmp" (and, from earlier versions,
# mkstemp's ".{name}.{8 random characters}.tmp", without a process id).
_TMP = re.compile(r"\.(?P<pid>\d+)-[0-9a-f]{16}\.tmp")
_OLD_TMP = re.compile(r"\.[a-z0-9_]{8}\.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's), or cannot tell: treat as running
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files that interrupted saves to ``path`` left next to it: ours by
    name (``.{name}.{pid}-{random}.tmp``) whose process no longer runs, or older than
    :data:`STALE_AFTER_S`. A save in progress (its process alive, its file recent) is kept."""
    prefix = f".{path.name}"
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    now = time.time()
    for e in entries:
        if not e.name.startswith(prefix):
            continue
        rest = e.name[len(prefix) :]
        new, old = _TMP.fullmatch(rest), _OLD_TMP.fullmatch(rest)
        if new is None and old is None:
            continue
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            age = now - e.stat(follow_symlinks=False).st_mtime
            if age > STALE_AFTER_S or (new is not None and not _pid_alive(int(new["pid"]))):
                os.unlink(e.path)
        except OSError:
            continue  # gone already, or not ours to remove


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file atomically: ``write(f)`` fills a temporary file in the same folder, which
    is flushed to disk and renamed over ``path``; a crash leaves the old file or the new one,
    never a torn one, and the temporary file is removed on any error. Temporary files that
    killed saves to the same path left behind (``.{name}.{pid}-{random}.tmp`` of a process
    that no longer runs) are removed first."""
    path = check_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
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


# --------------------------------------------------------------------------- safe reading
def path_label(path: str | os.PathLike, name: str = "path") -> str:
    """How a message names a file argument: ``name='/the/file'``, so that it names both the
    argument and the file.

    Example:
        >>> path_label("/data/x.npz")
        "path='/data/x.npz'"
        >>> path_label("q.npy", "queries")
        "queries='q.npy'"
    """
    return f"{name}={os.fspath(path)!r}"


def _read_header(fp: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """The ``(shape, fortran_order, dtype, header_bytes)`` of the ``.npy`` stream at ``fp``;
    any damage is a :class:`CorruptFileError`."""
    fmt = np.lib.format
    head = fp.read(8)
    if len(head) < 8 or head[:6] != _NPY_MAGIC:
        raise CorruptFileError(f"{where} is not a .npy file (it lacks the numpy header)")
    major, minor = head[6], head[7]
    if (major, minor) not in ((1, 0), (2, 0), (3, 0)):
        raise CorruptFileError(f"{where} has an unknown .npy format version {major}.{minor}")
    size_bytes = 2 if major == 1 else 4
    raw = fp.read(size_bytes)
    if len(raw) < size_bytes:
        raise CorruptFileError(f"{where} is truncated inside its .npy header")
    hlen = int.from_bytes(raw, "little")
    if hlen > MAX_HEADER_BYTES:
        raise CorruptFileError(
            f"{where} declares a .npy header of {hlen} bytes; at most {MAX_HEADER_BYTES} are read"
        )
    text = fp.read(hlen)
    if len(text) < hlen:
        raise CorruptFileError(f"{where} is truncated inside its .npy header")
    try:
        stream = io.BytesIO(head + raw + text)
        fmt.read_magic(stream)
        read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
        shape, fortran, dtype = read(stream, max_header_size=MAX_HEADER_BYTES)
    except (Exception, MemoryError, RecursionError) as err:  # a parse of <= 10 kB of text
        raise CorruptFileError(
            f"{where} has a damaged .npy header: {type(err).__name__}: {err}"
        ) from None
    if dtype.hasobject:
        raise CorruptFileError(
            f"{where} holds an array of Python objects, which needs pickle to read; "
            "graphrerank never unpickles data files: save numeric arrays instead"
        )
    if any(int(n) < 0 for n in shape):
        raise CorruptFileError(f"{where} declares a negative array shape {shape}")
    return tuple(int(n) for n in shape), bool(fortran), dtype, 8 + size_bytes + hlen


def _read_array(fp: BinaryIO, where: str, available: int) -> np.ndarray:
    """The array of the ``.npy`` stream ``fp``, of which ``available`` bytes remain: the data
    size the header declares is checked against them before the array is allocated."""
    shape, fortran, dtype, used = _read_header(fp, where)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > available - used:
        raise CorruptFileError(
            f"{where} declares an array of shape {shape} and dtype {dtype} ({nbytes} bytes), "
            f"but holds only {max(available - used, 0)} bytes of data (truncated or crafted)"
        )
    buf = bytearray(nbytes)
    got = fp.readinto(buf) if nbytes else 0
    while got < nbytes:  # a zip member may return short reads
        more = fp.readinto(memoryview(buf)[got:])
        if not more:
            raise CorruptFileError(f"{where} is truncated: {got} of {nbytes} data bytes")
        got += more
    try:
        if dtype.itemsize == 0:  # a zero-width dtype: nothing in the file bounds the shape
            raise ValueError(f"zero-width dtype {dtype}")
        a = np.frombuffer(buf, dtype=dtype)
        return a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
    except (ValueError, TypeError, MemoryError) as err:
        raise CorruptFileError(f"{where} holds an unreadable array: {err}") from None


def read_npy_file(path: str | os.PathLike, *, name: str = "path") -> np.ndarray:
    """Read a ``.npy`` file without pickle, its header and size checked first; ``name`` is the
    caller's argument, named in every message (``path='/x/y.npy' is not a .npy file ...``).

    Raises:
        TypeError: ``path`` is not a text path.
        FileNotFoundError: there is no file at ``path``.
        CorruptFileError: the file is not a ``.npy`` array, is truncated, holds Python
            objects, or its header is damaged or declares more data than the file holds.
    """
    path = check_path(path, name)
    where = path_label(path, name)
    try:
        with open(path, "rb") as f:
            return _read_array(f, where, os.fstat(f.fileno()).st_size)
    except (CorruptFileError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except OSError as err:
        raise CorruptFileError(f"{where} could not be read: {err}") from None


# The fields of a zip local file header (APPNOTE 4.3.7) that repeat the central directory's.
_LOCAL_HEADER = struct.Struct("<4s2sHHHHIIIHH")
_LOCAL_MAGIC = b"PK\x03\x04"
_DATA_DESCRIPTOR = 0x08  # flag bit 3: CRC and sizes follow the data, zero in the header
_ZIP64_SIZE = 0xFFFFFFFF


def _check_local_header(fp: BinaryIO, info: zipfile.ZipInfo, at: str) -> None:
    """Compare a member's local header with its central directory entry. ``zipfile`` reads
    the data by the central directory and ignores most of the local copy, so damage there
    (a flipped flag or compression byte) would otherwise pass unseen: the two copies of the
    flags, the compression method, the CRC-32 and the sizes must agree (CRC and sizes unless
    the member uses a data descriptor; sizes unless the header defers them to zip64). The
    time stamps are not compared: damage there changes nothing that is read."""
    fp.seek(info.header_offset)
    raw = fp.read(_LOCAL_HEADER.size)
    if len(raw) < _LOCAL_HEADER.size:
        raise CorruptFileError(f"{at} is truncated inside its local zip header")
    magic, _, flags, method, _, _, crc, csize, usize, _, _ = _LOCAL_HEADER.unpack(raw)
    if magic != _LOCAL_MAGIC:
        raise CorruptFileError(f"{at} has no local zip header where the zip directory points")
    bad = []
    if flags != info.flag_bits:
        bad.append("flags")
    if method != info.compress_type:
        bad.append("compression method")
    if not flags & _DATA_DESCRIPTOR:
        if crc != info.CRC:
            bad.append("CRC-32")
        for what, local, cd in (
            ("compressed size", csize, info.compress_size),
            ("size", usize, info.file_size),
        ):
            if local != _ZIP64_SIZE and local != cd:
                bad.append(what)
    if bad:
        raise CorruptFileError(
            f"{at} is damaged: its local zip header disagrees with the zip directory on "
            f"{', '.join(bad)}"
        )


def _member_arrays(
    zf: zipfile.ZipFile, raw: BinaryIO, where: str, size: int, only: str | None = None
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            continue
        key = name[:-4]
        if only is not None and key != only:
            continue
        at = f"{where} (member {name!r})"
        if info.flag_bits & 0x1:
            raise CorruptFileError(f"{at} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            limit = info.compress_size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            limit = _DEFLATE_RATIO * info.compress_size + 1024
        else:
            raise CorruptFileError(
                f"{at} uses zip compression method {info.compress_type}; numpy archives are "
                "stored or deflated"
            )
        if info.compress_size > size or info.file_size > limit:
            raise CorruptFileError(
                f"{at} declares {info.file_size} bytes from {info.compress_size} stored bytes "
                f"in a file of {size} bytes (damaged or crafted)"
            )
        _check_local_header(raw, info, at)
        with zf.open(info) as f:
            out[key] = _read_array(f, at, info.file_size)
            f.read(64)  # reaching the member's end checks its CRC
    return out


def read_npz_file(
    path: str | os.PathLike, *, only: str | None = None, name: str = "path"
) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` archive (``only``: just that one, if present), without
    pickle: the zip directory, each member's declared sizes and each array header are checked
    against the file's size before anything is allocated, each member's local header against
    the central directory, and each member's CRC-32 as it is read. ``name`` is the caller's
    argument, named in every message (``path='/x/y.npz' is not a .npz archive ...``).

    Raises:
        TypeError: ``path`` is not a text path.
        FileNotFoundError: there is no file at ``path``.
        CorruptFileError: the file is not a zip archive, or a member is damaged, truncated,
            crafted to claim more data than it holds, or holds Python objects.
    """
    path = check_path(path, name)
    where = path_label(path, name)
    try:
        size = path.stat().st_size
        with open(path, "rb") as raw:
            if raw.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
                raise CorruptFileError(f"{where} is not a .npz archive (it is not a zip file)")
            with zipfile.ZipFile(path) as zf:
                return _member_arrays(zf, raw, where, size, only)
    except (CorruptFileError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except MemoryError:
        raise  # sizes were checked: a real array larger than the memory
    except Exception as err:  # zipfile, zlib and OS errors on a torn or damaged archive
        raise CorruptFileError(
            f"{where} is not a readable .npz archive (truncated or corrupt?): "
            f"{type(err).__name__}: {err}"
        ) from None


def load_arrays(
    path: str | os.PathLike, *, format: str, version: int, name: str = "path"
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_arrays`, without pickle, and verify it; ``name`` is
    the caller's argument, named in every message (``path='/x/y.npz' failed its checksum``).

    Raises:
        TypeError: ``path`` is not a text path.
        FileNotFoundError: ``path`` does not exist.
        CorruptFileError: the file is not a valid archive, has no or other metadata, was written
            for another format or a newer version, or its arrays fail the checksum.
    """
    path = check_path(path, name)
    where = path_label(path, name)
    if not path.exists():
        raise FileNotFoundError(f"no saved file at {where}")
    if path.is_dir():
        raise CorruptFileError(f"{where} is a folder, not a graphrerank file")
    with open(path, "rb") as f:
        if f.read(6) == _NPY_MAGIC:
            raise CorruptFileError(
                f"{where} holds a single numpy array, not a graphrerank file (an .npz "
                "archive with metadata)"
            )
    arrays = read_npz_file(path, name=name)
    raw = arrays.pop(_META_KEY, None)
    if raw is None:
        raise CorruptFileError(f"{where} has no graphrerank metadata")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CorruptFileError(f"{where} has unreadable metadata: {err}") from None
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{where} has no graphrerank metadata (not a JSON object)")
    if meta.get("format") != format:
        raise CorruptFileError(f"{where} holds a {meta.get('format')!r}, not a {format!r}")
    if not isinstance(meta.get("version"), int) or meta["version"] > version:
        raise CorruptFileError(
            f"{where} was written by format version {meta.get('version')!r}; this "
            f"graphrerank reads versions up to {version}"
        )
    if meta.get("sha256") != _digest(arrays):
        raise CorruptFileError(f"{where} failed its checksum: the file is corrupt")
    return arrays, meta


def read_format(path: str | os.PathLike, *, name: str = "path") -> str | None:
    """The ``format`` a file written by :func:`save_arrays` declares, read from its metadata
    alone (nothing is verified: :func:`load_arrays` does that); ``None`` when there is no
    readable metadata."""
    path = check_path(path, name)
    try:
        raw = read_npz_file(path, only=_META_KEY).get(_META_KEY)
        if raw is None:
            return None
        meta = json.loads(raw.tobytes().decode())
    except (OSError, ValueError, RecursionError):  # unreadable: load_arrays says why
        return None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return fmt if isinstance(fmt, str) else None
