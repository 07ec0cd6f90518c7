"""Handlers used by the worker tests (imported as ``tests.worker.handlers_sample``)."""

from __future__ import annotations

import sys
import time
from typing import Any

from worker import handler


@handler
def add(a: int, b: int) -> int:
    return a + b


@handler("HELLO")
def hello(firstName: str, lastName: str) -> str:
    return f"Hello {firstName} {lastName}"


@handler
def make_object() -> object:
    return object()


@handler
def huge_int() -> int:
    return 2**70


@handler
def big_bytes(size: int) -> bytes:
    return b"x" * size


@handler
def swallow_exceptions(seconds: float) -> str:
    """Sleeps despite everything a careless handler does: the timeout must still win."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except Exception:  # the careless part
            continue
    return "finished"


@handler
def deep_fail(depth: int) -> None:
    if depth <= 0:
        raise ValueError("bottom reached")
    deep_fail(depth - 1)


@handler
def shout(text: str) -> int:
    print(text)
    sys.stdout.flush()
    return len(text)


@handler
def exit_with(code: int) -> None:
    sys.exit(code)


@handler
def kwargs_echo(**kwargs: Any) -> dict[str, Any]:
    return kwargs
