r"""A graph attention network that scores (query, candidate) pairs from local descriptors."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import TransformerConv
from torch_geometric.utils import softmax

from .._checks import check_int, check_real
from .._io import CorruptFileError, load_arrays, save_arrays
from .._numba import compile_kernels, warn_kernel_failed
from ..nn.whitening import PCAWhitening
from .graph import (
    EDGE_C2Q,
    EDGE_GLOBAL,
    EDGE_INTRA,
    _intra,
    _unit,
    check_match_inputs,
    match_graph,
)

__all__ = ["EncodedLocal", "LocalMatcher"]

#: Bounds on the sizes of a model (beyond them the weights would not fit in memory).
MAX_DIM, MAX_LAYERS, MAX_HEADS, MAX_RBF, MAX_WEIGHTS = 65536, 64, 1024, 1024, 2**31

_FORMAT = "graphrerank.LocalMatcher"
#: 1: the joint design only (no ``design`` key: read as ``design="joint"``); 2: ``design``.
_VERSION = 2

#: Architectures of :class:`LocalMatcher`.
DESIGNS = ("late", "joint")


def _dense_attention(
    conv: TransformerConv,
    h_dst: Tensor,
    kv_src: Tensor,
    nbr: Tensor,
    attr: Tensor,
    *,
    query: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""PyG's :class:`~torch_geometric.nn.conv.TransformerConv` (``root_weight=False``,
    concatenated heads) for targets that each receive exactly :math:`K` edges, as dense
    tensors: gathers instead of scatters.

    Args:
        conv: The layer whose weights are used.
        h_dst: :math:`(G, n, d)` target node states (unused when ``query`` is given).
        kv_src: :math:`(G, m, 2 H C)` key and value projections of the source nodes.
        nbr: :math:`(G, n, K)` source of each edge (index into ``m``).
        attr: :math:`(G, n, K, E)` edge features.
        query: :math:`(G, n, H C)` query projections of the targets, if already computed.
        mask: :math:`(G, n, K)` edges that exist (``None``: all).

    Returns:
        :math:`(G, n, H C)` messages; a target without edges gets zero, as in PyG.
    """
    heads, c = conv.heads, conv.out_channels
    g, n, k = nbr.shape
    m = kv_src.shape[1]
    q = conv.lin_query(h_dst) if query is None else query
    q = q.expand(g, n, heads * c).reshape(g, n, 1, heads, c)
    if kv_src.shape[0] == 1:  # one source image shared by all G targets
        kv = kv_src[0].index_select(0, nbr.reshape(-1))
    else:
        base = (torch.arange(g, device=nbr.device) * m).view(g, 1, 1)
        kv = kv_src.reshape(g * m, -1).index_select(0, (nbr + base).reshape(-1))
    kv = kv.view(g, n, k, 2, heads, c)
    w_e = conv.lin_edge.weight.view(heads, c, -1)  # (H, C, E)
    e = attr.shape[-1]
    # q . (k_j + W_e e_ij) = q . k_j + (W_e^T q) . e_ij
    qe = (q.reshape(g * n, heads, c).transpose(0, 1) @ w_e).transpose(0, 1)  # (GN, H, E)
    alpha = (q * kv[:, :, :, 0]).sum(-1) + (
        qe.view(g, n, 1, heads, e) * attr.view(g, n, k, 1, e)
    ).sum(-1)  # (G, n, K, H)
    alpha = alpha * (1.0 / math.sqrt(c))
    if mask is not None:
        alpha = alpha.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    alpha = torch.softmax(alpha, dim=2)
    if mask is not None:
        alpha = alpha.nan_to_num(0.0)
    alpha = torch.nn.functional.dropout(alpha, p=conv.dropout, training=conv.training)
    out = (alpha.unsqueeze(-1) * kv[:, :, :, 1]).sum(2)  # (G, n, H, C)
    ae = (alpha.unsqueeze(-1) * attr.view(g, n, k, 1, e)).sum(2)  # (G, n, H, E)
    out = out + (ae.reshape(g * n, heads, e).transpose(0, 1) @ w_e.transpose(1, 2)).transpose(
        0, 1
    ).view(g, n, heads, c)
    return out.reshape(g, n, heads * c)


def _block_attention(
    conv: TransformerConv, query: Tensor, kv_src: Tensor, nbr: Tensor, rbf: Tensor, tail: Tensor
) -> Tensor:
    r""":func:`_dense_attention` for the cross layer, with matrix products: scores of every
    target against every source of its graph (:math:`n \times m` per head), read at the
    :math:`K` edges; the weights scattered back into an :math:`n \times m` matrix times the
    values. Edge features are ``[rbf, tail]`` with ``tail`` the same on every edge.

    Args:
        query: :math:`(G_q, n, H C)` query projections of the targets (:math:`G_q \in \{1,
            G\}`).
        kv_src: :math:`(G_k, m, 2 H C)` key and value projections of the sources
            (:math:`G_k \in \{1, G\}`).
        nbr: :math:`(G, n, K)` distinct sources of each target.
        rbf: :math:`(G, n, K, R)` the edges' cosine features.
        tail: :math:`(E - R,)` the rest of every edge's features.
    """
    heads, c = conv.heads, conv.out_channels
    g, n, k = nbr.shape
    m = kv_src.shape[1]
    r = rbf.shape[-1]
    qh = query.reshape(-1, n, heads, c).transpose(1, 2)  # (Gq, H, n, C)
    kvh = kv_src.reshape(-1, m, 2, heads, c)
    kh = kvh[:, :, 0].permute(0, 2, 3, 1)  # (Gk, H, C, m)
    vh = kvh[:, :, 1].transpose(1, 2)  # (Gk, H, m, C)
    w_e = conv.lin_edge.weight.view(heads, c, -1)  # (H, C, E)
    idx = nbr.unsqueeze(1).expand(g, heads, n, k)
    score = torch.matmul(qh, kh).expand(g, heads, n, m).gather(3, idx)  # (G, H, n, K)
    qe = torch.matmul(qh, w_e.unsqueeze(0))  # (Gq, H, n, E)
    score = score + (qe[..., :r].unsqueeze(3) * rbf.unsqueeze(1)).sum(-1)
    score = score + (qe[..., r:] @ tail).unsqueeze(-1)
    alpha = torch.softmax(score * (1.0 / math.sqrt(c)), dim=-1)
    alpha = torch.nn.functional.dropout(alpha, p=conv.dropout, training=conv.training)
    dense = alpha.new_zeros(g, heads, n, m).scatter(3, idx, alpha)
    out = torch.matmul(dense, vh)  # (G, H, n, C)
    # sum_k alpha_k W_e e_k, with e_k = [rbf_k, tail] and sum_k alpha_k = 1
    ae = torch.cat(
        [(alpha.unsqueeze(-1) * rbf.unsqueeze(1)).sum(3), tail.expand(g, heads, n, -1)], dim=-1
    )
    out = out + torch.matmul(ae, w_e.transpose(1, 2).unsqueeze(0))
    return out.transpose(1, 2).reshape(g, n, heads * c)


#: Correspondences per block of the inference readout (:meth:`LocalMatcher.match`): its
#: (edges, hidden) intermediates stay in a core's cache.
_READOUT_EDGES = 16384

#: :meth:`LocalMatcher.match` without autograd takes the faster inference pass (``False``:
#: the autograd-capable pass everywhere; benchmarks and tests compare the two).
_FAST_INFERENCE = True
#: :func:`_topk_both` uses its numba kernel when numba is importable (``False``: torch.topk).
_USE_NUMBA = True

_TOPK_KERNEL: Any = None  # the compiled kernel, False without numba, None before the first call
#: Float32 CPU products of the inference pass through oneDNN's linear (``torch.ops.mkldnn``,
#: where torch has it; ``False``: ``torch.addmm``): 2-2.5x faster than MKL's sgemm on the
#: AMD EPYC of ``benchmarks/results/learned_speed.md``, the same values to rounding.
_USE_ONEDNN = True
#: Rows of a readout block through oneDNN are a multiple of this (it builds a kernel per shape).
_ONEDNN_ROWS = 1024


_ONEDNN_CHECKED = False  # whether the op was checked against torch.addmm in this process


def _onednn_ok(x: Tensor) -> bool:
    global _ONEDNN_CHECKED, _USE_ONEDNN
    ok = (
        _USE_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )  # fmt: skip
    if ok and not _ONEDNN_CHECKED:
        # the op is private to torch: check once per process that it still computes what
        # this module expects (linear, then the exact GELU) before trusting it
        _ONEDNN_CHECKED = True
        g = torch.Generator().manual_seed(0)
        a, w, b = (torch.randn(*s, generator=g) for s in ((8, 5), (3, 5), (3,)))
        want = torch.nn.functional.gelu(torch.addmm(b, a, w.T))
        try:
            got = torch.ops.mkldnn._linear_pointwise(a, w, b, "gelu", [], "none")
            same = tuple(got.shape) == (8, 3) and torch.allclose(got, want, atol=1e-5, rtol=1e-4)
        except Exception:  # a torch build whose oneDNN lacks the op
            same = False
        if not same:
            _USE_ONEDNN = ok = False
            warnings.warn(
                "oneDNN's fused linear does not match torch.addmm + GELU in this torch "
                "build; the matcher uses torch.addmm",
                RuntimeWarning,
                stacklevel=3,
            )
    return ok


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, gelu: bool = False) -> Tensor:
    r""":math:`x W^\top + b` for ``x`` :math:`(N, K)` and ``weight`` :math:`(M, K)`, followed by
    the exact (erf) GELU with ``gelu``: oneDNN's fused linear for float32 CPU tensors
    (``_USE_ONEDNN``), else ``torch.addmm``. A oneDNN failure warns once and falls back."""
    global _USE_ONEDNN
    if _onednn_ok(x):
        if not (weight.is_contiguous() or weight.T.is_contiguous()):
            weight = weight.contiguous()  # a strided slice takes a very slow path there
        try:
            return torch.ops.mkldnn._linear_pointwise(
                x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else ""
            )
        except Exception as err:  # a torch build whose oneDNN lacks the op or the shape
            _USE_ONEDNN = False
            warnings.warn(
                f"oneDNN's linear failed ({type(err).__name__}: {err}); using torch.addmm",
                RuntimeWarning,
                stacklevel=2,
            )
    out = torch.mm(x, weight.T) if bias is None else torch.addmm(bias, x, weight.T)
    return torch.nn.functional.gelu(out) if gelu else out


def _topk_both_py(x, s1, i1, s2, i2):  # pragma: no cover - compiled by numba
    """:func:`_topk_both`'s kernel (compiled by :func:`_topk_kernel`): of each block
    ``x[g]`` (n, m), the ``s1.shape[2]`` largest of each row into ``s1``, ``i1`` (B, n, k1)
    and the ``s2.shape[1]`` largest of each column into ``s2``, ``i2`` (B, k2, m), sorted.

    Branch-free compare-exchange insertion into sorted lists, every step a loop over a
    block's columns (SIMD); the rows on a transposed copy of the block. A value displaces only
    strictly smaller ones (ties: the earlier index first)."""
    b, n, m = x.shape
    k1, k2 = s1.shape[2], s2.shape[1]
    xt = np.empty((m, n), x.dtype)
    a1, j1 = np.empty((k1, n), x.dtype), np.empty((k1, n), np.int32)
    a2, j2 = np.empty((k2, m), x.dtype), np.empty((k2, m), np.int32)
    vb = np.empty(max(n, m), x.dtype)
    ib = np.empty(max(n, m), np.int32)
    for g in range(b):
        for r in range(n):
            for i in range(m):
                xt[i, r] = x[g, r, i]
        for side in range(2):
            if side == 0:  # columns of x[g]
                src, a, jj = x[g], a2, j2
            else:  # rows of x[g]: columns of its transpose
                src, a, jj = xt, a1, j1
            rows, cols = src.shape
            k = a.shape[0]
            for p in range(k):
                for i in range(cols):
                    a[p, i] = src[p, i]
                    jj[p, i] = p
            for p in range(1, k):  # sort the first k rows
                for q in range(p, 0, -1):
                    for i in range(cols):
                        hi, lo = a[q - 1, i], a[q, i]
                        c = lo > hi
                        a[q - 1, i], a[q, i] = (lo, hi) if c else (hi, lo)
                        jh, jl = jj[q - 1, i], jj[q, i]
                        jj[q - 1, i], jj[q, i] = (jl, jh) if c else (jh, jl)
            for r in range(k, rows):
                for i in range(cols):
                    vb[i] = src[r, i]
                    ib[i] = r
                for p in range(k):
                    for i in range(cols):
                        s, v = a[p, i], vb[i]
                        c = v > s
                        a[p, i], vb[i] = (v, s) if c else (s, v)
                        js, jv = jj[p, i], ib[i]
                        jj[p, i], ib[i] = (jv, js) if c else (js, jv)
        for p in range(k2):
            for i in range(m):
                s2[g, p, i] = a2[p, i]
                i2[g, p, i] = j2[p, i]
        for r in range(n):
            for p in range(k1):
                s1[g, r, p] = a1[p, r]
                i1[g, r, p] = j1[p, r]


def _topk_kernel():
    """:func:`_topk_both_py` compiled by numba at the first call (``cache=True``: later
    processes load it from disk); ``False`` when numba is not importable."""
    global _TOPK_KERNEL
    if _TOPK_KERNEL is None:
        compiled = compile_kernels(_topk_both_py, boundscheck=False)
        _TOPK_KERNEL = compiled[0] if compiled else False
    return _TOPK_KERNEL


def _topk_both(
    sim: Tensor, kq: int, kc: int, *, use_numba: bool | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``sim.topk(kq, dim=2)`` and ``sim.topk(kc, dim=1)`` of a :math:`(B, n, m)` matrix
    (values and indices, sorted, largest first). ``torch.topk`` costs about 0.5 us per row of
    64 on one core (most of a shortlist's re-ranking time), so on a CPU tensor and with numba
    importable one compiled pass over ``sim`` reads both (several times faster; ``use_numba``
    forces either path). The two agree except in the order of exactly tied values."""
    b, n, m = sim.shape
    if not (0 <= kq <= m and 0 <= kc <= n):
        raise ValueError(f"top-{kq} of rows of {m} and top-{kc} of columns of {n}: out of range")
    if use_numba is None:
        use_numba = _USE_NUMBA
    use_numba = (
        use_numba and sim.device.type == "cpu" and sim.dtype in (torch.float32, torch.float64)
    )
    kernel = _topk_kernel() if use_numba else False
    if kernel is False:
        s1, i1 = sim.topk(kq, dim=2)
        s2, i2 = sim.topk(kc, dim=1)
        return s1, i1, s2, i2
    s1, i1 = sim.new_empty(b, n, kq), torch.empty(b, n, kq, dtype=torch.long)
    s2, i2 = sim.new_empty(b, kc, m), torch.empty(b, kc, m, dtype=torch.long)
    try:
        kernel(sim.detach().contiguous().numpy(), s1.numpy(), i1.numpy(), s2.numpy(), i2.numpy())
    except Exception as err:
        # numba could not compile or load the kernel here (no writable cache location, an
        # unsupported CPU): warn once, then torch.topk from now on (the same result)
        global _TOPK_KERNEL
        _TOPK_KERNEL = False
        warn_kernel_failed("top-k", err, "torch.topk")
        return _topk_both(sim, kq, kc, use_numba=False)
    return s1, i1, s2, i2


def _block_diag_keys(x: Tensor, heads: int) -> Tensor:
    r"""Per-head vectors :math:`(G, L, H C)` as :math:`(G, H C, L H)` block-diagonal matrices:
    entry :math:`(h C + c,\ l H + h)` is :math:`x_{l, h C + c}`, zero across heads, so that
    ``y @ result`` holds every head's products :math:`y_h \cdot x_{l, h}` at :math:`(l, h)`."""
    g, length, width = x.shape
    c = width // heads
    out = x.new_zeros(g, heads, c, length, heads)
    out.diagonal(dim1=1, dim2=4).copy_(x.view(g, length, heads, c).permute(0, 3, 1, 2))
    return out.view(g, width, length * heads)


def _head_products(x: Tensor, y: Tensor, heads: int, shared: bool) -> Tensor:
    r"""Each head's products of every row of ``x`` :math:`(B, n, H C)` with every row of ``y``
    :math:`(G, m, H C)` (:math:`G = 1`: ``shared`` by all :math:`B`), as a :math:`(B, n, m,
    H)` view: one batched product per head (no block-diagonal zeros)."""
    b, n, width = x.shape
    g, m = y.shape[0], y.shape[1]
    c = width // heads
    yt = y.reshape(g, m, heads, c).permute(0, 2, 3, 1)  # (G, H, C, m)
    if shared and _onednn_ok(x):  # one product with the block-diagonal keys: faster there
        return _linear(x.reshape(b * n, width), _block_diag_keys(y, heads)[0].T).view(
            b, n, m, heads
        )
    if shared:
        xs = x.reshape(b * n, heads, c).transpose(0, 1)  # (H, B n, C)
        return torch.bmm(xs, yt[0]).view(heads, b, n, m).permute(1, 2, 3, 0)
    xs = x.reshape(b, n, heads, c).transpose(1, 2)  # (B, H, n, C)
    return torch.matmul(xs, yt).permute(0, 2, 3, 1)


def _rows_of(x: Tensor, index: Tensor) -> Tensor:
    """Rows ``x[g, index[g, ...]]`` of ``x`` (G, m, d) for ``index`` (G, ...), flattened to
    (G * index[g].numel(), d)."""
    g, m = x.shape[0], x.shape[1]
    base = (torch.arange(g, device=index.device) * m).view(-1, *([1] * (index.dim() - 1)))
    return x.reshape(g * m, -1).index_select(0, (index + base).reshape(-1))


def _kv(conv: TransformerConv, h: Tensor) -> Tensor:
    """Key and value projections of ``h`` side by side, ``(..., 2 H C)``."""
    return torch.cat([conv.lin_key(h), conv.lin_value(h)], dim=-1)


class EncodedLocal(NamedTuple):
    r"""Per-image states of a ``design="late"`` :class:`LocalMatcher`
    (:meth:`LocalMatcher.encode`): everything that does not depend on the other image, so
    that a database is encoded once and a query once for all its candidates.

    Attributes:
        unit: :math:`(N, L, D)` L2-normalised local descriptors (for the correspondences).
        h: :math:`(N, L', d)` node states after the per-image blocks (:math:`L' = L + 1`
            with a global node, last).
        query: :math:`(N, L', d)` query projections of the cross attention.
        kv: :math:`(N, L', 2d)` key and value projections of the cross attention.
        unit_global: :math:`(N, D_g)` L2-normalised global descriptors, or ``None``.
    """

    unit: Tensor
    h: Tensor
    query: Tensor
    kv: Tensor
    unit_global: Tensor | None

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, int) and not isinstance(index, bool):
            return tuple.__getitem__(self, index)
        if (
            isinstance(index, Tensor) and index.dim() == 1 and index.dtype == torch.long
            and (index.numel() == 0 or int(index.min()) >= 0)
        ):  # fmt: skip
            # the rows of a shortlist: index_select is faster than advanced indexing
            return EncodedLocal(*(None if t is None else t.index_select(0, index) for t in self))
        return EncodedLocal(
            self.unit[index],
            self.h[index],
            self.query[index],
            self.kv[index],
            None if self.unit_global is None else self.unit_global[index],
        )

    @property
    def num_images(self) -> int:
        return int(self.unit.shape[0])


def _conv(hidden: int, heads: int, dropout: float, edge_dim: int) -> TransformerConv:
    """The attention layer of every block and of the late design's cross layer."""
    return TransformerConv(
        hidden, hidden // heads, heads=heads, dropout=dropout, edge_dim=edge_dim,
        root_weight=False,
    )  # fmt: skip


class _EncoderBlock(nn.Module):
    """Pre-norm residual block of one image: intra-image attention, feed-forward (with
    ``cross``: cross-image attention between the two, :class:`_Block`)."""

    def __init__(
        self, hidden: int, heads: int, ffn: int, dropout: float, edge_dim: int, *,
        cross: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        # the layers in this order (their initialisation draws from the generator in turn)
        self.norm_intra = nn.LayerNorm(hidden)
        self.intra = _conv(hidden, heads, dropout, edge_dim)
        if cross:
            self.norm_cross = nn.LayerNorm(hidden)
            self.cross = _conv(hidden, heads, dropout, edge_dim)
        self.norm_ffn = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, h, intra_index, intra_attr, cross_index=None, cross_attr=None):
        h = h + self.drop(self.intra(self.norm_intra(h), intra_index, intra_attr))
        if cross_index is not None:
            h = h + self.drop(self.cross(self.norm_cross(h), cross_index, cross_attr))
        return h + self.drop(self.ffn(self.norm_ffn(h)))


class _Block(_EncoderBlock):
    """Pre-norm residual block: intra-image attention, cross-image attention, feed-forward."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, edge_dim: int) -> None:
        super().__init__(hidden, heads, ffn, dropout, edge_dim, cross=True)


class LocalMatcher(nn.Module):
    r"""Matching logit of a query image and each of its candidates from their local
    descriptors: graph attention over a match graph (:func:`~graphrerank.models.match_graph`),
    in the spirit of Reranking Transformers (RRT, Tan et al., ICCV 2021), AMES (Suma et al.,
    ECCV 2024) and LOCORE (Xiao et al., CVPR 2025), with sparse kNN correspondences instead of
    all-pairs attention.

    Nodes start from the L2-normalised descriptors, :math:`\mathbf{h}^{(0)}_i = \mathbf{W}_0
    \hat{\mathbf{x}}_i + \mathbf{r}_{\text{role}(i)}` (a learned query / candidate embedding).
    Each of the :math:`T` blocks applies, with pre-normalisation and residuals, multi-head
    attention (PyG :class:`~torch_geometric.nn.conv.TransformerConv`) over the intra-image
    edges, then over the cross-image correspondences, then a feed-forward layer:

    .. math::
        \mathbf{h}_i \leftarrow \mathbf{h}_i + \sum_{j \to i} \alpha_{ij}
        \left(\mathbf{W}_v \mathbf{h}_j + \mathbf{W}_e \mathbf{e}_{ij}\right), \qquad
        \alpha_{ij} = \operatorname{softmax}_{j}\!\left(
        \frac{(\mathbf{W}_q \mathbf{h}_i)^\top (\mathbf{W}_k \mathbf{h}_j
        + \mathbf{W}_e \mathbf{e}_{ij})}{\sqrt{d_h}}\right),

    where the edge features :math:`\mathbf{e}_{ij}` are a radial-basis expansion of the cosine
    :math:`s_{ij}` of the two descriptors plus, on intra edges, their relative position (with
    ``use_positions``) and, on cross edges, the direction (query to candidate or back). With
    ``global_dim``, each image also has a global node (:math:`\mathbf{W}_g \hat{\mathbf{g}}`)
    joined to its local nodes and, across images, to the other image's global node. The
    readout scores every correspondence :math:`(i, j)` joining the query to candidate
    :math:`c` and pools them with attention:

    .. math::
        \ell_c = b + \sum_{(i, j) \in \mathcal{E}_c} \beta_{ij}\, f(\mathbf{u}_{ij}),
        \quad \beta = \operatorname{softmax}_{\mathcal{E}_c}\!\big(g(\mathbf{u}_{ij})\big),
        \quad \mathbf{u}_{ij} = [\mathbf{h}_i \odot \mathbf{h}_j,\,
        |\mathbf{h}_i - \mathbf{h}_j|,\, \operatorname{rbf}(s_{ij})].

    The logit does not depend on the order of the descriptors within an image, and the number of
    descriptors may differ between queries and database images (asymmetric matching).

    Two designs share these layers:

    * ``design="late"`` (the default): the :math:`T` blocks see **one image at a time**
      (intra-image attention and feed-forward, no cross edges), then **one** cross-attention
      layer over the correspondences (both directions, residual) feeds the readout. Everything
      before the cross layer, including its query / key / value projections, depends on one
      image only: :meth:`encode` computes it once per database image (cached at fit time by
      :class:`~graphrerank.rerankers.LocalDescriptorReranker`) and once per query, and
      :meth:`match` scores a query's whole shortlist in one dense batched pass (one matrix
      product for the cosines of all candidates, top-k, block attention as matrix products).
      :meth:`score` and training use that dense pass; :meth:`forward` runs the same network
      with PyG's sparse :class:`~torch_geometric.nn.conv.TransformerConv` on the match graph,
      and the two agree to float rounding (``tests/models/test_late.py``).
    * ``design="joint"`` (the design of format-1 files, read as such): every block
      alternates intra-image and cross-image attention over the whole match graph, so the
      query's states depend on the candidate from the first block on and nothing is shared
      between pairs (3-4 times the CPU time per query, ``benchmarks/results/learned_speed.md``).

    Args:
        in_dim: Descriptor dimension :math:`D`.
        hidden: Node state width :math:`d`. The defaults are the small configuration validated
            on a CPU (``benchmarks/learned_corel.py``); RRT and AMES use :math:`d = 128`, 4 and
            2 heads, 6 and 5 layers, feed-forward 1024.
        heads: Attention heads (divides ``hidden``).
        num_layers: Blocks :math:`T`.
        ffn: Feed-forward width.
        dropout: Dropout on attention weights, residual branches and the readout (RRT: 0).
        k_intra: Intra-image neighbours per descriptor.
        k_cross: Cross-image correspondences per descriptor.
        use_positions: Use descriptor positions on intra edges (then every call needs them).
        global_dim: Dimension :math:`D_g` of global descriptors to add as one node per image
            (RRT's global tokens), or ``None`` for local descriptors only.
        num_rbf: Radial-basis functions encoding a cosine in :math:`[-1, 1]`.
        whitening: A fitted :class:`~graphrerank.nn.PCAWhitening` of the raw local
            descriptors (learned on training locals) whose output dimension is ``in_dim``:
            the model's preprocessing, saved and loaded with its weights.
            :meth:`preprocess` applies it; :func:`~graphrerank.models.train_matcher` and
            :class:`~graphrerank.rerankers.LocalDescriptorReranker` apply it once to raw
            descriptors (:attr:`input_dim` wide), :meth:`score` and :meth:`forward` take
            preprocessed ones.
        design: ``"late"`` or ``"joint"`` (above).

    Raises:
        ValueError: a setting is out of range: widths (``in_dim``, ``hidden``, ``ffn``,
            ``global_dim``) above 65536, ``num_layers`` above 64, ``heads`` or ``num_rbf``
            above 1024, or a model of more than :math:`2^{31}` weights.
        TypeError: a setting has the wrong type.

    Shapes:
        - **forward:** a match graph of :math:`P` pairs :math:`\to` logits :math:`(P,)`
        - **score:** query :math:`(B, L_q, D)`, candidates :math:`(B, W, L_c, D)` :math:`\to`
          logits :math:`(B, W)`
        - **encode** (late): :math:`(N, L, D)` :math:`\to` :class:`EncodedLocal`; **match**:
          :math:`B` (or one) encoded queries, :math:`B W` encoded candidates :math:`\to`
          :math:`(B, W)`

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = LocalMatcher(8, hidden=16, heads=2, num_layers=1, ffn=32).eval()
        >>> q, c = torch.randn(2, 5, 8), torch.randn(2, 3, 4, 8)
        >>> model.score(q, c).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        in_dim: int,
        *,
        hidden: int = 32,
        heads: int = 2,
        num_layers: int = 2,
        ffn: int = 64,
        dropout: float = 0.0,
        k_intra: int = 4,
        k_cross: int = 4,
        use_positions: bool = False,
        global_dim: int | None = None,
        num_rbf: int = 8,
        whitening: PCAWhitening | None = None,
        design: str = "late",
    ) -> None:
        super().__init__()
        if design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
        in_dim = check_int(in_dim, "in_dim", low=1, high=MAX_DIM)
        hidden = check_int(hidden, "hidden", low=1, high=MAX_DIM)
        heads = check_int(heads, "heads", low=1, high=MAX_HEADS)
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        num_layers = check_int(num_layers, "num_layers", low=0, high=MAX_LAYERS)
        ffn = check_int(ffn, "ffn", low=1, high=MAX_DIM)
        dropout = check_real(dropout, "dropout", low=0, high=1, high_open=True)
        k_intra = check_int(k_intra, "k_intra", low=0)
        k_cross = check_int(k_cross, "k_cross", low=1)
        num_rbf = check_int(num_rbf, "num_rbf", low=2, high=MAX_RBF)
        if global_dim is not None:
            global_dim = check_int(global_dim, "global_dim", low=1, high=MAX_DIM)
        weights = num_layers * (8 * hidden * hidden + 2 * hidden * ffn) + in_dim * hidden
        if weights > MAX_WEIGHTS:
            raise ValueError(
                f"this LocalMatcher would hold about {weights:.3g} weights (in_dim={in_dim}, "
                f"hidden={hidden}, ffn={ffn}, num_layers={num_layers}), more than the "
                f"{MAX_WEIGHTS:.3g} allowed; reduce hidden, ffn or num_layers"
            )
        if not isinstance(use_positions, bool):
            raise TypeError(f"use_positions must be True or False, got {use_positions!r}")
        if whitening is not None:
            if not isinstance(whitening, PCAWhitening):
                raise TypeError(
                    f"whitening must be a graphrerank.nn.PCAWhitening or None, got "
                    f"{type(whitening).__name__}"
                )
            if not whitening.is_fitted:
                raise ValueError("whitening must be fitted (on training local descriptors)")
            if whitening.out_features != in_dim:
                raise ValueError(
                    f"whitening outputs {whitening.out_features}-d descriptors but in_dim is "
                    f"{in_dim}"
                )
        self.config: dict[str, Any] = dict(
            in_dim=in_dim,
            hidden=hidden,
            heads=heads,
            num_layers=num_layers,
            ffn=ffn,
            dropout=dropout,
            k_intra=k_intra,
            k_cross=k_cross,
            use_positions=use_positions,
            global_dim=global_dim,
            num_rbf=num_rbf,
            design=design,
        )
        #: JSON-serialisable notes saved with the weights (the trainer records its settings).
        self.metadata: dict[str, Any] = {}
        #: The preprocessing of raw local descriptors (``None``: none).
        self.whitening = whitening
        self.register_buffer("rbf_centers", torch.linspace(-1, 1, num_rbf), persistent=False)
        self.rbf_width = 2.0 / (num_rbf - 1)
        edge_dim = num_rbf + 3
        self.embed = nn.Linear(in_dim, hidden)
        self.embed_global = None if global_dim is None else nn.Linear(global_dim, hidden)
        self.role = nn.Embedding(2, hidden)
        block = _Block if design == "joint" else _EncoderBlock
        self.blocks = nn.ModuleList(
            block(hidden, heads, ffn, dropout, edge_dim) for _ in range(num_layers)
        )
        if design == "late":
            self.norm_cross = nn.LayerNorm(hidden)
            self.cross = _conv(hidden, heads, dropout, edge_dim)
            self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)
        self.readout = nn.Sequential(
            nn.Linear(2 * hidden + num_rbf + 1, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 2),
        )
        self.bias = nn.Parameter(torch.zeros(()))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    @property
    def in_dim(self) -> int:
        """Descriptor dimension :math:`D` the network takes (after :meth:`preprocess`)."""
        return int(self.config["in_dim"])

    @property
    def input_dim(self) -> int:
        """Dimension of the raw descriptors :meth:`preprocess` takes (``in_dim`` without
        whitening)."""
        return self.in_dim if self.whitening is None else self.whitening.in_features

    def preprocess(self, local: Tensor) -> Tensor:
        r"""Raw local descriptors :math:`(\dots, D_{raw})` to the model's input
        :math:`(\dots, D)`: the ``whitening`` (float32 out), or unchanged without one."""
        if self.whitening is None:
            return local
        with torch.no_grad():
            return self.whitening(local.float())

    def _whitening_config(self) -> dict[str, Any] | None:
        w = self.whitening
        if w is None:
            return None
        return dict(
            dim=w.dim, center=w.center, whiten=w.whiten, shrinkage=w.shrinkage,
            power=w.power, l2=w.l2,
        )  # fmt: skip

    @classmethod
    def preset(cls, name: str, input_dim: int, /, **overrides: Any) -> LocalMatcher:
        """An untrained model with a paper's published sizes (``"rrt"``, ``"ames"``,
        ``"locore_base"``): :func:`~graphrerank.models.matcher_preset`, which lists them."""
        from .presets import matcher_preset

        return matcher_preset(name, input_dim, **overrides)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LocalMatcher:
        """An untrained model of a saved configuration (``config`` with ``in_dim`` and, for
        a model with preprocessing, ``whitening`` settings: its buffers come with the weights
        through ``load_state_dict``)."""
        config = dict(config)
        # files of format version 1 predate the late design and hold no ``design``
        config.setdefault("design", "joint")
        in_dim = config.pop("in_dim")
        wcfg = config.pop("whitening", None)
        model = cls(in_dim, **config)
        if wcfg is not None:
            if not isinstance(wcfg, dict):
                raise ValueError(f"whitening settings must be a mapping, got {wcfg!r}")
            model.whitening = PCAWhitening(**wcfg)
        return model

    def _rbf(self, s: Tensor) -> Tensor:
        return torch.exp(-(((s.unsqueeze(-1) - self.rbf_centers) / self.rbf_width) ** 2))

    def _rbf_(self, s: Tensor) -> Tensor:
        r""":meth:`_rbf` with one temporary, computed in place (no autograd), as
        :math:`2^{-(\sqrt{\log_2 e}\,(s - c) / w)^2}`: ``exp2`` is several times faster
        than ``exp`` on a CPU (the same values to a few units of the last place)."""
        inv = math.sqrt(math.log2(math.e)) / self.rbf_width
        return torch.sub(s.unsqueeze(-1) * inv, self.rbf_centers * inv).square_().neg_().exp2_()

    def graph(
        self,
        query: Tensor,
        candidates: Tensor,
        query_positions: Tensor | None = None,
        candidate_positions: Tensor | None = None,
        query_global: Tensor | None = None,
        candidate_global: Tensor | None = None,
    ) -> Data:
        """The match graph this model reads (its ``k_intra`` / ``k_cross``; positions and
        global descriptors only when the model uses them)."""
        if self.config["use_positions"]:
            if query_positions is None or candidate_positions is None:
                raise ValueError(
                    "this LocalMatcher was built with use_positions=True: pass positions"
                )
        else:
            query_positions = candidate_positions = None
        if self.config["global_dim"] is not None:
            if query_global is None or candidate_global is None:
                raise ValueError(
                    "this LocalMatcher was built with global_dim: pass global descriptors"
                )
            if query_global.shape[-1] != self.config["global_dim"]:
                raise ValueError(
                    f"global descriptors have dimension {query_global.shape[-1]}, the model "
                    f"takes {self.config['global_dim']}"
                )
        else:
            query_global = candidate_global = None
        return match_graph(
            query,
            candidates,
            k_intra=self.config["k_intra"],
            k_cross=self.config["k_cross"],
            query_positions=query_positions,
            candidate_positions=candidate_positions,
            query_global=query_global,
            candidate_global=candidate_global,
        )

    def forward(self, graph: Data) -> Tensor:
        """Logits :math:`(P,)` of the graph's pairs (``graph.num_pairs``)."""
        x = graph.x
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"descriptors have dimension {x.shape[-1]}, the model takes {self.in_dim} "
                "(the in_dim it was built with)"
            )
        dtype = self.embed.weight.dtype
        h = self.embed(torch.nn.functional.normalize(x.to(dtype), dim=-1))
        if self.embed_global is not None:
            xg = graph.get("x_global")
            if xg is None:
                raise ValueError("this LocalMatcher uses global descriptors: the graph has none")
            h = torch.cat(
                [h, self.embed_global(torch.nn.functional.normalize(xg.to(dtype), dim=-1))]
            )
        h = h + self.role(graph.role)
        etype = graph.edge_type
        sim = graph.edge_sim.to(dtype)
        rbf = self._rbf(sim)
        intra = (etype == EDGE_INTRA) | (etype == EDGE_GLOBAL)
        cross = ~intra
        flag = (etype == EDGE_GLOBAL).to(dtype).unsqueeze(1)
        intra_attr = torch.cat(
            [rbf[intra] * (1 - flag[intra]), graph.edge_pos[intra].to(dtype), flag[intra]], dim=1
        )
        intra_index, cross_index = graph.edge_index[:, intra], graph.edge_index[:, cross]
        src, dst = cross_index
        is_global = graph.get("is_global")
        gflag = (
            torch.zeros(src.numel(), 1, dtype=dtype, device=h.device)
            if is_global is None
            else (is_global[src] & is_global[dst]).to(dtype).unsqueeze(1)
        )
        direction = (etype[cross] == EDGE_C2Q).to(dtype).unsqueeze(1)
        cross_attr = torch.cat([rbf[cross], direction, 1 - direction, gflag], dim=1)
        if self.config["design"] == "joint":
            for block in self.blocks:
                h = block(h, intra_index, intra_attr, cross_index, cross_attr)
        else:
            for block in self.blocks:
                h = block(h, intra_index, intra_attr)
            h = h + self.drop(self.cross(self.norm_cross(h), cross_index, cross_attr))
        h = self.norm(h)
        u = torch.cat([h[src] * h[dst], (h[src] - h[dst]).abs(), rbf[cross], gflag], dim=1)
        out = self.readout(u)
        pair = graph.edge_pair[cross]
        num_pairs = int(graph.num_pairs)
        beta = softmax(out[:, 1], pair, num_nodes=num_pairs)
        logits = torch.zeros(num_pairs, dtype=out.dtype, device=out.device)
        logits.index_add_(0, pair, beta * out[:, 0])
        return logits + self.bias

    # ------------------------------------------------------------------ late design, dense
    def encode(
        self,
        local: Tensor,
        *,
        role: int,
        positions: Tensor | None = None,
        global_: Tensor | None = None,
    ) -> EncodedLocal:
        r"""Per-image states of :math:`N` images :math:`(N, L, D)` (preprocessed locals) for
        :meth:`match`: the ``design="late"`` blocks see one image at a time, so a database
        is encoded once (:class:`~graphrerank.rerankers.LocalDescriptorReranker` does it at
        fit time) and a query once for all its candidates.

        Args:
            local: :math:`(N, L, D)` local descriptors.
            role: 0 for queries, 1 for database images (the learned role embedding).
            positions: :math:`(N, L, 2)`, for a model with ``use_positions``.
            global_: :math:`(N, D_g)`, for a model with ``global_dim``.
        """
        if self.config["design"] != "late":
            raise ValueError('encode needs a design="late" LocalMatcher')
        if role not in (0, 1):
            raise ValueError(f"role must be 0 (query) or 1 (database), got {role!r}")
        if local.dim() != 3:
            raise ValueError(f"local must be (N, L, D), got {tuple(local.shape)}")
        if local.shape[-1] != self.in_dim:
            raise ValueError(
                f"descriptors have dimension {local.shape[-1]}, the model takes {self.in_dim} "
                "(the in_dim it was built with)"
            )
        if self.config["use_positions"] and positions is None:
            raise ValueError("this LocalMatcher was built with use_positions=True: pass positions")
        if self.config["global_dim"] is not None:
            if global_ is None:
                raise ValueError(
                    "this LocalMatcher was built with global_dim: pass global descriptors"
                )
            if global_.shape[-1] != self.config["global_dim"]:
                raise ValueError(
                    f"global descriptors have dimension {global_.shape[-1]}, the model "
                    f"takes {self.config['global_dim']}"
                )
        dtype = self.embed.weight.dtype
        n, length, _ = local.shape
        dev = local.device
        unit = _unit(local.to(dtype))
        h = self.embed(unit) + self.role.weight[role]
        glob = self.embed_global is not None
        unit_g = None
        if glob:
            unit_g = _unit(global_.to(dtype))
            h = torch.cat([h, (self.embed_global(unit_g) + self.role.weight[role]).unsqueeze(1)], 1)
        # intra-image kNN, as match_graph builds it
        pos = positions if self.config["use_positions"] else None
        offsets = torch.arange(n, device=dev) * length
        ei, s, rel = _intra(unit, self.config["k_intra"], pos, offsets)
        k = ei.shape[1] // max(1, n * length)
        num_rbf = self.config["num_rbf"]
        if k:
            nbr = (ei[0] - offsets.repeat_interleave(length * k)).view(n, length, k)
            attr = torch.cat(
                [
                    self._rbf(s.to(dtype)),
                    rel.to(dtype) if rel is not None else s.new_zeros(s.numel(), 2).to(dtype),
                    s.new_zeros(s.numel(), 1).to(dtype),
                ],
                dim=1,
            ).view(n, length, k, num_rbf + 3)
        else:
            nbr = torch.empty(n, length, 0, dtype=torch.long, device=dev)
            attr = h.new_empty(n, length, 0, num_rbf + 3)
        if glob:
            # each local also hears its image's global node (index L); the global node hears
            # every local
            flag = h.new_zeros(num_rbf + 3)
            flag[-1] = 1
            nbr = torch.cat([nbr, nbr.new_full((n, length, 1), length)], dim=2)
            attr = torch.cat([attr, flag.expand(n, length, 1, -1)], dim=2)
            g_nbr = torch.arange(length, device=dev).expand(n, 1, length)
            g_attr = flag.expand(n, 1, length, -1)
        for block in self.blocks:
            conv = block.intra
            hn = block.norm_intra(h)
            kv = _kv(conv, hn)
            if nbr.shape[2]:
                msg = _dense_attention(conv, hn[:, :length], kv, nbr, attr)
            else:
                msg = h.new_zeros(n, length, h.shape[-1])
            if glob:
                msg = torch.cat(
                    [msg, _dense_attention(conv, hn[:, length:], kv, g_nbr, g_attr)], dim=1
                )
            h = h + block.drop(msg)
            h = h + block.drop(block.ffn(block.norm_ffn(h)))
        hn = self.norm_cross(h)
        return EncodedLocal(unit, h, self.cross.lin_query(hn), _kv(self.cross, hn), unit_g)

    def match(self, query: EncodedLocal, candidates: EncodedLocal, width: int = 1) -> Tensor:
        r"""Logits :math:`(B, W)` of :math:`B` encoded queries (:meth:`encode`, ``role=0``)
        with :math:`B W` encoded candidates (``role=1``, each query's :math:`W` in turn,
        ``width`` :math:`= W`): the cross attention over the kNN correspondences and the
        readout, as dense batched tensors. Equal (to float rounding) to :meth:`forward` on
        the match graph of the same images.

        Without autograd (``torch.no_grad``, as in
        :func:`~graphrerank.models.score_shortlist`) and without dropout, a faster pass
        (with or without global nodes) computes the same logits in fewer operations; with numba
        installed (optional), the correspondences' top-k is one compiled pass over the
        cosines (``benchmarks/results/learned_speed.md``)."""
        if self.config["design"] != "late":
            raise ValueError('match needs a design="late" LocalMatcher')
        w = int(width)
        b = candidates.num_images // max(w, 1)
        if candidates.num_images != b * w or query.num_images not in (1, b):
            raise ValueError(
                f"{candidates.num_images} encoded candidates for {query.num_images} queries "
                f"of width {w}"
            )
        lq, lc = query.unit.shape[1], candidates.unit.shape[1]
        glob = query.unit_global is not None
        if _FAST_INFERENCE and not (
            torch.is_grad_enabled() or (self.training and self.config["dropout"])
        ):
            if b and lq and lc and w:
                return self._match_inference(query, candidates, b, w)
        hid = query.h.shape[-1]
        if query.num_images == 1 and b > 1:
            # one query shared by every row: one matrix product for all candidates
            d = query.unit.shape[-1]
            sim = (query.unit[0] @ candidates.unit.reshape(-1, d).T).view(lq, b, w * lc)
            sim = sim.transpose(0, 1)
        else:
            sim = query.unit @ candidates.unit.reshape(b, w * lc, -1).transpose(1, 2)
        # sim: (B, Lq, W Lc)
        kq, kc = min(self.config["k_cross"], lq), min(self.config["k_cross"], w * lc)
        s1, i1 = sim.transpose(1, 2).contiguous().topk(kq, dim=2)  # (B, W Lc, kq)
        s2, i2 = sim.contiguous().topk(kc, dim=2)  # (B, Lq, kc)
        rbf1, rbf2 = self._rbf(s1), self._rbf(s2)
        lc1 = lc + int(glob)  # nodes of a candidate image (locals, then the global node)
        q_kv = query.kv  # (B, Lq1, 2d)
        c_kv = candidates.kv.reshape(b, w * lc1, -1)
        c_q = candidates.query.reshape(b, w, lc1, -1)
        c_h = candidates.h.reshape(b, w, lc1, hid)
        # candidate locals <- their best query locals
        m_c = _block_attention(
            self.cross, c_q[:, :, :lc].reshape(b, w * lc, -1), q_kv[:, :lq], i1, rbf1,
            rbf1.new_tensor([0.0, 1.0, 0.0]),
        )  # (B, W Lc, d); edge tail: direction 0, 1 - direction, not global  # fmt: skip
        # query locals <- their best candidate locals (among all W candidates)
        src2 = i2 + (i2 // lc) * int(glob)  # candidate node index in (W Lc1)
        m_q = _block_attention(
            self.cross, query.query[:, :lq], c_kv, src2, rbf2, rbf2.new_tensor([1.0, 0.0, 0.0])
        )
        hc = c_h[:, :, :lc] + self.drop(m_c.view(b, w, lc, hid))
        hq = query.h[:, :lq] + self.drop(m_q)
        hq, hc = self.norm(hq), self.norm(hc).view(b, w * lc, hid)
        # readout over the correspondences: q2c edges (query i1 -> candidate node), c2q edges
        hq_1 = _rows_of(hq, i1).view(b, w * lc, kq, hid)
        out1 = self._readout(hq_1, hc.unsqueeze(2), rbf1, 0).view(b, w, lc * kq, 2)
        hc_2 = _rows_of(hc, i2).view(b, lq, kc, hid)
        out2 = self._readout(hq.unsqueeze(2), hc_2, rbf2, 0).view(b, 1, lq * kc, 2)
        f = [out1[..., 0], out2[..., 0].expand(b, w, -1)]
        gsc = [out1[..., 1], out2[..., 1].expand(b, w, -1)]
        if w > 1:
            own = (i2 // lc).view(b, 1, lq * kc) == torch.arange(w, device=sim.device).view(1, w, 1)
            gsc[1] = gsc[1].masked_fill(~own, float("-inf"))
        if glob:
            outg = self._global_readout(query, candidates, b, w)  # (B, W, 2)
            # both directions of the global correspondence carry the same features
            f += [outg[..., :1], outg[..., :1]]
            gsc += [outg[..., 1:], outg[..., 1:]]
        f_all, g_all = torch.cat(f, dim=-1), torch.cat(gsc, dim=-1)
        beta = torch.softmax(g_all, dim=-1)
        return (beta * f_all).sum(-1) + self.bias

    def _global_readout(
        self, query: EncodedLocal, candidates: EncodedLocal, b: int, w: int
    ) -> Tensor:
        r"""Readout :math:`(f, g)` :math:`(B, W, 2)` of the correspondence joining the query's
        global node to each candidate's (models with ``global_dim``; both passes of
        :meth:`match`): the candidate's global node hears the query's (one edge), the query's
        hears its row's :math:`W` candidates', then the readout of the pair with the global
        flag set."""
        lq, lc = query.unit.shape[1], candidates.unit.shape[1]
        lc1, hid = lc + 1, query.h.shape[-1]
        dev = query.h.device
        gsim = (query.unit_global.unsqueeze(1) * candidates.unit_global.view(b, w, -1)).sum(-1)
        grbf = self._rbf(gsim)  # (B, W, R)
        shape = (*grbf.shape[:-1], 1)

        def attr(direction):  # [rbf, direction, 1 - direction, global]
            one = grbf.new_ones(shape)
            return torch.cat([grbf, direction * one, (1 - direction) * one, one], dim=-1)

        c_kv = candidates.kv.reshape(b, w * lc1, -1)
        c_q = candidates.query.reshape(b, w, lc1, -1)
        # candidate global <- query global: one edge, softmax weight 1
        g_src = torch.full((b, w, 1), lq, dtype=torch.long, device=dev)
        m_cg = _dense_attention(
            self.cross, None, query.kv, g_src, attr(0).unsqueeze(2),
            query=c_q[:, :, lc:].reshape(b, w, -1),
        )  # fmt: skip
        # query global <- every candidate global of its row
        gq_src = (torch.arange(w, device=dev) * lc1 + lc).expand(b, 1, w)
        m_qg = _dense_attention(
            self.cross, None, c_kv, gq_src, attr(1).unsqueeze(1), query=query.query[:, lq:]
        )
        hcg = candidates.h.reshape(b, w, lc1, hid)[:, :, lc] + self.drop(m_cg)  # (B, W, d)
        hqg = query.h[:, lq] + self.drop(m_qg[:, 0])  # (B, d)
        hqg, hcg = self.norm(hqg), self.norm(hcg)
        return self.readout(self._edge_features(hqg.unsqueeze(1), hcg, grbf, 1))

    def _match_inference(
        self, query: EncodedLocal, candidates: EncodedLocal, b: int, w: int
    ) -> Tensor:
        r""":meth:`match` without autograd or dropout, in fewer and larger operations; the same
        logits to float rounding (``tests/models/test_late.py``,
        ``tests/models/test_matcher_inference.py``).

        * The :math:`n = W L_c` candidate nodes of each of the :math:`B` rows against the
          :math:`L_q` query nodes: one cosine matrix :math:`(B, n, L_q)` (one matrix product
          when the query is shared), read along both axes by one pass
          (:func:`_topk_both`), with no transposed copy; the rbf features with ``exp2``.
        * Attention scores: each head's products of all targets with all sources (one
          batched product per head for the candidate nodes, one product with a
          block-diagonal matrix of the query nodes' queries for the query nodes), read at the
          :math:`K` edges; softmax over the edge axis, never the innermost one. The constant
          edge features (the direction flags) add the same score to every edge of a target
          and drop out of the softmax; their message is a constant added to the residual.
        * Messages: each edge's value gathered, its rbf term :math:`W_e[:, :R]\,
          \operatorname{rbf}` added by one product, weighted and summed over the :math:`K`
          edges.
        * A global node (models with ``global_dim``) is matched by :meth:`_global_readout`,
          the same code as the autograd pass.
        * Readout: :meth:`_readout_inference`."""
        cross = self.cross
        heads, c = cross.heads, cross.out_channels
        hid = heads * c
        r = self.config["num_rbf"]
        lq, lc = query.unit.shape[1], candidates.unit.shape[1]
        n = w * lc  # candidate nodes per row
        kq, kc = min(self.config["k_cross"], lq), min(self.config["k_cross"], n)
        dim = query.unit.shape[-1]
        dev = query.h.device
        shared = query.num_images == 1
        glob = query.unit_global is not None
        scale = 1.0 / math.sqrt(c)
        w_e = cross.lin_edge.weight.view(heads, c, r + 3)  # (H, C, E)
        # per head: W_e[:, :R] (C, R) and the constant edge features' message W_e[:, R:] tail
        w_rbf = torch.block_diag(*w_e[:, :, :r])  # (H C, H R): query -> its rbf weights
        tail_c = (w_e[:, :, r:] @ w_e.new_tensor([0.0, 1.0, 0.0])).reshape(hid)  # q -> c
        tail_q = (w_e[:, :, r:] @ w_e.new_tensor([1.0, 0.0, 0.0])).reshape(hid)  # c -> q
        w_rbf_t = w_e[:, :, :r].reshape(hid, r).T  # (R, H C): rbf -> each head's W_e[:, :R] rbf

        cu = candidates.unit.reshape(b, n, dim)
        if shared:
            sim = _linear(cu.reshape(b * n, dim), query.unit[0]).view(b, n, lq)
        else:
            sim = torch.bmm(cu, query.unit.transpose(1, 2))  # (B, n, Lq)
        # (B, n, kq): best query nodes of each candidate node; (B, kc, Lq): best candidate
        # nodes of each query node
        s1, i1, s2, i2 = _topk_both(sim, kq, kc)
        rbf1, rbf2 = self._rbf_(s1), self._rbf_(s2)  # (B, n, kq, R), (B, kc, Lq, R)

        gq = query.num_images
        # the local nodes' states (a global node, last, is matched by _global_readout)
        q_h, q_q, q_kv = (t[:, :lq] for t in (query.h, query.query, query.kv))  # (Gq, Lq, .)
        q_k, q_v = q_kv[..., :hid], q_kv[..., hid:]
        c_h, c_q, c_kv = (
            t[:, :lc].reshape(b, n, -1) for t in (candidates.h, candidates.query, candidates.kv)
        )
        c_q = c_q.reshape(b * n, hid)

        # ---- candidate nodes <- their kq best query nodes
        # scores of every candidate node against every query node, read at the kq edges
        full = _head_products(c_q.view(b, n, hid), q_k, heads, shared)  # (B, n, Lq, H)
        score = full.gather(2, i1.unsqueeze(-1).expand(b, n, kq, heads)).view(b * n, kq, heads)
        i1q = i1 if shared else i1 + (torch.arange(b, device=dev) * lq).view(b, 1, 1)
        qe = torch.mm(c_q, w_rbf).view(b * n, heads, r)  # W_e[:, :R]^T q per head
        rbf1f = rbf1.view(b * n, kq, r)
        score.baddbmm_(rbf1f, qe.transpose(1, 2))
        alpha = torch.softmax(score.mul_(scale), dim=1)
        # messages v_j + W_e[:, :R] rbf_ij of the edges (the values gathered, the rbf term
        # added by one product), weighted by alpha and summed over the kq edges
        msg = q_v.reshape(gq * lq, hid).index_select(0, i1q.view(-1))
        msg.addmm_(rbf1f.view(-1, r), w_rbf_t)
        msg = msg.view(b * n, kq, heads, c)
        msg.mul_(alpha.unsqueeze(-1))
        hc = torch.sum(msg, 1).view(b, n, hid).add_(c_h).add_(tail_c)
        hc = self.norm(hc.view(b, n, hid))

        # ---- query nodes <- their kc best candidate nodes (of the row's W candidates)
        qbd = _block_diag_keys(q_q, heads)  # (Gq, H C, Lq H)
        c_k = c_kv[..., :hid]
        if shared:
            full = _linear(c_k.reshape(b * n, hid), qbd[0].T)
        else:
            full = torch.bmm(c_k, qbd)
        full = full.view(b, n, lq, heads)
        score = full.gather(1, i2.unsqueeze(-1).expand(b, kc, lq, heads))  # (B, kc, Lq, H)
        # + rbf(s) . W_e[:, :R]^T q, batched over the query nodes
        uq = torch.matmul(q_q, w_rbf).view(gq, lq, heads, r)
        if shared:
            t2 = torch.bmm(rbf2.permute(2, 0, 1, 3).reshape(lq, b * kc, r), uq[0].transpose(1, 2))
            score += t2.view(lq, b, kc, heads).permute(1, 2, 0, 3)
        else:
            score += (rbf2.unsqueeze(3) * uq.unsqueeze(1)).sum(-1)
        alpha = torch.softmax(score.mul_(scale), dim=1)  # (B, kc, Lq, H)
        base = (torch.arange(b, device=dev) * n).view(b, 1, 1)
        msg = c_kv[..., hid:].reshape(b * n, hid).index_select(0, (i2 + base).view(-1))
        msg.addmm_(rbf2.view(-1, r), w_rbf_t)
        msg = msg.view(b, kc, lq, heads, c)
        msg.mul_(alpha.unsqueeze(-1))
        hq = torch.sum(msg, 1).view(b, lq, hid).add_(q_h).add_(tail_q)
        hq = self.norm(hq.view(b, lq, hid))

        # ---- readout
        extra = self._global_readout(query, candidates, b, w) if glob else None
        return self._readout_inference(hq, hc, i1, i2, rbf1, rbf2, w, extra)

    def _readout_inference(
        self,
        hq: Tensor,
        hc: Tensor,
        i1: Tensor,
        i2: Tensor,
        rbf1: Tensor,
        rbf2: Tensor,
        w: int,
        extra: Tensor | None,
    ) -> Tensor:
        r"""The readout of :meth:`_match_inference`: logits :math:`(B, W)` from the query
        states ``hq`` :math:`(B, L_q, d)`, the candidate states ``hc`` :math:`(B, n, d)`, the
        correspondences ``i1`` :math:`(B, n, k_q)` (q2c: each candidate node's query nodes)
        and ``i2`` :math:`(B, k_c, L_q)` (c2q: each query node's candidate nodes), their rbf
        features, and ``extra`` :math:`(B, W, 2)`, the global correspondence's :math:`(f, g)`
        (counted twice, once per direction) or ``None``.

        * A mutual correspondence (:math:`i` among the :math:`k_q` best of :math:`j` and
          :math:`j` among the :math:`k_c` best of :math:`i`) is an edge of both lists with
          the same features, hence the same :math:`(f, g)`: the MLP runs once on it (its c2q
          copy is dropped) and its q2c copy enters the attention pooling with weight 2
          (:math:`g + \log 2`); the logits are unchanged, to rounding.
        * The first layer as one product of :math:`[h_i \odot h_j,\, |h_i - h_j|,\,
          \operatorname{rbf}]`, written in place into one buffer (the global flag is 0 on
          local edges), then GELU: one fused oneDNN pass for float32 CPU tensors
          (:func:`_linear`), else ``addmm`` and GELU in place; a block of rows at a time
          (``_READOUT_EDGES`` correspondences) so that the buffers stay in cache."""
        b, lq, hid = hq.shape
        n, kq, kc, r = hc.shape[1], i1.shape[2], i2.shape[1], rbf1.shape[-1]
        lc = n // w
        dev, dtype = hq.device, hq.dtype
        e1, e2 = n * kq, kc * lq
        f_in = 2 * hid + r
        # c2q edges that are also q2c edges: (b, kc, Lq); q2c edges that are also c2q edges
        q2c = torch.zeros(b, n, lq, dtype=torch.bool, device=dev).scatter_(2, i1, True)
        keep = ~q2c.gather(1, i2).view(-1)
        c2q = torch.zeros(b, n, lq, dtype=torch.bool, device=dev).scatter_(1, i2, True)
        mutual = c2q.gather(2, i1).view(b, e1)
        kept = keep.nonzero().squeeze(1)  # (m,) flat c2q edges kept, row-major
        ptr = torch.zeros(b + 1, dtype=torch.long, device=dev)
        torch.cumsum(keep.view(b, e2).sum(1), 0, out=ptr[1:])
        row2 = torch.div(kept, e2, rounding_mode="floor")
        a2 = row2 * lq + kept % lq  # query node rows (of hq flattened)
        c2 = row2 * n + i2.reshape(-1).index_select(0, kept)  # candidate node rows
        a1 = (i1 + (torch.arange(b, device=dev) * lq).view(b, 1, 1)).view(-1)
        hqf, hcf = hq.reshape(b * lq, hid), hc.reshape(b * n, hid)
        rbf2k = rbf2.reshape(-1, r).index_select(0, kept)
        lin1, act, _, lin2 = self.readout
        w1 = lin1.weight[:, :f_in]  # the global flag's column is 0 here
        f1 = torch.empty(2, b * e1, dtype=dtype, device=dev)  # (f, g) of the q2c edges
        f2 = torch.empty(2, kept.numel(), dtype=dtype, device=dev)  # of the kept c2q edges
        step = max(1, _READOUT_EDGES // (e1 + e2))
        bounds = ptr.tolist()
        rows = min(b, step) * e1 + max(bounds[s + min(step, b - s)] - bounds[s]
                                       for s in range(0, b, step))  # fmt: skip
        fused = _onednn_ok(hq) and act.approximate == "none"
        if fused:
            # oneDNN builds a kernel per shape: pad the rows of a block to a multiple of
            # _ONEDNN_ROWS (a few shapes per model, reused from call to call); the padding's
            # rows are zeros and their outputs are not read
            rows = -(-rows // _ONEDNN_ROWS) * _ONEDNN_ROWS
            w1 = w1.contiguous()
        u_buf = torch.empty(rows, f_in, dtype=dtype, device=dev)
        x_buf = None if fused else torch.empty(rows, hid, dtype=dtype, device=dev)
        for s in range(0, b, step):
            t = min(step, b - s)
            p0, p1 = bounds[s], bounds[s + t]
            m1, m2 = t * e1, p1 - p0
            u = u_buf[: m1 + m2]
            # q2c: candidate node j with each of its kq query nodes
            u1 = u[:m1].view(t, n, kq, f_in)
            a = hqf.index_select(0, a1[s * e1 : (s + t) * e1]).view(t, n, kq, hid)
            cc = hc[s : s + t].unsqueeze(2)
            torch.mul(a, cc, out=u1[..., :hid])
            torch.sub(a, cc, out=u1[..., hid : 2 * hid])
            u1[..., 2 * hid :] = rbf1[s : s + t]
            # c2q edges that are not mutual
            u2 = u[m1:]
            a = hqf.index_select(0, a2[p0:p1])
            cc = hcf.index_select(0, c2[p0:p1])
            torch.mul(a, cc, out=u2[:, :hid])
            torch.sub(a, cc, out=u2[:, hid : 2 * hid])
            u2[:, 2 * hid :] = rbf2k[p0:p1]
            u[:, hid : 2 * hid].abs_()
            if fused:  # one fused pass
                padded = u_buf[: -(-(m1 + m2) // _ONEDNN_ROWS) * _ONEDNN_ROWS]
                padded[m1 + m2 :].zero_()
                x = _linear(padded, w1, lin1.bias, gelu=True)[: m1 + m2]
            else:
                x = x_buf[: m1 + m2]
                torch.addmm(lin1.bias, u, w1.T, out=x)
                torch._C._nn.gelu(x, approximate=act.approximate, out=x)  # act, in place
            y = torch.addmm(lin2.bias.unsqueeze(1), lin2.weight, x.T)  # (2, rows): f, g
            f1[:, s * e1 : (s + t) * e1] = y[:, :m1]
            f2[:, p0:p1] = y[:, m1:]
        # pooling: softmax of g over each candidate's correspondences, f weighted by it
        g1 = f1[1].view(b, e1) + mutual.to(dtype) * math.log(2.0)
        fo1 = f1[0].view(b, e1)
        g2 = torch.full((b * e2,), float("-inf"), dtype=dtype, device=dev)
        g2[kept] = f2[1]
        fo2 = torch.zeros(b * e2, dtype=dtype, device=dev)
        fo2[kept] = f2[0]
        g2, fo2 = g2.view(b, 1, e2), fo2.view(b, 1, e2)
        f_all = [fo1.view(b, w, lc * kq), fo2.expand(b, w, e2)]
        g_all = [g1.view(b, w, lc * kq), g2.expand(b, w, e2)]
        if w > 1:  # each candidate: its q2c correspondences and the c2q ones that reach it
            own = (i2 // lc).view(b, 1, e2) == torch.arange(w, device=dev).view(1, w, 1)
            g_all[1] = g_all[1].masked_fill(~own, float("-inf"))
        if extra is not None:  # the global correspondence, once per direction
            f_all.append(extra[..., :1])
            g_all.append(extra[..., 1:] + math.log(2.0))
        beta = torch.softmax(torch.cat(g_all, dim=-1), dim=-1)
        return (beta * torch.cat(f_all, dim=-1)).sum(-1) + self.bias

    def _readout(self, a: Tensor, c: Tensor, rbf: Tensor, gflag: int) -> Tensor:
        """``readout([a * c, |a - c|, rbf, gflag])`` without building the concatenation:
        the first layer as a sum of products with the slices of its weight."""
        lin, rest = self.readout[0], self.readout[1:]
        hid = a.shape[-1]
        wt = lin.weight
        prod = a * c
        out = torch.nn.functional.linear(prod, wt[:, :hid], lin.bias + gflag * wt[:, -1])
        out = out + torch.nn.functional.linear((a - c).abs(), wt[:, hid : 2 * hid])
        out = out + torch.nn.functional.linear(rbf, wt[:, 2 * hid : -1])
        return rest(out)

    def _edge_features(self, a: Tensor, c: Tensor, rbf: Tensor, gflag: int) -> Tensor:
        prod = a * c
        diff = (a - c).abs()
        g = rbf.new_full((*rbf.shape[:-1], 1), float(gflag))
        return torch.cat([prod, diff, rbf, g], dim=-1)

    def score(
        self,
        query: Tensor,
        candidates: Tensor,
        query_positions: Tensor | None = None,
        candidate_positions: Tensor | None = None,
        query_global: Tensor | None = None,
        candidate_global: Tensor | None = None,
    ) -> Tensor:
        r"""Logits :math:`(B, W)` of :math:`B` queries :math:`(B, L_q, D)` with their
        candidates :math:`(B, W, L_c, D)`: one graph per query (pairs when :math:`W = 1`);
        positions :math:`(B, L_q, 2)`, :math:`(B, W, L_c, 2)` and global descriptors
        :math:`(B, D_g)`, :math:`(B, W, D_g)` for models that use them."""
        if self.config["design"] == "late":
            if not self.config["use_positions"]:
                query_positions = candidate_positions = None
            if self.config["global_dim"] is None:
                query_global = candidate_global = None
            (query, candidates, query_positions, candidate_positions, query_global,
             candidate_global) = check_match_inputs(
                query, candidates, query_positions, candidate_positions, query_global,
                candidate_global,
            )  # fmt: skip
            if self.config["use_positions"] and query_positions is None:
                raise ValueError(
                    "this LocalMatcher was built with use_positions=True: pass positions"
                )
            if self.config["global_dim"] is not None and query_global is None:
                raise ValueError(
                    "this LocalMatcher was built with global_dim: pass global descriptors"
                )
            b, w = candidates.shape[0], candidates.shape[1]
            qe = self.encode(query, role=0, positions=query_positions, global_=query_global)
            ce = self.encode(
                candidates.reshape(b * w, *candidates.shape[2:]),
                role=1,
                positions=None
                if candidate_positions is None
                else candidate_positions.reshape(b * w, *candidate_positions.shape[2:]),
                global_=None if candidate_global is None else candidate_global.reshape(b * w, -1),
            )
            return self.match(qe, ce, w)
        g = self.graph(
            query, candidates, query_positions, candidate_positions, query_global, candidate_global
        )
        return self(g).view(candidates.shape[0], candidates.shape[1])

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, **meta: Any) -> Path:
        """Write the weights, the configuration and :attr:`metadata` (plus ``meta``) to an
        ``.npz`` file, atomically and with a checksum; no pickle is involved.

        Returns:
            The path written (``.npz`` appended when missing).
        """
        arrays = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}
        config = dict(self.config)
        if self.whitening is not None:
            config["whitening"] = self._whitening_config()
        info = {"format": _FORMAT, "version": _VERSION, "config": config}
        info["metadata"] = {**self.metadata, **meta}
        return save_arrays(path, arrays, info)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> LocalMatcher:
        """Read a model written by :meth:`save` (weights and preprocessing only; nothing is
        executed).

        Raises:
            FileNotFoundError: no file at ``path``.
            CorruptFileError: not a saved ``LocalMatcher``, a newer format, a failed checksum,
                or weights that do not fit the stored configuration.
        """
        arrays, info = load_arrays(path, format=_FORMAT, version=_VERSION)
        config = dict(info.get("config") or {})
        try:
            model = cls.from_config(config)
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFileError(
                f"{str(path)!r} has an invalid model configuration: {err}"
            ) from None
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        missing = sorted(set(model.state_dict()) ^ set(state))
        if missing:
            raise CorruptFileError(f"{str(path)!r} does not match the model: keys {missing[:5]}")
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise CorruptFileError(f"{str(path)!r} does not match the model: {err}") from None
        model.metadata = dict(info.get("metadata") or {})
        return model.to(device)
