r"""A graph attention network that scores (query, candidate) pairs from local descriptors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import TransformerConv
from torch_geometric.utils import softmax

from .._checks import check_int, check_real
from .._io import CorruptFileError, load_arrays, save_arrays
from ..nn.whitening import PCAWhitening
from .graph import EDGE_C2Q, EDGE_GLOBAL, EDGE_INTRA, match_graph

__all__ = ["LocalMatcher"]

#: Bounds on the sizes of a model (beyond them the weights would not fit in memory).
MAX_DIM, MAX_LAYERS, MAX_HEADS, MAX_RBF, MAX_WEIGHTS = 65536, 64, 1024, 1024, 2**31

_FORMAT = "graphrerank.LocalMatcher"
_VERSION = 1


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

    Raises:
        ValueError: a setting is out of range: widths (``in_dim``, ``hidden``, ``ffn``,
            ``global_dim``) above 65536, ``num_layers`` above 64, ``heads`` or ``num_rbf``
            above 1024, or a model of more than :math:`2^{31}` weights.
        TypeError: a setting has the wrong type.

    Shapes:
        - **forward:** a match graph of :math:`P` pairs :math:`\to` logits :math:`(P,)`
        - **score:** query :math:`(B, L_q, D)`, candidates :math:`(B, W, L_c, D)` :math:`\to`
          logits :math:`(B, W)`

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
    ) -> None:
        super().__init__()
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
        self.blocks = nn.ModuleList(
            _Block(hidden, heads, ffn, dropout, edge_dim) for _ in range(num_layers)
        )
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
    def from_config(cls, config: dict[str, Any]) -> LocalMatcher:
        """An untrained model of a saved configuration (``config`` with ``in_dim`` and, for
        a model with preprocessing, ``whitening`` settings: its buffers come with the weights
        through ``load_state_dict``)."""
        config = dict(config)
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
        for block in self.blocks:
            h = block(h, intra_index, intra_attr, cross_index, cross_attr)
        h = self.norm(h)
        u = torch.cat([h[src] * h[dst], (h[src] - h[dst]).abs(), rbf[cross], gflag], dim=1)
        out = self.readout(u)
        pair = graph.edge_pair[cross]
        num_pairs = int(graph.num_pairs)
        beta = softmax(out[:, 1], pair, num_nodes=num_pairs)
        logits = torch.zeros(num_pairs, dtype=out.dtype, device=out.device)
        logits.index_add_(0, pair, beta * out[:, 0])
        return logits + self.bias

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
