"""Shared fixtures: a real scheduler on 127.0.0.1 port 0, in the test's event loop."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from scheduler.app import Scheduler
from scheduler.settings import SchedulerSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_HANDLERS = "tests.integration.handlers"

# Worker subprocesses import handler modules by name from the repository root.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
)

SchedulerFactory = Callable[..., Coroutine[Any, Any, Scheduler]]


@pytest.fixture
async def start_scheduler() -> AsyncIterator[SchedulerFactory]:
    """Start schedulers with given settings; every one is closed at teardown."""
    started: list[Scheduler] = []

    async def factory(**overrides: Any) -> Scheduler:
        settings = SchedulerSettings(
            **{
                "host": "127.0.0.1",
                "port": 0,
                "local_workers": 2,
                "state_dir": "none",
                "handlers": (TEST_HANDLERS,),
                **overrides,
            }
        )
        sched = Scheduler(settings)
        started.append(sched)
        await sched.start()
        return sched

    yield factory
    for sched in reversed(started):
        await sched.close()
