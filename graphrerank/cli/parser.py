"""The ``graphrerank`` argument parser and the entry point that runs a sub-command.

The sub-commands' modules (which import torch and the re-rankers) are imported only when one
runs: ``graphrerank --help`` and ``--version`` read this module and :mod:`.base` only.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

from .._version import __version__
from .base import EXIT_BAD_INPUT, EXIT_OK, EXIT_ROW_FAILED, PROG, CLIError

__all__ = ["build_parser", "main"]


class _RerankerAction(argparse.Action):
    """``--reranker SPEC``: starts a new entry; ``--set k=v`` adds to the last one."""

    def __call__(self, parser, namespace, values, option_string=None):
        entries = getattr(namespace, "rerankers", None) or []
        if self.dest == "rerankers":
            entries.append([values, []])
        else:
            if not entries:
                parser.error(f"{option_string} {values} comes before any --reranker")
            entries[-1][1].append(values)
        namespace.rerankers = entries


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The sub-command ``name`` of ``graphrerank.cli.<module>``, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)(args)

    run.__name__ = run.__qualname__ = name
    return run


_EXIT_CODES = f"""exit status:
  {EXIT_OK}  every row has its result
  {EXIT_ROW_FAILED}  a re-ranker failed or was skipped (its row and the JSON say why); the
     other rows are complete
  {EXIT_BAD_INPUT}  bad options, files or settings: nothing was run"""


def _add_reranker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reranker",
        "-r",
        dest="rerankers",
        action=_RerankerAction,
        metavar="SPEC",
        help="a re-ranker by class name, optionally with settings: KNN, \"KNN(metric='l2')\", "
        "'A(...) | B(...)' or 'Pipeline([A(...), B(...)])' for a pipeline; repeat to compare "
        "several",
    )
    p.add_argument(
        "--set",
        dest="settings",
        action=_RerankerAction,
        metavar="KEY=VALUE",
        help="change one setting of the re-ranker named just before, e.g. --set k=50",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 or auto")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        choices=("digits", "corel1k", "synthetic"),
        help="built-in all-vs-all data (default digits when no other source is given)",
    )
    g.add_argument("--subset", type=int, help="first N items of --data only")
    g.add_argument("--size", type=int, default=10_000, help="--data synthetic: items")
    g.add_argument("--dim", type=int, default=128, help="--data synthetic: dimension")
    g.add_argument("--classes", type=int, default=100, help="--data synthetic: classes")
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="--data synthetic: seed (tune: also of --split, --search)",
    )
    g.add_argument(
        "--benchmark",
        choices=("roxford5k", "rparis6k"),
        help="a revisitop benchmark laid out in --root (gnd_*.pkl and --features NAME)",
    )
    g.add_argument("--root", metavar="DIR", help="with --benchmark: its folder")
    g.add_argument(
        "--r1m", metavar="DIR", help="with --benchmark: folder of R1M distractors --features NAME"
    )
    g.add_argument("--gnd", metavar="PKL", help="revisitop ground truth, e.g. gnd_roxford5k.pkl")
    g.add_argument(
        "--features",
        metavar="MAT|NAME",
        help="with --gnd: .mat with X (D, N) and Q (D, Q); with --benchmark: the name NAME of "
        "NAME.mat or NAME_database.npy + NAME_queries.npy in --root",
    )
    g.add_argument(
        "--database", metavar="FILE", help="database descriptors (.npy (N, D), .npz, .mat (D, N))"
    )
    g.add_argument("--queries", metavar="FILE", help="query descriptors (same formats)")
    g.add_argument("--distractors", metavar="FILE", help="with --gnd: distractors (e.g. R1M)")
    g.add_argument("--reid", metavar="MAT", help="re-ID result file (query_f, gallery_f, ...)")
    g.add_argument("--labels", metavar="FILE", help="database classes (.npy or text)")
    g.add_argument("--query-labels", metavar="FILE", help="query classes (.npy or text)")
    g.add_argument("--l2-normalize", action="store_true", help="L2-normalise the descriptors first")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``graphrerank`` command (its sub-commands and options)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Image-retrieval re-ranking as graph computation: evaluate, benchmark, demo, "
        "save and load fitted re-rankers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ev = sub.add_parser(
        "evaluate",
        help="re-rank descriptors and print the metric table",
        description=textwrap.fill(
            "Rank a database for queries with each re-ranker and score the rankings. "
            "Data: one of --data, --gnd (revisitop), --reid (re-ID result file) or --database with "
            "--labels (classes). The kNN baseline is added as the first row unless --no-baseline. "
            "A re-ranker that fails gets a row with its error; the other rows complete.",
        ),
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_options(ev)
    _add_reranker_options(ev)
    ev.add_argument("--k", type=int, help="ranking length (default: the whole database)")
    ev.add_argument("--no-baseline", action="store_true", help="do not add the kNN baseline")
    ev.add_argument(
        "--leave-one-out",
        choices=["all-vs-all", "strict"],
        default="all-vs-all",
        help="all-vs-all data (classes): 'all-vs-all' (default) ranks each item against the "
        "whole database, itself included and not counted; 'strict' removes each item from the "
        "database first, as published leave-one-out numbers do "
        '(rerank(None, k, leave_one_out="strict"))',
    )
    ev.add_argument(
        "--json",
        metavar="PATH",
        help="also write the results as JSON: every metric and the AP of every query (by "
        "protocol for revisitop) of each row, or its error; rewritten after each row",
    )
    ev.add_argument(
        "--save-rankings",
        metavar="DIR",
        help="write each row's top-k lists (indices and scores) to DIR/NN-NAME.npz "
        "(pickle-free, numpy.load); the JSON names each file",
    )
    ev.set_defaults(func=_command("commands", "evaluate"))

    be = sub.add_parser(
        "bench",
        help="time re-rankers on synthetic data (the speed table)",
        description=textwrap.fill(
            "Time fit and rerank of each re-ranker (default: every one) on "
            "make_retrieval_dataset data; prints a Markdown table of median times. A re-ranker "
            "that fails gets a row with its error; the other rows complete.",
        ),
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    be.add_argument("--size", type=int, default=10_000, help="database items (default 10000)")
    be.add_argument("--dim", type=int, default=128, help="dimension (default 128)")
    be.add_argument("--classes", type=int, default=100, help="classes (default 100)")
    be.add_argument("--queries", type=int, default=0, help="separate queries (0: all-vs-all)")
    be.add_argument("--seed", type=int, default=0)
    be.add_argument("--k", type=int, default=None, help="ranking length (default min(100, N))")
    be.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    be.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    _add_reranker_options(be)
    be.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    be.set_defaults(func=_command("commands", "bench"))

    de = sub.add_parser(
        "demo",
        help="the quickstart: every re-ranker on the digits set",
        description="Every re-ranker at its default settings on a built-in all-vs-all set; "
        "prints mAP, Recall@K and times.",
    )
    de.add_argument("--data", choices=("digits", "corel1k"), default="digits")
    de.add_argument("--fast", action="store_true", help="first 600 items only")
    de.add_argument("--plot", metavar="PNG", help="write precision-recall curves here")
    de.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    de.set_defaults(func=_command("commands", "demo"))

    sv = sub.add_parser(
        "save",
        help="fit one re-ranker on a database and save it (graphrerank load reads it)",
        description=textwrap.fill(
            "Fit the re-ranker named by -r on the database of the data options (as for "
            "evaluate: --data, --database, --gnd, ...) and write it, fitted, to --output: "
            "settings, fitted state and the database (unless --no-database), atomically, "
            "checksummed and without pickle."
        ),
    )
    _add_data_options(sv)
    _add_reranker_options(sv)
    sv.add_argument("--output", "-o", required=True, metavar="NPZ", help="the file to write")
    sv.add_argument(
        "--no-database",
        action="store_true",
        help="do not store the database in the file (load then needs --database)",
    )
    sv.set_defaults(func=_command("commands", "save"))

    lo = sub.add_parser(
        "load",
        help="load a saved re-ranker: what it holds, and rankings of new queries",
        description=textwrap.fill(
            "Read a re-ranker written by graphrerank save (or Reranker.save) and print what it "
            "holds; with --queries, rank them (or the database itself with --all-vs-all) and "
            "write the top-k lists to --output (indices and scores, pickle-free .npz)."
        ),
    )
    lo.add_argument("path", metavar="NPZ", help="the saved re-ranker")
    lo.add_argument(
        "--database",
        metavar="FILE",
        help="the database it was fitted on (needed when saved with --no-database; checked "
        "against the stored fingerprint)",
    )
    lo.add_argument(
        "--queries", metavar="FILE", help="query descriptors to rank (.npy, .npz, .mat)"
    )
    lo.add_argument("--all-vs-all", action="store_true", help="rank the database itself")
    lo.add_argument("--k", type=int, default=100, help="ranking length (default 100)")
    lo.add_argument("--output", "-o", metavar="NPZ", help="write the rankings here")
    lo.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    lo.set_defaults(func=_command("commands", "load"))

    tu = sub.add_parser(
        "tune",
        help="choose a re-ranker's settings on labelled data (grid, random or halving search)",
        description=textwrap.fill(
            "Score the re-ranker named by -r at every setting of --grid on the data the options "
            "name (as for evaluate: --data, --gnd, --reid, --database with --labels) and print "
            "the table and the best setting. The plain kNN first stage and the re-ranker's own "
            "settings are always in the search space, and the first stage wins ties, so the "
            "choice never scores below it on the tuning data. The first-stage scores are "
            "computed once for every setting. With --split F the search sees a share F of the "
            "classes / identities / landmarks only, and the baseline, the given settings and "
            "the choice are scored on the others (held out). Grid: NAME=V1,V2,... parts "
            "separated by ';', e.g. --grid 'k1=5,10,20;k2=2,3,6'; a pipeline's stage "
            "setting is STAGE.NAME (0.k=3,5 or AlphaQueryExpansion.alpha=1,3)."
        ),
        epilog=_EXIT_CODES.replace("a re-ranker failed or was skipped", "a setting failed"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_options(tu)
    _add_reranker_options(tu)
    tu.add_argument(
        "--grid",
        action="append",
        metavar="NAME=V1,V2;...",
        help="the settings to try, e.g. 'k1=5,10,20;k2=2,3,6' (repeatable)",
    )
    tu.add_argument(
        "--search",
        choices=("grid", "random", "halving"),
        default="grid",
        help="every combination (default), --n-iter random ones, or successive halving over "
        "growing shares of the classes",
    )
    tu.add_argument("--n-iter", type=int, default=10, help="--search random: combinations drawn")
    tu.add_argument(
        "--split",
        type=float,
        metavar="F",
        help="tune on a share F (0 < F < 1) of the classes / identities, score on the rest; "
        "seeded by --seed",
    )
    tu.add_argument(
        "--protocol",
        choices=("easy", "medium", "hard"),
        default="medium",
        help="with --gnd / --benchmark: the revisited protocol tuned (default medium)",
    )
    tu.add_argument(
        "--margin",
        default="0",
        metavar="M|se|2se",
        help="a setting must beat the kNN baseline by M (a fraction, default 0: any gain) or, "
        "with 'se' / '2se', by one / two standard errors of the per-query gain, to be chosen",
    )
    tu.add_argument("--k", type=int, help="ranking length (default min(N, 1000))")
    tu.add_argument("--top", type=int, help="print only the TOP best rows of the table")
    tu.add_argument("--json", metavar="PATH", help="also write every setting's score as JSON")
    tu.set_defaults(func=_command("tune", "tune"))

    li = sub.add_parser("list", help="list the re-rankers and their settings")
    li.set_defaults(func=_command("commands", "list_rerankers"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0: every row has its result; 1: a re-ranker failed or was skipped (its row says why, the
    other rows are complete); 2: bad options, files or settings (a one-line message on
    standard error). ``KeyboardInterrupt`` is not caught: the rows finished so far are
    printed (and written to ``--json``) first.

    Args:
        argv: The arguments after the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    args.argv = None if argv is None else list(argv)
    if not hasattr(args, "rerankers") or args.rerankers is None:
        args.rerankers = []
    if args.command == "bench" and args.k is None:
        args.k = min(100, args.size)
    from ..datasets import UnsafePickleError

    if os.environ.get("GRAPHRERANK_DEBUG"):
        return args.func(args)
    try:
        return args.func(args)
    except CLIError as err:
        msg = str(err)
    except UnsafePickleError as err:
        msg = f"refused to read a file: {err}"
    except (FileNotFoundError, ValueError, TypeError, ImportError, OSError) as err:
        msg = str(err)
    print(f"{PROG} {args.command}: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT
