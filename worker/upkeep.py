"""The worker daemon's periodic pass over what it holds (``reply_interval_s`` apart).

In order: send finished results to their reply queues; mark complete bundles done (with
their summary) and queue their messages for deletion; during a drain, hand back bundles
with unrun tasks; delete messages; renew due leases (recording the tasks reported since
the last write, reading cancellations); renew the visibility of every held message.
Every AWS failure is logged and the step is tried again on the next pass.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from protocol.aws import AwsError
from worker.claims import ClaimStore, LeaseLost
from worker.held import HeldBundle, Holdings
from worker.queue_ops import change_visibility, delete_messages
from worker.replies import Outgoing, send_replies

log = structlog.get_logger("taskmill.worker")

RECORD_SECONDS_PER_UNIT = 1.0


class Upkeep:
    def __init__(
        self,
        *,
        sqs: Any,
        claims: ClaimStore,
        holdings: Holdings,
        request_url: str,
        worker_id: str,
        lease_s: float,
        visibility_timeout_s: int,
        record_interval_s: float,
    ) -> None:
        self.sqs = sqs
        self.claims = claims
        self.holdings = holdings
        self.request_url = request_url
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.visibility_timeout_s = visibility_timeout_s
        self.record_interval_s = record_interval_s
        self.to_delete: list[str] = []  # receipts of finished (or duplicate) bundles
        self.draining = False
        self.bundles_finished = 0
        self.visibility_renewed_at = time.monotonic()

    @property
    def idle(self) -> bool:
        return not self.holdings.bundles and not self.to_delete

    async def run_once(self) -> None:
        await self._send_replies()
        await self._finish_bundles()
        if self.draining:
            await self._release_bundles()
        if self.to_delete:
            receipts, self.to_delete = self.to_delete, []
            self.to_delete.extend(await delete_messages(self.sqs, self.request_url, receipts))
        await self._renew_leases()
        await self._renew_visibility()

    async def _send_replies(self) -> None:
        outgoing: list[Outgoing] = []
        for held in self.holdings:
            final = held.complete
            if held.unsent or (final and not held.final_sent):
                outgoing.append(Outgoing(held.bundle.reply_queue, held.id, held.unsent, final))
                held.unsent = []
        if not outgoing:
            return
        await send_replies(self.sqs, self.worker_id, outgoing)
        for out in outgoing:
            maybe = self.holdings.get(out.bundle_id)
            if maybe is None:
                continue
            held = maybe
            failed = {id(r) for r in out.failed}
            held.mark_sent([r for r in out.results if id(r) not in failed])
            if out.failed:
                held.unsent[:0] = out.failed
            elif out.final_delivered:
                held.final_sent = True

    async def _finish_bundles(self) -> None:
        ready = [h for h in self.holdings if h.ready_to_finish]
        if not ready:
            return
        outcomes = await asyncio.gather(
            *(self.claims.finish(h.id, h.attempt, h.summary_rows()) for h in ready),
            return_exceptions=True,
        )
        for held, outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, LeaseLost):
                log.warning("lease lost before the bundle was marked done", bundle=held.id)
                self.holdings.drop(held)
            elif isinstance(outcome, AwsError):
                log.warning("marking a bundle done failed; will retry", error=str(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                self.to_delete.extend(held.receipts)
                self.bundles_finished += 1
                self.holdings.drop(held)
                log.info("bundle done", bundle=held.id, attempt=held.attempt)

    async def _release_bundles(self) -> None:
        """Hand back drained bundles: lease ended (reported tasks recorded), then visible.

        In that order: visible first, another worker could find the lease still running
        and hide the message for a whole lease.
        """
        ready = [h for h in self.holdings if h.ready_to_release]
        if not ready:
            return
        outcomes = await asyncio.gather(
            *(self.claims.release(h.id, h.attempt, reported=h.unrecorded) for h in ready),
            return_exceptions=True,
        )
        released: list[HeldBundle] = []
        for held, outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, LeaseLost):
                self.holdings.drop(held)
            elif isinstance(outcome, AwsError):
                log.warning("releasing a bundle failed; will retry", error=str(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                released.append(held)
        if not released:
            return
        try:
            await change_visibility(
                self.sqs, self.request_url, [(r, 0) for h in released for r in h.receipts]
            )
        except AwsError as exc:
            # The lease is already over: the messages return after their visibility timeout.
            log.warning("making released bundles visible failed", error=str(exc))
        for held in released:
            log.info("bundle handed back", bundle=held.id, unrun=len(held.withdrawn))
            self.holdings.drop(held)

    async def _renew_leases(self) -> None:
        """Extend due leases, recording reported tasks and reading cancellations.

        A lease is due every third of its length, or sooner when results sent to the
        reply queue have waited long enough to be recorded (until they are, a later owner
        would run those tasks again): see :meth:`_record_after`.
        """
        now = time.monotonic()
        period = self.lease_s / 3
        due = [
            h
            for h in self.holdings
            if now - h.lease_renewed_at >= period
            or (
                h.unrecorded_since is not None and now - h.unrecorded_since >= self._record_after(h)
            )
        ]
        if not due:
            return
        counts = [len(h.unrecorded) for h in due]
        outcomes = await asyncio.gather(
            *(self.claims.extend(h.id, h.attempt, reported=list(h.unrecorded)) for h in due),
            return_exceptions=True,
        )
        for held, count, outcome in zip(due, counts, outcomes, strict=True):
            if isinstance(outcome, LeaseLost):
                self.holdings.abandon(held)
            elif isinstance(outcome, AwsError):
                log.warning("lease renewal failed; will retry", bundle=held.id, error=str(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                held.lease_renewed_at = now
                held.mark_recorded(count)
                self.holdings.cancel(held, outcome)

    def _record_after(self, held: HeldBundle) -> float:
        """How long sent results may wait to be recorded: ``record_interval_s``, stretched
        for a big item. Every write is billed for the whole item, which grows with each
        record; one second per write unit beyond the first keeps a long bundle's records
        at about one write unit a second instead of a cost growing with its square."""
        extra_units = self.claims.units_per_write(held.id) - 1
        return max(self.record_interval_s, RECORD_SECONDS_PER_UNIT * extra_units)

    async def _renew_visibility(self) -> None:
        """Every third of the visibility timeout, for every held message at once."""
        now = time.monotonic()
        timeout = self.visibility_timeout_s
        if not self.holdings.bundles or now - self.visibility_renewed_at < timeout / 3:
            return
        self.visibility_renewed_at = now
        receipts = [r for h in self.holdings for r in h.receipts]
        try:
            await change_visibility(self.sqs, self.request_url, [(r, timeout) for r in receipts])
        except AwsError as exc:
            log.warning("visibility renewal failed; will retry", error=str(exc))
            self.visibility_renewed_at = 0.0
