"""``taskmill worker`` as real subprocesses against moto: bundles in, replies out.

The scheduler side is played by the tests: bundles go straight into the request queue
(``protocol.bundles.encode_bundle``) and replies are read from a reply queue of the test's
own. Shell tasks that append to a file per task show how many times each one ran.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from protocol.aws import AwsSettings
from protocol.bundles import Bundle
from tests.conftest import REPO_ROOT, aws_env
from tests.worker.conftest import Aws
from tests.worker.remote_util import (
    TASKMILL,
    TEST_HANDLERS,
    ReplyReader,
    WorkerProcess,
    bundle_item,
    call,
    eventually,
    marking,
    queue_depth,
    runs,
    send_bundles,
    shell,
    summary_of,
    worker_item,
)
from worker.claims import Claimed, ClaimStore

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker() -> Iterator[StartWorker]:
    started: list[WorkerProcess] = []

    def start(
        settings: AwsSettings,
        *args: str,
        env: dict[str, str] | None = None,
        new_session: bool = False,
    ) -> WorkerProcess:
        worker = WorkerProcess(settings, *args, env=env, new_session=new_session)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.cleanup()


def short_lease(settings: AwsSettings) -> AwsSettings:
    """Visibility 2 s and lease 3 s: redelivery and lease expiry within a test's time."""
    return dataclasses.replace(settings, visibility_timeout_s=2, lease_s=3)


def bundle(aws: Aws, bundle_id: str, tasks: list[dict[str, object]]) -> Bundle:
    return Bundle(id=bundle_id, scheduler="s-test", reply_queue=aws.reply_url, tasks=tasks)


async def queue_empty(aws: Aws) -> bool:
    return await queue_depth(aws.sqs, aws.request_url) == (0, 0)


async def test_every_task_runs_once_results_batched_items_done(
    aws: Aws, start_worker: StartWorker
) -> None:
    bundles = []
    for b in range(5):
        tasks = []
        for i in range(10):
            task_id = f"b{b}.{i}"
            if i % 3 == 0:
                tasks.append(call(task_id, "add", b, i))
            elif i % 3 == 1:
                tasks.append(shell(task_id, f"echo {task_id}"))
            else:
                tasks.append(shell(task_id, "exit 3"))
        bundles.append(bundle(aws, f"bundle-{b}", tasks))
    await send_bundles(aws.sqs, aws.request_url, bundles)
    worker = start_worker(aws.settings, "-t", "4", "--handlers", TEST_HANDLERS)
    reader = ReplyReader(aws.sqs, aws.reply_url)
    await reader.until(lambda r: len(r.finals()) == 5, what="a final reply per bundle")

    by_id = reader.by_id()
    assert sorted(by_id) == sorted(t["id"] for b in bundles for t in b.tasks)
    assert all(len(results) == 1 for results in by_id.values())
    for task_id, (result,) in by_id.items():
        n, i = (int(x) for x in task_id[1:].split("."))
        assert result["worker"] == worker.worker_id
        if i % 3 == 0:
            assert (result["state"], result["value"]) == ("succeeded", n + i)
        elif i % 3 == 1:
            assert (result["state"], result["stdout"]) == ("succeeded", f"{task_id}\n")
        else:
            assert (result["state"], result["exit_code"]) == ("failed", 3)

    for sent in bundles:
        item = await bundle_item(aws.ddb, aws.settings.tasks_table, sent.id)
        assert item["state"]["S"] == "done" and item["owner"]["S"] == worker.worker_id
        summary = {row["id"]: row for row in summary_of(item)}
        assert sorted(summary) == sorted(t["id"] for t in sent.tasks)
        assert all(row["state"] == by_id[tid][0]["state"] for tid, row in summary.items())
        assert "done_ids" not in item and "partial" not in item
    await eventually(lambda: queue_empty(aws), what="every bundle message deleted")

    registered = await worker_item(aws.ddb, aws.settings.workers_table, worker.worker_id)
    assert registered["state"]["S"] == "running" and registered["slots"]["N"] == "4"
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0
    stopped = worker.event("worker stopped")
    assert stopped is not None and stopped["tasks"] == 50 and stopped["bundles"] == 5
    # Results share messages and requests: nowhere near one request per task.
    assert stopped["aws_requests"]["sqs.SendMessageBatch"] <= 10
    assert stopped["aws_requests"]["sqs.DeleteMessageBatch"] <= 5
    final = await worker_item(aws.ddb, aws.settings.workers_table, worker.worker_id)
    assert final["state"]["S"] == "stopped"
    assert int(final["requests"]["N"]) > 0


async def test_duplicate_delivery_runs_once(
    aws: Aws, start_worker: StartWorker, tmp_path: Path
) -> None:
    dup = bundle(aws, "dup", [marking("dup.0", tmp_path), marking("dup.1", tmp_path)])
    await send_bundles(aws.sqs, aws.request_url, [dup, dup])  # two SQS copies of one bundle
    worker = start_worker(aws.settings, "-t", "2")
    reader = ReplyReader(aws.sqs, aws.reply_url)
    await reader.until(lambda r: "dup" in r.finals())
    await eventually(lambda: queue_empty(aws), what="both copies deleted")

    # A copy delivered after the bundle is done is deleted without running anything.
    await send_bundles(aws.sqs, aws.request_url, [dup])
    await worker.wait_event("bundle already done: deleting the duplicate")
    await eventually(lambda: queue_empty(aws), what="the late copy deleted")
    await reader.poll()
    assert {k: len(v) for k, v in reader.by_id().items()} == {"dup.0": 1, "dup.1": 1}
    assert runs(tmp_path, "dup.0") == runs(tmp_path, "dup.1") == 1


async def test_bundle_held_elsewhere_is_hidden_not_deleted_and_run_after_the_lease(
    aws: Aws, start_worker: StartWorker, tmp_path: Path
) -> None:
    settings = short_lease(aws.settings)
    other = ClaimStore(aws.ddb, settings.tasks_table, "other", lease_s=2)
    assert isinstance(await other.claim("held", "s-test"), Claimed)  # and then "other" dies
    held = bundle(aws, "held", [marking("held.0", tmp_path)])
    await send_bundles(aws.sqs, aws.request_url, [held])
    worker = start_worker(settings, "-t", "1")
    event = await worker.wait_event("bundle held by another worker")
    assert event["owner"] == "other" and 1 <= event["hidden_s"] <= 4
    assert (await queue_depth(aws.sqs, aws.request_url))[1] == 1  # kept, in flight
    reader = ReplyReader(aws.sqs, aws.reply_url)
    await reader.until(lambda r: "held" in r.finals(), what="the bundle run after the lease")
    assert runs(tmp_path, "held.0") == 1
    item = await bundle_item(aws.ddb, settings.tasks_table, "held")
    assert item["owner"]["S"] == worker.worker_id and item["attempt"]["N"] == "2"


async def test_task_longer_than_visibility_timeout_runs_once(
    aws: Aws, start_worker: StartWorker, tmp_path: Path
) -> None:
    settings = short_lease(aws.settings)
    long = bundle(aws, "long", [marking("long.0", tmp_path, then="sleep 5")])
    await send_bundles(aws.sqs, aws.request_url, [long])
    worker = start_worker(settings, "-t", "1")
    reader = ReplyReader(aws.sqs, aws.reply_url)
    await eventually(lambda: runs(tmp_path, "long.0") == 1, what="the task started")

    async def finished_and_never_visible() -> bool:
        # While the task runs (2.5 visibility timeouts), the message must stay hidden.
        assert (await queue_depth(aws.sqs, aws.request_url))[0] == 0
        await reader.poll()
        return "long" in reader.finals()

    await eventually(finished_and_never_visible, timeout_s=30)
    assert runs(tmp_path, "long.0") == 1
    assert [r["state"] for r in reader.results] == ["succeeded"]
    assert worker.event("duplicate delivery of a held bundle") is None
    assert len([e for e in worker.events if e.get("event") == "bundle claimed"]) == 1


async def test_sigkill_mid_bundle_another_worker_finishes_it(
    aws: Aws, start_worker: StartWorker, tmp_path: Path
) -> None:
    settings = short_lease(aws.settings)
    ids = [f"k.{i}" for i in range(5)]
    await send_bundles(
        aws.sqs,
        aws.request_url,
        [bundle(aws, "k", [marking(i, tmp_path, then="sleep 0.8") for i in ids])],
    )
    record_at_once = {"TASKMILL_RECORD_INTERVAL_S": "0"}
    first = start_worker(settings, "-t", "1", env=record_at_once)
    reader = ReplyReader(aws.sqs, aws.reply_url)
    await reader.until(lambda r: len(r.results) >= 2, what="two results of the first worker")
    reported = {r["id"] for r in reader.results}

    async def recorded() -> bool:
        item = await bundle_item(aws.ddb, settings.tasks_table, "k")
        return reported <= set(item.get("done_ids", {}).get("SS", []))

    await eventually(recorded, what="reported tasks recorded in the item")
    first.signal(signal.SIGKILL)  # mid-bundle: a later task is running
    assert await first.wait_exit() == -signal.SIGKILL

    second = start_worker(settings, "-t", "1", env=record_at_once)
    await reader.until(lambda r: "k" in r.finals(), timeout_s=40, what="the bundle finished")
    by_id = reader.by_id()
    assert sorted(by_id) == ids
    assert all(len(results) == 1 for results in by_id.values()), by_id
    assert all(results[0]["state"] == "succeeded" for results in by_id.values())
    by_first = {i for i, (r,) in by_id.items() if r["worker"] == first.worker_id}
    by_second = {i for i, (r,) in by_id.items() if r["worker"] == second.worker_id}
    assert reported <= by_first and by_second and by_first | by_second == set(ids)
    # Reported tasks never run again; only the one running at the kill may have run twice.
    assert all(runs(tmp_path, i) == 1 for i in by_first)
    assert sorted(runs(tmp_path, i) for i in by_second)[:-1] == [1] * (len(by_second) - 1)
    assert runs(tmp_path, sorted(by_second)[0]) in (1, 2)
    item = await bundle_item(aws.ddb, settings.tasks_table, "k")
    assert item["state"]["S"] == "done" and item["attempt"]["N"] == "2"
    assert sorted(row["id"] for row in summary_of(item)) == ids  # each task exactly once


async def test_sigterm_drain_hands_back_unstarted_bundles_at_once(
    aws: Aws, start_worker: StartWorker, tmp_path: Path
) -> None:
    slow = bundle(aws, "slow", [marking(f"slow.{i}", tmp_path, then="sleep 1.5") for i in (0, 1)])
    fast = bundle(aws, "fast", [marking(f"fast.{i}", tmp_path) for i in (0, 1)])
    await send_bundles(aws.sqs, aws.request_url, [slow, fast])
    first = start_worker(aws.settings, "-t", "2")
    # Two slots, four tasks: one bundle runs, the other waits whole in the worker.
    await eventually(
        lambda: len([e for e in first.events if e.get("event") == "bundle claimed"]) == 2,
        what="both bundles claimed by the first worker",
    )
    await eventually(lambda: sum(p.exists() for p in tmp_path.iterdir()) == 2, what="two starts")
    running = "slow" if runs(tmp_path, "slow.0") else "fast"
    waiting = "fast" if running == "slow" else "slow"
    assert runs(tmp_path, f"{waiting}.0") == runs(tmp_path, f"{waiting}.1") == 0

    first.signal(signal.SIGTERM)
    drained_at = time.monotonic()
    second = start_worker(aws.settings, "-t", "2")
    reader = ReplyReader(aws.sqs, aws.reply_url)
    await reader.until(lambda r: r.finals() == {"slow", "fast"}, what="both bundles finished")
    # Handed back at once, not after the 30 s visibility timeout.
    assert time.monotonic() - drained_at < aws.settings.visibility_timeout_s
    assert await first.wait_exit() == 0
    by_id = reader.by_id()
    assert all(len(results) == 1 for results in by_id.values())
    assert {r["worker"] for t, (r,) in by_id.items() if t.startswith(running)} == {first.worker_id}
    assert {r["worker"] for t, (r,) in by_id.items() if t.startswith(waiting)} == {second.worker_id}
    assert all(runs(tmp_path, t) == 1 for t in by_id)
    handed_back = first.event("bundle handed back")
    assert handed_back is not None and handed_back["bundle"] == waiting
    stopped = await worker_item(aws.ddb, aws.settings.workers_table, first.worker_id)
    assert stopped["state"]["S"] == "stopped"


async def test_drain_grace_over_kills_and_hands_back(
    aws: Aws, start_worker: StartWorker, tmp_path: Path
) -> None:
    stuck = bundle(aws, "stuck", [marking("stuck.0", tmp_path, then="sleep 30")])
    await send_bundles(aws.sqs, aws.request_url, [stuck])
    first = start_worker(aws.settings, "-t", "1", "--drain-grace", "0.5")
    await eventually(lambda: runs(tmp_path, "stuck.0") == 1, what="the task started")
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(timeout_s=20) == 0
    assert first.event("drain grace over: killing running tasks") is not None
    assert first.event("bundle handed back") is not None
    # The next owner runs it again: the bundle is claimable and visible at once.
    second = start_worker(aws.settings, "-t", "1")
    await eventually(lambda: runs(tmp_path, "stuck.0") == 2, what="the task run again")
    item = await bundle_item(aws.ddb, aws.settings.tasks_table, "stuck")
    assert item["owner"]["S"] == second.worker_id and item["attempt"]["N"] == "2"


async def test_sigterm_to_the_whole_process_group_hands_running_tasks_back(
    aws: Aws, start_worker: StartWorker, tmp_path: Path
) -> None:
    """As a service manager stops a unit: the worker processes get SIGTERM too. Their
    tasks die with them, and must be handed back, not reported as failed."""
    grp = bundle(aws, "grp", [marking("grp.0", tmp_path, then="sleep 30")])
    await send_bundles(aws.sqs, aws.request_url, [grp])
    first = start_worker(aws.settings, "-t", "1", new_session=True)
    await eventually(lambda: runs(tmp_path, "grp.0") == 1, what="the task started")
    os.killpg(first.proc.pid, signal.SIGTERM)
    assert await first.wait_exit() == 0
    assert first.event("bundle handed back") is not None
    start_worker(aws.settings, "-t", "1")
    await eventually(lambda: runs(tmp_path, "grp.0") == 2, what="the task run again")
    reader = ReplyReader(aws.sqs, aws.reply_url)
    await reader.poll()
    assert reader.results == []  # no "failed" from the first worker


async def test_cancel_through_the_tasks_table(
    aws: Aws, start_worker: StartWorker, tmp_path: Path
) -> None:
    settings = dataclasses.replace(aws.settings, lease_s=3)  # cancel checked every second
    tasks = [marking("c.0", tmp_path, then="sleep 30"), marking("c.1", tmp_path)]
    tasks.append(marking("c.2", tmp_path))
    await send_bundles(aws.sqs, aws.request_url, [bundle(aws, "c", tasks)])
    start_worker(settings, "-t", "1")
    await eventually(lambda: runs(tmp_path, "c.0") == 1, what="the long task started")
    asked_at = time.monotonic()
    await aws.ddb.update_item(
        TableName=settings.tasks_table,
        Key={"bundle": {"S": "c"}},
        UpdateExpression="ADD #cancel :ids",
        ExpressionAttributeNames={"#cancel": "cancel"},
        ExpressionAttributeValues={":ids": {"SS": ["c.0", "c.1"]}},
    )
    reader = ReplyReader(aws.sqs, aws.reply_url)
    await reader.until(lambda r: "c" in r.finals(), timeout_s=20)
    assert time.monotonic() - asked_at < 10  # not the 30 s of the sleep
    states = {t: r[0]["state"] for t, r in reader.by_id().items()}
    assert states == {"c.0": "cancelled", "c.1": "cancelled", "c.2": "succeeded"}
    assert (runs(tmp_path, "c.1"), runs(tmp_path, "c.2")) == (0, 1)


async def test_malformed_message_dead_lettered_and_serving_goes_on(
    aws: Aws, start_worker: StartWorker
) -> None:
    sent = await aws.sqs.send_message(QueueUrl=aws.request_url, MessageBody="not a bundle")
    worker = start_worker(aws.settings, "-t", "1")
    event = await worker.wait_event("not a bundle: moving it to the dead-letter queue")
    assert event["message"] == sent["MessageId"] and "not a taskmill bundle" in event["error"]

    async def dead_lettered() -> list[dict[str, object]]:
        got = await aws.sqs.receive_message(
            QueueUrl=aws.dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=0
        )
        messages: list[dict[str, object]] = got.get("Messages") or []
        return messages

    (message,) = await eventually(dead_lettered, what="the message in the dead-letter queue")
    assert message["Body"] == "not a bundle"
    await send_bundles(aws.sqs, aws.request_url, [bundle(aws, "ok", [shell("ok.0", "true")])])
    reader = ReplyReader(aws.sqs, aws.reply_url)
    await reader.until(lambda r: "ok" in r.finals())
    assert worker.proc.poll() is None
    await eventually(lambda: queue_empty(aws), what="the request queue empty")


async def test_idle_exit_and_the_workers_table(aws: Aws, start_worker: StartWorker) -> None:
    worker = start_worker(aws.settings, "-t", "1", "-i", "2")
    await worker.wait_event("worker started")
    seen_at = time.monotonic()

    async def registered() -> bool:
        item = await worker_item(aws.ddb, aws.settings.workers_table, worker.worker_id)
        return bool(item) and item["state"]["S"] == "running"

    await eventually(registered, what="the worker registered as running")
    assert await worker.wait_exit(timeout_s=20) == 0
    assert time.monotonic() - seen_at >= 1.5  # it did wait for the idle timeout
    assert worker.event("idle: exiting") is not None
    item = await worker_item(aws.ddb, aws.settings.workers_table, worker.worker_id)
    assert item["state"]["S"] == "stopped" and item["slots"]["N"] == "1"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-s", "no-such-queue"], "no-such-queue"),
        (["--aws-endpoint-url", "http://127.0.0.1:9"], "cannot reach AWS"),
    ],
)
def test_cannot_start_one_error_line_exit_2(
    aws_settings: AwsSettings, args: list[str], expected: str
) -> None:
    done = subprocess.run(
        [*TASKMILL, "worker", "-t", "1", *args],
        cwd=REPO_ROOT,
        env={**aws_env(aws_settings), "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("taskmill worker: error: ")
    assert expected in errors[0]


async def test_drain_requested_through_the_workers_table(
    aws: Aws, start_worker: StartWorker
) -> None:
    worker = start_worker(aws.settings, "-t", "1")
    await worker.wait_event("worker started")
    await aws.ddb.update_item(
        TableName=aws.settings.workers_table,
        Key={"worker": {"S": worker.worker_id}},
        UpdateExpression="SET drain = :yes",
        ExpressionAttributeValues={":yes": {"BOOL": True}},
    )
    assert await worker.wait_exit(timeout_s=20) == 0
    assert worker.event("the fleet asked this worker to drain") is not None
    item = await worker_item(aws.ddb, aws.settings.workers_table, worker.worker_id)
    assert item["state"]["S"] == "stopped"
