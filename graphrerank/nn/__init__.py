"""PyG ``MessagePassing`` layers that propagate over kNN graphs (fused sparse aggregation)."""

from .diffusion import DiffusionPropagation
from .propagate import WeightedPropagation, adjacency

__all__ = ["DiffusionPropagation", "WeightedPropagation", "adjacency"]
