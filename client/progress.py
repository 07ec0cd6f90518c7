"""A one-line progress display on stderr for long runs (a fuller bar comes later).

Shown only when both stdout and stderr are terminals, redrawn at most ten times a
second; otherwise every call is a cheap no-op.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

MIN_INTERVAL_S = 0.1


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    def __init__(
        self,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval_s: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = _is_tty(sys.stdout) and _is_tty(self.stream)
        self.enabled = enabled
        self.total = total
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock()
        self._last_draw = float("-inf")
        self._drawn = False

    def render(self, done: int, failed: int, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{done}/{self.total}" if self.total is not None else str(done)
        text = f"{count} tasks  {rate:.0f} tasks/s"
        if self.total:
            text = f"{100 * done / self.total:3.0f}%  " + text
        if failed:
            text += f"  {failed} failed"
        return text

    def update(self, done: int, failed: int = 0, *, total: int | None = None) -> None:
        """Redraw if enabled and the last redraw is at least ``interval_s`` old."""
        if not self.enabled:
            return
        if total is not None:
            self.total = total
        now = self.clock()
        if now - self._last_draw < self.interval_s:
            return
        self._last_draw = now
        self.stream.write("\r\x1b[K" + self.render(done, failed, now))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the progress line (the caller prints the final summary)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
