"""Input checks shared by the metrics (private).

Every check raises a ``ValueError`` or ``TypeError`` naming the argument and the offending value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import as_tensor, check_int

__all__: list[str] = []


def _is_integer(t: Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def as_array(x: Any, name: str) -> Tensor:
    """``x`` as a dense tensor with values: numpy arrays of strings / objects, sparse layouts
    and ``meta`` tensors (which hold no values) are refused, naming ``name``."""
    if isinstance(x, np.ndarray) and x.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be a numeric array, got a numpy array of dtype {x.dtype}")
    t = as_tensor(x, name)
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}")
    if t.device.type == "meta":
        raise ValueError(
            f"{name} is on the meta device, which holds no values; metrics need real data"
        )
    return t


def check_ranking(
    indices: Any,
    name: str = "indices",
    *,
    num_items: int | None = None,
    what: str = "a database",
    unique: bool = False,
) -> Tensor:
    """Validate a ``(Q, K)`` integer ranking; ``-1`` marks padding (nothing retrieved).

    ``what`` names the argument that sets ``num_items`` in the out-of-range message;
    ``unique=True`` refuses a row that repeats an index (it would count a positive twice).
    """
    t = as_array(indices, name)
    if not _is_integer(t):
        raise TypeError(f"{name} must hold integer database indices, got dtype {t.dtype}")
    if t.dim() != 2:
        raise ValueError(
            f"{name} must be a 2-D (num_queries, k) array of ranked indices, got shape "
            f"{tuple(t.shape)}"
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    low = int(t.min())
    if low < -1:
        raise ValueError(
            f"{name} contains {low}; indices must be >= 0, or -1 for padding (nothing retrieved)"
        )
    if num_items is not None:
        high = int(t.max())
        if high >= num_items:
            raise ValueError(
                f"{name} contains {high}, out of range for {what} of {num_items} item(s) "
                f"(valid: 0..{num_items - 1}, or -1 for padding)"
            )
    t = t.long()
    if unique and t.shape[1] > 1:
        s = t.sort(dim=1).values
        rep = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        if bool(rep.any()):
            row, col = (int(v) for v in rep.nonzero()[0])
            raise ValueError(
                f"{name} repeats index {int(s[row, col])} in row {row}; a ranked list must not "
                "list an item twice (it would be counted twice)"
            )
    return t


def check_labels(x: Any, name: str, *, length: int | None = None, what: str = "") -> Tensor:
    """Validate a 1-D integer label vector; ``(1, n)`` and ``(n, 1)`` (MATLAB files) are flattened."""
    t = as_array(x, name)
    if t.dim() == 2 and 1 in t.shape:
        t = t.reshape(-1)
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D array of labels, got shape {tuple(t.shape)}")
    if not _is_integer(t):
        raise TypeError(f"{name} must hold integer labels, got dtype {t.dtype}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if length is not None and t.shape[0] != length:
        raise ValueError(
            f"{name} has {t.shape[0]} entries but {what or 'the other inputs'} has {length}"
        )
    return t.long()


def follow(original: Any, t: Tensor, device: torch.device) -> Tensor:
    """Move ``t`` to ``device`` when it came from numpy or a list (host data has no device of
    its own); a tensor given by the caller stays where it is, and a mismatch is reported."""
    return t if isinstance(original, Tensor) else t.to(device)


def check_ks(ks: Any, name: str) -> tuple[int, ...]:
    """Validate a non-empty sequence of positive integer cut-offs (kept in the given order)."""
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable):
        raise TypeError(f"{name} must be a sequence of positive integers, got {ks!r}")
    out = tuple(check_int(k, name, low=1) for k in ks)
    if not out:
        raise ValueError(f"{name} must name at least one cut-off, got {ks!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a cut-off, got {ks!r}")
    return out
