"""The device check of ``benchmarks/gpu/check.py`` in its ``--quick`` CPU mode, so that the
script the GPU machine runs cannot rot: every part runs (tiny sizes, on the CPU), the
table and the JSON are written, and the paths that are exact on a CPU agree."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "check.py"
PARTS = ["gnn", "gnn_lambda", "kreciprocal", "diffusion", "knn", "superglobal", "offline"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``check.py --quick`` run in this process (torch is imported already), with faiss
    hidden as on the device machine, which has none."""
    out = tmp_path_factory.mktemp("gpu_check")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "faiss", None)  # import faiss fails, find_spec says None
        mp.setattr(sys, "path", list(sys.path))  # check.py adds its folder; restored after
        mp.setenv("GPU_CHECK_THREADS", "1")
        spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
        check = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(check)
        assert check.main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "gpu_h200.json").read_text())


def test_quick_writes_table_and_json(quick):
    out, report = quick
    text = (out / "gpu_h200.md").read_text()
    for heading in ("## Targets", "## Tests", "## Timings", "## Top-k agreement"):
        assert heading in text
    assert report["mode"] == "quick CPU self-check"
    assert report["machine"]["torch"]
    assert "no faiss" in report["machine"]["line"]  # it ran without faiss
    assert report["command"].startswith("python benchmarks/gpu/check.py --quick")
    assert list(report["parts"]) == PARTS
    for part in PARTS:
        res = report["parts"][part]
        assert res["status"] == "ok", (part, res["status"])
        assert res["title"] in text
        variants = {v["variant"]: v for v in res["variants"]}
        assert set(variants) == {"cpu", "device", "dense"}, part
        for v in variants.values():
            assert v["status"] == "ok", (part, v)
            assert v["median_ms"] > 0 and v["repeats"] >= 1
    # every target of the issue is listed, none claimed as met on a CPU
    assert [t["part"] for t in report["targets"]] == [
        "tests", "gnn", "gnn_lambda", "kreciprocal", "diffusion",
    ]  # fmt: skip
    assert all(t["status"].startswith("not applicable") for t in report["targets"])


def test_quick_agreement(quick):
    _, report = quick
    for part in PARTS:
        agree = {a["comparison"]: a for a in report["parts"][part]["agreement"]}
        assert set(agree) == {
            "device vs CPU (same code)",
            "dense (device) vs CPU",
            "device vs dense (device)",
        }, part
        for a in agree.values():
            assert 0.0 <= a["identical"] <= 1.0 and 0.0 <= a["overlap"] <= 1.0
            assert a["k"] == 10
        # on a CPU the device rows run the same code on the same data: the same lists
        same = agree["device vs CPU (same code)"]
        assert same["identical"] == 1.0 and same["overlap"] == 1.0, part
        # the dense transcriptions compute the same formulas (no float ties at this size)
        assert agree["dense (device) vs CPU"]["overlap"] == 1.0, part


def test_quick_tests_subrun(quick):
    """The pytest sub-run with the per-test limit: one pass, one skip, one stopped test."""
    _, report = quick
    tests = report["tests"]
    assert tests["self_test"] and tests["per_test_timeout_s"] == 1.0
    c = tests["counts"]
    assert (c["passed"], c["skipped"], c["timeouts"], c["failed"], c["total"]) == (1, 1, 1, 0, 3)
    (failure,) = tests["failures"]
    assert failure["test"].endswith("test_runs_past_the_limit")
    assert "exceeded the per-test time limit" in failure["message"]
