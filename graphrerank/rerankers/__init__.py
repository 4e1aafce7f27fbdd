"""Re-rankers: estimators with ``fit(database)`` and ``rerank(queries, k)``."""

from .base import NotFittedError, Reranker
from .expansion import (
    AlphaQueryExpansion,
    AverageQueryExpansion,
    DatabaseAugmentation,
    alpha_query_expansion,
    average_query_expansion,
    database_augmentation,
)
from .knn import KNN
from .pipeline import Pipeline
from .superglobal import SuperGlobal, superglobal_rerank

__all__ = [
    "KNN",
    "RERANKERS",
    "AlphaQueryExpansion",
    "AverageQueryExpansion",
    "DatabaseAugmentation",
    "NotFittedError",
    "Pipeline",
    "Reranker",
    "SuperGlobal",
    "alpha_query_expansion",
    "average_query_expansion",
    "database_augmentation",
    "superglobal_rerank",
]

#: Every public re-ranker class; the shared contract test and the demo iterate over it.
RERANKERS: tuple[type[Reranker], ...] = (
    KNN,
    AverageQueryExpansion,
    AlphaQueryExpansion,
    DatabaseAugmentation,
    SuperGlobal,
    Pipeline,
)
