"""Readers for the formats retrieval users have, and datasets to try re-rankers on.

Nothing here downloads anything: readers take files the user placed.
"""

from .base import RetrievalDataset
from .revisitop import (
    REVISITOP_URL,
    RevisitopBenchmark,
    RevisitopGroundTruth,
    RevisitopR1M,
    ROxford5k,
    RParis6k,
    UnsafePickleError,
    load_features,
    load_revisitop_gnd,
)

__all__ = [
    "REVISITOP_URL",
    "ROxford5k",
    "RParis6k",
    "RetrievalDataset",
    "RevisitopBenchmark",
    "RevisitopGroundTruth",
    "RevisitopR1M",
    "UnsafePickleError",
    "load_features",
    "load_revisitop_gnd",
]
