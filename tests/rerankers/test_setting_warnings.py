"""Data-aware warnings (SettingWarning) at fit and from check_settings, and k="auto"."""

from __future__ import annotations

import warnings

import pytest
import torch

from graphrerank.rerankers import (
    AverageQueryExpansion,
    DatabaseAugmentation,
    Diffusion,
    GNNRerank,
    KReciprocal,
    OfflineDiffusion,
    Pipeline,
    RDiP,
    RegionalDiffusion,
    Reranker,
    SettingWarning,
    SuperGlobal,
    check_settings,
    suggest_settings,
)
from graphrerank.rerankers.checks import auto_neighbours


def _data(n, seed=0, classes=None):
    g = torch.Generator().manual_seed(seed)
    if classes is None:
        x = torch.randn(n, 8, generator=g)
    else:
        c = torch.randn(classes, 8, generator=g)
        x = c[torch.arange(n) % classes] + 0.5 * torch.randn(n, 8, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def _fit_warnings(reranker, *args, **kwargs):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        reranker.fit(*args, **kwargs)
    return [w for w in rec if issubclass(w.category, SettingWarning)]


def test_setting_warning_is_a_user_warning():
    assert issubclass(SettingWarning, UserWarning)


@pytest.mark.parametrize(
    ("reranker", "n", "setting"),
    [
        (Diffusion(kd=30, kq=4), 30, "kd"),  # kd = N (the item counted): the whole database
        (OfflineDiffusion(kd=30, kq=4, truncation=20), 30, "kd"),
        (AverageQueryExpansion(k=29), 30, "k"),  # 29 others of 30
        (DatabaseAugmentation(k=29), 30, "k"),
        (KReciprocal(k1=29, k2=3), 30, "k1"),
        (GNNRerank(k1=30, k2=3), 30, "k1"),
        (SuperGlobal(M=30, K=29), 30, "K"),
        (RDiP(rescorer=None, km=30, kd=8, kq=4, truncation=20), 30, "km"),
    ],
)
def test_a_neighbourhood_holding_the_whole_database_warns_once(reranker, n, setting):
    got = _fit_warnings(reranker, _data(n))
    assert len(got) == 1
    msg = str(got[0].message)
    assert f"({setting}=" in msg and f"database of {n}" in msg and "smaller" in msg
    # a sane setting on the same data: silent
    sane = reranker.clone().set_params(**{setting: 5})
    if isinstance(sane, RDiP):
        sane.set_params(kd=5)
    assert _fit_warnings(sane, _data(n)) == []


def test_library_defaults_are_silent_on_a_large_enough_database():
    x = _data(300, classes=10)
    for r in (Diffusion(), KReciprocal(), GNNRerank(), AverageQueryExpansion(), SuperGlobal()):
        assert _fit_warnings(r, x) == [], type(r).__name__


def test_regional_defaults_on_one_vector_per_image_warn():
    x = _data(240, classes=12)
    got = _fit_warnings(RegionalDiffusion(), x)  # image_ids=None: one vector per image
    assert [str(w.message).split("(")[1].split("=")[0] for w in got] == ["kd", "kq"]
    assert "near-random" in str(got[0].message) and "Diffusion()" in str(got[0].message)
    ids = torch.arange(240) // 4  # 60 images of 4 regions: what the defaults are for
    assert _fit_warnings(RegionalDiffusion(), x, image_ids=ids) == []
    assert _fit_warnings(RegionalDiffusion(kd=50, kq=10), x) == []


def test_regional_one_vector_warning_really_hurts():
    """The warning's claim: on one vector per image the regional defaults rank far worse than
    Diffusion's defaults (hand-made classes of 20)."""
    from graphrerank.metrics import class_map

    x = _data(240, seed=3, classes=12)
    y = torch.arange(240) % 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SettingWarning)
        bad = RegionalDiffusion(backend="torch").fit(x).rerank(None, 100)
    good = Diffusion(kd=10, kq=5, backend="torch").fit(x).rerank(None, 100)
    assert class_map(good.indices, y, y, leave_one_out=True) > class_map(
        bad.indices, y, y, leave_one_out=True
    )


def test_check_settings_with_labels():
    x = _data(200, classes=25)
    labels = torch.arange(200) % 25  # classes of 8
    problems = check_settings(Diffusion(), x, labels, warn=False)
    assert [p.setting for p in problems] == ["kd", "kq"]
    assert "median class size (8 items)" in problems[0].reason
    assert problems[0].value == 50
    with pytest.warns(SettingWarning, match=r"KReciprocal\(k1=20\)"):
        check_settings(KReciprocal(), x, labels)
    assert check_settings(KReciprocal(k1=5, k2=2), x, labels, warn=False) == []
    # without labels the database size alone: nothing wrong at N = 200
    assert check_settings(Diffusion(), x, warn=False) == []
    assert check_settings(Diffusion(), 200, labels, warn=False)  # N given as a number


def test_check_settings_looks_into_stages_and_rescorers():
    labels = torch.arange(200) % 25
    p = Pipeline([DatabaseAugmentation(k=10), Diffusion(kd=5, kq=5)])
    assert [q.setting for q in check_settings(p, 200, labels, warn=False)] == ["k"]
    r = RDiP(rescorer=[(KReciprocal(), 1.0)], km=6, kd=5, kq=5)
    assert [q.setting for q in check_settings(r, 200, labels, warn=False)] == ["k1"]


def test_check_settings_errors():
    with pytest.raises(ValueError, match=r"labels must hold one class per database item"):
        check_settings(Diffusion(), 10, torch.arange(9))


def test_auto_rule():
    assert auto_neighbours(1000, 50) == 50
    assert auto_neighbours(500, 50) == 25
    assert auto_neighbours(60, 50) == 3
    assert auto_neighbours(10, 50) == 2
    assert auto_neighbours(2, 50) == 1


def test_k_auto_resolves_at_fit_and_stays_auto():
    x = _data(200, classes=10)
    r = Diffusion(kd="auto", kq=5, backend="torch")
    r.validate_params()
    r.fit(x)
    assert r.get_params()["kd"] == "auto"
    assert r.auto_resolved_ == {"kd": 10}
    same = Diffusion(kd=10, kq=5, backend="torch").fit(x)
    assert torch.equal(r.rerank(None, 5).indices, same.rerank(None, 5).indices)
    assert "kd='auto'" in repr(r)  # the setting as given
    r.fit(x[:100])  # refit: resolved again for the new size
    assert r.auto_resolved_ == {"kd": 5}
    assert r.clone().get_params()["kd"] == "auto"


def test_k_auto_for_kreciprocal_and_gnn():
    x = _data(100, classes=10)
    k = KReciprocal(k1="auto", k2="auto").fit(x)
    assert k.auto_resolved_ == {"k1": 5, "k2": 5}
    g = GNNRerank(k1="auto", k2="auto").fit(x)
    assert g.auto_resolved_ == {"k1": 5, "k2": 5}


def test_k_auto_survives_save_and_load(tmp_path):
    x = _data(200, classes=10)
    r = Diffusion(kd="auto", kq=5, backend="torch").fit(x)
    back = Reranker.load(r.save(tmp_path / "d"))
    assert back.get_params()["kd"] == "auto"
    assert torch.equal(back.rerank(None, 5).indices, r.rerank(None, 5).indices)
    p = Pipeline([DatabaseAugmentation(k="auto"), KReciprocal(k1="auto", k2=3)]).fit(x)
    back = Reranker.load(p.save(tmp_path / "p"))
    assert torch.equal(back.rerank(None, 5).indices, p.rerank(None, 5).indices)


def test_auto_is_refused_where_there_is_no_rule():
    with pytest.raises(TypeError, match="kq"):
        Diffusion(kq="auto").fit(_data(50))


def test_suggest_settings():
    assert suggest_settings(KReciprocal(), 500, torch.arange(500) // 8) == {"k1": 4, "k2": 4}
    assert suggest_settings(Diffusion(), 1000) == {"kd": 50}
    assert suggest_settings(Diffusion(), 250, torch.arange(250) // 50) == {"kd": 25}
    assert suggest_settings(SuperGlobal(), 100) == {}
