"""Chains of re-rankers, each stage's output feeding the next."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .._params import Int, setting
from ..typing import RerankResult
from .base import Reranker

__all__ = ["Pipeline"]


class Pipeline(Reranker):
    r"""A chain of re-rankers used as one, e.g. DBA :math:`\to` αQE :math:`\to` diffusion, or
    a first stage :math:`\to` :class:`~graphrerank.rerankers.SuperGlobal`.

    Each stage passes two things on:

    * **descriptors.** At :meth:`fit`, stage :math:`t` is fitted on the database that stage
      :math:`t - 1` hands over (:meth:`~Reranker.transform_database`: augmented by
      :class:`~graphrerank.rerankers.DatabaseAugmentation`, unchanged by most methods). At
      :meth:`rerank`, stage :math:`t` receives the queries stage :math:`t - 1` hands over
      (:meth:`~Reranker.transform_queries`: expanded by query expansion, unchanged otherwise).
    * **rankings.** A stage that ``accepts_initial`` (e.g. SuperGlobal) receives the previous
      stage's ranking as its ``initial`` shortlist, ``depth`` long (default: :math:`k`, or the
      stage's shortlist length :math:`M` when longer). Stages followed by one that does not
      take a ranking only transform descriptors, and their ranking is not computed.

    The last stage's ranking is the result. Rows of every stage's database stay the rows of
    the fitted database, so indices always refer to it.

    **All-vs-all** (``rerank(None)``): the :math:`N` items are the queries, row :math:`i` of
    every ranking is item :math:`i`, and each stage sees the items as the single method would:

    * a stage whose database still is the items runs ``rerank(None)``;
    * after database augmentation, an inductive stage ranks the original items as explicit
      queries against the augmented database (as ``DatabaseAugmentation.rerank(None)`` does);
      after query expansion, it ranks the expanded items (as
      ``AlphaQueryExpansion.rerank(None)`` does, each item keeping its own entry among its
      :math:`k` neighbours);
    * a *transductive* stage (one graph over queries and database) never receives the items
      as extra queries, which would give :math:`2N` nodes of near-duplicates: after query
      expansion it is fitted on the expanded items and run all-vs-all, so that query expansion
      acts as database augmentation for it; otherwise it runs ``rerank(None)`` on its fitted
      (possibly augmented) database;
    * a stage that maps items and database alike (preprocessing,
      :class:`~graphrerank.rerankers.Whitening`: its ``transform_queries(None)`` is its
      ``transform_database()``) hands the mapped items over as the next stage's own database
      items, so that stage runs as it would on its own database, e.g. ``rerank(None)``.

    ``first | second`` builds a pipeline too (:meth:`Reranker.__or__`), flattening
    pipelines without ``depth``: ``Whitening() | DatabaseAugmentation() |
    AlphaQueryExpansion()``.

    Declarations: a pipeline is ``transductive`` or ``needs_query_similarity`` when any stage
    is, and ``accepts_initial`` when its first stage does. Stages are copied at :meth:`fit`
    (``stages_``); the given re-rankers are left untouched.

    Args:
        stages: The re-rankers, first to last (may be passed by position). ``None``: the usual
            chain ``[DatabaseAugmentation(), AlphaQueryExpansion()]`` (DBA offline, then αQE
            against the augmented database).
        depth: Length of the ranking handed to a stage that takes an ``initial`` ranking
            (``None``: :math:`\max(k, M)` where that stage declares a shortlist length
            :math:`M` as its ``shortlist_size`` attribute, as SuperGlobal does, else :math:`k`;
            never less than :math:`k`; capped at :math:`N`).

    Shapes:
        - **fit:** database :math:`(N, D)`
        - **rerank:** queries :math:`(Q, D)` or ``None`` :math:`\to` scores, indices
          :math:`(Q, k)`

    Raises:
        ValueError: ``stages`` is empty.
        TypeError: a stage is not a re-ranker instance.

    Example:
        >>> from graphrerank.rerankers import AlphaQueryExpansion, DatabaseAugmentation, SuperGlobal
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
        >>> q = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=1)
        >>> pipe = Pipeline([DatabaseAugmentation(k=3), AlphaQueryExpansion(k=3), SuperGlobal(M=20, K=3)])
        >>> pipe
        Pipeline([DatabaseAugmentation(k=3), AlphaQueryExpansion(k=3), SuperGlobal(M=20, K=3)])
        >>> out = pipe.fit(x).rerank(q, k=4)
        >>> # the same by hand: DBA's database feeds both later stages, alpha-QE hands over its
        >>> # expanded queries and its ranking (M = 20 long) to SuperGlobal
        >>> dba = DatabaseAugmentation(k=3).fit(x)
        >>> qe = AlphaQueryExpansion(k=3).fit(dba.transform_database())
        >>> sg = SuperGlobal(M=20, K=3).fit(dba.transform_database())
        >>> by_hand = sg.rerank(qe.transform_queries(q), k=4, initial=qe.rerank(q, k=20))
        >>> torch.equal(out.indices, by_hand.indices)
        True
    """

    _positional_settings = ("stages",)

    #: ``stages`` is checked by :meth:`_validate_params` (each element a re-ranker instance).
    stages: Sequence[Reranker] | None = setting(None, positional=True)
    depth: int | None = setting(None, Int(1) | None)

    # ------------------------------------------------------------------ declarations
    def _stages(self) -> list[Reranker]:
        if self.stages is None:
            from .expansion import AlphaQueryExpansion, DatabaseAugmentation

            return [DatabaseAugmentation(), AlphaQueryExpansion()]
        return list(self.stages)

    def _declared(self) -> list[Reranker]:
        fitted = getattr(self, "stages_", None)
        if fitted is not None:
            return fitted
        try:
            return self._stages()
        except TypeError:
            return []

    @property
    def transductive(self) -> bool:  # type: ignore[override]
        return any(s.transductive for s in self._declared())

    @property
    def needs_query_similarity(self) -> bool:  # type: ignore[override]
        return any(s.needs_query_similarity for s in self._declared())

    @property
    def accepts_initial(self) -> bool:  # type: ignore[override]
        stages = self._declared()
        return bool(stages) and stages[0].accepts_initial

    def __repr__(self) -> str:
        try:
            inner = ", ".join(repr(s) for s in self._stages())
        except TypeError:
            inner = repr(self.stages)
        extra = "" if self.depth is None else f", depth={self.depth!r}"
        return f"{type(self).__name__}([{inner}]{extra})"

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        from .expansion import AlphaQueryExpansion, DatabaseAugmentation
        from .superglobal import SuperGlobal

        return {
            "stages": [
                DatabaseAugmentation(k=3),
                AlphaQueryExpansion(k=3),
                SuperGlobal(M=20, K=3),
            ]
        }

    @classmethod
    def _chain(cls, first: Reranker, second: Reranker) -> Pipeline:
        """``first | second`` (:meth:`Reranker.__or__`): a pipeline of both, pipelines
        without ``depth`` flattened into their stages."""

        def parts(r: Reranker) -> list[Reranker]:
            if type(r) is Pipeline and r.depth is None:
                return r._stages()
            return [r]

        return cls([*parts(first), *parts(second)])

    # ------------------------------------------------------------------ fit / rerank
    def _validate_params(self) -> None:
        if self.stages is not None and (
            isinstance(self.stages, Reranker) or not isinstance(self.stages, Sequence)
        ):
            raise TypeError(
                f"stages must be a list of re-rankers, got {type(self.stages).__name__}"
            )
        stages = self._stages()
        if len(stages) == 0:
            raise ValueError("stages must hold at least one re-ranker, got none")
        for i, s in enumerate(stages):
            if not isinstance(s, Reranker):
                what = s.__name__ if isinstance(s, type) else type(s).__name__
                raise TypeError(
                    f"stages[{i}] must be a re-ranker instance, got {what}"
                    + (f"; write {what}()" if isinstance(s, type) else "")
                )

    def _fit(self, database: Tensor) -> None:
        fitted: list[Reranker] = []
        db = database
        stages = self._stages()
        for i, stage in enumerate(stages):
            stage = stage.clone().fit(db)
            fitted.append(stage)
            if i + 1 < len(stages):
                db = stage.transform_database()
                if db.shape[0] != database.shape[0]:
                    raise ValueError(
                        f"stage {i} ({type(stage).__name__}) handed over {db.shape[0]} database "
                        f"rows, expected {database.shape[0]}"
                    )
        self.stages_ = fitted

    def _depth(self, k: int, stage: Reranker) -> int:
        if self.depth is not None:
            d = max(k, int(self.depth))
        else:
            d = max(k, int(getattr(stage, "shortlist_size", k)))
        return min(d, self.n_database_)

    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        stages = self.stages_
        all_vs_all = queries is None
        q = queries  # the query side; None: each stage's own database items
        db_changed = False  # an earlier stage handed over a transformed database
        ranking = initial
        items = self.database_  # the all-vs-all items, as mapped by preprocessing stages
        for i, stage in enumerate(stages):
            run_q = q
            if all_vs_all and stage.transductive:
                if q is not None:
                    # One graph over the N transformed items, not 2N.
                    stage = stage.clone().fit(q)
                run_q = None
            elif all_vs_all and q is None and db_changed:
                run_q = items  # the original items query the transformed database
            init = ranking if stage.accepts_initial else None
            if i + 1 == len(stages):
                return stage.rerank(run_q, k, initial=init)
            nxt = stages[i + 1]
            ranking = (
                stage.rerank(run_q, self._depth(k, nxt), initial=init)
                if nxt.accepts_initial
                else None
            )
            new_q = stage.transform_queries(run_q)
            if all_vs_all and run_q is None and new_q is not None:
                if new_q is stage.transform_database():
                    # the stage maps items and database alike (Whitening): the items still
                    # are the next stage's database rows
                    items = new_q
                    continue
            if new_q is not None or run_q is not None or not all_vs_all:
                q = new_q if new_q is not None else run_q
            db_changed = db_changed or stage.transform_database() is not stage.database_
        raise AssertionError("unreachable")  # pragma: no cover

    def transform_database(self) -> Tensor:
        """The database as the last stage hands it over."""
        self._check_fitted()
        return self.stages_[-1].transform_database()

    def transform_queries(self, queries: Tensor | None) -> Tensor | None:
        """The queries after every stage's query transform, in order."""
        self._check_fitted()
        q = queries
        for stage in self.stages_:
            q = stage.transform_queries(q)
        return q
