"""The sub-commands ``evaluate``, ``bench``, ``demo`` and ``list``.

Each takes the options parsed by :func:`~graphrerank.cli.build_parser` and returns the exit
status; bad input raises :class:`~graphrerank.cli.CLIError`, which
:func:`~graphrerank.cli.main` reports.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import plot, rerankers
from .._imports import has_faiss
from .._progress import Progress
from ..datasets import make_retrieval_dataset
from ..metrics import class_map
from .base import PROG, CLIError
from .report import bench_table, describe_reranker, machine, metric_table, write_json
from .specs import select_rerankers
from .tasks import Task, builtin_task, load_task

__all__ = ["bench", "demo", "evaluate", "list_rerankers"]


# --------------------------------------------------------------------------- running
def _device(name: str | None) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CLIError(f"--device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine")
    return device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _normalize(x: Tensor | None) -> Tensor | None:
    return None if x is None else torch.nn.functional.normalize(x, dim=1)


def _k(args_k: int | None, n: int) -> int:
    if args_k is None:
        return n
    if not 1 <= args_k <= n:
        raise CLIError(f"--k must be between 1 and the database size {n}, got {args_k}")
    return args_k


def _command_line(args: argparse.Namespace) -> list[str]:
    """The command as typed, for the reports (``main``'s ``argv``, else ``sys.argv``)."""
    return [PROG, *(sys.argv[1:] if args.argv is None else args.argv)]


def _warm_up() -> None:
    """Import the kNN backend before timing, so that its import is not in the first fit."""
    if has_faiss():
        import faiss  # noqa: F401


def _fit_rerank(
    model: Any, db: Tensor, q: Tensor | None, k: int, device: torch.device
) -> tuple[Any, float, float]:
    """``model.fit(db)`` then ``model.rerank(q, k)``: the result and the seconds of each.

    An ``ImportError`` (an optional dependency of one method) passes through; invalid
    settings or data become a :class:`CLIError` naming the re-ranker.
    """
    try:
        _sync(device)
        t0 = time.perf_counter()
        model.fit(db)
        _sync(device)
        t1 = time.perf_counter()
        result = model.rerank(q, k)
        _sync(device)
        t2 = time.perf_counter()
    except (ValueError, TypeError) as err:
        raise CLIError(f"{model!r}: {err}") from None
    return result, t1 - t0, t2 - t1


def _run(task: Task, models: list[Any], k: int, device: torch.device) -> list[dict]:
    """Fit and re-rank each model once on ``task`` and score its rankings."""
    _warm_up()
    db = task.database.to(device)
    q = None if task.queries is None else task.queries.to(device)
    rows = []
    with Progress(len(models), "re-ranking") as bar:
        for model in models:
            try:
                result, fit_s, rerank_s = _fit_rerank(model, db, q, k, device)
            except ImportError as err:
                print(f"{model!r}: skipped ({err})")
                bar.update(1)
                continue
            rows.append(
                {
                    "reranker": repr(model),
                    "class": type(model).__name__,
                    "settings": model.get_params(),
                    "metrics": task.score(result.indices),
                    "fit_s": fit_s,
                    "rerank_s": rerank_s,
                    "result": result,
                }
            )
            bar.update(1)
    return rows


# --------------------------------------------------------------------------- commands
def evaluate(args: argparse.Namespace) -> int:
    """``graphrerank evaluate``: re-rank the data the options name, print the metric table and
    optionally write it as JSON."""
    models = select_rerankers(args.rerankers, default_all=False, baseline=not args.no_baseline)
    device = _device(args.device)
    task = load_task(args)
    if args.l2_normalize:
        task.database, task.queries = _normalize(task.database), _normalize(task.queries)
    k = _k(args.k, task.num_database)
    print(task.describe(k, device))
    print("scores in %; gain: difference of the first metric with the first row\n")
    rows = _run(task, models, k, device)
    print(metric_table(task, rows))
    if args.json:
        write_json(
            args.json,
            {
                "command": _command_line(args),
                "data": {"name": task.name, "kind": task.kind, **task.info},
                "num_database": task.num_database,
                "num_queries": None if task.queries is None else int(task.queries.shape[0]),
                "k": k,
                "device": str(device),
                "machine": machine(),
                "results": [{a: b for a, b in r.items() if a != "result"} for r in rows],
            },
        )
    return 0


def demo(args: argparse.Namespace) -> int:
    """``graphrerank demo``: every re-ranker at its defaults on a built-in set, all-vs-all;
    optionally the precision-recall curves as an image."""
    models = select_rerankers(None, default_all=True, baseline=True)
    device = _device(args.device)
    args.subset = 600 if args.fast else None
    task = builtin_task(args.data, args)
    k = task.num_database
    print(task.describe(k, device))
    print("every re-ranker at its papers' default settings; scores in %\n")
    rows = _run(task, models, k, device)
    print(metric_table(task, rows))
    if args.plot:
        fig = plot.precision_recall(
            {r["reranker"]: r["result"] for r in rows},
            task.labels.to(device),
            leave_one_out=True,
            title=f"{task.name}, all-vs-all",
        )
        try:
            fig.savefig(args.plot, dpi=120)
        except OSError as err:
            raise CLIError(f"cannot write {args.plot!r}: {err}") from None
        print(f"\nwrote {Path(args.plot).resolve()}")
    return 0


def bench(args: argparse.Namespace) -> int:
    """``graphrerank bench``: median fit and rerank times of each re-ranker on synthetic data,
    with the mAP of its rankings; optionally as JSON."""
    models = select_rerankers(args.rerankers, default_all=True, baseline=True)
    device = _device(args.device)
    if args.size < 2:
        raise CLIError(f"--size must be at least 2, got {args.size}")
    if args.repeats < 1:
        raise CLIError(f"--repeats must be at least 1, got {args.repeats}")
    ds = make_retrieval_dataset(
        num_items=args.size,
        dim=args.dim,
        num_classes=args.classes,
        num_queries=args.queries,
        seed=args.seed,
    )
    db = ds.database.to(device)
    q = None if ds.queries is None else ds.queries.to(device)
    k = _k(args.k, args.size)
    qdesc = "all-vs-all" if q is None else f"{q.shape[0]} queries"
    print(
        f"synthetic: {args.size} items, {args.dim}-d, {args.classes} classes, {qdesc}; "
        f"top-{k}; median of {args.repeats} run(s) after {args.warmup} warm-up(s) on {device}"
    )
    print(f"machine: {machine()}")
    command = _command_line(args)
    print(f"command: {' '.join(command)}\n")
    rows = []
    with Progress(len(models) * (args.repeats + args.warmup), "timing") as bar:
        for model in models:
            fits, reranks = [], []
            try:
                for i in range(args.warmup + args.repeats):
                    result, fit_s, rerank_s = _fit_rerank(model, db, q, k, device)
                    if i >= args.warmup:
                        fits.append(fit_s)
                        reranks.append(rerank_s)
                    bar.update(1)
            except ImportError as err:
                print(f"{model!r}: skipped ({err})")
                continue
            m = class_map(
                result.indices,
                ds.database_labels.to(device),
                None if q is None else ds.query_labels.to(device),
                leave_one_out=q is None,
            )
            fit_s, rerank_s = statistics.median(fits), statistics.median(reranks)
            rows.append(
                {
                    "reranker": repr(model),
                    "fit_s": fit_s,
                    "rerank_s": rerank_s,
                    "total_s": fit_s + rerank_s,
                    "map": m,
                }
            )
    print(bench_table(rows, k))
    if args.json:
        write_json(
            args.json,
            {
                "command": command,
                "machine": machine(),
                "size": args.size,
                "dim": args.dim,
                "classes": args.classes,
                "queries": args.queries,
                "k": k,
                "repeats": args.repeats,
                "device": str(device),
                "results": rows,
            },
        )
    return 0


def list_rerankers(args: argparse.Namespace) -> int:
    """``graphrerank list``: each re-ranker with its first docstring sentence and its settings,
    then those that need local descriptors (from Python only)."""
    for cls in rerankers.RERANKERS:
        print(describe_reranker(cls))
    if rerankers.RERANKERS_WITH_LOCAL:
        print()
        print(
            "Re-rankers that also need local descriptors (from Python only: the command line "
            "evaluates global descriptors):"
        )
        for cls in rerankers.RERANKERS_WITH_LOCAL:
            print(describe_reranker(cls))
    return 0
