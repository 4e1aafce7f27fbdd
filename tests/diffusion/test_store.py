"""The on-disk offline store and the chunked precompute in one process: the same C as the
in-memory precompute, atomic checksummed shards, resumption after a kill or damage."""

import json

import numpy as np
import pytest
import torch

from graphrerank._io import CorruptFileError
from graphrerank.diffusion import offline_diffusion, offline_diffusion_scores
from graphrerank.diffusion.distributed import sharded_offline_diffusion
from graphrerank.diffusion.store import OfflineStore, array_fingerprint

SETTINGS = {"kd": 6, "truncation": 30, "backend": "torch"}


def _data(n=240, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, d, generator=g) * 3
    x = centres[torch.randint(0, 6, (n,), generator=g)] + torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def _assert_same_csr(A, B):
    assert A.shape == B.shape
    assert torch.equal(A.crow_indices().long(), B.crow_indices().long())
    assert torch.equal(A.col_indices().long(), B.col_indices().long())
    torch.testing.assert_close(A.values(), B.values(), rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def data():
    x = _data()
    return x, offline_diffusion(x, **SETTINGS)


def test_chunked_equals_in_memory(tmp_path, data):
    x, C = data
    st = sharded_offline_diffusion(x, tmp_path / "s", chunk_rows=50, **SETTINGS)
    assert st.complete and st.n_chunks == 5 and st.shape == (240, 240)
    _assert_same_csr(st.to_csr(), C)
    # every shard is recorded with the SHA-256 of its file
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert sorted(man["shards"]["c"], key=int) == [str(i) for i in range(5)]
    for i in range(5):
        assert st.check_shard("c", i)
    assert man["settings"]["data"] == array_fingerprint(x)
    # a later process opens it memory-mapped
    again = OfflineStore.open(tmp_path / "s", verify=True)
    assert isinstance(again.shard(0), np.memmap)


def test_online_scores_equal_in_memory(tmp_path, data):
    x, C = data
    st = sharded_offline_diffusion(x, tmp_path / "s", chunk_rows=64, **SETTINGS)
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(9, 8, generator=g), dim=1)
    s = q @ x.T
    knn = s.topk(5, dim=1)
    knn = (knn.values, knn.indices)
    # a padded neighbour (-1) is ignored by both
    knn[1][0, -1] = -1
    want = offline_diffusion_scores(C, knn, 3.0).to_dense()
    got = st.scores(knn, 3.0)
    assert got.layout == torch.sparse_csr and got.shape == (9, 240)
    torch.testing.assert_close(got.to_dense(), want, rtol=1e-5, atol=1e-7)
    # rows gathered from several shards equal the dense rows
    rows = np.array([239, 0, 63, 64, 128, 0])
    cols, vals = st.gather(rows)
    dense = np.zeros((rows.size, 240), np.float32)
    for r in range(rows.size):
        ok = cols[r] >= 0
        dense[r, cols[r][ok]] = vals[r][ok]
    np.testing.assert_allclose(dense, C.to_dense().numpy()[rows], rtol=1e-5, atol=1e-7)


class _Stop(Exception):
    pass


def test_killed_run_resumes_from_written_shards(tmp_path, data):
    x, C = data
    calls = []

    def stop_after_two_chunks(done, total):
        calls.append((done, total))
        if len(calls) == 5 + 2:  # 5 kNN chunks, then 2 solved chunks
            raise _Stop

    with pytest.raises(_Stop):
        sharded_offline_diffusion(
            x, tmp_path / "s", chunk_rows=50, progress=stop_after_two_chunks, **SETTINGS
        )
    part = OfflineStore.open(tmp_path / "s", complete=False)
    assert part.missing("c") == [2, 3, 4] and not part.complete
    with pytest.raises(CorruptFileError, match="unfinished"):
        OfflineStore.open(tmp_path / "s")
    # a killed writer's temporary file is removed; the rerun solves only the missing rows
    (tmp_path / "s" / ".c-00002.npy.abc.tmp").write_bytes(b"torn")
    seen = []
    st = sharded_offline_diffusion(
        x, tmp_path / "s", chunk_rows=50, progress=lambda d, t: seen.append((d, t)), **SETTINGS
    )
    assert seen[-1] == (140, 140)  # rows [100, 240): kNN lists were kept
    assert not list((tmp_path / "s").glob(".*.tmp"))
    _assert_same_csr(st.to_csr(), C)


def test_damaged_and_missing_shards_are_redone(tmp_path, data):
    x, C = data
    sharded_offline_diffusion(x, tmp_path / "s", chunk_rows=50, **SETTINGS)
    p = tmp_path / "s" / "c-00001.npy"
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 0xFF  # one flipped byte in the values
    p.write_bytes(bytes(raw))
    (tmp_path / "s" / "c-00003.npy").unlink()
    (tmp_path / "s" / "lists-00003.npy").unlink()
    with pytest.raises(CorruptFileError, match="missing or damaged"):
        OfflineStore.open(tmp_path / "s", verify=True)
    seen = []
    st = sharded_offline_diffusion(
        x, tmp_path / "s", chunk_rows=50, progress=lambda d, t: seen.append((d, t)), **SETTINGS
    )
    # kNN for chunk 3 (50 rows), then solves of chunks 1 and 3 (100 rows)
    assert seen[-1] == (100, 100) and (50, 50) in seen
    _assert_same_csr(st.to_csr(), C)


def test_store_of_other_data_or_settings_is_refused(tmp_path, data):
    x, _ = data
    sharded_offline_diffusion(x, tmp_path / "s", chunk_rows=50, **SETTINGS)
    with pytest.raises(ValueError, match="settings kd"):
        sharded_offline_diffusion(x, tmp_path / "s", chunk_rows=50, **dict(SETTINGS, kd=7))
    with pytest.raises(ValueError, match="settings data"):
        sharded_offline_diffusion(x.flip(0), tmp_path / "s", chunk_rows=50, **SETTINGS)
    with pytest.raises(ValueError, match="chunk_rows"):
        sharded_offline_diffusion(x, tmp_path / "s", chunk_rows=60, **SETTINGS)


def test_bad_arguments(tmp_path, data):
    x, _ = data
    with pytest.raises(ValueError, match="chunk_rows"):
        sharded_offline_diffusion(x, tmp_path / "s", chunk_rows=0, **SETTINGS)
    with pytest.raises(ValueError, match="kd"):
        sharded_offline_diffusion(x, tmp_path / "s", kd=0)
    with pytest.raises(ValueError, match="alpha"):
        sharded_offline_diffusion(x, tmp_path / "s", alpha=1.0)
    with pytest.raises(ValueError, match="normalised|normalized"):
        sharded_offline_diffusion(x * 2, tmp_path / "s")
    with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
        sharded_offline_diffusion(x, tmp_path / "s", client="localhost:8786")
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="must be a folder"):
        sharded_offline_diffusion(x, tmp_path / "f", **SETTINGS)
    with pytest.raises(FileNotFoundError, match="no offline store"):
        OfflineStore.open(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="unreadable manifest"):
        OfflineStore.open(tmp_path / "bad")
    st = OfflineStore.create(tmp_path / "w", n=5, truncation=2, chunk_rows=3, settings={})
    with pytest.raises(ValueError, match=r"rows \[3, 5\)"):
        st.write_shard("c", 1, np.zeros((3, 2), st.record_dtype))
    with pytest.raises(ValueError, match="kind"):
        st.shard_path("C", 0)


def test_wrong_shard_content_is_refused(tmp_path):
    st = OfflineStore.create(tmp_path / "w", n=2, truncation=2, chunk_rows=2, settings={})
    st.record("c", 0, st.write_shard("c", 0, np.zeros((2, 2), np.float64)))
    with pytest.raises(CorruptFileError, match="expected"):
        OfflineStore.open(tmp_path / "w").shard(0)
