"""What the scheduler keeps per job and per task. Plain data, no I/O."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from protocol.model import Task, TaskState

QUEUED = TaskState.QUEUED


class TaskRecord:
    """A task and everything the scheduler knows about it.

    Slotted and small: a million queued tasks must fit in well under a GiB.
    """

    __slots__ = (
        "attempt",
        "history",
        "job",
        "result",
        "retry_at",
        "started",
        "state",
        "submitted",
        "task",
        "worker",
    )

    def __init__(self, task: Task, job: Job, submitted: float) -> None:
        self.task = task
        self.job = job
        self.state = QUEUED
        self.attempt = 0  # attempts started so far
        self.worker: str | None = None
        self.submitted = submitted
        self.started: float | None = None
        self.result: dict[str, Any] | None = None
        self.retry_at: float | None = None  # set while waiting out a retry back-off
        self.history: list[dict[str, Any]] | None = None  # earlier attempts, when retried

    def info(self) -> dict[str, Any]:
        """The task's status as sent to clients."""
        out: dict[str, Any] = {
            "id": self.task.id,
            "job": self.job.id,
            "kind": self.task.kind.value,
            "user": self.task.user,
            "priority": self.task.priority,
            "state": self.state.value,
            "attempt": self.attempt,
            "max_attempts": self.task.max_attempts,
            "worker": self.worker,
            "submitted": self.submitted,
            "started": self.started,
            "finished": None,
            "retry_at": self.retry_at,
            "attempts": self.history or [],
        }
        if self.result is not None:
            out["finished"] = self.result.get("finished")
            out["result"] = self.result
        return out


@dataclass(slots=True, eq=False)
class Job:
    id: str
    created: float
    sealed: bool = False
    total: int = 0
    tasks: list[TaskRecord] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)  # in order of completion
    # How many of ``results`` the journal holds: only those are ever sent to clients,
    # so a restarted scheduler never contradicts what a client already saw.
    durable: int = 0
    counts: dict[TaskState, int] = field(default_factory=lambda: dict.fromkeys(TaskState, 0))
    collected_at: float | None = None  # when a stream delivered the final result

    @property
    def done(self) -> bool:
        return self.sealed and len(self.results) == self.total

    @property
    def durably_done(self) -> bool:
        return self.sealed and self.durable == self.total

    def status(self) -> dict[str, Any]:
        return {
            "kind": "job",
            "job": self.id,
            "counts": {state.value: n for state, n in self.counts.items()},
            "total": self.total,
            "finished": len(self.results),
            "sealed": self.sealed,
            "done": self.done,
        }


def new_job_id() -> str:
    return "j" + os.urandom(6).hex()
