r"""Settings against the data: warnings where a setting cannot make sense for the database (or
its labels), and the ``"auto"`` neighbourhood rule.

Every re-ranker's :meth:`~graphrerank.rerankers.Reranker.fit` checks what it can see, the
database size (and, for :class:`~graphrerank.rerankers.RegionalDiffusion`, the number of
vectors per image), and warns once per setting with a :class:`SettingWarning`.
:func:`check_settings` also sees class labels (which never reach a re-ranker): a neighbourhood
at or above the typical class size links every item to items of other classes.

**Neighbourhood settings.** Each method's neighbourhood sizes, and whether they count the item
itself (``kd`` of the diffusions does, ``k1`` of k-reciprocal does not):

================================  ==================================================
re-ranker                         settings (``+self``: the item itself counted)
================================  ==================================================
AverageQueryExpansion, αQE        ``k``
DatabaseAugmentation              ``k``
KReciprocal                       ``k1``, ``k2`` +self
GNNRerank                         ``k1`` +self, ``k2`` +self
SuperGlobal                       ``K``
Diffusion, FastSpectralRanking    ``kd`` +self, ``kq``
OfflineDiffusion, RDiP            ``kd`` +self, ``kq``, (RDiP) ``km`` +self
================================  ==================================================

A setting reaching :math:`o` other items (its value, minus one where it counts the item) is
flagged when :math:`o \ge N - 1` (it holds the whole database; larger values are errors or
capped) and, given labels, when the setting is at or above :math:`c`, the median class size
(the neighbourhood is as large as the item's whole class, so it must reach other classes).

**k="auto".** The settings marked in :data:`AUTO_SETTINGS` also take ``"auto"``, resolved at
:meth:`~graphrerank.rerankers.Reranker.fit` from the database size by :func:`auto_neighbours`:
:math:`\min(k_0, \max(k_{\min}, \lfloor N / 20 \rfloor))`, the published default :math:`k_0`
unless the database is too small for it to stay within about one twentieth of the items (the
rule assumes a database of at least about 20 classes). With labels,
:func:`suggest_settings` gives the class-size rule instead,
:math:`\min(k_0, \max(k_{\min}, \lfloor c / 2 \rfloor))` (:math:`k_{\min}` = 2 where the
setting counts the item, else 1). ``get_params()`` keeps ``"auto"``; the values used are in ``auto_resolved_``.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch

from .._checks import as_tensor
from ..graph.scores import ScoreMatrix
from .base import Reranker, SettingWarning, _user_stacklevel

__all__ = [
    "AUTO_SETTINGS",
    "NEIGHBOURHOODS",
    "SettingProblem",
    "SettingWarning",
    "auto_neighbours",
    "check_settings",
    "suggest_settings",
]

#: Neighbourhood settings of each re-ranker class: name -> 1 if it counts the item itself.
NEIGHBOURHOODS: dict[str, dict[str, int]] = {
    "AverageQueryExpansion": {"k": 0},
    "AlphaQueryExpansion": {"k": 0},
    "DatabaseAugmentation": {"k": 0},
    "KReciprocal": {"k1": 0, "k2": 1},
    "GNNRerank": {"k1": 1, "k2": 1},
    "SuperGlobal": {"K": 0},
    "Diffusion": {"kd": 1, "kq": 0},
    "FastSpectralRanking": {"kd": 1, "kq": 0},
    "OfflineDiffusion": {"kd": 1, "kq": 0},
    "RDiP": {"km": 1, "kd": 1, "kq": 0},
}

#: Settings that take ``"auto"`` (resolved at fit by :func:`auto_neighbours` from their
#: published default), per re-ranker class. An order matters where one bounds another
#: (GNN's ``k2 <= k1``, RDiP's ``kd <= km``).
AUTO_SETTINGS: dict[str, tuple[str, ...]] = {
    "AverageQueryExpansion": ("k",),
    "AlphaQueryExpansion": ("k",),
    "DatabaseAugmentation": ("k",),
    "KReciprocal": ("k1", "k2"),
    "GNNRerank": ("k1", "k2"),
    "Diffusion": ("kd",),
    "FastSpectralRanking": ("kd",),
    "OfflineDiffusion": ("kd",),
}

#: :func:`auto_neighbours`: the database is assumed to hold at least this many classes.
AUTO_CLASSES = 20


class SettingProblem(NamedTuple):
    """A setting that cannot make sense for the data: the ``setting``, its ``value``, and the
    ``reason`` (with what to change)."""

    setting: str
    value: Any
    reason: str


def auto_neighbours(num_items: int, default: int, *, minimum: int = 2) -> int:
    r"""The ``"auto"`` neighbourhood size for a database of ``num_items``:
    :math:`\min(k_0, \max(k_{\min}, \lfloor N / 20 \rfloor))`, never above :math:`N - 1`.

    Example:
        >>> auto_neighbours(1000, 50), auto_neighbours(500, 50), auto_neighbours(30, 20)
        (50, 25, 2)
    """
    k = min(int(default), max(int(minimum), int(num_items) // AUTO_CLASSES))
    return max(1, min(k, int(num_items) - 1))


def _class_rule(class_size: float, default: int, self_counted: int) -> int:
    r""":math:`\min(k_0, \max(k_{\min}, \lfloor c / 2 \rfloor))`."""
    return min(int(default), max(1 + self_counted, int(class_size) // 2))


def _median_class_size(labels: Any, n: int) -> float:
    y = as_tensor(labels, "labels")
    if y.shape != (n,):
        raise ValueError(
            f"labels must hold one class per database item, shape ({n},), got {tuple(y.shape)}"
        )
    _, counts = torch.unique(y.cpu(), return_counts=True)
    return float(counts.double().median())


def _num_items(database: Any) -> int:
    if isinstance(database, int) and not isinstance(database, bool):
        return database
    if isinstance(database, ScoreMatrix):
        return int(database.shape[0])
    return int(as_tensor(database, "database").shape[0])


def _problems(
    reranker: Reranker, n: int, class_size: float | None, image_ids: Any = None
) -> list[SettingProblem]:
    name = type(reranker).__name__
    out: list[SettingProblem] = []
    if name == "RegionalDiffusion":
        out.extend(_regional(reranker, n, image_ids))
        return out
    for setting, self_counted in NEIGHBOURHOODS.get(name, {}).items():
        value = getattr(reranker, setting, None)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        others = value - self_counted
        counted = " (the item itself counted)" if self_counted else ""
        if n > 1 and others >= n - 1:
            out.append(
                SettingProblem(
                    setting,
                    value,
                    f"{name}({setting}={value}){counted} reaches every item of a database of "
                    f"{n}: the neighbourhood no longer selects anything; use a smaller "
                    f"{setting} (e.g. {setting}='auto', here {_auto_for(reranker, setting, n)})",
                )
            )
        elif class_size is not None and value >= class_size and class_size < n:
            c = round(class_size)
            good = _class_rule(class_size, type(reranker).default_params()[setting], self_counted)
            out.append(
                SettingProblem(
                    setting,
                    value,
                    f"{name}({setting}={value}){counted} is at or above the median class size "
                    f"({c} items), so every item's neighbourhood reaches other classes; use a "
                    f"smaller {setting} (the class-size rule gives {good}: "
                    "suggest_settings(reranker, database, labels))",
                )
            )
    return out


def _auto_for(reranker: Reranker, setting: str, n: int) -> int:
    default = type(reranker).default_params().get(setting)
    return auto_neighbours(n, default if isinstance(default, int) else 50)


def _regional(reranker: Reranker, n: int, image_ids: Any) -> list[SettingProblem]:
    """RegionalDiffusion's regional defaults on one vector per image."""
    if image_ids is not None:
        ids = as_tensor(image_ids, "image_ids")
        one_each = ids.numel() == int(torch.unique(ids).numel())
    else:
        one_each = True
    if not one_each:
        return []
    from .diffusion import Diffusion

    base = Diffusion.default_params()
    out = []
    for setting in ("kd", "kq"):
        value = getattr(reranker, setting)
        if isinstance(value, int) and value > base[setting]:
            out.append(
                SettingProblem(
                    setting,
                    value,
                    f"RegionalDiffusion({setting}={value}) is fitted on one vector per image: "
                    f"its regional defaults (kd=kq=200) are meant for many region vectors per "
                    f"image and give a near-random ranking on global descriptors; use "
                    f"Diffusion() (kd={base['kd']}, kq={base['kq']}) or pass image_ids with "
                    "several vectors per image",
                )
            )
    return out


def check_settings(
    reranker: Reranker,
    database: Any,
    labels: Any = None,
    *,
    image_ids: Any = None,
    warn: bool = True,
) -> list[SettingProblem]:
    r"""The settings of ``reranker`` (and of its stages or re-scorers) that cannot make sense
    for ``database`` and its class ``labels``, each warned as a :class:`SettingWarning`.

    What :meth:`~graphrerank.rerankers.Reranker.fit` sees is checked there too (without
    labels); call this where labels are at hand (before tuning, in a command-line run).

    Args:
        reranker: The re-ranker (fitted or not; ``"auto"`` settings are skipped).
        database: The database descriptors :math:`(N, D)`, a
            :class:`~graphrerank.graph.ScoreMatrix`, or the number of items :math:`N`.
        labels: :math:`(N,)` class of each database item, or ``None``.
        image_ids: For :class:`~graphrerank.rerankers.RegionalDiffusion`, the image of each
            vector (``None``: one vector per image).
        warn: Also emit each problem as a :class:`SettingWarning`.

    Returns:
        The problems, as :class:`SettingProblem` ``(setting, value, reason)``.

    Raises:
        ValueError: ``labels`` do not hold one class per database item.

    Example:
        >>> from graphrerank.rerankers import Diffusion
        >>> labels = torch.arange(60) // 6  # ten classes of six items
        >>> [p.setting for p in check_settings(Diffusion(), 60, labels, warn=False)]
        ['kd', 'kq']
        >>> check_settings(Diffusion(kd=5, kq=5), 60, labels, warn=False)
        []
    """
    n = _num_items(database)
    c = None if labels is None else _median_class_size(labels, n)
    out = []
    for r in _nested(reranker):
        out.extend(_problems(r, n, c, image_ids if r is reranker else None))
    if warn:
        for p in out:
            warnings.warn(p.reason, SettingWarning, stacklevel=_user_stacklevel())
    return out


def suggest_settings(reranker: Reranker, database: Any, labels: Any = None) -> dict[str, int]:
    r"""Values for the neighbourhood settings of ``reranker`` that take ``"auto"``
    (:data:`AUTO_SETTINGS`): the size rule :func:`auto_neighbours` without labels, with labels
    :math:`\min(k_0, \max(k_{\min}, \lfloor c / 2 \rfloor))`, :math:`c` the median class
    size and :math:`k_{\min}` 2 where the setting counts the item itself, else 1.

    Example:
        >>> from graphrerank.rerankers import KReciprocal
        >>> suggest_settings(KReciprocal(), 500, torch.arange(500) // 8)
        {'k1': 4, 'k2': 4}
    """
    n = _num_items(database)
    name = type(reranker).__name__
    defaults = type(reranker).default_params()
    out: dict[str, int] = {}
    c = None if labels is None else _median_class_size(labels, n)
    for setting in AUTO_SETTINGS.get(name, ()):
        k0 = defaults[setting]
        if c is None:
            out[setting] = auto_neighbours(n, k0)
        else:
            out[setting] = _class_rule(c, k0, NEIGHBOURHOODS[name][setting])
    if "k1" in out and "k2" in out and name == "GNNRerank":
        out["k2"] = min(out["k2"], out["k1"])
    return out


def _nested(reranker: Reranker) -> list[Reranker]:
    """The re-ranker and the re-rankers among its settings (stages, re-scorers)."""
    out = [reranker]
    for v in reranker.get_params().values():
        items = v if isinstance(v, (list, tuple)) else [v]
        for item in items:
            if isinstance(item, tuple):
                item = item[0] if item else None
            if isinstance(item, Reranker):
                out.extend(_nested(item))
    return out


def warn_fit(reranker: Reranker, n: int, image_ids: Any = None) -> None:
    """The warnings of :meth:`~graphrerank.rerankers.Reranker.fit`: what the database alone
    shows (once per setting and fit)."""
    for p in _problems(reranker, n, None, image_ids):
        warnings.warn(p.reason, SettingWarning, stacklevel=_user_stacklevel())
