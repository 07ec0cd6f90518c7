"""The SQS backend: bundles out through the request queue, results back through our
own reply queue.

Tasks taken from the task table are packed into bundles (several tasks per SQS
message), sized by :func:`bundle_size` so ten thousand tiny tasks cost a few dozen
messages while a handful of long ones still spread over every worker slot, and sent
with SendMessageBatch. A response pump long-polls this scheduler's reply queue,
batch-receives and batch-deletes, and feeds results into the same path as local
results. Cancellation of a sent task is a write to its bundle's item in the tasks
table, which workers check at claim time and with every heartbeat.

If AWS fails after start, nothing accepted is lost: a batch that could not be sent
goes back to the front of the task queue and is retried with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from protocol.aws import AwsClients, AwsError, AwsSettings, aws_errors
from protocol.bundles import (
    BUNDLE_KEY,
    MAX_PACKED,
    SQS_MAX_BODY,
    Bundle,
    BundleError,
    decode_reply,
    encode_bundle,
    split_to_fit,
)
from protocol.model import TaskState
from scheduler.dead_letters import sweep
from scheduler.records import Job, TaskRecord
from scheduler.state import TaskTable

log = structlog.get_logger("taskmill.remote")

MAX_BUNDLE_TASKS = 1000
BUNDLE_SECONDS = 2.0  # about this much work per bundle once task durations are known
RECEIVE_WAIT_S = 20
FLEET_REFRESH_S = 10.0
BATCH_BYTES = SQS_MAX_BODY  # SendMessageBatch's limit on the whole batch
RETRY_MAX_S = 30.0


def bundle_size(
    backlog: int, fleet_slots: int, avg_runtime_s: float | None, limit: int = MAX_BUNDLE_TASKS
) -> int:
    """Tasks per bundle: pure policy.

    - spread: at least two bundles per known worker slot, so the backlog reaches every
      slot and the tail of a workload is not stuck in one bundle;
    - duration: once task durations are known, about ``BUNDLE_SECONDS`` of work per
      bundle (a bundle of long tasks is one task);
    - at most ``limit`` (1 turns bundling off); the message size limit applies on top.
    """
    spread = math.ceil(backlog / (2 * max(1, fleet_slots)))
    by_time = limit
    if avg_runtime_s is not None and avg_runtime_s > 0:
        by_time = max(1, int(BUNDLE_SECONDS / avg_runtime_s))
    return max(1, min(limit, spread, by_time))


def new_bundle_id() -> str:
    return "b" + os.urandom(8).hex()


class RemoteBackend:
    kind = "remote"

    def __init__(
        self,
        aws: AwsSettings,
        table: TaskTable,
        *,
        scheduler_id: str,
        on_results: Callable[[dict[str, TaskRecord], list[dict[str, Any]]], None],
        on_job_progress: Callable[[Iterable[Job]], None],
        avg_runtime: Callable[[], float | None],
        min_inflight: int = 10_000,
        delete_reply_queue_on_close: bool = False,
        receive_wait_s: int = RECEIVE_WAIT_S,
        max_bundle_tasks: int = MAX_BUNDLE_TASKS,
        dead_letter_sweep_s: float = 30.0,
        on_requeued: Callable[[], None] = lambda: None,
    ) -> None:
        self.aws = aws
        self.table = table
        self.scheduler_id = scheduler_id
        self.clients = AwsClients(aws)
        self.held: dict[str, TaskRecord] = {}  # task id -> record, for every task sent
        self.bundle_of: dict[str, str] = {}  # task id -> bundle id
        self.fleet_slots = 0
        self.min_inflight = min_inflight
        self.request_url = ""
        self.reply_url = ""
        self.bundles_sent = 0
        self.tasks_sent = 0
        self.results_received = 0
        self.fleet: list[dict[str, Any]] = []  # the workers table, as last read
        self.aws_error: str | None = None  # the last AWS failure, until a call succeeds
        self._on_results = on_results
        self._on_job_progress = on_job_progress
        self._avg_runtime = avg_runtime
        self._delete_reply_queue = delete_reply_queue_on_close
        self._receive_wait_s = receive_wait_s
        self.max_bundle_tasks = max_bundle_tasks
        self.dead_letter_sweep_s = dead_letter_sweep_s
        self.dead_lettered = 0  # bundles taken back from the dead-letter queue
        self._on_requeued = on_requeued
        self._dlq_url: str | None = None
        self._outbox: list[TaskRecord] = []
        self._outbox_ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stack = contextlib.AsyncExitStack()
        self._sqs: Any = None
        self._ddb: Any = None
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Find the queues and tables; raise :class:`AwsError` with one clear line if not."""
        aws = self.aws
        self._sqs = await self._stack.enter_async_context(self.clients.client("sqs"))
        self._ddb = await self._stack.enter_async_context(self.clients.client("dynamodb"))
        with aws_errors(f"finding the request queue {aws.request_queue!r}"):
            self.request_url = (await self._sqs.get_queue_url(QueueName=aws.request_queue))[
                "QueueUrl"
            ]
        with aws_errors(f"finding the tasks table {aws.tasks_table!r}"):
            await self._ddb.describe_table(TableName=aws.tasks_table)
        name = f"{aws.reply_queue_prefix}{self.scheduler_id}"[:80]
        with aws_errors(f"creating the reply queue {name!r}"):
            self.reply_url = (
                await self._sqs.create_queue(
                    QueueName=name,
                    Attributes={"MessageRetentionPeriod": str(4 * 24 * 3600)},
                )
            )["QueueUrl"]
        try:
            # Size the first bundles for the fleet that is already there.
            self.fleet_slots = await self._count_slots()
        except AwsError as exc:
            raise AwsError(f"{exc} (the workers table {aws.workers_table!r})") from exc
        try:
            with aws_errors(f"finding the dead-letter queue {aws.dead_letter_queue!r}"):
                self._dlq_url = (await self._sqs.get_queue_url(QueueName=aws.dead_letter_queue))[
                    "QueueUrl"
                ]
        except AwsError as exc:
            log.warning("no dead-letter queue: lost bundles will not be noticed", error=str(exc))
        loops = [self._send_loop(), self._receive_loop(), self._fleet_loop()]
        if self._dlq_url is not None:
            loops.append(self._dead_letter_loop(self._dlq_url))
        for coro in loops:
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
        log.info(
            "remote backend ready",
            request_queue=self.request_url,
            reply_queue=self.reply_url,
            scheduler=self.scheduler_id,
        )

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._delete_reply_queue and self.reply_url and self._sqs is not None:
            with contextlib.suppress(AwsError), aws_errors("deleting the reply queue"):
                await self._sqs.delete_queue(QueueUrl=self.reply_url)
        await self._stack.aclose()

    # --- dispatch (called by the dispatcher's pump) ----------------------------------

    @property
    def accepting(self) -> bool:
        return bool(self.request_url) and not self._closing

    def room(self) -> int:
        """How many more tasks to put in flight: enough to keep the fleet busy
        (and give an empty fleet a queue depth to scale on), not the whole backlog."""
        limit = max(self.min_inflight, 8 * self.fleet_slots)
        return limit - len(self.held) - len(self._outbox)

    def send_tasks(self, recs: list[TaskRecord]) -> None:
        self._outbox.extend(recs)
        self._outbox_ready.set()

    def cancel(self, recs: list[TaskRecord]) -> None:
        by_bundle: dict[str, list[str]] = {}
        for rec in recs:
            bundle = self.bundle_of.get(rec.task.id)
            if bundle is not None:
                by_bundle.setdefault(bundle, []).append(rec.task.id)
        if by_bundle:
            task = asyncio.get_running_loop().create_task(self._write_cancels(by_bundle))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write_cancels(self, by_bundle: dict[str, list[str]]) -> None:
        for bundle, ids in by_bundle.items():
            try:
                with aws_errors(f"requesting cancellation in bundle {bundle}"):
                    await self._ddb.update_item(
                        TableName=self.aws.tasks_table,
                        Key={BUNDLE_KEY: {"S": bundle}},
                        UpdateExpression="ADD #c :ids",
                        ExpressionAttributeNames={"#c": "cancel"},
                        ExpressionAttributeValues={":ids": {"SS": ids}},
                    )
            except AwsError as exc:
                log.error("cannot request cancellation", bundle=bundle, error=str(exc))

    # --- sending ---------------------------------------------------------------------

    def _make_bundles(self, recs: list[TaskRecord]) -> list[tuple[str, list[TaskRecord], str]]:
        backlog = len(recs) + self.table.queued_total
        size = bundle_size(backlog, self.fleet_slots, self._avg_runtime(), self.max_bundle_tasks)
        out: list[tuple[str, list[TaskRecord], str]] = []
        now = time.time()
        for start in range(0, len(recs), size):
            chunk = recs[start : start + size]
            wires = [rec.task.execution_wire(rec.attempt) for rec in chunk]
            by_id = {rec.task.id: rec for rec in chunk}
            runs, oversized = split_to_fit(wires, MAX_PACKED)
            for wire in oversized:
                rec = by_id[wire["id"]]
                if self.table.finish_without_running(
                    rec,
                    TaskState.FAILED,
                    "the task is too large for an SQS message (arguments above ~190 KiB)",
                ):
                    self._on_job_progress((rec.job,))
            for run in runs:
                bundle_id = new_bundle_id()
                body = encode_bundle(
                    Bundle(
                        id=bundle_id,
                        scheduler=self.scheduler_id,
                        reply_queue=self.reply_url,
                        tasks=run,
                        sent=now,
                    )
                )
                out.append((bundle_id, [by_id[w["id"]] for w in run], body))
        return out

    async def _send_loop(self) -> None:
        delay = 0.5
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            recs, self._outbox = self._outbox, []
            if not recs:
                continue
            bundles = self._make_bundles(recs)
            for bundle_id, members, _ in bundles:
                for rec in members:
                    self.held[rec.task.id] = rec
                    self.bundle_of[rec.task.id] = bundle_id
                    rec.worker = f"sqs:{bundle_id}"
            unsent = await self._send_bundles(bundles)
            if unsent:
                self._give_back(unsent)
                log.warning("could not send bundles; retrying", bundles=len(unsent), delay_s=delay)
                await asyncio.sleep(delay)  # back-off before the next attempt
                delay = min(RETRY_MAX_S, delay * 2)
            else:
                delay = 0.5

    async def _send_bundles(
        self, bundles: list[tuple[str, list[TaskRecord], str]]
    ) -> list[tuple[str, list[TaskRecord], str]]:
        """SendMessageBatch in groups of up to 10 entries and 256 KiB; returns what failed."""
        failed: list[tuple[str, list[TaskRecord], str]] = []
        group: list[tuple[str, list[TaskRecord], str]] = []
        size = 0
        groups: list[list[tuple[str, list[TaskRecord], str]]] = []
        for bundle in bundles:
            n = len(bundle[2])
            if group and (len(group) == 10 or size + n > BATCH_BYTES):
                groups.append(group)
                group, size = [], 0
            group.append(bundle)
            size += n
        if group:
            groups.append(group)
        for group in groups:
            try:
                with aws_errors("sending bundles to the request queue"):
                    reply = await self._sqs.send_message_batch(
                        QueueUrl=self.request_url,
                        Entries=[
                            {"Id": str(i), "MessageBody": body}
                            for i, (_, _, body) in enumerate(group)
                        ],
                    )
            except AwsError as exc:
                self.aws_error = str(exc)
                log.error("send failed", error=str(exc))
                failed.extend(group)
                continue
            bad = {int(entry["Id"]) for entry in reply.get("Failed", [])}
            for i, bundle in enumerate(group):
                if i in bad:
                    failed.append(bundle)
                else:
                    self.bundles_sent += 1
                    self.tasks_sent += len(bundle[1])
        return failed

    def _give_back(self, bundles: list[tuple[str, list[TaskRecord], str]]) -> None:
        recs = [rec for _, members, _ in bundles for rec in members]
        for rec in recs:
            self.held.pop(rec.task.id, None)
            self.bundle_of.pop(rec.task.id, None)
        self.table.put_back(recs)

    # --- receiving -------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        delay = 0.5
        while True:
            try:
                with aws_errors("receiving from the reply queue"):
                    reply = await self._sqs.receive_message(
                        QueueUrl=self.reply_url,
                        MaxNumberOfMessages=10,
                        WaitTimeSeconds=self._receive_wait_s,
                    )
                messages = reply.get("Messages", [])
                if messages:
                    self._apply(messages)
                    with aws_errors("deleting from the reply queue"):
                        await self._sqs.delete_message_batch(
                            QueueUrl=self.reply_url,
                            Entries=[
                                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                for i, m in enumerate(messages)
                            ],
                        )
                self.aws_error = None
                delay = 0.5
            except AwsError as exc:
                self.aws_error = str(exc)
                log.error("reply queue unavailable; retrying", error=str(exc), delay_s=delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # back-off with jitter
                delay = min(RETRY_MAX_S, delay * 2)

    def _apply(self, messages: list[dict[str, Any]]) -> None:
        results: list[dict[str, Any]] = []
        for message in messages:
            try:
                reply = decode_reply(message["Body"])
            except BundleError as exc:
                log.error(
                    "not a reply; dropped", message_id=message.get("MessageId"), error=str(exc)
                )
                continue
            for result in reply.results:
                result.setdefault("worker", reply.worker)
            results.extend(reply.results)
        if not results:
            return
        self.results_received += len(results)
        for result in results:
            self.bundle_of.pop(result.get("id", ""), None)
        self._on_results(self.held, results)

    # --- fleet -----------------------------------------------------------------------

    async def _fleet_loop(self) -> None:
        """Refresh the number of live worker slots, which sizes bundles and the in-flight cap."""
        while True:
            await asyncio.sleep(FLEET_REFRESH_S)  # periodic refresh
            try:
                self.fleet_slots = await self._count_slots()
            except AwsError as exc:
                log.warning("cannot read the workers table", error=str(exc))

    async def _count_slots(self) -> int:
        slots = 0
        fresh = time.time() - 3 * FLEET_REFRESH_S
        fleet: list[dict[str, Any]] = []
        with aws_errors(f"reading the workers table {self.aws.workers_table!r}"):
            paginator = self._ddb.get_paginator("scan")
            async for page in paginator.paginate(TableName=self.aws.workers_table):
                for item in page.get("Items", []):
                    worker = {key: next(iter(value.values())) for key, value in item.items()}
                    state = worker.get("state")
                    seen = float(worker.get("last_seen") or 0)
                    worker_slots = int(worker.get("slots") or 0)
                    fleet.append(
                        {
                            "id": worker.get("worker"),
                            "kind": "remote",
                            "host": worker.get("host"),
                            "slots": worker_slots,
                            "running": int(worker.get("running") or 0),
                            "state": state,
                            "last_seen": seen,
                        }
                    )
                    if state == "running" and seen >= fresh:
                        slots += worker_slots
        self.fleet = fleet
        return slots

    async def _dead_letter_loop(self, dlq_url: str) -> None:
        while True:
            await asyncio.sleep(self.dead_letter_sweep_s)  # periodic sweep
            try:
                bundles = await sweep(self._sqs, dlq_url, self.scheduler_id)
            except AwsError as exc:
                log.warning("cannot sweep the dead-letter queue", error=str(exc))
                continue
            for bundle in bundles:
                self._take_back(bundle)

    def _take_back(self, bundle: Bundle) -> None:
        """Retry the bundle's unfinished tasks that have attempts left; fail the rest."""
        self.dead_lettered += 1
        reason = (
            f"bundle {bundle.id} went to the dead-letter queue after "
            f"{self.aws.max_receive_count} deliveries without finishing"
        )
        lost: list[TaskRecord] = []
        for wire in bundle.tasks:
            rec = self.held.pop(wire["id"], None)
            if rec is None:
                continue  # it finished after all
            self.bundle_of.pop(wire["id"], None)
            lost.append(rec)
        failed = self.table.retry_or_fail(lost, reason)
        if lost:
            self._on_requeued()  # some may be queued again: let the dispatcher send them
        if failed:
            self._on_job_progress(failed)

    def stats(self) -> dict[str, Any]:
        counter = self.clients.counter.snapshot()
        done = max(1, self.results_received)
        return {
            "request_queue": self.request_url,
            "reply_queue": self.reply_url,
            "in_flight": len(self.held),
            "fleet_slots": self.fleet_slots,
            "bundles_sent": self.bundles_sent,
            "tasks_sent": self.tasks_sent,
            "results_received": self.results_received,
            "dead_lettered": self.dead_lettered,
            "aws": counter,
            "requests_per_task": round(counter["total"] / done, 4)
            if self.results_received
            else None,
        }
