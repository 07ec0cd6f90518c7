"""execute(): execution wire in, result wire out."""

from __future__ import annotations

from protocol.model import Result, Task, TaskKind, TaskState
from tests.worker import handlers_sample  # noqa: F401 (registers the sample handlers)
from worker.execute import cancelled_result, execute

# Always present; exit_code, stdout, stderr, value and error only when not null/empty.
REQUIRED_KEYS = {"id", "state", "attempt", "started", "finished", "worker"}


def test_shell_task_failure_result() -> None:
    task = Task(id="s1", job="j", kind=TaskKind.SHELL, cmd="sh -c 'echo oops >&2; exit 3'")
    result = execute(task.execution_wire(2), worker_id="w7")
    assert set(result) == REQUIRED_KEYS | {"exit_code", "stderr", "error"}  # no stdout
    assert result["id"] == "s1"
    assert result["state"] == "failed"
    assert result["exit_code"] == 3
    assert result["stderr"] == "oops\n"
    assert result["error"] == "exit code 3"
    assert result["attempt"] == 2
    assert result["worker"] == "w7"
    assert result["started"] <= result["finished"]


def test_shell_task_success_result_decodes_as_a_result() -> None:
    task = Task(id="s2", job="j", kind=TaskKind.SHELL, cmd="expr 2 + 2")
    result = Result.from_wire(execute(task.execution_wire(1), worker_id="w"))
    assert result.state is TaskState.SUCCEEDED
    assert result.exit_code == 0
    assert result.stdout == "4\n"


def test_shell_timeout_result() -> None:
    task = Task(id="s3", job="j", kind=TaskKind.SHELL, cmd="sleep 30", timeout_s=0.2)
    result = execute(task.execution_wire(1), worker_id="w", kill_grace_s=0.5)
    assert result["state"] == "timed_out"
    assert result["finished"] - result["started"] < 10


def test_call_task_result() -> None:
    task = Task(id="c1", job="j", kind=TaskKind.CALL, fn="add", args=[20, 22])
    result = execute(task.execution_wire(1), worker_id="w")
    assert set(result) == REQUIRED_KEYS | {"value"}  # empty outputs are left out
    assert result["state"] == "succeeded"
    assert type(result["state"]) is str
    assert result["value"] == 42
    decoded = Result.from_wire(result)  # a left-out field reads as null / empty
    assert decoded.exit_code is None and decoded.stdout == "" and decoded.error is None


def test_call_task_failure_result() -> None:
    task = Task(id="c2", job="j", kind=TaskKind.CALL, fn="fail", args=["nope"])
    result = execute(task.execution_wire(3), worker_id="w")
    assert result["state"] == "failed"
    assert result["error"] == "RuntimeError: nope"
    assert result["attempt"] == 3


def test_malformed_tasks_fail_instead_of_raising() -> None:
    bad_kind = execute({"id": "x", "kind": "lambda", "attempt": 1}, worker_id="w")
    assert bad_kind["state"] == "failed"
    assert bad_kind["error"] == "invalid task: kind must be 'shell' or 'call', got 'lambda'"
    no_cmd = execute({"id": "y", "kind": "shell", "cmd": None}, worker_id="w")
    assert no_cmd["error"] == "invalid task: cmd must be a string"
    no_fn = execute({"id": "z", "kind": "call"}, worker_id="w")
    assert no_fn["error"] == "invalid task: fn must be a string"


def test_cancelled_result_never_started() -> None:
    task = Task(id="q", job="j", kind=TaskKind.CALL, fn="noop")
    result = cancelled_result(task.execution_wire(1), worker_id="w")
    assert set(result) == REQUIRED_KEYS | {"error"}
    assert result["state"] == "cancelled"
    assert result["started"] is None
    assert result["finished"] is not None
