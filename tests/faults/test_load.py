"""Load: 200 concurrent clients each submitting 500 tasks get exactly their own results."""

from __future__ import annotations

import asyncio
import os

from client.client import Client
from tests.conftest import TEST_HANDLERS
from tests.procs import start_scheduler


async def test_two_hundred_clients() -> None:
    env = {**os.environ, "TASKMILL_STATE_DIR": "none", "TASKMILL_MONITOR_PORT": "-1"}
    daemon, port = await asyncio.to_thread(
        start_scheduler, "-s", "0", "-lw", "2", "--handlers", TEST_HANDLERS, env=env
    )
    try:

        async def one(n: int) -> list[tuple[str, object]]:
            async with Client("127.0.0.1", port) as client:
                tasks = [{"fn": "add", "args": [n, i], "id": f"c{n}.{i}"} for i in range(500)]
                results = await client.run(tasks)
                return [(r.id, r.value) for r in results]

        outcomes = await asyncio.gather(*(one(n) for n in range(200)))
    finally:
        daemon.stop()
    for n, pairs in enumerate(outcomes):
        assert len(pairs) == 500
        assert dict(pairs) == {f"c{n}.{i}": n + i for i in range(500)}
