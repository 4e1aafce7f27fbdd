r"""SuperGlobal re-ranking (Shao et al., ICCV 2023): shortlist refinement of global descriptors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from .._checks import check_normalized
from .._params import PROGRESS, Int, OneOf, Real, setting
from .._progress import ProgressCallback
from ..graph import KNNIndex
from ..typing import BACKENDS, Backend, RerankResult, TensorLike
from .base import Reranker

__all__ = ["SuperGlobal", "superglobal_rerank"]


_DEFAULT_BLOCK_BYTES = 256 * 2**20
# How much of each first-stage list the all-vs-all case reads (speed only, not results).
_ALL_VS_ALL_DEPTH = 64
# Up to this many shortlists' worth of database, one product with the database beats gathering.
_GATHER_RATIO = 8
# Cost of reading one within-shortlist similarity from the product of the shortlisted items
# with each other, in multiply-adds (each query's own product costs D per similarity). Measured
# on CPU (2 threads, every query's shortlist of 400 from the 1,797 digits): the product read
# was 1.33x slower than the per-query products at D = 64 and 1.26x faster at D = 512.
_GRAM_READ_COST = 300
# Each query's own similarities are formed a block of this many rows at a time (using their
# symmetry) for descriptors of at least this dimension (_dense_neighbours).
_ROW_BLOCK = 100
_TRIANGLE_MIN_DIM = 256


class SuperGlobal(Reranker):
    r"""Re-ranking of a shortlist from `"Global Features are All You Need for Image Retrieval
    and Reranking" <https://arxiv.org/abs/2308.06954>`_ (Shao et al., ICCV 2023), as the official
    code computes it (``MDescAug`` then ``RerankwMDA``).

    For a query :math:`\mathbf{q}` with first-stage shortlist :math:`x_1, \dots, x_M` (its
    :math:`M` best database items):

    1. Database-side refinement: each shortlisted :math:`\mathbf{x}_i` is averaged with its
       :math:`K` nearest neighbours *within the shortlist*, itself first with weight 1,

       .. math::
           \tilde{\mathbf{x}}_i = \frac{\mathbf{x}_i + \beta \sum_{j \in \mathcal{N}_K(i)}
           s_{ij}\, \mathbf{x}_j}{1 + \beta \sum_{j \in \mathcal{N}_K(i)} s_{ij}},
           \qquad s_{ij} = \mathbf{x}_i^\top \mathbf{x}_j,

       not re-normalised, and scored :math:`a_i = \mathbf{q}^\top \tilde{\mathbf{x}}_i`.
       With :math:`\mathbf{P}` the row-normalised weights of this neighbour graph over the
       shortlist, :math:`\mathbf{a} = \mathbf{P}(\mathbf{X}_M \mathbf{q})`: one hop of
       message passing of the query's similarities, which is how it is computed (the
       reference forms every :math:`\tilde{\mathbf{x}}_i`, :math:`M (K + 1) D` numbers per
       query; here only the :math:`K + 1` that step 2 needs are formed).
    2. Query-side refinement: :math:`\tilde{\mathbf{q}}` is the elementwise maximum of the
       refined descriptors of the :math:`K + 1` best items by :math:`a` (the query itself is not
       included), and :math:`b_i = \tilde{\mathbf{q}}^\top \tilde{\mathbf{x}}_i`, i.e.
       :math:`\mathbf{b} = \mathbf{P}(\mathbf{X}_M \tilde{\mathbf{q}})`.
    3. The shortlist is sorted by :math:`(a_i + b_i) / 2`; items after the :math:`M`-th keep
       their first-stage order, their first-stage scores lowered by one constant where needed
       so that none exceeds the last shortlist score.

    Inductive (no database graph needed): new queries need nothing but their shortlist.
    Queries are processed in blocks (``block_bytes`` bounds the working set), with no loop over
    single queries.

    Finding each shortlisted item's :math:`K` neighbours within the shortlist is the cost; a
    call picks the cheapest of three exact ways (same results up to float ties):

    - each query's own :math:`M \times M` product (:math:`M^2 D` per query, what the
      reference computes; for :math:`D \ge 256` formed by blocks of 100 rows, each only with
      itself and the later rows, by symmetry), for few queries over a large database;
    - one product of the :math:`U` distinct shortlisted items with each other
      (:math:`U^2 D` for the whole call, :math:`U \le N`), each shortlist's entries read from
      it: chosen when :math:`U^2 D + Q M^2 c < Q M^2 D` (:math:`c \approx 300`, the measured cost of
      one read in multiply-adds), i.e. for many queries or a small database of
      high-dimensional descriptors (Corel-1k at :math:`D = 1280`, Market-1501's 3,368 x
      19,732 at 2048; not the 64-d digits);
    - the database items' own nearest-neighbour lists, where the product does not pay and
      lists are at hand: the first :math:`K` listed items that lie in the shortlist (items
      whose list holds fewer fall back to the product), in the all-vs-all case the
      first-stage lists (their first 64 entries), with ``database_neighbors=L`` lists of
      :math:`L` computed at :meth:`fit`.

    It re-ranks a given first-stage ranking (``rerank(..., initial=...)``, e.g. from an
    approximate index or an earlier stage of a :class:`~graphrerank.rerankers.Pipeline`; its
    first :math:`\min(M, m)` entries are the shortlist), else its own exact search.

    Args:
        M: Shortlist length :math:`M` (400 in the reference).
        K: Neighbours :math:`K` in both refinements (9 in the reference; :math:`K + 1` with the
            item itself), smaller than ``M``; a shortlist cut short by a small database or a
            short ``initial`` ranking uses all its items.
        beta: Weight :math:`\beta` of the neighbours in the database-side refinement (0.15),
            finite. Where negative similarities would make an item's weights sum to zero or
            less (undefined in the reference), its negatively similar neighbours weigh 0.
        database_neighbors: Length :math:`L` of the database items' nearest-neighbour lists
            computed at :meth:`fit` (``None``: none; an exact search of the database in
            itself, :math:`N^2 D`). It changes speed, not results (up to ties).
        backend: kNN backend of the first-stage search, ``"auto"``, ``"faiss"`` or ``"torch"``.
        block_bytes: Upper bound of the per-block working memory, in bytes.
        progress: Progress of long re-rankings: ``None`` (a bar on a terminal, once a step
            runs longer than a second), ``True`` / ``False``, or a callback
            ``callback(done, total)``.

    Shapes:
        - **fit:** database :math:`(N, D)`, rows L2-normalised
        - **rerank:** queries :math:`(Q, D)` or ``None``; ``initial`` :math:`(Q, m)`
          :math:`\to` scores, indices :math:`(Q, k)`

    Raises:
        ValueError: descriptors are not L2-normalised, a setting is out of range, or an
            ``initial`` ranking lists an item twice.

    Asymmetric queries are accepted: the refinements compare database items with each other
    and the query only with database items.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.normalize(torch.randn(30, 4, generator=g), dim=1)
        >>> q = torch.nn.functional.normalize(torch.randn(1, 4, generator=g), dim=1)
        >>> from graphrerank.rerankers import KNN
        >>> KNN(backend="torch").fit(x).rerank(q, k=5).indices
        tensor([[28,  7,  1, 11,  3]])
        >>> SuperGlobal(M=10, K=2, backend="torch").fit(x).rerank(q, k=5).indices
        tensor([[28,  7,  1,  3, 11]])

    See Also:
        :func:`superglobal_rerank`
    """

    accepts_initial = True

    M: int = setting(400, Int(1))
    K: int = setting(9, Int(0))
    beta: float = setting(0.15, Real(0))
    database_neighbors: int | None = setting(None, Int(1) | None)
    backend: Backend = setting("auto", OneOf(BACKENDS))
    block_bytes: int = setting(_DEFAULT_BLOCK_BYTES, Int(1))
    progress: bool | ProgressCallback | None = setting(None, PROGRESS)

    @property
    def shortlist_size(self) -> int:
        """The shortlist length :math:`M` an earlier stage should hand over."""
        return int(self.M)

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"M": 20, "K": 3}

    def _fit(self, database: Tensor) -> None:
        if isinstance(self.K, int) and isinstance(self.M, int) and self.K >= self.M:
            # K neighbours of an item within its shortlist of M items, itself excluded: at most
            # M - 1 (the reference's top-(K + 1) of an M x M matrix has no meaning beyond).
            raise ValueError(
                f"K must be smaller than M (K neighbours within a shortlist of M items), got "
                f"K={self.K} and M={self.M}"
            )
        check_normalized(database, "database", offer_option=False)
        self.index_ = KNNIndex(metric="ip", backend=self.backend).add(database)
        if self.database_neighbors is not None:
            depth = min(int(self.database_neighbors), database.shape[0])
            s, i = self.index_.search(database, depth)
            self.neighbor_lists_ = (i, s.to(database.dtype))

    # ------------------------------------------------------------------ core
    def _block_size(self, m: int, lists: tuple[Tensor, Tensor] | None) -> int:
        x = self.database_
        d, elem = x.shape[1], x.element_size()
        kk = self.K + 1
        per_query = (m + kk * kk) * d * elem + m * kk * 40
        if lists is None:
            per_query += m * m * (elem + 9)
        elif not lists:  # neighbours found beforehand
            per_query += m * kk * 12
        else:
            per_query += m * lists[0].shape[1] * 32 + 4 * (x.shape[0] + 1)
        return max(1, self.block_bytes // max(per_query, 1))

    @staticmethod
    def _dense_neighbours(xm: Tensor, valid: Tensor, kk: int) -> tuple[Tensor, Tensor]:
        r"""Each shortlisted item's ``kk`` nearest within the shortlist (itself first) from the
        :math:`B \times M \times M` similarities.

        For long descriptors the symmetric product is formed a block of rows at a time, each
        block only against itself and the later rows (the earlier columns copied, transposed,
        from the earlier blocks): :math:`(n_b + 1) / (2 n_b)` of the multiply-adds for
        :math:`n_b` blocks. Measured (2 threads, shortlists of 400, blocks of 100 against the
        whole product, neighbours included): 1.30x faster at D = 2048, 1.25x at 1280, 1.15x at
        512, 1.05x at 64 (there the copies cost about what the symmetry saves)."""
        b, m, d = xm.shape
        masked = not bool(valid.all())
        nb = m // _ROW_BLOCK if d >= _TRIANGLE_MIN_DIM else 1
        if nb < 2:
            g = torch.bmm(xm, xm.transpose(1, 2))
            if masked:
                g.masked_fill_(~valid[:, None, :], float("-inf"))
            g.diagonal(dim1=1, dim2=2).fill_(float("inf"))
            return g.topk(kk, dim=2)
        bounds = [round(i * m / nb) for i in range(nb + 1)]
        xt = xm.transpose(1, 2)
        top_s = torch.empty(b, m, kk, dtype=xm.dtype, device=xm.device)
        top_j = torch.empty(b, m, kk, dtype=torch.long, device=xm.device)
        rows: list[Tensor] = []
        for r in range(nb):
            r0, r1 = bounds[r], bounds[r + 1]
            g = torch.empty(b, r1 - r0, m, dtype=xm.dtype, device=xm.device)
            g[:, :, r0:] = torch.bmm(xm[:, r0:r1], xt[:, :, r0:])  # (out= a slice: 10x slower)
            for c in range(r):  # earlier columns: the transposed block of the earlier rows
                g[:, :, bounds[c] : bounds[c + 1]] = rows[c][:, :, r0:r1].transpose(1, 2)
            rows.append(g)
            if masked:  # later blocks read -inf in rows of padding only: never used
                g.masked_fill_(~valid[:, None, :], float("-inf"))
            g.diagonal(offset=r0, dim1=1, dim2=2).fill_(float("inf"))
            torch.topk(g, kk, dim=2, out=(top_s[:, r0:r1], top_j[:, r0:r1]))
        return top_s, top_j

    def _plan(self, rows: int, m: int, idx: Tensor, lists: tuple[Tensor, Tensor] | None) -> str:
        r"""How a call finds the within-shortlist neighbours of ``rows`` shortlists of ``m``.

        ``"gram"``: one product of the :math:`U` distinct shortlisted items with each other
        (:math:`U^2 D` multiply-adds, shared by every query), read at each shortlist;
        ``"dense"``: each query's own :math:`m \times m` product (:math:`m^2 D` per query);
        ``"lists"``: the database items' nearest-neighbour lists. The product of the distinct
        items wins when :math:`U^2 D + Q m^2 c < Q m^2 D` (:math:`c`: the cost of one read),
        i.e. for many queries or a small database.
        """
        d = self.database_.shape[1]
        u = int(_distinct(idx, self.database_.shape[0]).numel())
        per_query = rows * m * m
        if u * u * d + per_query * _GRAM_READ_COST < per_query * d:
            return "gram"
        return "dense" if lists is None else "lists"

    def _gram_neighbours(
        self, idx: Tensor, kk: int, scratch: _Scratch | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Each shortlisted item's ``kk`` nearest within its shortlist (itself first), for
        every shortlist of ``idx`` :math:`(C, m)` at once, from the similarities of the distinct
        shortlisted items with each other.

        Item-major: the (query, item) pairs are sorted by item, the product of a block of
        distinct items with all of them is formed once (one matrix product), and each pair
        reads its shortlist's entries from its item's row (into ``scratch``'s buffers, reused
        from block to block: fresh large tensors cost page faults). Returns ``(scores, positions)``
        :math:`(C, m, kk)`, positions in the shortlist, ``-inf`` / 0 where fewer exist.
        """
        x = self.database_
        dev = idx.device
        c, m = idx.shape
        n = x.shape[0]
        elem = x.element_size()
        scratch = _Scratch() if scratch is None else scratch
        flat = idx.reshape(-1)
        valid = flat >= 0
        uniq = _distinct(idx, n)  # sorted distinct items
        u = uniq.numel()
        where = torch.zeros(n + 1, dtype=torch.long, device=dev)
        where[uniq] = torch.arange(u, device=dev)
        where[n] = 0
        # Each shortlist in the distinct items' numbering (padding reads item 0, then masked).
        short = where[torch.where(valid, flat, n)].view(c, m)
        xu = x[uniq]
        top_s = torch.full((c * m, kk), float("-inf"), dtype=x.dtype, device=dev)
        top_j = torch.zeros((c * m, kk), dtype=torch.long, device=dev)
        budget = max(self.block_bytes // 2, 1)
        if (u + 1) * (u + 1) * elem <= budget:
            # Small: all the similarities at once (a sentinel row and column of -inf at u for
            # the padding), each shortlist's m x m block read in one indexing, blocks of rows.
            g = torch.empty(u + 1, u + 1, dtype=x.dtype, device=dev)
            torch.mm(xu, xu.T, out=g[:u, :u])
            g[u].fill_(float("-inf"))
            g[:, u].fill_(float("-inf"))
            short = torch.where(valid, short.view(-1), u).view(c, m)
            rb = max(1, budget // max(m * m * (elem + 8), 1))
            ts_all, tj_all = top_s.view(c, m, kk), top_j.view(c, m, kk)
            for r0 in range(0, c, rb):
                sh = short[r0 : r0 + rb]
                vals = g[sh[:, :, None], sh[:, None, :]]  # (b, m, m)
                vals.diagonal(dim1=1, dim2=2).fill_(float("inf"))
                ts, tj = vals.topk(min(kk, m), dim=2)
                ts_all[r0 : r0 + rb, :, : ts.shape[2]] = ts
                tj_all[r0 : r0 + rb, :, : tj.shape[2]] = tj
            return ts_all, tj_all
        pair = valid.nonzero().squeeze(1)
        pu = short.view(-1)[pair]
        pu, perm = pu.sort(stable=True)
        pair = pair[perm]
        rb = max(1, budget // max(u * elem, 1))
        pc = max(1, budget // max(m * 20, 1))
        bounds = torch.searchsorted(pu, torch.arange(0, u + rb, rb, device=dev)).tolist()
        qvalid = idx >= 0
        padded = not bool(qvalid.all())
        for b, r0 in enumerate(range(0, u, rb)):
            lo, hi = bounds[b], bounds[b + 1]
            if lo == hi:
                continue
            xr = xu[r0 : r0 + rb]
            g = scratch.get("gram", (xr.shape[0], u), x, x.dtype)
            torch.mm(xr, xu.T, out=g)
            g = g.view(-1)  # (rb * u,)
            for p0 in range(lo, hi, pc):
                p1 = min(hi, p0 + pc)
                pp = pair[p0:p1]
                row = (pu[p0:p1] - r0) * u
                qq = torch.div(pp, m, rounding_mode="floor")
                at = scratch.get("at", (p1 - p0, m), x, torch.long)
                torch.index_select(short, 0, qq, out=at).add_(row[:, None])
                vals = scratch.get("vals", (p1 - p0, m), x, x.dtype)
                torch.take(g, at, out=vals)  # (P, m)
                if padded:
                    vals.masked_fill_(~qvalid[qq], float("-inf"))
                vals.scatter_(1, (pp - qq * m)[:, None], float("inf"))
                ts, tj = vals.topk(min(kk, m), dim=1)
                top_s[pp, : ts.shape[1]] = ts
                top_j[pp, : tj.shape[1]] = tj
            del g
        scratch.drop("gram", "at", "vals")  # not held while the refinement runs
        return top_s.view(c, m, kk), top_j.view(c, m, kk)

    def _listed_neighbours(
        self,
        idx: Tensor,
        valid: Tensor,
        kk: int,
        lists: tuple[Tensor, Tensor],
        xm: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The same from each item's precomputed nearest-neighbour list in the database.

        Item :math:`j`'s list holds its :math:`L` nearest database items, best first; the first
        ``kk - 1`` of them that lie in the shortlist are its nearest within the shortlist as
        long as the list holds that many (any shortlisted item not listed is farther than all
        listed ones). The lists are read in two passes, the head of every list and then the
        whole list of the items the head did not settle; items whose list holds too few fall
        back to exact similarities with their shortlist, computed for those items only.
        """
        n = self.database_.shape[0]
        bsz, m = idx.shape
        dev = idx.device
        li, ls = lists
        safe = idx.clamp(min=0)
        # Position of every database item in each query's shortlist (-1: not in it).
        pos = torch.full((bsz, n + 1), -1, dtype=torch.int32, device=dev)
        ar = torch.arange(m, device=dev, dtype=torch.int32)
        pos.scatter_(1, torch.where(valid, idx, n), ar.expand(bsz, m))
        pos = pos.view(-1)
        dtype = self.database_.dtype
        top_j = torch.zeros(bsz * m, kk, dtype=torch.long, device=dev)
        top_s = torch.full((bsz * m, kk), float("-inf"), dtype=dtype, device=dev)
        top_j[:, 0] = ar.repeat(bsz)
        top_s[:, 0] = float("inf")
        need = (valid.sum(1, dtype=torch.int32) - 1).clamp(max=kk - 1)  # per query
        rows = valid.flatten().nonzero().flatten()  # (R,) flat (query, position) rows
        head = min(li.shape[1], 2 * kk + 2)
        for cols in (head, li.shape[1]) if head < li.shape[1] else (head,):
            if rows.numel() == 0:
                break
            qrow = torch.div(rows, m, rounding_mode="floor")
            item = safe.view(-1)[rows]
            cand = li[item, :cols]  # (R, cols) database ids; lists never hold -1
            p = pos[qrow[:, None] * (n + 1) + cand]  # (R, cols) positions in the shortlist
            ok = (p >= 0).logical_and_(p != (rows % m)[:, None].to(torch.int32))
            count = ok.sum(1, dtype=torch.int32)
            # The first kk - 1 usable entries go to columns 1 .. kk-1, the rest to column kk.
            dest = ok.to(torch.int16).cumsum(1, dtype=torch.int16)
            dest = dest.masked_fill_(~ok, kk).clamp_(max=kk).long()
            js = torch.zeros(rows.numel(), kk + 1, dtype=torch.long, device=dev)
            js.scatter_(1, dest, p.long())
            ss = torch.full((rows.numel(), kk + 1), float("-inf"), dtype=dtype, device=dev)
            ss.scatter_(1, dest, ls[item, :cols].to(dtype))
            top_j[rows, 1:] = js[:, 1:kk]
            top_s[rows, 1:] = ss[:, 1:kk]
            rows = rows[count < need[qrow]]  # not settled by this pass
        top_j, top_s = top_j.view(bsz, m, kk), top_s.view(bsz, m, kk)
        if rows.numel():
            short = torch.zeros(bsz * m, dtype=torch.bool, device=dev)
            short[rows] = True
            self._fill_exact(idx, xm, valid, short.view(bsz, m), top_s, top_j)
        return top_s, top_j

    def _fill_exact(
        self,
        idx: Tensor,
        xm: Tensor | None,
        valid: Tensor,
        short: Tensor,
        top_s: Tensor,
        top_j: Tensor,
    ) -> None:
        """Exact within-shortlist neighbours of the items marked ``short``, in place.

        With the shortlists' descriptors ``xm`` at hand, one product of those items with their
        query's shortlist, padded per query; without (a small database), one product of
        those items with the database, read at the shortlist.
        """
        x = self.database_
        dev = idx.device
        kk = top_s.shape[2]
        m, d, elem = idx.shape[1], x.shape[1], x.element_size()
        if xm is None:
            b, j = short.nonzero(as_tuple=True)
            chunk = max(1, self.block_bytes // max((x.shape[0] + 2 * m) * elem * 2, 1))
            for s in range(0, b.numel(), chunk):
                bb, jj = b[s : s + chunk], j[s : s + chunk]
                sl = idx[bb].clamp(min=0)
                g = (x[sl.gather(1, jj[:, None]).squeeze(1)] @ x.T).gather(1, sl)  # (c, m)
                g.masked_fill_(~valid[bb], float("-inf"))
                g[torch.arange(bb.numel(), device=dev), jj] = float("inf")
                gs, gj = g.topk(kk, dim=1)
                top_s[bb, jj] = gs
                top_j[bb, jj] = gj
            return
        qs = short.any(1).nonzero().flatten()
        cnt = short[qs].sum(1)
        fmax = int(cnt.max())
        # Positions of each query's short items first, padded to fmax.
        rows = short[qs].to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :fmax]
        real = torch.arange(fmax, device=dev)[None, :] < cnt[:, None]
        chunk = max(1, self.block_bytes // max((fmax * d + fmax * m) * elem * 2, 1))
        for s in range(0, qs.numel(), chunk):
            qb, rb = qs[s : s + chunk], rows[s : s + chunk]
            xq = xm[qb]
            xf = xq.gather(1, rb[:, :, None].expand(-1, -1, d))  # (c, fmax, D)
            g = torch.bmm(xf, xq.transpose(1, 2))  # (c, fmax, m)
            del xq, xf
            g.masked_fill_(~valid[qb][:, None, :], float("-inf"))
            g.scatter_(2, rb[:, :, None], float("inf"))
            gs, gj = g.topk(kk, dim=2)
            ok = real[s : s + chunk]
            b = qb[:, None].expand_as(rb)[ok]
            top_s[b, rb[ok]] = gs[ok]
            top_j[b, rb[ok]] = gj[ok]

    def _refine(
        self,
        q: Tensor,
        idx: Tensor,
        lists: tuple[Tensor, Tensor] | None = None,
        found: tuple[Tensor, Tensor] | None = None,
        scratch: _Scratch | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""Scores ``a`` and final scores ``(a + b) / 2`` of a shortlist block.

        ``q`` :math:`(B, D)`, ``idx`` :math:`(B, m)` database ids (``-1``: none); both outputs
        are :math:`(B, m)`, aligned with ``idx``, ``-inf`` at padding. ``lists``: the database
        items' nearest-neighbour lists ``(indices, scores)`` :math:`(N, L)`, or ``None`` for
        the exact :math:`M \times M` similarities; ``found``: the neighbours already found
        (:meth:`_gram_neighbours`), which replace both; ``scratch``: buffers reused from block
        to block (the gathered shortlist descriptors).

        With :math:`P` the row-normalised weights of the shortlist's neighbour graph,
        :math:`\tilde{\mathbf{x}}_i = \sum_j P_{ij}\mathbf{x}_j`, so
        :math:`a = P(\mathbf{X}_M\mathbf{q})` and :math:`b = P(\mathbf{X}_M\tilde{\mathbf{q}})`:
        the similarities propagate over the graph instead of the descriptors, and only the
        :math:`K + 1` refined descriptors that :math:`\tilde{\mathbf{q}}` needs are formed.
        """
        x = self.database_
        bsz, m = idx.shape
        d = x.shape[1]
        valid = idx >= 0
        safe = idx.clamp(min=0)
        kk = min(self.K + 1, m)
        scratch = _Scratch() if scratch is None else scratch
        # Similarities with the shortlist come from gathering its descriptors, or, for a
        # database of a few shortlists' size, from one product with the whole database.
        via_database = (lists is not None or found is not None) and x.shape[0] <= _GATHER_RATIO * m
        xm = None
        if not via_database:  # (B, m, D), into a buffer kept from block to block
            xm = scratch.get("xm", (bsz, m, d), x, x.dtype)
            torch.index_select(x, 0, safe.view(-1), out=xm.view(bsz * m, d))
        if found is not None:
            top_s, top_j = found[0].clone(), found[1]
        elif lists is None:
            top_s, top_j = self._dense_neighbours(xm, valid, kk)
        else:
            top_s, top_j = self._listed_neighbours(idx, valid, kk, lists, xm)
        absent = (top_s == float("-inf")) | ~valid[:, :, None]
        # Weights [1, beta s_i1, ..., beta s_iK] (for beta > 1 divided by beta: the same P, no
        # overflow). Where negative similarities make them sum to <= 0 (the reference divides
        # by zero or flips signs there), those neighbours weigh 0 instead.
        tiny = torch.finfo(top_s.dtype).tiny
        scale = 1.0 / max(float(self.beta), 1.0)
        w = top_s.mul_(float(self.beta) * scale)
        w[..., 0] = max(scale, tiny)
        w.masked_fill_(absent, 0.0)
        total = w.sum(-1, keepdim=True)
        if bool((total <= 0).any()):
            w = torch.where(total <= 0, w.clamp(min=0.0), w)
            total = w.sum(-1, keepdim=True)
        w = w / total.clamp(min=tiny)  # P, (B, m, kk)
        del top_s, absent
        flat_j = top_j.flatten(1)

        def propagate(v: Tensor) -> Tensor:  # P (X_M v) for a (B, D) block of vectors
            if xm is None:
                s = (v @ x.T).gather(1, safe)
            else:
                # As row vector times matrix: 4x faster than the matrix-vector form
                # (B, m, D) x (B, D, 1) (measured, 42 x 400 x 2048: 8.1 ms against 32 ms).
                s = torch.bmm(v[:, None, :], xm.transpose(1, 2)).squeeze(1)
            return (w * s.gather(1, flat_j).view(bsz, m, kk)).sum(-1)

        a = propagate(q).masked_fill_(~valid, float("-inf"))
        # Query-side refinement: elementwise max of the refined top-(K+1) by a.
        top_a = a.topk(kk, dim=1).indices  # (B, kk)
        wt = w.gather(1, top_a[:, :, None].expand(-1, -1, kk))
        jt = top_j.gather(1, top_a[:, :, None].expand(-1, -1, kk))
        xsel = scratch.get("xsel", (bsz * kk, kk, d), x, x.dtype)
        torch.index_select(
            x, 0, safe.gather(1, jt.view(bsz, kk * kk)).view(-1), out=xsel.view(-1, d)
        )
        xt_top = torch.bmm(wt.reshape(bsz * kk, 1, kk), xsel).view(bsz, kk, d)
        ok = valid.gather(1, top_a)
        qt = xt_top.masked_fill_(~ok[:, :, None], float("-inf")).amax(1)
        qt = qt.masked_fill_(~torch.isfinite(qt), 0.0)
        final = ((a + propagate(qt)) / 2).masked_fill_(~valid, float("-inf"))
        return a, final

    def _refined_blocks(
        self,
        q: Tensor,
        idx: Tensor,
        lists: tuple[Tensor, Tensor] | None,
        rows: Tensor | None = None,
    ) -> Iterator[tuple[int, int, Tensor, Tensor]]:
        """``(start, end, a, final)`` of :meth:`_refine` over blocks of rows, the neighbours
        found for many rows at once where one product of the distinct shortlisted items with
        each other costs less than the rows' own products (:meth:`_plan`). The queries are
        ``q``, or with ``rows`` the rows ``q[rows]``."""
        if rows is not None:
            q = _Rows(q, rows)
        nq, m = idx.shape
        if nq == 0 or m == 0:
            return
        kk = min(self.K + 1, m)
        plan = self._plan(nq, m, idx, lists)
        scratch = _Scratch()
        if plan == "gram":
            elem = self.database_.element_size()
            # Rows whose neighbours are held at once (12 bytes per neighbour).
            chunk = max(1, (2 * self.block_bytes) // max(m * kk * (elem + 8), 1))
            bs = self._block_size(m, ())
            for c0 in range(0, nq, chunk):
                c1 = min(nq, c0 + chunk)
                if c0 > 0 and self._plan(c1 - c0, m, idx[c0:c1], lists) != "gram":
                    for s in range(c0, c1, bs):
                        e = min(c1, s + bs)
                        yield (s, e, *self._refine(q[s:e], idx[s:e], lists, scratch=scratch))
                    continue
                top_s, top_j = self._gram_neighbours(idx[c0:c1], kk, scratch)
                for s in range(c0, c1, bs):
                    e = min(c1, s + bs)
                    found = (top_s[s - c0 : e - c0], top_j[s - c0 : e - c0])
                    yield (s, e, *self._refine(q[s:e], idx[s:e], found=found, scratch=scratch))
                del top_s, top_j
            return
        bs = self._block_size(m, lists if plan == "lists" else None)
        for s in range(0, nq, bs):
            e = min(nq, s + bs)
            use = lists if plan == "lists" else None
            yield (s, e, *self._refine(q[s:e], idx[s:e], use, scratch=scratch))

    def _rerank_initial(
        self,
        q: Tensor,
        scores: Tensor,
        idx: Tensor,
        k: int,
        lists: tuple[Tensor, Tensor] | None = None,
    ) -> RerankResult:
        nq, m = idx.shape
        ms = min(int(self.M), m)
        out_k = min(k, m)
        out_s = torch.empty(nq, out_k, dtype=scores.dtype, device=scores.device)
        out_i = torch.empty(nq, out_k, dtype=torch.long, device=idx.device)
        bar = self._progress_bar(nq, "SuperGlobal")
        for s, e, _, final in self._refined_blocks(q, idx[:, :ms], lists):
            bar.update(e - s)
            head = idx[s:e, :ms]
            # By the final score (exact ties: first-stage order).
            order = final.argsort(dim=1, descending=True, stable=True)
            new_s = final.gather(1, order)
            new_i = head.gather(1, order)
            tail_s, tail_i = self._tail(scores[s:e, ms:], idx[s:e, ms:], new_s)
            out_s[s:e] = torch.cat([new_s, tail_s], 1)[:, :out_k]
            out_i[s:e] = torch.cat([new_i, tail_i], 1)[:, :out_k]
        bar.close()
        if out_k < k:
            pad = k - out_k
            out_s = torch.cat([out_s, out_s.new_full((nq, pad), float("-inf"))], 1)
            out_i = torch.cat([out_i, out_i.new_full((nq, pad), -1)], 1)
        return RerankResult(out_s, out_i)

    @staticmethod
    def _tail(scores: Tensor, idx: Tensor, head_scores: Tensor) -> tuple[Tensor, Tensor]:
        """Items after the shortlist: first-stage order, scores shifted below the shortlist."""
        if scores.shape[1] == 0:
            return scores, idx
        finite = torch.isfinite(head_scores)
        lowest = head_scores.masked_fill(~finite, float("inf")).amin(1, keepdim=True)
        first = scores[:, :1]
        shift = (first - lowest).clamp(min=0)
        shift = shift.masked_fill(~torch.isfinite(shift), 0.0)
        tail = torch.minimum(scores - shift, lowest)  # the minimum only absorbs rounding
        return tail.masked_fill(idx < 0, float("-inf")), idx

    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        q = (
            self.database_
            if queries is None
            else check_normalized(queries, "queries", offer_option=False)
        )
        lists = getattr(self, "neighbor_lists_", None)
        if initial is not None:
            srt = initial.indices.sort(dim=1).values
            rep = ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any(1)
            if bool(rep.any()):
                row = int(rep.nonzero()[0])
                raise ValueError(f"initial repeats a database item in row {row}")
        if initial is None:
            m = min(max(k, int(self.M)), self.n_database_)
            initial = RerankResult(*self.index_.search(q, m))
            if queries is None and lists is None:
                # All-vs-all: the first-stage lists are the database items' own lists.
                depth = min(int(self.M), m, _ALL_VS_ALL_DEPTH)
                lists = (initial.indices[:, :depth], initial.scores[:, :depth])
        return self._rerank_initial(q, initial.scores, initial.indices, k, lists)

    #: Strict leave-one-out re-ranks each item's first-stage list without its own entry
    #: (exact: the refinements only compare the shortlisted items with each other).
    strict_leave_one_out = "masked"

    def _rerank_strict(self, k: int) -> RerankResult:
        from .base import drop_own_entry

        x = self.database_
        n = x.shape[0]
        m = min(max(k, int(self.M)), n - 1)
        first = RerankResult(*self.index_.search(x, m + 1))
        lists = getattr(self, "neighbor_lists_", None)
        if lists is None:  # the all-vs-all lists are the database items' own lists
            depth = min(int(self.M), m + 1, _ALL_VS_ALL_DEPTH)
            lists = (first.indices[:, :depth], first.scores[:, :depth])
        initial = drop_own_entry(first, m)
        return self._rerank_initial(x, initial.scores, initial.indices, k, lists)

    def score_candidates(self, rows: Tensor, candidates: Tensor, scores: Tensor) -> Tensor:
        """SuperGlobal scores of each database item ``rows[b]`` (as a query) against its
        candidate list ``candidates[b]`` (the shortlist, best first): :math:`(a + b)/2` for the
        first :math:`M` candidates, the shifted first-stage score after them, ``-inf`` at
        padding. The rows' candidate lists may come from any first stage."""
        self._check_fitted()
        x = self.database_
        rows = rows.to(device=x.device, dtype=torch.long)
        candidates = candidates.to(device=x.device, dtype=torch.long)
        scores = scores.to(device=x.device, dtype=x.dtype)
        b, m = candidates.shape
        ms = min(int(self.M), m)
        out = torch.empty(b, m, dtype=x.dtype, device=x.device)
        lists = getattr(self, "neighbor_lists_", None)
        for s, e, _, final in self._refined_blocks(x, candidates[:, :ms], lists, rows):
            out[s:e, :ms] = final
            out[s:e, ms:] = self._tail(scores[s:e, ms:], candidates[s:e, ms:], final)[0]
        return out.masked_fill(candidates < 0, float("-inf"))


def _distinct(idx: Tensor, n: int) -> Tensor:
    """The distinct database ids listed in ``idx`` (``-1``: none), sorted."""
    seen = torch.zeros(n + 1, dtype=torch.bool, device=idx.device)
    seen[torch.where(idx >= 0, idx, n).view(-1)] = True
    return seen[:n].nonzero().squeeze(1)


class _Scratch:
    """Buffers reused from block to block, one per name: a block's large temporaries written
    into memory already touched instead of fresh allocations (whose page faults cost as much
    as the gathers that fill them)."""

    def __init__(self) -> None:
        self.bufs: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype) -> Tensor:
        """A tensor of ``shape`` (contents undefined) on ``like``'s device, sharing the named
        buffer."""
        numel = 1
        for v in shape:
            numel *= int(v)
        buf = self.bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.device != like.device or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=like.device)
            self.bufs[name] = buf
        return buf[:numel].view(shape)

    def drop(self, *names: str) -> None:
        """Free the named buffers."""
        for name in names:
            self.bufs.pop(name, None)


class _Rows:
    """``base[rows]`` read a slice at a time."""

    def __init__(self, base: Tensor, rows: Tensor) -> None:
        self.base, self.rows = base, rows

    def __getitem__(self, sl: slice) -> Tensor:
        return self.base[self.rows[sl]]


def superglobal_rerank(
    queries: TensorLike | None,
    database: TensorLike,
    k: int = 100,
    *,
    initial: RerankResult | tuple[Tensor, Tensor] | None = None,
    **settings: Any,
) -> RerankResult:
    r"""SuperGlobal re-ranking in one call:
    ``SuperGlobal(**settings).fit(database).rerank(queries, k, initial=initial)``; see
    :class:`SuperGlobal` for the math and the settings (``M``, ``K``, ``beta``, ...).

    Args:
        queries: :math:`(Q, D)` L2-normalised, or ``None`` (all-vs-all).
        database: :math:`(N, D)` L2-normalised.
        k: Length of each ranked list.
        initial: Optional first-stage ``(scores, indices)`` :math:`(Q, m)`.
        **settings: The settings of :class:`SuperGlobal`.

    Returns:
        ``(scores, indices)``, each :math:`(Q, k)`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.normalize(torch.randn(30, 4, generator=g), dim=1)
        >>> q = torch.nn.functional.normalize(torch.randn(1, 4, generator=g), dim=1)
        >>> superglobal_rerank(q, x, k=5, M=10, K=2, backend="torch").indices
        tensor([[28,  7,  1,  3, 11]])
    """
    return SuperGlobal(**settings).fit(database).rerank(queries, k, initial=initial)
