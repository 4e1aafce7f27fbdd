"""Evaluation tasks: what to rank and how to score it (classes, revisitop, re-ID, built-in data).

The files are read by the public loaders of :mod:`graphrerank.datasets`; this module picks the
data source the options name, checks that the pieces agree and attaches the metric.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import datasets, tuning
from ..metrics import class_average_precision, recall_at_k, reid_metrics, revisited_map
from .base import CLIError

__all__ = ["Scores", "Task", "builtin_task", "load_task"]


@dataclass
class Scores:
    """The scores of one ranking.

    Attributes:
        metrics: every metric by name, fractions in [0, 1] (the means over the queries).
        per_query: AP of every query, in query order (all-vs-all: database item ``i`` is query
            ``i``), NaN where a query has no positive; by protocol for revisitop (``"easy"``,
            ``"medium"``, ``"hard"``), else one list ``"ap"``.
    """

    metrics: dict[str, float]
    per_query: dict[str, list[float]]


def _floats(t: Tensor) -> list[float]:
    return [float(v) for v in t.detach().cpu().double().tolist()]


@dataclass
class Task:
    """What to rank and how to score it.

    Attributes:
        name: the data set, as the reports name it.
        kind: ``"classes"``, ``"revisitop"`` or ``"reid"``.
        database: ``(N, D)`` descriptors.
        queries: ``(Q, D)`` descriptors, or ``None`` for all-vs-all.
        score: rankings ``(Q, k)`` (or ``(N, k)``) -> :class:`Scores` (metrics by name and
            per-query AP).
        primary: the metric the ``gain`` column compares (its header names it).
        columns: ``(metric, header)`` of the table, in order.
        info: what the one-line description and the JSON report say of the data.
        labels: database classes (``kind == "classes"`` only).
        query_names: the queries' names where the data has them (revisitop), in query order.
        protocol: the same data as a :class:`graphrerank.tuning.Protocol` (labels, identities
            and cameras, or ground truth kept with it), for ``graphrerank tune``.
    """

    name: str
    kind: str
    database: Tensor
    queries: Tensor | None
    score: Callable[[Tensor], Scores]
    primary: str
    columns: list[tuple[str, str]]
    info: dict[str, Any] = field(default_factory=dict)
    labels: Tensor | None = None
    query_names: list[str] | None = None
    protocol: tuning.Protocol | None = None

    @property
    def primary_header(self) -> str:
        """The table header of :attr:`primary` (``"M mAP"``, ``"mAP"``)."""
        return dict(self.columns).get(self.primary, self.primary)

    @property
    def num_database(self) -> int:
        """``N``, the database size."""
        return int(self.database.shape[0])

    def describe(self, k: int, device: torch.device) -> str:
        """One line: the data, its protocol, the ranking length and the device."""
        q = "all-vs-all" if self.queries is None else f"{self.queries.shape[0]} queries"
        extra = ", ".join(f"{a}: {b}" for a, b in self.info.items())
        return (
            f"{self.name}: {self.num_database} database items, {self.database.shape[1]}-d, {q}; "
            f"{extra}; rankings of length {k} on {device}"
        )


# --------------------------------------------------------------------------- the three kinds
def _class_task(name, database, labels, queries=None, query_labels=None) -> Task:
    all_vs_all = queries is None

    def score(indices: Tensor) -> Scores:
        ks = tuple(k for k in (1, 5, 10) if k <= indices.shape[1])
        db = labels.to(indices.device)  # the rankings may be on a GPU
        q = None if query_labels is None else query_labels.to(indices.device)
        ap = class_average_precision(indices, db, q, leave_one_out=all_vs_all)
        valid = ~ap.isnan()  # the mean of graphrerank.metrics.class_map
        out = {"map": float(ap[valid].mean()) if bool(valid.any()) else float("nan")}
        recalls = recall_at_k(indices, db, q, ks=ks, leave_one_out=all_vs_all)
        out.update({f"recall@{k}": v for k, v in recalls.items()})
        return Scores(out, {"ap": _floats(ap)})

    return Task(
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
        protocol=tuning.class_protocol(database, labels, queries, query_labels),
    )


def _revisitop_task(name, database, queries, gnd, num_distractors=0) -> Task:
    n = database.shape[0]

    def score(indices: Tensor) -> Scores:
        res = revisited_map(indices, gnd.gnd, num_database=n)
        out, per_query = {}, {}
        for proto in ("easy", "medium", "hard"):
            r = res[proto]
            out[f"{proto}_map"] = r.map
            for kappa, v in r.mp_at_k.items():
                out[f"{proto}_mp@{kappa}"] = v
            per_query[proto] = _floats(r.ap)
        return Scores(out, per_query)

    return Task(
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
        query_names=[str(name) for name in gnd.qimlist],
        protocol=tuning.revisitop_protocol(database, queries, gnd),
    )


def _reid_task(feats: datasets.ReIDFeatures) -> Task:
    def score(indices: Tensor) -> Scores:
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
        return Scores(out, {"ap": _floats(r.ap)})

    return Task(
        name=feats.name,
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
        protocol=tuning.reid_protocol(feats),
    )


# --------------------------------------------------------------------------- checks
def _labels_file(path: str, what: str) -> Tensor:
    """Integer classes from ``.npy`` or a text file (one per line): graphrerank.datasets reads
    descriptor matrices only."""
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


def _same_dimension(what: str, x: Tensor, database: Tensor) -> None:
    if x.shape[1] != database.shape[1]:
        raise CLIError(
            f"{what} have dimension {x.shape[1]} but the database has {database.shape[1]}"
        )


def _one_label_per_row(labels_path: str, labels: Tensor, path: str, x: Tensor) -> None:
    if labels.shape[0] != x.shape[0]:
        raise CLIError(
            f"{labels_path} has {labels.shape[0]} labels but {path} has {x.shape[0]} descriptors"
        )


def _options(names: list[str]) -> str:
    return ", ".join("--" + f.replace("_", "-") for f in names)


def _check_sources(args: argparse.Namespace) -> list[str]:
    """The data options given, checked to name one data source; returns the source options."""
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
        verb = "needs" if len(files) == 1 else "need"
        raise CLIError(
            f"{_options(files)} {verb} a ground truth: --gnd (revisitop) or --labels (classes); "
            "--reid files hold their own descriptors"
        )
    if args.reid and files:
        raise CLIError(f"--reid files hold their own descriptors; drop {_options(files)}")
    if args.labels and (args.features or args.distractors):
        raise CLIError("--features and --distractors go with --gnd; use --database with --labels")
    if (getattr(args, "root", None) or getattr(args, "r1m", None)) and not args.benchmark:
        raise CLIError("--root and --r1m go with --benchmark")
    return sources


# --------------------------------------------------------------------------- the sources
def builtin_task(name: str, args: argparse.Namespace) -> Task:
    """A built-in all-vs-all class task: ``digits``, ``corel1k`` or ``synthetic``.

    Args:
        name: the ``--data`` choice.
        args: the parsed options; ``subset`` (and for ``synthetic``: ``size``, ``dim``,
            ``classes``, ``seed``) are read.
    """
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
    x, y = ds.database, ds.database_labels
    if args.subset is not None:
        if args.subset < 2:
            raise CLIError(f"--subset must be at least 2, got {args.subset}")
        x, y = x[: args.subset], y[: args.subset]
    return _class_task(ds.name, x, y)


def _benchmark_task(args: argparse.Namespace) -> Task:
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


def _gnd_task(args: argparse.Namespace) -> Task:
    gnd = datasets.load_revisitop_gnd(args.gnd)
    if args.features:
        if args.database or args.queries:
            raise CLIError("give --features, or --database and --queries, not both")
        database = datasets.load_features(args.features, key="X")
        queries = datasets.load_features(args.features, key="Q")
    elif args.database and args.queries:
        database = datasets.load_features(args.database)
        queries = datasets.load_features(args.queries)
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
    _same_dimension("queries", queries, database)
    m = 0
    if args.distractors:
        extra = datasets.load_features(args.distractors)
        _same_dimension("distractors", extra, database)
        database, m = torch.cat([database, extra]), int(extra.shape[0])
    name = gnd.name + (f"+{m} distractors" if m else "")
    return _revisitop_task(name, database, queries, gnd, m)


def _labels_task(args: argparse.Namespace) -> Task:
    if not args.database:
        raise CLIError("--labels needs --database FILE (the descriptors it labels)")
    database = datasets.load_features(args.database)
    labels = _labels_file(args.labels, "labels")
    _one_label_per_row(args.labels, labels, args.database, database)
    queries = query_labels = None
    if args.queries or args.query_labels:
        if not (args.queries and args.query_labels):
            raise CLIError("separate queries need both --queries and --query-labels")
        queries = datasets.load_features(args.queries)
        query_labels = _labels_file(args.query_labels, "query labels")
        _one_label_per_row(args.query_labels, query_labels, args.queries, queries)
        _same_dimension("queries", queries, database)
    return _class_task(Path(args.database).stem, database, labels, queries, query_labels)


def load_task(args: argparse.Namespace) -> Task:
    """The task the data options of ``graphrerank evaluate`` describe.

    One source: ``--data`` (the default, ``digits``), ``--benchmark`` with ``--root``,
    ``--gnd`` with descriptor files, ``--reid``, or ``--database`` with ``--labels``.

    Raises:
        CLIError: the options contradict each other or the files do not agree.
    """
    sources = _check_sources(args)
    if args.data or not sources:
        return builtin_task(args.data or "digits", args)
    if args.benchmark:
        return _benchmark_task(args)
    if args.gnd:
        return _gnd_task(args)
    if args.reid:
        return _reid_task(datasets.load_reid_result(args.reid))
    return _labels_task(args)
