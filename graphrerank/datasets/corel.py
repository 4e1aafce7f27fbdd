"""Corel-1k (Wang) CNN descriptors, global and local, from graphrerank's real-data folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..testing import data_dir
from ._files import as_float_matrix, existing_file, int_vector, path_label, read_npz, str_array
from .base import RetrievalDataset

__all__ = ["LocalDescriptorSet", "load_corel1k", "load_corel1k_local"]

PathLike = str | os.PathLike

_GLOBAL_FILE = "corel1k/corel1k_effnetlite_desc.npz"
_LOCAL_FILE = "corel1k_local/corel1k_local.npz"


def _default(path: PathLike | None, relative: str) -> Path:
    if path is not None:
        return existing_file(path, "Corel-1k file")
    root = data_dir()
    if root is None or not (root / relative).is_file():
        where = "no data folder was found" if root is None else f"it is not in {str(root)!r}"
        raise FileNotFoundError(
            f"the Corel-1k descriptor file {relative!r} was not found ({where}); pass its "
            "path, or set the GRAPHRERANK_DATA environment variable to the folder that holds "
            f"{relative}. graphrerank never downloads anything."
        )
    return root / relative


def _need(arrays: dict[str, np.ndarray], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(
            f"{path_label(path)} lacks the array(s) {missing}; it holds {sorted(arrays)}"
        )


def _labels(arrays: dict[str, np.ndarray], n: int, path: Path) -> Tensor:
    where = path_label(path)
    labels = int_vector(arrays["labels"], f"'labels' in {where}")
    if labels.shape[0] != n:
        raise ValueError(f"{where}: 'labels' has {labels.shape[0]} entries, expected {n}")
    return labels


def load_corel1k(
    path: PathLike | None = None, *, descriptor: str = "desc_lite2_max512_gem3"
) -> RetrievalDataset:
    """Global CNN descriptors of the 1000 Corel-1k images (10 classes of 100), all-vs-all.

    Reads ``corel1k_effnetlite_desc.npz``: EfficientNet-Lite descriptors, stored as
    L2-normalised float16; they are cast to float32 and *not* re-normalised. The class of
    image ``i`` is ``i // 100``.

    Args:
        path: the ``.npz`` file; by default ``corel1k/corel1k_effnetlite_desc.npz`` in
            :func:`graphrerank.testing.data_dir` (the ``GRAPHRERANK_DATA`` folder).
        descriptor: which of the descriptor arrays of the file to read, e.g.
            ``"desc_lite2_max512_gem3"`` (the default), ``"desc_lite2_native_avg"``,
            ``"desc_lite0_max512_gem3"``.

    Returns:
        ``database`` ``(1000, D)`` float32, ``database_labels`` ``(1000,)`` int64,
        ``class_names`` ``(10,)``, ``name="corel1k"``; every image is a query.

    Raises:
        TypeError: ``descriptor`` is not a str, ``path`` not a path.
        FileNotFoundError: no file at ``path``, or no default data folder holding it.
        ValueError: the file is unreadable, lacks ``descriptor`` (the message lists the
            available ones) or has inconsistent arrays; the message names the argument
            (``path='...'``, ``descriptor='...'``).

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from graphrerank.datasets import load_corel1k
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "toy.npz"
        ...     np.savez(path, desc_a=np.eye(4, 8, dtype=np.float16),
        ...              labels=np.array([0, 0, 1, 1]), class_names=np.array(["x", "y"]))
        ...     ds = load_corel1k(path, descriptor="desc_a")
        >>> ds
        RetrievalDataset(name='corel1k', database=4x8 float32, classes=2, queries=all-vs-all)
    """
    if not isinstance(descriptor, str):
        raise TypeError(f"descriptor must be the name of an array (str), got {descriptor!r}")
    path = _default(path, _GLOBAL_FILE)
    arrays = read_npz(path)
    where = path_label(path)
    if descriptor not in arrays:
        available = sorted(k for k in arrays if k.startswith("desc_"))
        raise ValueError(
            f"descriptor={descriptor!r}: {where} has no such array; available: {available}"
        )
    _need(arrays, ("labels", "class_names"), path)
    feats = as_float_matrix(arrays[descriptor], f"{descriptor!r} in {where}")
    labels = _labels(arrays, feats.shape[0], path)
    return RetrievalDataset(
        database=feats,
        database_labels=labels,
        name="corel1k",
        class_names=str_array(arrays["class_names"], f"'class_names' in {where}"),
    )


@dataclass(repr=False)
class LocalDescriptorSet:
    """A fixed number of local descriptors per image, with positions and class labels.

    Attributes:
        local: ``(N, L, D)`` float32 local descriptors (``L`` per image).
        positions: ``(N, L, 2)`` int64 (row, column) of each descriptor in the feature map.
        labels: ``(N,)`` int64 class of each image.
        class_names: ``(num_classes,)`` numpy array of ``str``.
        name: e.g. ``"corel1k-local128"``.
    """

    local: Tensor
    positions: Tensor
    labels: Tensor
    class_names: np.ndarray
    name: str

    def __repr__(self) -> str:
        n, per_image, d = self.local.shape
        return (
            f"LocalDescriptorSet(name={self.name!r}, images={n}, per_image={per_image}, dim={d}, "
            f"classes={len(self.class_names)})"
        )


def load_corel1k_local(
    path: PathLike | None = None, *, kind: str = "local128"
) -> LocalDescriptorSet:
    """The 64 strongest local CNN descriptors of each Corel-1k image.

    Reads ``corel1k_local.npz`` (EfficientNet-Lite2, the 64 positions of the last feature
    map with the largest norm).

    Args:
        path: the ``.npz`` file; by default ``corel1k_local/corel1k_local.npz`` in
            :func:`graphrerank.testing.data_dir`.
        kind: ``"local128"`` (PCA-whitened to 128-d, L2-normalised per vector) or
            ``"local_raw"`` (the raw 1280-d vectors; about 330 MB as float32).

    Returns:
        ``local`` ``(1000, 64, D)`` float32, ``positions`` ``(1000, 64, 2)``, ``labels``
        ``(1000,)``, ``class_names``.

    Raises:
        FileNotFoundError: no file at ``path``, or no default data folder holding it.
        ValueError: ``kind`` is unknown, or the file is unreadable or inconsistent.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from graphrerank.datasets import load_corel1k_local
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "toy.npz"
        ...     np.savez(path, local128=np.ones((2, 3, 4), np.float16),
        ...              local_pos=np.zeros((2, 3, 2), np.int16), labels=np.array([0, 1]),
        ...              class_names=np.array(["x", "y"]))
        ...     loc = load_corel1k_local(path)
        >>> loc
        LocalDescriptorSet(name='corel1k-local128', images=2, per_image=3, dim=4, classes=2)
    """
    if kind not in ("local128", "local_raw"):
        raise ValueError(f"kind must be one of ['local128', 'local_raw'], got {kind!r}")
    path = _default(path, _LOCAL_FILE)
    arrays = read_npz(path)
    _need(arrays, (kind, "local_pos", "labels", "class_names"), path)
    where = path_label(path)
    local = arrays[kind]
    if local.ndim != 3 or local.dtype.kind not in "fiu" or 0 in local.shape:
        raise ValueError(
            f"{kind!r} in {where} must be a non-empty (N, L, D) numeric array, got shape "
            f"{local.shape} and dtype {local.dtype}"
        )
    local = local.astype(np.float32)
    if not np.isfinite(local).all():
        raise ValueError(f"{kind!r} in {where} contains NaN or infinite values")
    pos = arrays["local_pos"]
    if pos.shape != (*local.shape[:2], 2) or pos.dtype.kind not in "iu":
        raise ValueError(
            f"'local_pos' in {where} must be an integer array of shape "
            f"{(*local.shape[:2], 2)}, got {pos.shape} {pos.dtype}"
        )
    return LocalDescriptorSet(
        local=torch.from_numpy(local),
        positions=torch.from_numpy(pos.astype(np.int64)),
        labels=_labels(arrays, local.shape[0], path),
        class_names=str_array(arrays["class_names"], f"'class_names' in {where}"),
        name=f"corel1k-{kind.replace('_', '-')}",
    )
