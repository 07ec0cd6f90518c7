"""Jobs, task records and their state transitions: pure code, no I/O.

:class:`TaskTable` is the scheduler's source of truth. It accepts submitted tasks,
hands queued ones out through a :class:`FairQueue`, records results, and tells the
caller which jobs gained results so the asyncio layer can wake their streams.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from protocol.model import FINISHED_STATES, Task, TaskKind, TaskState
from scheduler.errors import Conflict, NotFound, QuotaExceeded, UnknownHandler
from scheduler.queues import FairQueue

_QUEUED = TaskState.QUEUED
_RUNNING = TaskState.RUNNING
_CANCELLED = TaskState.CANCELLED


class TaskRecord:
    """A task and everything the scheduler knows about it."""

    __slots__ = ("attempt", "job", "result", "started", "state", "submitted", "task", "worker")

    def __init__(self, task: Task, job: Job, submitted: float) -> None:
        self.task = task
        self.job = job
        self.state = _QUEUED
        self.attempt = 0  # attempts started so far
        self.worker: str | None = None
        self.submitted = submitted
        self.started: float | None = None
        self.result: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        """The task's status as sent to clients."""
        out: dict[str, Any] = {
            "id": self.task.id,
            "job": self.job.id,
            "kind": self.task.kind.value,
            "user": self.task.user,
            "priority": self.task.priority,
            "state": self.state.value,
            "attempt": self.attempt,
            "max_attempts": self.task.max_attempts,
            "worker": self.worker,
            "submitted": self.submitted,
            "started": self.started,
            "finished": None,
        }
        if self.result is not None:
            out["finished"] = self.result.get("finished")
            out["result"] = self.result
        return out


@dataclass(slots=True, eq=False)
class Job:
    id: str
    created: float
    sealed: bool = False
    total: int = 0
    tasks: list[TaskRecord] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)  # in order of completion
    counts: dict[TaskState, int] = field(default_factory=lambda: dict.fromkeys(TaskState, 0))
    collected_at: float | None = None  # when a stream delivered the final result

    @property
    def done(self) -> bool:
        return self.sealed and len(self.results) == self.total

    def status(self) -> dict[str, Any]:
        return {
            "kind": "job",
            "job": self.id,
            "counts": {state.value: n for state, n in self.counts.items()},
            "total": self.total,
            "finished": len(self.results),
            "sealed": self.sealed,
            "done": self.done,
        }


def new_job_id() -> str:
    return "j" + os.urandom(6).hex()


class TaskTable:
    """Every live job and task. Methods raise :class:`SchedulerError` subclasses."""

    def __init__(self, *, max_queued_per_user: int | None = None) -> None:
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self.queue: FairQueue[TaskRecord] = FairQueue(max_queued_per_user=max_queued_per_user)
        self.known_handlers: frozenset[str] | None = None  # None: cannot check (remote workers)
        self.submitted_total = 0
        self.finished_total = 0
        self.finished_by_state: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self.running_total = 0

    # --- submission ----------------------------------------------------------------

    def submit(
        self, tasks: list[Task], *, job_id: str | None, final: bool
    ) -> tuple[Job, list[str]]:
        """Accept a batch atomically: either every task is queued or none is."""
        now = time.time()
        job = self.jobs.get(job_id) if job_id is not None else None
        if job is not None and job.sealed:
            raise Conflict(f"job {job_id} is sealed: no more tasks can be added to it")
        self._check_handlers(tasks)
        self._check_quota(tasks)
        if job is None:
            job = Job(id=job_id or new_job_id(), created=now)
            self.jobs[job.id] = job
        ids: list[str] = []
        fresh: list[TaskRecord] = []
        seq = itertools.count(job.total)
        table = self.tasks
        for task in tasks:
            if task.id:
                existing = table.get(task.id)
                if existing is not None:
                    # An idempotency key seen before: answer with the existing task.
                    ids.append(task.id)
                    continue
            else:
                task.id = f"{job.id}.{next(seq)}"
                while task.id in table:
                    task.id = f"{job.id}.{next(seq)}"
            task.job = job.id
            rec = TaskRecord(task, job, now)
            table[task.id] = rec
            fresh.append(rec)
            ids.append(task.id)
        job.tasks.extend(fresh)
        job.total += len(fresh)
        job.counts[_QUEUED] += len(fresh)
        push = self.queue.push
        for rec in fresh:
            push(rec.task.user, rec.task.priority, rec)
        self.submitted_total += len(fresh)
        if final:
            job.sealed = True
        return job, ids

    def _check_handlers(self, tasks: Iterable[Task]) -> None:
        known = self.known_handlers
        if known is None:
            return
        for task in tasks:
            if task.kind is TaskKind.CALL and task.fn not in known:
                names = ", ".join(sorted(known)) or "none"
                raise UnknownHandler(
                    f"no handler named {task.fn!r} is registered (registered: {names})"
                )

    def _check_quota(self, tasks: list[Task]) -> None:
        if self.queue.max_queued_per_user is None:
            return
        per_user: dict[str, int] = {}
        for task in tasks:
            per_user[task.user] = per_user.get(task.user, 0) + 1
        for user, n in per_user.items():
            room = self.queue.room_for(user)
            if room is not None and n > room:
                raise QuotaExceeded(
                    f"user {user!r} may queue {self.queue.max_queued_per_user} tasks; "
                    f"{self.queue.queued(user)} are queued and this batch adds {n}"
                )

    # --- dispatch ------------------------------------------------------------------

    def take(self, n: int, min_p: int | None = None, max_p: int | None = None) -> list[TaskRecord]:
        """Pop up to ``n`` queued tasks for a worker and mark them running."""
        recs = self.queue.pop_many(n, min_p, max_p)
        now = time.time()
        for rec in recs:
            rec.state = _RUNNING
            rec.attempt += 1
            rec.started = now
            counts = rec.job.counts
            counts[_QUEUED] -= 1
            counts[_RUNNING] += 1
        self.running_total += len(recs)
        return recs

    def put_back(self, recs: Iterable[TaskRecord], *, started: bool = False) -> None:
        """Requeue tasks handed to a worker that went away, at the front of their queue.

        ``started``: the attempt began, so it still counts against ``max_attempts``.
        """
        for rec in reversed(list(recs)):
            if rec.state is not _RUNNING:
                continue
            rec.state = _QUEUED
            if not started:
                rec.attempt -= 1
            rec.started = None
            rec.worker = None
            rec.job.counts[_RUNNING] -= 1
            rec.job.counts[_QUEUED] += 1
            self.running_total -= 1
            self.queue.finished(rec.task.user)
            self.queue.push_front(rec.task.user, rec.task.priority, rec)

    # --- completion ----------------------------------------------------------------

    def finish(self, rec: TaskRecord, result: dict[str, Any]) -> bool:
        """Record a final result. Returns False when the task had already finished."""
        state = rec.state
        if state in FINISHED_STATES:
            return False
        new_state = TaskState(result["state"])
        if state is _RUNNING:
            self.running_total -= 1
            self.queue.finished(rec.task.user)
        elif state is _QUEUED:
            self.queue.remove(rec.task.user, rec.task.priority, rec)
        job = rec.job
        result["job"] = job.id
        result["submitted"] = rec.submitted
        result.setdefault("attempt", rec.attempt)
        rec.state = new_state
        rec.result = result
        job.counts[state] -= 1
        job.counts[new_state] += 1
        job.results.append(result)
        self.finished_total += 1
        self.finished_by_state[new_state] += 1
        return True

    def finish_without_running(self, rec: TaskRecord, state: TaskState, error: str) -> bool:
        """End a task that produced no result of its own (cancelled, lost worker)."""
        now = time.time()
        return self.finish(
            rec,
            {
                "id": rec.task.id,
                "state": state.value,
                "exit_code": None,
                "stdout": "",
                "stderr": "",
                "value": None,
                "error": error,
                "worker": rec.worker,
                "attempt": rec.attempt,
                "started": rec.started,
                "finished": now,
            },
        )

    # --- queries -------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id!r}")
        return job

    def status(self, some_id: str) -> dict[str, Any]:
        job = self.jobs.get(some_id)
        if job is not None:
            return job.status()
        rec = self.tasks.get(some_id)
        if rec is None:
            raise NotFound(f"no job or task with id {some_id!r}")
        return {"kind": "task", "task": rec.info()}

    def cancel_queued(self, some_id: str) -> tuple[list[TaskRecord], list[TaskRecord]]:
        """Cancel queued tasks of a job or one task at once.

        Returns (cancelled now, running ones the caller must stop on their workers).
        """
        job = self.jobs.get(some_id)
        if job is not None:
            recs = job.tasks
        else:
            rec = self.tasks.get(some_id)
            if rec is None:
                raise NotFound(f"no job or task with id {some_id!r}")
            recs = [rec]
        cancelled: list[TaskRecord] = []
        running: list[TaskRecord] = []
        for rec in recs:
            if rec.state is _QUEUED:
                self.finish_without_running(rec, _CANCELLED, "cancelled while queued")
                cancelled.append(rec)
            elif rec.state is _RUNNING:
                running.append(rec)
        if job is not None:
            job.sealed = True  # a cancelled job takes no more tasks, so streams can end
        return cancelled, running

    def expire(self, *, ttl_s: float, now: float | None = None) -> int:
        """Drop done jobs whose results were collected more than ``ttl_s`` ago."""
        now = time.time() if now is None else now
        dropped = [
            job
            for job in self.jobs.values()
            if job.done and job.collected_at is not None and now - job.collected_at > ttl_s
        ]
        for job in dropped:
            for rec in job.tasks:
                if self.tasks.get(rec.task.id) is rec:
                    del self.tasks[rec.task.id]
            del self.jobs[job.id]
        return len(dropped)

    @property
    def queued_total(self) -> int:
        return len(self.queue)
