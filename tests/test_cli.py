"""The ``graphrerank`` command line, end to end (in-process ``main`` and one subprocess)."""

import io
import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

import graphrerank as gr
from graphrerank._io import load_arrays
from graphrerank.cli import CLIError, main, parse_reranker
from graphrerank.cli.report import RANKINGS_FORMAT, Step
from graphrerank.testing import data_dir, requires_data

from ._cli import run, separate_query_args

ROOT = Path(__file__).resolve().parents[1]


def _step_ap_loo(x, y, k=None):
    """Dense float64 leave-one-out class mAP of cosine ranking (step AP, truncation = miss)."""
    x = np.asarray(x, np.float64)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :-1]
    if k is not None:
        order = order[:, : k - 1]  # the query itself takes one of the k places
    hits = y[order] == y[:, None]
    npos = (y[None, :] == y[:, None]).sum(1) - 1
    prec = np.cumsum(hits, 1) / np.arange(1, hits.shape[1] + 1)
    ap = (prec * hits).sum(1) / npos
    return ap[npos > 0].mean()


def _table(out):
    """The Markdown table printed in ``out``: the header and the rows, cells stripped."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return cells[0], cells[2:]


def _header(out):
    return _table(out)[0]


SYNTHETIC = ["--data", "synthetic", "--size", "300", "--dim", "16", "--classes", "10"]


def _synthetic():
    ds = gr.datasets.make_retrieval_dataset(num_items=300, dim=16, num_classes=10)
    return ds.database, ds.database_labels


# --------------------------------------------------------------------------- specs
def test_parse_reranker_literals_bare_words_and_case():
    r = parse_reranker("knn(metric='l2')", ["backend=torch"])
    assert isinstance(r, gr.KNN)
    assert r.get_params() == {"metric": "l2", "backend": "torch"}
    assert parse_reranker("KNN(backend=torch)").backend == "torch"  # bare word = string
    assert parse_reranker(" KNN ").get_params() == gr.KNN().get_params()


def test_parse_reranker_takes_rerankers_as_settings():
    class_names = {c.__name__ for c in gr.rerankers.RERANKERS}
    if "RDiP" not in class_names:
        pytest.skip("no re-ranker with a re-ranker setting")
    r = parse_reranker("RDiP(rescorer=KNN(metric='l2'), km=60)")
    assert isinstance(r.rescorer, gr.KNN) and r.rescorer.metric == "l2" and r.km == 60
    r = parse_reranker("rdip", ["rescorer=knn(backend=torch)"])
    assert isinstance(r.rescorer, gr.KNN) and r.rescorer.backend == "torch"
    with pytest.raises(CLIError, match="the value 'Nope..' is not a literal"):
        parse_reranker("RDiP(rescorer=Nope())")


@pytest.mark.parametrize(
    ("spec", "settings", "match"),
    [
        ("Nope", [], r"unknown re-ranker 'Nope'; available: KNN"),
        ("KNN(", [], r"cannot read the re-ranker spec"),
        ("KNN('l2')", [], r"settings must be given by name"),
        ("KNN(**x)", [], r"'\*\*' is not allowed"),
        ("KNN(metric=f(1))", [], r"the value .f\(1\). is not a literal"),
        ("KNN(kk=3)", [], r"KNN has no setting 'kk'; settings: metric='ip', backend='auto'"),
        ("KNN", ["metric"], r"--set expects key=value, got 'metric'"),
        ("KNN", ["metric=cos"], r"metric must be one of \['ip', 'l2'\], got 'cos'"),
        ("KNN()[0]", [], r"cannot read the re-ranker spec"),
    ],
)
def test_parse_reranker_errors(spec, settings, match):
    with pytest.raises(CLIError, match=match):
        parse_reranker(spec, settings)


def test_pipeline_spec_needs_a_pipeline_class():
    if hasattr(gr.rerankers, "Pipeline"):
        r = parse_reranker("KNN | KNN")
        assert isinstance(r, gr.rerankers.Pipeline)
    else:
        with pytest.raises(CLIError, match="no graphrerank.rerankers.Pipeline"):
            parse_reranker("KNN | KNN")


def test_pipeline_call_parses_as_the_pipe_form():
    stages = "DatabaseAugmentation(k=3), AlphaQueryExpansion(k=4, alpha=2.0)"
    pipe_spec = "DatabaseAugmentation(k=3) | AlphaQueryExpansion(k=4, alpha=2.0)"
    pipe = parse_reranker(pipe_spec)
    for spec in (f"Pipeline([{stages}])", f"pipeline(stages=[{stages}])", f"Pipeline(({stages}))"):
        r = parse_reranker(spec)
        assert isinstance(r, gr.rerankers.Pipeline)
        assert repr(r) == repr(pipe) == f"Pipeline([{stages}])"
        assert [repr(s) for s in r.stages] == [repr(s) for s in pipe.stages]
        assert [s.get_params() for s in r.stages] == [s.get_params() for s in pipe.stages]
    # settings of the pipeline itself, in the call or by --set
    with_depth = parse_reranker(f"Pipeline([{stages}], depth=7)")
    assert with_depth.depth == 7
    assert repr(with_depth) == f"Pipeline([{stages}], depth=7)"
    assert repr(parse_reranker(f"Pipeline([{stages}])", ["depth=7"])) == repr(with_depth)
    assert repr(parse_reranker(pipe_spec, ["depth=7"])) == repr(with_depth)
    # a pipeline as a stage and as a setting's value
    nested = parse_reranker("KNN | Pipeline([KNN(metric='l2'), KNN])")
    assert repr(nested) == "Pipeline([KNN(), Pipeline([KNN(metric='l2'), KNN()])])"
    # both forms rank alike
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=1)
    a = parse_reranker(f"Pipeline([{stages}])").fit(x).rerank(x[:5], 10)
    b = pipe.fit(x).rerank(x[:5], 10)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("Pipeline([KNN], [KNN])", r"Pipeline takes only stages by position"),
        ("Pipeline([KNN], stages=[KNN])", r"the setting 'stages' is given twice"),
        ("Pipeline([KNN(), __import__('os').system('true')])", r"is not a literal"),
        ("Pipeline([KNN(), open('x')])", r"open\('x'\).? is not a literal"),
        ("Pipeline(*x)", r"'\*' is not allowed"),
        ("Pipeline([])", r"at least one re-ranker"),
        ("Pipeline([1, KNN])", r"must be a re-ranker instance"),
        ("Diffusion(kd=2**10**10)", r"is not a literal"),
        ("Diffusion(kd=(-8)**0.5)", r"is not a literal"),
        ("Diffusion(kd=1//0)", r"is not a literal"),
    ],
)
def test_pipeline_and_arithmetic_specs_stay_literal_only(spec, match):
    with pytest.raises(CLIError, match=match):
        parse_reranker(spec)


def test_numbers_may_be_written_as_arithmetic():
    assert parse_reranker("Diffusion(kd=10**6)").kd == 10**6
    assert parse_reranker("Diffusion(kd=2 * 25, alpha=1 - 1e-3)").get_params()["alpha"] == 0.999
    assert parse_reranker("Diffusion", ["kd=(-2) ** 4"]).kd == 16


# --------------------------------------------------------------------------- evaluate
def test_evaluate_digits_subset_matches_dense_cosine_and_writes_json(capsys, tmp_path):
    pytest.importorskip("sklearn")
    out_json = tmp_path / "res" / "digits.json"
    code, out, err = run(
        capsys, "evaluate", "--data", "digits", "--subset", "300", "--json", str(out_json)
    )
    assert code == 0, err
    assert err == ""  # no progress bar when stderr is not a terminal
    ds = gr.datasets.load_digits_retrieval()
    x, y = ds.database[:300].numpy(), ds.database_labels[:300].numpy()
    expected = _step_ap_loo(x, y)
    assert f"{100 * expected:.2f}" in out
    payload = json.loads(out_json.read_text())
    assert payload["command"][:3] == ["graphrerank", "evaluate", "--data"]
    assert payload["num_database"] == 300 and payload["num_queries"] is None
    (row,) = payload["results"]
    assert row["reranker"] == "KNN()" and row["class"] == "KNN"
    assert row["metrics"]["map"] == pytest.approx(expected, abs=1e-6)
    assert set(row["metrics"]) == {"map", "recall@1", "recall@5", "recall@10"}


def test_evaluate_class_label_files_with_separate_queries(capsys, tmp_path):
    # database on the unit circle; queries near item 0 and item 3
    angles = np.array([0.0, 0.3, 1.6, 1.7, 3.1])
    db = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 0])
    queries = np.array([[1.0, 0.05], [0.0, 1.0]], np.float32)
    files = separate_query_args(
        tmp_path, db, labels, queries, np.array([0, 1]), query_labels_as_text=True
    )
    code, out, err = run(
        capsys,
        "evaluate",
        *files,
        "--reranker",
        "KNN",
        "--set",
        "backend=torch",
        "--no-baseline",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert code == 0, err
    # query 0 (angle 0.05): 0, 1, 2, 3, 4 -> hits 1 1 0 0 1: AP (1 + 1 + 3/5) / 3
    # query 1 (angle pi/2): 2, 3, 1, 4, 0 -> hits 1 1 0 0 0: AP 1
    expected = ((1 + 1 + 3 / 5) / 3 + 1) / 2
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert row["reranker"] == "KNN(backend='torch')"
    assert row["metrics"]["map"] == pytest.approx(expected, abs=1e-12)
    assert row["metrics"]["recall@1"] == 1.0
    assert f"{100 * expected:.2f}" in out
    assert row["per_query"]["ap"] == pytest.approx([(1 + 1 + 3 / 5) / 3, 1], abs=1e-12)


def _toy_gnd():
    # 6 database images, 2 queries
    return {
        "imlist": [f"im{i}" for i in range(6)],
        "qimlist": ["qa", "qb"],
        "gnd": [
            {"easy": np.array([0]), "hard": np.array([1]), "junk": np.array([2])},
            {"easy": np.array([3, 4]), "hard": np.array([], dtype=np.int64), "junk": []},
        ],
    }


def test_evaluate_revisitop_self_made_files(capsys, tmp_path):
    gnd_path = tmp_path / "gnd_toy.pkl"
    gnd_path.write_bytes(pickle.dumps(_toy_gnd(), protocol=2))
    # scores of query a: im2 .9 (junk), im5 .8, im1 .7 (hard), im0 .6 (easy), others lower
    # scores of query b: im3 .9, im0 .8, im4 .7
    sa = np.array([0.6, 0.7, 0.9, 0.1, 0.2, 0.8])
    sb = np.array([0.8, 0.1, 0.2, 0.9, 0.7, 0.3])
    # a two-query design: database descriptor j = (sa_j, sb_j, filler); queries e_0 and e_1
    X = np.stack([sa, sb, np.zeros(6)], 0)  # (D, N) revisitop layout
    Q = np.eye(3)[:, :2]
    savemat(tmp_path / "feats.mat", {"X": X, "Q": Q})
    code, out, err = run(
        capsys,
        "evaluate",
        "--gnd",
        str(gnd_path),
        "--features",
        str(tmp_path / "feats.mat"),
        "--json",
        str(tmp_path / "r.json"),
    )
    assert code == 0, err
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    m = row["metrics"]
    # revisitop AP is the trapezoid form; junk removed first.
    # query a, Medium (pos 0, 1; junk 2): ranking 5, 1, 0 -> positives at ranks 2, 3
    #   AP = 1/2 * ((0 + 1/2) / 2 + (1/2 + 2/3) / 2) = 0.41666...
    # query b, Medium (pos 3, 4): ranking 3, 0, 4 -> ranks 1, 3: 1/2 * (1 + (1/2 + 2/3) / 2)
    ap_a = 0.5 * ((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2)
    ap_b = 0.5 * ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2)
    assert m["medium_map"] == pytest.approx((ap_a + ap_b) / 2, abs=1e-12)
    # Hard: only query a has a hard positive (1); junk 2 and easy 0 removed: 5, 1 -> rank 2
    assert m["hard_map"] == pytest.approx((0 + 1 / 2) / 2, abs=1e-12)
    assert "E mAP" in out and "M mAP" in out and "H mAP" in out
    # per query and protocol; query b has no hard positive: null
    assert row["per_query"]["medium"] == pytest.approx([ap_a, ap_b], abs=1e-12)
    assert row["per_query"]["hard"][0] == pytest.approx((0 + 1 / 2) / 2, abs=1e-12)
    assert row["per_query"]["hard"][1] is None
    assert set(row["per_query"]) == {"easy", "medium", "hard"}


def test_evaluate_benchmark_folder_with_r1m_distractors(capsys, tmp_path):
    (tmp_path / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(_toy_gnd()))
    sa = np.array([0.6, 0.7, 0.9, 0.1, 0.2, 0.8])
    sb = np.array([0.8, 0.1, 0.2, 0.9, 0.7, 0.3])
    np.save(tmp_path / "gem_database.npy", np.stack([sa, sb], 1))
    np.save(tmp_path / "gem_queries.npy", np.eye(2))
    r1m = tmp_path / "r1m"
    r1m.mkdir()
    # one distractor that beats everything for query b: Medium AP of b drops
    np.save(r1m / "gem.npy", np.array([[0.0, 1.0]]))
    code, out, err = run(
        capsys,
        "evaluate",
        "--benchmark",
        "roxford5k",
        "--root",
        str(tmp_path),
        "--features",
        "gem",
        "--r1m",
        str(r1m),
        "--json",
        str(tmp_path / "r.json"),
    )
    assert code == 0, err
    assert "roxford5k+distractors: 7 database items" in out
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    ap_a = 0.5 * ((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2)  # as without distractors
    # query b: distractor (6), 3, 0, 4 -> positives at 0-based ranks 1 and 3
    ap_b = 0.5 * ((0 + 1 / 2) / 2 + (1 / 3 + 2 / 4) / 2)
    assert row["metrics"]["medium_map"] == pytest.approx((ap_a + ap_b) / 2, abs=1e-12)
    # the same folder without the descriptors: the message lists what to place there
    code, _, err = run(
        capsys, "evaluate", "--benchmark", "roxford5k", "--root", str(tmp_path), "--features", "x"
    )
    assert code == 2 and "missing" in err and "x.mat" in err


@requires_data("revisitop/gnd_roxford5k.pkl", "revisitop/gnd_rparis6k.pkl")
@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_evaluate_real_ground_truth_with_oracle_descriptors(capsys, tmp_path, name):
    gnd_path = data_dir() / "revisitop" / f"gnd_{name}.pkl"
    gnd = gr.datasets.load_revisitop_gnd(gnd_path)
    n, q = gnd.num_database, gnd.num_queries
    # database item j scores 1 with query i iff it is an easy or hard positive of i, else 0
    X = np.zeros((n, q), np.float32)
    for i, g in enumerate(gnd.gnd):
        X[np.concatenate([g["easy"], g["hard"]]), i] = 1.0
    if name == "roxford5k":  # a ground-truth file and descriptor files anywhere
        np.save(tmp_path / "db.npy", X)
        np.save(tmp_path / "q.npy", np.eye(q, dtype=np.float32))
        source = ["--gnd", str(gnd_path), "--database", str(tmp_path / "db.npy")]
        source += ["--queries", str(tmp_path / "q.npy")]
    else:  # the benchmark folder layout of graphrerank.datasets.RParis6k
        (tmp_path / gnd_path.name).write_bytes(gnd_path.read_bytes())
        savemat(tmp_path / "oracle.mat", {"X": X.T, "Q": np.eye(q)})
        source = ["--benchmark", name, "--root", str(tmp_path), "--features", "oracle"]
    code, out, err = run(capsys, "evaluate", *source, "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    for proto in ("easy", "medium", "hard"):
        assert row["metrics"][f"{proto}_map"] == 1.0


@requires_data("pku_sketch_reid/pytorch_result.mat")
def test_evaluate_real_reid_file_gives_the_published_baseline(capsys, tmp_path):
    path = data_dir() / "pku_sketch_reid" / "pytorch_result.mat"
    code, out, err = run(capsys, "evaluate", "--reid", str(path), "--json", str(tmp_path / "r"))
    assert code == 0, err
    (row,) = json.loads((tmp_path / "r").read_text())["results"]
    # the data folder's README: cosine baseline mAP 21.71, Rank-1 14.0, Rank-5 36.0, Rank-10 48.0
    m = row["metrics"]
    assert round(100 * m["map"], 2) == 21.71
    assert (100 * m["rank1"], 100 * m["rank5"], 100 * m["rank10"]) == pytest.approx((14, 36, 48))


def test_evaluate_self_made_reid_file(capsys, tmp_path):
    # 2 queries, 4 gallery items; query 0 (id 7, cam 0); gallery: id 7 cam 0 (junk: same cam),
    # id 8, id 7 cam 1 (positive), id -1 (junk)
    g = np.array([[1.0, 0.0], [0.9, 0.436], [0.8, 0.6], [0.95, 0.312]], np.float32)
    qf = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    savemat(
        tmp_path / "result.mat",
        {
            "query_f": qf,
            "query_label": np.array([[7, 8]]),
            "query_cam": np.array([[0, 0]]),
            "gallery_f": g,
            "gallery_label": np.array([[7, 8, 7, -1]]),
            "gallery_cam": np.array([[0, 1, 1, 1]]),
        },
    )
    code, out, err = run(
        capsys, "evaluate", "--reid", str(tmp_path / "result.mat"), "--json", str(tmp_path / "r")
    )
    assert code == 0, err
    (row,) = json.loads((tmp_path / "r").read_text())["results"]
    # query 0 ranking: 0 (junk), 3 (junk), 1 (neg), 2 (pos) -> positive at rank 2: AP 1/2
    # query 1 (id 8 cam 0) ranking: 2 (.6), 1 (.436), 3, 0 -> positive 1 at rank 2: AP 1/2
    assert row["metrics"]["map"] == pytest.approx(0.5, abs=1e-12)
    assert row["metrics"]["rank1"] == 0.0
    assert "R-1" in out
    assert row["per_query"] == {"ap": [0.5, 0.5]}
    assert _header(out) == ["method", "mAP", "R-1", "mINP", "gain mAP", "fit ms", "rerank ms"]


# --------------------------------------------------------------------------- rows that fail
def test_a_failing_reranker_gets_its_row_and_the_others_complete(capsys, tmp_path):
    # Diffusion with kd above the database size fails at fit (ValueError), between two rows
    code, out, err = run(
        capsys,
        "evaluate",
        *SYNTHETIC,
        "-r",
        "KNN",
        "-r",
        "Diffusion(kd=10**6)",
        "-r",
        "AlphaQueryExpansion(k=5)",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert code == 1, err
    message = "ValueError: kd=1000000 is larger than the database, which holds 300 item(s)"
    assert f"graphrerank evaluate: Diffusion(kd=1000000) failed at fit: {message}" in err
    header, body = _table(out)
    assert header[-1] == "error" and header[:2] == ["method", "mAP"]
    assert [r[0] for r in body] == ["KNN()", "Diffusion(kd=1000000)", "AlphaQueryExpansion()"]
    failed = dict(zip(header, body[1]))
    assert failed["error"] == f"failed at fit: {message}"
    assert failed["mAP"] == failed["gain mAP"] == failed["fit ms"] == "-"
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["complete"] is True and payload["exit_status"] == 1
    knn, diffusion, aqe = payload["results"]
    assert diffusion["status"] == "failed" and diffusion["failed_at"] == "fit"
    assert diffusion["error"] == message and diffusion["metrics"] == {}
    assert diffusion["settings"]["kd"] == 10**6
    x, y = _synthetic()
    for row, cells, model in (
        (knn, body[0], gr.KNN()),
        (aqe, body[2], gr.rerankers.AlphaQueryExpansion(k=5)),
    ):
        assert row["status"] == "ok" and row["error"] is None
        ranking = model.fit(x).rerank(None, 300)
        expected = gr.metrics.class_map(ranking.indices, y, leave_one_out=True)
        assert row["metrics"]["map"] == pytest.approx(expected, abs=1e-12)
        assert dict(zip(header, cells))["mAP"] == f"{100 * expected:.2f}"
        assert dict(zip(header, cells))["error"] == ""


class _FailsAtFit(gr.KNN):
    def fit(self, database):
        raise MemoryError("cannot allocate 80 GiB (test)")


class _FailsAtRerank(gr.KNN):
    def rerank(self, queries=None, k=100, **kw):
        raise RuntimeError("CUDA error: an illegal memory access | test")


class _NeedsAModule(gr.KNN):
    def fit(self, database):
        raise ImportError("_NeedsAModule requires faiss: pip install 'graphrerank[faiss-cpu]'")


class _Interrupts(gr.KNN):
    def fit(self, database):
        raise KeyboardInterrupt


@pytest.fixture
def failing(monkeypatch):
    extra = (_FailsAtFit, _FailsAtRerank, _NeedsAModule, _Interrupts)
    monkeypatch.setattr(gr.rerankers, "RERANKERS", (*gr.rerankers.RERANKERS, *extra))


def test_memory_and_runtime_errors_fail_their_rows_only(capsys, tmp_path, failing):
    code, out, err = run(
        capsys,
        "evaluate",
        *SYNTHETIC,
        "--k",
        "50",
        "-r",
        "_FailsAtFit",
        "-r",
        "_FailsAtRerank",
        "-r",
        "KNN(metric='l2')",
        "--json",
        str(tmp_path / "r.json"),
        "--save-rankings",
        str(tmp_path / "rankings"),
    )
    assert code == 1
    header, body = _table(out)
    rows = {r[0]: dict(zip(header, r)) for r in body}
    assert list(rows) == ["KNN()", "_FailsAtFit()", "_FailsAtRerank()", "KNN(metric='l2')"]
    assert (
        rows["_FailsAtFit()"]["error"]
        == "failed at fit: MemoryError: cannot allocate 80 GiB (test)"
    )
    # a '|' in a message does not break the table
    assert rows["_FailsAtRerank()"]["error"] == (
        "failed at rerank: RuntimeError: CUDA error: an illegal memory access \\| test"
    )
    assert (
        rows["_FailsAtRerank()"]["fit ms"] != "-" and rows["_FailsAtRerank()"]["rerank ms"] == "-"
    )
    assert rows["KNN(metric='l2')"]["error"] == "" and rows["KNN(metric='l2')"]["mAP"] != "-"
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [(r["status"], r["failed_at"]) for r in results] == [
        ("ok", None),
        ("failed", "fit"),
        ("failed", "rerank"),
        ("ok", None),
    ]
    assert results[2]["fit_s"] >= 0 and results[2]["rerank_s"] is None
    # rankings are saved for the rows that have them, and only those
    assert [bool(r.get("rankings")) for r in results] == [True, False, False, True]
    assert sorted(p.name for p in (tmp_path / "rankings").iterdir()) == [
        "01-KNN.npz",
        "04-KNN_metric_l2.npz",
    ]


def test_a_missing_optional_dependency_skips_the_row(capsys, tmp_path, failing):
    code, out, err = run(
        capsys,
        "evaluate",
        *SYNTHETIC,
        "--k",
        "20",
        "-r",
        "_NeedsAModule",
        "--json",
        str(tmp_path / "r"),
    )
    assert code == 1
    assert "_NeedsAModule() skipped at fit: ImportError: _NeedsAModule requires faiss" in err
    header, body = _table(out)
    assert dict(zip(header, body[1]))["error"].startswith("skipped at fit: ImportError: ")
    knn, skipped = json.loads((tmp_path / "r").read_text())["results"]
    assert knn["status"] == "ok" and skipped["status"] == "skipped"
    assert skipped["error"].startswith("ImportError: _NeedsAModule requires faiss")


def test_ctrl_c_is_not_swallowed_and_finished_rows_are_kept(capsys, tmp_path, failing):
    with pytest.raises(KeyboardInterrupt):
        main(
            [
                "evaluate",
                *SYNTHETIC,
                "-r",
                "KNN(metric='l2')",
                "-r",
                "_Interrupts",
                "-r",
                "KNN(backend=torch)",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
    out, err = capsys.readouterr()
    assert "interrupted after 2 row(s)" in err
    _, body = _table(out)
    assert [r[0] for r in body] == ["KNN()", "KNN(metric='l2')"]
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["complete"] is False and payload["exit_status"] is None
    assert [r["reranker"] for r in payload["results"]] == ["KNN()", "KNN(metric='l2')"]


def test_bench_failing_row(capsys, tmp_path, failing):
    code, out, err = run(
        capsys,
        "bench",
        "--size",
        "200",
        "--dim",
        "8",
        "--classes",
        "10",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--k",
        "20",
        "-r",
        "Diffusion(kd=10**6)",
        "-r",
        "_FailsAtRerank",
        "-r",
        "KNN(backend=torch)",
        "--json",
        str(tmp_path / "b.json"),
    )
    assert code == 1
    assert "Diffusion(kd=1000000) failed at fit: ValueError: kd=1000000 is larger" in err
    header, body = _table(out)
    assert header == [
        "method",
        "fit s",
        "rerank s",
        "total s",
        "x KNN()",
        "mAP@20 %",
        "error",
    ]
    rows = {r[0]: dict(zip(header, r)) for r in body}
    assert rows["Diffusion(kd=1000000)"]["error"].startswith("failed at fit: ValueError: kd=")
    assert rows["_FailsAtRerank()"]["error"].startswith("failed at rerank: RuntimeError: ")
    assert rows["KNN(backend='torch')"]["x KNN()"] != "-" and rows["KNN()"]["x KNN()"] == "1.00"
    payload = json.loads((tmp_path / "b.json").read_text())
    assert payload["complete"] is True and payload["exit_status"] == 1
    results = {r["reranker"]: r for r in payload["results"]}
    assert results["Diffusion(kd=1000000)"]["map"] is None
    assert results["Diffusion(kd=1000000)"]["status"] == "failed"
    assert results["KNN(backend='torch')"]["map"] > 0 and results["KNN()"]["status"] == "ok"


# --------------------------------------------------------------------------- headers
class _Reversed(gr.KNN):
    """The kNN ranking read backwards (worst first): a ranking that differs from the baseline."""

    def rerank(self, queries=None, k=100, **kw):
        s, i = super().rerank(queries, k, **kw)
        return gr.typing.RerankResult(-s.flip(1), i.flip(1))


def test_revisitop_headers_name_their_metric_and_the_gain_is_medium_map(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.setattr(gr.rerankers, "RERANKERS", (*gr.rerankers.RERANKERS, _Reversed))
    gnd_path = tmp_path / "gnd_toy.pkl"
    gnd_path.write_bytes(pickle.dumps(_toy_gnd(), protocol=2))
    sa = np.array([0.6, 0.7, 0.9, 0.1, 0.2, 0.8])
    sb = np.array([0.8, 0.1, 0.2, 0.9, 0.7, 0.3])
    savemat(tmp_path / "f.mat", {"X": np.stack([sa, sb, np.zeros(6)], 0), "Q": np.eye(3)[:, :2]})
    code, out, err = run(
        capsys,
        "evaluate",
        "--gnd",
        str(gnd_path),
        "--features",
        str(tmp_path / "f.mat"),
        "-r",
        "_Reversed",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert code == 0, err
    header, body = _table(out)
    assert header == [
        "method",
        "E mAP",
        "M mAP",
        "H mAP",
        "M mP@10",
        "H mP@10",
        "gain M mAP",
        "fit ms",
        "rerank ms",
    ]
    assert "gain M mAP: the M mAP of each row minus that of the first row" in out
    payload = json.loads((tmp_path / "r.json").read_text())
    base, rev = (r["metrics"] for r in payload["results"])
    assert rev["medium_map"] != base["medium_map"] and rev["easy_map"] != base["easy_map"]
    gain = dict(zip(header, body[1]))["gain M mAP"]
    assert gain == f"{100 * (rev['medium_map'] - base['medium_map']):+.2f}"
    assert gain != f"{100 * (rev['easy_map'] - base['easy_map']):+.2f}"
    assert payload["gain"] == {"metric": "medium_map", "header": "gain M mAP", "reference": "KNN()"}
    assert payload["columns"]["medium_mp@10"] == "M mP@10"
    assert payload["query_names"] == ["qa", "qb"]


def test_class_table_headers(capsys):
    code, out, _ = run(capsys, "evaluate", *SYNTHETIC, "--k", "20")
    assert code == 0
    assert _header(out) == [
        "method",
        "mAP",
        "R@1",
        "R@5",
        "R@10",
        "gain mAP",
        "fit ms",
        "rerank ms",
    ]


# --------------------------------------------------------------------------- per query, rankings
def test_json_per_query_ap_and_saved_rankings_equal_the_rerankers_own(capsys, tmp_path):
    folder = tmp_path / "rankings"
    code, out, err = run(
        capsys,
        "evaluate",
        *SYNTHETIC,
        "--k",
        "40",
        "-r",
        "Pipeline([DatabaseAugmentation(k=3), AlphaQueryExpansion(k=3)])",
        "--json",
        str(tmp_path / "r.json"),
        "--save-rankings",
        str(folder),
    )
    assert code == 0, err
    payload = json.loads((tmp_path / "r.json").read_text())
    x, y = _synthetic()
    models = [gr.KNN(), parse_reranker("DatabaseAugmentation(k=3) | AlphaQueryExpansion(k=3)")]
    assert [r["reranker"] for r in payload["results"]] == [repr(m) for m in models]
    for number, (row, model) in enumerate(zip(payload["results"], models), 1):
        path = Path(row["rankings"])
        assert path.parent == folder and path.name.startswith(f"{number:02d}-")
        assert f"{row['reranker']}: {path}" in out  # named on screen too
        with np.load(path, allow_pickle=False) as saved:
            indices, scores = saved["indices"], saved["scores"]
        own = model.fit(x).rerank(None, 40)
        np.testing.assert_array_equal(indices, own.indices.numpy())
        np.testing.assert_array_equal(scores, own.scores.numpy())
        assert indices.dtype == np.int64 and indices.shape == (300, 40)
        # per-query AP in the JSON: that of graphrerank.metrics on these rankings
        ap = gr.metrics.class_average_precision(own.indices, y, leave_one_out=True)
        assert row["per_query"]["ap"] == pytest.approx(ap.tolist(), abs=1e-12)
        assert row["metrics"]["map"] == pytest.approx(
            gr.metrics.class_map(own.indices, y, leave_one_out=True), abs=1e-12
        )
        _, meta = load_arrays(path, format=RANKINGS_FORMAT, version=1)
        assert meta["reranker"] == row["reranker"] and meta["k"] == 40 and meta["all_vs_all"]


@requires_data("revisitop/gnd_roxford5k.pkl")
def test_real_ground_truth_per_query_ap_by_protocol(capsys, tmp_path):
    gnd_path = data_dir() / "revisitop" / "gnd_roxford5k.pkl"
    gnd = gr.datasets.load_revisitop_gnd(gnd_path)
    g = torch.Generator().manual_seed(0)
    db = torch.nn.functional.normalize(torch.randn(gnd.num_database, 16, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(gnd.num_queries, 16, generator=g), dim=1)
    np.save(tmp_path / "db.npy", db.numpy())
    np.save(tmp_path / "q.npy", q.numpy())
    code, out, err = run(
        capsys,
        "evaluate",
        "--gnd",
        str(gnd_path),
        "--database",
        str(tmp_path / "db.npy"),
        "--queries",
        str(tmp_path / "q.npy"),
        "--k",
        "1000",
        "--json",
        str(tmp_path / "r.json"),
        "--save-rankings",
        str(tmp_path / "rk"),
    )
    assert code == 0, err
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    with np.load(row["rankings"]) as saved:
        indices = saved["indices"]
    np.testing.assert_array_equal(indices, gr.KNN().fit(db).rerank(q, 1000).indices.numpy())
    expected = gr.metrics.revisited_map(torch.from_numpy(indices), gnd.gnd, num_database=len(db))
    for proto in ("easy", "medium", "hard"):
        ap = expected[proto].ap.tolist()
        got = row["per_query"][proto]
        assert len(got) == 70
        assert [v is None for v in got] == [np.isnan(v) for v in ap]  # no positive: null
        assert [v for v in got if v is not None] == pytest.approx(
            [v for v in ap if not np.isnan(v)], abs=1e-12
        )
        assert row["metrics"][f"{proto}_map"] == pytest.approx(expected[proto].map, abs=1e-12)


def test_unwritable_outputs_are_bad_input_found_before_any_work(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "evaluate", *SYNTHETIC, "--save-rankings", str(tmp_path / "file"))
    assert code == 2 and "--save-rankings" in err
    code, out, err = run(capsys, "evaluate", *SYNTHETIC, "--json", str(tmp_path))
    assert code == 2 and "cannot write" in err and "| method" not in out


# --------------------------------------------------------------------------- progress
class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_long_steps_show_a_line_on_a_terminal_only():
    tty = _Terminal()
    with Step("[1/2] KNN(): fit", stream=tty, delay=0.0, interval=0.01):
        time.sleep(0.2)
    text = tty.getvalue()
    assert "[1/2] KNN(): fit" in text and re.search(r"\d+\.\ds", text)
    assert text.endswith("\r\x1b[K")  # erased when done
    quick = _Terminal()
    with Step("quick", stream=quick):  # done before the default one-second delay
        pass
    assert quick.getvalue() == ""
    pipe = io.StringIO()  # not a terminal: nothing
    with Step("slow", stream=pipe, delay=0.0, interval=0.01):
        time.sleep(0.05)
    assert pipe.getvalue() == ""


@pytest.fixture
def files(tmp_path):
    np.save(tmp_path / "db.npy", np.eye(4, 3, dtype=np.float32))
    np.save(tmp_path / "labels.npy", np.array([0, 0, 1, 1]))
    np.save(tmp_path / "labels3.npy", np.array([0, 0, 1]))
    np.save(tmp_path / "flabels.npy", np.array([0.5, 0, 1, 1]))
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 0, 0]] * 4, np.float32))
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(print))
    (tmp_path / "gnd_x.pkl").write_bytes(pickle.dumps(_toy_gnd()))
    savemat(tmp_path / "feats_t.mat", {"X": np.ones((6, 3)), "Q": np.ones((3, 2))})
    return tmp_path


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--gnd", "{d}/none.pkl", "--features", "{d}/f.mat"], r"does not exist"),
        (["--gnd", "{d}/bad.pkl", "--features", "{d}/f.mat"], r"could not be read"),
        (["--gnd", "{d}/evil.pkl", "--features", "{d}/f.mat"], r"refused to load the global"),
        (["--gnd", "{d}/gnd_x.pkl"], r"--gnd needs descriptors"),
        (["--gnd", "{d}/gnd_x.pkl", "--features", "{d}/feats_t.mat"], r"looks transposed"),
        (["--database", "{d}/db.npy"], r"--database needs a ground truth"),
        (["--labels", "{d}/labels.npy"], r"--labels needs --database"),
        (["--database", "{d}/db.npy", "--labels", "{d}/labels3.npy"], r"has 3 labels but"),
        (["--database", "{d}/db.npy", "--labels", "{d}/flabels.npy"], r"must be integers"),
        (["--database", "{d}/nan.npy", "--labels", "{d}/labels.npy"], r"finite"),
        (["--database", "{d}/db.npy", "--labels", "{d}/none.npy"], r"does not exist"),
        (
            ["--database", "{d}/db.npy", "--labels", "{d}/labels.npy", "--queries", "{d}/db.npy"],
            r"need both --queries and --query-labels",
        ),
        (["--data", "digits", "--reid", "{d}/x.mat"], r"give one data source"),
        (["--reid", "{d}/none.mat"], r"does not exist"),
        (["--reid", "{d}/labels.npy"], r"could not be read|unreadable|\.mat"),
        (["--data", "digits", "--k", "0"], r"--k must be between 1 and the database size 1797"),
        (["--data", "digits", "--reranker", "Nope"], r"unknown re-ranker 'Nope'"),
        (["--data", "digits", "--device", "nonsense"], r"--device 'nonsense'"),
        (["--data", "digits", "--subset", "1"], r"--subset must be at least 2"),
        (["--benchmark", "roxford5k"], r"--benchmark needs --root DIR and --features NAME"),
        (
            ["--benchmark", "roxford5k", "--root", "{d}", "--database", "{d}/db.npy"],
            r"drop --database",
        ),
        (["--data", "digits", "--root", "{d}"], r"--root and --r1m go with --benchmark"),
    ],
)
def test_evaluate_reports_bad_input_without_traceback(capsys, files, args, match):
    pytest.importorskip("sklearn")
    code, out, err = run(capsys, "evaluate", *[a.format(d=files) for a in args])
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("graphrerank evaluate: error: ")
    assert re.search(match, err), err


def test_set_before_reranker_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--set", "k=1"])
    assert info.value.code == 2
    assert "comes before any --reranker" in capsys.readouterr().err


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "evaluate" in capsys.readouterr().out


def test_list_names_every_reranker_with_its_defaults(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for cls in gr.rerankers.RERANKERS:
        assert f"{cls.__name__}: " in out
    assert "settings: metric='ip', backend='auto'" in out
    # one plain-text sentence per re-ranker: no reST markup
    main_part, local_part = out.split("\n\n")
    summaries = [line for line in main_part.splitlines() if not line.startswith(" ")]
    assert len(summaries) == len(gr.rerankers.RERANKERS)
    local = [line for line in local_part.splitlines() if not line.startswith(" ")]
    assert "need local descriptors" in local[0]
    assert len(local) == 1 + len(gr.rerankers.RERANKERS_WITH_LOCAL)
    for line in summaries + local[1:]:
        assert line.endswith(".") and "`" not in line and ":math:" not in line and "\\" not in line
    for cls in gr.rerankers.RERANKERS_WITH_LOCAL:
        assert f"{cls.__name__}: " in local_part


def test_a_reranker_that_needs_local_descriptors_is_refused_with_a_reason(capsys):
    code, _, err = run(capsys, "evaluate", "--data", "digits", "-r", "LocalDescriptorReranker")
    assert code == 2
    assert "LocalDescriptorReranker needs local descriptors" in err


# --------------------------------------------------------------------------- bench and demo
def test_bench_small_prints_the_table_and_json(capsys, tmp_path):
    code, out, err = run(
        capsys,
        "bench",
        "--size",
        "300",
        "--dim",
        "16",
        "--classes",
        "10",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--k",
        "20",
        "--reranker",
        "KNN(backend=torch)",
        "--json",
        str(tmp_path / "b.json"),
    )
    assert code == 0, err
    assert "| method " in out and "KNN(backend='torch')" in out and "machine:" in out
    payload = json.loads((tmp_path / "b.json").read_text())
    rows = {r["reranker"]: r for r in payload["results"]}
    assert set(rows) == {"KNN()", "KNN(backend='torch')"}  # the baseline comes first
    assert payload["results"][0]["reranker"] == "KNN()"
    ds = gr.datasets.make_retrieval_dataset(num_items=300, dim=16, num_classes=10)
    expected = _step_ap_loo(ds.database.numpy(), ds.database_labels.numpy(), k=20)
    assert rows["KNN(backend='torch')"]["map"] == pytest.approx(expected, abs=1e-6)
    for r in rows.values():
        assert r["total_s"] == pytest.approx(r["fit_s"] + r["rerank_s"])


@pytest.mark.parametrize(
    ("args", "match"),
    [(["--size", "1"], "--size must be at least 2"), (["--repeats", "0"], "--repeats")],
)
def test_bench_bad_input(capsys, args, match):
    code, _, err = run(capsys, "bench", *args)
    assert code == 2 and match in err


def test_demo_fast_runs_every_reranker_and_plots(capsys, tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")

    class Cosine(gr.KNN):  # a second re-ranker, cheap: the demo's wiring is under test
        pass

    monkeypatch.setattr(gr.rerankers, "RERANKERS", (gr.KNN, Cosine))
    png = tmp_path / "demo.png"
    code, out, err = run(capsys, "demo", "--fast", "--plot", str(png))
    assert code == 0, err
    assert "| KNN()" in out and "| Cosine()" in out
    assert "600 database items" in out
    assert png.stat().st_size > 1000


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"graphrerank {gr.__version__}"


def test_module_entry_point_exit_status_and_clean_message():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run(
        [sys.executable, "-m", "graphrerank", "evaluate", "--reid", "/nonexistent/x.mat"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert bad.stderr.startswith("graphrerank evaluate: error: ")
    assert "does not exist" in bad.stderr


# --------------------------------------------------------------------------- save / load
def test_save_then_load_ranks_as_the_fitted_reranker(tmp_path, capsys):
    data = gr.datasets.load_digits_retrieval()
    x = data.database[:300]
    np.save(tmp_path / "db.npy", x.numpy())
    np.save(tmp_path / "q.npy", x[:4].numpy())
    model = tmp_path / "model.npz"
    assert main(["save", "--database", str(tmp_path / "db.npy"), "-r", "Diffusion(kd=10)",
                 "-o", str(model)]) == 0  # fmt: skip
    assert "saved with its database" in capsys.readouterr().out
    out = tmp_path / "rankings.npz"
    assert main(["load", str(model), "--queries", str(tmp_path / "q.npy"), "--k", "15",
                 "-o", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "Diffusion(kd=10), fitted on a database (300, 64)" in printed
    with np.load(out) as z:
        expected = gr.rerankers.Diffusion(kd=10).fit(x).rerank(x[:4], k=15)
        np.testing.assert_array_equal(z["indices"], expected.indices.numpy())
        np.testing.assert_array_equal(z["scores"], expected.scores.numpy())


def test_save_without_the_database_needs_it_at_load(tmp_path, capsys):
    x = gr.datasets.load_digits_retrieval().database[:200]
    np.save(tmp_path / "db.npy", x.numpy())
    model = tmp_path / "light.npz"
    args = ["save", "--database", str(tmp_path / "db.npy"), "-r", "KReciprocal(k1=6, k2=3)"]
    assert main([*args, "-o", str(model), "--no-database"]) == 0
    assert main(["load", str(model), "--all-vs-all"]) == 2
    assert "--database" in capsys.readouterr().err
    other = x.clone()
    other[0] = -other[0]
    np.save(tmp_path / "other.npy", other.numpy())
    assert main(["load", str(model), "--database", str(tmp_path / "other.npy")]) == 2
    assert "fingerprint mismatch" in capsys.readouterr().err
    assert main(["load", str(model), "--database", str(tmp_path / "db.npy"), "--all-vs-all",
                 "--k", "5"]) == 0  # fmt: skip
    assert "ranked 200 database items, top 5" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["save", "--data", "digits", "-r", "KNN", "-r", "KNN", "-o", "x.npz"], "exactly one"),
        (["save", "--data", "digits", "-o", "x.npz"], "exactly one"),
        (["load", "missing.npz"], "no saved file"),
        (["load", "q.npy"], "not a graphrerank file"),
    ],
)
def test_save_load_bad_input(argv, match, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "q.npy", np.zeros((2, 3), np.float32))
    assert main(argv) == 2
    assert re.search(match, capsys.readouterr().err)
