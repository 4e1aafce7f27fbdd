"""``graphrerank tune``: choose a re-ranker's settings on labelled data (:func:`graphrerank.tune`).

The grid is written ``NAME=V1,V2,...`` with settings separated by ``;`` (or given by repeated
``--grid`` options): ``--grid 'k1=5,10,20;k2=2,3,6'``. Values are read as in a re-ranker spec
(Python literals, bare words as strings, ``None``); a pipeline's stage setting is
``STAGE.NAME`` with the stage's position or class name (``0.k=3,5,10``,
``AlphaQueryExpansion.alpha=1,3``).
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import tuning
from .base import CLIError
from .report import Step, machine, write_json
from .specs import _parse_value, parse_reranker
from .tasks import load_task

__all__ = ["parse_grid", "tune"]


def parse_grid(texts: list[str]) -> dict[str, list[Any]]:
    """``["k1=5,10,20;k2=2,3"]`` -> ``{"k1": [5, 10, 20], "k2": [2, 3]}``.

    Raises:
        CLIError: a part is not ``NAME=V1,V2,...``, a name is given twice, or a list is empty.

    Example:
        >>> parse_grid(["k1=5,10;k2=2", "lambda_value=0.1,0.3"])
        {'k1': [5, 10], 'k2': [2], 'lambda_value': [0.1, 0.3]}
        >>> parse_grid(["0.k=3,5;symmetrize=mutual,union"])
        {'0.k': [3, 5], 'symmetrize': ['mutual', 'union']}
    """
    grid: dict[str, list[Any]] = {}
    for text in texts:
        for part in text.split(";"):
            if not part.strip():
                continue
            name, sep, values = part.partition("=")
            name = name.strip()
            if not sep or not name:
                raise CLIError(
                    f"--grid expects NAME=V1,V2,... parts separated by ';', got {part!r}"
                )
            if name in grid:
                raise CLIError(f"--grid gives {name!r} twice")
            items = [v for v in values.split(",") if v.strip()]
            if not items:
                raise CLIError(f"--grid {name}= has no values")
            grid[name] = [_parse_value(v) for v in items]
    if not grid:
        raise CLIError("--grid is empty: give NAME=V1,V2,... (e.g. --grid 'k1=5,10;k2=2,3')")
    return grid


def _fmt(v: float) -> str:
    return "" if v != v else f"{100 * v:.2f}"


def _held_out_rows(
    res: tuning.TuningResult, given: Any, test: tuning.Protocol, k: int | None
) -> list[dict]:
    """The baseline, the given settings and the tuned choice scored on the held-out part."""
    out = []
    seen = []
    for label, model in (
        ("baseline (KNN)", tuning.KNN()),
        ("given", given.clone()),
        ("tuned", res.best_estimator()),
    ):
        kk = min(test.num_database, 1000) if k is None else min(k, test.num_database)
        same = next((r for r, m in seen if repr(m) == repr(model)), None)
        if same is not None:
            score = same["score"]
        else:
            model.fit(test.database)
            score = test.score(model.rerank(test.queries, kk).indices)
        row = {"row": label, "reranker": repr(model), "score": score}
        seen.append((row, model))
        out.append(row)
    return out


def tune(args: argparse.Namespace) -> int:
    """``graphrerank tune``: the grid search of :func:`graphrerank.tune` on the data the
    options name; prints every setting's score and the best; with ``--split F``, tunes on a
    share ``F`` of the classes / identities / landmarks and scores the baseline, the given
    settings and the tuned choice on the others."""
    from .commands import EXIT_OK, EXIT_ROW_FAILED, _command_line, _normalize

    if len(args.rerankers) != 1:
        raise CLIError(f"tune takes exactly one re-ranker (-r SPEC), got {len(args.rerankers)}")
    (spec, settings) = args.rerankers[0]
    model = parse_reranker(spec, settings)
    grid = parse_grid(args.grid or [])
    margin: float | str = args.margin
    if not margin.strip().lower().endswith("se"):
        try:
            margin = float(margin)
        except ValueError:
            raise CLIError(
                f"--margin must be a number, 'se' or '2se', got {args.margin!r}"
            ) from None
    with Step("loading the data"):
        task = load_task(args)
    if args.l2_normalize:
        task.database, task.queries = _normalize(task.database), _normalize(task.queries)
        task.protocol.database, task.protocol.queries = task.database, task.queries
    protocol = task.protocol
    if protocol.kind == "revisitop" and args.protocol != protocol.revisited:
        protocol = tuning.revisitop_protocol(protocol.database, protocol.queries, protocol.gnd,
                                             args.protocol)  # fmt: skip
    if args.json:  # an unwritable path is bad input: found before any work
        write_json(args.json, {"command": _command_line(args), "complete": False}, quiet=True)
    validation, test = protocol, None
    if args.split is not None:
        try:
            validation, test = protocol.split(args.split, seed=args.seed)
        except (TypeError, ValueError) as err:
            raise CLIError(f"--split {args.split}: {err}") from None
    where = "all the data" if test is None else f"{validation!r}"
    print(f"{task.name}: tuning {model!r} on {where}; {validation.metric}, scores in %")
    print(f"machine: {machine()}\n")
    try:
        res = tuning.tune(
            model, grid, validation, search=args.search, n_iter=args.n_iter, seed=args.seed,
            k=args.k, margin=margin, progress=None,
        )  # fmt: skip
    except (TypeError, ValueError) as err:
        raise CLIError(str(err)) from None
    print(res.table(top=args.top))
    for params, why in res.skipped_:
        print(f"skipped {params}: {why}")
    best = (
        "the baseline (KNN): no setting beat it" if res.best_params_ is None else res.best_params_
    )
    print(
        f"\nbest: {best}; {validation.metric} {_fmt(res.best_score_)} (baseline "
        f"{_fmt(res.baseline_score_)}, given {_fmt(res.given_score_)}); {len(res.results_)} runs "
        f"in {res.total_s:.1f} s, first stage computed once in {res.first_stage_s:.2f} s"
    )
    held = None
    if test is not None:
        with Step("scoring the held-out part"):
            held = _held_out_rows(res, model, test, args.k)
        print(f"\nheld out: {test!r}")
        print(f"| row | re-ranker | {test.metric} (%) |\n|---|---|---|")
        for r in held:
            print(f"| {r['row']} | {r['reranker']} | {_fmt(r['score'])} |")
    failed = [r for r in res.results_ if r.get("error")]
    if args.json:
        write_json(
            args.json,
            {
                "command": _command_line(args),
                "machine": machine(),
                "data": task.name,
                "kind": protocol.kind,
                "metric": validation.metric,
                "reranker": repr(model),
                "grid": {n: [repr(v) for v in vs] for n, vs in res.grid.items()},
                "search": args.search,
                "seed": args.seed,
                "split": args.split,
                "margin": margin,
                "best_params": res.best_params_,
                "best_score": res.best_score_,
                "baseline_score": res.baseline_score_,
                "given_score": res.given_score_,
                "best_reranker": repr(res.best_estimator()),
                "results": res.results_,
                "skipped": [{"params": p, "reason": w} for p, w in res.skipped_],
                "held_out": held,
                "exit_status": EXIT_ROW_FAILED if failed else EXIT_OK,
            },
        )
    if failed:
        print(f"\n{len(failed)} setting(s) failed; their rows say why")
        return EXIT_ROW_FAILED
    return EXIT_OK
