"""Running an example script or a tutorial the way the test suite does (one shared runner)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TUTORIALS = EXAMPLES / "tutorials"


def run_script(path: Path, monkeypatch, tmp_path: Path, capsys, *argv: str, **env: str) -> str:
    """Run ``path`` as ``__main__`` with ``argv``, in ``tmp_path``, on one thread, in the fast
    mode (``GRAPHRERANK_FAST=1``) with the extra environment ``env``; return what it printed."""
    monkeypatch.chdir(tmp_path)  # whatever it writes lands here
    monkeypatch.setenv("GRAPHRERANK_FAST", "1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", [path.name, *argv])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out
