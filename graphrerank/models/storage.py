r"""Compact storage of database-side local descriptors: fewer per image, half precision, or bits.

A re-ranker over local descriptors keeps :math:`L_d` descriptors of dimension :math:`D` for
every database image, so the local part of the index costs

.. math::
    \text{bytes per image} = L_d \times
    \begin{cases} 4D & \text{float32} \\ 2D & \text{float16} \\ \lceil D / 8 \rceil
    & \text{binary (one sign bit per dimension)} \end{cases}

Binary descriptors keep the sign of each component (descriptors are assumed centred, as PCA
outputs are) and are decoded as :math:`\mathrm{sign}(\mathbf{x}) / \sqrt{D}`, a unit vector,
so cosine similarities with float queries stay meaningful (asymmetric binary matching, as in
AMES).

AMES's codes are ITQ's (Gong and Lazebnik, "Iterative quantization: a Procrustean approach to
learning binary codes", CVPR 2011): :func:`itq_whitening` learns, on training descriptors, a
PCA to :math:`c` dimensions followed by the orthogonal rotation that minimises the
quantisation loss of the sign bits (:func:`itq_rotation`), as one
:class:`~graphrerank.nn.PCAWhitening` whose components hold the rotation. Given to a model
(``whitening=``) or a re-ranker, it is applied to queries and database alike and saved with
them; ``"binary"`` storage then keeps the ITQ codes.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from .._checks import Array, OneOf, as_tensor, check_in, check_int, checked
from ..nn.whitening import PCAWhitening, _training_vectors

__all__ = [
    "STORAGES",
    "ITQResult",
    "StoredLocal",
    "bytes_per_image",
    "compress_local",
    "decode_local",
    "itq_rotation",
    "itq_whitening",
]

Storage = Literal["float32", "float16", "binary"]

#: The storage formats of :func:`compress_local`.
STORAGES: tuple[str, ...] = ("float32", "float16", "binary")

_BITS = (1 << torch.arange(7, -1, -1)).to(torch.uint8)  # MSB first, as numpy.packbits


class StoredLocal(NamedTuple):
    """Database local descriptors in their stored form.

    Attributes:
        data: :math:`(N, L_d, D)` float32 / float16, or :math:`(N, L_d, \\lceil D/8 \\rceil)`
            uint8 packed sign bits.
        storage: ``"float32"``, ``"float16"`` or ``"binary"``.
        dim: The descriptor dimension :math:`D` (needed to unpack bits).
    """

    data: Tensor
    storage: str
    dim: int


def bytes_per_image(num_descriptors: int, dim: int, storage: Storage = "float32") -> int:
    r"""Bytes one image's local descriptors take in ``storage``.

    Example:
        >>> bytes_per_image(16, 128, "float16"), bytes_per_image(16, 128, "binary")
        (4096, 256)
    """
    num_descriptors = check_int(num_descriptors, "num_descriptors", low=1)
    dim = check_int(dim, "dim", low=1)
    check_in(storage, "storage", STORAGES)
    per = {"float32": 4 * dim, "float16": 2 * dim, "binary": math.ceil(dim / 8)}[storage]
    return num_descriptors * per


@checked(local=Array(kind="number", ndim=3, finite=True), storage=OneOf(STORAGES))
def compress_local(
    local: Tensor, *, num_descriptors: int | None = None, storage: Storage = "float32"
) -> StoredLocal:
    r"""Keep the first ``num_descriptors`` local descriptors of each image in ``storage``.

    Descriptors are expected in order of importance (e.g. detector strength or feature norm,
    as the Corel-1k local set is): the first :math:`L_d` are kept.

    Args:
        local: :math:`(N, L, D)` descriptors (floating point, or integers such as ``uint8``
            SIFT, converted).
        num_descriptors: :math:`L_d \le L`; ``None`` keeps all.
        storage: ``"float32"``, ``"float16"`` or ``"binary"`` (sign bits, packed 8 per byte).

    Returns:
        A :class:`StoredLocal` on the device of ``local``.

    Raises:
        ValueError: ``num_descriptors`` is not in :math:`[1, L]`, ``storage`` is unknown,
            ``local`` is not 3-D or holds NaN or infinite values.
        TypeError: ``local`` is not a real-valued array (numpy arrays and lists are
            converted).

    Example:
        >>> x = torch.tensor([[[0.5, -0.5, 0.5, -0.5], [1.0, 0.0, 0.0, 0.0]]])
        >>> s = compress_local(x, num_descriptors=1, storage="binary")
        >>> s.data
        tensor([[[160]]], dtype=torch.uint8)
        >>> decode_local(s)
        tensor([[[ 0.5000, -0.5000,  0.5000, -0.5000]]])
    """
    n, length, dim = local.shape
    if num_descriptors is not None:
        length = check_int(num_descriptors, "num_descriptors", low=1, high=local.shape[1])
    x = local[:, :length]
    if storage == "float32":
        return StoredLocal(x.float().contiguous(), storage, dim)
    if storage == "float16":
        return StoredLocal(x.half().contiguous(), storage, dim)
    bits = x >= 0
    pad = (-dim) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(n, length, pad)], dim=-1)
    weights = _BITS.to(local.device)
    packed = (bits.view(n, length, -1, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)
    return StoredLocal(packed, storage, dim)


def decode_local(stored: StoredLocal, dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Float descriptors :math:`(N, L_d, D)` from a :class:`StoredLocal` (bits as
    :math:`\pm 1/\sqrt{D}`)."""
    data, storage, dim = stored
    if storage != "binary":
        return data.to(dtype)
    weights = _BITS.to(data.device)
    bits = (data.unsqueeze(-1) & weights) > 0
    bits = bits.flatten(-2)[..., :dim]
    return (bits.to(dtype) * 2 - 1) / math.sqrt(dim)


class ITQResult(NamedTuple):
    r"""The rotation learned by :func:`itq_rotation`.

    Attributes:
        rotation: :math:`(c, c)` orthogonal :math:`R` (float64).
        losses: :math:`(T + 1,)` quantisation loss :math:`\lVert B - V R \rVert_F^2` at the
            start (codes of the initial rotation) and after each of the :math:`T` iterations
            (float64, non-increasing).
    """

    rotation: Tensor
    losses: Tensor


def _signs(y: Tensor) -> Tensor:
    r""":math:`\pm 1` with :math:`+1` at zero (the bit ``y >= 0`` of :func:`compress_local`)."""
    return torch.where(y >= 0, 1.0, -1.0).to(y.dtype)


def itq_rotation(
    projected: Any,
    *,
    iterations: int = 50,
    seed: int = 0,
    init: Any = None,
) -> ITQResult:
    r"""Iterative quantisation (ITQ; Gong and Lazebnik, CVPR 2011): the orthogonal rotation
    :math:`R` of zero-centred, PCA-projected data :math:`V` :math:`(N, c)` whose sign bits
    lose the least, :math:`\min_{B \in \{\pm 1\}^{N \times c},\, R^\top R = I}
    \lVert B - V R \rVert_F^2`, by alternating the two exact partial minimisations:

    .. math::
        B \leftarrow \operatorname{sign}(V R), \qquad
        R \leftarrow S \hat S^\top \quad \text{with} \quad V^\top B = S\, \Omega\, \hat S^\top
        \text{ (SVD; orthogonal Procrustes)}.

    Each step cannot increase the loss, so :attr:`ITQResult.losses` is non-increasing.
    :math:`\operatorname{sign}(0) = +1`, as the bits of :func:`compress_local`. Computed in
    float64 (:math:`8 N c` bytes for :math:`V`).

    Args:
        projected: :math:`(N, c)` data :math:`V`, already centred and projected (e.g. the
            output of a :class:`~graphrerank.nn.PCAWhitening` with ``whiten=False`` and
            ``l2=False``).
        iterations: :math:`T \ge 0` alternations (the paper: 50).
        seed: Seed of the random orthogonal initial rotation (QR of a Gaussian matrix).
        init: A :math:`(c, c)` orthogonal initial rotation instead of the random one.

    Returns:
        :class:`ITQResult` ``(rotation, losses)``.

    Raises:
        ValueError: ``projected`` is not 2-D, has NaN or infinite values; ``init`` is not
            :math:`(c, c)` or not orthogonal; ``iterations`` is negative.
        TypeError: ``projected`` is not real-valued.

    Example:
        >>> v = torch.tensor([[2.0**0.5, 0.0], [-(2.0**0.5), 0.0], [0.0, 2.0**0.5],
        ...                   [0.0, -(2.0**0.5)]])
        >>> r30 = torch.tensor([[3**0.5 / 2, -0.5], [0.5, 3**0.5 / 2]])
        >>> out = itq_rotation(v, iterations=1, init=r30)
        >>> out.rotation * 2**0.5  # a 45 degree rotation: the four points become (+-1, +-1)
        tensor([[ 1.0000, -1.0000],
                [ 1.0000,  1.0000]], dtype=torch.float64)
        >>> out.losses
        tensor([0.5452, 0.0000], dtype=torch.float64)
    """
    v = as_tensor(projected, "projected")
    if v.dim() != 2:
        raise ValueError(f"projected must be (N, c), got shape {tuple(v.shape)}")
    if v.is_complex() or v.dtype == torch.bool:
        raise TypeError(f"projected must hold real values, got dtype {v.dtype}")
    v = v.to(torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise ValueError("projected contains NaN or infinite values")
    iterations = check_int(iterations, "iterations", low=0)
    c = v.shape[1]
    if init is None:
        g = torch.Generator().manual_seed(check_int(seed, "seed"))
        q, r = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))
        rot = (q * torch.sign(torch.diagonal(r))).to(v.device)  # Haar-distributed
    else:
        rot = as_tensor(init, "init").to(device=v.device, dtype=torch.float64)
        if tuple(rot.shape) != (c, c):
            raise ValueError(f"init must be ({c}, {c}), got shape {tuple(rot.shape)}")
        eye = torch.eye(c, dtype=torch.float64, device=v.device)
        if not torch.allclose(rot.T @ rot, eye, atol=1e-6):
            raise ValueError("init must be orthogonal (init.T @ init = I)")
    vr = v @ rot
    b = _signs(vr)
    losses = [float(((b - vr) ** 2).sum())]
    for _ in range(iterations):
        s, _, sh_t = torch.linalg.svd(v.T @ b)
        rot = s @ sh_t
        vr = v @ rot
        b = _signs(vr)
        losses.append(float(((b - vr) ** 2).sum()))
    return ITQResult(rot, torch.tensor(losses, dtype=torch.float64))


def itq_whitening(
    local: Any,
    bits: int = 128,
    *,
    mask: Any = None,
    iterations: int = 50,
    seed: int = 0,
) -> PCAWhitening:
    r"""Learn ITQ on training descriptors: a PCA to ``bits`` dimensions (centred, not
    whitened) then the rotation of :func:`itq_rotation`, folded into one fitted
    :class:`~graphrerank.nn.PCAWhitening` (``whiten=False``, ``l2=True``) that maps a
    descriptor :math:`\mathbf{x}` to :math:`R^\top U_c^\top (\mathbf{x} - \boldsymbol\mu)`,
    L2-normalised. Its sign bits (``db_storage="binary"``) are the ITQ codes; float queries go
    through the same map, so asymmetric matching stays in one space. As a ``PCAWhitening`` it
    is saved and loaded with a :class:`~graphrerank.models.LocalMatcher` or a
    :class:`~graphrerank.rerankers.LocalDescriptorReranker` (``whitening=``) like any other.

    Its ``components`` are :math:`(U_c R)^\top` and its ``eigenvalues`` the variances of the
    rotated components, :math:`\operatorname{diag}(R^\top \Lambda R)` (ITQ balances them).

    Args:
        local: Training descriptors :math:`(N, D)`, :math:`(N, L, D)` or a list of
            :math:`(n_i, D)` arrays (as :meth:`PCAWhitening.fit
            <graphrerank.nn.PCAWhitening.fit>`).
        bits: Code length :math:`c \le D` (AMES: 128).
        mask: Optional boolean :math:`(N, L)` of the valid descriptors.
        iterations: ITQ alternations (the paper: 50).
        seed: Seed of ITQ's random initial rotation.

    Returns:
        The fitted map :math:`(\dots, D) \to (\dots, c)`.

    Raises:
        ValueError: ``bits`` above :math:`D` or the rank of the training covariance, too few
            or non-finite training vectors.
        TypeError: non-floating-point descriptors.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(500, 16, generator=g) @ torch.randn(16, 16, generator=g)
        >>> itq = itq_whitening(x, bits=8)
        >>> codes = compress_local(itq(x).unsqueeze(0), storage="binary")
        >>> codes.data.shape, bytes_per_image(1, 8, "binary")
        (torch.Size([1, 500, 1]), 1)
    """
    bits = check_int(bits, "bits", low=1)
    pca = PCAWhitening(bits, whiten=False, l2=True).fit(local, mask)
    v = _training_vectors(local, mask).to(device=pca.mean.device, dtype=torch.float64)
    projected = (v - pca.mean) @ pca.components.T
    rot = itq_rotation(projected, iterations=iterations, seed=seed).rotation
    pca.eigenvalues = torch.einsum("ij,i,ij->j", rot, pca.eigenvalues, rot)
    pca.components = (rot.T @ pca.components).contiguous()
    return pca
