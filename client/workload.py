"""Workload files: what a user asks taskmill to run.

Two formats:

* **text** — one shell command per line; blank lines and lines whose first
  non-blank character is ``#`` are skipped (the seeds' format);
* **JSON Lines** (``.jsonl``/``.ndjson``, or ``format="jsonl"``) — one object per
  line with ``cmd`` or ``fn``/``args``/``kwargs``, and optionally ``id``,
  ``priority``, ``timeout_s``, ``user``, ``max_attempts``.

A whole file is read and validated before anything is submitted: the first broken
line raises :class:`WorkloadError` naming the file and line number.
"""

from __future__ import annotations

import json
import re
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from client.errors import WorkloadError, os_reason
from protocol.errors import ValidationError
from protocol.messages import parse_task

Format = Literal["auto", "text", "jsonl"]
FORMATS: tuple[str, ...] = ("auto", "text", "jsonl")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
STDIN = "-"

# parse_task names fields as ``tasks[0].priority``; in a file, the line number says where.
_WHERE = re.compile(r"^tasks\[\d+\]\.?")


def detect_format(path: str | Path, fmt: str = "auto") -> Literal["text", "jsonl"]:
    """The format to parse ``path`` with: ``fmt`` unless ``auto``, then by suffix."""
    if fmt == "text":
        return "text"
    if fmt == "jsonl":
        return "jsonl"
    if fmt != "auto":
        raise ValueError(f"unknown workload format {fmt!r}; use one of {', '.join(FORMATS)}")
    return "jsonl" if str(path).lower().endswith(JSONL_SUFFIXES) else "text"


def _read_text(path: str | Path) -> str:
    if str(path) == STDIN:
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise WorkloadError(path, "no such workload file") from None
    except UnicodeDecodeError as exc:
        raise WorkloadError(path, f"not UTF-8 text (byte offset {exc.start})") from None
    except OSError as exc:
        raise WorkloadError(path, f"cannot read the workload file: {os_reason(exc)}") from None


def parse_text(text: str) -> list[dict[str, Any]]:
    """Tasks of a plain-text workload: ``{"cmd": line}`` for every command line."""
    tasks: list[dict[str, Any]] = []
    append = tasks.append
    for line in text.splitlines():
        cmd = line.strip()
        if cmd and cmd[0] != "#":
            append({"cmd": cmd})
    return tasks


def _problem(exc: ValidationError) -> str:
    message = _WHERE.sub("", exc.message)
    return message if not message.startswith(" ") else "the task" + message


def parse_jsonl(text: str, path: str | Path = "<workload>") -> list[dict[str, Any]]:
    """Tasks of a JSON Lines workload, each validated as the scheduler will."""
    tasks: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] == "#":
            continue
        try:
            task = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise WorkloadError(
                path, f"not valid JSON: {exc.msg} at column {exc.colno}", line=number
            ) from None
        if not isinstance(task, dict):
            raise WorkloadError(
                path, f"expected a JSON object, got {type(task).__name__}", line=number
            )
        try:
            parse_task(task)
        except ValidationError as exc:
            raise WorkloadError(path, _problem(exc), line=number) from None
        tasks.append(task)
    return tasks


def load_workload(path: str | Path, fmt: str = "auto") -> list[dict[str, Any]]:
    """Read and validate a whole workload file (``-`` is standard input).

    Returns the task maps to submit. Raises :class:`WorkloadError` for a missing or
    unreadable file or a broken line; then nothing should be submitted.
    """
    kind = detect_format(path, fmt)
    text = _read_text(path)
    if kind == "jsonl":
        return parse_jsonl(text, path)
    return parse_text(text)


def format_seconds(seconds: Decimal) -> str:
    """``Decimal`` seconds as the shortest plain decimal (``0.01``, ``1``, ``100``)."""
    text = format(seconds.normalize(), "f")
    return text if text != "-0" else "0"


def generate_workload(nb_tasks: int, sleep_ms: int | float | str) -> list[str]:
    """``nb_tasks`` lines of ``sleep SECONDS`` for a sleep of ``sleep_ms`` milliseconds.

    ``generate_workload(1000, 10)`` gives 1000 lines of ``sleep 0.01``; 0 gives
    ``sleep 0``. Seconds are computed in decimal, so there is no float noise.
    """
    if isinstance(nb_tasks, bool) or not isinstance(nb_tasks, int) or nb_tasks < 0:
        raise ValueError(f"the number of tasks must be a non-negative integer, got {nb_tasks!r}")
    try:
        ms = Decimal(str(sleep_ms))
    except InvalidOperation:
        raise ValueError(
            f"the sleep time must be a number of milliseconds, got {sleep_ms!r}"
        ) from None
    if not ms.is_finite() or ms < 0:
        raise ValueError(f"the sleep time must be a non-negative number, got {sleep_ms!r}")
    line = f"sleep {format_seconds(ms / 1000)}"
    return [line] * nb_tasks
