"""Dense NumPy transcriptions of k-reciprocal and GNN re-ranking: the baselines of
``bench_kreciprocal.py``.

Written from the papers' formulas with the semantics of the authors' codes (queries and
gallery in one graph), the way those codes compute them: dense :math:`M \\times M` matrices,
a full argsort, per-row loops, float32. They are here to be timed and to check agreement,
not to be used.
"""

from __future__ import annotations

import numpy as np


def kreciprocal_reference(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """Zhong et al. (CVPR 2017) from Euclidean distance matrices; returns the final
    ``(Q, N)`` distance."""
    nq = q_g_dist.shape[0]
    d = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]]).astype(np.float32)
    d = np.square(d)
    d = np.ascontiguousarray((d / d.max(axis=0)).T)
    m = d.shape[0]
    rank = np.argsort(d, axis=1).astype(np.int32)
    half = int(np.around(k1 / 2))

    def reciprocal(i, k):
        forward = rank[i, : k + 1]
        back = rank[forward, : k + 1]
        return forward[(back == i).any(axis=1)]

    v = np.zeros((m, m), dtype=np.float32)
    for i in range(m):
        r = reciprocal(i, k1)
        parts = [r]
        for c in r:
            rc = reciprocal(c, half)
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                parts.append(rc)
        members = np.unique(np.concatenate(parts))
        w = np.exp(-d[i, members])
        v[i, members] = w / w.sum()
    if k2 != 1:
        expanded = np.empty_like(v)
        for i in range(m):
            expanded[i] = v[rank[i, :k2]].mean(axis=0)
        v = expanded
    holders = [np.nonzero(v[:, col])[0] for col in range(m)]
    jaccard = np.empty((nq, m), dtype=np.float32)
    for i in range(nq):
        acc = np.zeros(m, dtype=np.float32)
        for col in np.nonzero(v[i])[0]:
            rows = holders[col]
            acc[rows] += np.minimum(v[i, col], v[rows, col])
        jaccard[i] = 1 - acc / (2 - acc)
    final = (1 - lambda_value) * jaccard + lambda_value * d[:nq]
    return final[:, nq:]


def gnn_reference(xq, xg, k1=26, k2=7, layers=2, lambda_value=0.0):
    """Zhang et al. (GNN re-ranking) on L2-normalised features, dense; returns the
    ``(Q, N)`` score (including the similarity product)."""
    nq = xq.shape[0]
    x = np.concatenate([xq, xg]).astype(np.float32)
    s = x @ x.T
    m = x.shape[0]
    top = np.argpartition(-s, k1 - 1, axis=1)[:, :k1]
    order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
    rank = np.take_along_axis(top, order, axis=1)
    w = np.square(np.take_along_axis(s, rank, axis=1))
    a = np.zeros((m, m), dtype=np.float32)
    np.put_along_axis(a, rank, 1.0, axis=1)
    if k2 != 1:
        for _ in range(layers):
            a = a + a.T
            new = np.zeros_like(a)
            for j in range(k2):
                new += w[:, j : j + 1] * a[rank[:, j]]
            a = new / np.linalg.norm(new, axis=1, keepdims=True)
    sim = a[:nq] @ a[nq:].T
    if lambda_value:
        sim = (1 - lambda_value) * sim + lambda_value * s[:nq, nq:]
    return sim
