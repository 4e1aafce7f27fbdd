"""
Scaling out: offline diffusion on a Dask cluster
================================================

Offline diffusion (Yang et al. 2019) precomputes, for every database item :math:`i`, the
diffusion system restricted to its :math:`T` nearest items,
:math:`\\mathbf{L}_\\alpha[T_i, T_i]\\,\\mathbf{c}_i = \\mathbf{e}_i`, and keeps the solutions
as the rows of a sparse matrix :math:`\\mathbf{C}`. After the kNN graph, that is :math:`N`
independent small problems, so the precompute splits into chunks of rows: each chunk's kNN
lists, then each chunk's solves, written as one shard of an on-disk store. This tutorial runs
those chunks as tasks of a `Dask <https://distributed.dask.org>`_ cluster (here a
``LocalCluster`` of two worker processes; a real cluster is one ``Client(address)`` away),
checks that the result is the single-process one, resumes a killed run, and searches the store
from a fresh process without loading it. Measurements up to a million images and a plan for
10M and 100M are on :doc:`/scaling`.

It needs the optional extra: ``pip install graphrerank[distributed]``.
"""

# %%
# The data and the single-process reference
# -----------------------------------------
import tempfile
import time
from pathlib import Path

import torch

import graphrerank as gr
from graphrerank.metrics import class_map
from graphrerank.rerankers import OfflineDiffusion

data = gr.datasets.load_digits_retrieval()
# sphinx_gallery_start_ignore
# The test suite runs every tutorial in a fast mode, on the first 600 digits.
import sys

from graphrerank.testing import fast_mode

FAST = fast_mode()
if FAST:
    data = data.head(600)
# Dask starts its workers with multiprocessing's "spawn", which re-runs the main script in
# each worker unless it is guarded by ``if __name__ == "__main__":`` (see below); this page
# runs unguarded, so the workers are told not to re-import it.
sys.modules["__main__"].__dict__.pop("__file__", None)
# sphinx_gallery_end_ignore
x, labels = data.database, data.database_labels
n = data.num_items
settings = dict(kd=50, kq=10, truncation=300, normalize=True, backend="torch")
reference = OfflineDiffusion(**settings).fit(x)
ref = reference.rerank(None, k=n)
print(
    f"{n} items, offline diffusion in one process: mAP {100 * class_map(ref.indices, labels, leave_one_out=True):.2f}"
)

# %%
# A cluster, and the estimator's ``fit(x, client=...)``
# -------------------------------------------------------
# The client is an argument of :meth:`fit`, not a setting: it decides where the work runs, not
# what the result is, and a live connection to a cluster cannot be saved with the estimator
# or cloned into a grid search. ``store`` *is* a setting: the folder of the on-disk
# :math:`\mathbf{C}`, which the fitted estimator searches memory-mapped (``C_`` is then not
# held in memory). ``chunk_rows`` sets the rows per shard and per task.
#
# In a script, create the cluster under ``if __name__ == "__main__":``, as Dask asks for any
# program that starts worker processes. For a cluster you already run, connect with
# ``Client("tcp://scheduler:8786")`` and put the store on a file system every worker sees.
from distributed import Client, LocalCluster

cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
client = Client(cluster)
folder = Path(tempfile.mkdtemp()) / "offline-store"

marks = []  # (seconds, rows done, rows in the step), reported on the client as tasks finish


def record(done, total):
    marks.append((time.perf_counter() - t, done, total))


t = time.perf_counter()
model = OfflineDiffusion(**settings, store=str(folder), chunk_rows=128, progress=record)
model.fit(x, client=client)
model.set_params(progress=None)  # a callback is not saved with the estimator
print(
    f"precompute on {len(client.scheduler_info()['workers'])} workers: {time.perf_counter() - t:.1f} s"
)
out = model.rerank(None, k=n)
print("same rankings as one process:", torch.equal(out.indices, ref.indices))
print("largest score difference:", float((out.scores - ref.scores).abs().max()))

# %%
# The progress the client saw: the kNN step, then (after the graph, built once on the client)
# the solves, each chunk reported when its task finished on either worker.
import matplotlib.pyplot as plt

step = [0]
for prev in marks[:-1]:
    step.append(step[-1] + (prev[1] == prev[2]))  # the previous step was complete
fig, ax = plt.subplots(figsize=(6, 3))
for s_, name in enumerate(("kNN lists", "solves")):
    pts = [(m[0], m[1] / m[2]) for m, k in zip(marks, step) if k == s_]
    ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", marker="o", label=name)
ax.set_xlabel("seconds since fit()")
ax.set_ylabel("fraction of rows done")
ax.legend()
fig.tight_layout()

# %%
# What is on disk
# ---------------
# One ``c`` shard per chunk of rows (a padded ``(rows, T)`` array of ``(column, value)``
# records, a plain ``.npy`` file numpy memory-maps), the kNN step's ``lists`` and ``cand``
# shards of the same rows, and a JSON manifest with the SHA-256 of every shard and the
# settings and data fingerprint the rows were computed from. Shards are written to a
# temporary file, flushed and renamed, so a killed worker never leaves a torn one.
from graphrerank.diffusion.store import OfflineStore

store = OfflineStore.open(folder, verify=True)
print(store)
print(sorted(p.name for p in folder.iterdir())[:4], "...")
C = store.to_csr()
print("same C as one process:", torch.allclose(C.to_dense(), reference.C_.to_dense(), atol=1e-6))

# %%
# A killed run resumes
# --------------------
# Here a progress callback stops the run after two solved chunks (as a crash or a lost
# cluster would); the shards it finished stay recorded. The next run with the same store
# verifies them and computes only the rest. A store made from other data or other settings is
# refused, never mixed in.
from graphrerank.diffusion.distributed import sharded_offline_diffusion

folder2 = Path(tempfile.mkdtemp()) / "resumed"
xn = torch.nn.functional.normalize(x, dim=1)
solve = dict(kd=50, truncation=300, backend="torch", chunk_rows=128)
seen = []


def stop_after_two(done, total):
    seen.append(done)
    if len(seen) == store.n_chunks + 2:  # all kNN chunks, then two solved chunks
        raise KeyboardInterrupt


try:
    sharded_offline_diffusion(xn, folder2, client=client, progress=stop_after_two, **solve)
except KeyboardInterrupt:
    part = OfflineStore.open(folder2, complete=False)
    print("stopped with shards to do:", part.missing("c"))
rows = []
resumed = sharded_offline_diffusion(
    xn, folder2, client=client, progress=lambda d, t: rows.append(t), **solve
)
print(
    f"resumed: solved {rows[-1]} of {n} rows; same C:",
    torch.equal(resumed.to_csr().values(), C.values()),
)

# %%
# Searching the store from another process
# ----------------------------------------
# The saved estimator refers to its store; loaded elsewhere, it opens the shards
# memory-mapped and reads only the :math:`k_q` rows of :math:`\mathbf{C}` each query needs.
path = model.save(Path(tempfile.mkdtemp()) / "model.npz")
loaded = OfflineDiffusion.load(path)
queries = x[:100]
t = time.perf_counter()
top = loaded.rerank(queries, k=10)
print(
    f"online search against the store: {1000 * (time.perf_counter() - t) / len(queries):.2f} ms/query"
)
print(
    "same top-10 as one process:", torch.equal(top.indices, reference.rerank(queries, k=10).indices)
)

client.close()
cluster.close()
# sphinx_gallery_start_ignore
import shutil

for d in (folder.parent, folder2.parent, path.parent):
    shutil.rmtree(d, ignore_errors=True)
# sphinx_gallery_end_ignore
