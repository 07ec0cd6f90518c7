"""The autoscaler against moto (SQS, DynamoDB, EC2) on loopback, driven tick by tick.

Worker daemons cannot boot on moto's instances, so the tests play their part: they
write workers-table items for the instances the autoscaler launched, report running
tasks, obey drain requests by reporting ``stopped``. The clock is the test's own.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protocol.aws import AwsClients, AwsSettings
from provisioner.autoscaler import Autoscaler, Registered, join
from provisioner.ec2 import Instance
from provisioner.policy import Memory, decide, observation_from_dict
from provisioner.settings import ProvisionSettings
from tests.conftest import aws_env
from tests.procs import Daemon


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class World:
    """The test's view of moto, and the workers it pretends to run."""

    def __init__(self, aws: AwsSettings, resources: dict[str, Any], clock: Clock) -> None:
        self.aws = aws
        self.queue_url = resources["request_queue"]
        self.clock = clock
        self.clients = AwsClients(aws)

    async def enqueue(self, n: int) -> None:
        async with self.clients.client("sqs") as sqs:
            for i in range(0, n, 10):
                entries = [
                    {"Id": str(j), "MessageBody": f"bundle {i + j}"} for j in range(min(10, n - i))
                ]
                await sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)

    async def empty_queue(self) -> None:
        async with self.clients.client("sqs") as sqs:
            await sqs.purge_queue(QueueUrl=self.queue_url)

    async def instance_states(self, fleet: str) -> dict[str, str]:
        async with self.clients.client("ec2") as ec2:
            reply = await ec2.describe_instances(
                Filters=[{"Name": "tag:taskmill:fleet", "Values": [fleet]}]
            )
        return {
            i["InstanceId"]: i["State"]["Name"]
            for r in reply["Reservations"]
            for i in r["Instances"]
        }

    async def report(self, instance_id: str, *, running: int = 0, state: str = "running") -> None:
        """A worker's registration or heartbeat: ``put_item`` first, then ``update_item``
        as the worker daemon does, so a ``drain`` set by the autoscaler is kept."""
        async with self.clients.client("dynamodb") as ddb:
            await ddb.update_item(
                TableName=self.aws.workers_table,
                Key={"worker": {"S": f"w-{instance_id}"}},
                UpdateExpression=(
                    "SET #state = :state, running = :running, bundles = :running, "
                    "last_seen = :now, slots = :slots, instance_id = :iid, host = :host"
                ),
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":state": {"S": state},
                    ":running": {"N": str(running)},
                    ":now": {"N": repr(self.clock())},
                    ":slots": {"N": "2"},
                    ":iid": {"S": instance_id},
                    ":host": {"S": "ip-10-0-0-1"},
                },
            )

    async def drain_requested(self, instance_id: str) -> bool:
        async with self.clients.client("dynamodb") as ddb:
            item = (
                await ddb.get_item(
                    TableName=self.aws.workers_table, Key={"worker": {"S": f"w-{instance_id}"}}
                )
            )["Item"]
        return bool(item.get("drain", {}).get("BOOL"))


@pytest.fixture
async def world(aws_settings: AwsSettings, aws_resources: dict[str, Any]) -> World:
    return World(aws_settings, aws_resources, Clock())


@pytest.fixture
async def scaler(
    world: World, worker_ami: str, fleet_name: str, tmp_path: Path
) -> AsyncIterator[Autoscaler]:
    settings = ProvisionSettings(
        fleet=fleet_name,
        ami=worker_ami,
        instance_type="t3.micro",
        min_workers=0,
        max_workers=3,
        slots_per_worker=2,
        cooldown_s=60,
    )
    scaler = Autoscaler(world.aws, settings, clock=world.clock, record=tmp_path / "trace.jsonl")
    await scaler.start(run_loop=False)
    yield scaler
    await scaler.close()


async def test_scales_out_under_backlog_and_back_to_zero_without_killing_busy_workers(
    world: World, scaler: Autoscaler, fleet_name: str, tmp_path: Path
) -> None:
    # Empty queue: nothing.
    d = await scaler.tick()
    assert (d.wanted, d.launch) == (0, 0)
    assert await world.instance_states(fleet_name) == {}

    # A backlog of 10 messages for 2-slot workers: 5 wanted, capped at max 3.
    await world.enqueue(10)
    d = await scaler.tick()
    assert (d.wanted, d.launch) == (3, 3)
    states = await world.instance_states(fleet_name)
    assert len(states) == 3 and set(states.values()) <= {"pending", "running"}
    a, b, c = sorted(states)

    # Next tick, same backlog, no worker registered yet: they count as booting.
    world.clock.advance(10)
    d = await scaler.tick()
    assert (d.booting, d.launch) == (3, 0)
    assert len(await world.instance_states(fleet_name)) == 3

    # The workers register and take work; then the queue empties while `a` still runs.
    for iid in (a, b, c):
        await world.report(iid, running=2)
    world.clock.advance(10)
    d = await scaler.tick()
    assert (d.serving, d.busy, d.launch, d.drain) == (3, 3, 0, ())
    await world.empty_queue()
    await world.report(a, running=1)
    await world.report(b, running=0)
    await world.report(c, running=0)
    world.clock.advance(10)
    d = await scaler.tick()  # idle clocks of b and c start now
    assert d.wanted == 0 and d.drain == () and d.terminate == ()

    # After the cooldown: drain the idle ones, never `a`.
    world.clock.advance(61)
    for iid in (a, b, c):  # heartbeats
        await world.report(iid, running=1 if iid == a else 0)
    d = await scaler.tick()
    assert sorted(d.drain) == sorted([b, c]) and d.terminate == ()
    assert await world.drain_requested(b) and await world.drain_requested(c)
    assert not await world.drain_requested(a)

    # b and c obey and stop; `a` claims to be stopped while still running a task.
    await world.report(b, state="stopped")
    await world.report(c, state="stopped")
    await world.report(a, running=1, state="stopped")
    world.clock.advance(10)
    d = await scaler.tick()
    assert sorted(d.terminate) == sorted([b, c])
    states = await world.instance_states(fleet_name)
    assert states[a] == "running"
    assert {states[b], states[c]} <= {"shutting-down", "terminated"}

    # `a` finishes, idles through the cooldown, is drained, stops, is terminated.
    await world.report(a, running=0)
    world.clock.advance(10)
    d = await scaler.tick()
    assert d.drain == () and d.terminate == ()
    world.clock.advance(60)
    await world.report(a, running=0)
    d = await scaler.tick()
    assert d.drain == (a,)
    await world.report(a, state="stopped")
    d = await scaler.tick()
    assert d.terminate == (a,)
    states = await world.instance_states(fleet_name)
    assert all(s in ("shutting-down", "terminated") for s in states.values())
    d = await scaler.tick()
    assert (d.booting, d.serving, d.retiring, d.launch) == (0, 0, 0, 0)

    # Every tick was logged to the trace, and replaying it gives the same decisions.
    await scaler.close()
    lines = (tmp_path / "trace.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["policy"]["max_workers"] == 3
    memory = Memory()
    for line in lines[1:]:
        tick = json.loads(line)
        replayed = decide(observation_from_dict(tick["observation"]), scaler.policy, memory)
        memory = replayed.memory
        assert replayed.summary() == tick["decision"]
    assert len(lines) - 1 == scaler.ticks == 11


async def test_a_worker_that_took_work_is_not_drained(
    world: World, scaler: Autoscaler, fleet_name: str
) -> None:
    """The drain write is conditional: between the scan and the write, the worker may
    have received a bundle; DynamoDB then refuses the drain."""
    await world.enqueue(1)
    d = await scaler.tick()
    assert d.launch == 1
    (iid,) = await world.instance_states(fleet_name)
    await world.report(iid, running=0)
    await world.empty_queue()
    await scaler.tick()
    world.clock.advance(61)
    await world.report(iid, running=0)
    await scaler.observe()  # the autoscaler sees it idle...
    await world.report(iid, running=1)  # ...and it takes a bundle right then
    assert not await scaler._drain(iid, "test")
    assert not await world.drain_requested(iid)
    await world.report(iid, running=0)
    assert await scaler._drain(iid, "test")
    assert await world.drain_requested(iid)


async def test_requests_per_tick_are_counted(world: World, scaler: Autoscaler) -> None:
    before = dict(scaler.clients.counter.requests)
    await scaler.tick()
    after = scaler.clients.counter.requests
    spent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert spent == {
        "sqs.GetQueueAttributes": 1,
        "dynamodb.Scan": 1,
        "ec2.DescribeInstances": 1,
    }
    assert scaler.status()["last"]["requests"] == 3


def test_workers_are_matched_by_instance_id_or_host_name() -> None:
    instances = [
        Instance(id="i-1", state="running", launched=0, private_dns="ip-10-0-0-1.ec2.internal"),
        Instance(id="i-2", state="running", launched=0, private_dns="ip-10-0-0-2.ec2.internal"),
    ]

    def item(worker: str, *, iid: str | None, host: str, seen: float) -> Registered:
        return Registered(
            {
                "worker": {"S": worker},
                "state": {"S": "running"},
                "running": {"N": "0"},
                "last_seen": {"N": str(seen)},
                "instance_id": {"S": iid} if iid else {"NULL": True},
                "host": {"S": host},
            }
        )

    joined = join(
        instances,
        [
            item("old", iid="i-1", host="x", seen=1.0),
            item("new", iid="i-1", host="x", seen=2.0),  # restarted daemon: latest wins
            item("by-host", iid=None, host="ip-10-0-0-2", seen=1.0),
            item("elsewhere", iid="i-9", host="laptop", seen=1.0),
        ],
    )
    assert {k: v.worker for k, v in joined.items()} == {"i-1": "new", "i-2": "by-host"}


def test_the_daemon_ticks_and_stops_cleanly_on_sigterm(
    aws_settings: AwsSettings, aws_resources: dict[str, Any], worker_ami: str, fleet_name: str
) -> None:
    daemon = Daemon(
        [
            "provision",
            "auto",
            "--min",
            "0",
            "--max",
            "2",
            "--interval",
            "0.2",
            "--ami",
            worker_ami,
            "-t",
            "t3.micro",
            "--fleet",
            fleet_name,
        ],
        env=aws_env(aws_settings),
    )
    try:
        started = daemon.wait_for("autoscaler started", timeout=30)
        assert started["fleet"] == fleet_name
        deadline = time.monotonic() + 30
        while sum(e.get("event") == "autoscale" for e in daemon.events) < 2:
            assert time.monotonic() < deadline, daemon.events[-5:]
            assert daemon.proc.poll() is None, daemon.events[-5:]
            time.sleep(0.05)  # polling the log with a deadline, not synchronising
        tick = next(e for e in daemon.events if e.get("event") == "autoscale")
        assert tick["visible"] == 0 and tick["wanted"] == 0 and "queue empty" in tick["why"]
        os.kill(daemon.pid, signal.SIGTERM)
        assert daemon.proc.wait(30) == 0
    finally:
        daemon.stop()
    assert any(e.get("event") == "autoscaler closed" for e in daemon.events)


def test_the_daemon_exits_3_when_the_queue_is_missing(
    aws_settings: AwsSettings, worker_ami: str, fleet_name: str
) -> None:
    daemon = Daemon(
        ["provision", "auto", "--ami", worker_ami, "-t", "t3.micro", "--fleet", fleet_name],
        env=aws_env(aws_settings),  # no init-aws: the queue does not exist
    )
    try:
        failed = daemon.wait_for("autoscaler failed to start", timeout=60)
        assert aws_settings.request_queue in failed["error"] and "init-aws" in failed["error"]
        assert daemon.proc.wait(30) == 3
    finally:
        daemon.stop()
