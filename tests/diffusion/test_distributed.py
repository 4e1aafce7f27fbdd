"""The offline precompute on a Dask LocalCluster of two worker processes: the same C and the
same rankings as the single-process path, a killed worker loses nothing, clear errors."""

import os
import shutil
import signal
import sys

import pytest
import torch

distributed = pytest.importorskip("distributed")

from graphrerank.diffusion import offline_diffusion  # noqa: E402
from graphrerank.diffusion.distributed import ClusterError, sharded_offline_diffusion  # noqa: E402
from graphrerank.diffusion.store import OfflineStore  # noqa: E402
from graphrerank.rerankers import OfflineDiffusion, RDiP  # noqa: E402

SETTINGS = {"kd": 8, "truncation": 60, "backend": "torch"}


def _data(n=400, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, d, generator=g) * 3
    x = centres[torch.randint(0, 8, (n,), generator=g)] + torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def _assert_same_csr(A, B):
    assert torch.equal(A.crow_indices().long(), B.crow_indices().long())
    assert torch.equal(A.col_indices().long(), B.col_indices().long())
    torch.testing.assert_close(A.values(), B.values(), rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None
    )
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def data():
    x = _data()
    return x, offline_diffusion(x, **SETTINGS)


def test_cluster_equals_single_process(tmp_path, client, data):
    x, C = data
    seen = []
    st = sharded_offline_diffusion(
        x,
        tmp_path / "s",
        client=client,
        chunk_rows=50,
        progress=lambda d, t: seen.append((d, t)),
        **SETTINGS,
    )
    assert st.complete and st.n_chunks == 8
    _assert_same_csr(st.to_csr(), C)
    assert seen[-1] == (400, 400)  # client-side progress of the solves
    # both workers took part
    assert len({w for w in client.run(os.getpid).values()}) == 2


def test_killed_worker_loses_no_shard(tmp_path, client, data):
    x, C = data
    client.wait_for_workers(2)
    pids = list(client.run(os.getpid).values())
    killed = []

    def kill_one(done, total):
        # the first solved chunk arrives: kill a worker while the other chunks are queued
        if not killed and len(seen) > 10 and done < total:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(done)
        seen.append((done, total))

    seen = []
    st = sharded_offline_diffusion(
        x, tmp_path / "s", client=client, chunk_rows=40, progress=kill_one, **SETTINGS
    )
    assert killed and killed[0] < 400
    assert st.complete and all(st.check_shard("c", i) for i in range(st.n_chunks))
    _assert_same_csr(st.to_csr(), C)
    client.wait_for_workers(2, timeout=60)  # the nanny replaces the killed worker


def test_estimators_on_the_cluster_rank_as_in_memory(tmp_path, client, data):
    x, _ = data
    g = torch.Generator().manual_seed(3)
    q = torch.nn.functional.normalize(torch.randn(6, 12, generator=g), dim=1)
    base = OfflineDiffusion(kd=8, kq=5, truncation=60, backend="torch")
    mem = base.clone().fit(x)
    stored = base.clone().set_params(store=str(tmp_path / "od")).fit(x, client=client)
    assert not hasattr(stored, "C_")  # C lives in the store
    a, b = mem.rerank(q, 100), stored.rerank(q, 100)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-7)
    # RDiP through a client without a store: C comes back into memory
    rd = RDiP(rescorer=None, km=12, kd=8, kq=5, truncation=60, backend="torch")
    r1, r2 = rd.clone().fit(x), rd.clone().fit(x, client=client)
    _assert_same_csr(r2.C_, r1.C_)
    assert torch.equal(r1.rerank(q, 50).indices, r2.rerank(q, 50).indices)
    # a saved estimator refers to its store and ranks the same after loading
    path = stored.save(tmp_path / "od.npz")
    assert torch.equal(OfflineDiffusion.load(path).rerank(q, 100).indices, a.indices)


def test_closed_client_and_bad_settings(tmp_path, client, data):
    x, _ = data
    other = distributed.Client(client.cluster, set_as_default=False)
    other.close()
    with pytest.raises(ClusterError, match="not running"):
        sharded_offline_diffusion(x, tmp_path / "s", client=other, **SETTINGS)
    with pytest.raises(ClusterError, match="not running"):
        OfflineDiffusion(kd=8, truncation=60, backend="torch").fit(x, client=other)
    with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
        OfflineDiffusion(kd=8, truncation=60).fit(x, client=object())
    with pytest.raises(ValueError, match="transductive"):
        OfflineDiffusion(kd=8, truncation=60, transductive=True).fit(x, client=client)
    with pytest.raises(TypeError, match="store must be a folder path"):
        OfflineDiffusion(store=3).fit(x)
    with pytest.raises(ValueError, match="kd=500"):
        OfflineDiffusion(kd=500, truncation=60).fit(x, client=client)
    # a store of other data is refused at fit, and at search after loading
    store = str(tmp_path / "a")
    r = OfflineDiffusion(kd=8, truncation=60, backend="torch", store=store).fit(x[:200])
    with pytest.raises(ValueError, match="other settings data"):
        r.clone().fit(x[200:])
    saved = r.save(tmp_path / "r.npz")
    shutil.rmtree(store)
    r.clone().fit(x[200:])
    with pytest.raises(ValueError, match="computed on other data"):
        OfflineDiffusion.load(saved).rerank(x[:2], 5)


def test_single_process_path_does_not_import_dask(tmp_path, monkeypatch, data):
    x, C = data
    # any import of dask or distributed now raises ImportError
    for name in [m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError):
        import distributed  # noqa: F401
    st = sharded_offline_diffusion(x, tmp_path / "s", chunk_rows=100, **SETTINGS)
    _assert_same_csr(st.to_csr(), C)
    r = OfflineDiffusion(kd=8, truncation=60, backend="torch", store=str(tmp_path / "e")).fit(x)
    assert r.rerank(x[:2], 5).indices.shape == (2, 5)


def test_client_gone_mid_run_keeps_the_finished_shards(tmp_path, client, data):
    x, C = data
    other = distributed.Client(client.cluster, set_as_default=False)
    calls = []

    def close_after_first_solve(done, total):
        calls.append(done)
        if len(calls) == 8 + 1:  # 8 kNN chunks, then the first solved chunk
            other.close()

    with pytest.raises(ClusterError, match="went away during the run"):
        sharded_offline_diffusion(
            x,
            tmp_path / "s",
            client=other,
            chunk_rows=50,
            progress=close_after_first_solve,
            **SETTINGS,
        )
    part = OfflineStore.open(tmp_path / "s", complete=False)
    assert 0 < part.n_chunks - len(part.missing("c")) < 8
    st = sharded_offline_diffusion(x, tmp_path / "s", client=client, chunk_rows=50, **SETTINGS)
    _assert_same_csr(st.to_csr(), C)
