"""``graphrerank tune``: the grid syntax, the table and JSON, the held-out split, exit codes."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

import graphrerank as gr
from graphrerank.cli import CLIError
from graphrerank.cli.tune import parse_grid
from graphrerank.metrics import class_map
from graphrerank.testing import data_dir, requires_data

from ._cli import run

ROOT = Path(__file__).resolve().parents[1]


def _rows(out):
    lines = [line for line in out.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.split("|")[1:-1]] for line in lines]


def test_parse_grid_syntax():
    assert parse_grid(["k1=5,10,20;k2=2,3,6"]) == {"k1": [5, 10, 20], "k2": [2, 3, 6]}
    assert parse_grid(["alpha=0.5, 3", "metric=ip,l2"]) == {
        "alpha": [0.5, 3],
        "metric": ["ip", "l2"],
    }
    assert parse_grid(["truncation=None,100;"]) == {"truncation": [None, 100]}
    for bad, match in (
        (["k1"], "NAME=V1,V2"),
        (["k1=5;k1=6"], "twice"),
        (["k1="], "no values"),
        ([], "empty"),
    ):
        with pytest.raises(CLIError, match=match):
            parse_grid(bad)


def test_tune_digits_table_json_and_held_out(capsys, tmp_path):
    path = tmp_path / "t.json"
    code, out, err = run(
        capsys, "tune", "--data", "digits", "--subset", "600", "-r", "AlphaQueryExpansion(backend=torch)",
        "--grid", "k=2,5;alpha=1,3", "--split", "0.5", "--seed", "1", "--json", str(path),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(path.read_text())
    assert report["exit_status"] == 0
    results = report["results"]
    assert len(results) == 1 + 4  # baseline + grid (the given k=5, alpha=3 is in it)
    best = max(results, key=lambda r: r["score"])
    assert report["best_score"] == best["score"] >= report["baseline_score"]
    # the held-out rows are the scores of those re-rankers on the other half, recomputed here
    ds = gr.datasets.load_digits_retrieval()
    p = gr.tuning.class_protocol(ds.database[:600], ds.database_labels[:600])
    _, test = p.split(0.5, seed=1)
    held = {r["row"]: r["score"] for r in report["held_out"]}
    knn = gr.KNN().fit(test.database).rerank(None, test.num_database)
    assert held["baseline (KNN)"] == pytest.approx(
        class_map(knn.indices, test.labels, leave_one_out=True)
    )
    tuned = eval_model(report["best_reranker"], test)
    assert held["tuned"] == pytest.approx(tuned)
    rows = _rows(out)
    assert rows[0][:3] == ["setting", "k", "alpha"]
    assert "held out" in out


def eval_model(spec, protocol):
    model = gr.cli.parse_reranker(spec)
    model.fit(protocol.database)
    return protocol.score(model.rerank(None, protocol.num_database).indices)


@requires_data("pku_sketch_reid/pytorch_result.mat")
def test_tune_real_reid_file(capsys, tmp_path):
    path = data_dir() / "pku_sketch_reid" / "pytorch_result.mat"
    code, out, err = run(
        capsys, "tune", "--reid", str(path), "-r", "Diffusion(backend=torch)",
        "--grid", "kd=5,10;kq=3,5", "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert round(100 * report["baseline_score"], 2) == 21.71  # the data folder's README
    assert report["best_score"] >= report["baseline_score"]
    assert all(r["shared"] for r in report["results"])


def test_tune_revisitop_protocol_choice(capsys, tmp_path):
    import pickle

    from scipy.io import savemat

    gnd = {
        "imlist": [f"im{i}" for i in range(6)],
        "qimlist": ["qa", "qb"],
        "gnd": [
            {"easy": [0], "hard": [1], "junk": [2], "bbx": None},
            {"easy": [3, 4], "hard": [], "junk": [], "bbx": None},
        ],
    }
    gnd_path = tmp_path / "gnd_toy.pkl"
    gnd_path.write_bytes(pickle.dumps(gnd, protocol=2))
    sa = np.array([0.6, 0.7, 0.9, 0.1, 0.2, 0.8])
    sb = np.array([0.8, 0.1, 0.2, 0.9, 0.7, 0.3])
    savemat(tmp_path / "f.mat", {"X": np.stack([sa, sb, np.zeros(6)], 0), "Q": np.eye(3)[:, :2]})
    common = ["tune", "--gnd", str(gnd_path), "--features", str(tmp_path / "f.mat"),
              "-r", "KNN", "--grid", "metric=ip"]  # fmt: skip
    code, out, err = run(capsys, *common, "--json", str(tmp_path / "m.json"))
    assert code == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    ap_a = 0.5 * ((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2)  # as in tests/test_cli.py
    ap_b = 0.5 * ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2)
    assert m["metric"] == "medium mAP"
    assert m["baseline_score"] == pytest.approx((ap_a + ap_b) / 2, abs=1e-12)
    code, out, err = run(capsys, *common, "--protocol", "hard", "--json", str(tmp_path / "h.json"))
    h = json.loads((tmp_path / "h.json").read_text())
    assert h["metric"] == "hard mAP"
    assert h["baseline_score"] == pytest.approx((0 + 1 / 2) / 2, abs=1e-12)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["-r", "KReciprocal", "--grid", "k1=0,5"], r"param_grid\['k1'\]: the value 0"),
        (["-r", "KReciprocal", "--grid", "k9=1"], "no setting 'k9'"),
        (["-r", "KReciprocal"], "--grid is empty"),
        (["-r", "KNN", "-r", "KNN", "--grid", "metric=ip"], "exactly one re-ranker"),
        (["-r", "KNN", "--grid", "metric=ip", "--split", "1.5"], "--split 1.5"),
        (["-r", "KNN", "--grid", "metric=ip", "--search", "random", "--n-iter", "0"], "n_iter"),
    ],
)
def test_tune_bad_input_exits_2(capsys, argv, match):
    code, out, err = run(capsys, "tune", "--data", "digits", "--subset", "100", *argv)
    assert code == 2
    assert re.search(match, err), err


def test_a_failing_setting_gets_its_row_and_exit_1(capsys, tmp_path, monkeypatch):
    from graphrerank.rerankers import Diffusion

    real = Diffusion._fit

    def boom(self, db):
        if self.kd == 7:
            raise RuntimeError("out of memory (test)")
        return real(self, db)

    monkeypatch.setattr(Diffusion, "_fit", boom)
    code, out, err = run(
        capsys, "tune", "--data", "digits", "--subset", "200", "-r", "Diffusion(backend=torch)",
        "--grid", "kd=5,7;kq=3", "--json", str(tmp_path / "f.json"),
    )  # fmt: skip
    assert code == 1
    report = json.loads((tmp_path / "f.json").read_text())
    failed = [r for r in report["results"] if r["error"]]
    assert [r["params"] for r in failed] == [{"kd": 7, "kq": 3}]
    assert "out of memory (test)" in failed[0]["error"]
    assert report["best_params"] != {"kd": 7, "kq": 3}
    assert "failed" in out


def test_help_text_is_generated_for_the_docs():
    from graphrerank.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    text = sub.choices["tune"].format_help()
    for option in ("--grid", "--search", "--split", "--seed", "--json", "--protocol"):
        assert option in text
    assert "_generated/cli_tune.txt" in (ROOT / "docs" / "cli.rst").read_text()
