"""Offline diffusion as the reference code (fyang93/diffusion, Yang et al., AAAI 2019) computes
it: a transcription of its algorithm written from the paper and from
``/work/shared/reference/methods.md`` section 4 (no code copied), used by
``bench_offline_diffusion.py`` as "what a user runs today".

Offline, on the L2-normalised float32 database (N items):

1. ``faiss.IndexFlatIP`` search of every item for its ``truncation`` nearest items (itself
   first); the first ``kd`` of them make the graph;
2. affinity: similarities clamped at 0 and raised to ``gamma``; an edge ``i -> j`` is kept
   when ``j`` is among the first ``kd`` of ``i`` and ``i`` among the first ``kd`` of ``j``
   (mutual), tested node by node; the first neighbour is dropped as "self";
3. ``S = D^{-1/2} A D^{-1/2}`` with ``D = rowsum(A) + 1e-12``, ``L = I - alpha S`` (float32
   SciPy sparse);
4. for every node ``i``: ``L[T_i][:, T_i]`` (SciPy fancy indexing, the list in ranking order),
   ``scipy.sparse.linalg.cg`` from 0 on ``e_0`` with ``rtol=tol``, ``maxiter``; the nodes are
   spread over a joblib thread pool (``n_jobs`` workers; a ``concurrent.futures`` thread pool
   when joblib is not installed); the solutions become the rows of a sparse ``C``.

Online (``search_old``, the paper's method): the ``kq`` nearest database items of each query
(faiss), weights ``s ** gamma`` (not clamped), ``y`` a sparse ``(Q, N)`` matrix of them,
``F = y @ C`` made dense, and each row sorted (a full argsort) keeping the first ``k``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla


def _mutual_affinity(sims: np.ndarray, ids: np.ndarray, gamma: float) -> sp.csr_matrix:
    """Mutual-kNN affinity over the first ``kd`` columns, tested node by node."""
    n, kd = ids.shape
    w = np.maximum(sims, 0) ** gamma
    rows, cols, vals = [], [], []
    for i in range(n):
        # is i among the first kd of each of its kd neighbours? (the neighbours' own lists)
        mutual = (ids[ids[i]] == i).any(axis=1)
        mutual[0] = False  # the first neighbour is taken to be the node itself
        if mutual.any():
            rows.append(np.full(int(mutual.sum()), i))
            cols.append(ids[i, mutual])
            vals.append(w[i, mutual])
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float32)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    return sp.csr_matrix((v.astype(np.float32), (r, c)), shape=(n, n))


def _laplacian(affinity: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    deg = np.asarray(affinity.sum(axis=1)).ravel() + 1e-12
    d = sp.diags(deg**-0.5)
    s = d @ affinity @ d
    return (sp.eye(affinity.shape[0], dtype=np.float32) - alpha * s).astype(np.float32).tocsr()


class Fyang93:
    """The reference offline diffusion: ``fit(x)`` (offline), ``search(q, k)`` (online)."""

    def __init__(
        self,
        kd: int = 50,
        kq: int = 10,
        truncation: int = 1000,
        alpha: float = 0.99,
        gamma: float = 3.0,
        tol: float = 1e-6,
        maxiter: int = 20,
        n_jobs: int = 2,
    ) -> None:
        self.kd, self.kq, self.truncation = kd, kq, truncation
        self.alpha, self.gamma, self.tol, self.maxiter = alpha, gamma, tol, maxiter
        self.n_jobs = n_jobs

    def _solve_node(self, i: int) -> np.ndarray:
        ids = self.trunc_ids[i]
        sub = self.laplacian[ids][:, ids]
        c, _ = spla.cg(sub, self.e0, rtol=self.tol, maxiter=self.maxiter)
        return c

    def _solve_all(self) -> list[np.ndarray]:
        nodes = range(self.n)
        try:
            from joblib import Parallel, delayed
        except ImportError:  # pragma: no cover - joblib is usually there
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.n_jobs) as pool:
                return list(pool.map(self._solve_node, nodes))
        return Parallel(n_jobs=self.n_jobs, prefer="threads")(
            delayed(self._solve_node)(i) for i in nodes
        )

    def fit(self, x: np.ndarray) -> Fyang93:
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        self.n = n = x.shape[0]
        t = min(self.truncation, n)
        self.index = faiss.IndexFlatIP(x.shape[1])
        self.index.add(x)
        sims, ids = self.index.search(x, t)
        self.trunc_ids = ids
        kd = min(self.kd, t)
        self.laplacian = _laplacian(
            _mutual_affinity(sims[:, :kd], ids[:, :kd], self.gamma), self.alpha
        )
        self.e0 = np.zeros(t, dtype=np.float32)
        self.e0[0] = 1.0
        sol = self._solve_all()
        rows = np.repeat(np.arange(n), t)
        self.C = sp.csr_matrix(
            (np.concatenate(sol).astype(np.float32), (rows, ids.reshape(-1))),
            shape=(n, n),
            dtype=np.float32,
        )
        return self

    def search(self, q: np.ndarray, k: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """Scores and indices ``(Q, k)`` of the online step (dense scores, full argsort)."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        sims, ids = self.index.search(q, self.kq)
        w = sims**self.gamma
        nq = q.shape[0]
        y = sp.csr_matrix(
            (w.ravel(), (np.repeat(np.arange(nq), ids.shape[1]), ids.ravel())),
            shape=(nq, self.n),
        )
        scores = (y @ self.C).toarray()
        ranks = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, ranks, axis=1), ranks
