"""The scheduler's settings: one frozen dataclass, loaded by :func:`protocol.config.load`."""

from __future__ import annotations

import os
from dataclasses import dataclass

from protocol.framing import DEFAULT_MAX_FRAME


def default_local_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True, slots=True)
class SchedulerSettings:
    host: str = "127.0.0.1"
    port: int = 7070
    local_workers: int = default_local_workers()
    handlers: tuple[str, ...] = ()
    max_frame_bytes: int = DEFAULT_MAX_FRAME
    max_tasks_per_submit: int = 100_000
    result_ttl_s: float = 600.0
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console

    def __post_init__(self) -> None:
        if self.local_workers < 0:
            raise ValueError(f"local_workers must be >= 0, got {self.local_workers}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.max_frame_bytes < 1024:
            raise ValueError(f"max_frame_bytes must be at least 1024, got {self.max_frame_bytes}")
