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
from typing import Any, ClassVar, Self

import torch
from torch import Tensor

from .._checks import check_features, check_k, check_same_device
from .._params import Constraint, check_params
from .._progress import Progress, progress_options
from ..graph.scores import ScoreMatrix
from ..typing import RerankResult, TensorLike

__all__ = ["NotFittedError", "Reranker"]


class NotFittedError(RuntimeError):
    """A re-ranker was used before :meth:`Reranker.fit`."""


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
      over the :math:`N` items, not :math:`2N`.

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
        """The settings, as passed to the constructor."""
        return {name: getattr(self, name) for name in self._param_names()}

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
        return self

    def clone(self) -> Self:
        """An unfitted copy with the same settings; re-rankers among the settings (a
        pipeline's stages, R-DiP's re-scorer) are cloned too, other values are shared."""
        return type(self)(**{n: _clone_value(v) for n, v in self.get_params().items()})

    def validate_params(self) -> None:
        """Check every setting against its declaration; :meth:`fit` calls it.

        Raises:
            TypeError, ValueError: a setting has the wrong type or is out of range (the
                message names the setting and the value).
        """
        check_params(self.get_params(), self._constraints())
        self._validate_params()

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
            db = check_features(database, "database")
        for attr in self._fitted_attributes():
            delattr(self, attr)
        self.database_ = db
        self._fit(db)
        return self

    def rerank(
        self,
        queries: TensorLike | None = None,
        k: int = 100,
        *,
        asymmetric: bool = False,
        initial: RerankResult | tuple[Tensor, Tensor] | None = None,
    ) -> RerankResult:
        """Rank the database for each query.

        Args:
            queries: Query descriptors :math:`(Q, D)` on the database's device, or ``None`` for
                all-vs-all (every database item is a query, :math:`Q = N`).
            k: Length of each ranked list, ``1 <= k <= N``.
            asymmetric: Declare that queries come from another encoder than the database
                (e.g. a small query network distilled from the database network). Methods that
                compare queries with each other refuse it.

        Returns:
            ``(scores, indices)``, each :math:`(Q, k)`, best first.
        """
        self._check_fitted()
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
            q = check_features(queries, "queries", dim=self.database_.shape[1])
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

        return load_reranker(cls, path, database, device=device, settings=settings)

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
