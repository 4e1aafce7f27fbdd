r"""The papers' model sizes as :class:`~graphrerank.models.LocalMatcher` presets.

``matcher_preset(name, input_dim)`` builds an untrained :class:`LocalMatcher` with the sizes a
paper or its reference code published (layers, width, heads, feed-forward width, dropout,
global tokens) and the nearest architecture graphrerank has (``design="joint"``: attention
across the two images in every block, as in RRT's joint encoder, AMES's alternating self / cross
attention and LOCORE's single sequence). What a preset cannot represent is listed in its
``notes`` and in the docs' *Learned models* page (``docs/learned_models.rst``); the settings
the papers did not publish (the kNN graph's ``k_intra`` / ``k_cross``, ``num_rbf``) keep
:class:`LocalMatcher`'s defaults. The shortlist, descriptor counts, storage and fusion of each
paper are the :class:`~graphrerank.rerankers.LocalDescriptorReranker` presets of the same name
(:mod:`graphrerank.rerankers.presets`).

Example:
    >>> model = matcher_preset("ames", 128)
    >>> {k: model.config[k] for k in ("num_layers", "hidden", "heads", "ffn")}
    {'num_layers': 5, 'hidden': 128, 'heads': 2, 'ffn': 1024}
    >>> sorted(MATCHER_PRESETS)
    ['ames', 'locore_base', 'rrt']
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .matcher import LocalMatcher

__all__ = ["MATCHER_PRESETS", "MatcherPreset", "matcher_preset"]


class MatcherPreset(NamedTuple):
    """A published model configuration.

    Attributes:
        settings: :class:`LocalMatcher` keyword arguments (all but ``in_dim``).
        source: The paper, table or reference code the sizes come from.
        notes: What the preset cannot represent and the setting chosen instead.
    """

    settings: dict[str, Any]
    source: str
    notes: str


#: Preset name -> :class:`MatcherPreset`.
MATCHER_PRESETS: dict[str, MatcherPreset] = {
    "rrt": MatcherPreset(
        {
            "num_layers": 6,
            "hidden": 128,
            "heads": 4,
            "ffn": 1024,
            "dropout": 0.0,
            "global_dim": 2048,
            "design": "joint",
        },
        "Tan et al., ICCV 2021 (Reranking Transformers), reference code: a 6-layer transformer "
        "encoder, d=128, 4 heads, feed-forward 1024, dropout 0, over the global token and the "
        "local tokens of both images; DELG global descriptors (2048-d) remapped to 128",
        "The global descriptor is a node per image (global_dim=2048, DELG's; pass global_dim= "
        "for other global descriptors) projected to d=128, as RRT remaps it. Full attention over "
        "[CLS, q_global, q_locals, SEP, x_global, x_locals] becomes attention over a match "
        "graph (k_intra neighbours within an image, k_cross correspondences across; "
        "k_intra=k_cross=L gives all pairs); RRT's 7 scale embeddings are not represented "
        "(descriptors only, use_positions=False); the logit is an attention-pooled readout "
        "over the correspondences instead of a CLS token.",
    ),
    "ames": MatcherPreset(
        {"num_layers": 5, "hidden": 128, "heads": 2, "ffn": 1024, "design": "joint"},
        "Suma et al., ECCV 2024 (AMES), reference code: a transformer with alternating self- "
        "and cross-attention, 5 layers, d=128, 2 heads, feed-forward 1024",
        "Each block is intra-image then cross-image attention (design='joint'), over kNN "
        "graphs instead of all pairs; local descriptors only (no global node); the logit is "
        "an attention-pooled readout over the correspondences instead of a learnable matching "
        "token.",
    ),
    "locore_base": MatcherPreset(
        {"num_layers": 12, "hidden": 768, "heads": 12, "ffn": 3072, "design": "joint"},
        "Xiao et al., CVPR 2025 (LOCORE-base), reference code: a Longformer-base "
        "(allenai/longformer-base-4096 sizes: 12 layers, d=768, 12 heads, feed-forward 3072) "
        "with its position embeddings extended to 5120 tokens, over the query's and ~100 "
        "gallery images' 48 DINOv2 local descriptors each",
        "Longformer's token sequence (512-token local attention windows, global attention "
        "on the query and separator tokens, learned absolute positions, scale embeddings) is "
        "replaced by the list-wise match graph of one query and a window of candidates "
        "(LocalDescriptorReranker mode='listwise', window=100, stride=50): kNN edges within "
        "each image and between the query and every candidate, none between candidates, and "
        "the result does not depend on the candidates' order. Local descriptors only (global "
        "tokens are optional in LOCORE's reference model). No pretrained Longformer weights: the model starts "
        "untrained. LOCORE-tiny is not a preset: the README distributes its weights but "
        "states no sizes.",
    ),
}


def matcher_preset(name: str, input_dim: int, /, **overrides: Any) -> LocalMatcher:
    r"""An untrained :class:`LocalMatcher` with the published sizes ``name`` (see
    :data:`MATCHER_PRESETS`).

    Args:
        name: ``"rrt"``, ``"ames"`` or ``"locore_base"``.
        input_dim: Raw local descriptor dimension :math:`D` (RRT: 128-d DELG locals; AMES and
            LOCORE: 768-d DINOv2 locals). With a ``whitening`` override, the network reads its
            output (e.g. :func:`~graphrerank.models.itq_whitening` to 128 dimensions for AMES's
            128-bit codes) and ``input_dim`` must be its input width.
        **overrides: :class:`LocalMatcher` keyword arguments replacing the preset's (e.g.
            ``global_dim=512`` for RRT on other global descriptors, ``design="late"`` for
            the faster per-image encoder, ``whitening=``).

    Returns:
        The model, with ``metadata["preset"] = name`` (saved with its weights).

    Raises:
        ValueError: ``name`` is not a preset (the message lists them), or a setting is out
            of range (as :class:`LocalMatcher`).
        TypeError: ``name`` is not a string, or an override is not a :class:`LocalMatcher`
            argument.

    Example:
        >>> m = matcher_preset("rrt", 128, global_dim=512)
        >>> m.config["num_layers"], m.config["global_dim"], m.metadata["preset"]
        (6, 512, 'rrt')
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a preset name (str), got {type(name).__name__}")
    if name not in MATCHER_PRESETS:
        have = ", ".join(repr(p) for p in sorted(MATCHER_PRESETS))
        raise ValueError(f"no LocalMatcher preset {name!r}; the presets: {have}")
    if "in_dim" in overrides:
        raise TypeError("give the descriptor dimension as input_dim, not in_dim=")
    settings = {**MATCHER_PRESETS[name].settings, **overrides}
    in_dim = input_dim
    white = settings.get("whitening")
    if white is not None and getattr(white, "is_fitted", False):
        # input_dim is the raw descriptors' width; the network reads the whitened ones
        if white.in_features != input_dim:
            raise ValueError(
                f"whitening takes {white.in_features}-d descriptors but input_dim is {input_dim}"
            )
        in_dim = white.out_features
    model = LocalMatcher(in_dim, **settings)
    model.metadata["preset"] = name
    return model
