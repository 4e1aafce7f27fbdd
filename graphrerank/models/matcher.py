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
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is an optional speed-up
            _TOPK_KERNEL = False
        else:
            _TOPK_KERNEL = numba.njit(nogil=True, boundscheck=False, cache=True)(_topk_both_py)
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
        warnings.warn(
            f"the numba top-k kernel failed ({type(err).__name__}: {err}); using torch.topk",
            RuntimeWarning,
            stacklevel=2,
        )
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


class _EncoderBlock(nn.Module):
    """Pre-norm residual block of one image: intra-image attention, feed-forward."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, edge_dim: int) -> None:
        super().__init__()
        c = hidden // heads
        self.norm_intra = nn.LayerNorm(hidden)
        self.intra = TransformerConv(
            hidden, c, heads=heads, dropout=dropout, edge_dim=edge_dim, root_weight=False
        )
        self.norm_ffn = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, h, intra_index, intra_attr):
        h = h + self.drop(self.intra(self.norm_intra(h), intra_index, intra_attr))
        return h + self.drop(self.ffn(self.norm_ffn(h)))


class _Block(nn.Module):
    """Pre-norm residual block: intra-image attention, cross-image attention, feed-forward."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, edge_dim: int) -> None:
        super().__init__()
        c = hidden // heads
        self.norm_intra = nn.LayerNorm(hidden)
        self.intra = TransformerConv(
            hidden, c, heads=heads, dropout=dropout, edge_dim=edge_dim, root_weight=False
        )
        self.norm_cross = nn.LayerNorm(hidden)
        self.cross = TransformerConv(
            hidden, c, heads=heads, dropout=dropout, edge_dim=edge_dim, root_weight=False
        )
        self.norm_ffn = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, h, intra_index, intra_attr, cross_index, cross_attr):
        h = h + self.drop(self.intra(self.norm_intra(h), intra_index, intra_attr))
        h = h + self.drop(self.cross(self.norm_cross(h), cross_index, cross_attr))
        return h + self.drop(self.ffn(self.norm_ffn(h)))


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
            self.cross = TransformerConv(
                hidden,
                hidden // heads,
                heads=heads,
                dropout=dropout,
                edge_dim=edge_dim,
                root_weight=False,
            )
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
        """:meth:`_rbf` with one temporary, computed in place (no autograd)."""
        inv = 1.0 / self.rbf_width
        return torch.sub(s.unsqueeze(-1) * inv, self.rbf_centers * inv).square_().neg_().exp_()

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
        :func:`~graphrerank.models.score_shortlist`), without dropout and for a model without
        global nodes, a faster pass computes the same logits in fewer operations; with numba
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
            glob or torch.is_grad_enabled() or (self.training and self.config["dropout"])
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
        one = rbf1.new_ones(())

        def attr(rbf, direction, gflag):
            shape = (*rbf.shape[:-1], 1)
            return torch.cat(
                [rbf, (direction * one).expand(shape), (1 - direction * one).expand(shape),
                 (gflag * one).expand(shape)], dim=-1,
            )  # fmt: skip

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
        if glob:
            gsim = (query.unit_global.unsqueeze(1) * candidates.unit_global.view(b, w, -1)).sum(-1)
            grbf = self._rbf(gsim)  # (B, W, R)
            # candidate global <- query global: one edge, softmax weight 1
            g_src = torch.full((b, w, 1), lq, dtype=torch.long, device=sim.device)
            m_cg = _dense_attention(
                self.cross, None, q_kv, g_src, attr(grbf, 0, 1).unsqueeze(2),
                query=c_q[:, :, lc:].reshape(b, w, -1),
            )  # fmt: skip
            # query global <- every candidate global
            gq_src = (torch.arange(w, device=sim.device) * lc1 + lc).expand(b, 1, w)
            m_qg = _dense_attention(
                self.cross, None, c_kv, gq_src, attr(grbf, 1, 1).unsqueeze(1),
                query=query.query[:, lq:],
            )  # fmt: skip
            hcg = c_h[:, :, lc] + self.drop(m_cg)  # (B, W, d)
            hqg = query.h[:, lq] + self.drop(m_qg[:, 0])  # (B, d)
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
            hqg, hcg = self.norm(hqg), self.norm(hcg)
            ug = self._edge_features(hqg.unsqueeze(1), hcg, grbf, 1)  # (B, W, F)
            outg = self.readout(ug)  # both directions carry the same features
            f += [outg[..., :1], outg[..., :1]]
            gsc += [outg[..., 1:], outg[..., 1:]]
        f_all, g_all = torch.cat(f, dim=-1), torch.cat(gsc, dim=-1)
        beta = torch.softmax(g_all, dim=-1)
        return (beta * f_all).sum(-1) + self.bias

    def _match_inference(
        self, query: EncodedLocal, candidates: EncodedLocal, b: int, w: int
    ) -> Tensor:
        r""":meth:`match` without autograd, dropout or global nodes, in fewer and larger
        operations; the same logits to float rounding (``tests/models/test_late.py``).

        * The :math:`n = W L_c` candidate nodes of each of the :math:`B` rows against the
          :math:`L_q` query nodes: one cosine matrix :math:`(B, n, L_q)` (one matrix product
          when the query is shared), read along both axes by one pass
          (:func:`_topk_both`), with no transposed copy.
        * Attention: each head's scores of all targets against all sources come from one
          product with a block-diagonal matrix of the sources' keys (heads side by side) and
          are read at the :math:`K` edges; softmax over the edge axis, never the innermost
          one. Candidate nodes: the weights scattered into a dense :math:`(B n, L_q H)` matrix
          next to their weighted rbf features give the messages in one product with the
          block-diagonal values and edge weights, the residual (and the message of the
          constant edge features) as its bias. The constant edge features (the direction
          flags) add the same score to every edge of a target and drop out of the softmax.
        * Readout (:meth:`_readout_rows`): a block of rows at a time, so that its (edges,
          :math:`d`) intermediates stay in cache."""
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
        scale = 1.0 / math.sqrt(c)
        w_e = cross.lin_edge.weight.view(heads, c, r + 3)  # (H, C, E)
        # per head: W_e[:, :R] (C, R) and the constant edge features' message W_e[:, R:] tail
        w_rbf = torch.block_diag(*w_e[:, :, :r])  # (H C, H R): query -> its rbf weights
        tail_c = (w_e[:, :, r:] @ w_e.new_tensor([0.0, 1.0, 0.0])).reshape(hid)  # q -> c
        tail_q = (w_e[:, :, r:] @ w_e.new_tensor([1.0, 0.0, 0.0])).reshape(hid)  # c -> q

        cu = candidates.unit.reshape(b, n, dim)
        if shared:
            sim = torch.mm(cu.reshape(b * n, dim), query.unit[0].T).view(b, n, lq)
        else:
            sim = torch.bmm(cu, query.unit.transpose(1, 2))  # (B, n, Lq)
        # (B, n, kq): best query nodes of each candidate node; (B, kc, Lq): best candidate
        # nodes of each query node
        s1, i1, s2, i2 = _topk_both(sim, kq, kc)
        rbf1, rbf2 = self._rbf_(s1), self._rbf_(s2)  # (B, n, kq, R), (B, kc, Lq, R)

        gq = query.num_images
        q_h = query.h  # (Gq, Lq, d)
        q_q = query.query  # (Gq, Lq, d)
        q_k, q_v = query.kv[..., :hid], query.kv[..., hid:]
        c_q = candidates.query.reshape(b * n, hid)
        c_kv = candidates.kv.reshape(b, n, 2 * hid)

        # ---- candidate nodes <- their kq best query nodes
        # scores of every candidate node against every query node, (B n, Lq, H)
        kbd = _block_diag_keys(q_k, heads)  # (Gq, H C, Lq H)
        if shared:
            full = torch.mm(c_q, kbd[0])
        else:
            full = torch.bmm(c_q.view(b, n, hid), kbd)
        idx1 = i1.view(b * n, kq, 1).expand(b * n, kq, heads)
        score = full.view(b * n, lq, heads).gather(1, idx1)  # (B n, kq, H)
        qe = torch.mm(c_q, w_rbf).view(b * n, heads, r)  # W_e[:, :R]^T q per head
        rbf1f = rbf1.view(b * n, kq, r)
        score.baddbmm_(rbf1f, qe.transpose(1, 2))
        alpha = torch.softmax(score.mul_(scale), dim=1)
        # the weights scattered into (B n, Lq H), next to their weighted rbf features
        # (B n, H R), times [values; W_e[:, :R]] (block-diagonal over the heads)
        z = alpha.new_zeros(b * n, lq * heads + heads * r)
        z[:, : lq * heads].view(b * n, lq, heads).scatter_(1, idx1, alpha)
        z[:, lq * heads :] = torch.bmm(alpha.transpose(1, 2), rbf1f).view(b * n, heads * r)
        vbd = torch.cat(
            [_block_diag_keys(q_v, heads).transpose(1, 2), w_rbf.T.expand(gq, -1, -1)], 1
        )
        c_h = candidates.h.reshape(b, n, hid) + tail_c
        if shared:
            hc = torch.addmm(c_h.view(b * n, hid), z, vbd[0])
        else:
            hc = torch.baddbmm(c_h, z.view(b, n, -1), vbd)
        hc = self.norm(hc.view(b, n, hid))

        # ---- query nodes <- their kc best candidate nodes (of the row's W candidates)
        qbd = _block_diag_keys(q_q, heads)  # (Gq, H C, Lq H)
        c_k = c_kv[..., :hid]
        if shared:
            full = torch.mm(c_k.reshape(b * n, hid), qbd[0])
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
        v = c_kv[..., hid:].reshape(b * n, hid).index_select(0, (i2 + base).view(-1))
        v = v.view(b, kc, lq, heads, c)
        msg = v[:, 0] * alpha[:, 0].unsqueeze(-1)  # (B, Lq, H, C)
        ae = alpha[:, 0].unsqueeze(-1) * rbf2[:, 0].unsqueeze(2)  # (B, Lq, H, R)
        for t in range(1, kc):
            msg.addcmul_(v[:, t], alpha[:, t].unsqueeze(-1))
            ae.addcmul_(alpha[:, t].unsqueeze(-1), rbf2[:, t].unsqueeze(2))
        hq = torch.addmm(
            (q_h + tail_q).expand(b, lq, hid).reshape(b * lq, hid) + msg.view(b * lq, hid),
            ae.view(b * lq, heads * r),
            w_rbf.T,
        )
        hq = self.norm(hq.view(b, lq, hid))

        # ---- readout, a few rows at a time (its (edges, d) blocks then stay in cache)
        step = max(1, _READOUT_EDGES // (n * kq + kc * lq))
        if step >= b:
            return self._readout_rows(hq, hc, i1, i2, rbf1, rbf2, w)
        return torch.cat(
            [
                self._readout_rows(
                    hq[s : s + step], hc[s : s + step], i1[s : s + step], i2[s : s + step],
                    rbf1[s : s + step], rbf2[s : s + step], w,
                )
                for s in range(0, b, step)
            ]
        )  # fmt: skip

    def _readout_rows(
        self, hq: Tensor, hc: Tensor, i1: Tensor, i2: Tensor, rbf1: Tensor, rbf2: Tensor, w: int
    ) -> Tensor:
        r"""The readout of :meth:`_match_inference` for :math:`B` rows: logits :math:`(B, W)`
        from the query states ``hq`` :math:`(B, L_q, d)`, the candidate states ``hc``
        :math:`(B, n, d)`, the correspondences ``i1`` :math:`(B, n, k_q)` and ``i2``
        :math:`(B, k_c, L_q)` and their rbf features. The q2c correspondences (candidate
        node, its :math:`k_q` query nodes; :math:`B n k_q` rows) then the c2q ones (query
        node, its :math:`k_c` candidate nodes; :math:`B k_c L_q` rows): the first layer as
        products of contiguous :math:`[h_i \odot h_j]`, :math:`[|h_i - h_j|]`,
        :math:`[\operatorname{rbf}]` blocks with slices of its weight (no concatenation)."""
        b, lq, hid = hq.shape
        n, kq, kc, r = hc.shape[1], i1.shape[2], i2.shape[1], rbf1.shape[-1]
        lc = n // w
        dev = hq.device
        e1, e2 = n * kq, kc * lq
        prod = torch.empty(b * (e1 + e2), hid, dtype=hq.dtype, device=dev)
        diff = torch.empty_like(prod)
        a = (
            hq.reshape(b * lq, hid)
            .index_select(0, (i1 + (torch.arange(b, device=dev) * lq).view(b, 1, 1)).view(-1))
            .view(b, n, kq, hid)
        )
        cc = hc.unsqueeze(2)
        torch.mul(a, cc, out=prod[: b * e1].view(b, n, kq, hid))
        torch.sub(a, cc, out=diff[: b * e1].view(b, n, kq, hid))
        a = hq.unsqueeze(1)
        base = (torch.arange(b, device=dev) * n).view(b, 1, 1)
        cc = hc.reshape(b * n, hid).index_select(0, (i2 + base).view(-1)).view(b, kc, lq, hid)
        torch.mul(a, cc, out=prod[b * e1 :].view(b, kc, lq, hid))
        torch.sub(a, cc, out=diff[b * e1 :].view(b, kc, lq, hid))
        lin1, act, _, lin2 = self.readout
        wt = lin1.weight
        x = torch.addmm(lin1.bias, prod, wt[:, :hid].T)
        x.addmm_(diff.abs_(), wt[:, hid : 2 * hid].T)
        x[: b * e1].addmm_(rbf1.reshape(b * e1, r), wt[:, 2 * hid : -1].T)
        x[b * e1 :].addmm_(rbf2.reshape(b * e2, r), wt[:, 2 * hid : -1].T)
        out = torch.addmm(lin2.bias.unsqueeze(1), lin2.weight, act(x).T)  # (2, E): f, g
        f1, f2 = out[0, : b * e1].view(b, e1), out[0, b * e1 :].view(b, e2)
        g1, g2 = out[1, : b * e1].view(b, e1), out[1, b * e1 :].view(b, e2)
        if w == 1:
            beta = torch.softmax(torch.cat([g1, g2], dim=1), dim=-1)
            return (beta * torch.cat([f1, f2], dim=1)).sum(-1, keepdim=True) + self.bias
        # each candidate: its q2c correspondences and the c2q ones that reach it
        f1, g1 = f1.view(b, w, lc * kq), g1.view(b, w, lc * kq)
        own = (i2 // lc).view(b, 1, e2) == torch.arange(w, device=dev).view(1, w, 1)
        g2 = g2.unsqueeze(1).masked_fill(~own, float("-inf"))
        beta = torch.softmax(torch.cat([g1, g2], dim=-1), dim=-1)
        return (beta * torch.cat([f1, f2.unsqueeze(1).expand(b, w, e2)], dim=-1)).sum(
            -1
        ) + self.bias

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
