"""The remote worker daemon, ``taskmill worker -s QUEUE -t N``: runs bundles from SQS.

Three owned background tasks share one event loop (uvloop):

- **receive**: long-polls the request queue while fewer than N tasks are in hand, claims
  each bundle in the tasks table (:mod:`worker.claims`) and gives its tasks to the
  process pool (:mod:`worker.pool`, one ``worker.process`` per slot);
- **upkeep**: every ``reply_interval_s`` while anything is held, sends finished results to
  the bundles' reply queues (:mod:`worker.replies`), marks complete bundles done with their
  summary and deletes their messages, renews leases (recording reported tasks, reading
  cancellations) and the messages' visibility, and during a drain hands bundles back;
- **fleet**: the worker's heartbeat in the workers table (:mod:`worker.fleet`), which also
  carries the autoscaler's drain request.

Stopping (SIGTERM/SIGINT, idle timeout, drain request) only sets an event; :meth:`close`
then drains in order. ``docs/remote-workers.md`` explains the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import shlex
import signal
import subprocess
import time
from collections.abc import Coroutine
from enum import StrEnum
from typing import Any

import structlog
import uvloop

from protocol.aws import AwsClients, AwsError, AwsSettings, aws_errors
from protocol.bundles import (
    WORKER_DRAINING,
    WORKER_RUNNING,
    WORKER_STOPPED,
    Bundle,
    BundleError,
    decode_bundle,
)
from protocol.logs import configure_logging
from worker.claims import AlreadyDone, Claimed, ClaimStore, HeldElsewhere
from worker.daemon_settings import MAX_MESSAGES_PER_RECEIVE, WorkerDaemonSettings
from worker.daemon_settings import default_worker_id as _default_worker_id
from worker.errors import DaemonStartError, ProcessStartError
from worker.fleet import FleetRegistry
from worker.held import Holdings
from worker.pool import ProcessPool
from worker.queue_ops import change_visibility, dead_letter
from worker.upkeep import Upkeep

log = structlog.get_logger("taskmill.worker")

LEASE_MARGIN_S = 1.0  # a bundle held elsewhere is hidden until its lease ends, plus this
MAX_VISIBILITY_S = 12 * 3600  # SQS's longest visibility timeout
HANDBACK_TIMEOUT_S = 30.0  # after the drain, to send, record and release what is held
RECEIVE_RETRY_MAX_S = 30.0
PREFLIGHT_ATTEMPTS = 2  # at start, a wrong name or endpoint is reported in seconds


class StopReason(StrEnum):
    SIGNAL = "signal"
    IDLE = "idle"
    FLEET_DRAIN = "drain requested"
    FAILED = "internal error"  # a background loop died of a bug: drain, exit 1


def _check_bundle(bundle: Bundle) -> None:
    if not bundle.reply_queue:
        raise BundleError(f"bundle {bundle.id} names no reply queue")
    ids = [str(t["id"]) for t in bundle.tasks]
    if len(set(ids)) != len(ids):
        raise BundleError(f"bundle {bundle.id} has duplicate task ids")


class WorkerDaemon:
    def __init__(
        self,
        settings: WorkerDaemonSettings,
        aws: AwsSettings,
        *,
        clients: AwsClients | None = None,
    ) -> None:
        self.settings = settings
        self.aws = aws
        self.worker_id = settings.worker_id or _default_worker_id()
        self.clients = clients or AwsClients(aws)
        self.pool = ProcessPool(
            settings.slots,
            name=self.worker_id,
            handlers=settings.handlers,
            on_results=self._on_pool_results,
            on_lost=self._on_lost_results,
            log_level=settings.log_level,
            log_format="console" if settings.log_format == "console" else "json",
            kill_grace_s=settings.kill_grace_s,
        )
        self.holdings = Holdings(self.pool, self.worker_id)
        self.stop_reason: StopReason | None = None
        self.request_url = ""
        self.dlq_url = ""
        self._sqs: Any = None
        self._claims: ClaimStore | None = None
        self._fleet: FleetRegistry | None = None
        self._upkeep: Upkeep | None = None
        self._stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # something for the upkeep loop
        self._capacity = asyncio.Event()  # a task finished: maybe receive again
        self._upkept = asyncio.Event()  # an upkeep pass ended
        self._tasks: set[asyncio.Task[None]] = set()
        self._receiver: asyncio.Task[None] | None = None
        self._taking = False  # the receiver is claiming: not to be cancelled
        self._closed = False
        self._avg_bundle_tasks = 1.0
        self._last_received = time.monotonic()

    @property
    def claims(self) -> ClaimStore:
        assert self._claims is not None, "start() first"
        return self._claims

    @property
    def upkeep(self) -> Upkeep:
        assert self._upkeep is not None, "start() first"
        return self._upkeep

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Check the queues and tables, register, start the processes and the loops.

        Raises :class:`DaemonStartError` with one line saying what is wrong.
        """
        aws = self.aws
        try:
            preflight = AwsClients(
                dataclasses.replace(aws, max_aws_attempts=PREFLIGHT_ATTEMPTS),
                counter=self.clients.counter,
            )
            async with preflight.client("sqs") as sqs, preflight.client("dynamodb") as ddb:
                self.request_url = await _queue_url(sqs, aws.request_queue)
                self.dlq_url = await _queue_url(sqs, aws.dead_letter_queue)
                await ClaimStore(ddb, aws.tasks_table, self.worker_id, lease_s=1).check_table()
            self._sqs = await self._stack.enter_async_context(self.clients.client("sqs"))
            ddb = await self._stack.enter_async_context(self.clients.client("dynamodb"))
            self._claims = ClaimStore(ddb, aws.tasks_table, self.worker_id, lease_s=aws.lease_s)
            fleet = FleetRegistry(
                ddb,
                aws.workers_table,
                self.worker_id,
                slots=self.settings.slots,
                instance_id=self.settings.instance_id,
            )
            await fleet.register()  # a missing workers table is found here
            self._fleet = fleet
            await self.pool.start()
        except (AwsError, ProcessStartError) as exc:
            await self._fleet_heartbeat(WORKER_STOPPED)
            await self._stack.aclose()
            raise DaemonStartError(str(exc)) from exc
        self._upkeep = Upkeep(
            sqs=self._sqs,
            claims=self._claims,
            holdings=self.holdings,
            request_url=self.request_url,
            worker_id=self.worker_id,
            lease_s=aws.lease_s,
            visibility_timeout_s=aws.visibility_timeout_s,
            record_interval_s=self.settings.record_interval_s,
        )
        self._last_received = time.monotonic()
        self._receiver = self._spawn(self._receive_loop(), "receive")
        self._spawn(self._upkeep_loop(), "upkeep")
        self._spawn(self._fleet_loop(), "fleet")
        log.info(
            "worker started",
            worker=self.worker_id,
            queue=aws.request_queue,
            slots=self.settings.slots,
            idle_timeout_s=self.settings.idle_exit,
        )

    def request_stop(self, reason: StopReason) -> None:
        """Signal handlers and loops call this; the drain runs in :meth:`run`."""
        if self.stop_reason is None:
            self.stop_reason = reason
        # At once, not when the drain starts: a SIGTERM sent to the whole process group
        # may end the worker processes first, and their tasks must then be handed back.
        self.holdings.draining = True
        self._stop.set()

    async def run(self) -> StopReason:
        """Serve until asked to stop, then drain and close. ``start()`` first."""
        await self._stop.wait()
        await self.close()
        return self.stop_reason or StopReason.SIGNAL

    async def close(self) -> None:
        """Drain: stop receiving, hand back unstarted bundles at once, give running tasks
        ``drain_grace_s``, kill and hand back the rest, then mark the worker stopped."""
        if self._closed:
            return
        self._closed = True
        reason = self.stop_reason or StopReason.SIGNAL
        holdings, pool = self.holdings, self.pool
        log.info("worker draining", reason=reason, bundles=len(holdings), running=pool.busy)
        await self._stop_receiving()
        self.upkeep.draining = True
        holdings.withdraw_unstarted()
        self._wake.set()  # bundles with nothing running are handed back on the next pass
        await self._fleet_heartbeat(WORKER_DRAINING)
        if pool.held:
            try:
                await asyncio.wait_for(pool.wait_idle(), self.settings.drain_grace_s)
            except TimeoutError:
                log.warning("drain grace over: killing running tasks", running=pool.busy)
                holdings.withdraw_all()
        await pool.close(kill=bool(pool.held))
        try:
            await asyncio.wait_for(self._handed_back(), HANDBACK_TIMEOUT_S)
        except TimeoutError:
            log.error(
                "bundles not handed back; they return when their lease and visibility end",
                bundles=sorted(holdings.bundles),
            )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._fleet_heartbeat(WORKER_STOPPED)
        counts = self.clients.counter.snapshot()
        tasks = holdings.tasks_finished
        log.info(
            "worker stopped",
            reason=reason,
            tasks=tasks,
            bundles=self.upkeep.bundles_finished,
            aws_requests=counts["requests"],
            aws_requests_total=counts["total"],
            ddb_write_units=counts["ddb_write_units"],
            tasks_table_write_units_est=self.claims.estimated_write_units,
            requests_per_task=round(counts["total"] / tasks, 3) if tasks else None,
        )
        await self._stack.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # A loop died of a bug: a worker that no longer receives or heartbeats must not
        # linger. Drain what it holds and exit non-zero for the service manager to restart.
        log.error("background task failed", task=task.get_name(), exc_info=task.exception())
        self.request_stop(StopReason.FAILED)

    async def _stop_receiving(self) -> None:
        receiver = self._receiver
        if receiver is None:
            return
        # A claim in progress is let finish (cancelled, it could leave a claimed bundle
        # nobody runs until its lease ends); a long poll is cancelled: messages it may
        # have taken come back after their visibility timeout.
        if not self._taking:
            receiver.cancel()
        self._capacity.set()
        await asyncio.gather(receiver, return_exceptions=True)

    async def _handed_back(self) -> None:
        while not self.upkeep.idle:
            self._wake.set()
            self._upkept.clear()
            await self._upkept.wait()

    # --- receiving -----------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        settings = self.settings
        retry_s = 0.0
        while not self._stop.is_set():
            free = settings.slots - self.pool.outstanding
            if free <= 0:
                self._capacity.clear()
                await self._capacity.wait()
                continue
            wait_s = settings.receive_wait_s
            idle_limit = settings.idle_exit
            if idle_limit is not None and not self.holdings.bundles:
                idle_for = time.monotonic() - max(self._last_received, self.holdings.emptied_at)
                if idle_for >= idle_limit:
                    log.info("idle: exiting", idle_s=round(idle_for, 1))
                    self.request_stop(StopReason.IDLE)
                    return
                wait_s = max(1, min(wait_s, math.ceil(idle_limit - idle_for)))
            # Receive about as many bundles as there are free slots: held bundles wait
            # here while another worker might be idle (the prefetch problem).
            per_bundle = max(1, round(self._avg_bundle_tasks))
            count = max(1, min(MAX_MESSAGES_PER_RECEIVE, free // per_bundle))
            try:
                with aws_errors(f"receiving from {self.aws.request_queue}"):
                    reply = await self._sqs.receive_message(
                        QueueUrl=self.request_url,
                        MaxNumberOfMessages=count,
                        WaitTimeSeconds=wait_s,
                        VisibilityTimeout=self.aws.visibility_timeout_s,
                    )
            except AwsError as exc:
                retry_s = min(RECEIVE_RETRY_MAX_S, max(1.0, retry_s * 2))
                log.warning("receive failed; retrying", error=str(exc), retry_in_s=retry_s)
                await asyncio.sleep(retry_s)
                continue
            retry_s = 0.0
            messages = reply.get("Messages") or []
            if messages:
                self._last_received = time.monotonic()
                self._taking = True
                try:
                    await self._take(messages)
                finally:
                    self._taking = False

    async def _take(self, messages: list[dict[str, Any]]) -> None:
        """Claim the bundles in ``messages``; dead-letter whatever is not a bundle."""
        fresh: dict[str, tuple[Bundle, list[str]]] = {}
        for message in messages:
            receipt = message["ReceiptHandle"]
            try:
                bundle = decode_bundle(message.get("Body") or "")
                _check_bundle(bundle)
            except BundleError as exc:
                await self._dead_letter(message, str(exc))
                continue
            held = self.holdings.get(bundle.id)
            if held is not None:  # another copy of a bundle running here: delete it with it
                log.info("duplicate delivery of a held bundle", bundle=bundle.id)
                held.receipts.append(receipt)
            elif bundle.id in fresh:
                fresh[bundle.id][1].append(receipt)
            else:
                fresh[bundle.id] = (bundle, [receipt])
        if not fresh:
            return
        pending = list(fresh.values())
        outcomes = await asyncio.gather(
            *(self.claims.claim(bundle.id, bundle.scheduler) for bundle, _ in pending),
            return_exceptions=True,
        )
        hide: list[tuple[str, int]] = []
        now = time.time()
        for (bundle, receipts), outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, Claimed):
                if not self.holdings.bundles:  # the receive just set the visibility
                    self.upkeep.visibility_renewed_at = time.monotonic()
                self.holdings.hold(bundle, receipts, outcome)
                self._avg_bundle_tasks = 0.7 * self._avg_bundle_tasks + 0.3 * max(
                    1, len(bundle.tasks)
                )
            elif isinstance(outcome, AlreadyDone):
                log.info("bundle already done: deleting the duplicate", bundle=bundle.id)
                self.upkeep.to_delete.extend(receipts)
            elif isinstance(outcome, HeldElsewhere):
                # Not deleted, although another worker runs it: that worker may die, and
                # then nobody would ever run the bundle. Hidden until its lease ends, it
                # comes back then: done (deleted), still held (hidden again) or free.
                hide_s = math.ceil(outcome.lease_until - now + LEASE_MARGIN_S)
                hide_s = min(MAX_VISIBILITY_S, max(1, hide_s))
                log.info(
                    "bundle held by another worker",
                    bundle=bundle.id,
                    owner=outcome.owner,
                    hidden_s=hide_s,
                )
                hide.extend((receipt, hide_s) for receipt in receipts)
            elif isinstance(outcome, AwsError):
                log.warning(
                    "claim failed; the message returns after its visibility timeout",
                    bundle=bundle.id,
                    error=str(outcome),
                )
            else:
                raise outcome
        if hide:
            try:
                await change_visibility(self._sqs, self.request_url, hide)
            except AwsError as exc:
                log.warning("hiding bundles held elsewhere failed", error=str(exc))
        self._wake.set()

    async def _dead_letter(self, message: dict[str, Any], reason: str) -> None:
        message_id = message.get("MessageId")
        log.error(
            "not a bundle: moving it to the dead-letter queue", message=message_id, error=reason
        )
        try:
            await dead_letter(
                self._sqs,
                queue_url=self.request_url,
                dlq_url=self.dlq_url,
                message=message,
                reason=reason,
            )
        except AwsError as exc:
            # It comes back after its visibility timeout; the redrive policy moves it at last.
            log.warning("dead-lettering failed", message=message_id, error=str(exc))

    def _on_pool_results(self, results: list[dict[str, Any]]) -> None:
        self.holdings.on_results(results)
        self._capacity.set()
        self._wake.set()

    def _on_lost_results(self, results: list[dict[str, Any]]) -> None:
        self.holdings.on_lost(results)
        self._capacity.set()
        self._wake.set()

    # --- upkeep and fleet ----------------------------------------------------------------

    async def _upkeep_loop(self) -> None:
        upkeep = self.upkeep
        while True:
            if upkeep.idle:
                self._wake.clear()
                await self._wake.wait()
            else:
                await asyncio.sleep(self.settings.reply_interval_s)
            try:
                await upkeep.run_once()
            except Exception:
                # A bug here must not stop the heartbeats of everything held.
                log.exception("upkeep pass failed")
            self._capacity.set()  # a lost lease may have freed slots
            self._upkept.set()

    async def _fleet_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.fleet_heartbeat_s)
            state = WORKER_DRAINING if self._closed else WORKER_RUNNING
            if await self._fleet_heartbeat(state) and not self._stop.is_set():
                log.info("the fleet asked this worker to drain")
                self.request_stop(StopReason.FLEET_DRAIN)

    async def _fleet_heartbeat(self, state: str) -> bool:
        """Write the worker's item; True when a drain was requested. Errors are logged."""
        if self._fleet is None:
            return False
        try:
            return await self._fleet.heartbeat(
                state=state,
                running=self.pool.busy,
                bundles=len(self.holdings),
                requests=self.clients.counter.total(),
            )
        except AwsError as exc:
            log.warning("workers-table heartbeat failed", error=str(exc))
            return False


async def _queue_url(sqs: Any, name: str) -> str:
    with aws_errors(f"finding queue {name}"):
        url: str = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
    return url


# --- process entry point -------------------------------------------------------------------


async def run_daemon(settings: WorkerDaemonSettings, aws: AwsSettings) -> StopReason:
    daemon = WorkerDaemon(settings, aws)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.request_stop, StopReason.SIGNAL)
    try:
        await daemon.start()
        return await daemon.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def power_off(command: str) -> None:
    """Run the poweroff command (after a clean exit: the worker is already stopped)."""
    log.info("powering off", command=command)
    try:
        done = subprocess.run(shlex.split(command), check=False, capture_output=True, text=True)
    except OSError as exc:
        log.error("poweroff command failed", error=str(exc))
        return
    if done.returncode:
        log.error("poweroff command failed", code=done.returncode, stderr=done.stderr[-500:])


def serve(settings: WorkerDaemonSettings, aws: AwsSettings) -> int:
    """Run the daemon on uvloop; returns the exit status. Raises :class:`DaemonStartError`."""
    configure_logging(settings.log_level, settings.log_format)
    reason = uvloop.run(run_daemon(settings, aws))
    if reason is StopReason.FAILED:
        return 1
    if settings.poweroff and reason in (StopReason.IDLE, StopReason.FLEET_DRAIN):
        power_off(settings.poweroff_command)
    return 0
