"""Turn one execution wire (``Task.execution_wire``) into one result wire.

This is the single entry point the worker process (and any other executor) uses; it
never raises for a task's own faults, so one bad task cannot take down a worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from protocol.model import TaskState
from worker.calls import invoke
from worker.registry import Registry, default_registry
from worker.shell import DEFAULT_KILL_GRACE_S, run_shell

_FAILED = TaskState.FAILED.value
_CANCELLED = TaskState.CANCELLED.value


def _result(
    task: dict[str, Any],
    worker_id: str,
    state: str,
    *,
    exit_code: int | None = None,
    stdout: str = "",
    stderr: str = "",
    value: Any = None,
    error: str | None = None,
    started: float | None = None,
    finished: float | None = None,
) -> dict[str, Any]:
    result = {
        "id": task.get("id"),
        "state": state,
        "attempt": task.get("attempt", 1),
        "started": started,
        "finished": time.time() if finished is None else finished,
        "worker": worker_id,
    }
    _add_outputs(result, exit_code, stdout, stderr, value, error)
    return result


def _add_outputs(
    result: dict[str, Any],
    exit_code: int | None,
    stdout: str,
    stderr: str,
    value: Any,
    error: str | None,
) -> None:
    """Only the outputs a task had: a field left out means null (or ""). Every result
    is decoded by the scheduler and again by the client, and a no-op call's five empty
    fields were half of its keys."""
    if exit_code is not None:
        result["exit_code"] = exit_code
    if stdout:
        result["stdout"] = stdout
    if stderr:
        result["stderr"] = stderr
    if value is not None:
        result["value"] = value
    if error is not None:
        result["error"] = error


def cancelled_result(
    task: dict[str, Any], *, worker_id: str, error: str = "cancelled"
) -> dict[str, Any]:
    """The result of a task cancelled before it started (``started`` stays ``None``)."""
    return _result(task, worker_id, _CANCELLED, error=error)


def failed_result(task: dict[str, Any], *, worker_id: str, error: str) -> dict[str, Any]:
    """The result of a task that could not finish, e.g. its worker process died under it."""
    return _result(task, worker_id, _FAILED, error=error)


def execute(
    task: dict[str, Any],
    *,
    worker_id: str,
    kill_grace_s: float = DEFAULT_KILL_GRACE_S,
    control_fd: int | None = None,
    on_control: Callable[[], bool] | None = None,
    wake_at: float | None = None,
    on_wake: Callable[[], None] | None = None,
    registry: Registry = default_registry,
) -> dict[str, Any]:
    """Run one task and return its result wire.

    The result has: id, state, attempt, started, finished, worker, and those of exit_code,
    stdout, stderr, value and error that are not null or empty. ``control_fd`` /
    ``on_control`` and ``wake_at`` / ``on_wake`` are passed to
    :func:`worker.shell.run_shell` (a call task cannot be interrupted by them).
    """
    kind = task.get("kind")
    if kind == "call":
        fn = task.get("fn")
        if not isinstance(fn, str):
            return _result(task, worker_id, _FAILED, error="invalid task: fn must be a string")
        state, value, error, stderr, started, finished = invoke(
            fn, task.get("args"), task.get("kwargs"), task.get("timeout_s"), registry
        )
        result = {
            "id": task.get("id"),
            "state": state,
            "attempt": task.get("attempt", 1),
            "started": started,
            "finished": finished,
            "worker": worker_id,
        }
        _add_outputs(result, None, "", stderr, value, error)
        return result
    if kind == "shell":
        cmd = task.get("cmd")
        if not isinstance(cmd, str):
            return _result(task, worker_id, _FAILED, error="invalid task: cmd must be a string")
        shell = run_shell(
            cmd,
            timeout_s=task.get("timeout_s"),
            kill_grace_s=kill_grace_s,
            control_fd=control_fd,
            on_control=on_control,
            wake_at=wake_at,
            on_wake=on_wake,
        )
        return _result(
            task,
            worker_id,
            shell.state.value,
            exit_code=shell.exit_code,
            stdout=shell.stdout,
            stderr=shell.stderr,
            error=shell.error,
            started=shell.started,
            finished=shell.finished,
        )
    return _result(
        task,
        worker_id,
        _FAILED,
        error=f"invalid task: kind must be 'shell' or 'call', got {kind!r}",
    )
