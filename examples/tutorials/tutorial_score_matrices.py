"""
Re-ranking a precomputed score matrix
=====================================

Many retrieval systems produce a *matrix* of scores rather than one vector per image: a
chamfer similarity of local descriptors, a cross-encoder, a re-ID model's distances, a
vendor's API. The graph re-rankers only need neighbourhoods and pair scores, so they take such
a matrix in place of descriptors. This tutorial computes a chamfer similarity matrix of local
descriptors, re-ranks it with k-reciprocal, GNN re-ranking and diffusion, ranks new queries
from their own score matrices, keeps only a sparse top-k, and saves a re-ranker fitted on
scores.

It uses the real Corel-1k local descriptors (64 per image) when the data folder
(``GRAPHRERANK_DATA``) holds them, and synthetic local descriptors otherwise.
"""

# %%
# Local descriptors and their chamfer similarity
# ----------------------------------------------
# The chamfer similarity of two images averages, over the descriptors of one, the best
# cosine in the other; its symmetric form averages both directions:
#
# .. math::
#     c(a, b) = \frac{1}{2 L_a} \sum_i \max_j \hat{\mathbf{a}}_i^\top \hat{\mathbf{b}}_j
#             + \frac{1}{2 L_b} \sum_j \max_i \hat{\mathbf{a}}_i^\top \hat{\mathbf{b}}_j .
#
# It is a similarity in :math:`[-1, 1]` with :math:`c(a, a) = 1`, but not an inner product
# of any global descriptors: a score matrix is all there is.
import os
import tempfile

import matplotlib.pyplot as plt
import scipy.sparse
import torch

import graphrerank as gr
from graphrerank.graph import ScoreMatrix
from graphrerank.metrics import class_map
from graphrerank.rerankers import KNN, Diffusion, GNNRerank, KReciprocal, Reranker
from graphrerank.testing import fast_mode

FAST = fast_mode()
per_class = 20 if FAST else 60  # images per class kept
kd = 10 if FAST else 20  # diffusion's graph neighbours: below the number of images per class


try:
    glob = gr.datasets.load_corel1k().database
    data = gr.datasets.load_corel1k_local()
    local, labels = data.local, data.labels
    print(data)
except FileNotFoundError:
    glob, local, labels = gr.datasets.make_local_descriptors()
    print("Corel-1k files not found: synthetic local descriptors", tuple(local.shape))

# the first images of every class
keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique()])
glob, local, labels = glob[keep].float(), local[keep].float(), labels[keep]


def chamfer(a: torch.Tensor, b: torch.Tensor, block: int = 16) -> torch.Tensor:
    """The symmetric chamfer similarity of every image of ``a`` with every image of ``b``."""
    a = torch.nn.functional.normalize(a, dim=-1)
    b = torch.nn.functional.normalize(b, dim=-1)
    out = torch.empty(a.shape[0], b.shape[0])
    for s in range(0, a.shape[0], block):
        sim = torch.einsum("aid,bjd->abij", a[s : s + block], b)
        out[s : s + block] = 0.5 * (sim.amax(-1).mean(-1) + sim.amax(-2).mean(-1))
    return out


# %%
# A query set apart from the database: five images of every class query the others.
is_query = torch.zeros(labels.numel(), dtype=torch.bool)
for c in labels.unique():
    is_query[torch.nonzero(labels == c).flatten()[:5]] = True
q_local, db_local = local[is_query], local[~is_query]
q_labels, db_labels = labels[is_query], labels[~is_query]
db_db = chamfer(db_local, db_local)
q_db = chamfer(q_local, db_local)
q_q = chamfer(q_local, q_local)
print(f"database {db_db.shape[0]} images, queries {q_db.shape[0]}; chamfer matrices computed")

# %%
# The matrix as the input
# -----------------------
# :class:`~graphrerank.graph.ScoreMatrix` says what the numbers mean: ``kind="similarity"``
# (higher is more alike) or ``"distance"``. Rows rank, columns are database items. Re-rankers
# are fitted on the database x database matrix and re-rank a query x database matrix;
# k-reciprocal and GNN re-ranking compare queries with queries too, so the query matrix
# carries the query x query scores.
db = ScoreMatrix(db_db)
queries = ScoreMatrix(q_db, query_scores=q_q)
print(db, queries, sep="\n")


def query_map(result) -> float:
    return 100 * class_map(result.indices, db_labels, query_labels=q_labels)


k = db_db.shape[0]
global_map = query_map(KNN().fit(glob[~is_query]).rerank(glob[is_query], k=k))
results = {
    "global cosine": global_map,
    "chamfer": query_map(KNN().fit(db).rerank(queries, k=k)),
    # k-reciprocal works on distances: the chamfer similarities as distances of unit vectors
    "chamfer + k-reciprocal": query_map(
        KReciprocal().fit(db.as_distance()).rerank(queries.as_distance(), k=k)
    ),
    "chamfer + GNN": query_map(GNNRerank(lambda_value=0.3).fit(db).rerank(queries, k=k)),
    "chamfer + diffusion": query_map(Diffusion(kd=kd).fit(db).rerank(queries, k=k)),
}
for name, m in results.items():
    print(f"{name:24s} mAP {m:.2f}")

# %%
# The wrong convention is caught: a distance matrix given as similarities has its diagonal
# (an image against itself) at the bottom of every row.
try:
    KNN().fit(ScoreMatrix(db.as_distance().matrix))
except ValueError as err:
    print("refused:", err)


# %%
# Only the top of each row
# ------------------------
# For a large database one keeps each row's best entries only: a sparse matrix
# (``scipy.sparse`` or ``torch.sparse``). An entry it does not store ranks below every stored
# one. Diffusion needs only each item's top ``kd`` and each query's top ``kq``, so a top-50
# keeps its results for every item it reaches.
def top_rows(scores: torch.Tensor, m: int) -> scipy.sparse.csr_matrix:
    val, idx = scores.topk(m, dim=1)
    rows = torch.arange(scores.shape[0]).repeat_interleave(m)
    return scipy.sparse.csr_matrix(
        (val.flatten().numpy(), (rows.numpy(), idx.flatten().numpy())), shape=scores.shape
    )


sparse_db, sparse_q = ScoreMatrix(top_rows(db_db, 50)), ScoreMatrix(top_rows(q_db, 50))
dense_run = Diffusion(kd=kd).fit(db).rerank(queries, k=20)
sparse_run = Diffusion(kd=kd).fit(sparse_db).rerank(sparse_q, k=20)
reached = dense_run.scores > 0
same = (dense_run.indices == sparse_run.indices)[reached].float().mean()
print(f"top-20 of the items diffusion reaches, dense vs top-50 sparse: {100 * same:.1f}% identical")

# %%
# Saved with its scores
# ---------------------
# A re-ranker fitted on a score matrix saves like any other; the file holds the matrix.
with tempfile.TemporaryDirectory() as tmp:
    path = GNNRerank(lambda_value=0.3).fit(db).save(os.path.join(tmp, "gnn_chamfer.npz"))
    back = Reranker.load(path)
    print(
        type(back).__name__,
        "reloaded:",
        query_map(back.rerank(queries, k=k)) == results["chamfer + GNN"],
    )

# %%
# The results
# -----------
fig, ax = plt.subplots(figsize=(6, 3))
names = list(results)
ax.barh(names, [results[n] for n in names], color=["0.6", "0.4"] + ["C0"] * (len(names) - 2))
ax.set_xlim(min(results.values()) - 5, 100)
ax.set_xlabel("mAP (queries apart from the database)")
ax.invert_yaxis()
fig.tight_layout()
plt.show()
