"""The published configurations of each re-ranker, with their source.

``Method.preset(name)`` builds one (:meth:`~graphrerank.rerankers.Reranker.preset`),
``Method.presets()`` lists them. Only settings that a paper, its reference code or its authors
published are here; a method whose only published setting is its default has a
``"reference"`` preset equal to the default, so that code can name it.

Example:
    >>> from graphrerank.rerankers import KReciprocal
    >>> KReciprocal.preset("cuhk03")
    KReciprocal(k1=7, k2=3)
    >>> print(KReciprocal.presets()["cuhk03"].source)
    Zhong et al., CVPR 2017, reference code's author (issue #7 of zhunzhong07/person-re-ranking): CUHK03 has fewer ground-truth images per identity
"""

from __future__ import annotations

from .base import Preset

__all__ = ["PRESETS", "presets_table"]

_ZHONG = "Zhong et al., CVPR 2017"
_ZHANG = 'Zhang et al., "Understanding Image Retrieval Re-Ranking: A GNN Perspective"'
_ISCEN = "Iscen et al., CVPR 2017, reference MATLAB code (run_test.m)"
_MISHKIN = (
    "Mishkin's python port of Iscen et al.'s diffusion on ROxford5k with the revisitop "
    "ResNet-101 GeM features (K=100 min-mutual graph, QUERYKNN=10, alpha=0.9): mAP E/M/H "
    "86.42 / 72.52 / 48.56"
)
_YANG = "Yang et al., AAAI 2019, reference code (fyang93/diffusion)"
_RRT = "Tan et al., ICCV 2021 (Reranking Transformers), reference code"
_AMES = "Suma et al., ECCV 2024 (AMES), reference code's README"
_LOCORE = "Xiao et al., CVPR 2025 (LOCORE), reference code's README"


def _rdip_paper() -> dict:
    return {"rescorer": "superglobal"}


#: Class name -> preset name -> :class:`~graphrerank.rerankers.Preset`.
PRESETS: dict[str, dict[str, Preset]] = {
    "KReciprocal": {
        "market": Preset(
            {"k1": 20, "k2": 6, "lambda_value": 0.3},
            f"{_ZHONG}, reference code defaults for Market-1501",
        ),
        "cuhk03": Preset(
            {"k1": 7, "k2": 3, "lambda_value": 0.3},
            f"{_ZHONG}, reference code's author (issue #7 of zhunzhong07/person-re-ranking): "
            "CUHK03 has fewer ground-truth images per identity",
        ),
    },
    "GNNRerank": {
        "market": Preset(
            {"k1": 26, "k2": 7, "layers": 2, "lambda_value": 0.0},
            f"{_ZHANG}, official code (GPU-Re-Ranking) for Market-1501, the published (2021) "
            "form without the original cosine",
        ),
        "market_2023": Preset(
            {"k1": 26, "k2": 7, "layers": 2, "lambda_value": 0.3},
            f"{_ZHANG}, official code's 2023-08 revision (original cosine mixed in, lambda=0.3)",
        ),
        "veri776": Preset(
            {"k1": 60, "k2": 10, "layers": 2, "lambda_value": 0.0},
            f"{_ZHANG}, official code for VeRi-776",
        ),
    },
    "Diffusion": {
        "global": Preset(
            {"kd": 50, "kq": 10, "alpha": 0.99, "gamma": 3.0, "max_iter": 20, "tol": 1e-6},
            f"{_ISCEN}, global descriptors",
        ),
        "roxford": Preset(
            {"kd": 100, "kq": 10, "alpha": 0.9, "symmetrize": "min"},
            _MISHKIN,
        ),
    },
    "RegionalDiffusion": {
        "regional": Preset(
            {"kd": 200, "kq": 200, "alpha": 0.99, "gamma": 3.0, "pooling": "gmp"},
            f"{_ISCEN}, regional descriptors (21 regions per image)",
        ),
        "oxford105k": Preset(
            {"kd": 200, "kq": 200, "alpha": 0.99, "gamma": 3.0, "truncation": 10000},
            f"{_ISCEN}, regional Oxford105k / Paris106k with early truncation (topn=10000)",
        ),
    },
    "FastSpectralRanking": {
        "roxford": Preset(
            {"kd": 100, "kq": 10, "alpha": 0.9, "symmetrize": "min", "rank": 2000},
            "Iscen et al., CVPR 2018 (Fast Spectral Ranking), Mishkin's port with R=2000 on "
            "ROxford5k (ResNet-101 GeM): mAP E/M/H 86.5 / 72.0 / 45.7",
        ),
    },
    "OfflineDiffusion": {
        "reference": Preset(
            {"kd": 50, "kq": 10, "truncation": 1000, "alpha": 0.99, "gamma": 3.0},
            f"{_YANG}, hard-coded defaults",
        ),
        "oxford105k": Preset(
            {"kd": 50, "kq": 10, "truncation": 5000, "alpha": 0.99, "gamma": 3.0},
            f"{_YANG}, README: truncation 5000 for Oxford105k / Paris106k",
        ),
    },
    "RDiP": {
        "paper": Preset(
            _rdip_paper(),
            "Kato, Komamizu and Ide, DEXA 2024: offline diffusion + SuperGlobal re-scoring "
            "(k_m and k_d unpublished: graphrerank's km=100, kd=50)",
        ),
    },
    "SuperGlobal": {
        "reference": Preset(
            {"M": 400, "K": 9, "beta": 0.15},
            "Shao et al., ICCV 2023, official code (TEST.TOPK_LIST=[400], K=9, beta=0.15)",
        ),
    },
    "AlphaQueryExpansion": {
        "fastreid": Preset(
            {"k": 5, "alpha": 3.0, "iterations": 1},
            "fast-reid TEST.AQE (QE_K=5, ALPHA=3.0, QE_TIME=1); Radenovic et al., TPAMI 2018 "
            "(alpha=3)",
        ),
    },
    "DatabaseAugmentation": {
        "pyretri": Preset({"k": 10, "alpha": 0.0}, "PyRetri DBA (enhance_k=10)"),
    },
    # The shortlist, descriptors, storage and fusion of the learned re-rankers; the model
    # sizes are graphrerank.models.matcher_preset of the same name (give model=...).
    "LocalDescriptorReranker": {
        "rrt": Preset(
            {
                "top_m": 100,
                "mode": "pairwise",
                "lambda_value": 0.0,
                "query_descriptors": 500,
                "db_descriptors": 500,
                "db_storage": "float32",
            },
            f"{_RRT}: the global top-100 re-ranked pair by pair, up to 500 DELG local "
            "descriptors per image, the logit replaces the global score (no fusion: "
            "lambda_value=0)",
        ),
        "ames": Preset(
            {
                "top_m": 100,
                "mode": "pairwise",
                "lambda_value": 0.55,
                "gamma": 0.30,
                "query_descriptors": 600,
                "db_descriptors": 50,
                "db_storage": "float32",
            },
            f"{_AMES}: top-100 (num_rerank=100), asymmetric 600 query / 50 database "
            "descriptors, DINOv2 full precision, fusion lambda=0.55, temperature 0.30",
        ),
        "ames_binary": Preset(
            {
                "top_m": 100,
                "mode": "pairwise",
                "lambda_value": 0.35,
                "gamma": 0.10,
                "query_descriptors": 600,
                "db_descriptors": 50,
                "db_storage": "binary",
            },
            f"{_AMES}: as 'ames' with binary database descriptors (128-bit ITQ codes: give "
            "the model whitening=graphrerank.models.itq_whitening(train_local, 128)), "
            "fusion lambda=0.35, temperature 0.10",
        ),
        "locore": Preset(
            {
                "top_m": 400,
                "mode": "listwise",
                "window": 100,
                "stride": 50,
                "lambda_value": 0.5,
                "gamma": 0.1,
                "query_descriptors": 48,
                "db_descriptors": 48,
                "db_storage": "float32",
            },
            f"{_LOCORE}: sliding windows of 100 every 50 over the top-400 "
            "(--sliding_topk 400), 48 DINOv2 local descriptors per image "
            "(--num_descriptors 48), fusion alpha=0.5, temp=0.1",
        ),
    },
}


def presets_table() -> list[tuple[str, str, str, str]]:
    """Every preset as ``(class, name, settings, source)`` rows (the docs' table).

    Example:
        >>> rows = presets_table()
        >>> rows[0][:3]
        ('KReciprocal', 'market', 'k1=20, k2=6, lambda_value=0.3')
    """
    rows = []
    for cls, presets in PRESETS.items():
        for name, p in presets.items():
            settings = ", ".join(f"{k}={v!r}" for k, v in p.settings.items())
            rows.append((cls, name, settings, p.source))
    return rows
