"""``python -m graphrerank``: the command line (see :mod:`graphrerank.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
