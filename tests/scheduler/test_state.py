"""Task table transitions and the batching policy, without sockets."""

from __future__ import annotations

import pytest

from protocol.messages import parse_task
from protocol.model import Task, TaskState
from scheduler.dispatch import MAX_HOLD, hold_target
from scheduler.errors import Conflict, NotFound, QuotaExceeded, UnknownHandler
from scheduler.state import TaskTable


def tasks(n: int, **extra: object) -> list[Task]:
    return [parse_task({"cmd": f"echo {i}", **extra}) for i in range(n)]


def result_for(task_id: str, state: str = "succeeded") -> dict[str, object]:
    return {"id": task_id, "state": state, "started": 1.0, "finished": 2.0}


def test_submit_take_finish() -> None:
    table = TaskTable()
    job, ids = table.submit(tasks(3), job_id=None, final=True)
    assert len(ids) == 3 and len(set(ids)) == 3 and job.total == 3
    assert job.counts[TaskState.QUEUED] == 3
    recs = table.take(2)
    assert [r.task.id for r in recs] == ids[:2]
    assert all(r.state is TaskState.RUNNING and r.attempt == 1 for r in recs)
    assert table.finish(recs[0], result_for(ids[0]))
    assert not table.finish(recs[0], result_for(ids[0]))  # a second result is ignored
    assert job.results[0]["job"] == job.id
    assert job.counts[TaskState.SUCCEEDED] == 1 and not job.done
    table.finish(recs[1], result_for(ids[1], "failed"))
    [last] = table.take(5)
    table.finish(last, result_for(ids[2]))
    assert job.done and table.running_total == 0 and table.queued_total == 0


def test_client_ids_are_idempotency_keys() -> None:
    table = TaskTable()
    job, ids = table.submit(tasks(1, id="k"), job_id="j1", final=False)
    _, again = table.submit(tasks(1, id="k"), job_id="j1", final=True)
    assert ids == again == ["k"] and job.total == 1


def test_sealed_job_refuses_more() -> None:
    table = TaskTable()
    table.submit(tasks(1), job_id="j", final=True)
    with pytest.raises(Conflict, match="sealed"):
        table.submit(tasks(1), job_id="j", final=True)


def test_unknown_handler_rejected_when_known() -> None:
    table = TaskTable()
    table.known_handlers = frozenset({"add"})
    with pytest.raises(UnknownHandler, match="'nope'"):
        table.submit([parse_task({"fn": "nope"})], job_id=None, final=True)
    assert table.submitted_total == 0  # nothing of the batch was accepted


def test_quota_rejects_whole_batch() -> None:
    table = TaskTable(max_queued_per_user=5)
    table.submit(tasks(4), job_id=None, final=True)
    with pytest.raises(QuotaExceeded, match="default"):
        table.submit(tasks(2), job_id=None, final=True)
    assert table.queued_total == 4


def test_put_back_restores_order_and_attempts() -> None:
    table = TaskTable()
    _, ids = table.submit(tasks(3), job_id=None, final=True)
    recs = table.take(3)
    table.put_back(recs[1:])
    table.put_back(recs[:1], started=True)
    again = table.take(3)
    assert [r.task.id for r in again] == ids
    assert [r.attempt for r in again] == [2, 1, 1]


def test_cancel_queued_and_report_running() -> None:
    table = TaskTable()
    job, ids = table.submit(tasks(3), job_id=None, final=True)
    [running] = table.take(1)
    cancelled, still_running = table.cancel_queued(job.id)
    assert [r.task.id for r in cancelled] == ids[1:]
    assert still_running == [running]
    assert job.counts[TaskState.CANCELLED] == 2
    with pytest.raises(NotFound):
        table.cancel_queued("nope")


def test_expire_collected_jobs_after_ttl_and_any_after_max_age() -> None:
    table = TaskTable()
    job, _ = table.submit(tasks(1), job_id=None, final=True)
    [rec] = table.take(1)
    table.finish(rec, result_for(rec.task.id))
    created = job.created
    assert table.expire(ttl_s=10, max_age_s=1000, now=created + 500) == 0  # never collected
    table.collected(job, created + 100)
    assert table.expire(ttl_s=10, max_age_s=1000, now=created + 105) == 0
    assert table.expire(ttl_s=10, max_age_s=1000, now=created + 111) == 1
    assert job.id not in table.jobs and rec.task.id not in table.tasks

    old, _ = table.submit(tasks(1), job_id=None, final=True)
    [rec] = table.take(1)
    table.finish(rec, result_for(rec.task.id))
    assert table.expire(ttl_s=10, max_age_s=1000, now=old.created + 1001) == 1  # uncollected

    unfinished, _ = table.submit(tasks(1), job_id=None, final=True)
    assert table.expire(ttl_s=0, max_age_s=0, now=unfinished.created + 1e6) == 0


@pytest.mark.parametrize(
    ("avg", "backlog", "workers", "expected"),
    [
        (None, 1000, 2, 1),  # unknown runtime: one at a time until measured
        (1.0, 1000, 8, 1),  # long tasks are never prefetched
        (0.01, 1000, 8, 5),  # 10 ms tasks: 50 ms of work ahead
        (1e-6, 100_000, 2, MAX_HOLD),
        (1e-6, 10, 4, 3),  # never more than a fair share of the backlog
    ],
)
def test_hold_target(avg: float | None, backlog: int, workers: int, expected: int) -> None:
    assert hold_target(avg, backlog, workers) == expected
