"""Diffusion as sparse linear systems solved by batched conjugate gradients."""

from .cg import CGResult, conjugate_gradient
from .offline import (
    late_truncation,
    offline_diffusion,
    offline_diffusion_rerank,
    offline_diffusion_scores,
    rdip_rerank,
    self_first,
)

__all__ = [
    "CGResult",
    "conjugate_gradient",
    "late_truncation",
    "offline_diffusion",
    "offline_diffusion_rerank",
    "offline_diffusion_scores",
    "rdip_rerank",
    "self_first",
]
