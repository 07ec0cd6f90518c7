"""The task table and its state transitions: pure code, no I/O.

:class:`TaskTable` is the scheduler's source of truth. It accepts submitted tasks,
hands queued ones out through a :class:`FairQueue`, records results, holds tasks
that wait out a retry back-off, and reports every change to a :class:`Recorder`
(the journal, or its in-memory stub) so the asyncio layer can make it durable.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

from protocol.model import FINISHED_STATES, Task, TaskKind, TaskState
from scheduler.errors import Conflict, NotFound, QuotaExceeded, UnknownHandler
from scheduler.queues import FairQueue
from scheduler.records import Job, TaskRecord, new_job_id

_QUEUED = TaskState.QUEUED
_RUNNING = TaskState.RUNNING
_CANCELLED = TaskState.CANCELLED


class Recorder(Protocol):
    """Where the table reports changes that must survive a restart."""

    def job_created(self, job_id: str, created: float, sealed: bool) -> None: ...
    def job_sealed(self, job_id: str) -> None: ...
    def tasks_accepted(self, recs: list[TaskRecord]) -> None: ...
    def tasks_started(self, ids: list[str]) -> None: ...
    def result(self, task_id: str, job_id: str, body: dict[str, Any]) -> None: ...
    def job_collected(self, job_id: str, when: float) -> None: ...
    def jobs_dropped(self, job_ids: list[str]) -> None: ...


class NoRecorder:
    """A recorder that keeps nothing: for the table alone, and replays of the journal."""

    def job_created(self, job_id: str, created: float, sealed: bool) -> None:
        pass

    def job_sealed(self, job_id: str) -> None:
        pass

    def tasks_accepted(self, recs: list[TaskRecord]) -> None:
        pass

    def tasks_started(self, ids: list[str]) -> None:
        pass

    def result(self, task_id: str, job_id: str, body: dict[str, Any]) -> None:
        pass

    def job_collected(self, job_id: str, when: float) -> None:
        pass

    def jobs_dropped(self, job_ids: list[str]) -> None:
        pass


class TaskTable:
    """Every live job and task. Methods raise :class:`SchedulerError` subclasses."""

    def __init__(
        self, *, max_queued_per_user: int | None = None, recorder: Recorder | None = None
    ) -> None:
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self.queue: FairQueue[TaskRecord] = FairQueue(max_queued_per_user=max_queued_per_user)
        self.recorder: Recorder = recorder or NoRecorder()
        self.known_handlers: frozenset[str] | None = None  # None: cannot check (remote workers)
        self.submitted_total = 0
        self.finished_total = 0
        self.finished_by_state: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self.running_total = 0
        self.retries_total = 0
        self._delayed: list[tuple[float, int, TaskRecord]] = []  # (due, seq, record) heap
        self._delayed_seq = itertools.count()
        self.recent: deque[dict[str, Any]] = deque(maxlen=100)  # latest results, for the monitor

    # --- submission ----------------------------------------------------------------

    def submit(
        self, tasks: list[Task], *, job_id: str | None, final: bool
    ) -> tuple[Job, list[str]]:
        """Accept a batch atomically: either every task is queued or none is.

        A task id seen before is an idempotency key: the existing task answers for it.
        """
        now = time.time()
        job = self.jobs.get(job_id) if job_id is not None else None
        if job is not None and job.sealed:
            if tasks and all(t.id and t.id in self.tasks for t in tasks):
                return job, [t.id for t in tasks]  # a resubmission of what it already holds
            raise Conflict(f"job {job_id} is sealed: no more tasks can be added to it")
        self._check_handlers(tasks)
        self._check_quota(tasks)
        created = job is None
        if job is None:
            job = Job(id=job_id or new_job_id(), created=now)
            self.jobs[job.id] = job
        ids: list[str] = []
        fresh: list[TaskRecord] = []
        seq = itertools.count(job.total)
        table = self.tasks
        for task in tasks:
            if task.id:
                if task.id in table:
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
        if created:
            self.recorder.job_created(job.id, job.created, job.sealed)
        elif final:
            self.recorder.job_sealed(job.id)
        if fresh:
            self.recorder.tasks_accepted(fresh)
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
        if not recs:
            return recs
        now = time.time()
        for rec in recs:
            rec.state = _RUNNING
            rec.attempt += 1
            rec.started = now
            counts = rec.job.counts
            counts[_QUEUED] -= 1
            counts[_RUNNING] += 1
        self.running_total += len(recs)
        self.recorder.tasks_started([rec.task.id for rec in recs])
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

    def retry_or_fail(self, recs: Iterable[TaskRecord], reason: str) -> set[Job]:
        """Started tasks that were lost without a result (their worker died, their bundle
        was dead-lettered): requeue those with attempts left, fail the rest with
        ``reason``. Returns the jobs that gained a result."""
        requeue: list[TaskRecord] = []
        failed: set[Job] = set()
        for rec in recs:
            if rec.attempt < rec.task.max_attempts:
                requeue.append(rec)
            elif self.finish_without_running(rec, TaskState.FAILED, reason):
                failed.add(rec.job)
        self.put_back(requeue, started=True)
        return failed

    # --- retries -------------------------------------------------------------------

    def retry_later(self, rec: TaskRecord, attempt_result: dict[str, Any], due: float) -> None:
        """A running task's attempt failed and it has attempts left: queue it at ``due``."""
        if rec.state is not _RUNNING:
            return
        if rec.history is None:
            rec.history = []
        rec.history.append(
            {
                key: attempt_result.get(key)
                for key in (
                    "attempt",
                    "state",
                    "exit_code",
                    "error",
                    "worker",
                    "started",
                    "finished",
                )
            }
        )
        self.running_total -= 1
        self.queue.finished(rec.task.user)
        rec.state = _QUEUED
        rec.worker = None
        rec.started = None
        rec.retry_at = due
        rec.job.counts[_RUNNING] -= 1
        rec.job.counts[_QUEUED] += 1
        self.retries_total += 1
        heapq.heappush(self._delayed, (due, next(self._delayed_seq), rec))

    def next_retry_at(self) -> float | None:
        delayed = self._delayed
        while delayed and delayed[0][2].retry_at is None:
            heapq.heappop(delayed)  # cancelled while waiting
        return delayed[0][0] if delayed else None

    def release_due(self, now: float) -> int:
        """Move tasks whose back-off has passed into the queue; returns how many."""
        delayed = self._delayed
        released = 0
        while delayed and delayed[0][0] <= now:
            _, _, rec = heapq.heappop(delayed)
            if rec.retry_at is None or rec.state is not _QUEUED:
                continue
            rec.retry_at = None
            self.queue.push(rec.task.user, rec.task.priority, rec)
            released += 1
        return released

    @property
    def waiting_retry(self) -> int:
        return sum(1 for _, _, rec in self._delayed if rec.retry_at is not None)

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
        elif rec.retry_at is not None:
            rec.retry_at = None  # left lazily in the delay heap
        else:
            self.queue.remove(rec.task.user, rec.task.priority, rec)
        job = rec.job
        result["job"] = job.id
        result["submitted"] = rec.submitted
        result.setdefault("attempt", rec.attempt)
        if rec.history:
            result["attempts"] = rec.history
        rec.state = new_state
        rec.result = result
        job.counts[state] -= 1
        job.counts[new_state] += 1
        job.results.append(result)
        self.finished_total += 1
        self.finished_by_state[new_state] += 1
        self.recent.append(result)
        self.recorder.result(rec.task.id, job.id, result)
        return True

    def finish_without_running(self, rec: TaskRecord, state: TaskState, error: str) -> bool:
        """End a task that produced no result of its own (cancelled, lost worker)."""
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
                "finished": time.time(),
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
        """Cancel queued (and back-off waiting) tasks of a job, or one task, at once.

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
        if job is not None and not job.sealed:
            job.sealed = True  # a cancelled job takes no more tasks, so streams can end
            self.recorder.job_sealed(job.id)
        return cancelled, running

    def collected(self, job: Job, when: float) -> None:
        """A client received the job's last result."""
        if job.collected_at is None:
            job.collected_at = when
            self.recorder.job_collected(job.id, when)

    def expire(self, *, ttl_s: float, max_age_s: float, now: float | None = None) -> int:
        """Drop finished jobs collected over ``ttl_s`` ago or created over ``max_age_s`` ago."""
        now = time.time() if now is None else now
        dropped = [
            job
            for job in self.jobs.values()
            if job.done
            and (
                (job.collected_at is not None and now - job.collected_at > ttl_s)
                or now - job.created > max_age_s
            )
        ]
        for job in dropped:
            for rec in job.tasks:
                if self.tasks.get(rec.task.id) is rec:
                    del self.tasks[rec.task.id]
            del self.jobs[job.id]
        if dropped:
            self.recorder.jobs_dropped([job.id for job in dropped])
        return len(dropped)

    @property
    def queued_total(self) -> int:
        return len(self.queue)
