"""Readers for the formats retrieval users have, and datasets to try re-rankers on.

Nothing here downloads anything: readers take files the user placed, and
:func:`load_digits_retrieval` and :func:`make_retrieval_dataset` need no file at all.
"""

from .._imports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "base": ("RetrievalDataset",),
        "corel": ("LocalDescriptorSet", "load_corel1k", "load_corel1k_local"),
        "digits": ("load_digits_retrieval",),
        "reid": ("Market1501", "ReIDFeatures", "load_reid_result", "parse_reid_filename"),
        "revisitop": (
            "REVISITOP_URL",
            "CorruptFileError",
            "GndStatus",
            "RevisitopBenchmark",
            "RevisitopGroundTruth",
            "RevisitopR1M",
            "ROxford5k",
            "RParis6k",
            "UnsafePickleError",
            "gnd_from_labels",
            "gnd_from_status",
            "load_features",
            "load_revisitop_gnd",
            "save_revisitop_gnd",
            "status_from_gnd",
            "subset_gnd",
            "write_revisitop_pickle",
        ),
        "synthetic": ("make_local_descriptors", "make_retrieval_dataset"),
    },
)

__all__ = [
    "REVISITOP_URL",
    "CorruptFileError",
    "GndStatus",
    "LocalDescriptorSet",
    "Market1501",
    "ROxford5k",
    "RParis6k",
    "ReIDFeatures",
    "RetrievalDataset",
    "RevisitopBenchmark",
    "RevisitopGroundTruth",
    "RevisitopR1M",
    "UnsafePickleError",
    "gnd_from_labels",
    "gnd_from_status",
    "load_corel1k",
    "load_corel1k_local",
    "load_digits_retrieval",
    "load_features",
    "load_reid_result",
    "load_revisitop_gnd",
    "make_local_descriptors",
    "make_retrieval_dataset",
    "parse_reid_filename",
    "save_revisitop_gnd",
    "status_from_gnd",
    "subset_gnd",
    "write_revisitop_pickle",
]
