"""Re-rankers: estimators with ``fit(database)`` and ``rerank(queries, k)``."""

from ..diffusion.offline import offline_diffusion_rerank, rdip_rerank
from .base import NotFittedError, Reranker
from .diffusion import Diffusion, RegionalDiffusion, diffusion_rerank, regional_diffusion_rerank
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
from .spectral import FastSpectralRanking, fsr_rerank
from .superglobal import SuperGlobal, superglobal_rerank

__all__ = [
    "KNN",
    "RERANKERS",
    "AlphaQueryExpansion",
    "AverageQueryExpansion",
    "DatabaseAugmentation",
    "Diffusion",
    "FastSpectralRanking",
    "NotFittedError",
    "OfflineDiffusion",
    "Pipeline",
    "RDiP",
    "RegionalDiffusion",
    "Reranker",
    "SuperGlobal",
    "alpha_query_expansion",
    "average_query_expansion",
    "database_augmentation",
    "diffusion_rerank",
    "fsr_rerank",
    "offline_diffusion_rerank",
    "rdip_rerank",
    "regional_diffusion_rerank",
    "superglobal_rerank",
]

#: Every public re-ranker class; the shared contract test and the demo iterate over it.
RERANKERS: tuple[type[Reranker], ...] = (
    KNN,
    AverageQueryExpansion,
    AlphaQueryExpansion,
    DatabaseAugmentation,
    SuperGlobal,
    Diffusion,
    RegionalDiffusion,
    FastSpectralRanking,
    OfflineDiffusion,
    RDiP,
    Pipeline,
)
