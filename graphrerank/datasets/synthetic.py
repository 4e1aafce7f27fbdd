r"""Synthetic retrieval data with manifold structure, of any size.

Each class is a smooth curve on the unit sphere. Class :math:`c` draws four orthonormal
directions :math:`u_{c,1..4} \in \mathbb{R}^D`, two angular frequencies
:math:`\omega_{c,1} \sim \pi\,U[0.75, 1.25]` and :math:`\omega_{c,2} \sim \pi\,U[1.5, 2.5]`
and two phases :math:`\varphi_{c,j} \sim U[0, 2\pi)`; the curve is

.. math::

    x_c(t) = \sqrt{0.75}\,\big(\cos\theta_1\, u_{c,1} + \sin\theta_1\, u_{c,2}\big)
           + \sqrt{0.25}\,\big(\cos\theta_2\, u_{c,3} + \sin\theta_2\, u_{c,4}\big),
    \qquad \theta_j = \omega_{c,j}\, t + \varphi_{c,j},\ t \in [0, 1),

which has unit norm for every ``t``: the main arc turns by about half a great circle and the
second pair adds a faster wiggle. Two points of one curve have cosine similarity
:math:`0.75\cos(\omega_{c,1}\Delta t) + 0.25\cos(\omega_{c,2}\Delta t)`, about ``-0.75``
between its ends, while points of different classes (nearly orthogonal random subspaces)
are near ``0``. An item is :math:`\mathrm{normalize}(x_c(t) + \sigma z / \sqrt{D})` with
``t`` uniform, :math:`z \sim N(0, I_D)` and :math:`\sigma` = ``noise`` (so the noise has
norm about ``noise`` against a signal of norm 1).

Hence the nearest neighbour of an item is almost always of its class (neighbours along the
curve are close), but many items of the same class are less similar than items of other
classes: the plain cosine ranking has a high 1-NN accuracy and a clearly lower mAP, and
methods that follow the kNN graph (diffusion, kNN propagation, query expansion) recover
much of the gap.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int, check_real
from .base import RetrievalDataset

__all__ = ["make_local_descriptors", "make_retrieval_dataset"]

#: Rows drawn from one random generator; fixes the values whatever ``chunk_size`` is.
_RNG_BLOCK = 4096
#: Target number of float64 elements of one chunk when ``chunk_size`` is not given.
_CHUNK_ELEMENTS = 2**22

# Independent random streams; every generator is keyed by (seed, stream, block).
_CLASSES, _DATABASE_LABELS, _DATABASE, _QUERY_LABELS, _QUERIES = range(5)

#: Largest ``noise``: beyond it the float64 squared norms of the noisy points overflow.
MAX_NOISE = 1e100


def _physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or ``None`` where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _bytes_needed(
    num_items: int, dim: int, num_classes: int, num_queries: int, itemsize: int, chunk: int
) -> int:
    """The peak memory of :func:`make_retrieval_dataset`, about: the outputs, the labels, the
    curve bases (a float64 ``(C, D, 4)`` Gaussian, its QR factor and a permuted copy) and the
    float64 work of one chunk."""
    rows = num_items + num_queries
    out = rows * dim * itemsize + 16 * rows
    curves = 3 * 32 * num_classes * dim
    work = 4 * 8 * dim * (min(chunk, max(num_items, num_queries)) + 2 * _RNG_BLOCK)
    return out + curves + work


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _generator(seed: int, stream: int, block: int = 0) -> torch.Generator:
    # A well-mixed 63-bit seed per (seed, stream, block), independent of the chunking. The
    # key always has three words (SeedSequence pads shorter keys with zeros).
    state = np.random.SeedSequence([seed, stream, block]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(
        (int(state[0]) << 31 | int(state[1])) & (2**63 - 1)
    )


class _Curves:
    """The per-class curve parameters."""

    def __init__(self, num_classes: int, dim: int, seed: int) -> None:
        g = _generator(seed, _CLASSES)
        gauss = torch.randn(num_classes, dim, 4, generator=g, dtype=torch.float64)
        q = torch.linalg.qr(gauss).Q  # (C, D, 4), orthonormal columns
        # (4, C, D) so that one direction of every class is a contiguous (C, D) matrix.
        self.basis = q.permute(2, 0, 1).contiguous()
        u = torch.rand(num_classes, 4, generator=g, dtype=torch.float64)
        self.omega1 = math.pi * (0.75 + 0.5 * u[:, 0])
        self.omega2 = math.pi * (1.5 + 1.0 * u[:, 1])
        self.phi1 = 2 * math.pi * u[:, 2]
        self.phi2 = 2 * math.pi * u[:, 3]

    def points(self, labels: Tensor, t: Tensor) -> Tensor:
        """``(n, D)`` float64 curve points of the given classes at positions ``t``."""
        a1 = self.omega1[labels] * t + self.phi1[labels]
        a2 = self.omega2[labels] * t + self.phi2[labels]
        w1, w2 = math.sqrt(0.75), math.sqrt(0.25)
        coef = (w1 * a1.cos(), w1 * a1.sin(), w2 * a2.cos(), w2 * a2.sin())
        out = coef[0].unsqueeze(1) * self.basis[0].index_select(0, labels)
        for j in range(1, 4):
            out.addcmul_(coef[j].unsqueeze(1), self.basis[j].index_select(0, labels))
        return out


def _block_randomness(seed: int, stream: int, block: int, rows: int, dim: int):
    g = _generator(seed, stream, block)
    t = torch.rand(rows, generator=g, dtype=torch.float64)
    z = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    return t, z


def _fill(
    out: Tensor,
    labels: Tensor,
    curves: _Curves,
    *,
    noise: float,
    seed: int,
    stream: int,
    chunk_size: int,
) -> None:
    n, dim = out.shape
    scale = noise / math.sqrt(dim)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        first, last = start // _RNG_BLOCK, (stop - 1) // _RNG_BLOCK
        parts = [
            _block_randomness(seed, stream, b, min(_RNG_BLOCK, n - b * _RNG_BLOCK), dim)
            for b in range(first, last + 1)
        ]
        offset = start - first * _RNG_BLOCK
        t = torch.cat([p[0] for p in parts])[offset : offset + stop - start]
        z = torch.cat([p[1] for p in parts])[offset : offset + stop - start]
        x = curves.points(labels[start:stop], t)
        if scale:
            x.add_(z, alpha=scale)
        x = torch.nn.functional.normalize(x, dim=1)
        out[start:stop] = x.to(out.dtype)


def _balanced_labels(n: int, num_classes: int, seed: int, stream: int) -> Tensor:
    g = _generator(seed, stream)
    return torch.randperm(n, generator=g) % num_classes


def make_retrieval_dataset(
    num_items: int = 10_000,
    dim: int = 128,
    num_classes: int = 100,
    *,
    num_queries: int = 0,
    noise: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
) -> RetrievalDataset:
    """Random L2-normalised descriptors lying on one smooth curve per class.

    See the module documentation for the construction. Classes are balanced (sizes differ by
    at most one) and shuffled. The result is deterministic for a ``seed`` and does not depend
    on ``chunk_size``, which only bounds the memory used next to the output (the output is
    ``num_items x dim`` of ``dtype``; one million 128-d float32 items take 512 MB).

    With the defaults (10,000 items, 128-d, 100 classes, ``noise=1.0``) the cosine ranking
    has an all-vs-all 1-NN class accuracy of about 1.0 but a class mAP of only about 0.48.
    The class subspaces are drawn independently, so they overlap more in few dimensions:
    with 2000 items in 20 classes the 1-NN accuracy is about 0.25 at ``dim=8``, 0.93 at
    ``dim=32`` and 1.0 at ``dim=128``. Few items per class also sample each curve sparsely.

    Args:
        num_items: database size ``N`` (>= 1).
        dim: descriptor dimension ``D`` (>= 4: each curve spans four directions).
        num_classes: number of classes (curves), ``1 <= num_classes <= num_items``.
        num_queries: number ``Q`` of separate queries drawn from the same curves (independent
            of the database items); 0 (default) for the all-vs-all case.
        noise: norm of the isotropic noise relative to the signal (finite, in
            ``[0, 1e100]``); larger values blur the curves and lower both the 1-NN accuracy
            and the mAP.
        seed: random seed (>= 0).
        dtype: floating point dtype of the descriptors; computed in float64, then cast.
        chunk_size: rows computed at once (default: about four million numbers' worth).

    Returns:
        ``database`` ``(N, D)`` with unit rows, ``database_labels`` ``(N,)`` int64 in
        ``0..num_classes-1``, and with ``num_queries > 0`` ``queries`` ``(Q, D)`` and
        ``query_labels`` ``(Q,)``; ``name="synthetic"``.

    Raises:
        TypeError: an argument has the wrong type (e.g. an integer ``dtype``).
        ValueError: an argument is out of range, or the sizes would need more memory than
            the machine's physical memory (refused before anything is allocated; the message
            gives the bytes needed).

    Example:
        >>> from graphrerank.datasets import make_retrieval_dataset
        >>> ds = make_retrieval_dataset(1000, 16, 10, num_queries=5, seed=1)
        >>> ds
        RetrievalDataset(name='synthetic', database=1000x16 float32, classes=10, queries=5x16)
        >>> ds.database.norm(dim=1).min() > 0.999
        tensor(True)
    """
    num_items = check_int(num_items, "num_items", low=1)
    dim = check_int(dim, "dim", low=4)
    num_classes = check_int(num_classes, "num_classes", low=1, high=num_items)
    num_queries = check_int(num_queries, "num_queries", low=0)
    noise = check_real(noise, "noise", low=0.0, high=MAX_NOISE, finite=True)
    seed = check_int(seed, "seed", low=0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point torch.dtype, got {dtype!r}")
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // dim)
    chunk_size = check_int(chunk_size, "chunk_size", low=1)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    need = _bytes_needed(num_items, dim, num_classes, num_queries, itemsize, chunk_size)
    memory = _physical_memory()
    if memory is not None and need > memory:
        raise ValueError(
            f"num_items={num_items}, dim={dim}, num_queries={num_queries} and "
            f"num_classes={num_classes} would need about {need:,} bytes ({_gib(need)}) of "
            f"{dtype} descriptors and work space, more than the {memory:,} bytes "
            f"({_gib(memory)}) of physical memory of this machine; ask for fewer items or "
            "queries or a smaller dim"
        )

    curves = _Curves(num_classes, dim, seed)
    labels = _balanced_labels(num_items, num_classes, seed, _DATABASE_LABELS)
    database = torch.empty(num_items, dim, dtype=dtype)
    fill = dict(noise=noise, seed=seed, chunk_size=chunk_size)
    _fill(database, labels, curves, stream=_DATABASE, **fill)
    queries = query_labels = None
    if num_queries:
        query_labels = _balanced_labels(num_queries, num_classes, seed, _QUERY_LABELS)
        queries = torch.empty(num_queries, dim, dtype=dtype)
        _fill(queries, query_labels, curves, stream=_QUERIES, **fill)
    return RetrievalDataset(
        database=database,
        database_labels=labels,
        queries=queries,
        query_labels=query_labels,
        name="synthetic",
    )


def make_local_descriptors(
    num_classes: int = 10,
    per_class: int = 60,
    *,
    parts: int = 12,
    length: int = 24,
    dim: int = 32,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Synthetic images as bags of local descriptors, for trying local-descriptor re-ranking
    without data.

    Each class has ``parts`` random "part" vectors; an image holds ``length // 2`` of its
    class's parts (drawn without repetition, each with Gaussian noise of standard deviation
    0.6 per coordinate) and ``length - length // 2`` descriptors of clutter shared by every
    class (40 clutter vectors). Its global descriptor is the mean of its local ones plus
    noise (0.25 per coordinate), L2-normalised. So matching local descriptors (which finds
    the shared parts) separates the classes better than the global mean, which the clutter
    dilutes.

    Args:
        num_classes: number of classes.
        per_class: images per class.
        parts: part vectors per class (at least ``length // 2``).
        length: local descriptors per image.
        dim: descriptor dimension.
        seed: seed of the random generator (the result is a function of the arguments).

    Returns:
        ``(global_descriptors, local_descriptors, labels)``: ``(N, dim)`` unit rows,
        ``(N, length, dim)`` and ``(N,)`` int64 class ids, ``N = num_classes * per_class``,
        classes in blocks (``labels = [0] * per_class + [1] * per_class + ...``).

    Example:
        >>> from graphrerank.datasets import make_local_descriptors
        >>> g, local, labels = make_local_descriptors(3, 4, length=8, dim=5)
        >>> tuple(g.shape), tuple(local.shape), labels.tolist()
        ((12, 5), (12, 8, 5), [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    """
    num_classes = check_int(num_classes, "num_classes", low=1, high=1_000_000)
    per_class = check_int(per_class, "per_class", low=1, high=1_000_000)
    length = check_int(length, "length", low=2, high=100_000)
    parts = check_int(parts, "parts", low=1, high=1_000_000)
    dim = check_int(dim, "dim", low=1, high=100_000)
    seed = check_int(seed, "seed", low=0)
    if parts < length // 2:
        raise ValueError(
            f"parts={parts} is too few for length={length}: each image holds length // 2 = "
            f"{length // 2} distinct parts of its class"
        )
    n = num_classes * per_class
    if n * length * dim > 2**31:
        raise ValueError(
            f"num_classes * per_class * length * dim = {n * length * dim:,} values is too "
            "large for a synthetic example (at most 2**31)"
        )
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, parts, dim, generator=g)
    clutter = torch.randn(40, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    pick = torch.rand(n, parts, generator=g).argsort(1)[:, : length // 2]
    own = protos[labels[:, None], pick] + 0.6 * torch.randn(n, length // 2, dim, generator=g)
    other = clutter[torch.randint(40, (n, length - length // 2), generator=g)]
    local = torch.cat([own, other], dim=1)
    glob = local.mean(1) + 0.25 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(glob, dim=1), local, labels
