"""Fixed costs: how long ``import graphrerank`` and the command line take to start, and how much
longer the first call of each re-ranker takes than the second.

Every measurement runs in a fresh interpreter, the variants interleaved round by round (so that
the machine's load falls on all of them alike); the table gives medians. ``import torch`` is the
floor every torch library pays; "over torch" is what graphrerank adds on top of it. The
"eager" row is the same import with ``GRAPHRERANK_EAGER_IMPORTS=1`` (``torch._dynamo`` imported
by PyTorch Geometric at import time, as before it was deferred).

The first-call overhead is ``first - second`` for a fit + rerank of the same re-ranker on the
same data (digits, 1,797 x 64, all-vs-all, k = 10) in one fresh process: what a user pays once
(lazy imports, first-use initialisation), on top of the work itself.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_startup.py [--repeats 7]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import machine, median, table

IMPORTS = {
    "python (no import)": "pass",
    "import torch": "import torch",
    "import torch, torch_geometric": "import torch, torch_geometric",
    "import graphrerank": "import graphrerank",
    "import graphrerank (eager)": "import graphrerank",
}

FIRST_CALL = r"""
import json, time
import torch
import graphrerank
from sklearn.datasets import load_digits
from graphrerank import rerankers as R
x = torch.nn.functional.normalize(torch.as_tensor(load_digits().data, dtype=torch.float32), dim=1)
out = {}
for name in NAMES:
    cls = getattr(R, name)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        cls().fit(x).rerank(None, 10)
        times.append(time.perf_counter() - t)
    out[name] = times
print(json.dumps(out))
"""

RERANKERS = [
    "KNN",
    "KReciprocal",
    "GNNRerank",
    "AlphaQueryExpansion",
    "DatabaseAugmentation",
    "SuperGlobal",
    "Diffusion",
    "OfflineDiffusion",
    "FastSpectralRanking",
    "RDiP",
]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    runs: dict[str, list[float]] = {k: [] for k in IMPORTS}
    runs["graphrerank --help"] = []
    for _ in range(args.repeats):  # interleaved, round by round
        for name, code in IMPORTS.items():
            runs[name].append(_wall([sys.executable, "-c", code], _env("eager" in name)))
        runs["graphrerank --help"].append(
            _wall([sys.executable, "-m", "graphrerank", "--help"], _env(False))
        )
    torch_s = median(runs["import torch"])
    rows = [
        {
            "what": name,
            "median s": median(ts),
            "over torch s": median(ts) - torch_s if name not in ("python (no import)",) else "",
            "runs": len(ts),
        }
        for name, ts in runs.items()
    ]

    code = f"NAMES = {RERANKERS!r}\n" + FIRST_CALL
    firsts: dict[str, list[tuple[float, float]]] = {n: [] for n in RERANKERS}
    for _ in range(max(1, args.repeats // 2)):
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, env=_env(False), capture_output=True,
            text=True,
        )  # fmt: skip
        for name, (first, second) in json.loads(out.stdout.strip().splitlines()[-1]).items():
            firsts[name].append((first, second))
    call_rows = [
        {
            "re-ranker": name,
            "first call s": median([a for a, _ in pairs]),
            "second call s": median([b for _, b in pairs]),
            "first - second s": median([a - b for a, b in pairs]),
        }
        for name, pairs in firsts.items()
    ]

    print(f"# Start-up and first-call costs\n\n{machine()}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print("Command: OMP_NUM_THREADS=1 python benchmarks/bench_startup.py " + " ".join(sys.argv[1:]))
    print(f"\nFresh interpreters, interleaved; median of {args.repeats}.\n")
    print(table(rows, [("what", "what"), ("median s", "median s"),
                       ("over torch s", "over `import torch`, s"), ("runs", "runs")]))  # fmt: skip
    print(
        f"\nFirst vs second fit + rerank in one fresh process (digits 1,797 x 64, all-vs-all, "
        f"k = 10, defaults); median over {max(1, args.repeats // 2)} processes.\n"
    )
    print(table(call_rows, [("re-ranker", "re-ranker"), ("first call s", "first call s"),
                            ("second call s", "second call s"),
                            ("first - second s", "first-call overhead s")]))  # fmt: skip


if __name__ == "__main__":
    main()
