"""Rebuild the task table from the journal after a restart.

Finished results are served again, in the order they were first recorded, so a
client resuming with ``since=N`` gets exactly what it has not seen. Queued tasks
are queued again; a task that was running when the scheduler died counts that
attempt, and fails if it has none left.
"""

from __future__ import annotations

import time
from typing import Any

from protocol.model import Task, TaskKind, TaskState
from scheduler.journal import Replay
from scheduler.records import Job, TaskRecord
from scheduler.state import NoRecorder, TaskTable

LOST_ON_RESTART = "the scheduler stopped while the task was running and no attempts are left"


def task_from_wire(wire: dict[str, Any]) -> Task:
    kind = TaskKind(wire["kind"])
    return Task(
        id=wire["id"],
        job=wire["job"],
        kind=kind,
        cmd=wire.get("cmd"),
        fn=wire.get("fn"),
        args=wire.get("args") or [],
        kwargs=wire.get("kwargs") or {},
        user=wire["user"],
        priority=wire["priority"],
        timeout_s=wire.get("timeout_s"),
        max_attempts=wire["max_attempts"],
    )


def restore(table: TaskTable, replay: Replay) -> dict[str, int]:
    """Load ``replay`` into an empty ``table``; returns counts for the start-up log.

    The table's recorder is live while this runs, but only the results created
    here (tasks with no attempts left) reach it: everything else is already stored.
    """
    recorder, table.recorder = table.recorder, NoRecorder()
    jobs = table.jobs
    for job_id, created, sealed, collected in replay.jobs:
        jobs[job_id] = Job(id=job_id, created=created, sealed=sealed, collected_at=collected)
    for task_id, job_id, submitted, body in replay.tasks:
        job = jobs.get(job_id)
        if job is None:  # a job row lost to a torn write: recreate it, unsealed
            job = jobs[job_id] = Job(id=job_id, created=submitted)
        rec = TaskRecord(task_from_wire(body), job, submitted)
        rec.attempt = replay.attempts.get(task_id, 0)
        table.tasks[task_id] = rec
        job.tasks.append(rec)
        job.total += 1
        job.counts[TaskState.QUEUED] += 1
    restored = 0
    for task_id, body in replay.results:
        done = table.tasks.get(task_id)
        if done is None or done.state.finished:
            continue
        table.finish(done, body)  # straight from queued (never in the queue) to final
        restored += 1
    lost: list[TaskRecord] = []
    requeued = 0
    for rec in table.tasks.values():
        if rec.state is not TaskState.QUEUED:
            continue
        if rec.attempt >= rec.task.max_attempts:
            lost.append(rec)
        else:
            table.queue.push(rec.task.user, rec.task.priority, rec)
            requeued += 1
    table.submitted_total = len(table.tasks)
    table.recorder = recorder
    for rec in lost:
        table.finish_without_running(rec, TaskState.FAILED, LOST_ON_RESTART)
    for job in jobs.values():
        job.durable = len(job.results)
    return {
        "jobs": len(jobs),
        "tasks": len(table.tasks),
        "results": restored,
        "requeued": requeued,
        "failed_on_restart": len(lost),
        "at": int(time.time()),
    }
