"""The SQLite journal: group commit, replay, and rebuilding the task table from it."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from protocol.messages import parse_task
from protocol.model import Task, TaskState
from scheduler.journal import Journal, MemoryJournal
from scheduler.recovery import LOST_ON_RESTART, restore
from scheduler.retry import RetryPolicy
from scheduler.state import TaskTable


def tasks(n: int, **extra: object) -> list[Task]:
    return [parse_task({"cmd": f"echo {i}", **extra}) for i in range(n)]


async def committed(journal: Journal | MemoryJournal) -> BaseException | None:
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    journal.after_commit(lambda err: done.set_result(err))
    return await asyncio.wait_for(done, 10)


async def test_group_commit_and_replay(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.sqlite3"
    journal = Journal(path)
    table = TaskTable(recorder=journal)
    restore(table, journal.open())
    journal.start()
    job, ids = table.submit(tasks(500, max_attempts=2), job_id="job1", final=False)
    table.submit(tasks(500, max_attempts=2), job_id="job1", final=True)
    running = table.take(300)
    for rec in running[:200]:
        table.finish(rec, {"id": rec.task.id, "state": "succeeded", "exit_code": 0})
    assert await committed(journal) is None
    # Everything above went out in very few transactions, not one per task.
    assert 1 <= journal.commits <= 3
    await journal.close()

    again = Journal(path)
    table2 = TaskTable(recorder=again)
    counts = restore(table2, again.open())
    assert counts["tasks"] == 1000 and counts["results"] == 200
    job2 = table2.jobs["job1"]
    assert job2.sealed and job2.total == 1000 and job2.durable == 200
    assert [r["id"] for r in job2.results] == [r["id"] for r in job.results]
    # The 100 that were running come back queued with their attempt counted.
    assert table2.queued_total == 800
    assert all(table2.tasks[rec.task.id].attempt == 1 for rec in running[200:])
    assert table2.tasks[ids[-1]].attempt == 0
    await again.close()


async def test_running_task_without_attempts_left_fails_on_restart(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    table = TaskTable(recorder=journal)
    restore(table, journal.open())
    journal.start()
    table.submit(tasks(2, max_attempts=1), job_id="j", final=True)
    table.take(1)
    await committed(journal)
    await journal.close()

    again = Journal(path)
    table2 = TaskTable(recorder=again)
    restore(table2, again.open())
    again.start()
    job = table2.jobs["j"]
    [lost] = job.results
    assert lost["state"] == "failed" and lost["error"] == LOST_ON_RESTART
    assert table2.queued_total == 1
    await committed(again)
    await again.close()
    # The failure decided at restart is itself journaled: a second restart agrees.
    third = Journal(path)
    table3 = TaskTable(recorder=third)
    assert restore(table3, third.open())["results"] == 1
    await third.close()


async def test_expired_jobs_leave_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    table = TaskTable(recorder=journal)
    restore(table, journal.open())
    journal.start()
    job, _ = table.submit(tasks(3), job_id="gone", final=True)
    for rec in table.take(3):
        table.finish(rec, {"id": rec.task.id, "state": "succeeded"})
    table.collected(job, job.created)
    assert table.expire(ttl_s=0, max_age_s=1e9, now=job.created + 1) == 1
    await committed(journal)
    await journal.close()
    again = Journal(path)
    replay = again.open()
    assert replay.jobs == [] and replay.tasks == [] and replay.results == []
    await again.close()


async def test_memory_journal_commits_at_once() -> None:
    journal = MemoryJournal()
    assert journal.open().tasks == []
    assert await committed(journal) is None


async def test_unwritable_journal_reports_the_error(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    table = TaskTable(recorder=journal)
    restore(table, journal.open())
    journal.start()
    # Make the next write fail inside SQLite (a full disk behaves the same way).
    assert journal._conn is not None
    journal._conn.execute("DROP TABLE result_batches")
    table.submit(tasks(1), job_id="j", final=True)
    [rec] = table.take(1)
    table.finish(rec, {"id": rec.task.id, "state": "succeeded"})
    error = await committed(journal)
    assert error is not None and "result_batches" in str(error)
    await journal.close()


def test_retry_backoff_grows_with_jitter() -> None:
    policy = RetryPolicy(base_s=1.0, max_s=8.0)
    rng = random.Random(4)
    delays = [policy.delay(attempt, rng) for attempt in (1, 2, 3, 4, 5, 6)]
    for attempt, delay in zip((1, 2, 3, 4, 5, 6), delays, strict=True):
        step = min(8.0, 2 ** (attempt - 1))
        assert step / 2 <= delay <= step
    assert policy.should_retry("failed", 1, 3)
    assert not policy.should_retry("failed", 3, 3)
    assert not policy.should_retry("cancelled", 1, 3)
    assert not RetryPolicy(retry_on=frozenset({"timed_out"})).should_retry("failed", 1, 3)


def test_retry_later_then_release() -> None:
    table = TaskTable()
    job, [tid] = table.submit(tasks(1, max_attempts=3), job_id=None, final=True)
    [rec] = table.take(1)
    table.retry_later(rec, {"attempt": 1, "state": "failed", "exit_code": 1}, due=100.0)
    assert rec.state is TaskState.QUEUED and table.queued_total == 0
    assert table.next_retry_at() == 100.0
    assert table.release_due(99.0) == 0
    assert table.release_due(100.0) == 1 and table.queued_total == 1
    [again] = table.take(1)
    assert again is rec and rec.attempt == 2
    table.finish(rec, {"id": tid, "state": "succeeded"})
    assert job.results[0]["attempts"][0]["exit_code"] == 1
