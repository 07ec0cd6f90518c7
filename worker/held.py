"""What the worker daemon holds: the bundles it has claimed, and whose task is whose.

Inside the daemon a task is identified by an integer pool key (ids from different bundles
could collide). Each key of a held bundle is in ``remaining`` (in the pool, no result yet)
or ``withdrawn`` (taken back unrun at a drain, or killed when the drain grace ran out:
the next owner runs it), or it has a result, which moves through ``unsent`` (waiting for
the reply queue), ``unrecorded`` (sent, not yet in the item's ``done_ids``) and ends in
``rows`` (sent and recorded; kept for the bundle's summary).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from protocol.bundles import Bundle
from worker.claims import Claimed, summary_row
from worker.execute import cancelled_result
from worker.pool import PoolTask, ProcessPool

log = structlog.get_logger("taskmill.worker")


@dataclass(eq=False, slots=True)
class HeldBundle:
    bundle: Bundle
    receipts: list[str]  # receipt handles of every SQS copy of this bundle held
    attempt: int  # the claim's attempt, part of the ownership condition
    prior_rows: list[dict[str, Any]]  # summary rows reported by earlier owners
    task_ids: dict[int, Any] = field(default_factory=dict)  # pool key -> the task's id
    remaining: set[int] = field(default_factory=set)
    withdrawn: set[int] = field(default_factory=set)
    cancel_asked: set[int] = field(default_factory=set)  # keys already given to pool.cancel
    unsent: list[dict[str, Any]] = field(default_factory=list)  # full results
    unrecorded: list[dict[str, Any]] = field(default_factory=list)  # summary rows
    unrecorded_since: float | None = None  # monotonic time of the oldest unrecorded send
    rows: list[dict[str, Any]] = field(default_factory=list)  # summary rows, recorded
    lease_renewed_at: float = field(default_factory=time.monotonic)
    final_sent: bool = False

    @property
    def id(self) -> str:
        return self.bundle.id

    @property
    def complete(self) -> bool:
        """Every task has a result (none withdrawn): the bundle can be marked done."""
        return not self.remaining and not self.withdrawn

    @property
    def ready_to_finish(self) -> bool:
        return self.complete and self.final_sent and not self.unsent

    @property
    def ready_to_release(self) -> bool:
        """Drained: nothing of it left in the pool, its results sent, some tasks unrun."""
        return not self.remaining and bool(self.withdrawn) and not self.unsent

    def mark_sent(self, results: list[dict[str, Any]]) -> None:
        """``results`` reached the reply queue; only their summary rows are kept."""
        if not results:
            return
        if not self.unrecorded:
            self.unrecorded_since = time.monotonic()
        self.unrecorded.extend(summary_row(r) for r in results)

    def mark_recorded(self, count: int) -> None:
        """The first ``count`` unrecorded results are now in the item."""
        recorded, self.unrecorded = self.unrecorded[:count], self.unrecorded[count:]
        self.rows.extend(recorded)
        self.unrecorded_since = time.monotonic() if self.unrecorded else None

    def summary_rows(self) -> list[dict[str, Any]]:
        return [*self.prior_rows, *self.rows, *self.unrecorded]


class Holdings:
    """The held bundles by id, feeding their tasks to ``pool`` and taking its results."""

    def __init__(self, pool: ProcessPool, worker_id: str) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.bundles: dict[str, HeldBundle] = {}
        self.tasks_finished = 0
        self.draining = False
        self.emptied_at = time.monotonic()  # when the last bundle went
        self._key_owner: dict[int, HeldBundle] = {}  # pool key -> its bundle, until a result
        self._keys = itertools.count(1)

    def __len__(self) -> int:
        return len(self.bundles)

    def __iter__(self) -> Iterator[HeldBundle]:
        return iter(list(self.bundles.values()))

    def get(self, bundle_id: str) -> HeldBundle | None:
        return self.bundles.get(bundle_id)

    def hold(self, bundle: Bundle, receipts: list[str], claim: Claimed) -> HeldBundle:
        """Take a claimed bundle: its tasks go to the pool, except those an earlier owner
        reported (never run twice) and those the scheduler cancelled (reported as such)."""
        held = HeldBundle(
            bundle=bundle, receipts=receipts, attempt=claim.attempt, prior_rows=claim.prior_rows
        )
        tasks: list[PoolTask] = []
        skipped = 0
        for task in bundle.tasks:
            task_id = task["id"]
            if str(task_id) in claim.done_ids:
                skipped += 1
            elif str(task_id) in claim.cancel:
                held.unsent.append(cancelled_result(task, worker_id=self.worker_id))
            else:
                key = next(self._keys)
                held.task_ids[key] = task_id
                held.remaining.add(key)
                self._key_owner[key] = held
                tasks.append(PoolTask(key, dict(task, id=key)))
        self.bundles[bundle.id] = held
        self.pool.submit(tasks)
        log.info(
            "bundle claimed",
            bundle=bundle.id,
            tasks=len(bundle.tasks),
            attempt=claim.attempt,
            already_reported=skipped,
        )
        return held

    def on_results(self, results: list[dict[str, Any]]) -> None:
        """The pool's callback: results go to their bundle's ``unsent``, with real ids."""
        for result in results:
            key = result.get("id")
            held = self._key_owner.pop(key, None) if isinstance(key, int) else None
            if held is None or key not in held.remaining:
                continue  # withdrawn at a drain, or its bundle's lease was lost
            held.remaining.discard(key)
            result["id"] = held.task_ids[key]
            result["worker"] = self.worker_id
            held.unsent.append(result)
            self.tasks_finished += 1

    def on_lost(self, results: list[dict[str, Any]]) -> None:
        """A process died under these tasks. Reported as failed, except during a drain:
        then the likely cause is a SIGTERM that reached the processes too (a service
        manager stopping the whole group), and the next owner should run them."""
        if not self.draining:
            self.on_results(results)
            return
        for result in results:
            key = result.get("id")
            held = self._key_owner.get(key) if isinstance(key, int) else None
            if held is not None and key in held.remaining:
                log.info("task lost while draining: handed back", bundle=held.id)
                self.withdraw(held, {key})

    def withdraw(self, held: HeldBundle, keys: set[int]) -> None:
        """Tasks given up unrun (drain): the bundle's next owner runs them."""
        if not keys:
            return
        held.remaining -= keys
        held.withdrawn |= keys
        for key in keys:
            self._key_owner.pop(key, None)

    def withdraw_unstarted(self) -> None:
        """Drain: take back every task still queued in the pool."""
        for held in self:
            self.withdraw(held, self.pool.withdraw(held.remaining))

    def withdraw_all(self) -> None:
        """Drain grace over: whatever is still running is given up too (and then killed)."""
        for held in self:
            self.withdraw(held, set(held.remaining))

    def drop(self, held: HeldBundle) -> None:
        self.bundles.pop(held.id, None)
        for key in held.remaining:
            self._key_owner.pop(key, None)
        if not self.bundles:
            self.emptied_at = time.monotonic()

    def abandon(self, held: HeldBundle) -> None:
        """The lease was lost (another worker owns the bundle now): stop its tasks, keep
        its message (it is the new owner's), drop whatever results it still had."""
        keys = set(held.remaining)
        taken = self.pool.withdraw(keys)
        self.pool.cancel(keys - taken)
        log.warning("lease lost: abandoning bundle", bundle=held.id, unfinished=len(keys))
        self.drop(held)

    def cancel(self, held: HeldBundle, task_ids: frozenset[str]) -> None:
        """The scheduler asked to cancel ``task_ids`` (the item's ``cancel`` set)."""
        if not task_ids:
            return
        keys = {k for k in held.remaining if str(held.task_ids[k]) in task_ids}
        keys -= held.cancel_asked
        if keys:
            held.cancel_asked |= keys
            log.info("cancelling tasks", bundle=held.id, tasks=len(keys))
            self.pool.cancel(keys)
