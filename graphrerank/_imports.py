"""Optional dependencies (detection and clear errors, never auto-installation) and lazy imports.

Lazy imports: every subpackage's ``__init__`` names what it exports and from which submodule
(:func:`lazy_exports`); a name's submodule is imported on its first use (PEP 562 module
``__getattr__``), so that ``import graphrerank`` and ``graphrerank --help`` import neither
PyTorch Geometric, SciPy nor faiss, and a re-ranker's first call loads only the modules it
needs. ``GRAPHRERANK_EAGER_IMPORTS=1`` imports everything at once instead (as before), which
also keeps ``torch._dynamo`` real (see :func:`defer_dynamo`).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from types import ModuleType
from typing import Any

__all__ = [
    "DEFERRED",
    "defer_dynamo",
    "defer_imports",
    "deferred",
    "dynamo_deferred",
    "eager_imports",
    "faiss_num_gpus",
    "forward",
    "forwarded",
    "has_faiss",
    "lazy_exports",
    "require",
    "require_faiss",
]


def eager_imports() -> bool:
    """Whether ``GRAPHRERANK_EAGER_IMPORTS`` asks for every module at import time (no lazy
    exports, ``torch._dynamo`` not deferred)."""
    return os.environ.get("GRAPHRERANK_EAGER_IMPORTS", "") not in ("", "0")


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


# --- Deferred imports: ``torch._dynamo``, ``requests`` --------------------------------------------
#
# PyTorch Geometric imports ``torch._dynamo`` when it is imported (``torch_geometric.isinstance``
# needs ``torch._dynamo.OptimizedModule`` only to unwrap a ``torch.compile``-d model). That import
# costs about 2 s of the command line's start and of ``import graphrerank`` although no path of
# this library compiles anything. Until something uses it, ``sys.modules["torch._dynamo"]`` holds
# a stand-in that imports the real module on its first attribute access and hands that over
# (``torch.compile``, ``import torch._dynamo.config``, ``is_torch_instance`` all work, loading it
# then). ``GRAPHRERANK_EAGER_IMPORTS=1`` switches this off.

_DYNAMO = "torch._dynamo"
_defer_lock = threading.RLock()

#: Modules PyTorch Geometric imports at its own import and uses only inside functions, deferred
#: in the same way: ``torch._dynamo`` (about 2 s), and ``requests`` (0.15 s, imported by one of
#: PyG's dataset classes to download files; a broken ``requests`` would fail PyG's import).
DEFERRED = (_DYNAMO, "requests")


class _DeferredModule(types.ModuleType):
    """Stand-in for a module not imported yet: the first attribute access imports it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_load_deferred(self), name)

    def __dir__(self) -> list[str]:
        return dir(_load_deferred(self))


def _load_deferred(stand_in: _DeferredModule) -> ModuleType:
    with _defer_lock:
        name = stand_in.__name__
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
            parent_name, _, child = name.rpartition(".")
            parent = sys.modules.get(parent_name)
            if parent is not None and parent.__dict__.get(child) is stand_in:
                delattr(parent, child)
        return importlib.import_module(name)


def _spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """Where ``name`` would be imported from, without importing it or its parent package."""
    parent, _, _ = name.rpartition(".")
    if not parent or parent in sys.modules:
        return importlib.util.find_spec(name)
    parent_spec = importlib.util.find_spec(parent)
    where = None if parent_spec is None else parent_spec.submodule_search_locations
    return None if where is None else importlib.machinery.PathFinder.find_spec(name, where)


def _defer(name: str) -> bool:
    with _defer_lock:
        if name in sys.modules:
            return isinstance(sys.modules[name], _DeferredModule)
        # Found, not imported: ``import graphrerank`` does not import torch either (the
        # stand-in waits in sys.modules; torch's own import never touches torch._dynamo). No
        # ``__path__`` on the stand-in: importing a submodule reads it and so loads the module.
        spec = _spec(name)
        if spec is None:  # not installed (or a torch without dynamo): nothing to defer
            return False
        stand_in = _DeferredModule(name)
        stand_in.__spec__ = spec
        stand_in.__file__ = spec.origin
        package = spec.submodule_search_locations is not None
        stand_in.__package__ = name if package else name.rpartition(".")[0]
        sys.modules[name] = stand_in
        return True


def defer_dynamo() -> bool:
    """Put a stand-in for ``torch._dynamo`` in ``sys.modules`` unless it is imported already.

    Returns whether the stand-in is in place. Called (by :func:`defer_imports`) from
    ``graphrerank/__init__.py`` before anything imports PyTorch Geometric; torch itself is
    found but not imported.
    """
    if eager_imports():
        return False
    return _defer(_DYNAMO)


def defer_imports() -> dict[str, bool]:
    """Put stand-ins for :data:`DEFERRED` in ``sys.modules`` (those installed and not imported
    yet); returns ``{module: whether its stand-in is in place}``."""
    if eager_imports():
        return dict.fromkeys(DEFERRED, False)
    return {name: _defer(name) for name in DEFERRED}


def deferred(name: str) -> bool:
    """Whether ``sys.modules[name]`` is still a stand-in (nothing has used the module yet)."""
    return isinstance(sys.modules.get(name), _DeferredModule)


def dynamo_deferred() -> bool:
    """Whether ``torch._dynamo`` is still the stand-in (nothing has used it yet)."""
    return deferred(_DYNAMO)


# --- Lazy exports (PEP 562) -------------------------------------------------------------------
#
# A package's ``__init__`` calls ``__getattr__, __dir__ = lazy_exports(__name__, {submodule:
# names})`` and keeps its literal ``__all__``. The first access to a name (attribute, ``from
# package import name``, autodoc) imports its submodule and binds the name in the package, so
# later accesses are plain look-ups. Every submodule listed is itself an attribute too
# (``graphrerank.graph.lists``).

#: ``{module: {name: module that defines it}}``: names a higher layer registered on a lower one
#: (:func:`forward`), resolved on first access, so that the lower layer never imports upward.
_FORWARDS: dict[str, dict[str, str]] = {}


def forward(module: str, names: Iterable[str], provider: str) -> None:
    """Make ``module.name`` resolve to ``provider.name`` for each of ``names``, on first access.

    For names of earlier releases that moved to a higher layer: the package root registers
    them (it may reach every layer); ``module``'s ``__getattr__`` (from :func:`lazy_exports`,
    or one that calls :func:`forwarded`) finds them here.
    """
    table = _FORWARDS.setdefault(module, {})
    for name in names:
        table[name] = provider
    loaded = sys.modules.get(module)
    if loaded is not None and eager_imports():
        for name in names:
            setattr(loaded, name, getattr(importlib.import_module(provider), name))


def forwarded(module: str, name: str) -> Any:
    """``provider.name`` for a name :func:`forward` registered on ``module``, bound in
    ``module``; ``AttributeError`` when none is."""
    provider = _FORWARDS.get(module, {}).get(name)
    if provider is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(provider), name)
    setattr(sys.modules[module], name, value)
    return value


def lazy_exports(
    package: str, exports: Mapping[str, Iterable[str]], *, submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``(__getattr__, __dir__)`` that import each name from its submodule on
    first use.

    Args:
        package: The package's ``__name__``.
        exports: ``{submodule: names}``: the public names each submodule (relative to
            ``package``) defines; every key is an attribute of the package too.
        submodules: Further submodules reachable as attributes, exporting no name here.

    With ``GRAPHRERANK_EAGER_IMPORTS=1`` every submodule is imported and every name bound
    before this returns (the package behaves as one with plain imports).

    Example (a package's ``__init__.py``)::

        __getattr__, __dir__ = lazy_exports(__name__, {"cg": ["CGResult", "conjugate_gradient"]})
    """
    where: dict[str, str] = {}
    for sub, names in exports.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} exported by {where[name]} and {sub}")
            where[name] = sub
    subs = frozenset(exports) | frozenset(submodules)
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        sub = where.get(name)
        if sub is not None:
            value = getattr(importlib.import_module(f"{package}.{sub}"), name)
        elif name in subs:
            value = importlib.import_module(f"{package}.{name}")
        else:
            return forwarded(package, name)
        module.__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(where) | subs | set(_FORWARDS.get(package, ())))

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__dir__ = __dir__  # type: ignore[method-assign]
    if eager_imports():
        for sub in (*exports, *submodules):
            importlib.import_module(f"{package}.{sub}")
        for name in where:
            __getattr__(name)
    return __getattr__, __dir__
