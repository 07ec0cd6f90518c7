"""The scheduler's SQS backend against moto, with the test acting as the worker fleet."""

from __future__ import annotations

import time
from typing import Any

import pytest

from client.client import Client
from protocol.aws import AwsClients, AwsSettings
from protocol.bundles import Reply, decode_bundle, encode_bundle, encode_reply
from scheduler.errors import SchedulerError
from tests.conftest import SchedulerFactory


async def take_bundles(aws: AwsSettings, queue_url: str, want_tasks: int) -> list[Any]:
    """Receive bundles until ``want_tasks`` tasks have been seen (deadline 30 s)."""
    bundles = []
    seen = 0
    deadline = time.monotonic() + 30
    async with AwsClients(aws).client("sqs") as sqs:
        while seen < want_tasks:
            assert time.monotonic() < deadline, f"only {seen} of {want_tasks} tasks arrived"
            reply = await sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in reply.get("Messages", []):
                bundle = decode_bundle(message["Body"])
                bundles.append(bundle)
                seen += len(bundle.tasks)
                await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return bundles


async def test_bundles_out_results_back(
    start_scheduler: SchedulerFactory, aws_settings: AwsSettings, aws_resources: dict[str, Any]
) -> None:
    sched = await start_scheduler(local_workers=0, remote=True, aws=aws_settings)
    assert sched.remote is not None
    async with Client("127.0.0.1", sched.port) as client:
        sub = await client.submit([{"cmd": f"echo {i}"} for i in range(120)] + [{"fn": "any"}])
        bundles = await take_bundles(aws_settings, aws_resources["request_queue"], 121)
        # Bundled: far fewer messages than tasks, every task exactly once.
        ids = [t["id"] for b in bundles for t in b.tasks]
        assert sorted(ids) == sorted(sub.ids) and len(bundles) < 121 / 10
        assert {b.reply_queue for b in bundles} == {sched.remote.reply_url}
        async with AwsClients(aws_settings).client("sqs") as sqs:
            for bundle in bundles:
                results = [
                    {
                        "id": t["id"],
                        "state": "succeeded",
                        "exit_code": 0,
                        "stdout": t["id"],
                        "started": 1.0,
                        "finished": 1.5,
                        "attempt": t["attempt"],
                    }
                    for t in bundle.tasks
                ]
                body = encode_reply(
                    Reply(bundle=bundle.id, worker="w-test", results=results, final=True)
                )
                await sqs.send_message(QueueUrl=bundle.reply_queue, MessageBody=body)
                # A duplicate reply (a bundle run twice) must not be reported twice.
                await sqs.send_message(QueueUrl=bundle.reply_queue, MessageBody=body)
        got = [r async for r in client.results(sub.job)]
        stats = await client.stats()
    assert sorted(r.id for r in got) == sorted(sub.ids)
    assert all(r.ok and r.worker == "w-test" and r.stdout == r.id for r in got)
    remote = stats["remote"]
    assert remote["tasks_sent"] == 121 and remote["results_received"] >= 121
    assert remote["aws"]["requests"]["sqs.SendMessageBatch"] >= 1
    assert remote["aws"]["total"] > 0


async def test_missing_request_queue_is_one_clear_error(
    start_scheduler: SchedulerFactory, aws_settings: AwsSettings
) -> None:
    with pytest.raises(
        SchedulerError, match=f"request queue '{aws_settings.request_queue}'.*init-aws"
    ):
        await start_scheduler(local_workers=0, remote=True, aws=aws_settings)


async def test_dead_lettered_bundles_are_taken_back(
    start_scheduler: SchedulerFactory, aws_settings: AwsSettings, aws_resources: dict[str, Any]
) -> None:
    sched = await start_scheduler(
        local_workers=0, remote=True, aws=aws_settings, dead_letter_sweep_s=0.2
    )
    assert sched.remote is not None
    async with Client("127.0.0.1", sched.port) as client:
        sub = await client.submit(
            [{"cmd": "true", "id": "once"}, {"cmd": "true", "id": "twice", "max_attempts": 2}]
        )
        bundles = await take_bundles(aws_settings, aws_resources["request_queue"], 2)
        # SQS gives up on the bundles: they land in the dead-letter queue.
        async with AwsClients(aws_settings).client("sqs") as sqs:
            for bundle in bundles:
                await sqs.send_message(
                    QueueUrl=aws_resources["dead_letter_queue"], MessageBody=encode_bundle(bundle)
                )
        # "once" has no attempt left: it fails with the reason. "twice" is sent again.
        [again] = await take_bundles(aws_settings, aws_resources["request_queue"], 1)
        assert [t["id"] for t in again.tasks] == ["twice"] and again.tasks[0]["attempt"] == 2
        status = await client.status("once")
    assert status["task"]["state"] == "failed"
    assert "dead-letter queue" in status["task"]["result"]["error"]
    assert sched.remote.dead_lettered == len(bundles)
    assert sub.ids == ["once", "twice"]
