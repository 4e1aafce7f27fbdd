"""Re-rankers: estimators with ``fit(database)`` and ``rerank(queries, k)``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._imports import eager_imports, lazy_exports

if TYPE_CHECKING:
    from .base import Reranker

_getattr, _dir = lazy_exports(
    __name__,
    {
        "base": ("NotFittedError", "Preset", "Reranker", "SettingWarning"),
        "checks": ("SettingProblem", "check_settings", "suggest_settings"),
        "diffusion": (
            "Diffusion",
            "RegionalDiffusion",
            "diffusion_rerank",
            "regional_diffusion_rerank",
        ),
        "expansion": (
            "AlphaQueryExpansion",
            "AverageQueryExpansion",
            "DatabaseAugmentation",
            "alpha_query_expansion",
            "average_query_expansion",
            "database_augmentation",
        ),
        "gnn": ("GNNRerank", "gnn_rerank"),
        "knn": ("KNN",),
        "kreciprocal": ("KReciprocal", "kreciprocal_rerank", "kreciprocal_rerank_distances"),
        "learned": ("LocalDescriptorReranker", "ShortlistLogits", "local_descriptor_rerank"),
        "offline": ("OfflineDiffusion", "RDiP", "offline_diffusion_rerank", "rdip_rerank"),
        "pipeline": ("Pipeline",),
        "spectral": ("FastSpectralRanking", "fsr_rerank"),
        "superglobal": ("SuperGlobal", "superglobal_rerank"),
        "whitening": ("Whitening",),
    },
    submodules=("presets",),
)

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
RERANKERS: tuple[type[Reranker], ...]
_RERANKERS = (
    "KNN",
    "Whitening",
    "KReciprocal",
    "GNNRerank",
    "AverageQueryExpansion",
    "AlphaQueryExpansion",
    "DatabaseAugmentation",
    "SuperGlobal",
    "Diffusion",
    "RegionalDiffusion",
    "FastSpectralRanking",
    "OfflineDiffusion",
    "RDiP",
    "Pipeline",
)

#: Re-rankers that also need local descriptors (``fit(database, local=...)``,
#: ``rerank(queries, k, local=...)``) and usually a trained model. They keep the same contract,
#: checked with local descriptors by their own test (``tests/rerankers/test_learned.py``).
RERANKERS_WITH_LOCAL: tuple[type[Reranker], ...]
_RERANKERS_WITH_LOCAL = ("LocalDescriptorReranker",)


def __getattr__(name: str) -> Any:
    # The two tuples name every class, so they load every re-ranker's module: built on first use.
    if name == "RERANKERS" or name == "RERANKERS_WITH_LOCAL":
        value = tuple(_getattr(n) for n in globals()["_" + name])
        globals()[name] = value
        return value
    return _getattr(name)


def __dir__() -> list[str]:
    return sorted({*_dir(), "RERANKERS", "RERANKERS_WITH_LOCAL"})


if eager_imports():
    __getattr__("RERANKERS"), __getattr__("RERANKERS_WITH_LOCAL")
