"""Progress reporting for long steps: a bar on a terminal, silence otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "ProgressCallback", "progress_options"]

#: ``callback(done, total)``: called as a long step advances.
ProgressCallback = Callable[[int, int], None]


def progress_options(progress: object) -> tuple[bool | None, ProgressCallback | None]:
    """``(show, callback)`` of :class:`Progress` for a ``progress`` setting: ``None`` (a bar on
    a terminal only), ``True`` / ``False``, or a callback ``callback(done, total)`` (called, no
    bar).

    Raises:
        TypeError: anything else.
    """
    if progress is None or isinstance(progress, bool):
        return progress, None
    if callable(progress):
        return False, progress
    raise TypeError(f"progress must be None, True, False or a callable, got {progress!r}")


class Progress:
    """Report progress of ``total`` units of work.

    Draws a one-line bar on ``stream`` when ``show`` is true, or when ``show`` is ``None`` and
    the stream is a terminal (so logs and pipes stay clean), once the step has run ``delay``
    seconds (short steps draw nothing); calls ``callback(done, total)`` after each update
    when given.

    Example:
        >>> seen = []
        >>> with Progress(3, "solving", show=False, callback=lambda d, t: seen.append(d)) as p:
        ...     for _ in range(3):
        ...         p.update(1)
        >>> seen
        [1, 2, 3]
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        *,
        show: bool | None = None,
        callback: ProgressCallback | None = None,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
        delay: float = 0.0,
    ) -> None:
        self.total = max(int(total), 0)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.show = bool(isatty()) if show is None else bool(show)
        self.callback = callback
        self.done = 0
        self.min_interval = min_interval
        self.delay = delay
        self._drawn = False
        self._start = time.perf_counter()
        self._last = 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Mark ``n`` more units done."""
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        if self.callback is not None:
            self.callback(self.done, self.total)
        if self.show:
            now = time.perf_counter()
            if now - self._start < self.delay:  # short steps draw nothing
                return
            if now - self._last >= self.min_interval or self.done >= self.total:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        elapsed = now - self._start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        self.stream.write(
            f"\r{self.desc} [{bar}] {self.done}/{self.total} {elapsed:.1f}s elapsed, {eta:.1f}s left"
        )
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line."""
        if self.show:
            now = time.perf_counter()
            if self._drawn or now - self._start >= self.delay:
                self._draw(now)
                self.stream.write("\n")
                self.stream.flush()
            self.show = False
