r"""Online diffusion re-rankers (Iscen et al., CVPR 2017): global and regional descriptors,
optional early truncation."""

from __future__ import annotations

from typing import Any, Literal, Self

import torch
from torch import Tensor

from .._checks import as_tensor, check_features, check_same_device
from .._params import Int, OneOf, Real, setting
from ..diffusion import (
    diffuse,
    diffusion_operator,
    gmp_weights,
    query_entries,
    query_vector,
    truncated_diffuse,
)
from ..graph import ScoreMatrix, to_torch_csr, top_k_with_ties
from ..typing import (
    ITERATES,
    Iterate,
    RerankResult,
    TensorLike,
)
from ._multivector import MultiVectorReranker, RegionalQueries

__all__ = [
    "Diffusion",
    "RegionalDiffusion",
    "diffusion_rerank",
    "regional_diffusion_rerank",
]

_BLOCK_BYTES = 64 * 2**20


class Diffusion(MultiVectorReranker):
    r"""Online diffusion from `"Efficient Diffusion on Region Manifolds: Recovering Small
    Objects with Compact CNN Representations" <https://arxiv.org/abs/1611.05113>`_ (Iscen,
    Tolias, Avrithis, Furon and Chum, CVPR 2017).

    Offline, the database graph: each item's :math:`k_d` nearest items *including itself*,
    negative similarities clamped, weights :math:`s^\gamma`, only mutual edges, zero diagonal,
    symmetric normalisation (isolated items get :math:`d^{-1/2} = 0`). Online, each query's
    :math:`k_q` best similarities form :math:`\mathbf{y}` (:func:`~graphrerank.diffusion.query_vector`;
    the query is *not* added to the graph, so new queries need no graph change) and

    .. math::
        (\mathbf{I} - \alpha\mathbf{S})\,\mathbf{f} = \mathbf{y}, \qquad
        \mathbf{S} = \mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2},
        \quad \mathbf{A}_{ij} = \max(\mathbf{x}_i^\top\mathbf{x}_j, 0)^{\gamma}
        \ [i, j \text{ mutual neighbours}],

    is solved by conjugate gradients from :math:`\mathbf{f}_0 = 0`, all queries of a batch in one
    multi-right-hand-side call (one sparse-times-block product per iteration). Items are ranked
    by :math:`\mathbf{f}`. The defaults are the reference code's; with them CG stops at 20
    iterations before converging (:math:`\alpha = 0.99`), which defines the reference rankings,
    and returns the iterate of lowest residual as MATLAB's ``pcg`` does (``iterate="best"``).

    **Ties.** Items the diffusion does not reach (other connected components; Corel-1k's mutual
    graph has several) score exactly 0. With ``ties="similarity"`` (default) equal scores are
    ordered by the first-stage similarity :math:`\mathbf{q}^\top\mathbf{x}_j`; ``ties="index"``
    orders them by database index, as MATLAB's stable ``sort`` does (use it to reproduce the
    reference numbers digit for digit).

    **Reference numbers.** All-vs-all (``fit(x).rerank(None)``, leave-one-out mAP) this gives
    93.87 on Corel-1k and 84.19 on the digits set; with ``ties="index"`` 93.64 / 84.19, where
    Iscen et al.'s MATLAB code gives 93.65 / 84.19 (``tests/rerankers/test_diffusion_real.py``).

    **Strict leave-one-out** (``rerank(None, k, leave_one_out="strict")``) refits on the other
    :math:`N - 1` items for each item (:attr:`strict_leave_one_out` ``"refit"``): removing a
    node changes its neighbours' kNN lists and the normalisation :math:`\mathbf{D}^{-1/2}`, so
    masking the query in the all-vs-all graph would only approximate it.
    ``kd="auto"`` takes :func:`~graphrerank.rerankers.checks.auto_neighbours` of the database
    size.

    **Early truncation** (``truncation`` :math:`N_t`): each query diffuses only over its top
    :math:`N_t` items by first-stage similarity, on the sub-affinity :math:`\mathbf{A}[\mathcal{T},
    \mathcal{T}]` *re-normalised* on its own; as in the reference, which scatters the solution
    into zeros, the other items score 0 and follow the tie rule (after the sub-graph's
    positive scores: by first-stage similarity, or by index with ``ties="index"``), so a list
    longer than :math:`N_t` is still ranked with finite scores. A batch of queries is one
    block-diagonal system and one CG call (:func:`~graphrerank.diffusion.truncated_diffuse`).

    **Regional queries.** ``rerank`` also takes several vectors per query: a :math:`(Q, R, D)`
    tensor with an optional boolean ``query_mask`` :math:`(Q, R)`, or a list of :math:`(R_q, D)`
    tensors. Their similarities are summed per database item before the top :math:`k_q` are
    kept; the first-stage similarity (for ties and truncation) is that of the summed query
    vectors. For several vectors per *database* image see :class:`RegionalDiffusion`.

    Args:
        kd: :math:`k_d`, neighbours per item in the graph, the item itself included (reference
            50; ``k`` in earlier releases).
        kq: :math:`k_q`, non-zeros of :math:`\mathbf{y}` (reference 10).
        alpha: :math:`\alpha \in [0, 1)` (reference 0.99).
        gamma: :math:`\gamma`, similarity exponent of graph and query weights (reference 3).
        tol: CG relative residual tolerance (reference 1e-6).
        max_iter: CG iteration cap (reference 20). A large cap with a small ``tol`` gives the
            exact solve.
        iterate: ``"best"`` (lowest-residual iterate, MATLAB ``pcg``, reproduces the reference)
            or ``"last"`` (SciPy ``cg``).
        truncation: :math:`N_t` for early truncation, or ``None`` (reference: ``None`` except
            10000 for regional Oxford105k/Paris106k).
        symmetrize: ``"mutual"`` (reference), ``"min"``, ``"union"`` or ``"max"`` (see
            :func:`~graphrerank.graph.symmetrize`).
        ties: ``"similarity"`` or ``"index"``, the order of equal scores.
        batch_size: Queries per CG call (memory grows as :math:`N \times` ``batch_size``);
            ``None`` picks it: blocks of :math:`\mathbf{Y}` of at most :math:`2^{24}` entries,
            and on a CPU about :math:`2^{20}` (at least 8 queries), which keeps the block in
            cache during the sparse products.
        backend: kNN backend, ``"auto"``, ``"faiss"`` or ``"torch"``.
        progress: Progress of long re-rankings: ``None`` (a bar on a terminal, once a step
            runs longer than a second), ``True`` / ``False``, or a callback
            ``callback(done, total)``.

    Shapes:
        - **fit:** database :math:`(N, D)`, L2-normalised
        - **rerank:** queries :math:`(Q, D)`, :math:`(Q, R, D)` or a list, or ``None``
          (all-vs-all) :math:`\to` scores, indices :math:`(Q, k)`

    Raises:
        ValueError: bad settings (at :meth:`fit`), descriptors not L2-normalised, ``kd`` or
            ``kq`` larger than the database.

    Example:
        >>> from graphrerank.rerankers import KNN
        >>> t = torch.linspace(0, 1.35, 10)  # ten points along an arc (a manifold) ...
        >>> arc = torch.stack([t.cos(), t.sin(), torch.zeros(10)], 1)
        >>> off = torch.tensor([[0.95, 0.0, 0.3], [0.93, 0.0, 0.36]])  # ... and two off it
        >>> x = torch.nn.functional.normalize(torch.cat([arc, off]), dim=1)
        >>> KNN(backend="torch").fit(x).rerank(x[:1], k=6).indices  # cosine: 10, 11 are close
        tensor([[ 0,  1,  2, 10, 11,  3]])
        >>> Diffusion(kd=3, kq=2, backend="torch").fit(x).rerank(x[:1], k=6).indices
        tensor([[1, 2, 3, 0, 4, 5]])

    See Also:
        :func:`diffusion_rerank`, :class:`RegionalDiffusion`,
        :class:`~graphrerank.nn.DiffusionPropagation`.
    """

    accepts_scores = True

    tol: float = setting(1e-6, Real(0))
    max_iter: int = setting(20, Int(0))
    iterate: Iterate = setting("best", OneOf(ITERATES))
    truncation: int | None = setting(None, Int(1) | None)

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"kd": 8, "kq": 4, "backend": "torch"}

    # ------------------------------------------------------------------ fit
    def _fit(self, database: Tensor) -> None:
        graph, normalized = self._database_graph(database)
        self.affinity_ = to_torch_csr(graph)
        if self.truncation is None:
            self.operator_ = diffusion_operator(normalized, float(self.alpha))
        self._fit_images(database)

    def _fit_images(self, database: Tensor) -> None:
        """One image per vector; the first-stage image descriptors are the vectors."""
        self.pooled_ = database

    def _pool(self, f: Tensor) -> Tensor:
        return f

    # ------------------------------------------------------------------ rerank
    def _search(self, qv: Tensor, qid: Tensor, nq: int, k: int) -> RerankResult:
        """Rank for query vectors ``qv`` :math:`(M, D)` of queries ``qid`` (sorted, 0..nq-1)."""
        if self.truncation is None:
            nodes = self.database_.shape[0]
        else:
            # the sub-graph edges dominate: about width * k per query, in several arrays
            width = min(int(self.truncation), self.pooled_.shape[0])
            width *= max(1, -(-self.database_.shape[0] // self.pooled_.shape[0]))
            nodes = 4 * width * int(self.kd)
        scores, indices = [], []
        batches = self._batches(qv, qid, nq, nodes, cache_bound=self.truncation is None)
        with self._progress_bar(nq, type(self).__name__) as bar:
            for qv_b, qid_b, _, nb in batches:
                if self.truncation is None:
                    s, i = self._search_full(qv_b, qid_b, nb, k)
                else:
                    s, i = self._search_truncated(qv_b, qid_b, nb, k)
                scores.append(s)
                indices.append(i)
                bar.update(nb)
        return RerankResult(torch.cat(scores), torch.cat(indices))

    def _first_stage(self) -> Tensor:
        return self.pooled_

    def _search_full(self, qv: Tensor, qid: Tensor, nb: int, k: int) -> tuple[Tensor, Tensor]:
        db = self.database_
        n = db.shape[0]
        s, i = self._knn(qv, db, min(self.kq, n))
        y = query_vector(
            s.to(db.dtype),
            i,
            n,
            kq=self.kq,
            gamma=float(self.gamma),
            query_index=qid,
            num_queries=nb,
        )
        f = diffuse(
            self.operator_, y, tol=self.tol, max_iter=self.max_iter, iterate=self.iterate
        ).solution
        scores = self._pool(f).t()
        return top_k_with_ties(scores, k, self._secondary(self._summed_queries(qv, qid, nb)))

    # ------------------------------------------------------------------ early truncation
    def _subsets(self, top: Tensor) -> tuple[Tensor, Tensor]:
        """Region subsets of the selected images ``top`` :math:`(B, T)`: the node subsets
        :math:`(B, T')` (``-1`` padding) and the position in ``top`` of each node's image."""
        pos = torch.arange(top.shape[1], device=top.device).expand_as(top)
        return top, pos

    def _sub_query_vector(
        self, qv: Tensor, qid: Tensor, nb: int, sub: Tensor, top_scores: Tensor
    ) -> Tensor:
        """:math:`\\mathbf{y}` on the subsets, :math:`(T', B)` (MATLAB ``ymake`` on ``sub``)."""
        db = self.database_
        t = sub.shape[1]
        kq = min(self.kq, t)
        if qv.shape[0] == nb and self.pooled_ is db:
            # one vector per query and one per image: the subset is the query's top-T list,
            # so its top kq are the first kq
            y = torch.zeros(t, nb, dtype=db.dtype, device=db.device)
            y[:kq] = _clamped_power(top_scores[:, :kq], float(self.gamma)).t()
            return y
        # general case: the kNN of every query vector within its query's subset
        d = db.shape[1]
        per = max(1, _BLOCK_BYTES // max(1, t * d * db.element_size()))
        all_s, all_i = [], []
        for lo in range(0, qv.shape[0], per):
            q = qv[lo : lo + per]
            b = qid[lo : lo + per]
            nodes = sub[b]
            vec = db[nodes.clamp(min=0)]
            sims = torch.bmm(vec, q[:, :, None])[:, :, 0].masked_fill(nodes < 0, float("-inf"))
            s, j = sims.topk(kq, dim=1)
            j = torch.where(torch.isfinite(s), j + b[:, None] * t, -1)
            all_s.append(s.masked_fill(~torch.isfinite(s), 0))
            all_i.append(j)
        q, node, value = query_entries(
            torch.cat(all_s),
            torch.cat(all_i),
            nb * t,
            kq=kq,
            gamma=float(self.gamma),
            query_index=qid,
            num_queries=nb,
        )  # nodes numbered b * T' + position in subset b
        y = torch.zeros(t, nb, dtype=db.dtype, device=db.device)
        y[node - q * t, q] = value.to(db.dtype)
        return y

    def _search_truncated(self, qv: Tensor, qid: Tensor, nb: int, k: int) -> tuple[Tensor, Tensor]:
        n_img = self.pooled_.shape[0]
        t = min(int(self.truncation), n_img)
        qsum = self._summed_queries(qv, qid, nb)
        top_s, top_i = self._knn(qsum, self.pooled_, max(t, k))
        top = top_i[:, :t]
        sub, img_pos = self._subsets(top)
        y = self._sub_query_vector(qv, qid, nb, sub, top_s)
        f = truncated_diffuse(
            self.affinity_,
            sub,
            y.to(self.affinity_.dtype),
            alpha=float(self.alpha),
            tol=self.tol,
            max_iter=self.max_iter,
            iterate=self.iterate,
        ).solution.t()  # (B, T')
        scores = self._pool_subsets(f, sub, img_pos, t)
        if self.ties == "index":
            sec = (-top).to(torch.float64)
        else:
            sec = top_s[:, :t]
        if k <= t:
            vals, pos = top_k_with_ties(scores, k, lambda rows: sec[rows])
            return vals, top.gather(1, pos)
        # k > t: the reference scatters the sub-graph's solution into a vector of zeros and
        # ranks every image, so the images outside the sub-graph score 0 and follow the tie
        # rule among themselves (and with the sub-graph's zeros): first-stage similarity,
        # i.e. the first-stage list after the sub-graph, or the lowest database indices
        b = top.shape[0]
        if self.ties == "index":
            extra = torch.arange(min(n_img, k + t), device=top.device).expand(b, -1)
            stop = top.sort(dim=1).values
            at = torch.searchsorted(stop, extra.contiguous()).clamp_(max=t - 1)
            in_top = stop.gather(1, at) == extra  # already in the sub-graph
            cand = torch.cat([top, extra], 1)
            zeros = torch.zeros(extra.shape, dtype=scores.dtype, device=scores.device)
            full = torch.cat([scores, zeros.masked_fill_(in_top, float("-inf"))], 1)
            sec = (-cand).to(torch.float64)
        else:
            cand = top_i[:, :k]
            zeros = torch.zeros(b, k - t, dtype=scores.dtype, device=scores.device)
            full = torch.cat([scores, zeros], 1)
            sec = top_s[:, :k]
        vals, pos = top_k_with_ties(full, k, lambda rows: sec[rows])
        return vals, cand.gather(1, pos)

    def _pool_subsets(self, f: Tensor, sub: Tensor, img_pos: Tensor, t: int) -> Tensor:
        return f


def _clamped_power(scores: Tensor, gamma: float) -> Tensor:
    """:math:`\\max(s, 0)^\\gamma` (``gamma=0``: 1 for positive scores)."""
    if gamma == 0:
        return (scores > 0).to(scores.dtype)
    return scores.clamp(min=0).pow(gamma)


class RegionalDiffusion(Diffusion):
    r"""Online diffusion over *regional* descriptors (several vectors per database image), from
    `"Efficient Diffusion on Region Manifolds" <https://arxiv.org/abs/1611.05113>`_ (Iscen et al.,
    CVPR 2017).

    The graph and the diffusion run over all :math:`M` region vectors exactly as in
    :class:`Diffusion` (the query's regions are summed per database region, top :math:`k_q`,
    power :math:`\gamma`); the score of image :math:`i` then pools its regions' scores

    .. math::
        F_i = \sum_{r \in i} c_r f_r,

    with :math:`c_r = 1` (``pooling="sum"``) or the generalized max pooling weights of the image's
    regions (``pooling="gmp"``, the reference; :func:`~graphrerank.diffusion.gmp_weights`,
    :math:`\lambda` = ``gmp_lambda``). The first-stage image similarity (ties, truncation) is
    that of the summed query vectors with the pooled image descriptor
    :math:`\sum_{r \in i} c_r \mathbf{v}_r`; the reference selects its truncation sub-graph with
    separate global descriptors instead. With early truncation, a query's sub-graph is all
    regions of its top :math:`N_t` images.

    ``fit(database, image_ids)`` takes the :math:`(M, D)` region vectors and the image of each
    (``image_ids=None``: one vector per image). Results index images; ``rerank(None)`` makes
    every database image a query with its own regions.

    Args:
        kd: Neighbours per region in the graph, itself included (reference 200 for regions;
            ``k`` in earlier releases).
        kq: Non-zeros of :math:`\mathbf{y}` (reference 200 for regions).
        pooling: ``"gmp"`` (reference) or ``"sum"``.
        gmp_lambda: :math:`\lambda` of generalized max pooling (reference 1).
        progress: As in :class:`Diffusion`.
        alpha, gamma, tol, max_iter, iterate, truncation, symmetrize, ties, batch_size, backend:
            As in :class:`Diffusion`.

    Shapes:
        - **fit:** database :math:`(M, D)` region vectors, ``image_ids`` :math:`(M,)` in
          :math:`[0, N)`, every image with at least one region
        - **rerank:** queries :math:`(Q, D)`, :math:`(Q, R, D)` (+ ``query_mask``), a list of
          :math:`(R_q, D)`, or ``None`` :math:`\to` scores, image indices :math:`(Q, k)`

    Raises:
        ValueError: as :class:`Diffusion`; bad ``image_ids`` (shape, range, images without
            regions).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> ids = torch.arange(60) // 3  # 20 images of 3 regions each
        >>> regions = torch.randn(20, 8, generator=g)[ids] + 0.5 * torch.randn(60, 8, generator=g)
        >>> regions = torch.nn.functional.normalize(regions, dim=1)
        >>> r = RegionalDiffusion(kd=6, kq=6, backend="torch").fit(regions, image_ids=ids)
        >>> r.n_database_
        20
        >>> r.rerank(regions[None, :3], k=3).indices  # image 0's regions as one query
        tensor([[ 0,  3, 14]])
    """

    accepts_scores = False

    kd: int = setting(200, Int(1))
    kq: int = setting(200, Int(1))
    pooling: Literal["gmp", "sum"] = setting("gmp", OneOf(("gmp", "sum")))
    gmp_lambda: float = setting(1.0, Real(0, low_open=True))

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"kd": 8, "kq": 4, "backend": "torch"}

    def fit(self, database: TensorLike, /, image_ids: TensorLike | None = None) -> Self:
        """Fit on region vectors :math:`(M, D)` with the image of each, ``image_ids``
        :math:`(M,)` (``None``: one vector per image); returns ``self``."""
        self.validate_params()
        if isinstance(database, ScoreMatrix):
            raise TypeError(
                "RegionalDiffusion needs region vectors (it pools region scores per image), not "
                "a ScoreMatrix; Diffusion takes an image x image score matrix"
            )
        db = check_features(database, "database", detach=True)
        for attr in self._fitted_attributes():
            delattr(self, attr)
        self._prepare_fit(int(db.shape[0]))
        m = db.shape[0]
        if image_ids is None:
            ids = torch.arange(m, device=db.device)
        else:
            ids = as_tensor(image_ids, "image_ids")
            if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
                raise TypeError(f"image_ids must hold integers, got {ids.dtype}")
            if ids.shape != (m,):
                raise ValueError(
                    f"image_ids must have shape ({m},), one image per database vector, got "
                    f"{tuple(ids.shape)}"
                )
            check_same_device(database=db, image_ids=ids)
            ids = ids.long()
            if bool((ids < 0).any()):
                raise ValueError(f"image_ids must be >= 0, got {int(ids.min())}")
            n = int(ids.max()) + 1
            missing = (torch.bincount(ids, minlength=n) == 0).nonzero().flatten()
            if missing.numel():
                raise ValueError(
                    f"image_ids must number the images 0..N-1 with at least one vector each; "
                    f"image {int(missing[0])} has none"
                )
        self.database_ = db
        self.image_ids_ = ids
        self._fit(db)
        self._after_fit(m, ids)
        return self

    def _strict_split(self, i: int) -> tuple[tuple, dict, Any]:
        """Strict leave-one-out refits without image ``i``'s regions; its regions query."""
        ids = self.image_ids_
        mine = ids == i
        rest = ids[~mine]
        return (
            (self.database_[~mine],),
            {"image_ids": rest - (rest > i).long()},
            [self.database_[mine]],
        )

    @property
    def n_database_(self) -> int:
        """Number of database images (after :meth:`fit`)."""
        self._check_fitted()
        return int(self.num_images_)

    def _fit_images(self, database: Tensor) -> None:
        ids = self.image_ids_
        self.num_images_ = int(ids.max()) + 1
        if self.pooling == "gmp":
            self.weights_ = gmp_weights(database, ids, lam=float(self.gmp_lambda))
        else:
            self.weights_ = torch.ones(ids.numel(), dtype=database.dtype, device=database.device)
        self.pooled_ = torch.zeros(
            self.num_images_, database.shape[1], dtype=database.dtype, device=database.device
        ).index_add_(0, ids, database * self.weights_[:, None])
        self.region_order_ = ids.argsort(stable=True)
        counts = torch.bincount(ids, minlength=self.num_images_)
        self.region_ptr_ = torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    def _pool(self, f: Tensor) -> Tensor:
        out = torch.zeros(self.num_images_, f.shape[1], dtype=f.dtype, device=f.device)
        return out.index_add_(0, self.image_ids_, f * self.weights_[:, None])

    def _all_queries(self) -> tuple[Tensor, Tensor, int]:
        order = self.region_order_
        return self.database_[order], self.image_ids_[order], self.num_images_

    def _subsets(self, top: Tensor) -> tuple[Tensor, Tensor]:
        nb, t = top.shape
        start = self.region_ptr_[top]
        count = self.region_ptr_[top + 1] - start
        per_query = count.sum(1)
        width = int(per_query.max())
        flat_count = count.reshape(-1)
        slot = torch.repeat_interleave(torch.arange(nb * t, device=top.device), flat_count)
        offset = torch.arange(slot.numel(), device=top.device) - torch.repeat_interleave(
            flat_count.cumsum(0) - flat_count, flat_count
        )
        region = self.region_order_[start.reshape(-1)[slot] + offset]
        qb = torch.div(slot, t, rounding_mode="floor")
        col = torch.arange(slot.numel(), device=top.device) - (per_query.cumsum(0) - per_query)[qb]
        sub = torch.full((nb, width), -1, dtype=torch.long, device=top.device)
        pos = torch.zeros(nb, width, dtype=torch.long, device=top.device)
        sub[qb, col] = region
        pos[qb, col] = slot - qb * t
        return sub, pos

    def _pool_subsets(self, f: Tensor, sub: Tensor, img_pos: Tensor, t: int) -> Tensor:
        w = torch.where(sub >= 0, self.weights_[sub.clamp(min=0)], 0)
        out = torch.zeros(f.shape[0], t, dtype=f.dtype, device=f.device)
        return out.scatter_add_(1, img_pos, f * w)


def _settings(settings: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    settings = dict(settings)
    query_mask = settings.pop("query_mask", None)
    return settings, query_mask


def diffusion_rerank(
    queries: RegionalQueries | None,
    database: TensorLike,
    k: int = 100,
    **settings: Any,
) -> RerankResult:
    r"""Online diffusion re-ranking in one call:
    ``Diffusion(**settings).fit(database).rerank(queries, k)``.

    See :class:`Diffusion` for the method, the settings and their reference defaults. ``k`` is
    the length of the ranked lists and ``kd`` the graph's neighbour count (``num_neighbors`` in
    earlier releases); ``query_mask`` goes to ``rerank``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.normalize(torch.randn(30, 4, generator=g), dim=1)
        >>> out = diffusion_rerank(x[:2], x, k=4, kd=5, kq=3, backend="torch")
        >>> torch.equal(out.indices, Diffusion(kd=5, kq=3, backend="torch").fit(x).rerank(x[:2], 4).indices)
        True
    """
    settings, query_mask = _settings(settings)
    return Diffusion(**settings).fit(database).rerank(queries, k, query_mask=query_mask)


def regional_diffusion_rerank(
    queries: RegionalQueries | None,
    database: TensorLike,
    image_ids: TensorLike | None = None,
    k: int = 100,
    **settings: Any,
) -> RerankResult:
    r"""Regional online diffusion in one call:
    ``RegionalDiffusion(**settings).fit(database, image_ids).rerank(queries, k)``.

    See :class:`RegionalDiffusion`; as in :func:`diffusion_rerank`, ``k`` is the length of the
    ranked lists and ``kd`` the graph's neighbour count.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> regions = torch.nn.functional.normalize(torch.randn(60, 4, generator=g), dim=1)
        >>> out = regional_diffusion_rerank(None, regions, torch.arange(60) // 3, k=5,
        ...                                 kd=6, kq=6, backend="torch")
        >>> out.indices.shape
        torch.Size([20, 5])
    """
    settings, query_mask = _settings(settings)
    return (
        RegionalDiffusion(**settings)
        .fit(database, image_ids=image_ids)
        .rerank(queries, k, query_mask=query_mask)
    )
