import numpy as np
import pytest
import torch

from graphrerank.datasets import RetrievalDataset


def test_all_vs_all_and_repr():
    ds = RetrievalDataset(torch.zeros(5, 3), torch.tensor([0, 1, 1, 2, 2]), name="toy")
    assert ds.all_vs_all
    assert (ds.num_items, ds.dim, ds.num_queries, ds.num_classes) == (5, 3, 5, 3)
    assert repr(ds) == (
        "RetrievalDataset(name='toy', database=5x3 float32, classes=3, queries=all-vs-all)"
    )


def test_queries_images_class_names():
    ds = RetrievalDataset(
        torch.zeros(4, 2),
        torch.tensor([0, 0, 1, 1]),
        queries=torch.ones(3, 2),
        query_labels=torch.tensor([1, 0, 1]),
        images=torch.zeros(4, 8, 8),
        class_names=["a", "b"],
    )
    assert not ds.all_vs_all
    assert ds.num_queries == 3
    assert isinstance(ds.class_names, np.ndarray)
    assert "queries=3x2" in repr(ds)
    assert "images=4x8x8" in repr(ds)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"database": torch.zeros(3)}, "2-D"),
        ({"database": torch.zeros(3, 2, dtype=torch.int64)}, "floating"),
        ({"database_labels": torch.tensor([0, 1])}, r"shape \(3,\)"),
        ({"database_labels": torch.tensor([0.0, 1.0, 2.0])}, "int64"),
        ({"queries": torch.zeros(2, 5)}, "dimension 5"),
        ({"query_labels": torch.tensor([0, 1])}, "without queries"),
        ({"queries": torch.zeros(2, 2), "query_labels": torch.tensor([0])}, "query_labels"),
        ({"images": torch.zeros(2, 8, 8)}, "images"),
        ({"database_labels": torch.tensor([0, 1, 5]), "class_names": ["a", "b"]}, "class_names"),
    ],
)
def test_invalid(kwargs, match):
    args = {"database": torch.zeros(3, 2)} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        RetrievalDataset(**args)
