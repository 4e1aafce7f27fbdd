"""What every part of the command line shares: the program's name and its error type."""

from __future__ import annotations

__all__ = ["PROG", "CLIError"]

#: The program's name, in usage lines, error messages and the recorded command lines.
PROG = "graphrerank"


class CLIError(Exception):
    """A problem with the command line's input (reported without a traceback, exit status 2)."""
