"""Dense float64 transcriptions of the reference diffusion code (Iscen et al. 2017), written
from its description: one loop per item or query, numpy only, no graphrerank code.

Used by the tests as an independent ground truth.
"""

import numpy as np


def knn_lists(sim, k):
    """Top-k columns of each row, best first (stable on ties, like MATLAB's sort)."""
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, 1)


def mutual_affinity(x, k, gamma):
    """knngraph.m: item i keeps neighbour j of its k-list (itself included) if i is in j's
    k-list, weight max(s_ij, 0)^gamma from i's list; the diagonal is then zeroed."""
    sim = x @ x.T
    knn, s = knn_lists(sim, k)
    n = len(x)
    a = np.zeros((n, n))
    for i in range(n):
        for jj, j in enumerate(knn[i]):
            if i in knn[j]:
                a[i, j] = max(s[i, jj], 0.0) ** gamma
    np.fill_diagonal(a, 0.0)
    return a


def directed_affinity(x, k, gamma):
    """W[i, j] = max(s_ij, 0)^gamma for the k - 1 nearest other items j of i."""
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    knn, s = knn_lists(sim, k - 1)
    n = len(x)
    w = np.zeros((n, n))
    for i in range(n):
        for jj, j in enumerate(knn[i]):
            w[i, j] = max(s[i, jj], 0.0) ** gamma
    return w


def affinity(x, k, gamma, how="mutual"):
    if how == "mutual":
        return mutual_affinity(x, k, gamma)
    w = directed_affinity(x, k, gamma)
    if how == "union":
        return w + w.T
    if how == "min":
        return np.where((w > 0) & (w.T > 0), np.minimum(w, w.T), 0.0)
    if how == "max":
        return np.maximum(w, w.T)
    raise ValueError(how)


def transition(a):
    """D^-1/2 A D^-1/2; rows of isolated items stay zero."""
    d = a.sum(1)
    inv = np.zeros_like(d)
    inv[d > 0] = d[d > 0] ** -0.5
    return inv[:, None] * a * inv[None, :]


def ymake(v, qv, kq, gamma):
    """ymake.m: kNN (kq) of every query vector, similarities summed per database vector,
    the kq largest kept, y = max(s, 0)^gamma."""
    n = len(v)
    acc = np.zeros(n)
    present = np.zeros(n, dtype=bool)
    for q in np.atleast_2d(qv):
        s = v @ q
        knn = np.argsort(-s, kind="stable")[:kq]
        acc[knn] += s[knn]
        present[knn] = True
    cand = np.flatnonzero(present)
    keep = cand[np.argsort(-acc[cand], kind="stable")[:kq]]
    y = np.zeros(n)
    y[keep] = np.maximum(acc[keep], 0.0) ** gamma
    return y


def pcg(a, b, tol=1e-6, maxit=20, best=True):
    """Conjugate gradients from x0 = 0 as MATLAB's pcg: stop when ||r|| <= tol ||b||; when not
    converged, return the iterate of smallest residual (best=True) or the last one."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = r @ r
    nb = np.sqrt(b @ b)
    if nb == 0:
        return x
    xmin, rmin = x.copy(), np.sqrt(rr)
    for _ in range(maxit):
        ap = a @ p
        step = rr / (p @ ap)
        x = x + step * p
        r = r - step * ap
        rr_new = r @ r
        if np.sqrt(rr_new) <= tol * nb:
            return x
        if np.sqrt(rr_new) < rmin:
            xmin, rmin = x.copy(), np.sqrt(rr_new)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return xmin if best else x


def order(f, second):
    """Indices by f descending, ties by `second` descending."""
    return np.lexsort((-second, -f))


def gmp_weights(v, ids, lam=1.0):
    """gmpweights.m: per image, (V^T V + lam I) b = 1."""
    out = np.zeros(len(v))
    for i in np.unique(ids):
        sel = np.flatnonzero(ids == i)
        g = v[sel] @ v[sel].T + lam * np.eye(len(sel))
        out[sel] = np.linalg.solve(g, np.ones(len(sel)))
    return out


def online_diffusion(
    x,
    queries,
    *,
    k,
    kq,
    alpha=0.99,
    gamma=3.0,
    tol=1e-6,
    maxit=20,
    how="mutual",
    best=True,
    truncation=None,
):
    """Scores and rankings of every query (each an (R, D) array or a (D,) vector) against
    the database x, ties broken by the first-stage similarity of the summed query."""
    a = affinity(x, k, gamma, how)
    n = len(x)
    if truncation is None:
        lap = np.eye(n) - alpha * transition(a)
    ranks, scores = [], []
    for qv in queries:
        qv = np.atleast_2d(qv)
        first = x @ qv.sum(0)
        if truncation is None:
            f = pcg(lap, ymake(x, qv, kq, gamma), tol, maxit, best)
            ranks.append(order(f, first))
            scores.append(f)
        else:
            sub = np.argsort(-first, kind="stable")[:truncation]
            rest = np.argsort(-first, kind="stable")[truncation:]
            lap_sub = np.eye(len(sub)) - alpha * transition(a[np.ix_(sub, sub)])
            f_sub = pcg(lap_sub, ymake(x[sub], qv, kq, gamma), tol, maxit, best)
            ranks.append(np.concatenate([sub[order(f_sub, first[sub])], rest]))
            f = np.full(n, -np.inf)
            f[sub] = f_sub
            scores.append(f)
    return np.array(ranks), np.array(scores)
