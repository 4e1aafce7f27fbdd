"""The cost of a grid search: ``graphrerank.tune`` (first stage computed once, shared) against
the sum of the same settings fitted and scored one by one on the descriptors.

Synthetic data (``make_retrieval_dataset``): a database of ``--size`` items with
``--queries`` separate queries, a Diffusion grid over ``kd`` x ``kq`` x ``alpha`` (50 settings
by default). Each measurement runs in a fresh process (its peak memory is its own); the
independent runs are split in two halves run before and after the tuning run (interleaved, so
both see the same machine load). Every setting's score is compared between the two paths.

    python benchmarks/bench_tune.py                       # 10k x 128, 100 queries, 50 settings
    python benchmarks/bench_tune.py --size 2000 --grid small   # a quick check
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isolated, machine, rss_mb

GRIDS = {
    "full": {"kd": [10, 20, 30, 50, 80], "kq": [3, 5, 10, 20, 30], "alpha": [0.9, 0.99]},
    "small": {"kd": [10, 30], "kq": [5, 10], "alpha": [0.99]},
}


def _data(size: int, dim: int, classes: int, queries: int):
    from graphrerank.datasets import make_retrieval_dataset
    from graphrerank.tuning import class_protocol

    ds = make_retrieval_dataset(
        num_items=size, dim=dim, num_classes=classes, num_queries=queries, seed=0
    )
    return class_protocol(ds.database, ds.database_labels, ds.queries, ds.query_labels)


def run_tune(size: int, dim: int, classes: int, queries: int, grid: str, k: int) -> dict:
    from graphrerank.rerankers import Diffusion
    from graphrerank.tuning import tune

    p = _data(size, dim, classes, queries)
    base = rss_mb()
    given = Diffusion(**{n: v[-1] for n, v in GRIDS[grid].items()})  # in the grid
    t, c = time.perf_counter(), time.process_time()
    res = tune(given, GRIDS[grid], p, k=k)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    scores = {repr(r["params"]): r["score"] for r in res.results_ if r["params"] is not None}
    return {
        "wall": wall,
        "cpu": cpu,
        "first_stage": res.first_stage_s,
        "runs": len(res.results_),
        "scores": scores,
        "best": res.best_params_,
        "base_mb": base,
        "peak_mb": rss_mb(),
    }


def run_independent(
    size: int, dim: int, classes: int, queries: int, grid: str, k: int, part: int
) -> dict:
    import itertools

    from graphrerank.rerankers import KNN, Diffusion

    p = _data(size, dim, classes, queries)
    base = rss_mb()
    names = list(GRIDS[grid])
    combos = [dict(zip(names, c)) for c in itertools.product(*GRIDS[grid].values())]
    half = (len(combos) + 1) // 2
    mine = combos[:half] if part == 0 else combos[half:]
    models = ([KNN()] if part == 0 else []) + [Diffusion(**c) for c in mine]
    t, c = time.perf_counter(), time.process_time()
    scores = {}
    for model, params in zip(models, ([None] if part == 0 else []) + mine):
        model.fit(p.database)
        s = p.score(model.rerank(p.queries, k).indices)
        if params is not None:
            scores[repr(params)] = s
    return {"wall": time.perf_counter() - t, "cpu": time.process_time() - c, "scores": scores,
            "runs": len(models),
            "base_mb": base, "peak_mb": rss_mb()}  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="full")
    ap.add_argument("--k", type=int, default=100, help="ranking length")
    args = ap.parse_args(argv)
    common = {"size": args.size, "dim": args.dim, "classes": args.classes,
              "queries": args.queries, "grid": args.grid, "k": args.k}  # fmt: skip
    a = isolated(run_independent, **common, part=0)
    t = isolated(run_tune, **common)
    b = isolated(run_independent, **common, part=1)
    independent = a["wall"] + b["wall"]
    independent_cpu = a["cpu"] + b["cpu"]
    ind_scores = {**a["scores"], **b["scores"]}
    diff = max(abs(t["scores"][key] - v) for key, v in ind_scores.items())
    n = len(ind_scores)
    command = "python benchmarks/bench_tune.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"Machine: {machine()}")
    print(f"Command: {command.strip()}")
    print(
        f"Diffusion grid {GRIDS[args.grid]} ({n} settings) on synthetic data: {args.size} x "
        f"{args.dim} database, {args.queries} queries, {args.classes} classes; rankings of "
        f"{args.k}; class mAP. One run of each (the independent runs split in two halves "
        "around the tuning run); CPU s = process CPU time (one thread: robust to other load on "
        "the machine), wall s = elapsed; peak = resident memory of the measuring process; "
        "ratio = independent / tune.\n"
    )
    print("| run | settings fitted | CPU s | wall s | first stage s | peak MiB | ratio (CPU) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| independent fit + rerank, summed | {n} + baseline | {independent_cpu:.1f} | "
        f"{independent:.1f} | (in each) | {max(a['peak_mb'], b['peak_mb']):.0f} | 1.00 |"
    )
    print(
        f"| graphrerank.tune (shared first stage) | {t['runs'] - 1} + baseline | {t['cpu']:.1f} | "
        f"{t['wall']:.1f} | {t['first_stage']:.1f} (once) | {t['peak_mb']:.0f} | "
        f"{independent_cpu / t['cpu']:.2f} |"
    )
    print(f"\nlargest |mAP difference| between the two paths over the {n} settings: {diff:.2e}")
    print(f"best setting: {t['best']}")


if __name__ == "__main__":
    main()
