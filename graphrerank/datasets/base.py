"""The container every dataset loader of graphrerank returns."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int

__all__ = ["RetrievalDataset"]


def _shape(t: Tensor) -> str:
    return "x".join(str(s) for s in t.shape)


def _check_labels(labels: Tensor | None, n: int, name: str, rows: str) -> Tensor | None:
    if labels is None:
        return None
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise TypeError(f"{name} must have dtype torch.int64, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},), one label per row of {rows}, got {tuple(labels.shape)}"
        )
    return labels


def _check_matrix(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(
            f"{name} is on the meta device, which holds no data; pass a CPU or CUDA tensor"
        )
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {x.layout}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must hold floating point descriptors, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (num_items, dim) tensor, got {tuple(x.shape)}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{name} contains NaN or infinite values in {bad.numel()} row(s), first row "
            f"{int(bad[0])}"
        )
    return x


@dataclass(repr=False)
class RetrievalDataset:
    """Descriptors to search, with optional class labels, queries and images.

    Attributes:
        database: ``(N, D)`` floating point descriptors (``float32`` from every loader).
        database_labels: ``(N,)`` int64 class of each database item, or ``None``.
        queries: ``(Q, D)`` query descriptors, or ``None`` for the all-vs-all case in which
            every database item is a query (leave-one-out evaluation).
        query_labels: ``(Q,)`` int64 class of each query, or ``None``; must be ``None`` when
            ``queries`` is.
        name: a short name of the dataset, e.g. ``"digits"``.
        images: optional ``(N, H, W)`` tensor of the database images, for plots.
        class_names: optional ``(num_classes,)`` numpy array of ``str``; label ``i`` is
            ``class_names[i]``.

    Raises:
        TypeError: a field has the wrong type, dtype or layout (sparse descriptors).
        ValueError: shapes disagree (labels per row, query dimension, images per item), or
            ``database`` / ``queries`` hold NaN or infinite values or are ``meta`` tensors.

    Example:
        >>> import torch
        >>> from graphrerank.datasets import RetrievalDataset
        >>> ds = RetrievalDataset(torch.eye(3), torch.tensor([0, 0, 1]), name="toy")
        >>> ds
        RetrievalDataset(name='toy', database=3x3 float32, classes=2, queries=all-vs-all)
        >>> ds.num_queries, ds.all_vs_all
        (3, True)
    """

    database: Tensor
    database_labels: Tensor | None = None
    queries: Tensor | None = None
    query_labels: Tensor | None = None
    name: str = "dataset"
    images: Tensor | None = None
    class_names: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_matrix(self.database, "database")
        n, d = self.database.shape
        _check_labels(self.database_labels, n, "database_labels", "database")
        if self.queries is None:
            if self.query_labels is not None:
                raise ValueError(
                    "query_labels were given without queries; with queries=None every "
                    "database item is a query and database_labels label them"
                )
        else:
            _check_matrix(self.queries, "queries")
            if self.queries.shape[1] != d:
                raise ValueError(
                    f"queries have dimension {self.queries.shape[1]} but the database has {d}"
                )
            _check_labels(self.query_labels, self.queries.shape[0], "query_labels", "queries")
        if self.images is not None:
            if not isinstance(self.images, Tensor):
                raise TypeError(f"images must be a torch.Tensor, got {type(self.images).__name__}")
            if self.images.dim() != 3 or self.images.shape[0] != n:
                raise ValueError(
                    f"images must have shape ({n}, H, W), one image per database item, "
                    f"got {tuple(self.images.shape)}"
                )
        if self.class_names is not None:
            self.class_names = np.asarray(self.class_names, dtype=str)
            if self.class_names.ndim != 1:
                raise ValueError(f"class_names must be 1-D, got shape {self.class_names.shape}")
            if self.database_labels is not None and n:
                top = int(self.database_labels.max())
                if top >= len(self.class_names):
                    raise ValueError(
                        f"database_labels go up to {top} but only {len(self.class_names)} "
                        "class_names were given"
                    )

    @property
    def num_items(self) -> int:
        """Number of database items ``N``."""
        return int(self.database.shape[0])

    @property
    def dim(self) -> int:
        """Descriptor dimension ``D``."""
        return int(self.database.shape[1])

    @property
    def all_vs_all(self) -> bool:
        """Whether every database item is a query (``queries is None``)."""
        return self.queries is None

    @property
    def num_queries(self) -> int:
        """Number of queries: ``Q``, or ``N`` in the all-vs-all case."""
        return self.num_items if self.queries is None else int(self.queries.shape[0])

    @property
    def num_classes(self) -> int | None:
        """Number of distinct database labels, or ``None`` without labels."""
        if self.database_labels is None:
            return None
        return int(torch.unique(self.database_labels).numel())

    def head(self, n: int) -> RetrievalDataset:
        """The first ``n`` database items (their labels and images with them); the queries, if
        any, are kept. A quick subset for trying settings or for a fast mode.

        Example:
            >>> import torch
            >>> from graphrerank.datasets import RetrievalDataset
            >>> RetrievalDataset(torch.eye(4), torch.tensor([0, 0, 1, 1])).head(3)
            RetrievalDataset(name='dataset', database=3x4 float32, classes=2, queries=all-vs-all)
        """
        n = check_int(n, "n", low=1)
        n = min(n, self.num_items)
        return replace(
            self,
            database=self.database[:n],
            database_labels=None if self.database_labels is None else self.database_labels[:n],
            images=None if self.images is None else self.images[:n],
        )

    def __repr__(self) -> str:
        db = self.database
        parts = [f"name={self.name!r}", f"database={_shape(db)} {str(db.dtype).split('.')[-1]}"]
        if self.database_labels is not None:
            parts.append(f"classes={self.num_classes}")
        if self.queries is None:
            parts.append("queries=all-vs-all")
        else:
            parts.append(f"queries={_shape(self.queries)}")
        if self.images is not None:
            parts.append(f"images={_shape(self.images)}")
        return f"RetrievalDataset({', '.join(parts)})"
