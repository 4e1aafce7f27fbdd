"""Optional dependencies: detection and clear errors, never auto-installation."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import types
from functools import cache
from types import ModuleType
from typing import Any

__all__ = [
    "defer_dynamo",
    "dynamo_deferred",
    "faiss_num_gpus",
    "has_faiss",
    "require",
    "require_faiss",
]


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


# --- Deferred import of ``torch._dynamo`` ---------------------------------------------------
#
# PyTorch Geometric imports ``torch._dynamo`` when it is imported (``torch_geometric.isinstance``
# needs ``torch._dynamo.OptimizedModule`` only to unwrap a ``torch.compile``-d model). That import
# costs about 2 s of the command line's start and of ``import graphrerank`` although no path of
# this library compiles anything. Until something uses it, ``sys.modules["torch._dynamo"]`` holds
# a stand-in that imports the real module on its first attribute access and hands that over
# (``torch.compile``, ``import torch._dynamo.config``, ``is_torch_instance`` all work, loading it
# then). ``GRAPHRERANK_EAGER_IMPORTS=1`` switches this off.

_DYNAMO = "torch._dynamo"
_dynamo_lock = threading.RLock()


class _DeferredModule(types.ModuleType):
    """Stand-in for a module not imported yet: the first attribute access imports it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_load_deferred(self), name)

    def __dir__(self) -> list[str]:
        return dir(_load_deferred(self))


def _load_deferred(stand_in: _DeferredModule) -> ModuleType:
    with _dynamo_lock:
        name = stand_in.__name__
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
            parent_name, _, child = name.rpartition(".")
            parent = sys.modules.get(parent_name)
            if parent is not None and parent.__dict__.get(child) is stand_in:
                delattr(parent, child)
        return importlib.import_module(name)


def defer_dynamo() -> bool:
    """Put a stand-in for ``torch._dynamo`` in ``sys.modules`` unless it is imported already.

    Returns whether the stand-in is in place. Called by ``graphrerank/__init__.py`` before
    anything imports PyTorch Geometric.
    """
    if os.environ.get("GRAPHRERANK_EAGER_IMPORTS", "") not in ("", "0"):
        return False
    with _dynamo_lock:
        if _DYNAMO in sys.modules:
            return isinstance(sys.modules[_DYNAMO], _DeferredModule)
        import torch  # noqa: F401 - the parent package must exist first

        spec = importlib.util.find_spec(_DYNAMO)
        if spec is None:  # pragma: no cover - a torch without dynamo
            return False
        stand_in = _DeferredModule(_DYNAMO)
        stand_in.__spec__ = spec
        stand_in.__file__ = spec.origin
        stand_in.__package__ = _DYNAMO
        sys.modules[_DYNAMO] = stand_in
        return True


def dynamo_deferred() -> bool:
    """Whether ``torch._dynamo`` is still the stand-in (nothing has used it yet)."""
    return isinstance(sys.modules.get(_DYNAMO), _DeferredModule)
