"""Validation of every request into typed objects, with stable codes."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.errors import ErrorCode, ValidationError
from protocol.messages import Cancel, Results, Submit, parse_request, parse_task
from protocol.model import Result, TaskKind, TaskState


def code_of(msg: Any) -> tuple[ErrorCode, str, int | None]:
    with pytest.raises(ValidationError) as info:
        parse_request(msg)
    return info.value.code, info.value.message, info.value.rid


def test_submit_parses_shell_and_call_tasks() -> None:
    req = parse_request(
        {
            "op": "submit",
            "rid": 7,
            "user": "ann",
            "priority": 3,
            "tasks": [
                {"cmd": "sleep 0"},
                {"fn": "add", "args": [1, 2], "kwargs": {"c": 3}, "priority": 9, "user": "bob"},
                {"cmd": "true", "id": "k1", "timeout_s": 2, "max_attempts": 3},
            ],
        }
    )
    assert isinstance(req, Submit)
    assert req.rid == 7 and req.final is True and req.job is None
    shell, call, keyed = req.tasks
    assert shell.kind is TaskKind.SHELL and shell.user == "ann" and shell.priority == 3
    assert call.kind is TaskKind.CALL and call.fn == "add" and call.args == [1, 2]
    assert call.user == "bob" and call.priority == 9
    assert keyed.id == "k1" and keyed.timeout_s == 2.0 and keyed.max_attempts == 3


@pytest.mark.parametrize(
    ("msg", "code", "fragment"),
    [
        ([1, 2], ErrorCode.BAD_MESSAGE, "must be a map"),
        ({"rid": 1}, ErrorCode.BAD_MESSAGE, "needs an op"),
        ({"op": 5, "rid": 1}, ErrorCode.BAD_MESSAGE, "op must be a string"),
        ({"op": "frobnicate", "rid": 1}, ErrorCode.UNKNOWN_OP, "frobnicate"),
        ({"op": "ping"}, ErrorCode.BAD_MESSAGE, "integer rid"),
        ({"op": "ping", "rid": "1"}, ErrorCode.BAD_MESSAGE, "integer rid"),
        ({"op": "submit", "rid": 1}, ErrorCode.MISSING_FIELD, "tasks is required"),
        (
            {"op": "submit", "rid": 1, "tasks": {}},
            ErrorCode.INVALID_FIELD,
            "tasks must be an array",
        ),
        (
            {"op": "submit", "rid": 1, "tasks": [3]},
            ErrorCode.INVALID_FIELD,
            "tasks[0] must be a map",
        ),
        ({"op": "submit", "rid": 1, "tasks": [{}]}, ErrorCode.MISSING_FIELD, "needs a cmd"),
        (
            {"op": "submit", "rid": 1, "tasks": [{"cmd": 5}]},
            ErrorCode.INVALID_FIELD,
            "tasks[0].cmd",
        ),
        (
            {"op": "submit", "rid": 1, "tasks": [{"cmd": "x"}, {"cmd": "y", "timeout_s": -1}]},
            ErrorCode.INVALID_FIELD,
            "tasks[1].timeout_s",
        ),
        (
            {"op": "submit", "rid": 1, "tasks": [{"cmd": "x", "fn": "y"}]},
            ErrorCode.INVALID_FIELD,
            "both cmd and fn",
        ),
        (
            {"op": "submit", "rid": 1, "tasks": [{"fn": "y", "args": "no"}]},
            ErrorCode.INVALID_FIELD,
            "args must be an array",
        ),
        (
            {"op": "submit", "rid": 1, "tasks": [{"cmd": "x", "bogus": 1}]},
            ErrorCode.INVALID_FIELD,
            "unknown field",
        ),
        (
            {"op": "submit", "rid": 1, "tasks": [{"cmd": "x", "priority": True}]},
            ErrorCode.INVALID_FIELD,
            "priority must be an integer",
        ),
        (
            {"op": "submit", "rid": 1, "tasks": [{"cmd": "x", "max_attempts": 0}]},
            ErrorCode.INVALID_FIELD,
            "max_attempts must be between",
        ),
        ({"op": "submit", "rid": 1, "tasks": [], "final": "yes"}, ErrorCode.INVALID_FIELD, "final"),
        ({"op": "results", "rid": 1}, ErrorCode.MISSING_FIELD, "job is required"),
        ({"op": "status", "rid": 1, "id": ""}, ErrorCode.INVALID_FIELD, "id must be"),
    ],
)
def test_bad_requests_have_stable_codes(msg: Any, code: ErrorCode, fragment: str) -> None:
    got_code, message, rid = code_of(msg)
    assert got_code is code
    assert fragment in message
    if isinstance(msg, dict) and isinstance(msg.get("rid"), int):
        assert rid == msg["rid"]


def test_other_requests() -> None:
    res = parse_request({"op": "results", "rid": 2, "job": "j1", "follow": False, "since": 5})
    assert res == Results(rid=2, job="j1", follow=False, since=5)
    assert parse_request({"op": "cancel", "rid": 3, "id": "t"}) == Cancel(rid=3, id="t")


def test_parse_task_defaults() -> None:
    task = parse_task({"cmd": "echo"}, user="u", priority=4)
    assert (task.user, task.priority, task.max_attempts, task.timeout_s) == ("u", 4, 1, None)
    assert task.id == "" and task.job == ""


def test_result_round_trip() -> None:
    result = Result(id="a", state=TaskState.FAILED, exit_code=3, stderr="boom", attempt=2)
    again = Result.from_wire(result.to_wire())
    assert again == result and not again.ok
