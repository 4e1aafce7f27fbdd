r"""Match graphs: a query and its candidates as one graph of local descriptors.

Every local descriptor is a node. A graph holds one query image with :math:`L_q` descriptors and
:math:`W` candidate images with :math:`L_c` descriptors each (:math:`W = 1`: one pair, as in
RRT and AMES; :math:`W > 1`: a list, as in LOCORE). Three kinds of directed edges
:math:`j \to i` (``edge_index[0]`` is the source :math:`j`, ``edge_index[1]`` the target
:math:`i`):

* **intra** (``EDGE_INTRA``): within each image, from each descriptor's :math:`k_{\text{intra}}`
  most similar descriptors of the same image;
* **query to candidate** (``EDGE_Q2C``): into each candidate descriptor from its
  :math:`k_{\text{cross}}` most similar query descriptors;
* **candidate to query** (``EDGE_C2Q``): into each query descriptor from its
  :math:`k_{\text{cross}}` most similar descriptors among *all* the graph's candidates (in a
  list, candidates compete for the query's attention).

With global descriptors, every image also gets a **global node** (as the global tokens of
RRT), linked both ways to each of its local nodes (``EDGE_GLOBAL``), and the query's global
node is linked both ways to each candidate's (``EDGE_Q2C`` / ``EDGE_C2Q``, carrying the global
cosine).

Correspondences are exact nearest neighbours by cosine similarity
:math:`s_{ij} = \hat{\mathbf{x}}_i^\top \hat{\mathbf{x}}_j`, found for all graphs at once with
batched matrix products and top-k (the torch backend of :func:`~graphrerank.graph.knn_search`,
batched because every graph searches its own small database). The number of edges is
:math:`(L_q + W L_c)(k_{\text{intra}} + k_{\text{cross}})`: it grows with :math:`k`, not with
the :math:`L_q \times W L_c` pairs that all-pairs attention would touch.

A batch of :math:`B` graphs is one disconnected graph in PyG's batch layout (a ``batch``
vector), built without Python loops over graphs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data

from .._checks import Array, Int, checked

__all__ = ["EDGE_C2Q", "EDGE_GLOBAL", "EDGE_INTRA", "EDGE_Q2C", "match_graph"]

#: Edge types of a match graph (``edge_type``).
EDGE_INTRA, EDGE_Q2C, EDGE_C2Q, EDGE_GLOBAL = 0, 1, 2, 3


def _unit(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _intra(
    x: Tensor, k: int, pos: Tensor | None, offsets: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Intra-image kNN edges of images ``x`` (I, L, D) whose first node ids are ``offsets``."""
    n_img, length, _ = x.shape
    k = min(k, length - 1)
    if k <= 0:
        empty = torch.empty(2, 0, dtype=torch.long, device=x.device)
        return empty, x.new_empty(0), None if pos is None else x.new_empty(0, 2)
    xn = _unit(x)
    sim = xn @ xn.transpose(1, 2)
    eye = torch.eye(length, dtype=torch.bool, device=x.device)
    s, nbr = sim.masked_fill(eye, float("-inf")).topk(k, dim=2)  # (I, L, k)
    dst = offsets.view(-1, 1, 1) + torch.arange(length, device=x.device).view(1, -1, 1)
    src = offsets.view(-1, 1, 1) + nbr
    edge_index = torch.stack([src.reshape(-1), dst.expand_as(src).reshape(-1)])
    rel = None
    if pos is not None:
        p = pos.to(x.dtype)
        p = p - p.mean(1, keepdim=True)
        spread = p.pow(2).sum(-1).mean(1).sqrt().clamp(min=1e-6)  # RMS distance to the centroid
        p = p / spread.view(-1, 1, 1)
        nbr_pos = p.gather(1, nbr.reshape(n_img, -1, 1).expand(-1, -1, 2))
        rel = (nbr_pos.view(n_img, length, k, 2) - p.unsqueeze(2)).reshape(-1, 2)
    return edge_index, s.reshape(-1), rel


def _check_shapes(query, candidates, query_positions, candidate_positions, query_global,
                  candidate_global):  # fmt: skip
    """The shape checks of :func:`match_graph`; the descriptors in a common dtype."""
    dtype = torch.promote_types(query.dtype, candidates.dtype)
    query, candidates = query.to(dtype), candidates.to(dtype)
    b, lq, d = query.shape
    if candidates.shape[0] != b or candidates.shape[3] != d:
        raise ValueError(
            f"candidates {tuple(candidates.shape)} must match query {tuple(query.shape)} in "
            "the number of graphs B and the dimension D"
        )
    w, lc = candidates.shape[1], candidates.shape[2]
    if 0 in (b, lq, d, w, lc):
        raise ValueError(
            f"empty match graph: query {tuple(query.shape)}, candidates {tuple(candidates.shape)}"
        )
    if (query_positions is None) != (candidate_positions is None):
        raise ValueError("give both query_positions and candidate_positions, or neither")
    if query_positions is not None and (
        tuple(query_positions.shape) != (b, lq, 2)
        or tuple(candidate_positions.shape) != (b, w, lc, 2)
    ):
        raise ValueError(
            f"query_positions must be (B, L_q, 2) = {(b, lq, 2)} and candidate_positions "
            f"(B, W, L_c, 2) = {(b, w, lc, 2)}, got {tuple(query_positions.shape)} and "
            f"{tuple(candidate_positions.shape)}"
        )
    if (query_global is None) != (candidate_global is None):
        raise ValueError("give both query_global and candidate_global, or neither")
    if query_global is not None and (
        query_global.dim() != 2
        or query_global.shape[0] != b
        or candidate_global.shape[:2] != (b, w)
        or candidate_global.shape[2:] != query_global.shape[1:]
    ):
        raise ValueError(
            f"query_global must be (B, D_g) and candidate_global (B, W, D_g) with B={b}, W={w}, "
            f"got {tuple(query_global.shape)} and {tuple(candidate_global.shape)}"
        )
    if query_global is not None:
        gtype = torch.promote_types(query_global.dtype, candidate_global.dtype)
        query_global, candidate_global = query_global.to(gtype), candidate_global.to(gtype)
    return query, candidates, query_global, candidate_global


_SPEC = dict(
    query=Array(ndim=3, finite=True),
    candidates=Array(ndim=4, finite=True),
    query_positions=Array(kind="number", ndim=3, finite=True, optional=True),
    candidate_positions=Array(kind="number", ndim=4, finite=True, optional=True),
    query_global=Array(ndim=2, finite=True, optional=True),
    candidate_global=Array(ndim=3, finite=True, optional=True),
)


@checked(**_SPEC)
def check_match_inputs(
    query: Tensor,
    candidates: Tensor,
    query_positions: Tensor | None = None,
    candidate_positions: Tensor | None = None,
    query_global: Tensor | None = None,
    candidate_global: Tensor | None = None,
) -> tuple:
    """:func:`match_graph`'s checks and conversions of its inputs, without the graph."""
    query, candidates, query_global, candidate_global = _check_shapes(
        query, candidates, query_positions, candidate_positions, query_global, candidate_global
    )
    return (query, candidates, query_positions, candidate_positions, query_global,
            candidate_global)  # fmt: skip


@checked(
    query=Array(ndim=3, finite=True),
    candidates=Array(ndim=4, finite=True),
    k_intra=Int(low=0),
    k_cross=Int(low=1),
    query_positions=Array(kind="number", ndim=3, finite=True, optional=True),
    candidate_positions=Array(kind="number", ndim=4, finite=True, optional=True),
    query_global=Array(ndim=2, finite=True, optional=True),
    candidate_global=Array(ndim=3, finite=True, optional=True),
)
def match_graph(
    query: Tensor,
    candidates: Tensor,
    *,
    k_intra: int = 4,
    k_cross: int = 4,
    query_positions: Tensor | None = None,
    candidate_positions: Tensor | None = None,
    query_global: Tensor | None = None,
    candidate_global: Tensor | None = None,
) -> Data:
    r"""Build a batch of :math:`B` match graphs, each a query with :math:`W` candidates.

    Args:
        query: :math:`(B, L_q, D)` local descriptors of each graph's query.
        candidates: :math:`(B, W, L_c, D)` local descriptors of each graph's candidates.
        k_intra: :math:`k_{\text{intra}}` neighbours within an image (capped at :math:`L - 1`).
        k_cross: :math:`k_{\text{cross}}` correspondences per descriptor across query and
            candidates (capped at the number available).
        query_positions: Optional :math:`(B, L_q, 2)` descriptor positions; with them, intra
            edges carry the displacement :math:`\mathbf{p}_j - \mathbf{p}_i` in units of the
            image's descriptor spread (position and scale invariant).
        candidate_positions: :math:`(B, W, L_c, 2)`, needed with ``query_positions``.
        query_global: Optional :math:`(B, D_g)` global descriptors of the queries (adds the
            global nodes).
        candidate_global: :math:`(B, W, D_g)`, needed with ``query_global``.

    Returns:
        A :class:`~torch_geometric.data.Data` with

        * ``x`` :math:`(B(L_q + W L_c), D)`: the local nodes, per graph the query's
          descriptors, then each candidate's in turn;
        * ``x_global`` :math:`(B(1 + W), D_g)` (with globals): the global nodes, numbered
          after all local nodes, per graph the query's, then each candidate's;
        * ``role`` :math:`(|V|,)`: 0 for query nodes, 1 for candidate nodes;
        * ``is_global`` :math:`(|V|,)`: whether a node is a global node;
        * ``batch`` :math:`(|V|,)`: the graph of each node;
        * ``edge_index`` :math:`(2, |E|)`, ``edge_type`` :math:`(|E|,)`, ``edge_sim``
          :math:`(|E|,)` (cosine of the two descriptors; 0 on ``EDGE_GLOBAL``), ``edge_pos``
          :math:`(|E|, 2)` (zero but on intra edges with positions);
        * ``edge_pair`` :math:`(|E|,)`: for cross edges the pair ``b * W + c`` they join, -1
          for intra edges; ``num_pairs`` :math:`= BW`.

    Raises:
        ValueError: shapes disagree, a set is empty, or an input holds NaN or infinite values.
        TypeError: an input is not a float array (numpy arrays and lists are converted).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> q = torch.randn(2, 3, 8, generator=g)
        >>> c = torch.randn(2, 4, 3, 8, generator=g)
        >>> graph = match_graph(q, c, k_intra=2, k_cross=1)
        >>> graph.num_nodes, graph.num_pairs, graph.edge_index.shape
        (30, 8, torch.Size([2, 90]))
    """
    query, candidates, query_global, candidate_global = _check_shapes(
        query, candidates, query_positions, candidate_positions, query_global, candidate_global
    )
    b, lq, d = query.shape
    w, lc = candidates.shape[1], candidates.shape[2]
    dev = query.device
    per_graph = lq + w * lc
    start = torch.arange(b, device=dev) * per_graph  # first node of each graph

    cand = candidates.reshape(b, w * lc, d)
    x = torch.cat([query, cand], dim=1).reshape(-1, d)
    role = torch.cat(
        [
            torch.zeros(b, lq, dtype=torch.long, device=dev),
            torch.ones(b, w * lc, dtype=torch.long, device=dev),
        ],
        dim=1,
    ).reshape(-1)
    batch = torch.arange(b, device=dev).repeat_interleave(per_graph)

    # intra-image edges: the query images, then the candidate images
    qpos = cpos = None
    if query_positions is not None:
        qpos = query_positions
        cpos = candidate_positions.reshape(b * w, lc, 2)
    ei_q, s_q, r_q = _intra(query, k_intra, qpos, start)
    c_off = (start.view(b, 1) + lq + torch.arange(w, device=dev).view(1, w) * lc).reshape(-1)
    ei_c, s_c, r_c = _intra(candidates.reshape(b * w, lc, d), k_intra, cpos, c_off)

    # cross edges: cosine of every query descriptor with every candidate descriptor of its graph
    sim = _unit(query) @ _unit(cand).transpose(1, 2)  # (B, L_q, W L_c)
    kq = min(k_cross, lq)
    s1, i1 = sim.topk(kq, dim=1)  # (B, kq, W L_c): best query nodes of each candidate node
    cand_node = torch.arange(w * lc, device=dev).view(1, 1, -1)
    src1 = start.view(b, 1, 1) + i1
    dst1 = (start.view(b, 1, 1) + lq + cand_node).expand_as(src1)
    pair1 = (torch.arange(b, device=dev).view(b, 1, 1) * w + cand_node // lc).expand_as(src1)
    kc = min(k_cross, w * lc)
    s2, i2 = sim.topk(kc, dim=2)  # (B, L_q, kc): best candidate nodes of each query node
    src2 = start.view(b, 1, 1) + lq + i2
    dst2 = (start.view(b, 1, 1) + torch.arange(lq, device=dev).view(1, -1, 1)).expand_as(src2)
    pair2 = torch.arange(b, device=dev).view(b, 1, 1) * w + i2 // lc

    edge_index = torch.cat(
        [
            ei_q,
            ei_c,
            torch.stack([src1.reshape(-1), dst1.reshape(-1)]),
            torch.stack([src2.reshape(-1), dst2.reshape(-1)]),
        ],
        dim=1,
    )
    n_intra = ei_q.shape[1] + ei_c.shape[1]
    n1, n2 = src1.numel(), src2.numel()
    edge_type = torch.cat(
        [
            torch.full((n_intra,), EDGE_INTRA, dtype=torch.long, device=dev),
            torch.full((n1,), EDGE_Q2C, dtype=torch.long, device=dev),
            torch.full((n2,), EDGE_C2Q, dtype=torch.long, device=dev),
        ]
    )
    edge_sim = torch.cat([s_q, s_c, s1.reshape(-1), s2.reshape(-1)])
    edge_pos = x.new_zeros(edge_index.shape[1], 2)
    if r_q is not None and n_intra:
        edge_pos[:n_intra] = torch.cat([r_q, r_c])
    edge_pair = torch.cat(
        [
            torch.full((n_intra,), -1, dtype=torch.long, device=dev),
            pair1.reshape(-1),
            pair2.reshape(-1),
        ]
    )
    extra: dict[str, Tensor] = {}
    is_global = torch.zeros(b * per_graph, dtype=torch.bool, device=dev)
    if query_global is not None:
        gn = 1 + w  # global nodes per graph
        first = b * per_graph
        gq = first + torch.arange(b, device=dev) * gn  # (B,)
        gc = (gq.view(b, 1) + 1 + torch.arange(w, device=dev).view(1, w)).reshape(-1)  # (B W,)
        # every image's global node <-> its local nodes
        loc_q = (start.view(b, 1) + torch.arange(lq, device=dev).view(1, lq)).reshape(-1)
        loc_c = (c_off.view(-1, 1) + torch.arange(lc, device=dev).view(1, lc)).reshape(-1)
        own_q = gq.repeat_interleave(lq)
        own_c = gc.repeat_interleave(lc)
        loc = torch.cat([loc_q, loc_c])
        own = torch.cat([own_q, own_c])
        ge = torch.cat([torch.stack([loc, own]), torch.stack([own, loc])], dim=1)
        # query global <-> candidate globals, carrying the global cosine
        gsim = (_unit(query_global).unsqueeze(1) * _unit(candidate_global)).sum(-1).reshape(-1)
        gq_rep = gq.repeat_interleave(w)
        pair_ids = torch.arange(b * w, device=dev)
        edge_index = torch.cat(
            [edge_index, ge, torch.stack([gq_rep, gc]), torch.stack([gc, gq_rep])], dim=1
        )
        n_ge, n_gg = ge.shape[1], gc.numel()
        edge_type = torch.cat(
            [
                edge_type,
                torch.full((n_ge,), EDGE_GLOBAL, dtype=torch.long, device=dev),
                torch.full((n_gg,), EDGE_Q2C, dtype=torch.long, device=dev),
                torch.full((n_gg,), EDGE_C2Q, dtype=torch.long, device=dev),
            ]
        )
        edge_sim = torch.cat([edge_sim, edge_sim.new_zeros(n_ge), gsim.to(edge_sim.dtype),
                              gsim.to(edge_sim.dtype)])  # fmt: skip
        edge_pos = torch.cat([edge_pos, edge_pos.new_zeros(n_ge + 2 * n_gg, 2)])
        edge_pair = torch.cat(
            [edge_pair, torch.full((n_ge,), -1, dtype=torch.long, device=dev), pair_ids, pair_ids]
        )
        role = torch.cat([role, (torch.arange(gn, device=dev) > 0).long().repeat(b)])
        batch = torch.cat([batch, torch.arange(b, device=dev).repeat_interleave(gn)])
        is_global = torch.cat([is_global, torch.ones(b * gn, dtype=torch.bool, device=dev)])
        x_global = torch.cat([query_global.unsqueeze(1), candidate_global], dim=1)
        extra["x_global"] = x_global.reshape(b * gn, -1)
    return Data(
        x=x,
        role=role,
        is_global=is_global,
        batch=batch,
        edge_index=edge_index,
        edge_type=edge_type,
        edge_sim=edge_sim,
        edge_pos=edge_pos,
        edge_pair=edge_pair,
        num_nodes=role.numel(),
        num_pairs=b * w,
        **extra,
    )
