"""Class-disjoint splits: no class shared, the counts and explicit classes honoured."""

import pytest
import torch

from graphrerank.models import class_disjoint_split


def test_parts_are_class_disjoint_and_cover_everything():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (60,), generator=g) * 3 + 1  # classes 1, 4, ..., 19
    split = class_disjoint_split(labels, test_classes=3, val_classes=2)
    classes = sorted(set(labels.tolist()))
    assert split.test_classes == classes[-3:]
    assert split.val_classes == classes[-5:-3]
    assert split.train_classes == classes[:-5]
    parts = [split.train, split.val, split.test]
    assert sorted(torch.cat(parts).tolist()) == list(range(60))
    for part, cs in zip(parts, [split.train_classes, split.val_classes, split.test_classes]):
        assert set(labels[part].tolist()) == set(cs)
        assert torch.equal(part, part.sort().values)


def test_explicit_classes_and_seed():
    labels = torch.arange(10).repeat_interleave(4)
    split = class_disjoint_split(labels, test_classes=[5, 6, 7, 8, 9], val_classes=[0, 4])
    assert split.train_classes == [1, 2, 3]
    assert split.val.tolist() == [0, 1, 2, 3, 16, 17, 18, 19]
    a = class_disjoint_split(labels, test_classes=4, val_classes=3, seed=1)
    b = class_disjoint_split(labels, test_classes=4, val_classes=3, seed=1)
    assert a.test_classes == b.test_classes and a.val_classes == b.val_classes
    assert len(a.train_classes) == 3
    default = class_disjoint_split(labels)
    assert default.test_classes == [5, 6, 7, 8, 9] and default.val_classes == [3, 4]
    none = class_disjoint_split(labels, val_classes=0)
    assert none.val.numel() == 0 and none.train_classes == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"val_classes": 1}, ValueError, "one class"),
        ({"test_classes": 8, "val_classes": 2}, ValueError, "no class is left for training"),
        ({"test_classes": 11}, ValueError, "test_classes=11"),
        ({"test_classes": [5, 12]}, ValueError, "class 12, which no item has"),
        ({"test_classes": [5, 5]}, ValueError, "twice"),
        ({"test_classes": [5], "val_classes": [5, 6]}, ValueError, "already in another part"),
        ({"val_classes": 2.0}, TypeError, "val_classes"),
        ({"test_classes": "5"}, TypeError, "test_classes"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        class_disjoint_split(torch.arange(10).repeat_interleave(2), **kwargs)


def test_bad_labels():
    with pytest.raises(ValueError, match="1-D"):
        class_disjoint_split(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        class_disjoint_split(torch.zeros(4))
