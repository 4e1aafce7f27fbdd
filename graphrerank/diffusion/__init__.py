"""Diffusion as sparse linear systems solved by batched conjugate gradients (solvers only).

The system matrix :math:`\\mathbf{I} - \\alpha\\mathbf{S}` (:func:`diffusion_operator`,
:func:`laplacian_alpha`), batched conjugate gradients (:func:`conjugate_gradient`), online
diffusion (:func:`query_vector`, :func:`diffuse`), early truncation
(:func:`truncated_diffuse`), regional pooling (:func:`gmp_weights`, :func:`pool_regions`), fast
spectral ranking (:func:`spectral_embedding`) and offline diffusion with late truncation
(:func:`offline_diffusion`). The re-rankers built on them, and their one-call forms
(``diffusion_rerank``, ``fsr_rerank``, ``offline_diffusion_rerank``, ...), live in
:mod:`graphrerank.rerankers`.
"""

from .._imports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "cg": ("CGResult", "conjugate_gradient"),
        "offline": (
            "late_truncation",
            "offline_diffusion",
            "offline_diffusion_scores",
            "self_first",
        ),
        "online": ("diffuse", "query_entries", "query_vector"),
        "operators": ("diffusion_operator", "laplacian_alpha", "shifted_identity"),
        "regional": ("gmp_weights", "pool_regions"),
        "spectral": ("DENSE_EIGEN_LIMIT", "spectral_embedding", "spectral_filter"),
        "truncation": ("truncated_diffuse", "truncated_normalized", "truncated_operator"),
    },
    submodules=("distributed", "store"),
)

__all__ = [
    "DENSE_EIGEN_LIMIT",
    "CGResult",
    "conjugate_gradient",
    "diffuse",
    "diffusion_operator",
    "gmp_weights",
    "laplacian_alpha",
    "late_truncation",
    "offline_diffusion",
    "offline_diffusion_scores",
    "pool_regions",
    "query_entries",
    "query_vector",
    "self_first",
    "shifted_identity",
    "spectral_embedding",
    "spectral_filter",
    "truncated_diffuse",
    "truncated_normalized",
    "truncated_operator",
]
