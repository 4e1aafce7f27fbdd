"""Re-rankers: estimators with ``fit(database)`` and ``rerank(queries, k)``."""

from .base import NotFittedError, Preset, Reranker, SettingWarning
from .checks import SettingProblem, check_settings, suggest_settings
from .diffusion import Diffusion, RegionalDiffusion, diffusion_rerank, regional_diffusion_rerank
from .expansion import (
    AlphaQueryExpansion,
    AverageQueryExpansion,
    DatabaseAugmentation,
    alpha_query_expansion,
    average_query_expansion,
    database_augmentation,
)
from .gnn import GNNRerank, gnn_rerank
from .knn import KNN
from .kreciprocal import KReciprocal, kreciprocal_rerank, kreciprocal_rerank_distances
from .learned import LocalDescriptorReranker, ShortlistLogits, local_descriptor_rerank
from .offline import OfflineDiffusion, RDiP, offline_diffusion_rerank, rdip_rerank
from .pipeline import Pipeline
from .spectral import FastSpectralRanking, fsr_rerank
from .superglobal import SuperGlobal, superglobal_rerank
from .whitening import Whitening

__all__ = [
    "KNN",
    "RERANKERS",
    "RERANKERS_WITH_LOCAL",
    "AlphaQueryExpansion",
    "AverageQueryExpansion",
    "DatabaseAugmentation",
    "Diffusion",
    "FastSpectralRanking",
    "GNNRerank",
    "KReciprocal",
    "LocalDescriptorReranker",
    "NotFittedError",
    "OfflineDiffusion",
    "Pipeline",
    "Preset",
    "RDiP",
    "RegionalDiffusion",
    "Reranker",
    "SettingProblem",
    "SettingWarning",
    "ShortlistLogits",
    "SuperGlobal",
    "Whitening",
    "alpha_query_expansion",
    "average_query_expansion",
    "check_settings",
    "database_augmentation",
    "diffusion_rerank",
    "fsr_rerank",
    "gnn_rerank",
    "kreciprocal_rerank",
    "kreciprocal_rerank_distances",
    "local_descriptor_rerank",
    "offline_diffusion_rerank",
    "rdip_rerank",
    "regional_diffusion_rerank",
    "suggest_settings",
    "superglobal_rerank",
]

#: Every public re-ranker class that needs only global descriptors; the shared contract test and
#: the demo iterate over it.
RERANKERS: tuple[type[Reranker], ...] = (
    KNN,
    Whitening,
    KReciprocal,
    GNNRerank,
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

#: Re-rankers that also need local descriptors (``fit(database, local=...)``,
#: ``rerank(queries, k, local=...)``) and usually a trained model. They keep the same contract,
#: checked with local descriptors by their own test (``tests/rerankers/test_learned.py``).
RERANKERS_WITH_LOCAL: tuple[type[Reranker], ...] = (LocalDescriptorReranker,)
