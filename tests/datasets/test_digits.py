import sys

import numpy as np
import pytest
import torch

from graphrerank.datasets import load_digits_retrieval

from ._helpers import cosine_class_map

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def test_digits():
    ds = load_digits_retrieval()
    assert ds.name == "digits"
    assert ds.database.shape == (1797, 64)
    assert ds.database.dtype == torch.float32
    assert ds.all_vs_all
    torch.testing.assert_close(ds.database.norm(dim=1), torch.ones(1797), atol=1e-6, rtol=0)
    assert ds.database_labels.dtype == torch.int64
    assert sorted(torch.unique(ds.database_labels).tolist()) == list(range(10))
    assert ds.images.shape == (1797, 8, 8)
    assert list(ds.class_names) == [str(i) for i in range(10)]

    raw = sklearn_datasets.load_digits()
    np.testing.assert_array_equal(ds.images.numpy(), raw.images)
    np.testing.assert_array_equal(ds.database_labels.numpy(), raw.target)
    # Centred over the whole set before normalisation: undoing the normalisation with the
    # norms of the centred pixels gives data with zero column means.
    centred = raw.data - raw.data.mean(axis=0)
    restored = ds.database.double().numpy() * np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(restored.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(restored, centred, atol=1e-5)


def test_digits_cosine_baseline():
    # The leave-one-out cosine mAP of this preprocessing, as measured for the data README.
    ds = load_digits_retrieval()
    m, nn = cosine_class_map(ds.database.numpy(), ds.database_labels.numpy())
    assert m == pytest.approx(0.6768, abs=5e-4)
    assert nn > 0.95


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"graphrerank\[examples\]"):
        load_digits_retrieval()
