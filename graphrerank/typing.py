"""Result types and aliases shared across graphrerank."""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

import numpy as np
from torch import Tensor

__all__ = ["KNNResult", "RerankResult", "TensorLike"]

TensorLike: TypeAlias = Tensor | np.ndarray


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
