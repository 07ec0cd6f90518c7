"""Issue 2's end-to-end cases: a real scheduler on port 0, real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

from client.client import Client
from protocol.model import Result, TaskState
from tests.conftest import SchedulerFactory


async def collect(client: Client, job: str) -> list[Result]:
    return [r async for r in client.results(job)]


async def test_two_thousand_shell_tasks_each_result_once(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=2)
    async with Client("127.0.0.1", sched.port) as client:
        submission = await client.submit(["sleep 0"] * 2000, batch_size=500)
        results = await collect(client, submission.job)
    counts = Counter(r.id for r in results)
    assert len(counts) == 2000 and set(counts.values()) == {1}
    assert set(counts) == set(submission.ids)
    assert all(r.state is TaskState.SUCCEEDED and r.exit_code == 0 for r in results)
    # Both worker processes took part: load balanced itself by pulling.
    assert {r.worker for r in results} == {w.id for w in sched.dispatcher.workers.values()}


async def test_failing_command_reports_exit_code_and_stderr(
    start_scheduler: SchedulerFactory,
) -> None:
    sched = await start_scheduler(local_workers=1)
    async with Client("127.0.0.1", sched.port) as client:
        [result] = await client.run([{"cmd": "sh -c 'echo to-out; echo went-wrong >&2; exit 7'"}])
    assert result.state is TaskState.FAILED
    assert result.exit_code == 7
    assert result.stderr.strip() == "went-wrong" and result.stdout.strip() == "to-out"
    assert result.started is not None and result.finished is not None
    assert result.finished >= result.started


async def test_call_tasks_values_and_exceptions(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=2)
    async with Client("127.0.0.1", sched.port) as client:
        results = await client.run(
            [
                {"fn": "add", "args": [2, 3], "id": "sum"},
                {"fn": "HELLO", "kwargs": {"firstName": "Ada", "lastName": "L"}, "id": "hi"},
                {"fn": "boom", "args": ["kaput"], "id": "err"},
            ]
        )
    by_id = {r.id: r for r in results}
    assert by_id["sum"].value == 5 and by_id["sum"].ok
    assert by_id["hi"].value == "Hello Ada L !"
    assert by_id["err"].state is TaskState.FAILED
    assert by_id["err"].error is not None and "ValueError: kaput" in by_id["err"].error


async def test_twenty_concurrent_clients_get_only_their_own(
    start_scheduler: SchedulerFactory,
) -> None:
    sched = await start_scheduler(local_workers=2)

    async def one_client(n: int) -> tuple[int, list[Result]]:
        async with Client("127.0.0.1", sched.port) as client:
            tasks = [{"fn": "add", "args": [n, i], "id": f"c{n}-{i}"} for i in range(150)]
            return n, await client.run(tasks)

    outcomes = await asyncio.gather(*(one_client(n) for n in range(20)))
    for n, results in outcomes:
        assert sorted(r.id for r in results) == sorted(f"c{n}-{i}" for i in range(150))
        assert all(r.value == n + int(r.id.split("-")[1]) for r in results)


async def test_killed_worker_process_loses_nothing(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=2)
    async with Client("127.0.0.1", sched.port) as client:
        submission = await client.submit(
            [{"cmd": "sleep 0.05", "max_attempts": 2} for _ in range(60)]
        )
        seen: list[Result] = []
        killed = False
        async for result in client.results(submission.job):
            seen.append(result)
            if not killed:
                victim = next(iter(sched.dispatcher.workers.values()))
                assert victim.pid is not None
                os.kill(victim.pid, signal.SIGKILL)
                killed = True
    assert killed
    counts = Counter(r.id for r in seen)
    assert set(counts) == set(submission.ids) and set(counts.values()) == {1}
    assert all(r.ok for r in seen), [r.error for r in seen if not r.ok]
    # A replacement process is started for the one that died.
    assert sched.worker_restarts == 1
    deadline = time.monotonic() + 30
    while len(sched.dispatcher.workers) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # polling with a deadline
    assert len(sched.dispatcher.workers) == 2
    assert victim.id not in sched.dispatcher.workers
