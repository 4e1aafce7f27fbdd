"""Optional numba kernels (the ``speed`` extra): compiled on first use, with a fallback.

Each module that has kernels keeps its own cache of them (compiled, or ``None`` / ``False``
once numba is missing or a kernel failed) and its torch / NumPy path; this module holds the
two pieces they share: compiling, and the warning when a compiled kernel cannot run here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

__all__ = ["compile_kernels", "warn_kernel_failed"]


def compile_kernels(*functions: Callable, **options) -> tuple[Callable, ...] | None:
    """``functions`` compiled by ``numba.njit(nogil=True, cache=True, **options)`` (lazily:
    numba compiles, or loads from its cache, at each kernel's first call), or ``None`` when
    numba is not importable."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is an optional speed-up
        return None
    jit = numba.njit(nogil=True, cache=True, **options)
    return tuple(jit(f) for f in functions)


def warn_kernel_failed(what: str, err: BaseException, fallback: str, stacklevel: int = 2) -> None:
    """Warn that the numba ``what`` kernel failed here (no writable cache location, an
    unsupported CPU, ...) and that ``fallback`` runs from now on; ``stacklevel`` counts from
    the caller."""
    warnings.warn(
        f"the numba {what} kernel failed ({type(err).__name__}: {err}); using {fallback}",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )
