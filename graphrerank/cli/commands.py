"""The sub-commands ``evaluate``, ``bench``, ``demo``, ``save``, ``load`` and ``list``.

Each takes the options parsed by :func:`~graphrerank.cli.build_parser` and returns the exit
status: :data:`EXIT_OK` when every row has its result, :data:`EXIT_ROW_FAILED` when a
re-ranker failed (its row says why, the other rows are complete); bad input raises
:class:`~graphrerank.cli.CLIError`, which :func:`~graphrerank.cli.main` reports with
:data:`EXIT_BAD_INPUT`. A ``KeyboardInterrupt`` prints the rows finished so far (and writes
them to ``--json``), then goes on up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import plot, rerankers
from .._imports import has_faiss
from ..datasets import make_retrieval_dataset
from ..metrics import class_map
from .base import EXIT_BAD_INPUT, EXIT_OK, EXIT_ROW_FAILED, PROG, CLIError
from .report import (
    Step,
    bench_table,
    describe_reranker,
    gain_header,
    json_safe,
    machine,
    metric_table,
    save_rankings,
    write_json,
)
from .specs import select_rerankers
from .tasks import Task, builtin_task, load_task

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_OK",
    "EXIT_ROW_FAILED",
    "bench",
    "demo",
    "evaluate",
    "list_rerankers",
    "load",
    "save",
]


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


def _exit_status(rows: list[dict]) -> int:
    return EXIT_OK if all(r["status"] == "ok" for r in rows) else EXIT_ROW_FAILED


def _say_failures(rows: list[dict]) -> None:
    """After the table: how many rows have no result (nothing when all have)."""
    bad = sum(r["status"] != "ok" for r in rows)
    if bad:
        print(
            f"\n{bad} of {len(rows)} row(s) without result: see the error column "
            f"(exit status {EXIT_ROW_FAILED})"
        )


def _error_text(err: BaseException) -> str:
    """``Type: message`` on one line."""
    msg = " ".join(str(err).split())
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


def _fail(row: dict, stage: str, err: Exception, device: torch.device, command: str) -> None:
    """Mark ``row`` as failed at ``stage`` (``skipped`` for a missing optional dependency) and
    say so on standard error (with the traceback when ``GRAPHRERANK_DEBUG`` is set)."""
    row["status"] = "skipped" if isinstance(err, ImportError) else "failed"
    row["failed_at"] = stage
    row["error"] = _error_text(err)
    print(
        f"{PROG} {command}: {row['reranker']} {row['status']} at {stage}: {row['error']}",
        file=sys.stderr,
    )
    if os.environ.get("GRAPHRERANK_DEBUG"):
        traceback.print_exception(err, file=sys.stderr)
    if device.type == "cuda":  # after an out-of-memory error, give the next row its memory
        torch.cuda.empty_cache()


def _fit_rerank(
    model: Any,
    db: Tensor,
    q: Tensor | None,
    k: int,
    device: torch.device,
    label: str,
    row: dict,
    record: bool = False,
    strict: bool = False,
) -> tuple[Any, float, float]:
    """``model.fit(db)`` then ``model.rerank(q, k)``: the result and the seconds of each.

    Each step shows a progress line when it takes long; ``row["failed_at"]`` names the step
    under way, for the caller's error report, and with ``record`` ``row["fit_s"]`` is set as
    soon as the fit is done (a row that fails at rerank keeps it). ``strict``: all-vs-all with
    each item removed from the database (``rerank(None, k, leave_one_out="strict")``).
    Exceptions pass through.
    """
    row["failed_at"] = "fit"
    with Step(f"{label}: fit"):
        _sync(device)
        t0 = time.perf_counter()
        model.fit(db)
        _sync(device)
        t1 = time.perf_counter()
    if record:
        row["fit_s"] = t1 - t0
    row["failed_at"] = "rerank"
    with Step(f"{label}: rerank"):
        result = model.rerank(q, k, leave_one_out="strict") if strict else model.rerank(q, k)
        _sync(device)
        t2 = time.perf_counter()
    row["failed_at"] = None
    return result, t1 - t0, t2 - t1


def _to_device(db: Tensor, q: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor | None]:
    try:
        with Step(f"moving the data to {device}"):
            return db.to(device), None if q is None else q.to(device)
    except RuntimeError as err:  # e.g. CUDA out of memory: nothing was run
        raise CLIError(f"cannot move the data to {device}: {_error_text(err)}") from None


def _new_row(model: Any) -> dict:
    return {
        "reranker": repr(model),
        "class": type(model).__name__,
        "settings": model.get_params(),
        "status": "ok",
        "error": None,
        "failed_at": None,
    }


def _rows(
    task: Task,
    models: list[Any],
    k: int,
    device: torch.device,
    command: str,
    after: Callable[[int, dict], None] | None = None,
    strict: bool = False,
) -> Iterator[dict]:
    """Fit and re-rank each model once on ``task`` and score its rankings; yields one row per
    model, in order, as each finishes. A re-ranker that raises (``ValueError``,
    ``RuntimeError``, ``MemoryError``, a missing optional dependency...) gives a row with
    ``status`` ``"failed"`` (or ``"skipped"``), its ``error`` and the step it ``failed_at``;
    ``KeyboardInterrupt`` and ``SystemExit`` go on up. ``after(number, row)`` runs on each
    successful row before it is yielded (to save its rankings); its failure fails the row
    (step ``"save"``). ``strict``: strict leave-one-out (all-vs-all data only). ``models`` is emptied as the rows are made, so that each fitted
    model, which can be large, is freed once its row is done."""
    _warm_up()
    db, q = _to_device(task.database, task.queries, device)
    total = len(models)
    for number in range(1, total + 1):
        model = models.pop(0)
        label = f"[{number}/{total}] {model!r}"
        row = _new_row(model)
        row.update(metrics={}, per_query={}, fit_s=None, rerank_s=None)
        try:
            result, _, row["rerank_s"] = _fit_rerank(
                model, db, q, k, device, label, row, True, strict
            )
            row["failed_at"] = "score"
            with Step(f"{label}: scoring"):
                scores = task.score(result.indices)
            row.update(metrics=scores.metrics, per_query=scores.per_query, result=result)
            if after is not None:
                row["failed_at"] = "save"
                after(number, row)
            row["failed_at"] = None
        except Exception as err:  # any failure of one re-ranker is its row's
            row.pop("result", None)
            row.update(metrics={}, per_query={})
            _fail(row, row["failed_at"] or "fit", err, device, command)
        model = result = scores = None  # the row holds what is kept
        yield row


def _json_rows(rows: list[dict]) -> list[dict]:
    return [{a: b for a, b in r.items() if a != "result"} for r in rows]


def _interrupted(rows: list[dict], report: Callable[[], None]) -> None:
    """On Ctrl-C: say so and report the rows finished so far (the caller re-raises)."""
    so_far = "; the rows so far:" if rows else ""
    print(f"\n{PROG}: interrupted after {len(rows)} row(s){so_far}", file=sys.stderr)
    if rows:
        report()


# --------------------------------------------------------------------------- commands
def evaluate(args: argparse.Namespace) -> int:
    """``graphrerank evaluate``: re-rank the data the options name, print the metric table and
    optionally write it as JSON (with per-query AP) and each row's rankings."""
    models = select_rerankers(args.rerankers, default_all=False, baseline=not args.no_baseline)
    device = _device(args.device)
    with Step("loading the data"):
        task = load_task(args)
    if args.l2_normalize:
        task.database, task.queries = _normalize(task.database), _normalize(task.queries)
    strict = getattr(args, "leave_one_out", "all-vs-all") == "strict"
    if strict and task.queries is not None:
        raise CLIError(
            "--leave-one-out strict needs all-vs-all data (the items are the queries); "
            f"{task.name} has separate queries"
        )
    # strict: each item leaves the database, so a ranking holds at most N - 1 others
    k = _k(args.k, task.num_database - int(strict))
    folder = None
    if args.save_rankings:
        folder = Path(args.save_rankings)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CLIError(f"--save-rankings {args.save_rankings!r}: {err}") from None
    print(task.describe(k, device))
    if strict:
        print("strict leave-one-out: each item is removed from the database it is ranked in")
    print(
        f"scores in %; {gain_header(task)}: the {task.primary_header} of each row minus that "
        "of the first row, in points\n"
    )
    command = _command_line(args)
    num_queries = None if task.queries is None else int(task.queries.shape[0])
    meta = {
        "data": task.name,
        "kind": task.kind,
        "k": k,
        "num_database": task.num_database,
        "num_queries": num_queries if num_queries is not None else task.num_database,
        "all_vs_all": task.queries is None,
        "leave_one_out": "strict" if strict else None,
        "command": command,
    }

    def save(number: int, row: dict) -> None:
        if folder is not None:
            row["rankings"] = str(save_rankings(folder, number, row, meta))
        row.pop("result", None)  # scored (and saved): the rankings are not needed any more

    def payload(complete: bool) -> dict:
        return {
            "command": command,
            "data": {"name": task.name, "kind": task.kind, **task.info},
            "num_database": task.num_database,
            "num_queries": num_queries,
            "k": k,
            "leave_one_out": meta["leave_one_out"],
            "device": str(device),
            "machine": machine(),
            "columns": dict(task.columns),
            "gain": {
                "metric": task.primary,
                "header": gain_header(task),
                "reference": rows[0]["reranker"] if rows else None,
            },
            "query_names": task.query_names,
            "complete": complete,
            "exit_status": _exit_status(rows) if complete else None,
            "results": _json_rows(rows),
        }

    def report() -> None:
        print(metric_table(task, rows))
        _say_failures(rows)
        saved = [(r["reranker"], r["rankings"]) for r in rows if r.get("rankings")]
        if saved:
            print("\nrankings (indices and scores, numpy.load):")
            for name, path in saved:
                print(f"  {name}: {path}")

    rows: list[dict] = []
    if args.json:  # an unwritable path is bad input: found before any work
        write_json(args.json, payload(False), quiet=True)
    try:
        for row in _rows(task, models, k, device, "evaluate", after=save, strict=strict):
            rows.append(row)
            if args.json:
                write_json(args.json, payload(False), quiet=True)
    except KeyboardInterrupt:
        _interrupted(rows, report)
        if args.json and rows:
            write_json(args.json, payload(False))
        raise
    report()
    if args.json:
        write_json(args.json, payload(True))
    return _exit_status(rows)


def demo(args: argparse.Namespace) -> int:
    """``graphrerank demo``: every re-ranker at its defaults on a built-in set, all-vs-all;
    optionally the precision-recall curves as an image."""
    models = select_rerankers(None, default_all=True, baseline=True)
    device = _device(args.device)
    args.subset = 600 if args.fast else None
    with Step("loading the data"):
        task = builtin_task(args.data, args)
    k = task.num_database
    print(task.describe(k, device))
    print(
        f"every re-ranker at its papers' default settings; scores in %; {gain_header(task)}: "
        "difference with the first row\n"
    )
    rows: list[dict] = []
    try:
        for row in _rows(task, models, k, device, "demo"):
            rows.append(row)
    except KeyboardInterrupt:
        _interrupted(rows, lambda: print(metric_table(task, rows)))
        raise
    print(metric_table(task, rows))
    _say_failures(rows)
    if args.plot:
        fig = plot.precision_recall(
            {r["reranker"]: r["result"] for r in rows if r["status"] == "ok"},
            task.labels.to(device),
            leave_one_out=True,
            title=f"{task.name}, all-vs-all",
        )
        try:
            fig.savefig(args.plot, dpi=120)
        except OSError as err:
            raise CLIError(f"cannot write {args.plot!r}: {err}") from None
        print(f"\nwrote {Path(args.plot).resolve()}")
    return _exit_status(rows)


def _bench_row(
    model: Any,
    number: int,
    total: int,
    db: Tensor,
    q: Tensor | None,
    ds: Any,
    k: int,
    args: argparse.Namespace,
    device: torch.device,
) -> dict:
    row = _new_row(model)
    row.update(fit_s=None, rerank_s=None, total_s=None, map=None)
    fits, reranks = [], []
    runs = args.warmup + args.repeats
    try:
        for i in range(runs):
            kind = "warm-up" if i < args.warmup else "run"
            label = f"[{number}/{total}] {model!r} {kind} {i + 1}/{runs}"
            result, fit_s, rerank_s = _fit_rerank(model, db, q, k, device, label, row)
            if i >= args.warmup:
                fits.append(fit_s)
                reranks.append(rerank_s)
        row["failed_at"] = "score"
        m = class_map(
            result.indices,
            ds.database_labels.to(device),
            None if q is None else ds.query_labels.to(device),
            leave_one_out=q is None,
        )
        row["failed_at"] = None
    except Exception as err:  # any failure of one re-ranker is its row's
        _fail(row, row["failed_at"] or "fit", err, device, "bench")
        return row
    fit_s, rerank_s = statistics.median(fits), statistics.median(reranks)
    row.update(fit_s=fit_s, rerank_s=rerank_s, total_s=fit_s + rerank_s, map=m)
    return row


def bench(args: argparse.Namespace) -> int:
    """``graphrerank bench``: median fit and rerank times of each re-ranker on synthetic data,
    with the mAP of its rankings; optionally as JSON. A re-ranker that fails gets a row that
    says why; the others are timed."""
    models = select_rerankers(args.rerankers, default_all=True, baseline=True)
    device = _device(args.device)
    if args.size < 2:
        raise CLIError(f"--size must be at least 2, got {args.size}")
    if args.repeats < 1:
        raise CLIError(f"--repeats must be at least 1, got {args.repeats}")
    if args.warmup < 0:
        raise CLIError(f"--warmup must be at least 0, got {args.warmup}")
    k = _k(args.k, args.size)
    with Step("making the synthetic data"):
        ds = make_retrieval_dataset(
            num_items=args.size,
            dim=args.dim,
            num_classes=args.classes,
            num_queries=args.queries,
            seed=args.seed,
        )
    db, q = _to_device(ds.database, ds.queries, device)
    qdesc = "all-vs-all" if q is None else f"{q.shape[0]} queries"
    print(
        f"synthetic: {args.size} items, {args.dim}-d, {args.classes} classes, {qdesc}; "
        f"top-{k}; median of {args.repeats} run(s) after {args.warmup} warm-up(s) on {device}"
    )
    print(f"machine: {machine()}")
    command = _command_line(args)
    print(f"command: {' '.join(command)}\n")

    def payload(complete: bool) -> dict:
        return {
            "command": command,
            "machine": machine(),
            "size": args.size,
            "dim": args.dim,
            "classes": args.classes,
            "queries": args.queries,
            "k": k,
            "repeats": args.repeats,
            "device": str(device),
            "complete": complete,
            "exit_status": _exit_status(rows) if complete else None,
            "results": json_safe(rows),
        }

    _warm_up()
    rows: list[dict] = []
    if args.json:  # an unwritable path is bad input: found before any work
        write_json(args.json, payload(False), quiet=True)
    total = len(models)
    try:
        for number in range(1, total + 1):
            model = models.pop(0)  # freed once its row is done
            rows.append(_bench_row(model, number, total, db, q, ds, k, args, device))
            del model
            if args.json:
                write_json(args.json, payload(False), quiet=True)
    except KeyboardInterrupt:
        _interrupted(rows, lambda: print(bench_table(rows, k)))
        if args.json and rows:
            write_json(args.json, payload(False))
        raise
    print(bench_table(rows, k))
    _say_failures(rows)
    if args.json:
        write_json(args.json, payload(True))
    return _exit_status(rows)


def save(args: argparse.Namespace) -> int:
    """``graphrerank save``: fit one re-ranker on the database of the data options and write
    it (:meth:`~graphrerank.rerankers.Reranker.save`)."""
    if len(args.rerankers) != 1:
        raise CLIError(f"save takes exactly one re-ranker (-r SPEC), got {len(args.rerankers)}")
    from ..datasets import load_features

    (model,) = select_rerankers(args.rerankers, default_all=False, baseline=False)
    device = _device(args.device)
    with Step("loading the data"):
        if args.database and not (args.gnd or args.labels):  # no ground truth needed to fit
            db, name = load_features(args.database), Path(args.database).name
        else:
            task = load_task(args)
            db, name = task.database, task.name
    if args.l2_normalize:
        db = _normalize(db)
    db = db.to(device)
    with Step(f"{model!r}: fit"):
        model.fit(db)
    path = model.save(args.output, include_database=not args.no_database)
    stored = "without its database" if args.no_database else "with its database"
    print(f"{model!r} fitted on {name} {tuple(db.shape)}, saved {stored} to {path}")
    print(f"{path.stat().st_size / 2**20:.1f} MiB; read it with: {PROG} load {path}")
    return EXIT_OK


def _describe_loaded(r: rerankers.Reranker, path: str) -> str:
    from ..graph import ScoreMatrix

    db = r.database_
    what = repr(db) if isinstance(db, ScoreMatrix) else f"a database {tuple(db.shape)} {db.dtype}"
    return f"{path}: {r!r}, fitted on {what}, on {r.device_}"


def load(args: argparse.Namespace) -> int:
    """``graphrerank load``: read a saved re-ranker, say what it holds and optionally rank
    queries (or the database itself) with it, writing the top-k lists."""
    from .._io import save_arrays
    from ..datasets import load_features

    device = _device(args.device)
    database = None
    if args.database:
        database = load_features(args.database).to(device)
    with Step("loading the re-ranker"):
        r = rerankers.Reranker.load(args.path, database, device=device)
    print(_describe_loaded(r, args.path))
    if args.queries and args.all_vs_all:
        raise CLIError("give --queries or --all-vs-all, not both")
    if not (args.queries or args.all_vs_all):
        if args.output:
            raise CLIError("--output needs --queries or --all-vs-all (what to rank)")
        return EXIT_OK
    queries = None
    if args.queries:
        queries = load_features(args.queries).to(device)
    k = _k(args.k, r.n_database_)
    with Step(f"{r!r}: rerank"):
        out = r.rerank(queries, k)
    n = out.indices.shape[0]
    print(f"ranked {n} {'queries' if queries is not None else 'database items'}, top {k}")
    for i in range(min(3, n)):
        print(f"  {i}: " + " ".join(str(int(j)) for j in out.indices[i, :10].tolist()))
    if args.output:
        path = save_arrays(
            args.output,
            {"indices": out.indices.cpu().numpy(), "scores": out.scores.cpu().numpy()},
            {"format": "graphrerank.rankings", "version": 1, "reranker": repr(r), "k": k,
             "source": str(args.path)},
        )  # fmt: skip
        print(f"rankings (indices and scores, numpy.load): {path}")
    return EXIT_OK


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
