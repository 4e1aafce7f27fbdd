"""Re-rank a person re-ID result with k-reciprocal and GNN re-ranking.

Reads a re-ID result file in the format the common PyTorch re-ID baselines write
(``pytorch_result.mat``: ``query_f``, ``query_label``, ``query_cam``, ``gallery_f``, ...), ranks
the gallery for every query with plain cosine similarity, k-reciprocal re-ranking (Zhong et
al. 2017) and GNN re-ranking (Zhang et al. 2020, the 2021 form and the lambda = 0.3 form),
and prints Market-1501-style mAP, CMC and mINP with the time each took. Both re-rankers are
transductive: all queries and the gallery form one graph.

    python examples/reid_reranking.py                              # the PKU-Sketch file in
                                                                   # the shared data folder
    python examples/reid_reranking.py --mat path/to/pytorch_result.mat   # e.g. Market-1501

k-reciprocal re-ranking can also start from distance matrices (the reference's
``re_ranking(q_g_dist, q_q_dist, g_g_dist)``); the script checks that it ranks as the feature
path does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from graphrerank.datasets import load_reid_result
from graphrerank.metrics import reid_metrics
from graphrerank.rerankers import KNN, GNNRerank, KReciprocal, kreciprocal_rerank_distances
from graphrerank.testing import data_dir


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mat", type=Path, help="re-ID result .mat file")
    p.add_argument("--k", type=int, default=100, help="ranking depth (capped at the gallery)")
    args = p.parse_args(argv)
    path = args.mat
    if path is None:
        root = data_dir()
        path = None if root is None else root / "pku_sketch_reid" / "pytorch_result.mat"
        if path is None or not path.exists():
            raise SystemExit("no --mat given and no shared data folder (GRAPHRERANK_DATA)")
    data = load_reid_result(path)
    q, g = data.query_features, data.gallery_features
    # the baselines write L2-normalised features; make sure of it (GNN re-ranking needs it)
    q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    k = min(args.k, g.shape[0])
    print(f"{path.name}: {q.shape[0]} queries, {g.shape[0]} gallery items, {q.shape[1]}-d")

    rows = []
    for reranker in (KNN(), KReciprocal(), GNNRerank(), GNNRerank(lambda_value=0.3)):
        t = time.perf_counter()
        out = reranker.fit(g).rerank(q, k=k)
        seconds = time.perf_counter() - t
        m = reid_metrics(out.indices, data.query_ids, data.query_cams, data.gallery_ids,
                         data.gallery_cams)  # fmt: skip
        rows.append({"method": repr(reranker), "metrics": m, "seconds": seconds, "out": out})
        print(
            f"{reranker!r:<28} mAP {100 * m.map:6.2f}  R1 {100 * m.rank1:5.1f}  "
            f"R5 {100 * m.rank5:5.1f}  R10 {100 * m.rank10:5.1f}  mINP {100 * m.minp:6.2f}  "
            f"{1000 * seconds:8.1f} ms"
        )

    dist = kreciprocal_rerank_distances(
        torch.cdist(q, g), torch.cdist(q, q), torch.cdist(g, g), k=k
    )
    same = bool((dist.indices == rows[1]["out"].indices).float().mean() > 0.99)
    print(f"k-reciprocal from distance matrices ranks as from features: {same}")
    return rows


if __name__ == "__main__":
    main()
