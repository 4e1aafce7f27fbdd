"""What every part of the command line shares: the program's name, its exit statuses and its
error type (nothing here imports torch: ``graphrerank --help`` reads only this and the parser)."""

from __future__ import annotations

__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "EXIT_ROW_FAILED", "PROG", "CLIError"]

#: The program's name, in usage lines, error messages and the recorded command lines.
PROG = "graphrerank"

#: Exit status: every row has its result.
EXIT_OK = 0
#: Exit status: at least one re-ranker failed or was skipped; the other rows are complete.
EXIT_ROW_FAILED = 1
#: Exit status: bad options, files or settings (nothing was run); also argparse's usage errors.
EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """A problem with the command line's input (reported without a traceback, exit status 2)."""
