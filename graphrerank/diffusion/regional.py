r"""Regional descriptors: generalized max pooling weights and pooling of region scores per image."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_allocation, check_index, check_int, check_real, check_tensor

__all__ = ["gmp_weights", "pool_regions"]


def _check_ids(
    image_ids: Tensor,
    m: int,
    rows_of: str,
    name: str = "image_ids",
    high: int = 2**62,
    of: str | None = None,
) -> Tensor:
    """``image_ids`` as one int64 id per row of the argument ``rows_of`` (``m`` rows), each in
    ``[0, high)`` (``of`` names what fixes ``high``)."""
    if isinstance(image_ids, Tensor) and image_ids.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 tensor, got {image_ids.dtype}")
    ids = check_index(image_ids, name, high=high, of=of)
    if ids.shape != (m,):
        raise ValueError(
            f"{name} must have shape ({m},), one id per row of {rows_of} ({m} row(s)), got "
            f"{tuple(ids.shape)}"
        )
    return ids


def gmp_weights(
    vectors: Tensor, image_ids: Tensor, *, lam: float = 1.0, block_bytes: int = 256 * 2**20
) -> Tensor:
    r"""Generalized max pooling weights (Murray and Perronnin, CVPR 2014) of each image's regions.

    For image :math:`i` with region vectors :math:`\mathbf{V}_i = [\mathbf{v}_1 \dots
    \mathbf{v}_{R_i}]` (columns), the weights :math:`\mathbf{b}_i` solve

    .. math::
        (\mathbf{V}_i^\top\mathbf{V}_i + \lambda\mathbf{I})\,\mathbf{b}_i = \mathbf{1},

    so that the pooled descriptor :math:`\mathbf{V}_i\mathbf{b}_i` has a similar inner product
    with every region (frequent, "bursty" regions are down-weighted). The reference
    (``gmpweights.m``) uses :math:`\lambda = 1`. Images are solved in batches (padded to the
    largest region count) with :func:`torch.linalg.solve`.

    Args:
        vectors: :math:`(M, D)` region vectors of all images.
        image_ids: :math:`(M,)` int64 image of each region, in :math:`[0, N)`; the images
            are numbered ``0 .. N-1`` and each has a region, so :math:`N \le M`.
        lam: :math:`\lambda > 0`, reference 1.
        block_bytes: Memory bound of one batch of Gram matrices.

    Returns:
        :math:`(M,)` weight of each region, in the dtype of ``vectors``.

    Example:
        >>> v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> gmp_weights(v, torch.tensor([0, 0, 0]))  # the repeated region shares its weight
        tensor([0.3333, 0.3333, 0.5000], dtype=torch.float64)
    """
    vectors = check_tensor(vectors, "vectors", ndim=2, finite=True, detach=True)
    m = vectors.shape[0]
    # N images of at least one region each: ids < M (a larger id is not an image of these
    # regions, and would size the per-image batches)
    image_ids = _check_ids(image_ids, m, "vectors", high=m, of="vectors with {high} row(s)")
    lam = check_real(lam, "lam", low=0, low_open=True, finite=True)
    block_bytes = check_int(block_bytes, "block_bytes", low=1)
    device, dtype = vectors.device, vectors.dtype
    out = torch.empty(m, dtype=dtype, device=device)
    if m == 0:
        return out
    order = image_ids.argsort(stable=True)
    sid = image_ids[order]
    n = int(sid[-1]) + 1
    counts = torch.bincount(sid, minlength=n)
    starts = counts.cumsum(0) - counts
    slot = torch.arange(m, device=device) - starts[sid]
    r = int(counts.max())
    per_image = max(1, block_bytes // max(1, (r * r + r * vectors.shape[1]) * 8))
    for lo in range(0, n, per_image):
        hi = min(n, lo + per_image)
        sel = (sid >= lo) & (sid < hi)
        img, pos = sid[sel] - lo, slot[sel]
        padded = torch.zeros(hi - lo, r, vectors.shape[1], dtype=torch.float64, device=device)
        padded[img, pos] = vectors[order[sel]].double()
        mask = torch.zeros(hi - lo, r, dtype=torch.bool, device=device)
        mask[img, pos] = True
        gram = padded @ padded.transpose(1, 2)
        # (V^T V + lam I) on real regions, identity on padding (whose weight is then 0)
        diag = torch.full((hi - lo, r), lam, dtype=torch.float64, device=device)
        gram = gram + torch.diag_embed(diag.masked_fill_(~mask, 1.0))
        rhs = mask.to(torch.float64)[:, :, None]
        b = torch.linalg.solve(gram, rhs)[:, :, 0]
        out[order[sel]] = b[img, pos].to(dtype)
    return out


def pool_regions(
    scores: Tensor,
    image_ids: Tensor,
    num_images: int | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    r"""Image scores from region scores: :math:`F_i = \sum_{r \in i} c_r f_r` (MATLAB
    ``accumarray(imids, f .* coeff)``).

    Args:
        scores: :math:`(M,)` or :math:`(M, Q)` region scores :math:`f_r`.
        image_ids: :math:`(M,)` int64 image of each region.
        num_images: :math:`N` (default ``image_ids.max() + 1``).
        weights: :math:`(M,)` coefficients :math:`c_r` (e.g. :func:`gmp_weights`); ones when
            ``None`` (sum pooling).

    Returns:
        :math:`(N,)` or :math:`(N, Q)` image scores.

    Example:
        >>> pool_regions(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 1, 0]))
        tensor([5., 2.])
    """
    scores = check_tensor(scores, "scores", ndim=(1, 2), nan=False, detach=True)
    m = scores.shape[0]
    if num_images is not None:
        num_images = check_int(num_images, "num_images", low=0)
    if num_images is None:
        image_ids = _check_ids(image_ids, m, "scores")
        num_images = int(image_ids.max()) + 1 if m else 0
        sized_by = "image_ids (its largest id)"
    else:
        image_ids = _check_ids(image_ids, m, "scores", high=num_images, of="num_images={high}")
        sized_by = "num_images"
    cols = scores.shape[1] if scores.dim() == 2 else 1
    check_allocation(num_images * cols, scores.dtype, scores.device, sized_by, "image scores")
    if weights is not None:
        weights = check_tensor(weights, "weights", shape=(m,), finite=True, detach=True)
        weights = weights.to(scores.dtype)
    s = scores if weights is None else scores * (weights if scores.dim() == 1 else weights[:, None])
    out = torch.zeros((num_images, *scores.shape[1:]), dtype=scores.dtype, device=scores.device)
    return out.index_add_(0, image_ids, s)
