"""Person re-identification: result files, Market-1501 file names and folders."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import check_path
from ._files import (
    as_float_matrix,
    existing_file,
    int_vector,
    path_label,
    read_mat,
    read_npy,
)

__all__ = ["Market1501", "ReIDFeatures", "load_reid_result", "parse_reid_filename"]

PathLike = str | os.PathLike

_RESULT_KEYS = (
    "query_f",
    "query_label",
    "query_cam",
    "gallery_f",
    "gallery_label",
    "gallery_cam",
)


@dataclass(repr=False)
class ReIDFeatures:
    """Query and gallery descriptors of a re-ID test set, with person ids and cameras.

    Attributes:
        query_features: ``(Q, D)`` float32.
        query_ids: ``(Q,)`` int64 person ids.
        query_cams: ``(Q,)`` int64 camera ids.
        gallery_features: ``(G, D)`` float32.
        gallery_ids: ``(G,)`` int64 person ids; in Market-1501, ``-1`` marks junk images and
            ``0`` distractors.
        gallery_cams: ``(G,)`` int64 camera ids.
        query_names: optional ``(Q,)`` numpy array of ``str`` file names.
        gallery_names: optional ``(G,)`` numpy array of ``str`` file names.
        name: a short name, e.g. ``"market1501"``.

    Raises:
        ValueError: lengths or dimensions disagree.
    """

    query_features: Tensor
    query_ids: Tensor
    query_cams: Tensor
    gallery_features: Tensor
    gallery_ids: Tensor
    gallery_cams: Tensor
    query_names: np.ndarray | None = None
    gallery_names: np.ndarray | None = None
    name: str = "reid"

    def __post_init__(self) -> None:
        for side in ("query", "gallery"):
            feats = getattr(self, f"{side}_features")
            n = feats.shape[0]
            for field in ("ids", "cams", "names"):
                value = getattr(self, f"{side}_{field}")
                if value is not None and len(value) != n:
                    raise ValueError(
                        f"{side}_{field} has {len(value)} entries but {side}_features has {n} rows"
                    )
        dq, dg = self.query_features.shape[1], self.gallery_features.shape[1]
        if dq != dg:
            raise ValueError(f"query descriptors have dimension {dq} but gallery ones {dg}")

    def __repr__(self) -> str:
        return (
            f"ReIDFeatures(name={self.name!r}, queries={self.query_features.shape[0]}, "
            f"gallery={self.gallery_features.shape[0]}, dim={self.query_features.shape[1]})"
        )


def _result_from_arrays(arrays: dict[str, Any], where: str, name: str) -> ReIDFeatures:
    missing = [k for k in _RESULT_KEYS if k not in arrays]
    if missing:
        raise ValueError(
            f"{where} lacks the variable(s) {missing} of a re-ID result file "
            f"(found {sorted(arrays)})"
        )
    out: dict[str, Any] = {}
    for side in ("query", "gallery"):
        feats = as_float_matrix(arrays[f"{side}_f"], f"'{side}_f' in {where}")
        ids = int_vector(arrays[f"{side}_label"], f"'{side}_label' in {where}")
        cams = int_vector(arrays[f"{side}_cam"], f"'{side}_cam' in {where}")
        for what, v in (("label", ids), ("cam", cams)):
            if v.shape[0] != feats.shape[0]:
                raise ValueError(
                    f"{where}: '{side}_{what}' has {v.shape[0]} entries but '{side}_f' has "
                    f"{feats.shape[0]} rows"
                )
        out[f"{side}_features"], out[f"{side}_ids"], out[f"{side}_cams"] = feats, ids, cams
    if out["query_features"].shape[1] != out["gallery_features"].shape[1]:
        raise ValueError(
            f"{where}: 'query_f' has dimension {out['query_features'].shape[1]} but "
            f"'gallery_f' has {out['gallery_features'].shape[1]}"
        )
    return ReIDFeatures(**out, name=name)


def load_reid_result(path: PathLike) -> ReIDFeatures:
    """Read a re-ID result ``.mat`` file (the format of the common person re-ID baselines).

    The file holds ``query_f`` ``(Q, D)``, ``query_label`` and ``query_cam`` (stored
    ``(1, Q)``), ``gallery_f`` ``(G, D)``, ``gallery_label`` and ``gallery_cam`` (``(1, G)``).

    Args:
        path: the ``.mat`` file (MATLAB v4 to v7).

    Returns:
        Float32 descriptors and flattened int64 ids and cameras.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is unreadable (or v7.3), a variable is missing, or lengths or
            dimensions disagree.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from scipy.io import savemat
        >>> from graphrerank.datasets import load_reid_result
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "result.mat"
        ...     savemat(path, {"query_f": np.ones((2, 8), np.float32), "query_label": [[5, 6]],
        ...                    "query_cam": [[1, 2]], "gallery_f": np.ones((3, 8), np.float32),
        ...                    "gallery_label": [[5, 6, -1]], "gallery_cam": [[2, 1, 3]]})
        ...     res = load_reid_result(path)
        >>> res
        ReIDFeatures(name='result', queries=2, gallery=3, dim=8)
        >>> res.gallery_ids
        tensor([ 5,  6, -1])
    """
    path = existing_file(path, "re-ID result file")
    return _result_from_arrays(read_mat(path), path_label(path), path.stem)


_REID_NAME = re.compile(r"^(-?\d+)_c(\d+)(?:s\d+)?_.*\.[A-Za-z]+$")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def parse_reid_filename(name: str | PathLike) -> tuple[int, int]:
    """Person id and camera from a Market-1501 style image name.

    Names look like ``0002_c1s1_000451_03.jpg``: person ``2`` seen by camera ``1`` (sequence
    ``s1``, frame ``000451``, box ``03``). Person id ``-1`` marks junk images and ``0000``
    distractors.

    Args:
        name: a file name or a path (only its last part is read).

    Returns:
        ``(person_id, camera)``.

    Raises:
        ValueError: the name does not follow the pattern.

    Example:
        >>> from graphrerank.datasets import parse_reid_filename
        >>> parse_reid_filename("0002_c1s1_000451_03.jpg")
        (2, 1)
        >>> parse_reid_filename("-1_c3s2_000101_01.jpg")
        (-1, 3)
    """
    base = check_path(name, "name").name
    m = _REID_NAME.match(base)
    if m is None:
        raise ValueError(
            f"{base!r} is not a re-ID image name of the form PPPP_cC..., e.g. "
            "'0002_c1s1_000451_03.jpg'"
        )
    return int(m.group(1)), int(m.group(2))


class Market1501:
    """Market-1501 test set in its released folder layout: what to place in ``root``.

    ``root`` must hold the two test folders of the release (the images themselves are only
    listed, never opened, so empty files with the right names do):

    * ``query/``: the 3368 query images;
    * ``bounding_box_test/``: the 19732 gallery images, including junk (person id ``-1``)
      and distractors (``0000``).

    Names follow :func:`parse_reid_filename`. Images are taken in sorted file-name order;
    descriptors given to :meth:`load` must follow that order.

    Args:
        root: the dataset folder.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from graphrerank.datasets import Market1501
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     root = pathlib.Path(tmp)
        ...     (root / "query").mkdir(); (root / "bounding_box_test").mkdir()
        ...     for n in ["0001_c1s1_000001_00.jpg", "0002_c2s1_000001_00.jpg"]:
        ...         (root / "query" / n).touch()
        ...     for n in ["-1_c1s1_000002_00.jpg", "0001_c2s1_000003_00.jpg",
        ...               "0002_c1s1_000004_00.jpg"]:
        ...         (root / "bounding_box_test" / n).touch()
        ...     data = Market1501(root).load(np.ones((2, 4)), np.ones((3, 4)))
        >>> data.gallery_ids, data.gallery_cams
        (tensor([-1,  1,  2]), tensor([1, 2, 1]))
    """

    query_dir = "query"
    gallery_dir = "bounding_box_test"

    def __init__(self, root: PathLike) -> None:
        self.root = check_path(root, "root")

    def required_files(self) -> list[Path]:
        """The two image folders."""
        return [self.root / self.query_dir, self.root / self.gallery_dir]

    def missing_files(self) -> list[Path]:
        """The :meth:`required_files` that do not exist."""
        return [p for p in self.required_files() if not p.is_dir()]

    def _check(self) -> None:
        missing = self.missing_files()
        if missing:
            raise FileNotFoundError(
                f"Market1501: missing folder(s) {', '.join(map(str, missing))}. Place there the "
                f"'{self.query_dir}' and '{self.gallery_dir}' folders of the Market-1501 "
                "release (Zheng et al., ICCV 2015); graphrerank never downloads anything."
            )

    def _names(self, folder: str) -> np.ndarray:
        self._check()
        names = sorted(
            p.name
            for p in (self.root / folder).iterdir()
            if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
        )
        if not names:
            raise ValueError(f"{str(self.root / folder)!r} holds no images")
        return np.asarray(names, dtype=str)

    def query_names(self) -> np.ndarray:
        """``(Q,)`` sorted query image names (numpy ``str``)."""
        return self._names(self.query_dir)

    def gallery_names(self) -> np.ndarray:
        """``(G,)`` sorted gallery image names (numpy ``str``)."""
        return self._names(self.gallery_dir)

    @staticmethod
    def _ids_cams(names: np.ndarray, folder: Path) -> tuple[Tensor, Tensor]:
        parsed = []
        for n in names:
            try:
                parsed.append(parse_reid_filename(n))
            except ValueError as err:
                raise ValueError(f"in {str(folder)!r}: {err}") from None
        arr = np.asarray(parsed, dtype=np.int64).reshape(-1, 2)
        return torch.from_numpy(arr[:, 0].copy()), torch.from_numpy(arr[:, 1].copy())

    def _features(self, x: Any, what: str, n: int) -> Tensor:
        if x is None:
            raise ValueError(f"{what} are needed (or pass result=)")
        if isinstance(x, (str, os.PathLike)):
            path = existing_file(self.root / x, f"{what} file", what)
            feats = as_float_matrix(read_npy(path, what), path_label(path, what))
        elif isinstance(x, (Tensor, np.ndarray)):
            feats = as_float_matrix(x, what)
        else:
            raise TypeError(
                f"{what} must be a .npy path, a tensor or a numpy array, got {type(x).__name__}"
            )
        if feats.shape[0] != n:
            raise ValueError(f"{what} have {feats.shape[0]} rows but the folder holds {n} images")
        return feats

    def load(
        self,
        query_features: PathLike | Tensor | np.ndarray | None = None,
        gallery_features: PathLike | Tensor | np.ndarray | None = None,
        *,
        result: PathLike | None = None,
    ) -> ReIDFeatures:
        """Pair descriptors with the ids and cameras parsed from the image names.

        Args:
            query_features: ``(Q, D)`` descriptors of the query images in sorted name order:
                a ``.npy`` file (a relative path is taken inside ``root``), a tensor or an
                array.
            gallery_features: ``(G, D)`` gallery descriptors, likewise.
            result: instead of the two above, a re-ID result ``.mat`` file (see
                :func:`load_reid_result`, relative paths inside ``root``); its ids and
                cameras must match the image names.

        Returns:
            Descriptors, ids, cameras and names; junk and distractors stay in the gallery
            (the evaluation protocol decides what to ignore).

        Raises:
            FileNotFoundError: a folder or file is missing.
            ValueError: counts disagree with the folders, or the result file's ids or
                cameras do not match the image names.
        """
        q_names, g_names = self.query_names(), self.gallery_names()
        q_dir, g_dir = self.root / self.query_dir, self.root / self.gallery_dir
        q_ids, q_cams = self._ids_cams(q_names, q_dir)
        g_ids, g_cams = self._ids_cams(g_names, g_dir)
        if result is not None:
            if query_features is not None or gallery_features is not None:
                raise ValueError("pass either result= or query_features and gallery_features")
            res = load_reid_result(self.root / result)
            for side, ids, cams, res_ids, res_cams in (
                ("query", q_ids, q_cams, res.query_ids, res.query_cams),
                ("gallery", g_ids, g_cams, res.gallery_ids, res.gallery_cams),
            ):
                if res_ids.shape != ids.shape:
                    raise ValueError(
                        f"{str(result)!r} has {res_ids.shape[0]} {side} rows but the folder "
                        f"holds {ids.shape[0]} images"
                    )
                if not (torch.equal(res_ids, ids) and torch.equal(res_cams, cams)):
                    raise ValueError(
                        f"the {side} ids or cameras in {str(result)!r} do not match the sorted "
                        f"image names of the {side} folder: the descriptors are in another order"
                    )
            q_feats, g_feats = res.query_features, res.gallery_features
        else:
            q_feats = self._features(query_features, "query_features", len(q_names))
            g_feats = self._features(gallery_features, "gallery_features", len(g_names))
        return ReIDFeatures(
            query_features=q_feats,
            query_ids=q_ids,
            query_cams=q_cams,
            gallery_features=g_feats,
            gallery_ids=g_ids,
            gallery_cams=g_cams,
            query_names=q_names,
            gallery_names=g_names,
            name="market1501",
        )

    def __repr__(self) -> str:
        return f"Market1501(root={str(self.root)!r})"
