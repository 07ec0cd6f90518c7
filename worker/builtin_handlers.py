"""Handlers every worker has: for demos, tests and benchmarks of the machinery itself."""

from __future__ import annotations

import time
from typing import Any

from worker.registry import handler


@handler
def noop() -> None:
    """Do nothing: measures the per-task cost of the framework."""
    return None


@handler
def echo(*args: Any, **kwargs: Any) -> list[Any]:
    """Return ``[args, kwargs]`` as received (after a msgpack round trip)."""
    return [list(args), kwargs]


@handler
def sleep(seconds: float) -> None:
    """Sleep for ``seconds``: a stand-in for a slow task (interruptible by the task timeout)."""
    time.sleep(seconds)


@handler
def fail(message: str = "failed on purpose") -> None:
    """Raise ``RuntimeError(message)``: exercises the failure path."""
    raise RuntimeError(message)
