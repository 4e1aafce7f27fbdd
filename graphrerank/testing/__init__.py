"""Helpers for testing code that uses graphrerank (and for graphrerank's own tests).

* :func:`data_dir` finds the real benchmark files through the ``GRAPHRERANK_DATA`` setting.
* :data:`requires_faiss`, :func:`requires_data` skip tests cleanly when something is absent.
* :func:`assert_close` compares tensors with a per-dtype tolerance table.
* :func:`fast_mode` says whether the examples and tutorials run in their fast mode
  (``GRAPHRERANK_FAST``, set by the test suite and the docs build).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .._imports import has_faiss

__all__ = [
    "TOLERANCES",
    "assert_close",
    "cuda_available",
    "data_dir",
    "fast_mode",
    "requires_cuda",
    "requires_data",
    "requires_faiss",
]

#: ``{dtype: (rtol, atol)}`` used by :func:`assert_close` when no tolerance is given.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (7.8e-3, 7.8e-3),
}


def fast_mode() -> bool:
    """Whether ``GRAPHRERANK_FAST`` asks for the fast mode (smaller subsets): set by the test
    suite and by CI's docs build, so that every example and tutorial runs in seconds."""
    return os.environ.get("GRAPHRERANK_FAST", "") not in ("", "0")


def data_dir() -> Path | None:
    """The folder of real data files, or ``None`` when it is not available.

    Taken from the ``GRAPHRERANK_DATA`` environment variable; otherwise ``../shared/data``
    next to the repository when that folder exists.
    """
    env = os.environ.get("GRAPHRERANK_DATA")
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    p = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return p if p.is_dir() else None


def cuda_available() -> bool:
    """Whether a CUDA device is usable by torch."""
    return torch.cuda.is_available()


def _pytest():
    import pytest

    return pytest


def requires_data(*relative: str):
    """Skip a test unless every ``relative`` path exists under :func:`data_dir`."""
    pytest = _pytest()
    root = data_dir()
    missing = root is None or not all((root / r).exists() for r in relative)
    return pytest.mark.skipif(
        missing, reason=f"real data {list(relative)} not found (GRAPHRERANK_DATA)"
    )


def __getattr__(name: str):
    # Built lazily so that importing graphrerank.testing does not import pytest.
    if name == "requires_faiss":
        return _pytest().mark.skipif(not has_faiss(), reason="faiss is not installed")
    if name == "requires_cuda":
        return _pytest().mark.skipif(not cuda_available(), reason="CUDA is not available")
    raise AttributeError(name)


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    msg: str | None = None,
) -> None:
    """``torch.testing.assert_close`` with tolerances from :data:`TOLERANCES` by dtype.

    ``expected`` is cast to the dtype and device of ``actual`` first.
    """
    expected = torch.as_tensor(expected).to(device=actual.device, dtype=actual.dtype)
    if rtol is None or atol is None:
        r, a = TOLERANCES.get(actual.dtype, (0.0, 0.0))
        rtol = r if rtol is None else rtol
        atol = a if atol is None else atol
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg)
