"""The scheduler's settings: one frozen dataclass, loaded by :func:`protocol.config.load`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from protocol.framing import DEFAULT_MAX_FRAME
from protocol.model import TaskState


def default_local_workers() -> int:
    return os.cpu_count() or 1


def default_state_dir() -> str:
    """A per-user data directory: ``$XDG_DATA_HOME/taskmill`` or ``~/.local/share/taskmill``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "taskmill")


@dataclass(frozen=True, slots=True)
class WorkerGroup:
    """``count`` local workers that take only tasks with ``min_p <= priority <= max_p``."""

    count: int
    min_p: int | None = None
    max_p: int | None = None


_GROUP = re.compile(r"^(\d+)(?::(-?\d+)-(-?\d+))?$")


def parse_worker_groups(spec: int | str) -> tuple[WorkerGroup, ...]:
    """Parse ``-lw``: ``N`` or comma-separated ``N`` / ``N:MINP-MAXP`` groups.

    ``4,2:10-99,2:100-1000`` is 4 workers for any priority, 2 reserved for priorities
    10..99 and 2 for 100..1000 (pyLoadBalancer's minP/maxP).
    """
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"local_workers must be >= 0, got {spec}")
        return (WorkerGroup(spec),) if spec else ()
    groups: list[WorkerGroup] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        match = _GROUP.match(part)
        if match is None:
            raise ValueError(f"local_workers: bad group {part!r}: expected N or N:MINP-MAXP")
        count = int(match[1])
        lo = int(match[2]) if match[2] is not None else None
        hi = int(match[3]) if match[3] is not None else None
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"local_workers: bad group {part!r}: MINP is above MAXP")
        if count:
            groups.append(WorkerGroup(count, lo, hi))
    return tuple(groups)


@dataclass(frozen=True, kw_only=True, slots=True)
class SchedulerSettings:
    host: str = "127.0.0.1"
    port: int = 7070
    # "N" or "N:MINP-MAXP,..." groups; an int is N workers for any priority.
    local_workers: int | str = default_local_workers()
    handlers: tuple[str, ...] = ()
    max_frame_bytes: int = DEFAULT_MAX_FRAME
    max_tasks_per_submit: int = 100_000
    max_queued_per_user: int = 100_000
    # Where the journal lives; "none" keeps everything in memory (benchmarks).
    state_dir: str = default_state_dir()
    result_ttl_s: float = 600.0  # after a client collected a job's results
    result_max_age_s: float = 7 * 24 * 3600.0  # after the job was created, collected or not
    retry_on: tuple[str, ...] = ("failed", "timed_out")
    retry_backoff_s: float = 1.0  # first retry delay; doubles per attempt, with jitter
    retry_backoff_max_s: float = 60.0
    kill_grace_s: float = 2.0  # SIGTERM to SIGKILL, for cancelled and timed-out tasks
    # Remote execution through SQS (-rw); queue and table names are in AwsSettings.
    remote: bool = False
    scheduler_id: str = ""  # names the reply queue; default: kept in the state dir
    remote_min_inflight: int = 10_000  # tasks in SQS at least, so an empty fleet can scale
    reply_wait_s: int = 20  # long-poll wait on the reply queue (SQS allows 0-20)
    max_bundle_tasks: int = 1000  # tasks per SQS message at most; 1 turns bundling off
    dead_letter_sweep_s: float = 30.0  # how often to take back our dead-lettered bundles
    # The web monitor, /metrics and /healthz; a negative port turns them off.
    monitor_host: str = "127.0.0.1"
    monitor_port: int = 7071
    stuck_after_s: float = 60.0  # queued work and nothing finished this long: unhealthy
    # Security: a shared secret (TASKMILL_TOKEN) and/or a tokens file ("TOKEN [USER]"
    # lines); listening beyond loopback without one needs insecure=True.
    token: str = ""
    token_file: str = ""
    insecure: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    max_connections: int = 1000
    read_timeout_s: float = 30.0  # a started frame must be complete within this
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.max_frame_bytes < 1024:
            raise ValueError(f"max_frame_bytes must be at least 1024, got {self.max_frame_bytes}")
        if self.max_queued_per_user < 1:
            raise ValueError("max_queued_per_user must be at least 1")
        self.worker_groups  # noqa: B018 - validates the spec early
        allowed = {TaskState.FAILED.value, TaskState.TIMED_OUT.value}
        bad = set(self.retry_on) - allowed
        if bad:
            raise ValueError(
                f"retry_on may hold failed and timed_out, not {', '.join(sorted(bad))}"
            )

    @property
    def worker_groups(self) -> tuple[WorkerGroup, ...]:
        return parse_worker_groups(self.local_workers)

    @property
    def journal_path(self) -> Path | None:
        if self.state_dir.strip().lower() in ("none", ""):
            return None
        return Path(self.state_dir).expanduser() / "journal.sqlite3"
