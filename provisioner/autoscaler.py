"""The autoscaler: observe the queue, the workers table and our instances; decide with
the pure policy (:mod:`provisioner.policy`); act on EC2 and the workers table.

Embeddable (the scheduler's ``--autoscale`` owns one) or a daemon of its own
(``taskmill provision auto``, :func:`serve`)::

    scaler = Autoscaler(aws_settings, provision_settings)
    await scaler.start()        # finds the queue and table, then ticks every interval
    ...
    await scaler.close()        # finishes the tick in progress; leaves the fleet running

A tick costs three AWS requests (GetQueueAttributes, one Scan page, one
DescribeInstances page) plus one per action. Closing never terminates instances: idle
workers power themselves off after their idle timeout, busy ones keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import structlog
import uvloop

from protocol.aws import AwsClients, AwsError, AwsRequestFailed, AwsSettings, aws_errors
from protocol.bundles import WORKER_KEY, WORKER_RUNNING
from protocol.logs import configure_logging
from provisioner.ec2 import Fleet, Instance
from provisioner.policy import (
    Decision,
    InstanceView,
    Memory,
    Observation,
    WorkerView,
    decide,
    observation_to_dict,
    trace_header,
)
from provisioner.settings import ProvisionSettings

log = structlog.get_logger("taskmill.autoscaler")

# A just-launched instance may be missing from DescribeInstances for a little while
# (EC2 is eventually consistent): count it as booting meanwhile, or we would launch again.
LAUNCH_VISIBILITY_S = 120.0
CLOSE_TIMEOUT_S = 30.0
QUEUE_ATTRIBUTES = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]


def _attr(item: dict[str, Any], name: str) -> Any:
    """The plain value of a DynamoDB attribute (S, N, BOOL; NULL and missing are None)."""
    value = item.get(name)
    if not value:
        return None
    kind, raw = next(iter(value.items()))
    if kind == "NULL":
        return None
    return raw


def _number(item: dict[str, Any], name: str) -> float:
    raw = _attr(item, name)
    try:
        return float(raw) if raw is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def _truthy(item: dict[str, Any], name: str) -> bool:
    raw = _attr(item, name)
    if isinstance(raw, bool):
        return raw
    if raw is None:
        return False
    return str(raw).strip().lower() not in ("", "0", "false", "no")


def _host_label(name: str) -> str:
    return name.split(".", 1)[0].lower()


class Registered:
    """A workers-table item: the view the policy needs, and how to match it to an instance."""

    def __init__(self, item: dict[str, Any]) -> None:
        self.view = WorkerView(
            worker=str(_attr(item, WORKER_KEY)),
            state=str(_attr(item, "state") or ""),
            slots=int(_number(item, "slots")),
            running=int(_number(item, "running")),
            last_seen=_number(item, "last_seen"),
            drain=_truthy(item, "drain"),
            bundles=int(_number(item, "bundles")),
        )
        self.instance_id = _attr(item, "instance_id")
        self.host = str(_attr(item, "host") or "")


def join(instances: list[Instance], workers: list[Registered]) -> dict[str, WorkerView]:
    """Instance id -> the worker running on it: by ``instance_id``, else by host name
    (``ip-10-0-1-5`` is the first label of the instance's private DNS name). Of several
    items for one instance (the daemon was restarted), the latest heartbeat wins."""
    by_label = {_host_label(i.private_dns): i.id for i in instances if i.private_dns}
    ids = {i.id for i in instances}
    joined: dict[str, WorkerView] = {}
    for w in workers:
        iid = w.instance_id if w.instance_id in ids else by_label.get(_host_label(w.host))
        if iid is None:
            continue
        current = joined.get(iid)
        if current is None or w.view.last_seen > current.last_seen:
            joined[iid] = w.view
    return joined


class Autoscaler:
    def __init__(
        self,
        aws: AwsSettings,
        settings: ProvisionSettings,
        *,
        clients: AwsClients | None = None,
        clock: Callable[[], float] = time.time,
        record: Path | None = None,
        dry_run: bool = False,
    ) -> None:
        settings.check_launchable()
        self.aws = aws
        self.settings = settings
        self.policy = settings.policy()
        self.clients = clients or AwsClients(aws)
        self.clock = clock
        self.dry_run = dry_run  # decide and log, but change nothing
        self.memory = Memory()
        self.last: dict[str, Any] = {}
        self.ticks = 0
        self._record_path = record
        self._record: TextIO | None = None
        self._launched: dict[str, float] = {}  # instance id -> launch time, until listed
        self._worker_of: dict[str, str] = {}  # instance id -> worker id, from the last tick
        self._stack = contextlib.AsyncExitStack()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._sqs: Any = None
        self._ddb: Any = None
        self.fleet: Fleet | None = None
        self.queue_url = ""

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, *, run_loop: bool = True) -> None:
        """Open the clients and find the queue and table (an :class:`AwsError` with one
        clear line if they are missing); then tick every interval unless ``run_loop`` is
        false (tests drive :meth:`tick` themselves)."""
        try:
            self._sqs = await self._stack.enter_async_context(self.clients.client("sqs"))
            self._ddb = await self._stack.enter_async_context(self.clients.client("dynamodb"))
            ec2 = await self._stack.enter_async_context(self.clients.client("ec2"))
            self.fleet = Fleet(self.aws, self.settings, ec2)
            self.fleet.user_data()  # a bad template fails here, not at the first launch
            with aws_errors(f"finding queue {self.aws.request_queue!r}"):
                reply = await self._sqs.get_queue_url(QueueName=self.aws.request_queue)
                self.queue_url = reply["QueueUrl"]
            with aws_errors(f"finding table {self.aws.workers_table!r}"):
                await self._ddb.describe_table(TableName=self.aws.workers_table)
            if self._record_path is not None:
                self._record = self._record_path.open("a", encoding="utf-8")
                header = trace_header(self.policy, fleet=self.settings.fleet, at=self.clock())
                self._record.write(json.dumps(header) + "\n")
        except BaseException:
            await self._stack.aclose()
            raise
        log.info(
            "autoscaler started",
            fleet=self.settings.fleet,
            queue=self.aws.request_queue,
            policy=dataclasses.asdict(self.policy),
            interval_s=self.settings.scale_interval_s,
            dry_run=self.dry_run,
        )
        if run_loop:
            self._loop_task = asyncio.create_task(self._run(), name="autoscaler")

    async def close(self) -> None:
        """Stop ticking (the tick in progress finishes), then close the clients."""
        self._stopping.set()
        if self._loop_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._loop_task), CLOSE_TIMEOUT_S)
            except TimeoutError:
                self._loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loop_task
            self._loop_task = None
        if self._record is not None:
            self._record.close()
            self._record = None
        await self._stack.aclose()
        log.info("autoscaler closed", ticks=self.ticks, requests=self.clients.counter.total())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except AwsError as exc:
                # Transient or not, the next tick observes afresh: nothing is half-done
                # that a later tick would not redo.
                log.error("autoscaler tick failed", error=str(exc))
            except Exception:
                log.exception("autoscaler tick crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.scale_interval_s)

    # --- one tick --------------------------------------------------------------------

    async def observe(self) -> Observation:
        assert self.fleet is not None, "start() first"
        with aws_errors(f"reading the depth of {self.aws.request_queue!r}"):
            reply = await self._sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=QUEUE_ATTRIBUTES
            )
        attrs = reply.get("Attributes", {})
        workers: list[Registered] = []
        with aws_errors(f"reading the workers table {self.aws.workers_table!r}"):
            paginator = self._ddb.get_paginator("scan")
            async for page in paginator.paginate(TableName=self.aws.workers_table):
                workers.extend(Registered(item) for item in page.get("Items", []))
        instances = await self.fleet.instances()
        now = self.clock()
        joined = join(instances, workers)
        self._worker_of = {iid: w.worker for iid, w in joined.items()}
        views = [
            InstanceView(id=i.id, state=i.state, launched=i.launched, worker=joined.get(i.id))
            for i in instances
        ]
        listed = {i.id for i in instances}
        for iid, at in list(self._launched.items()):
            if iid in listed or now - at > LAUNCH_VISIBILITY_S:
                del self._launched[iid]
            else:
                views.append(InstanceView(id=iid, state="pending", launched=at))
        return Observation(
            now=now,
            visible=int(attrs.get("ApproximateNumberOfMessages", 0)),
            inflight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
            instances=tuple(views),
        )

    async def tick(self) -> Decision:
        """Observe, decide, act, log; returns the decision."""
        before = self.clients.counter.total()
        obs = await self.observe()
        decision = decide(obs, self.policy, self.memory)
        self.memory = decision.memory
        self.ticks += 1
        inputs = {"visible": obs.visible, "inflight": obs.inflight, "instances": len(obs.instances)}
        log.info("autoscale", fleet=self.settings.fleet, **inputs, **decision.summary())
        if self._record is not None:
            line = {"observation": observation_to_dict(obs), "decision": decision.summary()}
            self._record.write(json.dumps(line) + "\n")
            self._record.flush()
        if not self.dry_run:
            await self._act(decision)
        self.last = {
            "at": obs.now,
            **inputs,
            **decision.summary(),
            "requests": self.clients.counter.total() - before,
        }
        return decision

    async def _act(self, decision: Decision) -> None:
        assert self.fleet is not None
        if decision.terminate:
            await self.fleet.terminate(decision.terminate, verified=True)
        for iid in decision.drain:
            await self._drain(iid, decision.reasons.get(iid, ""))
        if decision.launch:
            launched = await self.fleet.launch(decision.launch)
            for inst in launched:
                self._launched[inst.id] = inst.launched or self.clock()

    async def _drain(self, instance_id: str, reason: str) -> bool:
        """Ask the instance's worker to drain, only if it is still idle: the condition is
        checked by DynamoDB at write time, so a worker that just took a bundle is left be."""
        worker = self._worker_of.get(instance_id)
        if worker is None:
            return False
        try:
            with aws_errors(f"draining worker {worker}"):
                await self._ddb.update_item(
                    TableName=self.aws.workers_table,
                    Key={WORKER_KEY: {"S": worker}},
                    UpdateExpression="SET #drain = :yes",
                    ConditionExpression=(
                        "attribute_exists(#key) AND #state = :running AND #run = :zero "
                        "AND (attribute_not_exists(#bundles) OR #bundles = :zero)"
                    ),
                    ExpressionAttributeNames={
                        "#drain": "drain",
                        "#key": WORKER_KEY,
                        "#state": "state",
                        "#run": "running",
                        "#bundles": "bundles",
                    },
                    ExpressionAttributeValues={
                        ":yes": {"BOOL": True},
                        ":running": {"S": WORKER_RUNNING},
                        ":zero": {"N": "0"},
                    },
                )
        except AwsRequestFailed as exc:
            if exc.code != "ConditionalCheckFailedException":
                raise
            log.info("not drained: worker took work", instance=instance_id, worker=worker)
            return False
        log.info("drain requested", instance=instance_id, worker=worker, reason=reason)
        return True

    def status(self) -> dict[str, Any]:
        """For a monitor: the last tick's inputs and decision, and the requests spent."""
        return {
            "fleet": self.settings.fleet,
            "ticks": self.ticks,
            "last": self.last,
            "aws": self.clients.counter.snapshot(),
        }


# --- the daemon ---------------------------------------------------------------------------


async def run_until_signalled(
    aws: AwsSettings, settings: ProvisionSettings, *, record: Path | None, dry_run: bool
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    scaler = Autoscaler(aws, settings, record=record, dry_run=dry_run)
    try:
        try:
            await scaler.start()
        except AwsError as exc:
            log.error("autoscaler failed to start", error=str(exc))
            return 3
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            await scaler.close()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def serve(
    aws: AwsSettings,
    settings: ProvisionSettings,
    *,
    record: Path | None = None,
    dry_run: bool = False,
    log_level: str = "info",
    log_format: str = "auto",
) -> int:
    """``taskmill provision auto``: run on uvloop until SIGINT/SIGTERM; the exit code."""
    configure_logging(log_level, log_format)
    return uvloop.run(run_until_signalled(aws, settings, record=record, dry_run=dry_run))
