"""Fixed costs: how long ``import graphrerank`` and the command line take to start, and how much
longer the first call of each re-ranker takes than the second.

Every measurement runs in a fresh interpreter, the variants interleaved round by round (so that
the machine's load falls on all of them alike); the tables give medians. ``import torch`` is the
floor every torch library pays; "over torch" is what graphrerank adds on top of it. The
"eager" rows set ``GRAPHRERANK_EAGER_IMPORTS=1``: every module imported at ``import
graphrerank`` and ``torch._dynamo`` imported by PyTorch Geometric, as before the imports were
made lazy.

The first-call overhead of a re-ranker is what a user pays once, in a fresh process after
``import torch, graphrerank``, on top of the work itself: the import of the modules it needs
(``graphrerank.rerankers.NAME``: its modules and PyTorch Geometric, SciPy, numba where they
need them) plus its first ``fit`` + ``rerank`` (first-use initialisation, numba's cached
kernels loaded), minus the same ``fit`` + ``rerank`` run a second time. Each re-ranker has its
own processes (so that none inherits another's imports); the descriptors are read from a
``.npy`` file (loading them with scikit-learn would import SciPy before the clock starts).
Data: digits (1,797 x 64, all-vs-all, k = 10, default settings); the local-descriptor
re-ranker gets an untrained :class:`~graphrerank.models.LocalMatcher` and
:func:`~graphrerank.datasets.make_local_descriptors` (600 images of 24 x 32).

numba's kernels are compiled with ``cache=True``: an untimed process runs every re-ranker first,
so that the timed ones load the cached kernels (as every run after the first does).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_startup.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, median, table

#: ``(row, code, eager)``: fresh-interpreter imports.
IMPORTS = [
    ("python (no import)", "pass", False),
    ("import torch", "import torch", False),
    ("import torch, torch_geometric", "import torch, torch_geometric", False),
    ("import graphrerank", "import graphrerank", False),
    ("import torch, graphrerank", "import torch, graphrerank", False),
    ("import torch, graphrerank (eager)", "import torch, graphrerank", True),
]

#: ``(row, argv after python, eager)``: the command line.
COMMANDS = [
    ("graphrerank --help", ["-m", "graphrerank", "--help"], False),
    ("graphrerank --help (eager)", ["-m", "graphrerank", "--help"], True),
]

#: Third-party packages whose import the first call reports (the ones imported lazily).
WATCHED = ("torch_geometric", "scipy", "numba", "faiss", "sklearn")

FIRST_CALL = r"""
import json, sys, time
import numpy as np
import torch
import graphrerank
name, data = sys.argv[1], sys.argv[2]
arrays = np.load(data)
x = torch.from_numpy(arrays["digits"])
fit, rerank = {}, {}
if name == "LocalDescriptorReranker":
    from graphrerank.models import LocalMatcher  # its import is part of the user's setup
    glob, local = torch.from_numpy(arrays["glob"]), torch.from_numpy(arrays["local"])
    torch.manual_seed(0)
    model = LocalMatcher(local.shape[-1]).eval()
    x, fit, rerank = glob, {"local": local}, {"local": local}
before = set(sys.modules)
t0 = time.perf_counter()
cls = getattr(graphrerank.rerankers, name)
settings = {"model": model} if name == "LocalDescriptorReranker" else {}
t1 = time.perf_counter()
calls = []
for _ in range(2):
    t = time.perf_counter()
    cls(**settings).fit(x, **fit).rerank(x if rerank else None, 10, **rerank)
    calls.append(time.perf_counter() - t)
loaded = sorted({m.split(".")[0] for m in set(sys.modules) - before} & set(WATCHED))
print(json.dumps({"import": t1 - t0, "first": calls[0], "second": calls[1], "loads": loaded}))
"""


def _env(eager: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GRAPHRERANK_EAGER_IMPORTS"}
    env.setdefault("OMP_NUM_THREADS", "1")
    if eager:
        env["GRAPHRERANK_EAGER_IMPORTS"] = "1"
    return env


def _wall(argv: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, env=env, capture_output=True)
    return time.perf_counter() - t


def _rerankers() -> list[str]:
    import graphrerank

    names = [c.__name__ for c in graphrerank.rerankers.RERANKERS]
    return [*names, *(c.__name__ for c in graphrerank.rerankers.RERANKERS_WITH_LOCAL)]


def _write_data(path: Path) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    from graphrerank.datasets import make_local_descriptors

    x = load_digits().data.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    glob, local, _ = make_local_descriptors()
    np.savez(path, digits=x, glob=glob.numpy(), local=local.numpy())


def _first_call(name: str, data: Path) -> dict:
    code = f"WATCHED = {WATCHED!r}\n" + FIRST_CALL
    out = subprocess.run(
        [sys.executable, "-c", code, name, str(data)],
        check=True,
        env=_env(False),
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per row")
    parser.add_argument("--only", choices=("imports", "calls"), help="one of the two tables")
    args = parser.parse_args()
    loads: list[float] = []

    rows = []
    if args.only != "calls":
        runs: dict[str, list[float]] = {r: [] for r, _, _ in IMPORTS + COMMANDS}
        for _ in range(args.repeats):  # interleaved, round by round
            for row, code, eager in IMPORTS:
                runs[row].append(_wall([sys.executable, "-c", code], _env(eager)))
            for row, argv, eager in COMMANDS:
                runs[row].append(_wall([sys.executable, *argv], _env(eager)))
            loads.append(os.getloadavg()[0])
        python_s, torch_s = median(runs["python (no import)"]), median(runs["import torch"])
        rows = [
            {
                "what": row,
                "median s": median(ts),
                "over python s": median(ts) - python_s,
                "over torch s": median(ts) - torch_s,
                "runs": len(ts),
            }
            for row, ts in runs.items()
        ]

    call_rows = []
    if args.only != "imports":
        names = _rerankers()
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data.npz"
            _write_data(data)
            for name in names:  # untimed: compile numba's cached kernels if not yet on disk
                _first_call(name, data)
            results: dict[str, list[dict]] = {n: [] for n in names}
            for _ in range(args.repeats):
                for name in names:
                    results[name].append(_first_call(name, data))
                loads.append(os.getloadavg()[0])
        for name, rs in results.items():
            call_rows.append(
                {
                    "re-ranker": name,
                    "import s": median([r["import"] for r in rs]),
                    "first s": median([r["first"] for r in rs]),
                    "second s": median([r["second"] for r in rs]),
                    "overhead s": median([r["import"] + r["first"] - r["second"] for r in rs]),
                    "loads": ", ".join(rs[0]["loads"]) or "-",
                }
            )

    print(f"# Start-up and first-call costs\n\n{machine()}")
    print(f"load average (1 min) during the runs: {min(loads):.1f} to {max(loads):.1f}")
    print("Command: OMP_NUM_THREADS=1 python benchmarks/bench_startup.py " + " ".join(sys.argv[1:]))
    if rows:
        print(f"\nFresh interpreters, interleaved; median of {args.repeats}.\n")
        print(table(rows, [("what", "what"), ("median s", "median s"),
                           ("over python s", "over `python`, s"),
                           ("over torch s", "over `import torch`, s"), ("runs", "runs")]))  # fmt: skip
    if call_rows:
        print(
            f"\nFirst call of each re-ranker in a fresh process after `import torch, graphrerank` "
            f"(digits 1,797 x 64, all-vs-all, k = 10, defaults); median over {args.repeats} "
            "processes each. Overhead = import + first - second.\n"
        )
        print(table(call_rows, [("re-ranker", "re-ranker"), ("import s", "import of its modules, s"),
                                ("first s", "first fit + rerank, s"),
                                ("second s", "second, s"), ("overhead s", "first-call overhead, s"),
                                ("loads", "imports on first use")]))  # fmt: skip


if __name__ == "__main__":
    main()
