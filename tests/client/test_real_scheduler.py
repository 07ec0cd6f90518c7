"""The client against the real scheduler (embedded, port 0): the contract both rely on."""

from __future__ import annotations

from collections import Counter

import pytest

from client.client import Client
from protocol.errors import ErrorCode, RemoteError
from tests.conftest import SchedulerFactory


async def test_call_tasks_round_trip(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=2)
    async with Client("127.0.0.1", sched.port) as client:
        tasks = [{"fn": "add", "args": [i, 1]} for i in range(3000)]
        submission = await client.submit(tasks, batch_size=1000)
        values: dict[str, object] = {}
        seen: Counter[str] = Counter()
        async for result in client.results(submission.job):
            seen[result.id] += 1
            values[result.id] = result.value
        assert set(seen) == set(submission.ids) and max(seen.values()) == 1
        assert [values[i] for i in submission.ids] == [i + 1 for i in range(3000)]

        status = await client.status(submission.job)
        assert status["kind"] == "job" and status["total"] == 3000 and status["sealed"]
        assert status["counts"]["succeeded"] == 3000

        task_id = await client.send_task("HELLO", {"firstName": "John", "lastName": "Doe"})
        async for _ in client.results((await client.status(task_id))["task"]["job"]):
            pass
        info = await client.get_task(task_id)
        assert info["progress"] == 100 and info["result"] == "Hello John Doe !"

        assert await client.cancel(submission.job) == 0
        assert (await client.stats())["finished"] >= 3001
        assert await client.ping() > 0


async def test_errors_from_the_real_scheduler(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=1)
    async with Client("127.0.0.1", sched.port) as client:
        with pytest.raises(RemoteError) as info:
            await client.submit([{"fn": "no_such_handler"}])
        assert info.value.code is ErrorCode.UNKNOWN_HANDLER
        missing = await client.get_task("ghost")
        assert missing["progress"] is None
        assert await client.ping() > 0
