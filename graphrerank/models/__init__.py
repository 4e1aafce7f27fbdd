"""Graph models over local descriptors: match graphs, the learned matcher, scoring, fusion,
compact storage and training (learned shortlist re-ranking as in RRT, AMES and LOCORE)."""

from .baselines import SIMILARITIES, local_similarity, shortlist_similarity
from .fusion import FusionResult, fuse_scores, rerank_shortlist, tune_fusion
from .graph import EDGE_C2Q, EDGE_GLOBAL, EDGE_INTRA, EDGE_Q2C, match_graph
from .matcher import EncodedLocal, LocalMatcher
from .presets import MATCHER_PRESETS, MatcherPreset, matcher_preset
from .scoring import chamfer_similarity, score_shortlist, sliding_windows
from .splits import ClassSplit, class_disjoint_split
from .storage import (
    STORAGES,
    ITQResult,
    StoredLocal,
    bytes_per_image,
    compress_local,
    decode_local,
    itq_rotation,
    itq_whitening,
)
from .train import TrainResult, mine_shortlists, train_matcher

__all__ = [
    "EDGE_C2Q",
    "EDGE_GLOBAL",
    "EDGE_INTRA",
    "EDGE_Q2C",
    "MATCHER_PRESETS",
    "SIMILARITIES",
    "STORAGES",
    "ClassSplit",
    "EncodedLocal",
    "FusionResult",
    "ITQResult",
    "LocalMatcher",
    "MatcherPreset",
    "StoredLocal",
    "TrainResult",
    "bytes_per_image",
    "chamfer_similarity",
    "class_disjoint_split",
    "compress_local",
    "decode_local",
    "fuse_scores",
    "itq_rotation",
    "itq_whitening",
    "local_similarity",
    "match_graph",
    "matcher_preset",
    "mine_shortlists",
    "rerank_shortlist",
    "score_shortlist",
    "shortlist_similarity",
    "sliding_windows",
    "train_matcher",
    "tune_fusion",
]
