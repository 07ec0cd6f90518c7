"""Handlers of the worker daemon tests (imported by worker processes)."""

from __future__ import annotations

import os

from worker import handler


@handler
def die(code: int) -> None:
    """End the worker process under its task, as a crash would."""
    os._exit(code)
