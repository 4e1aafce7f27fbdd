"""The re-ranker contract shared by every method."""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import os
import sys
import warnings
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Self

import torch
from torch import Tensor

from .._checks import check_features, check_k, check_same_device
from .._params import Constraint, check_params
from .._progress import Progress, progress_options
from ..graph.scores import ScoreMatrix
from ..typing import RerankResult, TensorLike

__all__ = ["NotFittedError", "Preset", "Reranker", "SettingWarning"]

#: The values of ``rerank(None, k, leave_one_out=...)``.
LEAVE_ONE_OUT = (False, "strict")


class NotFittedError(RuntimeError):
    """A re-ranker was used before :meth:`Reranker.fit`."""


class SettingWarning(UserWarning):
    """A setting cannot make sense for the data it is used on (a neighbourhood at or above the
    database size or the typical class size, regional defaults on one vector per image).

    The message names the setting, the value, the reason and what to change. Raised at most
    once per :meth:`Reranker.fit` for each setting (see
    :func:`~graphrerank.rerankers.check_settings`, which also sees labels). Silence it with
    ``warnings.simplefilter("ignore", SettingWarning)``.
    """


class Preset(NamedTuple):
    """A published configuration of a re-ranker: its ``settings`` and their ``source`` (paper,
    table or reference code)."""

    settings: dict[str, Any]
    source: str


class Reranker(abc.ABC):
    r"""Base class of all re-rankers: ``fit(database)`` once, then ``rerank(queries, k)``.

    The contract (checked for every re-ranker by one shared test):

    * settings are keyword-only constructor arguments, stored as given, and checked by
      :meth:`validate_params` at :meth:`fit`; :meth:`get_params` / :meth:`set_params` read
      and change them, :meth:`default_params` lists them with their defaults and
      :meth:`clone` makes an unfitted copy;
    * :meth:`fit` takes the database :math:`(N, D)` (numpy or torch), stores fitted state in
      attributes ending with ``_`` and returns ``self``; fitting again discards the old state;
    * :meth:`rerank` returns a :class:`~graphrerank.typing.RerankResult` ``(scores, indices)``
      of shape :math:`(Q, k)`, best first, on the database's device;
    * ``rerank(None)`` is the all-vs-all case: every database item queries the database (its
      own entry stays in the ranking; drop it when scoring, e.g. with
      ``class_map(..., leave_one_out=True)``). A transductive method then builds one graph
      over the :math:`N` items, not :math:`2N`;
    * ``rerank(None, k, leave_one_out="strict")`` is strict leave-one-out: item :math:`i`
      queries the database *without* item :math:`i` (as if fitted on the other
      :math:`N - 1` items), for every :math:`i`; the ranking never lists the item itself and
      ``k <= N - 1``. :attr:`strict_leave_one_out` says how each method computes it
      (``"own_entry"``, ``"masked"`` or ``"refit"``; see ``docs/conventions.rst``).

    Class attributes declare what a method needs:

    * ``transductive``: it needs all queries at once (its result for one query depends on the
      other queries); an inductive method gives each query the same result whatever batch it
      comes in.
    * ``needs_query_similarity``: it compares queries with queries, so queries and database
      must come from the same encoder; such methods refuse ``rerank(..., asymmetric=True)``.
    * ``accepts_initial``: it re-ranks a given candidate list (``rerank(..., initial=...)``),
      e.g. the shortlist of an earlier stage, instead of searching the database itself.
    * ``candidate_scores``: what :meth:`score_candidates` returns, ``"similarity"`` (higher is
      more similar, about in :math:`[-1, 1]`) or ``"negative_distance"`` (minus a distance in
      :math:`[0, 1]`, as k-reciprocal's :math:`-d^*`); R-DiP turns it into edge weights
      accordingly.
    * ``accepts_scores``: it can be fitted on a precomputed database x database
      :class:`~graphrerank.graph.ScoreMatrix` instead of descriptors, and then re-ranks the
      queries' :class:`~graphrerank.graph.ScoreMatrix` against the database.

    A method whose declaration depends on a setting overrides the attribute with a property;
    read these attributes from an instance.

    **Declaring settings.** A subclass declares each setting once, as an annotated class
    attribute with :func:`~graphrerank._params.setting` (default and constraint together)::

        class MyReranker(Reranker):
            kd: int = setting(50, Int(1))
            backend: Backend = setting("auto", OneOf(BACKENDS))

    Every subclass is made a :mod:`dataclasses` dataclass (keyword-only fields, no generated
    ``__repr__`` or ``__eq__``), so the constructor is generated from the declarations and a
    subclass inherits its parents' settings (redeclaring one changes its default). A subclass
    that writes its own ``__init__`` keeps it; constraints may then be given in
    ``_parameter_constraints``.
    """

    transductive: ClassVar[bool] = False
    needs_query_similarity: ClassVar[bool] = False
    accepts_initial: ClassVar[bool] = False
    candidate_scores: ClassVar[str] = "similarity"
    accepts_scores: ClassVar[bool] = False

    #: How ``rerank(None, k, leave_one_out="strict")`` is computed, each exactly equal to an
    #: explicit loop of :math:`N` fits (up to float ties): ``"own_entry"`` (the all-vs-all
    #: ranking with each item's own entry removed: exact where the all-vs-all computation for
    #: item :math:`i` is that of query :math:`i` against the other :math:`N - 1` items, as for
    #: plain kNN and the transductive methods whose one graph holds queries and database
    #: together), ``"masked"`` (a method-specific exact computation: the query's own entry
    #: masked in its first-stage lists and its removal's effect on the database recomputed
    #: where it has one) or ``"refit"`` (the explicit loop of :math:`N` fits, one per item on
    #: the other items: for methods whose offline state, e.g. a normalised database graph,
    #: changes everywhere when an item is removed).
    strict_leave_one_out: ClassVar[str] = "refit"

    # ------------------------------------------------------------------ parameters
    #: Settings that may also be passed by position (a :class:`Pipeline`'s ``stages``); every
    #: other setting is keyword-only.
    _positional_settings: ClassVar[tuple[str, ...]] = ()

    #: What each setting may be (:mod:`graphrerank._params`), declared once per class; a
    #: subclass's entries extend and override its parents'. ``None``: anything goes.
    _parameter_constraints: ClassVar[dict[str, Constraint | None]] = {}

    #: Old spellings of renamed settings (old -> new), accepted with a ``DeprecationWarning``
    #: by the constructor and :meth:`set_params` for one release.
    _renamed_params: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # settings declared as annotated fields become the constructor (an __init__ written in
        # the class itself is kept)
        dataclasses.dataclass(cls, kw_only=True, repr=False, eq=False)
        if cls._all_renamed():
            init = cls.__dict__["__init__"]

            @functools.wraps(init)
            def __init__(self, *args: Any, **kw: Any) -> None:
                init(self, *args, **type(self)._renamed(kw))

            cls.__init__ = __init__

    @classmethod
    def _all_renamed(cls) -> dict[str, str]:
        out: dict[str, str] = {}
        for c in reversed(cls.__mro__):
            out.update(c.__dict__.get("_renamed_params", {}))
        return out

    @classmethod
    def _renamed(cls, params: dict[str, Any]) -> dict[str, Any]:
        renamed = cls._all_renamed()
        if not renamed or not any(name in params for name in renamed):
            return params
        params = dict(params)
        for old, new in renamed.items():
            if old not in params:
                continue
            if new in params:
                raise TypeError(
                    f"{cls.__name__} got both {new}= and its deprecated spelling {old}=; "
                    f"pass {new}= only"
                )
            warnings.warn(
                f"{cls.__name__}({old}=...) is deprecated and will be removed in the next "
                f"release; use {new}=...",
                DeprecationWarning,
                stacklevel=_user_stacklevel(),
            )
            params[new] = params.pop(old)
        return params

    @classmethod
    def _constraints(cls) -> dict[str, Constraint | None]:
        out: dict[str, Constraint | None] = {}
        for c in reversed(cls.__mro__):
            out.update(c.__dict__.get("_parameter_constraints", {}))
        for f in dataclasses.fields(cls):
            if "constraint" in f.metadata:
                out[f.name] = f.metadata["constraint"]
        return out

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return [p.name for p in list(sig.parameters.values())[1:] if p.kind in kinds]

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """The settings of this re-ranker and their defaults, in the constructor's order."""
        sig = inspect.signature(cls.__init__)
        return {n: sig.parameters[n].default for n in cls._param_names()}

    def get_params(self) -> dict[str, Any]:
        """The settings, as passed to the constructor (``"auto"`` stays ``"auto"`` after
        :meth:`fit` resolved it; the values used are in ``auto_resolved_``)."""
        given = self.__dict__.get("_auto_given", ())
        return {
            name: "auto" if name in given else getattr(self, name) for name in self._param_names()
        }

    def set_params(self, **params: Any) -> Self:
        """Change settings; takes effect at the next :meth:`fit`."""
        params = self._renamed(params)
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"{type(self).__name__} has no setting {name!r}; valid: {sorted(valid)}"
                )
            setattr(self, name, value)
            self.__dict__.get("_auto_given", set()).discard(name)
        return self

    def clone(self) -> Self:
        """An unfitted copy with the same settings; re-rankers among the settings (a
        pipeline's stages, R-DiP's re-scorer) are cloned too, other values are shared."""
        return type(self)(**{n: _clone_value(v) for n, v in self.get_params().items()})

    def __or__(self, other: Any) -> Any:
        """``first | second``: the :class:`~graphrerank.rerankers.Pipeline` of the two, e.g.
        ``Whitening() | DatabaseAugmentation() | AlphaQueryExpansion()``; a pipeline on either
        side (without ``depth``) is flattened into its stages. The re-rankers are not copied."""
        if not isinstance(other, Reranker):
            return NotImplemented
        from .pipeline import Pipeline

        return Pipeline._chain(self, other)

    def validate_params(self) -> None:
        """Check every setting against its declaration; :meth:`fit` calls it.

        Raises:
            TypeError, ValueError: a setting has the wrong type or is out of range (the
                message names the setting and the value).
        """
        auto = self._auto_names()
        params = {n: v for n, v in self.get_params().items() if not (n in auto and _is_auto(v))}
        check_params(params, self._constraints())
        self._validate_params()

    @classmethod
    def _auto_names(cls) -> tuple[str, ...]:
        """The settings that take ``"auto"`` (:data:`~graphrerank.rerankers.checks.AUTO_SETTINGS`)."""
        from .checks import AUTO_SETTINGS

        return AUTO_SETTINGS.get(cls.__name__, ())

    def _resolve_auto(self, num_items: int) -> None:
        """Replace ``"auto"`` settings by their values for a database of ``num_items``
        (:func:`~graphrerank.rerankers.checks.auto_neighbours`); ``get_params`` still reports
        ``"auto"``."""
        given = self.__dict__.setdefault("_auto_given", set())
        for name in list(given):
            setattr(self, name, "auto")
        given.clear()
        names = [n for n in self._auto_names() if _is_auto(getattr(self, n))]
        if not names:
            return
        from .checks import auto_neighbours

        defaults = self.default_params()
        resolved = {}
        for name in names:
            resolved[name] = auto_neighbours(num_items, defaults[name])
            setattr(self, name, resolved[name])
            given.add(name)
        self._auto_resolved = resolved

    def _restore_auto(self) -> None:
        """After :meth:`load`: set the ``"auto"`` settings to the values the fit used
        (nested re-rankers too)."""
        resolved = self.__dict__.get("auto_resolved_")
        if resolved:
            given = self.__dict__.setdefault("_auto_given", set())
            for name, value in resolved.items():
                setattr(self, name, int(value))
                given.add(name)
        for v in list(vars(self).values()):
            for item in v if isinstance(v, (list, tuple)) else [v]:
                if isinstance(item, tuple) and item:
                    item = item[0]
                if isinstance(item, Reranker) and item is not self:
                    item._restore_auto()

    # ------------------------------------------------------------------ presets
    @classmethod
    def presets(cls) -> dict[str, Preset]:
        """The published configurations of this re-ranker: name -> :class:`Preset`
        ``(settings, source)`` (only settings a paper, its reference code or its authors
        published; see :mod:`graphrerank.rerankers.presets`).

        Example:
            >>> from graphrerank.rerankers import KReciprocal
            >>> sorted(KReciprocal.presets())
            ['cuhk03', 'market']
            >>> KReciprocal.presets()["cuhk03"].settings
            {'k1': 7, 'k2': 3, 'lambda_value': 0.3}
        """
        from .presets import PRESETS

        return dict(PRESETS.get(cls.__name__, {}))

    @classmethod
    def preset(cls, name: str, /, **settings: Any) -> Self:
        """A new re-ranker with the published settings ``name`` (see :meth:`presets`);
        ``settings`` override some of them.

        Example:
            >>> from graphrerank.rerankers import GNNRerank
            >>> GNNRerank.preset("veri776")
            GNNRerank(k1=60, k2=10)

        Raises:
            ValueError: this re-ranker has no preset ``name`` (the message lists those it
                has).
        """
        presets = cls.presets()
        if name not in presets:
            have = ", ".join(repr(p) for p in sorted(presets)) or "none"
            raise ValueError(f"{cls.__name__} has no preset {name!r}; its presets: {have}")
        params = {n: _clone_value(v) for n, v in presets[name].settings.items()}
        params.update(settings)
        return cls(**params)

    def __repr__(self) -> str:
        defaults = self.default_params()
        changed = []
        for name, value in self.get_params().items():
            default = defaults[name]
            if value is not default and value != default:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def _validate_params(self) -> None:  # noqa: B027 - optional hook
        """Checks beyond the declared constraints (subclasses raise ``ValueError`` naming the
        setting)."""

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        """Settings that suit a tiny database (about 40 items) in the shared contract tests."""
        return {}

    # ------------------------------------------------------------------ fitted state
    def _fitted_attributes(self) -> list[str]:
        return [a for a in vars(self) if a.endswith("_") and not a.startswith("__")]

    def _check_fitted(self) -> None:
        if not hasattr(self, "database_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(database) first"
            )

    @property
    def n_database_(self) -> int:
        """Number of database items (after :meth:`fit`)."""
        self._check_fitted()
        return int(self.database_.shape[0])

    @property
    def device_(self) -> torch.device:
        """Device of the fitted database; results are returned there."""
        self._check_fitted()
        return self.database_.device

    # ------------------------------------------------------------------ public API
    def fit(self, database: TensorLike, /) -> Self:
        """Fit on the database descriptors :math:`(N, D)`, or (where ``accepts_scores``) on a
        database x database :class:`~graphrerank.graph.ScoreMatrix`, and return ``self``."""
        self.validate_params()
        if isinstance(database, ScoreMatrix):
            if not self.accepts_scores:
                raise TypeError(
                    f"{type(self).__name__} needs database descriptors, not a ScoreMatrix (it "
                    "computes with the vectors themselves); methods that take a score matrix: "
                    "KNN, KReciprocal, GNNRerank, Diffusion, FastSpectralRanking, "
                    "OfflineDiffusion, RDiP"
                )
            db = database.check_database("database")
        else:
            db = check_features(database, "database", detach=True)
        for attr in self._fitted_attributes():
            delattr(self, attr)
        self._prepare_fit(int(db.shape[0]))
        self.database_ = db
        self._fit(db)
        self._after_fit(int(db.shape[0]))
        return self

    def _prepare_fit(self, num_items: int) -> None:
        """Resolve ``"auto"`` settings for the database size and validate the settings (every
        ``fit`` calls it after discarding the old state)."""
        self._resolve_auto(num_items)
        self.validate_params()

    def _after_fit(self, num_items: int, image_ids: Any = None) -> None:
        """Record the resolved ``"auto"`` settings and warn (:class:`SettingWarning`, once per
        setting) about settings the database shows cannot make sense."""
        resolved = self.__dict__.pop("_auto_resolved", None)
        if resolved and self.__dict__.get("_auto_given"):
            self.auto_resolved_ = resolved
        from .checks import warn_fit

        warn_fit(self, num_items, image_ids)

    def rerank(
        self,
        queries: TensorLike | None = None,
        k: int = 100,
        *,
        asymmetric: bool = False,
        initial: RerankResult | tuple[Tensor, Tensor] | None = None,
        leave_one_out: bool | str = False,
    ) -> RerankResult:
        """Rank the database for each query.

        Args:
            queries: Query descriptors :math:`(Q, D)` on the database's device, or ``None`` for
                all-vs-all (every database item is a query, :math:`Q = N`).
            k: Length of each ranked list, ``1 <= k <= N`` (``<= N - 1`` with
                ``leave_one_out="strict"``).
            asymmetric: Declare that queries come from another encoder than the database
                (e.g. a small query network distilled from the database network). Methods that
                compare queries with each other refuse it.
            initial: A first-stage ranking to re-rank (methods with ``accepts_initial``).
            leave_one_out: ``False`` (default; with ``queries=None`` each item's own entry
                stays in the database and in its ranking) or ``"strict"`` (``queries=None``
                only: item :math:`i` is ranked against the database without item :math:`i`,
                exactly as a fit on the other :math:`N - 1` items would rank it; its own entry
                is never listed). See :attr:`strict_leave_one_out`.

        Returns:
            ``(scores, indices)``, each :math:`(Q, k)`, best first.

        Raises:
            ValueError: bad ``k``, ``asymmetric=True`` for a method that compares queries
                with queries, or ``leave_one_out="strict"`` with explicit queries, an
                ``initial`` ranking or a database of one item.
        """
        self._check_fitted()
        if self._strict(leave_one_out, queries, asymmetric, initial):
            k = check_k(k, self.n_database_ - 1, what="the database without the query")
            return self._rerank_strict(k)
        if asymmetric and self.needs_query_similarity:
            raise ValueError(
                f"{type(self).__name__} compares queries with queries and with the database in "
                "one space, so it needs queries and database from the same encoder; it cannot "
                "be used with asymmetric=True"
            )
        if queries is None:
            if asymmetric:
                raise ValueError("asymmetric=True needs explicit queries, got queries=None")
            q = None
        elif isinstance(self.database_, ScoreMatrix) or isinstance(queries, ScoreMatrix):
            q = self._check_query_scores(queries)
        else:
            q = check_features(queries, "queries", dim=self.database_.shape[1], detach=True)
            check_same_device(database=self.database_, queries=q)
            if q.dtype != self.database_.dtype:
                q = q.to(self.database_.dtype)
        k = check_k(k, self.n_database_)
        if initial is None:
            return self._rerank(q, k)
        if not self.accepts_initial:
            raise ValueError(
                f"{type(self).__name__} ranks the whole database itself and takes no initial "
                "ranking; use it as the first stage"
            )
        nq = self.n_database_ if q is None else q.shape[0]
        return self._rerank(q, k, initial=self._check_initial(initial, nq))

    # ------------------------------------------------------------------ strict leave-one-out
    def _strict(self, leave_one_out: Any, queries: Any, asymmetric: bool, initial: Any) -> bool:
        """Check ``leave_one_out`` and say whether it asks for the strict protocol."""
        if leave_one_out is None or leave_one_out is False:
            return False
        if not isinstance(leave_one_out, str) or leave_one_out != "strict":
            raise ValueError(
                f"leave_one_out must be False (all-vs-all, each item's own entry kept) or "
                f"'strict' (each item removed from the database it queries), got "
                f"{leave_one_out!r}"
            )
        if queries is not None:
            raise ValueError(
                "leave_one_out='strict' is the all-vs-all protocol (every database item queries "
                "the other items): pass queries=None"
            )
        if asymmetric:
            raise ValueError("asymmetric=True needs explicit queries, got queries=None")
        if initial is not None:
            raise ValueError(
                "leave_one_out='strict' takes no initial ranking: each item's first-stage "
                "list against the other items is computed by the method"
            )
        if self.n_database_ < 2:
            raise ValueError(
                "leave_one_out='strict' needs a database of at least 2 items (each item is "
                "ranked against the others)"
            )
        return True

    def _rerank_strict(self, k: int) -> RerankResult:
        """Strict leave-one-out for a valid ``k <= N - 1`` (see :attr:`strict_leave_one_out`;
        a subclass computing it ``"masked"`` overrides this)."""
        if self.strict_leave_one_out == "own_entry":
            return self._strict_own_entry(k)
        return self._strict_refit(k)

    def _strict_own_entry(self, k: int) -> RerankResult:
        """The all-vs-all ranking of length ``k + 1`` with each item's own entry removed."""
        return drop_own_entry(self._rerank(None, k + 1), k)

    def _strict_split(self, i: int) -> tuple[tuple, dict, Any]:
        """The arguments of ``fit`` on the database without item ``i`` (positional, keyword)
        and the query of item ``i``, for :meth:`_strict_refit`."""
        db = self.database_
        n = db.shape[0]
        keep = torch.cat(
            [torch.arange(i, device=db.device), torch.arange(i + 1, n, device=db.device)]
        )
        if isinstance(db, ScoreMatrix):
            if db.is_sparse:
                raise ValueError(
                    f"leave_one_out='strict' refits {type(self).__name__} on the database without "
                    "each item, which needs a dense database ScoreMatrix, not a sparse top-k"
                )
            m = db.matrix
            sub = ScoreMatrix(m[keep][:, keep], kind=db.kind)
            query = ScoreMatrix(
                m[i : i + 1, keep], kind=db.kind, query_scores=m[i : i + 1, i : i + 1]
            )
            return (sub,), {}, query
        return (db[keep],), {}, db[i : i + 1]

    def _strict_refit(self, k: int) -> RerankResult:
        """Strict leave-one-out by its definition: for every item, a fresh copy fitted on the
        other :math:`N - 1` items ranks it (:math:`N` fits)."""
        if _fit_needs_more(type(self)) and "_strict_split" not in _defined_below(type(self)):
            raise ValueError(
                f"leave_one_out='strict' is not available for {type(self).__name__}: its fit "
                "takes more than the database"
            )
        n = self.n_database_
        scores, indices = [], []
        with self._progress_bar(n, f"{type(self).__name__} (strict leave-one-out)") as bar:
            for i in range(n):
                args, kwargs, query = self._strict_split(i)
                r = self.clone().fit(*args, **kwargs).rerank(query, k)
                idx = r.indices
                indices.append(torch.where((idx >= i), idx + 1, idx).masked_fill(idx < 0, -1))
                scores.append(r.scores)
                bar.update(1)
        return RerankResult(torch.cat(scores), torch.cat(indices))

    def _check_query_scores(self, queries: Any) -> ScoreMatrix:
        db = self.database_
        name = type(self).__name__
        if not isinstance(db, ScoreMatrix):
            raise TypeError(
                f"this {name} was fitted on descriptors: pass query descriptors, not a "
                "ScoreMatrix (or fit it on the database x database ScoreMatrix)"
            )
        if not isinstance(queries, ScoreMatrix):
            raise TypeError(
                f"this {name} was fitted on a ScoreMatrix: pass the queries' scores against the "
                f"database as a ScoreMatrix, got {type(queries).__name__}"
            )
        if queries.shape[1] != db.shape[0]:
            raise ValueError(
                f"queries' scores have {queries.shape[1]} columns but the database holds "
                f"{db.shape[0]} items"
            )
        if queries.kind != db.kind:
            raise ValueError(
                f"queries' scores are {queries.kind}s but the database's are {db.kind}s; use "
                "one kind (ScoreMatrix.as_distance / as_similarity convert)"
            )
        check_same_device(database=db.matrix, queries=queries.matrix)
        if queries.dtype != db.dtype:
            queries = queries._converted(queries.kind, lambda m: m.to(db.dtype))
        return queries

    def _check_initial(self, initial, num_queries: int) -> RerankResult:
        try:
            scores, indices = initial
        except (TypeError, ValueError):
            raise TypeError(
                f"initial must be a (scores, indices) pair, got {type(initial).__name__}"
            ) from None
        if not isinstance(scores, Tensor) or not isinstance(indices, Tensor):
            raise TypeError("initial scores and indices must be tensors")
        if scores.dim() != 2 or scores.shape != indices.shape or scores.shape[0] != num_queries:
            raise ValueError(
                f"initial must hold ({num_queries}, M) scores and indices, got "
                f"{tuple(scores.shape)} and {tuple(indices.shape)}"
            )
        check_same_device(database=self.database_, initial=indices)
        if indices.dtype != torch.int64:
            raise TypeError(f"initial indices must be int64, got {indices.dtype}")
        n = self.n_database_
        if bool(((indices < -1) | (indices >= n)).any()):
            raise ValueError(f"initial indices must lie in [-1, {n - 1}] (the fitted database)")
        return RerankResult(scores.to(self.database_.dtype), indices)

    def score_candidates(self, rows: Tensor, candidates: Tensor, scores: Tensor) -> Tensor:
        """Re-score database items against each other: the edge re-scoring hook of
        :func:`~graphrerank.graph.knn_graph` (R-DiP rebuilds its graph with it).

        Database item ``rows[b]`` is taken as a query (all-vs-all setting) and each of its
        candidate database items ``candidates[b, j]`` gets this method's score.

        Args:
            rows: :math:`(B,)` database indices.
            candidates: :math:`(B, m)` database indices, ``-1`` for padding.
            scores: :math:`(B, m)` first-stage scores of those pairs.

        Returns:
            :math:`(B, m)` new scores, higher is better, ``-inf`` at padding.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot re-score candidate pairs")

    def as_rescorer(self):
        """The fitted re-ranker as an :data:`~graphrerank.graph.EdgeRescorer` over its own
        database (see :meth:`score_candidates`)."""
        self._check_fitted()
        return self.score_candidates

    def transform_database(self) -> Tensor:
        """The database descriptors :math:`(N, D')` a later stage of a
        :class:`~graphrerank.rerankers.Pipeline` is fitted on.

        The identity (the fitted database) unless the method changes database descriptors
        offline, as database augmentation does. Row :math:`i` stays database item :math:`i`.
        """
        self._check_fitted()
        return self.database_

    def transform_queries(self, queries: Tensor | None) -> Tensor | None:
        """The query descriptors a later stage of a :class:`~graphrerank.rerankers.Pipeline`
        receives, for validated ``queries`` :math:`(Q, D)` on the database's device.

        The identity unless the method changes query descriptors online, as query expansion
        does. ``None`` (all-vs-all) stays ``None`` for the identity; a method that transforms
        queries returns the transformed database items :math:`(N, D')` there, one per item.
        """
        self._check_fitted()
        return queries

    def _progress_bar(self, total: int, desc: str) -> Progress:
        """A :class:`~graphrerank._progress.Progress` of ``total`` units for the method's
        ``progress`` setting (``None``: a bar on a terminal after a second; a callable:
        called, no bar)."""
        show, callback = progress_options(getattr(self, "progress", None))
        return Progress(total, desc or type(self).__name__, show=show, callback=callback, delay=1.0)

    # ------------------------------------------------------------------ persistence
    #: Fitted attributes that are not stored by :meth:`save` but rebuilt by
    #: :meth:`_after_load` (e.g. a bound method).
    _derived_state: ClassVar[tuple[str, ...]] = ()

    def save(self, path: str | os.PathLike, *, include_database: bool = True) -> Path:
        """Write the fitted re-ranker to ``path`` (``.npz``): atomically, with a checksum and
        without pickle.

        Stored: the class, the settings, every fitted attribute (neighbour lists, graphs,
        operators, offline matrices, kNN indexes, embeddings), nested re-rankers with theirs
        (a pipeline's stages, R-DiP's re-scorer), a format version, and the database's shape,
        dtype and SHA-256 fingerprint. The database itself is stored too unless
        ``include_database=False`` (for a large database kept elsewhere: :meth:`load` then
        needs it). Settings that are not plain values (a callable re-scorer or progress
        callback) are not stored; pass them to :meth:`load` again.

        Returns:
            The path written (``.npz`` appended if missing).

        Raises:
            NotFittedError: the re-ranker is not fitted.
            TypeError: a fitted attribute has no stored form (a custom object).
        """
        from ._persist import save_reranker

        return save_reranker(self, path, include_database=include_database)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        database: TensorLike | None = None,
        *,
        device: str | torch.device | None = None,
        **settings: Any,
    ) -> Self:
        """A fitted re-ranker from a file written by :meth:`save`, ready to :meth:`rerank`;
        nothing is recomputed.

        ``Reranker.load(path)`` returns whatever re-ranker the file holds; ``Diffusion.load``
        refuses a file of another class. Its results are those of the saved re-ranker.

        Args:
            path: The file.
            database: The database the re-ranker was fitted on: needed when the file was saved
                with ``include_database=False``, otherwise optional (it is then checked against
                the stored fingerprint and used in place of the stored copy).
            device: Where the loaded state lives (default: the database's device, else the
                CPU).
            **settings: Settings to set on load: those that were not stored (callables), or
                ones that do not change the fitted state (e.g. ``ties``, ``transductive``).

        Raises:
            FileNotFoundError: no file at ``path``.
            CorruptFileError: the file is truncated, altered, of another format or class, of a
                newer format version, or inconsistent.
            ValueError: ``database`` is not the database of the file, or it is needed and
                missing.
        """
        from ._persist import load_reranker

        r = load_reranker(cls, path, database, device=device, settings=settings)
        r._restore_auto()
        return r

    def _after_load(self) -> None:  # noqa: B027 - optional hook
        """Rebuild the :attr:`_derived_state` after :meth:`load` set the stored state."""

    def fit_rerank(
        self, database: TensorLike, queries: TensorLike | None = None, k: int = 100, **kwargs: Any
    ) -> RerankResult:
        """``fit(database).rerank(queries, k, **kwargs)``."""
        return self.fit(database).rerank(queries, k, **kwargs)

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def _fit(self, database: Tensor) -> None:
        """Build the fitted state from the validated database (``self.database_`` is set)."""

    @abc.abstractmethod
    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        """Rank for validated queries (``None``: all-vs-all), a valid ``k`` and, for
        ``accepts_initial`` methods, a validated ``initial`` ranking."""


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == "auto"


def drop_own_entry(result: RerankResult, k: int) -> RerankResult:
    """The first ``k`` entries of each row ``i`` of an all-vs-all ranking that are not item
    ``i`` itself (rows of length ``k + 1``; where the row does not list ``i``, its first
    ``k``)."""
    scores, idx = result
    own = idx == torch.arange(idx.shape[0], device=idx.device)[:, None]
    order = torch.argsort(own.to(torch.int8), dim=1, stable=True)[:, :k]
    return RerankResult(scores.gather(1, order), idx.gather(1, order))


def _fit_needs_more(cls: type) -> bool:
    """Whether ``cls.fit`` requires arguments besides the database."""
    params = list(inspect.signature(cls.fit).parameters.values())[2:]
    return any(
        p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        for p in params
    )


def _defined_below(cls: type) -> set[str]:
    """Names defined by ``cls`` and its bases below :class:`Reranker`."""
    out: set[str] = set()
    for c in cls.__mro__:
        if c is Reranker:
            break
        out.update(c.__dict__)
    return out


def _clone_value(value: Any) -> Any:
    if isinstance(value, Reranker):
        return value.clone()
    if isinstance(value, (list, tuple)) and any(isinstance(v, Reranker) for v in value):
        return type(value)(v.clone() if isinstance(v, Reranker) else v for v in value)
    return value


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _user_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in the caller of this function) of the first
    frame outside graphrerank, so that a warning names the user's line, whether the user called
    a constructor, ``set_params`` or a one-call function."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level
