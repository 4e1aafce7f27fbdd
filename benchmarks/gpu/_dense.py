r"""Dense torch transcriptions of the re-ranking methods: the baselines of ``check.py``.

Each function is written from the formulas of ``shared/reference/methods.md`` in the form the
reference codes take on a GPU: dense :math:`M \times M` (or :math:`N \times N`) matrices, whole
row blocks gathered at once, dense matrix products, on whatever device the inputs are on. They
are here to be timed against the library and to check its top-k lists, not to be used: their
memory grows with the square of the number of items (the online diffusion operator at
:math:`N = 100{,}000` is a 40 GB matrix).

Every function returns ``(scores, indices)`` of shape ``(Q, k)``, best first (for the
distance-based k-reciprocal, ``scores`` are distances, smallest first).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Bytes of one gathered working block (row blocks of the dense gathers).
BLOCK_BYTES = 1 << 30


def _rows_per_block(row_bytes: int, budget: int = BLOCK_BYTES) -> int:
    return max(1, budget // max(1, row_bytes))


def _sq_distances(x: Tensor) -> Tensor:
    """All squared Euclidean distances of the rows of ``x``, :math:`(M, M)`, clamped at 0."""
    sq = x.pow(2).sum(1)
    d = x @ x.T
    d.mul_(-2).add_(sq[:, None]).add_(sq[None, :]).clamp_(min=0)
    d.fill_diagonal_(0)
    return d


def _top_mask(order: Tensor, m: int) -> Tensor:
    """Dense boolean ``mask[i, j] = j in order[i]``."""
    mask = torch.zeros(m, m, dtype=torch.bool, device=order.device)
    mask.scatter_(1, order, True)
    return mask


# ----------------------------------------------------------------------------- kNN
def knn(queries: Tensor, database: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact inner-product kNN: the whole :math:`Q \\times N` product, then ``topk``."""
    return (queries @ database.T).topk(k, dim=1)


# ----------------------------------------------------------------------------- k-reciprocal
def kreciprocal(
    queries: Tensor,
    gallery: Tensor,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    k: int = 100,
) -> tuple[Tensor, Tensor]:
    r"""Zhong et al. (CVPR 2017), queries and gallery in one graph, dense.

    ``d`` the squared distances divided by each row's maximum; :math:`R(i, k)` from the dense
    masks of the first :math:`k + 1` entries of every row (``A & A.T``); the expansion test
    :math:`|R(i, k_1) \cap R(c, \tilde k)| > \frac23 |R(c, \tilde k)|` for all pairs at once
    as one 0/1 matrix product (bf16 on a GPU: exact for counts up to 256); the encodings
    :math:`\mathbf{V}`, the local query expansion (mean of the first :math:`k_2` rows), and
    the Jaccard distance of the query rows over each query's non-zero columns (the reference's
    inverted index, as one gather of the matching columns of :math:`\mathbf{V}^\top`).
    Returns the ``k`` smallest final distances of each query over the gallery.
    """
    nq = queries.shape[0]
    x = torch.cat([queries, gallery])
    m = x.shape[0]
    dev = x.device
    mm_dtype = torch.bfloat16 if dev.type == "cuda" else x.dtype
    d = _sq_distances(x)
    d.div_(d.amax(1, keepdim=True).clamp_(min=torch.finfo(d.dtype).tiny))
    half = round(k1 / 2)  # numpy's np.around: halves to even
    n1, nh, n2 = min(k1 + 1, m), min(half + 1, m), min(k2, m)
    order = d.topk(max(n1, nh, n2), dim=1, largest=False).indices
    a = _top_mask(order[:, :n1], m)
    r = a & a.T  # R(i, k1)
    del a
    ah = _top_mask(order[:, :nh], m)
    rh = ah & ah.T  # R(c, k1/2)
    del ah
    rf, rhf = r.to(mm_dtype), rh.to(mm_dtype)
    inter = rf @ rhf.T  # |R(i) & R(c)|
    size = rh.sum(1)
    accept = r & (3 * inter.float() > 2 * size[None, :].float())
    del inter
    expanded = (accept.to(mm_dtype) @ rhf) > 0
    del accept, rf, rhf, rh
    members = r | expanded
    del r, expanded
    v = torch.exp(-d).mul_(members)
    del members
    v.div_(v.sum(1, keepdim=True))
    if k2 != 1:
        qe = torch.empty_like(v)
        step = _rows_per_block(n2 * m * v.element_size())
        for s in range(0, m, step):
            qe[s : s + step] = v[order[s : s + step, :n2]].mean(1)
        v = qe
    # Jaccard of the query rows: sum_l min(V[i, l], V[j, l]) over the non-zero columns l of V[i]
    vq = v[:nq]
    nnz = (vq > 0).sum(1)
    p = max(1, int(nnz.max()))
    vals, cols = vq.topk(p, dim=1)  # every non-zero of each query row (zeros pad)
    vt = v.T.contiguous()
    acc = torch.empty(nq, m, dtype=v.dtype, device=dev)
    step = _rows_per_block(p * m * v.element_size())
    for s in range(0, nq, step):
        g = vt[cols[s : s + step]]  # (B, P, M)
        acc[s : s + step] = torch.minimum(g, vals[s : s + step, :, None]).sum(1)
        del g
    del vt
    jaccard = 1 - acc / (2 - acc)
    final = (1 - lambda_value) * jaccard + lambda_value * d[:nq]
    return final[:, nq:].topk(k, dim=1, largest=False)


# ----------------------------------------------------------------------------- GNN
def gnn(
    queries: Tensor,
    gallery: Tensor,
    *,
    k1: int = 26,
    k2: int = 7,
    layers: int = 2,
    lambda_value: float = 0.0,
    k: int = 100,
    score_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Zhang et al. (GNN re-ranking), dense, as the official CUDA code computes it:
    :math:`\mathbf{S} = \mathbf{X}\mathbf{X}^\top`, the top-:math:`k_1` lists, the binary
    :math:`\mathbf{A}`, ``layers`` times :math:`\mathbf{A} \leftarrow \mathbf{A} +
    \mathbf{A}^\top`, :math:`\mathbf{A}'_i = \sum_{j < k_2} s_{ij}^2 \mathbf{A}_{R_{ij}}`,
    row L2 normalisation; the score :math:`\mathbf{A}_q \mathbf{A}_g^\top`, mixed with the
    cosine by ``lambda_value``. ``score_dtype`` (e.g. ``torch.bfloat16``) casts the final
    product's operands (a fast-path preview; ``None``: the input dtype)."""
    nq = queries.shape[0]
    x = torch.cat([queries, gallery])
    m = x.shape[0]
    s = x @ x.T
    n1 = min(k1, m)
    top_s, rank = s.topk(n1, dim=1)
    w = top_s.square()
    a = torch.zeros(m, m, dtype=x.dtype, device=x.device)
    a.scatter_(1, rank, 1.0)
    if k2 != 1:
        n2 = min(k2, n1)
        for _ in range(layers):
            a = a + a.T
            new = torch.zeros_like(a)
            for j in range(n2):
                new.addcmul_(w[:, j : j + 1], a[rank[:, j]])
            a = new.div_(new.norm(dim=1, keepdim=True))
            del new
    if score_dtype is not None:
        sim = (a[:nq].to(score_dtype) @ a[nq:].to(score_dtype).T).to(x.dtype)
    else:
        sim = a[:nq] @ a[nq:].T
    if lambda_value:
        sim = (1 - lambda_value) * sim + lambda_value * s[:nq, nq:]
    return sim.topk(k, dim=1)


# ----------------------------------------------------------------------------- SuperGlobal
def superglobal(
    queries: Tensor,
    database: Tensor,
    *,
    M: int = 400,
    K: int = 9,
    beta: float = 0.15,
    k: int = 100,
) -> tuple[Tensor, Tensor]:
    r"""Shao et al. (ICCV 2023), ``MDescAug`` then ``RerankwMDA`` on query blocks: the top-M
    shortlist, its :math:`M \times M` similarities, each item's top-(K+1) within the shortlist
    (itself first), the refined descriptors :math:`\tilde{\mathbf{x}}_i = \sum_j w_j
    \mathbf{x}_j / \sum_j w_j` with :math:`w = [1, \beta s_{i1}, \dots, \beta s_{iK}]` formed
    explicitly (:math:`B \times M \times (K+1) \times D`), :math:`a = \mathbf{q}^\top
    \tilde{\mathbf{x}}`, :math:`\tilde{\mathbf{q}}` the elementwise max of the refined
    descriptors of the top-(K+1) by :math:`a`, :math:`b = \tilde{\mathbf{q}}^\top
    \tilde{\mathbf{x}}`, the shortlist sorted by :math:`a` then stably by :math:`(a + b)/2`;
    items after the M-th keep their first-stage order."""
    nq, d = queries.shape
    n = database.shape[0]
    ms = min(M, n)
    kk = min(K + 1, ms)
    depth = min(max(k, ms), n)
    out_s = torch.empty(nq, min(k, depth), dtype=queries.dtype, device=queries.device)
    out_i = torch.empty(nq, min(k, depth), dtype=torch.long, device=queries.device)
    per_query = (ms * kk * d + ms * ms + ms * d) * queries.element_size()
    step = _rows_per_block(per_query)
    for s0 in range(0, nq, step):
        q = queries[s0 : s0 + step]
        b = q.shape[0]
        first_s, first_i = (q @ database.T).topk(depth, dim=1)
        head = first_i[:, :ms]
        xm = database[head]  # (B, M, D)
        g = torch.bmm(xm, xm.transpose(1, 2))  # (B, M, M)
        gs, gj = g.topk(kk, dim=2)
        del g
        w = torch.cat([torch.ones_like(gs[..., :1]), beta * gs[..., 1:]], dim=2)
        nb = xm[torch.arange(b, device=q.device)[:, None, None], gj]  # (B, M, kk, D)
        xt = (w[..., None] * nb).sum(2) / w.sum(2, keepdim=True)  # (B, M, D)
        del nb
        a = torch.bmm(xt, q[:, :, None]).squeeze(2)
        top = a.topk(kk, dim=1).indices
        qt = xt[torch.arange(b, device=q.device)[:, None], top].amax(1)  # (B, D)
        bb = torch.bmm(xt, qt[:, :, None]).squeeze(2)
        final = (a + bb) / 2
        pre = a.argsort(dim=1, descending=True, stable=True)
        f = final.gather(1, pre)
        order = pre.gather(1, f.argsort(dim=1, descending=True, stable=True))
        new_s = final.gather(1, order)
        new_i = head.gather(1, order)
        all_s = torch.cat([new_s, first_s[:, ms:]], 1)
        all_i = torch.cat([new_i, first_i[:, ms:]], 1)
        out_s[s0 : s0 + b] = all_s[:, : out_s.shape[1]]
        out_i[s0 : s0 + b] = all_i[:, : out_i.shape[1]]
    return out_s, out_i


# ----------------------------------------------------------------------------- diffusion
def knn_lists(x: Tensor, k: int, queries: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Each row's ``k`` best inner products over ``x`` (dense row blocks of the full product)."""
    q = x if queries is None else queries
    step = _rows_per_block(x.shape[0] * x.element_size())
    parts = [(q[s : s + step] @ x.T).topk(k, dim=1) for s in range(0, q.shape[0], step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def laplacian(x: Tensor, *, kd: int = 50, alpha: float = 0.99, gamma: float = 3.0) -> Tensor:
    r"""The dense :math:`\mathbf{L} = \mathbf{I} - \alpha\mathbf{D}^{-1/2}\mathbf{A}
    \mathbf{D}^{-1/2}` of the mutual kNN graph (``kd`` neighbours counting the item itself,
    weights :math:`\max(s, 0)^\gamma`, zero diagonal, isolated items :math:`d^{-1/2} = 0`),
    :math:`N \times N`, built in place."""
    n = x.shape[0]
    s, idx = knn_lists(x, min(kd, n))
    a = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    a.scatter_(1, idx, s.clamp(min=0).pow(gamma))
    listed = torch.zeros(n, n, dtype=torch.bool, device=x.device)
    listed.scatter_(1, idx, True)
    listed &= listed.T.clone()
    a.mul_(listed)
    del listed
    a.fill_diagonal_(0)
    deg = a.sum(1)
    dinv = torch.where(deg > 0, deg.clamp(min=torch.finfo(deg.dtype).tiny).rsqrt(), 0.0)
    a.mul_(dinv[:, None]).mul_(dinv[None, :]).mul_(-alpha)
    a.diagonal().add_(1.0)
    return a


def batched_cg(
    op, b: Tensor, *, tol: float = 1e-6, max_iter: int = 20, best: bool = True
) -> Tensor:
    """Plain CG on the columns of ``b`` :math:`(N, m)` (``op(P)`` the product with the system
    matrix), columns frozen once their recursive residual meets ``tol``; with ``best`` the
    iterate of lowest residual of the columns that did not converge (MATLAB ``pcg``)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(0)
    thresh = tol * tol * rr
    done = rr <= thresh
    best_x, best_rr = x.clone(), rr.clone()
    for _ in range(max_iter):
        ap = op(p)
        pap = (p * ap).sum(0)
        step = torch.where(done, 0.0, rr / pap)
        x.addcmul_(p, step)
        r.addcmul_(ap, step, value=-1)
        rr_new = (r * r).sum(0)
        beta = torch.where(done, 0.0, rr_new / rr)
        p.mul_(beta).add_(r)
        better = ~done & (rr_new < best_rr)
        best_x = torch.where(better, x, best_x)
        best_rr = torch.where(better, rr_new, best_rr)
        rr = torch.where(done, rr, rr_new)
        done = done | (rr_new <= thresh)
    return torch.where(done, x, best_x) if best else x


def query_matrix(
    queries: Tensor, database: Tensor, *, kq: int = 10, gamma: float = 3.0
) -> tuple[Tensor, Tensor]:
    r"""Dense :math:`\mathbf{Y}` :math:`(N, Q)`: each query's ``kq`` best similarities,
    :math:`\max(s, 0)^\gamma`, zeros elsewhere; and the query-database similarities."""
    sims = queries @ database.T
    s, i = sims.topk(kq, dim=1)
    y = torch.zeros_like(sims)
    y.scatter_(1, i, s.clamp(min=0).pow(gamma))
    return y.T.contiguous(), sims


def online_diffusion(
    lap: Tensor,
    queries: Tensor,
    database: Tensor,
    *,
    kq: int = 10,
    gamma: float = 3.0,
    tol: float = 1e-6,
    max_iter: int = 20,
    k: int = 100,
) -> tuple[Tensor, Tensor]:
    r"""Iscen et al. (CVPR 2017): solve :math:`\mathbf{L}\mathbf{F} = \mathbf{Y}` by CG with
    the dense ``lap`` (:func:`laplacian`), all queries at once, 20 iterations, the best
    iterate; rank by :math:`\mathbf{f}`, equal scores by first-stage similarity."""
    y, sims = query_matrix(queries, database, kq=kq, gamma=gamma)
    f = batched_cg(lambda p: lap @ p, y, tol=tol, max_iter=max_iter).T
    return _rank_with_ties(f, sims, k)


def _rank_with_ties(scores: Tensor, secondary: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` by ``scores``, equal scores ordered by ``secondary`` (both :math:`(Q, N)`):
    a stable sort by the secondary key, then a stable sort by the primary one."""
    pre = secondary.argsort(dim=1, descending=True, stable=True)
    order = pre.gather(1, scores.gather(1, pre).argsort(dim=1, descending=True, stable=True))
    order = order[:, :k]
    return scores.gather(1, order), order


def truncation_lists(x: Tensor, t: int) -> Tensor:
    """Each item's ``t`` nearest items by inner product, itself first :math:`(N, T)`."""
    n = x.shape[0]
    _, idx = knn_lists(x, min(t, n))
    me = torch.arange(n, device=x.device)[:, None]
    has = (idx == me).any(1, keepdim=True)
    # put the item first: drop it where listed (or the last entry where not), prepend it
    keep = torch.where(has, idx != me, torch.arange(idx.shape[1], device=x.device) < t - 1)
    rest = idx[keep].view(n, idx.shape[1] - 1)
    return torch.cat([me, rest], 1)


def offline_matrix(
    lap: Tensor,
    lists: Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int = 20,
    block: int | None = None,
) -> Tensor:
    r"""Yang et al. (AAAI 2019), late truncation, dense: for every item :math:`i` the dense
    sub-block :math:`\mathbf{L}[T_i, T_i]` gathered from the dense ``lap``, the systems
    :math:`\mathbf{L}[T_i, T_i]\mathbf{c}_i = \mathbf{e}_0` of a block of items solved
    together by batched CG (``bmm``), last iterate. Returns :math:`\mathbf{c}` as an
    :math:`(N, T)` tensor aligned with ``lists``."""
    n, t = lists.shape
    if block is None:
        block = _rows_per_block(3 * t * t * lap.element_size())
    out = torch.empty(n, t, dtype=lap.dtype, device=lap.device)
    for s in range(0, n, block):
        ids = lists[s : s + block]
        b = ids.shape[0]
        sub = lap[ids[:, :, None], ids[:, None, :]]  # (B, T, T)
        rhs = torch.zeros(t, b, dtype=lap.dtype, device=lap.device)
        rhs[0] = 1.0

        def op(p, sub=sub):
            return torch.bmm(sub, p.T[:, :, None]).squeeze(2).T

        out[s : s + b] = batched_cg(op, rhs, tol=tol, max_iter=max_iter, best=False).T
        del sub
    return out


def offline_scores(
    c: Tensor,
    lists: Tensor,
    queries: Tensor,
    database: Tensor,
    *,
    kq: int = 10,
    gamma: float = 3.0,
    k: int = 100,
) -> tuple[Tensor, Tensor]:
    r"""The online step: :math:`\mathbf{f} = \sum_j \max(s_j, 0)^\gamma \mathbf{C}_{j,:}` over
    each query's ``kq`` nearest items, dense :math:`(Q, N)`; ties by first-stage similarity."""
    sims = queries @ database.T
    s, i = sims.topk(kq, dim=1)
    w = s.clamp(min=0).pow(gamma)  # (Q, kq)
    nq, n = sims.shape
    f = torch.zeros(nq, n, dtype=c.dtype, device=c.device)
    cols = lists[i]  # (Q, kq, T)
    vals = w[:, :, None] * c[i]
    f.scatter_add_(1, cols.reshape(nq, -1), vals.reshape(nq, -1))
    return _rank_with_ties(f, sims, k)


def gflops(flops: float, seconds: float) -> float:
    """Rate in GFLOP/s (0 for a zero time)."""
    return flops / seconds / 1e9 if seconds > 0 and math.isfinite(seconds) else 0.0
