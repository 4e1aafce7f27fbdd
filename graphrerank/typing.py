"""Result types and aliases shared across graphrerank."""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeAlias, get_args

import numpy as np
from torch import Tensor

__all__ = [
    "BACKENDS",
    "ITERATES",
    "METRICS",
    "NORMALIZATIONS",
    "SEARCHES",
    "SYMMETRIZATIONS",
    "TIES",
    "Backend",
    "Iterate",
    "KNNResult",
    "Metric",
    "Normalization",
    "RerankResult",
    "Search",
    "Symmetrization",
    "TensorLike",
    "Ties",
]

TensorLike: TypeAlias = Tensor | np.ndarray

# The option literals, each defined once: the type for signatures and the tuple of values that
# settings and arguments are checked against.

#: kNN backend: faiss where it can run on the data's device, else exact torch.
Backend: TypeAlias = Literal["auto", "faiss", "torch"]
#: Similarity: inner product or negative squared Euclidean distance.
Metric: TypeAlias = Literal["ip", "l2"]
#: How a directed kNN graph is made undirected (:func:`~graphrerank.graph.symmetrize`).
Symmetrization: TypeAlias = Literal["mutual", "min", "union", "max"]
#: Degree normalisation of a graph (:func:`~graphrerank.graph.normalize_adjacency`).
Normalization: TypeAlias = Literal["sym", "row"]
#: Order of items with equal scores: first-stage similarity, or database index.
Ties: TypeAlias = Literal["similarity", "index"]
#: Which conjugate-gradient iterate is returned: lowest residual (MATLAB) or last (SciPy).
Iterate: TypeAlias = Literal["best", "last"]
#: kNN search of offline diffusion: exact, faiss IVF, or IVF from 100,000 items.
Search: TypeAlias = Literal["auto", "exact", "ivf"]

BACKENDS: tuple[str, ...] = get_args(Backend)
METRICS: tuple[str, ...] = get_args(Metric)
SYMMETRIZATIONS: tuple[str, ...] = get_args(Symmetrization)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
TIES: tuple[str, ...] = get_args(Ties)
ITERATES: tuple[str, ...] = get_args(Iterate)
SEARCHES: tuple[str, ...] = get_args(Search)


class KNNResult(NamedTuple):
    """Nearest neighbours of each query, best first.

    Attributes:
        scores: ``(num_queries, k)`` float; higher is better (inner products, or negative
            squared Euclidean distances for ``metric="l2"``); ``-inf`` where ``indices`` is -1.
        indices: ``(num_queries, k)`` int64 rows of the database; ``-1`` where fewer than ``k``
            results exist (approximate indexes).
    """

    scores: Tensor
    indices: Tensor


class RerankResult(NamedTuple):
    """A re-ranked list per query, best first.

    Attributes:
        scores: ``(num_queries, k)`` float, sorted in descending order; higher is better.
        indices: ``(num_queries, k)`` int64 rows of the fitted database; ``-1`` where fewer than
            ``k`` results exist.
    """

    scores: Tensor
    indices: Tensor
