"""Issue 3's job lifecycle over real sockets and worker processes."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from client.client import Client
from protocol.errors import ErrorCode, RemoteError
from protocol.model import Result, TaskState
from tests.conftest import SchedulerFactory


async def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)  # polling with a deadline


def gate_cmd(flag: Path) -> str:
    """A shell task that runs until ``flag`` exists: keeps a worker busy on demand."""
    return f"sh -c 'while [ ! -e {flag} ]; do sleep 0.01; done'"


async def test_priorities_run_highest_first(
    start_scheduler: SchedulerFactory, tmp_path: Path
) -> None:
    sched = await start_scheduler(local_workers=1)
    flag = tmp_path / "go"
    async with Client("127.0.0.1", sched.port) as client:
        gate = await client.submit([{"cmd": gate_cmd(flag), "id": "gate"}])
        await wait_until(lambda: sched.table.tasks["gate"].state is TaskState.RUNNING)
        sub = await client.submit(
            [{"fn": "add", "args": [p, 0], "priority": p, "id": f"p{p}"} for p in (0, 5, 9)]
        )
        flag.touch()
        results = [r async for r in client.results(sub.job)]
        async for _ in client.results(gate.job):
            pass
    order = [r.id for r in sorted(results, key=lambda r: r.started or 0)]
    assert order == ["p9", "p5", "p0"]


async def test_fewest_running_user_goes_first(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=2)
    async with Client("127.0.0.1", sched.port) as client:
        a = await client.submit(
            [{"fn": "sleep", "args": [0.01]} for _ in range(1000)], user="alice"
        )
        b = await client.submit([{"fn": "sleep", "args": [0.01]} for _ in range(10)], user="bob")
        b_results = [r async for r in client.results(b.job)]
        last_b = max(r.finished or 0 for r in b_results)
        a_status = await client.status(a.job)
        finished_a = a_status["finished"]
        await client.cancel(a.job)
        a_results = [r async for r in client.results(a.job)]
    assert len(b_results) == 10 and all(r.ok for r in b_results)
    a_before_b = sum(1 for r in a_results if r.ok and (r.finished or 0) <= last_b)
    assert a_before_b < 100, a_before_b
    assert finished_a < 1000
    assert Counter(r.state for r in a_results)[TaskState.CANCELLED] > 0


async def test_cancel_queued_and_running_shell_task(
    start_scheduler: SchedulerFactory, tmp_path: Path
) -> None:
    sched = await start_scheduler(local_workers=1, kill_grace_s=1.0)
    pidfile, marker = tmp_path / "pid", tmp_path / "never"
    async with Client("127.0.0.1", sched.port) as client:
        sub = await client.submit(
            [
                {"cmd": f"sh -c 'echo $$ > {pidfile}; exec sleep 30'", "id": "long"},
                {"cmd": f"touch {marker}", "id": "queued"},
            ]
        )
        await wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        pid = int(pidfile.read_text())
        t0 = time.monotonic()
        await client.cancel(sub.job)
        results = {r.id: r async for r in client.results(sub.job)}
        elapsed = time.monotonic() - t0
    assert results["queued"].state is TaskState.CANCELLED and results["queued"].started is None
    assert results["long"].state is TaskState.CANCELLED
    assert elapsed < 10
    assert not marker.exists()  # the queued task never started

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await wait_until(gone, timeout=10)


async def test_cancel_running_call_task(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=1)
    async with Client("127.0.0.1", sched.port) as client:
        sub = await client.submit([{"fn": "sleep", "args": [30], "id": "nap"}])
        await wait_until(lambda: sched.table.tasks["nap"].state is TaskState.RUNNING)
        await client.cancel("nap")
        [result] = [r async for r in client.results(sub.job)]
        assert result.state is TaskState.CANCELLED
        # The worker that ran it was replaced and the scheduler still works.
        await wait_until(lambda: len(sched.dispatcher.workers) == 1)
        [after] = await client.run([{"fn": "add", "args": [1, 1]}])
    assert after.value == 2


async def test_fails_twice_then_succeeds_on_attempt_three(
    start_scheduler: SchedulerFactory, tmp_path: Path
) -> None:
    sched = await start_scheduler(local_workers=1, retry_backoff_s=0.01)
    counter = tmp_path / "n"
    cmd = (
        f"sh -c 'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        "[ $n -ge 3 ] || { echo attempt $n failed >&2; exit 1; }'"
    )
    async with Client("127.0.0.1", sched.port) as client:
        [result] = await client.run([{"cmd": cmd, "max_attempts": 3}])
        status = await client.status(result.id)
    assert result.state is TaskState.SUCCEEDED and result.attempt == 3
    assert counter.read_text().strip() == "3"
    attempts = status["task"]["attempts"]
    assert [a["state"] for a in attempts] == ["failed", "failed"]
    assert [a["exit_code"] for a in attempts] == [1, 1]


async def test_timeout_kills_and_is_retried(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=1, retry_backoff_s=0.01)
    async with Client("127.0.0.1", sched.port) as client:
        t0 = time.monotonic()
        [result] = await client.run([{"cmd": "sleep 30", "timeout_s": 0.3, "max_attempts": 2}])
    assert result.state is TaskState.TIMED_OUT and result.attempt == 2
    assert time.monotonic() - t0 < 15


async def test_retry_on_setting_limits_what_is_retried(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=1, retry_backoff_s=0.01, retry_on=("timed_out",))
    async with Client("127.0.0.1", sched.port) as client:
        [result] = await client.run([{"cmd": "false", "max_attempts": 3}])
    assert result.state is TaskState.FAILED and result.attempt == 1


async def test_same_ids_twice_run_once(start_scheduler: SchedulerFactory, tmp_path: Path) -> None:
    sched = await start_scheduler(local_workers=2)
    log = tmp_path / "ran.log"
    tasks = [{"cmd": f"sh -c 'echo {i} >> {log}'", "id": f"key-{i}"} for i in range(100)]
    async with Client("127.0.0.1", sched.port) as client:
        first = await client.submit(tasks)
        second = await client.submit(tasks)
        results: list[Result] = []
        for job in (first.job, second.job):
            results += [r async for r in client.results(job)]
    assert first.ids == second.ids == [f"key-{i}" for i in range(100)]
    assert len(log.read_text().splitlines()) == 100
    assert sched.table.submitted_total == 100
    assert Counter(r.id for r in results) == Counter(f"key-{i}" for i in range(100))


async def test_priority_bands_reserve_workers(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers="1:0-9,1:100-1000")
    bands = {w.id: (w.min_p, w.max_p) for w in sched.dispatcher.workers.values()}
    async with Client("127.0.0.1", sched.port) as client:
        results = await client.run(
            [{"fn": "whoami", "priority": 0} for _ in range(20)]
            + [{"fn": "whoami", "priority": 500} for _ in range(20)]
        )
        status = {r.id: (await client.status(r.id))["task"]["priority"] for r in results}
    for r in results:
        low, high = bands[r.worker or ""]
        assert low is not None and high is not None
        assert low <= status[r.id] <= high


async def test_per_user_quota(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=0, max_queued_per_user=5)
    async with Client("127.0.0.1", sched.port) as client:
        await client.submit([{"cmd": "true"}] * 5, user="ann")
        with pytest.raises(RemoteError) as info:
            await client.submit([{"cmd": "true"}], user="ann")
        assert info.value.code is ErrorCode.QUOTA and "ann" in str(info.value)
        await client.submit([{"cmd": "true"}], user="bob")  # others are not affected


async def test_run_of_a_rejected_one_batch_job_raises_the_submit_error(
    start_scheduler: SchedulerFactory,
) -> None:
    # run() sends a one-batch job's submit and its results request together; when the
    # submit is rejected, the caller must see why, not the stream's "no such job".
    sched = await start_scheduler(local_workers=1)
    async with Client("127.0.0.1", sched.port) as client:
        with pytest.raises(RemoteError) as info:
            await client.run([{"fn": "no_such_handler_xyz"}])
        assert info.value.code is not ErrorCode.NOT_FOUND
        assert "no_such_handler_xyz" in info.value.message
        ok = await client.run([{"fn": "noop"}])  # the connection is still usable
    assert [r.state for r in ok] == [TaskState.SUCCEEDED]
