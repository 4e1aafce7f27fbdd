"""The built HTML docs render their math with no network.

Each page is opened from disk in headless Chromium with every network request refused, and the
rendered DOM is checked: every math element of the page became MathJax output (``mjx-container``)
and the visible text has no raw ``\\(`` or ``\\[`` delimiter left.

Needs the built docs and Chromium, and is skipped without them (so a plain ``pytest`` passes on a
machine with neither). CI installs Chromium, builds the docs, then runs this file explicitly:

    GRAPHRERANK_FAST=1 .venv/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
    .venv/bin/python -m pytest -q tests/test_docs_render.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

HTML = Path(__file__).resolve().parents[1] / "docs" / "_build" / "html"

#: Built pages with math: two tutorials and an API page.
PAGES = [
    "tutorials/tutorial_diffusion.html",
    "tutorials/tutorial_kreciprocal_gnn.html",
    "api/diffusion.html",
]

#: The names the browser is installed under (Debian's package installs /usr/bin/chromium).
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Headless, no profile state, nothing fetched in the background, and no network at all: every
#: host name fails to resolve and every request goes to a proxy that is not there (so literal IP
#: addresses fail too); file:// pages are unaffected.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--virtual-time-budget=10000",
    "--dump-dom",
]

pytestmark = pytest.mark.docs_render


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no Chromium installed ({', '.join(BROWSERS)} not on PATH)")


class _Page(HTMLParser):
    """The text a reader sees (no script or style bodies) and the rendered math elements."""

    HIDDEN = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.containers = 0
        self.errors = 0
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self._hidden += 1
        elif tag == "mjx-container":
            self.containers += 1
        elif tag == "mjx-merror":
            self.errors += 1

    def handle_endtag(self, tag):
        if tag in self.HIDDEN and self._hidden:
            self._hidden -= 1

    def handle_data(self, data):
        if not self._hidden:
            self.text.append(data)


def _remote_scripts(html: str) -> list[str]:
    return re.findall(r"<script[^>]*\ssrc=\"((?:https?:)?//[^\"]+)\"", html)


@pytest.mark.parametrize("page", PAGES)
def test_math_renders_offline(page, tmp_path):
    path = HTML / page
    if not path.is_file():
        pytest.skip(f"docs not built ({path} missing): build them with sphinx into {HTML}")
    browser = _browser()
    source = path.read_text(encoding="utf-8")
    expected = len(re.findall(r"class=\"math notranslate nohighlight\"", source))
    assert expected, f"{page} has no math to render: pick another page"

    result = subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"chromium failed ({result.returncode}):\n{result.stderr}"
    assert "<html" in result.stdout, f"chromium dumped no DOM:\n{result.stderr}"

    rendered = _Page()
    rendered.feed(result.stdout)
    text = "".join(rendered.text)
    raw = [m.group(0) for m in re.finditer(r".{0,30}\\[(\[].{0,30}", text)]
    remote = _remote_scripts(source)
    hint = (
        f" (the page loads {remote}, which needs the network: rebuild the docs)" if remote else ""
    )
    assert rendered.containers >= expected, (
        f"{page}: {rendered.containers} rendered math elements (mjx-container) for {expected} "
        f"math elements{hint}"
    )
    assert not raw, f"{page}: raw LaTeX delimiters left in the rendered text{hint}: {raw[:5]}"
    assert not rendered.errors, f"{page}: {rendered.errors} MathJax errors (mjx-merror)"
