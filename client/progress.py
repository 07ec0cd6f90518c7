"""Progress of a long run on stderr: a live bar on a terminal, plain lines otherwise.

On a terminal (stdout and stderr both TTYs) the bar is redrawn at most ten times a
second: ``[#########.........]  45%  900/2000  310 tasks/s  ETA 4s  2 failed``.
Otherwise (a log file, CI) a plain line is written every ``plain_interval_s``
(default 10 s) so a long run still shows life without flooding the log. stdout is
never touched: ``--json`` keeps its last line for the summary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

MIN_INTERVAL_S = 0.1
PLAIN_INTERVAL_S = 10.0
BAR_WIDTH = 24


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(
        self,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval_s: float = MIN_INTERVAL_S,
        plain_interval_s: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = _is_tty(sys.stdout) and _is_tty(self.stream)
        self.enabled = True if enabled is None else enabled
        if enabled is True:
            self.live = True  # asked for explicitly: draw the bar
        self.total = total
        self.interval_s = interval_s if self.live else plain_interval_s
        self.clock = clock
        self.started = clock()
        self._last_draw = clock()  # the first plain line comes one interval in
        self._drawn = False

    def render(self, done: int, failed: int, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{done}/{self.total}" if self.total is not None else str(done)
        parts = []
        if self.total:
            fraction = min(1.0, done / self.total)
            if self.live:
                filled = int(BAR_WIDTH * fraction)
                parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
            parts.append(f"{100 * fraction:3.0f}%")
        parts += [count, f"{rate:.0f} tasks/s"]
        if self.total and rate > 0 and done < self.total:
            parts.append(f"ETA {_duration((self.total - done) / rate)}")
        if failed:
            parts.append(f"{failed} failed")
        return "  ".join(parts)

    def update(self, done: int, failed: int = 0, *, total: int | None = None) -> None:
        """Redraw (or print a line) when the last one is at least an interval old."""
        if not self.enabled:
            return
        if total is not None:
            self.total = total
        now = self.clock()
        if now - self._last_draw < self.interval_s:
            return
        self._last_draw = now
        if self.live:
            self.stream.write("\r\x1b[K" + self.render(done, failed, now))
            self._drawn = True
        else:
            self.stream.write("taskmill: " + self.render(done, failed, now) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar (the caller prints the final summary)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
