"""The documentation sources stay complete: every public name has its place in the API pages."""

import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"

#: The subpackages with an API page (docs/api/<name>.rst).
PAGES = [
    "cli",
    "datasets",
    "diffusion",
    "graph",
    "metrics",
    "models",
    "nn",
    "plot",
    "rerankers",
    "testing",
]


def test_every_subpackage_has_a_page_in_the_index():
    index = (DOCS / "api" / "index.rst").read_text()
    for name in PAGES:
        assert (DOCS / "api" / f"{name}.rst").is_file()
        assert re.search(rf"^\s+{name}$", index, re.M), f"{name} missing from api/index.rst"


@pytest.mark.parametrize("name", PAGES)
def test_api_page_documents_every_public_name(name):
    module = importlib.import_module(f"graphrerank.{name}")
    page = (DOCS / "api" / f"{name}.rst").read_text()
    documented = set(re.findall(r"^\.\. (?:auto\w+|py:\w+):: (?:[\w.]+\.)?(\w+)", page, re.M))
    # a name documented on another page (a function twin) may be linked to instead
    documented |= set(re.findall(r":(?:func|class|data|exc):`~?graphrerank\.[\w.]*?\.(\w+)`", page))
    missing = [n for n in module.__all__ if n not in documented]
    assert not missing, f"docs/api/{name}.rst does not document {missing}"


def test_every_rst_page_is_in_a_toctree():
    pages = {p.relative_to(DOCS).with_suffix("").as_posix() for p in DOCS.rglob("*.rst")}
    pages -= {p for p in pages if p.startswith(("_build", "tutorials", "_generated"))}
    listed = {"index"}
    for p in DOCS.rglob("*.rst"):
        text = p.read_text()
        for block in re.findall(r"\.\. toctree::\n((?:\s*\n|   .*\n)*)", text):
            base = p.parent.relative_to(DOCS)
            for line in block.splitlines():
                entry = line.strip()
                if entry and not entry.startswith(":"):
                    listed.add((base / entry).as_posix().lstrip("./"))
    assert pages <= listed, f"pages in no toctree: {sorted(pages - listed)}"
