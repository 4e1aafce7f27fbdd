"""PyG ``MessagePassing`` layers that propagate over kNN graphs (fused sparse aggregation)."""

from .propagate import WeightedPropagation, adjacency

__all__ = ["WeightedPropagation", "adjacency"]
