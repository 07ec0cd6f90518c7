"""Numbers for the monitor, /metrics and health checks: pure code, fed by the scheduler.

Nothing here costs a syscall or an allocation per task: the histogram is a list of
counters, the sampler keeps one small tuple per second, and health is a function
of a snapshot.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Histogram:
    """Cumulative-on-read histogram with fixed upper bounds (Prometheus style)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass(slots=True, frozen=True)
class Sample:
    t: float
    submitted: int
    finished: int
    queued: int
    running: int


@dataclass(slots=True)
class Sampler:
    """One sample per tick (the scheduler ticks it every second), ten minutes kept."""

    keep: int = 600
    samples: deque[Sample] = field(default_factory=deque)
    # When the finished count last moved, or work first appeared while idle.
    last_progress: float | None = None

    def add(self, sample: Sample) -> None:
        prev = self.samples[-1] if self.samples else None
        if prev is None or sample.finished != prev.finished or (prev.queued == 0 < sample.queued):
            self.last_progress = sample.t
        self.samples.append(sample)
        while len(self.samples) > self.keep:
            self.samples.popleft()

    def series(self) -> list[dict[str, float]]:
        """Per second: throughput (finished per second), queue depth, running."""
        out: list[dict[str, float]] = []
        prev: Sample | None = None
        for s in self.samples:
            rate = 0.0
            if prev is not None and s.t > prev.t:
                rate = (s.finished - prev.finished) / (s.t - prev.t)
            out.append({"t": s.t, "throughput": rate, "queued": s.queued, "running": s.running})
            prev = s
        return out

    def throughput(self, window_s: float = 60.0) -> float:
        if len(self.samples) < 2:
            return 0.0
        last = self.samples[-1]
        first = next((s for s in self.samples if last.t - s.t <= window_s), last)
        if last.t <= first.t:
            return 0.0
        return (last.finished - first.finished) / (last.t - first.t)


def health_problems(
    *,
    now: float,
    workers: int,
    remote: bool,
    fleet_slots: int,
    queued: int,
    last_progress: float | None,
    stuck_after_s: float,
    aws_error: str | None,
    journal_error: str | None = None,
) -> list[str]:
    """Why the scheduler is unhealthy; empty when it is fine.

    The seed's "LB HAS NO WORKERS" warning, plus a stuck queue and AWS trouble.
    """
    problems: list[str] = []
    if workers == 0 and not (remote and fleet_slots > 0):
        where = "no local workers and no remote workers registered" if remote else "no workers"
        problems.append(f"the scheduler has {where}: queued tasks cannot run")
    if queued > 0 and last_progress is not None and now - last_progress > stuck_after_s:
        problems.append(
            f"the queue is stuck: {queued} tasks queued and none finished "
            f"in the last {now - last_progress:.0f} s"
        )
    if aws_error:
        problems.append(f"AWS is unreachable: {aws_error}")
    if journal_error:
        problems.append(f"the journal cannot be written: {journal_error}")
    return problems
