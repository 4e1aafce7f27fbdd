r"""The ``graphrerank`` command line: evaluate re-rankers, time them, run the demo.

.. code-block:: text

    graphrerank evaluate --data digits --reranker KNN          # built-in data, class mAP
    graphrerank evaluate --gnd gnd_roxford5k.pkl --features my_gem.mat --reranker "KNN"
    graphrerank evaluate --reid pytorch_result.mat --reranker KNN --json result.json
    graphrerank evaluate --database db.npy --labels labels.npy --reranker KNN --set metric=l2
    graphrerank bench --size 10000 --dim 128 --repeats 3   # the speed table, synthetic data
    graphrerank demo                                       # the quickstart on the digits set
    graphrerank list                                       # every re-ranker and its settings

Also ``python -m graphrerank``. A re-ranker is named by its class name in
:data:`graphrerank.rerankers.RERANKERS` (case-insensitive), optionally with settings in call
syntax, ``"KNN(metric='l2')"``; ``--set key=value`` after a ``--reranker`` changes one
setting of that re-ranker; ``"A(...) | B(...)"`` chains stages into a pipeline where the
library provides ``graphrerank.rerankers.Pipeline``. Bad files and settings end with a
one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import __version__
from ._progress import Progress

__all__ = ["CLIError", "build_parser", "main", "parse_reranker"]

PROG = "graphrerank"


class CLIError(Exception):
    """A problem with the command line's input (reported without a traceback, exit status 2)."""


# --------------------------------------------------------------------------- re-ranker specs
def _registry() -> dict[str, type]:
    from .rerankers import RERANKERS

    return {cls.__name__.lower(): cls for cls in RERANKERS}


def _resolve(name: str) -> type:
    from .rerankers import RERANKERS_WITH_LOCAL

    table = _registry()
    cls = table.get(name.lower())
    local = {c.__name__.lower(): c for c in RERANKERS_WITH_LOCAL}
    if cls is None and name.lower() in local:
        raise CLIError(
            f"{local[name.lower()].__name__} needs local descriptors besides the global ones; "
            "the command line evaluates global descriptors only: use it from Python "
            "(see the tutorial on learned re-rankers)"
        )
    if cls is None:
        known = ", ".join(c.__name__ for c in table.values())
        raise CLIError(f"unknown re-ranker {name!r}; available: {known}")
    return cls


def _is_reranker_node(node: ast.expr) -> bool:
    """``Name`` or ``Name(...)`` naming a re-ranker class (a setting that takes a re-ranker)."""
    func = node.func if isinstance(node, ast.Call) else node
    return isinstance(func, ast.Name) and func.id.lower() in _registry()


def _parse_value(text: str) -> Any:
    """A setting's value: a re-ranker spec (``KReciprocal(k1=10)``), a Python literal (``50``,
    ``0.9``, ``None``, ``'l2'``), else the text itself."""
    text = text.strip()
    lowered = {"none": None, "true": True, "false": False}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return text
    if _is_reranker_node(node):
        return _stage(node, text)
    try:
        return ast.literal_eval(node)
    except ValueError:
        return text


def _literal(node: ast.expr, where: str) -> Any:
    if _is_reranker_node(node):  # a re-ranker as a setting: RDiP(rescorer=KReciprocal())
        return _stage(node, ast.unparse(node))
    if isinstance(node, ast.Name):  # a bare word: KNN(backend=torch)
        return _parse_value(node.id)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise CLIError(f"{where}: the value {ast.unparse(node)!r} is not a literal") from None


def _check_settings(cls: type, settings: dict[str, Any], where: str) -> None:
    valid = list(cls.default_params())
    for name in settings:
        if name not in valid:
            listing = ", ".join(f"{n}={d!r}" for n, d in cls.default_params().items()) or "none"
            raise CLIError(f"{where}: {cls.__name__} has no setting {name!r}; settings: {listing}")


def _stage(node: ast.expr, spec: str) -> Any:
    if isinstance(node, ast.Name):
        return _resolve(node.id)()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        cls = _resolve(node.func.id)
        if node.args:
            raise CLIError(f"{spec!r}: settings must be given by name, e.g. {cls.__name__}(k=50)")
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise CLIError(f"{spec!r}: '**' is not allowed in a re-ranker spec")
            kwargs[kw.arg] = _literal(kw.value, repr(spec))
        _check_settings(cls, kwargs, repr(spec))
        return cls(**kwargs)
    raise CLIError(
        f"cannot read the re-ranker spec {spec!r}: write Name, Name(key=value, ...) or "
        "Stage1(...) | Stage2(...)"
    )


def _flatten_pipe(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _flatten_pipe(node.left) + _flatten_pipe(node.right)
    return [node]


def _pipeline(stages: list[Any], spec: str) -> Any:
    from . import rerankers

    pipeline = getattr(rerankers, "Pipeline", None)
    if pipeline is None:
        raise CLIError(
            f"{spec!r} chains stages with '|', but this version of graphrerank has no "
            "graphrerank.rerankers.Pipeline"
        )
    return pipeline(stages)


def parse_reranker(spec: str, settings: Sequence[str] = ()) -> Any:
    """Build a re-ranker from a command-line spec.

    Args:
        spec: ``Name``, ``Name(key=value, ...)`` (values are Python literals, or re-ranker
            specs for settings that take a re-ranker; a bare word is a string), or stages
            joined by ``|`` for a pipeline. Names are class names of
            :data:`graphrerank.rerankers.RERANKERS`, case-insensitive.
        settings: ``"key=value"`` strings applied after the spec's own settings.

    Returns:
        The re-ranker (not fitted); its settings are validated.

    Raises:
        CLIError: unknown name or setting, malformed spec, or a setting's value is invalid.

    Example:
        >>> parse_reranker("knn(metric='l2')", ["backend=torch"])
        KNN(metric='l2', backend='torch')
    """
    try:
        tree = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError:
        raise CLIError(
            f"cannot read the re-ranker spec {spec!r}: write Name, Name(key=value, ...) or "
            "Stage1(...) | Stage2(...)"
        ) from None
    nodes = _flatten_pipe(tree)
    stages = [_stage(n, spec) for n in nodes]
    reranker = stages[0] if len(stages) == 1 else _pipeline(stages, spec)
    updates = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--set expects key=value, got {item!r}")
        updates[key.strip()] = _parse_value(value)
    if updates:
        _check_settings(type(reranker), updates, f"--set for {spec!r}")
        reranker.set_params(**updates)
    try:
        reranker.validate_params()
    except (ValueError, TypeError) as err:
        raise CLIError(f"{spec!r}: {err}") from None
    return reranker


class _RerankerAction(argparse.Action):
    """``--reranker SPEC``: starts a new entry; ``--set k=v`` adds to the last one."""

    def __call__(self, parser, namespace, values, option_string=None):
        entries = getattr(namespace, "rerankers", None) or []
        if self.dest == "rerankers":
            entries.append([values, []])
        else:
            if not entries:
                parser.error(f"{option_string} {values} comes before any --reranker")
            entries[-1][1].append(values)
        namespace.rerankers = entries


# --------------------------------------------------------------------------- tasks
@dataclass
class _Task:
    """What to rank and how to score it."""

    name: str
    kind: str  # "classes", "revisitop" or "reid"
    database: Tensor
    queries: Tensor | None
    score: Callable[[Tensor], dict[str, float]]
    primary: str
    columns: list[tuple[str, str]]
    info: dict[str, Any] = field(default_factory=dict)
    labels: Tensor | None = None

    @property
    def num_database(self) -> int:
        return int(self.database.shape[0])


def _class_task(name, database, labels, queries=None, query_labels=None) -> _Task:
    from .metrics import class_map, recall_at_k

    all_vs_all = queries is None

    def score(indices: Tensor) -> dict[str, float]:
        ks = tuple(k for k in (1, 5, 10) if k <= indices.shape[1])
        db = labels.to(indices.device)  # the rankings may be on a GPU
        q = None if query_labels is None else query_labels.to(indices.device)
        out = {"map": class_map(indices, db, q, leave_one_out=all_vs_all)}
        recalls = recall_at_k(indices, db, q, ks=ks, leave_one_out=all_vs_all)
        out.update({f"recall@{k}": v for k, v in recalls.items()})
        return out

    return _Task(
        name=name,
        kind="classes",
        database=database,
        queries=queries,
        score=score,
        primary="map",
        columns=[("map", "mAP"), ("recall@1", "R@1"), ("recall@5", "R@5"), ("recall@10", "R@10")],
        info={
            "protocol": "all-vs-all, leave-one-out" if all_vs_all else "queries vs database",
            "relevant": "same class",
            "classes": int(torch.unique(labels).numel()),
        },
        labels=labels,
    )


def _revisitop_task(name, database, queries, gnd, num_distractors=0) -> _Task:
    from .metrics import revisited_map

    n = database.shape[0]

    def score(indices: Tensor) -> dict[str, float]:
        res = revisited_map(indices, gnd.gnd, num_database=n)
        out = {}
        for proto in ("easy", "medium", "hard"):
            r = res[proto]
            out[f"{proto}_map"] = r.map
            for kappa, v in r.mp_at_k.items():
                out[f"{proto}_mp@{kappa}"] = v
        return out

    return _Task(
        name=name,
        kind="revisitop",
        database=database,
        queries=queries,
        score=score,
        primary="medium_map",
        columns=[
            ("easy_map", "E mAP"),
            ("medium_map", "M mAP"),
            ("hard_map", "H mAP"),
            ("medium_mp@10", "M mP@10"),
            ("hard_mp@10", "H mP@10"),
        ],
        info={
            "protocol": "revisited Oxford/Paris (Easy/Medium/Hard)",
            "queries": int(queries.shape[0]),
            "distractors": int(num_distractors),
        },
    )


def _reid_task(name, feats) -> _Task:
    from .metrics import reid_metrics

    def score(indices: Tensor) -> dict[str, float]:
        dev = indices.device  # the rankings may be on a GPU
        r = reid_metrics(
            indices,
            feats.query_ids.to(dev),
            feats.query_cams.to(dev),
            feats.gallery_ids.to(dev),
            feats.gallery_cams.to(dev),
            max_rank=min(50, indices.shape[1]),
        )
        out = {"map": r.map, "minp": r.minp, "rank1": r.rank1}
        if indices.shape[1] >= 5:
            out["rank5"] = r.rank5
        if indices.shape[1] >= 10:
            out["rank10"] = r.rank10
        return out

    return _Task(
        name=name,
        kind="reid",
        database=feats.gallery_features,
        queries=feats.query_features,
        score=score,
        primary="map",
        columns=[
            ("map", "mAP"),
            ("rank1", "R-1"),
            ("rank5", "R-5"),
            ("rank10", "R-10"),
            ("minp", "mINP"),
        ],
        info={
            "protocol": "re-ID (same id and camera ignored, id -1 ignored)",
            "queries": int(feats.query_features.shape[0]),
        },
    )


def _labels_file(path: str, what: str) -> Tensor:
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{what} file {path!r} does not exist")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            arr = np.loadtxt(p, dtype=np.int64, ndmin=1)
    except (ValueError, OSError) as err:
        raise CLIError(f"cannot read {what} from {path!r}: {err}") from None
    arr = np.asarray(arr).reshape(-1)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise CLIError(f"{what} in {path!r} must be integers, got dtype {arr.dtype}")
    return torch.from_numpy(arr.astype(np.int64))


def _features(path: str, what: str, key: str | None = None) -> Tensor:
    from .datasets import load_features

    return load_features(path, key=key)


def _subset(x: Tensor, labels: Tensor, n: int | None) -> tuple[Tensor, Tensor]:
    if n is None:
        return x, labels
    if n < 2:
        raise CLIError(f"--subset must be at least 2, got {n}")
    return x[:n], labels[:n]


def _builtin(name: str, args) -> _Task:
    from . import datasets

    if name == "digits":
        ds = datasets.load_digits_retrieval()
    elif name == "corel1k":
        ds = datasets.load_corel1k()
    elif name == "synthetic":
        ds = datasets.make_retrieval_dataset(
            num_items=args.size, dim=args.dim, num_classes=args.classes, seed=args.seed
        )
    else:  # argparse restricts the choices
        raise CLIError(f"unknown --data {name!r}")
    x, y = _subset(ds.database, ds.database_labels, args.subset)
    return _class_task(ds.name, x, y)


def _load_task(args) -> _Task:
    """The task described by the data options of ``evaluate`` and ``demo``."""
    from . import datasets

    sources = [
        s
        for s, given in (
            ("--data", args.data),
            ("--benchmark", getattr(args, "benchmark", None)),
            ("--gnd", getattr(args, "gnd", None)),
            ("--reid", getattr(args, "reid", None)),
            ("--labels", getattr(args, "labels", None)),
        )
        if given
    ]
    if len(sources) > 1:
        raise CLIError(f"give one data source, got {' and '.join(sources)}")
    files = [
        name
        for name in ("features", "database", "queries", "distractors", "query_labels")
        if getattr(args, name, None)
    ]
    if files and (args.data or not sources):
        opts = ", ".join("--" + f.replace("_", "-") for f in files)
        verb = "needs" if len(files) == 1 else "need"
        raise CLIError(
            f"{opts} {verb} a ground truth: --gnd (revisitop) or --labels (classes); --reid "
            "files hold their own descriptors"
        )
    if args.reid and files:
        opts = ", ".join("--" + f.replace("_", "-") for f in files)
        raise CLIError(f"--reid files hold their own descriptors; drop {opts}")
    if args.labels and (args.features or args.distractors):
        raise CLIError("--features and --distractors go with --gnd; use --database with --labels")
    if (getattr(args, "root", None) or getattr(args, "r1m", None)) and not args.benchmark:
        raise CLIError("--root and --r1m go with --benchmark")
    if args.data or not sources:
        return _builtin(args.data or "digits", args)
    if args.benchmark:
        if args.database or args.queries or args.distractors:
            raise CLIError(
                "--benchmark reads the descriptors named by --features NAME from --root "
                "(and --r1m); drop --database, --queries and --distractors"
            )
        if not args.root or not args.features:
            raise CLIError("--benchmark needs --root DIR and --features NAME")
        bench_cls = {"roxford5k": datasets.ROxford5k, "rparis6k": datasets.RParis6k}
        distractors = None
        if args.r1m:
            distractors = datasets.RevisitopR1M(args.r1m).load(args.features)
        bench = bench_cls[args.benchmark](args.root).load(args.features, distractors=distractors)
        return _revisitop_task(
            bench.name, bench.database, bench.queries, bench.gnd, bench.num_distractors
        )
    if args.gnd:
        gnd = datasets.load_revisitop_gnd(args.gnd)
        if args.features:
            if args.database or args.queries:
                raise CLIError("give --features, or --database and --queries, not both")
            database = _features(args.features, "database", key="X")
            queries = _features(args.features, "queries", key="Q")
        elif args.database and args.queries:
            database = _features(args.database, "database")
            queries = _features(args.queries, "queries")
        else:
            raise CLIError(
                "--gnd needs descriptors: --features FILE.mat (X (D, N) and Q (D, Q), the "
                "revisitop layout) or --database FILE and --queries FILE"
            )
        for what, x, n in (
            ("database", database, gnd.num_database),
            ("queries", queries, gnd.num_queries),
        ):
            if x.shape[0] != n:
                hint = " (the array looks transposed)" if x.shape[1] == n else ""
                raise CLIError(
                    f"the {what} descriptors have {x.shape[0]} rows but {args.gnd} lists {n} "
                    f"{what} images{hint}"
                )
        if queries.shape[1] != database.shape[1]:
            raise CLIError(
                f"queries have dimension {queries.shape[1]} but the database has "
                f"{database.shape[1]}"
            )
        m = 0
        if args.distractors:
            extra = _features(args.distractors, "distractors")
            if extra.shape[1] != database.shape[1]:
                raise CLIError(
                    f"distractors have dimension {extra.shape[1]} but the database has "
                    f"{database.shape[1]}"
                )
            database, m = torch.cat([database, extra]), int(extra.shape[0])
        name = gnd.name + (f"+{m} distractors" if m else "")
        return _revisitop_task(name, database, queries, gnd, m)
    if args.reid:
        feats = datasets.load_reid_result(args.reid)
        return _reid_task(feats.name, feats)
    # class labels
    if not args.database:
        raise CLIError("--labels needs --database FILE (the descriptors it labels)")
    database = _features(args.database, "database")
    labels = _labels_file(args.labels, "labels")
    if labels.shape[0] != database.shape[0]:
        raise CLIError(
            f"{args.labels} has {labels.shape[0]} labels but {args.database} has "
            f"{database.shape[0]} descriptors"
        )
    queries = query_labels = None
    if args.queries or args.query_labels:
        if not (args.queries and args.query_labels):
            raise CLIError("separate queries need both --queries and --query-labels")
        queries = _features(args.queries, "queries")
        query_labels = _labels_file(args.query_labels, "query labels")
        if query_labels.shape[0] != queries.shape[0]:
            raise CLIError(
                f"{args.query_labels} has {query_labels.shape[0]} labels but {args.queries} "
                f"has {queries.shape[0]} descriptors"
            )
        if queries.shape[1] != database.shape[1]:
            raise CLIError(
                f"queries have dimension {queries.shape[1]} but the database has "
                f"{database.shape[1]}"
            )
    return _class_task(Path(args.database).stem, database, labels, queries, query_labels)


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


def _rerankers(entries, default_all: bool, baseline: bool) -> list[Any]:
    from .rerankers import KNN, RERANKERS

    if entries:
        models = [parse_reranker(spec, settings) for spec, settings in entries]
    elif default_all:
        models = [cls() for cls in RERANKERS]
    else:
        models = [KNN()]
    if baseline and not any(
        type(m) is KNN and m.get_params() == KNN().get_params() for m in models
    ):
        models.insert(0, KNN())
    return models


def _k(args_k: int | None, n: int) -> int:
    if args_k is None:
        return n
    if not 1 <= args_k <= n:
        raise CLIError(f"--k must be between 1 and the database size {n}, got {args_k}")
    return args_k


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{100 * v:.2f}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    align = ["<"] + [">"] * (len(header) - 1)
    line = "| " + " | ".join(f"{h:{a}{w}}" for h, a, w in zip(header, align, widths)) + " |"
    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if a == ">" else "-" * (w + 2) for a, w in zip(align, widths)
        )
        + "|"
    )
    body = [
        "| " + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)) + " |" for r in rows
    ]
    return "\n".join([line, sep, *body])


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [
        f"{cpu}, {os.cpu_count()} cores",
        f"Python {platform.python_version()}",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"graphrerank {__version__}",
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    return "; ".join(parts)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return repr(v)


def _write_json(path: str, payload: dict) -> None:
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(_json_safe(payload), indent=2) + "\n")
        tmp.replace(target)
    except OSError as err:
        raise CLIError(f"cannot write {path!r}: {err}") from None
    print(f"\nwrote {target}")


def _warm_up() -> None:
    """Import the kNN backend before timing, so that its import is not in the first fit."""
    from ._imports import has_faiss

    if has_faiss():
        import faiss  # noqa: F401


def _evaluate(task: _Task, models: list[Any], k: int, device: torch.device, out=None) -> list[dict]:
    out = out or sys.stdout
    _warm_up()
    db = task.database.to(device)
    q = None if task.queries is None else task.queries.to(device)
    rows = []
    with Progress(len(models), "re-ranking") as bar:
        for model in models:
            try:
                t = time.perf_counter()
                model.fit(db)
                _sync(device)
                fit_s = time.perf_counter() - t
                t = time.perf_counter()
                result = model.rerank(q, k)
                _sync(device)
                rerank_s = time.perf_counter() - t
            except ImportError as err:  # an optional dependency of one method
                print(f"{model!r}: skipped ({err})", file=out)
                bar.update(1)
                continue
            except (ValueError, TypeError) as err:
                raise CLIError(f"{model!r}: {err}") from None
            metrics = task.score(result.indices)
            rows.append(
                {
                    "reranker": repr(model),
                    "class": type(model).__name__,
                    "settings": model.get_params(),
                    "metrics": metrics,
                    "fit_s": fit_s,
                    "rerank_s": rerank_s,
                    "result": result,
                }
            )
            bar.update(1)
    return rows


def _print_metric_table(task: _Task, rows: list[dict], out=None) -> None:
    out = out or sys.stdout
    cols = [(key, head) for key, head in task.columns if any(key in r["metrics"] for r in rows)]
    base = rows[0]["metrics"].get(task.primary) if rows else None
    header = ["method"] + [h for _, h in cols] + ["gain", "fit ms", "rerank ms"]
    body = []
    for r in rows:
        m = r["metrics"]
        gain = m.get(task.primary)
        gain_s = "-" if base is None or gain is None else f"{100 * (gain - base):+.2f}"
        body.append(
            [r["reranker"]]
            + [_fmt(m.get(key)) for key, _ in cols]
            + [gain_s, f"{1000 * r['fit_s']:.1f}", f"{1000 * r['rerank_s']:.1f}"]
        )
    print(_table(header, body), file=out)


def _describe(task: _Task, k: int, device: torch.device) -> str:
    q = "all-vs-all" if task.queries is None else f"{task.queries.shape[0]} queries"
    extra = ", ".join(f"{a}: {b}" for a, b in task.info.items())
    return (
        f"{task.name}: {task.num_database} database items, {task.database.shape[1]}-d, {q}; "
        f"{extra}; rankings of length {k} on {device}"
    )


# --------------------------------------------------------------------------- commands
def _cmd_evaluate(args) -> int:
    models = _rerankers(args.rerankers, default_all=False, baseline=not args.no_baseline)
    device = _device(args.device)
    task = _load_task(args)
    if args.l2_normalize:
        task.database, task.queries = _normalize(task.database), _normalize(task.queries)
    k = _k(args.k, task.num_database)
    print(_describe(task, k, device))
    print("scores in %; gain: difference of the first metric with the first row\n")
    rows = _evaluate(task, models, k, device)
    _print_metric_table(task, rows)
    if args.json:
        _write_json(
            args.json,
            {
                "command": [PROG, *sys.argv[1:]] if args.argv is None else [PROG, *args.argv],
                "data": {"name": task.name, "kind": task.kind, **task.info},
                "num_database": task.num_database,
                "num_queries": None if task.queries is None else int(task.queries.shape[0]),
                "k": k,
                "device": str(device),
                "machine": _machine(),
                "results": [{a: b for a, b in r.items() if a != "result"} for r in rows],
            },
        )
    return 0


def _cmd_demo(args) -> int:
    models = _rerankers(None, default_all=True, baseline=True)
    device = _device(args.device)
    args.subset = 600 if args.fast else None
    task = _builtin(args.data, args)
    k = task.num_database
    print(_describe(task, k, device))
    print("every re-ranker at its papers' default settings; scores in %\n")
    rows = _evaluate(task, models, k, device)
    _print_metric_table(task, rows)
    if args.plot:
        from . import plot

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


def _cmd_bench(args) -> int:
    from .datasets import make_retrieval_dataset
    from .metrics import class_map

    models = _rerankers(args.rerankers, default_all=True, baseline=True)
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
    print(f"machine: {_machine()}")
    command = [PROG, *(sys.argv[1:] if args.argv is None else args.argv)]
    print(f"command: {' '.join(command)}\n")
    rows = []
    total_runs = len(models) * (args.repeats + args.warmup)
    with Progress(total_runs, "timing") as bar:
        for model in models:
            fits, reranks = [], []
            try:
                for i in range(args.warmup + args.repeats):
                    _sync(device)
                    t = time.perf_counter()
                    model.fit(db)
                    _sync(device)
                    t1 = time.perf_counter()
                    result = model.rerank(q, k)
                    _sync(device)
                    t2 = time.perf_counter()
                    if i >= args.warmup:
                        fits.append(t1 - t)
                        reranks.append(t2 - t1)
                    bar.update(1)
            except ImportError as err:
                print(f"{model!r}: skipped ({err})")
                continue
            except (ValueError, TypeError) as err:
                raise CLIError(f"{model!r}: {err}") from None
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
    base = rows[0]["total_s"] if rows else float("nan")
    header = ["method", "fit s", "rerank s", "total s", "x KNN", f"mAP@{k} %"]
    body = [
        [
            r["reranker"],
            f"{r['fit_s']:.4g}",
            f"{r['rerank_s']:.4g}",
            f"{r['total_s']:.4g}",
            f"{r['total_s'] / base:.2f}",
            f"{100 * r['map']:.2f}",
        ]
        for r in rows
    ]
    print(_table(header, body))
    if args.json:
        _write_json(
            args.json,
            {
                "command": command,
                "machine": _machine(),
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


def _summary(doc: str) -> str:
    """The first sentence of a docstring as plain text (links and roles reduced to their text)."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    paragraph = re.sub(r"`([^`<]+?)\s*<[^>]+>`_", r"\1", paragraph)  # `"Title" <url>`_
    paragraph = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], paragraph)
    paragraph = paragraph.replace("``", "").replace("\\to", "->")
    end = re.search(r"(?<!e\.g)(?<!i\.e)(?<! al)\.(\s|$)", paragraph)  # not "e.g." or "et al."
    return paragraph[: end.start() + 1] if end else paragraph


def _print_reranker(cls: type) -> None:
    model = cls()
    flags = [
        name
        for name in ("transductive", "needs_query_similarity", "accepts_initial")
        if getattr(model, name)
    ]
    print(f"{cls.__name__}: {_summary(cls.__doc__ or '')}")
    settings = ", ".join(f"{n}={_setting(d)}" for n, d in cls.default_params().items()) or "(none)"
    print(f"    settings: {settings}")
    if flags:
        print(f"    {', '.join(flags)}")


def _setting(value: Any) -> str:
    """A default as it would be typed (objects such as models by their class name)."""
    if value is None or isinstance(value, (bool, int, float, str, tuple, list)):
        return repr(value)
    return type(value).__name__


def _cmd_list(args) -> int:
    from .rerankers import RERANKERS, RERANKERS_WITH_LOCAL

    for cls in RERANKERS:
        _print_reranker(cls)
    if RERANKERS_WITH_LOCAL:
        print()
        print(
            "Re-rankers that also need local descriptors (from Python only: the command line "
            "evaluates global descriptors):"
        )
        for cls in RERANKERS_WITH_LOCAL:
            _print_reranker(cls)
    return 0


# --------------------------------------------------------------------------- parser
def _add_reranker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reranker",
        "-r",
        dest="rerankers",
        action=_RerankerAction,
        metavar="SPEC",
        help="a re-ranker by class name, optionally with settings: KNN, \"KNN(metric='l2')\", "
        "'A(...) | B(...)' for a pipeline; repeat to compare several",
    )
    p.add_argument(
        "--set",
        dest="settings",
        action=_RerankerAction,
        metavar="KEY=VALUE",
        help="change one setting of the re-ranker named just before, e.g. --set k=50",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 or auto")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``graphrerank`` command (its sub-commands and options)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Image-retrieval re-ranking as graph computation: evaluate, benchmark, demo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ev = sub.add_parser(
        "evaluate",
        help="re-rank descriptors and print the metric table",
        description="Rank a database for queries with each re-ranker and score the rankings. "
        "Data: one of --data, --gnd (revisitop), --reid (re-ID result file) or --database with "
        "--labels (classes). The kNN baseline is added as the first row unless --no-baseline.",
    )
    g = ev.add_argument_group("data")
    g.add_argument(
        "--data",
        choices=("digits", "corel1k", "synthetic"),
        help="built-in all-vs-all data (default digits when no other source is given)",
    )
    g.add_argument("--subset", type=int, help="first N items of --data only")
    g.add_argument("--size", type=int, default=10_000, help="--data synthetic: items")
    g.add_argument("--dim", type=int, default=128, help="--data synthetic: dimension")
    g.add_argument("--classes", type=int, default=100, help="--data synthetic: classes")
    g.add_argument("--seed", type=int, default=0, help="--data synthetic: seed")
    g.add_argument(
        "--benchmark",
        choices=("roxford5k", "rparis6k"),
        help="a revisitop benchmark laid out in --root (gnd_*.pkl and --features NAME)",
    )
    g.add_argument("--root", metavar="DIR", help="with --benchmark: its folder")
    g.add_argument(
        "--r1m", metavar="DIR", help="with --benchmark: folder of R1M distractors --features NAME"
    )
    g.add_argument("--gnd", metavar="PKL", help="revisitop ground truth, e.g. gnd_roxford5k.pkl")
    g.add_argument(
        "--features",
        metavar="MAT|NAME",
        help="with --gnd: .mat with X (D, N) and Q (D, Q); with --benchmark: the name NAME of "
        "NAME.mat or NAME_database.npy + NAME_queries.npy in --root",
    )
    g.add_argument(
        "--database", metavar="FILE", help="database descriptors (.npy (N, D), .npz, .mat (D, N))"
    )
    g.add_argument("--queries", metavar="FILE", help="query descriptors (same formats)")
    g.add_argument("--distractors", metavar="FILE", help="with --gnd: distractors (e.g. R1M)")
    g.add_argument("--reid", metavar="MAT", help="re-ID result file (query_f, gallery_f, ...)")
    g.add_argument("--labels", metavar="FILE", help="database classes (.npy or text)")
    g.add_argument("--query-labels", metavar="FILE", help="query classes (.npy or text)")
    g.add_argument("--l2-normalize", action="store_true", help="L2-normalise the descriptors first")
    _add_reranker_options(ev)
    ev.add_argument("--k", type=int, help="ranking length (default: the whole database)")
    ev.add_argument("--no-baseline", action="store_true", help="do not add the kNN baseline")
    ev.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ev.set_defaults(func=_cmd_evaluate)

    be = sub.add_parser(
        "bench",
        help="time re-rankers on synthetic data (the speed table)",
        description="Time fit and rerank of each re-ranker (default: every one) on "
        "make_retrieval_dataset data; prints a Markdown table of median times.",
    )
    be.add_argument("--size", type=int, default=10_000, help="database items (default 10000)")
    be.add_argument("--dim", type=int, default=128, help="dimension (default 128)")
    be.add_argument("--classes", type=int, default=100, help="classes (default 100)")
    be.add_argument("--queries", type=int, default=0, help="separate queries (0: all-vs-all)")
    be.add_argument("--seed", type=int, default=0)
    be.add_argument("--k", type=int, default=None, help="ranking length (default min(100, N))")
    be.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    be.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    _add_reranker_options(be)
    be.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    be.set_defaults(func=_cmd_bench)

    de = sub.add_parser(
        "demo",
        help="the quickstart: every re-ranker on the digits set",
        description="Every re-ranker at its default settings on a built-in all-vs-all set; "
        "prints mAP, Recall@K and times.",
    )
    de.add_argument("--data", choices=("digits", "corel1k"), default="digits")
    de.add_argument("--fast", action="store_true", help="first 600 items only")
    de.add_argument("--plot", metavar="PNG", help="write precision-recall curves here")
    de.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    de.set_defaults(func=_cmd_demo)

    li = sub.add_parser("list", help="list the re-rankers and their settings")
    li.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for bad input).

    Args:
        argv: The arguments after the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args.argv = None if argv is None else list(argv)
    if not hasattr(args, "rerankers") or args.rerankers is None:
        args.rerankers = []
    if args.command == "bench" and args.k is None:
        args.k = min(100, args.size)
    from .datasets import UnsafePickleError

    if os.environ.get("GRAPHRERANK_DEBUG"):
        return args.func(args)
    try:
        return args.func(args)
    except CLIError as err:
        msg = str(err)
    except UnsafePickleError as err:
        msg = f"refused to read a file: {err}"
    except (FileNotFoundError, ValueError, TypeError, ImportError, OSError) as err:
        msg = str(err)
    print(f"{PROG} {args.command}: error: {msg}", file=sys.stderr)
    return 2
