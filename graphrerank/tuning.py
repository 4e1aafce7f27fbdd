r"""Settings chosen from the user's own labelled data: grid, random and successive-halving search.

The papers' defaults were tuned on their benchmarks; on other data they can lose to the plain
first stage. :func:`tune` scores a re-ranker (or a :class:`~graphrerank.rerankers.Pipeline`)
at every setting of a grid on labelled validation data and returns the best one. The plain
first stage (:class:`~graphrerank.rerankers.KNN`, no re-ranking) is always in the search space
and wins ties, so the tuned choice never scores below it on the validation data; the
re-ranker's own settings (as given) are in the search space too.

**Protocols** (:class:`Protocol`): class labels, all-vs-all leave-one-out
(:func:`~graphrerank.metrics.class_map`) or queries against a database
(:func:`class_protocol`); re-ID query / gallery with identities and cameras, the Market-1501
rule (:func:`reid_protocol`); revisited Oxford / Paris ground truth, Medium mAP by default
(:func:`revisitop_protocol`).

**Honest validation.** :meth:`Protocol.split` and :func:`split_by_class` split by class /
identity / landmark, never by image, seeded: tune on one part, evaluate on the other.

**Cost.** The first-stage scores are computed once and shared by every setting: the database
x database similarities (and the queries' scores against the database and among themselves)
become a :class:`~graphrerank.graph.ScoreMatrix`, and every re-ranker that accepts one
(``accepts_scores``: kNN, k-reciprocal, GNN, diffusion, fast spectral ranking, offline
diffusion, R-DiP) is fitted on it instead of searching the descriptors again. Re-rankers that
compute with the vectors themselves (query expansion, database augmentation, SuperGlobal,
pipelines of these) are fitted on the descriptors at each setting; the result's table says
which rows shared the scores (``shared``).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._checks import as_tensor, check_in
from ._progress import Progress
from .graph.scores import ScoreMatrix
from .graph.sparse import csr
from .metrics import class_average_precision, reid_metrics, revisited_map
from .rerankers import KNN, Pipeline, Reranker

__all__ = [
    "SEARCHES",
    "Protocol",
    "TuningResult",
    "class_protocol",
    "reid_protocol",
    "revisitop_protocol",
    "split_by_class",
    "tune",
]

#: The search strategies of :func:`tune`.
SEARCHES = ("grid", "random", "halving")

#: The revisited protocols a :func:`revisitop_protocol` may score.
_REVISITED = ("easy", "medium", "hard")

#: Database size up to which the shared first-stage scores are one dense matrix; above it a
#: sparse top-k matrix is stored for the methods that take one.
_DENSE_LIMIT = 150_000_000  # entries (600 MB of float32)


# --------------------------------------------------------------------------- splits
def _split_groups(groups: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Two disjoint, seeded parts of the distinct ``groups``, ``fraction`` of them in the first
    (at least one in each)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a number in (0, 1), got {fraction!r}")
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if groups.numel() < 2:
        raise ValueError(f"a split needs at least 2 classes / identities, got {groups.numel()}")
    g = torch.Generator().manual_seed(seed)
    perm = groups[torch.randperm(groups.numel(), generator=g)]
    n = min(max(round(float(fraction) * groups.numel()), 1), groups.numel() - 1)
    return perm[:n].sort().values, perm[n:].sort().values


def split_by_class(labels: Any, fraction: float = 0.5, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split items by class, never by item: every class falls wholly in one part.

    The distinct classes are shuffled with ``seed`` and the first ``round(fraction * C)`` of
    them (at least one, at most ``C - 1``) form the first part.

    Args:
        labels: :math:`(N,)` integer classes (or identities).
        fraction: Share of the classes in the first part, in :math:`(0, 1)`.
        seed: Seed of the shuffle; the same seed gives the same split.

    Returns:
        ``(first, second)``: the item indices of each part, ascending.

    Raises:
        ValueError: fewer than two classes, ``fraction`` outside :math:`(0, 1)`, labels not
            a 1-D integer array.
        TypeError: ``fraction`` or ``seed`` of the wrong type.

    Example:
        >>> first, second = split_by_class(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), 0.5, seed=0)
        >>> sorted(first.tolist() + second.tolist())
        [0, 1, 2, 3, 4, 5, 6, 7]
        >>> len(first), len(second)
        (4, 4)
    """
    y = _labels(labels, "labels")
    a, _ = _split_groups(torch.unique(y), fraction, seed)
    in_a = torch.isin(y, a)
    return in_a.nonzero().flatten(), (~in_a).nonzero().flatten()


def _labels(x: Any, name: str, n: int | None = None) -> Tensor:
    t = as_tensor(x, name)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} entries but there are {n} items")
    return t.long().cpu()


def _features(x: Any, name: str) -> Tensor:
    t = as_tensor(x, name)
    if t.dim() != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must hold floating point values, got dtype {t.dtype}")
    return t


# --------------------------------------------------------------------------- protocols
@dataclass(eq=False)
class Protocol:
    """Labelled validation data and the metric that scores a ranking of it.

    Made by :func:`class_protocol`, :func:`reid_protocol` or :func:`revisitop_protocol`.

    Attributes:
        kind: ``"classes"``, ``"reid"`` or ``"revisitop"``.
        database: :math:`(N, D)` descriptors.
        queries: :math:`(Q, D)` descriptors, or ``None`` for all-vs-all (leave-one-out).
        metric: the name of the score, e.g. ``"mAP"`` or ``"medium mAP"``.
        labels: database classes (``"classes"``), or gallery identities (``"reid"``).
        query_labels: query classes or identities, ``None`` all-vs-all.
        cameras: gallery cameras (``"reid"``).
        query_cameras: query cameras (``"reid"``).
        gnd: the per-query ground-truth dicts (``"revisitop"``).
        revisited: the revisited protocol scored (``"revisitop"``).
    """

    kind: str
    database: Tensor
    queries: Tensor | None
    metric: str
    labels: Tensor | None = None
    query_labels: Tensor | None = None
    cameras: Tensor | None = None
    query_cameras: Tensor | None = None
    gnd: list[dict] | None = None
    revisited: str = "medium"

    @property
    def num_database(self) -> int:
        """:math:`N`."""
        return int(self.database.shape[0])

    @property
    def num_queries(self) -> int:
        """The number of queries (:math:`N` all-vs-all)."""
        return self.num_database if self.queries is None else int(self.queries.shape[0])

    def __repr__(self) -> str:
        q = "all-vs-all" if self.queries is None else f"{self.num_queries} queries"
        return (
            f"Protocol({self.kind}, {self.num_database} database items, {q}, "
            f"{len(self.groups())} groups, {self.metric})"
        )

    def per_query(self, indices: Tensor) -> Tensor:
        """The AP of every query of ``(Q, k)`` ranked database indices, float64 on the CPU, NaN
        for a query without positive (left out of the mean)."""
        dev = indices.device
        if self.kind == "classes":
            q = None if self.query_labels is None else self.query_labels.to(dev)
            ap = class_average_precision(
                indices, self.labels.to(dev), q, leave_one_out=self.queries is None
            )
        elif self.kind == "reid":
            ap = reid_metrics(
                indices,
                self.query_labels.to(dev),
                self.query_cameras.to(dev),
                self.labels.to(dev),
                self.cameras.to(dev),
                max_rank=min(50, indices.shape[1]),
            ).ap
        else:
            res = revisited_map(indices, self.gnd, num_database=self.num_database)
            ap = getattr(res, self.revisited).ap
        return ap.detach().double().cpu()

    def score(self, indices: Tensor) -> float:
        """The metric of ``(Q, k)`` ranked database indices, a fraction in :math:`[0, 1]`: the
        mean of :meth:`per_query` over the queries with a positive (class mAP, re-ID mAP under
        the Market rule, or the revisited protocol's mAP)."""
        ap = self.per_query(indices)
        valid = ~ap.isnan()
        return float(ap[valid].mean()) if bool(valid.any()) else float("nan")

    def groups(self) -> Tensor:
        """The units a split keeps whole: classes, query identities, or landmarks (revisitop
        queries joined when they share a positive image)."""
        if self.kind == "classes":
            parts = [self.labels] + ([] if self.query_labels is None else [self.query_labels])
            return torch.unique(torch.cat(parts))
        if self.kind == "reid":
            return torch.unique(self.query_labels)
        return torch.unique(self._landmarks())

    def query_groups(self) -> Tensor:
        """The group (:meth:`groups`) of each query, in query order: the class of each item
        (all-vs-all) or query, the identity of each re-ID query, the landmark of each
        revisitop query."""
        if self.kind == "classes":
            return self.labels if self.query_labels is None else self.query_labels
        if self.kind == "reid":
            return self.query_labels
        return self._landmarks()

    def _landmarks(self) -> Tensor:
        """The landmark of each revisitop query: connected components of "shares a positive"."""
        q = len(self.gnd)
        parent = list(range(q))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        owner: dict[int, int] = {}
        for i, entry in enumerate(self.gnd):
            for key in ("easy", "hard"):
                for j in np.asarray(entry.get(key, []), dtype=np.int64).reshape(-1).tolist():
                    if j in owner:
                        parent[find(i)] = find(owner[j])
                    else:
                        owner[j] = i
        return torch.tensor([find(i) for i in range(q)], dtype=torch.int64)

    def subset(self, groups: Any) -> Protocol:
        """The protocol restricted to some groups (:meth:`groups`).

        Classes: the items (and queries) of those classes. Re-ID: the queries of those
        identities and the gallery items of those identities, plus every gallery item whose
        identity no query has (distractors and junk, kept in every part). Revisitop: the
        queries of those landmarks, against the whole database.
        """
        keep = _labels(groups, "groups")
        if self.kind == "classes":
            rows = torch.isin(self.labels, keep)
            if not bool(rows.any()):
                raise ValueError("the subset holds no database item")
            out = replace(self, database=self.database[rows.to(self.database.device)],
                          labels=self.labels[rows])  # fmt: skip
            if self.queries is not None:
                qr = torch.isin(self.query_labels, keep)
                out = replace(out, queries=self.queries[qr.to(self.queries.device)],
                              query_labels=self.query_labels[qr])  # fmt: skip
            return out
        if self.kind == "reid":
            qr = torch.isin(self.query_labels, keep)
            gr = torch.isin(self.labels, keep) | ~torch.isin(self.labels, self.query_labels)
            return replace(
                self,
                queries=self.queries[qr.to(self.queries.device)],
                query_labels=self.query_labels[qr],
                query_cameras=self.query_cameras[qr],
                database=self.database[gr.to(self.database.device)],
                labels=self.labels[gr],
                cameras=self.cameras[gr],
            )
        qr = torch.isin(self._landmarks(), keep)
        idx = qr.nonzero().flatten().tolist()
        return replace(
            self, queries=self.queries[qr.to(self.queries.device)], gnd=[self.gnd[i] for i in idx]
        )

    def split(self, fraction: float = 0.5, seed: int = 0) -> tuple[Protocol, Protocol]:
        """Two protocols over disjoint groups (classes, identities, landmarks), seeded:
        ``fraction`` of the groups in the first. Tune on one, evaluate on the other."""
        a, b = _split_groups(self.groups(), fraction, seed)
        return self.subset(a), self.subset(b)


def class_protocol(
    database: Any, labels: Any, queries: Any = None, query_labels: Any = None
) -> Protocol:
    """Class labels: relevant means same class; mAP (:func:`~graphrerank.metrics.class_map`).

    Without ``queries`` every database item queries the others (all-vs-all, leave-one-out).

    Args:
        database: :math:`(N, D)` descriptors.
        labels: :math:`(N,)` integer classes.
        queries: :math:`(Q, D)` descriptors, or ``None``.
        query_labels: :math:`(Q,)` integer classes (with ``queries``).

    Raises:
        ValueError: shapes disagree, or ``queries`` without ``query_labels`` (or the reverse).
    """
    db = _features(database, "database")
    y = _labels(labels, "labels", db.shape[0])
    if (queries is None) != (query_labels is None):
        raise ValueError("give queries and query_labels together (or neither: all-vs-all)")
    q = qy = None
    if queries is not None:
        q = _features(queries, "queries")
        qy = _labels(query_labels, "query_labels", q.shape[0])
    return Protocol("classes", db, q, "mAP", labels=y, query_labels=qy)


def reid_protocol(features: Any) -> Protocol:
    """Re-ID query / gallery: mAP under the Market-1501 rule
    (:func:`~graphrerank.metrics.reid_metrics`: a gallery item of the query's identity and
    camera is ignored, identity ``-1`` is junk).

    Args:
        features: a :class:`~graphrerank.datasets.ReIDFeatures` (as
            :func:`~graphrerank.datasets.load_reid_result` reads it).
    """
    for name in ("query_features", "query_ids", "query_cams", "gallery_features",
                 "gallery_ids", "gallery_cams"):  # fmt: skip
        if not hasattr(features, name):
            raise TypeError(
                f"features must be re-ID features (graphrerank.datasets.ReIDFeatures), got "
                f"{type(features).__name__} without {name!r}"
            )
    q = _features(features.query_features, "query_features")
    g = _features(features.gallery_features, "gallery_features")
    return Protocol(
        "reid",
        g,
        q,
        "mAP",
        labels=_labels(features.gallery_ids, "gallery_ids", g.shape[0]),
        query_labels=_labels(features.query_ids, "query_ids", q.shape[0]),
        cameras=_labels(features.gallery_cams, "gallery_cams", g.shape[0]),
        query_cameras=_labels(features.query_cams, "query_cams", q.shape[0]),
    )


def revisitop_protocol(database: Any, queries: Any, gnd: Any, protocol: str = "medium") -> Protocol:
    """Revisited Oxford / Paris: the mAP of one protocol of
    :func:`~graphrerank.metrics.revisited_map` (Medium by default).

    Args:
        database: :math:`(N, D)` descriptors.
        queries: :math:`(Q, D)` descriptors.
        gnd: the ground truth (:func:`~graphrerank.datasets.load_revisitop_gnd`, the pickled
            dict, or its list of per-query dicts), one entry per query.
        protocol: ``"easy"``, ``"medium"`` or ``"hard"``.
    """
    check_in(protocol, "protocol", _REVISITED)
    db, q = _features(database, "database"), _features(queries, "queries")
    entries = getattr(gnd, "gnd", None)
    if entries is None:
        entries = gnd["gnd"] if isinstance(gnd, Mapping) else gnd
    entries = list(entries)
    if len(entries) != q.shape[0]:
        raise ValueError(f"gnd has {len(entries)} queries but queries has {q.shape[0]} rows")
    return Protocol("revisitop", db, q, f"{protocol} mAP", gnd=entries, revisited=protocol)


def _as_protocol(data: Any, labels: Any) -> Protocol:
    if isinstance(data, Protocol):
        if labels is not None:
            raise ValueError("labels= goes with descriptors; a Protocol holds its own")
        return data
    if hasattr(data, "gallery_features"):
        return reid_protocol(data)
    if hasattr(data, "database_labels"):  # a RetrievalDataset
        if data.database_labels is None:
            raise ValueError(f"the data set {data.name!r} has no labels to tune on")
        return class_protocol(data.database, data.database_labels, data.queries, data.query_labels)
    if labels is None:
        raise ValueError(
            "pass labels= with database descriptors, or a Protocol (class_protocol, "
            "reid_protocol, revisitop_protocol), a RetrievalDataset or ReIDFeatures"
        )
    return class_protocol(data, labels)


# --------------------------------------------------------------------------- settings
def _target(reranker: Reranker, name: str) -> tuple[Reranker, str]:
    """The re-ranker and setting a grid name points at: ``k``, ``0.k`` or ``AlphaQueryExpansion.k``
    (a pipeline's stage by position or class name), ``rescorer.k1`` (a setting holding a
    re-ranker)."""
    head, dot, rest = name.partition(".")
    if not dot:
        if head not in reranker.default_params():
            valid = sorted(reranker.default_params())
            raise ValueError(
                f"param_grid: {type(reranker).__name__} has no setting {name!r}; valid: {valid}"
            )
        return reranker, head
    inner = None
    if isinstance(reranker, Pipeline):
        stages = reranker._stages()
        if head.isdigit() and int(head) < len(stages):
            inner = stages[int(head)]
        else:
            hits = [s for s in stages if type(s).__name__.lower() == head.lower()]
            if len(hits) > 1:
                raise ValueError(
                    f"param_grid: {name!r}: the pipeline has {len(hits)} {head} stages; name the "
                    "stage by its position (0.k, 1.alpha, ...)"
                )
            inner = hits[0] if hits else None
    elif head in reranker.default_params() and isinstance(getattr(reranker, head), Reranker):
        inner = getattr(reranker, head)
    if inner is None:
        raise ValueError(
            f"param_grid: {name!r} names no stage or nested re-ranker of {reranker!r} (write "
            "setting, stage.setting with the stage's position or class name, or "
            "setting.subsetting for a setting that holds a re-ranker)"
        )
    return _target(inner, rest)


def _with_params(reranker: Reranker, params: Mapping[str, Any]) -> Reranker:
    model = _materialised(reranker.clone())
    for name, value in params.items():
        target, attr = _target(model, name)
        target.set_params(**{attr: value})
    return model


def _materialised(model: Reranker) -> Reranker:
    """``model`` with a pipeline's default stages (``stages=None``) made explicit, so that a
    grid can set them."""
    if isinstance(model, Pipeline) and model.stages is None:
        model.stages = model._stages()
    return model


def _invalid(model: Reranker, names: Sequence[str]) -> str | None:
    """Why the settings of ``model`` are refused (its own check and that of every nested
    re-ranker the grid names), or ``None``."""
    try:
        model.validate_params()
        for name in names:
            _target(model, name)[0].validate_params()
    except (TypeError, ValueError) as err:
        return str(err)
    return None


def _valid_combinations(
    reranker: Reranker, grid: dict[str, list], combos: list[dict], what: str
) -> tuple[list[dict], list[tuple[dict, str]]]:
    """The combinations the re-ranker accepts, and the refused ones with the reason. A value
    refused in every combination it appears in is bad input (``ValueError`` naming it); a
    combination refused only as a whole (``k2 > k1``) is skipped."""
    ok, refused = [], []
    for combo in combos:
        why = _invalid(_with_params(reranker, combo), list(combo))
        (ok.append(combo) if why is None else refused.append((combo, why)))
    for name, values in grid.items():
        for value in values:
            with_it = [c for c in combos if c[name] == value or c[name] is value]
            if with_it and all(any(c is r for r, _ in refused) for c in with_it):
                why = next(w for r, w in refused if r[name] == value)
                raise ValueError(f"{what}[{name!r}]: the value {value!r} is invalid: {why}")
    return ok, refused


def _check_grid(reranker: Reranker, grid: Any, what: str) -> dict[str, list]:
    if isinstance(grid, Mapping):
        grid = dict(grid)
    else:
        raise TypeError(
            f"{what} must be a dict of setting -> list of values, got {type(grid).__name__}"
        )
    if not grid:
        raise ValueError(f"{what} is empty: give at least one setting and its values")
    out: dict[str, list] = {}
    for name, values in grid.items():
        if not isinstance(name, str):
            raise TypeError(f"{what}: setting names must be strings, got {name!r}")
        if isinstance(values, (str, bytes)) or not isinstance(
            values, Sequence | np.ndarray | Tensor
        ):
            raise TypeError(f"{what}[{name!r}] must be a list of values, got {values!r}")
        values = values.tolist() if isinstance(values, (np.ndarray, Tensor)) else list(values)
        if not values:
            raise ValueError(f"{what}[{name!r}] is empty: give at least one value")
        _target(reranker.clone(), name)  # the name exists
        out[name] = values
    return out


def _candidates(grid: dict[str, list], search: str, n_iter: int, seed: int) -> list[dict]:
    names = list(grid)
    every = [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]
    if search == "random" and n_iter < len(every):
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(every), generator=g)[:n_iter].sort().values
        return [every[i] for i in pick.tolist()]
    return every


# --------------------------------------------------------------------------- shared scores
class _SharedScores:
    """The first-stage scores of one protocol, computed once, as ScoreMatrix inputs."""

    def __init__(self, protocol: Protocol, depth: int, mode: str, needs_dense: bool) -> None:
        t0 = time.perf_counter()
        x, q = protocol.database, protocol.queries
        n = x.shape[0]
        rows = n if q is None else q.shape[0]
        fits = n * (n + rows) <= _DENSE_LIMIT
        dense = mode == "dense" or (mode == "auto" and needs_dense and fits)
        self.dense = dense
        self._cache: dict[str, tuple[ScoreMatrix, ScoreMatrix | None]] = {}
        s_db = x @ x.T
        if dense:
            db = ScoreMatrix(s_db)
            qs = None if q is None else ScoreMatrix(q @ x.T, query_scores=q @ q.T)
        else:
            db = ScoreMatrix(_top(s_db, depth))
            qs = None if q is None else ScoreMatrix(_top(q @ x.T, depth), query_scores=q @ q.T)
        del s_db
        self._cache["similarity"] = (db, qs)
        diag = db.diagonal() if dense else None
        self.cosine = bool(
            diag is not None and torch.allclose(diag, torch.ones_like(diag), atol=1e-3)
        )
        self.seconds = time.perf_counter() - t0

    def get(self, kind: str) -> tuple[ScoreMatrix, ScoreMatrix | None]:
        if kind not in self._cache:
            t0 = time.perf_counter()
            db, qs = self._cache["similarity"]
            # unit vectors stored in half precision give cosines a hair above 1: clamp them
            self._cache[kind] = (_clamped(db).as_distance(),
                                 None if qs is None else _clamped(qs).as_distance())  # fmt: skip
            self.seconds += time.perf_counter() - t0
        return self._cache[kind]

    def usable(self, model: Reranker) -> str | None:
        """The score kind ``model`` is fitted on here, or ``None`` (descriptors needed)."""
        if not model.accepts_scores or isinstance(model, Pipeline):
            return None
        if getattr(model, "rescorer", None) is not None:  # R-DiP's re-scorer needs its input
            return None
        kind = "distance" if model.candidate_scores == "negative_distance" else "similarity"
        if _needs_dense(model) and not self.dense:
            return None
        if kind == "distance" and not self.cosine:
            return None
        return kind


def _clamped(s: ScoreMatrix) -> ScoreMatrix:
    """A dense cosine ScoreMatrix with its entries clamped to :math:`[-1, 1]`."""
    qq = None if s.query_scores is None else s.query_scores.clamp(-1.0, 1.0)
    return ScoreMatrix(s.matrix.clamp(-1.0, 1.0), query_scores=qq)


def _needs_dense(model: Reranker) -> bool:
    """Whether ``model`` takes only a dense score matrix (k-reciprocal and GNN re-ranking need
    every pair's score)."""
    if not model.accepts_scores or isinstance(model, Pipeline):
        return False
    return bool(model.transductive) or model.candidate_scores == "negative_distance"


def _top(s: Tensor, depth: int) -> Tensor:
    """Each row's ``depth`` best entries of a dense matrix, as a CSR matrix (columns sorted)."""
    m = min(depth, s.shape[1])
    val, idx = s.topk(m, dim=1)
    idx, order = idx.sort(dim=1)
    val = val.gather(1, order)
    crow = torch.arange(0, s.shape[0] * m + 1, m, device=s.device)
    return csr(crow, idx.reshape(-1), val.reshape(-1), s.shape, sorted=True)


def _depth(candidates: list[Reranker], k: int) -> int:
    d = k
    for model in candidates:
        for name, value in model.get_params().items():
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and name.startswith(("k", "M"))
            ):
                d = max(d, value)
    return d


# --------------------------------------------------------------------------- the result
@dataclass
class TuningResult:
    """What :func:`tune` found.

    Attributes:
        best_params_: the winning settings (names as in the grid), or ``None`` when the plain
            first stage wins (no re-ranking setting beat it on the validation data).
        best_score_: its score on the validation data, a fraction in :math:`[0, 1]`.
        baseline_score_: the plain first stage's score (:class:`~graphrerank.rerankers.KNN`).
        given_score_: the score of the re-ranker with the settings it was given.
        results_: one dict per evaluated setting: ``params`` (``None``: the baseline),
            ``reranker`` (its repr), ``score``, ``round`` (successive halving), ``seconds``
            (fit and rerank), ``shared`` (fitted on the shared first-stage scores), ``given``
            (the re-ranker's own settings), ``error`` (why the run failed, else ``None``; a
            failed setting scores NaN and cannot win), ``margin`` (what it had to beat the
            baseline by), ``warnings`` (what the re-ranker warned of at this setting).
        metric: the score's name (``"mAP"``, ``"medium mAP"``).
        skipped_: ``(params, reason)`` of the grid combinations the re-ranker refuses as a
            whole (e.g. ``k2 > k1``), not run.
        first_stage_s: seconds spent computing the shared first-stage scores.
        total_s: seconds of the whole search.
    """

    reranker: Reranker
    best_params_: dict[str, Any] | None
    best_score_: float
    baseline_score_: float
    given_score_: float
    results_: list[dict[str, Any]]
    metric: str
    search: str
    first_stage_s: float = 0.0
    total_s: float = 0.0
    grid: dict[str, list] = field(default_factory=dict)
    skipped_: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    def best_estimator(self) -> Reranker:
        """An unfitted re-ranker with the best settings: a clone of the tuned one, or
        ``KNN()`` when the baseline won."""
        if self.best_params_ is None:
            return KNN()
        return _with_params(self.reranker, self.best_params_)

    @property
    def gain(self) -> float:
        """``best_score_ - baseline_score_`` (never negative)."""
        return self.best_score_ - self.baseline_score_

    def table(self, *, top: int | None = None) -> str:
        """Every evaluated setting and its score as a Markdown table, best first (scores in %).

        Args:
            top: Only the ``top`` best rows.
        """
        names = list(self.grid)
        rows = sorted(
            self.results_,
            key=lambda r: (-r["round"], math.inf if r.get("error") else -r["score"]),
        )
        if top is not None:
            rows = rows[:top]
        halving = self.search == "halving"
        head = ["setting", *names] + (["round", "items"] if halving else []) + [
            f"{self.metric} (%)", "vs baseline", "shared"]  # fmt: skip
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        base = {r["round"]: r["score"] for r in self.results_ if r["params"] is None}
        for r in rows:
            p = r["params"]
            label = "baseline (KNN)" if p is None else ("given" if r.get("given") else "")
            cells = [label] + [("" if p is None else repr(p.get(n, "")).strip("'")) for n in names]
            if halving:
                cells += [str(r["round"]), str(r["items"])]
            diff = 100 * (r["score"] - base.get(r["round"], r["score"]))
            if r.get("error"):
                cells += ["failed", "", r["error"][:60]]
            else:
                cells += [f"{100 * r['score']:.2f}", f"{diff:+.2f}", "yes" if r["shared"] else "no"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, param: str | None = None, *, ax: Any = None, title: str | None = None) -> Any:
        """Score against the values of one setting (the best over the other settings at each
        value), with the baseline as a dashed line
        (:func:`~graphrerank.plot.map_vs_parameter`; needs matplotlib).

        Args:
            param: A setting of the grid (default: the only one; required with several).
            ax: Axes to draw on.
            title: Axes title.
        """
        from . import plot

        if param is None:
            if len(self.grid) != 1:
                raise ValueError(f"param: name one setting of the grid, one of {list(self.grid)}")
            (param,) = self.grid
        if param not in self.grid:
            raise ValueError(f"param {param!r} is not in the grid; one of {list(self.grid)}")
        last = max(r["round"] for r in self.results_)
        best: dict[Any, float] = {}
        order: list[Any] = []
        for r in self.results_:
            if r["params"] is None or r["round"] != last or r.get("error"):
                continue
            if param not in r["params"]:
                continue
            v = r["params"][param]
            key = repr(v)
            if key not in best:
                order.append(v)
                best[key] = r["score"]
            best[key] = max(best[key], r["score"])
        if not order:
            raise ValueError(f"no setting of {param!r} reached the last round")
        base = next(r["score"] for r in self.results_ if r["params"] is None and r["round"] == last)
        return plot.map_vs_parameter(
            [(v, best[repr(v)]) for v in order],
            parameter=param,
            baseline=base,
            ax=ax,
            title=title or f"{type(self.reranker).__name__}: {self.metric} against {param}",
        )

    def __repr__(self) -> str:
        best = "baseline (KNN)" if self.best_params_ is None else self.best_params_
        return (
            f"TuningResult({type(self.reranker).__name__}, best={best}, "
            f"{self.metric}={100 * self.best_score_:.2f} vs baseline "
            f"{100 * self.baseline_score_:.2f}, {len(self.results_)} runs)"
        )


# --------------------------------------------------------------------------- the search
def _run(model: Reranker, protocol: Protocol, shared: _SharedScores | None, k: int):
    """Fit ``model`` on the protocol (on the shared scores where it takes them) and score it:
    ``(score, per-query AP, seconds, shared, warnings)``; the warnings a setting raises (a
    neighbourhood as large as the database, ...) are kept with its row, not printed."""
    t0 = time.perf_counter()
    kind = None if shared is None else shared.usable(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if kind is not None:
            db, qs = shared.get(kind)
            model.fit(db)
            result = model.rerank(qs, k)
        else:
            model.fit(protocol.database)
            result = model.rerank(protocol.queries, k)
    ap = protocol.per_query(result.indices)
    valid = ~ap.isnan()
    score = float(ap[valid].mean()) if bool(valid.any()) else float("nan")
    said = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    return score, ap, time.perf_counter() - t0, kind is not None, said


def _standard_errors(margin: str) -> float:
    """``"se"`` -> 1, ``"2se"`` -> 2, ``"1.5se"`` -> 1.5; ``ValueError`` otherwise."""
    text = margin.strip().lower()
    if text.endswith("se"):
        head = text[:-2].strip() or "1"
        try:
            z = float(head)
        except ValueError:
            z = -1.0
        if z > 0 and math.isfinite(z):
            return z
    raise ValueError(
        f"margin must be a number >= 0, 'se' or a multiple such as '2se', got {margin!r}"
    )


def _margin(
    margin: float | str, ap: Tensor, base_ap: Tensor, groups: Tensor | None = None
) -> float:
    r"""How much a setting must beat the baseline by: ``margin`` itself, or for ``"se"``
    (``"2se"``, ...) that many standard errors of the mean per-query difference of AP (paired,
    over the queries with a positive).

    With ``groups`` (the class / identity / landmark of each query) the standard error is
    the cluster-robust one, :math:`\sqrt{\tfrac{G}{G-1} \sum_g (\sum_{q \in g} (d_q -
    \bar d))^2} / n` over the :math:`G` groups: the queries of one class move together, and
    the held-out data are other classes, so the noise that matters is that between classes
    (with one query per group it is the per-query standard error)."""
    if not isinstance(margin, str):
        return float(margin)
    z = _standard_errors(margin)
    valid = ~(ap.isnan() | base_ap.isnan())
    d = (ap - base_ap)[valid].double()
    n = d.numel()
    if n < 2:
        return math.inf
    if groups is None:
        return z * float(d.std(unbiased=True) / math.sqrt(n))
    _, g = torch.unique(groups.to(valid.device)[valid], return_inverse=True)
    num_groups = int(g.max()) + 1
    if num_groups < 2:
        return math.inf
    sums = torch.zeros(num_groups, dtype=d.dtype, device=d.device).index_add_(0, g, d - d.mean())
    var = num_groups / (num_groups - 1) * float((sums**2).sum())
    return z * math.sqrt(var) / n


def tune(
    reranker: Reranker,
    param_grid: Mapping[str, Sequence[Any]] | None = None,
    data: Any = None,
    *,
    labels: Any = None,
    param_distributions: Mapping[str, Sequence[Any]] | None = None,
    search: str = "grid",
    n_iter: int = 10,
    seed: int = 0,
    factor: int = 3,
    k: int | None = None,
    share: bool = True,
    scores: str = "auto",
    margin: float | str = 0.0,
    progress: bool | None = None,
) -> TuningResult:
    r"""Choose a re-ranker's settings on labelled validation data.

    Every setting of the grid (or a seeded random sample of it, or the survivors of
    successive halving) is fitted and scored; so are the re-ranker with the settings it was
    given and the plain first stage (:class:`~graphrerank.rerankers.KNN`). The best score
    wins; the first stage wins ties, then the earlier setting. So the result never scores
    below the first stage (nor below the given settings) on ``data``.

    The first-stage scores are computed once and shared (see the module's introduction); for
    an honest estimate of what the tuned settings give on new data, tune on one part of
    :meth:`Protocol.split` and score the other.

    Args:
        reranker: A re-ranker or :class:`~graphrerank.rerankers.Pipeline` (not modified).
        param_grid: ``{setting: [values]}``. A pipeline's stage setting is
            ``"<stage>.<setting>"``, the stage by position (``"0.k"``) or class name
            (``"AlphaQueryExpansion.alpha"``); a setting holding a re-ranker is reached the
            same way (``"rescorer.k1"``).
        data: The validation data: a :class:`Protocol` (:func:`class_protocol`,
            :func:`reid_protocol`, :func:`revisitop_protocol`), a
            :class:`~graphrerank.datasets.RetrievalDataset` with labels, a
            :class:`~graphrerank.datasets.ReIDFeatures`, or :math:`(N, D)` descriptors with
            ``labels`` (all-vs-all, leave-one-out).
        labels: :math:`(N,)` classes, with descriptors as ``data``.
        param_distributions: The same as ``param_grid`` (the name scikit-learn uses with
            ``search="random"``); give one of the two.
        search: ``"grid"`` (every combination), ``"random"`` (``n_iter`` combinations drawn
            with ``seed`` without replacement) or ``"halving"`` (successive halving: every
            combination on a ``1/factor^r`` share of the classes / identities, the best
            ``1/factor`` going on to the next round, the last on all the data).
        n_iter: Combinations drawn by ``search="random"``.
        seed: Seed of the random draw and of the halving rounds' class subsets.
        factor: Successive halving's reduction factor (at least 2).
        k: Length of every ranking (default :math:`\min(N, 1000)`; the full ranking for
            exact mAP on sets up to 1000 items).
        share: Fit the methods that accept it on the shared first-stage
            :class:`~graphrerank.graph.ScoreMatrix` (``False``: every setting searches the
            descriptors itself, for comparison).
        scores: The shared matrix: ``"dense"``, ``"sparse"`` (each row's top entries, as
            deep as the largest ``k`` of the grid or the ranking) or ``"auto"`` (dense for the
            methods that need every pair's score, k-reciprocal and GNN re-ranking, up to
            :math:`1.5 \cdot 10^8` entries; sparse otherwise). A method that needs a dense
            matrix where only a sparse one is shared searches the descriptors itself.
        margin: How much a setting must beat the first stage by to be chosen: a score
            difference (``0.0``: any gain), or ``"se"`` / ``"2se"``: one / two standard errors
            of the mean per-query gain in AP (paired over the queries), so that on small or
            noisy validation data the first stage stays unless the gain stands out of the
            noise. The given settings (the re-ranker's own) are held to the same rule: they
            are chosen when they beat the first stage by the margin, and another setting
            replaces them only when it beats them by the margin as well, its standard error
            then clustered by class, identity or landmark (the held-out data are other
            groups, so a gain must hold across groups, not only across queries).
        progress: Show a progress bar (default: when standard error is a terminal).

    Returns:
        A :class:`TuningResult`: ``best_params_``, ``best_score_``, ``baseline_score_``,
        ``results_`` (every run), ``table()``, ``plot(param)``, ``best_estimator()``.

    Raises:
        ValueError: an empty grid or list of values, a name that is not a setting, a value
            the setting refuses (each named), an unknown ``search``, or data without labels.
        TypeError: ``reranker`` is not a re-ranker, or the grid is not a dict of lists.

    Example:
        >>> from graphrerank.rerankers import AlphaQueryExpansion
        >>> g = torch.Generator().manual_seed(0)
        >>> centres = torch.randn(4, 8, generator=g)
        >>> labels = torch.arange(40) % 4
        >>> x = torch.nn.functional.normalize(centres[labels] + torch.randn(40, 8, generator=g), dim=1)
        >>> res = tune(AlphaQueryExpansion(backend="torch"), {"k": [2, 5, 9]}, x, labels=labels)
        >>> res.best_score_ >= res.baseline_score_
        True
        >>> [r["params"] for r in res.results_][:2]
        [None, {'k': 2}]
    """
    t_start = time.perf_counter()
    if not isinstance(reranker, Reranker):
        raise TypeError(f"reranker must be a Reranker instance, got {type(reranker).__name__}")
    if (param_grid is None) == (param_distributions is None):
        raise ValueError("give param_grid or param_distributions (one of the two)")
    check_in(search, "search", SEARCHES)
    check_in(scores, "scores", ("auto", "dense", "sparse"))
    if isinstance(margin, str):
        _standard_errors(margin)
    elif isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise ValueError(f"margin must be a number >= 0 or 'se', got {margin!r}")
    for name, value, low in (("n_iter", n_iter, 1), ("factor", factor, 2)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    what = "param_grid" if param_grid is not None else "param_distributions"
    grid = _check_grid(
        reranker, param_grid if param_grid is not None else param_distributions, what
    )
    protocol = _as_protocol(data, labels)
    combos, refused = _valid_combinations(
        reranker, grid, _candidates(grid, search, n_iter, seed), what
    )
    if not combos:
        raise ValueError(f"{what}: every combination is refused, e.g. {refused[0][1]}")
    given = {name: _target(reranker, name)[0].get_params()[_target(reranker, name)[1]]
             for name in grid}  # fmt: skip
    entries = [(c, False) for c in combos]
    if not any(c == given for c in combos):
        entries.insert(0, (given, True))
    else:
        entries = [(c, c == given) for c in combos]

    # successive halving: rounds over growing class subsets
    rounds: list[Protocol] = [protocol]
    if search == "halving":
        groups = protocol.groups()
        g = torch.Generator().manual_seed(seed)
        perm = groups[torch.randperm(groups.numel(), generator=g)]
        num_rounds = max(1, math.ceil(math.log(max(len(entries), 1), factor)))
        rounds = []
        for r in range(num_rounds):
            share_r = factor ** (r - num_rounds + 1)
            m = min(groups.numel(), max(2, math.ceil(share_r * groups.numel())))
            rounds.append(protocol if m == groups.numel() else protocol.subset(perm[:m]))
    n_full = protocol.num_database
    k_rank = min(n_full, 1000) if k is None else k
    if isinstance(k_rank, bool) or not isinstance(k_rank, int) or k_rank < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")

    results: list[dict[str, Any]] = []
    first_stage_s = 0.0
    alive = list(range(len(entries)))
    total = sum(max(1, math.ceil(len(entries) / factor**r)) for r in range(len(rounds))) + len(
        rounds
    )
    with Progress(total, f"tune {type(reranker).__name__}", show=progress, delay=1.0) as bar:
        for r, prot in enumerate(rounds):
            kr = min(k_rank, prot.num_database)
            models = [_with_params(reranker, entries[i][0]) for i in alive]
            shared = None
            if share:
                dense = any(_needs_dense(m) for m in models)
                shared = _SharedScores(prot, _depth(models, kr), scores, dense)
                first_stage_s += shared.seconds
            base_score, base_ap, secs, used, said = _run(KNN(), prot, shared, kr)
            query_groups = prot.query_groups()
            bar.update(1)
            row = {"params": None, "reranker": "KNN()", "score": base_score, "round": r,
                   "items": prot.num_database, "seconds": secs, "shared": used, "given": False,
                   "error": None, "margin": 0.0, "warnings": said}  # fmt: skip
            results.append(row)
            round_scores = []
            round_aps: dict[int, Tensor] = {}
            for i, model in zip(alive, models):
                label, error, m = repr(model), None, math.nan
                try:
                    s, ap, secs, used, said = _run(model, prot, shared, kr)
                    m = _margin(margin, ap, base_ap)
                    round_aps[i] = ap
                except Exception as err:  # one setting's failure is its row's
                    s, secs, used, said = float("nan"), float("nan"), False, []
                    error = f"{type(err).__name__}: {err}"
                bar.update(1)
                results.append({"params": dict(entries[i][0]), "reranker": label, "score": s,
                                "round": r, "items": prot.num_database, "seconds": secs,
                                "shared": used, "given": entries[i][1], "error": error,
                                "margin": m, "warnings": said, "_entry": i})  # fmt: skip
                round_scores.append((-math.inf if error else s, i))
            del shared
            if r < len(rounds) - 1:
                keep = max(1, math.ceil(len(alive) / factor))
                ranked = sorted(round_scores, key=lambda t: (-t[0], t[1]))
                given_i = [i for i in alive if entries[i][1]]  # the given settings stay in
                alive = sorted({i for _, i in ranked[:keep]} | set(given_i))
    last = [row for row in results if row["round"] == len(rounds) - 1]
    base = last[0]
    best = base
    # The given settings are the user's choice: they win over the baseline when they beat it
    # by the margin, and another setting replaces them only by beating them by the margin too,
    # its standard error clustered by class / identity / landmark: a setting tuned on some
    # classes must gain across them to displace the given one on classes it has not seen.
    given_last = next((row for row in last[1:] if row["given"] and row["error"] is None), None)
    if given_last is not None and given_last["score"] > base["score"] + given_last["margin"]:
        best = given_last
    given_ap = None if given_last is None else round_aps.get(given_last["_entry"])
    for row in last[1:]:  # beat the baseline by the margin, then the best so far
        if row is given_last or row["error"] is not None:
            continue
        if not (row["score"] > base["score"] + row["margin"] and row["score"] > best["score"]):
            continue
        if best is given_last and given_ap is not None:
            over_given = _margin(margin, round_aps[row["_entry"]], given_ap, query_groups)
            if not row["score"] > given_last["score"] + over_given:
                continue
        best = row
    for row in results:
        row.pop("_entry", None)
    given_rows = [row for row in results if row.get("given")]
    given_score = given_rows[-1]["score"] if given_rows else float("nan")
    return TuningResult(
        reranker=reranker.clone(),
        best_params_=None if best["params"] is None else dict(best["params"]),
        best_score_=best["score"],
        baseline_score_=base["score"],
        given_score_=given_score,
        results_=results,
        metric=protocol.metric,
        search=search,
        first_stage_s=first_stage_s,
        total_s=time.perf_counter() - t_start,
        grid=grid,
        skipped_=refused,
    )
