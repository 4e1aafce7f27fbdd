"""The public surface: every package lists __all__, every public object is documented."""

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import graphrerank


def _modules():
    yield graphrerank
    for info in pkgutil.walk_packages(graphrerank.__path__, "graphrerank."):
        if ".__main__" in info.name:
            continue
        yield importlib.import_module(info.name)


MODULES = list(_modules())


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_all_is_defined_and_resolvable(module):
    assert hasattr(module, "__all__"), f"{module.__name__} has no __all__"
    for name in module.__all__:
        assert hasattr(module, name), f"{module.__name__}.__all__ lists missing {name!r}"


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_public_objects_have_docstrings(module):
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_import_is_light():
    """Importing graphrerank must not import faiss, matplotlib or scikit-learn."""
    code = (
        "import sys, graphrerank; "
        "print(','.join(m for m in ('faiss', 'matplotlib', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
