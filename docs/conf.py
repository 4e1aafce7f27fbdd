"""Sphinx configuration of the graphrerank documentation.

Build (from the repository root; executes every tutorial, fails on any warning):

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

Nothing is fetched from the network at build time, and the built pages need none either: MathJax
is bundled (sphinx-mathjax-offline copies it into _static/mathjax), so the math renders offline.
Set GRAPHRERANK_DOCS_INTERSPHINX=1 to link to the PyTorch, PyG, NumPy, SciPy and matplotlib
documentation (their inventories are then downloaded).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the graphrerank of this checkout, installed or not
sys.path.insert(0, str(DOCS))  # _gallery

import graphrerank

os.environ.setdefault("MPLBACKEND", "Agg")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # no INFO lines in the build log

project = "graphrerank"
author = "graphrerank developers"
copyright = "graphrerank developers"
version = release = graphrerank.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    # MathJax 3 shipped in the package, copied into _build/html/_static/mathjax, with
    # mathjax_path pointed at it: no CDN, so the math renders offline (tested by
    # tests/test_docs_render.py in a headless browser with the network blocked).
    "sphinx-mathjax-offline",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]

exclude_patterns = ["_build", "**/*.ipynb", "tutorials/*.md5", "sg_execution_times.rst"]
templates_path: list[str] = []

# --- autodoc / napoleon (Google style docstrings) ---------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = ["Shapes"]
napoleon_attr_annotations = True

# --- intersphinx: off unless asked for, so that the build needs no network --------------------
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
if os.environ.get("GRAPHRERANK_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
        "torch_geometric": ("https://pytorch-geometric.readthedocs.io/en/latest", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "scipy": ("https://docs.scipy.org/doc/scipy", None),
        "matplotlib": ("https://matplotlib.org/stable", None),
    }

# --- sphinx-gallery: the tutorials run at every build, and a failing one fails the build ------
sphinx_gallery_conf = {
    "examples_dirs": [str(ROOT / "examples" / "tutorials")],
    "gallery_dirs": ["tutorials"],
    "filename_pattern": r"/tutorial_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "_gallery.TutorialOrder",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "plot_gallery": "True",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "min_reported_time": 0,
    "write_computation_times": False,
    "backreferences_dir": None,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
}

# --- HTML -------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"graphrerank {release}"
html_static_path: list[str] = []


# --- the command line's help texts, regenerated at every build for docs/cli.rst ---------------
def _write_cli_help() -> None:
    from graphrerank.cli import build_parser

    out = DOCS / "_generated"
    out.mkdir(exist_ok=True)
    parser = build_parser()
    texts = {"graphrerank": parser.format_help()}
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        texts[name] = p.format_help()
    for name, text in texts.items():
        path = out / f"cli_{name}.txt"
        if not path.exists() or path.read_text() != text:  # keep Sphinx's cache valid
            path.write_text(text)


os.environ["COLUMNS"] = "100"  # argparse wraps the help texts at this width
_write_cli_help()


# --- constants re-exported by a package: take their ``#:`` comment from the defining module ---
def _reexported_data_doc(app, what, name, obj, options, lines) -> None:
    """autodoc finds the ``#:`` comment of a constant only in the module it is documented
    from; for ``graphrerank.graph.FAISS_GPU_MAX_K`` (defined in ``graphrerank.graph.knn``) it
    would show the docstring of ``int``. Look the comment up in the package's modules."""
    if what not in ("data", "attribute") or not name.startswith("graphrerank."):
        return
    from sphinx.pycode import ModuleAnalyzer

    package, _, attr = name.rpartition(".")
    candidates = [package, *sorted(m for m in sys.modules if m.startswith(package + "."))]
    for modname in candidates:
        module = sys.modules.get(modname)
        if module is None or getattr(module, attr, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except Exception:  # no source (compiled or dynamic module)
            continue
        if ("", attr) in docs:
            lines[:] = list(docs[("", attr)])
            return


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _reexported_data_doc)
    # sphinx-mathjax-offline only copies its files once the build has finished, but does not
    # declare that it is safe in parallel: say so, or a ``-j`` build warns (an error under -W).
    mathjax_offline = app.extensions.get("sphinx-mathjax-offline")
    if mathjax_offline is not None:
        mathjax_offline.parallel_read_safe = mathjax_offline.parallel_write_safe = True
