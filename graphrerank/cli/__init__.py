r"""The ``graphrerank`` command line: evaluate re-rankers, time them, run the demo.

.. code-block:: text

    graphrerank evaluate --data digits --reranker KNN          # built-in data, class mAP
    graphrerank evaluate --gnd gnd_roxford5k.pkl --features my_gem.mat --reranker "KNN"
    graphrerank evaluate --reid pytorch_result.mat --reranker KNN --json result.json
    graphrerank evaluate --data digits -r KNN -r "DatabaseAugmentation | AlphaQueryExpansion" \
        --save-rankings rankings/                          # each row's top-k lists, .npz
    graphrerank evaluate --database db.npy --labels labels.npy --reranker KNN --set metric=l2
    graphrerank bench --size 10000 --dim 128 --repeats 3   # the speed table, synthetic data
    graphrerank demo                                       # the quickstart on the digits set
    graphrerank list                                       # every re-ranker and its settings
    graphrerank tune --data digits -r Diffusion --grid 'kd=10,20,50;kq=3,10' --split 0.5

Also ``python -m graphrerank``. A re-ranker is named by its class name in
:data:`graphrerank.rerankers.RERANKERS` (case-insensitive), optionally with settings in call
syntax, ``"KNN(metric='l2')"``; ``--set key=value`` after a ``--reranker`` changes one
setting of that re-ranker; ``"A(...) | B(...)"`` or ``"Pipeline([A(...), B(...)])"`` chains
stages into a :class:`graphrerank.rerankers.Pipeline`. A re-ranker that fails (at fit,
re-rank or scoring) gets a row with its error and the other rows complete: exit status 1.
Bad files and settings end with a one-line message and exit status 2; 0 when every row has
its result. ``evaluate --json`` holds every metric and the AP of every query of each row;
``--save-rankings DIR`` writes each row's top-k lists as pickle-free ``.npz`` files.

The parts, from the bottom: :mod:`~graphrerank.cli.base` (the error type),
:mod:`~graphrerank.cli.specs` (re-ranker specs), :mod:`~graphrerank.cli.tasks` (what to rank
and how to score it), :mod:`~graphrerank.cli.report` (tables, JSON, the machine),
:mod:`~graphrerank.cli.commands` (the sub-commands), :mod:`~graphrerank.cli.tune` (the
``tune`` sub-command and its grid syntax) and :mod:`~graphrerank.cli.parser` (the
options and :func:`main`). The command line is the top layer: nothing else in graphrerank
imports it.
"""

from .._imports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "base": ("CLIError",),
        "parser": ("build_parser", "main"),
        "specs": ("parse_reranker",),
    },
    submodules=("commands", "report", "tasks", "tune"),
)

__all__ = ["CLIError", "build_parser", "main", "parse_reranker"]
