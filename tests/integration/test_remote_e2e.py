"""End to end on "AWS" (moto on loopback): scheduler -rw, real worker daemons."""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

from client.client import Client
from protocol.aws import AwsClients, AwsSettings
from protocol.bundles import decode_summary
from tests.conftest import SchedulerFactory
from tests.worker.remote_util import WorkerProcess


async def finished_ids_in_dynamodb(aws: AwsSettings) -> Counter[str]:
    """Every task id recorded as finished in the tasks table's bundle summaries."""
    seen: Counter[str] = Counter()
    async with AwsClients(aws).client("dynamodb") as ddb:
        paginator = ddb.get_paginator("scan")
        async for page in paginator.paginate(TableName=aws.tasks_table):
            for item in page.get("Items", []):
                if item.get("state", {}).get("S") == "done" and "summary" in item:
                    for row in decode_summary(item["summary"]["B"]):
                        seen[row["id"]] += 1
    return seen


async def test_three_hundred_tasks_two_workers_exactly_once(
    start_scheduler: SchedulerFactory, aws_settings: AwsSettings, aws_resources: dict[str, Any]
) -> None:
    workers = [WorkerProcess(aws_settings, "-t", "2") for _ in range(2)]
    try:
        for w in workers:
            await w.wait_event("worker started")
        sched = await start_scheduler(
            local_workers=0, remote=True, aws=aws_settings, reply_wait_s=1
        )
        async with Client("127.0.0.1", sched.port) as client:
            # 20 ms each: long enough that both workers' slots are needed.
            tasks = [{"cmd": f"sh -c 'sleep 0.02; echo {i}'"} for i in range(250)] + [
                {"fn": "echo", "args": [i]} for i in range(50)
            ]
            sub = await client.submit(tasks)
            results = [r async for r in client.results(sub.job)]
            stats = await client.stats()
    finally:
        for w in workers:
            w.signal(signal.SIGTERM)
        for w in workers:
            assert await w.wait_exit() == 0, w.diagnosis()
            w.cleanup()
    counts = Counter(r.id for r in results)
    assert set(counts) == set(sub.ids) and set(counts.values()) == {1}
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert {r.stdout.strip() for r in results if r.id in sub.ids[:250]} == {
        str(i) for i in range(250)
    }
    # Both workers took part, and DynamoDB shows each task finished exactly once.
    assert len({r.worker for r in results}) == 2
    recorded = await finished_ids_in_dynamodb(aws_settings)
    assert set(recorded) == set(sub.ids) and set(recorded.values()) == {1}
    # Bundled: a small fraction of an SQS request per task on the scheduler's side.
    remote = stats["remote"]
    assert remote["bundles_sent"] < 300 / 5
    assert remote["aws"]["requests"]["sqs.SendMessageBatch"] <= remote["bundles_sent"]


async def test_two_schedulers_one_fleet_each_get_their_own(
    start_scheduler: SchedulerFactory, aws_settings: AwsSettings, aws_resources: dict[str, Any]
) -> None:
    worker = WorkerProcess(aws_settings, "-t", "2")
    try:
        await worker.wait_event("worker started")
        first = await start_scheduler(
            local_workers=0, remote=True, aws=aws_settings, reply_wait_s=1
        )
        second = await start_scheduler(
            local_workers=0, remote=True, aws=aws_settings, reply_wait_s=1
        )
        assert first.remote is not None and second.remote is not None
        assert first.remote.reply_url != second.remote.reply_url
        async with Client("127.0.0.1", first.port) as a, Client("127.0.0.1", second.port) as b:
            sub_a = await a.submit([{"cmd": f"echo a{i}", "id": f"a{i}"} for i in range(60)])
            sub_b = await b.submit([{"cmd": f"echo b{i}", "id": f"b{i}"} for i in range(60)])
            got_a = [r async for r in a.results(sub_a.job)]
            got_b = [r async for r in b.results(sub_b.job)]
    finally:
        worker.signal(signal.SIGTERM)
        assert await worker.wait_exit() == 0, worker.diagnosis()
        worker.cleanup()
    assert sorted(r.id for r in got_a) == sorted(sub_a.ids)
    assert sorted(r.id for r in got_b) == sorted(sub_b.ids)
    assert all(r.stdout.strip() == r.id for r in got_a + got_b)
    assert first.table.submitted_total == 60 and second.table.submitted_total == 60
