r"""Precomputed scores in place of descriptors: a similarity or distance matrix between queries
(rows) and database items (columns), dense or sparse top-k.

Re-ID users and users of learned or local-feature similarities (chamfer, a cross-encoder, a
vendor's scores) have a matrix, not vectors. :class:`ScoreMatrix` carries one with its
convention stated: ``kind="similarity"`` (higher is more alike) or ``kind="distance"``
(lower is more alike); rows are the items that rank (queries, or the database items
themselves), columns the database items. A re-ranker that accepts it is fitted on the
database x database matrix and re-ranks with a query x database matrix (``rerank(None)``:
all-vs-all over the database matrix); transductive methods also take the query x query matrix
(``query_scores``).

A sparse matrix (``torch.sparse`` COO/CSR or ``scipy.sparse``) stores each row's best entries
only (its top-k); an entry it does not store is worse than every stored one of its row (a
similarity of :math:`-\infty`, a distance of :math:`+\infty`), and is not ranked.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._checks import Index, Ref, as_tensor, check_in, check_int, checked
from ..typing import KNNResult
from .sparse import csr, csr_padded, csr_row_ids, csr_rows

__all__ = ["SCORE_KINDS", "ScoreIndex", "ScoreMatrix"]

#: The two conventions of a score matrix.
SCORE_KINDS = ("similarity", "distance")

ScoreKind = Literal["similarity", "distance"]


def _as_matrix(x: Any, name: str) -> Tensor:
    """A dense tensor or a ``torch.sparse_csr`` tensor (int64 indices) from any input."""
    sp = sys.modules.get("scipy.sparse")  # a scipy matrix means scipy.sparse is imported
    if sp is not None and sp.issparse(x):
        m = sp.csr_matrix(x)
        m.sum_duplicates()
        m.sort_indices()
        return csr(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(np.asarray(m.data)),
            m.shape,
            sorted=True,
            name=name,
        )
    t = as_tensor(x, name, detach=True)
    if t.layout == torch.sparse_coo:
        t = t.coalesce().to_sparse_csr()
    if t.layout == torch.sparse_csr:
        return csr(
            t.crow_indices().long(),
            t.col_indices().long(),
            t.values(),
            t.shape,
            sorted=True,
            name=name,
        )
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense or sparse (COO/CSR) matrix, got layout {t.layout}")
    return t


class ScoreMatrix:
    r"""A precomputed score matrix: rows rank, columns are database items.

    Args:
        scores: :math:`(R, N)` scores, a dense tensor or array, or a sparse matrix
            (``torch.sparse`` COO / CSR, ``scipy.sparse``) holding each row's best entries.
        kind: ``"similarity"`` (higher is more alike, e.g. cosine or chamfer similarities) or
            ``"distance"`` (lower is more alike, e.g. Euclidean distances).
        query_scores: :math:`(R, R)` dense scores of the rows among themselves, of the same
            kind (the query x query matrix that transductive methods such as k-reciprocal and
            GNN re-ranking need).

    Raises:
        ValueError: not a 2-D matrix, empty, NaN or infinite values, negative distances, or a
            ``query_scores`` of the wrong shape.
        TypeError: not numeric, or ``kind`` is not a string of :data:`SCORE_KINDS`.

    Example:
        >>> s = ScoreMatrix(torch.tensor([[1.0, 0.2, 0.6], [0.2, 1.0, 0.1], [0.6, 0.1, 1.0]]))
        >>> s.shape, s.kind, s.is_sparse
        ((3, 3), 'similarity', False)
        >>> s.topk(2).indices
        tensor([[0, 2],
                [1, 0],
                [2, 0]])
        >>> ScoreMatrix(torch.cdist(torch.eye(3), torch.eye(3)), kind="distance").topk(1).scores
        tensor([[-0.],
                [-0.],
                [-0.]])
    """

    def __init__(
        self,
        scores: Any,
        kind: ScoreKind = "similarity",
        *,
        query_scores: Any = None,
    ) -> None:
        self.kind, self.query_scores = kind, None
        check_in(kind, "kind", SCORE_KINDS)
        m = _as_matrix(scores, "scores")
        if m.dim() != 2:
            raise ValueError(
                f"scores must be a 2-D (rows, database) matrix, got shape {tuple(m.shape)}"
            )
        if m.shape[0] == 0 or m.shape[1] == 0:
            raise ValueError(f"scores is empty: shape {tuple(m.shape)}")
        vals = m.values() if m.layout == torch.sparse_csr else m
        if not vals.is_floating_point():
            raise TypeError(f"scores must hold floating point values, got dtype {vals.dtype}")
        if vals.dtype in (torch.float16, torch.bfloat16):
            m = (
                m.float()
                if m.layout == torch.strided
                else csr(m.crow_indices(), m.col_indices(), m.values().float(), m.shape)
            )
            vals = m.values() if m.layout == torch.sparse_csr else m
        if not bool(torch.isfinite(vals).all()):
            raise ValueError("scores contains NaN or infinite values")
        if kind == "distance" and bool((vals < 0).any()):
            raise ValueError("scores are distances (kind='distance') but some are negative")
        self.matrix: Tensor = m
        if query_scores is not None:
            qq = _as_matrix(query_scores, "query_scores")
            if qq.layout != torch.strided:
                qq = qq.to_dense()
            if tuple(qq.shape) != (m.shape[0], m.shape[0]):
                raise ValueError(
                    f"query_scores must have shape ({m.shape[0]}, {m.shape[0]}) (one row and "
                    f"column per row of scores), got {tuple(qq.shape)}"
                )
            if not qq.is_floating_point() or not bool(torch.isfinite(qq).all()):
                raise ValueError("query_scores must hold finite floating point values")
            if kind == "distance" and bool((qq < 0).any()):
                raise ValueError("query_scores are distances but some are negative")
            if qq.device != m.device:
                raise ValueError(f"query_scores is on {qq.device} but scores is on {m.device}")
            self.query_scores = qq.to(vals.dtype)

    # ------------------------------------------------------------------ tensor-like
    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, database items)``."""
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    @property
    def dtype(self) -> torch.dtype:
        return (self.matrix.values() if self.is_sparse else self.matrix).dtype

    @property
    def is_sparse(self) -> bool:
        """Whether only each row's best entries are stored."""
        return self.matrix.layout == torch.sparse_csr

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        extra = ", with query_scores" if self.query_scores is not None else ""
        layout = "sparse top-k" if self.is_sparse else "dense"
        return f"ScoreMatrix({self.shape[0]} x {self.shape[1]} {self.kind}, {layout}{extra})"

    def _from(self, matrix: Tensor, query_scores: Tensor | None) -> ScoreMatrix:
        out = object.__new__(ScoreMatrix)
        out.kind, out.matrix, out.query_scores = self.kind, matrix, query_scores
        return out

    def __getitem__(self, rows: slice) -> ScoreMatrix:
        """The rows ``rows`` (a slice), as a score matrix (their query scores dropped)."""
        if not isinstance(rows, slice):
            raise TypeError("a ScoreMatrix is indexed by a slice of rows")
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("a ScoreMatrix row slice must have step 1")
        stop = max(start, stop)
        if self.is_sparse:
            return self._from(csr_rows(self.matrix, start, stop), None)
        return self._from(self.matrix[start:stop], None)

    @checked(rows=Index(ndim=1, high=Ref("self", fn=lambda s: s.shape[0])))
    def index_select(self, dim: int, rows: Tensor) -> ScoreMatrix:
        """The given rows (``dim`` must be 0), as a score matrix."""
        if dim != 0:
            raise ValueError("a ScoreMatrix selects rows only (dim=0)")
        if self.is_sparse:
            idx, val = csr_padded(self.matrix)
            idx, val = idx.index_select(0, rows), val.index_select(0, rows)
            keep = idx >= 0
            crow = torch.zeros(rows.numel() + 1, dtype=torch.long, device=idx.device)
            crow[1:] = keep.sum(1).cumsum(0)
            return self._from(csr(crow, idx[keep], val[keep], (rows.numel(), self.shape[1])), None)
        return self._from(self.matrix.index_select(0, rows), None)

    def to(self, device: torch.device | str) -> ScoreMatrix:
        """The score matrix on ``device``."""
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device {device!r} is not a torch device: {err}") from None
        if dev.type == "meta":
            raise ValueError("device must hold data; the meta device holds none")
        qq = None if self.query_scores is None else self.query_scores.to(device)
        return self._from(self.matrix.to(device), qq)

    # ------------------------------------------------------------------ reading scores
    def similarities(self) -> Tensor:
        """The dense :math:`(R, N)` matrix oriented "higher is better": similarities as they
        are, distances negated; entries a sparse matrix does not store are :math:`-\\infty`."""
        if self.is_sparse:
            dense = torch.full(self.shape, float("-inf"), dtype=self.dtype, device=self.device)
            rows = csr_row_ids(self.matrix)
            v = self.matrix.values()
            dense[rows, self.matrix.col_indices().long()] = v if self.kind == "similarity" else -v
            return dense
        return self.matrix if self.kind == "similarity" else -self.matrix

    @checked(
        rows=Index(ndim=1, high=Ref("self", fn=lambda s: s.shape[0])),
        cols=Index(
            shape=Ref("rows", fn=lambda r: tuple(r.shape)),
            high=Ref("self", fn=lambda s: s.shape[1]),
        ),
    )
    def pairs(self, rows: Tensor, cols: Tensor) -> Tensor:
        r"""The "higher is better" scores of the pairs ``(rows[p], cols[p])`` (:math:`-\infty`
        where a sparse matrix does not store the pair)."""
        if self.is_sparse:
            crow = self.matrix.crow_indices().long()
            col = self.matrix.col_indices().long()
            if col.numel() == 0:  # nothing stored
                return torch.full(rows.shape, float("-inf"), dtype=self.dtype, device=self.device)
            start, end = crow[rows], crow[rows + 1]
            # binary search of each pair's column within its row (columns sorted per row)
            lo, hi = start.clone(), end.clone()
            for _ in range(max(1, int((end - start).max()).bit_length()) if rows.numel() else 0):
                mid = (lo + hi) // 2
                go_right = (mid < hi) & (col[mid.clamp(max=col.numel() - 1)] < cols)
                lo = torch.where(go_right, mid + 1, lo)
                hi = torch.where(go_right, hi, mid)
            at = lo.clamp(max=max(col.numel() - 1, 0))
            hit = (
                (lo < end) & (col[at] == cols)
                if col.numel()
                else torch.zeros_like(rows, dtype=torch.bool)
            )
            v = (
                self.matrix.values()[at]
                if col.numel()
                else torch.zeros(rows.shape, dtype=self.dtype)
            )
            v = v if self.kind == "similarity" else -v
            return torch.where(hit, v, torch.full_like(v, float("-inf")))
        s = self.matrix[rows, cols]
        return s if self.kind == "similarity" else -s

    def topk(self, k: int) -> KNNResult:
        """Each row's ``k`` best database items, best first: ``(scores, indices)`` with
        scores "higher is better" (minus the distance for distances); ``-1`` / ``-inf`` where a
        sparse row stores fewer than ``k`` entries."""
        k = check_int(k, "k", low=1, high=self.shape[1])
        if self.is_sparse:
            idx, val = csr_padded(self.matrix)
            val = val if self.kind == "similarity" else -val
            val = val.masked_fill(idx < 0, float("-inf"))
            if idx.shape[1] < k:
                pad = k - idx.shape[1]
                idx = torch.cat([idx, idx.new_full((idx.shape[0], pad), -1)], 1)
                val = torch.cat([val, val.new_full((val.shape[0], pad), float("-inf"))], 1)
            s, pos = val.topk(k, dim=1)
            i = idx.gather(1, pos)
            return KNNResult(s, torch.where(torch.isfinite(s), i, -1))
        s, i = self.similarities().topk(k, dim=1)
        return KNNResult(s, i)

    def diagonal(self) -> Tensor:
        r"""The "higher is better" score of row :math:`i` against item :math:`i` (a square
        matrix's diagonal; :math:`-\infty` where a sparse matrix does not store it)."""
        n = min(self.shape)
        if self.is_sparse:
            idx, val = csr_padded(self.matrix)
            idx, val = idx[:n], val[:n]
            hit = idx == torch.arange(n, device=idx.device)[:, None]
            val = val if self.kind == "similarity" else -val
            out = torch.where(hit, val, float("-inf")).max(dim=1).values
            return out if idx.shape[1] else torch.full((n,), float("-inf"), dtype=self.dtype)
        d = self.matrix.diagonal()
        return d if self.kind == "similarity" else -d

    # ------------------------------------------------------------------ conversions
    def as_distance(self) -> ScoreMatrix:
        r"""Cosine-like similarities as the Euclidean distances of unit vectors with those
        cosines, :math:`d = \sqrt{\max(0, 2 - 2s)}` (similarities must lie in
        :math:`[-1, 1]`, up to rounding).

        Example:
            >>> ScoreMatrix(torch.tensor([[1.0, 0.0, -1.0]])).as_distance().matrix
            tensor([[0.0000, 1.4142, 2.0000]])
        """
        if self.kind == "distance":
            return self
        self._check_cosine()
        conv = lambda s: (2 - 2 * s).clamp(min=0).sqrt()  # noqa: E731
        return self._converted("distance", conv)

    def as_similarity(self) -> ScoreMatrix:
        r"""Distances as the cosines of unit vectors that far apart,
        :math:`s = 1 - d^2 / 2` (distances must lie in :math:`[0, 2]`, up to rounding).

        Example:
            >>> ScoreMatrix(torch.tensor([[0.0, 2.0]]), kind="distance").as_similarity().matrix
            tensor([[ 1., -1.]])
        """
        if self.kind == "similarity":
            return self
        vals = self.matrix.values() if self.is_sparse else self.matrix
        if bool((vals > 2 * (1 + 1e-5)).any()):
            raise ValueError(
                "as_similarity() assumes Euclidean distances of unit vectors (at most 2), but "
                f"some distances reach {float(vals.max()):.4g}; convert them yourself"
            )
        return self._converted("similarity", lambda d: 1 - d.square() / 2)

    def _check_cosine(self) -> None:
        vals = self.matrix.values() if self.is_sparse else self.matrix
        if bool((vals.abs() > 1 + 1e-5).any()):
            raise ValueError(
                "as_distance() assumes cosine-like similarities in [-1, 1], but some reach "
                f"{float(vals.abs().max()):.4g}; convert them yourself"
            )

    def _converted(self, kind: str, fn) -> ScoreMatrix:
        if self.is_sparse:
            m = csr(
                self.matrix.crow_indices(),
                self.matrix.col_indices(),
                fn(self.matrix.values()),
                self.matrix.shape,
            )
        else:
            m = fn(self.matrix)
        qq = None if self.query_scores is None else fn(self.query_scores)
        out = self._from(m, qq)
        out.kind = kind
        return out

    # ------------------------------------------------------------------ checks
    def check_database(self, name: str = "database") -> ScoreMatrix:
        """Check a database x database matrix: square, and its diagonal (an item against
        itself) the best entry of most rows, which is what tells similarities from distances
        given the wrong way round.

        Raises:
            ValueError: not square, or the diagonal is the row's best entry in fewer than half
                of the rows.
        """
        if getattr(self, "_database_ok", False):  # fit, knn_graph and offline_diffusion all ask
            return self
        n, m = self.shape
        if n != m:
            raise ValueError(
                f"{name} must be a square database x database score matrix, but its scores "
                f"have shape {self.shape}"
            )
        diag = self.diagonal()
        best = self.topk(1).scores[:, 0]
        tol = 1e-6 * best.abs().clamp(min=1)
        ok = diag >= best - tol
        if int(ok.sum()) * 2 < n:
            other = "distance" if self.kind == "similarity" else "similarity"
            plural = "distances" if other == "distance" else "similarities"
            raise ValueError(
                f"{name}: an item's score against itself is its row's best entry in only "
                f"{int(ok.sum())} of {n} rows; these scores look like {plural} given as "
                f"kind={self.kind!r} (pass kind={other!r})"
            )
        self._database_ok = True
        return self


class ScoreIndex:
    """A kNN "index" over a score matrix's columns: ``search(rows, k)`` takes rows of a
    :class:`ScoreMatrix` (queries against the database) and returns their ``k`` best
    columns, the duck-typed counterpart of :meth:`~graphrerank.graph.KNNIndex.search`.

    Example:
        >>> s = ScoreMatrix(torch.tensor([[0.1, 0.9, 0.5]]))
        >>> ScoreIndex(3).search(s, 2).indices
        tensor([[1, 2]])
    """

    def __init__(self, num_items: int) -> None:
        self.num_items = check_int(num_items, "num_items", low=1)

    @property
    def ntotal(self) -> int:
        return self.num_items

    def search(self, rows: ScoreMatrix, k: int) -> KNNResult:
        if not isinstance(rows, ScoreMatrix):
            raise TypeError(
                "this re-ranker was fitted on a ScoreMatrix: search it with the scores of the "
                f"queries against the database (a ScoreMatrix), got {type(rows).__name__}"
            )
        if rows.shape[1] != self.num_items:
            raise ValueError(
                f"queries' scores have {rows.shape[1]} columns but the database holds "
                f"{self.num_items} items"
            )
        return rows.topk(k)
