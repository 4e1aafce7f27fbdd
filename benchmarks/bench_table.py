"""The whole speed table of the speed issue in one command: every method at every size.

Runs the per-method benchmark scripts one after the other, each in its own processes (they
interleave ours with the reference algorithm in fresh processes and print their own tables),
and prints their tables under one heading per part, then a summary of what ran, how long each
part took and what was skipped for the time budget. The per-method scripts are the ones whose
results files are in ``benchmarks/results/`` (``kreciprocal_speed.md``, ``gnn_speed.md``,
``offline_diffusion.md``, ``neighbourhood.md``); this script only chooses their sizes and
settings so that one run covers the table:

==========================  ===========================  ================================
method                      small / medium               Market size (3,368 + 19,732)
==========================  ===========================  ================================
k-reciprocal step, e2e      digits, 729 + 4,271          step and end to end
GNN re-ranking, lambda 0/.3 digits, 729 + 4,271          step and end to end
offline diffusion           10,000 + 1,000               fit, fit + rerank, online
SuperGlobal                 digits, Corel-1k             700 x 19,732 (reference on a
                                                         query subset, time scaled)
==========================  ===========================  ================================

Parts run in the order above, small sizes first; a part whose estimated time would take the
run past ``--budget-min`` is skipped and listed as such (``--force`` runs them anyway). The
estimates (minutes on a quiet 2-core machine, the references included) are in ``PARTS``.

Commands:

    python benchmarks/bench_table.py --out benchmarks/results/speed_table.md
    python benchmarks/bench_table.py --small-only        # digits / 729 + 4,271 / 10k / Corel
    python benchmarks/bench_table.py --dry-run           # the commands, nothing run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


@dataclass(frozen=True)
class Part:
    """One invocation of a per-method benchmark script."""

    name: str
    script: str
    args: tuple[str, ...]
    # estimated on a quiet 2-core machine, references included: about 1.5x the times of the
    # run in results/speed_table.md (load 0.6-2.6, 10.3 min for the first eight parts); the
    # Market GNN part from gnn_speed.md (its reference alone, ~11 min per lambda under load)
    minutes: float
    market: bool = False

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, str(HERE / self.script), *self.args]


def _args(line: str) -> tuple[str, ...]:
    """A script's command-line arguments, written as one line."""
    return tuple(line.split())


PARTS: tuple[Part, ...] = (
    Part(
        "k-reciprocal, digits (all-vs-all)",
        "bench_kreciprocal.py",
        _args("--queries 0 --methods kr --repeats 1 --threads 2"),
        1.0,
    ),
    Part(
        "k-reciprocal, 729 + 4,271",
        "bench_kreciprocal.py",
        _args("--queries 729 --gallery 4271 --methods kr --repeats 1 --threads 2"),
        1.0,
    ),
    Part(
        "GNN re-ranking, digits and 729 + 4,271",
        "bench_gnn.py",
        _args("--sizes digits 729+4271 --rounds 1 --repeats 1"),
        2.0,
    ),
    Part(
        "offline diffusion, 10,000 + 1,000",
        "bench_offline_diffusion.py",
        _args("--sizes 10000:1000 --repeats 1"),
        1.0,
    ),
    Part(
        "SuperGlobal, digits and Corel-1k",
        "bench_neighbourhood.py",
        _args(
            "--sizes digits corel --methods SuperGlobal --repeats 1 --warmup 0 --ref-queries 200"
        ),
        2.0,
    ),
    Part(
        "k-reciprocal, Market size",
        "bench_kreciprocal.py",
        _args("--queries 3368 --gallery 19732 --methods kr --repeats 1 --threads 2"),
        6.0,
        market=True,
    ),
    Part(
        "offline diffusion, Market size",
        "bench_offline_diffusion.py",
        _args("--sizes 19732:3368 --repeats 1"),
        2.0,
        market=True,
    ),
    Part(
        "SuperGlobal, 700 x 19,732",
        "bench_neighbourhood.py",
        _args("--sizes 700x19732 --methods SuperGlobal --repeats 1 --warmup 0 --ref-queries 100"),
        2.0,
        market=True,
    ),
    Part(
        "GNN re-ranking, Market size",
        "bench_gnn.py",
        _args("--sizes 3368+19732 --rounds 1 --repeats 1 --warmup 0"),
        25.0,
        market=True,
    ),
)


def plan(parts, *, budget_min: float, force: bool, small_only: bool):
    """``(part, run?, why)`` for each part, in order, within the budget."""
    out, used = [], 0.0
    for part in parts:
        if small_only and part.market:
            out.append((part, False, "--small-only"))
        elif not force and used + part.minutes > budget_min:
            out.append((part, False, f"budget: {used + part.minutes:g} > {budget_min:g} min"))
        else:
            used += part.minutes
            out.append((part, True, ""))
    return out


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--budget-min", type=float, default=30.0, help="skip parts past this")
    p.add_argument("--force", action="store_true", help="run every part, whatever the budget")
    p.add_argument("--small-only", action="store_true", help="skip the Market-size parts")
    p.add_argument("--only", nargs="*", help="run the parts whose name contains one of these")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--out", type=Path, help="also write everything printed to this file")
    args = p.parse_args(argv)

    parts = PARTS
    if args.only:
        parts = tuple(x for x in parts if any(s.lower() in x.name.lower() for s in args.only))
        if not parts:
            p.error(f"--only {args.only!r} names no part; parts: {[x.name for x in PARTS]}")
    steps = plan(parts, budget_min=args.budget_min, force=args.force, small_only=args.small_only)

    from _common import machine

    lines = [
        "# The speed table: every method at every size",
        "",
        f"Machine: {machine()}",
        "Command: python benchmarks/bench_table.py " + " ".join(argv or sys.argv[1:]),
        f"Started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {_load()}",
        "",
    ]
    print("\n".join(lines), flush=True)
    summary = []
    start = time.perf_counter()
    for part, run, why in steps:
        cmd = part.command()
        shown = "python benchmarks/" + " ".join([part.script, *part.args])
        if not run or args.dry_run:
            summary.append((part.name, "not run" if not run else "dry run", why, shown, ""))
            continue
        head = [f"## {part.name}", "", f"    {shown}", ""]
        print("\n".join(head), flush=True)
        t, load0 = time.perf_counter(), _load()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        took = (time.perf_counter() - t) / 60
        body = proc.stdout.rstrip()
        if proc.returncode:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            body += f"\n\nFAILED (exit {proc.returncode}):\n\n    " + tail.replace("\n", "\n    ")
        print(body + "\n", flush=True)
        lines += [*head, body, ""]
        state = "ran" if proc.returncode == 0 else f"failed ({proc.returncode})"
        summary.append((part.name, state, f"{took:.1f} min, load {load0}-{_load()}", shown, ""))

    total = (time.perf_counter() - start) / 60
    table = [
        "## Summary",
        "",
        f"Total {total:.1f} min (budget {args.budget_min:g} min).",
        "",
        "| part | state | time / reason | command |",
        "| --- | --- | --- | --- |",
        *(f"| {n} | {s} | {w} | `{c}` |" for n, s, w, c, _ in summary),
        "",
    ]
    print("\n".join(table))
    lines += table
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(args.out)
    return 0 if all(s in ("ran", "not run", "dry run") for _, s, *_ in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
