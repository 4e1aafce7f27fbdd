"""Effect of the neighbourhood rules on real sets: each method's published default, ``"auto"``
(the database-size rule, ``min(k0, max(2, N // 20))``) and the class-size rule that
:func:`~graphrerank.rerankers.suggest_settings` gives from labels (``min(k0, max(k_min,
c // 2))``, ``c`` the median class size), against the plain cosine baseline.

Protocol: all-vs-all class mAP with the own entry dropped (``class_map(...,
leave_one_out=True)``), full rankings. Sets: Corel-1k (``desc_lite2_max512_gem3``, 10 classes of
100), the digits (10 classes of about 180), the same descriptors with small classes (the first
8 Corel images, the first 10 digits of every class), and the PKU-Sketch re-ID result file with its 50
sketches and 100 photos pooled into one 150-item database (50 identities of 3; cross-modal, so
a hard case for every method). Needs ``GRAPHRERANK_DATA`` for the two files.

    python benchmarks/auto_neighbours.py
"""

from __future__ import annotations

import platform
import sys
import time
import warnings

import torch

from graphrerank.datasets import load_corel1k, load_digits_retrieval, load_reid_result
from graphrerank.metrics import class_map
from graphrerank.rerankers import (
    KNN,
    Diffusion,
    GNNRerank,
    KReciprocal,
    SettingWarning,
    check_settings,
    suggest_settings,
)


def _sets():
    corel = load_corel1k()
    yield "Corel-1k", corel.database, corel.database_labels
    digits = load_digits_retrieval()
    yield "digits", digits.database, digits.database_labels
    # small classes from the same real descriptors: the first 8 images of every Corel class,
    # the first 10 digits of every class
    keep = torch.cat([torch.arange(c * 100, c * 100 + 8) for c in range(10)])
    yield "Corel-1k, 8 per class", corel.database[keep], corel.database_labels[keep]
    y = digits.database_labels
    keep = torch.cat([(y == c).nonzero().flatten()[:10] for c in range(10)])
    yield "digits, 10 per class", digits.database[keep], y[keep]
    from graphrerank.testing import data_dir

    reid = load_reid_result(data_dir() / "pku_sketch_reid" / "pytorch_result.mat")
    x = torch.cat([reid.query_features, reid.gallery_features]).float()
    x = torch.nn.functional.normalize(x, dim=1)
    yield "PKU-Sketch (pooled)", x, torch.cat([reid.query_ids, reid.gallery_ids])


def _map(reranker, x, y) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SettingWarning)
        out = reranker.fit(x).rerank(None, x.shape[0])
    return 100 * class_map(out.indices, y, leave_one_out=True)


def main() -> None:
    methods = [Diffusion(), KReciprocal(), GNNRerank()]
    print(f"# {' '.join(sys.argv)}  ({platform.platform()}, torch {torch.__version__})")
    print("| set | N | median class | method | cosine | default | auto | class rule |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    t0 = time.time()
    for name, x, y in _sets():
        x = x.float()
        n = x.shape[0]
        c = int(torch.unique(y, return_counts=True)[1].double().median())
        base = _map(KNN(), x, y)
        for m in methods:
            auto = {k: "auto" for k in suggest_settings(m, n)}
            rule = suggest_settings(m, n, y)
            resolved = suggest_settings(m, n)
            defaults = {k: m.get_params()[k] for k in resolved}
            cells, seen = [], {}
            for params, values in ((defaults, defaults), (auto, resolved), (rule, rule)):
                key = tuple(sorted(values.items()))
                if key not in seen:  # the same values give the same ranking: computed once
                    seen[key] = _map(m.clone().set_params(**params), x, y)
                cells.append(f"{seen[key]:.2f}")
            warned = [p.setting for p in check_settings(m, n, y, warn=False)]
            label = (
                f"{type(m).__name__} (auto {resolved}, rule {rule}"
                + (f", warns {warned}" if warned else "")
                + ")"
            )
            print(f"| {name} | {n} | {c} | {label} | {base:.2f} | " + " | ".join(cells) + " |")
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
