"""
Query expansion and database augmentation
=========================================

Query expansion (AQE, αQE) replaces a query by a weighted sum of itself and its nearest
database items and searches again; database augmentation (DBA, αDBA) does the same to every
database item, once, offline. Both are one hop of message passing over kNN edges: DBA over
the database's own kNN graph, query expansion over the bipartite graph from the database to
the queries. This tutorial runs them on the digits set, tunes them, looks inside the
``MessagePassing`` layer that computes them, and chains DBA with αQE.
"""

# %%
# The data and the baseline
# -------------------------
# The digits set: 1,797 real 8x8 images, mean-centred and L2-normalised pixels, every image a
# query of the others (all-vs-all, its own entry dropped when scoring).
import torch

import graphrerank as gr
from graphrerank import plot
from graphrerank.metrics import class_average_precision, class_map
from graphrerank.rerankers import (
    AlphaQueryExpansion,
    AverageQueryExpansion,
    DatabaseAugmentation,
    Pipeline,
)

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


def evaluate(reranker):
    """All-vs-all mAP of a re-ranker, and its ranking."""
    result = reranker.fit(x).rerank(None, k=n)
    return class_map(result.indices, labels, leave_one_out=True), result


base_map, baseline = evaluate(gr.KNN())
print(f"kNN baseline: mAP {100 * base_map:.2f}")

# %%
# Four expansions at their reference settings
# -------------------------------------------
# AQE adds the :math:`k` nearest items to the query with weight 1; αQE weights each by its
# similarity to the power :math:`\alpha` (:math:`\alpha = 3`), the query itself with weight 1.
# DBA replaces every database item by the sum of itself and its :math:`k` nearest other
# items (αDBA with similarity weights); the queries then search the augmented database.
methods = {
    "AQE": AverageQueryExpansion(k=5),
    "αQE": AlphaQueryExpansion(k=5, alpha=3.0),
    "DBA": DatabaseAugmentation(k=5),
    "αDBA": DatabaseAugmentation(k=5, alpha=3.0),
}
results = {"kNN": baseline}
for name, reranker in methods.items():
    m, results[name] = evaluate(reranker)
    print(f"{name:<5} {reranker!r:<45} mAP {100 * m:.2f} ({100 * (m - base_map):+.2f})")

# %%
# How many neighbours, and how sharp a weighting?
# -----------------------------------------------
# :func:`graphrerank.plot.parameter_sweep` runs a re-ranker once per value of one setting and
# scores each ranking (class mAP, leave-one-out, by default);
# :func:`graphrerank.plot.map_vs_parameter` draws the curves.
ks = [1, 2, 5, 10, 20, 40]
alphas = [0.0, 1.0, 3.0, 6.0]
# sphinx_gallery_start_ignore
if FAST:
    ks, alphas = [2, 5], [0.0, 3.0]
# sphinx_gallery_end_ignore
sweeps = {
    "αQE": plot.parameter_sweep(AlphaQueryExpansion(), "k", ks, x, labels=labels),
    "DBA": plot.parameter_sweep(DatabaseAugmentation(), "k", ks, x, labels=labels),
}
fig = plot.map_vs_parameter(sweeps, parameter="k", baseline=base_map, title="digits, all-vs-all")

# %%
# In the all-vs-all case the query's nearest neighbour is its own entry, so αQE with
# :math:`k = 1` adds the query to itself and changes nothing; DBA counts only *other* items.
# On the digits, whose classes have about 180 images each, more neighbours keep helping.

# %%
# The exponent :math:`\alpha` of αQE decides how much the farther neighbours count;
# :math:`\alpha = 0` is AQE:
sweep = plot.parameter_sweep(AlphaQueryExpansion(k=10), "alpha", alphas, x, labels=labels)
fig = plot.map_vs_parameter(sweep, parameter="alpha (αQE, k=10)", baseline=base_map)

# %%
# Inside: one hop of message passing
# ----------------------------------
# DBA is :class:`~graphrerank.nn.ExpansionPropagation` over the database's kNN graph: every
# item receives its neighbours' descriptors with weight :math:`\max(s_{ij}, 0)^\alpha` and
# keeps its own with weight 1, then is L2-normalised. The same by hand, with the plain
# weighted-sum layer :class:`~graphrerank.nn.WeightedPropagation`:
from graphrerank.graph import knn_graph
from graphrerank.nn import WeightedPropagation, adjacency

dba = DatabaseAugmentation(k=5, alpha=3.0).fit(x)
graph = knn_graph(x, 5, k_includes_self=False, gamma=3.0)
by_hand = torch.nn.functional.normalize(x + WeightedPropagation()(x, adjacency(graph)), dim=1)
print(f"largest difference: {(dba.augmented_ - by_hand).abs().max():.2e}")

# %%
# Chaining: DBA, then αQE
# -----------------------
# A :class:`~graphrerank.rerankers.Pipeline` passes each stage's database and queries to the
# next: αQE expands the queries against the augmented database. This is the usual recipe for
# landmark retrieval.
pipeline = Pipeline([DatabaseAugmentation(k=5), AlphaQueryExpansion(k=5)])
m, results["DBA → αQE"] = evaluate(pipeline)
print(f"{pipeline!r}: mAP {100 * m:.2f} ({100 * (m - base_map):+.2f})")

# %%
# Precision-recall curves of all of them:
fig = plot.precision_recall(results, labels, leave_one_out=True, title="digits")

# %%
# The queries the pipeline helps most, before and after:
gain = class_average_precision(results["DBA → αQE"].indices, labels, leave_one_out=True)
gain -= class_average_precision(baseline.indices, labels, leave_one_out=True)
fig = plot.ranked_lists(
    data.images,
    {"kNN": baseline, "DBA → αQE": results["DBA → αQE"]},
    gain.argsort(descending=True)[:2].tolist(),
    labels=labels,
    class_names=data.class_names,
    k=10,
)

# %%
# Separate queries and asymmetric encoders
# ----------------------------------------
# Query expansion is inductive: each query is expanded on its own against the fixed database,
# so new queries need nothing recomputed, and a query from another encoder than the database
# (``asymmetric=True``) is accepted, since only query-database similarities are used.
queries, database = x[:100], x[100:]
qe = AlphaQueryExpansion(k=5).fit(database)
print(qe.transductive, qe.needs_query_similarity)
out = qe.rerank(queries, k=10, asymmetric=True)
print(out.indices[:3])
