"""benchmarks/bench_table.py: the plan of parts within the time budget, and its dry run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def table():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_table", BENCH / "bench_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_table"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_table", None)
    sys.path.remove(str(BENCH))


def test_every_part_names_an_existing_script_and_a_size_of_the_table(table):
    assert {p.script for p in table.PARTS} == {
        "bench_kreciprocal.py",
        "bench_gnn.py",
        "bench_offline_diffusion.py",
        "bench_neighbourhood.py",
    }
    for part in table.PARTS:
        assert (BENCH / part.script).is_file()
    # every method has a Market-size part and a smaller one
    for script in ("bench_kreciprocal.py", "bench_gnn.py", "bench_offline_diffusion.py"):
        kinds = {p.market for p in table.PARTS if p.script == script}
        assert kinds == {True, False}, script


def test_the_budget_skips_the_parts_that_would_overrun_it(table):
    a = table.Part("a", "x.py", (), 10.0)
    b = table.Part("b", "x.py", (), 15.0, market=True)
    c = table.Part("c", "x.py", (), 4.0)
    steps = table.plan((a, b, c), budget_min=20.0, force=False, small_only=False)
    assert [(p.name, run) for p, run, _ in steps] == [("a", True), ("b", False), ("c", True)]
    assert "25 > 20" in steps[1][2]
    steps = table.plan((a, b, c), budget_min=20.0, force=True, small_only=False)
    assert all(run for _, run, _ in steps)
    steps = table.plan((a, b, c), budget_min=100.0, force=False, small_only=True)
    assert [run for _, run, _ in steps] == [True, False, True]


def test_dry_run_lists_every_command_and_writes_the_file(table, tmp_path, capsys):
    out = tmp_path / "table.md"
    assert table.main(["--dry-run", "--out", str(out)]) == 0
    text = out.read_text()
    for part in table.PARTS:
        assert part.name in text
        assert " ".join(part.args) in text
    assert "| part | state |" in capsys.readouterr().out


def test_only_with_no_match_names_the_parts(table):
    with pytest.raises(SystemExit):
        table.main(["--only", "no-such-method", "--dry-run"])
