"""Re-rankers: estimators with ``fit(database)`` and ``rerank(queries, k)``."""

from ..diffusion.offline import offline_diffusion_rerank, rdip_rerank
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
from .offline import OfflineDiffusion, RDiP
from .pipeline import Pipeline
from .superglobal import SuperGlobal, superglobal_rerank

__all__ = [
    "KNN",
    "RERANKERS",
    "AlphaQueryExpansion",
    "AverageQueryExpansion",
    "DatabaseAugmentation",
    "NotFittedError",
    "OfflineDiffusion",
    "Pipeline",
    "RDiP",
    "Reranker",
    "SuperGlobal",
    "alpha_query_expansion",
    "average_query_expansion",
    "database_augmentation",
    "offline_diffusion_rerank",
    "rdip_rerank",
    "superglobal_rerank",
]

#: Every public re-ranker class; the shared contract test and the demo iterate over it.
RERANKERS: tuple[type[Reranker], ...] = (
    KNN,
    OfflineDiffusion,
    RDiP,
    AverageQueryExpansion,
    AlphaQueryExpansion,
    DatabaseAugmentation,
    SuperGlobal,
    Pipeline,
)
