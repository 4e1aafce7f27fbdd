"""The GPU check of issue 16: the CUDA half of the test suite, then the Market-size GPU
benchmarks, in one command that writes one Markdown table and one JSON file.

On a fresh device machine, from the repository root, with no install step::

    bash benchmarks/gpu/check.sh --out "$OUT"        # PYTHONPATH=<root>, then this script

1. **Tests**: ``python -m pytest -q -m gpu --device cuda tests`` with a per-test time limit
   and a deadline for the whole run (``_gpu_timeout.py``, a plugin with no package beyond
   pytest; ``-n`` workers when pytest-xdist is installed), counts of passed / failed /
   skipped / errors / time-outs and every failure's message.
2. **Benchmarks** at Market-1501 size (3,368 queries + 19,732 gallery, d = 2048; the
   synthetic recipe of ``benchmarks/bench_kreciprocal.py``) and at 100,000 nodes (d = 512, as
   ``bench_diffusion.py``): GNN re-ranking (lambda 0 and 0.3), k-reciprocal, online diffusion
   (batches of 1,000 queries), exact torch kNN, SuperGlobal and the offline diffusion
   precompute. Each on the device, with the same code on the CPU (at a reduced size where
   the full one would take too long: the table says which) and against a dense torch
   transcription on the device (``_dense.py``); CUDA-event timing after warm-up, the median
   of the repeats, ``torch.cuda.max_memory_allocated``, top-k agreement.
3. **Report**: ``gpu_h200.md`` and ``gpu_h200.json`` in ``--out``: the machine, the
   command, the tests, every timing and agreement, and each target of the issue as met or
   missed by how much.

Every part runs in its own process under a time budget (``--budget`` seconds for the whole
check, 470 by default, split as ``BUDGETS``); a part past its budget is stopped and recorded
as such, with the variants it finished.

``--quick`` is the CPU self-check the test suite runs (``tests/test_gpu_check.py``): tiny
sizes, device ``cpu``, the parts in this process, and a three-test pytest run of
``_quick_suite.py`` instead of the suite.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _parts  # noqa: E402

#: Seconds each step may take at most (scaled down when the total budget is smaller).
BUDGETS = {
    "tests": 150,
    "gnn": 35,
    "gnn_lambda": 30,
    "kreciprocal": 45,
    "diffusion": 80,
    "knn": 25,
    "superglobal": 30,
    "offline": 75,
}

#: The issue's targets on the H200 at Market size: (part, what is measured, limit, unit).
TARGETS = [
    (
        "gnn",
        "GNN re-ranking (lambda 0), fit + rerank incl. similarity product and kNN lists",
        10.0,
        "ms",
    ),
    (
        "gnn_lambda",
        "GNN re-ranking (lambda 0.3), fit + rerank incl. similarity product and kNN lists",
        10.0,
        "ms",
    ),
    ("kreciprocal", "k-reciprocal, fit + rerank", 50.0, "ms"),
    ("diffusion", "online diffusion per query, batch of 1,000 at 100k nodes", 0.1, "ms/query"),
]

REPORT_NAME = "gpu_h200"


class PartTimeout(Exception):
    """A part ran past its budget (in-process mode)."""


# ----------------------------------------------------------------------------- tests
def run_tests(args, budget: float, work: Path) -> dict:
    """The pytest sub-run; returns counts, failures and the command."""
    report = work / "tests.jsonl"
    report.unlink(missing_ok=True)
    if args.quick:
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--noconftest",
            "-p",
            "_gpu_timeout",
            str(HERE.relative_to(ROOT) / "_quick_suite.py"),
        ]
        per_test = 1.0
    else:
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "gpu",
            "--device",
            args.test_device,
            "-p",
            "_gpu_timeout",
            "--continue-on-collection-errors",
            *args.test_paths,
        ]
        per_test = args.test_timeout
        workers = _workers(args)
        if workers:
            cmd += ["-n", str(workers)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env["GPU_CHECK_TEST_TIMEOUT"] = str(per_test)
    env["GPU_CHECK_DEADLINE"] = str(time.time() + max(1.0, budget - 15))
    env["GPU_CHECK_REPORT"] = str(report)
    env["PYTHONUNBUFFERED"] = "1"
    if args.quick:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    t0 = time.perf_counter()
    status, out = _run(cmd, env, budget, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    result = _parse_tests(report)
    if result["counts"]["total"] == 0 and status not in ("exit 0", "exit 5"):
        # pytest did not get to the tests (a broken conftest or import, a bad option)
        result["counts"]["errors"] += 1
        result["failures"].append(
            {
                "test": "(the pytest run)",
                "when": "startup",
                "kind": "errors",
                "message": out[-1500:],
            }
        )
    summary = [ln for ln in out.splitlines() if ln.strip()][-1:] or [""]
    result.update(
        command=" ".join(shlex.quote(c) for c in _shown(cmd)),
        status=status,
        elapsed_s=elapsed,
        budget_s=budget,
        per_test_timeout_s=per_test,
        summary_line=summary[0][-300:],
        output_tail=out[-4000:],
    )
    if args.quick:
        result["self_test"] = True
    return result


def _shown(cmd: list[str]) -> list[str]:
    return ["python" if c == sys.executable else c for c in cmd]


def _workers(args) -> int:
    if args.test_workers != "auto":
        return int(args.test_workers)
    import importlib.util

    if importlib.util.find_spec("xdist") is None or not args.device.startswith("cuda"):
        return 0
    return 4


def _parse_tests(report: Path) -> dict:
    from _gpu_timeout import BUDGET_REASON

    outcome: dict[str, str] = {}
    failures = []
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "timeouts": 0, "not_run": 0}
    lines = report.read_text(encoding="utf-8").splitlines() if report.exists() else []
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        node, when, out = r["nodeid"], r["when"], r["outcome"]
        if when == "collect":
            counts["errors"] += 1
            failures.append({"test": node, "when": "collect", "message": r["message"][-800:]})
            continue
        if out == "failed":
            kind = "failed" if when == "call" else "errors"
            if "exceeded the per-test time limit" in r["message"]:
                kind = "timeouts"
            if outcome.get(node) not in ("failed", "errors", "timeouts"):
                outcome[node] = kind
                failures.append(
                    {"test": node, "when": when, "kind": kind, "message": r["message"][-800:]}
                )
        elif out == "skipped":
            outcome.setdefault(node, "not_run" if BUDGET_REASON in r["message"] else "skipped")
        elif out == "passed" and when == "call":
            outcome.setdefault(node, "passed")
    for kind in outcome.values():
        counts[kind] += 1
    counts["total"] = len(outcome)
    return {"counts": counts, "failures": failures}


# ----------------------------------------------------------------------------- parts
def run_parts(args, deadline: float, work: Path) -> dict:
    results = {}
    sizes = dict(_parts.QUICK if args.quick else _parts.FULL)
    if args.scale != 1.0:
        for key in (
            "queries",
            "gallery",
            "diffusion_nodes",
            "diffusion_batch",
            "offline_nodes",
            "offline_queries",
        ):
            sizes[key] = max(8, round(sizes[key] * args.scale))
    if args.dim:
        sizes["dim"] = args.dim
    if args.truncation:
        sizes["truncation"] = args.truncation
    for part in args.parts:
        left = deadline - time.time()
        share = BUDGETS[part] * args.part_budget_scale
        budget = min(share, left)
        if budget < 5:
            results[part] = {
                "title": _parts.TITLES[part],
                "status": "skipped: no time left in the check's budget",
                "budget_s": 0.0,
                "elapsed_s": 0.0,
                "device_name": None,
                "variants": [],
                "agreement": [],
            }
            continue
        fraction = 1.0 if args.quick or args.cpu_full else _parts.CPU_FRACTION[part]
        spec = {
            "part": part,
            "device": args.device,
            "sizes": sizes,
            "fraction": fraction,
            "repeats": args.repeats,
            "cpu_repeats": args.cpu_repeats,
            "work": str(work),
            "budget_s": budget,
        }
        t0 = time.perf_counter()
        if args.in_process:
            status, records = _part_here(spec, budget)
        else:
            status, records = _part_child(spec, budget, work)
        results[part] = _collect(
            part, status, records, budget, time.perf_counter() - t0, work, sizes, spec
        )
        print(
            f"[gpu check] {part}: {results[part]['status']} ({results[part]['elapsed_s']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    return {"sizes": sizes, "parts": results}


def _part_here(spec: dict, budget: float) -> tuple[str, list[dict]]:
    records: list[dict] = []

    def alarm(signum, frame):
        raise PartTimeout

    use_alarm = (
        hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    )
    if use_alarm:
        old = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        _parts.run_part(
            spec["part"],
            device=spec["device"],
            sizes=spec["sizes"],
            fraction=spec["fraction"],
            repeats=spec["repeats"],
            cpu_repeats=spec["cpu_repeats"],
            work=Path(spec["work"]),
            record=records.append,
            budget_s=spec["budget_s"],
        )
        status = "ok"
    except PartTimeout:
        status = "timeout"
    except Exception as err:
        status = f"error: {type(err).__name__}: {err}"[:300]
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    return status, records


def _part_child(spec: dict, budget: float, work: Path) -> tuple[str, list[dict]]:
    spec_file = work / f"spec_{spec['part']}.json"
    out_file = work / f"records_{spec['part']}.jsonl"
    out_file.unlink(missing_ok=True)
    spec["records"] = str(out_file)
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    status, out = _run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_file)],
        env,
        budget,
        cwd=ROOT,
    )
    records = []
    if out_file.exists():
        for line in out_file.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    if status == "exit 0":
        status = "ok"
    elif status.startswith("exit"):
        status = f"error ({status}): {out.strip().splitlines()[-1][-300:] if out.strip() else ''}"
    return status, records


def child_main(spec_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    _parts.child_threads()

    def record(rec: dict) -> None:
        with open(spec["records"], "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=str) + "\n")

    _parts.run_part(
        spec["part"],
        device=spec["device"],
        sizes=spec["sizes"],
        fraction=spec["fraction"],
        repeats=spec["repeats"],
        cpu_repeats=spec["cpu_repeats"],
        work=Path(spec["work"]),
        record=record,
        budget_s=spec["budget_s"],
    )
    return 0


def _run(cmd: list[str], env: dict, budget: float, cwd: Path) -> tuple[str, str]:
    """Run ``cmd`` in its own process group for at most ``budget`` seconds; returns
    ``(status, output)`` with status ``"exit N"`` or ``"timeout"``."""
    with tempfile.TemporaryFile(mode="w+b") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=budget)
            status = f"exit {rc}"
        except subprocess.TimeoutExpired:
            _kill(proc)
            status = "timeout"
        log.seek(0)
        out = log.read().decode("utf-8", "replace")
    return status, out


def _kill(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------------- results
def _collect(part, status, records, budget, elapsed, work: Path, sizes, spec) -> dict:
    import numpy as np

    info = next((r for r in records if r.get("kind") == "info"), {})
    variants = [r for r in records if r.get("kind") == "variant"]
    if status == "timeout":
        status = f"stopped at its budget of {budget:.0f} s"
    res = {
        "title": _parts.TITLES[part],
        "status": status,
        "budget_s": budget,
        "elapsed_s": elapsed,
        "device_name": info.get("device_name"),
        "cpu_threads": info.get("cpu_threads"),
        "variants": variants,
        "agreement": [],
    }

    def load(name):
        f = work / f"{part}_{name}.npy"
        ok = any(v["variant"] == name and v.get("status") == "ok" for v in variants)
        return np.load(f) if ok and f.exists() else None

    pairs = [
        ("device vs CPU (same code)", "device@cpu-size", "cpu", True),
        ("dense (device) vs CPU", "dense@cpu-size", "cpu", False),
        ("device vs dense (device)", "device", "dense", False),
        ("dense bf16 vs dense fp32 (device)", "dense-bf16", "dense", False),
    ]
    small_is_full = _parts.part_sizes(part, sizes, 1.0) == _parts.part_sizes(
        part, sizes, spec["fraction"]
    )
    for label, a, b, exact in pairs:
        if small_is_full:
            a = {"device@cpu-size": "device", "dense@cpu-size": "dense"}.get(a, a)
        x, y = load(a), load(b)
        if x is None or y is None:
            continue
        size = next(v["size"] for v in variants if v["variant"] == a)
        res["agreement"].append(
            {
                "comparison": label,
                "a": a,
                "b": b,
                "size": size,
                "k": int(x.shape[1]),
                **agreement(x, y),
                "same_code": exact,
            }
        )
    ok = {v["variant"]: v["median_ms"] for v in variants if v.get("status") == "ok"}
    same_size = "device" if small_is_full else "device@cpu-size"
    res["ratios"] = {
        "cpu_over_device_same_size": _ratio(ok.get("cpu"), ok.get(same_size)),
        "dense_over_device": _ratio(ok.get("dense"), ok.get("device")),
    }
    planned = _parts.planned(part, spec["device"], small_is_full)
    done = {v["variant"] for v in variants}
    for name in planned:
        if name not in done:
            variants.append(
                {
                    "kind": "variant",
                    "part": part,
                    "variant": name,
                    "status": "not run (" + status + ")",
                }
            )
    return res


def _ratio(a, b):
    return a / b if a is not None and b else None


def agreement(a, b) -> dict:
    """``identical``: the fraction of rows whose top-k lists are equal; ``overlap``: the mean
    fraction of ``b``'s top-k that ``a``'s holds."""
    import numpy as np

    if a.shape != b.shape:
        return {"identical": 0.0, "overlap": 0.0, "note": f"shapes {a.shape} != {b.shape}"}
    same = float((a == b).all(axis=1).mean()) if a.size else 1.0
    k = a.shape[1]
    inter = np.array([np.intersect1d(x, y).size for x, y in zip(a, b)], dtype=np.float64)
    return {"identical": same, "overlap": float(inter.mean() / k) if k else 1.0}


def targets(parts: dict, on_cuda: bool) -> list[dict]:
    out = []
    for part, what, limit, unit in TARGETS:
        res = parts.get(part)
        row = {"target": what, "limit": limit, "unit": unit, "part": part}
        v = None
        if res:
            v = next(
                (
                    x
                    for x in res["variants"]
                    if x["variant"] == "device" and x.get("status") == "ok"
                ),
                None,
            )
        if v is None:
            reason = res["status"] if res else "part not run"
            row.update(measured=None, status=f"not measured ({reason})")
        else:
            value = v["per_query_ms"] if unit == "ms/query" else v["median_ms"]
            row["measured"] = value
            if not on_cuda:
                row["status"] = "not applicable (no CUDA device: measured on the CPU)"
            elif value <= limit:
                row["status"] = "met"
            else:
                row["status"] = (
                    f"missed by {value - limit:.4g} {unit} ({value / limit:.3g}x the limit)"
                )
        out.append(row)
    return out


def test_target(tests: dict | None, on_cuda: bool) -> dict:
    row = {"target": "the whole CUDA half of the suite green", "part": "tests"}
    if not tests:
        row["status"] = "not run"
        return row
    c = tests["counts"]
    bad = c["failed"] + c["errors"] + c["timeouts"]
    row["measured"] = f"{c['passed']} passed, {bad} failed/errors/time-outs, {c['not_run']} not run"
    if tests.get("self_test"):
        row["status"] = "not applicable (quick self-test, not the suite)"
    elif not on_cuda:
        row["status"] = "not applicable (no CUDA device: the CUDA tests skip)"
    elif bad == 0 and c["not_run"] == 0 and tests["status"] == "exit 0":
        row["status"] = "met"
    else:
        row["status"] = (
            f"missed: {bad} failing, {c['not_run']} not run within the budget "
            f"(pytest {tests['status']})"
        )
    return row


# ----------------------------------------------------------------------------- report
def _fmt(v, digits=4) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _table(rows: list[list], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    m = report["machine"]
    out = [
        f"# GPU check ({report['mode']})",
        "",
        f"- Machine: {m['gpu'] or 'no CUDA device'}; {m['line']}",
        f"- torch {m['torch']} (CUDA {m['torch_cuda']}), driver {m.get('driver') or '?'}; "
        f"Python {m['python']}; {m['cpus']} CPU cores, {m.get('cpu_threads') or '?'} torch "
        "threads in the CPU rows",
        f"- Command: `{report['command']}`",
        f"- Started {report['started']}, took {report['duration_s']:.0f} s "
        f"(budget {report['budget_s']:.0f} s)",
        "",
        "## Targets",
        "",
        _table(
            [
                [t["target"], t.get("limit", ""), t.get("unit", ""), t.get("measured"), t["status"]]
                for t in report["targets"]
            ],
            ["target", "limit", "unit", "measured", "status"],
        ),
    ]
    tests = report.get("tests")
    if tests:
        c = tests["counts"]
        out += [
            "",
            "## Tests",
            "",
            f"`{tests['command']}` ({tests['status']}, {tests['elapsed_s']:.0f} s of "
            f"{tests['budget_s']:.0f}; per-test limit {tests['per_test_timeout_s']:g} s)",
            "",
            _table(
                [
                    [
                        c["passed"],
                        c["failed"],
                        c["errors"],
                        c["timeouts"],
                        c["skipped"],
                        c["not_run"],
                        c["total"],
                    ]
                ],
                ["passed", "failed", "errors", "time-outs", "skipped", "not run (budget)", "total"],
            ),
        ]
        if tests["failures"]:
            out += ["", "Failures:", ""]
            for f in tests["failures"][:60]:
                msg = f["message"].strip().splitlines()
                errs = [ln[1:].strip() for ln in msg if ln.startswith("E ")]
                last = (errs[-1] if errs else msg[-1] if msg else "")[:240]
                out.append(f"- `{f['test']}` ({f.get('kind', f['when'])}): {last}")
            if len(tests["failures"]) > 60:
                out.append(f"- ... and {len(tests['failures']) - 60} more (see the JSON)")
    rows, agree = [], []
    for part, res in report["parts"].items():
        for v in res["variants"]:
            extra = []
            for key in ("fit_s", "build_s", "batch_size", "C_nnz"):
                if key in v:
                    extra.append(f"{key}={_fmt(v[key])}")
            if v.get("cold"):
                extra.append("one cold run (over the time cap)")
            if v.get("error"):
                extra.append(v["error"][:160])
            rows.append(
                [
                    res["title"],
                    v["variant"],
                    v.get("device", ""),
                    v.get("size", ""),
                    v.get("median_ms"),
                    v.get("per_query_ms") if part == "diffusion" else "",
                    v.get("repeats", ""),
                    v.get("peak_mb"),
                    v.get("over_inputs_mb"),
                    v.get("status", ""),
                    "; ".join(extra),
                ]
            )
        for a in res["agreement"]:
            agree.append(
                [res["title"], a["comparison"], a["size"], a["k"], a["identical"], a["overlap"]]
            )
    out += [
        "",
        "## Timings",
        "",
        "Device: CUDA-event time after warm-up, median of the repeats (the heavy full-size "
        "dense runs: one run, warmed up by the CPU-size run); CPU: wall clock. `cpu` rows run "
        "at the CPU size shown (reduced where the full size would take too long); "
        "`device@cpu-size` is the device at that size, for the same-size ratio. Peak: "
        "`torch.cuda.max_memory_allocated` on the device, peak RSS on the CPU; 'over inputs': "
        "above what was allocated before the timed calls.",
        "",
        _table(
            rows,
            [
                "method",
                "variant",
                "device",
                "size",
                "median ms",
                "ms/query",
                "repeats",
                "peak MiB",
                "over inputs MiB",
                "status",
                "notes",
            ],
        ),
        "",
        "## Part status",
        "",
        _table(
            [
                [r["title"], r["status"], r["elapsed_s"], r["budget_s"]]
                for r in report["parts"].values()
            ],
            ["method", "status", "elapsed s", "budget s"],
        ),
        "",
        "## Ratios",
        "",
        "CPU time over device time at the CPU size (the same code); dense transcription's "
        "time over graphrerank's on the device at the full size. Higher is better for the "
        "device and for graphrerank.",
        "",
        _table(
            [
                [
                    r["title"],
                    r["ratios"]["cpu_over_device_same_size"],
                    r["ratios"]["dense_over_device"],
                ]
                for r in report["parts"].values()
                if "ratios" in r
            ],
            ["method", "CPU / device (same size)", "dense / graphrerank (device)"],
        ),
        "",
        "## Top-k agreement",
        "",
        "`identical`: fraction of queries whose top-k lists are equal; `overlap`: mean fraction "
        "of the second list's top-k held by the first.",
        "",
        _table(agree, ["method", "comparison", "size", "k", "identical", "overlap"]),
        "",
    ]
    return "\n".join(out)


def machine_info(device: str, parts: dict) -> dict:
    import torch

    gpu = next((p.get("device_name") for p in parts.values() if p.get("device_name")), None)
    if not device.startswith("cuda"):
        gpu = None
    driver = None
    if device.startswith("cuda"):
        try:
            driver = (
                subprocess.run(
                    [
                        "nvidia-smi",
                        "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
                or None
            )
        except (OSError, subprocess.SubprocessError):
            driver = None
    try:
        from graphrerank.cli.report import machine

        line = machine(libraries=("faiss",))
    except Exception:
        line = platform.platform()
    threads = next((p.get("cpu_threads") for p in parts.values() if p.get("cpu_threads")), None)
    return {
        "gpu": gpu,
        "cpu_threads": threads,
        "driver": driver,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "line": line,
    }


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the table and JSON")
    p.add_argument("--quick", action="store_true", help="tiny CPU self-check (the test suite)")
    p.add_argument("--device", help="device of the device rows (default: cuda if available)")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for the whole check")
    p.add_argument("--parts", nargs="*", choices=_parts.PARTS, help="parts to run (default all)")
    p.add_argument("--no-tests", action="store_true", help="skip the pytest sub-run")
    p.add_argument("--no-parts", action="store_true", help="skip the benchmarks")
    p.add_argument("--test-paths", nargs="*", default=["tests"])
    p.add_argument("--test-device", default="cuda", help="--device of the pytest run")
    p.add_argument("--test-timeout", type=float, default=30.0, help="seconds per test")
    p.add_argument("--test-workers", default="auto", help="pytest-xdist workers ('auto', 0..)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every problem size")
    p.add_argument("--dim", type=int, help="descriptor dimension of the Market-size parts")
    p.add_argument("--truncation", type=int, help="truncation list length of the offline part")
    p.add_argument("--cpu-full", action="store_true", help="CPU rows at the full size too")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats on the device")
    p.add_argument("--cpu-repeats", type=int, default=1, help="timed repeats on the CPU")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the parts in this process (default with --quick)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder (data, lists)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    if argv and argv[0] == "--child":
        return argparse.Namespace(child=argv[1])
    args = p.parse_args(argv)
    args.child = None
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    import torch

    if args.device is None:
        args.device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    if args.quick:
        args.in_process = True
    args.parts = args.parts or list(_parts.PARTS)
    if args.no_parts:
        args.parts = []
    # the parts share what the tests leave of the budget in proportion to BUDGETS
    test_budget = 0.0 if args.no_tests else min(BUDGETS["tests"], 0.32 * args.budget)
    parts_total = sum(BUDGETS[p] for p in args.parts) or 1
    args.test_budget = test_budget
    args.part_budget_scale = max(0.0, (args.budget - test_budget - 10) / parts_total)
    if args.quick:
        args.part_budget_scale = max(args.part_budget_scale, 1.0)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + args.budget
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        return _check(args, argv, start, deadline, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _check(args, argv, start: float, deadline: float, work: Path) -> int:
    report: dict = {
        "mode": "quick CPU self-check" if args.quick else f"device {args.device}",
        "command": "python benchmarks/gpu/check.py " + " ".join(shlex.quote(a) for a in argv),
        "started": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "budget_s": args.budget,
        "device": args.device,
    }
    tests = None
    if not args.no_tests:
        print("[gpu check] tests ...", file=sys.stderr, flush=True)
        tests = run_tests(args, args.test_budget if not args.quick else 30.0, work)
        print(
            f"[gpu check] tests: {tests['counts']} ({tests['status']})", file=sys.stderr, flush=True
        )
    report["tests"] = tests
    benches = run_parts(args, deadline, work)
    report["sizes"] = benches["sizes"]
    report["parts"] = benches["parts"]
    on_cuda = args.device.startswith("cuda")
    report["targets"] = [test_target(tests, on_cuda), *targets(report["parts"], on_cuda)]
    report["machine"] = machine_info(args.device, report["parts"])
    report["duration_s"] = time.time() - start
    text = markdown(report)
    (args.out / f"{REPORT_NAME}.md").write_text(text, encoding="utf-8")
    (args.out / f"{REPORT_NAME}.json").write_text(
        json.dumps(report, indent=1, default=str), encoding="utf-8"
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
