"""Input validation shared by every public entry point.

Each check raises a ``ValueError`` or ``TypeError`` whose message names the argument and the
offending value, so that a user sees at once which input is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_tensor",
    "check_features",
    "check_in",
    "check_int",
    "check_k",
    "check_normalized",
    "check_real",
    "check_same_device",
]

_HALF = (torch.float16, torch.bfloat16)


def as_tensor(x: Any, name: str) -> Tensor:
    """Return ``x`` as a tensor without copying where possible (numpy on CPU is zero-copy)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{name} must be a numeric array, got an array of Python objects")
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, (list, tuple)):
        try:
            return torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} could not be read as a numeric array: {err}") from None
    raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(x).__name__}")


def check_features(
    x: Any,
    name: str,
    *,
    dim: int | None = None,
    allow_empty: bool = False,
    finite: bool = True,
) -> Tensor:
    """Validate a ``(num_items, dim)`` floating point descriptor matrix.

    Half precision inputs are upcast to ``float32`` (sparse and solver kernels need it);
    ``float32`` and ``float64`` are kept. Integer and boolean inputs are refused.
    """
    t = as_tensor(x, name)
    if t.is_sparse or t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} must hold floating point descriptors, got dtype {t.dtype}; "
            f"cast it, e.g. {name}.float()"
        )
    if t.dtype in _HALF:
        t = t.float()
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (num_items, dim) array, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)} has no rows")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has zero-length descriptors: shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(
            f"{name} has descriptors of dimension {t.shape[1]}, expected {dim} "
            "(the dimension of the fitted database)"
        )
    if finite and t.numel() and not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{name} contains NaN or infinite values in {bad.numel()} row(s), first row {int(bad[0])}"
        )
    return t


def check_normalized(
    x: Tensor, name: str, *, atol: float = 1e-3, offer_option: bool = True
) -> Tensor:
    """Check that every row of ``x`` has unit L2 norm (within ``atol``).

    Norms are computed in float64, a block of rows at a time (no float64 copy of ``x``).
    ``offer_option=False`` leaves out the hint "or pass normalize=True" for callers without
    such an option.
    """
    if x.shape[0] == 0:
        return x
    rows = max(1, (64 * 2**20) // (8 * max(1, x.shape[1])))
    norms = torch.cat(
        [
            torch.linalg.vector_norm(x[s : s + rows].double(), dim=1)
            for s in range(0, x.shape[0], rows)
        ]
    )
    dev = (norms - 1).abs()
    worst = int(dev.argmax())
    if float(dev[worst]) > atol:
        raise ValueError(
            f"{name} must be L2-normalised (this method uses cosine similarities), but row "
            f"{worst} has norm {float(norms[worst]):.6g}; normalise with "
            f"torch.nn.functional.normalize({name}, dim=1)"
            + (" or pass normalize=True" if offer_option else "")
        )
    return x


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """Check that ``value`` is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Check that ``value`` is a real number in the given (open or closed) interval."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_in(value: Any, name: str, options: Sequence[Any]) -> Any:
    """Check that ``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)!r}, got {value!r}")
    return value


def check_k(k: Any, num_items: int, *, name: str = "k", what: str = "the database") -> int:
    """Check ``1 <= k <= num_items``."""
    k = check_int(k, name, low=1)
    if k > num_items:
        raise ValueError(f"{name}={k} is larger than {what}, which holds {num_items} item(s)")
    return k


def check_same_device(**tensors: Tensor) -> torch.device:
    """Check that all named tensors live on one device and return it."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    device = items[0][1].device
    for n, t in items[1:]:
        if t.device != device:
            first = items[0][0]
            raise ValueError(
                f"{n} is on {t.device} but {first} is on {device}; move them to one device "
                f"(e.g. {n}.to({first}.device)) - graphrerank never moves data between devices silently"
            )
    return device
