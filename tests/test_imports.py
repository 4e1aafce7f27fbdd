"""``import graphrerank`` leaves ``torch._dynamo`` unimported until something uses it.

Each check runs in a fresh interpreter: the test process itself may have imported dynamo.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


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
