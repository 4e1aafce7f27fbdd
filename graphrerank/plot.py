r"""Pictures of rankings: ranked-list grids, mAP against a setting, precision-recall curves.

matplotlib is an optional dependency (``pip install 'graphrerank[examples]'``), imported only
when a figure is drawn, so ``import graphrerank.plot`` is cheap and :func:`parameter_sweep` and
:func:`precision_recall_curve` work without it. Every drawing function returns the
:class:`matplotlib.figure.Figure` it drew on (a new pyplot figure, or the figure of the ``ax``
passed in), so that scripts can ``fig.savefig(...)`` and notebooks and the documentation's
tutorials show it.

A ranking is what :meth:`~graphrerank.rerankers.Reranker.rerank` returns (a
:class:`~graphrerank.typing.RerankResult`, or its ``indices``: a :math:`(Q, K)` array of
database rows, best first, ``-1`` for padding). Several rankings to compare are passed as a
mapping ``{"name": ranking}``, e.g. ``{"kNN": before, "Diffusion": after}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ._checks import check_int, check_real
from ._imports import require
from ._progress import Progress
from .metrics._validate import as_array, check_labels, check_ranking
from .metrics.ap import _average_precision
from .metrics.classes import _class_hits, _require_positives
from .typing import TensorLike

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .rerankers import Reranker

__all__ = [
    "NEGATIVE_COLOR",
    "POSITIVE_COLOR",
    "QUERY_COLOR",
    "map_vs_parameter",
    "parameter_sweep",
    "precision_recall",
    "precision_recall_curve",
    "ranked_lists",
]

#: Frame colour of a retrieved item of the query's class.
POSITIVE_COLOR = "tab:green"
#: Frame colour of a retrieved item of another class.
NEGATIVE_COLOR = "tab:red"
#: Frame colour of the query.
QUERY_COLOR = "tab:blue"


def _pyplot():
    return require("matplotlib.pyplot", "graphrerank.plot", "examples")


#: Most recall levels of a precision-recall curve (far more than a figure can show).
_MAX_LEVELS = 2**16


def _indices(ranking: Any, name: str) -> Tensor:
    """The ``(Q, K)`` int64 indices of a ranking given as a result tuple or an array."""
    if isinstance(ranking, tuple) and hasattr(ranking, "indices"):  # RerankResult, KNNResult
        ranking = ranking.indices
    return check_ranking(ranking, name)


def _rankings(rankings: Any) -> dict[str, Tensor]:
    """``{name: (Q, K) indices}`` from a mapping or a single ranking (named ``"ranking"``)."""
    if isinstance(rankings, Mapping):
        if not rankings:
            raise ValueError("rankings is empty: give at least one ranking")
        out = {str(k): _indices(v, f"rankings[{k!r}]") for k, v in rankings.items()}
    elif rankings is None or isinstance(rankings, (str, bytes, int, float)):
        raise TypeError(
            "rankings must be a ranking ((Q, K) indices or a result with .indices) or a "
            f"mapping {{name: ranking}}, got {type(rankings).__name__}"
        )
    else:
        out = {"ranking": _indices(rankings, "rankings")}
    shapes = {tuple(v.shape[:1]) for v in out.values()}
    if len(shapes) > 1:
        raise ValueError(
            "every ranking must have one row per query; got rows "
            f"{ {k: v.shape[0] for k, v in out.items()} }"
        )
    return out


def _images(x: Any, name: str) -> np.ndarray:
    """Validated ``(N, H, W)`` or ``(N, H, W, C)`` images with finite values, as numpy."""
    t = as_array(x, name)
    if t.is_complex():
        raise TypeError(f"{name} must hold real pixel values, got dtype {t.dtype}")
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if t.dim() not in (3, 4) or (t.dim() == 4 and t.shape[-1] not in (3, 4)):
        raise ValueError(
            f"{name} must be (N, H, W) grey or (N, H, W, 3 or 4) colour images, got shape "
            f"{tuple(t.shape)}"
        )
    if 0 in t.shape:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite pixel values")
    return t.detach().cpu().numpy()


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------- computations
def precision_recall_curve(
    indices: TensorLike,
    database_labels: TensorLike,
    query_labels: TensorLike | None = None,
    *,
    leave_one_out: bool = False,
    num_levels: int = 11,
) -> tuple[Tensor, Tensor]:
    r"""Mean interpolated precision at evenly spaced recall levels (relevant = same label).

    For a query with :math:`P` positives, after :math:`j` retrieved items of which
    :math:`t_j` are positives, :math:`\mathrm{rec}_j = t_j / P` and
    :math:`\mathrm{prec}_j = t_j / j`. The interpolated precision at recall level :math:`r` is

    .. math::
        p(r) = \max_{j \,:\, \mathrm{rec}_j \ge r} \mathrm{prec}_j

    (0 when a truncated ranking never reaches recall :math:`r`), averaged over the queries with
    at least one positive, at :math:`r = 0, \frac{1}{L-1}, \dots, 1`. The query itself (with
    ``leave_one_out``) and ``-1`` padding are removed from the ranking first.

    Args:
        indices: :math:`(Q, K)` ranked database indices, best first; ``-1`` is padding.
        database_labels: :math:`(N,)` integer class of every database item.
        query_labels: :math:`(Q,)` integer class of every query, or ``None`` for all-vs-all.
        leave_one_out: Ignore database item :math:`i` for query :math:`i` (all-vs-all).
        num_levels: Number :math:`L \ge 2` of recall levels (11: the classic 11-point curve).

    Returns:
        ``(recall, precision)``, each :math:`(L,)` float64 on the device of ``indices``.

    Raises:
        TypeError: non-integer inputs.
        ValueError: wrong or mismatched shapes, indices out of range, ``num_levels`` outside
            ``[2, 65536]``, no query with a positive.

    Example:
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> indices = torch.tensor([[0, 2, 1, 3], [1, 0, 2, 3], [2, 3, 0, 1], [3, 0, 2, 1]])
        >>> recall, precision = precision_recall_curve(
        ...     indices, labels, leave_one_out=True, num_levels=3)
        >>> recall
        tensor([0.0000, 0.5000, 1.0000], dtype=torch.float64)
        >>> precision  # queries 0 and 3 find their positive second, 1 and 2 first
        tensor([0.7500, 0.7500, 0.7500], dtype=torch.float64)
    """
    num_levels = check_int(num_levels, "num_levels", low=2, high=_MAX_LEVELS)
    hits, num_pos = _class_hits(indices, database_labels, query_labels, leave_one_out)
    return _curve(hits, num_pos, query_labels, leave_one_out, num_levels)


def _curve(
    hits: Tensor, num_pos: Tensor, query_labels: Any, leave_one_out: bool, num_levels: int
) -> tuple[Tensor, Tensor]:
    """:func:`precision_recall_curve` of validated hits."""
    _require_positives(num_pos, query_labels, bool(leave_one_out))
    device = hits.device
    kept = hits >= 0
    tp = hits.clamp(min=0).long().cumsum(1)
    seen = kept.long().cumsum(1)
    prec = torch.where(kept, tp.double() / seen.clamp(min=1).double(), 0.0)
    # interpolated precision at position j: the best precision at j or later
    best_after = prec.flip(1).cummax(1).values.flip(1)
    best_after = torch.cat([best_after, best_after.new_zeros(best_after.shape[0], 1)], 1)
    # recall_j >= i / (L - 1)  <=>  t_j (L - 1) >= i P: exact integer comparisons
    steps = torch.arange(num_levels, device=device)
    lhs = (tp * (num_levels - 1)).contiguous()
    rhs = (steps[None, :] * num_pos[:, None]).contiguous()
    first = torch.searchsorted(lhs, rhs, side="left")
    curves = best_after.gather(1, first)
    valid = num_pos > 0
    recall = steps.double() / (num_levels - 1)
    return recall, curves[valid].mean(0)


def parameter_sweep(
    reranker: Reranker | type[Reranker],
    parameter: str,
    values: Sequence[Any],
    database: TensorLike,
    *,
    labels: TensorLike | None = None,
    queries: TensorLike | None = None,
    query_labels: TensorLike | None = None,
    k: int | None = None,
    score: Callable[[Tensor], float] | None = None,
    progress: bool | None = None,
) -> list[tuple[Any, float]]:
    r"""Run a re-ranker once per value of one setting and score each ranking.

    For each ``value``, a copy of ``reranker`` with ``parameter=value`` (its other settings
    unchanged) is fitted on ``database`` and ranks ``queries`` (``None``: all-vs-all). The
    default score is the class mAP
    (:func:`~graphrerank.metrics.class_map`, leave-one-out in the all-vs-all case); pass
    ``score`` for another metric, e.g.
    ``lambda idx: revisited_map(idx, gnd).medium.map``.

    Args:
        reranker: A re-ranker instance (not modified) or class.
        parameter: The name of one of its settings, e.g. ``"k"`` or ``"alpha"``.
        values: The values to try.
        database: :math:`(N, D)` database descriptors.
        labels: :math:`(N,)` classes of the database (needed by the default ``score``).
        queries: :math:`(Q, D)` query descriptors, or ``None`` for all-vs-all.
        query_labels: :math:`(Q,)` classes of the queries (with ``queries``).
        k: Length of each ranking; default :math:`N` (the full ranking, as mAP needs).
        score: ``score(indices) -> float`` for the :math:`(Q, k)` ranked indices.
        progress: Show a progress bar (default: when standard error is a terminal).

    Returns:
        ``[(value, score), ...]`` in the order of ``values``, ready for
        :func:`map_vs_parameter`.

    Raises:
        ValueError: ``parameter`` is not a setting of the re-ranker, ``values`` is empty, or
            neither ``labels`` nor ``score`` is given; and whatever the re-ranker raises for a
            bad value.

    Example:
        >>> from graphrerank.rerankers import KNN
        >>> x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> parameter_sweep(KNN(backend="torch"), "metric", ["ip", "l2"], x, labels=labels)
        [('ip', 1.0), ('l2', 0.75)]
    """
    from .rerankers import Reranker

    if isinstance(reranker, type) and issubclass(reranker, Reranker):
        cls, params = reranker, {}
    elif isinstance(reranker, Reranker):
        cls, params = type(reranker), reranker.get_params()
    else:
        raise TypeError(
            f"reranker must be a Reranker instance or class, got {type(reranker).__name__}"
        )
    valid = list(cls.default_params())
    if not isinstance(parameter, str) or parameter not in valid:
        raise ValueError(
            f"parameter={parameter!r}: {cls.__name__} has no setting {parameter!r}; valid: "
            f"{sorted(valid)}"
        )
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"values must be a sequence of values to try, got {values!r}")
    values = list(values)
    if not values:
        raise ValueError("values is empty: give at least one value to try")
    if score is None and labels is None:
        raise ValueError("pass labels (for the class mAP) or a score function")
    if score is not None and not callable(score):
        raise TypeError(f"score must be a function of the ranked indices, got {score!r}")
    if k is not None:
        k = check_int(k, "k", low=1)
    if queries is not None and query_labels is None and score is None:
        raise ValueError("queries needs query_labels for the class mAP (or pass a score function)")
    out = []
    with Progress(len(values), f"{cls.__name__}: {parameter}", show=progress) as bar:
        for value in values:
            model = cls(**{**params, parameter: value}).fit(database)
            n = model.n_database_
            if score is None and labels is not None:
                labels = check_labels(labels, "labels", length=n, what="the fitted database")
            result = model.rerank(queries, n if k is None else k)
            if score is None:
                hits, num_pos = _class_hits(
                    result.indices,
                    labels,
                    query_labels,
                    queries is None,
                    indices_name="the ranking",
                )
                _require_positives(num_pos, query_labels, queries is None)
                m = float(_average_precision(hits, num_pos, "step")[num_pos > 0].mean())
            else:
                m = score(result.indices)
                if isinstance(m, Tensor) and m.numel() == 1:
                    m = m.item()
                if isinstance(m, (bool, str, bytes)) or not isinstance(m, Real):
                    raise TypeError(
                        f"score must return a number, got {m!r} for {parameter}={value!r}"
                    )
                m = float(m)
                if not math.isfinite(m):
                    raise ValueError(f"score returned {m} for {parameter}={value!r}")
            out.append((value, m))
            bar.update(1)
    return out


# --------------------------------------------------------------------------- figures
def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.figure, ax


def precision_recall(
    rankings: Any,
    database_labels: TensorLike,
    query_labels: TensorLike | None = None,
    *,
    leave_one_out: bool = False,
    num_levels: int = 11,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Plot the mean interpolated precision-recall curve of one or more rankings.

    Each curve is :func:`precision_recall_curve`; the legend gives each ranking's class mAP
    (:func:`~graphrerank.metrics.class_map`).

    Args:
        rankings: A ranking (:math:`(Q, K)` indices or a result with ``.indices``), or
            ``{name: ranking}`` to compare several.
        database_labels: :math:`(N,)` integer classes.
        query_labels: :math:`(Q,)` integer classes, or ``None`` for all-vs-all.
        leave_one_out: Ignore database item :math:`i` for query :math:`i` (all-vs-all).
        num_levels: Number of recall levels.
        ax: Axes to draw on (default: a new figure).
        title: Axes title.

    Returns:
        The figure: one line per ranking, recall on x, precision on y, both in [0, 1].

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: see :func:`precision_recall_curve`; rankings with different query counts.
    """
    rankings = _rankings(rankings)
    num_levels = check_int(num_levels, "num_levels", low=2, high=_MAX_LEVELS)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None, got {title!r}")
    curves = {}
    for name, idx in rankings.items():
        label = "rankings" if len(rankings) == 1 and name == "ranking" else f"rankings[{name!r}]"
        hits, num_pos = _class_hits(
            idx, database_labels, query_labels, leave_one_out, indices_name=label
        )
        recall, precision = _curve(hits, num_pos, query_labels, leave_one_out, num_levels)
        m = float(_average_precision(hits, num_pos, "step")[num_pos > 0].mean())
        curves[name] = recall, precision, m
    fig, ax = _axes(ax, (5.0, 4.0))
    for name, (recall, precision, m) in curves.items():
        ax.plot(
            _numpy(recall),
            _numpy(precision),
            marker="o",
            markersize=3,
            label=f"{name} (mAP {100 * m:.2f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("interpolated precision")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def map_vs_parameter(
    results: Sequence[tuple[Any, float]] | Mapping[str, Sequence[tuple[Any, float]]],
    *,
    parameter: str = "parameter",
    baseline: float | None = None,
    logx: bool | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Plot mAP against the value of one setting (e.g. ``k`` or ``alpha``).

    Args:
        results: ``[(value, mAP), ...]`` (mAP as a fraction, as :func:`parameter_sweep` returns
            it), or ``{label: [(value, mAP), ...]}`` for several curves. Non-numeric values
            (e.g. ``"mutual"``, ``"union"``) are placed at evenly spaced positions.
        parameter: The setting's name, for the x label.
        baseline: An mAP (fraction) drawn as a dashed horizontal line, e.g. the kNN baseline.
        logx: Logarithmic x axis; default when positive numeric values span a factor of 20 or
            more.
        ax: Axes to draw on (default: a new figure).
        title: Axes title.

    Returns:
        The figure: one line per curve, mAP in percent on y; the best point of each curve is
        marked with its value.

    Raises:
        ImportError: matplotlib is not installed.
        TypeError: ``results`` is not a sequence of pairs; ``baseline``, ``logx``,
            ``parameter`` or ``title`` of the wrong type.
        ValueError: empty results, an mAP that is not a finite number, a non-finite
            ``baseline``.

    Example:
        >>> fig = map_vs_parameter([(5, 0.70), (10, 0.74), (20, 0.72)], parameter="k")
        >>> ax = fig.axes[0]
        >>> ax.get_xlabel(), ax.lines[0].get_ydata().tolist()
        ('k', [70.0, 74.0, 72.0])
        >>> ax.texts[0].get_text()  # the best point
        '74.00'
        >>> import matplotlib.pyplot as plt; plt.close(fig)
    """

    def pairs_of(c: Any, name: str) -> list[Any]:
        if isinstance(c, (str, bytes, Mapping)) or not isinstance(c, Iterable):
            raise TypeError(
                f"{name} must be a sequence of (value, mAP) pairs, got {type(c).__name__}"
            )
        return list(c)

    curves = (
        {k: pairs_of(v, f"results[{k!r}]") for k, v in results.items()}
        if isinstance(results, Mapping)
        else {"": pairs_of(results, "results")}
    )
    if not curves or any(len(c) == 0 for c in curves.values()):
        raise ValueError("results is empty: give (value, mAP) pairs")
    if baseline is not None:
        baseline = check_real(baseline, "baseline")
        if not math.isfinite(baseline):
            raise ValueError(f"baseline must be a finite mAP, got {baseline}")
    if logx is not None and not isinstance(logx, (bool, np.bool_)):
        raise TypeError(f"logx must be True, False or None, got {logx!r}")
    for name, text in (("parameter", parameter), ("title", title)):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"{name} must be a string, got {text!r}")
    clean: dict[str, tuple[list[Any], list[float]]] = {}
    for label, pairs in curves.items():
        xs, ys = [], []
        for pair in pairs:
            try:
                value, m = pair
                if isinstance(m, (bool, str, bytes)) or not isinstance(m, Real):
                    raise TypeError
                m = float(m)
            except (TypeError, ValueError):
                raise ValueError(
                    f"results must hold (value, mAP) pairs with a numeric mAP, got {pair!r}"
                ) from None
            if not math.isfinite(m):
                raise ValueError(f"results holds a non-finite mAP {m} (at value {value!r})")
            xs.append(value)
            ys.append(m)
        clean[str(label)] = (xs, ys)
    all_x = [x for xs, _ in clean.values() for x in xs]
    numeric = all(_is_number(x) for x in all_x)
    categories: list[Any] = []
    if not numeric:
        for x in all_x:
            if x not in categories:
                categories.append(x)
    if logx is None:
        positive = numeric and all(x > 0 for x in all_x)
        logx = positive and max(all_x) / min(all_x) >= 20
    fig, ax = _axes(ax, (5.0, 3.6))
    for c, (label, (xs, ys)) in enumerate(clean.items()):
        pos = [float(x) for x in xs] if numeric else [categories.index(x) for x in xs]
        pct = [100 * y for y in ys]
        (line,) = ax.plot(pos, pct, marker="o", label=label or None)
        best = int(np.nanargmax(pct)) if not all(math.isnan(p) for p in pct) else None
        if best is not None:
            ax.annotate(
                f"{pct[best]:.2f}",
                (pos[best], pct[best]),
                textcoords="offset points",
                xytext=(0, 6 + 10 * c),  # stacked, in case curves peak at one place
                ha="center",
                fontsize=8,
                color=line.get_color(),
            )
    if baseline is not None:
        ax.axhline(100 * float(baseline), color="k", lw=0.8, ls="--", label="baseline")
    if not numeric:
        ax.set_xticks(range(len(categories)), [str(c) for c in categories])
    else:
        if logx:
            ax.set_xscale("log")
        ticks = sorted({float(x) for x in all_x})
        if len(ticks) <= 12:  # label the values tried, nothing else
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.set_xticks([], minor=True)
    ax.margins(y=0.15 + 0.05 * (len(clean) - 1))
    ax.set_xlabel(parameter)
    ax.set_ylabel("mAP (%)")
    ax.grid(alpha=0.3)
    if any(clean) or baseline is not None:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def ranked_lists(
    images: TensorLike,
    rankings: Any,
    queries: int | Sequence[int],
    *,
    labels: TensorLike | None = None,
    query_labels: TensorLike | None = None,
    query_images: TensorLike | None = None,
    k: int = 8,
    exclude_self: bool | None = None,
    class_names: Sequence[str] | None = None,
    cmap: str = "gray_r",
    image_size: float = 0.9,
) -> Figure:
    """Show queries and their top-``k`` results, one row per query and ranking.

    The first image of a row is the query (blue frame); then come its top-``k`` database items
    in ranked order, framed green when they share the query's label and red otherwise (grey
    without labels). With several rankings (``{"before": ..., "after": ...}``) each query gets
    one row per ranking, named on the left, so the effect of a re-ranker is seen at a glance.

    In the all-vs-all case (no ``query_images`` and no ``query_labels``), query row ``i`` is
    database item ``i``: its image and label are the database's, and its own entry (ranked
    first by every method) is skipped.

    Args:
        images: :math:`(N, H, W)` grey or :math:`(N, H, W, C)` colour images of the database
            (e.g. ``load_digits_retrieval().images``).
        rankings: A ranking (:math:`(Q, K)` indices or a result with ``.indices``), or
            ``{name: ranking}``.
        queries: The query rows to show.
        labels: :math:`(N,)` database classes, to mark positives.
        query_labels: :math:`(Q,)` query classes (default: ``labels`` in the all-vs-all case).
        query_images: :math:`(Q, H, W[, C])` query images (default: ``images`` in the
            all-vs-all case).
        k: Results shown per row.
        exclude_self: Skip the query's own index in its ranking (default: all-vs-all).
        class_names: Names of the classes, shown under each image.
        cmap: Colour map of grey images.
        image_size: Size of one image in inches.

    Returns:
        The figure, with ``len(queries) * len(rankings)`` rows of ``k + 1`` axes.

    Raises:
        ImportError: matplotlib is not installed.
        TypeError: non-integer rankings, labels or query rows; images that are not real arrays.
        ValueError: bad shapes, non-finite pixels, indices or a query row out of range,
            ``k`` outside ``[1, max(K, 8)]``, a label without a name in ``class_names``.
    """
    plt = _pyplot()
    rankings = _rankings(rankings)
    imgs = _images(images, "images")
    n = imgs.shape[0]
    for name, idx in rankings.items():
        label = "rankings" if len(rankings) == 1 and name == "ranking" else f"rankings[{name!r}]"
        check_ranking(idx, label, num_items=n, what="images")
    width = max(v.shape[1] for v in rankings.values())
    k = check_int(k, "k", low=1, high=max(width, 8))  # beyond the ranking: blank cells
    image_size = check_real(image_size, "image_size", low=0, low_open=True)
    if not math.isfinite(image_size):
        raise ValueError(f"image_size must be finite, got {image_size}")
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be the name of a matplotlib colour map, got {cmap!r}")
    if exclude_self is not None and not isinstance(exclude_self, (bool, np.bool_)):
        raise TypeError(f"exclude_self must be True, False or None, got {exclude_self!r}")
    all_vs_all = query_images is None and query_labels is None
    if exclude_self is None:
        exclude_self = all_vs_all
    num_queries = next(iter(rankings.values())).shape[0]
    if query_images is None:
        q_imgs = imgs
    else:
        q_imgs = _images(query_images, "query_images")
    db_labels = None
    if labels is not None:
        db_labels = _numpy(check_labels(labels, "labels", length=n, what="images"))
    if query_labels is not None:
        q_labels = _numpy(
            check_labels(query_labels, "query_labels", length=num_queries, what="rankings (rows)")
        )
    else:
        q_labels = db_labels if all_vs_all else None
    if class_names is not None:
        if isinstance(class_names, np.ndarray) and class_names.ndim == 1:
            class_names = class_names.tolist()  # e.g. a dataset's array of names
        if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
            raise TypeError(f"class_names must be a sequence of names, got {class_names!r}")
        for what, lab in (("labels", db_labels), ("query_labels", q_labels)):
            if lab is not None and lab.size and (lab.min() < 0 or lab.max() >= len(class_names)):
                raise ValueError(
                    f"{what} holds class {int(lab.max() if lab.max() >= 0 else lab.min())}, "
                    f"which has no entry in class_names ({len(class_names)} names)"
                )
    if isinstance(queries, (int, np.integer)) and not isinstance(queries, bool):
        queries = [queries]
    elif isinstance(queries, Tensor) and queries.dim() == 0:
        queries = [queries.item()]
    elif isinstance(queries, (str, bytes)) or not isinstance(queries, Iterable):
        raise TypeError(f"queries must be a query row or a sequence of rows, got {queries!r}")
    queries = [
        check_int(q.item() if isinstance(q, Tensor) and q.dim() == 0 else q, "queries")
        for q in queries
    ]
    if not queries:
        raise ValueError("queries is empty: name at least one query row")
    for q in queries:
        if not 0 <= q < num_queries:
            raise ValueError(
                f"queries: query row {q} is out of range for rankings of {num_queries} rows"
            )
        if q >= q_imgs.shape[0]:
            raise ValueError(
                f"queries holds row {q}, which has no image: query_images has {q_imgs.shape[0]}"
            )

    def name_of(label: Any) -> str:
        if class_names is not None:
            return str(class_names[int(label)])
        return str(label)

    def frame(ax: Axes, color: str, width: float = 3.0) -> None:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(width)

    def show(ax: Axes, img: np.ndarray) -> None:
        ax.imshow(img, cmap=cmap if img.ndim == 2 else None, interpolation="nearest")

    rows = [(q, name) for q in queries for name in rankings]
    fig, grid = plt.subplots(
        len(rows),
        k + 1,
        figsize=(image_size * (k + 1) + 0.6, image_size * len(rows) + 0.3),
        squeeze=False,
        layout="constrained",
    )
    for r, (q, name) in enumerate(rows):
        q = int(q)
        qax = grid[r, 0]
        show(qax, q_imgs[q])
        frame(qax, QUERY_COLOR)
        qax.set_title("query" if r == 0 else "", fontsize=8)
        qax.set_ylabel(name if len(rankings) > 1 else f"query {q}", fontsize=8)
        if q_labels is not None:
            qax.set_xlabel(name_of(q_labels[q]), fontsize=7)
        order = _numpy(rankings[name][q])
        order = order[order >= 0]
        if exclude_self:
            order = order[order != q]
        for j in range(k):
            ax = grid[r, j + 1]
            if r == 0:
                ax.set_title(str(j + 1), fontsize=8)
            if j >= len(order):
                ax.set_axis_off()
                continue
            item = int(order[j])
            show(ax, imgs[item])
            if db_labels is None or q_labels is None:
                frame(ax, "0.6", 1.0)
            else:
                frame(ax, POSITIVE_COLOR if db_labels[item] == q_labels[q] else NEGATIVE_COLOR)
            if db_labels is not None:
                ax.set_xlabel(name_of(db_labels[item]), fontsize=7)
    return fig
