"""The layers stay in their rooms: nothing imports upward, and no import circle between layers.

From the bottom: base helpers -> ``graph`` (search, graphs, sparse algebra, ranking) ->
``diffusion`` (solvers), ``nn`` (layers), ``models`` (learned) -> ``rerankers`` (estimators)
-> ``cli``, ``plot``. ``metrics`` and ``datasets`` stand apart (they import neither ``graph``
nor ``rerankers``). Two checks, since each misses what the other sees:

* at run time, each subpackage is imported in a fresh interpreter with the package root
  replaced by a bare namespace (the real root imports every layer), and the graphrerank
  modules it pulled in are compared with what its layer may use;
* statically, every ``import`` statement of every module, including those inside functions
  (a lazy upward import would not show at import time), is resolved and checked.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "graphrerank"

#: Modules below every layer: they import nothing of graphrerank but each other.
BASE = {
    "_checks",
    "_imports",
    "_io",
    "_numba",
    "_params",
    "_progress",
    "_version",
    "typing",
    "testing",
}

#: What each layer may import (besides itself and the base helpers).
ALLOWED = {
    "graph": set(),
    "diffusion": {"graph"},
    "nn": {"graph"},
    "models": {"graph", "nn", "metrics"},
    "rerankers": {"graph", "diffusion", "nn", "models", "metrics"},
    "metrics": set(),
    "datasets": set(),
    "cli": {
        "graph",
        "diffusion",
        "nn",
        "models",
        "rerankers",
        "metrics",
        "datasets",
        "plot",
        "tuning",
    },
    "plot": {"graph", "diffusion", "nn", "models", "rerankers", "metrics", "datasets"},
    "tuning": {"graph", "diffusion", "nn", "models", "rerankers", "metrics", "datasets", "plot"},
}

_PROBE = r"""
import importlib, json, sys, types
root = types.ModuleType("graphrerank")
root.__path__ = [sys.argv[1]]
sys.modules["graphrerank"] = root
importlib.import_module("graphrerank." + sys.argv[2])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("graphrerank."))))
"""


def _layer(module: str) -> str:
    """``graphrerank.graph.build`` -> ``graph``; ``graphrerank._checks`` -> ``_checks``."""
    return module.split(".")[1]


def _top(name: str) -> str:
    return name if name in ALLOWED else "base"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_loads_only_what_it_may_use(layer):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(PACKAGE), layer],
        capture_output=True,
        text=True,
        timeout=300,
        # packages export lazily: import every module of the layer, as the eager switch does
        env={**os.environ, "GRAPHRERANK_EAGER_IMPORTS": "1"},
    )
    assert out.returncode == 0, f"graphrerank.{layer} does not import on its own:\n{out.stderr}"
    loaded = {_layer(m) for m in json.loads(out.stdout)}
    upward = sorted(m for m in loaded - BASE - {layer} if m not in ALLOWED[layer])
    assert not upward, f"importing graphrerank.{layer} loads graphrerank.{upward}"


def _imports(path: Path, package_dir: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, graphrerank module)`` of every import in a file, relative ones resolved."""
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    if package[-1] == "__init__":
        package = package[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("graphrerank")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("graphrerank"):
                continue
            if mod == "graphrerank" or (node.level and not node.module):
                # "from .. import x": x is a module of that package (or the root itself)
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, mod))
    return out


#: Every module but the root (which may import everything) and ``python -m graphrerank``.
FILES = sorted(
    p
    for p in PACKAGE.rglob("*.py")
    if p.parent != PACKAGE or p.stem not in ("__init__", "__main__")
)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PACKAGE)) for p in FILES])
def test_no_import_points_upward(path):
    rel = path.relative_to(PACKAGE)
    here = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    may = BASE | {here} | ALLOWED.get(here, set())
    if here in BASE:
        may = BASE
    bad = []
    for line, mod in _imports(path):
        parts = mod.split(".")
        if len(parts) == 1:
            bad.append((line, "the package root"))
            continue
        target = parts[1]
        if target not in may:
            bad.append((line, mod))
    assert not bad, f"{rel} imports upward: {bad}"


def test_no_import_circle_between_layers():
    edges: dict[str, set[str]] = {}
    for path in FILES:
        rel = path.relative_to(PACKAGE)
        here = _top(rel.parts[0] if len(rel.parts) > 1 else rel.stem)
        for _, mod in _imports(path):
            parts = mod.split(".")
            if len(parts) > 1 and _top(parts[1]) != here:
                edges.setdefault(here, set()).add(_top(parts[1]))
    # depth-first search for a cycle
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(f"import circle: {' -> '.join([*trail, node, nxt])}")
            if state.get(nxt) is None:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in list(edges):
        if node not in state:
            visit(node, [])


def test_the_static_check_sees_imports_inside_functions(tmp_path):
    """Not vacuous: an upward import written inside a function, relative or absolute, and the
    root imported by ``from .. import``, are all found."""
    fake = tmp_path / "graphrerank" / "graph" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "from .. import __version__\n"
        "def f():\n"
        "    from ..rerankers import KNN\n"
        "    import graphrerank.nn.propagate\n"
        "    from .sparse import csr\n"
    )
    assert _imports(fake, tmp_path / "graphrerank") == [
        (1, "graphrerank.__version__"),
        (3, "graphrerank.rerankers"),
        (4, "graphrerank.nn.propagate"),
        (5, "graphrerank.graph.sparse"),
    ]
