"""When to retry a task and how long to wait: pure functions."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    retry_on: frozenset[str] = frozenset({"failed", "timed_out"})
    base_s: float = 1.0
    max_s: float = 60.0

    def should_retry(self, state: str, attempt: int, max_attempts: int) -> bool:
        return attempt < max_attempts and state in self.retry_on

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential back-off with jitter after attempt ``attempt`` (1-based).

        The delay is drawn between half and all of the exponential step, so a burst
        of failures is retried spread out, not in lock-step, yet never at once.
        """
        if self.base_s <= 0:
            return 0.0
        cap = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        draw = (rng or random).uniform(0.5, 1.0)
        return float(cap * draw)
