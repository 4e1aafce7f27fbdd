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
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .._checks import Array, OneOf, check_in, check_int, checked

__all__ = ["STORAGES", "StoredLocal", "bytes_per_image", "compress_local", "decode_local"]

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
