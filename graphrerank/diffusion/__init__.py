"""Diffusion as sparse linear systems solved by batched conjugate gradients."""

from .cg import CGResult, conjugate_gradient

__all__ = ["CGResult", "conjugate_gradient"]
