r"""Learned (and training-free) shortlist re-ranking with local descriptors."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, Self

import numpy as np
import torch
from torch import Tensor

from .._checks import as_tensor, check_features, check_k, check_same_device
from .._io import CorruptFileError, load_arrays, save_arrays
from .._params import InstanceOf, Int, OneOf, Real, setting
from ..graph import KNNIndex
from ..models.baselines import SIMILARITIES
from ..models.fusion import GAMMAS, LAMBDAS, FusionResult, rerank_shortlist, tune_fusion
from ..models.matcher import LocalMatcher
from ..models.scoring import score_shortlist
from ..models.storage import STORAGES, StoredLocal, bytes_per_image, compress_local
from ..nn.whitening import PCAWhitening
from ..typing import BACKENDS, METRICS, Backend, Metric, RerankResult, TensorLike
from .base import Reranker

__all__ = ["LocalDescriptorReranker", "ShortlistLogits", "local_descriptor_rerank"]

#: The format of :meth:`LocalDescriptorReranker.save` files.
FORMAT = "graphrerank.LocalDescriptorReranker"
_VERSION = 1

#: Largest cache (bytes) of a database encoded by a ``design="late"`` model.
ENCODE_CACHE_BYTES = 2**31


class ShortlistLogits(NamedTuple):
    """A first-stage ranking and the matching logits of its shortlist.

    Attributes:
        scores: :math:`(Q, K)` first-stage scores, best first.
        indices: :math:`(Q, K)` database indices (-1: padding).
        logits: :math:`(Q, M)` matching logits of the first :math:`M` entries (-inf at padding).
    """

    scores: Tensor
    indices: Tensor
    logits: Tensor


def check_local(
    local: Any, name: str, *, num_items: int, dim: int | None, device: torch.device
) -> Tensor:
    """Validate an ``(num_items, L, D)`` float array of local descriptors (returned as float32:
    the models' and the stored database's precision)."""
    t = as_tensor(local, name)
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"{name} must hold floating point descriptors, got dtype {t.dtype}")
    if t.dim() != 3:
        raise ValueError(
            f"{name} must be a 3-D (num_images, num_descriptors, dim) array, got shape "
            f"{tuple(t.shape)}"
        )
    if t.shape[0] != num_items:
        raise ValueError(f"{name} holds {t.shape[0]} image(s), expected {num_items}")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if dim is not None and t.shape[2] != dim:
        raise ValueError(f"{name} has descriptors of dimension {t.shape[2]}, expected {dim}")
    if t.device != device:
        raise ValueError(
            f"{name} is on {t.device} but the descriptors are on {device}; move them to one "
            "device - graphrerank never moves data between devices silently"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if t.dtype != torch.float32:
        t = t.float()
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} has values too large for float32")
    return t


def _check_positions(pos: Any, name: str, local: Tensor) -> Tensor:
    t = as_tensor(pos, name)
    if t.shape != (*local.shape[:2], 2):
        raise ValueError(
            f"{name} must have shape {(*local.shape[:2], 2)} (one (row, col) per descriptor), "
            f"got {tuple(t.shape)}"
        )
    if t.device != local.device:
        raise ValueError(f"{name} is on {t.device} but the local descriptors on {local.device}")
    return t.float()


class LocalDescriptorReranker(Reranker):
    r"""Re-rank the top-:math:`M` of a first-stage ranking by matching local descriptors, fused
    with the global score (RRT, AMES, LOCORE as graph models; see
    :class:`~graphrerank.models.LocalMatcher`).

    For each query, the :math:`M` best database images of the first stage (global
    descriptors, or any ranking given as ``initial``) get a matching logit :math:`\ell` from
    their local descriptors, and are re-ordered by

    .. math::
        s = \lambda\, s_{\text{global}} + (1 - \lambda)\, \sigma(\gamma\, \ell);

    images after the first :math:`M` keep their order (:func:`~graphrerank.models.rerank_shortlist`).
    With ``model=None`` the logit is a training-free similarity (``similarity``, see
    :func:`~graphrerank.models.local_similarity`): one-sided ``"chamfer"`` (the default),
    ``"chamfer_db"``, the symmetric ``"chamfer_sym"`` (the strongest of them on Corel-1k,
    ``benchmarks/results/learned_corel.md``) or mutual nearest neighbours ``"mnn"``, all
    computed with one matrix product per block of queries.

    The database keeps ``db_descriptors`` local descriptors per image in ``db_storage``
    (``"float32"``, ``"float16"`` or sign ``"binary"``): :attr:`bytes_per_image_` states the cost.
    Queries may keep more (``query_descriptors``): asymmetric matching as in AMES, with a model
    trained that way (:func:`~graphrerank.models.train_matcher`).

    Args:
        model: A trained :class:`~graphrerank.models.LocalMatcher` on the data's device, or
            ``None`` for training-free matching (``similarity``).
        similarity: The training-free similarity used when ``model`` is ``None``:
            ``"chamfer"``, ``"chamfer_db"``, ``"chamfer_sym"`` or ``"mnn"``.
        whitening: A fitted :class:`~graphrerank.nn.PCAWhitening` of the raw local
            descriptors (learned on training locals), applied to the database's at
            :meth:`fit` (they are stored whitened) and to the queries' at :meth:`rerank`, and
            saved with the re-ranker. A ``model`` with its own ``whitening`` brings it (then
            leave this ``None``).
        top_m: Shortlist size :math:`M` (RRT, AMES and LOCORE re-rank the top 100).
        mode: ``"pairwise"`` (a graph per pair), ``"listwise"`` (a graph per query and window
            of candidates) or ``"auto"`` (the mode the model was trained in).
        window: List-wise window :math:`W` (LOCORE: 100).
        stride: List-wise stride (LOCORE: 50); overlapping windows average their logits.
        lambda_value: :math:`\lambda` of the fusion (LOCORE's default 0.5); 0 ranks by the
            local logit alone. Tune it with :meth:`tune_fusion`.
        gamma: Temperature :math:`\gamma` of the fusion.
        query_descriptors: Keep the first this many query descriptors (``None``: all).
        db_descriptors: Keep the first this many database descriptors (``None``: all).
        db_storage: ``"float32"``, ``"float16"`` or ``"binary"``.
        batch_size: (query, candidate) pairs per graph batch.
        metric: First-stage similarity, ``"ip"`` or ``"l2"``.
        backend: First-stage kNN backend.

    Shapes:
        - **fit:** database :math:`(N, D_g)`, ``local`` :math:`(N, L_d, D)`, ``positions``
          :math:`(N, L_d, 2)`
        - **rerank:** queries :math:`(Q, D_g)` with ``local`` :math:`(Q, L_q, D)`, or ``None``
          (all-vs-all) :math:`\to` scores, indices :math:`(Q, k)`

    Raises:
        ValueError: bad settings (at :meth:`fit`), local descriptors of the wrong shape,
            dimension or device, NaN, ``k`` too large, a model on another device; an
            ``initial`` ranking with NaN scores or an item listed twice in a row.
        TypeError: missing local descriptors, non-float ones, a ``model`` that is not a
            ``LocalMatcher``.

    Local descriptors may be any float array (float16 / float64 / nested lists): they are
    used as float32.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
        >>> local = torch.randn(6, 3, 8, generator=g)
        >>> r = LocalDescriptorReranker(top_m=3).fit(x, local=local)
        >>> out = r.rerank(x[:2], k=4, local=local[:2])
        >>> out.indices[:, 0]  # each query finds its own image first
        tensor([0, 1])
        >>> r.bytes_per_image_
        96

    See Also:
        :func:`local_descriptor_rerank`, :func:`~graphrerank.models.train_matcher`.
    """

    transductive = False
    needs_query_similarity = False
    accepts_initial = True

    model: LocalMatcher | None = setting(
        None, InstanceOf(LocalMatcher, "a graphrerank.models.LocalMatcher or None") | None
    )
    similarity: Literal["chamfer", "chamfer_db", "chamfer_sym", "mnn"] = setting(
        "chamfer", OneOf(SIMILARITIES)
    )
    whitening: PCAWhitening | None = setting(
        None, InstanceOf(PCAWhitening, "a fitted graphrerank.nn.PCAWhitening or None") | None
    )
    top_m: int = setting(100, Int(1))
    mode: Literal["auto", "pairwise", "listwise"] = setting(
        "auto", OneOf(("auto", "pairwise", "listwise"))
    )
    window: int = setting(100, Int(1))
    stride: int = setting(50, Int(1))
    lambda_value: float = setting(0.5, Real(0, 1))
    gamma: float = setting(1.0, Real(0, low_open=True))
    query_descriptors: int | None = setting(None, Int(1) | None)
    db_descriptors: int | None = setting(None, Int(1) | None)
    db_storage: Literal["float32", "float16", "binary"] = setting("float32", OneOf(STORAGES))
    batch_size: int = setting(256, Int(1))
    metric: Metric = setting("ip", OneOf(METRICS))
    backend: Backend = setting("auto", OneOf(BACKENDS))

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"top_m": 10, "batch_size": 64}

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        database: TensorLike,
        /,
        *,
        local: TensorLike | None = None,
        positions: TensorLike | None = None,
    ) -> Self:
        """Fit on global descriptors :math:`(N, D_g)` and local descriptors
        :math:`(N, L, D)` (and positions :math:`(N, L, 2)` for models that use them)."""
        self.validate_params()
        db = check_features(database, "database")
        if local is None:
            raise TypeError(
                f"{type(self).__name__}.fit needs the database's local descriptors: "
                "fit(database, local=...)"
            )
        model = self.model
        white = self._preprocessing()
        dim = None if model is None else model.input_dim
        if white is not None:
            dim = white.in_features
            if model is not None and model.whitening is None and white.out_features != model.in_dim:
                raise ValueError(
                    f"whitening outputs {white.out_features}-d descriptors, the model takes "
                    f"{model.in_dim}"
                )
        loc = check_local(local, "local", num_items=db.shape[0], dim=dim, device=db.device)
        gdim = None if model is None else model.config["global_dim"]
        if gdim is not None and db.shape[1] != gdim:
            raise ValueError(
                f"database has global descriptors of dimension {db.shape[1]}, the model takes "
                f"{gdim} (its global_dim)"
            )
        if model is not None:
            mdev = next(model.parameters()).device
            if mdev != db.device:
                raise ValueError(
                    f"the model is on {mdev} but the database on {db.device}; move it with "
                    "model.to(device)"
                )
        if self.db_descriptors is not None and self.db_descriptors > loc.shape[1]:
            raise ValueError(
                f"db_descriptors={self.db_descriptors} but local holds {loc.shape[1]} "
                "descriptors per image"
            )
        pos = None
        if positions is not None:
            pos = _check_positions(positions, "positions", loc)
        elif model is not None and model.config["use_positions"]:
            raise ValueError("the model uses descriptor positions: fit(..., positions=...)")
        if white is not None:
            wdev = white.components.device
            if wdev != db.device:
                raise ValueError(
                    f"the whitening is on {wdev} but the database on {db.device}; move it with "
                    ".to(device)"
                )
            loc = self._whiten(loc)
        for attr in self._fitted_attributes():
            delattr(self, attr)
        self.database_ = db
        self._fit(db, loc, pos)
        return self

    def _preprocessing(self) -> PCAWhitening | None:
        """The whitening of raw local descriptors in use: the setting's, or the model's."""
        w, model = self.whitening, self.model
        if w is not None and model is not None and model.whitening is not None:
            raise ValueError(
                "the model brings its own whitening: leave the re-ranker's whitening=None"
            )
        if w is not None and not w.is_fitted:
            raise ValueError("whitening must be fitted (on training local descriptors)")
        return w if w is not None else (None if model is None else model.whitening)

    def _whiten(self, local: Tensor) -> Tensor:
        w = self._preprocessing()
        if w is None:
            return local
        with torch.no_grad():
            return w(local).float()

    def _input_dim(self) -> int:
        """Dimension of the raw local descriptors ``rerank`` takes."""
        w = self._preprocessing()
        return self.local_.dim if w is None else w.in_features

    def _fit(self, database: Tensor, local: Tensor | None = None, positions=None) -> None:
        self.index_ = KNNIndex(metric=self.metric, backend=self.backend).add(database)
        self.local_ = compress_local(
            local, num_descriptors=self.db_descriptors, storage=self.db_storage
        )
        n_keep = self.local_.data.shape[1]
        self.positions_ = None if positions is None else positions[:, :n_keep].contiguous()

    def _database_encoded(self):
        """The database encoded once by a ``design="late"`` model (its per-image blocks do
        not depend on the query), cached while the model's weights and the database stay the
        same; ``None`` for other models or when the states would exceed
        :data:`ENCODE_CACHE_BYTES` (then each call encodes its shortlist)."""
        model = self.model
        if model is None or model.config.get("design") != "late":
            return None
        loc = self.local_
        n, length = loc.data.shape[0], loc.data.shape[1]
        nodes = length + int(model.config["global_dim"] is not None)
        size = 4 * n * (length * model.in_dim + 4 * nodes * model.config["hidden"])
        if size > ENCODE_CACHE_BYTES:
            return None
        # the weights (parameters and buffers) and their in-place version counters: several
        # times cheaper than building the state_dict, which took ~1 ms of every call
        versions = tuple(
            (id(t), t._version) for t in itertools.chain(model.parameters(), model.buffers())
        )
        key = (id(model), id(loc), id(self.positions_), id(self.database_), versions)
        cached = getattr(self, "_encoded_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                from ..models.scoring import _encode_rows

                enc = _encode_rows(
                    model,
                    loc,
                    torch.arange(n, device=loc.data.device),
                    1,
                    self.positions_ if model.config["use_positions"] else None,
                    self.database_ if model.config["global_dim"] is not None else None,
                )
        finally:
            model.train(was_training)
        self._encoded_cache = (key, enc)
        return enc

    @property
    def bytes_per_image_(self) -> int:
        """Bytes of local descriptors stored per database image."""
        self._check_fitted()
        return bytes_per_image(self.local_.data.shape[1], self.local_.dim, self.local_.storage)

    def _resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        if self.model is None:
            return "pairwise"
        return str(self.model.metadata.get("mode", "pairwise"))

    # ------------------------------------------------------------------ re-ranking
    def _query_inputs(self, queries, local, positions):
        n = self.n_database_
        if queries is None:
            own = torch.arange(n, device=self.device_)
            if local is None:
                loc = self.local_
                pos = self.positions_
            else:
                loc = check_local(
                    local, "local", num_items=n, dim=self._input_dim(), device=self.device_
                )
                loc = self._whiten(loc)
                pos = None if positions is None else _check_positions(positions, "positions", loc)
            return None, loc, pos, own
        q = check_features(queries, "queries", dim=self.database_.shape[1])
        check_same_device(database=self.database_, queries=q)
        if q.dtype != self.database_.dtype:
            q = q.to(self.database_.dtype)
        if local is None:
            raise TypeError(
                "rerank needs the queries' local descriptors: rerank(queries, k, local=...)"
            )
        loc = check_local(
            local, "local", num_items=q.shape[0], dim=self._input_dim(), device=self.device_
        )
        loc = self._whiten(loc)
        pos = None if positions is None else _check_positions(positions, "positions", loc)
        return q, loc, pos, None

    def shortlist_logits(
        self,
        queries: TensorLike | None = None,
        k: int = 100,
        *,
        local: TensorLike | None = None,
        positions: TensorLike | None = None,
        initial: RerankResult | tuple[Tensor, Tensor] | None = None,
    ) -> ShortlistLogits:
        r"""The first stage and the logits of its top :math:`M`, before fusion: ``rerank`` is
        :func:`~graphrerank.models.rerank_shortlist` of this with ``lambda_value`` and
        ``gamma`` (then cut to ``k``). Computing it once lets one compare several fusions.

        Arguments are those of :meth:`rerank`; the first-stage ranking holds
        :math:`\max(k, M)` entries (or those of ``initial``).
        """
        scores, indices, logits, _ = self._shortlist_logits(queries, k, local, positions, initial)
        return ShortlistLogits(scores, indices, logits)

    def _shortlist_logits(self, queries, k, local, positions, initial):
        """Validated inputs -> first-stage ranking (scores, indices) of width >= k (or the
        initial width), the logits of its first M entries and the validated k."""
        self._check_fitted()
        q, loc, pos, own = self._query_inputs(queries, local, positions)
        n = self.n_database_
        k = check_k(k, n)
        nq = n if q is None else q.shape[0]
        if initial is None:
            width = min(n, max(k, self.top_m))
            scores, indices = self.index_.search(self.database_ if q is None else q, width)
        else:
            scores, indices = self._check_initial(initial, nq)
        m = min(self.top_m, indices.shape[1])
        if self.model is not None and self.model.config["use_positions"]:
            if pos is None or self.positions_ is None:
                raise ValueError("the model uses descriptor positions: pass positions")
        if self.query_descriptors is not None and not isinstance(loc, StoredLocal):
            loc = loc[:, : self.query_descriptors]
            pos = None if pos is None else pos[:, : self.query_descriptors]
        logits = score_shortlist(
            self.model,
            loc,
            self.local_,
            indices[:, :m],
            mode=self._resolved_mode(),
            window=self.window,
            stride=self.stride,
            batch_size=self.batch_size,
            query_positions=pos,
            database_positions=self.positions_,
            query_global=self.database_ if q is None else q,
            database_global=self.database_,
            own_index=own,
            similarity=self.similarity,
            database_encoded=self._database_encoded(),
        )
        return scores, indices, logits, k

    def rerank(
        self,
        queries: TensorLike | None = None,
        k: int = 100,
        *,
        local: TensorLike | None = None,
        positions: TensorLike | None = None,
        asymmetric: bool = False,
        initial: RerankResult | tuple[Tensor, Tensor] | None = None,
    ) -> RerankResult:
        """Rank the database for each query, re-ranking the top :math:`M`.

        Args:
            queries: Global descriptors :math:`(Q, D_g)`, or ``None`` for all-vs-all (each
                database image queries the database with its stored local descriptors, or
                with ``local`` :math:`(N, L_q, D)` when given; its own entry is scored alone,
                outside the list-wise windows).
            k: Length of each ranked list.
            local: The queries' local descriptors :math:`(Q, L_q, D)`.
            positions: Their positions :math:`(Q, L_q, 2)` (models that use positions).
            asymmetric: Queries come from another encoder (allowed: no query-query
                similarity is used).
            initial: A first-stage ``(scores, indices)`` :math:`(Q, K)` to re-rank instead of
                the global kNN; the output is padded with -1 beyond :math:`K`.

        Returns:
            ``(scores, indices)`` :math:`(Q, k)`, best first.
        """
        self._check_fitted()
        if asymmetric and queries is None:
            raise ValueError("asymmetric=True needs explicit queries, got queries=None")
        scores, indices, logits, k = self._shortlist_logits(queries, k, local, positions, initial)
        out = rerank_shortlist(scores, indices, logits, self.lambda_value, self.gamma)
        s, i = out.scores[:, :k], out.indices[:, :k]
        if s.shape[1] < k:
            pad = k - s.shape[1]
            s = torch.cat([s, s.new_full((s.shape[0], pad), float("-inf"))], dim=1)
            i = torch.cat([i, i.new_full((i.shape[0], pad), -1)], dim=1)
        return RerankResult(s, i)

    def _check_initial(self, initial, num_queries: int) -> RerankResult:
        scores, indices = super()._check_initial(initial, num_queries)
        if bool(torch.isnan(scores).any()):
            raise ValueError("initial scores contain NaN; give finite scores (or -inf at padding)")
        if indices.shape[1] > 1:
            srt = indices.sort(dim=1).values
            dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
            if bool(dup.any()):
                row = int(dup.any(1).nonzero()[0])
                raise ValueError(
                    f"initial indices list a database item twice in row {row}; each ranked "
                    "list must hold distinct items (-1 for padding)"
                )
        return RerankResult(scores, indices)

    def _rerank(self, queries, k, initial=None):  # pragma: no cover - rerank is overridden
        raise NotImplementedError

    def fit_rerank(self, database, queries=None, k=100, **kwargs):
        """``fit(database, local=..., positions=...).rerank(queries, k, ...)``; the database's
        ``local`` / ``positions`` are given as ``database_local`` / ``database_positions``."""
        fit_kw = {"local": kwargs.pop("database_local", None)}
        if "database_positions" in kwargs:
            fit_kw["positions"] = kwargs.pop("database_positions")
        return self.fit(database, **fit_kw).rerank(queries, k, **kwargs)

    def tune_fusion(
        self,
        labels: TensorLike,
        queries: TensorLike | None = None,
        *,
        local: TensorLike | None = None,
        positions: TensorLike | None = None,
        query_labels: TensorLike | None = None,
        lambdas: Sequence[float] = LAMBDAS,
        gammas: Sequence[float] = GAMMAS,
    ) -> FusionResult:
        r"""Choose :math:`(\lambda, \gamma)` on a labelled validation split, in one call.

        Fit the re-ranker on the validation database first; the logits of the shortlist are
        computed once, every pair of the grid is scored with the class mAP of the full ranking
        (:func:`~graphrerank.models.tune_fusion`; leave-one-out when ``queries`` is ``None``),
        and the best pair is stored in ``lambda_value`` and ``gamma``.

        Args:
            labels: :math:`(N,)` classes of the fitted database.
            queries: Validation queries :math:`(Q, D_g)` or ``None`` (all-vs-all).
            local: As in :meth:`rerank`.
            positions: As in :meth:`rerank`.
            query_labels: :math:`(Q,)` classes of the queries (needed with ``queries``).
            lambdas: Grid of :math:`\lambda`.
            gammas: Grid of :math:`\gamma`.

        Returns:
            :class:`~graphrerank.models.FusionResult`.
        """
        self._check_fitted()
        n = self.n_database_
        labels = as_tensor(labels, "labels").to(self.device_)
        if queries is not None and query_labels is None:
            raise ValueError("tune_fusion with explicit queries needs query_labels")
        if query_labels is not None:
            query_labels = as_tensor(query_labels, "query_labels").to(self.device_)
        scores, indices, logits, _ = self._shortlist_logits(queries, n, local, positions, None)
        best = tune_fusion(
            scores,
            indices,
            logits,
            labels,
            query_labels,
            leave_one_out=queries is None,
            lambdas=lambdas,
            gammas=gammas,
        )
        self.lambda_value, self.gamma = best.lambda_value, best.gamma
        return best

    # ------------------------------------------------------------------ R-DiP hook
    def score_candidates(self, rows: Tensor, candidates: Tensor, scores: Tensor) -> Tensor:
        """Fused scores of database items ``rows`` (as queries, with their stored local
        descriptors) against their candidates: the edge re-scorer of
        :func:`~graphrerank.graph.knn_graph` (R-DiP). An item met among its own candidates is
        scored alone."""
        self._check_fitted()
        loc = self.local_
        q = StoredLocal(loc.data[rows], loc.storage, loc.dim)
        pos = None if self.positions_ is None else self.positions_[rows]
        logits = score_shortlist(
            self.model,
            q,
            loc,
            candidates,
            mode=self._resolved_mode(),
            window=self.window,
            stride=self.stride,
            batch_size=self.batch_size,
            query_positions=pos,
            database_positions=self.positions_,
            query_global=self.database_[rows],
            database_global=self.database_,
            own_index=rows,
            similarity=self.similarity,
            database_encoded=self._database_encoded(),
        )
        from ..models.fusion import fuse_scores

        fused = fuse_scores(scores.to(logits.dtype), logits, self.lambda_value, self.gamma)
        return fused.masked_fill(candidates < 0, float("-inf")).to(scores.dtype)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Save the settings, the model's weights and the fitted database (global descriptors
        and stored local descriptors) to one ``.npz`` file, atomically, with a checksum and
        without pickle."""
        self._check_fitted()
        settings = {k: v for k, v in self.get_params().items() if k not in ("model", "whitening")}
        arrays = {
            "database": self.database_.detach().cpu().numpy(),
            "local": self.local_.data.detach().cpu().numpy(),
        }
        if self.positions_ is not None:
            arrays["positions"] = self.positions_.detach().cpu().numpy()
        meta: dict[str, Any] = {
            "format": FORMAT,
            "version": _VERSION,
            "settings": settings,
            "local_storage": self.local_.storage,
            "local_dim": self.local_.dim,
            "model": None,
        }
        if self.model is not None:
            config = dict(self.model.config)
            if self.model.whitening is not None:
                config["whitening"] = self.model._whitening_config()
            meta["model"] = {"config": config, "metadata": self.model.metadata}
            for key, v in self.model.state_dict().items():
                arrays[f"model.{key}"] = v.detach().cpu().numpy()
        meta["whitening"] = None
        if self.whitening is not None:
            w = self.whitening
            meta["whitening"] = dict(
                dim=w.dim, center=w.center, whiten=w.whiten, shrinkage=w.shrinkage,
                power=w.power, l2=w.l2,
            )  # fmt: skip
            for key, v in w.state_dict().items():
                arrays[f"whitening.{key}"] = v.detach().cpu().numpy()
        return save_arrays(path, arrays, meta)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        database: TensorLike | None = None,
        *,
        device: str | torch.device | None = None,
        **settings: Any,
    ) -> LocalDescriptorReranker:
        """Read a re-ranker written by :meth:`save`, fitted and ready, on ``device`` (default:
        the CPU, or ``database``'s device).

        The file holds its database (global and local descriptors); a ``database`` given is
        checked against it. ``settings`` override stored settings (e.g. ``top_m``,
        ``lambda_value``).

        Raises:
            FileNotFoundError: no file at ``path``.
            CorruptFileError: another format, a newer version, a failed checksum or
                inconsistent contents.
            ValueError: ``database`` differs from the stored one.
        """
        if device is None:
            device = "cpu" if database is None else as_tensor(database, "database").device
        arrays, meta = load_arrays(path, format=FORMAT, version=_VERSION)
        where = repr(str(path))

        def tensor(name):
            if name not in arrays:
                raise CorruptFileError(f"{where} lacks the array {name!r}")
            return torch.from_numpy(np.ascontiguousarray(arrays[name])).to(device)

        model = None
        if meta.get("model") is not None:
            config = dict(meta["model"].get("config") or {})
            try:
                model = LocalMatcher.from_config(config)
            except (KeyError, TypeError, ValueError) as err:
                raise CorruptFileError(
                    f"{where} has an invalid model configuration: {err}"
                ) from None
            state = {k[6:]: tensor(k) for k in arrays if k.startswith("model.")}
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                raise CorruptFileError(f"{where} does not match its model: {err}") from None
            model.metadata = dict(meta["model"].get("metadata") or {})
            model = model.to(device)
        whitening = None
        if meta.get("whitening") is not None:
            try:
                whitening = PCAWhitening(**meta["whitening"])
                whitening.load_state_dict(
                    {k[10:]: tensor(k) for k in arrays if k.startswith("whitening.")}
                )
            except (KeyError, TypeError, ValueError, RuntimeError) as err:
                raise CorruptFileError(f"{where} has an invalid whitening: {err}") from None
            whitening = whitening.to(device)
        try:
            r = cls(model=model, whitening=whitening, **{**meta["settings"], **settings})
            r.validate_params()
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFileError(f"{where} has invalid settings: {err}") from None
        db = tensor("database")
        if database is not None:
            given = check_features(database, "database").to(db.device)
            if given.shape != db.shape or not torch.equal(given.to(db.dtype), db):
                raise ValueError(f"database differs from the one stored in {where}")
        stored = StoredLocal(tensor("local"), meta.get("local_storage"), meta.get("local_dim"))
        if stored.storage not in STORAGES or stored.data.shape[0] != db.shape[0]:
            raise CorruptFileError(f"{where} has inconsistent local descriptors")
        r.database_ = db
        r.index_ = KNNIndex(metric=r.metric, backend=r.backend).add(db)
        r.local_ = stored
        r.positions_ = tensor("positions") if "positions" in arrays else None
        return r


def local_descriptor_rerank(
    queries: TensorLike | None,
    database: TensorLike,
    k: int = 100,
    *,
    local: TensorLike | None = None,
    database_local: TensorLike,
    positions: TensorLike | None = None,
    database_positions: TensorLike | None = None,
    initial: RerankResult | tuple[Tensor, Tensor] | None = None,
    **settings: Any,
) -> RerankResult:
    r"""One-shot :class:`LocalDescriptorReranker`:
    ``LocalDescriptorReranker(**settings).fit(database, local=database_local).rerank(queries,
    k, local=local)``.

    Args:
        queries: :math:`(Q, D_g)` global descriptors, or ``None`` (all-vs-all).
        database: :math:`(N, D_g)` global descriptors.
        k: Length of each ranked list.
        local: :math:`(Q, L_q, D)` local descriptors of the queries.
        database_local: :math:`(N, L_d, D)` local descriptors of the database.
        positions: :math:`(Q, L_q, 2)` query descriptor positions (optional).
        database_positions: :math:`(N, L_d, 2)` database descriptor positions (optional).
        initial: Optional first-stage ranking to re-rank.
        **settings: Settings of :class:`LocalDescriptorReranker` (``model``, ``top_m``, ...).

    Returns:
        ``(scores, indices)`` :math:`(Q, k)`.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
        >>> local = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.1]]])
        >>> knn = local_descriptor_rerank(x[:1], x, 3, local=local[:1], database_local=local,
        ...                               lambda_value=1.0)  # the global ranking
        >>> knn.indices
        tensor([[0, 1, 2]])
        >>> local_descriptor_rerank(x[:1], x, 3, local=local[:1], database_local=local,
        ...                         lambda_value=0.0).indices  # by chamfer matching alone
        tensor([[0, 2, 1]])
    """
    r = LocalDescriptorReranker(**settings).fit(
        database, local=database_local, positions=database_positions
    )
    return r.rerank(queries, k, local=local, positions=positions, initial=initial)
