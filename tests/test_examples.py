"""Every example script and every tutorial runs, in its fast mode, and prints what it should."""

import importlib.util
import pickle
import re
import sys

import numpy as np
import pytest
from scipy.io import savemat

import graphrerank as gr
from graphrerank.testing import data_dir, requires_data

from ._tutorials import EXAMPLES, TUTORIALS, run_script

#: How each example script runs in its fast mode: its command-line arguments, or the test
#: file (relative to the repository) that runs it. A new example must be added here, or
#: test_every_example_has_a_fast_run fails.
FAST_ARGS = {
    "quickstart.py": "tests/test_examples.py",  # test_quickstart_fast below
    "evaluate_own_descriptors.py": ["demo", "--fast"],
    "offline_diffusion.py": "tests/test_example_offline.py",
    "neighbourhood.py": "tests/test_example_neighbourhood.py",
    "reid_reranking.py": "tests/rerankers/test_reid_example.py",  # small: no fast mode needed
}
RUN_HERE = sorted(k for k, v in FAST_ARGS.items() if isinstance(v, list))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def matplotlib_agg():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_every_example_has_a_fast_run():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(FAST_ARGS)
    for script, how in FAST_ARGS.items():
        if isinstance(how, str):  # run by its own test file
            test_file = EXAMPLES.parent / how
            assert script in test_file.read_text(), f"{how} does not run {script}"
            if '"--fast"' in (EXAMPLES / script).read_text():  # a script with a fast mode
                assert '"--fast"' in test_file.read_text(), f"{how}: not in the fast mode"


@pytest.mark.parametrize("script", RUN_HERE)
def test_example_runs_in_fast_mode(script, tmp_path, monkeypatch, matplotlib_agg, capsys):
    pytest.importorskip("sklearn")
    out = run_script(EXAMPLES / script, monkeypatch, tmp_path, capsys, *FAST_ARGS[script])
    assert out.strip()


TUTORIAL_FILES = sorted(TUTORIALS.glob("tutorial_*.py"))


def _check_kreciprocal_gnn(out: str) -> None:
    """What the k-reciprocal / GNN tutorial claims holds in its own output."""
    maps = {
        m[0]: float(m[1])
        for m in re.findall(r"^(cosine \(kNN\)|k-reciprocal|GNN) +mAP ([\d.]+)", out, re.M)
    }
    assert set(maps) == {"cosine (kNN)", "k-reciprocal", "GNN"}
    assert maps["k-reciprocal"] > maps["cosine (kNN)"] and maps["GNN"] > maps["cosine (kNN)"]
    # duplicated items (a 2N graph) lose against the one graph of N items
    pairs = re.findall(r"one graph of N: ([\d.]+) +2N with duplicates: ([\d.]+)", out)
    assert len(pairs) == 2 and all(float(one) > float(two) for one, two in pairs)
    # two GNNRerankConv layers by hand give the re-ranker's propagated adjacency
    assert float(re.search(r"largest difference to GNNRerank: ([\d.e+-]+)", out)[1]) < 1e-5
    assert "top-10 lists identical for 100.0%" in out
    assert re.search(r"^KReciprocal\(\) +mAP", out, re.M)


def _check_score_matrices(out: str) -> None:
    """What the score-matrix tutorial claims holds in its own output."""
    maps = dict(re.findall(r"^(\S.*?) +mAP ([\d.]+)$", out, re.M))
    maps = {k: float(v) for k, v in maps.items()}
    assert {"chamfer", "chamfer + k-reciprocal", "chamfer + GNN"} <= set(maps)
    assert maps["chamfer + k-reciprocal"] >= maps["chamfer"]
    assert maps["chamfer + GNN"] >= maps["chamfer"]
    assert "look like distances" in out  # the wrong convention is refused
    assert "dense vs top-50 sparse: 100.0% identical" in out
    assert "GNNRerank reloaded: True" in out


TUNING_ROW = re.compile(
    r"^(KReciprocal|GNNRerank|Diffusion|DBA \+ aQE) +([AB]) +([\d.]+) +([\d.]+) +([\d.]+)  (.+)$",
    re.M,
)


def _check_tuning(out: str) -> None:
    """The tuning tutorial's claims on the real re-ID file: the defaults lose to the cosine
    baseline, the tuned choices (margin of two standard errors) never do on held-out
    identities, and query expansion tuned on one half gains on the other. Without the file
    (GRAPHRERANK_DATA) it runs on a synthetic stand-in and only the table's shape is checked."""
    rows = TUNING_ROW.findall(out)
    assert len(rows) == 8  # 4 re-rankers x 2 held-out halves
    for name, held, base, _, tuned, chosen in rows:
        assert float(tuned) >= float(base), (name, held)  # the tuned choice never loses
        if chosen == "KNN()":
            assert float(tuned) == float(base)
    if not re.search(r"^kNN baseline +mAP +21\.71$", out, re.M):
        return  # the synthetic stand-in: the claims below are about the real file
    # the data folder's README: cosine baseline mAP 21.71 on the whole file
    for name in ("KReciprocal", "GNNRerank", "Diffusion", "DBA \\+ aQE"):
        m = re.search(rf"^{name} +mAP +([\d.]+) ", out, re.M)
        assert m and float(m.group(1)) < 21.71  # the defaults lose on the whole file
    for name, held, base, defaults, _, _ in rows:
        assert float(defaults) < float(base), (name, held)  # they lose on each half
    dba = {held: (float(base), float(tuned)) for name, held, base, _, tuned, _ in rows
           if name == "DBA + aQE"}  # fmt: skip
    assert dba["A"][1] > dba["A"][0] + 1.0  # tuned on half B, it gains on half A
    assert "shared" in out and "baseline (KNN)" in out
    # the whitening pipeline, tuned on one half, never below the baseline on the other
    held = re.findall(
        r"^whitening pipeline, held out ([AB]): baseline ([\d.]+), tuned ([\d.]+)", out, re.M
    )
    assert sorted(h for h, _, _ in held) == ["A", "B"]
    assert all(float(t) >= float(b) for _, b, t in held)
    m = re.search(r"^centring alone on the whole file: mAP ([\d.]+)$", out, re.M)
    assert m and float(m.group(1)) > 21.71  # centring gains a little here


#: Checks of a tutorial's printed output (its claims), by file stem.
TUTORIAL_CHECKS = {
    "tutorial_kreciprocal_gnn": _check_kreciprocal_gnn,
    "tutorial_score_matrices": _check_score_matrices,
    "tutorial_tuning": _check_tuning,
}


@pytest.mark.parametrize("path", TUTORIAL_FILES, ids=[p.stem for p in TUTORIAL_FILES])
def test_tutorial_runs_in_fast_mode(path, tmp_path, monkeypatch, matplotlib_agg, capsys):
    pytest.importorskip("sklearn")
    out = run_script(path, monkeypatch, tmp_path, capsys)
    assert out.strip()
    assert matplotlib_agg.get_fignums(), "a tutorial shows its results as figures"
    if path.stem in TUTORIAL_CHECKS:
        TUTORIAL_CHECKS[path.stem](out)


def test_tutorials_have_a_title_and_are_in_the_gallery_order():
    sys.path.insert(0, str(EXAMPLES.parent / "docs"))
    try:
        from _gallery import ORDER
    finally:
        sys.path.pop(0)
    for path in TUTORIAL_FILES:
        text = path.read_text()
        assert text.startswith('"""\n'), f"{path.name}: starts with its docstring title"
        title, underline = text.splitlines()[1:3]
        assert underline == "=" * len(title), f"{path.name}: title underline"
        assert path.name in ORDER, f"{path.name}: add it to docs/_gallery.py ORDER"


# --------------------------------------------------------------------------- quickstart
def test_quickstart_fast(capsys):
    pytest.importorskip("sklearn")
    rows = _load("quickstart").main(["--fast", "--plot", "none"])
    printed = capsys.readouterr().out
    assert [r["method"].split("(")[0] for r in rows] == [c.__name__ for c in gr.rerankers.RERANKERS]
    for cls in gr.rerankers.RERANKERS:
        assert cls.__name__ in printed
    # the baseline row is plain cosine leave-one-out mAP on the first 600 digits
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float64)
    x -= x.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x, y = x[:600], load_digits().target[:600]
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :-1]
    hits = y[order] == y[:, None]
    prec = np.cumsum(hits, 1) / np.arange(1, hits.shape[1] + 1)
    expected = ((prec * hits).sum(1) / hits.sum(1)).mean()
    assert rows[0]["map"] == pytest.approx(expected, abs=1e-6)
    # RegionalDiffusion on single vectors, with Diffusion's graph sizes, is Diffusion, and the
    # quickstart says why it does not use the regional defaults
    by_name = {r["method"].split("(")[0]: r for r in rows}
    assert by_name["RegionalDiffusion"]["method"] == "RegionalDiffusion(kd=50, kq=10)"
    assert by_name["RegionalDiffusion"]["map"] == pytest.approx(by_name["Diffusion"]["map"])
    assert "regional defaults (kd=kq=200) are meant for" in printed


def test_quickstart_writes_a_plot(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(gr.rerankers, "RERANKERS", (gr.KNN,))  # the plot is under test here
    out = tmp_path / "q.png"
    _load("quickstart").main(["--fast", "--plot", str(out)])
    assert out.stat().st_size > 1000


# --------------------------------------------------------------------------- own descriptors
def test_evaluate_own_descriptors_on_self_made_revisitop_files(tmp_path, capsys):
    ex = _load("evaluate_own_descriptors")
    # 5 database images, 2 queries; scores of query a: 0.9 (im2, junk), 0.8 (im4), 0.7 (im1,
    # hard), 0.6 (im0, easy); of query b: 0.9 (im3, easy), 0.8 (im0), 0.7 (im4, easy)
    gnd = {
        "imlist": [f"im{i}" for i in range(5)],
        "qimlist": ["a", "b"],
        "gnd": [
            {"easy": [0], "hard": [1], "junk": [2], "bbx": [0, 0, 9, 9]},
            {"easy": [3, 4], "hard": [], "junk": []},
        ],
    }
    (tmp_path / "gnd_mine.pkl").write_bytes(pickle.dumps(gnd, protocol=2))
    sa = [0.6, 0.7, 0.9, 0.1, 0.8]
    sb = [0.8, 0.1, 0.2, 0.9, 0.7]
    savemat(tmp_path / "mine.mat", {"X": np.array([sa, sb]), "Q": np.eye(2)})
    rows = ex.main(
        [
            "revisitop",
            "--gnd",
            str(tmp_path / "gnd_mine.pkl"),
            "--features",
            str(tmp_path / "mine.mat"),
        ]
    )
    r = rows[0]["result"]
    assert rows[0]["method"] == "KNN()"
    # trapezoid AP, junk removed. Medium: a ranks 4, 1, 0 -> positives at ranks 2, 3;
    # b ranks 3, 0, 4 -> ranks 1, 3.
    ap_a = 0.5 * ((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2)
    ap_b = 0.5 * ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2)
    assert r.medium.map == pytest.approx((ap_a + ap_b) / 2, abs=1e-12)
    assert "M mAP" in capsys.readouterr().out
    # the same as rows: two .npy files
    np.save(tmp_path / "db.npy", np.array([sa, sb]).T)
    np.save(tmp_path / "q.npy", np.eye(2))
    rows = ex.main(
        [
            "revisitop",
            "--gnd",
            str(tmp_path / "gnd_mine.pkl"),
            "--database",
            str(tmp_path / "db.npy"),
            "--queries",
            str(tmp_path / "q.npy"),
            "--reranker",
            "KNN",
        ]
    )
    assert rows[0]["result"].medium.map == pytest.approx((ap_a + ap_b) / 2, abs=1e-12)


def test_evaluate_own_descriptors_on_a_self_made_reid_file(tmp_path):
    ex = _load("evaluate_own_descriptors")
    # query (id 7, cam 0) = e0; gallery: e0 (id 7, cam 0: junk), 0.9 (id 8), 0.8 (id 7, cam 1)
    g = np.array([[1.0, 0.0], [0.9, 0.436], [0.8, 0.6]], np.float32)
    savemat(
        tmp_path / "r.mat",
        {
            "query_f": np.array([[1.0, 0.0]], np.float32),
            "query_label": [[7]],
            "query_cam": [[0]],
            "gallery_f": g,
            "gallery_label": [[7, 8, 7]],
            "gallery_cam": [[0, 1, 1]],
        },
    )
    rows = ex.main(["reid", "--result", str(tmp_path / "r.mat"), "--reranker", "KNN"])
    assert rows[0]["result"].map == pytest.approx(0.5)
    assert rows[0]["result"].rank1 == 0.0


@requires_data("revisitop/gnd_roxford5k.pkl")
def test_evaluate_own_descriptors_on_the_real_ground_truth(tmp_path):
    ex = _load("evaluate_own_descriptors")
    gnd_file = data_dir() / "revisitop" / "gnd_roxford5k.pkl"
    gnd = gr.datasets.load_revisitop_gnd(gnd_file)
    # oracle descriptors: item j has a 1 in column i iff it is a positive of query i
    x = np.zeros((gnd.num_database, gnd.num_queries), np.float32)
    for i, g in enumerate(gnd.gnd):
        x[np.concatenate([g["easy"], g["hard"]]), i] = 1
    np.save(tmp_path / "db.npy", x)
    np.save(tmp_path / "q.npy", np.eye(gnd.num_queries, dtype=np.float32))
    rows = ex.evaluate_revisitop(
        gnd_file, database=tmp_path / "db.npy", queries=tmp_path / "q.npy", rerankers=["KNN"]
    )
    r = rows[0]["result"]
    assert (r.easy.map, r.medium.map, r.hard.map) == (1.0, 1.0, 1.0)
    # the demo's simulated descriptors follow the ground truth: easy is easier than hard
    sim = ex.simulated_descriptors(gnd_file, tmp_path)
    r = ex.evaluate_revisitop(gnd_file, features=sim, rerankers=["KNN"])[0]["result"]
    assert r.easy.map > r.medium.map > r.hard.map > 0.1


@requires_data("pku_sketch_reid/pytorch_result.mat")
def test_evaluate_own_descriptors_on_the_real_reid_file():
    ex = _load("evaluate_own_descriptors")
    rows = ex.evaluate_reid(
        data_dir() / "pku_sketch_reid" / "pytorch_result.mat", rerankers=["KNN"]
    )
    # the data folder's README: cosine baseline mAP 21.71, Rank-1 14.0
    assert round(100 * rows[0]["result"].map, 2) == 21.71
    assert rows[0]["result"].rank1 == pytest.approx(0.14)


def test_evaluate_own_descriptors_reports_bad_files(tmp_path):
    ex = _load("evaluate_own_descriptors")
    with pytest.raises(SystemExit, match="error: .*does not exist"):
        ex.main(["reid", "--result", str(tmp_path / "none.mat")])
    with pytest.raises(SystemExit, match="unknown re-ranker"):
        ex.make_rerankers(["Nope"])
