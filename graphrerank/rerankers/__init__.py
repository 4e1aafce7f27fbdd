"""Re-rankers: estimators with ``fit(database)`` and ``rerank(queries, k)``."""

from .base import NotFittedError, Reranker
from .diffusion import Diffusion, RegionalDiffusion, diffusion_rerank, regional_diffusion_rerank
from .knn import KNN
from .spectral import FastSpectralRanking, fsr_rerank

__all__ = [
    "KNN",
    "RERANKERS",
    "Diffusion",
    "FastSpectralRanking",
    "NotFittedError",
    "RegionalDiffusion",
    "Reranker",
    "diffusion_rerank",
    "fsr_rerank",
    "regional_diffusion_rerank",
]

#: Every public re-ranker class; the shared contract test and the demo iterate over it.
RERANKERS: tuple[type[Reranker], ...] = (KNN, Diffusion, RegionalDiffusion, FastSpectralRanking)
