"""
Learned re-ranking with local descriptors
=========================================

A global descriptor finds the right neighbourhood fast; local descriptors tell close
candidates apart. This tutorial trains a small graph attention model that matches the local
descriptors of a query with those of each candidate (the idea of Reranking Transformers, AMES
and LOCORE, written as PyG graphs with kNN correspondences), re-ranks the top of the global
ranking with it, fuses the two scores, and shows the memory / accuracy trade-off of keeping
fewer, smaller database descriptors.

It uses the real Corel-1k local descriptors (64 per image) when the data folder
(``GRAPHRERANK_DATA``) holds them, and synthetic local descriptors otherwise. Classes are
disjoint: the model is trained on five classes and tested on five others.
"""

# %%
# The data
# --------
# Each image has a global descriptor :math:`(D_g,)` and :math:`L` local descriptors
# :math:`(L, D)`. With the Corel files: EfficientNet global descriptors and the 64 strongest
# positions of the last feature map, PCA-whitened to 128-d.
import time

import matplotlib.pyplot as plt
import torch

import graphrerank as gr
from graphrerank.graph import knn_graph
from graphrerank.metrics import class_map
from graphrerank.models import LocalMatcher, rerank_shortlist, train_matcher
from graphrerank.rerankers import LocalDescriptorReranker
from graphrerank.testing import fast_mode

FAST = fast_mode()
torch.manual_seed(0)


try:
    glob = gr.datasets.load_corel1k().database
    data = gr.datasets.load_corel1k_local()
    local, labels = data.local, data.labels
    print(data)
except FileNotFoundError:
    glob, local, labels = gr.datasets.make_local_descriptors()
    print("Corel-1k files not found: synthetic local descriptors", tuple(local.shape))

# %%
# A class-disjoint split
# ----------------------
# A re-ranker meets classes it never saw in training, so it must be *chosen* on unseen
# classes too: :func:`~graphrerank.models.class_disjoint_split` puts every class wholly in one
# part - training classes, validation classes (early stopping and the fusion's
# :math:`\lambda, \gamma`; unseen at training time) and test classes (unseen by both). Holding
# back images of the training classes instead rewards a model that learnt those classes: the
# fusion then trusts it (:math:`\lambda \to 0`) and loses on new ones. The sizes are kept
# small so that the tutorial runs in about a minute on a CPU (the model below is small too:
# width 16, one layer); ``benchmarks/learned_corel.py`` runs the full protocol.
from graphrerank.models import class_disjoint_split

split = class_disjoint_split(labels, test_classes=len(labels.unique()) // 2, val_classes=2)
print("train classes", split.train_classes, "validation", split.val_classes,
      "test", split.test_classes)  # fmt: skip
per_class = (16, 24, 30) if FAST else (40, 40, 40)  # images kept per class in each part
rank_in_class = torch.zeros_like(labels)
for c in labels.unique():
    rank_in_class[labels == c] = torch.arange(int((labels == c).sum()))
train, val, test = (
    part[rank_in_class[part] < n] for part, n in zip(split[:3], per_class, strict=True)
)
top_m = 20
print(f"train {train.numel()}, validation {val.numel()}, test {test.numel()} images; top-M {top_m}")

# %%
# The model
# ---------
# :class:`~graphrerank.models.LocalMatcher` builds, for a query and its candidates, a graph
# whose nodes are local descriptors, with edges to the most similar descriptors of the same
# image and :math:`k` correspondences across images (plus a global node per image), runs
# attention message passing (PyG's ``TransformerConv``) and pools the correspondences of each
# pair into a matching logit. In its default design (``design="late"``) the attention blocks
# see one image at a time and one cross-attention layer over the correspondences precedes the
# readout: every database image is encoded once (the reranker caches it) and a query's whole
# shortlist is scored in one dense batched pass, equal to the graph computation.
model = LocalMatcher(
    local.shape[2], hidden=16, heads=2, num_layers=1, ffn=32,
    k_intra=4, k_cross=4, global_dim=glob.shape[1],
)  # fmt: skip
graph = model.graph(
    local[:1], local[1:4].unsqueeze(0), query_global=glob[:1], candidate_global=glob[1:4][None]
)
print(graph)

# %%
# Training
# --------
# :func:`~graphrerank.models.train_matcher` mines, for every training image, positives and
# hard negatives from its global ranking among the training images, and minimises binary
# cross-entropy with AdamW; it validates (mAP of the re-ranked images of the validation
# classes), stops early and keeps the best weights.
t = time.perf_counter()
result = train_matcher(
    model, glob, local, labels, train_index=train, val_index=val, epochs=2,
    positives=2, negatives=4, val_top_m=top_m, seed=0,
)  # fmt: skip
print(f"trained in {time.perf_counter() - t:.1f} s")
for h in result.history:
    print(f"epoch {h['epoch']}: loss {h['loss']:.3f}, validation mAP {100 * h['val_map']:.2f}")

# %%
# Fusion with the global score
# ----------------------------
# The re-ranker re-orders the top :math:`M` of the global ranking by
# :math:`\lambda s_{\text{global}} + (1 - \lambda)\,\sigma(\gamma \ell)`. One call chooses
# :math:`\lambda, \gamma` on the validation classes.
reranker = LocalDescriptorReranker(model=model, top_m=top_m)
reranker.fit(glob[val], local=local[val])
best = reranker.tune_fusion(labels[val])
print(f"lambda {best.lambda_value}, gamma {best.gamma}: validation mAP {100 * best.map:.2f}")

# %%
# Re-ranking the test classes
# ---------------------------
# The test images are the database; each one queries it (all-vs-all, leave-one-out). The
# training-free rows are the yardsticks: ``similarity="chamfer"`` is the mean over the
# query's descriptors of the best cosine in the candidate, ``"chamfer_sym"`` averages it with
# the other direction (candidate to query), ``"mnn"`` counts mutual nearest neighbours. Each is
# fused with the global score with its own :math:`\lambda, \gamma` tuned on the validation
# classes, like the learned model. On Corel's test classes the global descriptor is already
# near saturation, so differences are small; the full protocol's numbers are in
# ``benchmarks/results/learned_corel.md``.
lab = labels[test]
reranker.fit(glob[test], local=local[test])
sl = reranker.shortlist_logits(None, test.numel())  # the logits once, fused several ways


def score(ranking):
    return 100 * class_map(ranking.indices, lab, leave_one_out=True)


results = {"global cosine": score(rerank_shortlist(*sl, 1.0, 1.0))}
for kind in ("chamfer", "chamfer_sym", "mnn"):
    base = LocalDescriptorReranker(similarity=kind, top_m=top_m)
    tuned = base.fit(glob[val], local=local[val]).tune_fusion(labels[val])
    csl = base.fit(glob[test], local=local[test]).shortlist_logits(None, test.numel())
    results[kind] = score(rerank_shortlist(*csl, 0.0, 1.0))
    results[f"{kind} + global"] = score(rerank_shortlist(*csl, tuned.lambda_value, tuned.gamma))
results["learned"] = score(rerank_shortlist(*sl, 0.0, 1.0))
results["learned + global"] = score(rerank_shortlist(*sl, best.lambda_value, best.gamma))
for name, value in results.items():
    print(f"{name:<20} mAP {value:6.2f}")

# %%
# Memory: fewer and smaller database descriptors
# ----------------------------------------------
# Queries keep all their descriptors; the database keeps the first few (the strongest) in
# half precision or as sign bits (AMES-style asymmetric matching). The model was trained with
# full descriptors; train it with ``db_descriptors`` / ``db_storage`` to adapt it to the
# stored form.
memory = {f"{local.shape[1]} x float32": (reranker.bytes_per_image_, results["learned + global"])}
for n_db, storage in [(16, "float16"), (16, "binary")]:
    r = LocalDescriptorReranker(
        model=model, top_m=top_m, db_descriptors=n_db, db_storage=storage,
        lambda_value=best.lambda_value, gamma=best.gamma,
    ).fit(glob[test], local=local[test])  # fmt: skip
    out = r.rerank(None, test.numel(), local=local[test])  # queries keep all descriptors
    memory[f"{n_db} x {storage}"] = (r.bytes_per_image_, score(out))
for name, (nbytes, value) in memory.items():
    print(f"{name:<14} {nbytes:6d} bytes per database image, mAP {value:.2f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
ax1.barh(list(results)[::-1], list(results.values())[::-1], color="tab:blue")
ax1.set_xlim(min(results.values()) - 2, 100)
ax1.tick_params(axis="y", labelsize=7)
ax1.set_xlabel("test mAP (%)")
ax1.set_title("re-ranking the top-M")
ax2.plot([b for b, _ in memory.values()], [m for _, m in memory.values()], "o-")
for name, (b, m) in memory.items():
    ax2.annotate(name, (b, m), fontsize=8)
ax2.set_xscale("log")
ax2.set_xlabel("bytes per database image")
ax2.set_ylabel("test mAP (%)")
ax2.set_title("memory / accuracy")
fig.tight_layout()
plt.show()

# %%
# Saving, loading, and other first stages
# ---------------------------------------
# A fitted re-ranker saves its settings, weights and database in one checksummed ``.npz``
# (no pickle). It re-ranks any first-stage ranking given as ``initial`` (here a plain kNN
# search; it could be another re-ranker's output), and its fused score can rebuild a kNN
# graph (the R-DiP edge re-scoring hook).
path = reranker.save("learned_reranker.npz")
loaded = LocalDescriptorReranker.load(path)
first_stage = gr.KNN().fit(glob[test]).rerank(None, k=top_m)
out = loaded.rerank(None, k=top_m, local=local[test], initial=first_stage)
print(out.indices.shape)
g2 = knn_graph(glob[test], 5, rescore=loaded.as_rescorer(), num_candidates=top_m)
print(g2)
