"""Private helpers shared by the readers: file checks, pickle-free numpy and MATLAB reading.

Every reader takes the name of the caller's argument (``name="path"`` by default) and names
it with the file in each error: ``path='/data/x.npz' is not a .npz archive ...``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import CorruptFileError, check_path, path_label, read_npy_file, read_npz_file

__all__ = [
    "as_float_matrix",
    "existing_file",
    "int_vector",
    "path_label",
    "read_mat",
    "read_npy",
    "read_npz",
    "str_array",
]

PathLike = str | os.PathLike


def existing_file(path: PathLike, what: str, name: str = "path") -> Path:
    """``Path(path)``, a TypeError naming the argument ``name`` when ``path`` is not a text
    path (``None``, a number, ``bytes``), or a FileNotFoundError naming ``what``, the argument
    and the path."""
    p = check_path(path, name)
    if not p.is_file():
        where = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise FileNotFoundError(f"{what} {path_label(p, name)} {where}")
    return p


def read_npy(path: Path, name: str = "path") -> np.ndarray:
    """Read a ``.npy`` file without pickle; its header and declared size are checked against
    the file before anything is allocated (:func:`graphrerank._io.read_npy_file`).

    Raises:
        CorruptFileError: (a ``ValueError``) the file is not a readable ``.npy`` array, holds
            Python objects, or declares more data than it holds; the message names the
            argument ``name`` and the file.
    """
    return read_npy_file(path, name=name)


def read_npz(path: Path, name: str = "path") -> dict[str, np.ndarray]:
    """Read every array of a ``.npz`` archive without pickle, size-checked as
    :func:`read_npy` (:func:`graphrerank._io.read_npz_file`)."""
    return read_npz_file(path, name=name)


def read_mat(path: Path, name: str = "path") -> dict[str, Any]:
    """The variables of a MATLAB (v4 to v7) ``.mat`` file, without the ``__header__`` entries.

    A plain (uncompressed) ``.mat`` file has no checksum: damage inside its data is read as
    it is. Errors name the argument ``name`` and the file.
    """
    from scipy.io import loadmat

    where = path_label(path, name)
    try:
        raw = loadmat(path)
    except MemoryError:
        raise CorruptFileError(
            f"{where} needs more memory than there is to read (a crafted or corrupt MATLAB file?)"
        ) from None
    except NotImplementedError:
        raise ValueError(
            f"{where} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it "
            "in MATLAB with save(..., '-v7'), or read the arrays with h5py and pass .npy files"
        ) from None
    except Exception as err:  # scipy raises many types on corrupt input
        raise ValueError(
            f"{where} is not a readable MATLAB .mat file (truncated or corrupt?): "
            f"{type(err).__name__}: {err}"
        ) from None
    return {k: v for k, v in raw.items() if not k.startswith("__")}


def as_float_matrix(arr: Any, where: str, *, transpose: bool = False) -> Tensor:
    """Check that ``arr`` is a 2-D real numeric array and return it as a float32 tensor."""
    if isinstance(arr, Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if arr.dtype == object or arr.dtype.kind not in "fiu":
        raise ValueError(f"{where} must hold real numbers, got an array of dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{where} must be a 2-D array, got shape {arr.shape}")
    if transpose:
        arr = arr.T
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{where} is empty: shape {arr.shape}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        rows = np.flatnonzero(~np.isfinite(out).all(axis=1))
        raise ValueError(
            f"{where} contains NaN or infinite values in {rows.size} row(s), first row {rows[0]}"
        )
    return torch.from_numpy(out)


def int_vector(arr: Any, where: str) -> Tensor:
    """A 1-D (or ``(1, n)`` / ``(n, 1)`` MATLAB-style) integer array as an int64 tensor."""
    arr = np.asarray(arr)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{where} must be a vector of integers, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ValueError(f"{where} must hold whole numbers, got non-integral values")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{where} must hold integers, got dtype {arr.dtype}")
    return torch.from_numpy(arr.astype(np.int64))


def str_array(values: Any, where: str) -> np.ndarray:
    """A sequence of names as a 1-D numpy array of ``str`` (bytes are decoded as UTF-8)."""
    if isinstance(values, np.ndarray):
        values = values.reshape(-1).tolist() if values.ndim <= 1 else None
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{where} must be a list of names, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        if not isinstance(v, str):
            raise ValueError(f"{where}[{i}] must be a name (str), got {type(v).__name__}")
        out.append(v)
    return np.asarray(out, dtype=str) if out else np.empty(0, dtype=str)
