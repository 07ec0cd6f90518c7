"""Moves tasks from the :class:`TaskTable` to workers and results back.

The batching policy (:func:`hold_target`) is a pure function. The dispatcher
itself is a thin layer: a coalesced ``pump`` callback (at most one per event-loop
tick) tops workers up, and result frames are applied to the table in bulk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

from protocol.model import TaskKind, TaskState
from scheduler.local import LocalWorker
from scheduler.records import Job, TaskRecord
from scheduler.retry import RetryPolicy
from scheduler.state import TaskTable
from scheduler.telemetry import DURATION_BUCKETS, Histogram
from worker.pool import hold_target as pool_hold_target

log = structlog.get_logger("taskmill.dispatch")

# Local workers may hold more tiny tasks than the worker daemon's pool (64): each run
# frame costs the scheduler a write and an encode, so tiny tasks go in as few as possible.
MAX_HOLD = 1024


def hold_target(avg_runtime_s: float | None, backlog: int, workers: int) -> int:
    """How many tasks one local worker should hold: :func:`worker.pool.hold_target`."""
    return pool_hold_target(avg_runtime_s, backlog, workers, max_hold=MAX_HOLD)


class RemoteSink(Protocol):
    """What the dispatcher needs of the SQS backend (scheduler.remote.RemoteBackend)."""

    @property
    def accepting(self) -> bool: ...
    def room(self) -> int: ...
    def send_tasks(self, recs: list[TaskRecord]) -> None: ...
    def cancel(self, recs: list[TaskRecord]) -> None: ...


class Dispatcher:
    """Owns the task table's hand-out to local workers and the result path."""

    def __init__(
        self,
        table: TaskTable,
        *,
        on_job_progress: Callable[[Iterable[Job]], None],
        retry: RetryPolicy | None = None,
        kill_grace_s: float = 2.0,
    ) -> None:
        self.table = table
        self.workers: dict[str, LocalWorker] = {}
        self.avg_runtime_s: float | None = None
        self.retry = retry or RetryPolicy()
        self._on_job_progress = on_job_progress
        self._pump_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._retry_timer_at: float | None = None
        # Running tasks a client cancelled: their next result or loss ends them as cancelled.
        self.cancelling: set[str] = set()
        self.kill_grace_s = kill_grace_s
        self.remote: RemoteSink | None = None  # the SQS backend, when -rw is on
        self._timers: set[asyncio.TimerHandle] = set()
        self.durations = Histogram(DURATION_BUCKETS)

    # --- workers -------------------------------------------------------------------

    def add_worker(self, worker: LocalWorker) -> None:
        self.workers[worker.id] = worker
        self._refresh_known_handlers()
        self.wake()

    def remove_worker(self, worker: LocalWorker) -> None:
        """A worker is gone: its held tasks are retried or failed, never lost."""
        self.workers.pop(worker.id, None)
        self._refresh_known_handlers()
        held = list(worker.held.values())
        worker.held.clear()
        if held:
            # Results come back in order, so only the first held task had started.
            first, rest = held[0], held[1:]
            self.table.put_back(rest)
            touched: set[Job] = set()
            if first.task.id in self.cancelling:
                self.cancelling.discard(first.task.id)
                if self.table.finish_without_running(
                    first, TaskState.CANCELLED, "cancelled while running"
                ):
                    touched.add(first.job)
            else:
                reason = (
                    f"local worker {worker.id} exited (code {worker.returncode}) "
                    "while running the task"
                )
                touched = self.table.retry_or_fail([first], reason)
            if touched:
                self._on_job_progress(touched)
        self.wake()

    def _refresh_known_handlers(self) -> None:
        if not self.workers:
            return  # keep the last known set while workers restart
        names: set[str] = set()
        for w in self.workers.values():
            names |= w.handlers
        self.table.known_handlers = frozenset(names)

    # --- dispatch ------------------------------------------------------------------

    def wake(self) -> None:
        """Schedule a pump for the end of this tick (coalesced)."""
        if self._pump_scheduled:
            return
        self._pump_scheduled = True
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        table = self.table
        if not table.queued_total:
            return
        workers = [w for w in self.workers.values() if w.alive and not w.stopping]
        if workers:
            backlog = table.queued_total + table.running_total
            target = hold_target(self.avg_runtime_s, backlog, len(workers))
            for worker in workers:
                held = len(worker.held)
                if held > target // 2:
                    continue
                recs = table.take(target - held, worker.min_p, worker.max_p)
                if recs:
                    worker.send_tasks(recs)
                if not table.queued_total:
                    return
        remote = self.remote
        if remote is not None and remote.accepting:
            room = remote.room()
            if room > 0:
                recs = table.take(room)
                if recs:
                    remote.send_tasks(recs)

    # --- results -------------------------------------------------------------------

    def on_results(self, worker: LocalWorker, results: list[dict[str, Any]]) -> None:
        """A local worker's result frame."""
        for result in results:
            result["worker"] = worker.id
        self.apply_results(worker.held, results)

    def apply_results(self, held: dict[str, TaskRecord], results: list[dict[str, Any]]) -> None:
        """Apply results from any backend: ``held`` maps the ids that backend holds.

        A result for an id it no longer holds (a remote bundle run twice after a lost
        lease, a late result of a cancelled task) is dropped: each task has one outcome.
        """
        table = self.table
        touched: set[Job] = set()
        runtime_sum = 0.0
        timed = 0
        retry = self.retry
        cancelling = self.cancelling
        for result in results:
            rec = held.pop(result.get("id"), None)  # type: ignore[arg-type]
            if rec is None:
                log.debug("result for a task not held; dropped", id=result.get("id"))
                continue
            started, finished = result.get("started"), result.get("finished")
            if started is not None and finished is not None:
                runtime_sum += finished - started
                timed += 1
                self.durations.observe(finished - started)
            if cancelling and rec.task.id in cancelling:
                cancelling.discard(rec.task.id)
            elif retry.should_retry(result["state"], rec.attempt, rec.task.max_attempts):
                table.retry_later(rec, result, time.time() + retry.delay(rec.attempt))
                self._arm_retry_timer()
                continue
            if table.finish(rec, result):
                touched.add(rec.job)
        if timed:
            mean = runtime_sum / timed
            prev = self.avg_runtime_s
            self.avg_runtime_s = mean if prev is None else 0.7 * prev + 0.3 * mean
        if touched:
            self._on_job_progress(touched)
        self.wake()

    # --- cancellation --------------------------------------------------------------

    def cancel_running(self, recs: list[TaskRecord]) -> int:
        """Stop ``recs`` on the workers holding them; their results arrive as usual.

        A worker kills a running shell task's process group itself, and drops
        cancelled tasks it has not started. A Python call cannot be interrupted
        safely inside its process: if it is still running after the kill grace
        period, its worker is terminated (its other tasks go back to the queue).
        """
        by_worker: dict[str, list[str]] = {}
        remote: list[TaskRecord] = []
        for rec in recs:
            if rec.worker is None:
                continue
            self.cancelling.add(rec.task.id)
            if rec.worker in self.workers:
                by_worker.setdefault(rec.worker, []).append(rec.task.id)
            else:
                remote.append(rec)
        if remote and self.remote is not None:
            self.remote.cancel(remote)
        for wid, ids in by_worker.items():
            worker = self.workers.get(wid)
            if worker is None:
                continue
            worker.send_cancel(ids)
            running = next(iter(worker.held.values()), None)
            if (
                running is not None
                and running.task.kind is TaskKind.CALL
                and running.task.id in ids
            ):
                self._kill_if_still_running(worker, running)
        return sum(len(ids) for ids in by_worker.values()) + len(remote)

    def _kill_if_still_running(self, worker: LocalWorker, rec: TaskRecord) -> None:
        loop = self._loop or asyncio.get_running_loop()

        def check() -> None:
            self._timers.discard(handle)
            if rec.task.id in self.cancelling and rec.task.id in worker.held and worker.alive:
                log.info(
                    "terminating worker to cancel a running call", worker=worker.id, id=rec.task.id
                )
                worker.terminate()

        handle = loop.call_later(self.kill_grace_s, check)
        self._timers.add(handle)

    # --- retries -------------------------------------------------------------------

    def _arm_retry_timer(self) -> None:
        due = self.table.next_retry_at()
        if due is None or (self._retry_timer_at is not None and self._retry_timer_at <= due):
            return
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._retry_timer_at = due
        self._retry_timer = self._loop.call_later(
            max(0.0, due - time.time()), self._release_retries
        )

    def _release_retries(self) -> None:
        self._retry_timer = None
        self._retry_timer_at = None
        if self.table.release_due(time.time()):
            self.wake()
        self._arm_retry_timer()

    def close(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    def worker_info(self) -> list[dict[str, Any]]:
        now = time.time()
        return [dict(w.describe(), last_seen=now) for w in self.workers.values()]
