"""Handlers used by the integration tests (imported by worker processes)."""

from __future__ import annotations

import os

from worker import handler


@handler
def add(a: int, b: int) -> int:
    return a + b


@handler("HELLO")
def hello(firstName: str, lastName: str) -> str:
    return f"Hello {firstName} {lastName} !"


@handler
def whoami() -> int:
    return os.getpid()


@handler
def boom(message: str) -> None:
    raise ValueError(message)
