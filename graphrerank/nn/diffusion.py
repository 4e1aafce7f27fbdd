"""Diffusion as a propagation layer: the fixed-point iteration of online diffusion."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int, check_real, check_tensor
from .._params import MAX_ROUNDS
from .propagate import WeightedPropagation, check_propagation

__all__ = ["DiffusionPropagation"]


class DiffusionPropagation(WeightedPropagation):
    r"""The diffusion iteration of `"Efficient Diffusion on Region Manifolds"
    <https://arxiv.org/abs/1611.05113>`_ (Iscen et al., CVPR 2017) as a message-passing layer.

    Starting from :math:`\mathbf{F}^{(0)} = \mathbf{Y}` (or a given ``f0``),

    .. math::
        \mathbf{F}^{(t+1)} = \alpha\,\mathbf{S}\mathbf{F}^{(t)} + (1 - \alpha)\,\mathbf{Y},

    which for a symmetric normalised :math:`\mathbf{S} = \mathbf{D}^{-1/2}\mathbf{A}
    \mathbf{D}^{-1/2}` and :math:`\alpha < 1` converges to
    :math:`(1 - \alpha)(\mathbf{I} - \alpha\mathbf{S})^{-1}\mathbf{Y}`, i.e. :math:`1 - \alpha`
    times the solution of the system that :func:`graphrerank.diffusion.diffuse` solves by
    conjugate gradients (the error shrinks like :math:`\alpha^t`, so at :math:`\alpha = 0.99`
    hundreds of iterations are needed where CG takes tens). Each iteration is one fused sparse
    product (pass a sparse adjacency from :func:`~graphrerank.nn.adjacency`) or one round of
    per-edge messages (pass ``edge_index`` and ``edge_weight``). Unlike PyG's ``APPNP``, the
    :math:`\alpha` here is the paper's propagation weight (``APPNP``'s is the restart weight
    :math:`1 - \alpha`) and no self-loops are added.

    Args:
        alpha: :math:`\alpha \in [0, 1)`, reference 0.99.
        num_iters: Number of iterations :math:`t`, at most ``MAX_ROUNDS`` (1000; for a
            converged solution use :func:`graphrerank.diffusion.diffuse`).

    Shapes:
        - **input:** :math:`\mathbf{Y}` :math:`(N, Q)`; edges :math:`(2, E)` with weights
          :math:`(E,)`, or a sparse :math:`(N, N)` :math:`\mathbf{S}`; optional ``f0``
          :math:`(N, Q)`
        - **output:** :math:`\mathbf{F}^{(t)}` :math:`(N, Q)`

    Example:
        >>> S = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).to_sparse_csr()
        >>> y = torch.tensor([[1.0], [0.0]])
        >>> DiffusionPropagation(alpha=0.5, num_iters=60)(y, S)  # (1 - a)(I - a S)^-1 y
        tensor([[0.6667],
                [0.3333]])
    """

    def __init__(self, alpha: float = 0.99, num_iters: int = 10) -> None:
        super().__init__()
        self.alpha = check_real(alpha, "alpha", low=0, high=1, high_open=True)
        self.num_iters = check_int(
            num_iters,
            "num_iters",
            low=0,
            high=MAX_ROUNDS,
            high_of="MAX_ROUNDS; for a converged solution use graphrerank.diffusion.diffuse",
        )

    def forward(
        self,
        y: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor | None = None,
        f0: Tensor | None = None,
    ) -> Tensor:
        y = check_tensor(y, "y", ndim=(1, 2), finite=True)
        squeeze = y.dim() == 1
        if f0 is not None:
            f0 = check_tensor(f0, "f0", finite=True).to(y.dtype)
        if squeeze:
            y = y[:, None]
            f0 = f0[:, None] if f0 is not None and f0.dim() == 1 else f0
        if f0 is not None and f0.shape != y.shape:
            raise ValueError(f"f0 must have the shape of y {tuple(y.shape)}, got {tuple(f0.shape)}")
        n = y.shape[0]
        edge_index, edge_weight = check_propagation(
            y, edge_index, edge_weight, num_sources=n, num_targets=n, nodes="y"
        )
        restart = (1 - self.alpha) * y
        f = y if f0 is None else f0
        for _ in range(self.num_iters):
            f = self.alpha * self.propagate(edge_index, x=f, edge_weight=edge_weight) + restart
        if f.numel() and not bool(torch.isfinite(f).all()):
            raise ValueError(
                f"the iteration overflows {f.dtype}: the graph's weights (edge_weight, or the "
                "sparse edge_index) are not a normalised graph S (spectral radius <= 1), so "
                "alpha * S does not contract; normalise it (normalize_adjacency(..., 'sym'))"
            )
        return f[:, 0] if squeeze else f

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, num_iters={self.num_iters})"
