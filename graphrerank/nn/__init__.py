"""PyG ``MessagePassing`` layers that propagate over kNN graphs (fused sparse aggregation)."""

from .diffusion import DiffusionPropagation
from .expansion import ExpansionPropagation, bipartite_adjacency
from .propagate import WeightedPropagation, adjacency

__all__ = [
    "DiffusionPropagation",
    "ExpansionPropagation",
    "WeightedPropagation",
    "adjacency",
    "bipartite_adjacency",
]
