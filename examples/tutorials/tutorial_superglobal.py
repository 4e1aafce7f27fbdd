"""
SuperGlobal re-ranking
======================

SuperGlobal (Shao et al., ICCV 2023) re-ranks the top :math:`M` of a first-stage ranking
with global descriptors only: each shortlisted item is averaged with its :math:`K` nearest
neighbours *within the shortlist* (database-side refinement), the query is replaced by the
element-wise maximum of its best refined neighbours (query-side refinement), and the two
similarities are averaged. It needs no database graph and no training: new queries cost their
shortlist only, and it can re-rank the shortlist of any earlier stage. In graph terms, the
database-side step is one hop of message passing of the query's similarities over the
shortlist's kNN graph.
"""

# %%
# The data and the reference setting
# ----------------------------------
import time

import torch

import graphrerank as gr
from graphrerank import plot
from graphrerank.metrics import class_average_precision, class_map
from graphrerank.rerankers import SuperGlobal

data = gr.datasets.load_digits_retrieval()
# sphinx_gallery_start_ignore
# The test suite runs every tutorial in a fast mode, on the first 600 digits.
from graphrerank.testing import fast_mode

FAST = fast_mode()
if FAST:
    data = data.head(600)
# sphinx_gallery_end_ignore
x, labels = data.database, data.database_labels
n = data.num_items

baseline = gr.KNN().fit(x).rerank(None, k=n)
base_map = class_map(baseline.indices, labels, leave_one_out=True)
superglobal = SuperGlobal()  # M=400, K=9, beta=0.15
result = superglobal.fit(x).rerank(None, k=n)
print(f"kNN {100 * base_map:.2f}, {superglobal!r} {100 * class_map(result.indices, labels, leave_one_out=True):.2f}")  # fmt: skip

# %%
# Only the shortlist moves: beyond the :math:`M`-th item every list keeps its first-stage
# order.
M = superglobal.M
same_tail = torch.equal(result.indices[:, M:], baseline.indices[:, M:])
same_head = torch.equal(
    result.indices[:, :M].sort(1).values, baseline.indices[:, :M].sort(1).values
)
print(f"same items in the top {M}: {same_head}; same order after it: {same_tail}")

# %%
# Inside: the two refinements for one query
# -----------------------------------------
# Written out for one query with a short shortlist (:math:`M = 20`, :math:`K = 3`): the
# database-side refinement averages each shortlisted item with its :math:`K` nearest
# shortlisted items (weights :math:`1` for itself and :math:`\beta s_{ij}` for the others);
# its score is :math:`a_i = \mathbf{q}^\top \tilde{\mathbf{x}}_i`. The query-side refinement
# takes the element-wise maximum :math:`\tilde{\mathbf{q}}` of the refined descriptors of the
# :math:`K + 1` best items by :math:`a`, scores :math:`b_i = \tilde{\mathbf{q}}^\top
# \tilde{\mathbf{x}}_i`, and the shortlist is sorted by :math:`(a_i + b_i) / 2`.
small_M, K, beta = 20, 3, 0.15
q = x[7]
shortlist = gr.KNN().fit(x).rerank(q[None], k=small_M).indices[0]
xs = x[shortlist]
s = xs @ xs.T
nbr_s, nbr = s.topk(K + 1, dim=1)  # the item itself comes first, with s = 1
w = torch.cat([torch.ones(small_M, 1), beta * nbr_s[:, 1:]], dim=1)
refined = (w[:, :, None] * xs[nbr]).sum(1) / w.sum(1, keepdim=True)
a = refined @ q
q_refined = refined[a.topk(K + 1).indices].max(0).values
b = refined @ q_refined
by_hand = shortlist[((a + b) / 2).argsort(descending=True)]
ours = SuperGlobal(M=small_M, K=K, beta=beta).fit(x).rerank(q[None], k=small_M).indices[0]
print(by_hand.tolist())
print(ours.tolist())

# %%
# Settings
# --------
# :func:`graphrerank.plot.parameter_sweep` runs one setting over a grid. The neighbour count
# :math:`K` and the neighbours' weight :math:`\beta`:
Ks = [3, 9, 20]
betas = [0.05, 0.5, 1.0]
# sphinx_gallery_start_ignore
if FAST:
    Ks, betas = [3, 9], [1.0]
# sphinx_gallery_end_ignore
sweep = plot.parameter_sweep(SuperGlobal(), "K", Ks, x, labels=labels)
fig = plot.map_vs_parameter(sweep, parameter="K (beta=0.15)", baseline=base_map, title="digits")

# %%
sweep = plot.parameter_sweep(SuperGlobal(K=9), "beta", betas, x, labels=labels)
sweep.append((0.15, class_map(result.indices, labels, leave_one_out=True)))  # computed above
fig = plot.map_vs_parameter(sorted(sweep), parameter="beta (K=9)", baseline=base_map)

# %%
# Re-ranking another stage's shortlist
# ------------------------------------
# SuperGlobal ``accepts_initial``: it re-ranks a given ranking (its first :math:`M` entries),
# e.g. from an approximate index over a large database, instead of searching itself.
# Here an IVF index (faiss, when installed) gives the first stage for held-out queries:
from graphrerank.graph import KNNIndex

perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
queries, database = x[perm[:100]], x[perm[100:]]
q_labels, db_labels = labels[perm[:100]], labels[perm[100:]]
try:
    index = KNNIndex(kind="ivf", nlist=16, nprobe=4).add(database)
except ImportError:  # no faiss: an exact index
    index = KNNIndex().add(database)
print(index)
first = index.search(queries, 400)
t = time.perf_counter()
reranked = SuperGlobal().fit(database).rerank(queries, k=400, initial=first)
print(f"{1000 * (time.perf_counter() - t) / len(queries):.2f} ms per query, fit included")
print(
    f"first stage mAP@400 {100 * class_map(first.indices, db_labels, q_labels):.2f}, "
    f"re-ranked {100 * class_map(reranked.indices, db_labels, q_labels):.2f}"
)

# %%
# Pictures
# --------
fig = plot.precision_recall(
    {"kNN": baseline, "SuperGlobal": result}, labels, leave_one_out=True, title="digits"
)

# %%
gain = class_average_precision(result.indices, labels, leave_one_out=True)
gain -= class_average_precision(baseline.indices, labels, leave_one_out=True)
fig = plot.ranked_lists(
    data.images,
    {"kNN": baseline, "SuperGlobal": result},
    gain.argsort(descending=True)[:2].tolist(),
    labels=labels,
    class_names=data.class_names,
    k=10,
)
