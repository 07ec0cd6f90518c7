"""The message schema: every message is a map with an ``op``.

Client requests carry an integer ``rid``; replies echo it. :func:`parse_request`
turns an untrusted decoded frame into a typed request or raises
:class:`ValidationError` with a stable code and a message naming the bad field.
Replies are built by the helpers at the bottom so their shape lives in one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.errors import ErrorCode, ValidationError
from protocol.model import DEFAULT_USER, Task, TaskKind

PROTOCOL_VERSION = 1
MAX_ID_LEN = 256
MAX_USER_LEN = 128
MAX_ATTEMPTS_LIMIT = 100
PRIORITY_LIMIT = 2**31


# --- typed requests -----------------------------------------------------------------


@dataclass(slots=True, frozen=True, kw_only=True)
class Hello:
    rid: int
    version: int
    client: str = ""
    key: str | None = None  # protocol.auth.key_id of the client's secret, if it has one


@dataclass(slots=True, frozen=True, kw_only=True)
class Auth:
    """The answer to a ``hello`` challenge: ``mac = protocol.auth.prove(...)``."""

    rid: int
    mac: str


@dataclass(slots=True, frozen=True, kw_only=True)
class Submit:
    """A batch of tasks for one job. ``job=None`` opens a new job.

    ``final`` seals the job: no more tasks will be added, so a result stream can end.
    """

    rid: int
    tasks: list[Task]
    job: str | None = None
    final: bool = True


@dataclass(slots=True, frozen=True, kw_only=True)
class Results:
    """Stream a job's results from position ``since``; ``follow`` waits for the rest."""

    rid: int
    job: str
    follow: bool = True
    since: int = 0


@dataclass(slots=True, frozen=True, kw_only=True)
class Status:
    rid: int
    id: str


@dataclass(slots=True, frozen=True, kw_only=True)
class Cancel:
    rid: int
    id: str


@dataclass(slots=True, frozen=True, kw_only=True)
class Stats:
    rid: int


@dataclass(slots=True, frozen=True, kw_only=True)
class Ping:
    rid: int


Request = Hello | Auth | Submit | Results | Status | Cancel | Stats | Ping


# --- field checks ----------------------------------------------------------------------


def _fail(rid: int | None, code: ErrorCode, message: str) -> ValidationError:
    return ValidationError(message, code=code, rid=rid)


def _type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def _str(
    msg: dict[str, Any], key: str, rid: int | None, *, where: str = "", max_len: int = 0
) -> str:
    value = msg.get(key)
    if value is None:
        raise _fail(rid, ErrorCode.MISSING_FIELD, f"{where}{key} is required")
    if not isinstance(value, str) or not value:
        raise _fail(
            rid,
            ErrorCode.INVALID_FIELD,
            f"{where}{key} must be a non-empty string, got {_type_name(value)}",
        )
    if max_len and len(value) > max_len:
        raise _fail(
            rid, ErrorCode.INVALID_FIELD, f"{where}{key} is longer than {max_len} characters"
        )
    return value


def _opt_str(
    msg: dict[str, Any], key: str, rid: int | None, *, where: str = "", max_len: int = 0
) -> str | None:
    if msg.get(key) is None:
        return None
    return _str(msg, key, rid, where=where, max_len=max_len)


def _int(
    msg: dict[str, Any],
    key: str,
    default: int,
    rid: int | None,
    *,
    lo: int,
    hi: int,
    where: str = "",
) -> int:
    value = msg.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(
            rid,
            ErrorCode.INVALID_FIELD,
            f"{where}{key} must be an integer, got {_type_name(value)}",
        )
    if not lo <= value <= hi:
        raise _fail(
            rid, ErrorCode.INVALID_FIELD, f"{where}{key} must be between {lo} and {hi}, got {value}"
        )
    return value


def _bool(msg: dict[str, Any], key: str, default: bool, rid: int | None) -> bool:
    value = msg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _fail(
            rid, ErrorCode.INVALID_FIELD, f"{key} must be a boolean, got {_type_name(value)}"
        )
    return value


def _timeout(msg: dict[str, Any], rid: int | None, where: str) -> float | None:
    value = msg.get("timeout_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(
            rid,
            ErrorCode.INVALID_FIELD,
            f"{where}timeout_s must be a number, got {_type_name(value)}",
        )
    if not (value > 0 and math.isfinite(value)):
        raise _fail(rid, ErrorCode.INVALID_FIELD, f"{where}timeout_s must be positive, got {value}")
    return float(value)


_NO_ARGS: list[Any] = []
_NO_KWARGS: dict[str, Any] = {}

_TASK_KEYS = frozenset(
    {"id", "cmd", "fn", "args", "kwargs", "user", "priority", "timeout_s", "max_attempts", "kind"}
)


_PLAIN_CALL_KEYS = frozenset({"id", "fn", "args", "kwargs"})
_PLAIN_SHELL_KEYS = frozenset({"id", "cmd"})


def _parse_plain_task(raw: dict[str, Any], user: str, priority: int) -> Task | None:
    """The common task, ``{id, fn[, args, kwargs]}`` or ``{id, cmd}``, when plainly valid.

    A submit of 20,000 no-op calls spent a quarter of the scheduler's time in
    :func:`parse_task`; this path checks the same rules with fewer steps. Anything
    it is not sure of returns None, and the full validation (with its error
    messages) runs instead, so the two cannot disagree on what is accepted.
    """
    keys = raw.keys()
    task_id = raw.get("id")
    if task_id is None:
        task_id = ""
    elif type(task_id) is not str or not task_id or len(task_id) > MAX_ID_LEN:
        return None
    if keys <= _PLAIN_CALL_KEYS:
        fn = raw.get("fn")
        if type(fn) is not str or not fn or len(fn) > MAX_ID_LEN:
            return None
        args = raw.get("args")
        if args is None:
            args = []
        elif type(args) is not list:
            return None
        kwargs = raw.get("kwargs")
        if kwargs is None:
            kwargs = {}
        elif type(kwargs) is not dict or not all(type(k) is str for k in kwargs):
            return None
        return Task(
            id=task_id,
            job="",
            kind=TaskKind.CALL,
            fn=fn,
            args=args,
            kwargs=kwargs,
            user=user,
            priority=priority,
        )
    if keys <= _PLAIN_SHELL_KEYS:
        cmd = raw.get("cmd")
        if type(cmd) is not str or not cmd:
            return None
        return Task(
            id=task_id,
            job="",
            kind=TaskKind.SHELL,
            cmd=cmd,
            args=_NO_ARGS,
            kwargs=_NO_KWARGS,
            user=user,
            priority=priority,
        )
    return None


def parse_task(
    raw: Any, *, rid: int | None = None, index: int = 0, user: str = DEFAULT_USER, priority: int = 0
) -> Task:
    """Validate one task map. ``user``/``priority`` are the batch defaults.

    The returned task has ``job=""`` and, when the client gave none, ``id=""``:
    the scheduler fills both in.
    """
    if type(raw) is dict:
        fast = _parse_plain_task(raw, user, priority)
        if fast is not None:
            return fast
    where = f"tasks[{index}]."
    if not isinstance(raw, dict):
        raise _fail(
            rid, ErrorCode.INVALID_FIELD, f"tasks[{index}] must be a map, got {_type_name(raw)}"
        )
    unknown = raw.keys() - _TASK_KEYS
    if unknown:
        raise _fail(
            rid,
            ErrorCode.INVALID_FIELD,
            f"{where[:-1]} has unknown field(s): {', '.join(sorted(map(str, unknown)))}",
        )
    task_id = _opt_str(raw, "id", rid, where=where, max_len=MAX_ID_LEN) or ""
    task_user = _opt_str(raw, "user", rid, where=where, max_len=MAX_USER_LEN) or user
    task_priority = _int(
        raw, "priority", priority, rid, lo=-PRIORITY_LIMIT, hi=PRIORITY_LIMIT, where=where
    )
    max_attempts = _int(raw, "max_attempts", 1, rid, lo=1, hi=MAX_ATTEMPTS_LIMIT, where=where)
    timeout_s = _timeout(raw, rid, where)
    has_cmd, has_fn = raw.get("cmd") is not None, raw.get("fn") is not None
    kind = raw.get("kind")
    if kind is not None and kind not in ("shell", "call"):
        raise _fail(
            rid, ErrorCode.INVALID_FIELD, f"{where}kind must be 'shell' or 'call', got {kind!r}"
        )
    if has_cmd and has_fn:
        raise _fail(rid, ErrorCode.INVALID_FIELD, f"{where[:-1]} has both cmd and fn; give one")
    if has_cmd:
        if kind == "call":
            raise _fail(
                rid, ErrorCode.INVALID_FIELD, f"{where}kind is 'call' but the task has a cmd"
            )
        return Task(
            id=task_id,
            job="",
            kind=TaskKind.SHELL,
            cmd=_str(raw, "cmd", rid, where=where),
            # Shell tasks never use args/kwargs: share one empty pair instead of
            # allocating 120 bytes per task (a million queued tasks is 120 MB).
            args=_NO_ARGS,
            kwargs=_NO_KWARGS,
            user=task_user,
            priority=task_priority,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
        )
    if has_fn:
        if kind == "shell":
            raise _fail(
                rid, ErrorCode.INVALID_FIELD, f"{where}kind is 'shell' but the task has an fn"
            )
        args = raw.get("args")
        if args is None:
            args = []
        elif not isinstance(args, list):
            raise _fail(
                rid,
                ErrorCode.INVALID_FIELD,
                f"{where}args must be an array, got {_type_name(args)}",
            )
        kwargs = raw.get("kwargs")
        if kwargs is None:
            kwargs = {}
        elif not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise _fail(
                rid, ErrorCode.INVALID_FIELD, f"{where}kwargs must be a map with string keys"
            )
        return Task(
            id=task_id,
            job="",
            kind=TaskKind.CALL,
            fn=_str(raw, "fn", rid, where=where, max_len=MAX_ID_LEN),
            args=args,
            kwargs=kwargs,
            user=task_user,
            priority=task_priority,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
        )
    raise _fail(
        rid, ErrorCode.MISSING_FIELD, f"{where[:-1]} needs a cmd (shell task) or an fn (call task)"
    )


# --- requests --------------------------------------------------------------------------


def _parse_hello(msg: dict[str, Any], rid: int) -> Hello:
    version = _int(msg, "version", PROTOCOL_VERSION, rid, lo=0, hi=2**31)
    client = msg.get("client") or ""
    if not isinstance(client, str):
        raise _fail(
            rid, ErrorCode.INVALID_FIELD, f"client must be a string, got {_type_name(client)}"
        )
    return Hello(rid=rid, version=version, client=client, key=_opt_str(msg, "key", rid, max_len=64))


def _parse_submit(msg: dict[str, Any], rid: int) -> Submit:
    raw_tasks = msg.get("tasks")
    if raw_tasks is None:
        raise _fail(rid, ErrorCode.MISSING_FIELD, "tasks is required")
    if not isinstance(raw_tasks, list):
        raise _fail(
            rid, ErrorCode.INVALID_FIELD, f"tasks must be an array, got {_type_name(raw_tasks)}"
        )
    user = _opt_str(msg, "user", rid, max_len=MAX_USER_LEN) or DEFAULT_USER
    priority = _int(msg, "priority", 0, rid, lo=-PRIORITY_LIMIT, hi=PRIORITY_LIMIT)
    tasks = [
        parse_task(raw, rid=rid, index=i, user=user, priority=priority)
        for i, raw in enumerate(raw_tasks)
    ]
    return Submit(
        rid=rid,
        tasks=tasks,
        job=_opt_str(msg, "job", rid, max_len=MAX_ID_LEN),
        final=_bool(msg, "final", True, rid),
    )


def _parse_results(msg: dict[str, Any], rid: int) -> Results:
    return Results(
        rid=rid,
        job=_str(msg, "job", rid, max_len=MAX_ID_LEN),
        follow=_bool(msg, "follow", True, rid),
        since=_int(msg, "since", 0, rid, lo=0, hi=2**62),
    )


def _parse_status(msg: dict[str, Any], rid: int) -> Status:
    return Status(rid=rid, id=_str(msg, "id", rid, max_len=MAX_ID_LEN))


def _parse_cancel(msg: dict[str, Any], rid: int) -> Cancel:
    return Cancel(rid=rid, id=_str(msg, "id", rid, max_len=MAX_ID_LEN))


_PARSERS: dict[str, Callable[[dict[str, Any], int], Request]] = {
    "hello": _parse_hello,
    "auth": lambda msg, rid: Auth(rid=rid, mac=_str(msg, "mac", rid, max_len=128)),
    "submit": _parse_submit,
    "results": _parse_results,
    "status": _parse_status,
    "cancel": _parse_cancel,
    "stats": lambda msg, rid: Stats(rid=rid),
    "ping": lambda msg, rid: Ping(rid=rid),
}
REQUEST_OPS = frozenset(_PARSERS)


def parse_request(msg: Any) -> Request:
    """Validate a decoded frame from a client into a typed request."""
    if not isinstance(msg, dict):
        raise _fail(None, ErrorCode.BAD_MESSAGE, f"a message must be a map, got {_type_name(msg)}")
    raw_rid = msg.get("rid")
    rid = raw_rid if isinstance(raw_rid, int) and not isinstance(raw_rid, bool) else None
    op = msg.get("op")
    if op is None:
        raise _fail(rid, ErrorCode.BAD_MESSAGE, "a message needs an op")
    if not isinstance(op, str):
        raise _fail(rid, ErrorCode.BAD_MESSAGE, f"op must be a string, got {_type_name(op)}")
    parser = _PARSERS.get(op)
    if parser is None:
        raise _fail(
            rid,
            ErrorCode.UNKNOWN_OP,
            f"unknown op {op!r}; known ops: {', '.join(sorted(_PARSERS))}",
        )
    if rid is None:
        raise _fail(
            None, ErrorCode.BAD_MESSAGE, f"{op} needs an integer rid, got {_type_name(raw_rid)}"
        )
    return parser(msg, rid)


# --- replies ---------------------------------------------------------------------------


def reply(op: str, rid: int, **fields: Any) -> dict[str, Any]:
    """A successful reply to request ``rid`` of type ``op``."""
    fields["op"] = op
    fields["rid"] = rid
    return fields


def error_reply(rid: int | None, code: ErrorCode | str, message: str) -> dict[str, Any]:
    return {"op": "error", "rid": rid, "code": str(code), "message": message}


def results_frame(
    rid: int, results: list[dict[str, Any]], *, done: bool, total: int | None = None
) -> dict[str, Any]:
    """One batch of a result stream; ``done`` marks the last frame of the stream."""
    return {"op": "results", "rid": rid, "results": results, "done": done, "total": total}


# --- scheduler <-> local worker process ---------------------------------------------------
# A local worker process speaks the same framing over a socketpair:
#   worker -> scheduler  {"op": "ready", "worker": ID, "pid": PID, "handlers": [NAMES]}
#   worker -> scheduler  {"op": "fatal", "error": MESSAGE}   could not start (bad --handlers)
#   scheduler -> worker  {"op": "run", "tasks": [Task.execution_wire(...), ...]}
#   scheduler -> worker  {"op": "cancel", "ids": [ID, ...]}
#   scheduler -> worker  {"op": "stop"}            finish the batch in hand, then exit
#   worker -> scheduler  {"op": "results", "results": [result wire, ...]}
# A result wire from a worker has: id, state, attempt, started, finished, worker, and
# exit_code, stdout, stderr, value, error unless null or empty (a missing one reads as
# null, or "" for stdout/stderr); the scheduler adds job and submitted.

W_READY = "ready"
W_FATAL = "fatal"
W_RUN = "run"
W_CANCEL = "cancel"
W_STOP = "stop"
W_RESULTS = "results"
