"""The task and result model shared by every component.

A :class:`Task` is what a client asks for; a :class:`Result` is what comes back.
Both convert to and from plain dicts (their wire form) with short, stable keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class TaskKind(StrEnum):
    SHELL = "shell"
    CALL = "call"


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED}
)
ALL_STATES = tuple(TaskState)

DEFAULT_USER = "default"
TAIL_BYTES = 4096  # stdout/stderr tails kept per task


@dataclass(slots=True, kw_only=True)
class Task:
    """One unit of work. ``cmd`` for shell tasks, ``fn``/``args``/``kwargs`` for calls."""

    id: str
    job: str
    kind: TaskKind
    cmd: str | None = None
    fn: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    user: str = DEFAULT_USER
    priority: int = 0
    timeout_s: float | None = None
    max_attempts: int = 1

    def execution_wire(self, attempt: int) -> dict[str, Any]:
        """What a worker needs to run one attempt: no scheduling fields."""
        if self.kind is TaskKind.SHELL:
            return {
                "id": self.id,
                "kind": "shell",
                "cmd": self.cmd,
                "timeout_s": self.timeout_s,
                "attempt": attempt,
            }
        return {
            "id": self.id,
            "kind": "call",
            "fn": self.fn,
            "args": self.args,
            "kwargs": self.kwargs,
            "timeout_s": self.timeout_s,
            "attempt": attempt,
        }

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "job": self.job,
            "kind": self.kind.value,
            "user": self.user,
            "priority": self.priority,
            "timeout_s": self.timeout_s,
            "max_attempts": self.max_attempts,
        }
        if self.kind is TaskKind.SHELL:
            wire["cmd"] = self.cmd
        else:
            wire["fn"] = self.fn
            wire["args"] = self.args
            wire["kwargs"] = self.kwargs
        return wire


@dataclass(slots=True, kw_only=True)
class Result:
    """The outcome of a task's last attempt."""

    id: str
    state: TaskState
    job: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    value: Any = None
    error: str | None = None
    worker: str | None = None
    attempt: int = 1
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None

    @property
    def ok(self) -> bool:
        return self.state is TaskState.SUCCEEDED

    @property
    def duration_s(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job,
            "state": self.state.value,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "value": self.value,
            "error": self.error,
            "worker": self.worker,
            "attempt": self.attempt,
            "submitted": self.submitted,
            "started": self.started,
            "finished": self.finished,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Result:
        """Trusting decode of a result produced by a taskmill component."""
        return cls(
            id=wire["id"],
            state=TaskState(wire["state"]),
            job=wire.get("job", ""),
            exit_code=wire.get("exit_code"),
            stdout=wire.get("stdout") or "",
            stderr=wire.get("stderr") or "",
            value=wire.get("value"),
            error=wire.get("error"),
            worker=wire.get("worker"),
            attempt=wire.get("attempt", 1),
            submitted=wire.get("submitted"),
            started=wire.get("started"),
            finished=wire.get("finished"),
        )


def tail_text(data: bytes, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes of output as text, never failing on bad UTF-8."""
    if len(data) > limit:
        data = data[-limit:]
    return data.decode("utf-8", errors="replace")
