"""Order of the tutorials in the gallery (imported by ``conf.py``)."""

from __future__ import annotations

from pathlib import Path

#: Tutorials in reading order; any other ``tutorial_*.py`` follows, by file name.
ORDER = [
    "tutorial_knn_graphs.py",
    "tutorial_query_expansion.py",
    "tutorial_kreciprocal_gnn.py",
    "tutorial_diffusion.py",
    "tutorial_superglobal.py",
    "tutorial_pipelines.py",
    "tutorial_tuning.py",
    "tutorial_score_matrices.py",
    "tutorial_learned_rerankers.py",
    "tutorial_scaling.py",
]


class TutorialOrder:
    """Sort key of sphinx-gallery's ``within_subsection_order``: :data:`ORDER` first."""

    def __init__(self, src_dir: str | Path) -> None:
        self.src_dir = src_dir

    def __call__(self, filename: str) -> tuple[int, str]:
        name = Path(filename).name
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)

    def __repr__(self) -> str:
        return "TutorialOrder"
