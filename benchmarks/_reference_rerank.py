"""Dense NumPy transcriptions of k-reciprocal and GNN re-ranking: the baselines of
``bench_kreciprocal.py``.

Written from the papers' formulas with the semantics of the authors' codes (queries and
gallery in one graph), the way those codes compute them: dense :math:`M \\times M` matrices,
a full argsort, per-row loops, float32 (float16 in some ports). They are here to be timed
and to check agreement, not to be used.
"""

from __future__ import annotations

import numpy as np


def kreciprocal_reference(
    q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3, v_dtype=np.float32
):
    """Zhong et al. (CVPR 2017) from Euclidean distance matrices; returns the final
    ``(Q, N)`` distance (``q_g_dist=q_q_dist=None``: all-vs-all over ``g_g_dist``, the
    ``(N, N)`` final distance of the graph of the N items, each item its own query).

    The steps, data types and memory layouts of the authors' Python ``re_ranking(q_g_dist,
    q_q_dist, g_g_dist)`` (the function torchreid and most re-ID code bases ship): the
    :math:`M \\times M` matrix assembled and squared, then float32, divided by its column
    maxima and transposed (a Fortran-ordered view, so ``V`` made ``zeros_like`` it is too and
    its columns are contiguous); a full ``argsort`` of every row; per-row loops for the
    k-reciprocal sets (``np.where`` on the back-lists), the 2/3 expansion
    (``np.intersect1d``, ``np.append``, ``np.unique``) and the local query expansion; an
    inverted index of ``V``'s non-zero rows per column; and the Jaccard sums by a loop over
    each query's non-zero columns. ``v_dtype=np.float16`` is the variant of Luo et al.'s
    port (reid-strong-baseline, fast-reid), which keeps ``V`` and the Jaccard in float16.
    """
    all_vs_all = q_g_dist is None  # every item a query: the graph of the N items alone
    if all_vs_all:
        original_dist = g_g_dist
    else:
        original_dist = np.concatenate(
            [
                np.concatenate([q_q_dist, q_g_dist], axis=1),
                np.concatenate([q_g_dist.T, g_g_dist], axis=1),
            ],
            axis=0,
        )
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    v = np.zeros_like(original_dist).astype(v_dtype)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    all_num = original_dist.shape[0]
    query_num = all_num if all_vs_all else q_g_dist.shape[0]
    half = int(np.around(k1 / 2.0))

    def reciprocal(rank, i, k):
        forward = rank[i, : k + 1]
        backward = rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    for i in range(all_num):
        k_reciprocal = reciprocal(initial_rank, i, k1)
        expansion = k_reciprocal
        for candidate in k_reciprocal:
            candidate_set = reciprocal(initial_rank, candidate, half)
            if len(np.intersect1d(candidate_set, k_reciprocal)) > 2.0 / 3 * len(candidate_set):
                expansion = np.append(expansion, candidate_set)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        v[i, expansion] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num,]
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=v_dtype)
        for i in range(all_num):
            v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
        v = v_qe
        del v_qe
    del initial_rank
    inv_index = []
    for col in range(all_num):
        inv_index.append(np.where(v[:, col] != 0)[0])
    jaccard_dist = np.zeros_like(original_dist, dtype=v_dtype)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=v_dtype)
        non_zero = np.where(v[i, :] != 0)[0]
        images = [inv_index[ind] for ind in non_zero]
        for j in range(len(non_zero)):
            temp_min[0, images[j]] = temp_min[0, images[j]] + np.minimum(
                v[i, non_zero[j]], v[images[j], non_zero[j]]
            )
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    del original_dist, v, jaccard_dist
    return final_dist if all_vs_all else final_dist[:query_num, query_num:]


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
