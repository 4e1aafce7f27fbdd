"""GNN re-ranking (Zhang et al. 2020) the way the official code computes it, in dense torch on
the CPU: the baseline of ``bench_gnn.py``.

The official code (``GPU-Re-Ranking`` of layumi/Person_reID_baseline_pytorch) forms the full
similarity matrix of queries and gallery together, takes each row's ``k1`` best with
``topk``, and runs two CUDA kernels on dense :math:`M \\times M` matrices:
``build_adjacency_matrix`` (ones scattered at each row's ``k1`` neighbours) and
``gnn_propagate`` (each row replaced by the sum of its ``k2`` nearest neighbours' rows,
weighted by the squared similarity). Here the kernels are their dense torch equivalents
(``scatter_``, then ``k2`` weighted row gathers per layer), float32, written from the
formulas of the paper and of ``shared/reference/methods.md`` (section 2.1). The code returns
each query's full ranking (an ``argsort`` of the score matrix); :func:`gnn_reference_rank`
does too. Here to be timed and to check agreement, not to be used.
"""

from __future__ import annotations

import torch


def gnn_reference_scores(xq, xg, k1=26, k2=7, layers=2, lambda_value=0.0):
    """The ``(Q, N)`` score matrix of GNN re-ranking for L2-normalised ``xq`` (``None``:
    all-vs-all, one graph over the ``N`` items of ``xg``) against ``xg``."""
    xg = torch.as_tensor(xg, dtype=torch.float32)
    x = xg if xq is None else torch.cat([torch.as_tensor(xq, dtype=torch.float32), xg])
    nq = 0 if xq is None else xq.shape[0]
    m = x.shape[0]
    s = x @ x.T  # the full similarity matrix
    sv, rank = s.topk(k1, dim=1)  # sorted, best first (the node itself normally first)
    a = torch.zeros(m, m)
    a.scatter_(1, rank, 1.0)  # build_adjacency_matrix
    w = sv.square()  # edge weights s^2
    if k2 != 1:
        buf = torch.empty_like(a)
        for _ in range(layers):
            a = a + a.T
            new = torch.zeros_like(a)
            for j in range(k2):  # gnn_propagate: weighted sum of the k2 neighbours' rows
                torch.index_select(a, 0, rank[:, j], out=buf)
                new.add_(buf.mul_(w[:, j : j + 1]))
            del a
            a = new.div_(new.norm(dim=1, keepdim=True))
        del buf
    if xq is None:
        sim = a @ a.T
        base = s
    else:
        sim = a[:nq] @ a[nq:].T
        base = s[:nq, nq:]
    if lambda_value:
        sim = (1 - lambda_value) * sim + lambda_value * base
    return sim


def gnn_reference_rank(xq, xg, k1=26, k2=7, layers=2, lambda_value=0.0):
    """Each query's full ranking of ``xg`` (``(Q, N)`` indices, best first), as the official
    code returns it."""
    sim = gnn_reference_scores(xq, xg, k1, k2, layers, lambda_value)
    return torch.argsort(sim, dim=1, descending=True)
