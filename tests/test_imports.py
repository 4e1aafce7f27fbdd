"""Imports on first use: ``import graphrerank`` imports neither torch, PyTorch Geometric, SciPy
nor faiss, each name loads only its own modules, and ``torch._dynamo`` stays unimported until
something uses it.

Most checks run in a fresh interpreter: the test process itself has imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest


def _run(code: str, **env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "GRAPHRERANK_EAGER_IMPORTS"}
    full_env.update(OMP_NUM_THREADS="1", **env)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_defers_dynamo_and_rerankers_do_not_load_it():
    out = _run(
        """
        import sys
        import torch
        import graphrerank
        from graphrerank._imports import dynamo_deferred
        print(dynamo_deferred(), type(sys.modules["torch._dynamo"]).__name__)
        x = torch.nn.functional.normalize(torch.randn(60, 8, generator=torch.Generator().manual_seed(0)), dim=1)
        from graphrerank.rerankers import KNN, KReciprocal, GNNRerank, Diffusion, AlphaQueryExpansion
        for cls in (KNN, KReciprocal, GNNRerank, Diffusion, AlphaQueryExpansion):
            cls().fit(x).rerank(None, 5)
        print(dynamo_deferred())
        """
    )
    assert out.splitlines() == ["True _DeferredModule", "True"]


def test_deferred_dynamo_loads_on_first_use():
    out = _run(
        """
        import sys
        import torch
        import graphrerank
        import torch_geometric
        from graphrerank._imports import dynamo_deferred
        before = dynamo_deferred()
        lin = torch.nn.Linear(2, 2)
        compiled = torch.compile(lin)  # builds the wrapper; compiles lazily on the first call
        print(before, dynamo_deferred(), type(compiled).__name__)
        print(torch_geometric.is_torch_instance(compiled, torch.nn.Linear))
        import torch._dynamo.config
        print(sys.modules["torch._dynamo"] is torch._dynamo, hasattr(torch._dynamo, "optimize"))
        """
    )
    assert out.splitlines() == ["True False OptimizedModule", "True", "True True"]


def test_from_import_and_is_compiling_through_the_stand_in():
    out = _run(
        """
        import graphrerank
        import torch
        print(torch.compiler.is_compiling())
        from torch._dynamo import OptimizedModule
        print(OptimizedModule.__name__)
        """
    )
    assert out.splitlines() == ["False", "OptimizedModule"]


def test_eager_imports_switch():
    out = _run(
        """
        import sys
        import graphrerank
        from graphrerank._imports import dynamo_deferred
        print(dynamo_deferred(), type(sys.modules["torch._dynamo"]).__name__)
        """,
        GRAPHRERANK_EAGER_IMPORTS="1",
    )
    assert out == "False module"


def test_dynamo_imported_first_is_left_alone():
    out = _run(
        """
        import sys
        import torch._dynamo
        import graphrerank
        from graphrerank._imports import defer_dynamo, dynamo_deferred
        print(dynamo_deferred(), defer_dynamo(), type(sys.modules["torch._dynamo"]).__name__)
        """
    )
    assert out == "False False module"


# --- Lazy exports: ``import graphrerank`` imports no heavy dependency -------------------------

HEAVY = ("torch", "torch_geometric", "scipy", "numba", "faiss", "sklearn", "matplotlib")


def test_import_graphrerank_imports_no_heavy_dependency():
    out = _run(
        f"""
        import sys
        import graphrerank
        print(graphrerank.__version__ == graphrerank._version.__version__)
        print([m for m in {HEAVY!r} if m in sys.modules])
        print(sorted(m for m in sys.modules if m.startswith("graphrerank")))
        import torch  # the stand-in for torch._dynamo waits; torch imports as usual
        from graphrerank._imports import dynamo_deferred
        print(dynamo_deferred(), float(torch.ones(2).sum()))
        """
    )
    assert out.splitlines() == [
        "True",
        "[]",
        "['graphrerank', 'graphrerank._imports', 'graphrerank._startup', 'graphrerank._version']",
        "True 2.0",
    ]


def test_help_and_version_import_no_heavy_dependency():
    out = _run(
        f"""
        import contextlib, io, sys
        from graphrerank.cli import main
        for argv in (["--help"], ["evaluate", "--help"], ["--version"]):
            text = io.StringIO()
            with contextlib.redirect_stdout(text):
                try:
                    main(argv)
                except SystemExit as exit:
                    print("exit", exit.code, file=sys.stderr)
            print(len(text.getvalue().splitlines()) > 0, end=" ")
        print()
        print([m for m in {HEAVY!r} if m in sys.modules])
        """
    )
    assert out.splitlines() == ["True True True ", "[]"]


def test_help_lists_the_exit_statuses_of_the_commands():
    from graphrerank.cli import base, commands
    from graphrerank.cli.parser import build_parser

    # the parser reads them from base (so that --help needs no torch); commands uses the same
    assert (commands.EXIT_OK, commands.EXIT_ROW_FAILED, commands.EXIT_BAD_INPUT) == (0, 1, 2)
    assert (base.EXIT_OK, base.EXIT_ROW_FAILED, base.EXIT_BAD_INPUT) == (0, 1, 2)
    epilog = build_parser()._subparsers._group_actions[0].choices["evaluate"].epilog
    assert "0  every row has its result" in epilog and "2  bad options" in epilog


#: Every package with lazy exports, and the names of earlier releases forwarded to a higher layer.
PACKAGES = (
    "graphrerank",
    "graphrerank.cli",
    "graphrerank.datasets",
    "graphrerank.diffusion",
    "graphrerank.diffusion.offline",  # a module: only for its forwarded names
    "graphrerank.graph",
    "graphrerank.metrics",
    "graphrerank.models",
    "graphrerank.nn",
    "graphrerank.rerankers",
)
LEGACY = {
    "graphrerank.diffusion": (
        "diffusion_rerank",
        "regional_diffusion_rerank",
        "fsr_rerank",
        "offline_diffusion_rerank",
        "rdip_rerank",
    ),
    "graphrerank.models": ("local_descriptor_rerank",),
    "graphrerank.diffusion.offline": ("offline_diffusion_rerank", "rdip_rerank"),
}

_SURFACE = f"""
import importlib, inspect, json, types
PACKAGES, LEGACY = {PACKAGES!r}, {LEGACY!r}

def describe(obj):
    if isinstance(obj, types.ModuleType):
        return "module " + obj.__name__
    if inspect.isclass(obj) or inspect.isfunction(obj):
        kind = "class" if inspect.isclass(obj) else "function"
        return f"{{kind}} {{obj.__module__}}.{{obj.__qualname__}}"
    if isinstance(obj, tuple) and obj and all(inspect.isclass(c) for c in obj):
        return [describe(c) for c in obj]
    return repr(obj)

out = {{}}
for name in PACKAGES:
    pkg = importlib.import_module(name)
    names = list(pkg.__all__) + list(LEGACY.get(name, ()))
    out[name] = {{n: describe(getattr(pkg, n)) for n in names}}
    out[name]["(dir has __all__)"] = set(pkg.__all__) <= set(dir(pkg))
print(json.dumps(out, sort_keys=True))
"""


def test_lazy_names_are_the_eager_ones():
    """Every public name (and every forwarded one of an earlier release) of every package is
    the same object lazily as with ``GRAPHRERANK_EAGER_IMPORTS=1`` (plain imports)."""
    lazy = json.loads(_run(_SURFACE))
    eager = json.loads(_run(_SURFACE, GRAPHRERANK_EAGER_IMPORTS="1"))
    assert lazy == eager
    assert all(surface["(dir has __all__)"] for surface in lazy.values())
    assert lazy["graphrerank"]["KNN"] == "class graphrerank.rerankers.knn.KNN"
    assert lazy["graphrerank.diffusion"]["rdip_rerank"] == (
        "function graphrerank.rerankers.offline.rdip_rerank"
    )
    assert lazy["graphrerank.diffusion.offline"]["rdip_rerank"] == (
        "function graphrerank.rerankers.offline.rdip_rerank"
    )
    assert lazy["graphrerank.rerankers"]["RERANKERS"][0] == "class graphrerank.rerankers.knn.KNN"


def test_first_use_loads_only_the_modules_it_needs():
    out = _run(
        """
        import sys
        from graphrerank.rerankers import KNN
        import graphrerank.diffusion
        loaded = lambda *names: [n for n in names if n in sys.modules]
        print(loaded("graphrerank.rerankers.knn", "graphrerank.graph.knn"))
        print(loaded("graphrerank.models", "graphrerank.nn", "graphrerank.rerankers.offline",
                     "graphrerank.diffusion.offline", "graphrerank.datasets", "faiss"))
        graphrerank.rerankers.KReciprocal
        print(loaded("scipy", "graphrerank.nn.kreciprocal", "graphrerank.models"))
        """
    )
    assert out.splitlines() == [
        "['graphrerank.rerankers.knn', 'graphrerank.graph.knn']",
        "[]",
        "['scipy', 'graphrerank.nn.kreciprocal']",
    ]


def test_a_knn_ranking_runs_without_importing_pyg():
    # the plain kNN ranking (torch backend) needs neither PyTorch Geometric nor SciPy's
    # sparse module: its first call does not pay their import
    out = _run(
        """
        import sys
        import torch
        from graphrerank.rerankers import KNN
        x = torch.nn.functional.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(0)), dim=1)
        r = KNN(backend="torch").fit(x).rerank(x[:3], 5)
        print(r.indices.shape[1], r.indices[0, 0].item(), "torch_geometric" in sys.modules)
        """
    )
    assert out == "5 0 False"


def test_eager_switch_imports_every_module():
    out = _run(
        """
        import sys
        import graphrerank
        print([m in sys.modules for m in ("torch_geometric", "graphrerank.rerankers.offline",
               "graphrerank.models.train", "graphrerank.cli.commands")])
        print("RERANKERS" in vars(graphrerank.rerankers), "rdip_rerank" in vars(graphrerank.diffusion))
        """,
        GRAPHRERANK_EAGER_IMPORTS="1",
    )
    assert out.splitlines() == ["[True, True, True, True]", "True True"]


def test_unknown_names_fail_as_without_laziness():
    import graphrerank
    import graphrerank.graph

    with pytest.raises(AttributeError, match="module 'graphrerank.graph' has no attribute 'nope'"):
        graphrerank.graph.nope  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'Nope'"):
        from graphrerank.rerankers import Nope  # noqa: F401
    assert not hasattr(graphrerank, "nope")
    assert "KNN" in dir(graphrerank) and "RERANKERS" in dir(graphrerank.rerankers)


def test_lazy_exports_refuses_a_name_exported_twice(monkeypatch):
    from graphrerank._imports import lazy_exports

    fake = types.ModuleType("graphrerank_fake_package")
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    with pytest.raises(ValueError, match="'f' exported by a and b"):
        lazy_exports(fake.__name__, {"a": ("f",), "b": ("f",)})


def test_requests_is_deferred_and_loads_on_first_use():
    out = _run(
        """
        import sys
        import graphrerank
        import torch_geometric  # imports requests (a dataset class downloads with it)
        from graphrerank._imports import deferred
        print(deferred("requests"), type(sys.modules["requests"]).__name__)
        import requests
        from requests import Session
        import requests.adapters
        print(deferred("requests"), Session.__module__, requests.adapters.HTTPAdapter.__name__)
        print(sys.modules["requests"].Session is Session, requests.__version__ > "2")
        """
    )
    assert out.splitlines() == [
        "True _DeferredModule",
        "False requests.sessions HTTPAdapter",
        "True True",
    ]
