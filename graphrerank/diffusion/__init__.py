"""Diffusion as sparse linear systems solved by batched conjugate gradients.

Online diffusion (:func:`diffusion_operator`, :func:`query_vector`, :func:`diffuse`), early
truncation (:func:`truncated_diffuse`), regional pooling (:func:`gmp_weights`,
:func:`pool_regions`), fast spectral ranking (:func:`spectral_embedding`), offline diffusion
with late truncation (:func:`offline_diffusion`) and R-DiP. The one-call re-rankers are also
exported from :mod:`graphrerank.rerankers`.
"""

from .cg import CGResult, conjugate_gradient
from .offline import (
    late_truncation,
    offline_diffusion,
    offline_diffusion_rerank,
    offline_diffusion_scores,
    rdip_rerank,
    self_first,
)
from .online import diffuse, diffusion_operator, query_entries, query_vector
from .regional import gmp_weights, pool_regions
from .spectral import DENSE_EIGEN_LIMIT, spectral_embedding, spectral_filter
from .truncation import truncated_diffuse, truncated_normalized, truncated_operator

__all__ = [
    "DENSE_EIGEN_LIMIT",
    "CGResult",
    "conjugate_gradient",
    "diffuse",
    "diffusion_operator",
    "diffusion_rerank",
    "fsr_rerank",
    "gmp_weights",
    "late_truncation",
    "offline_diffusion",
    "offline_diffusion_rerank",
    "offline_diffusion_scores",
    "pool_regions",
    "query_entries",
    "query_vector",
    "rdip_rerank",
    "regional_diffusion_rerank",
    "self_first",
    "spectral_embedding",
    "spectral_filter",
    "truncated_diffuse",
    "truncated_normalized",
    "truncated_operator",
]

_RERANK_TWINS = {
    "diffusion_rerank": "diffusion",
    "regional_diffusion_rerank": "diffusion",
    "fsr_rerank": "spectral",
}


def __getattr__(name: str):
    # The one-call re-rankers live in graphrerank.rerankers (which imports this package), so
    # they are looked up on first use rather than imported here.
    if name in _RERANK_TWINS:
        import importlib

        module = importlib.import_module(f"graphrerank.rerankers.{_RERANK_TWINS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
