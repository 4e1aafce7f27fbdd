"""Re-rankers: estimators with ``fit(database)`` and ``rerank(queries, k)``."""

from ..diffusion.offline import offline_diffusion_rerank, rdip_rerank
from .base import NotFittedError, Reranker
from .diffusion import Diffusion, RegionalDiffusion, diffusion_rerank, regional_diffusion_rerank
from .knn import KNN
from .offline import OfflineDiffusion, RDiP
from .spectral import FastSpectralRanking, fsr_rerank

__all__ = [
    "KNN",
    "RERANKERS",
    "Diffusion",
    "FastSpectralRanking",
    "NotFittedError",
    "OfflineDiffusion",
    "RDiP",
    "RegionalDiffusion",
    "Reranker",
    "diffusion_rerank",
    "fsr_rerank",
    "offline_diffusion_rerank",
    "rdip_rerank",
    "regional_diffusion_rerank",
]

#: Every public re-ranker class; the shared contract test and the demo iterate over it.
RERANKERS: tuple[type[Reranker], ...] = (
    KNN,
    Diffusion,
    RegionalDiffusion,
    FastSpectralRanking,
    OfflineDiffusion,
    RDiP,
)
