"""Every re-ranker, pipeline and nested re-scorer saves and reloads: identical rankings in a new
process, and a wrong database, a damaged file or a newer format version refused clearly."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import graphrerank as gr
from graphrerank._io import CorruptFileError, load_arrays, save_arrays
from graphrerank.rerankers import (
    RERANKERS,
    DatabaseAugmentation,
    Diffusion,
    KReciprocal,
    NotFittedError,
    Pipeline,
    RDiP,
    Reranker,
    SuperGlobal,
)

from .test_contract import IDS, _data, _make


def _fitted(cls, x):
    return _make(cls).fit(x)


def _same(a, b):
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.scores, b.scores)


@pytest.mark.parametrize("cls", RERANKERS, ids=IDS)
def test_round_trip_in_process(cls, tmp_path, device):
    q, x = _data()
    q, x = q.to(device), x.to(device)
    r = _fitted(cls, x)
    path = r.save(tmp_path / cls.__name__)
    assert path.suffix == ".npz"
    for back in (Reranker.load(path, device=device), cls.load(path, x)):
        assert type(back) is cls and back.get_params().keys() == r.get_params().keys()
        assert back.n_database_ == 40 and back.device_ == x.device
        _same(back.rerank(None, k=10), r.rerank(None, k=10))
        _same(back.rerank(q, k=7), r.rerank(q, k=7))


def test_reload_in_a_new_process_gives_identical_rankings(tmp_path):
    q, x = _data()
    expected = {}
    for cls in RERANKERS:
        r = _fitted(cls, x)
        r.save(tmp_path / f"{cls.__name__}.npz")
        out = r.rerank(q, k=8)
        expected[cls.__name__] = (out.indices.tolist(), out.scores.tolist())
    torch.save(q, tmp_path / "queries.pt")
    code = (
        "import json, sys, torch\n"
        "from graphrerank.rerankers import Reranker, RERANKERS\n"
        "q = torch.load(sys.argv[1] + '/queries.pt')\n"
        "out = {}\n"
        "for cls in RERANKERS:\n"
        "    r = Reranker.load(sys.argv[1] + f'/{cls.__name__}.npz')\n"
        "    res = r.rerank(q, k=8)\n"
        "    out[cls.__name__] = (res.indices.tolist(), res.scores.tolist())\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    for name, (idx, scores) in expected.items():
        assert got[name][0] == idx, name
        np.testing.assert_array_equal(np.array(got[name][1]), np.array(scores), err_msg=name)


def test_nested_rerankers_are_saved_with_their_state(tmp_path):
    q, x = _data()
    rdip = RDiP(rescorer=KReciprocal(k1=6, k2=3), km=12, kd=8, kq=4, truncation=20)
    rdip.set_params(query_scores="rescored").fit(x)
    pipe = Pipeline([DatabaseAugmentation(k=3), SuperGlobal(M=20, K=3)]).fit(x)
    for r in (rdip, pipe):
        back = Reranker.load(r.save(tmp_path / type(r).__name__))
        _same(back.rerank(q, k=9), r.rerank(q, k=9))
        _same(back.rerank(None, k=9), r.rerank(None, k=9))
    back = Reranker.load(rdip.save(tmp_path / "rdip"))
    assert isinstance(back.rescorer_, KReciprocal) and hasattr(back.rescorer_, "neighbors_")
    back = Reranker.load(pipe.save(tmp_path / "pipe"))
    # a stage's database is the previous stage's output: one tensor, not two copies
    assert back.stages_[1].database_ is back.stages_[0].augmented_
    assert back.stages_[0].database_ is back.database_


def test_database_stored_or_given(tmp_path):
    q, x = _data()
    r = Diffusion(kd=8, kq=4, backend="torch").fit(x)
    light = r.save(tmp_path / "light", include_database=False)
    full = r.save(tmp_path / "full")
    assert light.stat().st_size < full.stat().st_size
    with pytest.raises(ValueError, match="saved without its database"):
        Reranker.load(light)
    back = Reranker.load(light, x)
    assert back.database_ is not None and torch.equal(back.database_, x)
    _same(back.rerank(q, k=5), r.rerank(q, k=5))
    # a given database is used in place of the stored copy: the caller's tensor
    given = Reranker.load(full, x)
    assert given.database_.data_ptr() == x.data_ptr()


def test_wrong_database_wrong_class_damaged_and_newer_files_are_refused(tmp_path):
    q, x = _data()
    path = Diffusion(kd=8, kq=4, backend="torch").fit(x).save(tmp_path / "d.npz")
    other = x.clone()
    other[0] = torch.flip(other[0], dims=[0])
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        Reranker.load(path, other)
    with pytest.raises(ValueError, match="is not the database"):
        Reranker.load(path, x[:30])
    with pytest.raises(CorruptFileError, match="holds a 'Diffusion' result, not a 'KReciprocal'"):
        KReciprocal.load(path)
    raw = path.read_bytes()
    bad = tmp_path / "bad.npz"
    for damaged in (raw[: len(raw) // 2], raw[:100], b"not a zip at all"):
        bad.write_bytes(damaged)
        with pytest.raises(CorruptFileError):
            Reranker.load(bad)
    flipped = bytearray(raw)
    flipped[len(flipped) // 3] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError):
        Reranker.load(bad)
    arrays, meta = load_arrays(path, format="graphrerank.Reranker", version=1)
    newer = save_arrays(tmp_path / "newer.npz", arrays, {**meta, "version": 99})
    with pytest.raises(CorruptFileError, match="format version 99"):
        Reranker.load(newer)
    with pytest.raises(FileNotFoundError):
        Reranker.load(tmp_path / "missing.npz")


def test_a_foreign_class_name_is_never_instantiated(tmp_path):
    _, x = _data()
    path = Diffusion(kd=8, kq=4, backend="torch").fit(x).save(tmp_path / "d.npz")
    arrays, meta = load_arrays(path, format="graphrerank.Reranker", version=1)
    meta["root"]["class"] = "os.system"
    forged = save_arrays(tmp_path / "forged.npz", arrays, meta)
    with pytest.raises(CorruptFileError, match="not one of graphrerank's"):
        Reranker.load(forged)
    with zipfile.ZipFile(forged) as z:  # and nothing in the file is a pickle
        assert all(not name.endswith(".pkl") for name in z.namelist())


def test_unfitted_and_unsaveable(tmp_path):
    with pytest.raises(NotFittedError):
        Diffusion().save(tmp_path / "x")
    _, x = _data()
    r = RDiP(rescorer=lambda rows, cand, s: s, km=12, kd=8, kq=4, truncation=20).fit(x)
    path = r.save(tmp_path / "callable")
    with pytest.warns(UserWarning, match="'rescorer'"):
        back = Reranker.load(path)
    assert back.rescorer is None
    fn = r.rescorer
    quiet = Reranker.load(path, rescorer=fn)  # given again: no warning, same results
    assert quiet.rescorer is fn
    _same(quiet.rerank(None, k=6), r.rerank(None, k=6))


def test_settings_given_at_load_override_stored_ones(tmp_path):
    q, x = _data()
    r = gr.rerankers.OfflineDiffusion(kd=8, kq=4, truncation=20).fit(x)
    back = Reranker.load(r.save(tmp_path / "o"), transductive=True)
    assert back.transductive and back.rerank(None, k=5).indices.shape == (40, 5)
