r"""Class-disjoint splits for training and validating learned re-rankers.

A re-ranker is used on classes (landmarks, products, identities) it never saw in training, so
it must be chosen for that: early stopping and the fusion's :math:`\lambda, \gamma` have to
be tuned on classes that are unseen at training time too. Validating on held-back images of
the *training* classes rewards a model that has learnt those classes (the fusion then trusts
it, :math:`\lambda \to 0`) and loses on new ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._checks import as_tensor

__all__ = ["ClassSplit", "class_disjoint_split"]


class ClassSplit(NamedTuple):
    """Outcome of :func:`class_disjoint_split`.

    Attributes:
        train: Item indices of the training classes, ascending (int64).
        val: Item indices of the validation classes.
        test: Item indices of the test classes.
        train_classes: The training classes, ascending.
        val_classes: The validation classes.
        test_classes: The test classes.
    """

    train: Tensor
    val: Tensor
    test: Tensor
    train_classes: list[int]
    val_classes: list[int]
    test_classes: list[int]


def _classes(spec: Any, pool: list[int], name: str, all_classes: list[int]) -> list[int]:
    """``spec`` as a list of classes: a count taken from the end of ``pool``, or explicit."""
    if isinstance(spec, bool):
        raise TypeError(
            f"{name} must be a number of classes or a sequence of classes, got {spec!r}"
        )
    if isinstance(spec, int):
        if spec < 0 or spec > len(pool):
            raise ValueError(
                f"{name}={spec} but only {len(pool)} class(es) are left to choose from"
            )
        return pool[len(pool) - spec :]
    if isinstance(spec, Tensor):
        spec = spec.tolist()
    if not isinstance(spec, Sequence) or isinstance(spec, (str, bytes)):
        raise TypeError(
            f"{name} must be a number of classes or a sequence of classes, got {spec!r}"
        )
    out = []
    for c in spec:
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"{name} must hold integer classes, got {c!r}")
        if c not in all_classes:
            raise ValueError(f"{name} names class {c}, which no item has")
        if c not in pool:
            raise ValueError(f"{name} names class {c}, already in another part of the split")
        if c in out:
            raise ValueError(f"{name} names class {c} twice")
        out.append(c)
    return sorted(out)


def class_disjoint_split(
    labels: Any,
    *,
    test_classes: int | Sequence[int] | None = None,
    val_classes: int | Sequence[int] = 2,
    seed: int | None = None,
) -> ClassSplit:
    r"""Split items by class into training, validation and test parts with no class shared.

    The validation classes are unseen at training time and the test classes are unseen by
    both, as in the papers' protocols (trained on GLDv2, tested on ROxford; SOP's train and
    test classes): train the model on ``train``, stop early and tune the fusion
    (:meth:`~graphrerank.rerankers.LocalDescriptorReranker.tune_fusion`) on ``val``, report
    on ``test``.

    Classes are taken in ascending order (or shuffled with ``seed``): the test classes are the
    last ``test_classes`` of them (default: half, rounded down), the validation classes the
    last ``val_classes`` of the rest, and the training classes what remains. Either may
    instead be an explicit sequence of classes.

    Args:
        labels: :math:`(N,)` integer classes.
        test_classes: Number of test classes, or the classes themselves (default
            :math:`\lfloor C / 2 \rfloor`).
        val_classes: Number of validation classes (0: no validation), or the classes. At least
            two: leave-one-out validation within a single class scores 100 whatever the model.
        seed: Shuffle the class order with this seed before counting (``None``: ascending).

    Returns:
        :class:`ClassSplit`.

    Raises:
        ValueError: labels not a 1-D integer array, unknown or repeated classes, one
            validation class, no training class.
        TypeError: a count or class of the wrong type.

    Example:
        >>> labels = torch.arange(10).repeat_interleave(3)  # 10 classes of 3 items
        >>> split = class_disjoint_split(labels, test_classes=5, val_classes=2)
        >>> split.train_classes, split.val_classes, split.test_classes
        ([0, 1, 2], [3, 4], [5, 6, 7, 8, 9])
        >>> split.val
        tensor([ 9, 10, 11, 12, 13, 14])
    """
    y = as_tensor(labels, "labels")
    if y.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must hold integers, got dtype {y.dtype}")
    classes = [int(c) for c in torch.unique(y.cpu()).tolist()]
    order = list(classes)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        g = torch.Generator().manual_seed(seed)
        order = [order[i] for i in torch.randperm(len(order), generator=g).tolist()]
    if test_classes is None:
        test_classes = len(classes) // 2
    test = _classes(test_classes, order, "test_classes", classes)
    rest = [c for c in order if c not in test]
    val = _classes(val_classes, rest, "val_classes", classes)
    train = sorted(c for c in rest if c not in val)
    if len(val) == 1:
        raise ValueError(
            "val_classes holds one class: leave-one-out validation within one class scores "
            "100 whatever the model; give 0 or at least 2"
        )
    if not train:
        raise ValueError(
            f"no class is left for training ({len(classes)} classes: {len(test)} test, "
            f"{len(val)} validation)"
        )

    def items(cs: list[int]) -> Tensor:
        mask = torch.isin(y, torch.tensor(cs, dtype=y.dtype, device=y.device))
        return mask.nonzero().flatten()

    return ClassSplit(items(train), items(val), items(test), train, val, test)
