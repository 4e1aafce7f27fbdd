"""Optional dependencies: detection and clear errors, never auto-installation."""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from types import ModuleType

__all__ = ["faiss_num_gpus", "has_faiss", "require", "require_faiss"]


@cache
def has_faiss() -> bool:
    """Whether ``import faiss`` works (faiss-cpu or faiss-gpu)."""
    return importlib.util.find_spec("faiss") is not None


@cache
def faiss_num_gpus() -> int:
    """Number of GPUs faiss can use (0 for faiss-cpu or when faiss is absent)."""
    if not has_faiss():
        return 0
    faiss = importlib.import_module("faiss")
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def require_faiss(feature: str) -> ModuleType:
    """Import faiss or raise an ImportError that says what needs it and how to install it."""
    if not has_faiss():
        raise ImportError(
            f"{feature} requires faiss: pip install 'graphrerank[faiss-cpu]' "
            "(or faiss-gpu-cu12 for CUDA), or use backend='torch'"
        )
    return importlib.import_module("faiss")


def require(module: str, feature: str, extra: str) -> ModuleType:
    """Import an optional module or raise an ImportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{feature} requires the '{module}' package: pip install 'graphrerank[{extra}]'"
        ) from None
