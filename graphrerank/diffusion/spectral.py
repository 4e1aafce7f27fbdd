r"""Fast spectral ranking (Iscen et al., CVPR 2018): diffusion through a low-rank eigenbasis."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch_geometric.data import Data

from .._checks import Array, Real, check_csr, check_graph, check_in, check_int, check_real, checked

__all__ = ["DENSE_EIGEN_LIMIT", "spectral_embedding", "spectral_filter"]

Eigensolver = Literal["auto", "dense", "scipy"]

#: ``eigensolver="auto"`` takes the dense :func:`torch.linalg.eigh` up to this many nodes.
DENSE_EIGEN_LIMIT = 8192
#: ... and up to this many nodes when the rank is at least a tenth of them (Lanczos for
#: thousands of eigenvectors is far slower than one dense decomposition; float64 at this
#: size needs 3.2 GB).
DENSE_EIGEN_HIGH_RANK_LIMIT = 20_000


def _filter(lam: Tensor, alpha: float) -> Tensor:
    return (1 - alpha) / (1 - alpha * lam)


@checked(eigenvalues=Array(ndim=1, finite=True), alpha=Real(low=0, high=1, high_open=True))
def spectral_filter(eigenvalues: Tensor, alpha: float) -> Tensor:
    r"""The diffusion filter :math:`h(\lambda) = (1 - \alpha) / (1 - \alpha\lambda)`.

    ``eigenvalues`` are the :math:`(r,)` eigenvalues of the normalised affinity (in
    :math:`[-1, 1]`); one at :math:`1 / \alpha` has no finite filter value and is refused.

    Example:
        >>> spectral_filter(torch.tensor([1.0, 0.0, -1.0]), 0.5)
        tensor([1.0000, 0.5000, 0.3333])
    """
    h = _filter(eigenvalues, alpha)
    if h.numel() and not bool(torch.isfinite(h).all()):
        bad = float(eigenvalues[~torch.isfinite(h)][0])
        raise ValueError(
            f"eigenvalues holds {bad}, where the filter (1 - alpha) / (1 - alpha * lambda) with "
            f"alpha={alpha} is infinite (1 - alpha * lambda = 0)"
        )
    return h


def _parts(graph: Data | Tensor) -> tuple[Tensor, Tensor, int]:
    if isinstance(graph, Data):
        w = getattr(graph, "edge_weight", None)
        if w is None:
            raise ValueError("graph has no edge_weight: pass the normalised graph S")
        ei, w, n = check_graph(graph, "graph", weights=True)
        if n == 0:
            raise ValueError("graph has no nodes")
        return ei.flip(0), w.detach(), n
    if isinstance(graph, Tensor):
        if graph.dim() != 2 or graph.shape[0] != graph.shape[1] or graph.shape[0] == 0:
            raise ValueError(
                f"graph must be a non-empty square (N, N) matrix, got shape {tuple(graph.shape)}"
            )
        a = check_csr(graph, "graph", convert=True, square=True)
        coo = a.detach().to_sparse_coo().coalesce()
        return coo.indices(), coo.values(), graph.shape[0]
    raise TypeError(f"graph must be a torch_geometric Data or a tensor, got {type(graph).__name__}")


def spectral_embedding(
    graph: Data | Tensor,
    rank: int = 2000,
    *,
    alpha: float = 0.99,
    eigensolver: Eigensolver = "auto",
) -> tuple[Tensor, Tensor]:
    r"""Database embedding of fast spectral ranking.

    With the :math:`r` largest eigenpairs :math:`\mathbf{S}\mathbf{U}_r =
    \mathbf{U}_r\boldsymbol{\Lambda}_r` of the normalised graph,

    .. math::
        (1 - \alpha)(\mathbf{I} - \alpha\mathbf{S})^{-1} \approx
        \mathbf{U}_r\, h(\boldsymbol{\Lambda}_r)\, \mathbf{U}_r^\top = \mathbf{E}\mathbf{E}^\top,
        \qquad \mathbf{E} = \mathbf{U}_r\, h(\boldsymbol{\Lambda}_r)^{1/2},
        \quad h(\lambda) = \frac{1 - \alpha}{1 - \alpha\lambda},

    so the diffusion of a query vector :math:`\mathbf{y}` is :math:`\mathbf{f} =
    \mathbf{E}(\mathbf{E}^\top\mathbf{y})`: a product with a precomputed embedding (with
    :math:`k_q` non-zeros in :math:`\mathbf{y}`, :math:`O(k_q r + N r)`). At full rank it is the
    exact solve times :math:`1 - \alpha`. :math:`h > 0` for every eigenvalue of a normalised
    graph (:math:`|\lambda| \le 1`), so the square root is real.

    Eigensolvers (the eigen-decomposition is computed in float64, the embedding returned in the
    graph's dtype):

    * ``"dense"``: :func:`torch.linalg.eigh` of the dense :math:`N \times N` matrix, on the
      graph's device (CPU or CUDA); :math:`O(N^2)` memory, :math:`O(N^3)` time. Exact at any
      rank up to :math:`N`.
    * ``"scipy"``: Lanczos (``scipy.sparse.linalg.eigsh``, ``which="LA"``, the algebraically
      largest, as the paper's :math:`h` weights them most) on the CPU, for large sparse graphs;
      needs :math:`r < N`. A CUDA graph is refused with an error rather than copied to the CPU
      behind the user's back.
    * ``"auto"``: ``"dense"`` up to :data:`DENSE_EIGEN_LIMIT` nodes, or up to
      20,000 nodes when :math:`r \ge N / 10` (Lanczos for
      thousands of eigenvectors is much slower than one dense decomposition), else
      ``"scipy"``.

    Args:
        graph: The symmetric normalised graph :math:`\mathbf{S}` (a
            :class:`~torch_geometric.data.Data` or an :math:`(N, N)` tensor).
        rank: :math:`r`, reference 2000; capped at :math:`N - 1`.
        alpha: :math:`\alpha \in [0, 1)`, reference 0.99.
        eigensolver: ``"auto"``, ``"dense"`` or ``"scipy"``.

    Returns:
        ``(embedding, eigenvalues)``: :math:`\mathbf{E}` :math:`(N, r)` and
        :math:`\boldsymbol{\Lambda}_r` :math:`(r,)` in decreasing order.

    Raises:
        ValueError: bad ``rank``/``alpha``/``eigensolver``, or ``"scipy"`` on a CUDA graph.

    Example:
        >>> S = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
        >>> E, lam = spectral_embedding(S, rank=2, alpha=0.5)  # rank capped at N - 1 = 1
        >>> lam
        tensor([1.], dtype=torch.float64)
        >>> E @ E.T  # the eigenvalue-1 part of (1 - alpha) (I - alpha S)^-1
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]], dtype=torch.float64)
    """
    check_in(eigensolver, "eigensolver", ("auto", "dense", "scipy"))
    alpha = check_real(alpha, "alpha", low=0, high=1, high_open=True)
    idx, w, n = _parts(graph)
    rank = check_int(rank, "rank", low=1)
    rank = min(rank, max(n - 1, 1)) if n > 1 else 1
    device, dtype = w.device, w.dtype
    solver = eigensolver
    if solver == "auto":
        dense_ok = n <= DENSE_EIGEN_LIMIT or (n <= DENSE_EIGEN_HIGH_RANK_LIMIT and 10 * rank >= n)
        solver = "dense" if dense_ok else "scipy"
    if solver == "scipy":
        if device.type != "cpu":
            raise ValueError(
                f"eigensolver='scipy' runs on the CPU, but the graph is on {device}; use "
                "eigensolver='dense' (O(N^2) memory on the device) or fit on the CPU and move "
                "the embedding to the device yourself"
            )
        if n < 3:
            raise ValueError(f"eigensolver='scipy' needs at least 3 nodes, the graph has {n}")
        if rank >= n - 1 and n > 2:
            rank = n - 2  # Lanczos needs rank < N - 1 for which='LA'
        import numpy as np
        import scipy.sparse as sp
        from scipy.sparse.linalg import eigsh

        mat = sp.csr_matrix(
            (w.detach().double().numpy(), (idx[0].numpy(), idx[1].numpy())), shape=(n, n)
        )
        if not np.any(mat.data):
            # no edge of positive weight: S = 0, every eigenvalue is 0 (ARPACK would stop on a
            # zero Krylov vector); any orthonormal basis is an eigenbasis
            lam = torch.zeros(rank, dtype=torch.float64)
            vec = torch.eye(n, rank, dtype=torch.float64)
        else:
            from scipy.sparse.linalg import ArpackError, ArpackNoConvergence

            rng = np.random.default_rng(0)
            try:
                vals, vecs = eigsh(mat, k=rank, which="LA", v0=rng.standard_normal(n))
            except (ArpackError, ArpackNoConvergence) as err:
                raise ValueError(
                    f"graph: Lanczos (eigensolver='scipy') failed on this graph ({err}); "
                    "eigensolver='dense' solves it exactly (O(N^2) memory)"
                ) from None
            lam = torch.from_numpy(vals.copy())
            vec = torch.from_numpy(vecs.copy())
    else:
        dense = torch.zeros(n, n, dtype=torch.float64, device=device)
        dense.index_put_((idx[0], idx[1]), w.double(), accumulate=True)
        lam, vec = torch.linalg.eigh(dense)
    order = lam.argsort(descending=True)[:rank]
    lam, vec = lam[order], vec[:, order]
    h = _filter(lam, alpha)
    if not bool((h > 0).all()) or not bool(torch.isfinite(h).all()):
        raise ValueError(
            f"graph must be the normalised graph S (eigenvalues in [-1, 1]); its largest "
            f"eigenvalue {float(lam.max()):.4g} makes 1 - alpha * lambda <= 0"
        )
    emb = vec * h.sqrt()
    return emb.to(dtype), lam
